//! The questions anti-entropy asks of a tree, answered by a local store or (in the CLI)
//! by a network client, so that diff and sync are written once.

pub(crate) mod diff;
pub(crate) mod sync;

use crate::error::{Error, Result};
use crate::options::Shape;
use crate::record::Record;
use crate::store::{Entry, RepairOutcome, Store};
use crate::Hash;

/// A repair to write on one side: `record` under `key`, only if the key's current entry
/// hash is still `expected` (`None`: only if the key is still absent). A key written
/// since the diff is therefore never overwritten with older data; it shows up again in
/// the next exchange instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repair {
    /// The user key.
    pub key: Vec<u8>,
    /// The entry hash the diff saw on this side.
    pub expected: Option<Hash>,
    /// What to store.
    pub record: Record,
}

/// One key's record as a replica reports it to an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No record (never written, purged, or quarantined).
    Absent,
    /// The record, its value checked against its hash.
    Found(Record),
    /// A record is stored but its header does not decode or its bytes fail their hash:
    /// it is never shipped, and a good copy from the other side may replace it.
    Corrupt,
}

impl Lookup {
    /// The record, if one was found intact.
    pub fn record(&self) -> Option<&Record> {
        match self {
            Lookup::Found(r) => Some(r),
            _ => None,
        }
    }
}

/// One key of a segment as [`Replica::segments`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentItem {
    /// What the key contributes to the tree.
    pub entry: Entry,
    /// Its record, for a segment asked for with records.
    pub record: Option<Lookup>,
}

/// Bytes of entries and records one [`Replica::segments`] answer may fill before the
/// replica stops and lets the caller ask for the rest: memory and frames stay bounded
/// however dense the segments or large the values.
pub const ANSWER_BUDGET: usize = 8 << 20;

/// One answer of [`Replica::segments`]: the keys of a prefix of the segments asked for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentsPage {
    /// Per segment answered, its keys in key order (the first segment's after the
    /// `after` key of the request).
    pub lists: Vec<Vec<SegmentItem>>,
    /// The last list stops before its segment's end (the answer reached its budget
    /// inside it): the rest of that segment follows its last key.
    pub partial: bool,
}

impl SegmentItem {
    /// Roughly the bytes this item takes on the wire (for [`ANSWER_BUDGET`]).
    pub fn size(&self) -> usize {
        let record = match &self.record {
            Some(Lookup::Found(r)) => r.value.len() + 32,
            _ => 0,
        };
        self.entry.key.len() + 40 + record
    }
}

impl SegmentsPage {
    /// Checks that each list's keys increase, the first list's after `after` (the key
    /// the request started after), and that an answer cut inside a segment ends with a
    /// key. Otherwise the pages of a segment would overlap or repeat: a key could be
    /// reported twice, or the same page asked for forever.
    pub(crate) fn check_order(&self, after: Option<&[u8]>) -> Result<()> {
        let mut previous = after;
        for (i, list) in self.lists.iter().enumerate() {
            if i > 0 {
                previous = None;
            }
            for item in list {
                let key = item.entry.key.as_slice();
                if previous.is_some_and(|p| key <= p) {
                    return Err(Error::Protocol(
                        "the replica listed a segment's keys out of order, or repeated them".into(),
                    ));
                }
                previous = Some(key);
            }
        }
        if self.partial && self.lists.last().map_or(true, Vec::is_empty) {
            return Err(Error::Protocol(
                "the replica cut an answer inside a segment without listing a key of it".into(),
            ));
        }
        Ok(())
    }
}

/// What [`Replica::apply`] did with a batch of repairs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Repairs written.
    pub written: u64,
    /// Repairs skipped because the key changed since the diff saw it.
    pub stale: u64,
    /// Repairs refused as invalid: a version further ahead than this replica's
    /// `max_clock_drift`, or a value that does not match its hash.
    pub refused: u64,
}

impl Applied {
    /// Adds another batch's counts (saturating: counts come from replicas).
    pub fn add(&mut self, other: Applied) {
        self.written = self.written.saturating_add(other.written);
        self.stale = self.stale.saturating_add(other.stale);
        self.refused = self.refused.saturating_add(other.refused);
    }
}

