//! Scrubbing: verify's record checks, a page at a time, on a running store. A value
//! that rots leaves the index as it was (the index holds the hash stored beside the
//! value, not one of its bytes), so replicas keep agreeing on a key one of them can no
//! longer read, and no exchange would ever repair it. A scrub finds such records and
//! quarantines them; the index then differs, and the next exchange with a good replica
//! restores them.

use std::ops::Bound;

use crate::error::Result;
use crate::options::Shape;
use crate::record::{split_data_key, RecordHeader};
use crate::verify::{check_record, Problem, ProblemKind};

/// Where a scrub goes on from: the last record a page checked (opaque).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrubCursor(Vec<u8>);

/// What one page of a scrub checked and did.
#[derive(Debug, Clone, Default)]
pub struct ScrubPage {
    /// Records checked.
    pub checked: u64,
    /// What was wrong with them (as [`Store::verify`](crate::Store::verify) reports it).
    pub problems: Vec<Problem>,
    /// How many of those records were moved to the quarantine (see
    /// [`Store::quarantine`](crate::Store::quarantine); a record over the size limits
    /// is reported, not moved).
    pub quarantined: u64,
    /// Tombstones removed, held longer than the scrub's `purge_after`.
    pub purged: u64,
    /// Where the next page starts; `None` when this page reached the end of the store.
    pub next: Option<ScrubCursor>,
}

/// A tombstone a page passed, with the header it had.
pub(crate) struct Tombstone {
    pub partition: u32,
    pub key: Vec<u8>,
    pub header: RecordHeader,
}

/// Checks up to `max_keys` records of `data` after `from`, as verify checks each one
/// (see [`Store::scrub`](crate::Store::scrub), which also quarantines what it finds),
/// and lists the sound tombstones it passed in `tombstones`.
pub(crate) fn check_page(
    data: &sled::Tree,
    shape: Shape,
    from: Option<&ScrubCursor>,
    max_keys: usize,
    tombstones: &mut Vec<Tombstone>,
) -> Result<ScrubPage> {
    let max_keys = max_keys.max(1);
    let start = from.map_or(Bound::Unbounded, |c| Bound::Excluded(c.0.clone()));
    let mut page = ScrubPage::default();
    let mut last = None;
    for item in data.range((start, Bound::Unbounded)).take(max_keys) {
        let (key, record) = item?;
        page.checked += 1;
        match split_data_key(&key) {
            None => page.problems.push(Problem {
                partition: None,
                segment: None,
                key: Some(key.to_vec()),
                kind: ProblemKind::BadDataKey,
            }),
            Some((partition, segment, user_key)) => {
                let mut kinds = Vec::new();
                match RecordHeader::decode(&record, String::new) {
                    Ok(header) => {
                        check_record(shape, segment, user_key, &record, &header, &mut |k| {
                            kinds.push(k)
                        });
                        if header.tombstone && kinds.is_empty() {
                            tombstones.push(Tombstone {
                                partition,
                                key: user_key.to_vec(),
                                header,
                            });
                        }
                    }
                    Err(e) => kinds.push(ProblemKind::BadRecord(e.to_string())),
                }
                page.problems.extend(kinds.into_iter().map(|kind| Problem {
                    partition: Some(partition),
                    segment: Some(segment),
                    key: Some(user_key.to_vec()),
                    kind,
                }));
            }
        }
        last = Some(key);
    }
    page.next = match last {
        Some(key) if page.checked >= max_keys as u64 => Some(ScrubCursor(key.to_vec())),
        _ => None,
    };
    Ok(page)
}
