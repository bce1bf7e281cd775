//! The one error type of the library.

use std::path::PathBuf;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when opening or using a [`Store`](crate::Store).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The store directory does not exist and `Options::create_if_missing` is false.
    #[error(
        "no store at {0}: check the path, or create the store first (e.g. `merkle-index load`)"
    )]
    NotFound(PathBuf),

    /// The path exists but does not hold a merkle-index store.
    #[error(
        "{path} is not a merkle-index store ({reason}); point at a store directory or an empty one"
    )]
    NotAStore { path: PathBuf, reason: String },

    /// Another handle holds the store: a running process (a node, a `serve`), or a second
    /// `open` of the same directory in this one.
    #[error("the store at {0} is open elsewhere (another process, or opened twice); stop that process or use its handle")]
    InUse(PathBuf),

    /// The store's last successful exchange is older than the tombstone grace: replicas
    /// may have purged tombstones of keys it still holds, and exchanging would bring
    /// them back (see [`ManagerOptions::accept_stale`](crate::ManagerOptions::accept_stale)).
    #[error("this store's last exchange with a peer was {away_secs} s ago, longer than tombstone_grace ({grace_secs} s): its replicas may have purged the tombstones of keys it still holds, and exchanging would bring those keys back. Wipe it and let it bootstrap from its peers, or accept it as it is (ManagerOptions::accept_stale, node --accept-stale-store)")]
    StaleReplica { away_secs: u64, grace_secs: u64 },

    /// The options given to `open` disagree with those the store was created with.
    #[error("options mismatch for {what}: the store was created with {stored}, open asked for {requested}; open with the store's own options or create a new store")]
    OptionsMismatch {
        what: &'static str,
        stored: u64,
        requested: u64,
    },

    /// The store was written in a format this build does not read.
    #[error("the store has format version {found}; this build reads versions 1 to {supported}: open it with the merkle-index release that wrote it")]
    UnsupportedFormat { found: u32, supported: u32 },

    /// The options are not usable (out of range, inconsistent).
    #[error("invalid options: {0}")]
    InvalidOptions(String),

    /// Bytes on disk failed a checksum or could not be decoded.
    #[error(transparent)]
    Corrupt(#[from] Corruption),

    /// The partition is being dropped ([`Store::drop_partition`](crate::Store::drop_partition)):
    /// writes to it are refused until the drop finishes.
    #[error("partition {0} is being dropped: writes to it are refused until the drop finishes")]
    PartitionDropping(u32),

    /// An argument is out of range (a level, node or segment past the tree).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    /// A version is further ahead of this node's wall clock than
    /// `Options::max_clock_drift` allows (a writer or replica with a skewed clock).
    #[error("version {version} is ahead of this node's clock by more than max_clock_drift (latest accepted now: {limit}); check the clock of the node that wrote it")]
    VersionAhead { version: u64, limit: u64 },

    /// The store's clock reached `u64::MAX` (only possible with versions stored before
    /// the drift bound existed); no later version can be issued.
    #[error("the store's clock is exhausted (last version {last}); rewrite the affected keys with put_versioned at sane versions")]
    ClockExhausted { last: u64 },

    /// A replica answered with something other than what was asked (too few or too many
    /// items, a count that does not add up).
    #[error("protocol error: {0}")]
    Protocol(String),

    /// The store was closed, or its hasher thread stopped.
    #[error("the store is closed")]
    Closed,

    /// An error from the embedded sled database.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),

    /// An operating-system I/O error, with the path it concerned.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }
}

/// A structured description of corrupted bytes: what, where, expected versus found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Corruption {
    /// A checksum did not match its bytes.
    #[error("checksum mismatch in {what} at {location}: expected {expected}, found {found}; run `merkle-index rebuild`")]
    ChecksumMismatch {
        what: &'static str,
        location: String,
        expected: String,
        found: String,
    },
    /// A record had the wrong length.
    #[error("bad length for {what} at {location}: expected {expected} bytes, found {found}")]
    BadLength {
        what: &'static str,
        location: String,
        expected: usize,
        found: usize,
    },
    /// A stored value's bytes no longer match the hash stored with them (bit rot).
    #[error("value of {location} does not match its stored hash (stored {stored}, computed {computed}); run `merkle-index verify --repair`, then sync from a replica")]
    ValueHash {
        location: String,
        stored: String,
        computed: String,
    },
    /// A stored value decodes but is out of its valid range.
    #[error("out-of-range {what} at {location}: {detail}")]
    OutOfRange {
        what: &'static str,
        location: String,
        detail: String,
    },
    /// A magic number or format version was not the one this build writes.
    #[error("bad header in {what} at {location}: {detail}")]
    BadHeader {
        what: &'static str,
        location: String,
        detail: String,
    },
}
