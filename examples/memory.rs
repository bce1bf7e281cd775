//! Resident memory of the index: one 1M-segment tree, measured as the growth of the
//! process's resident set while a store with one written partition opens and fills its
//! tree. Run: cargo run --release --example memory

use merkle_index::bench_support::MemoryTree;
use merkle_index::{Options, Shape, Store};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|n| n.parse().ok()))
        })
        .unwrap_or(0)
}

fn main() {
    let options = Options::default();
    let shape = Shape::new(options.width, options.levels).unwrap();

    let before = rss_kib();
    let mut tree = MemoryTree::new(shape);
    // Touch every segment so every page is resident.
    for s in 0..shape.segments as u32 {
        tree.apply(s, merkle_index::value_hash(&s.to_le_bytes()));
    }
    let after = rss_kib();
    println!(
        "one {}-segment tree: {:.1} MiB allocated, resident set grew {:.1} MiB (root {})",
        shape.segments,
        tree.memory_bytes() as f64 / 1048576.0,
        (after - before) as f64 / 1024.0,
        tree.root()
    );

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), options).unwrap();
    for p in 0..4u32 {
        store
            .partition(p)
            .put(b"one key", b"makes the partition's tree")
            .unwrap();
    }
    store.sync_index().unwrap();
    println!(
        "store with 4 partitions: index {:.1} MiB ({:.1} MiB per tree)",
        store.index_memory_bytes() as f64 / 1048576.0,
        store.index_memory_bytes() as f64 / 4.0 / 1048576.0
    );
}
