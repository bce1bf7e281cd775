//! The data tree: keys ordered by (partition, segment, key) and versioned value records.
//!
//! ```text
//! data key:    partition u32 BE | segment u32 BE | user key bytes
//! data value:  format u8 = 1 | flags u8 (bit 0 = tombstone) | version u64 LE
//!              | value hash [16] | value bytes
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::error::Corruption;
use crate::hash::{entry_hash, value_hash, Hash, HASH_BYTES};

pub(crate) const RECORD_FORMAT: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
/// format + flags + version + value hash.
pub(crate) const RECORD_HEADER: usize = 1 + 1 + 8 + HASH_BYTES;
pub(crate) const DATA_KEY_PREFIX: usize = 8;

/// A stored value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Version of the write (a hybrid logical clock unless the caller supplied one).
    pub version: u64,
    /// True for a delete marker; `value` is then empty.
    pub tombstone: bool,
    /// Hash of `value`, as stored (not recomputed on read).
    pub value_hash: Hash,
    /// The value bytes.
    pub value: Vec<u8>,
}

impl Record {
    /// A live value.
    pub fn value(version: u64, value: &[u8]) -> Record {
        Record {
            version,
            tombstone: false,
            value_hash: value_hash(value),
            value: value.to_vec(),
        }
    }

    /// A delete marker.
    pub fn tombstone(version: u64) -> Record {
        Record {
            version,
            tombstone: true,
            value_hash: value_hash(b""),
            value: Vec::new(),
        }
    }

    /// The hash this record contributes to its segment when stored under `key`.
    pub fn entry_hash(&self, partition: u32, key: &[u8]) -> Hash {
        self.header().entry_hash(partition, key)
    }

    pub(crate) fn header(&self) -> RecordHeader {
        RecordHeader {
            version: self.version,
            tombstone: self.tombstone,
            value_hash: self.value_hash,
        }
    }

    pub(crate) fn decode(
        bytes: &[u8],
        location: impl FnOnce() -> String,
    ) -> Result<Record, Corruption> {
        let header = RecordHeader::decode(bytes, location)?;
        Ok(Record {
            version: header.version,
            tombstone: header.tombstone,
            value_hash: header.value_hash,
            value: bytes.get(RECORD_HEADER..).unwrap_or_default().to_vec(),
        })
    }
}

/// The fixed part of a record, decoded without copying the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub version: u64,
    pub tombstone: bool,
    pub value_hash: Hash,
}

impl RecordHeader {
    /// The header of a live value or (with `tombstone`) of a delete marker.
    pub(crate) fn new(version: u64, tombstone: bool, value: &[u8]) -> RecordHeader {
        RecordHeader {
            version,
            tombstone,
            value_hash: value_hash(value),
        }
    }

    pub(crate) fn encode(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(RECORD_HEADER + value.len());
        out.push(RECORD_FORMAT);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.value_hash.to_bytes());
        out.extend_from_slice(value);
        out
    }

    pub(crate) fn decode(
        bytes: &[u8],
        location: impl FnOnce() -> String,
    ) -> Result<RecordHeader, Corruption> {
        let (Some(&format), Some(&flags), Some(version), Some(hash)) = (
            bytes.first(),
            bytes.get(1),
            bytes.get(2..10),
            bytes.get(10..RECORD_HEADER),
        ) else {
            return Err(Corruption::BadLength {
                what: "data record",
                location: location(),
                expected: RECORD_HEADER,
                found: bytes.len(),
            });
        };
        if format != RECORD_FORMAT || flags & !FLAG_TOMBSTONE != 0 {
            return Err(Corruption::BadHeader {
                what: "data record",
                location: location(),
                detail: format!("format {format} flags {flags:#04x}, expected format {RECORD_FORMAT} flags 0 or 1"),
            });
        }
        let version = u64::from_le_bytes(version.try_into().unwrap_or_default());
        let value_hash = Hash::from_bytes(hash.try_into().unwrap_or_default());
        Ok(RecordHeader {
            version,
            tombstone: flags & FLAG_TOMBSTONE != 0,
            value_hash,
        })
    }

    pub(crate) fn entry_hash(&self, partition: u32, key: &[u8]) -> Hash {
        entry_hash(
            partition,
            key,
            self.version,
            self.tombstone,
            self.value_hash,
        )
    }
}

/// `partition | segment | key`, the data tree's key.
pub(crate) fn data_key(partition: u32, segment: u32, key: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(DATA_KEY_PREFIX + key.len());
    out.extend_from_slice(&partition.to_be_bytes());
    out.extend_from_slice(&segment.to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// `partition | segment`, the prefix shared by every key of one segment.
pub(crate) fn segment_prefix(partition: u32, segment: u32) -> [u8; DATA_KEY_PREFIX] {
    let [p0, p1, p2, p3] = partition.to_be_bytes();
    let [s0, s1, s2, s3] = segment.to_be_bytes();
    [p0, p1, p2, p3, s0, s1, s2, s3]
}

/// Splits a data key into (partition, segment, user key); `None` if it is too short.
pub(crate) fn split_data_key(key: &[u8]) -> Option<(u32, u32, &[u8])> {
    let partition = u32::from_be_bytes(key.get(0..4)?.try_into().ok()?);
    let segment = u32::from_be_bytes(key.get(4..8)?.try_into().ok()?);
    Some((partition, segment, key.get(8..)?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn record_round_trip() {
        let r = Record::value(42, b"hello");
        assert_eq!(
            Record::decode(&r.header().encode(&r.value), String::new).unwrap(),
            r
        );
        let t = Record::tombstone(7);
        assert_eq!(
            Record::decode(&t.header().encode(&t.value), String::new).unwrap(),
            t
        );
    }

    #[test]
    fn short_or_bad_records_are_errors_not_panics() {
        let good = RecordHeader::new(1, false, b"v").encode(b"v");
        for len in 0..RECORD_HEADER {
            let err = Record::decode(&good[..len], || "k".into()).unwrap_err();
            assert_eq!(
                err,
                Corruption::BadLength {
                    what: "data record",
                    location: "k".into(),
                    expected: RECORD_HEADER,
                    found: len
                }
            );
        }
        let mut bad = good.clone();
        bad[1] = 0x80;
        assert!(matches!(
            Record::decode(&bad, String::new),
            Err(Corruption::BadHeader { .. })
        ));
    }

    #[test]
    fn data_keys_sort_by_partition_then_segment() {
        let a = data_key(1, 2, b"zzz");
        let b = data_key(1, 3, b"a");
        let c = data_key(2, 0, b"");
        assert!(a < b && b < c);
        assert_eq!(split_data_key(&a), Some((1, 2, &b"zzz"[..])));
        assert_eq!(split_data_key(b"short"), None);
    }
}
