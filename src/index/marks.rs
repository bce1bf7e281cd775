//! Durable dirty marks: which regions of which tree may be newer than the last checkpoint.
//!
//! ```text
//! marks key:   epoch u64 BE | partition u32 BE | first segment u32 BE
//! marks value: segment count u32 LE
//! ```
//! A write inserts the mark of its (epoch, partition, region) before its data; sled
//! recovers a gap-free prefix of writes, so no data write survives a crash without its
//! mark. A checkpoint of epoch `e`, once flushed, makes the marks of epochs `<= e`
//! obsolete: recovery ignores them, and the hasher thread deletes them one at a time
//! between its other work, at least as many as it takes updates, so that deletes keep
//! up with inserts on a store that never stops writing (left for an idle moment, they
//! piled up by the tens of thousands per checkpoint, and sled's disk file grew without
//! bound). Not in sled batches: sled applies a batch under a database-wide write lock,
//! so tens of thousands of deletes at once held up writers for half a second. After a
//! crash, exactly the regions marked since the last checkpoint are re-hashed.
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

/// Bytes in a mark's key: epoch, partition, first segment, count.
const MARK_KEY: usize = 20;

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
    /// Marks of epochs up to this one are obsolete (a durable checkpoint covers them)
    /// and not yet all deleted.
    retired: Option<u64>,
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

