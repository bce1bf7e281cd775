//! Versions from skewed clocks and callers: the store's clock stays above every version it
//! accepts, refuses those too far ahead, and tombstone grace runs on local time.

mod common;

use std::time::Duration;

use common::{hlc_now_plus, raw_data_key, small_options, with_sled};
use merkle_index::{sync, Error, Store, SyncOptions};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(dir.path(), small_options()).unwrap()
}

fn synced(stores: &[&Store]) {
    for s in stores {
        s.sync_index().unwrap();
    }
}

#[test]
fn a_repair_from_a_clock_ahead_moves_the_clock_so_the_next_local_put_wins() {
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, ahead, c) = (open(&dirs[0]), open(&dirs[1]), open(&dirs[2]));
    // The peer's clock runs 60 s ahead: its write carries a version from the future.
    let future = hlc_now_plus(Duration::from_secs(60));
    ahead
        .put_versioned(b"cart", b"from the future", future)
        .unwrap();
    synced(&[&a, &ahead]);
    let report = sync(&a, &ahead, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.repaired_local, 1);
    // A later local write must be newer than anything this store has accepted.
    let local = a.put(b"cart", b"local, later").unwrap();
    assert!(local > future, "local put {local} <= repaired {future}");
    synced(&[&a]);
    for other in [&ahead, &c] {
        synced(&[other]);
        sync(&a, other, 0, &SyncOptions::default()).unwrap();
    }
    for s in [&a, &ahead, &c] {
        assert_eq!(s.get(b"cart").unwrap(), Some(b"local, later".to_vec()));
    }
    // The checkpointed clock includes the repaired version: after a crash the clock
    // comes back above it.
    a.checkpoint().unwrap();
    a.simulate_crash();
    let a = open(&dirs[0]);
    assert!(a.put(b"other", b"v").unwrap() > local);
}

#[test]
fn versions_beyond_the_drift_are_refused_and_the_clock_never_saturates() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    match store.put_versioned(b"k", b"v", u64::MAX - 1) {
        Err(Error::VersionAhead { version, limit }) => {
            assert_eq!(version, u64::MAX - 1);
            assert!(limit < hlc_now_plus(Duration::from_secs(3601)));
        }
        other => panic!("expected VersionAhead, got {other:?}"),
    }
    let far = hlc_now_plus(Duration::from_secs(2 * 3600));
    assert!(matches!(
        store.partition(0).delete_versioned(b"k", far),
        Err(Error::VersionAhead { .. })
    ));
    // Within the drift is fine, and later versions keep increasing past it.
    let near = hlc_now_plus(Duration::from_secs(600));
    store.put_versioned(b"k", b"v", near).unwrap();
    let a = store.put(b"k", b"w").unwrap();
    let b = store.put(b"k", b"x").unwrap();
    assert!(near < a && a < b && b < u64::MAX / 2);
}

#[test]
fn a_repair_too_far_ahead_is_skipped_and_reported_not_applied() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&da);
    // The remote accepts a day of drift; this store only the default hour.
    let lax = small_options().max_clock_drift(Duration::from_secs(86_400));
    let b = Store::open(db.path(), lax).unwrap();
    let far = hlc_now_plus(Duration::from_secs(5 * 3600));
    b.put_versioned(b"skewed", b"v", far).unwrap();
    b.put_versioned(b"fine", b"v", 7).unwrap();
    synced(&[&a, &b]);
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.refused_local, 1, "{report:?}");
    assert_eq!(report.repaired_local, 1, "{report:?}");
    assert_eq!(a.get(b"skewed").unwrap(), None);
    assert_eq!(a.get(b"fine").unwrap(), Some(b"v".to_vec()));
    assert!(a.put(b"after", b"v").unwrap() < far);
}

#[test]
fn tombstone_grace_runs_from_when_this_store_learned_of_the_delete() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    // A caller's small version must not make the tombstone look ancient...
    store.partition(0).delete_versioned(b"small", 5).unwrap();
    // ...nor a large one make it immortal.
    let near = hlc_now_plus(Duration::from_secs(1800));
    store.partition(0).delete_versioned(b"large", near).unwrap();
    assert_eq!(
        store
            .purge_tombstones(0, Duration::from_secs(3600))
            .unwrap(),
        0
    );
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        store
            .purge_tombstones(0, Duration::from_millis(10))
            .unwrap(),
        2
    );
    assert_eq!(store.count_keys(0).unwrap(), 0);
}

#[test]
fn a_repaired_tombstone_starts_its_grace_on_arrival() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a, b) = (open(&da), open(&db));
    b.partition(0).delete_versioned(b"gone", 3).unwrap();
    synced(&[&a, &b]);
    std::thread::sleep(Duration::from_millis(300));
    sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    // b has held it for 300 ms, a only just now.
    let grace = Duration::from_millis(250);
    assert_eq!(a.purge_tombstones(0, grace).unwrap(), 0);
    assert_eq!(b.purge_tombstones(0, grace).unwrap(), 1);
}

