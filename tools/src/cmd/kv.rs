//! `put`, `get`, `delete`: one key at a time.

use std::io::Write;
use std::path::PathBuf;

use merkle_index::Options;

use crate::Outcome;

#[derive(clap::Args)]
pub struct PutArgs {
    /// Store directory (created if missing or empty).
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    key: String,
    value: String,
}

#[derive(clap::Args)]
pub struct KeyArgs {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    key: String,
}

pub fn put(a: PutArgs) -> anyhow::Result<Outcome> {
    let store = super::open_or_create(&a.db, Options::default())?;
    let version = store
        .partition(a.partition)
        .put(a.key.as_bytes(), a.value.as_bytes())?;
    store.close()?;
    println!("{version}");
    Ok(Outcome::Fine)
}

pub fn get(a: KeyArgs) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let value = store.partition(a.partition).get(a.key.as_bytes())?;
    store.close()?;
    match value {
        Some(v) => {
            let mut out = std::io::stdout().lock();
            out.write_all(&v)?;
            out.write_all(b"\n")?;
            Ok(Outcome::Fine)
        }
        None => {
            eprintln!(
                "merkle-index: key {:?} not found in partition {}",
                a.key, a.partition
            );
            Ok(Outcome::Problems)
        }
    }
}

pub fn delete(a: KeyArgs) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let version = store.partition(a.partition).delete(a.key.as_bytes())?;
    store.close()?;
    println!("{version}");
    Ok(Outcome::Fine)
}
