//! The store: the public face of the engine.

pub(crate) mod clock;
pub(crate) mod dropping;
pub(crate) mod file;
pub(crate) mod flush;
pub(crate) mod meta;
mod open;
mod partition;
mod quarantine;
pub(crate) mod record;
mod records;
mod segments;
mod write;

pub use partition::Partition;
pub use records::Records;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::file::sync_tree;
use crate::flush::{FlushStats, GroupCommit};
use crate::hash::Hash;
use crate::hasher::Hasher;
use crate::index::Index;
use crate::meta::CheckpointInfo;
use crate::options::{Options, Shape};
use crate::rebuild::rebuild;
use crate::recovery::{OpenReport, SLED_DIR};
use crate::scan::Progress;
use crate::verify::{verify, VerifyReport};

/// A durable key-value store with a Merkle index per partition.
///
/// All methods take `&self` and may be called from many threads (share it in an `Arc`).
/// Writes are durable after [`Store::flush`]; the index follows them in the background
/// and is exact after [`Store::sync_index`]. Dropping the store closes it cleanly;
/// [`Store::close`] does the same and reports errors.
pub struct Store {
    dir: PathBuf,
    index: Arc<Index>,
    hasher: Hasher,
    flushes: GroupCommit,
    /// Foreground writes since open (see [`Store::foreground_writes`]).
    foreground: AtomicU64,
    report: OpenReport,
    closed: bool,
}

/// One entry of a segment, as listed by [`Store::segment_entries`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The user key.
    pub key: Vec<u8>,
    /// Its version.
    pub version: u64,
    /// True for a delete marker.
    pub tombstone: bool,
    /// The hash it contributes to its segment.
    pub hash: Hash,
}

/// What became of one repair (see [`Store::apply`](crate::Replica::apply)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RepairOutcome {
    Written,
    /// The key changed since the diff saw it.
    Stale,
    /// Invalid: value does not match its hash, or version too far ahead.
    Refused,
}

/// What [`Store::rebuild`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebuildReport {
    /// Records read.
    pub keys: u64,
    /// Partitions with data.
    pub partitions: usize,
    /// Records that could not be decoded (they contribute nothing; see `verify`).
    pub undecodable: usize,
    /// The checkpoint that persisted the rebuilt index.
    pub checkpoint: CheckpointInfo,
}

impl Store {
    /// Opens the store in `path`, creating it if `options.create_if_missing` allows.
    pub fn open(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        Store::open_inner(path.as_ref(), options, false)
    }

    /// Opens an existing store with the tree shape it was created with (`width` and
    /// `levels` in `options` are ignored; it is never created).
    pub fn open_existing(path: impl AsRef<Path>, options: Options) -> Result<Store> {
        Store::open_inner(path.as_ref(), options.create_if_missing(false), true)
    }

