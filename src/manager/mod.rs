//! The anti-entropy manager: runs exchanges with every peer on a schedule, throttled,
//! and keeps their status.
//!
//! One scheduler thread wakes when an exchange is due (every `interval`, with jitter so
//! peers do not synchronize, and sooner on [`Manager::exchange_now`]) and starts it on a
//! worker thread, with at most one exchange per peer at a time and at most
//! `max_concurrent` in all. An exchange syncs every partition the peer shares with this
//! node (one round trip finds those whose roots differ; only they are walked). A peer
//! that cannot be reached backs off exponentially (to `backoff_max`) before the next
//! attempt; a partition that fails is recorded and the exchange goes on with the next.
//! Repairs pass through a shared token bucket (keys/s and bytes/s, changeable while
//! running): an exchange that reaches the cap waits and continues, it never fails for
//! it. While the store takes foreground writes, repairs also yield to them: at most
//! `repair_share` of the foreground rate (so a large repair cannot crowd out the
//! writes it competes with for the cores), the caps alone otherwise. Peers and their
//! partitions may change at any time (ring changes).

mod metrics;
mod options;
mod status;
mod throttle;

pub use options::{ManagerOptions, BUSY_WRITES_PER_SEC};
pub use status::{PartitionStatus, PeerStatus, Running, Status};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::unix_ms;
use crate::error::{Error, Result};
use crate::exchange::diff::partitions_to_walk;
use crate::exchange::Replica;
use crate::store::Store;
use crate::sync::{sync, SyncOptions, SyncReport};
use throttle::{Take, Throttle, SAMPLE};

/// Something the manager can exchange with: it opens a fresh [`Replica`] per exchange (a
/// network connection, or a local store).
pub trait Peer: Send + Sync {
    /// Opens the replica for one exchange.
    fn open(&self) -> Result<Box<dyn Replica + Send + '_>>;
}

/// A store in this process as a peer (tests, and nodes that hold several stores).
impl Peer for Arc<Store> {
    fn open(&self) -> Result<Box<dyn Replica + Send + '_>> {
        Ok(Box::new(&**self))
    }
}

struct PeerState {
    peer: Arc<dyn Peer>,
    /// The partitions it shares with this node; `None`: every partition either side
    /// holds (discovery).
    partitions: Option<BTreeSet<u32>>,
    status: BTreeMap<u32, PartitionStatus>,
    running: Option<Running>,
    failures: u32,
    last_error: Option<String>,
    left_out: u64,
    due: Instant,
}

struct State {
    peers: BTreeMap<String, PeerState>,
    running: usize,
    exchanges: u64,
    stopping: bool,
    options: ManagerOptions,
    /// The repair token bucket and the foreground rate it yields to.
    throttle: Throttle,
    /// Draws for the jitter (a small xorshift; no need for a random crate).
    seed: u64,
    /// Partitions that running exchanges may create here (see [`discover`]).
    adopting: usize,
    /// Partitions being dropped now: no exchange starts on them.
    dropping: BTreeSet<u32>,
    /// Partitions exchanges are repairing now, with how many exchanges.
    syncing: BTreeMap<u32, usize>,
    /// Partitions given away by [`Manager::drop_partition`]: discovery does not take them
    /// on again while this node holds nothing of them.
    given_away: BTreeSet<u32>,
}

struct Inner {
    store: Arc<Store>,
    state: Mutex<State>,
    wake: Condvar,
}

