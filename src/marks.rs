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
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::HashSet;
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
    tree: sled::Tree,
    region_segments: u32,
    segments: u64,
    /// Regions already marked in the current epoch: (epoch, set of (partition, region)).
    seen: Mutex<(u64, HashSet<(u32, u32)>)>,
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
            seen: Mutex::new((0, HashSet::new())),
        }
    }

    /// Makes sure the region holding `segment` is durably marked for `epoch` before the
    /// caller writes data there. Cheap after the first call per region and epoch.
    pub(crate) fn mark(&self, epoch: u64, partition: u32, segment: u32) -> Result<()> {
        let region = segment / self.region_segments;
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.0 < epoch {
            *seen = (epoch, HashSet::new());
        }
        let cached = seen.0 == epoch;
        if cached && seen.1.contains(&(partition, region)) {
            return Ok(());
        }
        let first = region * self.region_segments;
        let count = (self.segments - u64::from(first)).min(u64::from(self.region_segments)) as u32;
        // Inserted while holding the lock: a concurrent writer of the same region must not
        // skip the mark before it is in sled.
        self.tree
            .insert(key(epoch, partition, first), &count.to_le_bytes())?;
        if cached {
            seen.1.insert((partition, region));
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
