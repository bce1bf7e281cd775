//! The questions anti-entropy asks of a tree, answered by a local store or (in the CLI)
//! by a network client, so that diff and sync are written once.

use crate::error::Result;
use crate::options::Shape;
use crate::record::Record;
use crate::store::{Entry, Store};
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
    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Option<Record>>>;
    /// Applies repairs; returns how many were written (the rest had changed meanwhile).
    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<u64>;
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

    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Option<Record>>> {
        keys.iter()
            .map(|k| self.partition(partition).get_record(k))
            .collect()
    }

    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<u64> {
        let mut written = 0;
        for repair in repairs {
            written += u64::from(self.write_if(partition, repair)?);
        }
        Ok(written)
    }
}
