//! Crash safety under kill -9: a child process writes (and checkpoints) until it is
//! killed at a random moment; after reopening, every write acknowledged by a completed
//! flush is present, the data is a gap-free prefix of the writes, and the index equals a
//! recomputation. Twice: on a store so small that recovery scans it whole, and on one
//! large enough that recovery must re-hash only the regions marked since the last
//! checkpoint, never rebuild. `MERKLE_CRASH_ITERATIONS=100` runs the long version.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{reference_root, Model};
use merkle_index::{Options, Recovery, Store};

/// Keys of the small store: so few that every crash marks a large share of them, and
/// recovery takes its one full scan.
const SMALL: u64 = 500;
/// Keys of the large store, filled by a first run of `PRELOAD` writes: each crash then
/// marks a small share of them, and recovery re-hashes only the marked regions.
const LARGE: u64 = 100_000;
const PRELOAD: u64 = 60_000;
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

/// Operation `i` (its version is `i + 1`) on a store of `keys` keys: which partition and
/// key, and the value (`None` for a delete). Key `k` lives in partition `k % PARTITIONS`.
fn op(i: u64, keys: u64) -> (u32, Vec<u8>, Option<Vec<u8>>) {
    let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 7;
    let k = x % keys;
    let value =
        (i % 7 != 3).then(|| format!("value-{i}-{}", "x".repeat((x % 40) as usize)).into_bytes());
    ((k % PARTITIONS) as u32, key(k), value)
}

fn key(k: u64) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

/// The expected contents, one model per partition, after the first `applied`
/// operations; `extend` applies more.
struct Expected {
    keys: u64,
    models: Vec<Model>,
    applied: u64,
}

impl Expected {
    fn extend(&mut self, to: u64) {
        for i in self.applied..to {
            let (p, key, value) = op(i, self.keys);
            let entry = match value {
                Some(v) => (i + 1, false, v),
                None => (i + 1, true, Vec::new()),
            };
            self.models[p as usize].insert(key, entry);
        }
        self.applied = self.applied.max(to);
    }
}

#[test]
#[ignore = "child process of the crash tests; run by them"]
fn crash_child() {
    let Ok(dir) = std::env::var("MERKLE_CRASH_DIR") else {
        return;
    };
    let var = |name: &str| -> u64 { std::env::var(name).unwrap().parse().unwrap() };
    let (start, keys) = (var("MERKLE_CRASH_START"), var("MERKLE_CRASH_KEYS"));
    let store = Store::open(&dir, options()).unwrap();
    let mut out = std::io::stdout();
    for i in start.. {
        let (p, key, value) = op(i, keys);
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
fn check(store: &Store, durable: u64, expected: &mut Expected) -> u64 {
    // The highest version present tells how long the surviving prefix is.
    // Every key read once, in its own partition.
    let records: Vec<_> = (0..expected.keys)
        .map(|k| {
            let p = (k % PARTITIONS) as u32;
            store.partition(p).get_record(&key(k)).unwrap()
        })
        .collect();
    let survived = records
        .iter()
        .flatten()
        .map(|r| r.version)
        .max()
        .unwrap_or(0);
    assert!(
        survived >= durable,
        "lost acknowledged writes: {survived} < {durable}"
    );
    assert!(survived >= expected.applied, "writes went missing");
    expected.extend(survived);
    store.sync_index().unwrap();
    for (k, got) in (0..).zip(records) {
        let model = &expected.models[(k % PARTITIONS) as usize];
        let want = model.get(&key(k));
        assert_eq!(
            got.as_ref().map(|r| r.version),
            want.map(|e| e.0),
            "gap in prefix at key {k}"
        );
        if let (Some(g), Some(w)) = (got, want) {
            assert_eq!((g.tombstone, &g.value), (w.1, &w.2));
        }
    }
    for (p, model) in expected.models.iter().enumerate() {
        let p = p as u32;
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

/// Runs `iterations` rounds of: a child writes from where the last left off until it is
/// killed (the first, with `preload`, once that many writes are durable; the others at a
/// pseudo-random moment), then the store is reopened and checked. Returns how often
/// each open path was taken.
fn kill_nine_rounds(keys: u64, preload: u64) -> BTreeMap<String, u32> {
    let iterations: u64 = std::env::var("MERKLE_CRASH_ITERATIONS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut expected = Expected {
        keys,
        models: vec![Model::new(); PARTITIONS as usize],
        applied: 0,
    };
    let mut recoveries = BTreeMap::<String, u32>::new();
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
            .env("MERKLE_CRASH_START", expected.applied.to_string())
            .env("MERKLE_CRASH_KEYS", keys.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (progress, durable_so_far) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut durable = 0u64;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(n) = line.strip_prefix("durable ") {
                    durable = n.trim().parse().unwrap();
                    let _ = progress.send(durable);
                }
            }
            durable
        });
        if iteration == 0 && preload > 0 {
            let deadline = Instant::now() + Duration::from_secs(600);
            while durable_so_far
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("the child stopped before its preload")
                < preload
            {}
        } else {
            // Pseudo-random kill time between 60 and 560 ms (open takes some of it).
            let wait = 60 + (iteration.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) % 500;
            std::thread::sleep(Duration::from_millis(wait));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        let durable = reader.join().unwrap();

        let store = Store::open(dir.path(), options()).unwrap();
        let kind = match store.open_report().recovery {
            Recovery::Regions {
                from_base: true, ..
            } => "Regions from the base".to_string(),
            ref other => format!("{other:?}")
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string(),
        };
        *recoveries.entry(kind).or_default() += 1;
        let survived = check(&store, durable, &mut expected);
        // Every other time, crash the checker too, so recovery runs over a recovery.
        if iteration % 2 == 0 {
            store.close().unwrap();
        } else {
            store.flush().unwrap();
            store.simulate_crash();
        }
        assert!(survived > 0, "the child never wrote anything");
    }
    eprintln!(
        "{keys} keys: {iterations} kills, {} writes survived; open paths: {recoveries:?}",
        expected.applied
    );
    recoveries
}

#[test]
fn crash_kill_nine() {
    kill_nine_rounds(SMALL, 0);
}

/// On a store large enough for it, recovery after kill -9 re-hashes only the regions
/// marked since the last checkpoint (no full rebuild), and is exact.
#[test]
fn crash_kill_nine_recovers_only_marked_regions() {
    let recoveries = kill_nine_rounds(LARGE, PRELOAD);
    // Every kill's recovery (the preload's too) re-hashed marked regions, mostly with
    // the checkpoint from the base snapshot plus the buckets rewritten since (from every
    // bucket where a kill fell after a renewed snapshot was renamed into place and before
    // the meta record named it: 2 recoveries in 500 in long runs).
    assert!(
        recoveries
            .keys()
            .all(|k| k == "Regions" || k == "Regions from the base"),
        "{recoveries:?}"
    );
    assert!(
        recoveries.contains_key("Regions from the base"),
        "{recoveries:?}"
    );
}
