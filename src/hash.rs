//! Hashes and the blake3 contexts that give each role its own hash function.
//!
//! Every hash in the store is the first 16 bytes of a blake3 output in derive-key mode;
//! the context string names the role, so no two roles can collide (see FORMAT.md).

use std::fmt;
use std::ops::{BitXor, BitXorAssign};
use std::sync::LazyLock;

use blake3::hazmat::{hash_derive_key_context, ContextKey, HasherExt};

/// Number of bytes in every stored hash (128 bits).
pub const HASH_BYTES: usize = 16;

pub(crate) const PLACEMENT_CONTEXT: &str = "merkle-index 2026-11-24 segment placement v1";
pub(crate) const ENTRY_CONTEXT: &str = "merkle-index 2026-11-24 entry hash v1";
pub(crate) const VALUE_CONTEXT: &str = "merkle-index 2026-11-24 value hash v1";
pub(crate) const BUCKET_CONTEXT: &str = "merkle-index 2026-11-24 bucket checksum v1";
pub(crate) const SNAPSHOT_CONTEXT: &str = "merkle-index 2026-11-24 snapshot checksum v1";

/// A 128-bit hash: an entry hash, a segment hash (XOR of entries) or a tree node.
///
/// Its byte form ([`Hash::to_bytes`]) is the truncated blake3 output; in memory it is
/// that byte string read as a little-endian `u128`, so XOR is one machine operation.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct Hash(u128);

impl Hash {
    /// The hash of nothing: an empty segment, an empty tree.
    pub const ZERO: Hash = Hash(0);

    /// Builds a hash from its 16-byte form.
    pub fn from_bytes(bytes: [u8; HASH_BYTES]) -> Hash {
        Hash(u128::from_le_bytes(bytes))
    }

    /// The 16-byte form, as written on disk and on the wire.
    pub fn to_bytes(self) -> [u8; HASH_BYTES] {
        self.0.to_le_bytes()
    }

    /// Lower-case hex of the byte form.
    pub fn to_hex(self) -> String {
        self.to_bytes().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Parses 32 hex digits, as printed by [`Hash::to_hex`].
    pub fn from_hex(s: &str) -> Option<Hash> {
        if s.len() != 2 * HASH_BYTES || !s.is_ascii() {
            return None;
        }
        let mut out = [0u8; HASH_BYTES];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Hash::from_bytes(out))
    }

    /// True for [`Hash::ZERO`].
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }

    fn from_output(hasher: &blake3::Hasher) -> Hash {
        // The output's first bytes (the same as the extendable output's, and cheaper).
        let mut out = [0u8; HASH_BYTES];
        out.copy_from_slice(&hasher.finalize().as_bytes()[..HASH_BYTES]);
        Hash::from_bytes(out)
    }
}

impl BitXor for Hash {
    type Output = Hash;
    fn bitxor(self, rhs: Hash) -> Hash {
        Hash(self.0 ^ rhs.0)
    }
}

impl BitXorAssign for Hash {
    fn bitxor_assign(&mut self, rhs: Hash) {
        self.0 ^= rhs.0;
    }
}

impl fmt::Display for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Hash({})", self.to_hex())
    }
}

// Deriving a context key costs a compression; derive each role's once and start hashers
// from it (the same derive-key-mode hash as `Hasher::new_derive_key`).
static PLACEMENT: LazyLock<ContextKey> =
    LazyLock::new(|| hash_derive_key_context(PLACEMENT_CONTEXT));
static ENTRY: LazyLock<ContextKey> = LazyLock::new(|| hash_derive_key_context(ENTRY_CONTEXT));
static VALUE: LazyLock<ContextKey> = LazyLock::new(|| hash_derive_key_context(VALUE_CONTEXT));

fn hasher(context: &ContextKey) -> blake3::Hasher {
    blake3::Hasher::new_from_context_key(context)
}

/// Derive-key-mode hash of `parts` (concatenated) under `context`, truncated to 16 bytes.
pub(crate) fn derive(context: &str, parts: &[&[u8]]) -> Hash {
    let mut hasher = blake3::Hasher::new_derive_key(context);
    for part in parts {
        hasher.update(part);
    }
    Hash::from_output(&hasher)
}

