//! `verify`: recompute everything from the data and report what disagrees.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use crate::bucket::{self, BucketId};
use crate::error::Result;
use crate::hash::{segment_of, value_hash};
use crate::index::Index;
use crate::options::Shape;
use crate::record::{RecordHeader, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::scan::{hash_small_pieces, scan_all, Piece, Progress};
use crate::tree::Tree;
use crate::Hash;

/// One thing verify found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Partition concerned, if known.
    pub partition: Option<u32>,
    /// Segment concerned, if known.
    pub segment: Option<u32>,
    /// User key concerned (or the raw sled key for [`ProblemKind::BadDataKey`]).
    pub key: Option<Vec<u8>>,
    /// What is wrong.
    pub kind: ProblemKind,
}

/// The kinds of problems verify reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// A value's bytes no longer match the hash stored with them (bit rot).
    ValueHash { stored: Hash, computed: Hash },
    /// A record header could not be decoded.
    BadRecord(String),
    /// A data key is too short to hold partition and segment.
    BadDataKey,
    /// A key is stored under a segment its placement hash does not give.
    Misplaced { expected: u32 },
    /// The index's segment hash differs from the one recomputed from the data.
    SegmentHash { index: Hash, data: Hash },
    /// A partition has data but no tree, or a tree but no data.
    PartitionMismatch,
    /// A persisted index bucket failed its checksum or could not be decoded.
    BadBucket(String),
    /// A key or value longer than [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) or
    /// [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES) (stored before those limits existed):
    /// the record is sound but cannot reach a replica, and exchanges of its partition
    /// fail on it. Not quarantined; rewrite it smaller or delete it.
    OverLimit {
        key_bytes: usize,
        value_bytes: usize,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(p) = self.partition {
            write!(f, "partition {p} ")?;
        }
        if let Some(s) = self.segment {
            write!(f, "segment {s} ")?;
        }
        if let Some(k) = &self.key {
            write!(f, "key {} ", String::from_utf8_lossy(k).escape_debug())?;
        }
        match &self.kind {
            ProblemKind::ValueHash { stored, computed } => write!(
                f,
                "value bytes do not match their stored hash (stored {stored}, computed {computed})"
            ),
            ProblemKind::BadRecord(e) => write!(f, "undecodable record: {e}"),
            ProblemKind::BadDataKey => write!(f, "data key too short"),
            ProblemKind::Misplaced { expected } => {
                write!(
                    f,
                    "stored in the wrong segment (placement gives {expected})"
                )
            }
            ProblemKind::SegmentHash { index, data } => write!(
                f,
                "index segment hash {index} differs from the data's {data}; run rebuild"
            ),
            ProblemKind::PartitionMismatch => {
                write!(f, "index and data disagree on whether the partition exists")
            }
            ProblemKind::BadBucket(e) => write!(f, "{e}"),
            ProblemKind::OverLimit {
                key_bytes,
                value_bytes,
            } => write!(
                f,
                "key of {key_bytes} bytes and value of {value_bytes} bytes: over the limits \
                 ({} and {} bytes), so it cannot reach a replica; rewrite it smaller or delete it",
                crate::MAX_KEY_BYTES,
                crate::MAX_VALUE_BYTES
            ),
        }
    }
}

/// What verify checks of one record whose header decoded, beyond what the index
/// holds: that its key's placement gives its segment, that key and value are within
/// today's limits, and that the value matches its stored hash. Calls `found` with each
/// problem.
#[inline]
pub(crate) fn check_record(
    shape: Shape,
    segment: u32,
    user_key: &[u8],
    record: &[u8],
    header: &RecordHeader,
    found: &mut dyn FnMut(ProblemKind),
) {
    let expected = segment_of(user_key, shape.segments);
    if expected != segment {
        found(ProblemKind::Misplaced { expected });
    }
    let stored = header.value(record);
    if user_key.len() > MAX_KEY_BYTES || stored.len() > MAX_VALUE_BYTES {
        found(ProblemKind::OverLimit {
            key_bytes: user_key.len(),
            value_bytes: stored.len(),
        });
    }
    let computed = value_hash(stored);
    if computed != header.value_hash {
        found(ProblemKind::ValueHash {
            stored: header.value_hash,
            computed,
        });
    }
}

/// What verify read and found.
#[derive(Debug, Clone, Default)]
pub struct VerifyReport {
    /// Records read.
    pub keys: u64,
    /// Partitions with data.
    pub partitions: usize,
    /// Persisted index buckets checked.
    pub buckets: u64,
    /// Everything found wrong; empty means the store is sound.
    pub problems: Vec<Problem>,
}

