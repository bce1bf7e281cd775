//! The hasher thread: applies updates to the in-memory trees and takes checkpoints.
//!
//! It is fed by a bounded channel (a full channel makes writers wait, so memory stays
//! bounded however fast they write) and wakes on a `tick` for periodic checkpoints.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, select, tick, Receiver, Sender, TrySendError};

use crate::error::{Error, Result};
use crate::index::{Index, Trees};
use crate::meta::CheckpointInfo;
use crate::options::Shape;
use crate::tree::Tree;
use crate::Hash;

type Reply<T> = Sender<Result<T>>;

pub(crate) enum Msg {
    /// XOR `delta` (old entry hash ^ new entry hash) into a segment.
    Update {
        partition: u32,
        segment: u32,
        delta: Hash,
    },
    /// Answered once every message sent before it has been applied.
    Barrier(Sender<()>),
    /// Work that needs more than an XOR; served between batches of updates.
    Request(Request),
}

pub(crate) enum Request {
    /// Persist dirty buckets now; with `full`, every bucket, removing stale ones.
    Checkpoint(bool, Reply<CheckpointInfo>),
    /// Take a partition out of the index and record its drop ([`Index::begin_drop`]).
    BeginDrop(u32, Reply<()>),
    /// Swap in partitions' rebuilt trees (`None`: no data), except for partitions
    /// being dropped; the next checkpoint persists them whole.
    Replace(Vec<(u32, Option<Tree>)>, Reply<()>),
    /// A clean close's final checkpoint, answered with the epoch of the snapshot the next
    /// open maps; the thread exits after answering.
    Shutdown(Reply<u64>),
}

/// Handle held by the store.
pub(crate) struct Hasher {
    tx: Sender<Msg>,
    thread: Option<JoinHandle<()>>,
}

const BATCH: usize = 4096;
/// Pause after draining the channel, so updates arrive in batches without the senders
/// waking this thread; a sender that waits for an answer (barrier, request) or finds the
/// channel full cuts it short. Each wake costs this thread about 50 us of CPU beyond its
/// updates (their tree pages gone cold under the writers' sled work): with a 2 ms pause
/// it spent 0.84-0.89 us a put, with 10 ms 0.54-0.59 us (PERFORMANCE.md, 2026-12-02).
/// The in-memory index trails the writes by up to the pause; `sync_index`, checkpoints
/// and every request cut it short.
const IDLE_PAUSE: Duration = Duration::from_millis(10);

impl Hasher {
    pub(crate) fn spawn(index: Arc<Index>, capacity: usize, interval: Duration) -> Result<Hasher> {
        let (tx, rx) = bounded(capacity);
        let thread = std::thread::Builder::new()
            .name("merkle-index hasher".into())
            .spawn(move || {
                Worker {
                    index,
                    rx,
                    dirty: false,
                    updates: Vec::with_capacity(BATCH),
                }
                .run(interval)
            })
            .map_err(|e| Error::io("spawn hasher thread", e))?;
        Ok(Hasher {
            tx,
            thread: Some(thread),
        })
    }

