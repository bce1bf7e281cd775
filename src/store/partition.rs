//! A handle on one partition of a store.

use crate::error::Result;
use crate::hash::Hash;
use crate::record::{Record, RecordHeader};

use super::{Records, Store};

/// Reads and writes of one partition.
#[derive(Clone, Copy)]
pub struct Partition<'a> {
    pub(super) store: &'a Store,
    pub(super) id: u32,
}

impl Partition<'_> {
    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Writes `value` under `key` with a store-assigned version, which is returned. A
    /// key over [`MAX_KEY_BYTES`](crate::MAX_KEY_BYTES) or a value over
    /// [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES) is refused with
    /// [`Error::InvalidArgument`](crate::Error::InvalidArgument), and nothing is written.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        let version = self.store.next_version()?;
        self.store.write(
            self.id,
            key,
            RecordHeader::new(version, false, value),
            value,
        )?;
        Ok(version)
    }

    /// Writes `value` under `key` with the caller's version (the store's clock moves
    /// past it). A version further ahead of the wall clock than
    /// `Options::max_clock_drift` is refused with [`Error::VersionAhead`](crate::Error::VersionAhead).
    pub fn put_versioned(&self, key: &[u8], value: &[u8], version: u64) -> Result<()> {
        self.store.observe_version(version)?;
        self.store.write(
            self.id,
            key,
            RecordHeader::new(version, false, value),
            value,
        )
    }

    /// Writes a tombstone for `key`; returns its version.
    pub fn delete(&self, key: &[u8]) -> Result<u64> {
        let version = self.store.next_version()?;
        self.store
            .write(self.id, key, RecordHeader::new(version, true, b""), b"")?;
        Ok(version)
    }

    /// Writes a tombstone with the caller's version.
    pub fn delete_versioned(&self, key: &[u8], version: u64) -> Result<()> {
        self.store.observe_version(version)?;
        self.store
            .write(self.id, key, RecordHeader::new(version, true, b""), b"")
    }

    /// The live value of `key`; `None` if absent or deleted. A value whose bytes no
    /// longer match their stored hash is a [`Corruption::ValueHash`](crate::Corruption::ValueHash) error, never bad
    /// bytes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .store
            .read(self.id, key)?
            .filter(|r| !r.tombstone)
            .map(|r| r.value))
    }

    /// The stored record of `key`, tombstones included.
    pub fn get_record(&self, key: &[u8]) -> Result<Option<Record>> {
        self.store.read(self.id, key)
    }

    /// Every record stored in this partition with its key, tombstones included, in the
    /// order of the tree (by segment, so by placement hash, not by key). A record whose
    /// bytes fail their hash is an error item and the iteration goes on. Writes made
    /// while it runs may or may not be seen; each record seen is whole.
    pub fn records(&self) -> Records {
        Records {
            scan: self.store.index.data.scan_prefix(self.id.to_be_bytes()),
            partition: self.id,
        }
    }

    /// The partition's root hash.
    pub fn root(&self) -> Hash {
        self.store.root(self.id)
    }
}
