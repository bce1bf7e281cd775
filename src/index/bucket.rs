//! Persisted index buckets: the segment hashes of one partition, in runs sized to its
//! density, one sled value per run (the levels above are recomputed on load).
//!
//! ```text
//! index key:   partition u32 BE | span exponent j u8 | bucket u32 BE      (9 bytes)
//! index value: P times { segment page u32 LE | encoded page (see `page.rs`) }
//!              | checksum [16]
//! checksum  =  derive_key("...bucket checksum v1", index key | everything before it)[..16]
//! ```
//! A segment page is `n = bucket_len(levels)` consecutive segments (256 for width 16).
//! Bucket `b` of exponent `j` covers segment pages `b*width^j .. (b+1)*width^j - 1` and
//! lists those that hold a non-zero segment, in increasing order. Every bucket of a
//! partition has the same `j`, chosen so a bucket holds a few hundred non-zero segments
//! at most: a dense partition uses `j = 0` (one page per bucket), a sparse one a larger
//! `j`, so the number of sled values follows the data, not the partition count.
//! Buckets without a non-zero segment are not stored.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::error::Corruption;
use crate::hash::{derive, Hash, BUCKET_CONTEXT, HASH_BYTES};
use crate::options::Shape;
use crate::page::{self, PageRef};

pub(crate) const INDEX_KEY_LEN: usize = 9;

/// Non-zero segments a bucket should hold at most, on average: about 4.6 KB.
const TARGET_PER_BUCKET: u64 = 256;

/// Where a bucket lives in the index tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct BucketId {
    pub partition: u32,
    /// Span exponent: the bucket covers `width^span` segment pages.
    pub span: u8,
    pub bucket: u32,
}

impl BucketId {
    pub(crate) fn key(&self) -> [u8; INDEX_KEY_LEN] {
        let [p0, p1, p2, p3] = self.partition.to_be_bytes();
        let [b0, b1, b2, b3] = self.bucket.to_be_bytes();
        [p0, p1, p2, p3, self.span, b0, b1, b2, b3]
    }

    pub(crate) fn from_key(key: &[u8]) -> Result<BucketId, Corruption> {
        let bytes: [u8; INDEX_KEY_LEN] = key.try_into().map_err(|_| Corruption::BadLength {
            what: "index key",
            location: format!("{key:02x?}"),
            expected: INDEX_KEY_LEN,
            found: key.len(),
        })?;
        let [p0, p1, p2, p3, span, b0, b1, b2, b3] = bytes;
        Ok(BucketId {
            partition: u32::from_be_bytes([p0, p1, p2, p3]),
            span,
            bucket: u32::from_be_bytes([b0, b1, b2, b3]),
        })
    }

    pub(crate) fn describe(&self) -> String {
        format!(
            "partition {} bucket {} (span {})",
            self.partition, self.bucket, self.span
        )
    }

    /// The segment pages `first .. first + count` this bucket covers, if it lies inside
    /// a tree of `shape`.
    pub(crate) fn pages(&self, shape: Shape) -> Option<(u64, u64)> {
        let count = u64::from(shape.width).checked_pow(u32::from(self.span))?;
        let total = segment_pages(shape);
        let first = u64::from(self.bucket).checked_mul(count)?;
        (count <= total && first < total).then(|| (first, count.min(total - first)))
    }
}

/// Buckets a partition of `shape` has room for at span `span`.
pub(crate) fn buckets_per_partition(shape: Shape, span: u8) -> u64 {
    let per_bucket = u64::from(shape.width)
        .saturating_pow(u32::from(span))
        .max(1);
    segment_pages(shape).div_ceil(per_bucket)
}

/// Segment pages in a tree of `shape`.
pub(crate) fn segment_pages(shape: Shape) -> u64 {
    shape.segments / shape.bucket_len(shape.levels)
}

