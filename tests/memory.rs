//! `index_memory_bytes` tells the truth: a counting allocator measures what a tree
//! really holds, from one segment to a full million, and the tree's own figure stays
//! within 20% of it. Also the dense bound: a full tree costs no more than 16.1 MiB, its
//! 16 MiB of segment hashes and the levels held above them (the segments' parents are
//! derived, not held).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering::Relaxed};

use merkle_index::bench_support::MemoryTree;
use merkle_index::{value_hash, Options, Shape};

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counter only
// records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Relaxed);
        // SAFETY: same layout as the caller's, as GlobalAlloc requires.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Relaxed);
        // SAFETY: `ptr` came from `alloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Segments spread like key placement does (a multiplicative hash of the index).
fn segment(i: u64, segments: u64) -> u32 {
    (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % segments) as u32
}

#[test]
fn reported_memory_matches_allocations_from_sparse_to_full() {
    let defaults = Options::default();
    let shape = Shape::new(defaults.width, defaults.levels).unwrap();
    for keys in [1u64, 100, 10_000, 200_000, 2_000_000] {
        let before = LIVE.load(Relaxed);
        let mut tree = MemoryTree::new(shape);
        for i in 0..keys {
            tree.apply(segment(i, shape.segments), value_hash(&i.to_le_bytes()));
        }
        // The tree's own struct is on the stack; only its heap is counted.
        let real = (LIVE.load(Relaxed) - before) as f64;
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
