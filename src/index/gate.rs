//! The write gate: which checkpoint epoch a write belongs to, and a pause for rebuilds.
//!
//! A write enters the gate, marks its region for the current epoch, writes the data and
//! sends its update to the hasher, then leaves. A checkpoint advances the epoch and waits
//! until no write of the old epoch is still inside (draining the channel meanwhile, so
//! writers blocked on a full channel can finish). After that wait, every update of the
//! old epoch is in the channel or applied, so the checkpoint covers them all, and the
//! old epoch's marks may be deleted once it is durable.

use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) struct Gate {
    epoch: AtomicU64,
    /// Writes inside the gate, by epoch parity.
    inside: [AtomicU64; 2],
    /// Rebuild and close take this exclusively to stop writes; writes share it.
    pause: RwLock<()>,
}

/// Proof that a write is inside the gate under `epoch`.
pub(crate) struct Pass<'a> {
    gate: &'a Gate,
    pub(crate) epoch: u64,
    /// The share of the pause a write holds (none for the pause's own holder).
    _shared: Option<RwLockReadGuard<'a, ()>>,
}

impl Gate {
    pub(crate) fn new(epoch: u64) -> Gate {
        Gate {
            epoch: AtomicU64::new(epoch),
            inside: [AtomicU64::new(0), AtomicU64::new(0)],
            pause: RwLock::new(()),
        }
    }

    pub(crate) fn enter(&self) -> Pass<'_> {
        let shared = self.pause.read().unwrap_or_else(|p| p.into_inner());
        self.enter_epoch(Some(shared))
    }

    /// A pass for the holder of the pause: a write it makes while the others wait still
    /// belongs to an epoch, and a checkpoint of that epoch waits for it.
    pub(crate) fn enter_paused<'a>(&'a self, _paused: &RwLockWriteGuard<'a, ()>) -> Pass<'a> {
        self.enter_epoch(None)
    }

    fn enter_epoch<'a>(&'a self, shared: Option<RwLockReadGuard<'a, ()>>) -> Pass<'a> {
        loop {
            let epoch = self.epoch.load(SeqCst);
            self.inside[(epoch & 1) as usize].fetch_add(1, SeqCst);
            if self.epoch.load(SeqCst) == epoch {
                return Pass {
                    gate: self,
                    epoch,
                    _shared: shared,
                };
            }
            self.inside[(epoch & 1) as usize].fetch_sub(1, SeqCst);
        }
    }

    /// Starts a new epoch and returns the old one.
    pub(crate) fn advance(&self) -> u64 {
        self.epoch.fetch_add(1, SeqCst)
    }

    /// True once no write of `epoch` is inside the gate.
    pub(crate) fn drained(&self, epoch: u64) -> bool {
        self.inside[(epoch & 1) as usize].load(SeqCst) == 0
    }

    /// Blocks new writes until the guard is dropped (waits for writes inside to leave).
    pub(crate) fn pause(&self) -> RwLockWriteGuard<'_, ()> {
        self.pause.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for Pass<'_> {
    fn drop(&mut self) {
        self.gate.inside[(self.epoch & 1) as usize].fetch_sub(1, SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advance_waits_for_old_epoch_only() {
        let gate = Gate::new(5);
        let pass = gate.enter();
        assert_eq!(pass.epoch, 5);
        assert_eq!(gate.advance(), 5);
        assert!(!gate.drained(5));
        let newer = gate.enter();
        assert_eq!(newer.epoch, 6);
        drop(pass);
        assert!(gate.drained(5));
        assert!(!gate.drained(6));
        drop(newer);
        assert!(gate.drained(6));
    }
}
