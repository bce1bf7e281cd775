//! Open: clean reopen of a 1M-key, 1M-segment store (index ready) versus bare sled's open
//! of the same database; crash recovery after 1,000 writes versus a full rebuild.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use merkle_index::{Recovery, Store};

fn open(c: &mut Criterion) {
    let keys = common::big_keys();
    let dir = tempfile::tempdir().unwrap();
    common::loaded_store(dir.path(), keys);
    let mut group = c.benchmark_group("open");
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
    group.bench_with_input(
        BenchmarkId::new("crash_recovery_1k_writes", keys),
        &keys,
        |b, _| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let store = Store::open(dir.path(), common::options()).unwrap();
                    store.checkpoint().unwrap();
                    for _ in 0..1000 {
                        store
                            .put_versioned(&common::key(next), b"after the checkpoint", next + 1)
                            .unwrap();
                        next += 1;
                    }
                    store.flush().unwrap();
                    store.simulate_crash();
                    let store = Store::open(dir.path(), common::options()).unwrap();
                    assert!(matches!(
                        store.open_report().recovery,
                        Recovery::Regions { .. }
                    ));
                    total += store.open_report().duration;
                    store.close().unwrap();
                }
                total
            })
        },
    );
    group.bench_with_input(BenchmarkId::new("full_rebuild", keys), &keys, |b, _| {
        let store = Store::open(dir.path(), common::options()).unwrap();
        b.iter(|| store.rebuild(&mut |_| {}).unwrap());
        store.close().unwrap();
    });
    group.finish();
}

criterion_group!(benches, open);
criterion_main!(benches);
