//! Put latency over a long run of overwrites, checkpoints included: the store against
//! bare sled writing the same keys in the store's layout (partition and segment before
//! the key, a 26-byte header before the value), each value new (a counter in it: sled
//! skips an insert whose value is unchanged). KEYS keys (default 1,000,000) of 100 B in
//! PARTITIONS partitions (default 16) are loaded untimed, then one thread overwrites
//! random ones for SECS seconds (default 70: two 30 s checkpoint intervals). Prints the
//! latency percentiles, the slowest puts and when they came (a checkpoint shows as a
//! cluster every 30 s), and the directory's size on disk after the load and every 10 s
//! (what sustained overwrites and checkpoints leave behind, against sled's own space
//! amplification). WHICH=store or WHICH=sled runs one side only.
//! Run: cargo run --release --example write_latency

use std::path::Path;
use std::time::{Duration, Instant};

use merkle_index::{segment_of, Options, Store};

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each put's latency and when it started (seconds into the run).
type Samples = Vec<(Duration, f32)>;

/// Bytes of the files under `dir` (as `du -sb` counts them).
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&entry.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Overwrites random keys of `0..keys` with `put(i, value)` for `secs` seconds; also
/// returns the size of `dir` at the start and every 10 s.
fn overwrite(
    keys: u64,
    secs: u64,
    dir: &Path,
    mut put: impl FnMut(u64, &[u8]),
) -> (Samples, Vec<String>) {
    let mut sizes = vec![format!("{} MB after the load", dir_bytes(dir) / 1_000_000)];
    let mut next_size = 10;
    let mut samples = Vec::with_capacity(secs as usize * 400_000);
    let mut x = 1u64;
    let mut value = [7u8; 100];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(secs) {
        x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        n += 1;
        value[..8].copy_from_slice(&n.to_le_bytes());
        let began = Instant::now();
        put((x >> 20) % keys, &value);
        samples.push((began.elapsed(), (began - start).as_secs_f32()));
        if n % 4096 == 0 && start.elapsed() >= Duration::from_secs(next_size) {
            sizes.push(format!(
                "{} MB at {next_size} s",
                dir_bytes(dir) / 1_000_000
            ));
            next_size += 10;
        }
    }
    (samples, sizes)
}

fn report(name: &str, secs: u64, (mut samples, sizes): (Samples, Vec<String>)) {
    samples.sort_unstable_by_key(|s| std::cmp::Reverse(s.0));
    let n = samples.len();
    let at = |q: f64| samples[((n as f64) * (1.0 - q)) as usize].0;
    println!(
        "{name}: {n} puts ({:.0}/s); p50 {:?}, p99 {:?}, p99.9 {:?}, p99.99 {:?}, max {:?}",
        n as f64 / secs as f64,
        at(0.5),
        at(0.99),
        at(0.999),
        at(0.9999),
        samples[0].0
    );
    let slowest: Vec<String> = samples
        .iter()
        .take(8)
        .map(|(d, t)| format!("{:.1} ms at {t:.1} s", d.as_secs_f64() * 1e3))
        .collect();
    println!("  slowest: {}", slowest.join(", "));
    println!("  on disk: {}", sizes.join(", "));
}

fn key(i: u64) -> [u8; 8] {
    i.to_be_bytes()
}

fn main() {
    let (keys, partitions, secs) = (
        var("KEYS", 1_000_000),
        var("PARTITIONS", 16),
        var("SECS", 70),
    );
    let which = std::env::var("WHICH").unwrap_or_default();
    if which != "sled" {
        let dir = tempfile::tempdir().unwrap();
        let options =
            Options::default().checkpoint_interval(Duration::from_secs(var("CHECKPOINT_SECS", 30)));
        let store = Store::open(dir.path(), options).unwrap();
        let partition = |i: u64| store.partition((i % partitions) as u32);
        for i in 0..keys {
            partition(i).put(&key(i), &[1u8; 100]).unwrap();
        }
        store.checkpoint().unwrap();
        let samples = overwrite(keys, secs, dir.path(), |i, value| {
            partition(i).put(&key(i), value).unwrap();
        });
        report("store", secs, samples);
    }
    if which != "store" {
        let dir = tempfile::tempdir().unwrap();
        let db = sled::Config::new()
            .path(dir.path())
            .cache_capacity(Options::default().cache_bytes)
            .open()
            .unwrap();
        let tree = db.open_tree("data").unwrap();
        let put = |i: u64, value: &[u8]| {
            let mut k = ((i % partitions) as u32).to_be_bytes().to_vec();
            k.extend_from_slice(&segment_of(&key(i), 1 << 20).to_be_bytes());
            k.extend_from_slice(&key(i));
            let mut v = vec![1u8; 26];
            v.extend_from_slice(value);
            tree.insert(k, v).unwrap();
        };
        for i in 0..keys {
            put(i, &[1u8; 100]);
        }
        let samples = overwrite(keys, secs, dir.path(), put);
        report("bare sled", secs, samples);
    }
}
