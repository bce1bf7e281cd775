//! Crash safety under kill -9: a child process writes (and checkpoints) until it is
//! killed at a random moment; after reopening, every write acknowledged by a completed
//! flush is present, the data is a gap-free prefix of the writes, and the index equals a
//! recomputation. `MERKLE_CRASH_ITERATIONS=100` runs the long version.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{reference_root, Model};
use merkle_index::{Options, Store};

const KEYS: u64 = 500;
// Many partitions, so each checkpoint writes several per-partition batches that a
// kill can fall between.
const PARTITIONS: u64 = 24;

fn options() -> Options {
    let mut o = Options::default().checkpoint_interval(Duration::from_millis(15));
    o.width = 16;
    o.levels = 3;
    o.cache_bytes = 16 << 20;
    o
}

/// Operation `i` (its version is `i + 1`): which partition and key, and the value
/// (`None` for a delete).
fn op(i: u64) -> (u32, Vec<u8>, Option<Vec<u8>>) {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
    let key = format!("key-{}", x % KEYS).into_bytes();
    let partition = (x % KEYS % PARTITIONS) as u32;
    let value =
        (i % 7 != 3).then(|| format!("value-{i}-{}", "x".repeat((x % 40) as usize)).into_bytes());
    (partition, key, value)
}

/// The expected contents after the first `m` operations.
fn model_after(m: u64) -> Vec<Model> {
    let mut models = vec![Model::new(); PARTITIONS as usize];
    for i in 0..m {
        let (p, key, value) = op(i);
        let entry = match value {
            Some(v) => (i + 1, false, v),
            None => (i + 1, true, Vec::new()),
        };
        models[p as usize].insert(key, entry);
    }
    models
}

#[test]
#[ignore = "child process of crash_kill_nine; run by it"]
fn crash_child() {
    let Ok(dir) = std::env::var("MERKLE_CRASH_DIR") else {
        return;
    };
    let start: u64 = std::env::var("MERKLE_CRASH_START")
        .unwrap()
        .parse()
        .unwrap();
    let store = Store::open(&dir, options()).unwrap();
    let mut out = std::io::stdout();
    for i in start.. {
        let (p, key, value) = op(i);
        match value {
            Some(v) => store.partition(p).put_versioned(&key, &v, i + 1).unwrap(),
            None => store.partition(p).delete_versioned(&key, i + 1).unwrap(),
        }
        if i % 50 == 49 {
            store.flush().unwrap();
            use std::io::Write;
            writeln!(out, "durable {}", i + 1).unwrap();
            out.flush().unwrap();
        }
        if i % 400 == 0 {
            store.checkpoint().unwrap();
        }
    }
}

/// Checks the reopened store against the operations; returns how many survived.
fn check(store: &Store, durable: u64) -> u64 {
    // The highest version present tells how long the surviving prefix is.
    let mut survived = 0;
    for p in 0..PARTITIONS as u32 {
        for k in 0..KEYS {
            let key = format!("key-{k}").into_bytes();
            if let Some(r) = store.partition(p).get_record(&key).unwrap() {
                survived = survived.max(r.version);
            }
        }
    }
    assert!(
        survived >= durable,
        "lost acknowledged writes: {survived} < {durable}"
    );
    let models = model_after(survived);
    store.sync_index().unwrap();
    for (p, model) in models.iter().enumerate() {
        let p = p as u32;
        for k in 0..KEYS {
            let key = format!("key-{k}").into_bytes();
            let got = store.partition(p).get_record(&key).unwrap();
            let want = model.get(&key);
            assert_eq!(
                got.as_ref().map(|r| r.version),
                want.map(|e| e.0),
                "gap in prefix at {key:?}"
            );
            if let (Some(g), Some(w)) = (got, want) {
                assert_eq!((g.tombstone, &g.value), (w.1, &w.2));
            }
        }
        assert_eq!(
            store.root(p).to_bytes(),
            reference_root(p, model),
            "root of partition {p}"
        );
    }
    let report = store.verify(&mut |_| {}).unwrap();
    assert!(report.is_ok(), "{:?}", report.problems);
    survived
}

#[test]
fn crash_kill_nine() {
    let iterations: u64 = std::env::var("MERKLE_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut next = 0u64;
    let mut recoveries = std::collections::BTreeMap::<String, u32>::new();
    for iteration in 0..iterations {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("MERKLE_CRASH_DIR", dir.path())
            .env("MERKLE_CRASH_START", next.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut durable = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("durable ") {
                    durable = n.trim().parse().unwrap();
                }
            }
            durable
        });
        // Pseudo-random kill time between 60 and 560 ms (open takes some of it).
        let wait = 60 + (iteration.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) % 500;
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let durable = reader.join().unwrap();

        let store = Store::open(dir.path(), options()).unwrap();
        let kind = format!("{:?}", store.open_report().recovery);
        *recoveries
            .entry(kind.split([' ', '{']).next().unwrap().to_string())
            .or_default() += 1;
        let survived = check(&store, durable.max(next));
        next = survived;
        // Every other time, crash the checker too, so recovery runs over a recovery.
        if iteration % 2 == 0 {
            store.close().unwrap();
        } else {
            store.flush().unwrap();
            store.simulate_crash();
        }
    }
    eprintln!(
        "crash_kill_nine: {iterations} kills, {next} writes survived; open paths: {recoveries:?}"
    );
    assert!(next > 0, "the child never wrote anything");
}
