//! One exchange with one peer: a sync of each partition it covers whose roots differ,
//! throttled by the shared token bucket, and what it leaves in the peer's status.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::clock::{unix_ms, unix_ms_not_ahead, unix_ms_not_behind};
use crate::error::{Error, Result};
use crate::exchange::diff::partitions_to_walk;
use crate::exchange::Replica;
use crate::sync::{sync, SyncOptions, SyncReport};

use super::partitions::{claim, discover, release, Claim};
use super::throttle::{Take, SAMPLE};
use super::{lock, Inner, PartitionStatus, Peer, Running, State};

/// One exchange with one peer; the peer backs off if it could not be reached.
pub(super) fn exchange(inner: &Inner, name: &str, peer: &dyn Peer, partitions: Option<&[u32]>) {
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
    hold_if_long_gone(inner, name, remote.as_ref(), partitions)?;
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

/// Fails the exchange if the peer, reachable again, was out of reach for longer than
/// the tombstone grace since its last success (and holds it so from then on): this
/// node may have purged tombstones of keys the peer still holds, and an exchange would
/// bring them back here. Cassandra asks the same of a node down longer than its
/// gc_grace: wipe it and let it bootstrap. A peer that holds nothing of the partitions
/// it shares with this node (wiped, or a new node at its address) cannot bring anything
/// back: it is accepted, as if added again.
fn hold_if_long_gone(
    inner: &Inner,
    name: &str,
    remote: &dyn Replica,
    partitions: Option<&[u32]>,
) -> Result<()> {
    let Some(why) = long_gone(inner, name) else {
        return Ok(());
    };
    let empty = match partitions {
        Some(listed) => remote.roots(listed)?.iter().all(|root| root.is_zero()),
        None => remote.partitions()?.is_empty(),
    };
    let mut state = lock(inner);
    if let Some(p) = state.peers.get_mut(name) {
        p.held = !empty;
        if empty {
            p.last_success = None;
            p.last_exchange_unix_ms = None;
            let _ = inner.store.set_peer_last_exchange(name, None);
        }
    }
    if empty {
        return Ok(());
    }
    Err(Error::InvalidArgument(why))
}

/// Why the peer is to be held, if it is: held already, or away longer than the grace.
fn long_gone(inner: &Inner, name: &str) -> Option<String> {
    let state = lock(inner);
    let grace = state.options.tombstone_grace?;
    let p = state.peers.get(name)?;
    if p.held {
        return Some(
            "held: out of reach for longer than tombstone_grace; wipe its store, or remove and add the peer again to accept it".into(),
        );
    }
    let away = match p.last_success {
        Some(at) => (p.failures > 0).then(|| at.elapsed()),
        // Not exchanged with since this manager started (or the peer was added): away
        // since the store's record of its last exchange, unless this node was started
        // knowing it is stale itself (then every peer is newer than it).
        None => p
            .last_exchange_unix_ms
            .filter(|_| !state.options.accept_stale)
            .map(|ms| Duration::from_millis(unix_ms_not_behind().saturating_sub(ms))),
    }?;
    (away > grace).then(|| {
        format!(
            "held: out of reach for {} s since its last exchange, longer than tombstone_grace ({} s); \
             it may hold keys deleted and purged here since. Wipe its store, or remove and add the peer again to accept it",
            away.as_secs(),
            grace.as_secs()
        )
    })
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
            entry.expired = report.expired;
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
            p.last_success = Some(Instant::now());
            // For the next start: how long this store, and this peer, go without an
            // exchange.
            let now = unix_ms_not_ahead();
            p.last_exchange_unix_ms = Some(now);
            let _ = inner.store.set_last_exchange(now);
            let _ = inner.store.set_peer_last_exchange(name, Some(now));
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
    let tombstone_grace = lock(inner).options.tombstone_grace;
    let options = SyncOptions {
        batch: batch as usize,
        throttle: Some(&throttle),
        progress: Some(&progress),
        tombstone_grace,
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