/// Runs exchanges with peers on a schedule until [`Manager::stop`] (or drop).
pub struct Manager {
    inner: Arc<Inner>,
    scheduler: Option<JoinHandle<()>>,
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Manager {
    /// Starts the manager for `store` (no peers yet); fails on options out of range (see
    /// [`ManagerOptions`]) or if its thread cannot start.
    pub fn start(store: Arc<Store>, options: ManagerOptions) -> Result<Manager> {
        options.validate()?;
        let inner = Arc::new(Inner {
            store,
            state: Mutex::new(State {
                peers: BTreeMap::new(),
                running: 0,
                exchanges: 0,
                stopping: false,
                options,
                throttle: Throttle::new(Instant::now()),
                seed: unix_ms() | 1,
                adopting: 0,
                dropping: BTreeSet::new(),
                syncing: BTreeMap::new(),
                given_away: BTreeSet::new(),
            }),
            wake: Condvar::new(),
        });
        let scheduler = {
            let inner = Arc::clone(&inner);
            std::thread::Builder::new()
                .name("anti-entropy manager".into())
                .spawn(move || schedule(&inner))
                .map_err(|e| Error::io("spawn anti-entropy manager thread", e))?
        };
        Ok(Manager {
            inner,
            scheduler: Some(scheduler),
        })
    }

    /// Adds a peer, or changes its partitions (its next exchange stays scheduled). A new
    /// peer's first exchange is due at once. An empty set means every partition either
    /// side holds at the time of each exchange.
    pub fn set_peer(&self, name: &str, peer: Arc<dyn Peer>, partitions: BTreeSet<u32>) {
        let mut state = lock(&self.inner);
        let partitions = (!partitions.is_empty()).then_some(partitions);
        if let Some(list) = &partitions {
            state.given_away.retain(|p| !list.contains(p));
        }
        match state.peers.get_mut(name) {
            Some(p) => {
                p.peer = peer;
                if let Some(list) = &partitions {
                    p.status.retain(|id, _| list.contains(id));
                }
                p.partitions = partitions;
            }
            None => {
                state.peers.insert(
                    name.to_string(),
                    PeerState {
                        peer,
                        partitions,
                        status: BTreeMap::new(),
                        running: None,
                        failures: 0,
                        last_error: None,
                        left_out: 0,
                        due: Instant::now(),
                    },
                );
            }
        }
        self.inner.wake.notify_all();
    }

    /// Gives `partition` away (a node does when the ring changes): takes it off every
    /// peer's list, keeps discovery from taking it on again while this node holds
    /// nothing of it, waits for an exchange repairing it now to finish with it, then
    /// drops it from the store ([`Store::drop_partition`]). Without this, an exchange
    /// running at the time of a drop would write part of the partition back. A peer
    /// whose list held only this partition keeps an empty list (it is not turned into a
    /// discovering peer). Naming the partition in a list again takes it back.
    pub fn drop_partition(&self, partition: u32) -> Result<u64> {
        let mut state = lock(&self.inner);
        state.dropping.insert(partition);
        state.given_away.insert(partition);
        for p in state.peers.values_mut() {
            if let Some(list) = &mut p.partitions {
                list.remove(&partition);
            }
            p.status.remove(&partition);
        }
        while state.syncing.contains_key(&partition) {
            state = self
                .inner
                .wake
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
        drop(state);
        let dropped = self.inner.store.drop_partition(partition);
        lock(&self.inner).dropping.remove(&partition);
        dropped
    }

    /// Forgets a peer (an exchange running with it finishes first).
    pub fn remove_peer(&self, name: &str) {
        lock(&self.inner).peers.remove(name);
    }

    /// Makes the next exchange with `peer` (every peer, with `None`) due now.
    pub fn exchange_now(&self, peer: Option<&str>) {
        let mut state = lock(&self.inner);
        let now = Instant::now();
        for (name, p) in state.peers.iter_mut() {
            if peer.map_or(true, |n| n == name) {
                p.due = now;
            }
        }
        self.inner.wake.notify_all();
    }

    /// Changes the repair limits while running (`None`: unlimited).
    pub fn set_throttle(&self, keys_per_sec: Option<u64>, bytes_per_sec: Option<u64>) {
        let mut state = lock(&self.inner);
        state.options.max_repair_keys_per_sec = keys_per_sec;
        state.options.max_repair_bytes_per_sec = bytes_per_sec;
        self.inner.wake.notify_all();
    }

    /// The manager's state now.
    pub fn status(&self) -> Status {
        let mut state = lock(&self.inner);
        let now = Instant::now();
        // Between repairs nothing else samples the foreground: a status read does, so
        // its rate is the average since the previous sample, never a stale figure.
        if state.throttle.sample_due(now) {
            let seen = self.inner.store.foreground_writes();
            state.throttle.sample(now, seen);
        }
        Status {
            peers: state
                .peers
                .iter()
                .map(|(name, p)| PeerStatus {
                    name: name.clone(),
                    partitions: match &p.partitions {
                        Some(list) => list.iter().copied().collect(),
                        // Discovering: the partitions exchanged so far.
                        None => p.status.keys().copied().collect::<Vec<_>>(),
                    }
                    .into_iter()
                    .map(|id| {
                        p.status.get(&id).cloned().unwrap_or(PartitionStatus {
                            partition: id,
                            ..PartitionStatus::default()
                        })
                    })
                    .collect(),
                    running: p.running.clone(),
                    failures: p.failures,
                    last_error: p.last_error.clone(),
                    left_out: p.left_out,
                    next_in: p.due.saturating_duration_since(now),
                })
                .collect(),
            exchanges: state.exchanges,
            max_repair_keys_per_sec: state.options.max_repair_keys_per_sec,
            max_repair_bytes_per_sec: state.options.max_repair_bytes_per_sec,
            foreground_writes_per_sec: state.throttle.foreground_rate(),
            repair_keys_per_sec_now: state.throttle.key_rate_now(&state.options),
            store_checkpoint_error: self.inner.store.checkpoint_error(),
        }
    }

    /// Stops scheduling, waits for running exchanges to finish, and returns.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        {
            let mut state = lock(&self.inner);
            state.stopping = true;
            self.inner.wake.notify_all();
        }
        if let Some(scheduler) = self.scheduler.take() {
            let _ = scheduler.join();
        }
        let mut state = lock(&self.inner);
        while state.running > 0 {
            state = self
                .inner
                .wake
                .wait(state)
                .unwrap_or_else(|p| p.into_inner());
        }
    }
}

