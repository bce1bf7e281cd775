//! A disk that fills up: writes and the close's snapshot meet `ENOSPC`. Whatever was
//! flushed before survives, and the reopened store's index matches its data.
//!
//! These tests mount a small tmpfs, so they need root and are ignored by default:
//! `cargo test --test disk_full -- --ignored`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use merkle_index::{Hash, Options, Store};

/// A tmpfs mounted on a fresh directory, unmounted on drop.
struct SmallDisk {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl SmallDisk {
    fn mount(kib: u64) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        let size = format!("size={kib}k");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &size, "tmpfs", path_str(&path)],
        );
        SmallDisk { _dir: dir, path }
    }

    /// Grows or shrinks the file system (not below what it holds).
    fn resize(&self, kib: u64) {
        let opts = format!("remount,size={kib}k");
        run("mount", &["-o", &opts, path_str(&self.path)]);
    }

    fn used_kib(&self) -> u64 {
        let out = Command::new("df")
            .args(["-k", "--output=used", path_str(&self.path)])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        text.lines().nth(1).unwrap().trim().parse().unwrap()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program).args(args).status().unwrap();
    assert!(status.success(), "{program} {args:?} failed (root needed)");
}

fn key(i: u64) -> Vec<u8> {
    format!("key-{i:012}").into_bytes()
}

const PARTITIONS: u64 = 8;

/// A store at `db` holding `keys` keys of 100 B over the partitions, flushed, with its
/// partitions' roots.
fn filled(db: &Path, keys: u64) -> (Store, Vec<Hash>) {
    let store = Store::open(db, Options::default()).unwrap();
    for i in 0..keys {
        let partition = store.partition((i % PARTITIONS) as u32);
        partition.put(&key(i), &[i as u8; 100]).unwrap();
    }
    store.flush().unwrap();
    store.sync_index().unwrap();
    let roots = (0..PARTITIONS as u32).map(|p| store.root(p)).collect();
    (store, roots)
}

#[test]
#[ignore = "mounts a tmpfs: needs root"]
fn flushed_writes_survive_a_full_disk() {
    let disk = SmallDisk::mount(20 * 1024);
    let db = disk.path.join("store");
    let options = Options::default().checkpoint_interval(Duration::from_millis(50));
    let store = Store::open(&db, options).unwrap();
    let value = [7u8; 100];
    let mut flushed = 0;
    let mut failures = 0;
    for i in 0..1_000_000u64 {
        let written = store
            .partition((i % PARTITIONS) as u32)
            .put(&key(i), &value)
            .and_then(|_| {
                if i % 1000 == 999 {
                    store.flush()
                } else {
                    Ok(())
                }
            });
        match written {
            Ok(()) if i % 1000 == 999 => flushed = i + 1,
            Ok(()) => {}
            Err(e) => {
                assert!(e.to_string().contains("No space left"), "{e}");
                failures += 1;
                if failures == 100 {
                    break;
                }
            }
        }
    }
    assert_eq!(failures, 100, "the disk never filled");
    assert!(flushed > 10_000, "only {flushed} keys fitted");
    // The periodic checkpoints on the hasher thread fail too, and the store says why.
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.checkpoint_error().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let why = store.checkpoint_error().unwrap_or_default();
    assert!(why.contains("No space left"), "checkpoint error: {why:?}");
    // Space comes back; the store that met the error is closed (it may fail to), then
    // reopened as after a crash.
    disk.resize(400 * 1024);
    let _ = store.close();
    let store = Store::open(&db, Options::default()).unwrap();
    for i in 0..flushed {
        let got = store
            .partition((i % PARTITIONS) as u32)
            .get(&key(i))
            .unwrap();
        assert_eq!(got.as_deref(), Some(&value[..]), "flushed key {i} lost");
    }
    let report = store.verify(&mut |_| {}).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert!(report.keys >= flushed);
    // And it takes writes again.
    store.put(b"after", b"space came back").unwrap();
    store.flush().unwrap();
}

#[test]
#[ignore = "mounts a tmpfs: needs root"]
fn a_close_that_cannot_write_its_snapshot_loses_nothing() {
    // Room for the data and nothing (0 KiB) up to well past the snapshot's size (8
    // trees of 50k keys: about 1 MiB), so the close fails in sled's last flush, in the
    // checkpoint's buckets, or in the snapshot file.
    for slack in [0, 200, 600, 1000, 1500, 4000] {
        let disk = SmallDisk::mount(400 * 1024);
        let db = disk.path.join("store");
        let (store, roots) = filled(&db, 50_000);
        disk.resize(disk.used_kib() + slack);
        let closed = store.close();
        disk.resize(400 * 1024);
        let store = Store::open(&db, Options::default()).unwrap();
        let reopened: Vec<_> = (0..PARTITIONS as u32).map(|p| store.root(p)).collect();
        assert_eq!(roots, reopened, "slack {slack} KiB, close {closed:?}");
        let report = store.verify(&mut |_| {}).unwrap();
        assert_eq!(report.keys, 50_000);
        assert!(report.problems.is_empty(), "{:?}", report.problems);
    }
}

/// A drop that meets a full disk fails with an error, and no write to the partition
/// lands after it (refused, or sled's own error: sled refuses everything after an I/O
/// error until the store is reopened). Reopened with room, the store holds the
/// partition whole or not at all, loses nothing of the others, and its index matches
/// its data; the drop then finishes.
#[test]
#[ignore = "mounts a tmpfs: needs root"]
fn a_drop_that_meets_a_full_disk_loses_nothing_and_finishes_after_a_reopen() {
    for slack in [0, 50, 200, 800, 3000] {
        let disk = SmallDisk::mount(400 * 1024);
        let db = disk.path.join("store");
        let (store, roots) = filled(&db, 40_000);
        disk.resize(disk.used_kib() + slack);
        let first = store.drop_partition(3);
        if let Err(e) = &first {
            let refused = store.partition(3).put(b"k", b"v");
            eprintln!("slack {slack} KiB: the drop failed ({e}); a write then: {refused:?}");
            assert!(refused.is_err());
        }
        disk.resize(400 * 1024);
        let _ = store.close();
        let store = Store::open(&db, Options::default()).unwrap();
        for p in (0..PARTITIONS as u32).filter(|&p| p != 3) {
            assert_eq!(
                store.root(p),
                roots[p as usize],
                "slack {slack} KiB, partition {p}"
            );
        }
        let left = store.count_keys(3).unwrap();
        assert!(
            left == 0 || left == 5_000,
            "slack {slack} KiB: {left} keys left"
        );
        assert!(first.is_err() || left == 0);
        let report = store.verify(&mut |_| {}).unwrap();
        assert!(report.problems.is_empty(), "{:?}", report.problems);
        if left > 0 {
            assert_eq!(store.root(3), roots[3]);
            assert_eq!(store.drop_partition(3).unwrap(), 5_000);
        }
        assert_eq!(store.count_keys(3).unwrap(), 0);
        store.partition(3).put(b"k", b"v").unwrap();
    }
}
