//! Write path: puts/s through the store versus bare sled, same keys, same sled config.
//!
//! Both start from 300k keys loaded untimed, so the store is measured in the steady state
//! of a checkpoint interval (most 16-segment regions already marked); `put_cold` measures
//! the worst case, the first write to each region after a checkpoint.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::Store;

const BATCH: u64 = 2_000;

fn puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group
        .sample_size(20)
        .measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH));
    for size in [100usize, 1024] {
        let value = vec![5u8; size];
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), common::options()).unwrap();
        let preload = common::big_keys() * 3 / 10;
        for i in 0..preload {
            store.put(&common::key(i), &value).unwrap();
        }
        let mut next = preload;
        group.bench_with_input(BenchmarkId::new("store", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters * BATCH {
                    store.put(&common::key(next), &value).unwrap();
                    next += 1;
                }
                start.elapsed()
            })
        });
        drop(store);
        let bare_dir = tempfile::tempdir().unwrap();
        let sled = common::bare_sled(bare_dir.path());
        let tree = sled.open_tree("data").unwrap();
        for i in 0..preload {
            tree.insert(common::key(i), value.as_slice()).unwrap();
        }
        let mut next = preload;
        group.bench_with_input(BenchmarkId::new("bare_sled", size), &size, |b, _| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters * BATCH {
                    tree.insert(common::key(next), value.as_slice()).unwrap();
                    next += 1;
                }
                start.elapsed()
            })
        });
    }
    group.finish();
}

/// The first write to every region after a checkpoint: each put also inserts a mark.
fn cold_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("put_cold");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH));
    let value = [5u8; 100];
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), common::options()).unwrap();
    let mut next = 0u64;
    group.bench_function("store_after_checkpoint/100", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                store.checkpoint().unwrap();
                let start = Instant::now();
                for _ in 0..BATCH {
                    store.put(&common::key(next), &value).unwrap();
                    next += 1;
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, puts, cold_puts);
criterion_main!(benches);
