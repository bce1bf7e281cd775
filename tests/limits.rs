//! Keys and values at and over the store's limits: refused before anything is written,
//! and anything at the limits reaches a replica, over the network too.

mod common;

use common::{raw_data_key, with_sled};
use merkle_index::{
    Error, Options, ProblemKind, Record, Repair, Replica, Store, MAX_KEY_BYTES, MAX_VALUE_BYTES,
};

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    (dir, store)
}

#[test]
fn keys_and_values_over_their_limits_are_refused_and_nothing_is_written() {
    let (_dir, store) = store();
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    let long_value = vec![0u8; MAX_VALUE_BYTES + 1];
    let p = store.partition(3);
    let refused = [
        p.put(&long_key, b"v").map(|_| ()),
        p.put(b"k", &long_value).map(|_| ()),
        p.put_versioned(&long_key, b"v", 5),
        p.delete(&long_key).map(|_| ()),
        store
            .replicate(3, b"k", &Record::value(5, &long_value))
            .map(|_| ()),
    ];
    for result in refused {
        match result {
            Err(Error::InvalidArgument(e)) => assert!(e.contains("over the limit"), "{e}"),
            other => panic!("not refused as an argument error: {other:?}"),
        }
    }
    // A repair is refused like any repair the store cannot take, never an error.
    let repair = Repair {
        key: b"k".to_vec(),
        expected: None,
        record: Record::value(5, &long_value),
    };
    let applied = Replica::apply(&store, 3, &[repair]).unwrap();
    assert_eq!((applied.written, applied.refused), (0, 1));
    store.sync_index().unwrap();
    assert_eq!(store.count_keys(3).unwrap(), 0);
    assert!(store.root(3).is_zero());

    // At the limits, both are taken and read back.
    let key = vec![b'k'; MAX_KEY_BYTES];
    let value = vec![9u8; MAX_VALUE_BYTES];
    p.put(&key, &value).unwrap();
    assert_eq!(p.get(&key).unwrap().as_deref(), Some(&value[..]));
}

/// The longest record both ways over TCP, and lists of long keys whose bytes pass a
/// frame: a record that cannot be sent would end every exchange of its partition.
#[cfg(feature = "net")]
#[test]
fn records_at_the_limits_and_a_frame_of_long_keys_cross_the_network() {
    use std::sync::Arc;

    use merkle_index::{Lookup, SyncOptions};

    let ((_da, a), (_db, b)) = (store(), store());
    let b = Arc::new(b);
    let longest = |i: u8| {
        let mut k = vec![i; MAX_KEY_BYTES];
        k[0] = b'k';
        k
    };
    b.put_versioned(&longest(1), &vec![1u8; MAX_VALUE_BYTES], 10)
        .unwrap();
    a.put_versioned(&longest(2), &vec![2u8; MAX_VALUE_BYTES], 10)
        .unwrap();
    // 300 keys of 60 KiB: 18 MB of keys, more than one request can hold.
    let keys: Vec<Vec<u8>> = (0..300u32)
        .map(|i| {
            let mut key = vec![0u8; 60 << 10];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key
        })
        .collect();
    for key in &keys {
        b.put_versioned(key, b"on the server", 2).unwrap();
    }
    let served = common::serve(Arc::clone(&b));
    let peer = &served.peer;
    let found = Replica::records(peer, 0, &keys).unwrap();
    assert_eq!(found.len(), keys.len());
    assert!(found
        .iter()
        .all(|l| matches!(l, Lookup::Found(r) if r.value == b"on the server")));
    let writes: Vec<(Vec<u8>, Record)> = keys
        .iter()
        .map(|k| (k.clone(), Record::value(3, b"replicated")))
        .collect();
    assert_eq!(peer.replicate(0, &writes).unwrap(), 300);
    let report = merkle_index::sync(&a, peer, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.differences, 302);
    served.stop();
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    assert_eq!(a.root(0), b.root(0));
    assert_eq!(a.count_keys(0).unwrap(), 302);
}

