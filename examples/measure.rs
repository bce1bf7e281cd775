//! Quick figures for the engine's targets on this machine (the criterion benches in
//! benches/ are the permanent versions). Run: cargo run --release --example measure
//! [keys] (default 1,000,000). `REGION=n` sets `region_segments`; `PUTS=n` the number of
//! puts timed against bare sled (default 300,000).

use std::time::{Duration, Instant};

use merkle_index::{Options, Recovery, Store};

fn key(i: u64) -> [u8; 16] {
    // Random-looking keys: a scrambled counter.
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(17) ^ i;
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&x.to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

fn main() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let value = [7u8; 100];
    let mut opts = Options::default().checkpoint_interval(Duration::from_secs(3600));
    if let Ok(r) = std::env::var("REGION") {
        opts.region_segments = r.parse().unwrap();
    }

    // Put throughput: store vs bare sled with the same cache, same keys.
    let put_n = std::env::var("PUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(n.min(300_000));
    let bare_dir = tempfile::tempdir().unwrap();
    let bare = sled::Config::new()
        .path(bare_dir.path())
        .cache_capacity(opts.cache_bytes)
        .open()
        .unwrap();
    let bare_tree = bare.open_tree("data").unwrap();
    let t = Instant::now();
    for i in 0..put_n {
        bare_tree.insert(key(i), &value[..]).unwrap();
    }
    let bare_rate = rate(put_n, t.elapsed());
    drop(bare_tree);
    drop(bare);

    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let t = Instant::now();
    for i in 0..put_n {
        store.put(&key(i), &value).unwrap();
    }
    store.sync_index().unwrap();
    let store_rate = rate(put_n, t.elapsed());
    println!(
        "put 100 B x {put_n}: store {store_rate:.0}/s, bare sled {bare_rate:.0}/s, ratio {:.2}",
        store_rate / bare_rate
    );

    for i in put_n..n {
        store.put(&key(i), &value).unwrap();
    }
    store.sync_index().unwrap();
    println!(
        "index memory: {:.1} MiB",
        store.index_memory_bytes() as f64 / (1 << 20) as f64
    );

    let t = Instant::now();
    let r = store.rebuild(&mut |_| {}).unwrap();
    println!(
        "rebuild: {} keys in {:?} = {:.0} keys/s",
        r.keys,
        t.elapsed(),
        rate(r.keys, t.elapsed())
    );
    let t = Instant::now();
    let v = store.verify(&mut |_| {}).unwrap();
    println!(
        "verify: {} keys in {:?} = {:.0} keys/s, ok={}",
        v.keys,
        t.elapsed(),
        rate(v.keys, t.elapsed()),
        v.is_ok()
    );
    store.close().unwrap();

    // Clean reopen: sled alone vs store (index ready).
    let t = Instant::now();
    let db = sled::Config::new()
        .path(dir.path().join("sled"))
        .cache_capacity(opts.cache_bytes)
        .open()
        .unwrap();
    let sled_open = t.elapsed();
    drop(db);
    let t = Instant::now();
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let total = t.elapsed();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    println!(
        "clean reopen: sled alone {sled_open:?}, store {total:?} (index ready {:?} after sled open)",
        store.open_report().duration
    );

    // Crash with 1,000 writes since the last checkpoint, versus a crash after so many
    // writes that open falls back to a full rebuild (same store, ~same size).
    store.checkpoint().unwrap();
    for i in 0..1000 {
        store.put(&key(n + i), &value).unwrap();
    }
    store.flush().unwrap();
    store.simulate_crash();
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let recovery = store.open_report().duration;
    println!(
        "crash reopen after 1,000 writes: index ready in {recovery:?}: {:?}",
        store.open_report().recovery
    );
    store.checkpoint().unwrap();
    for i in 0..n / 2 {
        store.put(&key(i), &value[..50]).unwrap();
    }
    store.flush().unwrap();
    store.simulate_crash();
    let store = Store::open(dir.path(), opts.clone()).unwrap();
    let full = store.open_report().duration;
    println!(
        "crash reopen after {} writes: index ready in {full:?}: {:?}; recovery/full rebuild = {:.1}%",
        n / 2,
        store.open_report().recovery,
        100.0 * recovery.as_secs_f64() / full.as_secs_f64()
    );
    store.close().unwrap();
}
