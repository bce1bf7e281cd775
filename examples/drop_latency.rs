//! Put latency on one partition while another, large one is dropped (a node giving a
//! partition away when the ring changes keeps serving the others). KEYS keys of 100 B
//! (default 500,000) are loaded into partition 0 and 10,000 into partition 1, untimed;
//! then one thread overwrites random keys of partition 1 while the main thread drops
//! partition 0 after one second. Prints how long the drop took, and the writer's
//! latency percentiles during the drop and outside it. WRITE=0 drops with no writer.
//! Run: cargo run --release --example drop_latency

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use merkle_index::{Options, Store};

fn main() {
    let keys: u64 = std::env::var("KEYS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let write = std::env::var("WRITE").map_or(true, |v| v != "0");
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for i in 0..keys {
        store
            .partition(0)
            .put(&i.to_be_bytes(), &[1u8; 100])
            .unwrap();
    }
    for i in 0..10_000u64 {
        store
            .partition(1)
            .put(&i.to_be_bytes(), &[1u8; 100])
            .unwrap();
    }
    store.checkpoint().unwrap();
    let done = AtomicBool::new(false);
    let start = Instant::now();
    let (samples, drop_span) = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut samples = Vec::new();
            let mut x = 1u64;
            let mut n = 0u64;
            let mut value = [7u8; 100];
            while write && !done.load(Ordering::Relaxed) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                n += 1;
                value[..8].copy_from_slice(&n.to_le_bytes());
                let began = Instant::now();
                store
                    .partition(1)
                    .put(&((x >> 20) % 10_000).to_be_bytes(), &value)
                    .unwrap();
                samples.push((began - start, began.elapsed()));
            }
            samples
        });
        std::thread::sleep(Duration::from_secs(1));
        let began = start.elapsed();
        let records = store.drop_partition(0).unwrap();
        let ended = start.elapsed();
        println!(
            "dropped {records} records in {:.1} ms",
            (ended - began).as_secs_f64() * 1e3
        );
        std::thread::sleep(Duration::from_secs(1));
        done.store(true, Ordering::Relaxed);
        (writer.join().unwrap(), began..ended)
    });
    for (name, during) in [("during the drop", true), ("outside it", false)] {
        let mut lat: Vec<Duration> = samples
            .iter()
            .filter(|(at, _)| drop_span.contains(at) == during)
            .map(|s| s.1)
            .collect();
        lat.sort_unstable();
        let n = lat.len();
        if n == 0 {
            println!("{name}: no puts");
            continue;
        }
        let at = |q: f64| lat[((n as f64 - 1.0) * q) as usize];
        println!(
            "{name}: {n} puts; p50 {:?}, p99 {:?}, max {:?}",
            at(0.5),
            at(0.99),
            lat[n - 1]
        );
    }
    store.close().unwrap();
}