    pub(crate) fn send(&self, msg: Msg) -> Result<()> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(msg)) => {
                // The thread may be pausing: wake it rather than wait out the pause.
                self.unpark();
                self.tx.send(msg).map_err(|_| Error::Closed)
            }
            Err(TrySendError::Disconnected(_)) => Err(Error::Closed),
        }
    }

    /// Cuts the thread's idle pause short.
    fn unpark(&self) {
        if let Some(thread) = &self.thread {
            thread.thread().unpark();
        }
    }

    /// Sends a message that someone waits on, without waiting out the idle pause.
    fn send_awaited(&self, msg: Msg) -> Result<()> {
        self.send(msg)?;
        self.unpark();
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T> {
        let (reply, answer) = bounded(1);
        self.send_awaited(Msg::Request(make(reply)))?;
        answer.recv().map_err(|_| Error::Closed)?
    }

    pub(crate) fn barrier(&self) -> Result<()> {
        let (reply, answer) = bounded(1);
        self.send_awaited(Msg::Barrier(reply))?;
        answer.recv().map_err(|_| Error::Closed)
    }

    pub(crate) fn checkpoint(&self, full: bool) -> Result<CheckpointInfo> {
        self.ask(|reply| Request::Checkpoint(full, reply))
    }

    pub(crate) fn begin_drop(&self, partition: u32) -> Result<()> {
        self.ask(|reply| Request::BeginDrop(partition, reply))
    }

    pub(crate) fn replace(&self, trees: Vec<(u32, Option<Tree>)>) -> Result<()> {
        self.ask(|reply| Request::Replace(trees, reply))
    }

    /// Final checkpoint, then joins the thread; returns the epoch of the snapshot the
    /// next open maps.
    pub(crate) fn shutdown(&mut self) -> Result<u64> {
        let result = self.ask(Request::Shutdown);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        result
    }

    /// Stops the thread without a checkpoint, as a crash would (tests only).
    #[cfg(feature = "test-hooks")]
    pub(crate) fn abandon(&mut self) {
        let (tx, _) = bounded(1);
        drop(std::mem::replace(&mut self.tx, tx));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

struct Worker {
    index: Arc<Index>,
    rx: Receiver<Msg>,
    /// Anything applied since the last checkpoint.
    dirty: bool,
    /// Updates taken off the channel, not yet applied (kept for its allocation).
    updates: Vec<(u32, u32, Hash)>,
}

/// Obsolete marks deleted at a time while no update waits.
const IDLE_CLEAR: usize = 1024;
/// Obsolete marks deleted at least after each batch of updates (and at least as many as
/// the batch's messages: every mark came with a write).
const BUSY_CLEAR: usize = 64;

/// Updates ahead whose tree nodes are fetched while the current one is applied.
const AHEAD: usize = 4;

/// Applies `updates` in order and empties it. Each update waits on a few cache misses
/// (its segment page, the level above); asking for those of an update a few places
/// ahead lets them overlap.
fn apply_all(trees: &mut Trees, shape: Shape, updates: &mut Vec<(u32, u32, Hash)>) {
    for (i, &(partition, segment, delta)) in updates.iter().enumerate() {
        if let Some(&(ahead, ahead_segment, _)) = updates.get(i + AHEAD) {
            if let Some(tree) = trees.get(&ahead) {
                tree.prefetch(ahead_segment);
            }
        }
        trees
            .entry(partition)
            .or_insert_with(|| Tree::new(shape))
            .apply(segment, delta);
    }
    updates.clear();
}

impl Worker {
    fn run(mut self, interval: Duration) {
        let ticker = tick(interval);
        let mut pending = VecDeque::new();
        loop {
            // Marks a checkpoint made obsolete are deleted while no message waits, and
            // after each batch of updates (below).
            let next = if self.index.marks.retiring() {
                select! {
                    recv(self.rx) -> msg => Some(msg),
                    recv(ticker) -> _ => None,
                    default => {
                        // On an error the marks stay (recovery ignores them).
                        let _ = self.index.marks.clear_retired(IDLE_CLEAR);
                        continue;
                    }
                }
            } else {
                select! {
                    recv(self.rx) -> msg => Some(msg),
                    recv(ticker) -> _ => None,
                }
            };
            match next {
                Some(Ok(msg)) => {
                    let taken = self.apply_batch(msg, &mut pending);
                    if self.index.marks.retiring() {
                        // Writers that never pause for a pause's length leave the
                        // channel never empty: deleting only then let the marks pile up.
                        let _ = self.index.marks.clear_retired(taken.max(BUSY_CLEAR));
                    }
                    if pending.is_empty() && self.rx.is_empty() {
                        // Let updates accumulate: while this thread is parked instead of
                        // blocking in recv, senders need no wake-up system call.
                        std::thread::park_timeout(IDLE_PAUSE);
                    }
                }
                Some(Err(_)) => return, // dropped without close: a simulated crash
                None if self.dirty => {
                    // A failed periodic checkpoint leaves the buckets dirty and the marks
                    // in place; the next one retries.
                    let _ = self.checkpoint(false, &mut pending);
                }
                None => {}
            }
            while let Some(request) = pending.pop_front() {
                if self.serve(request, &mut pending) {
                    return;
                }
            }
        }
    }

    /// Serves a request; true if the thread must exit.
    fn serve(&mut self, request: Request, pending: &mut VecDeque<Request>) -> bool {
        match request {
            Request::Checkpoint(full, reply) => {
                let _ = reply.send(self.checkpoint(full, pending));
                false
            }
            Request::BeginDrop(partition, reply) => {
                let _ = reply.send(self.index.begin_drop(partition));
                false
            }
            Request::Replace(rebuilt, reply) => {
                let mut trees = self.index.trees_mut();
                for (partition, tree) in rebuilt {
                    // Checked here, where drops begin: a drop that began already took
                    // the partition out, and one that begins later takes this tree out.
                    if self.index.dropping.contains(partition) {
                        continue;
                    }
                    match tree {
                        Some(tree) => trees.insert(partition, tree),
                        None => trees.remove(&partition),
                    };
                    self.dirty = true;
                }
                drop(trees);
                let _ = reply.send(Ok(()));
                false
            }
            Request::Shutdown(reply) => {
                let result = self.close(pending).and_then(|epoch| {
                    // A clean close leaves no obsolete marks behind.
                    self.index.marks.clear_all_retired()?;
                    Ok(epoch)
                });
                let _ = reply.send(result);
                true
            }
        }
    }

    /// A clean close's checkpoint; returns the epoch of the snapshot the next open maps.
    fn close(&mut self, pending: &mut VecDeque<Request>) -> Result<u64> {
        // Nothing applied since the last checkpoint, nothing persisted since the base,
        // and the clock where that checkpoint left it: the snapshot on disk is the index
        // as it stands, so it is kept (a session that only read writes no snapshot).
        if !self.dirty {
            let last_clock = self
                .index
                .last_checkpoint
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .map(|c| c.clock);
            if let Some(epoch) = self.index.base.unchanged()? {
                if last_clock == Some(self.index.clock.current()) {
                    return Ok(epoch);
                }
            }
        }
        // The final checkpoint writes the snapshot that the next open maps. Asked for
        // here, after every earlier request: a renewal still queued (after a recovery,
        // say) would otherwise take the request and leave the snapshot an epoch behind
        // the clean close.
        self.index.base.request_renewal();
        Ok(self.checkpoint(false, pending)?.epoch)
    }

    /// Applies `first` and whatever is already queued (up to a batch) under one lock;
    /// returns how many messages it took off the channel.
    fn apply_batch(&mut self, first: Msg, pending: &mut VecDeque<Request>) -> usize {
        let mut trees = self.index.trees_mut();
        let shape = self.index.shape;
        let mut updates = std::mem::take(&mut self.updates);
        let mut applied = 0usize;
        let mut taken = 0usize;
        let mut next = Some(first);
        while let Some(msg) = next.take() {
            taken += 1;
            match msg {
                Msg::Update {
                    partition,
                    segment,
                    delta,
                } => {
                    updates.push((partition, segment, delta));
                    applied += 1;
                }
                Msg::Barrier(reply) => {
                    // Everything sent before the barrier is applied before it is answered.
                    apply_all(&mut trees, shape, &mut updates);
                    let _ = reply.send(());
                }
                Msg::Request(request) => pending.push_back(request),
            }
            if applied >= BATCH || !pending.is_empty() {
                break;
            }
            next = self.rx.try_recv().ok();
        }
        apply_all(&mut trees, shape, &mut updates);
        self.updates = updates;
        drop(trees);
        self.dirty |= applied > 0;
        taken
    }

    /// Advances the epoch, waits until every write of the old epoch has sent its update
    /// (applying updates meanwhile, so writers blocked on a full channel can finish),
    /// then persists. Requests that arrive meanwhile are queued in `pending`.
    fn checkpoint(
        &mut self,
        full: bool,
        pending: &mut VecDeque<Request>,
    ) -> Result<CheckpointInfo> {
        let old = self.index.gate.advance();
        while !self.index.gate.drained(old) {
            if let Ok(msg) = self.rx.recv_timeout(Duration::from_millis(1)) {
                self.apply_batch(msg, pending);
            }
        }
        // Every update of the old epoch is queued by now: apply what is queued.
        let mut queued = self.rx.len();
        while queued > 0 {
            let Ok(msg) = self.rx.try_recv() else { break };
            queued = queued.saturating_sub(self.apply_batch(msg, pending));
        }
        let result = self.index.persist(old, full);
        if result.is_ok() {
            self.dirty = false;
        }
        *self
            .index
            .checkpoint_error
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = result.as_ref().err().map(|e| e.to_string());
        result
    }
}
