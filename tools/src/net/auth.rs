//! Pre-shared key and the challenge-response MACs of the handshake.

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context};

const KEY_CONTEXT: &str = "merkle-index 2026-11-24 pre-shared key v1";

/// The 32-byte key both sides derive from the key file.
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// Derives the key from a key file (surrounding whitespace ignored; at least 16 bytes).
    pub fn from_file(path: &Path) -> anyhow::Result<Key> {
        let bytes =
            std::fs::read(path).with_context(|| format!("read key file {}", path.display()))?;
        Key::from_secret(bytes.trim_ascii())
    }

    pub fn from_secret(secret: &[u8]) -> anyhow::Result<Key> {
        if secret.len() < 16 {
            bail!("the pre-shared key must be at least 16 bytes; write a long random string to the key file");
        }
        Ok(Key(blake3::derive_key(KEY_CONTEXT, secret)))
    }

    /// MAC of one side of the handshake (role separates the two directions).
    pub fn mac(&self, role: &str, first: &[u8; 32], second: &[u8; 32]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.0);
        h.update(role.as_bytes());
        h.update(first);
        h.update(second);
        *h.finalize().as_bytes()
    }

    /// Constant-time comparison of a received MAC (blake3's `Hash` equality is).
    pub fn check(&self, role: &str, first: &[u8; 32], second: &[u8; 32], mac: &[u8; 32]) -> bool {
        blake3::Hash::from(self.mac(role, first, second)) == blake3::Hash::from(*mac)
    }
}

/// 32 random bytes from the operating system.
pub fn nonce() -> anyhow::Result<[u8; 32]> {
    let mut out = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut out))
        .context("read /dev/urandom for a nonce")?;
    Ok(out)
}
