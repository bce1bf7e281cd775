//! `node`: a replica's whole anti-entropy side: serve peers, and run the manager that
//! exchanges with them on a schedule, until SIGTERM or SIGINT (then stop both and close
//! the store cleanly). `status`: ask a running node for its manager's status.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use merkle_index::net::{self, Client, Key, NetPeer, Stop};
use merkle_index::{Manager, ManagerOptions, Status};
use serde_json::json;

use super::serve::Serving;
use crate::Outcome;

#[derive(clap::Args)]
pub struct Args {
    /// Store directory (created if missing or empty).
    #[arg(long)]
    db: PathBuf,
    #[command(flatten)]
    serving: Serving,
    /// A peer to exchange with: ADDR, or ADDR=P1,P2,... for the partitions it shares
    /// with this node (default: every partition either side holds). Repeatable.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// Time between exchanges with each peer (e.g. 60s, 500ms, 2m; at most 365 days).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Exchanges running at once (at least 1).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..))]
    max_concurrent: u64,
    /// Repairs per second over all exchanges (default unlimited).
    #[arg(long)]
    max_repair_keys_per_sec: Option<u64>,
    /// Repair bytes per second over all exchanges (default unlimited).
    #[arg(long)]
    max_repair_bytes_per_sec: Option<u64>,
    /// While this node takes more than 1,000 foreground writes a second, repairs run at
    /// most at this fraction of their rate (0 to 1; 0: only the caps apply).
    #[arg(long, default_value_t = 0.1, value_parser = parse_share)]
    repair_share: f64,
    /// Partitions a peer without a partition list may make this node hold; its other
    /// partitions are left out (counted in the status as `left_out`).
    #[arg(long, default_value_t = 4096)]
    max_partitions: usize,
    /// Records a second the background scrub checks against their hashes (0: off); a
    /// rotten value is quarantined and the next exchange restores it from a peer.
    #[arg(long, default_value_t = 2000)]
    scrub_keys_per_sec: u64,
    /// Purge tombstones this long after this node learned of them (e.g. 10d; default:
    /// never). Needs the scrub, which purges as it passes them. A tombstone must outlive
    /// the longest time a replica can go without an exchange.
    #[arg(long, value_parser = humantime::parse_duration)]
    tombstone_grace: Option<Duration>,
    /// Start even if the store's last exchange is older than --tombstone-grace (it may
    /// bring back keys its replicas deleted and purged meanwhile; wiping it is safer).
    #[arg(long)]
    accept_stale_store: bool,
    /// Exchange with this --peer even if it is held: out of reach for longer than
    /// --tombstone-grace, by this node's record, which survives restarts (it may bring
    /// back keys deleted and purged here meanwhile; wiping it is safer). Repeatable.
    #[arg(long = "accept-peer", value_name = "ADDR")]
    accept_peers: Vec<String>,
    /// Also serve the manager's status as Prometheus metrics over plain HTTP at
    /// `http://ADDR/metrics` (port 0 picks a free port; the address is printed).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
}

/// The metrics endpoint: a small HTTP server on its own thread, until `unblock`.
struct Metrics {
    server: Arc<tiny_http::Server>,
    thread: std::thread::JoinHandle<()>,
}

impl Metrics {
    fn start(addr: &str, manager: Arc<Manager>) -> anyhow::Result<Metrics> {
        let server = Arc::new(
            tiny_http::Server::http(addr).map_err(|e| anyhow::anyhow!("--metrics {addr}: {e}"))?,
        );
        outln!("metrics on http://{}/metrics", server.server_addr());
        let thread = std::thread::spawn({
            let server = Arc::clone(&server);
            move || {
                for request in server.incoming_requests() {
                    let found = request.method() == &tiny_http::Method::Get
                        && request.url().split('?').next() == Some("/metrics");
                    let response = if found {
                        tiny_http::Response::from_string(manager.status().to_prometheus())
                            .with_header(tiny_http::Header {
                                field: "Content-Type".parse().expect("a valid header name"),
                                value: "text/plain; version=0.0.4"
                                    .parse()
                                    .expect("a valid header value"),
                            })
                    } else {
                        tiny_http::Response::from_string("GET /metrics\n").with_status_code(404)
                    };
                    // A client gone before the answer is its own business.
                    let _ = request.respond(response);
                }
            }
        });
        Ok(Metrics { server, thread })
    }

