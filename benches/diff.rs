//! Diff of two 1M-segment trees differing in d = 0, 1, 100, 10,000 keys: time here;
//! bytes and round trips printed once per d (criterion measures time only).

mod common;

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use merkle_index::{diff, Store};

fn diffs(c: &mut Criterion) {
    let base = common::big_keys() / 5;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    common::loaded_store(da.path(), base);
    common::loaded_store(db.path(), base);
    let a = Store::open(da.path(), common::options()).unwrap();
    let b = Store::open(db.path(), common::options()).unwrap();
    let mut group = c.benchmark_group("diff");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    let mut written = 0u64;
    for d in [0u64, 1, 100, 1_000, 10_000] {
        while written < d {
            a.put_versioned(&common::key(base + written), b"only on a", 1)
                .unwrap();
            written += 1;
        }
        a.sync_index().unwrap();
        let report = diff(&a, &b, 0).unwrap();
        assert_eq!(report.differences.len() as u64, d);
        eprintln!(
            "diff d={d}: {} round trips, {} payload bytes ({} per differing key)",
            report.round_trips,
            report.payload_bytes,
            report.payload_bytes / d.max(1)
        );
        group.bench_with_input(BenchmarkId::from_parameter(d), &d, |bench, _| {
            bench.iter(|| diff(&a, &b, 0).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, diffs);
criterion_main!(benches);