#[test]
fn a_format_1_store_migrates_its_tombstones_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.put(b"live", b"value").unwrap();
    store.partition(0).delete_versioned(b"dead", 5).unwrap();
    store.sync_index().unwrap();
    let root = store.root(0);
    store.close().unwrap();
    let segments = 64;
    // Rewrite the store as format 1 wrote it: no deletion time in the tombstone.
    with_sled(dir.path(), |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("format", &1u32.to_le_bytes())
            .unwrap();
        let data = db.open_tree("data").unwrap();
        let key = raw_data_key(0, b"dead", segments);
        let v2 = data.get(&key).unwrap().unwrap();
        let mut v1 = v2[..26].to_vec();
        v1[0] = 1;
        data.insert(&key, v1).unwrap();
    });
    let store = open(&dir);
    assert_eq!(store.root(0), root, "entry hashes do not change");
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // The migration time is the deletion time: no immediate purge.
    assert_eq!(
        store
            .purge_tombstones(0, Duration::from_secs(3600))
            .unwrap(),
        0
    );
    store.close().unwrap();
    with_sled(dir.path(), |db| {
        let format = db.open_tree("meta").unwrap().get("format").unwrap();
        assert_eq!(format.as_deref(), Some(&2u32.to_le_bytes()[..]));
        let raw = db.open_tree("data").unwrap();
        let dead = raw.get(raw_data_key(0, b"dead", segments)).unwrap();
        assert_eq!(dead.map(|d| (d[0], d.len())), Some((2, 34)));
    });
    // A store from a newer format is refused with a clear error.
    with_sled(dir.path(), |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("format", &9u32.to_le_bytes())
            .unwrap();
    });
    let err = Store::open(dir.path(), small_options()).unwrap_err();
    assert!(
        matches!(err, Error::UnsupportedFormat { found: 9, .. }),
        "{err}"
    );
}

/// A version from `ago` in the past, on the store's clock.
fn hlc_ago(ago: Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    ((now - ago).as_millis() as u64) << 16
}

/// With a tombstone grace, a sync does not hand a tombstone older than the grace back to
/// a replica that purged it (it would start its grace again there, and the two would
/// pass it back and forth forever); a younger one is still copied.
#[test]
fn a_purged_tombstone_past_the_grace_is_not_handed_back() {
    let dirs: Vec<_> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let (a, b) = (open(&dirs[0]), open(&dirs[1]));
    let deleted = hlc_ago(Duration::from_secs(10));
    for s in [&a, &b] {
        s.partition(0)
            .put_versioned(b"gone", b"v", deleted - 1)
            .unwrap();
        s.partition(0).delete_versioned(b"gone", deleted).unwrap();
        // One version on both (two `put`s a millisecond apart would differ).
        s.partition(0)
            .put_versioned(b"kept", b"v", deleted)
            .unwrap();
    }
    b.partition(0).put(b"only on b", b"v").unwrap();
    assert_eq!(a.purge_tombstones(0, Duration::ZERO).unwrap(), 1);
    synced(&[&a, &b]);
    let past = SyncOptions {
        tombstone_grace: Some(Duration::from_secs(5)),
        ..SyncOptions::default()
    };
    let report = sync(&a, &b, 0, &past).unwrap();
    assert_eq!(
        (report.differences, report.expired, report.repaired_local),
        (2, 1, 1),
        "{report:?}"
    );
    assert_eq!(a.partition(0).get_record(b"gone").unwrap(), None);
    // Ten seconds old is within a grace of a minute: copied, as without a grace.
    synced(&[&a]);
    let within = SyncOptions {
        tombstone_grace: Some(Duration::from_secs(60)),
        ..SyncOptions::default()
    };
    let report = sync(&a, &b, 0, &within).unwrap();
    assert_eq!(
        (report.expired, report.repaired_local),
        (0, 1),
        "{report:?}"
    );
    assert!(
        a.partition(0)
            .get_record(b"gone")
            .unwrap()
            .unwrap()
            .tombstone
    );
}

/// A replication message decides against the record it read and writes only if that
/// record is still there: a local write landing in between (newer than the message) is
/// never overwritten. One thread puts (store clock versions) and reads each key back;
/// another replicates messages one version past the newest put it has seen, so each is
/// newer than what it read and older than the next put. A read after a put must never
/// find an older version than the put's.
#[test]
fn a_replication_message_never_overwrites_a_newer_write_made_meanwhile() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let newest = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let (mut overwritten, mut written) = (0, 0u64);
    std::thread::scope(|s| {
        let replicator = s.spawn(|| {
            let mut written = 0u64;
            while !stop.load(Relaxed) {
                let version = newest.load(Relaxed) + 1;
                let record = merkle_index::Record::value(version, b"message");
                written += u64::from(store.replicate(0, b"key", &record).unwrap());
            }
            written
        });
        for _ in 0..50_000 {
            let version = store.put(b"key", b"local").unwrap();
            newest.fetch_max(version, Relaxed);
            let stored = store.partition(0).get_record(b"key").unwrap().unwrap();
            overwritten += u32::from(stored.version < version);
        }
        stop.store(true, Relaxed);
        written = replicator.join().unwrap();
    });
    assert!(written > 0, "no message was newer than what it found");
    assert_eq!(overwritten, 0, "puts overwritten by older messages");
}