/// One segment whose keys alone pass a frame (a tree of two segments, about 300 keys of
/// 60 KiB in each): the answers page inside the segment, for a client reading whole
/// segments, for a replica that starts empty (entries with records) and for one that
/// holds most of the keys (entries compared page by page against its own).
#[cfg(feature = "net")]
#[test]
fn a_segment_larger_than_a_frame_is_exchanged_in_pages() {
    use std::sync::Arc;

    use merkle_index::SyncOptions;

    let tiny = || Options::default().with_segments(2, 2).unwrap();
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let (a, b, c) = (
        Store::open(da.path(), tiny()).unwrap(),
        Arc::new(Store::open(db.path(), tiny()).unwrap()),
        Store::open(dc.path(), tiny()).unwrap(),
    );
    let key = |i: u32| {
        let mut key = vec![7u8; 60 << 10];
        key[..4].copy_from_slice(&i.to_be_bytes());
        key
    };
    for i in 0..600u32 {
        b.put_versioned(&key(i), b"on the server", 2).unwrap();
        // `c` holds every key but a few, some older, one it alone has.
        if i % 100 != 7 {
            let version = if i % 50 == 3 { 1 } else { 2 };
            let value: &[u8] = if version == 2 {
                b"on the server"
            } else {
                b"old"
            };
            c.put_versioned(&key(i), value, version).unwrap();
        }
    }
    c.put_versioned(&key(10_000), b"only here", 3).unwrap();
    let served = common::serve(Arc::clone(&b));
    let peer = &served.peer;
    // A network replica's whole segments, assembled from pages.
    let entries = Replica::entries(peer, 0, &[0, 1]).unwrap();
    assert_eq!(entries, Replica::entries(&*b, 0, &[0, 1]).unwrap());
    assert_eq!(entries.iter().map(Vec::len).sum::<usize>(), 600);
    let report = merkle_index::sync(&a, peer, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.differences, 600);
    let report = merkle_index::sync(&c, peer, 0, &SyncOptions::default()).unwrap();
    // 6 keys missing, 12 older, one only on `c`.
    assert_eq!(report.differences, 6 + 12 + 1);
    assert_eq!((report.repaired_local, report.repaired_remote), (18, 1));
    served.stop();
    for store in [&a, &*b, &c] {
        store.sync_index().unwrap();
    }
    assert_eq!(c.root(0), b.root(0));
    assert_eq!(b.count_keys(0).unwrap(), 601);
    assert_eq!(a.count_keys(0).unwrap(), 600);
}

/// A record stored before the limits existed (written here into sled directly, as
/// format 2 lays it out): `verify` names it, and a server asked for it answers with an
/// error instead of ending the connection.
#[test]
fn a_record_over_the_limits_from_before_them_is_reported_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store.put(b"small", b"fine").unwrap();
    store.close().unwrap();
    let big = vec![5u8; MAX_VALUE_BYTES + (2 << 20)];
    with_sled(dir.path(), |db| {
        // Format byte, flags, version (LE), value hash, value.
        let mut record = vec![2u8, 0];
        record.extend_from_slice(&7u64.to_le_bytes());
        record.extend_from_slice(&merkle_index::value_hash(&big).to_bytes());
        record.extend_from_slice(&big);
        let data = db.open_tree("data").unwrap();
        data.insert(raw_data_key(0, b"legacy", 1 << 20), record)
            .unwrap();
    });
    let store = Store::open(dir.path(), Options::default()).unwrap();
    store.rebuild(&mut |_| {}).unwrap();
    let report = store.verify(&mut |_| {}).unwrap();
    assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
    let problem = &report.problems[0];
    assert_eq!(problem.key.as_deref(), Some(&b"legacy"[..]));
    assert_eq!(
        problem.kind,
        ProblemKind::OverLimit {
            key_bytes: 6,
            value_bytes: big.len()
        }
    );
    assert!(problem.to_string().contains("cannot reach a replica"));
    // Quarantine leaves it alone: the record is sound.
    assert_eq!(store.quarantine(&report).unwrap(), 0);

    #[cfg(feature = "net")]
    {
        let served = common::serve(std::sync::Arc::new(store));
        let peer = &served.peer;
        let err = Replica::records(peer, 0, &[b"legacy".to_vec()]).unwrap_err();
        assert!(err.to_string().contains("over the frame limit"), "{err}");
        // The connection goes on.
        let found = Replica::records(peer, 0, &[b"small".to_vec()]).unwrap();
        assert_eq!(found.len(), 1);
        served.stop();
    }
}
