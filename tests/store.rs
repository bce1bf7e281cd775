//! The engine's basic promises: reads and writes, the three open paths, verify, rebuild.

mod common;

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use common::{reference_root, reference_segment, small_options, Model};
use merkle_index::{Error, Hash, Options, ProblemKind, Record, Recovery, Store};

#[test]
fn writes_reads_and_root_match_the_reference() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let p = store.partition(3);
    let mut model = Model::new();
    for i in 0..200u32 {
        let key = format!("k{i}").into_bytes();
        let value = format!("v{i}").into_bytes();
        p.put_versioned(&key, &value, u64::from(i) + 1).unwrap();
        model.insert(key, (u64::from(i) + 1, false, value));
    }
    p.delete_versioned(b"k7", 1000).unwrap();
    model.insert(b"k7".to_vec(), (1000, true, Vec::new()));
    store.sync_index().unwrap();
    assert_eq!(p.root().to_bytes(), reference_root(3, &model));
    assert_eq!(p.get(b"k7").unwrap(), None);
    assert_eq!(p.get_record(b"k7").unwrap().unwrap().version, 1000);
    assert_eq!(p.get(b"k8").unwrap(), Some(b"v8".to_vec()));
    assert_eq!(store.root(0), Hash::ZERO);

    // The tree read API agrees with itself and with placement.
    let seg = reference_segment(b"k8", 64) as u32;
    let entries = store.segment_entries(3, seg).unwrap();
    assert!(entries.iter().any(|e| e.key == b"k8"));
    let seg_hash = entries.iter().fold(Hash::ZERO, |acc, e| acc ^ e.hash);
    assert_eq!(
        store.nodes(3, 3, &[u64::from(seg)]).unwrap(),
        vec![seg_hash]
    );
    let children = store.children(3, 0, 0).unwrap();
    assert_eq!(children.len(), 4);
    assert_eq!(children.iter().fold(Hash::ZERO, |a, &h| a ^ h), p.root());
    assert!(store.nodes(3, 4, &[0]).is_err());
    assert!(store.nodes(3, 1, &[4]).is_err());
    assert!(store.segment_entries(3, 64).is_err());
}

#[test]
fn clean_reopen_maps_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Created);
    for i in 0..100u32 {
        store.partition(i % 3).put(&i.to_le_bytes(), b"x").unwrap();
    }
    store.sync_index().unwrap();
    let roots: Vec<Hash> = (0..3).map(|p| store.root(p)).collect();
    store.close().unwrap();
    assert!(dir.path().join("index.snapshot").exists());

    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    assert_eq!((0..3).map(|p| store.root(p)).collect::<Vec<_>>(), roots);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // The snapshot is no clean close's any more: after a crash it is only the base the
    // checkpoint is read from, and what was written since is re-hashed.
    store.partition(1).put(b"after", b"y").unwrap();
    store.flush().unwrap();
    store.sync_index().unwrap();
    let root = store.root(1);
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let Recovery::Regions {
        from_base: true,
        regions: 1,
        ..
    } = store.open_report().recovery
    else {
        panic!("{:?}", store.open_report().recovery);
    };
    assert_eq!(store.root(1), root);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

#[test]
fn crash_reopen_rehashes_only_marked_regions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..300u32 {
        store.put(&i.to_le_bytes(), b"before").unwrap();
    }
    store.checkpoint().unwrap();
    store.put(b"after-1", b"x").unwrap();
    store.put(b"after-2", b"y").unwrap();
    store.flush().unwrap();
    store.sync_index().unwrap();
    let root = store.root(0);
    store.simulate_crash();

    let store = Store::open(dir.path(), small_options()).unwrap();
    match &store.open_report().recovery {
        Recovery::Regions {
            regions,
            segments,
            snapshot_problem,
            ..
        } => {
            assert!((1..=2).contains(regions), "{regions} regions");
            assert_eq!(*segments, regions * 4);
            assert_eq!(snapshot_problem, &None);
        }
        other => panic!("expected region recovery, got {other:?}"),
    }
    assert_eq!(store.root(0), root);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // The recovery was checkpointed: a second crash has nothing left to re-hash.
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert!(matches!(
        store.open_report().recovery,
        Recovery::Regions { regions: 0, .. }
    ));
    assert_eq!(store.root(0), root);
}

