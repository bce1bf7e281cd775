//! The write path: a put or delete (mark, data, index update), a conditional write for
//! repairs and replication, tombstone purges, and reads of one record.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exchange::Repair;
use crate::hash::{segment_of, value_hash, Hash};
use crate::hasher::Msg;
use crate::record::{check_sizes, data_key, split_data_key, Record, RecordHeader};
use crate::sync::rank;

use super::{RepairOutcome, Store};

impl Store {
    /// Writes a record under `key`.
    pub(crate) fn write(
        &self,
        partition: u32,
        key: &[u8],
        header: RecordHeader,
        value: &[u8],
    ) -> Result<()> {
        check_sizes(key, value)?;
        self.foreground.fetch_add(1, Relaxed);
        let index = &*self.index;
        let segment = segment_of(key, index.shape.segments);
        let encoded = header.encode(value);
        let new = header.entry_hash(partition, key);
        let pass = index.gate.enter_partition(partition);
        if index.dropping.contains(partition) {
            return Err(Error::PartitionDropping(partition));
        }
        index.marks.mark(pass.epoch, partition, segment)?;
        let old = index
            .data
            .insert(data_key(partition, segment, key), encoded)?;
        // An undecodable old record contributed nothing, as in a full scan.
        let old = old
            .and_then(|b| entry_of(partition, key, &b))
            .unwrap_or_default();
        self.hasher.send(Msg::Update {
            partition,
            segment,
            delta: old ^ new,
        })?;
        drop(pass);
        Ok(())
    }

    /// Writes `repair.record` only if the key's entry hash is still `repair.expected`.
    /// A repair whose value fails its hash, whose key or value is over its limit, or
    /// whose version is further ahead than `max_clock_drift`, is refused; one that is
    /// written moves the clock past it.
    pub(crate) fn write_if(&self, partition: u32, repair: &Repair) -> Result<RepairOutcome> {
        let record = &repair.record;
        if !acceptable(&repair.key, record) || self.index.clock.observe(record.version).is_err() {
            return Ok(RepairOutcome::Refused);
        }
        let new = record.header().encode(&record.value);
        let written = self.swap(partition, &repair.key, repair.expected, Some(new.into()))?;
        Ok(if written {
            RepairOutcome::Written
        } else {
            RepairOutcome::Stale
        })
    }

    /// Applies a replication message: writes `record` under `key` unless the stored
    /// record wins over it by [`newest_wins`](crate::newest_wins) (so messages may arrive
    /// late, twice or out of order). Refused like a repair if the value fails its hash or
    /// the version is past `max_clock_drift`, and a key or value over its limit is an
    /// [`Error::InvalidArgument`]. True if written.
    ///
    /// The decision and the write are one compare-and-swap against the record read, so
    /// a local write that lands in between is never overwritten by an older message.
    pub fn replicate(&self, partition: u32, key: &[u8], record: &Record) -> Result<bool> {
        check_sizes(key, &record.value)?;
        self.foreground.fetch_add(1, Relaxed);
        let refused = || {
            Error::InvalidArgument(format!(
                "replicated record of key {key:02x?} refused: value does not match its hash, or version {} is past max_clock_drift",
                record.version
            ))
        };
        if !acceptable(key, record) {
            return Err(refused());
        }
        let segment = segment_of(key, self.index.shape.segments);
        let data_key = data_key(partition, segment, key);
        let new = sled::IVec::from(record.header().encode(&record.value));
        loop {
            let current = self.index.data.get(&data_key)?;
            if current
                .as_deref()
                .is_some_and(|stored| stored_wins(stored, record))
            {
                return Ok(false);
            }
            if self.index.clock.observe(record.version).is_err() {
                return Err(refused());
            }
            let new = Some(new.clone());
            if self.swap_from(partition, segment, key, &data_key, current, new)? {
                return Ok(true);
            }
            // Changed since the read: decide again against what is there now.
        }
    }

    /// Replaces the record of `key` with `new` (`None` removes it) if the current entry
    /// hash is `expected`; keeps the index in step. False if the key had changed.
    fn swap(
        &self,
        partition: u32,
        key: &[u8],
        expected: Option<Hash>,
        new: Option<sled::IVec>,
    ) -> Result<bool> {
        let segment = segment_of(key, self.index.shape.segments);
        let data_key = data_key(partition, segment, key);
        if expected.is_none() {
            // The common repair (the key is missing here): one compare-and-swap from
            // absent, no read first.
            if self.swap_from(partition, segment, key, &data_key, None, new.clone())? {
                return Ok(true);
            }
        }
        let current = self.index.data.get(&data_key)?;
        if current.as_deref().and_then(|b| entry_of(partition, key, b)) != expected {
            return Ok(false);
        }
        self.swap_from(partition, segment, key, &data_key, current, new)
    }

