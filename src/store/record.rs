//! The data tree: keys ordered by (partition, segment, key) and versioned value records.
//!
//! ```text
//! data key:    partition u32 BE | segment u32 BE | user key bytes
//! data value:  format u8 = 2 | flags u8 (bit 0 = tombstone) | version u64 LE
//!              | value hash [16] | (tombstones only) deleted-here unix ms u64 LE
//!              | value bytes
//! ```
//! Format 1 records (stores created before format version 2) have no deletion time;
//! they are still read, and opening such a store rewrites its tombstones once.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::clock::unix_ms_not_behind;
use crate::error::{Corruption, Error};
use crate::hash::{entry_hash, value_hash, Hash, HASH_BYTES};

pub(crate) const RECORD_FORMAT: u8 = 2;
/// The layout of format version 1: no deletion time in tombstones.
pub(crate) const RECORD_FORMAT_V1: u8 = 1;
const FLAG_TOMBSTONE: u8 = 1;
/// format + flags + version + value hash.
pub(crate) const RECORD_HEADER: usize = 1 + 1 + 8 + HASH_BYTES;
/// A format 2 tombstone's header: the above plus the local deletion time.
const TOMBSTONE_HEADER: usize = RECORD_HEADER + 8;
pub(crate) const DATA_KEY_PREFIX: usize = 8;

/// Longest user key a store takes (64 KiB).
pub const MAX_KEY_BYTES: usize = 64 << 10;
/// Longest value a store takes (15 MiB). With the longest key, a record still fits one
/// frame of the network exchange (16 MiB), so a replica can always be sent any record a
/// store holds; a longer one would end every exchange of its partition.
pub const MAX_VALUE_BYTES: usize = 15 << 20;

/// Refuses a key or value past its limit, before anything is written.
pub(crate) fn check_sizes(key: &[u8], value: &[u8]) -> Result<(), Error> {
    if key.len() > MAX_KEY_BYTES {
        return Err(Error::InvalidArgument(format!(
            "key of {} bytes is over the limit of {MAX_KEY_BYTES}",
            key.len()
        )));
    }
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::InvalidArgument(format!(
            "value of {} bytes is over the limit of {MAX_VALUE_BYTES}",
            value.len()
        )));
    }
    Ok(())
}

/// A stored value with its metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Version of the write (a hybrid logical clock unless the caller supplied one).
    pub version: u64,
    /// True for a delete marker; `value` is then empty.
    pub tombstone: bool,
    /// Hash of `value`, as stored; reads check the value against it.
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

    /// The header to store this record under, deleted here now if it is a tombstone.
    pub(crate) fn header(&self) -> RecordHeader {
        RecordHeader {
            version: self.version,
            tombstone: self.tombstone,
            value_hash: self.value_hash,
            deleted_ms: if self.tombstone {
                unix_ms_not_behind()
            } else {
                0
            },
            len: 0,
        }
    }

    /// Decodes a stored record and checks its value against the stored hash, so rotten
    /// bytes are never handed out (or shipped to a replica) as if they were good.
    pub(crate) fn decode(
        bytes: &[u8],
        location: impl Fn() -> String,
    ) -> Result<Record, Corruption> {
        let header = RecordHeader::decode(bytes, &location)?;
        let value = header.value(bytes);
        let computed = value_hash(value);
        if computed != header.value_hash {
            return Err(Corruption::ValueHash {
                location: location(),
                stored: header.value_hash.to_string(),
                computed: computed.to_string(),
            });
        }
        Ok(Record {
            version: header.version,
            tombstone: header.tombstone,
            value_hash: header.value_hash,
            value: value.to_vec(),
        })
    }
}

/// The fixed part of a record, decoded without copying the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RecordHeader {
    pub version: u64,
    pub tombstone: bool,
    pub value_hash: Hash,
    /// For a tombstone, when this store learned of the delete (unix ms; 0 if unknown,
    /// in a format 1 record). Local: not part of the entry hash.
    pub deleted_ms: u64,
    /// Encoded header length (where the value starts); 0 until decoded.
    pub len: usize,
}

impl RecordHeader {
    /// The header of a live value or (with `tombstone`) of a delete marker made now.
    pub(crate) fn new(version: u64, tombstone: bool, value: &[u8]) -> RecordHeader {
        RecordHeader {
            version,
            tombstone,
            value_hash: value_hash(value),
            deleted_ms: if tombstone { unix_ms_not_behind() } else { 0 },
            len: 0,
        }
    }

    pub(crate) fn encode(&self, value: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(TOMBSTONE_HEADER + value.len());
        out.push(RECORD_FORMAT);
        out.push(if self.tombstone { FLAG_TOMBSTONE } else { 0 });
        out.extend_from_slice(&self.version.to_le_bytes());
        out.extend_from_slice(&self.value_hash.to_bytes());
        if self.tombstone {
            out.extend_from_slice(&self.deleted_ms.to_le_bytes());
        }
        out.extend_from_slice(value);
        out
    }

