//! Messages of the protocol (postcard-encoded, inside the secure channel's frames).
//! Keys and values are encoded as bytes (`serde_bytes`: a length and one copy, where
//! serde's default would encode a sequence of single bytes: the same bytes on the wire,
//! less work).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::exchange::{Lookup, Repair, SegmentItem};
use crate::record::Record;
use crate::store::Entry;
use crate::Hash;

/// Protocol version in the handshake; each side refuses other versions.
pub const PROTOCOL: u32 = 6;

/// The client's handshake payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Hello {
    pub protocol: u32,
}

/// The server's handshake payload.
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u32,
    /// The server's tree shape, so a diff needs no extra round trip to learn it.
    pub width: u32,
    pub levels: u32,
}

/// Most items (partitions, parents, segments, keys, repairs) in one request; a client
/// pages through longer lists.
pub const MAX_ITEMS: usize = 4096;
/// Most partitions one `Partitions` answer lists (4 MiB of them in memory); a store that
/// holds more answers with an error, and its peers name their partitions instead.
pub const MAX_PARTITIONS: usize = 1 << 20;
/// Most hashes one `Hashes` answer holds: a `Children` answer's bound, which is larger
/// than a `Roots` answer's.
pub const MAX_HASHES: usize = MAX_DESCEND_HASHES;
/// Most segments in one `Segments` request (they are 5 bytes each; the answer is cut
/// at [`ANSWER_BUDGET`] bytes).
pub const MAX_SEGMENTS: usize = 16_384;
/// Most child hashes one `Descend` or `Children` answer holds (4 MiB): the server
/// answers a descent for a prefix of its nodes that fits, and refuses a `Children`
/// request for more parents than that (a client asks for at most this many divided by
/// the tree's width).
pub const MAX_DESCEND_HASHES: usize = 1 << 18;
/// Most nodes in one `Descend` request (6 MiB).
pub const MAX_DESCEND_NODES: usize = 1 << 18;

