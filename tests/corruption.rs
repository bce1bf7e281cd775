//! Bad bytes never panic and are caught precisely: a flipped byte in a packed index
//! bucket, in the snapshot file, or in a stored value.

mod common;

use common::{small_options, with_sled};
use merkle_index::{sync, Corruption, Error, Hash, ProblemKind, Recovery, Store, SyncOptions};

fn filled(dir: &std::path::Path) -> Hash {
    let store = Store::open(dir, small_options()).unwrap();
    for i in 0..200u32 {
        store
            .partition(i % 2)
            .put(format!("k{i}").as_bytes(), b"value")
            .unwrap();
    }
    store.sync_index().unwrap();
    let root = store.root(0);
    store.close().unwrap();
    root
}

/// Why open rejected the snapshot (it must have recovered from the checkpoint instead).
fn snapshot_problem(store: &Store) -> String {
    match &store.open_report().recovery {
        Recovery::Regions {
            snapshot_problem: Some(p),
            ..
        } => p.clone(),
        other => panic!("expected checkpoint recovery after a bad snapshot, got {other:?}"),
    }
}

#[test]
fn flipped_snapshot_byte_falls_back_to_the_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let root = filled(dir.path());
    let path = dir.path().join("index.snapshot");
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();

    let store = Store::open(dir.path(), small_options()).unwrap();
    match &store.open_report().recovery {
        Recovery::Regions {
            regions: 0,
            snapshot_problem: Some(problem),
            ..
        } => assert!(
            problem.contains("checksum mismatch in snapshot"),
            "{problem}"
        ),
        other => panic!("expected checkpoint recovery, got {other:?}"),
    }
    assert_eq!(store.root(0), root);
}

#[test]
fn truncated_or_foreign_snapshot_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let root = filled(dir.path());
    let path = dir.path().join("index.snapshot");
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let p = snapshot_problem(&store);
    assert!(
        p.contains("bad length for snapshot") || p.contains("checksum mismatch in snapshot"),
        "{p}"
    );
    assert_eq!(store.root(0), root);
    store.close().unwrap();

    std::fs::write(
        &path,
        b"not a snapshot at all, just some text that is long enough",
    )
    .unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let p = snapshot_problem(&store);
    assert!(p.contains("bad magic"), "{p}");
    assert_eq!(store.root(0), root);
}

#[test]
fn flipped_bucket_byte_is_reported_by_verify_and_forces_rebuild_after_crash() {
    let dir = tempfile::tempdir().unwrap();
    let root = filled(dir.path());
    with_sled(dir.path(), |db| {
        let index = db.open_tree("index").unwrap();
        let (key, value) = index.iter().next().unwrap().unwrap();
        let mut bytes = value.to_vec();
        bytes[3] ^= 1;
        index.insert(key, bytes).unwrap();
    });
    // The clean snapshot is still good, so open does not read buckets; verify does.
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert_eq!(store.open_report().recovery, Recovery::Snapshot);
    let report = store.verify(&mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let ProblemKind::BadBucket(what) = &report.problems[0].kind else {
        panic!("{:?}", report.problems);
    };
    assert!(
        what.contains("checksum mismatch in index bucket at partition 0 bucket 0"),
        "{what}"
    );
    // After a crash the base snapshot holds the bucket's content, so it is not read.
    store.simulate_crash();
    let store = Store::open(dir.path(), small_options()).unwrap();
    assert!(
        matches!(
            store.open_report().recovery,
            Recovery::Regions {
                from_base: true,
                changed: 0,
                ..
            }
        ),
        "{:?}",
        store.open_report().recovery
    );
    assert_eq!(store.root(0), root);
    // Without the base the bad bucket would be loaded: open rebuilds instead.
    store.simulate_crash();
    std::fs::remove_file(dir.path().join("index.snapshot")).unwrap();
    let store = Store::open(dir.path(), small_options()).unwrap();
    let Recovery::FullRebuild { reason, keys } = &store.open_report().recovery else {
        panic!("{:?}", store.open_report().recovery);
    };
    assert!(
        reason.contains("checksum mismatch in index bucket"),
        "{reason}"
    );
    assert_eq!(*keys, 200);
    assert_eq!(store.root(0), root);
    // The rebuild was persisted: verify is clean once the checkpoint lands.
    store.checkpoint().unwrap();
    assert!(store.verify(&mut |_| {}).unwrap().is_ok());
}

#[test]
fn flipped_value_byte_is_reported_with_its_key() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let mut victim = Vec::new();
    with_sled(dir.path(), |db| {
        let data = db.open_tree("data").unwrap();
        let (key, value) = data.iter().next().unwrap().unwrap();
        let mut bytes = value.to_vec();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x20; // inside the value bytes, after the header
        victim = key[8..].to_vec();
        data.insert(key, bytes).unwrap();
    });
    let store = Store::open(dir.path(), small_options()).unwrap();
    let report = store.verify(&mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.key.as_deref(), Some(victim.as_slice()));
    assert!(
        matches!(problem.kind, ProblemKind::ValueHash { .. }),
        "{problem}"
    );
    assert!(problem
        .to_string()
        .contains("do not match their stored hash"));
}

