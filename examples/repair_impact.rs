//! Foreground writes while the anti-entropy manager repairs a large divergence: puts/s
//! on a store alone, while its manager pulls KEYS (default 200,000) missing keys from a
//! peer at MAX_KEYS_PER_SEC (default 20,000), and alone again with the repair held.
//! Prints the rates and the ratio of "during" to the mean of the two "alone" runs.
//! Run: cargo run --release --example repair_impact

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use merkle_index::{Manager, ManagerOptions, Options, Store};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Puts/s of new keys for `secs` seconds.
fn write_rate(store: &Store, first: u64, secs: u64) -> f64 {
    let started = Instant::now();
    let mut n = 0u64;
    while started.elapsed() < Duration::from_secs(secs) {
        for _ in 0..1000 {
            store
                .partition(1)
                .put(&(first + n).to_be_bytes(), &[7u8; 100])
                .unwrap();
            n += 1;
        }
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let (keys, rate) = (var("KEYS", 200_000), var("MAX_KEYS_PER_SEC", 20_000));
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let peer = Arc::new(Store::open(da.path(), Options::default()).unwrap());
    for i in 0..keys {
        peer.put_versioned(&i.to_be_bytes(), &[5u8; 100], i + 1)
            .unwrap();
    }
    let local = Arc::new(Store::open(db.path(), Options::default()).unwrap());
    let alone = write_rate(&local, 1 << 40, 5);
    let manager = Manager::start(
        Arc::clone(&local),
        ManagerOptions {
            max_repair_keys_per_sec: Some(rate),
            ..ManagerOptions::default()
        },
    );
    manager.set_peer("peer", Arc::new(Arc::clone(&peer)), BTreeSet::from([0]));
    std::thread::sleep(Duration::from_millis(500));
    let during = write_rate(&local, 2 << 40, 5);
    let status = manager.status();
    let repaired: u64 = status.peers[0]
        .running
        .as_ref()
        .map_or(0, |r| r.repaired_local);
    // Hold the repair (1 key/s) and measure alone again on the now larger store, so
    // the comparison is not skewed by the store's growth.
    manager.set_throttle(Some(1), None);
    std::thread::sleep(Duration::from_millis(500));
    let after = write_rate(&local, 3 << 40, 5);
    let baseline = (alone + after) / 2.0;
    println!(
        "foreground puts/s alone: {alone:.0} before, {after:.0} after; during a repair capped at {rate} keys/s: {during:.0} ({:.2}x the mean); repaired meanwhile: {repaired}",
        during / baseline
    );
    manager.stop();
}
