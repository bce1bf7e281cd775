//! Bad bytes never panic and are caught precisely: a flipped byte in a packed index
//! bucket, in the snapshot file, or in a stored value.

mod common;

use common::small_options;
use merkle_index::{Corruption, Error, Hash, ProblemKind, Recovery, Store};

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

/// Edits the raw sled database of a closed store (sled's I/O threads may hold its lock
/// for a moment after the store is dropped).
fn with_sled(dir: &std::path::Path, edit: impl FnOnce(&sled::Db)) {
    let db = (0..100)
        .find_map(|_| {
            sled::open(dir.join("sled")).ok().or_else(|| {
                std::thread::sleep(std::time::Duration::from_millis(10));
                None
            })
        })
        .expect("sled stayed locked");
    edit(&db);
    db.flush().unwrap();
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
    assert!(p.contains("bad length for snapshot"), "{p}");
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
        what.contains("checksum mismatch in index bucket at partition 0 level 1 bucket 0"),
        "{what}"
    );
    // After a crash the bad bucket would be loaded: open rebuilds instead.
    store.simulate_crash();
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