/// Marks of epochs a durable checkpoint covers are obsolete: the hasher deletes them in
/// the background, a crash before it has may leave some, and recovery ignores them. A
/// clean close leaves none.
#[test]
fn obsolete_marks_are_ignored_and_a_clean_close_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..300u32 {
        store.put(&i.to_le_bytes(), b"before").unwrap();
    }
    let checkpoint = store.checkpoint().unwrap().epoch;
    store.put(b"after", b"x").unwrap();
    store.flush().unwrap();
    store.sync_index().unwrap();
    let root = store.root(0);
    store.simulate_crash();
    // As if the crash came before the checkpoint's marks were all deleted: 16 regions
    // of its epoch, in the layout of FORMAT.md.
    common::with_sled(dir.path(), |db| {
        for first in (0..64u32).step_by(4) {
            let mut key = checkpoint.to_be_bytes().to_vec();
            key.extend_from_slice(&0u32.to_be_bytes());
            key.extend_from_slice(&first.to_be_bytes());
            key.extend_from_slice(&4u32.to_be_bytes());
            db.open_tree("marks").unwrap().insert(key, &[]).unwrap();
        }
    });
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert!(
        matches!(
            store.open_report().recovery,
            Recovery::Regions { regions: 1, .. }
        ),
        "{:?}",
        store.open_report().recovery
    );
    assert_eq!(store.root(0), root);
    store.put(b"later", b"y").unwrap();
    store.close().unwrap();
    common::with_sled(dir.path(), |db| {
        assert_eq!(db.open_tree("marks").unwrap().len(), 0);
    });
}

