//! `load`: a synthetic, reproducible workload.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use merkle_index::Options;
use serde_json::json;

use crate::{progress, Outcome};

#[derive(clap::Args)]
pub struct Args {
    /// Store directory (created if missing or empty).
    #[arg(long)]
    db: PathBuf,
    /// Number of keys to write.
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per value (at most 15 MiB, the store's limit).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Seed of the pseudo-random values.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Key i goes to partition i mod P.
    #[arg(long, default_value_t = 1)]
    partitions: u32,
    /// Segments per tree, for a new store (a power of --width).
    #[arg(long)]
    segments: Option<u64>,
    /// Tree width, for a new store.
    #[arg(long)]
    width: Option<u32>,
    /// Key i gets version V + i, so the same arguments build the same store (and root)
    /// on any machine, and two loads are identical replicas.
    #[arg(long, default_value_t = 1)]
    version_base: u64,
    /// Flush (make durable) after every K puts, and at the end.
    #[arg(long, default_value_t = 10_000)]
    flush_every: u64,
    /// JSON lines on stdout instead of text.
    #[arg(long)]
    json: bool,
}

/// The workload's key `i`: `key-` and `i` zero-padded to 12 digits.
pub fn key(i: u64) -> String {
    format!("key-{i:012}")
}

/// The workload's value `i`: `size` bytes determined by (seed, i).
pub fn value(seed: u64, i: u64, size: usize) -> Vec<u8> {
    let mut h = blake3::Hasher::new_derive_key("merkle-index 2026-11-24 load value v1");
    h.update(&seed.to_le_bytes());
    h.update(&i.to_le_bytes());
    let mut out = vec![0u8; size];
    h.finalize_xof().fill(&mut out);
    out
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    if a.partitions == 0 || a.flush_every == 0 {
        bail!("--partitions and --flush-every must be at least 1");
    }
    if a.value_size > merkle_index::MAX_VALUE_BYTES {
        bail!(
            "--value-size {} is over the store's limit of {} bytes",
            a.value_size,
            merkle_index::MAX_VALUE_BYTES
        );
    }
    let mut options = Options::default();
    if a.segments.is_some() || a.width.is_some() {
        options = options.with_segments(a.segments.unwrap_or(1 << 20), a.width.unwrap_or(16))?;
    }
    let explicit_shape = a.segments.is_some() || a.width.is_some();
    let store = if explicit_shape {
        merkle_index::Store::open(&a.db, options)?
    } else {
        super::open_or_create(&a.db, options)?
    };
    let bar = progress::bar(a.keys, "keys");
    let started = Instant::now();
    let report = |n: u64| {
        if a.json {
            outln!("{}", json!({ "durable": n }));
        } else {
            bar.suspend(|| outln!("durable {n}"));
        }
    };
    for i in 0..a.keys {
        let partition = (i % u64::from(a.partitions)) as u32;
        let version = a
            .version_base
            .checked_add(i)
            .context("--version-base + i overflows")?;
        store.partition(partition).put_versioned(
            key(i).as_bytes(),
            &value(a.seed, i, a.value_size),
            version,
        )?;
        bar.inc(1);
        if (i + 1) % a.flush_every == 0 {
            store.flush()?;
            report(i + 1);
        }
    }
    if !a.keys.is_multiple_of(a.flush_every) || a.keys == 0 {
        store.flush()?;
        report(a.keys);
    }
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let rate = a.keys as f64 / seconds.max(1e-9);
    let closing = Instant::now();
    store.close()?;
    let close_seconds = closing.elapsed().as_secs_f64();
    if a.json {
        outln!(
            "{}",
            json!({ "loaded": a.keys, "seconds": seconds, "keys_per_sec": rate, "close_seconds": close_seconds })
        );
    } else {
        outln!(
            "loaded {} keys in {seconds:.2} s ({rate:.0} keys/s), closed in {close_seconds:.2} s",
            a.keys
        );
    }
    Ok(Outcome::Fine)
}
