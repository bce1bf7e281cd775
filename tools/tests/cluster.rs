//! A cluster soak: 5 `merkle-index node` processes on loopback, 16 partitions placed on a
//! ring with 3 replicas each, a writer that sends every write to all replicas of its
//! partition but drops 5% of the messages, one node killed with SIGKILL and restarted
//! mid-run, one node started empty late, 1 s intervals, and tombstones purged a few
//! seconds after the delete (`--tombstone-grace`, longer than the killed node is down).
//! After the writes stop, every replica of every partition must reach the same root,
//! hold every acknowledged write at its latest version (deletes included: nothing
//! deleted comes back), and the managers' status must account for the repairs; then,
//! past the grace, every replica must have purged every acknowledged tombstone, and
//! still agree, with nothing deleted back. `MERKLE_SOAK_ROUNDS=60` runs the long version
//! (default 6 rounds of 128 writes).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use merkle_index::net::{Client, Key};
use merkle_index::{Lookup, Record, Replica};

const NODES: usize = 5;
const PARTITIONS: u32 = 16;
const REPLICAS: usize = 3;
const KILLED: usize = 2;
const LATE: usize = 4;

fn replicas(p: u32) -> Vec<usize> {
    (0..REPLICAS).map(|r| (p as usize + r) % NODES).collect()
}

fn holds(node: usize) -> Vec<u32> {
    (0..PARTITIONS)
        .filter(|&p| replicas(p).contains(&node))
        .collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Cluster {
    dir: tempfile::TempDir,
    ports: Vec<u16>,
    nodes: Vec<Option<Child>>,
    key: Key,
    /// Node 0's Prometheus endpoint (`http://ADDR/metrics`).
    metrics: String,
    /// `--tombstone-grace`, in seconds.
    grace_secs: u64,
}

impl Cluster {
    fn addr(&self, node: usize) -> String {
        format!("127.0.0.1:{}", self.ports[node])
    }

    fn start(&mut self, node: usize) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_merkle-index"));
        cmd.arg("node")
            .arg("--db")
            .arg(self.dir.path().join(format!("node-{node}")))
            .args(["--listen", &self.addr(node), "--interval", "1s"])
            .args(["--tombstone-grace", &format!("{}s", self.grace_secs)])
            .arg("--key-file")
            .arg(self.dir.path().join("key"));
        let mine = holds(node);
        let list = |ps: &[u32]| {
            ps.iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(",")
        };
        cmd.args(["--accept-partitions", &list(&mine)]);
        if node == 0 {
            cmd.args(["--metrics", "127.0.0.1:0"]);
        }
        for other in (0..NODES).filter(|&o| o != node) {
            let shared: Vec<u32> = holds(other)
                .into_iter()
                .filter(|p| mine.contains(p))
                .collect();
            if !shared.is_empty() {
                cmd.arg("--peer")
                    .arg(format!("{}={}", self.addr(other), list(&shared)));
            }
        }
        let log = std::fs::File::create(self.dir.path().join(format!("node-{node}.log"))).unwrap();
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        stdout.read_line(&mut line).unwrap();
        assert!(line.starts_with("listening on"), "node {node}: {line:?}");
        if node == 0 {
            line.clear();
            stdout.read_line(&mut line).unwrap();
            self.metrics = line
                .trim()
                .strip_prefix("metrics on http://")
                .and_then(|l| l.strip_suffix("/metrics"))
                .unwrap_or_else(|| panic!("node 0: {line:?}"))
                .to_string();
        }
        self.nodes[node] = Some(child);
    }

    fn kill(&mut self, node: usize) {
        if let Some(mut child) = self.nodes[node].take() {
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
        }
    }

    fn client(&self, node: usize) -> Option<Client> {
        Client::connect(&self.addr(node), &self.key, Duration::from_secs(10)).ok()
    }

    /// Waits until every replica of every partition has the same root; how long since
    /// `since` that took.
    fn converge(&self, since: Instant) -> Duration {
        loop {
            let clients: Vec<Option<Client>> = (0..NODES).map(|n| self.client(n)).collect();
            let agree = (0..PARTITIONS).all(|p| {
                let roots: Vec<_> = replicas(p)
                    .into_iter()
                    .map(|r| clients[r].as_ref().and_then(|c| c.roots(&[p]).ok()))
                    .collect();
                roots.iter().all(|r| r.is_some() && *r == roots[0])
            });
            if agree {
                return since.elapsed();
            }
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "no convergence in 30 s; logs in {}",
                self.dir.path().display()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..NODES {
            self.kill(node);
        }
    }
}

/// A deterministic pseudo-random stream (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn version(counter: &mut u64) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    *counter = (*counter + 1).max(now << 16);
    *counter
}