#[test]
fn garbage_record_header_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    filled(dir.path());
    let mut victim = Vec::new();
    with_sled(dir.path(), |db| {
        let data = db.open_tree("data").unwrap();
        let (key, _) = data.iter().next().unwrap().unwrap();
        victim = key[8..].to_vec();
        data.insert(key, &[9u8, 9, 9][..]).unwrap();
    });
    let store = Store::open(dir.path(), small_options()).unwrap();
    let p = u32::from_be_bytes(victim_partition(dir.path(), &victim));
    match store.partition(p).get(&victim) {
        Err(Error::Corrupt(Corruption::BadLength {
            what: "data record",
            expected: 26,
            found: 3,
            ..
        })) => {}
        other => panic!("expected a bad length error, got {other:?}"),
    }
    let report = store.verify(&mut |_| {}).unwrap();
    assert!(report
        .problems
        .iter()
        .any(|p| matches!(p.kind, ProblemKind::BadRecord(_))
            && p.key.as_deref() == Some(victim.as_slice())));
    // The index still counts the old entry: verify says which segment disagrees.
    assert!(report
        .problems
        .iter()
        .any(|p| matches!(p.kind, ProblemKind::SegmentHash { .. })));
    // A rebuild makes index and data agree again (the bad record contributes nothing).
    store.rebuild(&mut |_| {}).unwrap();
    let report = store.verify(&mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
}

fn victim_partition(_dir: &std::path::Path, key: &[u8]) -> [u8; 4] {
    // Keys were spread as k{i} into partition i % 2.
    let i: u32 = std::str::from_utf8(&key[1..]).unwrap().parse().unwrap();
    (i % 2).to_be_bytes()
}

/// Two replicas with the same records (same versions), closed.
fn twins(a: &std::path::Path, b: &std::path::Path) {
    for dir in [a, b] {
        let store = Store::open(dir, small_options()).unwrap();
        for i in 0..50u32 {
            store
                .put_versioned(format!("k{i}").as_bytes(), b"good value", 10 + u64::from(i))
                .unwrap();
        }
        store.close().unwrap();
    }
}

fn edit_record(dir: &std::path::Path, key: &[u8], edit: impl FnOnce(&mut Vec<u8>)) {
    with_sled(dir, |db| {
        let data = db.open_tree("data").unwrap();
        let raw = common::raw_data_key(0, key, 64);
        let mut bytes = data.get(&raw).unwrap().unwrap().to_vec();
        edit(&mut bytes);
        data.insert(raw, bytes).unwrap();
    });
}