impl Drop for Manager {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The scheduler loop: start what is due, sleep until the next due time or a wake-up.
fn schedule(inner: &Arc<Inner>) {
    let mut state = lock(inner);
    loop {
        if state.stopping {
            return;
        }
        let now = Instant::now();
        let due: Vec<String> = state
            .peers
            .iter()
            .filter(|(_, p)| p.running.is_none() && p.due <= now)
            .map(|(name, _)| name.clone())
            .collect();
        for name in due {
            if state.running >= state.options.max_concurrent.max(1) {
                break;
            }
            let Some(p) = state.peers.get_mut(&name) else {
                continue;
            };
            let partitions: Option<Vec<u32>> =
                p.partitions.as_ref().map(|l| l.iter().copied().collect());
            let listed = partitions.as_deref().unwrap_or_default();
            p.running = Some(Running {
                partition: listed.first().copied().unwrap_or(0),
                partitions_left: listed.len().saturating_sub(1),
                ..Running::default()
            });
            let peer = Arc::clone(&p.peer);
            state.running += 1;
            let worker = Arc::clone(inner);
            let spawned = std::thread::Builder::new()
                .name(format!("exchange {name}"))
                .spawn({
                    let name = name.clone();
                    move || exchange(&worker, &name, peer.as_ref(), partitions.as_deref())
                });
            if spawned.is_err() {
                state.running -= 1;
                if let Some(p) = state.peers.get_mut(&name) {
                    p.running = None;
                }
            }
        }
        let next = state
            .peers
            .values()
            .filter(|p| p.running.is_none())
            .map(|p| p.due)
            .min();
        // At the concurrency cap, a finishing exchange wakes this thread.
        let full = state.running >= state.options.max_concurrent.max(1);
        let wait = match next {
            Some(d) if !full => d
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1)),
            _ => Duration::from_secs(3600),
        };
        state = inner
            .wake
            .wait_timeout(state, wait)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// One exchange with one peer; the peer backs off if it could not be reached.
fn exchange(inner: &Inner, name: &str, peer: &dyn Peer, partitions: Option<&[u32]>) {
    let unreachable = sync_partitions(inner, name, peer, partitions)
        .err()
        .map(|e| e.to_string());
    finish(inner, name, unreachable);
}

/// Syncs every partition shared with `peer` (`None`: discovered) whose roots differ. A
/// partition that fails is recorded in its status and the exchange goes on with the next
/// one, over a new connection (the failure may have broken the old one): one partition
/// that cannot be exchanged does not keep the others from it. An error here means the
/// peer could not be reached (no connection, or its partitions or roots could not be
/// read).
fn sync_partitions(
    inner: &Inner,
    name: &str,
    peer: &dyn Peer,
    partitions: Option<&[u32]>,
) -> Result<()> {
    let mut remote = peer.open()?;
    let discovered;
    let _adopting;
    let partitions = match partitions {
        Some(listed) => listed,
        None => {
            (discovered, _adopting) = discover(inner, name, remote.as_ref())?;
            &discovered[..]
        }
    };
    // One round trip finds the partitions that differ; the rest agree already.
    let differing: BTreeSet<u32> = partitions_to_walk(&*inner.store, remote.as_ref(), partitions)?
        .into_iter()
        .collect();
    for (i, &partition) in partitions.iter().enumerate() {
        let differs = differing.contains(&partition);
        match claim(inner, name, partition, differs) {
            Claim::Stop => break,
            Claim::Skip => continue,
            Claim::Go => {}
        }
        let started = Instant::now();
        let result = if differs {
            let left = partitions.len() - i - 1;
            let result = sync_one(inner, name, remote.as_ref(), partition, left);
            release(inner, partition);
            result
        } else {
            Ok(SyncReport::default())
        };
        let failed = result.is_err();
        if !record(inner, name, partition, started, result) {
            break; // the peer was removed meanwhile
        }
        if failed {
            remote = peer.open()?;
        }
    }
    Ok(())
}

enum Claim {
    Go,
    Skip,
    Stop,
}

/// Whether an exchange goes on to `partition`, decided under the lock that
/// [`Manager::drop_partition`] takes: not while the manager stops or the peer is gone,
/// nor for a partition being dropped, taken off the peer's list since the exchange
/// began, or given away (unless this node holds it again). One to be repaired is marked
/// as such until [`record`], so a drop waits for it.
fn claim(inner: &Inner, name: &str, partition: u32, repairs: bool) -> Claim {
    let mut state = lock(inner);
    if state.stopping {
        return Claim::Stop;
    }
    let given_away = state.given_away.contains(&partition);
    let dropping = state.dropping.contains(&partition);
    let Some(p) = state.peers.get_mut(name) else {
        return Claim::Stop;
    };
    let off_list = match &p.partitions {
        Some(list) => !list.contains(&partition),
        None => given_away && inner.store.root(partition).is_zero(),
    };
    if dropping || off_list {
        return Claim::Skip;
    }
    if repairs {
        *state.syncing.entry(partition).or_default() += 1;
    }
    Claim::Go
}

/// Ends what [`claim`] marked: the exchange has finished repairing `partition`.
fn release(inner: &Inner, partition: u32) {
    let mut state = lock(inner);
    if let Some(n) = state.syncing.get_mut(&partition) {
        *n -= 1;
        if *n == 0 {
            state.syncing.remove(&partition);
            // A drop waiting for this partition may go on.
            inner.wake.notify_all();
        }
    }
}

/// The partitions to exchange with a peer given no list: every one this node holds, and
/// those only the peer holds while there is room for them under `max_partitions`
/// (lowest first). The room is reserved until the returned guard drops, so exchanges
/// running at once cannot together take on more; the peer's status counts the rest.
fn discover<'a>(
    inner: &'a Inner,
    name: &str,
    remote: &dyn Replica,
) -> Result<(Vec<u32>, Adopting<'a>)> {
    let theirs: BTreeSet<u32> = remote.partitions()?.into_iter().collect();
    // A partition written here but not yet hashed has no tree yet: count it.
    inner.store.sync_index()?;
    let mut state = lock(inner);
    // Read under the lock: an exchange that releases its room has made its partitions
    // visible first (see `Adopting::drop`).
    let mut all: BTreeSet<u32> = inner.store.partitions().into_iter().collect();
    let room = state
        .options
        .max_partitions
        .saturating_sub(all.len() + state.adopting);
    let new: Vec<u32> = theirs
        .difference(&all)
        .filter(|p| !state.given_away.contains(p))
        .copied()
        .collect();
    let adopt = new.len().min(room);
    state.adopting += adopt;
    all.extend(&new[..adopt]);
    if let Some(p) = state.peers.get_mut(name) {
        p.left_out = (new.len() - adopt) as u64;
    }
    let partitions = all.into_iter().collect();
    Ok((
        partitions,
        Adopting {
            inner,
            count: adopt,
        },
    ))
}

