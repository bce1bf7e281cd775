//! The fast-start snapshot: every partition's whole tree in one file, written on clean
//! close and memory-mapped on open.
//!
//! ```text
//! offset size  field
//!      0    8  magic "MRKLSNAP"
//!      8    4  snapshot layout version, u32 LE (1)
//!     12    4  hash bytes, u32 LE (16)
//!     16    4  width, u32 LE
//!     20    4  levels, u32 LE
//!     24    8  checkpoint epoch, u64 LE (must equal the epoch in meta `state`)
//!     32    4  partition count N, u32 LE
//!     36    4  reserved, 0
//!     40   32  checksum: blake3 derive_key("...snapshot checksum v1") of bytes 0..40
//!              followed by the whole body
//!     72       body: N times { partition u32 LE | page count P u32 LE |
//!              P times { level u8 | page u32 LE | encoded page (see `page.rs`) } }
//!              (only pages with a non-zero node; the root is the XOR of level 1)
//! ```
//! Written as `index.snapshot.tmp`, fsynced, renamed over `index.snapshot`, and the
//! directory fsynced, so a crash leaves either the old file or the new one.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::Path;

use crate::error::{Corruption, Error, Result};
use crate::file::sync_dir;
use crate::hash::{HASH_BYTES, SNAPSHOT_CONTEXT};
use crate::options::Shape;
use crate::page;
use crate::tree::Tree;
/// Version of the snapshot layout (independent of the store format version).
const SNAPSHOT_VERSION: u32 = 2;

pub(crate) const SNAPSHOT_FILE: &str = "index.snapshot";
const MAGIC: &[u8; 8] = b"MRKLSNAP";
const HEADER_LEN: usize = 72;
const CHECKSUMMED_HEADER: usize = 40;

fn header(shape: Shape, epoch: u64, partitions: u32) -> [u8; CHECKSUMMED_HEADER] {
    let mut h = [0u8; CHECKSUMMED_HEADER];
    let fields: [&[u8]; 8] = [
        MAGIC,
        &SNAPSHOT_VERSION.to_le_bytes(),
        &(HASH_BYTES as u32).to_le_bytes(),
        &shape.width.to_le_bytes(),
        &shape.levels.to_le_bytes(),
        &epoch.to_le_bytes(),
        &partitions.to_le_bytes(),
        &[0u8; 4],
    ];
    let mut at = 0;
    for field in fields {
        for (dst, src) in h.iter_mut().skip(at).zip(field) {
            *dst = *src;
        }
        at += field.len();
    }
    h
}

