//! A durable key-value store whose Merkle index lives beside the data in one sled
//! database, for anti-entropy between replicas.
//!
//! Each partition has a tree of `width^levels` segments (16^5 = 1,048,576 by default).
//! A key's segment comes from its hash; a segment's hash is the XOR of its entries'
//! hashes, and each interior node the XOR of its children, so a write changes one path.
//! A background hasher thread applies those changes and checkpoints them; a clean close
//! writes a snapshot that the next open maps without reading data, and after a crash only
//! the regions written since the last checkpoint are re-hashed. See `FORMAT.md` for the
//! exact bytes.
//!
//! ```
//! use merkle_index::{Options, Store};
//!
//! # fn main() -> merkle_index::Result<()> {
//! let dir = tempfile::tempdir().unwrap();
//! let store = Store::open(dir.path(), Options::default())?;
//! store.put(b"apple", b"red")?;
//! store.partition(7).put(b"pear", b"green")?;
//! store.flush()?; // durable
//! store.sync_index()?; // index reflects both writes
//! assert_eq!(store.get(b"apple")?, Some(b"red".to_vec()));
//! assert!(!store.root(7).is_zero());
//! store.close()?; // next open maps the snapshot, no rebuild
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_op_in_unsafe_fn)]

/// Internals exposed to the benches and tests (cargo feature `test-hooks` only).
#[cfg(feature = "test-hooks")]
pub mod bench_support;
mod error;
mod exchange;
mod hash;
mod index;
mod manager;
#[cfg(feature = "net")]
pub mod net;
mod options;
mod recovery;
mod store;

// The architecture's parts live in folders (store, index, recovery, exchange, net);
// their modules are named from the crate root so every file says `crate::tree`.
use exchange::sync;
use index::{base, bucket, gate, hasher, level, marks, page, pages, parallel, snapshot, tree};
use recovery::{migrate, rebuild, scan, scrub, verify};
use store::{clock, dropping, file, flush, meta, record};

/// Version of the on-disk format written by this build (see `FORMAT.md`).
pub const FORMAT_VERSION: u32 = 2;

pub use error::{Corruption, Error, Result};
pub use exchange::diff::{diff, merged_root, partitions_to_walk, DiffReport, Difference, PAGE};
pub use exchange::{Applied, Lookup, Repair, Replica, SegmentItem, SegmentsPage, ANSWER_BUDGET};
pub use flush::FlushStats;
pub use hash::{entry_hash, segment_of, value_hash, Hash, HASH_BYTES};
pub use manager::{
    Manager, ManagerOptions, PartitionStatus, Peer, PeerStatus, Running, ScrubStatus, Status,
    BUSY_WRITES_PER_SEC,
};
pub use meta::CheckpointInfo;
pub use options::{Options, Shape};
pub use record::{Record, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use recovery::{OpenReport, Recovery};
pub use scan::Progress;
pub use scrub::{ScrubCursor, ScrubPage};
pub use store::{Entry, Partition, RebuildReport, Records, Store};
pub use sync::{newest_wins, sync, Resolver, SyncOptions, SyncReport, Winner};
pub use verify::{Problem, ProblemKind, VerifyReport};
