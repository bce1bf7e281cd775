//! The store: the public face of the engine.

pub(crate) mod clock;
pub(crate) mod dropping;
pub(crate) mod file;
pub(crate) mod flush;
pub(crate) mod meta;
pub(crate) mod record;
mod segments;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::{self, Base};
use crate::clock::Clock;
use crate::error::Corruption;
use crate::error::{Error, Result};
use crate::exchange::Repair;
use crate::file::{sync_dir, sync_tree};
use crate::flush::{FlushStats, GroupCommit};
use crate::hash::{segment_of, Hash};
use crate::hasher::{Hasher, Msg, Request};
use crate::index::Index;
use crate::marks::Marks;
use crate::meta::{CheckpointInfo, Meta};
use crate::migrate;
use crate::options::{Options, Shape};
use crate::record::{data_key, split_data_key, Record, RecordHeader};
use crate::recovery::{prepare_dir, recover, OpenReport, Sources, SLED_DIR};
use crate::scan::{scan_all, Progress};
use crate::verify::{verify, ProblemKind, VerifyReport};
use crate::FORMAT_VERSION;

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

    fn open_inner(dir: &Path, mut options: Options, adopt_shape: bool) -> Result<Store> {
        options.validate()?;
        let created_dirs = prepare_dir(dir, &options)?;
        let db = open_sled(dir, &options)?;
        // A new store's directory entries (its own, its parents' if they were made, and
        // sled's) must survive power loss before the first flush returns.
        for created in &created_dirs {
            sync_dir(created)?;
        }
        let meta = Meta::new(db.open_tree("meta")?);
        let created = meta.is_new()?;
        if created && !options.create_if_missing {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                reason: "its database holds no merkle-index metadata".into(),
            });
        }
        if adopt_shape {
            if let Some((width, levels)) = meta.shape()? {
                options.width = width;
                options.levels = levels;
            }
        }
        let shape = options.validate()?;
        let data = db.open_tree("data")?;
        if created {
            meta.init(shape)?;
            sync_tree(&dir.join(SLED_DIR))?;
        } else if meta.check(shape)? < FORMAT_VERSION {
            migrate::to_current(&db, &data, &meta)?;
        }
        let started = Instant::now();
        let buckets = db.open_tree("index")?;
        let quarantine = db.open_tree("quarantine")?;
        let marks_tree = db.open_tree("marks")?;
        let finished = dropping::finish_interrupted(
            &meta,
            &dropping::Trees {
                data: &data,
                buckets: &buckets,
                marks: &marks_tree,
                quarantine: &quarantine,
            },
        )?;
        if finished > 0 {
            // A snapshot would still hold the dropped trees: recover from the buckets.
            meta.set_state(false, 0)?;
            base::forget(dir, &meta)?;
        }
        let marks = Marks::new(marks_tree, options.region_segments, shape.segments);
        let changed = db.open_tree("changed")?;
        let sources = Sources {
            meta: &meta,
            data: &data,
            buckets: &buckets,
            changed: &changed,
            marks: &marks,
        };
        let found = recover(dir, shape, sources, created)?;
        // From here on the snapshot is no clean close's: it is at most the base of a
        // recovery (`base.rs`), and only while `meta.base` names it.
        meta.set_state(false, 0)?;
        match found.base {
            Some(epoch) => meta.set_base(Some(epoch))?,
            None => base::forget(dir, &meta)?,
        }
        // No flush needed for these: sled recovers a gap-free prefix of its log, so they
        // are durable before any later write is, and until one is, the snapshot they
        // retire still matches the data. After a finished drop the snapshot no longer
        // does (it holds the dropped partition), and a new store's metadata should not
        // wait for its first write: those paths flush.
        if finished > 0 || created {
            db.flush()?;
        }
        let base = Base::new(dir, changed, found.base, found.needs_checkpoint);
        let index = Arc::new(Index::new(
            shape,
            db,
            data,
            buckets,
            quarantine,
            meta,
            marks,
            base,
            found.trees,
            found.epoch,
            Clock::new(found.clock, options.max_clock_drift),
        )?);
        let hasher = Hasher::spawn(
            Arc::clone(&index),
            options.channel_capacity,
            options.checkpoint_interval,
        )?;
        if found.needs_checkpoint {
            // Persist the recovered index in the background; until that checkpoint lands
            // the marks stay, so a crash meanwhile repeats this recovery, nothing worse.
            let request = Request::Checkpoint(found.full, crossbeam_channel::bounded(1).0);
            hasher.send(Msg::Request(request))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
            hasher,
            flushes: GroupCommit::default(),
            foreground: AtomicU64::new(0),
            report: OpenReport {
                recovery: found.recovery,
                duration: started.elapsed(),
            },
            closed: false,
        })
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

    /// Partitions that have a tree (ever written since the last rebuild).
    pub fn partitions(&self) -> Vec<u32> {
        self.index.trees().keys().copied().collect()
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
        let trees = self.index.trees();
        let tree = trees.get(&partition);
        nodes
            .iter()
            .map(|&n| {
                if n >= shape.nodes_at(level) {
                    return Err(Error::InvalidArgument(format!(
                        "node {n} is past the {} nodes of level {level}",
                        shape.nodes_at(level)
                    )));
                }
                Ok(tree.map(|t| t.node(level, n)).unwrap_or_default())
            })
            .collect()
    }

    /// Hashes of the `width` children of `node` at `level`.
    pub fn children(&self, partition: u32, level: u32, node: u64) -> Result<Vec<Hash>> {
        let width = u64::from(self.index.shape.width);
        if level >= self.index.shape.levels {
            return Err(Error::InvalidArgument(format!(
                "level {level} has no children (segments are level {})",
                self.index.shape.levels
            )));
        }
        let first = node.saturating_mul(width);
        let ids: Vec<u64> = (first..first.saturating_add(width)).collect();
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

    /// Heap bytes held by the in-memory trees.
    pub fn index_memory_bytes(&self) -> usize {
        self.index.trees().values().map(|t| t.memory_bytes()).sum()
    }

    /// Bytes the sled database occupies on disk.
    pub fn disk_bytes(&self) -> Result<u64> {
        Ok(self.index.db.size_on_disk()?)
    }

    /// Recomputes every segment from the data and checks every value's hash, the
    /// persisted buckets' checksums and the index; reports what is wrong.
    pub fn verify(&self, progress: &mut dyn FnMut(Progress)) -> Result<VerifyReport> {
        verify(&self.index, &|| self.hasher.barrier(), progress)
    }

    /// Moves every record `report` found bad (a value that fails its hash, a header that
    /// does not decode, a key in the wrong segment or too short to place) out of the
    /// data into the store's quarantine, keeping the index in step. The key then reads
    /// as absent, so the next sync with a good replica restores it; the bad bytes stay
    /// in the quarantine for inspection. A record rewritten since `report` was made is
    /// left alone. Returns how many records were moved.
    pub fn quarantine(&self, report: &VerifyReport) -> Result<u64> {
        let index = &*self.index;
        let mut moved = 0;
        for problem in &report.problems {
            let still_bad: fn(&[u8]) -> bool = match problem.kind {
                ProblemKind::ValueHash { .. } => |b| {
                    matches!(
                        Record::decode(b, String::new),
                        Err(Corruption::ValueHash { .. })
                    )
                },
                ProblemKind::BadRecord(_) => |b| RecordHeader::decode(b, String::new).is_err(),
                ProblemKind::Misplaced { .. } | ProblemKind::BadDataKey => |_| true,
                _ => continue,
            };
            let (Some(key), placed) = (&problem.key, problem.partition.zip(problem.segment)) else {
                continue;
            };
            let raw = match placed {
                Some((p, s)) if problem.kind != ProblemKind::BadDataKey => data_key(p, s, key),
                _ => key.clone(),
            };
            let pass = index.gate.enter();
            if let Some((p, s)) = placed {
                index.marks.mark(pass.epoch, p, s)?;
            }
            let Some(current) = index.data.get(&raw)? else {
                continue;
            };
            if !still_bad(&current) {
                continue;
            }
            self.index.quarantine.insert(&raw, current.clone())?;
            if index
                .data
                .compare_and_swap(&raw, Some(current.clone()), None::<&[u8]>)?
                .is_err()
            {
                self.index.quarantine.remove(&raw)?;
                continue; // rewritten meanwhile: no longer this record
            }
            if let (Some((p, s)), Ok(h)) = (placed, RecordHeader::decode(&current, String::new)) {
                self.hasher.send(Msg::Update {
                    partition: p,
                    segment: s,
                    delta: h.entry_hash(p, key),
                })?;
            }
            drop(pass);
            moved += 1;
        }
        Ok(moved)
    }

    /// Records held in the quarantine (see [`Store::quarantine`]).
    pub fn quarantined(&self) -> usize {
        self.index.quarantine.len()
    }

    /// Recomputes the whole index from the data and persists it. Writes wait meanwhile.
    pub fn rebuild(&self, progress: &mut dyn FnMut(Progress)) -> Result<RebuildReport> {
        let _paused = self.index.gate.pause();
        self.hasher.barrier()?;
        let scan = scan_all(&self.index.data, self.index.shape, false, progress)?;
        self.index.clock.observe_stored(scan.max_version);
        let partitions = scan.trees.len();
        let checkpoint = self.hasher.replace(scan.trees)?;
        Ok(RebuildReport {
            keys: scan.keys,
            partitions,
            undecodable: scan.problems.len(),
            checkpoint,
        })
    }

    /// Removes a partition for good: its data, index, marks and quarantined records,
    /// durably (a node gives a partition away when the ring changes). Writes to any
    /// partition wait meanwhile; a crash part-way finishes the drop at the next open.
    /// Returns how many records the partition held.
    pub fn drop_partition(&self, partition: u32) -> Result<u64> {
        let _paused = self.index.gate.pause();
        // On the hasher thread, so no checkpoint can persist the partition meanwhile.
        let records = self.hasher.drop_partition(partition)?;
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
        // The final checkpoint writes the snapshot, as a new base (the hasher asks for it).
        let info = self.hasher.shutdown()?;
        self.index.meta.set_state(true, info.epoch)?;
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
            self.hasher.send(Msg::Update {
                partition,
                segment: segment % self.index.shape.segments as u32,
                delta,
            })?;
        }
        self.hasher.barrier()
    }

    /// Stops without checkpoint or snapshot, as if the process had died (tests; cargo
    /// feature `test-hooks` only).
    #[cfg(feature = "test-hooks")]
    pub fn simulate_crash(mut self) {
        self.closed = true;
        self.hasher.abandon();
    }

    /// Writes a record under `key`.
    pub(crate) fn write(
        &self,
        partition: u32,
        key: &[u8],
        header: RecordHeader,
        value: &[u8],
    ) -> Result<()> {
        self.foreground.fetch_add(1, Relaxed);
        let index = &*self.index;
        let segment = segment_of(key, index.shape.segments);
        let encoded = header.encode(value);
        let new = header.entry_hash(partition, key);
        let pass = index.gate.enter();
        index.marks.mark(pass.epoch, partition, segment)?;
        let old = index
            .data
            .insert(data_key(partition, segment, key), encoded)?;
        // An undecodable old record contributed nothing, as in a full scan.
        let old = old
            .and_then(|b| RecordHeader::decode(&b, String::new).ok())
            .map_or(Hash::ZERO, |h| h.entry_hash(partition, key));
        self.hasher.send(Msg::Update {
            partition,
            segment,
            delta: old ^ new,
        })?;
        drop(pass);
        Ok(())
    }

    /// Writes `repair.record` only if the key's entry hash is still `repair.expected`.
    /// A repair whose value fails its hash, or whose version is further ahead than
    /// `max_clock_drift`, is refused; one that is written moves the clock past it.
    pub(crate) fn write_if(&self, partition: u32, repair: &Repair) -> Result<RepairOutcome> {
        let record = &repair.record;
        let tombstone_ok = !record.tombstone || record.value.is_empty();
        if record.value_hash != crate::hash::value_hash(&record.value) || !tombstone_ok {
            return Ok(RepairOutcome::Refused);
        }
        if self.index.clock.observe(record.version).is_err() {
            return Ok(RepairOutcome::Refused);
        }
        let header = record.header();
        let written = self.swap(
            partition,
            &repair.key,
            repair.expected,
            Some(header.encode(&record.value)),
        )?;
        Ok(if written {
            RepairOutcome::Written
        } else {
            RepairOutcome::Stale
        })
    }

    /// Applies a replication message: writes `record` under `key` unless the stored
    /// record wins over it by [`newest_wins`](crate::newest_wins) (so messages may arrive
    /// late, twice or out of order). Refused like a repair if the value fails its hash or
    /// the version is past `max_clock_drift`. True if written.
    pub fn replicate(&self, partition: u32, key: &[u8], record: &Record) -> Result<bool> {
        self.foreground.fetch_add(1, Relaxed);
        loop {
            let current = match self.read(partition, key) {
                Ok(found) => found,
                Err(Error::Corrupt(_)) => None, // a good copy replaces a bad one
                Err(e) => return Err(e),
            };
            if let Some(current) = &current {
                let winner = crate::sync::newest_wins(key, Some(current), Some(record));
                if winner == crate::sync::Winner::Local {
                    return Ok(false);
                }
            }
            let expected = self.current_entry(partition, key)?;
            let repair = Repair {
                key: key.to_vec(),
                expected,
                record: record.clone(),
            };
            match self.write_if(partition, &repair)? {
                RepairOutcome::Written => return Ok(true),
                RepairOutcome::Refused => {
                    return Err(Error::InvalidArgument(format!(
                        "replicated record of key {key:02x?} refused: value does not match its hash, or version {} is past max_clock_drift",
                        record.version
                    )))
                }
                RepairOutcome::Stale => continue, // changed meanwhile: look again
            }
        }
    }

    /// The entry hash the index counts for `key` (`None`: absent or undecodable).
    fn current_entry(&self, partition: u32, key: &[u8]) -> Result<Option<Hash>> {
        let segment = segment_of(key, self.index.shape.segments);
        Ok(self
            .index
            .data
            .get(data_key(partition, segment, key))?
            .and_then(|b| RecordHeader::decode(&b, String::new).ok())
            .map(|h| h.entry_hash(partition, key)))
    }

    /// Replaces the record of `key` with `new` (`None` removes it) if the current entry
    /// hash is `expected`; keeps the index in step. False if the key had changed.
    fn swap(
        &self,
        partition: u32,
        key: &[u8],
        expected: Option<Hash>,
        new: Option<Vec<u8>>,
    ) -> Result<bool> {
        let index = &*self.index;
        let segment = segment_of(key, index.shape.segments);
        let data_key = data_key(partition, segment, key);
        // An undecodable record contributes nothing and reads as absent.
        let entry = |bytes: &[u8]| {
            RecordHeader::decode(bytes, String::new)
                .ok()
                .map(|h| h.entry_hash(partition, key))
        };
        let new_hash = new.as_deref().and_then(entry).unwrap_or_default();
        let pass = index.gate.enter();
        index.marks.mark(pass.epoch, partition, segment)?;
        if expected.is_none() {
            // The common repair (the key is missing here): one compare-and-swap from
            // absent, no read first.
            let swapped = index
                .data
                .compare_and_swap(&data_key, None::<&[u8]>, new.clone())?;
            if swapped.is_ok() {
                self.hasher.send(Msg::Update {
                    partition,
                    segment,
                    delta: new_hash,
                })?;
                drop(pass);
                return Ok(true);
            }
        }
        let current = index.data.get(&data_key)?;
        let old = current.as_deref().and_then(entry);
        if old != expected {
            return Ok(false);
        }
        let old_hash = old.unwrap_or_default();
        if index
            .data
            .compare_and_swap(&data_key, current, new)?
            .is_err()
        {
            return Ok(false); // changed between the read and the swap
        }
        self.hasher.send(Msg::Update {
            partition,
            segment,
            delta: old_hash ^ new_hash,
        })?;
        drop(pass);
        Ok(true)
    }

    /// Removes tombstones of `partition` that this store learned of (by a local delete
    /// or a repair) more than `grace` ago by its own wall clock, whatever their
    /// versions. Returns how many.
    ///
    /// A tombstone must outlive the longest time a replica can go without a sync, or the
    /// value it deleted can come back from a replica that missed the delete.
    pub fn purge_tombstones(&self, partition: u32, grace: Duration) -> Result<u64> {
        let grace_ms = u64::try_from(grace.as_millis()).unwrap_or(u64::MAX);
        let now = crate::clock::unix_ms();
        let mut purged = 0;
        for item in self.index.data.scan_prefix(partition.to_be_bytes()) {
            let (k, v) = item?;
            let Some((_, _, key)) = split_data_key(&k) else {
                continue;
            };
            let Ok(h) = RecordHeader::decode(&v, String::new) else {
                continue;
            };
            if h.tombstone && h.deleted_ms.saturating_add(grace_ms) <= now {
                let expected = Some(h.entry_hash(partition, key));
                purged += u64::from(self.swap(partition, key, expected, None)?);
            }
        }
        Ok(purged)
    }

    pub(crate) fn read(&self, partition: u32, key: &[u8]) -> Result<Option<Record>> {
        let segment = segment_of(key, self.index.shape.segments);
        let Some(bytes) = self.index.data.get(data_key(partition, segment, key))? else {
            return Ok(None);
        };
        Ok(Some(Record::decode(&bytes, || {
            format!("partition {partition} segment {segment}")
        })?))
    }

    pub(crate) fn next_version(&self) -> Result<u64> {
        self.index.clock.next()
    }

    pub(crate) fn observe_version(&self, version: u64) -> Result<()> {
        self.index.clock.observe(version)
    }
}

