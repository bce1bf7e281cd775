//! Foreground writes while the anti-entropy manager repairs a large divergence: puts/s
//! on a store alone, while its manager pulls KEYS (default 200,000) missing keys from a
//! peer, and alone again with the repair held. The repair runs with the manager's
//! defaults (no cap; yielding to foreground writes with `repair_share` 0.1); set
//! MAX_KEYS_PER_SEC to cap it too, and SHARE (a fraction, or 0 for none) to change the
//! share. Alternates phases with the repair held and running, and prints the rates and
//! the ratio of the "during" mean to the "alone" mean.
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

/// Phases of each kind.
const PHASES: usize = 4;

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
    let (keys, rate) = (var("KEYS", 200_000), var("MAX_KEYS_PER_SEC", 0));
    let rate = (rate > 0).then_some(rate);
    let share = std::env::var("SHARE")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(ManagerOptions::default().repair_share, |s| {
            (s > 0.0).then_some(s)
        });
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let peer = Arc::new(Store::open(da.path(), Options::default()).unwrap());
    for i in 0..keys {
        peer.put_versioned(&i.to_be_bytes(), &[5u8; 100], i + 1)
            .unwrap();
    }
    let local = Arc::new(Store::open(db.path(), Options::default()).unwrap());
    let manager = Manager::start(
        Arc::clone(&local),
        ManagerOptions {
            max_repair_keys_per_sec: Some(1), // held until the first "during" phase
            repair_share: share,
            ..ManagerOptions::default()
        },
    )
    .unwrap();
    manager.set_peer("peer", Arc::new(Arc::clone(&peer)), BTreeSet::from([0]));
    // Alternate phases with the repair held (1 key/s) and running, on the same store,
    // so the machine's drift and the store's growth weigh on both alike.
    let (mut alone, mut during) = (Vec::new(), Vec::new());
    let mut next_key = 1u64 << 40;
    let mut repaired = 0;
    let mut seen = (0, None);
    for round in 0..PHASES {
        manager.set_throttle(Some(1), None);
        std::thread::sleep(Duration::from_millis(200));
        alone.push(write_rate(&local, next_key, 2));
        next_key += 1 << 32;
        manager.set_throttle(rate, None);
        if round == 0 {
            // Let the exchange start; it then runs through every "during" phase.
            std::thread::sleep(Duration::from_millis(200));
        }
        during.push(write_rate(&local, next_key, 2));
        next_key += 1 << 32;
        let status = manager.status();
        repaired = status.peers[0]
            .running
            .as_ref()
            .map_or(repaired, |r| r.repaired_local);
        seen = (
            status.foreground_writes_per_sec,
            status.repair_keys_per_sec_now,
        );
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    println!(
        "foreground puts/s over {PHASES} alternating phases of 2 s: alone {:.0} (each {:?}), during a repair (cap {rate:?} keys/s, share {share:?}) {:.0} (each {:?}): {:.2}x; repaired by then: {repaired} of {keys}; last seen: foreground {}/s, repairs allowed {:?}/s",
        mean(&alone),
        alone.iter().map(|r| *r as u64).collect::<Vec<_>>(),
        mean(&during),
        during.iter().map(|r| *r as u64).collect::<Vec<_>>(),
        mean(&during) / mean(&alone),
        seen.0,
        seen.1,
    );
    manager.stop();
}
