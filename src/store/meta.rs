//! The meta tree: format version, tree shape, clean-close state, last checkpoint.
//!
//! ```text
//! "format"     u32 LE                                   format version (2; 1 migrates)
//! "shape"      width u32 LE | levels u32 LE | hash bytes u32 LE
//! "state"      clean u8 (0/1) | epoch u64 LE            epoch of the snapshot, if clean
//! "checkpoint" epoch u64 LE | unix ms u64 LE | clock u64 LE
//! "rebuild"    reason (UTF-8), present until a full checkpoint persists a rebuilt index
//! "dropping"   partition u32 LE, repeated: drops begun and not yet finished
//! "base"       epoch u64 LE                             the snapshot crash recovery starts from
//! "exchanged"  unix ms u64 LE                           the last exchange with any peer
//! "peer/" name unix ms u64 LE                           the last exchange with that peer
//! ```
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use crate::error::{Corruption, Error, Result};
use crate::hash::HASH_BYTES;
use crate::options::Shape;
use crate::FORMAT_VERSION;

const FORMAT: &[u8] = b"format";
const SHAPE: &[u8] = b"shape";
const STATE: &[u8] = b"state";
const CHECKPOINT: &[u8] = b"checkpoint";
const REBUILD: &[u8] = b"rebuild";
const DROPPING: &[u8] = b"dropping";
const BASE: &[u8] = b"base";
const EXCHANGED: &[u8] = b"exchanged";
const PEER: &[u8] = b"peer/";

/// Epochs grow by one per checkpoint; a stored epoch at or past this is corrupt (and
/// would overflow when the next epoch is computed).
pub(crate) const MAX_EPOCH: u64 = 1 << 62;

fn out_of_range(what: &'static str, detail: String) -> Error {
    Error::Corrupt(Corruption::OutOfRange {
        what,
        location: "meta tree".into(),
        detail,
    })
}

/// The last checkpoint that reached disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CheckpointInfo {
    /// Epoch number of the checkpoint (grows by one per checkpoint).
    pub epoch: u64,
    /// Wall-clock time it was taken, in milliseconds since the Unix epoch.
    pub unix_ms: u64,
    /// The store's clock (highest version issued) when it was taken.
    pub clock: u64,
}

pub(crate) struct Meta {
    tree: sled::Tree,
}

fn fixed<const N: usize>(what: &'static str, bytes: &[u8]) -> Result<[u8; N]> {
    bytes.try_into().map_err(|_| {
        Error::Corrupt(Corruption::BadLength {
            what,
            location: "meta tree".into(),
            expected: N,
            found: bytes.len(),
        })
    })
}

fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    if let Some(src) = bytes.get(..8) {
        b.copy_from_slice(src);
    }
    u64::from_le_bytes(b)
}

impl Meta {
    pub(crate) fn new(tree: sled::Tree) -> Meta {
        Meta { tree }
    }

    /// True if the store has never been initialised.
    pub(crate) fn is_new(&self) -> Result<bool> {
        Ok(self.tree.get(FORMAT)?.is_none())
    }

    pub(crate) fn init(&self, shape: Shape) -> Result<()> {
        self.tree.insert(SHAPE, shape_bytes(shape).as_slice())?;
        self.tree.insert(FORMAT, &FORMAT_VERSION.to_le_bytes())?;
        Ok(())
    }

    /// Fails with a clear error unless the stored shape equals `shape` and the stored
    /// format is one this build reads; returns the stored format (older ones migrate).
    pub(crate) fn check(&self, shape: Shape) -> Result<u32> {
        let format = self.tree.get(FORMAT)?.unwrap_or_default();
        let format = u32::from_le_bytes(fixed::<4>("meta format", &format).map_err(damaged)?);
        if format == 0 || format > FORMAT_VERSION {
            return Err(Error::UnsupportedFormat {
                found: format,
                supported: FORMAT_VERSION,
            });
        }
        let stored = self.tree.get(SHAPE)?.unwrap_or_default();
        let stored = fixed::<12>("meta shape", &stored).map_err(damaged)?;
        let requested = shape_bytes(shape);
        let names = ["width", "levels", "hash bytes"];
        for ((what, s), r) in names.iter().zip(stored.chunks(4)).zip(requested.chunks(4)) {
            let s = u32::from_le_bytes(fixed::<4>("meta shape", s)?);
            let r = u32::from_le_bytes(fixed::<4>("meta shape", r)?);
            if s != r {
                return Err(Error::OptionsMismatch {
                    what,
                    stored: s.into(),
                    requested: r.into(),
                });
            }
        }
        Ok(format)
    }

