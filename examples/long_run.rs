//! Two nodes exchanging over TCP for a long time, as real nodes run, to show that
//! nothing grows with time: each serves its store and runs a manager against the other
//! (every INTERVAL_MS, default 200), with the scrub at its default rate and tombstones
//! purged GRACE_SECS (default 5) after the delete. A writer sends overwrites and deletes
//! of KEYS keys (default 100,000) over PARTITIONS partitions (default 64) to both nodes
//! as replication messages, losing 1 in 20, at RATE writes a second (default 2,000).
//! Every REPORT_SECS (default 10) it prints the process's resident memory, its live heap
//! (bytes allocated and not freed, counted by the allocator), both indexes' memory, both
//! sled files' size, the exchanges, keys repaired and tombstones purged so far. After SECS
//! (default 300) the writes stop and the nodes must converge (which waits for the
//! scrubs to pass the tombstones past the grace on the side that still holds them:
//! exchanges no longer copy those). PEERS=0 runs the same without exchanges, as a
//! control.
//! Run: cargo run --release --features net --example long_run

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use merkle_index::bench_support::CountingAllocator;
use merkle_index::net::{self, Key, NetPeer, ServeOptions, Stop};
use merkle_index::{Manager, ManagerOptions, Options, Record, Status, Store};

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

fn heap_mib() -> f64 {
    CountingAllocator::live_bytes() as f64 / (1 << 20) as f64
}

fn var(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Resident memory of this process (Linux), in MiB.
fn rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

fn repaired(status: &Status) -> u64 {
    status
        .peers
        .iter()
        .flat_map(|p| &p.partitions)
        .map(|p| p.total_repaired_local)
        .sum()
}

struct Node {
    store: Arc<Store>,
    manager: Option<Manager>,
    stop: Stop,
    server: Option<std::thread::JoinHandle<merkle_index::Result<()>>>,
    addr: String,
}

fn start(dir: &std::path::Path, key: &Key) -> Node {
    let store = Arc::new(Store::open(dir, Options::default()).unwrap());
    let (listener, addr) = net::bind("127.0.0.1:0").unwrap();
    let stop = Stop::new(addr);
    let server = std::thread::spawn({
        let (store, key, stop) = (Arc::clone(&store), key.clone(), stop.clone());
        let options = ServeOptions {
            accept: net::Accept::Any,
            ..ServeOptions::default()
        };
        move || net::serve(store, listener, key, options, &stop, Arc::new(|_: &str| {}))
    });
    let manager = Manager::start(
        Arc::clone(&store),
        ManagerOptions {
            interval: Duration::from_millis(var("INTERVAL_MS", 200)),
            tombstone_grace: Some(Duration::from_secs(var("GRACE_SECS", 5))),
            ..ManagerOptions::default()
        },
    )
    .unwrap();
    Node {
        store,
        manager: Some(manager),
        stop,
        server: Some(server),
        addr: addr.to_string(),
    }
}

impl Node {
    fn status(&self) -> Status {
        self.manager.as_ref().unwrap().status()
    }

    fn shut(mut self) {
        self.manager.take().unwrap().stop();
        self.stop.trigger();
        self.server.take().unwrap().join().unwrap().unwrap();
        Arc::try_unwrap(self.store).ok().unwrap().close().unwrap();
    }
}

fn main() {
    let (secs, keys, partitions, rate) = (
        var("SECS", 300),
        var("KEYS", 100_000),
        var("PARTITIONS", 64) as u32,
        var("RATE", 2_000),
    );
    let report_every = Duration::from_secs(var("REPORT_SECS", 10));
    let key = Key::from_secret(b"long-run example shared secret").unwrap();
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let nodes = [start(dirs[0].path(), &key), start(dirs[1].path(), &key)];
    let all: BTreeSet<u32> = (0..partitions).collect();
    // PEERS=0: no exchanges (a control run: what the stores and the scrub cost alone).
    let peers = var("PEERS", 1) != 0;
    for (i, node) in nodes.iter().enumerate().filter(|_| peers) {
        let other = &nodes[1 - i];
        let peer = NetPeer {
            addr: other.addr.clone(),
            key: key.clone(),
            timeout: Duration::from_secs(10),
        };
        node.manager
            .as_ref()
            .unwrap()
            .set_peer(&other.addr, Arc::new(peer), all.clone());
    }

    let writing = AtomicBool::new(true);
    let started = Instant::now();
    let (mut lost, mut written) = (0u64, 0u64);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut next_report = report_every;
            println!(
                "secs  rss MiB  heap MiB  index MiB (a, b)  disk MB (a, b)  exchanges (a, b)  repaired (a, b)  purged (a, b)"
            );
            while writing.load(Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if started.elapsed() < next_report {
                    continue;
                }
                next_report += report_every;
                let [a, b] = [nodes[0].status(), nodes[1].status()];
                let mib = |n: &Node| n.store.index_memory_bytes() as f64 / (1 << 20) as f64;
                let disk = |n: &Node| n.store.disk_bytes().unwrap_or(0) / 1_000_000;
                println!(
                    "{:4}  {:7.1}  {:8.1}  {:6.1}, {:6.1}    {:5}, {:5}    {:6}, {:6}     {:6}, {:6}   {:6}, {:6}",
                    started.elapsed().as_secs(),
                    rss_mib().unwrap_or(f64::NAN),
                    heap_mib(),
                    mib(&nodes[0]),
                    mib(&nodes[1]),
                    disk(&nodes[0]),
                    disk(&nodes[1]),
                    a.exchanges,
                    b.exchanges,
                    repaired(&a),
                    repaired(&b),
                    a.scrub.purged,
                    b.scrub.purged,
                );
            }
        });
        // The writer: a pseudo-random key each time (splitmix64), a delete one time in
        // eight, paced to `rate` a second.
        let mut x = 0u64;
        let mut random = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        while started.elapsed() < Duration::from_secs(secs) {
            let k = random() % keys;
            let partition = (k % u64::from(partitions)) as u32;
            // The coordinator's own clock, in the store's form (unix ms << 16, a counter
            // below).
            let unix_ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap()
                .as_millis();
            let version = ((unix_ms as u64) << 16) + (written & 0xffff);
            let record = if random() % 8 == 0 {
                Record::tombstone(version)
            } else {
                Record::value(version, format!("value {k} at {version}").as_bytes())
            };
            let name = format!("key-{k}");
            for node in &nodes {
                if random() % 20 == 0 {
                    lost += 1;
                    continue;
                }
                node.store
                    .replicate(partition, name.as_bytes(), &record)
                    .unwrap();
            }
            written += 1;
            let due = Duration::from_secs_f64(written as f64 / rate as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        writing.store(false, Relaxed);
    });
    println!(
        "writes stopped after {written} writes ({lost} messages lost); waiting for the nodes to converge"
    );
    let converged = Instant::now();
    while peers && !converged_now(&nodes, partitions, converged) {
        std::thread::sleep(Duration::from_millis(100));
    }
    for node in nodes {
        node.shut();
    }
}

/// True once both nodes hold the same roots (and says so); fails after two minutes.
fn converged_now(nodes: &[Node], partitions: u32, since: Instant) -> bool {
    let same = (0..partitions).all(|p| nodes[0].store.root(p) == nodes[1].store.root(p));
    if same {
        println!(
            "converged {:.1} s after the writes stopped; rss {:.1} MiB",
            since.elapsed().as_secs_f64(),
            rss_mib().unwrap_or(f64::NAN)
        );
    }
    assert!(
        same || since.elapsed() < Duration::from_secs(120),
        "the nodes did not converge"
    );
    same
}