/// Opens sled, waiting up to a second for its lock: sled's I/O threads release the
/// database file a moment after the previous handle is dropped, so a close followed at
/// once by an open (in this process) would otherwise fail. A store held by a live process
/// still fails, after that second.
fn open_sled(dir: &Path, options: &Options) -> Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let opened = sled::Config::new()
            .path(dir.join(SLED_DIR))
            .cache_capacity(options.cache_bytes)
            .open();
        match opened {
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
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

/// Reads and writes of one partition.
#[derive(Clone, Copy)]
pub struct Partition<'a> {
    store: &'a Store,
    id: u32,
}

impl Partition<'_> {
    /// The partition id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Writes `value` under `key` with a store-assigned version, which is returned.
    pub fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        let version = self.store.next_version()?;
        self.store.write(
            self.id,
            key,
            RecordHeader::new(version, false, value),
            value,
        )?;
        Ok(version)
    }

    /// Writes `value` under `key` with the caller's version (the store's clock moves
    /// past it). A version further ahead of the wall clock than
    /// `Options::max_clock_drift` is refused with [`Error::VersionAhead`].
    pub fn put_versioned(&self, key: &[u8], value: &[u8], version: u64) -> Result<()> {
        self.store.observe_version(version)?;
        self.store.write(
            self.id,
            key,
            RecordHeader::new(version, false, value),
            value,
        )
    }

    /// Writes a tombstone for `key`; returns its version.
    pub fn delete(&self, key: &[u8]) -> Result<u64> {
        let version = self.store.next_version()?;
        self.store
            .write(self.id, key, RecordHeader::new(version, true, b""), b"")?;
        Ok(version)
    }

    /// Writes a tombstone with the caller's version.
    pub fn delete_versioned(&self, key: &[u8], version: u64) -> Result<()> {
        self.store.observe_version(version)?;
        self.store
            .write(self.id, key, RecordHeader::new(version, true, b""), b"")
    }

    /// The live value of `key`; `None` if absent or deleted. A value whose bytes no
    /// longer match their stored hash is a [`Corruption::ValueHash`] error, never bad
    /// bytes.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self
            .store
            .read(self.id, key)?
            .filter(|r| !r.tombstone)
            .map(|r| r.value))
    }

    /// The stored record of `key`, tombstones included.
    pub fn get_record(&self, key: &[u8]) -> Result<Option<Record>> {
        self.store.read(self.id, key)
    }

    /// The partition's root hash.
    pub fn root(&self) -> Hash {
        self.store.root(self.id)
    }
}