/// Writes the snapshot of `trees` atomically into `dir`.
pub(crate) fn write(
    dir: &Path,
    shape: Shape,
    epoch: u64,
    trees: &BTreeMap<u32, Tree>,
) -> Result<()> {
    let tmp = dir.join(format!("{SNAPSHOT_FILE}.tmp"));
    let path = dir.join(SNAPSHOT_FILE);
    let io = |what: &str, e| Error::io(format!("{what} {}", tmp.display()), e);
    let head = header(shape, epoch, trees.len() as u32);
    let mut sum = blake3::Hasher::new_derive_key(SNAPSHOT_CONTEXT);
    sum.update(&head);
    let file = File::create(&tmp).map_err(|e| io("create", e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    out.write_all(&head).map_err(|e| io("write", e))?;
    out.write_all(&[0u8; HEADER_LEN - CHECKSUMMED_HEADER])
        .map_err(|e| io("write", e))?;
    let mut buf = Vec::with_capacity(1 << 16);
    for (&id, tree) in trees {
        let mut pages = 0u32;
        tree.for_each_page(|_, _, _| pages += 1);
        buf.extend_from_slice(&id.to_le_bytes());
        buf.extend_from_slice(&pages.to_le_bytes());
        let mut failed = None;
        tree.for_each_page(|level, page, view| {
            buf.push(level as u8);
            buf.extend_from_slice(&page.to_le_bytes());
            view.encode(shape.bucket_len(level) as usize, &mut buf);
            if buf.len() >= 1 << 16 && failed.is_none() {
                sum.update(&buf);
                failed = out.write_all(&buf).err();
                buf.clear();
            }
        });
        if let Some(e) = failed {
            return Err(io("write", e));
        }
    }
    sum.update(&buf);
    out.write_all(&buf).map_err(|e| io("write", e))?;
    let mut file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
    std::io::Seek::seek(
        &mut file,
        std::io::SeekFrom::Start(CHECKSUMMED_HEADER as u64),
    )
    .map_err(|e| io("seek", e))?;
    file.write_all(sum.finalize().as_bytes())
        .map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
    sync_dir(dir)
}

/// Removes the snapshot (and any half-written temp file), so it can never be trusted
/// again once the store has changed.
pub(crate) fn remove(dir: &Path) -> Result<()> {
    for name in [SNAPSHOT_FILE.to_string(), format!("{SNAPSHOT_FILE}.tmp")] {
        match fs::remove_file(dir.join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {name}"), e)),
        }
    }
    Ok(())
}

fn bad_header(detail: String) -> Error {
    Error::Corrupt(Corruption::BadHeader {
        what: "snapshot",
        location: SNAPSHOT_FILE.into(),
        detail,
    })
}

fn short(needed: usize) -> Error {
    Error::Corrupt(Corruption::BadLength {
        what: "snapshot",
        location: SNAPSHOT_FILE.into(),
        expected: HEADER_LEN + needed,
        found: HEADER_LEN + needed.saturating_sub(1),
    })
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(src) = bytes.get(at..at + 4) {
        b.copy_from_slice(src);
    }
    u32::from_le_bytes(b)
}

/// Maps and validates the snapshot in `dir`; `Ok(None)` if there is none.
pub(crate) fn read(dir: &Path, shape: Shape, epoch: u64) -> Result<Option<BTreeMap<u32, Tree>>> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    // SAFETY: the file is private to this store (sled holds the directory's lock while we
    // run) and is only ever replaced by rename, never modified in place, so the mapped
    // bytes do not change under us. We copy out of the map before it is dropped.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
    let bytes: &[u8] = &map;
    let head = bytes.get(..CHECKSUMMED_HEADER).ok_or_else(|| {
        Error::Corrupt(Corruption::BadLength {
            what: "snapshot",
            location: SNAPSHOT_FILE.into(),
            expected: HEADER_LEN,
            found: bytes.len(),
        })
    })?;
    if head.get(..8) != Some(MAGIC.as_slice()) {
        return Err(bad_header("bad magic, not a merkle-index snapshot".into()));
    }
    let found_epoch = u64::from(u32_at(head, 24)) | u64::from(u32_at(head, 28)) << 32;
    let partitions = u32_at(head, 32);
    let expected = header(shape, epoch, partitions);
    if head != expected {
        return Err(bad_header(format!(
            "format/shape/epoch differ from the store's (snapshot epoch {found_epoch}, store epoch {epoch}); it is stale or from another store"
        )));
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    let mut sum = blake3::Hasher::new_derive_key(SNAPSHOT_CONTEXT);
    sum.update(head);
    sum.update(body);
    let stored = bytes
        .get(CHECKSUMMED_HEADER..HEADER_LEN)
        .unwrap_or_default();
    if sum.finalize().as_bytes().as_slice() != stored {
        return Err(Error::Corrupt(Corruption::ChecksumMismatch {
            what: "snapshot",
            location: SNAPSHOT_FILE.into(),
            expected: sum.finalize().to_hex().to_string(),
            found: stored.iter().map(|b| format!("{b:02x}")).collect(),
        }));
    }
    let mut trees = BTreeMap::new();
    let mut at = 0usize;
    for _ in 0..partitions {
        let id = u32_at(body, at);
        let pages = u32_at(body, at + 4);
        at = at
            .checked_add(8)
            .filter(|&a| a <= body.len())
            .ok_or_else(|| short(at + 8))?;
        let mut tree = Tree::new(shape);
        for _ in 0..pages {
            let level = u32::from(*body.get(at).ok_or_else(|| short(at + 1))?);
            let page = u32_at(body, at + 1);
            at += 5;
            let len = if (1..=shape.levels).contains(&level) {
                shape.bucket_len(level) as usize
            } else {
                return Err(bad_header(format!("partition {id}: page of level {level}")));
            };
            let rest = body.get(at..).ok_or_else(|| short(at))?;
            let location = || format!("{SNAPSHOT_FILE} partition {id} level {level} page {page}");
            let (decoded, used) = page::decode(rest, len, &location)?;
            if !tree.load_page(level, page, decoded) {
                return Err(bad_header(format!(
                    "partition {id}: page {page} of level {level} is outside the tree"
                )));
            }
            at += used;
        }
        tree.recompute_root();
        if let Some((level, node)) = tree.first_inconsistency() {
            return Err(bad_header(format!(
                "partition {id}: node {node} of level {level} is not the XOR of its children"
            )));
        }
        tree.clear_dirty();
        if trees.insert(id, tree).is_some() {
            return Err(bad_header(format!("partition {id} appears twice")));
        }
    }
    if at != body.len() {
        return Err(Error::Corrupt(Corruption::BadLength {
            what: "snapshot",
            location: SNAPSHOT_FILE.into(),
            expected: HEADER_LEN + at,
            found: bytes.len(),
        }));
    }
    Ok(Some(trees))
}