    fn stop(self) {
        self.server.unblock();
        let _ = self.thread.join();
    }
}

/// A fraction in [0, 1].
fn parse_share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text} is not a fraction from 0 to 1")),
    }
}

/// `ADDR` or `ADDR=P1,P2,...`, ADDR as `HOST:PORT` (the host is resolved at each
/// connection, so a name that does not resolve yet is not an error here).
fn parse_peer(spec: &str) -> anyhow::Result<(String, BTreeSet<u32>)> {
    let (addr, list) = match spec.split_once('=') {
        Some((addr, list)) => (addr, Some(list)),
        None => (spec, None),
    };
    let port = addr.rsplit_once(':').filter(|(host, _)| !host.is_empty());
    if !port.is_some_and(|(_, port)| port.parse::<u16>().is_ok_and(|p| p > 0)) {
        bail!("--peer {spec}: the address must be HOST:PORT (a port from 1 to 65535)");
    }
    let Some(list) = list else {
        return Ok((addr.to_string(), BTreeSet::new()));
    };
    let partitions = list
        .split(',')
        .map(|p| p.trim().parse::<u32>())
        .collect::<Result<BTreeSet<_>, _>>()
        .with_context(|| format!("--peer {spec}: partitions must be numbers, as ADDR=1,2,3"))?;
    Ok((addr.to_string(), partitions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_host_port_with_optional_partitions() {
        let ok = |spec: &str| parse_peer(spec).unwrap();
        assert_eq!(
            ok("10.0.0.2:7070"),
            ("10.0.0.2:7070".into(), BTreeSet::new())
        );
        assert_eq!(
            ok("[::1]:7070=3,1"),
            ("[::1]:7070".into(), BTreeSet::from([1, 3]))
        );
        assert_eq!(ok("node-b.example:9=5").1, BTreeSet::from([5]));
        for bad in [
            "bogus",
            "host:",
            ":7070",
            "host:0",
            "host:70000",
            "host:7070=",
            "h:1=x",
        ] {
            let err = parse_peer(bad).unwrap_err().to_string();
            assert!(err.starts_with(&format!("--peer {bad}:")), "{bad}: {err}");
        }
    }
}

/// The status as JSON (durations in milliseconds).
pub fn status_json(status: &Status) -> serde_json::Value {
    let ms = |d: Duration| d.as_millis() as u64;
    json!({
        "exchanges": status.exchanges,
        "max_repair_keys_per_sec": status.max_repair_keys_per_sec,
        "max_repair_bytes_per_sec": status.max_repair_bytes_per_sec,
        "foreground_writes_per_sec": status.foreground_writes_per_sec,
        "repair_keys_per_sec_now": status.repair_keys_per_sec_now,
        "store_checkpoint_error": status.store_checkpoint_error,
        "wall_clock_moved_ms": status.wall_clock_moved_ms,
        "scrub": json!({
            "keys_per_sec": status.scrub.keys_per_sec,
            "checked": status.scrub.checked,
            "passes": status.scrub.passes,
            "last_pass_unix_ms": status.scrub.last_pass_unix_ms,
            "problems": status.scrub.problems,
            "last_problem": status.scrub.last_problem,
            "quarantined": status.scrub.quarantined,
            "purged": status.scrub.purged,
            "last_error": status.scrub.last_error,
        }),
        "peers": status.peers.iter().map(|p| json!({
            "peer": p.name,
            "failures": p.failures,
            "last_error": p.last_error,
            "left_out": p.left_out,
            "held": p.held,
            "last_exchange_unix_ms": p.last_exchange_unix_ms,
            "next_in_ms": ms(p.next_in),
            "running": p.running.as_ref().map(|r| json!({
                "partition": r.partition,
                "partitions_left": r.partitions_left,
                "differences": r.differences,
                "repaired_local": r.repaired_local,
                "repaired_remote": r.repaired_remote,
            })),
            "partitions": p.partitions.iter().map(|s| json!({
                "partition": s.partition,
                "last_success_unix_ms": s.last_success_unix_ms,
                "last_duration_ms": s.last_duration.map(ms),
                "differences": s.differences,
                "repaired_local": s.repaired_local,
                "repaired_remote": s.repaired_remote,
                "refused": s.refused,
                "skipped": s.skipped,
                "corrupt": s.corrupt,
                "expired": s.expired,
                "bytes": s.bytes,
                "total_repaired_local": s.total_repaired_local,
                "total_repaired_remote": s.total_repaired_remote,
                "errors": s.errors,
                "last_error": s.last_error,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
    })
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let key = Key::from_file(&a.serving.key_file)?;
    let peers = a
        .peers
        .iter()
        .map(|p| parse_peer(p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if let Some(unknown) = a
        .accept_peers
        .iter()
        .find(|addr| !peers.iter().any(|(peer, _)| peer == *addr))
    {
        bail!("--accept-peer {unknown}: not one of the --peer addresses");
    }
    let store = Arc::new(super::open_or_create(
        &a.db,
        merkle_index::Options::default(),
    )?);
    let (listener, addr) = net::bind(&a.serving.listen)?;
    let stop = Stop::new(addr);
    super::serve::stop_on_signals(&stop, "node")?;
    let timeout = a.serving.timeout();
    let manager = Arc::new(Manager::start(
        Arc::clone(&store),
        ManagerOptions {
            interval: a.interval,
            max_concurrent: usize::try_from(a.max_concurrent).unwrap_or(usize::MAX),
            max_repair_keys_per_sec: a.max_repair_keys_per_sec,
            max_repair_bytes_per_sec: a.max_repair_bytes_per_sec,
            repair_share: (a.repair_share > 0.0).then_some(a.repair_share),
            max_partitions: a.max_partitions,
            scrub_keys_per_sec: Some(a.scrub_keys_per_sec),
            tombstone_grace: a.tombstone_grace,
            accept_stale: a.accept_stale_store,
            ..ManagerOptions::default()
        },
    )?);
    for (peer_addr, partitions) in peers {
        if a.accept_peers.contains(&peer_addr) {
            manager.remove_peer(&peer_addr); // forgets its last exchange: not held
        }
        let peer = NetPeer {
            addr: peer_addr.clone(),
            key: key.clone(),
            timeout,
        };
        manager.set_peer(&peer_addr, Arc::new(peer), partitions);
    }
    outln!("listening on {addr}");
    let metrics = match &a.metrics {
        Some(at) => Some(Metrics::start(at, Arc::clone(&manager))?),
        None => None,
    };
    let status = {
        let manager = Arc::clone(&manager);
        Arc::new(move || status_json(&manager.status()).to_string())
    };
    let options = a.serving.options(Some(status));
    net::serve(
        Arc::clone(&store),
        listener,
        key,
        options,
        &stop,
        net::stderr_log(),
    )?;
    if let Some(metrics) = metrics {
        metrics.stop();
    }
    // The server's status closure held a handle on the manager; it is gone now.
    Arc::into_inner(manager)
        .context("the manager is still shared")?
        .stop();
    Arc::into_inner(store)
        .context("a connection still holds the store")?
        .close()?;
    eprintln!("merkle-index node: store closed cleanly");
    Ok(Outcome::Fine)
}

#[derive(clap::Args)]
pub struct StatusArgs {
    /// Address of a running `merkle-index node`.
    #[arg(long)]
    peer: String,
    /// Pre-shared key file.
    #[arg(long)]
    key_file: PathBuf,
    /// Deadline in milliseconds (at most one day).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_ms: u64,
}

pub fn status(a: StatusArgs) -> anyhow::Result<Outcome> {
    let key = Key::from_file(&a.key_file)?;
    let client = Client::connect(&a.peer, &key, Duration::from_millis(a.timeout_ms))?;
    outln!("{}", client.status()?);
    Ok(Outcome::Fine)
}
