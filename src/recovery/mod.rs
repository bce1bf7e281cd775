//! Opening a store: which of the three paths (snapshot, marked regions, full rebuild)
//! brings the index back, and the report of how it went.

pub(crate) mod migrate;
pub(crate) mod rebuild;
pub(crate) mod scan;
pub(crate) mod scrub;
pub(crate) mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::base;
use crate::error::{Error, Result};
use crate::index::{Index, Trees};
use crate::marks::{Marks, Region};
use crate::meta::{CheckpointInfo, Meta};
use crate::options::{Options, Shape};
use crate::scan::{hash_small_pieces, scan_all, Piece};
use crate::snapshot::{self, Early};
use crate::tree::Tree;

/// Past this fraction of the keys to re-hash, one sequential scan beats many range scans.
const FULL_REBUILD_FRACTION: f64 = 0.25;

pub(crate) const SLED_DIR: &str = "sled";

/// How the index came back on open.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Recovery {
    /// A new, empty store was created.
    Created,
    /// The clean-close snapshot was mapped and validated; no data was read.
    Snapshot,
    /// The last checkpoint was loaded and the regions marked since were re-hashed.
    Regions {
        /// The checkpoint came from the base snapshot plus the buckets rewritten since
        /// it, not from reading every bucket.
        from_base: bool,
        /// Buckets (and partitions, whole) read because they changed since the base.
        changed: u64,
        /// Marked regions re-hashed.
        regions: u64,
        /// Segments in those regions.
        segments: u64,
        /// Records read to re-hash them.
        keys: u64,
        /// Why the snapshot was not used, if the last close was clean but it was bad.
        snapshot_problem: Option<String>,
    },
    /// Every record was read to recompute the index.
    FullRebuild {
        /// Records read.
        keys: u64,
        /// Why the cheaper paths were not taken.
        reason: String,
    },
}

/// What `open` did to bring the index back, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// The path taken.
    pub recovery: Recovery,
    /// Time from after sled's own open until the index was ready. The snapshot (a clean
    /// close's, or the base of a crash recovery) is read on a thread of its own while
    /// sled opens, so what of that read sled's open covers is not in this figure; time
    /// the whole `Store::open` call for the figure that includes it.
    pub duration: Duration,
}

/// Result of the decision made on open.
pub(crate) struct Recovered {
    pub trees: Trees,
    pub recovery: Recovery,
    pub epoch: u64,
    pub clock: u64,
    /// The recovered trees must be persisted before writes start.
    pub needs_checkpoint: bool,
    /// Epoch of the snapshot the trees started from (clean close or base), if any.
    pub base: Option<u64>,
    pub full: bool,
}

/// Checks the directory, creating it if allowed. Returns the directories whose entries
/// a new store adds (the store directory, and the parent of every directory created), to
/// be fsynced once the database files exist; empty for an existing store.
pub(crate) fn prepare_dir(path: &Path, options: &Options) -> Result<Vec<PathBuf>> {
    let missing = |reason: &str| Error::NotAStore {
        path: path.to_path_buf(),
        reason: reason.into(),
    };
    match fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if !options.create_if_missing {
                return Err(Error::NotFound(path.to_path_buf()));
            }
            let mut to_sync = vec![path.to_path_buf()];
            let mut ancestor = path.parent();
            while let Some(dir) = ancestor {
                let dir = if dir.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    dir
                };
                to_sync.push(dir.to_path_buf());
                if dir.exists() {
                    break;
                }
                ancestor = dir.parent();
            }
            fs::create_dir_all(path)
                .map_err(|e| Error::io(format!("create {}", path.display()), e))?;
            Ok(to_sync)
        }
        Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
        Ok(m) if !m.is_dir() => Err(missing("not a directory")),
        Ok(_) => {
            if path.join(SLED_DIR).is_dir() {
                return Ok(Vec::new());
            }
            let empty = fs::read_dir(path)
                .map_err(|e| Error::io(format!("list {}", path.display()), e))?
                .next()
                .is_none();
            if !empty {
                return Err(missing("it has files but no sled database"));
            }
            if !options.create_if_missing {
                return Err(missing("empty directory"));
            }
            Ok(vec![path.to_path_buf()])
        }
    }
}