#[test]
fn rot_is_refused_on_read_quarantined_by_verify_and_restored_by_sync() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    twins(da.path(), db.path());
    edit_record(da.path(), b"k7", |b| *b.last_mut().unwrap() ^= 0x01);
    let (a, b) = (
        Store::open(da.path(), small_options()).unwrap(),
        Store::open(db.path(), small_options()).unwrap(),
    );
    // Bad bytes are never handed out.
    match a.get(b"k7") {
        Err(Error::Corrupt(Corruption::ValueHash { location, .. })) => {
            assert!(location.contains("partition 0"), "{location}")
        }
        other => panic!("expected a value hash error, got {other:?}"),
    }
    // An iteration hands it out as an error item and goes on with the rest.
    let (good, bad): (Vec<_>, Vec<_>) = a.partition(0).records().partition(Result::is_ok);
    assert_eq!((good.len(), bad.len()), (49, 1));
    assert!(matches!(
        &bad[0],
        Err(Error::Corrupt(Corruption::ValueHash { .. }))
    ));
    // Invisible to the trees (the entry hash uses the stored value hash), and a sync
    // neither fails nor ships the rot.
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.differences, 0);
    // verify finds it; quarantine takes it out of the data and the index.
    let found = a.verify(&mut |_| {}).unwrap();
    assert_eq!(found.problems.len(), 1, "{:?}", found.problems);
    assert_eq!(a.quarantine(&found).unwrap(), 1);
    assert_eq!(a.quarantined(), 1);
    assert_eq!(a.get(b"k7").unwrap(), None);
    a.sync_index().unwrap();
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(
        (report.repaired_local, report.repaired_remote),
        (1, 0),
        "{report:?}"
    );
    for s in [&a, &b] {
        assert_eq!(s.get(b"k7").unwrap(), Some(b"good value".to_vec()));
        s.sync_index().unwrap();
        assert!(s.verify(&mut |_| {}).unwrap().is_ok());
    }
    assert_eq!(a.root(0), b.root(0));
}

#[test]
fn a_newer_rotten_record_is_replaced_never_shipped() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    twins(da.path(), db.path());
    {
        // a has a newer version of k3, then its bytes rot.
        let a = Store::open(da.path(), small_options()).unwrap();
        a.put_versioned(b"k3", b"newer value", 1000).unwrap();
        a.close().unwrap();
    }
    edit_record(da.path(), b"k3", |b| *b.last_mut().unwrap() ^= 0x04);
    let (a, b) = (
        Store::open(da.path(), small_options()).unwrap(),
        Store::open(db.path(), small_options()).unwrap(),
    );
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.corrupt_local, 1, "{report:?}");
    assert_eq!(report.repaired_remote, 0, "{report:?}");
    assert_eq!(b.get(b"k3").unwrap(), Some(b"good value".to_vec()));
    assert_eq!(a.get(b"k3").unwrap(), Some(b"good value".to_vec()));
    a.sync_index().unwrap();
    assert!(a.verify(&mut |_| {}).unwrap().is_ok());
}

#[test]
fn an_undecodable_record_does_not_stop_its_partition_and_is_repaired() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    twins(da.path(), db.path());
    edit_record(da.path(), b"k9", |b| *b = vec![7, 7, 7]);
    let (a, b) = (
        Store::open(da.path(), small_options()).unwrap(),
        Store::open(db.path(), small_options()).unwrap(),
    );
    // verify reports it; even after a rebuild (which drops its contribution) nothing
    // fails.
    let found = a.verify(&mut |_| {}).unwrap();
    assert!(found.problems.iter().any(
        |p| matches!(p.kind, ProblemKind::BadRecord(_)) && p.key.as_deref() == Some(&b"k9"[..])
    ));
    a.rebuild(&mut |_| {}).unwrap();
    let seg = common::reference_segment(b"k9", 64) as u32;
    assert!(a
        .segment_entries(0, seg)
        .unwrap()
        .iter()
        .all(|e| e.key != b"k9"));
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.differences, 1, "{report:?}");
    // The walk sees it as absent here, so the good copy is written over it.
    assert_eq!(report.repaired_local, 1, "{report:?}");
    assert_eq!(a.get(b"k9").unwrap(), Some(b"good value".to_vec()));
    a.sync_index().unwrap();
    assert!(a.verify(&mut |_| {}).unwrap().is_ok());
    assert_eq!(a.root(0), b.root(0));
}

