//! The background scrub: [`Store::scrub`](crate::Store::scrub) over the whole store, again
//! and again, at `scrub_keys_per_sec`, so that a value that rots is quarantined and the
//! next exchange restores it from a good replica.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::clock::unix_ms;
use crate::error::{Error, Result};

use super::{lock, Inner};

/// Pages a second at most (a page is a tenth of a second's records, up to `MAX_PAGE`).
const PAGES_PER_SEC: u64 = 10;
/// Most records one page checks.
const MAX_PAGE: u64 = 10_000;
/// Least time between two passes (an empty store would otherwise spin).
const MIN_PASS: Duration = Duration::from_secs(1);
/// Wait after a page that failed.
const RETRY: Duration = Duration::from_secs(1);

/// Starts the scrub thread if the options ask for one.
pub(super) fn start(inner: &Arc<Inner>) -> Result<Option<JoinHandle<()>>> {
    let (rate, grace) = {
        let mut state = lock(inner);
        let rate = state.options.scrub_keys_per_sec.filter(|&r| r > 0);
        state.scrub.keys_per_sec = rate;
        (rate, state.options.tombstone_grace)
    };
    let Some(rate) = rate else {
        return Ok(None);
    };
    let inner = Arc::clone(inner);
    std::thread::Builder::new()
        .name("scrub".into())
        .spawn(move || run(&inner, rate, grace))
        .map(Some)
        .map_err(|e| Error::io("spawn scrub thread", e))
}

fn run(inner: &Inner, rate: u64, grace: Option<Duration>) {
    let page_keys = (rate / PAGES_PER_SEC).clamp(1, MAX_PAGE);
    let mut cursor = None;
    let mut pass_started = Instant::now();
    loop {
        let started = Instant::now();
        let page_len = usize::try_from(page_keys).unwrap_or(usize::MAX);
        let result = inner.store.scrub(cursor.as_ref(), page_len, grace);
        let wait = {
            let mut state = lock(inner);
            let scrub = &mut state.scrub;
            match result {
                Ok(page) => {
                    scrub.checked += page.checked;
                    scrub.problems += page.problems.len() as u64;
                    scrub.quarantined += page.quarantined;
                    scrub.purged += page.purged;
                    if let Some(problem) = page.problems.last() {
                        scrub.last_problem = Some(problem.to_string());
                    }
                    scrub.last_error = None;
                    // This page's share of a second at the rate.
                    let mut wait = Duration::from_secs_f64(page.checked as f64 / rate as f64)
                        .saturating_sub(started.elapsed());
                    cursor = page.next;
                    if cursor.is_none() {
                        scrub.passes += 1;
                        scrub.last_pass_unix_ms = Some(unix_ms());
                        wait = wait.max(MIN_PASS.saturating_sub(pass_started.elapsed()));
                        pass_started = Instant::now() + wait;
                    }
                    wait
                }
                Err(e) => {
                    scrub.last_error = Some(e.to_string());
                    RETRY
                }
            }
        };
        if !sleep(inner, wait) {
            return;
        }
    }
}

/// Waits `wait` unless the manager stops first (false then).
fn sleep(inner: &Inner, wait: Duration) -> bool {
    let until = Instant::now() + wait;
    let mut state = lock(inner);
    loop {
        if state.stopping {
            return false;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        state = inner
            .wake
            .wait_timeout(state, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
