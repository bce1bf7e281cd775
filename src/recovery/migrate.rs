//! Bringing a store written by an older format version up to the current one.
//!
//! Format 1 to 2: tombstones gain the time this store learned of the delete, which
//! `purge_tombstones` measures its grace from. A format 1 tombstone has no such time, so
//! it is rewritten with the time of the migration: its grace restarts, which can only
//! keep a tombstone longer, never resurrect a deleted value. Live records keep their
//! format 1 layout (identical to format 2 for values) and entry hashes do not change.
//! Index buckets changed layout (dense to sparse pages), so the index is rebuilt from
//! the data once: `meta.rebuild` is set with the new format and cleared only by the
//! full checkpoint of the rebuilt index. The migration is idempotent: a crash part-way
//! leaves `format = 1` (or the rebuild request) and the next open finishes it.

use crate::clock::unix_ms_not_behind;
use crate::error::Result;
use crate::meta::Meta;
use crate::record::RecordHeader;
use crate::FORMAT_VERSION;

/// Records rewritten per sled batch.
const BATCH: usize = 10_000;

pub(crate) fn to_current(db: &sled::Db, data: &sled::Tree, meta: &Meta) -> Result<u64> {
    let now = unix_ms_not_behind();
    let mut batch = sled::Batch::default();
    let (mut queued, mut rewritten) = (0u64, 0u64);
    for item in data.iter() {
        let (key, value) = item?;
        if !RecordHeader::is_v1_tombstone(&value) {
            continue;
        }
        let Ok(mut header) = RecordHeader::decode(&value, String::new) else {
            continue; // undecodable: left for verify to report and quarantine
        };
        header.deleted_ms = now;
        batch.insert(key, header.encode(header.value(&value)));
        queued += 1;
        if queued == BATCH as u64 {
            data.apply_batch(std::mem::take(&mut batch))?;
            rewritten += queued;
            queued = 0;
        }
    }
    data.apply_batch(batch)?;
    rewritten += queued;
    // sled keeps its writes in order, so the format is never ahead of the records, and
    // the rebuild request is never behind the format.
    meta.set_rebuild("the index buckets are in format 1's dense layout")?;
    meta.set_format(FORMAT_VERSION)?;
    db.flush()?;
    Ok(rewritten)
}
