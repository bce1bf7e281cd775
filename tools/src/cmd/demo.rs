//! `demo`: the seed's story end to end, in a temporary directory.
//!
//! Three replicas hold the shopping-cart partition. A coordinator writes every cart
//! update to all three; a few replication messages are lost; replica 3 is killed (SIGKILL)
//! in the middle of its writes and restarts with crash recovery; then anti-entropy
//! compares the trees (replica 2 over authenticated TCP) and repairs every replica.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use merkle_index::{Options, Recovery, Replica, Store, SyncOptions};

use crate::Outcome;
use merkle_index::net::{self as server, Client, Key, ServeOptions, Stop};

const CARTS: u64 = 500;
const PARTITION: u32 = 7;
const BEFORE_CRASH: u64 = 3000;
const DURING_CRASH: u64 = 1000;

#[derive(clap::Args)]
pub struct Args {
    /// Keep the replicas in this directory instead of a temporary one.
    #[arg(long)]
    dir: Option<PathBuf>,
}

#[derive(clap::Args)]
pub struct WriterArgs {
    #[arg(long)]
    db: PathBuf,
    #[arg(long)]
    start: u64,
    #[arg(long)]
    count: u64,
    #[arg(long)]
    base_version: u64,
}

/// Update `i` of the cart stream: which cart, and its new contents.
fn update(i: u64) -> (Vec<u8>, Vec<u8>) {
    let cart = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % CARTS;
    let key = format!("cart-{cart:04}");
    let value = format!("cart {cart}: {} items after update {i}", i % 9 + 1);
    (key.into_bytes(), value.into_bytes())
}

fn lost_for(replica: usize, i: u64) -> bool {
    // A few replication messages never arrive: about 1 in 150 per replica.
    (i * 7 + replica as u64 * 13).is_multiple_of(150)
}

