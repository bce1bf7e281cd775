//! What the background scrub costs foreground reads on a store larger than its cache:
//! gets/s of a hot set of keys (HOT, default 2,000: about as many sled leaves, which fit the cache) on a store of
//! KEYS (default 1,000,000) records of 100 bytes with a sled cache of CACHE_MIB (default
//! 16 MiB, far smaller than the store), alone and while the manager scrubs RATE records
//! a second (default 2,000, the manager's default). The scrub pulls every record it
//! checks through sled's cache, so it evicts some hot pages; this shows how many, as
//! a rate. Alternates phases with and without the scrub and prints the rates and the
//! ratio of the means.
//! Run: cargo run --release --example scrub_impact (RATE=50000 for a scrub run hard)

use std::sync::Arc;
use std::time::{Duration, Instant};

use merkle_index::{Manager, ManagerOptions, Options, Store};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Phases of each kind.
const PHASES: usize = 6;

/// Gets/s of random keys below `hot` for `secs` seconds.
fn read_rate(store: &Store, hot: u64, seed: &mut u64, secs: u64) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..1000 {
            // xorshift64: a fixed, cheap sequence of keys.
            *seed ^= *seed << 13;
            *seed ^= *seed >> 7;
            *seed ^= *seed << 17;
            let key = *seed % hot;
            assert!(store
                .partition(0)
                .get(&key.to_be_bytes())
                .unwrap()
                .is_some());
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let (keys, hot, rate) = (
        var("KEYS", 1_000_000),
        var("HOT", 2_000),
        var("RATE", 2_000),
    );
    let mut options = Options::default();
    options.cache_bytes = var("CACHE_MIB", 16) << 20;
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), options.clone()).unwrap());
    for i in 0..keys {
        store
            .partition(0)
            .put(&i.to_be_bytes(), &[5u8; 100])
            .unwrap();
    }
    store.flush().unwrap();
    let disk = store.disk_bytes().unwrap();
    let mut seed = 0x9E37_79B9_7F4A_7C15u64;
    // Warm the hot set first.
    read_rate(&store, hot, &mut seed, 3);
    // Alternate phases without and with the scrub, on the same store, so the machine's
    // drift weighs on both alike.
    let (mut alone, mut during) = (Vec::new(), Vec::new());
    let mut scrubbed = 0;
    for _ in 0..PHASES {
        alone.push(read_rate(&store, hot, &mut seed, 3));
        let manager = Manager::start(
            Arc::clone(&store),
            ManagerOptions {
                scrub_keys_per_sec: Some(rate),
                ..ManagerOptions::default()
            },
        )
        .unwrap();
        during.push(read_rate(&store, hot, &mut seed, 3));
        scrubbed += manager.status().scrub.checked;
        manager.stop();
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "hot-set gets/s ({hot} of {keys} keys, store {} MB on disk, cache {} MiB) over {PHASES} alternating phases of 3 s: alone {:.0} (each {:?}), while scrubbing {rate} records/s {:.0} (each {:?}): {:.2}x; records scrubbed: {scrubbed}",
        disk / 1_000_000,
        options.cache_bytes >> 20,
        mean(&alone),
        alone.iter().map(|r| *r as u64).collect::<Vec<_>>(),
        mean(&during),
        during.iter().map(|r| *r as u64).collect::<Vec<_>>(),
        mean(&during) / mean(&alone),
    );
}
