//! `verify`: a thin wrapper over `Store::verify` (and, with `--repair`, over
//! `Store::quarantine` and `Store::rebuild`).

use serde_json::json;

use crate::{progress, Outcome};

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    store: super::StoreArgs,
    /// Move bad records (rotten values, undecodable or misplaced records) into the
    /// store's quarantine so that the next sync restores them from a replica, and
    /// rebuild the index if it disagrees with the data. Exit 0 if that fixed everything.
    #[arg(long)]
    repair: bool,
}

pub fn run(args: Args) -> anyhow::Result<Outcome> {
    let a = args.store;
    let store = super::open(&a.db)?;
    let bar = progress::bar(1, "segments");
    let mut report = store.verify(&mut progress::scan_callback(&bar))?;
    bar.finish_and_clear();
    let mut repaired = None;
    if args.repair && !report.is_ok() {
        let quarantined = store.quarantine(&report)?;
        store.sync_index()?;
        let mut after = store.verify(&mut |_| {})?;
        let rebuilt = !after.is_ok();
        if rebuilt {
            store.rebuild(&mut |_| {})?;
            after = store.verify(&mut |_| {})?;
        }
        repaired = Some((report.problems.len(), quarantined, rebuilt));
        report = after;
    }
    store.close()?;
    if let Some((found, quarantined, rebuilt)) = repaired {
        let rebuilt = if rebuilt { "; index rebuilt" } else { "" };
        eprintln!(
            "merkle-index: repaired {found} problems: {quarantined} records quarantined (a sync with a replica restores them){rebuilt}"
        );
    }
    if a.json {
        let problems: Vec<_> = report
            .problems
            .iter()
            .map(|p| {
                json!({
                    "partition": p.partition,
                    "segment": p.segment,
                    "key": p.key.as_deref().map(super::show_key),
                    "what": p.to_string(),
                })
            })
            .collect();
        let out = json!({
            "ok": report.is_ok(),
            "keys": report.keys,
            "partitions": report.partitions,
            "buckets": report.buckets,
            "problems": problems,
        });
        outln!("{out}");
    } else {
        for p in &report.problems {
            outln!("problem: {p}");
        }
        outln!(
            "verified {} keys in {} partitions and {} index buckets: {}",
            report.keys,
            report.partitions,
            report.buckets,
            if report.is_ok() {
                "no problems".to_string()
            } else {
                format!("{} problems; `merkle-index rebuild` recomputes the index (bad values need a sync from a replica)", report.problems.len())
            }
        );
    }
    Ok(if report.is_ok() {
        Outcome::Fine
    } else {
        Outcome::Problems
    })
}