#[test]
fn marks_outside_the_tree_mean_a_full_scan_not_a_panic() {
    let cases = [(60u32, 16u32), (64, 4), (0, 0), (u32::MAX, 1)];
    // Both layouts: the count in the key (current) or in the value (before 2026-11-25).
    for ((first, count), legacy) in cases.iter().flat_map(|&c| [(c, false), (c, true)]) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), small_options()).unwrap();
        store.put(b"k", b"v").unwrap();
        store.sync_index().unwrap();
        let root = store.root(0);
        store.flush().unwrap();
        store.simulate_crash();
        with_sled(dir.path(), |db| {
            let mut key = 5u64.to_be_bytes().to_vec();
            key.extend_from_slice(&0u32.to_be_bytes());
            key.extend_from_slice(&first.to_be_bytes());
            let value = if legacy {
                count.to_le_bytes().to_vec()
            } else {
                key.extend_from_slice(&count.to_be_bytes());
                Vec::new()
            };
            db.open_tree("marks").unwrap().insert(key, value).unwrap();
        });
        let store = Store::open(dir.path(), small_options()).unwrap();
        let Recovery::FullRebuild { reason, .. } = &store.open_report().recovery else {
            panic!("{:?}", store.open_report().recovery);
        };
        assert!(reason.contains("out-of-range dirty mark"), "{reason}");
        assert_eq!(store.root(0), root);
    }
}

mod decoded_but_out_of_range {
    use super::*;
    use proptest::prelude::*;

    /// What a damaged persisted value may be replaced with: random bytes, or bytes of
    /// the right length whose numbers are out of range.
    fn value() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..40),
            any::<[u8; 4]>().prop_map(|v| v.to_vec()),
            (any::<bool>(), any::<u8>(), any::<u64>()).prop_map(|(top, clean, epoch)| {
                let epoch = if top { u64::MAX - (epoch % 4) } else { epoch };
                let mut v = vec![clean];
                v.extend_from_slice(&epoch.to_le_bytes());
                v
            }),
            (any::<u64>(), any::<u64>()).prop_map(|(epoch, clock)| {
                let mut v = (u64::MAX - epoch % 3).to_le_bytes().to_vec();
                v.extend_from_slice(&0u64.to_le_bytes());
                v.extend_from_slice(&clock.to_le_bytes());
                v
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        /// Any persisted value of the index side (marks, meta state, checkpoint,
        /// buckets) replaced with something that decodes to nonsense: open never panics
        /// and the index comes back exact (or open fails with a clear error).
        #[test]
        fn open_survives(which in 0..4usize, raw_key in proptest::collection::vec(any::<u8>(), 16), v in value(), crash in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(dir.path(), small_options()).unwrap();
            for i in 0..40u32 {
                store.put(format!("k{i}").as_bytes(), b"v").unwrap();
            }
            store.sync_index().unwrap();
            let root = store.root(0);
            store.checkpoint().unwrap();
            if crash {
                store.flush().unwrap();
                store.simulate_crash();
            } else {
                store.close().unwrap();
            }
            with_sled(dir.path(), |db| match which {
                0 => {
                    db.open_tree("marks").unwrap().insert(&raw_key, v.clone()).unwrap();
                }
                1 => {
                    db.open_tree("meta").unwrap().insert("state", v.clone()).unwrap();
                }
                2 => {
                    db.open_tree("meta").unwrap().insert("checkpoint", v.clone()).unwrap();
                }
                _ => {
                    let index = db.open_tree("index").unwrap();
                    let mut key = 0u32.to_be_bytes().to_vec();
                    key.extend_from_slice(&raw_key[..5]);
                    index.insert(key, v.clone()).unwrap();
                }
            });
            match Store::open(dir.path(), small_options()) {
                Ok(store) => {
                    prop_assert_eq!(store.root(0), root);
                    store.sync_index().unwrap();
                    let report = store.verify(&mut |_| {}).unwrap();
                    // A bucket the snapshot path never reads is reported, nothing else.
                    prop_assert!(report.problems.iter().all(|p| matches!(p.kind, ProblemKind::BadBucket(_))), "{:?}", report.problems);
                    store.put(b"after", b"v").unwrap();
                }
                Err(e) => prop_assert!(false, "open failed: {e}"),
            }
        }
    }
}

