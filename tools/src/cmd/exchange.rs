//! `diff` and `sync`: two local stores, or a local store and a peer over TCP.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::bail;
use merkle_index::{DiffReport, Replica, Store, SyncOptions};
use serde_json::json;

use merkle_index::net::{Client, Key};

use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Local store; give it twice to compare two local stores.
    #[arg(long, required = true, num_args = 1)]
    db: Vec<PathBuf>,
    /// Peer address (host:port) of `merkle-index serve`.
    #[arg(long, requires = "key_file")]
    peer: Option<String>,
    /// Pre-shared key file (the same on both sides).
    #[arg(long)]
    key_file: Option<PathBuf>,
    /// Only this partition (default: every partition either side holds; one held on one
    /// side only differs in every key, and sync creates it on the other).
    #[arg(long)]
    partition: Option<u32>,
    /// Network timeout per request, in milliseconds (at most one day).
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// JSON lines on stdout instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct SyncArgs {
    #[command(flatten)]
    common: Args,
    /// Repairs per batch.
    #[arg(long, default_value_t = 1024)]
    batch: usize,
    /// Pause between batches in milliseconds (throttles a large repair).
    #[arg(long, default_value_t = 0)]
    pause_ms: u64,
}

/// Both sides of an exchange, opened.
struct Sides {
    local: Store,
    other_store: Option<Store>,
    client: Option<Client>,
}

impl Sides {
    fn open(a: &Args) -> anyhow::Result<Sides> {
        match (a.db.as_slice(), &a.peer) {
            ([one], Some(peer)) => {
                let key =
                    Key::from_file(a.key_file.as_deref().unwrap_or(std::path::Path::new("")))?;
                let local = super::open(one)?;
                let client = Client::connect(peer, &key, Duration::from_millis(a.timeout_ms))?;
                Ok(Sides {
                    local,
                    other_store: None,
                    client: Some(client),
                })
            }
            ([one, two], None) => Ok(Sides {
                local: super::open(one)?,
                other_store: Some(super::open(two)?),
                client: None,
            }),
            _ => bail!("give either --db A --db B, or --db A --peer ADDR --key-file F"),
        }
    }

    fn remote(&self) -> &dyn Replica {
        match (&self.other_store, &self.client) {
            (Some(s), _) => s,
            (None, Some(c)) => c,
            (None, None) => unreachable!("Sides::open sets one"),
        }
    }

