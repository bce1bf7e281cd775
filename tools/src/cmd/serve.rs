//! `serve`: answer anti-entropy peers over TCP.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::net::auth::Key;
use crate::net::server::{self, Limits};
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// Pre-shared key file (at least 16 bytes), the same as the peers'.
    #[arg(long)]
    key_file: PathBuf,
    /// Read/write timeout per frame, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Connections served at once.
    #[arg(long, default_value_t = 64)]
    max_connections: usize,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let key = Key::from_file(&a.key_file)?;
    let store = Arc::new(super::open(&a.db)?);
    let (listener, addr) = server::bind(&a.listen)?;
    println!("listening on {addr}");
    let limits = Limits {
        timeout: Duration::from_millis(a.timeout_ms),
        max_connections: a.max_connections,
    };
    server::serve(store, listener, key, limits)?;
    Ok(Outcome::Fine)
}
