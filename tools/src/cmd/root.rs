//! `root`: a partition's root hash, nothing else.

use std::path::PathBuf;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    #[arg(long, default_value_t = 0)]
    partition: u32,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    store.sync_index()?;
    outln!("{}", store.root(a.partition));
    store.close()?;
    Ok(Outcome::Fine)
}