/// Room reserved for partitions an exchange may create here.
struct Adopting<'a> {
    inner: &'a Inner,
    count: usize,
}

impl Drop for Adopting<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            // The partitions it created count among the store's own from now on.
            let _ = self.inner.store.sync_index();
            lock(self.inner).adopting -= self.count;
        }
    }
}

/// Records one partition's sync in its peer's status; false if the peer is gone.
fn record(
    inner: &Inner,
    name: &str,
    partition: u32,
    started: Instant,
    result: Result<SyncReport>,
) -> bool {
    let mut state = lock(inner);
    let Some(p) = state.peers.get_mut(name) else {
        return false;
    };
    let entry = p
        .status
        .entry(partition)
        .or_insert_with(|| PartitionStatus {
            partition,
            ..PartitionStatus::default()
        });
    match result {
        Ok(report) => {
            entry.last_success_unix_ms = Some(unix_ms());
            entry.last_duration = Some(started.elapsed());
            entry.differences = report.differences;
            entry.repaired_local = report.repaired_local;
            entry.repaired_remote = report.repaired_remote;
            entry.refused = report.refused_local.saturating_add(report.refused_remote);
            entry.skipped = report.skipped;
            entry.corrupt = report.corrupt_local.saturating_add(report.corrupt_remote);
            entry.bytes = report.diff.payload_bytes + report.repaired_bytes;
            entry.total_repaired_local += report.repaired_local;
            entry.total_repaired_remote += report.repaired_remote;
        }
        Err(e) => {
            entry.errors += 1;
            entry.last_error = Some(e.to_string());
        }
    }
    true
}

