//! Model-based property test: random puts, deletes, overwrites, checkpoints, clean
//! reopens and crash reopens across partitions, checked after every step against a
//! BTreeMap model and a from-scratch root computation.

mod common;

use std::collections::BTreeMap;

use common::{reference_root, small_options, Model};
use merkle_index::Store;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Put {
        partition: u32,
        key: u8,
        value: Vec<u8>,
    },
    Delete {
        partition: u32,
        key: u8,
    },
    Checkpoint,
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3u32, 0..24u8, proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(partition, key, value)| Op::Put { partition, key, value }),
        3 => (0..3u32, 0..24u8).prop_map(|(partition, key)| Op::Delete { partition, key }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), small_options()).unwrap());
        let mut model: BTreeMap<u32, Model> = BTreeMap::new();
        let mut version = 0u64;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Op::Put { partition, key, value } => {
                    let k = vec![b'k', key];
                    // Alternate caller-supplied and store-assigned versions.
                    let v = if key % 2 == 0 {
                        version += 1;
                        s.partition(partition).put_versioned(&k, &value, version).unwrap();
                        version
                    } else {
                        s.partition(partition).put(&k, &value).unwrap()
                    };
                    model.entry(partition).or_default().insert(k, (v, false, value));
                }
                Op::Delete { partition, key } => {
                    let k = vec![b'k', key];
                    let v = s.partition(partition).delete(&k).unwrap();
                    model.entry(partition).or_default().insert(k, (v, true, Vec::new()));
                }
                Op::Checkpoint => {
                    s.checkpoint().unwrap();
                }
                Op::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), small_options()).unwrap());
                }
                Op::Crash => {
                    let s = store.take().unwrap();
                    s.flush().unwrap();
                    s.simulate_crash();
                    store = Some(Store::open(dir.path(), small_options()).unwrap());
                }
            }
            let s = store.as_ref().unwrap();
            s.sync_index().unwrap();
            for p in 0..3u32 {
                let empty = Model::new();
                let m = model.get(&p).unwrap_or(&empty);
                prop_assert_eq!(s.root(p).to_bytes(), reference_root(p, m), "partition {}", p);
                for key in 0..24u8 {
                    let k = vec![b'k', key];
                    let expected = m.get(&k).filter(|e| !e.1).map(|e| e.2.clone());
                    prop_assert_eq!(s.partition(p).get(&k).unwrap(), expected);
                }
            }
        }
        let s = store.take().unwrap();
        let report = s.verify(&mut |_| {}).unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
    }
}

/// Bulk runs of puts or deletes on many partitions, on a tree whose levels have several
/// pages (2^9 segments, pages of 256): pages and levels go sparse to dense to flat and
/// back as keys come and go, and some partitions stay empty.
#[derive(Debug, Clone)]
enum Bulk {
    Put {
        partition: u32,
        first: u16,
        count: u16,
    },
    Delete {
        partition: u32,
        first: u16,
        count: u16,
    },
    Checkpoint,
    Reopen,
    Crash,
}

fn bulk() -> impl Strategy<Value = Bulk> {
    prop_oneof![
        4 => (0..6u32, 0..700u16, 1..700u16)
            .prop_map(|(partition, first, count)| Bulk::Put { partition, first, count }),
        3 => (0..6u32, 0..700u16, 1..700u16)
            .prop_map(|(partition, first, count)| Bulk::Delete { partition, first, count }),
        1 => Just(Bulk::Checkpoint),
        1 => Just(Bulk::Reopen),
        1 => Just(Bulk::Crash),
    ]
}

fn paged_options() -> merkle_index::Options {
    let mut o = small_options();
    o.width = 2;
    o.levels = 9;
    o.region_segments = 4;
    o
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn many_partitions_cross_sparse_and_dense_both_ways(ops in proptest::collection::vec(bulk(), 1..14)) {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Some(Store::open(dir.path(), paged_options()).unwrap());
        let mut model: BTreeMap<u32, Model> = BTreeMap::new();
        let mut version = 0u64;
        for op in ops {
            let s = store.as_ref().unwrap();
            match op {
                Bulk::Put { partition, first, count } => {
                    for i in first..first.saturating_add(count).min(1400) {
                        version += 1;
                        let k = [b'k', (i >> 8) as u8, i as u8].to_vec();
                        s.partition(partition).put_versioned(&k, b"v", version).unwrap();
                        model.entry(partition).or_default().insert(k, (version, false, b"v".to_vec()));
                    }
                }
                Bulk::Delete { partition, first, count } => {
                    // Deletes then purge, so segments really empty again.
                    let mut deleted = 0;
                    for i in first..first.saturating_add(count).min(1400) {
                        let k = [b'k', (i >> 8) as u8, i as u8].to_vec();
                        if model.get(&partition).is_some_and(|m| m.contains_key(&k)) {
                            s.partition(partition).delete(&k).unwrap();
                            model.entry(partition).or_default().remove(&k);
                            deleted += 1;
                        }
                    }
                    let purged = s.purge_tombstones(partition, std::time::Duration::ZERO).unwrap();
                    prop_assert_eq!(purged, deleted);
                }
                Bulk::Checkpoint => {
                    s.checkpoint().unwrap();
                }
                Bulk::Reopen => {
                    store.take().unwrap().close().unwrap();
                    store = Some(Store::open(dir.path(), paged_options()).unwrap());
                }
                Bulk::Crash => {
                    let s = store.take().unwrap();
                    s.flush().unwrap();
                    s.simulate_crash();
                    store = Some(Store::open(dir.path(), paged_options()).unwrap());
                }
            }
            let s = store.as_ref().unwrap();
            s.sync_index().unwrap();
            for p in 0..7u32 {
                let empty = Model::new();
                let m = model.get(&p).unwrap_or(&empty);
                prop_assert_eq!(s.root(p).to_bytes(), reference_root(p, m), "partition {}", p);
                prop_assert_eq!(s.count_keys(p).unwrap(), m.len() as u64);
            }
        }
        let s = store.take().unwrap();
        let report = s.verify(&mut |_| {}).unwrap();
        prop_assert!(report.is_ok(), "{:?}", report.problems);
        s.close().unwrap();
        let s = Store::open(dir.path(), paged_options()).unwrap();
        for p in 0..7u32 {
            let empty = Model::new();
            prop_assert_eq!(s.root(p).to_bytes(), reference_root(p, model.get(&p).unwrap_or(&empty)));
        }
    }
}
