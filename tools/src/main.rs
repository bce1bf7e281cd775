//! `merkle-index`: operate a merkle-index store from the command line.
//!
//! Exit codes: 0 fine; 1 the command ran and found problems (verify found corruption,
//! diff found differences, get found nothing); 2 it could not run. A reader that closes
//! stdout early (`| head`) does not change the status: the rest of the output is dropped.

#[macro_use]
mod output;
mod cmd;
mod progress;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// sled allocates a node copy on every write; mimalloc serves that churn with far less
/// time in the allocator than the system one (bootstrap over TCP: see the README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "merkle-index",
    version,
    about = "A durable key-value store with a crash-recoverable Merkle index for anti-entropy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Write a synthetic, reproducible workload (key i = key-000000000000 + i, version
    /// --version-base + i) and report durable progress.
    Load(cmd::load::Args),
    /// Write one value.
    Put(cmd::kv::PutArgs),
    /// Print one value (exit 1 if absent).
    Get(cmd::kv::KeyArgs),
    /// Delete one key (writes a tombstone).
    Delete(cmd::kv::KeyArgs),
    /// Keys, roots, checkpoint and last open of a store.
    Stats(cmd::StoreArgs),
    /// Remove a partition for good: its data, index and marks (durably).
    DropPartition(cmd::drop::Args),
    /// Remove tombstones held for longer than a grace period (durably).
    PurgeTombstones(cmd::purge::Args),
    /// Print a partition's root hash.
    Root(cmd::root::Args),
    /// Recompute everything from the data and report problems (exit 1 if any).
    Verify(cmd::verify::Args),
    /// Recompute the index from the data.
    Rebuild(cmd::StoreArgs),
    /// Print a node's children or a segment's entries.
    Dump(cmd::dump::Args),
    /// Compare two stores (--db A --db B) or a store and a peer (--peer); exit 1 if they differ.
    Diff(cmd::exchange::Args),
    /// Repair both sides of a diff: newest version wins.
    Sync(cmd::exchange::SyncArgs),
    /// Answer authenticated anti-entropy peers over TCP.
    Serve(cmd::serve::Args),
    /// Serve peers and run the anti-entropy manager until SIGTERM.
    Node(cmd::node::Args),
    /// Print a running node's anti-entropy status (JSON).
    Status(cmd::node::StatusArgs),
    /// Nodes drift apart, one crashes, one joins empty; the managers converge them.
    Demo(cmd::demo::Args),
}

/// How a command that ran ended.
pub enum Outcome {
    Fine,
    Problems,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Load(a) => cmd::load::run(a),
        Command::Put(a) => cmd::kv::put(a),
        Command::Get(a) => cmd::kv::get(a),
        Command::Delete(a) => cmd::kv::delete(a),
        Command::Stats(a) => cmd::stats::run(a),
        Command::Root(a) => cmd::root::run(a),
        Command::DropPartition(a) => cmd::drop::run(a),
        Command::PurgeTombstones(a) => cmd::purge::run(a),
        Command::Verify(a) => cmd::verify::run(a),
        Command::Rebuild(a) => cmd::rebuild::run(a),
        Command::Dump(a) => cmd::dump::run(a),
        Command::Diff(a) => cmd::exchange::diff(a),
        Command::Sync(a) => cmd::exchange::sync(a),
        Command::Serve(a) => cmd::serve::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Status(a) => cmd::node::status(a),
        Command::Demo(a) => cmd::demo::run(a),
    };
    if let Some(e) = output::failure() {
        eprintln!("merkle-index: {e}");
        return ExitCode::from(2);
    }
    match result {
        Ok(Outcome::Fine) => ExitCode::SUCCESS,
        Ok(Outcome::Problems) => ExitCode::from(1),
        Err(e) => {
            eprintln!("merkle-index: {}", describe(&e));
            ExitCode::from(2)
        }
    }
}

/// The error and its causes, each cause left out where the text before it already says
/// it (the library's errors name their source in their own message).
fn describe(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}
