//! A wall clock that jumps while a store is open does not purge tombstones early: set
//! forward a day, every tombstone would look past a grace of an hour, and the values
//! they deleted could come back from a replica that missed the deletes. Ages run at
//! most as fast as real time since open (the scrub's purges and `purge_tombstones`
//! alike); set back, purges wait, never hasten.
//!
//! Alone in its binary: the wall clock's offset is process-wide.

use std::time::Duration;

use merkle_index::bench_support::set_wall_clock_offset_ms;
use merkle_index::{Options, Store};

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