    /// Records that the store is now in `format`.
    pub(crate) fn set_format(&self, format: u32) -> Result<()> {
        self.tree.insert(FORMAT, &format.to_le_bytes())?;
        Ok(())
    }

    /// The stored shape (used by tools that open a store without knowing its options).
    pub(crate) fn shape(&self) -> Result<Option<(u32, u32)>> {
        let Some(stored) = self.tree.get(SHAPE)? else {
            return Ok(None);
        };
        let [w0, w1, w2, w3, l0, l1, l2, l3, ..] =
            fixed::<12>("meta shape", &stored).map_err(damaged)?;
        Ok(Some((
            u32::from_le_bytes([w0, w1, w2, w3]),
            u32::from_le_bytes([l0, l1, l2, l3]),
        )))
    }

    /// `Some(epoch)` if the last close was clean.
    pub(crate) fn clean_epoch(&self) -> Result<Option<u64>> {
        let Some(state) = self.tree.get(STATE)? else {
            return Ok(None);
        };
        let [clean, e @ ..] = fixed::<9>("meta state", &state)?;
        let epoch = u64::from_le_bytes(e);
        if clean > 1 || epoch >= MAX_EPOCH {
            return Err(out_of_range(
                "meta state",
                format!("clean flag {clean} (0 or 1), epoch {epoch} (below 2^62)"),
            ));
        }
        Ok((clean == 1).then_some(epoch))
    }

    pub(crate) fn set_state(&self, clean: bool, epoch: u64) -> Result<()> {
        let mut v = vec![u8::from(clean)];
        v.extend_from_slice(&epoch.to_le_bytes());
        self.tree.insert(STATE, v)?;
        Ok(())
    }

    /// Asks every open to rebuild the index from the data until a full checkpoint lands.
    pub(crate) fn set_rebuild(&self, reason: &str) -> Result<()> {
        self.tree.insert(REBUILD, reason.as_bytes())?;
        Ok(())
    }

    /// Why the index must be rebuilt, if it must.
    pub(crate) fn rebuild_reason(&self) -> Result<Option<String>> {
        Ok(self
            .tree
            .get(REBUILD)?
            .map(|r| String::from_utf8_lossy(&r).into_owned()))
    }

    pub(crate) fn clear_rebuild(&self) -> Result<()> {
        self.tree.remove(REBUILD)?;
        Ok(())
    }

    /// Partitions whose drop began and did not finish.
    pub(crate) fn dropping(&self) -> Result<Vec<u32>> {
        let bytes = self.tree.get(DROPPING)?.unwrap_or_default();
        if bytes.len() % 4 != 0 {
            return Err(out_of_range(
                "meta dropping",
                format!("{} bytes, not a list of u32", bytes.len()),
            ));
        }
        Ok(bytes
            .chunks_exact(4)
            .filter_map(|c| c.try_into().ok().map(u32::from_le_bytes))
            .collect())
    }

    /// Records (or, with `false`, clears) that `partition` is being dropped.
    pub(crate) fn set_dropping(&self, partition: u32, dropping: bool) -> Result<()> {
        let mut list = self.dropping()?;
        list.retain(|&p| p != partition);
        if dropping {
            list.push(partition);
        }
        let bytes: Vec<u8> = list.iter().flat_map(|p| p.to_le_bytes()).collect();
        if bytes.is_empty() {
            self.tree.remove(DROPPING)?;
        } else {
            self.tree.insert(DROPPING, bytes)?;
        }
        Ok(())
    }

