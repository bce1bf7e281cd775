//! Which partitions an exchange covers: a peer's list, or every partition either side
//! holds (discovery) up to `max_partitions` here; and the claims that let
//! [`Manager::drop_partition`](super::Manager::drop_partition) wait for an exchange
//! repairing the partition it gives away.

use std::collections::BTreeSet;

use crate::error::Result;
use crate::exchange::Replica;

use super::{lock, Inner};

pub(super) enum Claim {
    Go,
    Skip,
    Stop,
}

/// Whether an exchange goes on to `partition`, decided under the lock that
/// [`Manager::drop_partition`] takes: not while the manager stops or the peer is gone,
/// nor for a partition being dropped, taken off the peer's list since the exchange
/// began, or given away (unless this node holds it again). One to be repaired is marked
/// as such until [`release`], so a drop waits for it.
pub(super) fn claim(inner: &Inner, name: &str, partition: u32, repairs: bool) -> Claim {
    let mut state = lock(inner);
    if state.stopping {
        return Claim::Stop;
    }
    let given_away = state.given_away.contains(&partition);
    let dropping = state.dropping.contains(&partition);
    let Some(p) = state.peers.get_mut(name) else {
        return Claim::Stop;
    };
    let off_list = match &p.partitions {
        Some(list) => !list.contains(&partition),
        None => given_away && inner.store.root(partition).is_zero(),
    };
    if dropping || off_list {
        return Claim::Skip;
    }
    if repairs {
        *state.syncing.entry(partition).or_default() += 1;
    }
    Claim::Go
}

/// Ends what [`claim`] marked: the exchange has finished repairing `partition`.
pub(super) fn release(inner: &Inner, partition: u32) {
    let mut state = lock(inner);
    if let Some(n) = state.syncing.get_mut(&partition) {
        *n -= 1;
        if *n == 0 {
            state.syncing.remove(&partition);
            // A drop waiting for this partition may go on.
            inner.wake.notify_all();
        }
    }
}

/// The partitions to exchange with a peer given no list: every one this node holds, and
/// those only the peer holds while there is room for them under `max_partitions`
/// (lowest first). The room is reserved until the returned guard drops, so exchanges
/// running at once cannot together take on more; the peer's status counts the rest.
pub(super) fn discover<'a>(
    inner: &'a Inner,
    name: &str,
    remote: &dyn Replica,
) -> Result<(Vec<u32>, Adopting<'a>)> {
    let theirs: BTreeSet<u32> = remote.partitions()?.into_iter().collect();
    // A partition written here but not yet hashed has no tree yet: count it.
    inner.store.sync_index()?;
    let mut state = lock(inner);
    // Read under the lock: an exchange that releases its room has made its partitions
    // visible first (see `Adopting::drop`).
    let mut all: BTreeSet<u32> = inner.store.partitions().into_iter().collect();
    let room = state
        .options
        .max_partitions
        .saturating_sub(all.len() + state.adopting);
    let new: Vec<u32> = theirs
        .difference(&all)
        .filter(|p| !state.given_away.contains(p))
        .copied()
        .collect();
    let adopt = new.len().min(room);
    state.adopting += adopt;
    all.extend(&new[..adopt]);
    if let Some(p) = state.peers.get_mut(name) {
        p.left_out = (new.len() - adopt) as u64;
    }
    let partitions = all.into_iter().collect();
    Ok((
        partitions,
        Adopting {
            inner,
            count: adopt,
        },
    ))
}

/// Room reserved for partitions an exchange may create here.
pub(super) struct Adopting<'a> {
    inner: &'a Inner,
    count: usize,
}

impl Drop for Adopting<'_> {
    fn drop(&mut self) {
        if self.count > 0 {
            // The partitions it created count among the store's own from now on.
            let _ = self.inner.store.sync_index();
            lock(self.inner).adopting -= self.count;
        }
    }
}