/// Ends an exchange: frees its slot and schedules the peer's next one.
fn finish(inner: &Inner, name: &str, failed: Option<String>) {
    let mut state = lock(inner);
    state.running -= 1;
    state.exchanges += 1;
    let options = state.options.clone();
    let jitter = next_jitter(&mut state.seed, options.jitter);
    if let Some(p) = state.peers.get_mut(name) {
        p.running = None;
        if failed.is_some() {
            p.failures = p.failures.saturating_add(1);
            p.last_error = failed;
            let factor = 1u32 << p.failures.min(16).saturating_sub(1);
            p.due = Instant::now()
                + options
                    .backoff
                    .saturating_mul(factor)
                    .min(options.backoff_max);
        } else {
            p.failures = 0;
            p.last_error = None;
            p.due = Instant::now() + options.interval.mul_f64(1.0 + jitter);
        }
    }
    inner.wake.notify_all();
}

fn sync_one(
    inner: &Inner,
    name: &str,
    remote: &dyn Replica,
    partition: u32,
    left: usize,
) -> Result<SyncReport> {
    let throttle = |keys: u64, bytes: u64| take_tokens(inner, keys, bytes, KEEPALIVE);
    let progress = |report: &SyncReport| {
        if let Some(p) = lock(inner).peers.get_mut(name) {
            p.running = Some(Running {
                partition,
                partitions_left: left,
                differences: report.differences,
                repaired_local: report.repaired_local,
                repaired_remote: report.repaired_remote,
            });
        }
    };
    if let Some(p) = lock(inner).peers.get_mut(name) {
        p.running = Some(Running {
            partition,
            partitions_left: left,
            ..Running::default()
        });
    }
    inner.store.sync_index()?;
    // Small batches keep the throttle smooth and the status fresh. Under a cap, a batch
    // waits until it is paid for, and a wait much longer than half a second's worth
    // would outlast a network peer's idle timeout.
    let batch = {
        let state = lock(inner);
        state.throttle.batch(&state.options)
    };
    let options = SyncOptions {
        batch: batch as usize,
        throttle: Some(&throttle),
        progress: Some(&progress),
        ..SyncOptions::default()
    };
    sync(inner.store.as_ref(), remote, partition, &options)
}

/// Longest a batch of repairs waits for its tokens before `sync` sends the remote a
/// cheap request and asks again: the wait comes between two requests of one exchange,
/// and a network peer drops a connection idle for 10 s (its default). So a batch worth
/// more (a large record under a low byte cap) waits until it is paid for in full, and
/// the connection stays open meanwhile.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// Waits until the bucket holds `keys` and `bytes` and takes them (true), or until
/// `patience` has passed (false, nothing taken). True at once while the manager stops.
fn take_tokens(inner: &Inner, keys: u64, bytes: u64, patience: Duration) -> bool {
    let started = Instant::now();
    let mut state = lock(inner);
    loop {
        if state.stopping {
            return true;
        }
        let now = Instant::now();
        let wait = if state.throttle.sample_stale(now) && state.options.repair_share.is_some() {
            // Measure the foreground afresh before repairing.
            let seen = inner.store.foreground_writes();
            state.throttle.restart_window(now, seen);
            SAMPLE
        } else {
            if state.throttle.sample_due(now) {
                let seen = inner.store.foreground_writes();
                state.throttle.sample(now, seen);
            }
            let State {
                throttle, options, ..
            } = &mut *state;
            match throttle.take(now, options, keys, bytes) {
                Take::Passed => return true,
                Take::Wait(wait) => wait,
            }
        };
        let left = patience.saturating_sub(started.elapsed());
        if left.is_zero() {
            return false;
        }
        state = inner
            .wake
            .wait_timeout(state, wait.min(left))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// A draw in `[-jitter, jitter]`.
fn next_jitter(seed: &mut u64, jitter: f64) -> f64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    let unit = (*seed >> 11) as f64 / (1u64 << 53) as f64;
    (unit * 2.0 - 1.0) * jitter.clamp(0.0, 1.0)
}
