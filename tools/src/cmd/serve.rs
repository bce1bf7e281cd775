//! `serve`: answer anti-entropy peers over TCP until SIGTERM or SIGINT, then close the
//! store cleanly (so the next start maps the snapshot instead of recovering).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::Outcome;
use merkle_index::net::{self as server, Accept, Key, ServeOptions, StatusFn, Stop};

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    serving: Serving,
}

/// What `serve` and `node` share: where to listen, the key, deadlines, connection caps,
/// and the partitions peers may write to.
#[derive(clap::Args)]
pub struct Serving {
    /// Address to listen on (port 0 picks a free port; the chosen address is printed).
    #[arg(long, default_value = "127.0.0.1:7070")]
    pub listen: String,
    /// Pre-shared key file (at least 16 bytes), the same on every node.
    #[arg(long)]
    pub key_file: PathBuf,
    /// Deadline for a whole handshake, a whole frame, and a peer's next request, in
    /// milliseconds (at least 1, at most one day).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
    /// Connections served at once (at least 1).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    max_connections: u64,
    /// Connections from one peer address at once (at least 1).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u64).range(1..))]
    max_per_address: u64,
    /// Also accept repairs to these partitions (comma-separated) before this store
    /// holds them; by default peers may write only to partitions it holds.
    #[arg(long, value_delimiter = ',', conflicts_with = "accept_any")]
    accept_partitions: Vec<u32>,
    /// Accept repairs to any partition.
    #[arg(long)]
    accept_any: bool,
}

impl Serving {
    /// The deadline of handshakes, frames and requests.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    /// The server's options, with `status` answering status requests.
    pub fn options(&self, status: Option<StatusFn>) -> ServeOptions {
        let accept = if self.accept_any {
            Accept::Any
        } else if self.accept_partitions.is_empty() {
            Accept::Existing
        } else {
            Accept::Listed(self.accept_partitions.iter().copied().collect())
        };
        ServeOptions {
            timeout: self.timeout(),
            max_connections: usize::try_from(self.max_connections).unwrap_or(usize::MAX),
            max_per_address: usize::try_from(self.max_per_address).unwrap_or(usize::MAX),
            accept,
            status,
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let key = Key::from_file(&a.serving.key_file)?;
    let store = Arc::new(super::open(&a.db)?);
    let (listener, addr) = server::bind(&a.serving.listen)?;
    let stop = Stop::new(addr);
    stop_on_signals(&stop, "serve")?;
    outln!("listening on {addr}");
    let options = a.serving.options(None);
    server::serve(
        Arc::clone(&store),
        listener,
        key,
        options,
        &stop,
        server::stderr_log(),
    )?;
    let store = Arc::into_inner(store).context("a connection still holds the store")?;
    store.close()?;
    eprintln!("merkle-index serve: store closed cleanly");
    Ok(Outcome::Fine)
}

/// Triggers `stop` on the first SIGTERM or SIGINT (logged as `merkle-index WHO: ...`).
pub fn stop_on_signals(stop: &Stop, who: &'static str) -> anyhow::Result<()> {
    let mut signals = Signals::new([SIGTERM, SIGINT]).context("install signal handlers")?;
    let stop = stop.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            if let Some(signal) = signals.forever().next() {
                eprintln!("merkle-index {who}: signal {signal}: stopping");
                stop.trigger();
            }
        })
        .context("spawn the signal thread")?;
    Ok(())
}
