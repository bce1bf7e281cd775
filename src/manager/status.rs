//! What the manager reports: per peer and partition, the last exchange and its totals.

use std::time::Duration;

/// The last exchange of one partition with one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartitionStatus {
    /// The partition.
    pub partition: u32,
    /// When the last successful exchange ended (unix ms).
    pub last_success_unix_ms: Option<u64>,
    /// How long it took.
    pub last_duration: Option<Duration>,
    /// Keys found different in it.
    pub differences: u64,
    /// Keys written here and there by it.
    pub repaired_local: u64,
    pub repaired_remote: u64,
    /// Repairs it could not write, on either side: refused (a version further ahead of
    /// the receiving node's clock than its `max_clock_drift`, or bytes not matching
    /// their hash), or skipped because the key changed meanwhile (the next exchange
    /// retries those). Refusals that persist mean a peer with a skewed clock.
    pub refused: u64,
    pub skipped: u64,
    /// Records found corrupt on either side (never shipped; `verify` names them).
    pub corrupt: u64,
    /// Tombstones past `tombstone_grace` it did not copy to a side without the key (a
    /// difference that stays until the side holding them purges them).
    pub expired: u64,
    /// Tree and entry payload bytes received, plus repair bytes, in it.
    pub bytes: u64,
    /// Totals over every successful exchange since the manager started.
    pub total_repaired_local: u64,
    pub total_repaired_remote: u64,
    /// Failed exchanges since the manager started, and the last error.
    pub errors: u64,
    pub last_error: Option<String>,
}

/// What one peer's exchange is doing now.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    /// The partition being synced.
    pub partition: u32,
    /// Partitions left after it.
    pub partitions_left: usize,
    /// Progress in this partition so far.
    pub differences: u64,
    pub repaired_local: u64,
    pub repaired_remote: u64,
}

/// One peer as the manager sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerStatus {
    /// The peer's name (its address, for network peers).
    pub name: String,
    /// Its partitions, with their last exchange.
    pub partitions: Vec<PartitionStatus>,
    /// The exchange running now, if any.
    pub running: Option<Running>,
    /// Failed exchanges in a row (0 after a success).
    pub failures: u32,
    /// Why the last of those failed (the peer could not be reached, refused the
    /// connection or its key, or holds trees of another shape); `None` after a success.
    /// A partition's own failures are in its [`PartitionStatus`].
    pub last_error: Option<String>,
    /// Partitions the peer holds that its last exchange left out: it was given no
    /// partition list, and this node already held [`ManagerOptions::max_partitions`](super::ManagerOptions::max_partitions).
    pub left_out: u64,
    /// It was out of reach for longer than `tombstone_grace` since its last successful
    /// exchange, so it may hold keys deleted here and since purged, which an exchange
    /// would bring back: this node starts no exchange with it until its store is wiped
    /// (a peer that holds nothing of the shared partitions is accepted) or it is removed
    /// and added again. `last_error` says so. The peer's own manager, restarted, refuses
    /// to start on its store for the same reason
    /// ([`Error::StaleReplica`](crate::Error::StaleReplica)).
    pub held: bool,
    /// When its last exchange succeeded (unix ms), as the store records it: known from
    /// before this manager started, so a peer nearing `tombstone_grace` shows before it
    /// is back.
    pub last_exchange_unix_ms: Option<u64>,
    /// Time until its next exchange is due (zero if due or running).
    pub next_in: Duration,
}

/// A snapshot of the manager.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// Every peer, by name.
    pub peers: Vec<PeerStatus>,
    /// Exchanges finished since the start (successful or not).
    pub exchanges: u64,
    /// The repair limits in force.
    pub max_repair_keys_per_sec: Option<u64>,
    pub max_repair_bytes_per_sec: Option<u64>,
    /// Foreground writes per second, as last measured (over at least 100 ms, while
    /// repairs run).
    pub foreground_writes_per_sec: u64,
    /// The repair rate allowed now: the key cap, lowered while foreground writes are
    /// busy (`None`: unlimited).
    pub repair_keys_per_sec_now: Option<u64>,
    /// The store's [`checkpoint_error`](crate::Store::checkpoint_error): why its last
    /// checkpoint failed, if none has succeeded since (a full or failing disk).
    pub store_checkpoint_error: Option<String>,
    /// How far the wall clock has moved from the monotonic one since this process
    /// opened its first store, in ms (positive: set forward). Past a minute either way,
    /// tombstones' ages and peers' absences follow the monotonic clock, so that no
    /// purge is hastened and no long-gone peer let in: a clock set right after the
    /// start (at boot, say) then delays purges until the node restarts.
    pub wall_clock_moved_ms: i64,
    /// The background scrub.
    pub scrub: ScrubStatus,
}

/// The background scrub ([`ManagerOptions::scrub_keys_per_sec`](super::ManagerOptions::scrub_keys_per_sec)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScrubStatus {
    /// Its rate in records a second (`None`: off).
    pub keys_per_sec: Option<u64>,
    /// Records checked since the manager started.
    pub checked: u64,
    /// Full passes over the store finished, and when the last one did (unix ms).
    pub passes: u64,
    pub last_pass_unix_ms: Option<u64>,
    /// Problems found (as [`Store::verify`](crate::Store::verify) words them), the last
    /// one, and how many records were quarantined for an exchange to restore.
    pub problems: u64,
    pub last_problem: Option<String>,
    pub quarantined: u64,
    /// Tombstones purged, held longer than `tombstone_grace`.
    pub purged: u64,
    /// Why the last scrub page failed, if the last one did.
    pub last_error: Option<String>,
}
