//! The index alone: updates/s applied to a 1M-segment tree (entry hash + XOR up 6 levels).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::bench_support::MemoryTree;
use merkle_index::{entry_hash, segment_of, value_hash, Options, Shape};

fn updates(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_update");
    let defaults = Options::default();
    let shape = Shape::new(defaults.width, defaults.levels).unwrap();
    let value = value_hash(&[7u8; 100]);
    for batch in [1_000u64, 100_000] {
        group.throughput(Throughput::Elements(batch));
        group.bench_with_input(
            BenchmarkId::new("hash_and_apply", batch),
            &batch,
            |b, &batch| {
                let mut tree = MemoryTree::new(shape);
                let mut version = 0u64;
                b.iter(|| {
                    for i in 0..batch {
                        version += 1;
                        let key = version.to_le_bytes();
                        let segment = segment_of(&key, shape.segments);
                        tree.apply(
                            segment,
                            entry_hash(0, &key, version, false, value)
                                ^ entry_hash(0, &key, i, false, value),
                        );
                    }
                    tree.root()
                })
            },
        );
    }
    group.finish();
}

criterion_group!(benches, updates);
criterion_main!(benches);
