//! Dropping a partition: its data, index buckets, marks and quarantined records are
//! removed for good (a node gives a partition away when the ring changes).
//!
//! With writes paused for a moment, the partition leaves the index and the intent is
//! recorded in `meta` (`dropping`) and made durable. Then writes go on while its keys
//! are removed one by one (a sled batch would hold every other writer for its length);
//! writes to the partition itself are refused ([`Underway`]) until the intent is cleared,
//! again with writes paused. A crash part-way leaves the intent, and the next open
//! finishes the drop before it recovers the index, so a half-dropped partition never
//! comes back.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{RwLock, RwLockWriteGuard};

use crate::error::Result;
use crate::meta::Meta;

/// The partitions whose drop has begun and not finished. Changed only while the write
/// gate is paused (the guard is the proof), so a write inside the gate reads it stable,
/// and so do a verify holding the pause and a rebuild holding the partition (its hold
/// paused the gate, and a drop waits for the hold): a partition in it has no tree, and
/// what data it still has is on its way out.
#[derive(Default)]
pub(crate) struct Underway {
    /// Any partition in `partitions` (the write path's only cost when none is).
    any: AtomicBool,
    /// Each partition, and whether a call is removing it now (false: a removal failed
    /// and may be retried; writes stay refused, since the next open would remove them).
    partitions: RwLock<BTreeMap<u32, bool>>,
}

impl Underway {
    pub(crate) fn contains(&self, partition: u32) -> bool {
        // Writers to other partitions share the read side while a drop runs.
        self.any.load(Relaxed)
            && self
                .partitions
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains_key(&partition)
    }

    /// Starts (or retries) a drop: `None` if another call is removing the partition
    /// now, else whether an earlier call left it pending.
    pub(crate) fn begin(&self, partition: u32, _paused: &RwLockWriteGuard<'_, ()>) -> Option<bool> {
        let mut partitions = self.lock();
        let earlier = partitions.insert(partition, true);
        if earlier == Some(true) {
            return None;
        }
        self.any.store(true, Relaxed);
        Some(earlier.is_some())
    }

    /// Ends a call's drop: finished, or (`keep_refusing`) left pending for a retry.
    pub(crate) fn end(
        &self,
        partition: u32,
        keep_refusing: bool,
        _paused: &RwLockWriteGuard<'_, ()>,
    ) {
        let mut partitions = self.lock();
        if keep_refusing {
            partitions.insert(partition, false);
        } else {
            partitions.remove(&partition);
        }
        self.any.store(!partitions.is_empty(), Relaxed);
    }

    fn lock(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u32, bool>> {
        self.partitions.write().unwrap_or_else(|p| p.into_inner())
    }
}

/// The trees a partition lives in.
pub(crate) struct Trees<'a> {
    pub data: &'a sled::Tree,
    pub buckets: &'a sled::Tree,
    pub marks: &'a sled::Tree,
    pub quarantine: &'a sled::Tree,
}

/// Removes everything of `partition`; returns how many data records it held.
pub(crate) fn remove(trees: &Trees<'_>, partition: u32) -> Result<u64> {
    let prefix = partition.to_be_bytes();
    let records = remove_prefix(trees.data, &prefix)?;
    remove_prefix(trees.buckets, &prefix)?;
    remove_prefix(trees.quarantine, &prefix)?;
    // Marks are keyed by epoch first: the partition's are spread through the tree.
    for item in trees.marks.iter().keys() {
        let key = item?;
        if key.get(8..12) == Some(prefix.as_slice()) {
            trees.marks.remove(key)?;
        }
    }
    Ok(records)
}

/// Removes every key under `prefix`, one at a time: no write lands there meanwhile.
fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<u64> {
    let mut removed = 0u64;
    for item in tree.scan_prefix(prefix).keys() {
        tree.remove(item?)?;
        removed += 1;
    }
    Ok(removed)
}

/// Finishes every drop a crash interrupted; returns how many there were. A snapshot
/// taken before holds their trees: the caller lists them in the base's `changed` first.
pub(crate) fn finish_interrupted(meta: &Meta, trees: &Trees<'_>) -> Result<usize> {
    let dropping = meta.dropping()?;
    for &partition in &dropping {
        remove(trees, partition)?;
        meta.set_dropping(partition, false)?;
    }
    Ok(dropping.len())
}
