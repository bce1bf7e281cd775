//! Crash recovery against a full rebuild, for a store of many partitions: loads KEYS keys
//! (default 1M, 100 B values) over PARTITIONS partitions (default 64), checkpoints, writes
//! WRITES more (default 1,000) spread over every partition, crashes, reopens, then forces
//! a full rebuild of the same store. Set DIR to reuse a loaded store between runs (each
//! run then first prints how long the index took to open from the last run's clean close).
//! Each open is timed twice: the index's own part, after sled's open, as the store
//! reports it, and the whole `Store::open` call.
//! Run: cargo run --release --example recovery

use std::time::{Duration, Instant};

use merkle_index::{Options, Recovery, Store};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn options() -> Options {
    Options::default().checkpoint_interval(Duration::from_secs(3600))
}

fn main() {
    let (keys, partitions, writes) = (
        var("KEYS", 1_000_000),
        var("PARTITIONS", 64),
        var("WRITES", 1_000),
    );
    let temp = tempfile::tempdir().unwrap();
    let dir = std::env::var("DIR").map_or_else(|_| temp.path().to_path_buf(), Into::into);
    let fresh = !dir.join("sled").exists();
    let opened = Instant::now();
    let store = Store::open(&dir, options()).unwrap();
    if !fresh {
        println!(
            "open of the store as last left: {:?}, index ready {:?} after sled's open, {:?} in all",
            store.open_report().recovery,
            store.open_report().duration,
            opened.elapsed()
        );
    }
    let value = [7u8; 100];
    if fresh {
        for i in 0..keys {
            let p = (i % partitions) as u32;
            store
                .partition(p)
                .put_versioned(&i.to_be_bytes(), &value, i + 1)
                .unwrap();
        }
    }
    store.checkpoint().unwrap();
    for i in 0..writes {
        let p = (i % partitions) as u32;
        store
            .partition(p)
            .put(&(keys + i).to_be_bytes(), &value)
            .unwrap();
    }
    store.flush().unwrap();
    store.simulate_crash();
    let opened = Instant::now();
    let store = Store::open(&dir, options()).unwrap();
    let all = opened.elapsed();
    let regions = store.open_report().duration;
    println!(
        "crash recovery: {:?}, index ready {regions:?} after sled's open, {all:?} in all",
        store.open_report().recovery
    );
    let rebuilt = Instant::now();
    let report = store.rebuild(&mut |_| {}).unwrap();
    let rebuild = rebuilt.elapsed();
    println!(
        "full rebuild of {} keys in {} partitions: {rebuild:?}; recovery / rebuild = {:.1}%",
        report.keys,
        report.partitions,
        100.0 * regions.as_secs_f64() / rebuild.as_secs_f64()
    );
    assert!(!matches!(store.open_report().recovery, Recovery::Snapshot));
    store.close().unwrap();
}
