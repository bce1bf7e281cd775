//! A node's store with everything at once, as a real node runs: several threads
//! overwriting and deleting the same keys, replication messages carrying versions of
//! their own, a scrub purging tombstones as soon as it may, checkpoints every few
//! milliseconds, `verify` and now and then `rebuild` of the live store, and exchanges
//! with a replica that is written to as well (in process, and with the `net` feature
//! over TCP too, both at once), and partitions dropped now and then (a ring change;
//! writes to a partition being dropped are refused). When it stops, each index must be
//! exact, the replicas must converge, and a crash must recover the same roots.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use merkle_index::{sync, Error, Options, Record, Recovery, ScrubCursor, Store, SyncOptions};

const PARTITIONS: u32 = 6;
/// Few keys, so threads keep meeting on the same ones, and few segments (64 a tree,
/// below), so every segment takes the XOR of many keys' changes from several threads.
const KEYS: u64 = 200;

/// The replica's network key (with the `net` feature).
#[cfg_attr(not(feature = "net"), allow(dead_code))]
const SECRET: &[u8] = b"busy node test shared secret";

/// A small deterministic generator (splitmix64), one per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn options() -> Options {
    let mut o = common::small_options();
    o.channel_capacity = 16; // writers meet a full channel often
    o.checkpoint_interval = Duration::from_millis(3);
    o
}

/// Unwraps `result`, but for the refusal of a write to a partition being dropped.
fn unless_dropping<T>(result: Result<T, Error>) -> Option<T> {
    match result {
        Ok(v) => Some(v),
        Err(Error::PartitionDropping(_)) => None,
        Err(e) => panic!("{e}"),
    }
}

/// One write of a random kind to a random key: an overwrite, a delete, or a replication
/// message whose version is a little behind or ahead of the store's clock.
fn random_write(store: &Store, rng: &mut Rng, writer: u64) {
    let i = rng.below(KEYS);
    let id = (i % u64::from(PARTITIONS)) as u32;
    let partition = store.partition(id);
    let key = format!("key-{i}").into_bytes();
    let value = format!("w{writer}-{}", rng.next()).repeat(1 + rng.below(4) as usize);
    match rng.below(10) {
        0..=5 => {
            unless_dropping(partition.put(&key, value.as_bytes()));
        }
        6 | 7 => {
            unless_dropping(partition.delete(&key));
        }
        _ => {
            // About the store's clock (unix ms << 16), up to ~15 ms either side.
            let Some(now) = unless_dropping(partition.put(b"clock", b"")) else {
                return;
            };
            let version = now - (1 << 20) + rng.below(2 << 20);
            let record = if rng.below(4) == 0 {
                Record::tombstone(version)
            } else {
                Record::value(version, value.as_bytes())
            };
            // False when the stored record wins: as good an outcome as a write.
            unless_dropping(store.replicate(id, &key, &record));
        }
    }
}

/// Every record of every partition, for comparing replicas.
fn contents(store: &Store) -> Vec<(u32, Vec<u8>, Record)> {
    let mut out = Vec::new();
    for p in store.partitions() {
        for entry in store.partition(p).records() {
            let (key, record) = entry.unwrap();
            out.push((p, key, record));
        }
    }
    out
}

/// The replica served over TCP while `run` runs; returns what `run` returns.
#[cfg(feature = "net")]
fn with_server<T>(store: &Arc<Store>, run: impl FnOnce(&str) -> T) -> T {
    use merkle_index::net::{self, Accept, Key, ServeOptions, Stop};
    let key = Key::from_secret(SECRET).unwrap();
    let (listener, addr) = net::bind("127.0.0.1:0").unwrap();
    let stop = Stop::new(addr);
    let server = std::thread::spawn({
        let (store, key, stop) = (Arc::clone(store), key.clone(), stop.clone());
        move || {
            // Every partition, including one the replica's own writer has not reached
            // yet when the first exchange pushes to it.
            let options = ServeOptions {
                accept: Accept::Listed((0..PARTITIONS).collect()),
                ..ServeOptions::default()
            };
            net::serve(store, listener, key, options, &stop, Arc::new(|_| {}))
        }
    });
    let out = run(&addr.to_string());
    stop.trigger();
    server.join().unwrap().unwrap();
    out
}

#[cfg(not(feature = "net"))]
fn with_server<T>(_: &Arc<Store>, run: impl FnOnce(&str) -> T) -> T {
    run("")
}

/// Exchanges with the replica over TCP until `stop`; keys repaired (none without the
/// `net` feature).
fn exchange_over_tcp(a: &Store, addr: &str, stop: &AtomicBool) -> u64 {
    #[cfg(feature = "net")]
    {
        let key = merkle_index::net::Key::from_secret(SECRET).unwrap();
        let b = merkle_index::net::Client::connect(addr, &key, Duration::from_secs(10)).unwrap();
        let mut repaired = 0;
        while !stop.load(Relaxed) {
            for p in 0..PARTITIONS {
                if let Some(report) = unless_dropping(sync(a, &b, p, &SyncOptions::default())) {
                    repaired += report.repaired_local + report.repaired_remote;
                }
            }
        }
        repaired
    }
    #[cfg(not(feature = "net"))]
    {
        let _ = (a, addr, stop);
        0
    }
}