#[test]
fn a_cluster_converges_without_manual_sync() {
    let rounds: usize = std::env::var("MERKLE_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(6);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "the cluster's shared secret, long").unwrap();
    let key = Key::from_file(&dir.path().join("key")).unwrap();
    let mut cluster = Cluster {
        dir,
        ports: (0..NODES).map(|_| free_port()).collect(),
        nodes: (0..NODES).map(|_| None).collect(),
        key,
        metrics: String::new(),
        // Longer than the killed node is down (a third of the rounds, each well under a
        // second), or it would rightly refuse to start on its stale store.
        grace_secs: 4 + rounds as u64 / 3,
    };
    for node in (0..NODES).filter(|&n| n != LATE) {
        cluster.start(node);
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut clock = 0u64;
    // The latest acknowledged record of every key.
    let mut acked: BTreeMap<(u32, Vec<u8>), Record> = BTreeMap::new();
    let (mut sent, mut lost) = (0u64, 0u64);
    for round in 0..rounds {
        if round == rounds / 3 {
            cluster.kill(KILLED);
        }
        if round == rounds / 2 {
            cluster.start(LATE); // joins empty
        }
        if round == 2 * rounds / 3 {
            cluster.start(KILLED); // back after the crash
        }
        let clients: Vec<Option<Client>> = (0..NODES).map(|n| cluster.client(n)).collect();
        for p in 0..PARTITIONS {
            let writes: Vec<(Vec<u8>, Record)> = (0..8)
                .map(|_| {
                    let key = format!("key-{}", rng.next() % 40).into_bytes();
                    let v = version(&mut clock);
                    let record = if rng.next().is_multiple_of(10) {
                        Record::tombstone(v)
                    } else {
                        Record::value(v, format!("value {v}").as_bytes())
                    };
                    (key, record)
                })
                .collect();
            let mut acknowledged = vec![false; writes.len()];
            for r in replicas(p) {
                // Each message to each replica is lost with probability 5%.
                let kept: Vec<usize> = (0..writes.len())
                    .filter(|_| !rng.next().is_multiple_of(20))
                    .collect();
                sent += writes.len() as u64;
                lost += (writes.len() - kept.len()) as u64;
                let Some(client) = &clients[r] else {
                    lost += kept.len() as u64; // the node is down or not started
                    continue;
                };
                let batch: Vec<_> = kept.iter().map(|&i| writes[i].clone()).collect();
                if client.replicate(p, &batch).is_ok() {
                    for &i in &kept {
                        acknowledged[i] = true;
                    }
                } else {
                    lost += kept.len() as u64;
                }
            }
            for ((key, record), ok) in writes.into_iter().zip(acknowledged) {
                if ok {
                    acked.insert((p, key), record);
                }
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }

    // Writes stopped: wait for every replica of every partition to agree.
    let stopped = Instant::now();
    let converged = cluster.converge(stopped);
    let clients: Vec<Client> = (0..NODES).map(|n| cluster.client(n).unwrap()).collect();
    check_acknowledged(&clients, &acked, false);

    // The managers account for the repairs they made.
    let mut repaired = 0u64;
    for (n, client) in clients.iter().enumerate() {
        let status: serde_json::Value = serde_json::from_str(&client.status().unwrap()).unwrap();
        for peer in status["peers"].as_array().unwrap() {
            for part in peer["partitions"].as_array().unwrap() {
                repaired += part["total_repaired_local"].as_u64().unwrap();
            }
        }
        assert!(
            status["exchanges"].as_u64().unwrap() > 0,
            "node {n}: {status}"
        );
    }
    eprintln!(
        "soak: {rounds} rounds, {} keys acknowledged, {sent} replication messages, {lost} lost; \
         converged {converged:?} after the writes stopped; {repaired} keys repaired by the managers",
        acked.len()
    );
    assert!(repaired > 0);

    // Node 0's Prometheus endpoint tells the same story as its status.
    let status: serde_json::Value = serde_json::from_str(&clients[0].status().unwrap()).unwrap();
    let from_status: u64 = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|p| p["partitions"].as_array().unwrap())
        .map(|part| part["total_repaired_local"].as_u64().unwrap())
        .sum();
    let text = scrape(&cluster.metrics);
    let from_metrics: f64 = text
        .lines()
        .filter(|l| l.starts_with("merkle_index_repaired_local_keys_total{"))
        .map(|l| l.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap())
        .sum();
    assert_eq!(from_metrics as u64, from_status, "{text}");
    eprintln!("node 0 repaired {from_status} keys, by its status and by its metrics");
    assert!(text.contains("merkle_index_exchanges_total "), "{text}");

    // Past the grace every replica purges every acknowledged tombstone, the replicas
    // still agree (no tombstone handed back and forth), and nothing deleted is back.
    let tombstones: Vec<(u32, Vec<u8>)> = acked
        .iter()
        .filter(|(_, r)| r.tombstone)
        .map(|(k, _)| k.clone())
        .collect();
    let purged_everywhere = || {
        // Connections of their own: one left idle past the server's timeout is closed.
        let clients: Vec<Client> = (0..NODES).map(|n| cluster.client(n).unwrap()).collect();
        tombstones.iter().all(|(p, key)| {
            replicas(*p).into_iter().all(|r| {
                matches!(
                    clients[r].records(*p, std::slice::from_ref(key)).unwrap()[..],
                    [Lookup::Absent]
                )
            })
        })
    };
    let limit = Duration::from_secs(cluster.grace_secs + 30);
    while !purged_everywhere() {
        assert!(
            stopped.elapsed() < limit,
            "tombstones not purged {limit:?} after the writes stopped; logs in {}",
            cluster.dir.path().display()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    cluster.converge(Instant::now());
    let clients: Vec<Client> = (0..NODES).map(|n| cluster.client(n).unwrap()).collect();
    check_acknowledged(&clients, &acked, true);
    let purged: u64 = clients
        .iter()
        .map(|c| {
            let status: serde_json::Value = serde_json::from_str(&c.status().unwrap()).unwrap();
            status["scrub"]["purged"].as_u64().unwrap()
        })
        .sum();
    eprintln!(
        "{} acknowledged tombstones purged from every replica {:?} after the writes stopped \
         ({purged} purges in all)",
        tombstones.len(),
        stopped.elapsed()
    );
    assert!(!tombstones.is_empty() && purged > 0);
}

/// Every acknowledged write at its latest version (or later) on every replica, and no
/// deleted key back; with `purged`, an acknowledged tombstone may be gone (absent).
fn check_acknowledged(clients: &[Client], acked: &BTreeMap<(u32, Vec<u8>), Record>, purged: bool) {
    for p in 0..PARTITIONS {
        let keys: Vec<(Vec<u8>, Record)> = acked
            .iter()
            .filter(|((q, _), _)| *q == p)
            .map(|((_, k), r)| (k.clone(), r.clone()))
            .collect();
        let names: Vec<Vec<u8>> = keys.iter().map(|(k, _)| k.clone()).collect();
        for r in replicas(p) {
            let found = clients[r].records(p, &names).unwrap();
            for ((key, expected), found) in keys.iter().zip(found) {
                let found = match found {
                    Lookup::Found(found) => found,
                    Lookup::Absent if purged && expected.tombstone => continue,
                    other => panic!("node {r} partition {p} key {key:?}: {other:?}"),
                };
                assert!(
                    found.version >= expected.version,
                    "node {r} partition {p} key {key:?}: version {} < acknowledged {}",
                    found.version,
                    expected.version
                );
                if found.version == expected.version {
                    assert_eq!(
                        found.tombstone, expected.tombstone,
                        "a deleted key came back"
                    );
                }
            }
        }
    }
}

/// GET /metrics over plain HTTP; the body.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}
