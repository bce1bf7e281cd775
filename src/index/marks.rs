//! Durable dirty marks: which regions of which tree may be newer than the last checkpoint.
//!
//! ```text
//! marks key:   epoch u64 BE | partition u32 BE | first segment u32 BE
//! marks value: segment count u32 LE
//! ```
//! A write inserts the mark of its (epoch, partition, region) before its data; sled
//! recovers a gap-free prefix of writes, so no data write survives a crash without its
//! mark. A checkpoint of epoch `e` deletes marks of epochs `<= e` once it is flushed.
//! After a crash, exactly the marked regions are re-hashed.
//!
//! Regions are sized per partition so that each holds about `region_segments` keys: a
//! dense partition uses `region_segments` segments, one with `n` non-zero segments out
//! of `S` uses `region_segments * S / n` (rounded down to a power of two, at most `S`).
//! So marks per epoch, and the keys a recovery re-hashes, follow the writes, however
//! many partitions share them. Sizes are recomputed at each checkpoint; marks carry
//! their own extent, so sizes may differ between marks.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::error::{Corruption, Result};
use crate::meta::MAX_EPOCH;

/// A run of segments of one partition that must be re-hashed after a crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub epoch: u64,
    pub partition: u32,
    pub first: u32,
    pub count: u32,
}

pub(crate) struct Marks {
    pub(crate) tree: sled::Tree,
    region_segments: u32,
    segments: u64,
    state: Mutex<State>,
}

struct State {
    epoch: u64,
    /// Regions marked in `epoch`: (partition, first segment, count).
    seen: HashSet<(u32, u32, u32)>,
    /// Region length per partition; partitions not listed (new ones) use one region.
    sizes: HashMap<u32, u64>,
}

fn key(epoch: u64, partition: u32, first: u32) -> [u8; 16] {
    let mut k = [0u8; 16];
    for (dst, src) in k.iter_mut().zip(
        epoch
            .to_be_bytes()
            .into_iter()
            .chain(partition.to_be_bytes())
            .chain(first.to_be_bytes()),
    ) {
        *dst = src;
    }
    k
}

impl Marks {
    pub(crate) fn new(tree: sled::Tree, region_segments: u32, segments: u64) -> Marks {
        Marks {
            tree,
            region_segments,
            segments,
            state: Mutex::new(State {
                epoch: 0,
                seen: HashSet::new(),
                sizes: HashMap::new(),
            }),
        }
    }

    /// Sizes the regions of `partition` for its `nonzero` segments (see the module docs).
    pub(crate) fn size_for(&self, partition: u32, nonzero: u64) {
        let min = u64::from(self.region_segments);
        let target = min.saturating_mul(self.segments) / nonzero.max(1);
        let len = if target >= self.segments {
            self.segments
        } else {
            (1u64 << target.max(1).ilog2()).clamp(min, self.segments)
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sizes.insert(partition, len);
    }

    /// Forgets a partition's region size (it was dropped).
    pub(crate) fn forget(&self, partition: u32) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sizes.remove(&partition);
    }

    /// Makes sure the region holding `segment` is durably marked for `epoch` before the
    /// caller writes data there. Cheap after the first call per region and epoch.
    pub(crate) fn mark(&self, epoch: u64, partition: u32, segment: u32) -> Result<()> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.epoch < epoch {
            state.epoch = epoch;
            state.seen.clear();
        }
        let len = state
            .sizes
            .get(&partition)
            .copied()
            .unwrap_or(self.segments);
        let first = u64::from(segment) / len * len;
        // A region of a whole 2^32-segment tree has a count that does not fit u32: such
        // a tree is marked in two halves.
        let count = (self.segments - first)
            .min(len)
            .min(u64::from(u32::MAX / 2 + 1));
        let first = (u64::from(segment) - first) / count * count + first;
        let (first, count) = (first as u32, count as u32);
        let cached = state.epoch == epoch;
        if cached && state.seen.contains(&(partition, first, count)) {
            return Ok(());
        }
        // Inserted while holding the lock: a concurrent writer of the same region must not
        // skip the mark before it is in sled. A mark of the same start made with another
        // region size this epoch keeps the larger extent.
        self.tree
            .fetch_and_update(key(epoch, partition, first), |old| {
                let old = old
                    .and_then(|o| <[u8; 4]>::try_from(o).ok())
                    .map_or(0, u32::from_le_bytes);
                Some(old.max(count).to_le_bytes().to_vec())
            })?;
        if cached {
            state.seen.insert((partition, first, count));
        }
        Ok(())
    }

    /// Every mark present, in key order.
    pub(crate) fn all(&self) -> Result<Vec<Region>> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            let (k, v) = item?;
            let bad = || Corruption::BadLength {
                what: "dirty mark",
                location: format!("{:02x?}", &*k),
                expected: 16,
                found: k.len(),
            };
            let k: [u8; 16] = (*k).try_into().map_err(|_| bad())?;
            let v: [u8; 4] = (*v).try_into().map_err(|_| bad())?;
            let [e0, e1, e2, e3, e4, e5, e6, e7, p0, p1, p2, p3, f0, f1, f2, f3] = k;
            let region = Region {
                epoch: u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
                partition: u32::from_be_bytes([p0, p1, p2, p3]),
                first: u32::from_be_bytes([f0, f1, f2, f3]),
                count: u32::from_le_bytes(v),
            };
            // The region may be any size (the option can change between opens), but it
            // must lie inside the tree, and its epoch must leave room to count on.
            let end = u64::from(region.first) + u64::from(region.count);
            if region.count == 0 || end > self.segments || region.epoch >= MAX_EPOCH {
                return Err(Corruption::OutOfRange {
                    what: "dirty mark",
                    location: format!("{:02x?}", &k),
                    detail: format!(
                        "epoch {} segments {}..{end} (a tree has {} segments)",
                        region.epoch, region.first, self.segments
                    ),
                }
                .into());
            }
            out.push(region);
        }
        Ok(out)
    }

    /// Deletes the marks of every epoch `<= epoch`.
    pub(crate) fn clear_through(&self, epoch: u64) -> Result<usize> {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in self.tree.range(..key(epoch.saturating_add(1), 0, 0)) {
            batch.remove(item?.0);
            n += 1;
        }
        self.tree.apply_batch(batch)?;
        Ok(n)
    }
}