/// The span exponent for a partition with `nonzero` segments: the largest whose buckets
/// hold at most [`TARGET_PER_BUCKET`] non-zero segments on average. `current` is kept
/// while its buckets hold between a 32nd and 4 times that, so a partition whose size
/// hovers near a boundary is not rewritten at every checkpoint.
pub(crate) fn span_for(shape: Shape, nonzero: u64, current: Option<u8>) -> u8 {
    let pages = segment_pages(shape);
    let page_len = shape.bucket_len(shape.levels);
    let per_bucket = |span: u8| -> u64 {
        let covered = u64::from(shape.width)
            .saturating_pow(u32::from(span))
            .min(pages);
        nonzero.saturating_mul(covered * page_len) / shape.segments
    };
    if let Some(span) = current {
        let fits = u64::from(shape.width).saturating_pow(u32::from(span)) <= pages;
        let avg = per_bucket(span);
        if fits && (TARGET_PER_BUCKET / 32..=TARGET_PER_BUCKET * 4).contains(&avg) {
            return span;
        }
    }
    let mut span = 0u8;
    while u64::from(shape.width).saturating_pow(u32::from(span) + 1) <= pages
        && per_bucket(span + 1) <= TARGET_PER_BUCKET
    {
        span += 1;
    }
    span
}

fn checksum(key: &[u8], body: &[u8]) -> Hash {
    derive(BUCKET_CONTEXT, &[key, body])
}

/// Encodes the non-zero pages `(segment page, nodes)` of one bucket with a checksum
/// bound to `id`; `None` if there are none (an empty bucket is not stored).
pub(crate) fn encode<'a>(
    id: BucketId,
    page_len: usize,
    pages: impl IntoIterator<Item = (u32, PageRef<'a>)>,
) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    for (page, view) in pages {
        let at = out.len();
        out.extend_from_slice(&page.to_le_bytes());
        view.encode(page_len, &mut out);
        if out.len() == at + 4 {
            out.truncate(at); // all zero: not listed
        }
    }
    if out.is_empty() {
        return None;
    }
    let sum = checksum(&id.key(), &out);
    out.extend_from_slice(&sum.to_bytes());
    Some(out)
}