/// A checkpoint writes a dense partition's buckets a few hundred at a time. One cut
/// short between two of its batches, then a crash, leaves buckets of both checkpoints
/// (all of one span); recovery re-hashes the marked regions over them and is exact.
#[test]
fn a_checkpoint_cut_between_two_batches_recovers_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    // Dense enough for one bucket per segment page: 4,096 buckets.
    for i in 0..80_000u32 {
        store.put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap();
    // About 650 dirty buckets: three batches.
    for i in (0..80_000u32).step_by(114) {
        store.put(&i.to_le_bytes(), b"w").unwrap();
    }
    store.fail_checkpoints_after(Some(1));
    assert!(store.checkpoint().is_err());
    store.sync_index().unwrap();
    let root = store.root(0);
    store.simulate_crash();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert!(
        matches!(store.open_report().recovery, Recovery::Regions { .. }),
        "{:?}",
        store.open_report()
    );
    assert_eq!(store.root(0), root);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

/// A rebuild re-reads a few partitions at a time (one, if it is large), and only the
/// writes to those wait: while partition 0 is re-read, another thread's write to
/// partition 1 lands, and one to partition 0 waits until the partition is done, then
/// lands and is indexed.
#[test]
fn a_rebuild_holds_only_the_writes_to_the_partitions_it_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
    // Partition 0 is re-read alone (over 65,536 keys), partition 1 after it.
    for i in 0..70_000u32 {
        store.partition(0).put(&i.to_le_bytes(), b"v").unwrap();
    }
    for i in 0..1_000u32 {
        store.partition(1).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.sync_index().unwrap(); // the groups follow the index's sizes
    let mut waiting = None;
    let report = store
        .rebuild(&mut |progress| {
            if waiting.is_some() || progress.segments_done > progress.segments_total / 2 {
                return; // only while partition 0, the first of two, is read
            }
            let (done, landed) = std::sync::mpsc::channel();
            let other = Arc::clone(&store);
            std::thread::spawn(move || {
                let _ = done.send(other.partition(1).put(b"during", b"v").is_ok());
            });
            let put = landed.recv_timeout(Duration::from_secs(20));
            assert!(put.expect("a write to another partition waited for the rebuild"));
            let same = Arc::clone(&store);
            let writer = std::thread::spawn(move || same.partition(0).put(b"waits", b"v"));
            std::thread::sleep(Duration::from_millis(50));
            assert!(
                !writer.is_finished(),
                "a write landed in the partition being read"
            );
            waiting = Some(writer);
        })
        .unwrap();
    assert_eq!(report.keys, 71_001);
    waiting
        .expect("no progress while partition 0 was read")
        .join()
        .unwrap()
        .unwrap();
    assert_eq!(
        store.partition(0).get(b"waits").unwrap(),
        Some(b"v".to_vec())
    );
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

/// A rebuild persists the new index in bounded batches; one cut short between two of
/// them, then a crash, is finished by the next open from the data.
#[test]
fn a_rebuild_cut_short_is_finished_by_the_next_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for i in 0..3_000u32 {
        store.partition(i % 3).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap();
    let roots: Vec<Hash> = (0..3).map(|p| store.root(p)).collect();
    store.checkpoint_batches_of(Some(1));
    store.fail_checkpoints_after(Some(2));
    assert!(store.rebuild(&mut |_| {}).is_err());
    store.simulate_crash();

    let store = Store::open(dir.path(), Options::default()).unwrap();
    match &store.open_report().recovery {
        Recovery::FullRebuild {
            keys: 3_000,
            reason,
        } => {
            assert!(reason.contains("rebuild did not finish"), "{reason}")
        }
        other => panic!("expected the rebuild finished, got {other:?}"),
    }
    assert_eq!((0..3).map(|p| store.root(p)).collect::<Vec<_>>(), roots);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    store.close().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
}

#[test]
fn many_marks_fall_back_to_a_full_rebuild() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..500u32 {
        store.put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.sync_index().unwrap();
    let root = store.root(0);
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    match &store.open_report().recovery {
        Recovery::FullRebuild { keys, reason } => {
            assert_eq!(*keys, 500);
            assert!(reason.contains("marked"), "{reason}");
        }
        other => panic!("expected a full rebuild, got {other:?}"),
    }
    assert_eq!(store.root(0), root);
}

#[test]
fn rebuild_and_verify_agree_with_live_index() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    for i in 0..2000u32 {
        store
            .partition(i % 2)
            .put(&i.to_be_bytes(), &[1; 10])
            .unwrap();
    }
    store.sync_index().unwrap();
    let roots = (store.root(0), store.root(1));
    let mut calls = 0;
    let report = store.rebuild(&mut |_| calls += 1).unwrap();
    assert!(calls >= 1);
    assert_eq!(
        (report.keys, report.partitions, report.undecodable),
        (2000, 2, 0)
    );
    assert_eq!((store.root(0), store.root(1)), roots);
    let v = store.verify(&mut |_| {}).unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.keys, 2000);
    assert!(v.buckets > 0);
}

/// What verify re-checks before it reports (writes that raced it) never hides a real
/// disagreement: an index wrong in one segment, and one holding a partition that has
/// no data, are reported as such.
#[test]
fn verify_reports_an_index_that_disagrees_with_the_data() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..200u32 {
        store.partition(1).put(&i.to_be_bytes(), b"v").unwrap();
    }
    // Changes to the index alone (a test hook): segment 5 of partition 1, and
    // segment 9 of partition 2, which holds no data.
    store.bench_touch_segments(1, [5].into_iter()).unwrap();
    store.bench_touch_segments(2, [9].into_iter()).unwrap();
    let report = store.verify(&mut |_| {}).unwrap();
    let found: Vec<_> = report
        .problems
        .iter()
        .map(|p| (p.partition, p.segment, p.kind.clone()))
        .collect();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(matches!(
        found[0],
        (Some(1), Some(5), ProblemKind::SegmentHash { .. })
    ));
    assert_eq!(found[1], (Some(2), None, ProblemKind::PartitionMismatch));
    store.rebuild(&mut |_| {}).unwrap();
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

