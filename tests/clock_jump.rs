//! A wall clock that jumps while a store is open does not purge tombstones early: set
//! forward a day, every tombstone would look past a grace of an hour, and the values
//! they deleted could come back from a replica that missed the deletes. Ages run at
//! most as fast as real time since open (the scrub's purges and `purge_tombstones`
//! alike); set back, purges wait, never hasten.
//!
//! The same holds for the time a peer has been away: set back, the wall clock does not
//! let a peer away longer than the grace back in; nor does it make the store refuse
//! its peers' versions as too far ahead.
//!
//! Alone in its binary: the wall clock's offset is process-wide, so the tests here take
//! turns.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use merkle_index::bench_support::set_wall_clock_offset_ms;
use merkle_index::{Error, Manager, ManagerOptions, Options, Peer, Replica, Store};

/// Held by each test while it moves the clock.
static CLOCK: Mutex<()> = Mutex::new(());

const DAY_MS: i64 = 24 * 3600 * 1000;

fn tombstones(store: &Store, first: u32, n: u32) {
    for i in first..first + n {
        store.partition(0).put(&i.to_be_bytes(), b"v").unwrap();
        store.partition(0).delete(&i.to_be_bytes()).unwrap();
    }
}

fn scrub_purges(store: &Store, grace: Duration) -> u64 {
    store.scrub(None, 1_000, Some(grace)).unwrap().purged
}

#[test]
fn a_wall_clock_set_forward_or_back_does_not_hasten_purges() {
    let _turn = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let hour = Duration::from_secs(3600);
    tombstones(&store, 0, 10);

    // Set forward a day: the tombstones are seconds old, not a day.
    set_wall_clock_offset_ms(DAY_MS);
    assert_eq!(scrub_purges(&store, hour), 0);
    assert_eq!(store.purge_tombstones(0, hour).unwrap(), 0);
    assert_eq!(store.count_keys(0).unwrap(), 10);

    // Real time still counts: past a short grace they go.
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(scrub_purges(&store, Duration::from_millis(500)), 10);

    // Set back a day, with new tombstones made meanwhile: an hour's grace keeps them,
    // and still keeps them once the clock is set right again (stamped with the day-old
    // time, they would then look a day old).
    set_wall_clock_offset_ms(-DAY_MS);
    tombstones(&store, 100, 10);
    assert_eq!(scrub_purges(&store, hour), 0);
    set_wall_clock_offset_ms(0);
    assert_eq!(scrub_purges(&store, hour), 0);
    assert_eq!(store.purge_tombstones(0, hour).unwrap(), 0);
    assert_eq!(store.count_keys(0).unwrap(), 10);
    store.close().unwrap();
}

/// A peer that can be switched off.
struct Flaky(Arc<Store>, Arc<AtomicBool>);

impl Peer for Flaky {
    fn open(&self) -> merkle_index::Result<Box<dyn Replica + Send + '_>> {
        if self.1.load(SeqCst) {
            Ok(Box::new(&*self.0))
        } else {
            Err(Error::Protocol("connection refused (test peer)".into()))
        }
    }
}

#[test]
fn a_wall_clock_set_back_does_not_let_a_long_gone_peer_in() {
    let _turn = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let [a, b, c] =
        [0, 1, 2].map(|i| Arc::new(Store::open(dirs[i].path(), Options::default()).unwrap()));
    // b holds something (a peer that holds nothing is never held: it cannot bring
    // anything back).
    b.partition(0).put(b"k", b"v").unwrap();
    let up = Arc::new(AtomicBool::new(true));
    let options = || ManagerOptions {
        interval: Duration::from_millis(30),
        backoff: Duration::from_millis(50),
        tombstone_grace: Some(Duration::from_millis(800)),
        ..ManagerOptions::default()
    };
    let start = || {
        let manager = Manager::start(Arc::clone(&a), options()).unwrap();
        manager.set_peer(
            "b",
            Arc::new(Flaky(Arc::clone(&b), Arc::clone(&up))),
            BTreeSet::from([0]),
        );
        manager.set_peer("c", Arc::new(Arc::clone(&c)), BTreeSet::from([0]));
        manager
    };
    let wait = |done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        done()
    };

    // b was last reached two minutes ago (longer than the grace and the clocks' slack of
    // a minute): its record is written with the clock two minutes back. c stays in
    // reach, so this store is not stale itself.
    set_wall_clock_offset_ms(-120_000);
    let manager = start();
    assert!(wait(&|| a.peer_last_exchange_unix_ms("b").is_some()));
    up.store(false, SeqCst);
    set_wall_clock_offset_ms(0);
    // c's next exchange records this store's last exchange at the right time.
    let right = a.last_exchange_unix_ms().unwrap() + 100_000;
    assert!(wait(&|| a
        .last_exchange_unix_ms()
        .is_some_and(|t| t > right)));

    // This node's manager restarts (it measures b's absence from the store's record),
    // and the wall clock is set back a day. b is back at once: by the wall clock it was
    // never away.
    manager.stop();
    set_wall_clock_offset_ms(-DAY_MS);
    let manager = start();
    up.store(true, SeqCst);
    let held = |name: &str| {
        let status = manager.status();
        status.peers.iter().any(|p| p.name == name && p.held)
    };
    let b_held = wait(&|| held("b"));
    let moved = manager.status().wall_clock_moved_ms;
    set_wall_clock_offset_ms(0);
    assert!((moved + DAY_MS).abs() < 5_000, "{moved}");
    assert!(b_held);
    assert!(!held("c"));
    manager.stop();
}

#[test]
fn a_wall_clock_set_back_does_not_refuse_versions_from_peers_with_the_right_time() {
    let _turn = CLOCK.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let real_now = || {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        ms << 16
    };
    set_wall_clock_offset_ms(-DAY_MS);
    let taken = store.partition(0).put_versioned(b"now", b"v", real_now());
    // The drift bound (an hour) still holds against the time that really passed.
    let ahead = real_now() + ((2 * 3_600_000) << 16);
    let refused = store.partition(0).put_versioned(b"ahead", b"v", ahead);
    set_wall_clock_offset_ms(0);
    taken.unwrap();
    assert!(
        matches!(refused, Err(Error::VersionAhead { .. })),
        "{refused:?}"
    );
    store.close().unwrap();
}
