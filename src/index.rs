//! The Merkle index shared by writers, readers and the hasher thread: the in-memory
//! trees and their persisted form (packed buckets in the `index` sled tree).

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::bucket::{self, BucketId};
use crate::clock::{unix_ms, Clock};
use crate::dropping;
use crate::error::{Corruption, Result};
use crate::gate::Gate;
use crate::marks::Marks;
use crate::meta::{CheckpointInfo, Meta};
use crate::options::Shape;
use crate::parallel;
use crate::tree::Tree;

pub(crate) type Trees = BTreeMap<u32, Tree>;

pub(crate) struct Index {
    pub(crate) shape: Shape,
    pub(crate) db: sled::Db,
    pub(crate) data: sled::Tree,
    pub(crate) buckets: sled::Tree,
    /// Bad records moved out of `data` by `Store::quarantine`, under their data keys.
    pub(crate) quarantine: sled::Tree,
    pub(crate) meta: Meta,
    pub(crate) marks: Marks,
    pub(crate) gate: Gate,
    pub(crate) clock: Clock,
    /// Only the hasher thread takes this for writing, and only briefly.
    trees: RwLock<Trees>,
    pub(crate) last_checkpoint: Mutex<Option<CheckpointInfo>>,
}

impl Index {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        shape: Shape,
        db: sled::Db,
        data: sled::Tree,
        buckets: sled::Tree,
        quarantine: sled::Tree,
        meta: Meta,
        marks: Marks,
        trees: Trees,
        epoch: u64,
        clock: Clock,
    ) -> Result<Index> {
        // A damaged record was dealt with by recovery; the next checkpoint rewrites it.
        let last = meta.checkpoint().ok().flatten();
        for (&partition, tree) in &trees {
            marks.size_for(partition, tree.nonzero_segments());
        }
        Ok(Index {
            shape,
            db,
            data,
            buckets,
            quarantine,
            meta,
            marks,
            gate: Gate::new(epoch),
            clock,
            trees: RwLock::new(trees),
            last_checkpoint: Mutex::new(last),
        })
    }

    pub(crate) fn trees(&self) -> RwLockReadGuard<'_, Trees> {
        self.trees.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn trees_mut(&self) -> RwLockWriteGuard<'_, Trees> {
        self.trees.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Persists every dirty bucket and the checkpoint record for `epoch`, flushes, then
    /// deletes the marks the checkpoint covers. With `full`, buckets not in memory are
    /// removed too (after a rebuild). Called by the hasher thread, the only mutator.
    ///
    /// Work follows the change: only partitions with dirty pages are visited, and each
    /// is written in its own sled batch (its levels stay consistent with each other);
    /// the marks, deleted only after every batch is flushed, cover any partition whose
    /// batch a crash cut off.
    pub(crate) fn persist(&self, epoch: u64, full: bool) -> Result<CheckpointInfo> {
        let mut written = std::collections::HashSet::new();
        let dirty: Vec<u32> = {
            let trees = self.trees();
            trees
                .iter()
                .filter(|(_, t)| full || t.has_dirty())
                .map(|(&p, _)| p)
                .collect()
        };
        for partition in dirty {
            let mut batch = sled::Batch::default();
            {
                let trees = self.trees();
                let Some(tree) = trees.get(&partition) else {
                    continue;
                };
                for (level, b) in tree.dirty_pages() {
                    let id = BucketId {
                        partition,
                        level: level as u8,
                        bucket: b,
                    };
                    let len = self.shape.bucket_len(level) as usize;
                    match tree.page(level, b).and_then(|p| bucket::encode(id, p, len)) {
                        Some(bytes) => batch.insert(&id.key(), bytes),
                        None => batch.remove(&id.key()),
                    }
                    if full {
                        written.insert(id.key());
                    }
                }
            }
            self.buckets.apply_batch(batch)?;
        }
        if full {
            let mut batch = sled::Batch::default();
            for item in self.buckets.iter().keys() {
                let key = item?;
                if !written.contains(&*key) {
                    batch.remove(key);
                }
            }
            self.buckets.apply_batch(batch)?;
        }
        let info = CheckpointInfo {
            epoch,
            unix_ms: unix_ms(),
            clock: self.clock.current(),
        };
        self.meta.set_checkpoint(info)?;
        if full {
            self.meta.clear_rebuild()?;
        }
        self.db.flush()?;
        for (&partition, tree) in self.trees_mut().iter_mut() {
            if tree.has_dirty() {
                self.marks.size_for(partition, tree.nonzero_segments());
                tree.clear_dirty();
            }
        }
        self.marks.clear_through(epoch)?;
        *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(info);
        Ok(info)
    }

    /// Removes `partition` from memory and disk (see `dropping.rs`). Called by the hasher
    /// thread, so no checkpoint runs meanwhile.
    pub(crate) fn drop_partition(&self, partition: u32) -> Result<u64> {
        self.trees_mut().remove(&partition);
        self.marks.forget(partition);
        self.meta.set_dropping(partition, true)?;
        self.db.flush()?;
        let records = dropping::remove(
            &dropping::Trees {
                data: &self.data,
                buckets: &self.buckets,
                marks: &self.marks.tree,
                quarantine: &self.quarantine,
            },
            partition,
        )?;
        self.meta.set_dropping(partition, false)?;
        Ok(records)
    }

    /// Loads every partition's tree from the persisted buckets (crash recovery).
    pub(crate) fn load_buckets(shape: Shape, buckets: &sled::Tree) -> Result<Trees> {
        // Split the key space at a few points inside each partition's segment level so
        // every core reads and checks its share.
        let segment_buckets = shape.segments / shape.bucket_len(shape.levels);
        let cuts = 4u64;
        let mut bounds = vec![Bound::Unbounded];
        for partition in key_prefixes(buckets)? {
            for i in 1..cuts {
                let id = BucketId {
                    partition,
                    level: shape.levels as u8,
                    bucket: (segment_buckets * i / cuts) as u32,
                };
                bounds.push(Bound::Included(id.key().to_vec()));
            }
        }
        bounds.push(Bound::Unbounded);
        let ranges: Vec<_> = bounds
            .windows(2)
            .map(|w| (w[0].clone(), exclusive(&w[1])))
            .collect();
        let loaded = parallel::map(
            &ranges,
            |range| {
                let mut out = Vec::new();
                for item in buckets.range::<Vec<u8>, _>(range.clone()) {
                    let (key, value) = item?;
                    let id = BucketId::from_key(&key)?;
                    let level = u32::from(id.level);
                    if !(1..=shape.levels).contains(&level) {
                        return Err(Corruption::OutOfRange {
                            what: "index bucket",
                            location: id.describe(),
                            detail: format!("level outside 1..={}", shape.levels),
                        }
                        .into());
                    }
                    let page = bucket::decode(id, &value, shape.bucket_len(level) as usize)?;
                    out.push((id, page));
                }
                Ok(out)
            },
            &mut || {},
        )?;
        let mut trees = Trees::new();
        for (id, page) in loaded.into_iter().flatten() {
            let level = u32::from(id.level);
            let tree = trees
                .entry(id.partition)
                .or_insert_with(|| Tree::new(shape));
            if !tree.load_page(level, id.bucket, page) {
                return Err(Corruption::BadHeader {
                    what: "index bucket",
                    location: id.describe(),
                    detail: format!(
                        "outside a tree of width {} and {} levels",
                        shape.width, shape.levels
                    ),
                }
                .into());
            }
        }
        for (&partition, tree) in trees.iter_mut() {
            tree.recompute_root();
            if let Some((level, node)) = tree.first_inconsistency() {
                return Err(Corruption::BadHeader {
                    what: "index",
                    location: format!("partition {partition} level {level} node {node}"),
                    detail: "node is not the XOR of its children".into(),
                }
                .into());
            }
            tree.clear_dirty();
        }
        Ok(trees)
    }
}

/// The distinct partitions (first four key bytes) of a tree keyed by partition, by seeking.
pub(crate) fn key_prefixes(tree: &sled::Tree) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut from = 0u32;
    while let Some((key, _)) = tree.range(from.to_be_bytes()..).next().transpose()? {
        let Some(prefix) = key.get(..4).and_then(|p| <[u8; 4]>::try_from(p).ok()) else {
            break;
        };
        let p = u32::from_be_bytes(prefix);
        out.push(p);
        match p.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    Ok(out)
}

fn exclusive(bound: &Bound<Vec<u8>>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(k) => Bound::Excluded(k.clone()),
        other => other.clone(),
    }
}
