//! Rebuilding the index from the data while the store keeps serving: one partition at a
//! time, each re-read while only the writes to it wait.
//!
//! For each partition: hold its writes (those already inside the write gate finish
//! first), wait until the hasher has applied every update sent so far, scan the
//! partition's data, and swap the tree built from it in on the hasher thread, which
//! applies every later update on top of it. The hold then ends. Writes to other
//! partitions go on throughout. `meta.rebuild` is set first and cleared by the full
//! checkpoint at the end, so a rebuild cut short is finished by the next open.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::hasher::Hasher;
use crate::index::{key_prefixes, Index};
use crate::scan::{scan_partitions, stray_keys, Progress};
use crate::store::RebuildReport;

pub(crate) fn rebuild(
    index: &Index,
    hasher: &Hasher,
    progress: &mut dyn FnMut(Progress),
) -> Result<RebuildReport> {
    let shape = index.shape;
    index
        .meta
        .set_rebuild("an earlier rebuild did not finish")?;
    let with_data = key_prefixes(&index.data)?;
    let undecodable = stray_keys(&index.data, &with_data)?.len();
    // Partitions indexed without data too: their trees go.
    let mut partitions: BTreeSet<u32> = with_data.into_iter().collect();
    partitions.extend(index.trees().keys().copied());
    let mut done = Progress {
        keys: 0,
        segments_done: 0,
        segments_total: partitions.len() as u64 * shape.segments,
    };
    let (mut built, mut undecodable) = (0, undecodable);
    for partition in partitions {
        let held = index.gate.hold(partition);
        // What is left of a partition being dropped is not indexed. Read under the hold
        // (which paused the gate): a drop that had not begun by then waits for the hold.
        if index.dropping.contains(partition) {
            continue;
        }
        hasher.barrier()?;
        let scan = scan_partitions(&index.data, shape, &[partition], false, &mut |p| {
            progress(Progress {
                keys: done.keys + p.keys,
                segments_done: done.segments_done + p.segments_done,
                segments_total: done.segments_total,
            })
        })?;
        index.clock.observe_stored(scan.max_version);
        let tree = scan.trees.into_values().next();
        built += usize::from(tree.is_some());
        hasher.replace(partition, tree)?;
        drop(held);
        undecodable += scan.problems.len();
        done.keys += scan.keys;
        done.segments_done += shape.segments;
    }
    let checkpoint = hasher.checkpoint(true)?;
    Ok(RebuildReport {
        keys: done.keys,
        partitions: built,
        undecodable,
        checkpoint,
    })
}
