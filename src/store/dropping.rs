//! Dropping a partition: its data, index buckets, marks and quarantined records are
//! removed for good (a node gives a partition away when the ring changes).
//!
//! The intent is recorded in `meta` (`dropping`) and made durable first; the removal
//! runs in bounded batches; the intent is cleared last. A crash part-way leaves the
//! intent, and the next open finishes the drop before it recovers the index, so a
//! half-dropped partition never comes back.

use crate::error::Result;
use crate::meta::Meta;

/// Keys removed per sled batch.
const BATCH: usize = 10_000;

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
    let mut batch = sled::Batch::default();
    for item in trees.marks.iter().keys() {
        let key = item?;
        if key.get(8..12) == Some(prefix.as_slice()) {
            batch.remove(key);
        }
    }
    trees.marks.apply_batch(batch)?;
    Ok(records)
}

fn remove_prefix(tree: &sled::Tree, prefix: &[u8]) -> Result<u64> {
    let mut removed = 0u64;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0;
        for item in tree.scan_prefix(prefix).keys().take(BATCH) {
            batch.remove(item?);
            n += 1;
        }
        if n == 0 {
            return Ok(removed);
        }
        tree.apply_batch(batch)?;
        removed += n as u64;
    }
}

/// Finishes every drop a crash interrupted; returns how many there were (if any, the
/// caller must not trust a snapshot taken before the drop).
pub(crate) fn finish_interrupted(meta: &Meta, trees: &Trees<'_>) -> Result<usize> {
    let dropping = meta.dropping()?;
    for &partition in &dropping {
        remove(trees, partition)?;
        meta.set_dropping(partition, false)?;
    }
    Ok(dropping.len())
}