    /// The value bytes of the record this header was decoded from.
    pub(crate) fn value<'a>(&self, bytes: &'a [u8]) -> &'a [u8] {
        bytes.get(self.len..).unwrap_or_default()
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
        if !(format == RECORD_FORMAT || format == RECORD_FORMAT_V1) || flags & !FLAG_TOMBSTONE != 0
        {
            return Err(Corruption::BadHeader {
                what: "data record",
                location: location(),
                detail: format!("format {format} flags {flags:#04x}, expected format {RECORD_FORMAT_V1} or {RECORD_FORMAT} and flags 0 or 1"),
            });
        }
        let tombstone = flags & FLAG_TOMBSTONE != 0;
        let mut header = RecordHeader {
            version: u64::from_le_bytes(version.try_into().unwrap_or_default()),
            tombstone,
            value_hash: Hash::from_bytes(hash.try_into().unwrap_or_default()),
            deleted_ms: 0,
            len: RECORD_HEADER,
        };
        if tombstone && format == RECORD_FORMAT {
            let Some(ms) = bytes.get(RECORD_HEADER..TOMBSTONE_HEADER) else {
                return Err(Corruption::BadLength {
                    what: "tombstone record",
                    location: location(),
                    expected: TOMBSTONE_HEADER,
                    found: bytes.len(),
                });
            };
            header.deleted_ms = u64::from_le_bytes(ms.try_into().unwrap_or_default());
            header.len = TOMBSTONE_HEADER;
        }
        Ok(header)
    }

    /// True for a format 1 tombstone, which has no deletion time yet.
    pub(crate) fn is_v1_tombstone(bytes: &[u8]) -> bool {
        bytes.first() == Some(&RECORD_FORMAT_V1)
            && bytes.get(1).is_some_and(|f| f & FLAG_TOMBSTONE != 0)
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
    fn tombstones_carry_their_local_deletion_time_outside_the_entry_hash() {
        let mut h = RecordHeader::new(9, true, b"");
        h.deleted_ms = 1234;
        let bytes = h.encode(b"");
        let back = RecordHeader::decode(&bytes, String::new).unwrap();
        assert_eq!(
            (back.deleted_ms, back.len, back.version),
            (1234, bytes.len(), 9)
        );
        let mut other = h;
        other.deleted_ms = 99;
        assert_eq!(h.entry_hash(1, b"k"), other.entry_hash(1, b"k"));
        // A format 1 tombstone decodes with an unknown deletion time.
        let mut v1 = bytes.clone();
        v1[0] = RECORD_FORMAT_V1;
        v1.truncate(RECORD_HEADER);
        assert!(RecordHeader::is_v1_tombstone(&v1));
        assert_eq!(
            RecordHeader::decode(&v1, String::new).unwrap().deleted_ms,
            0
        );
        // A format 2 tombstone cut before its time is an error, not a panic.
        assert!(matches!(
            RecordHeader::decode(&bytes[..RECORD_HEADER + 3], String::new),
            Err(Corruption::BadLength { .. })
        ));
    }

    #[test]
    fn rotten_values_are_refused() {
        let mut bytes = RecordHeader::new(1, false, b"value").encode(b"value");
        *bytes.last_mut().unwrap() ^= 1;
        assert!(matches!(
            Record::decode(&bytes, String::new),
            Err(Corruption::ValueHash { .. })
        ));
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

    proptest::proptest! {
        /// Any bytes under a data key decode to a record whose value matches its hash,
        /// or to a corruption error; never a panic. Valid records with one byte changed
        /// or cut short are refused, unless the change is in the version or the local
        /// deletion time, which the record does not check (the version is part of the
        /// entry hash the index holds, so verify and the scrub find it there).
        #[test]
        fn any_stored_bytes_decode_to_a_checked_record_or_an_error(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            tombstone in proptest::prelude::any::<bool>(),
            flip in proptest::prelude::any::<proptest::sample::Index>(),
            bit in 0u8..8,
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            if let Ok(record) = Record::decode(&bytes, String::new) {
                proptest::prop_assert_eq!(value_hash(&record.value), record.value_hash);
            }
            let value = if tombstone { Vec::new() } else { value };
            let good = RecordHeader::new(7, tombstone, &value).encode(&value);
            let mut bad = good.clone();
            let at = flip.index(bad.len());
            bad[at] ^= 1 << bit;
            let in_deletion_time = tombstone && (RECORD_HEADER..TOMBSTONE_HEADER).contains(&at);
            let in_version = (2..10).contains(&at);
            match Record::decode(&bad, String::new) {
                Ok(record) => proptest::prop_assert!(
                    in_deletion_time || in_version,
                    "byte {} flipped and still decoded: {:?}", at, record
                ),
                Err(_) => proptest::prop_assert!(!in_deletion_time && !in_version),
            }
            let short = cut.index(good.len());
            proptest::prop_assert!(Record::decode(&good[..short], String::new).is_err());
        }
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