    fn partitions(&self, only: Option<u32>) -> anyhow::Result<Vec<u32>> {
        if let Some(p) = only {
            return Ok(vec![p]);
        }
        let mut all = self.remote().partitions()?;
        all.extend(Replica::partitions(&self.local)?);
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    fn wire(&self) -> serde_json::Value {
        match &self.client {
            Some(c) => json!({
                "bytes_sent": c.wire_bytes().0,
                "bytes_received": c.wire_bytes().1,
                "handshake_bytes": c.handshake_bytes,
                "round_trips": c.round_trips.load(Relaxed),
            }),
            None => json!(null),
        }
    }

    fn close(self) -> anyhow::Result<()> {
        self.local.close()?;
        if let Some(s) = self.other_store {
            s.close()?;
        }
        Ok(())
    }
}

fn print_diff(report: &DiffReport, json_out: bool) {
    for d in &report.differences {
        let side = |e: &Option<merkle_index::Entry>| {
            e.as_ref()
                .map(|e| json!({ "version": e.version, "tombstone": e.tombstone }))
        };
        if json_out {
            let line = json!({
                "partition": report.partition,
                "key": super::show_key(&d.key),
                "local": side(&d.local),
                "remote": side(&d.remote),
            });
            outln!("{line}");
        } else {
            let show = |e: &Option<merkle_index::Entry>| match e {
                None => "absent".to_string(),
                Some(e) if e.tombstone => format!("deleted at v{}", e.version),
                Some(e) => format!("v{}", e.version),
            };
            outln!(
                "partition {} key {}: here {}, there {}",
                report.partition,
                super::show_key(&d.key),
                show(&d.local),
                show(&d.remote)
            );
        }
    }
}

pub fn diff(a: Args) -> anyhow::Result<Outcome> {
    let sides = Sides::open(&a)?;
    sides.local.sync_index()?;
    let mut total = 0;
    let mut payload = 0;
    let partitions = sides.partitions(a.partition)?;
    // Partitions whose roots agree are not walked: one round trip for all of them (none
    // for a single partition, which is walked at once).
    let to_walk = merkle_index::partitions_to_walk(&sides.local, sides.remote(), &partitions)?;
    let mut round_trips = u32::from(partitions.len() > 1);
    for &p in &to_walk {
        let report = merkle_index::diff(&sides.local, sides.remote(), p)?;
        print_diff(&report, a.json);
        total += report.differences.len();
        round_trips += report.round_trips;
        payload += report.payload_bytes;
    }
    let summary = json!({
        "partitions": partitions,
        "differences": total,
        "round_trips": round_trips,
        "payload_bytes": payload,
        "wire": sides.wire(),
    });
    if a.json {
        outln!("{summary}");
    } else {
        outln!(
            "{total} differences in {} partitions ({round_trips} round trips, {payload} payload bytes)",
            partitions.len()
        );
    }
    sides.close()?;
    Ok(if total == 0 {
        Outcome::Fine
    } else {
        Outcome::Problems
    })
}

pub fn sync(a: SyncArgs) -> anyhow::Result<Outcome> {
    let sides = Sides::open(&a.common)?;
    sides.local.sync_index()?;
    let options = SyncOptions {
        batch: a.batch,
        pause: Duration::from_millis(a.pause_ms),
        ..SyncOptions::default()
    };
    let partitions = sides.partitions(a.common.partition)?;
    let (mut differences, mut here, mut there, mut skipped) = (0, 0, 0, 0);
    let (mut refused, mut corrupt) = (0, 0);
    // A partition that fails (say, one the peer does not accept) does not stop the
    // others; the command still exits 2 and names it.
    let mut failed: Vec<(u32, String)> = Vec::new();
    // Partitions whose roots agree are not walked (one round trip for all of them).
    let to_walk = merkle_index::partitions_to_walk(&sides.local, sides.remote(), &partitions)?;
    for &p in &to_walk {
        let report = match merkle_index::sync(&sides.local, sides.remote(), p, &options) {
            Ok(report) => report,
            Err(e) => {
                failed.push((p, e.to_string()));
                continue;
            }
        };
        differences += report.differences;
        here += report.repaired_local;
        there += report.repaired_remote;
        skipped += report.skipped;
        refused += report.refused_local + report.refused_remote;
        corrupt += report.corrupt_local + report.corrupt_remote;
    }
    let summary = json!({
        "partitions": partitions,
        "differences": differences,
        "repaired_local": here,
        "repaired_remote": there,
        "skipped": skipped,
        "refused": refused,
        "corrupt": corrupt,
        "failed": failed.iter().map(|(p, e)| json!({ "partition": p, "error": e })).collect::<Vec<_>>(),
        "wire": sides.wire(),
    });
    if a.common.json {
        outln!("{summary}");
    } else {
        outln!(
            "{differences} differences in {} partitions: repaired {here} here, {there} there, {skipped} changed meanwhile (next sync)",
            partitions.len()
        );
        if refused + corrupt > 0 {
            outln!(
                "{refused} repairs refused (version too far ahead, or bytes not matching their hash); {corrupt} corrupt records not shipped (run verify --repair on their side)"
            );
        }
    }
    sides.close()?;
    if let Some((p, e)) = failed.first() {
        bail!(
            "{} of {} partitions failed; partition {p}: {e}",
            failed.len(),
            partitions.len()
        );
    }
    Ok(Outcome::Fine)
}
