//! The hybrid logical clock that assigns versions.
//!
//! A version is `unix_ms << 16 | counter`: it follows wall time when the clock moves and
//! counts within a millisecond (or while the wall clock is behind), so versions issued
//! by one store strictly increase, and `observe` keeps them above any version seen.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub(crate) struct Clock {
    last: AtomicU64,
}

pub(crate) fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Clock {
    pub(crate) fn new(floor: u64) -> Clock {
        Clock {
            last: AtomicU64::new(floor),
        }
    }

    /// A version greater than every version issued or observed before.
    pub(crate) fn next(&self) -> u64 {
        let wall = unix_ms() << 16;
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self
                .last
                .compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return next,
                Err(seen) => last = seen,
            }
        }
    }

    /// Moves the clock past a version written by someone else.
    pub(crate) fn observe(&self, version: u64) {
        self.last.fetch_max(version, Ordering::AcqRel);
    }

    pub(crate) fn current(&self) -> u64 {
        self.last.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strictly_increasing_and_above_observed() {
        let c = Clock::new(0);
        let a = c.next();
        let b = c.next();
        assert!(b > a);
        c.observe(u64::MAX - 10);
        assert_eq!(c.next(), u64::MAX - 9);
    }
}