/// The end of a descent step once this side's hashes (`mine`) of the other side's nodes
/// (`theirs`) are known: each node that differs, with its children here (read in one
/// call), or with none at the segment level.
fn differing_with_children<R: Replica + ?Sized>(
    replica: &R,
    partition: u32,
    level: u32,
    theirs: &[(u64, Hash)],
    mine: &[Hash],
) -> Result<Vec<(u64, Vec<Hash>)>> {
    let shape = replica.shape()?;
    let differing: Vec<u64> = theirs
        .iter()
        .zip(mine)
        .filter(|((_, a), b)| a != *b)
        .map(|(&(n, _), _)| n)
        .collect();
    if level == shape.levels {
        return Ok(differing.into_iter().map(|n| (n, Vec::new())).collect());
    }
    let children = replica.children(partition, level, &differing)?;
    Ok(differing
        .into_iter()
        .zip(children.chunks(shape.width as usize))
        .map(|(n, kids)| (n, kids.to_vec()))
        .collect())
}

/// A tree that can be questioned, one batch per call (one round trip over a network).
/// `Sync`: an exchange reads its own side on a second thread while the other answers.
pub trait Replica: Sync {
    /// The tree shape; both sides of an exchange must agree.
    fn shape(&self) -> Result<Shape>;
    /// Partitions this replica holds.
    fn partitions(&self) -> Result<Vec<u32>>;
    /// Root hash of each of `partitions`.
    fn roots(&self, partitions: &[u32]) -> Result<Vec<Hash>>;
    /// The `width` children of each node of `level` in `parents`, concatenated.
    fn children(&self, partition: u32, level: u32, parents: &[u64]) -> Result<Vec<Hash>>;
    /// One step of the alternating descent: given the other side's hashes of some nodes
    /// of `level` (in increasing order), returns, for each node whose hash differs here,
    /// this side's hashes of its `width` children (none when `level` is the segment
    /// level), in the same order. Over a network this is one round trip that both
    /// compares a level and brings the next one, so a walk takes a round trip per two
    /// levels. The default builds it from `roots` and `children`.
    fn descend(
        &self,
        partition: u32,
        level: u32,
        theirs: &[(u64, Hash)],
    ) -> Result<Vec<(u64, Vec<Hash>)>> {
        let shape = self.shape()?;
        let width = u64::from(shape.width);
        let mine: Vec<Hash> = if level == 0 {
            self.roots(&[partition])?
        } else {
            let parents: Vec<u64> = theirs.iter().map(|&(n, _)| n / width).collect();
            self.children(partition, level - 1, &parents)?
                .chunks(width as usize)
                .zip(theirs)
                .map(|(kids, &(n, _))| kids.get((n % width) as usize).copied().unwrap_or_default())
                .collect()
        };
        differing_with_children(self, partition, level, theirs, &mine)
    }
    /// The entries of each segment in `segments`, in the same order.
    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>>;
    /// The keys of a prefix of `segments` (in order; at least one key, or at least the
    /// first segment): each key's entry, and its record too for a segment asked for as
    /// `(segment, true)`. A side that holds nothing in a segment copies every key of it,
    /// so it fetches them in the same round trip as the entries (a new replica's
    /// bootstrap is one request per page, not two). `after`, if given, is the last key
    /// of the first segment the caller already has: the answer starts after it.
    ///
    /// A replica stops before the answer passes [`ANSWER_BUDGET`] bytes, at a key,
    /// not only at a segment's end: a segment of any size arrives in pages (see
    /// [`SegmentsPage::partial`]); the caller asks again for the rest. The default reads
    /// `entries`, then `records`, and never stops early.
    fn segments(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> Result<SegmentsPage> {
        let ids: Vec<u32> = segments.iter().map(|&(s, _)| s).collect();
        let mut lists = self.entries(partition, &ids)?;
        if let (Some(after), Some(first)) = (after, lists.first_mut()) {
            first.retain(|e| e.key.as_slice() > after);
        }
        let keys: Vec<Vec<u8>> = lists
            .iter()
            .zip(segments)
            .filter(|(_, &(_, with_records))| with_records)
            .flat_map(|(list, _)| list.iter().map(|e| e.key.clone()))
            .collect();
        let records = if keys.is_empty() {
            Vec::new()
        } else {
            self.records(partition, &keys)?
        };
        if lists.len() != segments.len() || records.len() != keys.len() {
            return Err(Error::Protocol(format!(
                "asked for {} segments and {} records, got {} and {}",
                segments.len(),
                keys.len(),
                lists.len(),
                records.len()
            )));
        }
        let mut records = records.into_iter();
        let lists = lists
            .into_iter()
            .zip(segments)
            .map(|(list, &(_, with_records))| {
                list.into_iter()
                    .map(|entry| SegmentItem {
                        entry,
                        record: if with_records { records.next() } else { None },
                    })
                    .collect()
            })
            .collect();
        Ok(SegmentsPage {
            lists,
            partial: false,
        })
    }
    /// The records (tombstones included) of `keys`, in the same order.
    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Lookup>>;
    /// Applies repairs, each only if its key is as the diff saw it.
    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<Applied>;
}

/// A borrowed replica is a replica (a store shared by reference, e.g. with a manager).
impl<R: Replica + ?Sized> Replica for &R {
    fn shape(&self) -> Result<Shape> {
        (**self).shape()
    }
    fn partitions(&self) -> Result<Vec<u32>> {
        (**self).partitions()
    }
    fn roots(&self, partitions: &[u32]) -> Result<Vec<Hash>> {
        (**self).roots(partitions)
    }
    fn children(&self, partition: u32, level: u32, parents: &[u64]) -> Result<Vec<Hash>> {
        (**self).children(partition, level, parents)
    }
    fn descend(
        &self,
        partition: u32,
        level: u32,
        theirs: &[(u64, Hash)],
    ) -> Result<Vec<(u64, Vec<Hash>)>> {
        (**self).descend(partition, level, theirs)
    }
    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>> {
        (**self).entries(partition, segments)
    }
    fn segments(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> Result<SegmentsPage> {
        (**self).segments(partition, segments, after)
    }
    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Lookup>> {
        (**self).records(partition, keys)
    }
    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<Applied> {
        (**self).apply(partition, repairs)
    }
}

impl Replica for Store {
    fn shape(&self) -> Result<Shape> {
        Ok(Store::shape(self))
    }

