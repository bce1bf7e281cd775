//! `drop-partition`: remove a partition for good (data, index, marks).

use std::path::PathBuf;

use serde_json::json;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// The partition to remove.
    #[arg(long)]
    partition: u32,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let existed = store.partitions().contains(&a.partition);
    let records = store.drop_partition(a.partition)?;
    store.close()?;
    if a.json {
        outln!(
            "{}",
            json!({ "partition": a.partition, "existed": existed, "records": records })
        );
    } else if existed || records > 0 {
        outln!(
            "dropped partition {}: {records} records removed",
            a.partition
        );
    } else {
        outln!("partition {} held nothing; nothing to drop", a.partition);
    }
    Ok(Outcome::Fine)
}