#[test]
fn concurrent_writers_keep_the_index_exact() {
    let dir = tempfile::tempdir().unwrap();
    let mut opts = small_options();
    opts.channel_capacity = 8; // exercise backpressure
    opts.checkpoint_interval = Duration::from_millis(5);
    let store = std::sync::Arc::new(Store::open(dir.path(), opts).unwrap());
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let store = store.clone();
            std::thread::spawn(move || {
                for i in 0..500u32 {
                    // Overlapping keys across threads: each key must count once.
                    store
                        .put(&(i % 97).to_le_bytes(), &t.to_le_bytes())
                        .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    store.sync_index().unwrap();
    let v = store.verify(&mut |_| {}).unwrap();
    assert!(v.is_ok(), "{:?}", v.problems);
    assert_eq!(v.keys, 97);
}

/// Index memory follows content: 1,024 partitions of a million segments each, most of
/// them holding one key, cost what their keys cost, not 1,024 dense trees (17 GiB).
/// Bound: 4 KiB per partition with a key (a key touches one page per level, each a few
/// dozen bytes, plus the B-tree nodes that hold the pages).
#[test]
fn a_thousand_mostly_empty_partitions_cost_what_their_keys_cost() {
    let dir = tempfile::tempdir().unwrap();
    let mut options = Options::default();
    options.cache_bytes = 16 << 20;
    let store = Store::open(dir.path(), options).unwrap();
    for p in 0..1024u32 {
        store.partition(p).put(b"the only key", b"v").unwrap();
    }
    store.sync_index().unwrap();
    let bytes = store.index_memory_bytes();
    assert!(
        bytes < 1024 * 4096,
        "{bytes} bytes for 1,024 one-key partitions"
    );
    // A clean reopen maps the same (sparse) content back from a small snapshot.
    store.close().unwrap();
    let snapshot = std::fs::metadata(dir.path().join("index.snapshot")).unwrap();
    assert!(snapshot.len() < 1 << 20, "{} byte snapshot", snapshot.len());
    let mut options = Options::default();
    options.cache_bytes = 16 << 20;
    let store = Store::open(dir.path(), options).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    assert_eq!(store.partitions().len(), 1024);
    assert!(store.index_memory_bytes() < 1024 * 4096);
}

#[test]
fn a_dropped_partition_is_gone_from_data_index_and_marks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..300u32 {
        store.partition(i % 3).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap();
    // Written after the checkpoint: marks of partition 1 exist too.
    store.partition(1).put(b"late", b"v").unwrap();
    store.sync_index().unwrap();
    let (root0, root2) = (store.root(0), store.root(2));
    assert_eq!(store.drop_partition(1).unwrap(), 101);
    assert_eq!(store.partitions(), vec![0, 2]);
    assert_eq!(store.root(1), Hash::ZERO);
    assert_eq!(store.count_keys(1).unwrap(), 0);
    assert_eq!(store.partition(1).get(b"late").unwrap(), None);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // Gone after a crash too: no buckets or marks bring it back.
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.partitions(), vec![0, 2]);
    assert_eq!((store.root(0), store.root(2)), (root0, root2));
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

/// A drop deletes the partition's marks; a write to the partition after the drop, in the
/// same epoch and region, must mark it again. (It used to skip the mark, remembered from
/// before the drop, and after a crash the index lacked the write: the root disagreed
/// with the data until a rebuild.)
#[test]
fn a_partition_written_again_after_its_drop_is_indexed_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    store.partition(0).put(b"elsewhere", b"v").unwrap();
    store.checkpoint().unwrap();
    for i in 0..50u32 {
        store.partition(1).put(&i.to_le_bytes(), b"old").unwrap();
    }
    assert_eq!(store.drop_partition(1).unwrap(), 50);
    for i in 0..50u32 {
        store.partition(1).put(&i.to_le_bytes(), b"new").unwrap();
    }
    store.flush().unwrap();
    store.sync_index().unwrap();
    let (root0, root1) = (store.root(0), store.root(1));
    assert!(!root1.is_zero());
    store.simulate_crash();

    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!((store.root(0), store.root(1)), (root0, root1));
    assert_eq!(store.count_keys(1).unwrap(), 50);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

/// `partitions` lists what holds records: a partition emptied by purging its tombstones
/// is not listed, before a crash or after it (recovery may or may not keep its empty
/// tree), and a write attempt that wrote nothing after a drop lists nothing either.
#[test]
fn an_emptied_partition_is_not_listed_before_or_after_a_crash() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..500u32 {
        // Enough that recovery re-hashes the marked regions instead of reading all.
        store.partition(0).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap();
    store.partition(1).put(b"k", b"v").unwrap();
    store.partition(1).delete(b"k").unwrap();
    assert_eq!(store.purge_tombstones(1, Duration::ZERO).unwrap(), 1);
    store.partition(2).put(b"k", b"v").unwrap();
    store.drop_partition(2).unwrap();
    // A repair that finds the key changed writes nothing, but marks its region.
    let repair = merkle_index::Repair {
        key: b"k".to_vec(),
        expected: Some(Hash::ZERO),
        record: Record::value(1, b"x"),
    };
    let applied = merkle_index::Replica::apply(&store, 2, &[repair]).unwrap();
    assert_eq!(applied.written, 0);
    store.flush().unwrap();
    store.sync_index().unwrap();
    assert_eq!(store.partitions(), vec![0]);
    store.simulate_crash();

    let store = Store::open(dir.path(), small_options()).unwrap();
    assert!(matches!(
        store.open_report().recovery,
        Recovery::Regions { .. }
    ));
    assert_eq!(store.partitions(), vec![0]);
    assert!(store.root(1).is_zero() && store.root(2).is_zero());
}

/// The marks a checkpoint makes obsolete are deleted while writes go on without a pause.
/// They used to wait for a moment with no update queued, which a busy node never has:
/// tens of thousands piled up per checkpoint, and sled's file grew without bound.
#[test]
fn obsolete_marks_are_deleted_under_writes_that_never_pause() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    let keys = 10_000u64;
    for k in 0..keys {
        store.put(&k.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap(); // sizes the partition's regions: about 1,000
    for k in 0..keys {
        store.put(&k.to_le_bytes(), b"w").unwrap();
    }
    let regions = store.marks_held(); // every region marked once
    store.checkpoint().unwrap();
    let stop = AtomicBool::new(false);
    let epoch = || std::thread::sleep(Duration::from_millis(100));
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 1u64;
            while !stop.load(Relaxed) {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let key = (x >> 33) % keys;
                store.put(&key.to_le_bytes(), &x.to_le_bytes()).unwrap();
            }
        });
        epoch();
        for _ in 0..10 {
            store.checkpoint().unwrap();
            epoch();
        }
        let held = store.marks_held();
        stop.store(true, Relaxed);
        // The current epoch's, and what is left of the last retired one's.
        assert!(
            held <= 2 * regions,
            "{held} marks held after ten checkpoints, of {regions} regions"
        );
    });
}

