//! Running independent pieces of a scan on every core.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

use crate::error::Result;

/// Runs `work` on every item, on up to `available_parallelism` threads (the calling
/// thread included, which calls `after_each` between its items), and returns the
/// results in item order. Stops early on the first error.
pub(crate) fn map<I: Sync, T: Send>(
    items: &[I],
    work: impl Fn(&I) -> Result<T> + Sync,
    after_each: &mut dyn FnMut(),
) -> Result<Vec<T>> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Mutex<Vec<Option<Result<T>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    // Takes the next item; false when none is left.
    let work_one = || {
        let i = next.fetch_add(1, Relaxed);
        let Some(item) = items.get(i) else {
            return false;
        };
        if failed.load(Relaxed) {
            return false;
        }
        let result = work(item);
        failed.fetch_or(result.is_err(), Relaxed);
        if let Some(slot) = results.lock().unwrap_or_else(|p| p.into_inner()).get_mut(i) {
            *slot = Some(result);
        }
        true
    };
    std::thread::scope(|scope| {
        for _ in 1..threads {
            scope.spawn(|| while work_one() {});
        }
        while work_one() {
            after_each();
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|p| p.into_inner())
        .into_iter()
        .flatten()
        .collect()
}
