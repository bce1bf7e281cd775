//! `rebuild`: a thin wrapper over `Store::rebuild`.

use std::time::Instant;

use serde_json::json;

use crate::{progress, Outcome};

pub fn run(a: super::StoreArgs) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let bar = progress::bar(1, "segments");
    let started = Instant::now();
    let report = store.rebuild(&mut progress::scan_callback(&bar))?;
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    store.close()?;
    if a.json {
        let out = json!({
            "keys": report.keys,
            "partitions": report.partitions,
            "undecodable": report.undecodable,
            "seconds": seconds,
        });
        outln!("{out}");
    } else {
        outln!(
            "rebuilt the index of {} partitions from {} keys in {seconds:.2} s",
            report.partitions,
            report.keys
        );
        if report.undecodable > 0 {
            outln!(
                "{} undecodable records were skipped; run verify to list them",
                report.undecodable
            );
        }
    }
    Ok(Outcome::Fine)
}
