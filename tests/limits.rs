//! Keys and values at and over the store's limits: refused before anything is written,
//! and anything at the limits reaches a replica, over the network too.

use merkle_index::{
    Error, Options, Record, Repair, Replica, Store, MAX_KEY_BYTES, MAX_VALUE_BYTES,
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
    use std::time::Duration;

    use merkle_index::net::{self, Client, Key, ServeOptions, Stop};
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
    let key = Key::from_secret(b"a long shared secret, 16+ bytes").unwrap();
    let (listener, addr) = net::bind("127.0.0.1:0").unwrap();
    let stop = Stop::new(addr);
    let server = std::thread::spawn({
        let (served, key, stop) = (Arc::clone(&b), key.clone(), stop.clone());
        move || {
            net::serve(
                served,
                listener,
                key,
                ServeOptions::default(),
                &stop,
                Arc::new(|_| {}),
            )
        }
    });
    let peer = Client::connect(&addr.to_string(), &key, Duration::from_secs(60)).unwrap();
    let found = Replica::records(&peer, 0, &keys).unwrap();
    assert_eq!(found.len(), keys.len());
    assert!(found
        .iter()
        .all(|l| matches!(l, Lookup::Found(r) if r.value == b"on the server")));
    let writes: Vec<(Vec<u8>, Record)> = keys
        .iter()
        .map(|k| (k.clone(), Record::value(3, b"replicated")))
        .collect();
    assert_eq!(peer.replicate(0, &writes).unwrap(), 300);
    let report = merkle_index::sync(&a, &peer, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.differences, 302);
    stop.trigger();
    server.join().unwrap().unwrap();
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    assert_eq!(a.root(0), b.root(0));
    assert_eq!(a.count_keys(0).unwrap(), 302);
}
