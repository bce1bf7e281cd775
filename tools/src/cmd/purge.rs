//! `purge-tombstones`: remove tombstones this store has held for longer than a grace
//! period.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    /// Remove tombstones this store learned of longer ago than this (e.g. 10d, 36h). It
    /// must exceed the longest time any replica can go without a sync, or a value those
    /// tombstones deleted can come back from a replica that missed the delete.
    #[arg(long, value_parser = humantime::parse_duration)]
    grace: Duration,
    /// Only this partition (default: every partition).
    #[arg(long)]
    partition: Option<u32>,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let partitions = match a.partition {
        Some(p) => vec![p],
        None => store.partitions(),
    };
    let mut purged = 0;
    for &p in &partitions {
        purged += store.purge_tombstones(p, a.grace)?;
    }
    store.flush()?;
    store.close()?;
    let grace = humantime::format_duration(a.grace);
    if a.json {
        outln!(
            "{}",
            json!({ "partitions": partitions, "grace_ms": u64::try_from(a.grace.as_millis()).unwrap_or(u64::MAX), "purged": purged })
        );
    } else {
        outln!(
            "purged {purged} tombstones older than {grace} in {} partitions",
            partitions.len()
        );
    }
    Ok(Outcome::Fine)
}
