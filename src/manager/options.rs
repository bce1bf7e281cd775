//! How the manager schedules and throttles, and the limits its options must keep.

use std::time::Duration;

use crate::error::{Error, Result};

/// How the manager schedules and throttles. [`Manager::start`](super::Manager::start) refuses an interval or a
/// backoff of zero or longer than 365 days, and a jitter outside 0 to 1.
#[derive(Debug, Clone)]
pub struct ManagerOptions {
    /// Time between exchanges with one peer (default 60 s).
    pub interval: Duration,
    /// Random spread added to each interval, as a fraction of it (0 to 1, default 0.1).
    pub jitter: f64,
    /// Exchanges running at once, over all peers (default 2).
    pub max_concurrent: usize,
    /// First wait after a failed exchange; doubles per failure (default 1 s).
    pub backoff: Duration,
    /// Longest wait after failures (default 5 minutes).
    pub backoff_max: Duration,
    /// Repairs per second over all exchanges (default unlimited).
    pub max_repair_keys_per_sec: Option<u64>,
    /// Repair key and value bytes per second over all exchanges (default unlimited). A
    /// batch worth more than a few seconds still waits until paid for in full, keeping a
    /// network peer's connection open meanwhile (see the README).
    pub max_repair_bytes_per_sec: Option<u64>,
    /// While the store takes more than [`BUSY_WRITES_PER_SEC`] foreground writes per
    /// second, repairs run at most at this fraction of that rate (default 0.1; `None`,
    /// zero or NaN: the caps alone; above 1 counts as 1). Measured with
    /// `examples/repair_impact.rs`: see the README.
    pub repair_share: Option<f64>,
    /// Partitions a peer given no partition list may make this node hold (default
    /// 4,096). Such a peer exchanges every partition either side holds, and one that
    /// only the peer holds is created here by its first repair; past this many (counting
    /// those held already and those other exchanges are taking on), the peer's other
    /// partitions are left out and counted in [`PeerStatus::left_out`](super::PeerStatus::left_out).
    pub max_partitions: usize,
    /// Records a second the background scrub checks (default 2,000; `None` or zero:
    /// off). The scrub runs [`Store::scrub`](crate::Store::scrub) over the whole store
    /// again and again: a value that rots does not change the index, so no exchange
    /// would notice it; the scrub quarantines it, and the next exchange restores it from
    /// a good replica. A record costs 0.8 us of one core from sled's cache, 5.5 us cold
    /// (measured on a 1M-key store).
    pub scrub_keys_per_sec: Option<u64>,
    /// Purge tombstones this long after this node learned of them (default `None`:
    /// kept until [`Store::purge_tombstones`](crate::Store::purge_tombstones) is
    /// called). The scrub removes them as it passes them, so this needs the scrub on,
    /// and exchanges then do not copy a tombstone whose version is older than the grace
    /// to a replica without the key (see [`SyncOptions::tombstone_grace`](crate::SyncOptions::tombstone_grace)):
    /// otherwise replicas that purge at different moments would hand it back to each
    /// other forever. A tombstone must outlive the longest time a replica can go without
    /// an exchange, or what it deleted can come back from that replica: so a peer that
    /// was out of reach for longer than the grace is held, not exchanged with, until it
    /// is added again ([`PeerStatus::held`](super::PeerStatus::held)). Must be longer
    /// than `interval`.
    pub tombstone_grace: Option<Duration>,
    /// Start even if the store's last successful exchange
    /// ([`Store::last_exchange_unix_ms`](crate::Store::last_exchange_unix_ms)) is older
    /// than `tombstone_grace` (default false: [`Error::StaleReplica`]). Such a store, back
    /// after a long time away, may bring back keys its replicas deleted and purged.
    pub accept_stale: bool,
}

/// Foreground writes per second above which repairs yield ([`ManagerOptions::repair_share`]);
/// below it the writes leave the cores nearly idle and repairs run at their caps.
pub const BUSY_WRITES_PER_SEC: u64 = 1_000;

/// The longest interval or backoff [`ManagerOptions`] takes: a peer due later than that
/// is better removed, and a due time must stay a time the clock can hold.
const MAX_INTERVAL: Duration = Duration::from_secs(365 * 24 * 3600);

impl ManagerOptions {
    pub(super) fn validate(&self) -> Result<()> {
        let waits = [
            ("interval", self.interval),
            ("backoff", self.backoff),
            ("backoff_max", self.backoff_max),
        ];
        for (name, wait) in waits {
            if wait.is_zero() || wait > MAX_INTERVAL {
                return Err(Error::InvalidOptions(format!(
                    "{name} ({wait:?}) must be positive and at most 365 days"
                )));
            }
        }
        if let Some(grace) = self.tombstone_grace {
            if grace.is_zero() || grace > MAX_INTERVAL {
                return Err(Error::InvalidOptions(format!(
                    "tombstone_grace ({grace:?}) must be positive and at most 365 days"
                )));
            }
            if grace <= self.interval {
                return Err(Error::InvalidOptions(format!(
                    "tombstone_grace ({grace:?}) must be longer than the interval ({:?}): a tombstone must outlive the time between exchanges",
                    self.interval
                )));
            }
            if !self.scrub_keys_per_sec.is_some_and(|r| r > 0) {
                return Err(Error::InvalidOptions(
                    "tombstone_grace needs the scrub (scrub_keys_per_sec), which purges".into(),
                ));
            }
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return Err(Error::InvalidOptions(format!(
                "jitter ({}) must be between 0 and 1",
                self.jitter
            )));
        }
        Ok(())
    }
}

impl Default for ManagerOptions {
    fn default() -> Self {
        ManagerOptions {
            interval: Duration::from_secs(60),
            jitter: 0.1,
            max_concurrent: 2,
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_repair_keys_per_sec: None,
            max_repair_bytes_per_sec: None,
            repair_share: Some(0.1),
            max_partitions: 4096,
            scrub_keys_per_sec: Some(2_000),
            tombstone_grace: None,
            accept_stale: false,
        }
    }
}
