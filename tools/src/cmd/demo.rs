//! `demo`: the seed's story end to end, with nodes as processes and no manual sync.
//!
//! Three `merkle-index node` processes hold the shopping carts, spread over 16 partitions
//! as a ring would spread them, each running the anti-entropy manager against the others
//! every second. A coordinator (this process) sends every cart update to all three as
//! replication messages; a few are lost; node 3 is killed with SIGKILL in the middle of
//! the writes, a bit of one of its values rots on disk while it is down, and it is
//! restarted (crash recovery); a fourth node joins empty. Nobody types `sync`: the
//! managers converge every replica, and node 3's scrub finds the rot so that an exchange
//! restores the value.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use merkle_index::net::{Client, Key};
use merkle_index::{merged_root, Hash, Lookup, Record, Replica};

use crate::Outcome;

const CARTS: u64 = 300;
const PARTITIONS: u32 = 16;
const UPDATES: u64 = 1500;
const BATCH: u64 = 50;
const NODES: usize = 4;
/// The node killed mid-run, and the one that joins empty.
const KILLED: usize = 2;
const LATE: usize = 3;

#[derive(clap::Args)]
pub struct Args {
    /// Keep the nodes' stores and logs in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Update `i` of the cart stream: the cart's partition, the cart, its new contents.
fn update(i: u64) -> (u32, Vec<u8>, Vec<u8>) {
    let cart = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % CARTS;
    let key = format!("cart-{cart:04}");
    let value = format!("cart {cart}: {} items after update {i}", i % 9 + 1);
    let partition = (cart % u64::from(PARTITIONS)) as u32;
    (partition, key.into_bytes(), value.into_bytes())
}

/// Every partition, as a list for `--accept-partitions` and `--peer ADDR=...`.
fn partition_list() -> String {
    let all: Vec<String> = (0..PARTITIONS).map(|p| p.to_string()).collect();
    all.join(",")
}

fn lost_for(node: usize, i: u64) -> bool {
    // A few replication messages never arrive: about 1 in 40 per node.
    (i * 7 + node as u64 * 13).is_multiple_of(40)
}

/// The cart whose value rots on node `KILLED` while it is down: one whose last update
/// reached that node before it was killed, so no later write replaces the rotten copy.
fn rot_victim() -> Option<(u32, Vec<u8>)> {
    let mut last = BTreeMap::new();
    for i in 0..UPDATES {
        let (partition, key, _) = update(i);
        last.insert(key, (partition, i));
    }
    last.into_iter()
        .find(|(_, (_, i))| *i < UPDATES / 3 && !lost_for(KILLED, *i))
        .map(|(key, (partition, _))| (partition, key))
}

/// Flips a bit of the stored value of `key` in a stopped node's store, as a failing disk
/// might: the record's bytes in sled, laid out as FORMAT.md says (the data key is the
/// partition and the key's segment, big-endian, then the key; the value ends the record).
fn rot(store: &Path, segments: u64, partition: u32, key: &[u8]) -> anyhow::Result<()> {
    let db = sled::open(store.join("sled")).context("open the stopped node's sled")?;
    let data = db.open_tree("data")?;
    let mut raw = partition.to_be_bytes().to_vec();
    raw.extend_from_slice(&merkle_index::segment_of(key, segments).to_be_bytes());
    raw.extend_from_slice(key);
    let mut record = data
        .get(&raw)?
        .context("the cart is not on the node")?
        .to_vec();
    if let Some(last) = record.last_mut() {
        *last ^= 0x01;
    }
    data.insert(raw, record)?;
    db.flush()?;
    Ok(())
}

/// The record of `key` on node `n`, as it answers for it.
fn lookup(nodes: &Nodes, key: &Key, n: usize, partition: u32, cart: &[u8]) -> Option<Lookup> {
    let client = Client::connect(&nodes.addr(n), key, Duration::from_secs(5)).ok()?;
    client.records(partition, &[cart.to_vec()]).ok()?.pop()
}

fn short(h: Hash) -> String {
    h.to_hex()[..16].to_string()
}

struct Nodes {
    root: PathBuf,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
}

impl Nodes {
    fn addr(&self, n: usize) -> String {
        format!("127.0.0.1:{}", self.ports[n])
    }

