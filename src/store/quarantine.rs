//! Moving bad records aside: the records a verify report or a scrub page found bad go
//! to the quarantine, keeping the index in step, so that the next exchange with a good
//! replica restores them.

use std::time::Duration;

use crate::error::{Corruption, Result};
use crate::hash::Hash;
use crate::hasher::Msg;
use crate::record::{data_key, Record, RecordHeader};
use crate::scan::{hash_small_pieces, Piece};
use crate::scrub::{self, ScrubCursor, ScrubPage};
use crate::verify::{Problem, ProblemKind, VerifyReport};

use super::Store;

impl Store {
    /// Moves every record `report` found bad (a value that fails its hash, a header that
    /// does not decode, a key in the wrong segment or too short to place) out of the
    /// data into the store's quarantine, keeping the index in step. The key then reads
    /// as absent, so the next sync with a good replica restores it; the bad bytes stay
    /// in the quarantine for inspection. A record rewritten since `report` was made is
    /// left alone. Returns how many records were moved.
    pub fn quarantine(&self, report: &VerifyReport) -> Result<u64> {
        self.quarantine_problems(&report.problems)
    }

    /// [`Store::quarantine`] of a list of problems (verify's, or a scrub's).
    pub(crate) fn quarantine_problems(&self, problems: &[Problem]) -> Result<u64> {
        let index = &*self.index;
        let mut moved = 0;
        for problem in problems {
            let still_bad: fn(&[u8]) -> bool = match problem.kind {
                ProblemKind::ValueHash { .. } => |b| {
                    matches!(
                        Record::decode(b, String::new),
                        Err(Corruption::ValueHash { .. })
                    )
                },
                ProblemKind::BadRecord(_) => |b| RecordHeader::decode(b, String::new).is_err(),
                ProblemKind::Misplaced { .. } | ProblemKind::BadDataKey => |_| true,
                _ => continue,
            };
            let (Some(key), placed) = (&problem.key, problem.partition.zip(problem.segment)) else {
                continue;
            };
            let raw = match placed {
                Some((p, s)) if problem.kind != ProblemKind::BadDataKey => data_key(p, s, key),
                _ => key.clone(),
            };
            if let (ProblemKind::BadRecord(_), Some((p, s))) = (&problem.kind, placed) {
                moved += u64::from(self.quarantine_undecodable(p, s, &raw)?);
                continue;
            }
            let pass = match placed {
                Some((p, _)) => index.gate.enter_partition(p),
                None => index.gate.enter(),
            };
            if let Some((p, s)) = placed {
                if index.dropping.contains(p) {
                    continue; // on its way out anyway
                }
                index.marks.mark(pass.epoch, p, s)?;
            }
            let Some(current) = index.data.get(&raw)? else {
                continue;
            };
            if !still_bad(&current) {
                continue;
            }
            self.index.quarantine.insert(&raw, current.clone())?;
            if index
                .data
                .compare_and_swap(&raw, Some(current.clone()), None::<&[u8]>)?
                .is_err()
            {
                self.index.quarantine.remove(&raw)?;
                continue; // rewritten meanwhile: no longer this record
            }
            if let (Some((p, s)), Ok(h)) = (placed, RecordHeader::decode(&current, String::new)) {
                self.hasher.send(Msg::Update {
                    partition: p,
                    segment: s,
                    delta: h.entry_hash(p, key),
                })?;
            }
            drop(pass);
            moved += 1;
        }
        Ok(moved)
    }

    /// Checks up to `max_keys` records after `from` (from the first, with `None`) as
    /// [`Store::verify`] checks each record (its value against its hash, its header, its
    /// placement, its sizes) and quarantines the bad ones, so the next exchange with a
    /// good replica restores them: a rotten value leaves the index as it was, so without
    /// this no exchange would ever repair it. With `purge_after`, it also removes the
    /// tombstones it passes that this store learned of longer ago than that, as
    /// [`Store::purge_tombstones`] does. Writes go on meanwhile; a record rewritten
    /// since it was read is left alone. Call it again with the page's `next` until that
    /// is `None` for a full pass; the anti-entropy manager does so at a set rate
    /// ([`ManagerOptions::scrub_keys_per_sec`](crate::ManagerOptions::scrub_keys_per_sec)).
    pub fn scrub(
        &self,
        from: Option<&ScrubCursor>,
        max_keys: usize,
        purge_after: Option<Duration>,
    ) -> Result<ScrubPage> {
        let mut tombstones = Vec::new();
        let (data, shape) = (&self.index.data, self.index.shape);
        let mut page = scrub::check_page(data, shape, from, max_keys, &mut tombstones)?;
        page.quarantined = self.quarantine_problems(&page.problems)?;
        if let Some(grace) = purge_after {
            let now = crate::clock::unix_ms_not_ahead();
            for t in &tombstones {
                let purged = self.purge_if_past(t.partition, &t.key, &t.header, grace, now)?;
                page.purged += u64::from(purged);
            }
        }
        Ok(page)
    }

    /// Quarantines an undecodable record and makes its segment's hash that of its data
    /// again: the index may still count the record as it was before its header rotted,
    /// and that cannot be read back to take it out. Writes wait meanwhile (it is rare).
    fn quarantine_undecodable(&self, partition: u32, segment: u32, raw: &[u8]) -> Result<bool> {
        let index = &*self.index;
        let paused = index.gate.pause();
        let pass = index.gate.enter_paused(&paused);
        if index.dropping.contains(partition) {
            return Ok(false); // on its way out anyway
        }
        index.marks.mark(pass.epoch, partition, segment)?;
        // Every update sent so far is applied, and no write can send another.
        self.hasher.barrier()?;
        let Some(current) = index.data.get(raw)? else {
            return Ok(false);
        };
        if RecordHeader::decode(&current, String::new).is_ok() {
            return Ok(false); // rewritten since it was found
        }
        index.quarantine.insert(raw, current)?;
        index.data.remove(raw)?;
        let piece = Piece {
            partition,
            first: segment,
            count: 1,
        };
        let data: Hash = hash_small_pieces(&index.data, index.shape, vec![piece])?
            .iter()
            .flat_map(|hashed| &hashed.hashes)
            .fold(Hash::ZERO, |sum, &(_, h)| sum ^ h);
        let counted = index
            .trees()
            .get(&partition)
            .map_or(Hash::ZERO, |t| t.segment(segment));
        if data != counted {
            self.hasher.send(Msg::Update {
                partition,
                segment,
                delta: data ^ counted,
            })?;
        }
        drop(pass);
        Ok(true)
    }

    /// Records held in the quarantine (see [`Store::quarantine`]).
    pub fn quarantined(&self) -> usize {
        self.index.quarantine.len()
    }
}
