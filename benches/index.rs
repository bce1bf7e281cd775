//! The index alone: updates/s applied to a 1M-segment tree (entry hash + XOR up 6 levels),
//! and the hashing one store write does on the writer's thread (what the write path
//! costs beyond sled's insert, before the hasher thread's share).

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

/// The hasher thread's share of a write: one update XORed into a tree that already holds
/// 300k keys (as the write bench finds it), at a random segment.
fn apply_overwrites(c: &mut Criterion) {
    let mut group = c.benchmark_group("index_apply");
    let defaults = Options::default();
    let shape = Shape::new(defaults.width, defaults.levels).unwrap();
    let segment = |i: u64| segment_of(&i.to_le_bytes(), shape.segments);
    let delta = |i: u64| value_hash(&i.to_le_bytes());
    let keys = 300_000u64;
    let mut tree = MemoryTree::new(shape);
    for i in 0..keys {
        tree.apply(segment(i), delta(i));
    }
    // Precomputed, so only the XORs are timed.
    let updates: Vec<(u32, merkle_index::Hash)> = (0..1u64 << 16)
        .map(|i| (segment(i.wrapping_mul(7919) % keys), delta(i + keys)))
        .collect();
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.bench_function("overwrite_300k", |b| {
        b.iter(|| {
            for &(s, d) in &updates {
                tree.apply(s, d);
            }
            tree.root()
        })
    });
    // New keys: entries added to their segments (mostly empty ones, a node inserted into
    // a sparse page), then removed again by the next iteration, as deletes would.
    let new: Vec<(u32, merkle_index::Hash)> = (keys..keys + (1 << 16))
        .map(|i| (segment(i), delta(i)))
        .collect();
    group.bench_function("new_300k", |b| {
        b.iter(|| {
            for &(s, d) in &new {
                tree.apply(s, d);
            }
            tree.root()
        })
    });
    group.finish();
}

/// The hashes a put computes before its sled insert: the key's segment, the value's hash,
/// the new entry hash, and for an overwrite the old record's entry hash (from its stored
/// header, so without re-hashing the old value).
fn writer_hashes(c: &mut Criterion) {
    let mut group = c.benchmark_group("writer_hashes");
    group.throughput(Throughput::Elements(1));
    for size in [100usize, 1024] {
        let mut value = vec![7u8; size];
        let mut version = 0u64;
        group.bench_with_input(BenchmarkId::new("overwrite", size), &size, |b, _| {
            b.iter(|| {
                version += 1;
                value[..8].copy_from_slice(&version.to_le_bytes());
                // A 16-byte key, as in the write bench.
                let mut key = [0u8; 16];
                key[..8].copy_from_slice(&(version % 100_000).to_le_bytes());
                let segment = segment_of(&key, 1 << 20);
                let hash = value_hash(&value);
                let old = entry_hash(0, &key, version - 1, false, hash);
                (segment, entry_hash(0, &key, version, false, hash) ^ old)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, updates, apply_overwrites, writer_hashes);
criterion_main!(benches);
