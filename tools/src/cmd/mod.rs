//! One module per subcommand, each a thin layer over a library call.

pub mod demo;
pub mod drop;
pub mod dump;
pub mod exchange;
pub mod kv;
pub mod load;
pub mod node;
pub mod purge;
pub mod rebuild;
pub mod root;
pub mod serve;
pub mod stats;
pub mod verify;

use std::path::{Path, PathBuf};

use merkle_index::{Options, Store};

/// The arguments of commands that read one store and can answer in JSON.
#[derive(clap::Args)]
pub struct StoreArgs {
    /// Store directory.
    #[arg(long)]
    pub db: PathBuf,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Opens an existing store with its own shape.
pub fn open(db: &Path) -> anyhow::Result<Store> {
    Ok(Store::open_existing(db, Options::default())?)
}

/// Opens a store, creating it (with `options`) if the directory is missing or empty.
pub fn open_or_create(db: &Path, options: Options) -> anyhow::Result<Store> {
    let fresh = match std::fs::read_dir(db) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
        Ok(mut entries) => entries.next().is_none(),
    };
    Ok(if fresh {
        Store::open(db, options)?
    } else {
        Store::open_existing(db, options)?
    })
}

/// Keys are printed as text when they are UTF-8, else as hex prefixed with `0x`.
pub fn show_key(key: &[u8]) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if !s.chars().any(char::is_control) => s.to_string(),
        _ => format!(
            "0x{}",
            key.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}
