//! The questions anti-entropy asks of a tree, answered by a local store or (in the CLI)
//! by a network client, so that diff and sync are written once.

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
    /// Adds another batch's counts.
    pub fn add(&mut self, other: Applied) {
        self.written += other.written;
        self.stale += other.stale;
        self.refused += other.refused;
    }
}

/// A tree that can be questioned, one batch per call (one round trip over a network).
pub trait Replica {
    /// The tree shape; both sides of an exchange must agree.
    fn shape(&self) -> Result<Shape>;
    /// Partitions this replica holds.
    fn partitions(&self) -> Result<Vec<u32>>;
    /// Root hash of each of `partitions`.
    fn roots(&self, partitions: &[u32]) -> Result<Vec<Hash>>;
    /// The `width` children of each node of `level` in `parents`, concatenated.
    fn children(&self, partition: u32, level: u32, parents: &[u64]) -> Result<Vec<Hash>>;
    /// The entries of each segment in `segments`, in the same order.
    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>>;
    /// The records (tombstones included) of `keys`, in the same order.
    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Lookup>>;
    /// Applies repairs, each only if its key is as the diff saw it.
    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<Applied>;
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
        let mut out = Vec::with_capacity(parents.len() * self.shape().width as usize);
        for &parent in parents {
            out.extend(Store::children(self, partition, level, parent)?);
        }
        Ok(out)
    }

    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>> {
        segments
            .iter()
            .map(|&s| self.segment_entries(partition, s))
            .collect()
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
