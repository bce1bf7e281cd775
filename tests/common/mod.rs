//! Shared test helpers, including a from-scratch root computation written from FORMAT.md
//! alone (it uses blake3 directly, not the library's hash functions).
#![allow(dead_code)]

use std::collections::BTreeMap;

/// The model of one partition: key -> (version, tombstone, value).
pub type Model = BTreeMap<Vec<u8>, (u64, bool, Vec<u8>)>;

fn derive16(context: &str, parts: &[&[u8]]) -> [u8; 16] {
    let mut h = blake3::Hasher::new_derive_key(context);
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

fn xor(a: &mut [u8; 16], b: &[u8; 16]) {
    for (x, y) in a.iter_mut().zip(b) {
        *x ^= y;
    }
}

/// Root of a partition per FORMAT.md: the XOR of all entry hashes (every interior node
/// is the XOR of its children, so the root is the XOR of every segment).
pub fn reference_root(partition: u32, model: &Model) -> [u8; 16] {
    let mut root = [0u8; 16];
    for (key, (version, tombstone, value)) in model {
        let value_hash = derive16("merkle-index 2026-11-24 value hash v1", &[value]);
        let entry = derive16(
            "merkle-index 2026-11-24 entry hash v1",
            &[
                &partition.to_le_bytes(),
                &(key.len() as u32).to_le_bytes(),
                key,
                &version.to_le_bytes(),
                &[u8::from(*tombstone)],
                &value_hash,
            ],
        );
        xor(&mut root, &entry);
    }
    root
}

/// Segment of a key per FORMAT.md.
pub fn reference_segment(key: &[u8], segments: u64) -> u64 {
    let h = blake3::Hasher::new_derive_key("merkle-index 2026-11-24 segment placement v1")
        .update(key)
        .finalize();
    let mut head = [0u8; 8];
    head.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(head) % segments
}

/// Small trees keep tests fast: 4^3 = 64 segments.
pub fn small_options() -> merkle_index::Options {
    let mut o = merkle_index::Options::default();
    o.width = 4;
    o.levels = 3;
    o.region_segments = 4;
    o.cache_bytes = 8 << 20;
    o
}

/// Edits the raw sled database of a closed store (sled's I/O threads may hold its lock
/// for a moment after the store is dropped).
pub fn with_sled(dir: &std::path::Path, edit: impl FnOnce(&sled::Db)) {
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

/// The current time as a version of the store's clock (`unix_ms << 16`), plus `ahead`.
pub fn hlc_now_plus(ahead: std::time::Duration) -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    ((now + ahead).as_millis() as u64) << 16
}

/// The raw sled key of `key` in `partition` (FORMAT.md: partition BE, segment BE, key).
pub fn raw_data_key(partition: u32, key: &[u8], segments: u64) -> Vec<u8> {
    let mut out = partition.to_be_bytes().to_vec();
    out.extend_from_slice(&(reference_segment(key, segments) as u32).to_be_bytes());
    out.extend_from_slice(key);
    out
}

/// A store served over TCP on a free port, and a client connected to it.
#[cfg(feature = "net")]
pub struct Served {
    pub peer: merkle_index::net::Client,
    stop: merkle_index::net::Stop,
    server: std::thread::JoinHandle<merkle_index::Result<()>>,
}

#[cfg(feature = "net")]
pub fn serve(store: std::sync::Arc<merkle_index::Store>) -> Served {
    use merkle_index::net::{self, Client, Key, ServeOptions, Stop};
    let key = Key::from_secret(b"a long shared secret, 16+ bytes").unwrap();
    let (listener, addr) = net::bind("127.0.0.1:0").unwrap();
    let stop = Stop::new(addr);
    let server = std::thread::spawn({
        let (key, stop) = (key.clone(), stop.clone());
        move || {
            let log: net::Log = std::sync::Arc::new(|_| {});
            net::serve(store, listener, key, ServeOptions::default(), &stop, log)
        }
    });
    let timeout = std::time::Duration::from_secs(60);
    let peer = Client::connect(&addr.to_string(), &key, timeout).unwrap();
    Served { peer, stop, server }
}

#[cfg(feature = "net")]
impl Served {
    /// Stops the server and checks it ended without an error.
    pub fn stop(self) {
        self.stop.trigger();
        self.server.join().unwrap().unwrap();
    }
}
