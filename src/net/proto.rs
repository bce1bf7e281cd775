//! Messages of the protocol (postcard-encoded, inside the secure channel's frames).

use serde::{Deserialize, Serialize};

use crate::exchange::{Lookup, Repair};
use crate::record::Record;
use crate::store::Entry;
use crate::Hash;

/// Protocol version in the handshake; each side refuses other versions.
pub const PROTOCOL: u32 = 4;

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
/// Most segments in one `Entries` request (they are 4 bytes each; the answer is cut at
/// [`ANSWER_BUDGET`] bytes).
pub const MAX_SEGMENTS: usize = 16_384;
/// Most child hashes one `Descend` answer holds (4 MiB); the server answers for a
/// prefix of the request's nodes that fits.
pub const MAX_DESCEND_HASHES: usize = 1 << 18;
/// Most nodes in one `Descend` request (6 MiB).
pub const MAX_DESCEND_NODES: usize = 1 << 18;

/// Bytes an answer of entries or records may fill before the server stops and lets the
/// client ask for the rest (well under the frame limit).
pub const ANSWER_BUDGET: usize = 8 << 20;

#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Partitions,
    Roots(Vec<u32>),
    Children {
        partition: u32,
        level: u32,
        parents: Vec<u64>,
    },
    Entries {
        partition: u32,
        segments: Vec<u32>,
    },
    Records {
        partition: u32,
        keys: Vec<Vec<u8>>,
    },
    Apply {
        partition: u32,
        repairs: Vec<WireRepair>,
    },
    /// The alternating descent (see `Replica::descend`): the sender's hashes of runs of
    /// consecutive nodes of `level`, each run as (its first node, its hashes).
    Descend {
        partition: u32,
        level: u32,
        runs: Vec<(u64, Vec<[u8; 16]>)>,
    },
    /// Replication messages: each record written unless the stored one wins.
    Write {
        partition: u32,
        writes: Vec<(Vec<u8>, WireRecord)>,
    },
    /// The node's status text (its anti-entropy manager's, as JSON), if it has one.
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub enum Response {
    Partitions(Vec<u32>),
    Hashes(Vec<[u8; 16]>),
    Entries(Vec<Vec<WireEntry>>),
    Records(Vec<WireLookup>),
    Applied {
        written: u64,
        stale: u64,
        refused: u64,
    },
    /// Per differing node, its children's hashes, for the first `covered` nodes of the
    /// request (the server stops at [`MAX_DESCEND_HASHES`]; the client sends the rest).
    Descended {
        covered: u64,
        nodes: Vec<(u64, Vec<[u8; 16]>)>,
    },
    /// Replication messages written (the rest were older than what is stored).
    Written(u64),
    Status(String),
    Error(String),
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireEntry {
    pub key: Vec<u8>,
    pub version: u64,
    pub tombstone: bool,
    pub hash: [u8; 16],
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
    pub value: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct WireRepair {
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