#[test]
fn a_bad_base_listing_or_record_makes_recovery_read_every_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let root = filled(dir.path());
    for (tree, key, value, expected) in [
        ("changed", &b"xyz"[..], &b""[..], "changed key"),
        ("meta", &b"base"[..], &b"short"[..], "meta base"),
    ] {
        Store::open(dir.path(), small_options())
            .unwrap()
            .simulate_crash();
        with_sled(dir.path(), |db| {
            db.open_tree(tree).unwrap().insert(key, value).unwrap();
        });
        let store = Store::open(dir.path(), small_options()).unwrap();
        let problem = snapshot_problem(&store);
        assert!(problem.contains(expected), "{problem}");
        assert!(matches!(
            store.open_report().recovery,
            Recovery::Regions {
                from_base: false,
                ..
            }
        ));
        assert_eq!(store.root(0), root);
        assert!(store.verify(&mut |_| {}).unwrap().is_ok());
        // The recovery's checkpoint writes a new base and clears the listing.
        store.close().unwrap();
    }
}

/// A scrub, page by page, finds what verify finds among the records (a rotten value,
/// an undecodable header) and quarantines them; a sync then restores both.
#[test]
fn a_scrub_in_pages_finds_what_verify_finds_and_quarantines_it() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    twins(da.path(), db.path());
    edit_record(da.path(), b"k7", |b| *b.last_mut().unwrap() ^= 0x01);
    edit_record(da.path(), b"k9", |b| b.truncate(5));
    let (a, b) = (
        Store::open(da.path(), small_options()).unwrap(),
        Store::open(db.path(), small_options()).unwrap(),
    );
    let mut expected: Vec<String> = a
        .verify(&mut |_| {})
        .unwrap()
        .problems
        .iter()
        .filter(|p| !matches!(p.kind, ProblemKind::SegmentHash { .. }))
        .map(|p| p.to_string())
        .collect();
    expected.sort();
    assert_eq!(expected.len(), 2, "{expected:?}");

    let (mut cursor, mut checked, mut quarantined, mut pages) = (None, 0, 0, 0);
    let mut found = Vec::new();
    loop {
        let page = a.scrub(cursor.as_ref(), 7, None).unwrap();
        assert!(page.checked <= 7);
        checked += page.checked;
        quarantined += page.quarantined;
        found.extend(page.problems.iter().map(|p| p.to_string()));
        pages += 1;
        cursor = page.next;
        if cursor.is_none() {
            break;
        }
    }
    found.sort();
    assert_eq!((checked, pages), (50, 8));
    assert_eq!(found, expected);
    assert_eq!(quarantined, 2);
    assert_eq!(a.get(b"k7").unwrap(), None);
    // A second pass finds nothing left.
    let again = a.scrub(None, 100, None).unwrap();
    assert_eq!(
        (again.checked, again.problems.len(), again.next),
        (48, 0, None)
    );

    a.sync_index().unwrap();
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.repaired_local, 2, "{report:?}");
    assert_eq!(a.get(b"k7").unwrap(), Some(b"good value".to_vec()));
    assert_eq!(a.get(b"k9").unwrap(), Some(b"good value".to_vec()));
    assert!(a.verify(&mut |_| {}).unwrap().is_ok());
}