pub use crate::exchange::ANSWER_BUDGET;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Partitions,
    Roots(#[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")] Vec<u32>),
    Children {
        partition: u32,
        level: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")]
        parents: Vec<u64>,
    },
    Records {
        partition: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")]
        keys: Vec<Vec<u8>>,
    },
    /// Entries of segments, with the records of those flagged, the first segment's
    /// after the key `after` (see `Replica::segments`).
    Segments {
        partition: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_SEGMENTS>")]
        segments: Vec<(u32, bool)>,
        #[serde(with = "serde_bytes")]
        after: Option<Vec<u8>>,
    },
    Apply {
        partition: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")]
        repairs: Vec<WireRepair>,
    },
    /// The alternating descent (see `Replica::descend`): the sender's hashes of runs of
    /// consecutive nodes of `level`, each run as (its first node, its hashes).
    Descend {
        partition: u32,
        level: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_DESCEND_NODES>")]
        runs: Vec<(u64, Vec<[u8; 16]>)>,
    },
    /// Replication messages: each record written unless the stored one wins.
    Write {
        partition: u32,
        #[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")]
        writes: Vec<WireWrite>,
    },
    /// The node's status text (its anti-entropy manager's, as JSON), if it has one.
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Partitions(#[serde(deserialize_with = "bounded::<_, _, MAX_PARTITIONS>")] Vec<u32>),
    Hashes(#[serde(deserialize_with = "bounded::<_, _, MAX_HASHES>")] Vec<[u8; 16]>),
    Records(#[serde(deserialize_with = "bounded::<_, _, MAX_ITEMS>")] Vec<WireLookup>),
    /// Per segment of a prefix of the request, its keys; `partial`: the last segment's
    /// list stops before its end (the answer reached [`ANSWER_BUDGET`]).
    Segments {
        #[serde(deserialize_with = "bounded::<_, _, MAX_SEGMENTS>")]
        lists: Vec<Vec<WireItem>>,
        partial: bool,
    },
    Applied {
        written: u64,
        stale: u64,
        refused: u64,
    },
    /// Per differing node, its children's hashes, for the first `covered` nodes of the
    /// request (the server stops at [`MAX_DESCEND_HASHES`]; the client sends the rest).
    Descended {
        covered: u64,
        #[serde(deserialize_with = "bounded::<_, _, MAX_DESCEND_NODES>")]
        nodes: Vec<(u64, Vec<[u8; 16]>)>,
    },
    /// Replication messages written (the rest were older than what is stored).
    Written(u64),
    Status(String),
    Error(String),
}

/// Decodes a list of at most `N` items, refusing a longer one as soon as its length
/// prefix says so. A list of small items can take many times its wire size in memory
/// (an empty key: 1 byte on the wire, 24 in a `Vec`): without this bound one 16 MiB
/// frame of empty keys decoded to about 16 million of them, 400 MB, before the
/// request's limit was checked, on each of a server's connections.
fn bounded<'de, D, T, const N: usize>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct AtMost<T, const N: usize>(PhantomData<T>);

    impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for AtMost<T, N> {
        type Value = Vec<T>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "a list of at most {N} items")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let announced = seq.size_hint().unwrap_or(0);
            if announced > N {
                return Err(de::Error::invalid_length(announced, &self));
            }
            // Room for what was announced, up to 1 MiB: the rest grows with what arrives.
            let mut out = Vec::with_capacity(announced.min((1 << 20) / size_of::<T>().max(1)));
            while let Some(item) = seq.next_element()? {
                if out.len() == N {
                    return Err(de::Error::invalid_length(N + 1, &self));
                }
                out.push(item);
            }
            Ok(out)
        }
    }

    deserializer.deserialize_seq(AtMost::<T, N>(PhantomData))
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEntry {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub version: u64,
    pub tombstone: bool,
    pub hash: [u8; 16],
}

/// One key of a `Segments` answer: its entry, or its record (the entry follows from it),
/// or its entry with a mark that its record is corrupt.
#[derive(Debug, Serialize, Deserialize)]
pub enum WireItem {
    Entry(WireEntry),
    Record(#[serde(with = "serde_bytes")] Vec<u8>, WireRecord),
    Corrupt(WireEntry),
}

#[derive(Debug, Serialize, Deserialize)]
pub enum WireLookup {
    Absent,
    Found(WireRecord),
    Corrupt,
}

/// A record with the hash its sender checked it against, so the receiver can check the
/// bytes end to end (a mismatch makes the repair refused, never stored).
#[derive(Debug, Serialize, Deserialize)]
pub struct WireRecord {
    pub version: u64,
    pub tombstone: bool,
    pub value_hash: [u8; 16],
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// One replication message: a record to write under a key.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireWrite {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub record: WireRecord,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireRepair {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub expected: Option<[u8; 16]>,
    pub record: WireRecord,
}

pub fn hashes(h: &[Hash]) -> Vec<[u8; 16]> {
    h.iter().map(|h| h.to_bytes()).collect()
}

impl From<&Entry> for WireEntry {
    fn from(e: &Entry) -> Self {
        WireEntry {
            key: e.key.clone(),
            version: e.version,
            tombstone: e.tombstone,
            hash: e.hash.to_bytes(),
        }
    }
}

impl From<WireEntry> for Entry {
    fn from(e: WireEntry) -> Self {
        Entry {
            key: e.key,
            version: e.version,
            tombstone: e.tombstone,
            hash: Hash::from_bytes(e.hash),
        }
    }
}

impl From<&Record> for WireRecord {
    fn from(r: &Record) -> Self {
        WireRecord {
            version: r.version,
            tombstone: r.tombstone,
            value_hash: r.value_hash.to_bytes(),
            value: r.value.clone(),
        }
    }
}

impl From<WireRecord> for Record {
    // The hash travels as sent; whoever stores the record checks the bytes against it.
    fn from(r: WireRecord) -> Self {
        Record {
            version: r.version,
            tombstone: r.tombstone,
            value_hash: Hash::from_bytes(r.value_hash),
            value: r.value,
        }
    }
}

impl From<&Lookup> for WireLookup {
    fn from(l: &Lookup) -> Self {
        match l {
            Lookup::Absent => WireLookup::Absent,
            Lookup::Found(r) => WireLookup::Found(r.into()),
            Lookup::Corrupt => WireLookup::Corrupt,
        }
    }
}

impl From<WireLookup> for Lookup {
    fn from(l: WireLookup) -> Self {
        match l {
            WireLookup::Absent => Lookup::Absent,
            WireLookup::Found(r) => Lookup::Found(r.into()),
            WireLookup::Corrupt => Lookup::Corrupt,
        }
    }
}

impl From<&SegmentItem> for WireItem {
    fn from(item: &SegmentItem) -> Self {
        match &item.record {
            Some(Lookup::Found(r)) => WireItem::Record(item.entry.key.clone(), r.into()),
            Some(Lookup::Corrupt) => WireItem::Corrupt((&item.entry).into()),
            // A record asked for and gone since the scan cannot happen (one scan reads
            // both); it travels as its entry.
            Some(Lookup::Absent) | None => WireItem::Entry((&item.entry).into()),
        }
    }
}

impl WireItem {
    /// The item, its entry hash recomputed from a record (so the sender cannot pair a
    /// record with some other entry).
    pub fn into_item(self, partition: u32, with_record: bool) -> SegmentItem {
        match self {
            // Without its record even if asked: the repair reads it if it needs it.
            WireItem::Entry(e) => SegmentItem {
                entry: e.into(),
                record: None,
            },
            WireItem::Corrupt(e) => SegmentItem {
                entry: e.into(),
                record: Some(Lookup::Corrupt),
            },
            WireItem::Record(key, r) => {
                let record = Record::from(r);
                SegmentItem {
                    entry: Entry {
                        hash: record.entry_hash(partition, &key),
                        version: record.version,
                        tombstone: record.tombstone,
                        key,
                    },
                    record: with_record.then_some(Lookup::Found(record)),
                }
            }
        }
    }
}

impl From<&Repair> for WireRepair {
    fn from(r: &Repair) -> Self {
        WireRepair {
            key: r.key.clone(),
            expected: r.expected.map(Hash::to_bytes),
            record: (&r.record).into(),
        }
    }
}

impl From<WireRepair> for Repair {
    fn from(r: WireRepair) -> Self {
        Repair {
            key: r.key,
            expected: r.expected.map(Hash::from_bytes),
            record: r.record.into(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::net::channel::decode;

    /// One message of every kind, holding `key` and `value`, encoded, each with the index
    /// of its type in [`decode_as_anything`]'s answer.
    fn every_message(key: &[u8], value: &[u8]) -> Vec<(usize, Vec<u8>)> {
        let record = || WireRecord {
            version: 3,
            tombstone: false,
            value_hash: [7; 16],
            value: value.to_vec(),
        };
        let entry = || WireEntry {
            key: key.to_vec(),
            version: 9,
            tombstone: true,
            hash: [1; 16],
        };
        let requests = [
            Request::Partitions,
            Request::Roots(vec![0, 5, u32::MAX]),
            Request::Children {
                partition: 1,
                level: 2,
                parents: vec![4, 1 << 40],
            },
            Request::Records {
                partition: 1,
                keys: vec![key.to_vec(), Vec::new()],
            },
            Request::Segments {
                partition: 2,
                segments: vec![(3, true), (4, false)],
                after: Some(key.to_vec()),
            },
            Request::Apply {
                partition: 0,
                repairs: vec![WireRepair {
                    key: key.to_vec(),
                    expected: Some([2; 16]),
                    record: record(),
                }],
            },
            Request::Descend {
                partition: 0,
                level: 1,
                runs: vec![(16, vec![[3; 16]; 3])],
            },
            Request::Write {
                partition: 7,
                writes: vec![WireWrite {
                    key: key.to_vec(),
                    record: record(),
                }],
            },
            Request::Status,
        ];
        let responses = [
            Response::Partitions(vec![1, 2]),
            Response::Hashes(vec![[5; 16]; 2]),
            Response::Records(vec![
                WireLookup::Absent,
                WireLookup::Found(record()),
                WireLookup::Corrupt,
            ]),
            Response::Segments {
                lists: vec![
                    vec![
                        WireItem::Entry(entry()),
                        WireItem::Record(key.to_vec(), record()),
                        WireItem::Corrupt(entry()),
                    ],
                    Vec::new(),
                ],
                partial: true,
            },
            Response::Applied {
                written: 1,
                stale: 2,
                refused: 3,
            },
            Response::Descended {
                covered: 2,
                nodes: vec![(1, vec![[9; 16]])],
            },
            Response::Written(4),
            Response::Status(String::from_utf8_lossy(value).into_owned()),
            Response::Error("no".into()),
        ];
        let mut out: Vec<(usize, Vec<u8>)> = requests
            .iter()
            .map(|r| (0, postcard::to_stdvec(r).unwrap()))
            .collect();
        out.extend(
            responses
                .iter()
                .map(|r| (1, postcard::to_stdvec(r).unwrap())),
        );
        out.push((
            2,
            postcard::to_stdvec(&Hello { protocol: PROTOCOL }).unwrap(),
        ));
        out.push((
            3,
            postcard::to_stdvec(&Welcome {
                protocol: PROTOCOL,
                width: 16,
                levels: 5,
            })
            .unwrap(),
        ));
        out
    }

    /// Decodes `bytes` as every message type; each may fail, none may panic. Says which
    /// decoded.
    fn decode_as_anything(bytes: &[u8]) -> [bool; 4] {
        [
            decode::<Request>(bytes).is_ok(),
            decode::<Response>(bytes).is_ok(),
            decode::<Hello>(bytes).is_ok(),
            decode::<Welcome>(bytes).is_ok(),
        ]
    }

    proptest::proptest! {
        /// What a hostile or broken peer can put in a frame: random bytes, or a valid
        /// message of any kind with a byte changed, bytes inserted or the end cut off.
        /// Every decoder answers with a message or an error, never a panic, and each
        /// valid message decodes as what it is.
        #[test]
        fn decoders_never_panic_on_what_a_peer_sends(
            noise in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            value in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12),
            at in proptest::prelude::any::<proptest::sample::Index>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<proptest::sample::Index>(),
        ) {
            decode_as_anything(&noise);
            for (kind, message) in every_message(&key, &value) {
                proptest::prop_assert!(decode_as_anything(&message)[kind]);
                let mut changed = message.clone();
                let i = at.index(changed.len());
                changed[i] = byte;
                decode_as_anything(&changed);
                let mut grown = message.clone();
                grown.splice(i..i, noise.iter().copied());
                decode_as_anything(&grown);
                decode_as_anything(&message[..cut.index(message.len())]);
            }
        }
    }

    #[test]
    fn answers_over_their_limits_are_refused_by_the_decoder() {
        let answers = |items: usize, segments: usize, nodes: usize| {
            let more = usize::from(items > MAX_ITEMS);
            [
                Response::Records((0..items).map(|_| WireLookup::Absent).collect()),
                Response::Partitions(vec![0; MAX_PARTITIONS + more]),
                Response::Hashes(vec![[0; 16]; MAX_HASHES + more]),
                Response::Segments {
                    lists: (0..segments).map(|_| Vec::new()).collect(),
                    partial: false,
                },
                Response::Descended {
                    covered: 1,
                    nodes: vec![(0, Vec::new()); nodes],
                },
            ]
        };
        let decoded = |r: &Response| decode::<Response>(&postcard::to_stdvec(r).unwrap());
        for answer in answers(MAX_ITEMS, MAX_SEGMENTS, MAX_DESCEND_NODES) {
            assert!(decoded(&answer).is_ok());
        }
        for answer in answers(MAX_ITEMS + 1, MAX_SEGMENTS + 1, MAX_DESCEND_NODES + 1) {
            let err = decoded(&answer).unwrap_err().to_string();
            assert!(err.contains("over its limit"), "{err}");
        }
    }
}
