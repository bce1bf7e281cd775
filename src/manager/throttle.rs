//! The repair throttle every exchange shares: a token bucket of keys and bytes, whose key
//! rate yields to busy foreground writes.
//!
//! Time comes in as an argument, so the bucket's arithmetic is tested without waiting;
//! the manager does the waiting, on its condition variable.

use std::time::{Duration, Instant};

use super::{ManagerOptions, BUSY_WRITES_PER_SEC};

/// The shortest window over which the foreground write rate is measured.
pub(super) const SAMPLE: Duration = Duration::from_millis(100);

/// A foreground sample older than this is stale: measure afresh before repairing.
const STALE: Duration = Duration::from_secs(1);

/// Shortest and longest single wait: a wait re-checks the caps, which may change.
const MIN_WAIT: Duration = Duration::from_millis(1);
const MAX_WAIT: Duration = Duration::from_secs(1);

pub(super) struct Throttle {
    /// Allowance of keys and bytes, and when it was last refilled.
    keys: f64,
    bytes: f64,
    refilled: Instant,
    /// Repairs and their bytes paid for so far, for the size of a repair.
    paid_keys: u64,
    paid_bytes: u64,
    /// The foreground writes counted when last sampled, when, and the rate measured then.
    foreground_seen: u64,
    foreground_sampled: Instant,
    foreground_rate: u64,
}

/// What [`Throttle::take`] decided.
#[derive(Debug, PartialEq)]
pub(super) enum Take {
    /// Taken; the batch passes.
    Passed,
    /// Not yet: wait this long and ask again.
    Wait(Duration),
}

impl Throttle {
    pub(super) fn new(now: Instant) -> Throttle {
        Throttle {
            keys: 0.0,
            bytes: 0.0,
            refilled: now,
            paid_keys: 0,
            paid_bytes: 0,
            foreground_seen: 0,
            foreground_sampled: now,
            foreground_rate: 0,
        }
    }

    /// The foreground write rate, as last measured.
    pub(super) fn foreground_rate(&self) -> u64 {
        self.foreground_rate
    }

    /// True if the foreground was sampled at least [`SAMPLE`] ago.
    pub(super) fn sample_due(&self, now: Instant) -> bool {
        now.duration_since(self.foreground_sampled) >= SAMPLE
    }

    /// True if the last foreground sample is too old to stand for the rate now (the
    /// first repair, or the first after a quiet spell).
    pub(super) fn sample_stale(&self, now: Instant) -> bool {
        now.duration_since(self.foreground_sampled) > STALE
    }

    /// Starts a new sampling window at `seen` foreground writes, keeping the last rate.
    pub(super) fn restart_window(&mut self, now: Instant, seen: u64) {
        self.foreground_seen = seen;
        self.foreground_sampled = now;
    }

    /// Measures the foreground write rate since the window started (`seen` writes now).
    pub(super) fn sample(&mut self, now: Instant, seen: u64) {
        let window = now.duration_since(self.foreground_sampled).as_secs_f64();
        let writes = seen.saturating_sub(self.foreground_seen);
        self.foreground_rate = (writes as f64 / window.max(1e-9)) as u64;
        self.restart_window(now, seen);
    }

    /// The key cap, lowered to `repair_share` of the foreground rate while that is busy
    /// (`None`: unlimited).
    pub(super) fn key_rate_now(&self, options: &ManagerOptions) -> Option<u64> {
        let share = options
            .repair_share
            .filter(|s| *s > 0.0 && self.foreground_rate > BUSY_WRITES_PER_SEC)
            .map(|s| ((self.foreground_rate as f64 * s.clamp(0.0, 1.0)).round() as u64).max(1));
        match (options.max_repair_keys_per_sec, share) {
            (Some(c), Some(s)) => Some(c.min(s)),
            (c, s) => c.or(s),
        }
    }