/// The segment a key belongs to in a tree of `segments` segments.
///
/// Placement depends on the key alone, so a key lands in the same segment on every
/// replica and in every partition.
pub fn segment_of(key: &[u8], segments: u64) -> u32 {
    let mut hasher = hasher(&PLACEMENT);
    hasher.update(key);
    let mut head = [0u8; 8];
    head.copy_from_slice(&hasher.finalize().as_bytes()[..8]);
    // segments <= 2^32 (checked by Options), so the remainder fits in u32.
    (u64::from_le_bytes(head) % segments) as u32
}

/// The hash of a value's bytes, stored next to them to detect bit rot.
pub fn value_hash(value: &[u8]) -> Hash {
    let mut hasher = hasher(&VALUE);
    hasher.update(value);
    Hash::from_output(&hasher)
}

/// Longest entry-hash input gathered into one buffer (a 64-byte block and a bit).
const ENTRY_INLINE: usize = 96;

/// The hash one entry contributes (by XOR) to its segment.
pub fn entry_hash(
    partition: u32,
    key: &[u8],
    version: u64,
    tombstone: bool,
    value_hash: Hash,
) -> Hash {
    let mut hasher = hasher(&ENTRY);
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&partition.to_le_bytes());
    head[4..].copy_from_slice(&(key.len() as u32).to_le_bytes());
    let mut tail = [0u8; 8 + 1 + HASH_BYTES];
    tail[..8].copy_from_slice(&version.to_le_bytes());
    tail[8] = u8::from(tombstone);
    tail[9..].copy_from_slice(&value_hash.to_bytes());
    // For a key of up to a few dozen bytes the fields are gathered into one buffer and
    // given to blake3 in one `update`: a call per field cost about a quarter of the hash.
    let mut one = [0u8; ENTRY_INLINE];
    let len = head.len() + key.len() + tail.len();
    if let Some(buf) = one.get_mut(..len) {
        let (h, rest) = buf.split_at_mut(head.len());
        let (k, t) = rest.split_at_mut(key.len());
        h.copy_from_slice(&head);
        k.copy_from_slice(key);
        t.copy_from_slice(&tail);
        hasher.update(buf);
    } else {
        hasher.update(&head);
        hasher.update(key);
        hasher.update(&tail);
    }
    Hash::from_output(&hasher)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip_and_rejects_garbage() {
        let h = value_hash(b"abc");
        assert_eq!(Hash::from_hex(&h.to_hex()), Some(h));
        assert_eq!(Hash::from_hex("zz"), None);
        assert_eq!(Hash::from_hex(&"g".repeat(32)), None);
        assert_eq!(Hash::from_hex(&"é".repeat(16)), None);
    }

    #[test]
    fn roles_do_not_collide() {
        let a = derive(VALUE_CONTEXT, &[b"x"]);
        let b = derive(BUCKET_CONTEXT, &[b"x"]);
        assert_ne!(a, b);
        assert_eq!(a, value_hash(b"x"));
    }

    #[test]
    fn entry_hash_is_the_derive_key_hash_of_its_fields_for_any_key_length() {
        // Short keys take the one-buffer path, long ones a call per field: both hash
        // FORMAT.md's bytes.
        let value = value_hash(b"v");
        for len in [0usize, 1, 16, ENTRY_INLINE - 33, ENTRY_INLINE - 32, 300] {
            let key = vec![0xAB; len];
            let expected = derive(
                ENTRY_CONTEXT,
                &[
                    &7u32.to_le_bytes(),
                    &(len as u32).to_le_bytes(),
                    &key,
                    &42u64.to_le_bytes(),
                    &[1],
                    &value.to_bytes(),
                ],
            );
            assert_eq!(
                entry_hash(7, &key, 42, true, value),
                expected,
                "key of {len} bytes"
            );
        }
    }

    #[test]
    fn byte_form_is_truncated_blake3() {
        let full = blake3::Hasher::new_derive_key(VALUE_CONTEXT)
            .update(b"hello")
            .finalize();
        assert_eq!(value_hash(b"hello").to_bytes()[..], full.as_bytes()[..16]);
    }
}
