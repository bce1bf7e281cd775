//! Index memory per partition against keys per partition, from 1 key to 1M: the curve
//! that shows a partition costs what its keys cost, up to the dense 17 MiB of a full
//! million-segment tree. Also the resident-set growth of the largest tree.
//! Run: cargo run --release --example memory

use merkle_index::bench_support::MemoryTree;
use merkle_index::{segment_of, value_hash, Options, Shape};

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
    println!("keys per partition | index bytes | bytes per key | resident growth");
    for keys in [1u64, 10, 100, 1_000, 10_000, 15_625, 100_000, 1_000_000] {
        let before = rss_kib();
        let mut tree = MemoryTree::new(shape);
        for i in 0..keys {
            let key = i.to_le_bytes();
            tree.apply(segment_of(&key, shape.segments), value_hash(&key));
        }
        let grown = rss_kib().saturating_sub(before);
        let bytes = tree.memory_bytes();
        println!(
            "{keys:>18} | {bytes:>11} | {:>13.1} | {grown} KiB",
            bytes as f64 / keys as f64
        );
    }
}