    /// Repairs per batch: about half a second's worth under a cap (of keys, and of bytes
    /// at the size of the repairs so far; 16 keys before any), at most 256.
    pub(super) fn batch(&self, options: &ManagerOptions) -> u64 {
        let by_keys = self.key_rate_now(options).map(|rate| rate / 2);
        let by_bytes = options.max_repair_bytes_per_sec.map(|rate| {
            match self.paid_bytes.checked_div(self.paid_keys) {
                Some(size) => rate / 2 / size.max(1),
                None => 16,
            }
        });
        by_keys
            .into_iter()
            .chain(by_bytes)
            .min()
            .unwrap_or(256)
            .clamp(1, 256)
    }

    /// Takes `keys` and `bytes` if the bucket holds them, else says how long to wait
    /// (at most a second: a wait re-checks the caps, which may change).
    ///
    /// The bucket holds one second's worth, or the batch asking if that is more: a batch
    /// is paid for in full before it passes, so no run, however short, beats the rate.
    pub(super) fn take(
        &mut self,
        now: Instant,
        options: &ManagerOptions,
        keys: u64,
        bytes: u64,
    ) -> Take {
        let key_rate = self.key_rate_now(options);
        let byte_rate = options.max_repair_bytes_per_sec;
        if key_rate.is_none() && byte_rate.is_none() {
            return Take::Passed;
        }
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = now;
        let refill = |have: f64, rate: Option<u64>, want: u64| {
            rate.map_or(f64::INFINITY, |r| {
                (have + elapsed * r as f64).min(r.max(1).max(want) as f64)
            })
        };
        self.keys = refill(self.keys, key_rate, keys);
        self.bytes = refill(self.bytes, byte_rate, bytes);
        let want_keys = key_rate.map_or(0.0, |_| keys as f64);
        let want_bytes = byte_rate.map_or(0.0, |_| bytes as f64);
        if self.keys >= want_keys && self.bytes >= want_bytes {
            if key_rate.is_some() {
                self.keys -= want_keys;
            }
            if byte_rate.is_some() {
                self.bytes -= want_bytes;
            }
            self.paid_keys = self.paid_keys.saturating_add(keys);
            self.paid_bytes = self.paid_bytes.saturating_add(bytes);
            return Take::Passed;
        }
        let wait_for = |have: f64, want: f64, rate: Option<u64>| {
            rate.map_or(0.0, |r| ((want - have) / r.max(1) as f64).max(0.0))
        };
        let wait = wait_for(self.keys, want_keys, key_rate)
            .max(wait_for(self.bytes, want_bytes, byte_rate))
            .min(MAX_WAIT.as_secs_f64());
        Take::Wait(Duration::from_secs_f64(wait).max(MIN_WAIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capped(keys: Option<u64>, bytes: Option<u64>) -> ManagerOptions {
        ManagerOptions {
            max_repair_keys_per_sec: keys,
            max_repair_bytes_per_sec: bytes,
            ..ManagerOptions::default()
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// The wait asked for, in whole milliseconds (`None`: passed).
    fn wait_ms(take: Take) -> Option<u64> {
        match take {
            Take::Passed => None,
            Take::Wait(d) => Some((d.as_secs_f64() * 1000.0).round() as u64),
        }
    }

    #[test]
    fn without_caps_every_batch_passes_at_once() {
        let now = Instant::now();
        let mut t = Throttle::new(now);
        let none = capped(None, None);
        assert_eq!(t.take(now, &none, 1_000_000, 1 << 40), Take::Passed);
        assert_eq!(t.batch(&none), 256);
    }

    #[test]
    fn a_batch_waits_until_it_is_paid_for() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        let options = capped(Some(10), None);
        assert_eq!(wait_ms(t.take(start, &options, 5, 0)), Some(500));
        assert_eq!(wait_ms(t.take(start + ms(300), &options, 5, 0)), Some(200));
        assert_eq!(t.take(start + ms(500), &options, 5, 0), Take::Passed);
        // The next batch starts from an empty bucket again.
        assert_eq!(wait_ms(t.take(start + ms(500), &options, 5, 0)), Some(500));
    }

    #[test]
    fn an_idle_bucket_holds_one_seconds_worth_or_the_batch_asking() {
        let start = Instant::now();
        let options = capped(Some(10), None);
        let mut t = Throttle::new(start);
        let later = start + Duration::from_secs(60);
        assert_eq!(t.take(later, &options, 10, 0), Take::Passed);
        assert_eq!(wait_ms(t.take(later, &options, 1, 0)), Some(100));
        // A batch larger than a second's worth fills the bucket up to itself, asked
        // again after at most a second each time.
        let mut t = Throttle::new(start);
        assert_eq!(wait_ms(t.take(start, &options, 30, 0)), Some(1000));
        assert_eq!(
            wait_ms(t.take(start + ms(2900), &options, 30, 0)),
            Some(100)
        );
        assert_eq!(t.take(later, &options, 30, 0), Take::Passed);
    }

    #[test]
    fn a_batch_worth_seconds_of_bytes_passes_only_once_paid_in_full() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        let options = capped(None, Some(1000));
        // 5 s of bytes: asked again every second (at most), it passes at 5 s, not before.
        for second in 0..5 {
            let now = start + Duration::from_secs(second);
            assert_eq!(
                wait_ms(t.take(now, &options, 1, 5000)),
                Some(1000),
                "{second}"
            );
        }
        assert_eq!(
            wait_ms(t.take(start + ms(4990), &options, 1, 5000)),
            Some(10)
        );
        assert_eq!(t.take(start + ms(5000), &options, 1, 5000), Take::Passed);
        // The bucket is empty again: the next byte waits a millisecond.
        assert_eq!(wait_ms(t.take(start + ms(5000), &options, 0, 1)), Some(1));
    }

    #[test]
    fn batches_are_half_a_seconds_worth_of_keys_or_of_bytes() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        assert_eq!(t.batch(&capped(Some(100), None)), 50);
        assert_eq!(t.batch(&capped(Some(1), None)), 1);
        let bytes = capped(None, Some(100_000));
        assert_eq!(t.batch(&bytes), 16, "no repair seen yet");
        // Repairs of 1,000 bytes so far: 50 KB is 50 of them.
        let later = start + Duration::from_secs(1);
        assert_eq!(t.take(later, &bytes, 10, 10_000), Take::Passed);
        assert_eq!(t.batch(&bytes), 50);
        assert_eq!(t.batch(&capped(Some(40), Some(100_000))), 20);
    }

    #[test]
    fn the_key_rate_yields_to_busy_foreground_writes_only() {
        let start = Instant::now();
        let mut t = Throttle::new(start);
        let options = ManagerOptions {
            max_repair_keys_per_sec: Some(5_000),
            repair_share: Some(0.1),
            ..ManagerOptions::default()
        };
        t.restart_window(start, 0);
        t.sample(start + ms(500), 400); // 800 writes/s: not busy
        assert_eq!(t.foreground_rate(), 800);
        assert_eq!(t.key_rate_now(&options), Some(5_000));
        t.sample(start + ms(1000), 10_400); // 20,000 writes/s
        assert_eq!(t.key_rate_now(&options), Some(2_000));
        let uncapped = ManagerOptions {
            max_repair_keys_per_sec: None,
            ..options.clone()
        };
        assert_eq!(t.key_rate_now(&uncapped), Some(2_000));
        let no_share = ManagerOptions {
            repair_share: None,
            ..options
        };
        assert_eq!(t.key_rate_now(&no_share), Some(5_000));
        assert!(!t.sample_due(start + ms(1050)));
        assert!(t.sample_due(start + ms(1100)));
        assert!(t.sample_stale(start + ms(2001)));
    }
}
