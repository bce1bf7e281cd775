//! `stats`: what a store holds and how its last open went.

use merkle_index::Recovery;
use serde_json::json;

use crate::Outcome;

pub fn run(a: super::StoreArgs) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    let shape = store.shape();
    let report = store.open_report().clone();
    let (path, detail) = match &report.recovery {
        Recovery::Created => ("created", json!({})),
        Recovery::Snapshot => ("clean snapshot", json!({})),
        Recovery::Regions {
            from_base,
            changed,
            regions,
            segments,
            keys,
            snapshot_problem,
        } => (
            "crash recovery",
            json!({ "from_base": from_base, "changed": changed, "regions": regions, "segments": segments, "keys": keys, "snapshot_problem": snapshot_problem }),
        ),
        Recovery::FullRebuild { keys, reason } => {
            ("full rebuild", json!({ "keys": keys, "reason": reason }))
        }
        _ => ("other", json!({})),
    };
    let mut partitions = Vec::new();
    for p in store.partitions() {
        partitions
            .push(json!({ "id": p, "keys": store.count_keys(p)?, "root": store.root(p).to_hex() }));
    }
    let checkpoint = store.last_checkpoint();
    let out = json!({
        "segments": shape.segments,
        "width": shape.width,
        "levels": shape.levels,
        "partitions": partitions,
        "last_checkpoint": checkpoint.map(|c| json!({ "epoch": c.epoch, "unix_ms": c.unix_ms })),
        "last_open": { "path": path, "millis": report.duration.as_secs_f64() * 1e3, "detail": detail },
        "disk_bytes": store.disk_bytes()?,
        "index_memory_bytes": store.index_memory_bytes(),
    });
    store.close()?;
    if a.json {
        outln!("{out}");
        return Ok(Outcome::Fine);
    }
    outln!(
        "tree: {} segments, width {}, {} levels",
        shape.segments,
        shape.width,
        shape.levels
    );
    for p in out["partitions"].as_array().into_iter().flatten() {
        outln!(
            "partition {}: {} keys, root {}",
            p["id"],
            p["keys"],
            p["root"].as_str().unwrap_or("")
        );
    }
    match checkpoint {
        Some(c) => outln!(
            "last checkpoint: epoch {} at unix ms {}",
            c.epoch,
            c.unix_ms
        ),
        None => outln!("last checkpoint: none"),
    }
    let detail = match detail.as_object() {
        Some(fields) if !fields.is_empty() => format!(" {detail}"),
        _ => String::new(),
    };
    outln!(
        "last open: {path}, index ready in {:.1} ms{detail}",
        report.duration.as_secs_f64() * 1e3
    );
    outln!(
        "disk: {} bytes; index memory: {} bytes",
        out["disk_bytes"],
        out["index_memory_bytes"]
    );
    Ok(Outcome::Fine)
}
