//! Packed index buckets: a run of nodes of one level, one sled value each.
//!
//! ```text
//! index key:   partition u32 BE | level u8 | bucket u32 BE          (9 bytes)
//! index value: encoded page (see `page.rs`) | checksum [16]
//! checksum  =  derive_key("...bucket checksum v1", index key | encoded page)[..16]
//! ```
//! Bucket `b` of level `L` (1 <= L <= levels) holds nodes `b*n .. b*n+n-1` of level `L`,
//! where `n = min(width^L, B)` and `B` is the smallest power of `width` that is at least
//! 256. All-zero buckets are not stored.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::error::Corruption;
use crate::hash::{derive, Hash, BUCKET_CONTEXT, HASH_BYTES};
use crate::page::{self, Page, PageRef};

pub(crate) const INDEX_KEY_LEN: usize = 9;

/// Where a bucket lives in the index tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BucketId {
    pub partition: u32,
    pub level: u8,
    pub bucket: u32,
}

impl BucketId {
    pub(crate) fn key(&self) -> [u8; INDEX_KEY_LEN] {
        let [p0, p1, p2, p3] = self.partition.to_be_bytes();
        let [b0, b1, b2, b3] = self.bucket.to_be_bytes();
        [p0, p1, p2, p3, self.level, b0, b1, b2, b3]
    }

    pub(crate) fn from_key(key: &[u8]) -> Result<BucketId, Corruption> {
        let bytes: [u8; INDEX_KEY_LEN] = key.try_into().map_err(|_| Corruption::BadLength {
            what: "index key",
            location: format!("{key:02x?}"),
            expected: INDEX_KEY_LEN,
            found: key.len(),
        })?;
        let [p0, p1, p2, p3, level, b0, b1, b2, b3] = bytes;
        Ok(BucketId {
            partition: u32::from_be_bytes([p0, p1, p2, p3]),
            level,
            bucket: u32::from_be_bytes([b0, b1, b2, b3]),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "partition {} level {} bucket {}",
            self.partition, self.level, self.bucket
        )
    }
}

fn checksum(key: &[u8], hashes: &[u8]) -> Hash {
    derive(BUCKET_CONTEXT, &[key, hashes])
}

/// Encodes a page's nodes with a checksum bound to `id`; `None` if they are all zero
/// (an all-zero bucket is not stored).
pub(crate) fn encode(id: BucketId, page: PageRef<'_>, len: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    page.encode(len, &mut out);
    if out.is_empty() {
        return None;
    }
    let sum = checksum(&id.key(), &out);
    out.extend_from_slice(&sum.to_bytes());
    Some(out)
}

/// Decodes a bucket of `len` nodes, checking its checksum, then every range.
pub(crate) fn decode(id: BucketId, bytes: &[u8], len: usize) -> Result<Page, Corruption> {
    let Some(body_len) = bytes.len().checked_sub(HASH_BYTES) else {
        return Err(Corruption::BadLength {
            what: "index bucket",
            location: id.describe(),
            expected: HASH_BYTES + 1,
            found: bytes.len(),
        });
    };
    let (body, stored) = bytes.split_at(body_len);
    let expected = checksum(&id.key(), body);
    let found = Hash::from_bytes(stored.try_into().unwrap_or_default());
    if expected != found {
        return Err(Corruption::ChecksumMismatch {
            what: "index bucket",
            location: id.describe(),
            expected: expected.to_hex(),
            found: found.to_hex(),
        });
    }
    let (page, used) = page::decode(body, len, &|| id.describe())?;
    if used != body.len() {
        return Err(Corruption::BadLength {
            what: "index bucket",
            location: id.describe(),
            expected: used + HASH_BYTES,
            found: bytes.len(),
        });
    }
    Ok(page)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::hash::value_hash;

    fn id() -> BucketId {
        BucketId {
            partition: 3,
            level: 2,
            bucket: 9,
        }
    }

    fn page(hashes: &[Hash]) -> PageRef<'_> {
        PageRef::Dense(hashes)
    }

    #[test]
    fn round_trip() {
        let hashes: Vec<Hash> = (0..4u8).map(|i| value_hash(&[i])).collect();
        let bytes = encode(id(), page(&hashes), 4).unwrap();
        let back = decode(id(), &bytes, 4).unwrap();
        for (i, h) in hashes.iter().enumerate() {
            assert_eq!(back.get(i), *h);
        }
        assert_eq!(BucketId::from_key(&id().key()).unwrap(), id());
        assert!(encode(id(), page(&[Hash::ZERO; 4]), 4).is_none());
    }

    #[test]
    fn flipped_byte_or_moved_bucket_is_a_checksum_mismatch() {
        let hashes = vec![value_hash(b"a"); 4];
        let mut bytes = encode(id(), page(&hashes), 4).unwrap();
        bytes[5] ^= 1;
        let err = decode(id(), &bytes, 4).unwrap_err();
        assert!(matches!(
            err,
            Corruption::ChecksumMismatch {
                what: "index bucket",
                ..
            }
        ));
        let bytes = encode(id(), page(&hashes), 4).unwrap();
        let other = BucketId { bucket: 10, ..id() };
        assert!(decode(other, &bytes, 4).is_err());
        assert!(matches!(
            decode(id(), &bytes[..10], 4),
            Err(Corruption::BadLength { found: 10, .. })
        ));
        assert!(decode(id(), &bytes[..3], 4).is_err());
        assert!(BucketId::from_key(b"short").is_err());
    }
}
