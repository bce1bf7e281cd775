//! Crash recovery from the base: the last snapshot, plus the buckets the checkpoints since
//! have rewritten, plus the regions marked since the last checkpoint.

mod common;

use std::collections::BTreeMap;

use common::{reference_root, Model};
use merkle_index::{Options, Recovery, Store};

/// 4,096 segments in pages of 256: a partition of a few thousand keys is dense, one of
/// a few dozen is sparse with buckets spanning many pages.
fn options() -> Options {
    let mut o = Options::default().checkpoint_interval(std::time::Duration::from_secs(3600));
    o.width = 16;
    o.levels = 3;
    o.region_segments = 16;
    o.cache_bytes = 16 << 20;
    o
}

#[derive(Clone)]
struct Writer {
    models: BTreeMap<u32, Model>,
    version: u64,
}

impl Writer {
    fn new() -> Writer {
        Writer {
            models: BTreeMap::new(),
            version: 0,
        }
    }

    fn put(&mut self, store: &Store, partition: u32, key: u64) {
        self.version += 1;
        let key = format!("key-{key}").into_bytes();
        let value = format!("value-{}", self.version).into_bytes();
        store
            .partition(partition)
            .put_versioned(&key, &value, self.version)
            .unwrap();
        self.models
            .entry(partition)
            .or_default()
            .insert(key, (self.version, false, value));
    }

    fn check(&self, store: &Store) {
        for (&p, model) in &self.models {
            assert_eq!(store.root(p).to_bytes(), reference_root(p, model), "{p}");
        }
        assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    }
}

fn recovery(store: &Store) -> (bool, u64, u64) {
    match store.open_report().recovery {
        Recovery::Regions {
            from_base,
            changed,
            regions,
            ..
        } => (from_base, changed, regions),
        ref other => panic!("expected region recovery, got {other:?}"),
    }
}

/// A store with a dense partition 0 (10,000 keys) and sparse partitions 1..=3, closed.
fn based(dir: &std::path::Path) -> Writer {
    let store = Store::open(dir, options()).unwrap();
    let mut w = Writer::new();
    for k in 0..10_000 {
        w.put(&store, 0, k);
    }
    for p in 1..=3 {
        for k in 0..5 {
            w.put(&store, p, k);
        }
    }
    store.close().unwrap();
    w
}

#[test]
fn recovery_reads_the_base_and_only_the_buckets_changed_since() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    // Checkpointed after the base: three buckets of partition 0, one of partition 2.
    for k in [1, 2, 3] {
        w.put(&store, 0, k);
    }
    w.put(&store, 2, 100);
    store.checkpoint().unwrap();
    // After the checkpoint: marked regions only.
    w.put(&store, 0, 19_000);
    w.put(&store, 3, 100);
    store.flush().unwrap();
    store.sync_index().unwrap();
    store.simulate_crash();

    let store = Store::open(dir.path(), options()).unwrap();
    let (from_base, changed, regions) = recovery(&store);
    assert!(from_base);
    assert!((2..=4).contains(&changed), "{changed} buckets changed");
    assert_eq!(regions, 2);
    w.check(&store);
    // The recovery renewed the base: a second crash reads nothing changed.
    store.checkpoint().unwrap();
    store.simulate_crash();
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(recovery(&store), (true, 0, 0));
    w.check(&store);
}

#[test]
fn a_clean_close_right_after_a_recovery_leaves_a_snapshot_the_next_open_maps() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let store = Store::open(dir.path(), options()).unwrap();
    w.put(&store, 0, 20_000);
    w.put(&store, 2, 200);
    store.flush().unwrap();
    store.simulate_crash();
    // The recovery queues a checkpoint that renews the base; closing at once used to
    // let that renewal take the close's, leaving the snapshot an epoch behind.
    let store = Store::open(dir.path(), options()).unwrap();
    assert!(matches!(
        store.open_report().recovery,
        Recovery::Regions { .. }
    ));
    store.close().unwrap();
    reopen_clean(dir.path(), &w);
}

#[test]
fn a_partition_that_changes_span_after_the_base_is_read_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let store = Store::open(dir.path(), options()).unwrap();
    // Partition 1 grows from 5 keys to 1,605: its buckets get a narrower span.
    for k in 1_000..2_600 {
        w.put(&store, 1, k);
    }
    store.checkpoint().unwrap();
    store.flush().unwrap();
    store.simulate_crash();

    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(recovery(&store), (true, 1, 0));
    w.check(&store);
}

