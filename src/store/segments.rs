//! Reading segments out of the data: entries (and records) of each requested segment,
//! nearby segments by one range scan, answers bounded in bytes (a segment of any size
//! arrives in pages).

use std::ops::Bound::{Excluded, Unbounded};

use crate::error::{Error, Result};
use crate::exchange::{Lookup, SegmentItem, SegmentsPage};
use crate::record::{data_key, segment_prefix, split_data_key, Record, RecordHeader};

use super::{Entry, Store};

impl Store {
    /// The entries of one segment, read from the data (not the index), in key order.
    ///
    /// A record whose header does not decode contributes nothing to the index and is
    /// left out here too, so it reads as absent to an exchange (and a good copy from a
    /// replica can replace it); `verify` reports it.
    pub fn segment_entries(&self, partition: u32, segment: u32) -> Result<Vec<Entry>> {
        Ok(self
            .segment_items(partition, &[(segment, false)], None, usize::MAX)?
            .lists
            .into_iter()
            .flatten()
            .map(|item| item.entry)
            .collect())
    }

    /// The keys of each of `segments` (see [`Replica::segments`](crate::Replica)):
    /// entries, and records (checked against their hashes) where asked, the first
    /// segment's from after `after`. The answer stops before it would pass `budget`
    /// bytes (after at least one key), at a segment's end or inside a segment
    /// (`partial`). Requested segments close to each other are read by one range scan,
    /// which costs far less per segment than a lookup each (a bootstrap asks for nearly
    /// every segment).
    pub(crate) fn segment_items(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        after: Option<&[u8]>,
        budget: usize,
    ) -> Result<SegmentsPage> {
        /// Requested segments at most this far apart share a scan.
        const GAP: u32 = 32;
        let mut out: Vec<Vec<SegmentItem>> = Vec::new();
        let mut bytes = 0;
        let mut rest = segments;
        let mut after = after;
        while let Some(&(first, _)) = rest.first() {
            // A run of ascending segments, each within GAP of the one before.
            let mut run = 1;
            while let (Some(&(a, _)), Some(&(b, _))) = (rest.get(run - 1), rest.get(run)) {
                if b <= a || b - a > GAP {
                    break;
                }
                run += 1;
            }
            let (group, tail) = rest.split_at(run);
            rest = tail;
            let last = group.last().map_or(first, |&(s, _)| s);
            if u64::from(last) >= self.index.shape.segments {
                return Err(Error::InvalidArgument(format!(
                    "segment {last} is past the {} segments",
                    self.index.shape.segments
                )));
            }
            let mut lists: Vec<Vec<SegmentItem>> = vec![Vec::new(); group.len()];
            let scan = match after.take() {
                Some(key) => self
                    .index
                    .data
                    .range((Excluded(data_key(partition, first, key)), Unbounded)),
                None => self.index.data.range(segment_prefix(partition, first)..),
            };
            let mut at = 0;
            for item in scan {
                let (k, v) = item?;
                let Some((p, segment, key)) = split_data_key(&k) else {
                    continue;
                };
                if p != partition || segment > last {
                    break;
                }
                while group.get(at).is_some_and(|&(s, _)| s < segment) {
                    at += 1;
                }
                let Some(&(s, with_records)) = group.get(at) else {
                    break;
                };
                if s != segment {
                    continue; // between requested segments
                }
                // An undecodable header contributes nothing and reads as absent.
                let Ok(h) = RecordHeader::decode(&v, String::new) else {
                    continue;
                };
                let record = with_records.then(|| match Record::decode(&v, String::new) {
                    Ok(r) => Lookup::Found(r),
                    Err(_) => Lookup::Corrupt,
                });
                let item = SegmentItem {
                    entry: Entry {
                        key: key.to_vec(),
                        version: h.version,
                        tombstone: h.tombstone,
                        hash: h.entry_hash(partition, key),
                    },
                    record,
                };
                // Budget spent: stop before this key. Segments before it are complete;
                // its own segment is complete too if none of its keys is listed yet.
                if bytes > 0 && bytes + item.size() > budget {
                    let partial = lists.get(at).is_some_and(|list| !list.is_empty());
                    lists.truncate(at + usize::from(partial));
                    out.extend(lists);
                    return Ok(SegmentsPage {
                        lists: out,
                        partial,
                    });
                }
                bytes += item.size();
                if let Some(list) = lists.get_mut(at) {
                    list.push(item);
                }
            }
            out.extend(lists);
        }
        Ok(SegmentsPage {
            lists: out,
            partial: false,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::options::Options;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Answers cut at any budget, asked again from where each stopped, add up to the
        /// one answer without a budget: every key once, in order, with its record where
        /// asked, and every answer within the budget unless it holds a single key.
        #[test]
        fn pages_at_any_budget_add_up_to_the_whole_answer(
            keys in proptest::collection::vec((0..2u32, proptest::collection::vec(any::<u8>(), 0..6)), 0..120),
            asked in proptest::collection::vec((0..4u32, any::<bool>()), 1..6),
            budget in 1..600usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            let options = Options::default().with_segments(4, 2).unwrap();
            let store = Store::open(dir.path(), options).unwrap();
            for (partition, key) in &keys {
                store.partition(*partition).put(key, &key.repeat(9)).unwrap();
            }
            for partition in 0..2 {
                let whole = store.segment_items(partition, &asked, None, usize::MAX).unwrap();
                prop_assert!(!whole.partial);
                let mut pages: Vec<Vec<SegmentItem>> = Vec::new();
                let (mut rest, mut after, mut continued) = (&asked[..], None::<Vec<u8>>, false);
                while !rest.is_empty() {
                    let page = store.segment_items(partition, rest, after.as_deref(), budget).unwrap();
                    page.check_order(after.as_deref()).unwrap();
                    let items = page.lists.iter().flatten().count();
                    let bytes: usize = page.lists.iter().flatten().map(SegmentItem::size).sum();
                    prop_assert!(items <= 1 || bytes <= budget, "{} keys, {} bytes", items, bytes);
                    prop_assert!(!page.lists.is_empty() && page.lists.len() <= rest.len());
                    let answered = page.lists.len();
                    for (i, list) in page.lists.into_iter().enumerate() {
                        match pages.last_mut() {
                            Some(last) if i == 0 && continued => last.extend(list),
                            _ => pages.push(list),
                        }
                    }
                    continued = page.partial;
                    after = page
                        .partial
                        .then(|| pages.last().and_then(|l| l.last()).map(|i| i.entry.key.clone()))
                        .flatten();
                    rest = &rest[answered - usize::from(page.partial)..];
                }
                prop_assert_eq!(pages, whole.lists);
            }
        }
    }
}
