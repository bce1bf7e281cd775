//! `put`, `get`, `delete`: one key at a time. Keys and values are bytes: given as text,
//! or as hex with `--hex`.

use std::path::PathBuf;

use anyhow::Context;
use merkle_index::Options;

use crate::Outcome;

#[derive(clap::Args)]
pub struct PutArgs {
    /// Store directory (created if missing or empty).
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value_t = 0)]
    partition: u32,
    /// Key and value are hex (e.g. `00ff10`), for bytes that are not text.
    #[arg(long)]
    hex: bool,
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
    /// The key is hex; `get` prints the value as hex (and a newline) instead of raw.
    #[arg(long)]
    hex: bool,
    key: String,
}

/// The bytes of a command-line argument: the text itself, or the hex it spells.
pub fn arg_bytes(text: &str, hex: bool) -> anyhow::Result<Vec<u8>> {
    if !hex {
        return Ok(text.as_bytes().to_vec());
    }
    let digits = text.strip_prefix("0x").unwrap_or(text);
    if !digits.len().is_multiple_of(2) {
        anyhow::bail!("{text:?} is not hex: odd number of digits");
    }
    (0..digits.len())
        .step_by(2)
        .map(|i| {
            digits
                .get(i..i + 2)
                .and_then(|d| u8::from_str_radix(d, 16).ok())
                .with_context(|| format!("{text:?} is not hex"))
        })
        .collect()
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn put(a: PutArgs) -> anyhow::Result<Outcome> {
    let (key, value) = (arg_bytes(&a.key, a.hex)?, arg_bytes(&a.value, a.hex)?);
    let store = super::open_or_create(&a.db, Options::default())?;
    let version = store.partition(a.partition).put(&key, &value)?;
    store.close()?;
    outln!("{version}");
    Ok(Outcome::Fine)
}

/// Writes the value to stdout as it is stored (raw bytes, nothing added), or as hex and
/// a newline with `--hex`.
pub fn get(a: KeyArgs) -> anyhow::Result<Outcome> {
    let key = arg_bytes(&a.key, a.hex)?;
    let store = super::open(&a.db)?;
    let value = store.partition(a.partition).get(&key);
    store.close()?;
    match value? {
        Some(v) if a.hex => {
            outln!("{}", hex(&v));
            Ok(Outcome::Fine)
        }
        Some(v) => {
            crate::output::bytes(&v);
            Ok(Outcome::Fine)
        }
        None => {
            eprintln!(
                "merkle-index: key {} not found in partition {}",
                super::show_key(&key),
                a.partition
            );
            Ok(Outcome::Problems)
        }
    }
}

pub fn delete(a: KeyArgs) -> anyhow::Result<Outcome> {
    let key = arg_bytes(&a.key, a.hex)?;
    let store = super::open(&a.db)?;
    let version = store.partition(a.partition).delete(&key)?;
    store.close()?;
    outln!("{version}");
    Ok(Outcome::Fine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_arguments_round_trip_and_bad_hex_is_an_error() {
        assert_eq!(arg_bytes("00ff10", true).unwrap(), vec![0, 255, 16]);
        assert_eq!(arg_bytes("0xAB", true).unwrap(), vec![0xab]);
        assert_eq!(arg_bytes("00ff", false).unwrap(), b"00ff".to_vec());
        assert!(arg_bytes("abc", true).is_err());
        assert!(arg_bytes("zz", true).is_err());
        assert!(arg_bytes("é0", true).is_err());
        assert_eq!(hex(&[0, 255, 16]), "00ff10");
    }
}