/// Rot leaves the trees equal, so exchanges alone never repair it; the manager's scrub
/// quarantines it and the next exchange restores it.
#[test]
fn the_managers_scrub_lets_an_exchange_repair_rot() {
    use std::collections::BTreeSet;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use merkle_index::{Manager, ManagerOptions};

    let wait_until = |limit: Duration, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + limit;
        while !done() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        done()
    };
    let good = |s: &Store| s.get(b"k7").ok().flatten() == Some(b"good value".to_vec());
    for scrub in [None, Some(500)] {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        twins(da.path(), db.path());
        edit_record(da.path(), b"k7", |b| *b.last_mut().unwrap() ^= 0x01);
        let a = Arc::new(Store::open(da.path(), small_options()).unwrap());
        let b = Arc::new(Store::open(db.path(), small_options()).unwrap());
        let options = ManagerOptions {
            interval: Duration::from_millis(50),
            scrub_keys_per_sec: scrub,
            ..ManagerOptions::default()
        };
        let manager = Manager::start(Arc::clone(&a), options).unwrap();
        manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
        match scrub {
            None => {
                // Ten exchanges find the trees equal and leave the rot where it is.
                assert!(wait_until(Duration::from_secs(20), &|| manager
                    .status()
                    .exchanges
                    >= 10));
                assert!(matches!(a.get(b"k7"), Err(Error::Corrupt(_))));
                assert_eq!(manager.status().scrub.keys_per_sec, None);
            }
            Some(_) => {
                assert!(wait_until(Duration::from_secs(20), &|| good(&a)));
                let status = manager.status().scrub;
                assert_eq!(status.keys_per_sec, Some(500));
                assert_eq!((status.problems, status.quarantined), (1, 1), "{status:?}");
                assert!(status.last_problem.unwrap().contains("k7"));
                // The scrub goes on over the whole store, pass after pass.
                assert!(wait_until(Duration::from_secs(20), &|| manager
                    .status()
                    .scrub
                    .passes
                    >= 1));
            }
        }
        manager.stop();
    }
}

mod scrubbed {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    const SEGMENTS: u64 = 64; // small_options: width 4, 3 levels

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
        /// Records rotten in their value or their header, in any of three partitions,
        /// scrubbed in pages of any size: the pages find what verify finds among the
        /// records, quarantine each bad record once, and leave a store that verify finds
        /// sound (the index no longer counts a record whose header rotted).
        #[test]
        fn pages_of_any_size_find_and_quarantine_what_verify_finds(
            keys in 1..60u32,
            rotten in proptest::collection::btree_map(0..60u32, any::<bool>(), 0..8),
            page in 1..17usize,
        ) {
            let dir = tempfile::tempdir().unwrap();
            {
                let store = Store::open(dir.path(), small_options()).unwrap();
                for i in 0..keys {
                    store.partition(i % 3).put(format!("k{i}").as_bytes(), b"a value").unwrap();
                }
                store.close().unwrap();
            }
            let bad: BTreeSet<u32> = rotten.keys().copied().filter(|&i| i < keys).collect();
            with_sled(dir.path(), |db| {
                let data = db.open_tree("data").unwrap();
                for &i in &bad {
                    let raw = common::raw_data_key(i % 3, format!("k{i}").as_bytes(), SEGMENTS);
                    let mut bytes = data.get(&raw).unwrap().unwrap().to_vec();
                    if rotten[&i] {
                        *bytes.last_mut().unwrap() ^= 0x10; // the value
                    } else {
                        bytes.truncate(3); // the header
                    }
                    data.insert(raw, bytes).unwrap();
                }
            });
            let store = Store::open(dir.path(), small_options()).unwrap();
            let record_problem = |p: &merkle_index::Problem| {
                matches!(p.kind, ProblemKind::ValueHash { .. } | ProblemKind::BadRecord(_))
            };
            let mut expected: Vec<String> = store
                .verify(&mut |_| {})
                .unwrap()
                .problems
                .iter()
                .filter(|p| record_problem(p))
                .map(|p| p.to_string())
                .collect();
            expected.sort();
            prop_assert_eq!(expected.len(), bad.len());

            let (mut cursor, mut found, mut checked, mut quarantined) = (None, Vec::new(), 0, 0);
            loop {
                let scrubbed = store.scrub(cursor.as_ref(), page, None).unwrap();
                prop_assert!(scrubbed.checked as usize <= page);
                checked += scrubbed.checked;
                quarantined += scrubbed.quarantined;
                found.extend(scrubbed.problems.iter().map(|p| p.to_string()));
                cursor = scrubbed.next;
                if cursor.is_none() {
                    break;
                }
            }
            found.sort();
            prop_assert_eq!(checked, u64::from(keys));
            prop_assert_eq!(found, expected);
            prop_assert_eq!(quarantined, bad.len() as u64);
            prop_assert_eq!(store.quarantined(), bad.len());
            let after = store.verify(&mut |_| {}).unwrap();
            prop_assert!(after.is_ok(), "{:?}", after.problems);
        }
    }
}