/// Decodes a bucket of a tree of `shape`, checking its checksum and every range, and
/// calls `segment(segment, hash)` for each non-zero segment in order.
pub(crate) fn decode(
    id: BucketId,
    shape: Shape,
    bytes: &[u8],
    segment: &mut dyn FnMut(u32, Hash),
) -> Result<(), Corruption> {
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
    let out_of_range = |detail: String| Corruption::OutOfRange {
        what: "index bucket",
        location: id.describe(),
        detail,
    };
    let (first, count) = id
        .pages(shape)
        .ok_or_else(|| out_of_range("outside the tree".into()))?;
    let page_len = shape.bucket_len(shape.levels);
    let mut at = 0usize;
    let mut last: Option<u64> = None;
    while at < body.len() {
        let page = body
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
            .map(u64::from)
            .ok_or_else(|| out_of_range(format!("page number cut at byte {at}")))?;
        if page < first || page >= first + count || last.is_some_and(|l| page <= l) {
            return Err(out_of_range(format!(
                "segment page {page} out of order or outside pages {first}..{}",
                first + count
            )));
        }
        last = Some(page);
        at += 4;
        let rest = body.get(at..).unwrap_or_default();
        let base = page * page_len;
        at += page::decode_nodes(rest, page_len as usize, &|| id.describe(), &mut |o, h| {
            segment((base + o as u64) as u32, h)
        })?;
    }
    if last.is_none() {
        return Err(out_of_range("an empty bucket is never stored".into()));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::hash::value_hash;

    fn shape() -> Shape {
        Shape::new(16, 5).unwrap()
    }

    fn id() -> BucketId {
        BucketId {
            partition: 3,
            span: 1,
            bucket: 9,
        }
    }

    fn sample() -> (Vec<Hash>, Vec<u8>) {
        let mut page = vec![Hash::ZERO; 256];
        page[7] = value_hash(b"a");
        page[200] = value_hash(b"b");
        let bytes = encode(id(), 256, [(9 * 16 + 2, PageRef::Dense(&page))]).unwrap();
        (page, bytes)
    }

    #[test]
    fn round_trip() {
        let (page, bytes) = sample();
        let mut got = Vec::new();
        decode(id(), shape(), &bytes, &mut |s, h| got.push((s, h))).unwrap();
        let base = (9 * 16 + 2) * 256;
        assert_eq!(got, vec![(base + 7, page[7]), (base + 200, page[200])]);
        assert_eq!(BucketId::from_key(&id().key()).unwrap(), id());
        assert!(encode(id(), 256, [(3, PageRef::Dense(&[Hash::ZERO; 256]))]).is_none());
    }

    #[test]
    fn flipped_byte_or_moved_bucket_is_a_checksum_mismatch() {
        let (_, good) = sample();
        let mut bytes = good.clone();
        bytes[5] ^= 1;
        let err = decode(id(), shape(), &bytes, &mut |_, _| {}).unwrap_err();
        assert!(matches!(
            err,
            Corruption::ChecksumMismatch {
                what: "index bucket",
                ..
            }
        ));
        let other = BucketId { bucket: 10, ..id() };
        assert!(decode(other, shape(), &good, &mut |_, _| {}).is_err());
        assert!(matches!(
            decode(id(), shape(), &good[..10], &mut |_, _| {}),
            Err(Corruption::BadLength { found: 10, .. })
        ));
        assert!(BucketId::from_key(b"short").is_err());
    }

    #[test]
    fn a_page_outside_its_bucket_is_out_of_range() {
        let page = [value_hash(b"a"); 256];
        // Bucket 9 of span 1 covers pages 144..160; page 3 is not among them.
        let bytes = encode(id(), 256, [(3, PageRef::Dense(&page))]).unwrap();
        assert!(matches!(
            decode(id(), shape(), &bytes, &mut |_, _| {}),
            Err(Corruption::OutOfRange { .. })
        ));
        let far = BucketId { span: 9, ..id() };
        assert!(far.pages(shape()).is_none());
    }

    proptest::proptest! {
        /// A body that passes its checksum (a bucket sled wrote whole but this store did
        /// not, or a checksum collision) is still parsed with every range checked: no
        /// panic, and whatever it accepts lies inside the bucket, in order, non-zero.
        /// The bodies are valid buckets (pages in and around the bucket's 144..160, a
        /// few nodes each) with one byte changed or cut, and checksummed again.
        #[test]
        fn any_checksummed_body_decodes_inside_its_bucket_or_is_refused(
            pages in proptest::collection::btree_map(
                140u32..164,
                proptest::collection::btree_map(0usize..256, 1u8..=255, 1..6),
                1..4,
            ),
            change in proptest::option::of((proptest::prelude::any::<proptest::sample::Index>(), proptest::prelude::any::<u8>())),
            cut in proptest::option::of(proptest::prelude::any::<proptest::sample::Index>()),
        ) {
            let held: Vec<(u32, Vec<Hash>)> = pages
                .iter()
                .map(|(&page, nodes)| {
                    let mut dense = vec![Hash::ZERO; 256];
                    for (&at, &b) in nodes {
                        dense[at] = value_hash(&[b]);
                    }
                    (page, dense)
                })
                .collect();
            let encoded = encode(id(), 256, held.iter().map(|(p, d)| (*p, PageRef::Dense(d)))).unwrap();
            let mut body = encoded[..encoded.len() - HASH_BYTES].to_vec();
            if let Some((at, byte)) = change {
                let at = at.index(body.len());
                body[at] = byte;
            }
            if let Some(cut) = cut {
                body.truncate(cut.index(body.len()));
            }
            let mut bytes = body.clone();
            bytes.extend_from_slice(&checksum(&id().key(), &body).to_bytes());
            let mut got = Vec::new();
            let result = decode(id(), shape(), &bytes, &mut |s, h| got.push((s, h)));
            let unchanged = body == encoded[..encoded.len() - HASH_BYTES];
            let inside = pages.keys().all(|p| (144..160).contains(p));
            if unchanged {
                proptest::prop_assert_eq!(result.is_ok(), inside);
            }
            if result.is_ok() {
                let (first, count) = id().pages(shape()).unwrap();
                for pair in got.windows(2) {
                    proptest::prop_assert!(pair[0].0 < pair[1].0);
                }
                for (segment, hash) in got {
                    let page = u64::from(segment) / 256;
                    proptest::prop_assert!(page >= first && page < first + count);
                    proptest::prop_assert_ne!(hash, Hash::ZERO);
                }
            }
        }
    }

    #[test]
    fn spans_follow_density_with_hysteresis() {
        let s = shape();
        assert_eq!(span_for(s, 700_000, None), 0);
        assert_eq!(span_for(s, 15_625, None), 1);
        assert_eq!(span_for(s, 1_000, None), 2);
        assert_eq!(span_for(s, 1, None), 3);
        assert_eq!(span_for(s, 0, None), 3);
        // Near a boundary the current span is kept.
        assert_eq!(span_for(s, 20_000, Some(1)), 1);
        assert_eq!(span_for(s, 3_000, Some(1)), 1);
        assert_eq!(span_for(s, 700_000, Some(1)), 0);
    }
}
