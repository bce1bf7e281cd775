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

mod exchange;
mod metrics;
mod options;
mod partitions;
mod scrub;
mod status;
mod throttle;

pub use options::{ManagerOptions, BUSY_WRITES_PER_SEC};
pub use status::{PartitionStatus, PeerStatus, Running, ScrubStatus, Status};

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::{unix_ms, unix_ms_not_behind};
use crate::error::{Error, Result};
use crate::exchange::Replica;
use crate::store::Store;
use exchange::exchange;
use throttle::Throttle;

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
    /// When its last exchange succeeded (since it was added).
    last_success: Option<Instant>,
    /// When its last exchange succeeded by the wall clock, as the store records it (so
    /// it is known from before this manager started; forgotten when the peer is
    /// removed, see [`Manager::remove_peer`]).
    last_exchange_unix_ms: Option<u64>,
    /// Away longer than `tombstone_grace`: no exchange until it is added again.
    held: bool,
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
    scrub: ScrubStatus,
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
    scrubber: Option<JoinHandle<()>>,
}

/// Refuses a store whose last exchange is older than the tombstone grace (unless
/// accepted): its replicas may have purged tombstones of keys it still holds.
fn check_not_stale(store: &Store, options: &ManagerOptions) -> Result<()> {
    let (Some(grace), false) = (options.tombstone_grace, options.accept_stale) else {
        return Ok(());
    };
    let Some(last) = store.last_exchange_unix_ms() else {
        return Ok(());
    };
    let away = Duration::from_millis(unix_ms_not_behind().saturating_sub(last));
    if away > grace {
        return Err(Error::StaleReplica {
            away_secs: away.as_secs(),
            grace_secs: grace.as_secs(),
        });
    }
    Ok(())
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
}

impl Manager {
    /// Starts the manager for `store` (no peers yet); fails on options out of range (see
    /// [`ManagerOptions`]) or if its thread cannot start.
    pub fn start(store: Arc<Store>, options: ManagerOptions) -> Result<Manager> {
        options.validate()?;
        check_not_stale(&store, &options)?;
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
                scrub: ScrubStatus::default(),
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
        let mut manager = Manager {
            inner,
            scheduler: Some(scheduler),
            scrubber: None,
        };
        manager.scrubber = scrub::start(&manager.inner)?;
        Ok(manager)
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
                let last_exchange_unix_ms = self.inner.store.peer_last_exchange_unix_ms(name);
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
                        last_success: None,
                        last_exchange_unix_ms,
                        held: false,
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

    /// Forgets a peer (an exchange running with it finishes first), and the store's
    /// record of its last exchange: added again, it starts afresh, so this is how a
    /// peer held past the tombstone grace ([`PeerStatus::held`]) is accepted.
    pub fn remove_peer(&self, name: &str) {
        let mut state = lock(&self.inner);
        state.peers.remove(name);
        // Under the lock, so a `set_peer` that follows reads the record gone.
        let _ = self.inner.store.set_peer_last_exchange(name, None);
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
                    held: p.held,
                    last_exchange_unix_ms: p.last_exchange_unix_ms,
                    next_in: p.due.saturating_duration_since(now),
                })
                .collect(),
            exchanges: state.exchanges,
            max_repair_keys_per_sec: state.options.max_repair_keys_per_sec,
            max_repair_bytes_per_sec: state.options.max_repair_bytes_per_sec,
            foreground_writes_per_sec: state.throttle.foreground_rate(),
            repair_keys_per_sec_now: state.throttle.key_rate_now(&state.options),
            store_checkpoint_error: self.inner.store.checkpoint_error(),
            wall_clock_moved_ms: crate::clock::wall_clock_moved_ms(),
            scrub: state.scrub.clone(),
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
        for thread in [self.scheduler.take(), self.scrubber.take()]
            .into_iter()
            .flatten()
        {
            let _ = thread.join();
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