    /// The epoch of the snapshot file that is the base of crash recovery (`base.rs`).
    pub(crate) fn base(&self) -> Result<Option<u64>> {
        let Some(bytes) = self.tree.get(BASE)? else {
            return Ok(None);
        };
        let epoch = u64::from_le_bytes(fixed::<8>("meta base", &bytes)?);
        if epoch >= MAX_EPOCH {
            return Err(out_of_range(
                "meta base",
                format!("epoch {epoch} (below 2^62)"),
            ));
        }
        Ok(Some(epoch))
    }

    /// Records the base's epoch, or with `None` that there is no base.
    pub(crate) fn set_base(&self, epoch: Option<u64>) -> Result<()> {
        match epoch {
            Some(e) => self.tree.insert(BASE, &e.to_le_bytes())?,
            None => self.tree.remove(BASE)?,
        };
        Ok(())
    }

    /// When the last exchange with a peer succeeded (unix ms), as the manager records it.
    pub(crate) fn exchanged(&self) -> Result<Option<u64>> {
        let Some(bytes) = self.tree.get(EXCHANGED)? else {
            return Ok(None);
        };
        Ok(Some(u64::from_le_bytes(fixed::<8>(
            "meta exchanged",
            &bytes,
        )?)))
    }

    pub(crate) fn set_exchanged(&self, unix_ms: u64) -> Result<()> {
        self.tree.insert(EXCHANGED, &unix_ms.to_le_bytes())?;
        Ok(())
    }

    /// When the last exchange with the peer `name` succeeded (unix ms), as the manager
    /// records it; a value of another length reads as absent (it only ever holds a peer
    /// back, so a damaged one must not stop the node).
    pub(crate) fn peer_exchanged(&self, name: &str) -> Result<Option<u64>> {
        let bytes = self.tree.get(peer_key(name))?;
        Ok(bytes.and_then(|b| fixed::<8>("meta peer", &b).ok().map(u64::from_le_bytes)))
    }

    /// Records the last exchange with `name`, or forgets it (`None`).
    pub(crate) fn set_peer_exchanged(&self, name: &str, unix_ms: Option<u64>) -> Result<()> {
        match unix_ms {
            Some(ms) => self.tree.insert(peer_key(name), &ms.to_le_bytes())?,
            None => self.tree.remove(peer_key(name))?,
        };
        Ok(())
    }

    pub(crate) fn checkpoint(&self) -> Result<Option<CheckpointInfo>> {
        let Some(bytes) = self.tree.get(CHECKPOINT)? else {
            return Ok(None);
        };
        let b = fixed::<24>("meta checkpoint", &bytes)?;
        let info = CheckpointInfo {
            epoch: le_u64(&b),
            unix_ms: le_u64(b.get(8..).unwrap_or_default()),
            clock: le_u64(b.get(16..).unwrap_or_default()),
        };
        if info.epoch >= MAX_EPOCH {
            return Err(out_of_range(
                "meta checkpoint",
                format!("epoch {} (below 2^62)", info.epoch),
            ));
        }
        Ok(Some(info))
    }

    pub(crate) fn set_checkpoint(&self, info: CheckpointInfo) -> Result<()> {
        let mut v = Vec::with_capacity(24);
        for x in [info.epoch, info.unix_ms, info.clock] {
            v.extend_from_slice(&x.to_le_bytes());
        }
        self.tree.insert(CHECKPOINT, v)?;
        Ok(())
    }
}

fn peer_key(name: &str) -> Vec<u8> {
    [PEER, name.as_bytes()].concat()
}

/// Damaged `format` or `shape` leaves the store unable to place keys: say what to do.
fn damaged(e: Error) -> Error {
    Error::NotAStore {
        path: "meta tree".into(),
        reason: format!(
            "{e}: its metadata is damaged, so its tree shape is unknown; the data itself is \
             intact: move the directory aside, create a new store and sync it from a replica"
        ),
    }
}

fn shape_bytes(shape: Shape) -> Vec<u8> {
    [shape.width, shape.levels, HASH_BYTES as u32]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect()
}
