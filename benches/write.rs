//! Write path: puts/s through the store versus bare sled, same keys, same sled config.

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::Store;

const BATCH: u64 = 2_000;

fn puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("put");
    group.sample_size(20).measurement_time(Duration::from_secs(8));
    group.throughput(Throughput::Elements(BATCH));
    for size in [100usize, 1024] {
        let value = vec![5u8; size];
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), common::options()).unwrap();
        let mut next = 0u64;
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
        let mut next = 0u64;
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

criterion_group!(benches, puts);
criterion_main!(benches);
