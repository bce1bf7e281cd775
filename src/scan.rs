//! Recomputing segment hashes from the data: whole store (rebuild, verify) or a few
//! regions (crash recovery).

use std::collections::BTreeMap;
use std::ops::Bound;

use crate::error::Result;
use crate::hash::{segment_of, value_hash, Hash};
use crate::index::Trees;
use crate::options::Shape;
use crate::record::{split_data_key, RecordHeader, RECORD_HEADER};
use crate::tree::Tree;
use crate::verify::{Problem, ProblemKind};

/// How far a long scan has got, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records read so far.
    pub keys: u64,
    /// Position in the key space: partitions done times segments, plus the current segment.
    pub segments_done: u64,
    /// Partitions times segments per tree.
    pub segments_total: u64,
}

pub(crate) struct Scan {
    pub trees: Trees,
    pub keys: u64,
    pub max_version: u64,
    pub problems: Vec<Problem>,
}

const PROGRESS_EVERY: u64 = 1 << 16;

/// The partitions that hold data, found by seeking (no full scan).
pub(crate) fn partitions(data: &sled::Tree) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    let mut from = 0u32;
    loop {
        let Some((key, _)) = data.range(from.to_be_bytes()..).next().transpose()? else {
            break;
        };
        let Some((p, _, _)) = split_data_key(&key) else {
            break;
        };
        out.push(p);
        match p.checked_add(1) {
            Some(n) => from = n,
            None => break,
        }
    }
    Ok(out)
}

/// Reads every record and rebuilds every tree. With `check_values`, also hashes each
/// value and checks placement, reporting problems (verify); otherwise trusts the stored
/// value hashes (rebuild). Undecodable records contribute nothing and are reported.
pub(crate) fn scan_all(
    data: &sled::Tree,
    shape: Shape,
    check_values: bool,
    progress: &mut dyn FnMut(Progress),
) -> Result<Scan> {
    let parts = partitions(data)?;
    let segments_total = parts.len() as u64 * shape.segments;
    let mut scan = Scan {
        trees: BTreeMap::new(),
        keys: 0,
        max_version: 0,
        problems: Vec::new(),
    };
    let mut current: Option<(u32, Vec<Hash>)> = None;
    let mut done_partitions = 0u64;
    for item in data.iter() {
        let (key, value) = item?;
        let Some((partition, segment, user_key)) = split_data_key(&key) else {
            scan.problems.push(Problem {
                partition: None,
                segment: None,
                key: Some(key.to_vec()),
                kind: ProblemKind::BadDataKey,
            });
            continue;
        };
        if current.as_ref().map(|c| c.0) != Some(partition) {
            if let Some((p, segs)) = current.take() {
                scan.trees.insert(p, Tree::from_segments(shape, segs));
                done_partitions += 1;
            }
            current = Some((partition, vec![Hash::ZERO; shape.segments as usize]));
        }
        scan.keys += 1;
        if scan.keys % PROGRESS_EVERY == 0 {
            progress(Progress {
                keys: scan.keys,
                segments_done: done_partitions * shape.segments + u64::from(segment),
                segments_total,
            });
        }
        let problem = |kind| Problem {
            partition: Some(partition),
            segment: Some(segment),
            key: Some(user_key.to_vec()),
            kind,
        };
        if u64::from(segment) >= shape.segments {
            scan.problems.push(problem(ProblemKind::Misplaced { expected: segment_of(user_key, shape.segments) }));
            continue;
        }
        let header = match RecordHeader::decode(&value, String::new) {
            Ok(h) => h,
            Err(e) => {
                scan.problems.push(problem(ProblemKind::BadRecord(e.to_string())));
                continue;
            }
        };
        if check_values {
            let expected = segment_of(user_key, shape.segments);
            if expected != segment {
                scan.problems.push(problem(ProblemKind::Misplaced { expected }));
            }
            let found = value_hash(value.get(RECORD_HEADER..).unwrap_or_default());
            if found != header.value_hash {
                scan.problems.push(problem(ProblemKind::ValueHash {
                    stored: header.value_hash,
                    computed: found,
                }));
            }
        }
        scan.max_version = scan.max_version.max(header.version);
        if let Some((_, segs)) = current.as_mut() {
            segs[segment as usize] ^= header.entry_hash(partition, user_key);
        }
    }
    if let Some((p, segs)) = current.take() {
        scan.trees.insert(p, Tree::from_segments(shape, segs));
    }
    progress(Progress {
        keys: scan.keys,
        segments_done: segments_total,
        segments_total,
    });
    Ok(scan)
}

/// Key range of segments `first .. first + count` of `partition`.
pub(crate) fn segment_range(partition: u32, first: u32, count: u64) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    let start = [partition.to_be_bytes(), first.to_be_bytes()].concat();
    let end = u64::from(first) + count;
    let end = match u32::try_from(end) {
        Ok(e) => Bound::Excluded([partition.to_be_bytes(), e.to_be_bytes()].concat()),
        Err(_) => match partition.checked_add(1) {
            Some(p) => Bound::Excluded(p.to_be_bytes().to_vec()),
            None => Bound::Unbounded,
        },
    };
    (Bound::Included(start), end)
}

/// Recomputes the hashes of segments `first .. first + count` from their records.
/// Returns (hashes, keys read, highest version).
pub(crate) fn hash_segments(
    data: &sled::Tree,
    partition: u32,
    first: u32,
    count: u32,
) -> Result<(Vec<Hash>, u64, u64)> {
    let mut hashes = vec![Hash::ZERO; count as usize];
    let (mut keys, mut max_version) = (0, 0);
    for item in data.range(segment_range(partition, first, u64::from(count))) {
        let (key, value) = item?;
        let Some((_, segment, user_key)) = split_data_key(&key) else {
            continue;
        };
        keys += 1;
        // Undecodable records contribute nothing, as in a full scan; verify reports them.
        if let Ok(h) = RecordHeader::decode(&value, String::new) {
            if let Some(slot) = hashes.get_mut(segment.wrapping_sub(first) as usize) {
                *slot ^= h.entry_hash(partition, user_key);
            }
            max_version = max_version.max(h.version);
        }
    }
    Ok((hashes, keys, max_version))
}
