//! `index_memory_bytes` tells the truth: a counting allocator measures what a tree
//! really holds, from one segment to a full million, and the tree's own figure stays
//! within 20% of it. Also the dense bound: a full tree costs no more than 16.1 MiB, its
//! 16 MiB of segment hashes and the levels held above them (the segments' parents are
//! derived, not held).

use merkle_index::bench_support::{CountingAllocator, MemoryTree};
use merkle_index::{value_hash, Options, Shape};

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

/// Segments spread like key placement does (a multiplicative hash of the index).
fn segment(i: u64, segments: u64) -> u32 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % segments) as u32
}

#[test]
fn reported_memory_matches_allocations_from_sparse_to_full() {
    let defaults = Options::default();
    let shape = Shape::new(defaults.width, defaults.levels).unwrap();
    for keys in [1u64, 100, 10_000, 200_000, 2_000_000] {
        let before = CountingAllocator::live_bytes();
        let mut tree = MemoryTree::new(shape);
        for i in 0..keys {
            tree.apply(segment(i, shape.segments), value_hash(&i.to_le_bytes()));
        }
        // The tree's own struct is on the stack; only its heap is counted.
        let real = (CountingAllocator::live_bytes() - before) as f64;
        let reported = tree.memory_bytes() as f64;
        assert!(
            (0.8..=1.2).contains(&(reported / real)),
            "{keys} keys: reported {reported} bytes, allocated {real}"
        );
        if keys == 2_000_000 {
            // 86% of segments non-zero: every level is flat, as in a dense tree.
            assert!(reported <= 16.1 * 1024.0 * 1024.0, "{reported}");
        }
        drop(tree);
    }
}
