//! Rebuilding the index from the data while the store keeps serving: a few partitions
//! at a time, each group re-read while only the writes to it wait.
//!
//! For each group: hold its writes (those already inside the write gate finish first),
//! wait until the hasher has applied every update sent so far, scan the group's data,
//! and swap the trees built from it in on the hasher thread, which applies every later
//! update on top of them. The hold then ends. Writes to other partitions go on
//! throughout. `meta.rebuild` is set first and cleared by the full checkpoint at the
//! end, so a rebuild cut short is finished by the next open.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::hasher::Hasher;
use crate::index::{key_prefixes, Index};
use crate::scan::{scan_partitions, stray_keys, Progress};
use crate::store::RebuildReport;

/// Partitions re-read together reach about this many keys (by their current index),
/// or `GROUP_PARTITIONS`: one scan each, so small partitions do not each pay a hold, a
/// round trip to the hasher and a start of the scan's threads, and none is held long.
const GROUP_KEYS: u64 = 65_536;
const GROUP_PARTITIONS: usize = 64;

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
    for group in groups(index, partitions) {
        let held = index.gate.hold(&group);
        let read = group.len() as u64 * shape.segments;
        // What is left of a partition being dropped is not indexed. Read under the hold
        // (which paused the gate): a drop that had not begun by then waits for the hold.
        let group: Vec<u32> = group
            .into_iter()
            .filter(|&p| !index.dropping.contains(p))
            .collect();
        hasher.barrier()?;
        let mut scan = scan_partitions(&index.data, shape, &group, false, &mut |p| {
            progress(Progress {
                keys: done.keys + p.keys,
                segments_done: done.segments_done + p.segments_done,
                segments_total: done.segments_total,
            })
        })?;
        index.clock.observe_stored(scan.max_version);
        built += scan.trees.len();
        hasher.replace(group.iter().map(|p| (*p, scan.trees.remove(p))).collect())?;
        drop(held);
        undecodable += scan.problems.len();
        done.keys += scan.keys;
        done.segments_done += read;
    }
    let checkpoint = hasher.checkpoint(true)?;
    Ok(RebuildReport {
        keys: done.keys,
        partitions: built,
        undecodable,
        checkpoint,
    })
}

/// `partitions` in order, cut into groups of about [`GROUP_KEYS`] keys by the index's
/// count of each one's non-zero segments (a partition larger than that is a group).
fn groups(index: &Index, partitions: BTreeSet<u32>) -> Vec<Vec<u32>> {
    let trees = index.trees();
    let mut out: Vec<Vec<u32>> = Vec::new();
    let mut keys = 0u64;
    for partition in partitions {
        let size = trees.get(&partition).map_or(0, |t| t.nonzero_segments());
        match out.last_mut() {
            Some(last) if last.len() < GROUP_PARTITIONS && keys + size <= GROUP_KEYS => {
                last.push(partition);
                keys += size;
            }
            _ => {
                out.push(vec![partition]);
                keys = size;
            }
        }
    }
    out
}
