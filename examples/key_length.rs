//! What the length of a data key costs bare sled: overwrites of 300k preloaded keys with
//! 126-byte values (a record's size for 100 B), keys of 16 random bytes behind a prefix of
//! 0, 4, 6 or 8 bytes (the store's data key puts 8 bytes, partition and segment, in
//! front). Rounds alternate between the databases; the median round is printed.
//! sled 0.34 keeps keys up to 22 bytes inline and copies them when it copies a node; a
//! longer key is reference-counted, so each node copy and drop adds atomic operations.
//! Run: cargo run --release --example key_length

use std::time::{Duration, Instant};

const PRELOAD: u64 = 300_000;
const ROUND: u64 = 40_000;
const ROUNDS: usize = 12;

/// 16 random-looking bytes for key `i`.
fn user_key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k.copy_from_slice(&blake3::hash(&i.to_le_bytes()).as_bytes()[..16]);
    k
}

/// `prefix` bytes from a hash of the key (as a segment would be), then the key.
fn data_key(prefix: usize, i: u64) -> Vec<u8> {
    let k = user_key(i);
    let mut out = blake3::hash(&k).as_bytes()[..prefix].to_vec();
    out.extend_from_slice(&k);
    out
}

fn main() {
    let prefixes = [0usize, 4, 6, 8];
    let dirs: Vec<_> = prefixes
        .iter()
        .map(|_| tempfile::tempdir().unwrap())
        .collect();
    let trees: Vec<sled::Tree> = dirs
        .iter()
        .map(|d| {
            let db = sled::Config::new()
                .path(d.path())
                .cache_capacity(512 << 20)
                .open()
                .unwrap();
            db.open_tree("data").unwrap()
        })
        .collect();
    let mut value = [7u8; 126];
    for (tree, &prefix) in trees.iter().zip(&prefixes) {
        for i in 0..PRELOAD {
            tree.insert(data_key(prefix, i), &value[..]).unwrap();
        }
    }
    let mut rounds = vec![Vec::new(); prefixes.len()];
    let mut written = 0u64;
    for _ in 0..ROUNDS {
        for ((tree, &prefix), times) in trees.iter().zip(&prefixes).zip(&mut rounds) {
            let start = Instant::now();
            for n in 0..ROUND {
                let i = (written + n).wrapping_mul(7919) % PRELOAD;
                // New bytes every time: sled skips an insert of an unchanged value.
                value[..8].copy_from_slice(&(written + n).to_le_bytes());
                tree.insert(data_key(prefix, i), &value[..]).unwrap();
            }
            times.push(start.elapsed());
        }
        written += ROUND;
    }
    for (times, prefix) in rounds.iter_mut().zip(prefixes) {
        times.sort();
        let median: Duration = times[times.len() / 2];
        println!(
            "key of {} bytes: {:.1}k overwrites/s (median of {ROUNDS} rounds)",
            prefix + 16,
            ROUND as f64 / median.as_secs_f64() / 1e3
        );
    }
}
