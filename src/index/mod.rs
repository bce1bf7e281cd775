//! The Merkle index shared by writers, readers and the hasher thread: the in-memory
//! trees and their persisted form (packed buckets in the `index` sled tree).

pub(crate) mod base;
pub(crate) mod bucket;
pub(crate) mod gate;
pub(crate) mod hasher;
pub(crate) mod level;
pub(crate) mod marks;
pub(crate) mod page;
pub(crate) mod pages;
pub(crate) mod parallel;
pub(crate) mod snapshot;
pub(crate) mod tree;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::base::Base;
use crate::bucket::BucketId;
use crate::clock::{unix_ms, Clock};
use crate::dropping::{self, Underway};
use crate::error::Result;
use crate::gate::Gate;
use crate::marks::Marks;
use crate::meta::{CheckpointInfo, Meta};
use crate::options::Shape;
use crate::tree::Tree;
use crate::Hash;

pub(crate) type Trees = BTreeMap<u32, Tree>;

/// Buckets a checkpoint writes (or removes) per sled batch.
const BUCKETS_PER_BATCH: usize = 256;

pub(crate) struct Index {
    pub(crate) shape: Shape,
    pub(crate) db: sled::Db,
    pub(crate) data: sled::Tree,
    pub(crate) buckets: sled::Tree,
    /// Bad records moved out of `data` by `Store::quarantine`, under their data keys.
    pub(crate) quarantine: sled::Tree,
    pub(crate) meta: Meta,
    pub(crate) marks: Marks,
    /// The snapshot crash recovery starts from, and what changed since.
    pub(crate) base: Base,
    pub(crate) gate: Gate,
    /// Partitions being dropped: writes to them are refused.
    pub(crate) dropping: Underway,
    pub(crate) clock: Clock,
    /// Only the hasher thread takes this for writing, and only briefly.
    trees: RwLock<Trees>,
    pub(crate) last_checkpoint: Mutex<Option<CheckpointInfo>>,
    /// Why the last checkpoint failed, until one succeeds.
    pub(crate) checkpoint_error: Mutex<Option<String>>,
    /// Bucket batches a checkpoint may still write before it fails, as a crash between
    /// two of its batches would leave the buckets (`None`: no limit; tests only).
    #[cfg(feature = "test-hooks")]
    pub(crate) batches_before_failure: Mutex<Option<usize>>,
    /// Buckets per batch in place of [`BUCKETS_PER_BATCH`] (tests only).
    #[cfg(feature = "test-hooks")]
    pub(crate) batch_size_for_tests: Mutex<Option<usize>>,
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
        base: Base,
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
            base,
            gate: Gate::new(epoch),
            dropping: Underway::default(),
            clock,
            trees: RwLock::new(trees),
            last_checkpoint: Mutex::new(last),
            checkpoint_error: Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            batches_before_failure: Mutex::new(None),
            #[cfg(feature = "test-hooks")]
            batch_size_for_tests: Mutex::new(None),
        })
    }

    pub(crate) fn trees(&self) -> RwLockReadGuard<'_, Trees> {
        self.trees.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn trees_mut(&self) -> RwLockWriteGuard<'_, Trees> {
        self.trees.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one batch of a checkpoint's buckets.
    fn apply_buckets(&self, batch: sled::Batch) -> Result<()> {
        #[cfg(feature = "test-hooks")]
        {
            let mut left = self
                .batches_before_failure
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            match left.as_mut() {
                Some(0) => {
                    let cut = std::io::Error::other("cut short between two batches (test hook)");
                    return Err(crate::error::Error::io("checkpoint", cut));
                }
                Some(n) => *n -= 1,
                None => {}
            }
        }
        Ok(self.buckets.apply_batch(batch)?)
    }

    /// Removes the buckets of `partition` that `stale` picks (and any key under it that
    /// is not a bucket's), a bounded batch at a time.
    fn remove_buckets(&self, partition: u32, stale: impl Fn(&BucketId) -> bool) -> Result<()> {
        let per_batch = self.buckets_per_batch();
        let mut batch = sled::Batch::default();
        let mut queued = 0usize;
        for key in self.buckets.scan_prefix(partition.to_be_bytes()).keys() {
            let key = key?;
            if BucketId::from_key(&key).is_ok_and(|id| !stale(&id)) {
                continue;
            }
            batch.remove(key);
            queued += 1;
            if queued % per_batch == 0 {
                self.apply_buckets(std::mem::take(&mut batch))?;
            }
        }
        if queued % per_batch != 0 {
            self.apply_buckets(batch)?;
        }
        Ok(())
    }

    /// Buckets per sled batch of a checkpoint ([`BUCKETS_PER_BATCH`]; tests may set it).
    fn buckets_per_batch(&self) -> usize {
        #[cfg(feature = "test-hooks")]
        if let Some(n) = *self
            .batch_size_for_tests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
        {
            return n.max(1);
        }
        BUCKETS_PER_BATCH
    }

    /// Persists every dirty bucket and the checkpoint record for `epoch`, flushes, then
    /// retires the marks the checkpoint covers (the hasher deletes them later). With `full`, buckets not in memory are
    /// removed too (after a rebuild). Called by the hasher thread, the only mutator.
    ///
    /// Work follows the change: only partitions with dirty pages (or no persisted span)
    /// are visited, each in bounded batches of its own; a partition whose span changes
    /// has its new buckets written before the old are removed. The marks, obsolete only
    /// once every batch is flushed, cover any bucket whose batch a crash cut off. Every
    /// bucket is listed in the base's `changed` tree first, and the base is renewed at
    /// the end when due (`base.rs`).
    pub(crate) fn persist(&self, epoch: u64, full: bool) -> Result<CheckpointInfo> {
        let plans = self.plan(full);
        // Listed before written: a bucket that differs from the base is listed.
        self.base.record(
            plans
                .iter()
                .map(|p| (p.partition, p.listed_whole, &p.ids[..])),
        )?;
        let page_len = self.shape.bucket_len(self.shape.levels) as usize;
        let per_batch = self.buckets_per_batch();
        let mut spans = Vec::with_capacity(plans.len());
        let mut written = 0u64;
        for plan in plans {
            let trees = self.trees();
            let Some(tree) = trees.get(&plan.partition) else {
                continue;
            };
            // sled applies a batch under a database-wide write lock, so a dense
            // partition's 4,096 buckets in one batch held every writer for tens of
            // milliseconds: a partition is written a few hundred buckets at a time
            // (FORMAT.md says why that is safe, a change of span included).
            let mut batch = sled::Batch::default();
            for (i, id) in plan.ids.iter().enumerate() {
                let mut pages = Vec::new();
                let first = u64::from(id.bucket) * plan.per_bucket;
                tree.for_each_segment_page_in(first, plan.per_bucket, |p, v| pages.push((p, v)));
                match bucket::encode(*id, page_len, pages) {
                    Some(encoded) => {
                        written += encoded.len() as u64;
                        batch.insert(&id.key(), encoded)
                    }
                    None => batch.remove(&id.key()),
                }
                if (i + 1) % per_batch == 0 {
                    self.apply_buckets(std::mem::take(&mut batch))?;
                }
            }
            drop(trees);
            if plan.ids.len() % per_batch != 0 {
                self.apply_buckets(batch)?;
            }
            if plan.rewrite {
                // Only once the new buckets are all written: a crash in between leaves
                // both, which a reader joins (FORMAT.md).
                let total = bucket::buckets_per_partition(self.shape, plan.span);
                self.remove_buckets(plan.partition, |id| {
                    id.span != plan.span || u64::from(id.bucket) >= total
                })?;
            }
            spans.push((plan.partition, plan.span));
        }
        self.base.written(written);
        if full {
            // Partitions with buckets but no tree any more.
            let live = self
                .trees()
                .keys()
                .copied()
                .collect::<std::collections::HashSet<_>>();
            let gone: Vec<u32> = key_prefixes(&self.buckets)?
                .into_iter()
                .filter(|p| !live.contains(p))
                .collect();
            self.base.record(gone.iter().map(|&p| (p, true, &[][..])))?;
            for partition in gone {
                self.remove_buckets(partition, |_| true)?;
            }
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
        let mut trees = self.trees_mut();
        for (partition, span) in spans {
            if let Some(tree) = trees.get_mut(&partition) {
                tree.persisted_span = Some(span);
                self.marks.size_for(partition, tree.nonzero_segments());
                tree.clear_dirty();
            }
        }
        drop(trees);
        // Obsolete now; deleted a batch at a time by the hasher thread (see marks.rs).
        self.marks.retire_through(epoch);
        *self
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(info);
        if self.base.due() {
            self.base.renew(self, epoch)?;
        }
        Ok(info)
    }

    /// What a checkpoint writes: for each partition with changes (every partition, with
    /// `full`), its span and the buckets to rewrite.
    fn plan(&self, full: bool) -> Vec<Plan> {
        let trees = self.trees();
        let mut plans = Vec::new();
        // A tree without a persisted span was read from buckets of several spans (a
        // crash cut a change of span short): rewriting it leaves one.
        let due = |t: &Tree| full || t.has_dirty() || t.persisted_span.is_none();
        for (&partition, tree) in trees.iter().filter(|(_, t)| due(t)) {
            let span = bucket::span_for(self.shape, tree.nonzero_segments(), tree.persisted_span);
            let per_bucket = u64::from(self.shape.width).pow(u32::from(span));
            let total = bucket::buckets_per_partition(self.shape, span);
            let rewrite = full || tree.persisted_span != Some(span);
            let buckets: Vec<u32> = if rewrite {
                (0..total as u32).collect()
            } else {
                let mut b: Vec<u32> = tree
                    .dirty_segment_pages()
                    .into_iter()
                    .map(|p| (u64::from(p) / per_bucket) as u32)
                    .collect();
                b.dedup();
                b
            };
            let ids: Vec<BucketId> = buckets
                .into_iter()
                .map(|bucket| BucketId {
                    partition,
                    span,
                    bucket,
                })
                .collect();
            plans.push(Plan {
                partition,
                span,
                per_bucket,
                rewrite,
                // Where most of its buckets are written, recovery reads it whole anyway.
                listed_whole: rewrite || ids.len() as u64 * 2 > total,
                ids,
            });
        }
        plans
    }

    /// Makes the drop of `partition` durable (its intent is recorded already) and takes
    /// the partition out of the index. Called by the hasher thread (no checkpoint
    /// persists the partition after this) while writes are paused.
    pub(crate) fn begin_drop(&self, partition: u32) -> Result<()> {
        self.db.flush()?;
        self.trees_mut().remove(&partition);
        self.marks.forget(partition);
        self.base.record([(partition, true, &[][..])].into_iter())
    }

    /// Removes what `partition` left on disk after [`Index::begin_drop`] (writes go on,
    /// none to it); returns how many data records it held.
    pub(crate) fn remove_dropped(&self, partition: u32) -> Result<u64> {
        dropping::remove(
            &dropping::Trees {
                data: &self.data,
                buckets: &self.buckets,
                marks: &self.marks.tree,
                quarantine: &self.quarantine,
            },
            partition,
        )
    }

    /// Loads every partition's tree (or those in `only`) from the persisted buckets
    /// (crash recovery): the segment hashes are read, every level above is recomputed.
    /// Partitions are read in parallel, every range checked. A partition without
    /// buckets has no tree. A partition with buckets of several spans (a crash cut a
    /// change of span short) is their union, each segment taken once (FORMAT.md says
    /// why that is exact), with no persisted span, so its next checkpoint rewrites it.
    pub(crate) fn load_buckets(
        shape: Shape,
        buckets: &sled::Tree,
        only: Option<&BTreeSet<u32>>,
    ) -> Result<Trees> {
        // With few partitions, each one's buckets are cut in a few slices so every core
        // reads and decodes a share, and the trees are built after; with many, each
        // partition is one piece of work that reads its buckets and builds its tree.
        let partitions = match only {
            Some(set) => set.iter().copied().collect(),
            None => key_prefixes(buckets)?,
        };
        let mut spans: Vec<(u32, Vec<u8>)> = Vec::new();
        for partition in partitions {
            let found = spans_of(buckets, partition)?;
            if !found.is_empty() {
                spans.push((partition, found));
            }
        }
        let slices_each: u64 = if spans.len() >= 8 { 1 } else { 4 };
        let slices: Vec<(u32, u8, u64, bool)> = spans
            .iter()
            .flat_map(|(p, found)| {
                let whole = slices_each == 1 && found.len() == 1;
                found.iter().flat_map(move |&span| {
                    (0..slices_each).map(move |slice| (*p, span, slice, whole))
                })
            })
            .collect();
        let build = |partition: u32, span: Option<u8>, segments: Vec<(u32, Hash)>| {
            let mut tree = Tree::from_persisted_segments(shape, segments);
            tree.persisted_span = span;
            (partition, tree)
        };
        let read = parallel::map(
            &slices,
            |&(partition, span, slice, whole)| {
                let key = |bucket: u64| {
                    BucketId {
                        partition,
                        span,
                        bucket: bucket as u32,
                    }
                    .key()
                    .to_vec()
                };
                // The span's buckets, so every slice gets a share.
                let per_bucket = u64::from(shape.width).saturating_pow(u32::from(span));
                let buckets_total = bucket::segment_pages(shape)
                    .div_ceil(per_bucket.max(1))
                    .max(1);
                let lo = key(buckets_total * slice / slices_each);
                let range = if slice + 1 == slices_each {
                    // The last slice runs to the end of the span (so a bucket number past
                    // the tree is read, and refused by its decode).
                    buckets.range(lo..=key(u64::from(u32::MAX)))
                } else {
                    buckets.range(lo..key(buckets_total * (slice + 1) / slices_each))
                };
                let mut segments = Vec::new();
                for item in range {
                    let (k, value) = item?;
                    let id = BucketId::from_key(&k)?;
                    bucket::decode(id, shape, &value, &mut |s, h| segments.push((s, h)))?;
                }
                Ok(if whole {
                    Loaded::Tree(build(partition, Some(span), segments))
                } else {
                    Loaded::Slice(Slice {
                        partition,
                        span,
                        segments,
                    })
                })
            },
            &mut || {},
        )?;
        let mut trees = Trees::new();
        let mut slices: Vec<Slice> = Vec::new();
        for loaded in read {
            match loaded {
                Loaded::Tree((partition, tree)) => {
                    trees.insert(partition, tree);
                }
                Loaded::Slice(slice) => slices.push(slice),
            }
        }
        // Each remaining partition's tree from its slices, partitions in parallel.
        let partitions: Vec<&[Slice]> =
            slices.chunk_by(|a, b| a.partition == b.partition).collect();
        let built = parallel::map(
            &partitions,
            |chunk| {
                let (partition, span) = chunk.first().map_or((0, 0), |c| (c.partition, c.span));
                let mut segments: Vec<(u32, Hash)> = chunk
                    .iter()
                    .flat_map(|c| c.segments.iter().copied())
                    .collect();
                if chunk.iter().all(|c| c.span == span) {
                    return Ok(build(partition, Some(span), segments));
                }
                // Several spans: a segment two of them list is taken once (building
                // XORs repeats), from the lower span (the slices are in span order).
                segments.sort_by_key(|&(segment, _)| segment);
                segments.dedup_by_key(|&mut (segment, _)| segment);
                Ok(build(partition, None, segments))
            },
            &mut || {},
        )?;
        trees.extend(built);
        Ok(trees)
    }
}

