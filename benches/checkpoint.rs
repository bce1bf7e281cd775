//! Checkpoint: time to persist the dirty buckets after 1k / 100k / 1M segment updates of
//! one partition, and after 1,000 updates spread over 256 partitions (each a few keys
//! big, so the checkpoint's cost must follow the change, not the partition count).

mod common;

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::Store;

fn checkpoint(c: &mut Criterion) {
    let mut group = c.benchmark_group("checkpoint");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(10));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), common::options()).unwrap();
    let mut offset = 0u32;
    for updates in [1_000u32, 100_000, 1_000_000] {
        group.throughput(Throughput::Elements(u64::from(updates)));
        group.bench_with_input(BenchmarkId::from_parameter(updates), &updates, |b, &n| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Spread updates over the segment space (untimed), then persist them.
                    let segments =
                        (0..n).map(|i| offset.wrapping_add(i).wrapping_mul(2_654_435_761));
                    store.bench_touch_segments(0, segments).unwrap();
                    offset = offset.wrapping_add(n);
                    let start = Instant::now();
                    store.checkpoint().unwrap();
                    total += start.elapsed();
                }
                total
            })
        });
    }
    group.finish();
    store.simulate_crash(); // the index was scribbled on; nothing to keep

    let mut group = c.benchmark_group("checkpoint_spread");
    group.sample_size(10);
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), common::options()).unwrap();
    // 256 partitions of 2,000 keys each, checkpointed (untimed).
    for p in 0..256u32 {
        let segments = (0..2_000u32).map(|i| i.wrapping_mul(2_654_435_761) ^ p);
        store.bench_touch_segments(p, segments).unwrap();
    }
    store.checkpoint().unwrap();
    let mut round = 0u32;
    group.bench_function("1000_updates_over_256_partitions", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                for p in 0..256u32 {
                    let segments = (0..4u32).map(|i| (round * 4 + i).wrapping_mul(40_503) ^ p);
                    store.bench_touch_segments(p, segments).unwrap();
                }
                round += 1;
                let start = Instant::now();
                store.checkpoint().unwrap();
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
    store.simulate_crash();
}

criterion_group!(benches, checkpoint);
criterion_main!(benches);