/// A drop holds writes back only for a moment at its start and end: while it removes
/// the partition's records, writes to other partitions go on, writes to it (and a
/// second drop of it) are refused, and a verify or rebuild finds nothing wrong.
#[test]
fn writes_go_on_while_a_partition_is_dropped() {
    fn refused<T>(r: Result<T, Error>) -> bool {
        matches!(r, Err(Error::PartitionDropping(1)))
    }
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    for i in 0..2_000u32 {
        store.partition(i % 2).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.checkpoint().unwrap();
    let under_way = || {
        // On a thread of its own, so a write made to wait for the drop fails the test
        // instead of hanging it.
        let (done, finished) = std::sync::mpsc::channel();
        let writer = Arc::clone(&store);
        let thread = std::thread::spawn(move || {
            let _ = done.send(writer.partition(0).put(b"during", b"v").is_ok());
        });
        let put = finished.recv_timeout(Duration::from_secs(60));
        assert!(put.expect("a write to another partition waited for the drop"));
        thread.join().unwrap();
        assert!(refused(store.partition(1).put(b"during", b"v")));
        assert!(refused(store.partition(1).delete(&0u32.to_le_bytes())));
        assert!(refused(store.replicate(1, b"k", &Record::value(5, b"v"))));
        assert!(refused(store.drop_partition(1)));
        // The partition's records are all still there, without an index.
        let report = store.verify(&mut |_| {}).unwrap();
        assert!(report.is_ok(), "{report:?}");
        store.rebuild(&mut |_| {}).unwrap();
        assert_eq!(store.root(1), Hash::ZERO);
    };
    assert_eq!(
        store.drop_partition_under_way(1, &under_way).unwrap(),
        1_000
    );
    assert_eq!(store.partitions(), vec![0]);
    assert_eq!(store.count_keys(1).unwrap(), 0);
    assert_eq!(
        store.partition(0).get(b"during").unwrap(),
        Some(b"v".to_vec())
    );
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // Once it is dropped, the partition takes writes again.
    store.partition(1).put(b"after", b"v").unwrap();
    assert_eq!(store.count_keys(1).unwrap(), 1);
    store.sync_index().unwrap();
    let roots = (store.root(0), store.root(1));
    assert_ne!(roots.1, Hash::ZERO);
    let store = Arc::into_inner(store).unwrap();
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!((store.root(0), store.root(1)), roots);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

#[test]
fn a_drop_cut_short_by_a_crash_is_finished_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    for i in 0..100u32 {
        store.partition(i % 2).put(&i.to_le_bytes(), b"v").unwrap();
    }
    store.sync_index().unwrap();
    let root0 = store.root(0);
    store.close().unwrap();
    // The state a crash right after the intent was recorded leaves behind.
    common::with_sled(dir.path(), |db| {
        db.open_tree("meta")
            .unwrap()
            .insert("dropping", &1u32.to_le_bytes())
            .unwrap();
    });
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.partitions(), vec![0]);
    assert_eq!(store.count_keys(1).unwrap(), 0);
    assert_eq!(store.root(0), root0);
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
    // Recovered from the snapshot as a base, the dropped partition read whole from
    // its buckets, which the drop removed.
    assert!(
        matches!(
            store.open_report().recovery,
            Recovery::Regions {
                from_base: true,
                changed: 1,
                ..
            }
        ),
        "{:?}",
        store.open_report().recovery
    );
    store.close().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    assert_eq!(store.partitions(), vec![0]);
}

/// A partition's records are every key written to it, once, with its latest record
/// (tombstones included), and nothing of the partitions beside it.
#[test]
fn records_iterates_one_partition_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let mut model = Model::new();
    for i in 0..500u32 {
        let key = format!("key-{}", i % 300).into_bytes();
        let version = u64::from(i) + 1;
        for p in [4, 5, 6] {
            store
                .partition(p)
                .put_versioned(&key, &i.to_le_bytes(), version)
                .unwrap();
        }
        model.insert(key, (version, false, i.to_le_bytes().to_vec()));
    }
    for i in (0..300u32).step_by(7) {
        let key = format!("key-{i}").into_bytes();
        store.partition(5).delete_versioned(&key, 1000).unwrap();
        model.insert(key, (1000, true, Vec::new()));
    }
    let listed: Model = store
        .partition(5)
        .records()
        .map(|item| {
            let (key, record) = item.unwrap();
            (key, (record.version, record.tombstone, record.value))
        })
        .collect();
    assert_eq!(store.partition(5).records().count(), 300, "each key once");
    assert_eq!(listed, model);
    assert_eq!(store.partition(7).records().count(), 0);
}
