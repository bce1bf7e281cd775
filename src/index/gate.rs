//! The write gate: which checkpoint epoch a write belongs to, and pauses: of every
//! write, or of the writes to one partition (a rebuild re-reading it).
//!
//! A write enters the gate, marks its region for the current epoch, writes the data and
//! sends its update to the hasher, then leaves. A checkpoint advances the epoch and waits
//! until no write of the old epoch is still inside (draining the channel meanwhile, so
//! writers blocked on a full channel can finish). After that wait, every update of the
//! old epoch is in the channel or applied, so the checkpoint covers them all, and the
//! old epoch's marks may be deleted once it is durable.
//!
//! A write to a held partition waits outside the gate (so checkpoints and pauses go on)
//! until the hold is released. Whoever holds a partition pauses the gate for a moment
//! after taking the hold: the writes to it already inside leave, and no later one enters.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

pub(crate) struct Gate {
    epoch: AtomicU64,
    /// Writes inside the gate, by epoch parity.
    inside: [AtomicU64; 2],
    /// Drops, verify, quarantine and holds take this exclusively, briefly, to stop
    /// writes; writes share it.
    pause: RwLock<()>,
    /// Partitions whose writes wait ([`Gate::hold`]); `held_any` is the writers' only
    /// cost while none is.
    held: Mutex<BTreeSet<u32>>,
    held_any: AtomicBool,
    released: Condvar,
}

/// Partitions whose writes wait until this is dropped.
pub(crate) struct Held<'a> {
    gate: &'a Gate,
    partitions: Vec<u32>,
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
            held: Mutex::new(BTreeSet::new()),
            held_any: AtomicBool::new(false),
            released: Condvar::new(),
        }
    }

    pub(crate) fn enter(&self) -> Pass<'_> {
        let shared = self.pause.read().unwrap_or_else(|p| p.into_inner());
        self.enter_epoch(Some(shared))
    }

    /// Enters for a write to `partition`, first waiting while it is held.
    pub(crate) fn enter_partition(&self, partition: u32) -> Pass<'_> {
        loop {
            let pass = self.enter();
            // Read inside the gate: a hold taken after this is followed by a pause,
            // which waits for this write to leave.
            if !self.is_held(partition) {
                return pass;
            }
            drop(pass);
            self.wait_released(partition);
        }
    }

    /// Holds the writes to `partitions` until the guard is dropped (once no other hold
    /// has any of them): those inside the gate now finish (this waits for them), later
    /// ones wait outside it.
    pub(crate) fn hold(&self, partitions: &[u32]) -> Held<'_> {
        let mut held = self
            .released
            .wait_while(self.held(), |h| partitions.iter().any(|p| h.contains(p)))
            .unwrap_or_else(|p| p.into_inner());
        held.extend(partitions.iter().copied());
        self.held_any.store(true, SeqCst);
        drop(held);
        drop(self.pause());
        Held {
            gate: self,
            partitions: partitions.to_vec(),
        }
    }

    /// Whether writes to `partition` are held (read it inside the gate, or under the
    /// pause, to be sure of it until leaving).
    pub(crate) fn is_held(&self, partition: u32) -> bool {
        self.held_any.load(SeqCst) && self.held().contains(&partition)
    }

    /// Waits until `partition` is not held.
    pub(crate) fn wait_released(&self, partition: u32) {
        drop(
            self.released
                .wait_while(self.held(), |h| h.contains(&partition))
                .unwrap_or_else(|p| p.into_inner()),
        );
    }

    fn held(&self) -> MutexGuard<'_, BTreeSet<u32>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
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

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut held = self.gate.held();
        for partition in &self.partitions {
            held.remove(partition);
        }
        self.gate.held_any.store(!held.is_empty(), Relaxed);
        drop(held);
        self.gate.released.notify_all();
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
