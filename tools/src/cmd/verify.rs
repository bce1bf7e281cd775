//! `verify`: a thin wrapper over `Store::verify`.

use serde_json::json;

use crate::{progress, Outcome};

pub fn run(a: super::StoreArgs) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let bar = progress::bar(1, "segments");
    let report = store.verify(&mut progress::scan_callback(&bar))?;
    bar.finish_and_clear();
    store.close()?;
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
        println!("{out}");
    } else {
        for p in &report.problems {
            println!("problem: {p}");
        }
        println!(
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