    fn start(&mut self, n: usize) -> anyhow::Result<()> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.arg("node")
            .arg("--db")
            .arg(self.root.join(format!("node-{}", n + 1)))
            .args(["--listen", &self.addr(n), "--interval", "1s"])
            .arg("--key-file")
            .arg(self.root.join("key"))
            .args(["--accept-partitions", &partition_list()]);
        for other in (0..NODES).filter(|&o| o != n) {
            cmd.arg("--peer")
                .arg(format!("{}={}", self.addr(other), partition_list()));
        }
        // Each node's log goes to its own file, so the story stays readable.
        let log = File::create(self.root.join(format!("node-{}.log", n + 1)))?;
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()
            .with_context(|| format!("start node {}", n + 1))?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().context("node stdout")?).read_line(&mut line)?;
        if !line.starts_with("listening on") {
            bail!("node {} did not start: {line:?}", n + 1);
        }
        self.children[n] = Some(child);
        Ok(())
    }

    fn kill(&mut self, n: usize) -> anyhow::Result<()> {
        if let Some(mut child) = self.children[n].take() {
            child.kill()?; // SIGKILL
            child.wait()?;
        }
        Ok(())
    }

    /// Stops every node with SIGTERM (they close their stores cleanly).
    fn stop_all(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        for child in self.children.iter_mut().flatten() {
            let _ = child.wait();
        }
        self.children.iter_mut().for_each(|c| *c = None);
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for child in self.children.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Each node's root of all the partitions (their roots merged), if it answers.
fn roots(nodes: &Nodes, key: &Key) -> Vec<Option<Hash>> {
    let all: Vec<u32> = (0..PARTITIONS).collect();
    (0..NODES)
        .map(|n| {
            Client::connect(&nodes.addr(n), key, Duration::from_secs(5))
                .and_then(|c| c.roots(&all))
                .ok()
                .map(|r| merged_root(&r))
        })
        .collect()
}

fn show(roots: &[Option<Hash>]) {
    for (n, r) in roots.iter().enumerate() {
        match r {
            Some(h) => outln!("   node {}: {}", n + 1, short(*h)),
            None => outln!("   node {}: not running", n + 1),
        }
    }
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let temp;
    let root: &Path = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("merkle-index-demo-")
                .tempdir()
                .context("create a temporary directory")?;
            temp.path()
        }
    };
    std::fs::write(root.join("key"), random_secret()?)?;
    let key = Key::from_file(&root.join("key"))?;
    let mut nodes = Nodes {
        root: root.to_path_buf(),
        ports: (0..NODES)
            .map(|_| free_port())
            .collect::<anyhow::Result<_>>()?,
        children: (0..NODES).map(|_| None).collect(),
    };
    outln!(
        "merkle-index demo: shopping carts in {PARTITIONS} partitions on {} node processes in {}",
        NODES,
        root.display()
    );
    for n in (0..NODES).filter(|&n| n != LATE) {
        nodes.start(n)?;
    }
    outln!(
        "  nodes 1-3 run `merkle-index node`: each serves the others over an encrypted channel and its\n  anti-entropy manager exchanges with them every second (a Merkle tree of 1,048,576 segments\n  per partition; the roots shown are each node's partitions merged)"
    );

    // 1. The coordinator replicates every update to every node; some messages are lost.
    let base = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as u64;
    let (mut lost, mut down) = (0u64, 0u64);
    outln!(
        "\n1. the coordinator sends {UPDATES} cart updates to every node; about 1 in 40 replication messages is lost"
    );
    let segments = Client::connect(&nodes.addr(0), &key, Duration::from_secs(5))
        .and_then(|c| c.shape())?
        .segments;
    let victim = rot_victim().context("no cart to rot")?;
    let cart = String::from_utf8_lossy(&victim.1).into_owned();
    let mut i = 0;
    while i < UPDATES {
        if i == UPDATES / 3 {
            nodes.kill(KILLED)?;
            outln!(
                "\n2. node {} was killed (SIGKILL) after update {i}; its messages are lost while it is down",
                KILLED + 1
            );
            let store = nodes.root.join(format!("node-{}", KILLED + 1));
            rot(&store, segments, victim.0, &victim.1)?;
            outln!(
                "   while it is down, a bit of {cart}'s value rots on its disk (its replicas still agree on the key:\n   the index holds the hash stored beside the value, so no exchange would notice)"
            );
        }
        if i == 2 * UPDATES / 3 {
            nodes.start(KILLED)?;
            outln!(
                "   node {} restarted at update {i} (crash recovery: it re-hashes only what changed since its last checkpoint)",
                KILLED + 1
            );
            nodes.start(LATE)?;
            outln!("3. node {} joined empty at update {i}", LATE + 1);
        }
        let batch: Vec<(u64, u32, Vec<u8>, Record)> = (i..(i + BATCH).min(UPDATES))
            .map(|u| {
                let (p, k, v) = update(u);
                (u, p, k, Record::value(((base + u) << 16) | 1, &v))
            })
            .collect();
        for n in 0..NODES {
            let client = nodes.children[n]
                .is_some()
                .then(|| Client::connect(&nodes.addr(n), &key, Duration::from_secs(5)))
                .and_then(Result::ok);
            for partition in 0..PARTITIONS {
                let kept: Vec<(Vec<u8>, Record)> = batch
                    .iter()
                    .filter(|(u, p, _, _)| *p == partition && !lost_for(n, *u))
                    .map(|(_, _, k, r)| (k.clone(), r.clone()))
                    .collect();
                let sent = batch.iter().filter(|(_, p, _, _)| *p == partition).count();
                lost += (sent - kept.len()) as u64;
                if kept.is_empty() {
                    continue;
                }
                let delivered = client.as_ref().map(|c| c.replicate(partition, &kept));
                if !matches!(delivered, Some(Ok(_))) {
                    down += kept.len() as u64;
                }
            }
        }
        i += BATCH;
    }
    outln!(
        "\n4. writes done: {lost} messages lost on the way, {down} more not delivered to a node that was down or not yet there"
    );
    outln!("   roots right after the writes:");
    show(&roots(&nodes, &key));

    // 5. No manual sync: wait for the managers.
    let started = Instant::now();
    let converged = loop {
        let now = roots(&nodes, &key);
        if now.iter().all(|r| r.is_some() && *r == now[0]) {
            break Some(now);
        }
        if started.elapsed() > Duration::from_secs(60) {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(now) = converged else {
        bail!(
            "the nodes did not converge within 60 s; logs in {}",
            root.display()
        );
    };
    outln!(
        "\n5. the managers converged every node {:.1} s after the writes stopped, nobody typed `sync`:",
        started.elapsed().as_secs_f64()
    );
    show(&now);

    // 6. The rot: node 3's scrub finds it, and an exchange restores the value.
    let good = lookup(&nodes, &key, 0, victim.0, &victim.1);
    let restored = loop {
        let here = lookup(&nodes, &key, KILLED, victim.0, &victim.1);
        if matches!(here, Some(Lookup::Found(_))) && here == good {
            break true;
        }
        if started.elapsed() > Duration::from_secs(60) {
            break false;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    if !restored {
        bail!(
            "node {} still has the rotten {cart} after 60 s; logs in {}",
            KILLED + 1,
            root.display()
        );
    }
    let client = Client::connect(&nodes.addr(KILLED), &key, Duration::from_secs(5))?;
    let status: serde_json::Value = serde_json::from_str(&client.status()?)?;
    outln!(
        "\n6. node {}'s scrub checked {} records, found the rotten {cart} ({} quarantined) and an exchange\n   restored it from a replica: it reads as on node 1 again",
        KILLED + 1,
        status["scrub"]["checked"],
        status["scrub"]["quarantined"]
    );
    let mut repaired = 0u64;
    for n in 0..NODES {
        let client = Client::connect(&nodes.addr(n), &key, Duration::from_secs(5))?;
        let status: serde_json::Value = serde_json::from_str(&client.status()?)?;
        let here: u64 = status["peers"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|p| p["partitions"].as_array().into_iter().flatten())
            .filter_map(|p| p["total_repaired_local"].as_u64())
            .sum();
        repaired += here;
        let keys = if here == 1 { "key" } else { "keys" };
        outln!(
            "   node {}: {} exchanges, {here} {keys} repaired here",
            n + 1,
            status["exchanges"]
        );
    }
    outln!("   all four nodes are equal ({repaired} repairs in all; `merkle-index status --peer ADDR` shows a node's)");
    nodes.stop_all();
    Ok(Outcome::Fine)
}

fn random_secret() -> anyhow::Result<String> {
    use std::io::Read;
    let mut out = [0u8; 24];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .context("read /dev/urandom")?;
    Ok(out.iter().map(|b| format!("{b:02x}")).collect())
}