    /// A handle on one partition.
    pub fn partition(&self, id: u32) -> Partition<'_> {
        Partition { store: self, id }
    }

    /// Writes `value` under `key` in partition 0 with a store-assigned version.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.partition(0).put(key, value)
    }

    /// Writes `value` under `key` in partition 0 with the caller's version.
    pub fn put_versioned(&self, key: &[u8], value: &[u8], version: u64) -> Result<()> {
        self.partition(0).put_versioned(key, value, version)
    }

    /// Deletes `key` from partition 0 (writes a tombstone).
    pub fn delete(&self, key: &[u8]) -> Result<u64> {
        self.partition(0).delete(key)
    }

    /// Reads `key` from partition 0; `None` if absent or deleted.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.partition(0).get(key)
    }

    /// Makes every write made so far durable, against process crash and power loss
    /// (sled's flush, then an fsync of its files, which sled's own flush does not do).
    /// Concurrent calls share one round of syncs (group commit): each returns once a
    /// round that started after its call has finished.
    pub fn flush(&self) -> Result<()> {
        self.flushes.flush(|| {
            self.index.db.flush()?;
            sync_tree(&self.dir.join(SLED_DIR))
        })
    }

    /// Flush calls served and sync rounds that served them (see [`Store::flush`]).
    pub fn flush_stats(&self) -> FlushStats {
        self.flushes.stats()
    }

    /// Waits until every write made before the call is reflected in the index.
    pub fn sync_index(&self) -> Result<()> {
        self.hasher.barrier()
    }

    /// Persists the index now (it is also done every `checkpoint_interval`).
    pub fn checkpoint(&self) -> Result<CheckpointInfo> {
        self.hasher.checkpoint(false)
    }

    /// The tree shape shared by all partitions.
    pub fn shape(&self) -> Shape {
        self.index.shape
    }

    /// Partitions that hold records (tombstones included), as the index counts them
    /// (call [`Store::sync_index`] first to count every write made so far). A partition
    /// emptied by purges, repairs or a drop is not listed, whether or not its empty tree
    /// is still held (a crash or rebuild may keep or lose it).
    pub fn partitions(&self) -> Vec<u32> {
        self.index
            .trees()
            .iter()
            .filter(|(_, tree)| !tree.is_empty())
            .map(|(&p, _)| p)
            .collect()
    }

    /// Root hash of a partition ([`Hash::ZERO`] if it holds nothing).
    pub fn root(&self, partition: u32) -> Hash {
        self.index
            .trees()
            .get(&partition)
            .map_or(Hash::ZERO, |t| t.root())
    }

    /// Hashes of the given nodes of `level` (0 = root, `levels` = segments).
    pub fn nodes(&self, partition: u32, level: u32, nodes: &[u64]) -> Result<Vec<Hash>> {
        let shape = self.index.shape;
        if level > shape.levels {
            return Err(Error::InvalidArgument(format!(
                "level {level} is past the segment level {}",
                shape.levels
            )));
        }
        check_nodes(shape, level, nodes)?;
        let trees = self.index.trees();
        let Some(tree) = trees.get(&partition) else {
            return Ok(vec![Hash::ZERO; nodes.len()]);
        };
        let mut out = Vec::with_capacity(nodes.len());
        // A run of consecutive nodes (say, a parent's children) is read in one pass.
        for run in nodes.chunk_by(|a, b| a.checked_add(1) == Some(*b)) {
            if let Some(&first) = run.first() {
                tree.node_run(level, first, run.len(), &mut out);
            }
        }
        Ok(out)
    }

    /// Hashes of the `width` children of `node` at `level`.
    pub fn children(&self, partition: u32, level: u32, node: u64) -> Result<Vec<Hash>> {
        self.children_of(partition, level, &[node])
    }

    /// The `width` children of each of `parents` (nodes of `level`), concatenated, in
    /// one read.
    pub(crate) fn children_of(
        &self,
        partition: u32,
        level: u32,
        parents: &[u64],
    ) -> Result<Vec<Hash>> {
        let shape = self.index.shape;
        if level >= shape.levels {
            return Err(Error::InvalidArgument(format!(
                "level {level} has no children (segments are level {})",
                shape.levels
            )));
        }
        check_nodes(shape, level, parents)?;
        // In range: a child of a node of the level is a node of the next one.
        let width = u64::from(shape.width);
        let ids: Vec<u64> = parents
            .iter()
            .flat_map(|&p| p * width..(p + 1) * width)
            .collect();
        self.nodes(partition, level + 1, &ids)
    }

    /// Number of records (tombstones included) in a partition; reads them all.
    pub fn count_keys(&self, partition: u32) -> Result<u64> {
        let mut n = 0;
        for item in self.index.data.scan_prefix(partition.to_be_bytes()).keys() {
            item?;
            n += 1;
        }
        Ok(n)
    }

    /// Foreground writes since open: puts, deletes and replication messages, not
    /// anti-entropy repairs. The manager watches its rate to keep repairs from crowding
    /// them out ([`ManagerOptions::repair_share`](crate::ManagerOptions)).
    pub fn foreground_writes(&self) -> u64 {
        self.foreground.load(Relaxed)
    }

    /// How the last open brought the index back.
    pub fn open_report(&self) -> &OpenReport {
        &self.report
    }

    /// The last checkpoint that reached disk.
    pub fn last_checkpoint(&self) -> Option<CheckpointInfo> {
        *self
            .index
            .last_checkpoint
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Why the last checkpoint failed, if none has succeeded since. The hasher thread
    /// checkpoints every [`Options::checkpoint_interval`] and retries after a failure
    /// (the buckets stay dirty and the marks in place, so nothing is lost), but says so
    /// only here: a disk that is full or failing shows first as this. Flushed writes stay durable meanwhile, and
    /// a crash recovers the index from the marks as usual.
    pub fn checkpoint_error(&self) -> Option<String> {
        self.index
            .checkpoint_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// When an anti-entropy exchange of this store last succeeded (unix ms), as the
    /// [`Manager`](crate::Manager) records it (`None`: never, or unreadable). A store
    /// whose last exchange is older than the replicas' tombstone grace may hold keys
    /// deleted and purged elsewhere since.
    pub fn last_exchange_unix_ms(&self) -> Option<u64> {
        self.index.meta.exchanged().ok().flatten()
    }

    pub(crate) fn set_last_exchange(&self, unix_ms: u64) -> Result<()> {
        self.index.meta.set_exchanged(unix_ms)
    }

    /// When an exchange with the peer `name` last succeeded (unix ms), as the
    /// [`Manager`](crate::Manager) records it (`None`: never since it was added, or
    /// unreadable). Survives restarts, so a manager started again still knows a peer
    /// that has been out of reach since.
    pub fn peer_last_exchange_unix_ms(&self, name: &str) -> Option<u64> {
        self.index.meta.peer_exchanged(name).ok().flatten()
    }

    pub(crate) fn set_peer_last_exchange(&self, name: &str, unix_ms: Option<u64>) -> Result<()> {
        self.index.meta.set_peer_exchanged(name, unix_ms)
    }

    /// Heap bytes held by the in-memory trees.
    pub fn index_memory_bytes(&self) -> usize {
        self.index.trees().values().map(|t| t.memory_bytes()).sum()
    }

    /// Bytes the sled database occupies on disk.
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self.index.db.size_on_disk()?)
    }

    /// Recomputes every segment from the data and checks every value's hash, the
    /// persisted buckets' checksums and the index; reports what is wrong. Writes go on
    /// meanwhile and never show up as problems: a segment found different is checked
    /// again once the writes in flight are in the index, and what still differs once
    /// more while writes wait a moment.
    pub fn verify(&self, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport> {
        verify(&self.index, &|| self.hasher.barrier(), progress)
    }

    /// Recomputes the whole index from the data and persists it. Writes go on meanwhile:
    /// the partitions are re-read a few at a time (about 65,536 keys, or one larger
    /// partition), and only the writes to those wait until they are done (a drop of one
    /// of them, too). Partitions being dropped are skipped. A rebuild that fails or is
    /// cut short by a crash is finished by the next open. `progress` must not write to
    /// the store.
    pub fn rebuild(&self, progress: &mut dyn FnMut(Progress)) -> Result<RebuildReport> {
        rebuild(&self.index, &self.hasher, progress)
    }

    /// Removes a partition for good: its data, index, marks and quarantined records,
    /// durably (a node gives a partition away when the ring changes). Returns how many
    /// records the partition held.
    ///
    /// Writes to other partitions go on meanwhile (they wait only a moment at the start
    /// and at the end). Writes to this one, repairs included, are refused with
    /// [`Error::PartitionDropping`] until the call returns, and its reads see its records
    /// disappear. A crash part-way finishes the drop at the next open. An error part-way
    /// leaves writes to it refused until a retry of this call succeeds; after an I/O
    /// error (a full disk) sled refuses everything until the store is reopened, and the
    /// open finishes the drop (or, if it failed before its intent was recorded, finds
    /// the partition whole and indexed).
    ///
    /// Under a running [`Manager`](crate::Manager), use
    /// [`Manager::drop_partition`](crate::Manager::drop_partition), which keeps its
    /// exchanges from writing the partition back.
    pub fn drop_partition(&self, partition: u32) -> Result<u64> {
        self.drop_partition_with(partition, &|| {})
    }

    /// [`Store::drop_partition`], calling `under_way` once the partition has left the
    /// index and before its records are removed, so tests can act in the middle of a
    /// drop. (Cargo feature `test-hooks` only.)
    #[cfg(feature = "test-hooks")]
    pub fn drop_partition_under_way(&self, partition: u32, under_way: &dyn Fn()) -> Result<u64> {
        self.drop_partition_with(partition, under_way)
    }

    fn drop_partition_with(&self, partition: u32, under_way: &dyn Fn()) -> Result<u64> {
        let index = &*self.index;
        {
            // Not while a rebuild re-reads the partition: it would index what the drop
            // has not removed yet. (A rebuild holding it later finds it dropping.)
            let paused = loop {
                let paused = index.gate.pause();
                if !index.gate.is_held(partition) {
                    break paused;
                }
                drop(paused);
                index.gate.wait_released(partition);
            };
            let Some(pending) = index.dropping.begin(partition, &paused) else {
                return Err(Error::PartitionDropping(partition));
            };
            // The intent first: once it is durable, the next open finishes the drop.
            if let Err(e) = index.meta.set_dropping(partition, true) {
                index.dropping.end(partition, pending, &paused);
                return Err(e);
            }
            // On the hasher thread, after every update sent before the pause, so no
            // checkpoint persists the partition once it has left the index.
            if let Err(e) = self.hasher.begin_drop(partition) {
                index.dropping.end(partition, true, &paused);
                return Err(e);
            }
        }
        under_way();
        let removed = index.remove_dropped(partition);
        // With writes paused again, so a verify that holds the pause (or a rebuild that
        // holds the partition) sees it either still dropping or gone, and concurrent
        // drops' intents do not interleave.
        let paused = index.gate.pause();
        let finished = removed.and_then(|records| {
            index.meta.set_dropping(partition, false)?;
            Ok(records)
        });
        index.dropping.end(partition, finished.is_err(), &paused);
        drop(paused);
        let records = finished?;
        self.flush()?;
        Ok(records)
    }

    /// Closes cleanly: drains the hasher, checkpoints, and writes the snapshot so the
    /// next open needs no recovery.
    pub fn close(mut self) -> Result<()> {
        self.close_inner()
    }

    fn close_inner(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.closed, true) {
            return Ok(());
        }
        // The final checkpoint writes the snapshot, as a new base, unless the one there
        // is the index as it stands (nothing changed since it was written).
        let epoch = self.hasher.shutdown()?;
        self.index.meta.set_state(true, epoch)?;
        self.index.db.flush()?;
        Ok(())
    }

    /// Marks `segments` changed in the index without touching the data, so benchmarks
    /// can time a checkpoint of a given size. Leaves the index wrong; never use it on a
    /// store you keep. (Cargo feature `test-hooks` only.)
    #[cfg(feature = "test-hooks")]
    pub fn bench_touch_segments(
        &self,
        partition: u32,
        segments: impl Iterator<Item = u32>,
    ) -> Result<()> {
        for segment in segments {
            let delta = crate::hash::value_hash(&segment.to_le_bytes());
            self.hasher.send(crate::hasher::Msg::Update {
                partition,
                segment: segment % self.index.shape.segments as u32,
                delta,
            })?;
        }
        self.hasher.barrier()
    }

    /// Makes checkpoints fail once they have written `batches` more batches of buckets
    /// (`None`: never), leaving the buckets as a crash between two batches of one
    /// checkpoint would (tests; cargo feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn fail_checkpoints_after(&self, batches: Option<usize>) {
        *self
            .index
            .batches_before_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = batches;
    }

    /// Makes checkpoints write (and remove) `buckets` buckets per sled batch instead of
    /// a few hundred (`None`: the default), so a small partition's checkpoint takes
    /// several batches (tests; cargo feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn checkpoint_batches_of(&self, buckets: Option<usize>) {
        *self
            .index
            .batch_size_for_tests
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = buckets;
    }

    /// Dirty marks in the database, obsolete ones not yet deleted included (tests;
    /// cargo feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn marks_held(&self) -> usize {
        self.index.marks.tree.len()
    }

    /// Stops without checkpoint or snapshot, as if the process had died (tests; cargo
    /// feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn simulate_crash(mut self) {
        self.closed = true;
        self.hasher.abandon();
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        // Errors cannot be returned from drop; `close` reports them.
        let _ = self.close_inner();
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// Refuses a node number past its level.
fn check_nodes(shape: Shape, level: u32, nodes: &[u64]) -> Result<()> {
    let count = shape.nodes_at(level);
    match nodes.iter().find(|&&n| n >= count) {
        Some(n) => Err(Error::InvalidArgument(format!(
            "node {n} is past the {count} nodes of level {level}"
        ))),
        None => Ok(()),
    }
}
