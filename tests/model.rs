//! Model-based property test: random puts, deletes, overwrites, replication messages
//! (late, early, repeated), tombstone purges, partition drops, rebuilds, checkpoints,
//! clean reopens and crash reopens (with marks regions of another size) across
//! partitions, checked after every step against a BTreeMap model and a from-scratch root
//! computation.

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::{reference_root, small_options, Model};
use merkle_index::{value_hash, Options, Record, Store};
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
    /// A replication message: a version near this store's clock (`ahead`) or a small
    /// one like the caller-supplied versions (late, or a tie), a value or a tombstone.
    Replicate {
        partition: u32,
        key: u8,
        ahead: bool,
        version: u16,
        value: Option<Vec<u8>>,
    },
    Purge {
        partition: u32,
    },
    Drop {
        partition: u32,
    },
    Checkpoint,
    /// Rebuilds the index from the data (it must come out the same).
    Rebuild,
    /// A clean close, or a crash, and an open with marks regions of another size.
    Reopen {
        crash: bool,
        region_segments: u32,
    },
}

/// Version of a replication message: `small` alone, or that far ahead of now in the
/// store's clock units (unix ms << 16), well within `max_clock_drift`.
fn message_version(ahead: bool, small: u16) -> u64 {
    if !ahead {
        return u64::from(small);
    }
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    (now_ms << 16) + u64::from(small)
}

/// What decides between two records of a key: version, then tombstone, then value hash.
fn rank(version: u64, tombstone: bool, value: &[u8]) -> (u64, bool, [u8; 16]) {
    (version, tombstone, value_hash(value).to_bytes())
}

/// Closes `store` cleanly, or as a crash after its writes reached sled's log, and opens
/// it again.
fn reopen(store: Store, dir: &Path, options: Options, crash: bool) -> Store {
    if crash {
        store.flush().unwrap();
        store.simulate_crash();
    } else {
        store.close().unwrap();
    }
    Store::open(dir, options).unwrap()
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..3u32, 0..24u8, proptest::collection::vec(any::<u8>(), 0..12))
            .prop_map(|(partition, key, value)| Op::Put { partition, key, value }),
        3 => (0..3u32, 0..24u8).prop_map(|(partition, key)| Op::Delete { partition, key }),
        3 => (
            0..3u32,
            0..24u8,
            any::<bool>(),
            0..48u16,
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..12)),
        )
            .prop_map(|(partition, key, ahead, version, value)| Op::Replicate {
                partition,
                key,
                ahead,
                version,
                value,
            }),
        1 => (0..3u32).prop_map(|partition| Op::Purge { partition }),
        1 => (0..3u32).prop_map(|partition| Op::Drop { partition }),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Rebuild),
        2 => (any::<bool>(), prop_oneof![Just(1u32), Just(4), Just(16), Just(64)])
            .prop_map(|(crash, region_segments)| Op::Reopen { crash, region_segments }),
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
                Op::Replicate { partition, key, ahead, version, value } => {
                    let k = vec![b'k', key];
                    let v = message_version(ahead, version);
                    let record = match &value {
                        Some(value) => Record::value(v, value),
                        None => Record::tombstone(v),
                    };
                    let incoming = rank(v, value.is_none(), value.as_deref().unwrap_or_default());
                    let wins = model
                        .get(&partition)
                        .and_then(|m| m.get(&k))
                        .is_none_or(|(v, t, value)| rank(*v, *t, value) < incoming);
                    let written = s.replicate(partition, &k, &record).unwrap();
                    let held = model.get(&partition).and_then(|m| m.get(&k));
                    prop_assert_eq!(written, wins, "replicate {:?} over {:?}", record, held);
                    if wins {
                        let entry = (v, record.tombstone, record.value);
                        model.entry(partition).or_default().insert(k, entry);
                    }
                }
                Op::Purge { partition } => {
                    let purged = s.purge_tombstones(partition, std::time::Duration::ZERO).unwrap();
                    let m = model.entry(partition).or_default();
                    let before = m.len();
                    m.retain(|_, (_, tombstone, _)| !*tombstone);
                    prop_assert_eq!(purged, (before - m.len()) as u64);
                }
                Op::Drop { partition } => {
                    let held = model.remove(&partition).map_or(0, |m| m.len());
                    prop_assert_eq!(s.drop_partition(partition).unwrap(), held as u64);
                    prop_assert!(!s.partitions().contains(&partition));
                }
                Op::Checkpoint => {
                    s.checkpoint().unwrap();
                }
                Op::Rebuild => {
                    s.rebuild(&mut |_| {}).unwrap();
                }
                Op::Reopen { crash, region_segments } => {
                    let mut options = small_options();
                    options.region_segments = region_segments;
                    store = Some(reopen(store.take().unwrap(), dir.path(), options, crash));
                }
            }
            let s = store.as_ref().unwrap();
            s.sync_index().unwrap();
            for p in 0..3u32 {
                let empty = Model::new();
                let m = model.get(&p).unwrap_or(&empty);
                prop_assert_eq!(s.root(p).to_bytes(), reference_root(p, m), "partition {}", p);
                prop_assert_eq!(s.count_keys(p).unwrap(), m.len() as u64, "partition {}", p);
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

fn paged_options() -> Options {
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
                    store = Some(reopen(store.take().unwrap(), dir.path(), paged_options(), false));
                }
                Bulk::Crash => {
                    store = Some(reopen(store.take().unwrap(), dir.path(), paged_options(), true));
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