/// What recovery reads: the store's sled trees and its marks, and the snapshot as read
/// while sled opened.
pub(crate) struct Sources<'a> {
    pub early: &'a mut Early,
    pub meta: &'a Meta,
    pub data: &'a sled::Tree,
    pub buckets: &'a sled::Tree,
    pub changed: &'a sled::Tree,
    pub marks: &'a Marks,
}

/// Chooses and runs the recovery path. Nothing is written here.
pub(crate) fn recover(
    dir: &Path,
    shape: Shape,
    sources: Sources<'_>,
    created: bool,
) -> Result<Recovered> {
    let Sources {
        early,
        meta,
        data,
        buckets,
        changed,
        marks,
    } = sources;
    // A damaged checkpoint record or state flag costs a full scan, never the store.
    let (checkpoint, meta_problem) = match meta.checkpoint() {
        Ok(c) => (c.unwrap_or_default(), None),
        Err(Error::Corrupt(e)) => (CheckpointInfo::default(), Some(e.to_string())),
        Err(e) => return Err(e),
    };
    if meta_problem.is_none() {
        // Marks the checkpoint covers that a crash or close left: the hasher thread
        // deletes them in the background (nothing is written here).
        marks.retire_through(checkpoint.epoch);
    }
    let clean_epoch = match meta.clean_epoch() {
        Ok(e) => e,
        Err(Error::Corrupt(_)) => None,
        Err(e) => return Err(e),
    };
    let mut out = Recovered {
        trees: Trees::new(),
        recovery: Recovery::Created,
        epoch: checkpoint.epoch + 1,
        clock: checkpoint.clock,
        needs_checkpoint: false,
        base: None,
        full: false,
    };
    if created {
        return Ok(out);
    }
    let mut snapshot_problem = None;
    // The snapshot of `epoch`: as read while sled opened, or from the file now.
    let mut read_snapshot = |epoch| match early.take(shape, epoch) {
        Some(trees) => Ok(Some(trees)),
        None => snapshot::read(dir, shape, epoch),
    };
    if let Some(reason) = meta.rebuild_reason()? {
        return full_rebuild(
            out,
            data,
            shape,
            format!("a rebuild was requested: {reason}"),
        );
    }
    if let Some(problem) = meta_problem {
        // Epochs must keep growing: start past every mark still present.
        if let Ok(regions) = marks.all() {
            let newest = regions.iter().map(|r| r.epoch).max().unwrap_or(0);
            out.epoch = out.epoch.max(newest + 1);
        }
        return full_rebuild(
            out,
            data,
            shape,
            format!("checkpoint record unreadable: {problem}"),
        );
    }
    if let Some(epoch) = clean_epoch {
        out.epoch = out.epoch.max(epoch + 1);
        match read_snapshot(epoch) {
            Ok(Some(trees)) => {
                out.trees = trees;
                out.recovery = Recovery::Snapshot;
                out.base = Some(epoch);
                return Ok(out);
            }
            Ok(None) => snapshot_problem = Some("snapshot file missing".to_string()),
            Err(e) => snapshot_problem = Some(e.to_string()),
        }
    }
    // The checkpoint's buckets: from the base and what changed since, or all of them.
    let mut from_base = None;
    if clean_epoch.is_none() {
        match meta.base() {
            Ok(Some(epoch)) => match read_snapshot(epoch).and_then(|read| {
                read.map(|t| base::load(t, shape, buckets, changed))
                    .transpose()
            }) {
                Ok(Some(loaded)) => from_base = Some((epoch, loaded)),
                Ok(None) => snapshot_problem = Some("base snapshot missing".to_string()),
                Err(e) => snapshot_problem = Some(format!("base unusable: {e}")),
            },
            Ok(None) => {}
            Err(e) => snapshot_problem = Some(format!("base unusable: {e}")),
        }
    }
    out.base = from_base.as_ref().map(|(epoch, _)| *epoch);
    // Marks of epochs the checkpoint covers are obsolete (left by a crash before they
    // were all deleted).
    let attempt = marks
        .since(checkpoint.epoch.saturating_add(1))
        .and_then(|regions| {
            let (trees, changed) = match from_base {
                Some((_, loaded)) => (loaded.trees, Some(loaded.changed)),
                None => (Index::load_buckets(shape, buckets, None)?, None),
            };
            Ok((regions, trees, changed))
        });
    let (regions, trees, changed) = match attempt {
        Ok(found) => found,
        Err(e) => return full_rebuild(out, data, shape, format!("index unreadable: {e}")),
    };
    if let Some(max) = regions.iter().map(|r| r.epoch).max() {
        out.epoch = out.epoch.max(max + 1);
    }
    // Estimate the keys each path reads: a region holds about its share of its
    // partition's non-zero segments (a partition with no checkpointed content has only
    // what was written since, which its marks cover).
    let marked: u64 = regions.iter().map(|r| u64::from(r.count)).sum();
    let nonzero = |p: u32| trees.get(&p).map_or(0, |t| t.nonzero_segments());
    let to_rehash: f64 = regions
        .iter()
        .map(|r| f64::from(r.count) * nonzero(r.partition).max(1) as f64 / shape.segments as f64)
        .sum();
    let total: u64 = trees.values().map(|t| t.nonzero_segments().max(1)).sum();
    if to_rehash > FULL_REBUILD_FRACTION * total.max(1) as f64 {
        let reason = if trees.is_empty() {
            format!(
                "{marked} segments marked and no index checkpointed yet; one full scan is cheaper"
            )
        } else {
            format!(
                "{marked} segments marked since the last checkpoint (about {to_rehash:.0} of {total} keys); one full scan is cheaper"
            )
        };
        return full_rebuild(out, data, shape, reason);
    }
    out.trees = trees;
    let keys = rehash(&mut out, data, shape, &regions)?;
    out.needs_checkpoint = !regions.is_empty() || snapshot_problem.is_some();
    out.recovery = Recovery::Regions {
        from_base: changed.is_some(),
        changed: changed.unwrap_or(0),
        regions: regions.len() as u64,
        segments: marked,
        keys,
        snapshot_problem,
    };
    Ok(out)
}

fn rehash(out: &mut Recovered, data: &sled::Tree, shape: Shape, regions: &[Region]) -> Result<u64> {
    let pieces = regions
        .iter()
        .map(|r| Piece {
            partition: r.partition,
            first: r.first,
            count: r.count,
        })
        .collect();
    let mut keys = 0;
    for hashed in hash_small_pieces(data, shape, pieces)? {
        keys += hashed.keys;
        out.clock = out.clock.max(hashed.max_version);
        let piece = hashed.piece;
        let tree = out
            .trees
            .entry(piece.partition)
            .or_insert_with(|| Tree::new(shape));
        tree.replace_segments(piece.first, piece.count, &hashed.hashes);
    }
    Ok(keys)
}

fn full_rebuild(
    mut out: Recovered,
    data: &sled::Tree,
    shape: Shape,
    reason: String,
) -> Result<Recovered> {
    let scan = scan_all(data, shape, false, &mut |_| {})?;
    out.trees = scan.trees;
    out.base = None;
    out.clock = out.clock.max(scan.max_version);
    out.needs_checkpoint = true;
    out.full = true;
    out.recovery = Recovery::FullRebuild {
        keys: scan.keys,
        reason,
    };
    Ok(out)
}
