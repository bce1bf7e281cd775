//! The pre-shared key both sides of an exchange hold.

use std::path::Path;

use crate::error::{Error, Result};

const KEY_CONTEXT: &str = "merkle-index 2026-11-24 pre-shared key v1";

/// The 32-byte key derived from a secret (a key file's contents).
#[derive(Clone)]
pub struct Key([u8; 32]);

impl Key {
    /// Derives the key from a key file (surrounding whitespace ignored; at least 16
    /// bytes).
    pub fn from_file(path: &Path) -> Result<Key> {
        let bytes = std::fs::read(path)
            .map_err(|e| Error::io(format!("read key file {}", path.display()), e))?;
        Key::from_secret(bytes.trim_ascii())
    }

    /// Derives the key from a secret of at least 16 bytes.
    pub fn from_secret(secret: &[u8]) -> Result<Key> {
        if secret.len() < 16 {
            return Err(Error::InvalidArgument(
                "the pre-shared key must be at least 16 bytes; write a long random string to the key file".into(),
            ));
        }
        Ok(Key(blake3::derive_key(KEY_CONTEXT, secret)))
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}
