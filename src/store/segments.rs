//! Reading segments out of the data: entries (and records) of each requested segment,
//! nearby segments by one range scan, answers bounded in bytes.

use crate::error::{Error, Result};
use crate::exchange::{Lookup, SegmentItem};
use crate::record::{segment_prefix, split_data_key, Record, RecordHeader};

use super::{Entry, Store};

impl Store {
    /// The entries of one segment, read from the data (not the index), in key order.
    ///
    /// A record whose header does not decode contributes nothing to the index and is
    /// left out here too, so it reads as absent to an exchange (and a good copy from a
    /// replica can replace it); `verify` reports it.
    pub fn segment_entries(&self, partition: u32, segment: u32) -> Result<Vec<Entry>> {
        Ok(self
            .segment_items(partition, &[(segment, false)], usize::MAX)?
            .into_iter()
            .flatten()
            .map(|item| item.entry)
            .collect())
    }

    /// The keys of each of `segments` (see [`Replica::segments`](crate::Replica)):
    /// entries, and records (checked against their hashes) where asked, stopping once
    /// the answer passes `budget` bytes (after at least one segment). A segment whose
    /// records alone pass the budget is listed without them (the caller reads them by
    /// key). Requested segments
    /// close to each other are read by one range scan, which costs far less per segment
    /// than a lookup each (a bootstrap asks for nearly every segment).
    pub(crate) fn segment_items(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        budget: usize,
    ) -> Result<Vec<Vec<SegmentItem>>> {
        /// Requested segments at most this far apart share a scan.
        const GAP: u32 = 32;
        let mut out: Vec<Vec<SegmentItem>> = Vec::new();
        let mut bytes = 0;
        let mut rest = segments;
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
            let scan = self.index.data.range(segment_prefix(partition, first)..);
            let (mut at, mut scanned) = (0, 0);
            let mut cut = None;
            // The bytes of the segment being read, and whether its records were dropped.
            let (mut segment_bytes, mut records_dropped) = (0, false);
            for item in scan {
                let (k, v) = item?;
                let Some((p, segment, key)) = split_data_key(&k) else {
                    continue;
                };
                if p != partition || segment > last {
                    break;
                }
                let before = at;
                while group.get(at).is_some_and(|&(s, _)| s < segment) {
                    at += 1;
                }
                // Past a segment boundary with the budget spent: the segments before
                // this one are complete; the caller asks again for the rest.
                if at > before && bytes + scanned > budget {
                    cut = Some(at);
                    break;
                }
                if at > before {
                    (segment_bytes, records_dropped) = (0, false);
                }
                let (Some(&(s, with_records)), Some(list)) = (group.get(at), lists.get_mut(at))
                else {
                    break;
                };
                if s != segment {
                    continue; // between requested segments
                }
                // An undecodable header contributes nothing and reads as absent.
                let Ok(h) = RecordHeader::decode(&v, String::new) else {
                    continue;
                };
                let record = (with_records && !records_dropped).then(|| {
                    match Record::decode(&v, String::new) {
                        Ok(r) => Lookup::Found(r),
                        Err(_) => Lookup::Corrupt,
                    }
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
                segment_bytes += item.size();
                scanned += item.size();
                list.push(item);
                if with_records && !records_dropped && segment_bytes > budget {
                    // One segment's records alone would pass the budget (and could pass
                    // the frame limit): list its entries only; the caller reads those
                    // records by key, in pages of its own.
                    records_dropped = true;
                    for item in list.iter_mut() {
                        item.record = None;
                    }
                    segment_bytes = list.iter().map(SegmentItem::size).sum();
                    scanned = lists_size(&lists);
                }
            }
            if let Some(cut) = cut {
                lists.truncate(cut);
                out.extend(lists);
                return Ok(out);
            }
            for list in lists {
                let size: usize = list.iter().map(SegmentItem::size).sum();
                if !out.is_empty() && bytes + size > budget {
                    return Ok(out);
                }
                bytes += size;
                out.push(list);
            }
        }
        Ok(out)
    }
}

fn lists_size(lists: &[Vec<SegmentItem>]) -> usize {
    lists.iter().flatten().map(SegmentItem::size).sum()
}