impl VerifyReport {
    /// True if nothing is wrong.
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Re-checks of differing segments made while writes go on, before the exact one with
/// writes paused (see [`verify`]).
const RECHECKS: usize = 2;

/// Scans all data, then compares with the live index. Writes may go on meanwhile: a
/// segment that differs is re-hashed after a barrier (every write sent before it is in
/// the index), twice, and what still differs once more with writes paused for that
/// moment, which is exact. So writes that race the scan or a re-check never show up as
/// problems, and writers wait only for the few segments they kept changing.
pub(crate) fn verify(
    index: &Index,
    barrier: &dyn Fn() -> Result<()>,
    progress: &mut dyn FnMut(Progress),
) -> Result<VerifyReport> {
    let shape = index.shape;
    let scan = scan_all(&index.data, shape, true, progress)?;
    let mut report = VerifyReport {
        keys: scan.keys,
        partitions: scan.trees.len(),
        buckets: 0,
        problems: scan.problems,
    };
    barrier()?;
    let mut suspects = Vec::new();
    {
        let trees = index.trees();
        let ids: BTreeSet<u32> = trees.keys().chain(scan.trees.keys()).copied().collect();
        for p in ids {
            let (live, fresh) = (trees.get(&p), scan.trees.get(&p));
            if live.map_or(Hash::ZERO, Tree::root) == fresh.map_or(Hash::ZERO, Tree::root) {
                continue;
            }
            let mut both: BTreeMap<u32, Hash> = BTreeMap::new();
            for tree in [live, fresh].into_iter().flatten() {
                tree.for_each_segment(|s, h| *both.entry(s).or_default() ^= h);
            }
            suspects.extend(
                both.into_iter()
                    .filter(|(_, d)| !d.is_zero())
                    .map(|(s, _)| (p, s)),
            );
        }
    }
    for _ in 0..RECHECKS {
        if suspects.is_empty() {
            break;
        }
        barrier()?;
        suspects = still_differing(index, suspects)?
            .into_iter()
            .map(|(p, s, _, _)| (p, s))
            .collect();
    }
    if !suspects.is_empty() {
        let _paused = index.gate.pause();
        barrier()?;
        // What is left of a partition being dropped has no index, by design.
        suspects.retain(|&(p, _)| !index.dropping.contains(p));
        let mut mismatched = BTreeSet::new();
        for (p, s, live, data) in still_differing(index, suspects)? {
            let has_tree = index.trees().contains_key(&p);
            let has_data = index
                .data
                .scan_prefix(p.to_be_bytes())
                .next()
                .transpose()?
                .is_some();
            if has_tree && has_data {
                report.problems.push(Problem {
                    partition: Some(p),
                    segment: Some(s),
                    key: None,
                    kind: ProblemKind::SegmentHash { index: live, data },
                });
            } else if mismatched.insert(p) {
                report.problems.push(Problem {
                    partition: Some(p),
                    segment: None,
                    key: None,
                    kind: ProblemKind::PartitionMismatch,
                });
            }
        }
    }
    for item in index.buckets.iter() {
        let (key, value) = item?;
        report.buckets += 1;
        let checked = BucketId::from_key(&key)
            .and_then(|id| bucket::decode(id, shape, &value, &mut |_, _| {}));
        if let Err(e) = checked {
            let id = BucketId::from_key(&key).ok();
            report.problems.push(Problem {
                partition: id.map(|i| i.partition),
                segment: None,
                key: None,
                kind: ProblemKind::BadBucket(e.to_string()),
            });
        }
    }
    Ok(report)
}

/// Re-hashes each `(partition, segment)` from the data and returns those whose hash
/// differs from the live index's, with both hashes `(partition, segment, index, data)`.
fn still_differing(
    index: &Index,
    suspects: Vec<(u32, u32)>,
) -> Result<Vec<(u32, u32, Hash, Hash)>> {
    let pieces = suspects
        .into_iter()
        .map(|(partition, first)| Piece {
            partition,
            first,
            count: 1,
        })
        .collect();
    let hashed = hash_small_pieces(&index.data, index.shape, pieces)?;
    let trees = index.trees();
    Ok(hashed
        .into_iter()
        .filter_map(|h| {
            let (p, s) = (h.piece.partition, h.piece.first);
            let data = h.hashes.first().map_or(Hash::ZERO, |&(_, h)| h);
            let live = trees.get(&p).map_or(Hash::ZERO, |t| t.segment(s));
            (data != live).then_some((p, s, live, data))
        })
        .collect())
}
