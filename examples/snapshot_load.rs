//! Loads a store's snapshot file the way a clean open does (map, checksum, decode every
//! partition), ITERS times (default 40), and prints the load's wall time. The store must
//! be closed. With ITERS=1 the loaded trees are never freed, so the process does nothing
//! else of note: under `valgrind --tool=callgrind` its instruction count is the load's,
//! a figure this shared machine's noise cannot blur.
//! Run: DIR=path/to/store cargo run --release --example snapshot_load

use merkle_index::bench_support::load_snapshot;
use merkle_index::{Options, Shape};

fn main() {
    let dir: std::path::PathBuf = std::env::var("DIR")
        .expect("set DIR to a closed store's directory")
        .into();
    let iters: usize = std::env::var("ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40)
        .max(1);
    let defaults = Options::default();
    let shape = Shape::new(defaults.width, defaults.levels).unwrap();
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let start = std::time::Instant::now();
        let trees = load_snapshot(&dir, shape).unwrap_or_else(|e| {
            eprintln!("cannot load the snapshot in {}: {e}", dir.display());
            std::process::exit(1)
        });
        times.push(start.elapsed().as_secs_f64() * 1e3);
        if iters == 1 {
            println!("{} partitions", trees.partitions());
            std::mem::forget(trees);
        }
    }
    times.sort_by(f64::total_cmp);
    println!(
        "snapshot load: min {:.1} ms, median {:.1} ms over {iters}",
        times[0],
        times[iters / 2]
    );
}
