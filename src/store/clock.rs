//! The hybrid logical clock that assigns versions.
//!
//! A version is `unix_ms << 16 | counter`: it follows wall time when the clock moves and
//! counts within a millisecond (or while the wall clock is behind), so versions issued
//! by one store strictly increase, and `observe` keeps them above any version seen.
//!
//! Versions from elsewhere (callers, repairs) are accepted only up to `max_drift` ahead
//! of this node's wall clock: one replica with a clock far in the future (or a caller
//! passing `u64::MAX`) would otherwise drag every later version with it, until the
//! clock saturates and new writes can no longer win over old ones.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::error::{Error, Result};

pub(crate) struct Clock {
    last: AtomicU64,
    /// `max_drift` in HLC units (milliseconds shifted left by 16).
    max_drift: u64,
}

pub(crate) fn unix_ms() -> u64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    #[cfg(feature = "test-hooks")]
    let ms = ms.saturating_add_signed(WALL_OFFSET_MS.load(Ordering::Relaxed));
    ms
}

/// Test hook: milliseconds added to this process's wall clock, as if it had been set
/// forward (or back) by that much.
#[cfg(feature = "test-hooks")]
pub(crate) static WALL_OFFSET_MS: std::sync::atomic::AtomicI64 =
    std::sync::atomic::AtomicI64::new(0);

/// How far the wall clock may stray from [`steady_unix_ms`] before the times below stop
/// following it (NTP's steps are far smaller).
const JUMP_SLACK_MS: u64 = 60_000;

/// The wall clock's reading when this process first asked (the first store it opened
/// does), advanced by the time that really passed since (a monotonic clock): wall time
/// that no later setting of the wall clock moves.
pub(crate) fn steady_unix_ms() -> u64 {
    static ANCHOR: OnceLock<(u64, Instant)> = OnceLock::new();
    let (wall, at) = ANCHOR.get_or_init(|| (unix_ms(), Instant::now()));
    let passed = u64::try_from(at.elapsed().as_millis()).unwrap_or(u64::MAX);
    wall.saturating_add(passed)
}

/// The wall clock, but never more than [`JUMP_SLACK_MS`] behind [`steady_unix_ms`]: for
/// the start of an age that must not be overstated later (a tombstone's deletion time),
/// and the end of an absence that must not be understated (how long a peer or this
/// store has gone without an exchange). A wall clock set back would otherwise stamp
/// tombstones older than they are, so that once it is set right they look past their
/// grace early.
pub(crate) fn unix_ms_not_behind() -> u64 {
    unix_ms().max(steady_unix_ms().saturating_sub(JUMP_SLACK_MS))
}

/// The wall clock, but never more than [`JUMP_SLACK_MS`] ahead of [`steady_unix_ms`]:
/// for the end of an age that must not be overstated (a tombstone's, before it is
/// purged), and the start of an absence that must not be understated later (when an
/// exchange succeeded). A wall clock set forward (by hand, or by a bad time source)
/// would otherwise make every tombstone look past its grace at once, and the values
/// they deleted could come back from a replica that missed the deletes.
///
/// Between the two, a wall clock set forward or back while the process runs delays
/// purges and holds peers back sooner, but never hastens a purge nor lets a peer in
/// late. Both take the wall clock at the process's start as right: one wrong across a
/// restart is the stale-store check's business.
pub(crate) fn unix_ms_not_ahead() -> u64 {
    unix_ms().min(steady_unix_ms().saturating_add(JUMP_SLACK_MS))
}

/// How far the wall clock has moved from [`steady_unix_ms`] (positive: ahead), in ms.
pub(crate) fn wall_clock_moved_ms() -> i64 {
    let (wall, steady) = (unix_ms(), steady_unix_ms());
    if wall >= steady {
        i64::try_from(wall - steady).unwrap_or(i64::MAX)
    } else {
        i64::try_from(steady - wall).map_or(i64::MIN, |d| -d)
    }
}

/// A duration in HLC units (`ms << 16`), saturating.
pub(crate) fn hlc_span(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .saturating_mul(1 << 16)
}

impl Clock {
    pub(crate) fn new(floor: u64, max_drift: Duration) -> Clock {
        Clock {
            last: AtomicU64::new(floor),
            max_drift: hlc_span(max_drift),
        }
    }

    /// The highest version accepted from elsewhere right now: `max_drift` past the wall
    /// clock, or past the time that really passed since the process started if the
    /// wall clock was set back meanwhile (a node whose clock goes back must not refuse
    /// every write from peers whose clocks are right).
    pub(crate) fn limit(&self) -> u64 {
        (unix_ms_not_behind() << 16).saturating_add(self.max_drift)
    }

    /// Fails if `version` is further ahead of the wall clock than the drift allows.
    pub(crate) fn check(&self, version: u64) -> Result<()> {
        let limit = self.limit();
        if version > limit {
            return Err(Error::VersionAhead { version, limit });
        }
        Ok(())
    }

    /// A version greater than every version issued or observed before.
    pub(crate) fn next(&self) -> Result<u64> {
        let wall = unix_ms() << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = last
                .checked_add(1)
                .ok_or(Error::ClockExhausted { last })?
                .max(wall);
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Ok(next),
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock past a version written by someone else, if it is within the
    /// allowed drift.
    pub(crate) fn observe(&self, version: u64) -> Result<()> {
        self.check(version)?;
        self.observe_stored(version);
        Ok(())
    }

    /// Moves the clock past a version already stored (recovery, rebuild): what is on
    /// disk must never be outvoted by a later local write, whatever its value.
    pub(crate) fn observe_stored(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }

    pub(crate) fn current(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn strictly_increasing_and_above_observed() {
        let c = Clock::new(0, HOUR);
        let a = c.next().unwrap();
        let b = c.next().unwrap();
        assert!(b > a);
        let ahead = (unix_ms() + 60_000) << 16;
        c.observe(ahead).unwrap();
        assert!(c.next().unwrap() > ahead);
    }

    #[test]
    fn versions_past_the_drift_are_refused_and_the_clock_never_saturates() {
        let c = Clock::new(0, HOUR);
        assert!(matches!(
            c.observe(u64::MAX - 1),
            Err(Error::VersionAhead { .. })
        ));
        let far = (unix_ms() + 2 * 3_600_000) << 16;
        assert!(c.observe(far).is_err());
        assert!(c.next().unwrap() < far);
        // A stored version at the very top (an old store) is honoured, and the clock
        // then refuses to issue rather than repeat or wrap.
        c.observe_stored(u64::MAX);
        assert!(matches!(c.next(), Err(Error::ClockExhausted { .. })));
    }
}
