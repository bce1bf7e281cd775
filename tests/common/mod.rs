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