/// A mark's key: the region's start key, then its count (u32 BE).
fn mark_key(epoch: u64, partition: u32, first: u32, count: u32) -> [u8; MARK_KEY] {
    let mut k = [0u8; MARK_KEY];
    for (dst, src) in k.iter_mut().zip(
        key(epoch, partition, first)
            .into_iter()
            .chain(count.to_be_bytes()),
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
                retired: None,
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
        let mut state = self.lock();
        state.sizes.insert(partition, len);
    }

    /// Forgets a partition that is being dropped: its region size, and which of its
    /// regions are marked this epoch, since the drop deletes its marks. (Remembered, they
    /// let a write after the drop skip its mark, and a crash then lost the write from
    /// the index.)
    pub(crate) fn forget(&self, partition: u32) {
        let mut state = self.lock();
        state.sizes.remove(&partition);
        state.seen.retain(|&(p, _, _)| p != partition);
    }

    /// Makes sure the region holding `segment` is durably marked for `epoch` before the
    /// caller writes data there. Cheap after the first call per region and epoch.
    pub(crate) fn mark(&self, epoch: u64, partition: u32, segment: u32) -> Result<()> {
        let mut state = self.lock();
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
        // skip the mark before it is in sled. The count is part of the key, so a mark of
        // the same start made with another region size this epoch is a mark of its own
        // (one blind insert, no read of the old value).
        self.tree
            .insert(mark_key(epoch, partition, first, count), &[])?;
        if cached {
            state.seen.insert((partition, first, count));
        }
        Ok(())
    }

    /// Every mark present, in key order.
    pub(crate) fn all(&self) -> Result<Vec<Region>> {
        self.since(0)
    }

    /// Every mark of an epoch `>= first`, in key order.
    pub(crate) fn since(&self, first: u64) -> Result<Vec<Region>> {
        let mut out = Vec::new();
        for item in self.tree.range(key(first, 0, 0)..) {
            let (k, v) = item?;
            let bad = || Corruption::BadLength {
                what: "dirty mark",
                location: format!("{:02x?}", &*k),
                expected: MARK_KEY,
                found: k.len(),
            };
            // The current layout carries the count in the key; marks written before it
            // (a crash across an upgrade) carry it in the value.
            let (head, count) = match (k.len(), v.len()) {
                (MARK_KEY, 0) => {
                    let (head, count) = k.split_at(16);
                    (head, count.try_into().map(u32::from_be_bytes))
                }
                (16, 4) => (&*k, (*v).try_into().map(u32::from_le_bytes)),
                _ => return Err(bad().into()),
            };
            let head: [u8; 16] = head.try_into().map_err(|_| bad())?;
            let count = count.map_err(|_| bad())?;
            let [e0, e1, e2, e3, e4, e5, e6, e7, p0, p1, p2, p3, f0, f1, f2, f3] = head;
            let region = Region {
                epoch: u64::from_be_bytes([e0, e1, e2, e3, e4, e5, e6, e7]),
                partition: u32::from_be_bytes([p0, p1, p2, p3]),
                first: u32::from_be_bytes([f0, f1, f2, f3]),
                count,
            };
            // The region may be any size (the option can change between opens), but it
            // must lie inside the tree, and its epoch must leave room to count on.
            let end = u64::from(region.first) + u64::from(region.count);
            if region.count == 0 || end > self.segments || region.epoch >= MAX_EPOCH {
                return Err(Corruption::OutOfRange {
                    what: "dirty mark",
                    location: format!("{:02x?}", &*k),
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

    /// Records that a durable checkpoint of `epoch` covers the marks of every epoch
    /// `<= epoch`, for [`Marks::clear_retired`] to delete.
    pub(crate) fn retire_through(&self, epoch: u64) {
        let mut state = self.lock();
        state.retired = state.retired.max(Some(epoch));
    }

    /// True while retired marks may be left to delete.
    pub(crate) fn retiring(&self) -> bool {
        self.lock().retired.is_some()
    }

    /// Deletes up to `max` retired marks, one key at a time, so writers never wait for
    /// it; true once none is left. On an error the rest are left for the next
    /// checkpoint to retire again (recovery ignores them meanwhile).
    pub(crate) fn clear_retired(&self, max: usize) -> Result<bool> {
        self.clear(max, false)
    }

    /// Deletes every retired mark (at a clean close, with no writer left: in batches).
    pub(crate) fn clear_all_retired(&self) -> Result<()> {
        while !self.clear(1 << 16, true)? {}
        Ok(())
    }

    fn clear(&self, max: usize, batched: bool) -> Result<bool> {
        let Some(through) = self.lock().retired else {
            return Ok(true);
        };
        let deleted = self.delete_through(through, max, batched);
        let mut state = self.lock();
        // All deleted, or an error: stop (unless a newer checkpoint retired more).
        if deleted.as_ref().map_or(true, |&n| n < max) && state.retired == Some(through) {
            state.retired = None;
        }
        deleted.map(|_| state.retired.is_none())
    }

    /// Deletes up to `max` marks of epochs `<= epoch`, in one sled batch or one key at
    /// a time; returns how many.
    fn delete_through(&self, epoch: u64, max: usize, batched: bool) -> Result<usize> {
        let end = key(epoch.saturating_add(1), 0, 0);
        let keys = self
            .tree
            .range(..end)
            .keys()
            .take(max)
            .collect::<std::result::Result<Vec<_>, _>>()?;
        if batched {
            let mut batch = sled::Batch::default();
            for key in &keys {
                batch.remove(key);
            }
            self.tree.apply_batch(batch)?;
        } else {
            for key in &keys {
                self.tree.remove(key)?;
            }
        }
        Ok(keys.len())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn marks() -> (tempfile::TempDir, Marks) {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new().path(dir.path()).open().unwrap();
        let marks = Marks::new(db.open_tree("marks").unwrap(), 16, 1 << 20);
        (dir, marks)
    }

    #[test]
    fn marks_of_either_layout_and_both_sizes_of_one_start_are_read_back() {
        let (_dir, marks) = marks();
        // Partition 7 has no size yet: one region of the whole tree. Sized within the
        // epoch, its next mark has the same start and a smaller count: a mark of its own.
        marks.mark(3, 7, 100).unwrap();
        marks.size_for(7, 1 << 10);
        marks.mark(3, 7, 100).unwrap();
        // Written by the layout before 2026-11-25: the count in the value.
        marks
            .tree
            .insert(key(2, 9, 64), &32u32.to_le_bytes())
            .unwrap();
        let region = |epoch, partition, first, count| Region {
            epoch,
            partition,
            first,
            count,
        };
        assert_eq!(
            marks.all().unwrap(),
            vec![
                region(2, 9, 64, 32),
                region(3, 7, 0, 16384),
                region(3, 7, 0, 1 << 20),
            ]
        );
        marks.retire_through(2);
        assert!(marks.retiring());
        assert!(marks.clear_retired(16).unwrap());
        assert!(!marks.retiring());
        assert_eq!(marks.all().unwrap().len(), 2);
    }
}
