//! Verify and rebuild throughput (keys/s) on 1M keys, versus a bare sled scan of the
//! same data.

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::Store;

fn scans(c: &mut Criterion) {
    let keys = common::big_keys();
    let dir = tempfile::tempdir().unwrap();
    common::loaded_store(dir.path(), keys);
    let mut group = c.benchmark_group("scan");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(keys));
    {
        let db = common::bare_sled(&dir.path().join("sled"));
        let data = db.open_tree("data").unwrap();
        group.bench_with_input(BenchmarkId::new("bare_sled_scan", keys), &keys, |b, _| {
            b.iter(|| data.iter().map(|kv| kv.unwrap().1.len()).sum::<usize>())
        });
    }
    let store = Store::open(dir.path(), common::options()).unwrap();
    group.bench_with_input(BenchmarkId::new("verify", keys), &keys, |b, _| {
        b.iter(|| assert!(store.verify(&mut |_| {}).unwrap().is_ok()))
    });
    group.bench_with_input(BenchmarkId::new("rebuild", keys), &keys, |b, _| {
        b.iter(|| store.rebuild(&mut |_| {}).unwrap())
    });
    group.finish();
    store.close().unwrap();
}

criterion_group!(benches, scans);
criterion_main!(benches);
