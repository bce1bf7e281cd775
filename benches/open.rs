//! Open: clean reopen of a 1M-key store of 1M-segment trees (index ready) versus bare
//! sled's open of the same database; crash recovery after 1,000 writes versus a full
//! rebuild. Each in two shapes: 1 partition, and 64 partitions of 15,625 keys (writes
//! spread over all of them). The store reads its snapshot while sled opens, so the
//! crash recovery is also timed as the whole `Store::open` call (`_whole_open`).

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use merkle_index::{Recovery, Store};

fn open(c: &mut Criterion) {
    for partitions in [1u32, 64] {
        open_shape(c, partitions);
    }
}

fn open_shape(c: &mut Criterion, partitions: u32) {
    let keys = common::big_keys();
    let dir = tempfile::tempdir().unwrap();
    common::loaded_partitions(dir.path(), keys, partitions);
    let mut group = c.benchmark_group(format!("open_p{partitions}"));
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(15));

    group.bench_with_input(BenchmarkId::new("bare_sled", keys), &keys, |b, _| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let db = common::bare_sled(&dir.path().join("sled"));
                total += start.elapsed();
                drop(db);
            }
            total
        })
    });
    group.bench_with_input(BenchmarkId::new("store_clean", keys), &keys, |b, _| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let store = Store::open(dir.path(), common::options()).unwrap();
                total += start.elapsed();
                assert_eq!(store.open_report().recovery, Recovery::Snapshot);
                store.close().unwrap();
            }
            total
        })
    });
    // Index-ready time beyond sled's own open, as reported by the store itself.
    group.bench_with_input(
        BenchmarkId::new("index_ready_after_sled", keys),
        &keys,
        |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = Store::open(dir.path(), common::options()).unwrap();
                    total += store.open_report().duration;
                    store.close().unwrap();
                }
                total
            })
        },
    );
    let mut next = keys;
    // 1,000 writes on the 1M-key store (a proportional 20 in the --test smoke run).
    let writes = (keys / 1000).max(1);
    // Checkpoint, the writes, a crash, and the reopen; returns the reopen's time as the
    // store reports it (after sled's own open) or the whole `Store::open` call.
    let mut crash_and_reopen = |whole: bool| {
        let store = Store::open(dir.path(), common::options()).unwrap();
        store.checkpoint().unwrap();
        for _ in 0..writes {
            let p = (next % u64::from(partitions)) as u32;
            store
                .partition(p)
                .put_versioned(&common::key(next), b"after the checkpoint", next + 1)
                .unwrap();
            next += 1;
        }
        store.flush().unwrap();
        store.simulate_crash();
        let start = Instant::now();
        let store = Store::open(dir.path(), common::options()).unwrap();
        let took = start.elapsed();
        assert!(matches!(
            store.open_report().recovery,
            Recovery::Regions { .. }
        ));
        let reported = store.open_report().duration;
        store.close().unwrap();
        if whole {
            took
        } else {
            reported
        }
    };
    for (name, whole) in [("", false), ("_whole_open", true)] {
        group.bench_with_input(
            BenchmarkId::new(format!("crash_recovery_{writes}_writes{name}"), keys),
            &keys,
            |b, _| b.iter_custom(|iters| (0..iters).map(|_| crash_and_reopen(whole)).sum()),
        );
    }
    // The fallback the regions avoid: the same crash, but with a mark over the whole
    // tree (written into sled as FORMAT.md lays it out), so open rebuilds from all data.
    group.bench_with_input(
        BenchmarkId::new("crash_full_rebuild", keys),
        &keys,
        |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = Store::open(dir.path(), common::options()).unwrap();
                    // Marks count only if their epoch is after the last checkpoint's.
                    let epoch = store.checkpoint().unwrap().epoch + 1;
                    store.simulate_crash();
                    {
                        // sled's background flusher lets go of its lock a moment after a drop.
                        let db = (0..100)
                            .find_map(|_| {
                                let config = sled::Config::new().path(dir.path().join("sled"));
                                config.open().ok().or_else(|| {
                                    std::thread::sleep(Duration::from_millis(20));
                                    None
                                })
                            })
                            .expect("sled stays locked after the crash");
                        // A mark over every tree, as FORMAT.md lays it out.
                        for p in 0..partitions {
                            let mut mark = epoch.to_be_bytes().to_vec();
                            mark.extend_from_slice(&p.to_be_bytes());
                            mark.extend_from_slice(&[0; 4]); // first segment 0
                            let count = (1u32 << 20).to_le_bytes();
                            db.open_tree("marks").unwrap().insert(mark, &count).unwrap();
                        }
                        db.flush().unwrap();
                    }
                    let store = Store::open(dir.path(), common::options()).unwrap();
                    assert!(matches!(
                        store.open_report().recovery,
                        Recovery::FullRebuild { .. }
                    ));
                    total += store.open_report().duration;
                    store.close().unwrap();
                }
                total
            })
        },
    );
    group.bench_with_input(BenchmarkId::new("rebuild_warm", keys), &keys, |b, _| {
        let store = Store::open(dir.path(), common::options()).unwrap();
        b.iter(|| store.rebuild(&mut |_| {}).unwrap());
        store.close().unwrap();
    });
    group.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