fn roots(store: &Store) -> Vec<(u32, merkle_index::Hash)> {
    store
        .partitions()
        .into_iter()
        .map(|p| (p, store.root(p)))
        .collect()
}

#[test]
fn a_busy_node_keeps_its_index_exact_and_converges_with_its_replica() {
    let writes_each: u64 = std::env::var("MERKLE_BUSY_WRITES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3_000);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(dir_a.path(), options()).unwrap();
    let b = Arc::new(Store::open(dir_b.path(), options()).unwrap());
    let stop = AtomicBool::new(false);
    let (repaired, purged) = (AtomicU64::new(0), AtomicU64::new(0));
    let (mut live_verifies, mut drops) = (0, 0);
    let over_tcp = with_server(&b, |addr| {
        std::thread::scope(|s| {
            let writers: Vec<_> = (0..4u64)
                .map(|w| {
                    // Three writers on this node, one on the replica.
                    let store = if w < 3 { &a } else { &b };
                    s.spawn(move || {
                        let mut rng = Rng(w);
                        for _ in 0..writes_each {
                            random_write(store, &mut rng, w);
                        }
                    })
                })
                .collect();
            // Exchanges, both ways, over every partition: in process, and over TCP at the
            // same time.
            let tcp = s.spawn(|| exchange_over_tcp(&a, addr, &stop));
            s.spawn(|| {
                while !stop.load(Relaxed) {
                    for p in 0..PARTITIONS {
                        let synced = sync(&a, &*b, p, &SyncOptions::default());
                        if let Some(report) = unless_dropping(synced) {
                            let both = report.repaired_local + report.repaired_remote;
                            repaired.fetch_add(both, Relaxed);
                        }
                    }
                }
            });
            // Scrubs that purge every tombstone they pass, on both replicas.
            for store in [&a, &*b] {
                let (stop, purged) = (&stop, &purged);
                s.spawn(move || {
                    let mut cursor: Option<ScrubCursor> = None;
                    while !stop.load(Relaxed) {
                        let page = store
                            .scrub(cursor.as_ref(), 50, Some(Duration::ZERO))
                            .unwrap();
                        assert!(page.problems.is_empty(), "{:?}", page.problems);
                        purged.fetch_add(page.purged, Relaxed);
                        cursor = page.next;
                    }
                });
            }
            // verify of the live store (writes that race it must not show as problems),
            // and now and then a rebuild (writes wait for it, then go on).
            let verifier = s.spawn(|| {
                let mut runs = 0;
                while !stop.load(Relaxed) {
                    let report = a.verify(&mut |_| {}).unwrap();
                    assert!(report.is_ok(), "verify under writes: {:?}", report.problems);
                    runs += 1;
                    if runs % 4 == 0 {
                        a.rebuild(&mut |_| {}).unwrap();
                    }
                }
                runs
            });
            // A ring change now and then: one of this node's partitions dropped (the
            // exchanges bring it back).
            let dropper = s.spawn(|| {
                let mut drops = 0;
                while !stop.load(Relaxed) {
                    std::thread::sleep(Duration::from_millis(20));
                    a.drop_partition(drops % PARTITIONS).unwrap();
                    drops += 1;
                }
                drops
            });
            for w in writers {
                w.join().unwrap();
            }
            stop.store(true, Relaxed);
            live_verifies = verifier.join().unwrap();
            drops = dropper.join().unwrap();
            tcp.join().unwrap()
        })
    });
    let (repaired, purged) = (repaired.into_inner(), purged.into_inner());
    eprintln!(
        "{live_verifies} verifies of the live store, {repaired} keys repaired \
         ({over_tcp} over TCP), {purged} tombstones purged, {drops} partitions dropped"
    );
    assert!(live_verifies > 0, "verify never ran while the writers did");
    assert!(
        drops > 0,
        "no partition was dropped while the writers wrote"
    );
    assert!(
        repaired > 0 && purged > 0,
        "exchanges and purges must race the writes"
    );

    if cfg!(feature = "net") {
        assert!(over_tcp > 0, "no exchange over TCP repaired anything");
    }
    let b = Arc::into_inner(b).unwrap();
    for store in [&a, &b] {
        store.sync_index().unwrap();
        let report = store.verify(&mut |_| {}).unwrap();
        assert!(report.is_ok(), "{:?}", report.problems);
    }
    // Quiet now (both indexes current, above): one round of exchanges makes the
    // replicas equal.
    for p in 0..PARTITIONS {
        sync(&a, &b, p, &SyncOptions::default()).unwrap();
    }
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    assert_eq!(roots(&a), roots(&b));
    let held = contents(&a);
    assert_eq!(held, contents(&b));
    assert!(
        held.iter().filter(|(_, k, _)| k != b"clock").count() > (KEYS / 4) as usize,
        "the workload left too few keys to mean much: {}",
        held.len()
    );

    // A crash right now recovers the same index.
    a.flush().unwrap();
    let before = roots(&a);
    a.simulate_crash();
    let a = Store::open(dir_a.path(), options()).unwrap();
    assert!(matches!(
        a.open_report().recovery,
        Recovery::Regions { .. } | Recovery::FullRebuild { .. }
    ));
    assert_eq!(roots(&a), before);
    let report = a.verify(&mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    a.close().unwrap();
    b.close().unwrap();
}

/// Rounds of a busy store, each ended by a crash at a random moment of its epoch: three
/// writers, exchanges with a replica that a fourth writes to, and a thread that now and
/// then drops a partition (which the writers fill again at once), purges tombstones (by
/// a call, or a scrub), rebuilds the index or checkpoints. The checkpoints come only
/// from that thread, so a crash usually lands with writes of several kinds, before and
/// after a drop, not yet in any checkpoint. After each crash the recovered index must
/// match the roots before it and the data (`verify`). Two partitions that nobody writes
/// or drops fill their trees (1,024 segments each), so that recovery re-hashes the
/// marked regions rather than choosing a full scan, which would hide a missing mark.
#[test]
fn crashes_amid_writes_drops_and_purges_recover_an_exact_index() {
    let rounds: u64 = std::env::var("MERKLE_BUSY_CRASH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let mut o = options();
    o.levels = 5;
    o.checkpoint_interval = Duration::from_secs(3600);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), o.clone()).unwrap();
    for i in 0..6_000u32 {
        let key = format!("quiet-{i}");
        store
            .partition(PARTITIONS + i % 2)
            .put(key.as_bytes(), b"q")
            .unwrap();
    }
    store.close().unwrap();
    let replica_dir = tempfile::tempdir().unwrap();
    let replica = Store::open(replica_dir.path(), o.clone()).unwrap();
    let (mut drops, mut by_regions, repaired) = (0, 0, AtomicU64::new(0));
    for round in 0..rounds {
        let store = Store::open(dir.path(), o.clone()).unwrap();
        let report = store.verify(&mut |_| {}).unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
        let writing = AtomicU64::new(4);
        std::thread::scope(|s| {
            for w in 0..4u64 {
                // Three writers here, one on a replica that exchanges with this store.
                let (target, writing) = (if w < 3 { &store } else { &replica }, &writing);
                s.spawn(move || {
                    let mut rng = Rng(round * 8 + w);
                    for _ in 0..300 {
                        random_write(target, &mut rng, w);
                    }
                    writing.fetch_sub(1, Relaxed);
                });
            }
            s.spawn(|| {
                while writing.load(Relaxed) > 0 {
                    for p in 0..PARTITIONS {
                        let synced = sync(&store, &replica, p, &SyncOptions::default());
                        if let Some(report) = unless_dropping(synced) {
                            repaired.fetch_add(report.repaired_local, Relaxed);
                        }
                    }
                }
            });
            let mut rng = Rng(round * 8 + 7);
            for action in 0..6 {
                std::thread::sleep(Duration::from_micros(rng.below(3_000)));
                let p = rng.below(u64::from(PARTITIONS)) as u32;
                // The last a drop, which the writers then fill again in the same epoch.
                match if action == 5 { 0 } else { rng.below(6) } {
                    0 | 1 => {
                        store.drop_partition(p).unwrap();
                        drops += 1;
                    }
                    2 => {
                        store.purge_tombstones(p, Duration::ZERO).unwrap();
                    }
                    3 => {
                        let page = store.scrub(None, 40, Some(Duration::ZERO)).unwrap();
                        assert!(page.problems.is_empty(), "{:?}", page.problems);
                    }
                    4 => {
                        store.rebuild(&mut |_| {}).unwrap();
                    }
                    _ => {
                        store.checkpoint().unwrap();
                    }
                }
            }
        });
        store.flush().unwrap();
        store.sync_index().unwrap();
        let before = roots(&store);
        store.simulate_crash();

        let store = Store::open(dir.path(), o.clone()).unwrap();
        if matches!(store.open_report().recovery, Recovery::Regions { .. }) {
            by_regions += 1;
        }
        assert_eq!(
            roots(&store),
            before,
            "round {round}: {:?}",
            store.open_report()
        );
        let report = store.verify(&mut |_| {}).unwrap();
        assert!(report.is_ok(), "round {round}: {:?}", report.problems);
        if round % 3 == 2 {
            store.close().unwrap(); // and a clean open next round
        } else {
            store.simulate_crash();
        }
    }
    assert!(drops > 0, "no partition was dropped");
    assert!(repaired.into_inner() > 0, "no exchange repaired this store");
    assert!(
        by_regions * 2 > rounds,
        "only {by_regions} of {rounds} crashes recovered by re-hashing marked regions"
    );
}