/// The distinct spans of `partition`'s buckets in the closed store at `dir`.
fn spans(dir: &std::path::Path, partition: u32) -> Vec<u8> {
    let mut spans = Vec::new();
    common::with_sled(dir, |db| {
        let index = db.open_tree("index").unwrap();
        for key in index.scan_prefix(partition.to_be_bytes()).keys() {
            let span = key.unwrap()[4];
            if !spans.contains(&span) {
                spans.push(span);
            }
        }
    });
    spans
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// A partition whose span changes gets its new buckets first, a bounded batch at a
/// time, and loses its old ones after. A crash between any two of those batches, with
/// the base and without it, recovers by marked regions and exactly: a partition found
/// with buckets of two spans is read as their union, and the next checkpoint leaves
/// it one span. Most of the partition is outside the marked regions, so a bucket lost
/// (an old one removed before its replacement is written) shows in its root.
#[test]
fn a_change_of_span_cut_short_between_any_two_batches_recovers_exactly() {
    let mut options = options();
    // Regions of 8 segments at about 1,000 non-zero ones.
    options.region_segments = 2;
    let fixture = tempfile::tempdir().unwrap();
    let start = {
        let store = Store::open(fixture.path(), options.clone()).unwrap();
        let mut w = Writer::new();
        // Enough beside partition 1 that re-hashing its regions is the cheaper path.
        for p in [0, 2, 3, 4] {
            for k in 0..8_000 {
                w.put(&store, p, k);
            }
        }
        // 250 keys: one bucket (a span of 16 pages), kept while a bucket's average
        // stays under 1,024 non-zero segments.
        for k in 0..250 {
            w.put(&store, 1, k);
        }
        store.checkpoint().unwrap();
        for k in 250..1_100 {
            w.put(&store, 1, k);
        }
        store.close().unwrap();
        w
    };
    assert_eq!(spans(fixture.path(), 1), vec![1]);
    let mut cut_with_both = Vec::new();
    for cut in 0.. {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(fixture.path(), dir.path());
        let mut w = start.clone();
        let store = Store::open(dir.path(), options.clone()).unwrap();
        // Past 1,024 non-zero segments: 16 buckets of one page each. With two buckets
        // per batch, 8 batches of new buckets, then one that removes the old.
        for k in 1_100..1_300 {
            w.put(&store, 1, k);
        }
        store.checkpoint_batches_of(Some(2));
        store.fail_checkpoints_after(Some(cut));
        let finished = store.checkpoint().is_ok();
        store.flush().unwrap();
        store.simulate_crash();
        if spans(dir.path(), 1).len() > 1 {
            cut_with_both.push(cut);
        }
        let with_base = cut % 2 == 0;
        if !with_base {
            std::fs::remove_file(dir.path().join("index.snapshot")).unwrap();
        }

        let store = Store::open(dir.path(), options.clone()).unwrap();
        assert_eq!(recovery(&store).0, with_base, "cut after {cut} batches");
        w.check(&store);
        store.close().unwrap();
        assert_eq!(spans(dir.path(), 1), vec![0], "cut after {cut} batches");
        if finished {
            assert_eq!(cut, 9);
            break;
        }
    }
    assert_eq!(cut_with_both, (1..=8).collect::<Vec<_>>());
}

/// Reopens the store at `dir`, which must map a clean close's snapshot, and checks it
/// against `w`.
fn reopen_clean(dir: &std::path::Path, w: &Writer) -> Store {
    let store = Store::open(dir, options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    w.check(&store);
    store
}

fn snapshot_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join("index.snapshot")).unwrap()
}

#[test]
fn a_close_that_changed_nothing_keeps_the_snapshot_and_the_next_open_maps_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let written = snapshot_bytes(dir.path());
    // Reads and an explicit checkpoint change nothing: the file is not rewritten.
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    assert!(store.get(b"key-1").unwrap().is_some());
    store.checkpoint().unwrap();
    store.close().unwrap();
    assert_eq!(snapshot_bytes(dir.path()), written);
    let store = reopen_clean(dir.path(), &w);
    // Epochs still only grow, and a crash after a write recovers from that snapshot.
    w.put(&store, 0, 30_000);
    store.flush().unwrap();
    store.simulate_crash();
    let store = Store::open(dir.path(), options()).unwrap();
    let (from_base, changed, regions) = recovery(&store);
    assert!(from_base);
    assert_eq!((changed, regions), (0, 1));
    w.check(&store);
    // A write is a change: the close after it writes a new snapshot.
    w.put(&store, 1, 300);
    store.close().unwrap();
    assert_ne!(snapshot_bytes(dir.path()), written);
    reopen_clean(dir.path(), &w);
}

#[test]
fn a_close_after_only_a_drop_writes_a_snapshot_without_the_partition() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.drop_partition(2).unwrap(), 5);
    w.models.remove(&2);
    store.close().unwrap();
    let store = reopen_clean(dir.path(), &w);
    assert!(!store.partitions().contains(&2));
    assert!(store.root(2).is_zero());
}

#[test]
fn a_partition_dropped_after_the_base_stays_dropped_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let store = Store::open(dir.path(), options()).unwrap();
    assert_eq!(store.drop_partition(2).unwrap(), 5);
    w.models.remove(&2);
    w.put(&store, 1, 100);
    store.flush().unwrap();
    store.sync_index().unwrap();
    store.simulate_crash();

    let store = Store::open(dir.path(), options()).unwrap();
    let (from_base, changed, _) = recovery(&store);
    assert!(from_base);
    assert_eq!(changed, 1);
    assert!(!store.partitions().contains(&2));
    assert!(store.root(2).is_zero());
    w.check(&store);
}

#[test]
fn a_base_of_another_epoch_is_refused_and_every_bucket_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = based(dir.path());
    let old = std::fs::read(dir.path().join("index.snapshot")).unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    w.put(&store, 0, 19_000);
    store.close().unwrap();
    let store = Store::open(dir.path(), options()).unwrap();
    w.put(&store, 1, 9_000);
    store.flush().unwrap();
    store.sync_index().unwrap();
    store.simulate_crash();
    // As if a crash had cut a renewal short, or the file were swapped: a stale base.
    std::fs::write(dir.path().join("index.snapshot"), old).unwrap();

    let store = Store::open(dir.path(), options()).unwrap();
    let Recovery::Regions {
        from_base: false,
        snapshot_problem: Some(problem),
        ..
    } = &store.open_report().recovery
    else {
        panic!("{:?}", store.open_report().recovery);
    };
    assert!(problem.contains("base unusable"), "{problem}");
    w.check(&store);
}
