//! Durable flushes with group commit: concurrent `Store::flush` calls share one sled
//! flush and one round of fsyncs.
//!
//! A flush must cover every write made before its call. A flush already running may have
//! started before those writes, so a caller that finds one running waits for it and then
//! for the next one, which it (or another waiter) starts; every waiter whose writes came
//! before that next flush started is covered by it. So with many threads flushing, each
//! round of fsyncs serves everyone who arrived during the previous round.

use std::sync::{Condvar, Mutex};

use crate::error::Result;

/// How many flushes were asked for and how many rounds of syncs served them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    /// `Store::flush` calls that returned successfully.
    pub calls: u64,
    /// Sync rounds (a sled flush plus an fsync of its files) that served them.
    pub syncs: u64,
}

#[derive(Default)]
struct State {
    /// Generations started (the one running, if `running`).
    started: u64,
    /// Generations finished successfully.
    done: u64,
    running: bool,
    stats: FlushStats,
}

#[derive(Default)]
pub(crate) struct GroupCommit {
    state: Mutex<State>,
    finished: Condvar,
}

impl GroupCommit {
    /// Returns once a sync that started after this call has finished; runs it if no one
    /// else does.
    pub(crate) fn flush(&self, sync: impl Fn() -> Result<()>) -> Result<()> {
        let mut state = self.lock();
        // A generation started after this point covers this caller's writes.
        let need = state.started + 1;
        loop {
            if state.done >= need {
                state.stats.calls += 1;
                return Ok(());
            }
            if state.running {
                state = self.finished.wait(state).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            state.running = true;
            state.started += 1;
            let generation = state.started;
            drop(state);
            let result = sync();
            state = self.lock();
            state.running = false;
            match result {
                Ok(()) => {
                    state.done = generation;
                    state.stats.syncs += 1;
                    self.finished.notify_all();
                }
                Err(e) => {
                    // Waiters retry with a sync of their own; this caller reports.
                    state.started = state.done;
                    self.finished.notify_all();
                    return Err(e);
                }
            }
        }
    }

    pub(crate) fn stats(&self) -> FlushStats {
        self.lock().stats
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
    use std::sync::Arc;

    #[test]
    fn concurrent_flushes_share_syncs_and_each_waits_for_a_later_one() {
        let group = Arc::new(GroupCommit::default());
        let syncs = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (group, syncs) = (Arc::clone(&group), Arc::clone(&syncs));
                std::thread::spawn(move || {
                    for _ in 0..50 {
                        let before = syncs.load(SeqCst);
                        group
                            .flush(|| {
                                std::thread::sleep(std::time::Duration::from_millis(1));
                                syncs.fetch_add(1, SeqCst);
                                Ok(())
                            })
                            .unwrap();
                        // A sync finished after this call began.
                        assert!(syncs.load(SeqCst) > before);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let stats = group.stats();
        assert_eq!(stats.calls, 400);
        assert_eq!(stats.syncs, syncs.load(SeqCst));
        assert!(stats.syncs < 400, "{stats:?}");
    }

    #[test]
    fn a_failed_sync_is_reported_and_the_next_caller_retries() {
        let group = GroupCommit::default();
        assert!(group.flush(|| Err(Error::Closed)).is_err());
        group.flush(|| Ok(())).unwrap();
        assert_eq!(group.stats(), FlushStats { calls: 1, syncs: 1 });
    }
}