    fn partitions(&self) -> Result<Vec<u32>> {
        Ok(Store::partitions(self))
    }

    fn roots(&self, partitions: &[u32]) -> Result<Vec<Hash>> {
        Ok(partitions.iter().map(|&p| self.root(p)).collect())
    }

    fn children(&self, partition: u32, level: u32, parents: &[u64]) -> Result<Vec<Hash>> {
        self.children_of(partition, level, parents)
    }

    fn descend(
        &self,
        partition: u32,
        level: u32,
        theirs: &[(u64, Hash)],
    ) -> Result<Vec<(u64, Vec<Hash>)>> {
        // Exactly the nodes asked about (the default reads all their siblings).
        let ids: Vec<u64> = theirs.iter().map(|&(n, _)| n).collect();
        let mine = self.nodes(partition, level, &ids)?;
        differing_with_children(self, partition, level, theirs, &mine)
    }

    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>> {
        // One read for all, so segments close together share a range scan.
        let asked: Vec<(u32, bool)> = segments.iter().map(|&s| (s, false)).collect();
        Ok(self
            .segment_items(partition, &asked, None, usize::MAX)?
            .lists
            .into_iter()
            .map(|items| items.into_iter().map(|item| item.entry).collect())
            .collect())
    }

    fn segments(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> Result<SegmentsPage> {
        self.segment_items(partition, segments, after, ANSWER_BUDGET)
    }

    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Lookup>> {
        keys.iter()
            .map(|k| match self.partition(partition).get_record(k) {
                Ok(Some(r)) => Ok(Lookup::Found(r)),
                Ok(None) => Ok(Lookup::Absent),
                Err(Error::Corrupt(_)) => Ok(Lookup::Corrupt),
                Err(e) => Err(e),
            })
            .collect()
    }

    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<Applied> {
        let mut applied = Applied::default();
        for repair in repairs {
            match self.write_if(partition, repair)? {
                RepairOutcome::Written => applied.written += 1,
                RepairOutcome::Stale => applied.stale += 1,
                RepairOutcome::Refused => applied.refused += 1,
            }
        }
        Ok(applied)
    }
}
