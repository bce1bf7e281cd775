//! `dump`: a node's children or a segment's entries, for debugging a divergence.

use std::path::PathBuf;

use serde_json::json;

use crate::Outcome;

#[derive(clap::Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["level", "segment"])))]
pub struct Args {
    /// Store directory.
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    partition: u32,
    /// Level of the node whose children to print (0 = root).
    #[arg(long)]
    level: Option<u32>,
    /// Node index within --level.
    #[arg(long, default_value_t = 0, requires = "level")]
    node: u64,
    /// Segment whose entries to print.
    #[arg(long)]
    segment: Option<u32>,
    /// Print keys as hex (the default prints text keys as text, others as 0x-hex).
    #[arg(long)]
    hex: bool,
    /// One JSON object on stdout instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let store = super::open(&a.db)?;
    store.sync_index()?;
    let out = if let Some(segment) = a.segment {
        let entries: Vec<_> = store
            .segment_entries(a.partition, segment)?
            .iter()
            .map(|e| {
                json!({
                    "key": if a.hex { super::kv::hex(&e.key) } else { super::show_key(&e.key) },
                    "version": e.version,
                    "tombstone": e.tombstone,
                    "hash": e.hash.to_hex(),
                })
            })
            .collect();
        json!({ "partition": a.partition, "segment": segment, "entries": entries })
    } else {
        let level = a.level.unwrap_or_default();
        let width = u64::from(store.shape().width);
        let children: Vec<_> = store
            .children(a.partition, level, a.node)?
            .iter()
            .enumerate()
            .map(|(i, h)| json!({ "index": a.node * width + i as u64, "hash": h.to_hex() }))
            .collect();
        json!({ "partition": a.partition, "level": level, "node": a.node, "children": children })
    };
    store.close()?;
    if a.json {
        outln!("{out}");
    } else if let Some(entries) = out["entries"].as_array() {
        for e in entries {
            let kind = if e["tombstone"] == true {
                "tombstone"
            } else {
                "value"
            };
            outln!(
                "{}  version {}  {kind}  {}",
                e["hash"].as_str().unwrap_or(""),
                e["version"],
                e["key"].as_str().unwrap_or("")
            );
        }
    } else {
        for c in out["children"].as_array().into_iter().flatten() {
            outln!(
                "level {} node {}: {}",
                out["level"].as_u64().unwrap_or(0) + 1,
                c["index"],
                c["hash"].as_str().unwrap_or("")
            );
        }
    }
    Ok(Outcome::Fine)
}