    /// Replaces the record of `key` (in `segment`, stored under `data_key`) with `new`
    /// (`None` removes it) if it is still exactly `current` (`None`: absent), marking
    /// its region first and sending the index the change. False if the key had changed.
    fn swap_from(
        &self,
        partition: u32,
        segment: u32,
        key: &[u8],
        data_key: &[u8],
        current: Option<sled::IVec>,
        new: Option<sled::IVec>,
    ) -> Result<bool> {
        let index = &*self.index;
        // An undecodable record contributes nothing, as in a full scan.
        let entry = |bytes: Option<&[u8]>| {
            bytes
                .and_then(|b| entry_of(partition, key, b))
                .unwrap_or_default()
        };
        let delta = entry(current.as_deref()) ^ entry(new.as_deref());
        let pass = index.gate.enter_partition(partition);
        if index.dropping.contains(partition) {
            return Err(Error::PartitionDropping(partition));
        }
        index.marks.mark(pass.epoch, partition, segment)?;
        if index
            .data
            .compare_and_swap(data_key, current, new)?
            .is_err()
        {
            return Ok(false);
        }
        self.hasher.send(Msg::Update {
            partition,
            segment,
            delta,
        })?;
        drop(pass);
        Ok(true)
    }

    /// Removes tombstones of `partition` that this store learned of (by a local delete
    /// or a repair) more than `grace` ago by its own wall clock, whatever their
    /// versions. Returns how many. A wall clock set forward while the store is open
    /// counts only up to a minute: ages run at most as fast as real time since open.
    ///
    /// A tombstone must outlive the longest time a replica can go without a sync, or the
    /// value it deleted can come back from a replica that missed the delete.
    pub fn purge_tombstones(&self, partition: u32, grace: Duration) -> Result<u64> {
        let now = crate::clock::unix_ms_not_ahead();
        let mut purged = 0;
        for item in self.index.data.scan_prefix(partition.to_be_bytes()) {
            let (k, v) = item?;
            let Some((_, _, key)) = split_data_key(&k) else {
                continue;
            };
            let Ok(h) = RecordHeader::decode(&v, String::new) else {
                continue;
            };
            purged += u64::from(self.purge_if_past(partition, key, &h, grace, now)?);
        }
        Ok(purged)
    }

    /// Removes the record of `key` if it is (still) the tombstone `header`, learned of
    /// here more than `grace` before `now` (unix ms). True if removed.
    pub(crate) fn purge_if_past(
        &self,
        partition: u32,
        key: &[u8],
        header: &RecordHeader,
        grace: Duration,
        now: u64,
    ) -> Result<bool> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        if !header.tombstone || header.deleted_ms.saturating_add(grace_ms) > now {
            return Ok(false);
        }
        let expected = Some(header.entry_hash(partition, key));
        match self.swap(partition, key, expected, None) {
            Err(Error::PartitionDropping(_)) => Ok(false), // on its way out anyway
            other => other,
        }
    }

    pub(crate) fn read(&self, partition: u32, key: &[u8]) -> Result<Option<Record>> {
        let segment = segment_of(key, self.index.shape.segments);
        let Some(bytes) = self.index.data.get(data_key(partition, segment, key))? else {
            return Ok(None);
        };
        Ok(Some(Record::decode(&bytes, || {
            format!("partition {partition} segment {segment}")
        })?))
    }

    pub(crate) fn next_version(&self) -> Result<u64> {
        self.index.clock.next()
    }

    pub(crate) fn observe_version(&self, version: u64) -> Result<()> {
        self.index.clock.observe(version)
    }
}

/// Whether a record from elsewhere may be stored at all: key and value within their
/// limits, the value matching its hash, a tombstone without a value.
fn acceptable(key: &[u8], record: &Record) -> bool {
    check_sizes(key, &record.value).is_ok()
        && record.value_hash == value_hash(&record.value)
        && (!record.tombstone || record.value.is_empty())
}

/// The entry hash the index counts for the stored record `bytes` of `key` (`None`:
/// undecodable).
fn entry_of(partition: u32, key: &[u8], bytes: &[u8]) -> Option<Hash> {
    RecordHeader::decode(bytes, String::new)
        .ok()
        .map(|h| h.entry_hash(partition, key))
}

/// Whether the stored record `bytes` wins over `record` by
/// [`newest_wins`](crate::newest_wins). An undecodable one, or one whose value fails its
/// hash, never does: a good copy replaces a bad one. (The value is hashed only when its
/// header would win.)
fn stored_wins(bytes: &[u8], record: &Record) -> bool {
    let Ok(stored) = RecordHeader::decode(bytes, String::new) else {
        return false;
    };
    rank(stored.version, stored.tombstone, stored.value_hash)
        >= rank(record.version, record.tombstone, record.value_hash)
        && value_hash(stored.value(bytes)) == stored.value_hash
}