/// The spans of `partition`'s buckets, in increasing order (one, unless a crash cut a
/// change of span short), by seeking past each.
fn spans_of(buckets: &sled::Tree, partition: u32) -> Result<Vec<u8>> {
    let mut found = Vec::new();
    let mut from = partition.to_be_bytes().to_vec();
    while let Some(key) = buckets.range(from.as_slice()..).keys().next().transpose()? {
        if !key.starts_with(&partition.to_be_bytes()) {
            break;
        }
        let span = BucketId::from_key(&key)?.span;
        found.push(span);
        let Some(next) = span.checked_add(1) else {
            break;
        };
        from.truncate(4);
        from.push(next);
    }
    Ok(found)
}

/// One partition's part of a checkpoint.
struct Plan {
    partition: u32,
    span: u8,
    /// Segment pages per bucket at `span`.
    per_bucket: u64,
    /// Every bucket is rewritten and stale ones removed (a new span, or a rebuild).
    rewrite: bool,
    /// Listed in `changed` as a whole partition rather than bucket by bucket.
    listed_whole: bool,
    ids: Vec<BucketId>,
}

/// What one piece of the bucket load yields: a partition's whole tree, or one slice of
/// a partition's segments, to be joined with the others.
enum Loaded {
    Tree((u32, Tree)),
    Slice(Slice),
}

/// The non-zero segments of one slice of a partition's buckets.
struct Slice {
    partition: u32,
    span: u8,
    segments: Vec<(u32, Hash)>,
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