/// The process that plays replica 3 until it is killed.
pub fn writer(a: WriterArgs) -> anyhow::Result<Outcome> {
    let store = Store::open_existing(&a.db, Options::default())?;
    let mut out = std::io::stdout().lock();
    for i in a.start..a.start + a.count {
        if lost_for(3, i) {
            continue;
        }
        let (key, value) = update(i);
        store
            .partition(PARTITION)
            .put_versioned(&key, &value, a.base_version + i)?;
        if i % 25 == 24 {
            store.flush()?;
            writeln!(out, "durable {}", i + 1)?;
            out.flush()?;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    store.close()?;
    Ok(Outcome::Fine)
}

fn short(h: merkle_index::Hash) -> String {
    h.to_hex()[..16].to_string()
}

pub fn run(a: Args) -> anyhow::Result<Outcome> {
    let temp;
    let root: &Path = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d
        }
        None => {
            temp = tempfile_dir()?;
            temp.path()
        }
    };
    let dirs: Vec<PathBuf> = (1..=3).map(|n| root.join(format!("replica-{n}"))).collect();
    outln!(
        "merkle-index demo: three replicas of the shopping-cart partition ({PARTITION}) in {}",
        root.display()
    );
    let replicas: Vec<Store> = dirs
        .iter()
        .map(|d| Store::open(d, Options::default()))
        .collect::<Result<_, _>>()?;
    outln!(
        "  each keeps a Merkle tree of {} segments (width {}, {} levels) beside its data",
        replicas[0].shape().segments,
        replicas[0].shape().width,
        replicas[0].shape().levels
    );

    // 1. The coordinator writes every update to all three replicas; a few are lost.
    let base_version = replicas[0]
        .partition(PARTITION)
        .put(b"cart-init", b"empty")?
        + 1;
    for r in &replicas[1..] {
        r.partition(PARTITION)
            .put_versioned(b"cart-init", b"empty", base_version - 1)?;
    }
    let mut lost = [0u64; 3];
    for i in 0..BEFORE_CRASH {
        let (key, value) = update(i);
        for (n, r) in replicas.iter().enumerate() {
            if n > 0 && lost_for(n + 1, i) {
                lost[n] += 1;
                continue;
            }
            r.partition(PARTITION)
                .put_versioned(&key, &value, base_version + i)?;
        }
    }
    outln!(
        "\n1. {BEFORE_CRASH} cart updates replicated; lost on the way: {} to replica 2, {} to replica 3",
        lost[1], lost[2]
    );

    // 2. Replica 3 runs in its own process and is killed mid-write.
    let mut replicas = replicas.into_iter();
    let (r1, r2, r3) = (
        replicas.next().context("r1")?,
        replicas.next().context("r2")?,
        replicas.next().context("r3")?,
    );
    r3.close()?;
    let mut child = Command::new(std::env::current_exe()?)
        .args(["demo-writer", "--db"])
        .arg(&dirs[2])
        .args([
            "--start",
            &BEFORE_CRASH.to_string(),
            "--count",
            &DURING_CRASH.to_string(),
        ])
        .args(["--base-version", &base_version.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("start replica 3's process")?;
    let stdout = child.stdout.take().context("replica 3's stdout")?;
    let mut durable = 0u64;
    for line in BufReader::new(stdout).lines() {
        if let Some(n) = line?.strip_prefix("durable ") {
            durable = n.trim().parse()?;
        }
        if durable >= BEFORE_CRASH + DURING_CRASH / 3 {
            break;
        }
    }
    child.kill().context("kill replica 3")?;
    child.wait()?;
    for i in BEFORE_CRASH..BEFORE_CRASH + DURING_CRASH {
        let (key, value) = update(i);
        for (n, r) in [&r1, &r2].into_iter().enumerate() {
            if n == 0 || !lost_for(2, i) {
                r.partition(PARTITION)
                    .put_versioned(&key, &value, base_version + i)?;
            }
        }
    }
    outln!(
        "2. replica 3 was killed (SIGKILL) mid-write after update {durable}; replicas 1 and 2 took all {} more updates",
        DURING_CRASH
    );
    let started = Instant::now();
    let r3 = Store::open(&dirs[2], Options::default())?;
    let how = match &r3.open_report().recovery {
        Recovery::Regions { regions, keys, .. } => {
            format!(
                "crash recovery re-hashed {regions} marked regions ({keys} keys), no full rebuild"
            )
        }
        Recovery::FullRebuild { reason, .. } => format!("full rebuild ({reason})"),
        other => format!("{other:?}"),
    };
    outln!(
        "   replica 3 restarted: {how}; index ready in {:.1} ms (open took {:.1} ms)",
        r3.open_report().duration.as_secs_f64() * 1e3,
        started.elapsed().as_secs_f64() * 1e3
    );
    let verified = r3.verify(&mut |_| {})?;
    outln!(
        "   verify of replica 3: {} keys, {} problems",
        verified.keys,
        verified.problems.len()
    );

    // 3. Anti-entropy: the roots differ; replica 2 is served over an encrypted channel.
    let replicas = [&r1, &r2, &r3];
    for r in replicas {
        r.sync_index()?;
    }
    outln!("\n3. roots before anti-entropy:");
    for (n, r) in replicas.iter().enumerate() {
        outln!("   replica {}: {}", n + 1, short(r.root(PARTITION)));
    }
    // A fresh random secret for this run (the demo's processes share it in memory).
    let key = Key::from_secret(&random_secret()?)?;
    let (listener, addr) = server::bind("127.0.0.1:0")?;
    let served = Arc::new(r2);
    let stop = Stop::new(addr);
    // The server's log goes to a file, so it cannot interleave with the story.
    let log_path = root.join("server.log");
    let log_file = Mutex::new(File::create(&log_path).context("create the server log")?);
    let log: server::Log = Arc::new(move |line| {
        let mut f = log_file.lock().unwrap_or_else(|p| p.into_inner());
        let _ = writeln!(f, "{line}");
    });
    let server = {
        let (served, key, stop) = (Arc::clone(&served), key.clone(), stop.clone());
        let options = ServeOptions {
            max_connections: 4,
            ..ServeOptions::default()
        };
        std::thread::spawn(move || server::serve(served, listener, key, options, &stop, log))
    };
    let client = Client::connect(&addr.to_string(), &key, Duration::from_secs(10))?;
    let options = SyncOptions::default();
    let report = merkle_index::sync(&r1, &client, PARTITION, &options)?;
    outln!(
        "   replica 1 <-> replica 2 over TCP ({addr}): {} differing keys found in {} segments (later updates had overwritten the other lost ones), {} repaired there; {} round trips, {} bytes sent, {} received",
        report.differences,
        report.diff.segments_compared,
        report.repaired_remote,
        client.round_trips.load(Relaxed),
        client.wire_bytes().0,
        client.wire_bytes().1,
    );
    let report = merkle_index::sync(&r1, &r3, PARTITION, &options)?;
    outln!(
        "   replica 1 <-> replica 3 locally: {} differing keys found, {} repaired there, {} here; {} round trips, {} payload bytes",
        report.differences,
        report.repaired_remote,
        report.repaired_local,
        report.diff.round_trips,
        report.diff.payload_bytes
    );
    for r in [&r1, &r3] {
        r.sync_index()?;
    }
    let check = merkle_index::diff(&r3, &client, PARTITION)?;
    let roots = [
        r1.root(PARTITION),
        client.roots(&[PARTITION])?[0],
        r3.root(PARTITION),
    ];
    drop(client);
    // Stop the server and close replica 2 cleanly, as `serve` does on SIGTERM.
    stop.trigger();
    server
        .join()
        .map_err(|_| anyhow::anyhow!("the server thread panicked"))??;
    Arc::into_inner(served)
        .context("replica 2 is still shared")?
        .close()?;
    let logged = std::fs::read_to_string(&log_path).unwrap_or_default();
    outln!(
        "   (replica 2's server log, {} lines: {}{})",
        logged.lines().count(),
        log_path.display(),
        if a.dir.is_some() {
            ""
        } else {
            "; pass --dir to keep it"
        }
    );
    outln!("\n4. roots after anti-entropy:");
    for (n, root) in roots.iter().enumerate() {
        outln!("   replica {}: {}", n + 1, short(*root));
    }
    if roots.iter().all(|r| *r == roots[0]) && check.differences.is_empty() {
        outln!("   all three replicas are equal (replica 2 vs 3 re-checked: 1 round trip, 0 differences)");
        r1.close()?;
        r3.close()?;
        Ok(Outcome::Fine)
    } else {
        bail!("replicas still differ after anti-entropy")
    }
}

fn random_secret() -> anyhow::Result<[u8; 32]> {
    use std::io::Read;
    let mut out = [0u8; 32];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .context("read /dev/urandom")?;
    Ok(out)
}

fn tempfile_dir() -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("merkle-index-demo-")
        .tempdir()
        .context("create a temporary directory")
}
