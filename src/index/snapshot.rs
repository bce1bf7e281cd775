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
//!     72       body: N times { partition u32 LE | page count P u32 LE | length L u64 LE |
//!              bucket span u32 LE (0xFFFF_FFFF: none persisted yet) |
//!              L bytes: P times { page u32 LE | encoded page (`page.rs`) } }
//!              Only the segment level's pages with a non-zero node, in increasing
//!              order; every level above is recomputed (XOR of children) on load.
//!              (only pages with a non-zero node; the root is the XOR of level 1)
//! ```
//! Written as `index.snapshot.tmp`, fsynced, renamed over `index.snapshot`, and the
//! directory fsynced, so a crash leaves either the old file or the new one. The same file
//! is the base of crash recovery while the store runs (see `base.rs`); the bucket span
//! lets the buckets written after it continue the partition's runs.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Corruption, Error, Result};
use crate::file::sync_dir;
use crate::hash::{Hash, HASH_BYTES, SNAPSHOT_CONTEXT};
use crate::index::Trees;
use crate::options::Shape;
use crate::page;
use crate::parallel;
use crate::tree::Tree;
/// Version of the snapshot layout (independent of the store format version).
const SNAPSHOT_VERSION: u32 = 3;

pub(crate) const SNAPSHOT_FILE: &str = "index.snapshot";
const MAGIC: &[u8; 8] = b"MRKLSNAP";
const HEADER_LEN: usize = 72;
const CHECKSUMMED_HEADER: usize = 40;
/// Bytes before each partition's pages: partition, page count, length, bucket span.
const PART_HEAD: usize = 20;
const NO_SPAN: u32 = u32::MAX;

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

/// Writes the snapshot of `trees` atomically into `dir`; returns its size.
pub(crate) fn write(
    dir: &Path,
    shape: Shape,
    epoch: u64,
    trees: &BTreeMap<u32, Tree>,
) -> Result<u64> {
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
        // Encoded whole first: its length goes in front, so a reader can split the body
        // by partition without decoding it.
        let mut pages = 0u32;
        buf.clear();
        tree.for_each_segment_page(|page, view| {
            pages += 1;
            buf.extend_from_slice(&page.to_le_bytes());
            view.encode(shape.bucket_len(shape.levels) as usize, &mut buf);
        });
        let mut head = [0u8; PART_HEAD];
        head[..4].copy_from_slice(&id.to_le_bytes());
        head[4..8].copy_from_slice(&pages.to_le_bytes());
        head[8..16].copy_from_slice(&(buf.len() as u64).to_le_bytes());
        let span = tree.persisted_span.map_or(NO_SPAN, u32::from);
        head[16..].copy_from_slice(&span.to_le_bytes());
        for part in [&head[..], &buf] {
            sum.update(part);
            out.write_all(part).map_err(|e| io("write", e))?;
        }
    }
    let mut file = out.into_inner().map_err(|e| io("write", e.into_error()))?;
    std::io::Seek::seek(
        &mut file,
        std::io::SeekFrom::Start(CHECKSUMMED_HEADER as u64),
    )
    .map_err(|e| io("seek", e))?;
    file.write_all(sum.finalize().as_bytes())
        .map_err(|e| io("write", e))?;
    file.sync_all().map_err(|e| io("fsync", e))?;
    let bytes = file.metadata().map_err(|e| io("stat", e))?.len();
    drop(file);
    fs::rename(&tmp, &path).map_err(|e| io("rename", e))?;
    sync_dir(dir)?;
    Ok(bytes)
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

/// Decodes one partition's segment pages and derives the levels above them: densely if
/// its bytes can only hold nearly half the segments or more (a non-zero segment takes at
/// least 16 bytes, at most 18 plus page headers).
fn decode_partition(shape: Shape, head: PartHead, part: &[u8]) -> Result<(u32, Tree)> {
    let PartHead { id, pages, span } = head;
    let page_len = shape.bucket_len(shape.levels);
    let page_count = shape.segments.div_ceil(page_len);
    let dense = part.len() as u64 > shape.segments * 8;
    // Dense partitions are decoded into one array of every segment; sparse ones keep
    // their pages as decoded.
    let mut all = if dense {
        vec![Hash::ZERO; shape.segments as usize]
    } else {
        Vec::new()
    };
    if u64::from(pages) > page_count {
        return Err(bad_header(format!(
            "partition {id}: {pages} segment pages in a tree of {page_count}"
        )));
    }
    // The count comes from the file: the list grows with the pages actually read (each
    // takes at least 5 bytes), never from the count alone.
    let mut kept = Vec::with_capacity(if dense {
        0
    } else {
        (pages as usize).min(part.len() / 5)
    });
    let mut at = 0usize;
    let mut last = None;
    for _ in 0..pages {
        let page = u32_at(part, at);
        at += 4;
        if u64::from(page) >= page_count || last.is_some_and(|l| page <= l) {
            return Err(bad_header(format!(
                "partition {id}: segment page {page} out of order or past the tree"
            )));
        }
        last = Some(page);
        let rest = part.get(at..).ok_or_else(|| short(at))?;
        let location = || format!("{SNAPSHOT_FILE} partition {id} page {page}");
        if dense {
            let base = u64::from(page) * page_len;
            at += page::decode_nodes(rest, page_len as usize, &location, &mut |o, h| {
                if let Some(slot) = all.get_mut((base + o as u64) as usize) {
                    *slot = h;
                }
            })?;
        } else {
            let (nodes, used) = page::decode_page(rest, page_len as usize, &location)?;
            kept.push((page, nodes));
            at += used;
        }
    }
    if at != part.len() {
        return Err(bad_header(format!(
            "partition {id}: {} stray bytes",
            part.len().saturating_sub(at)
        )));
    }
    let mut tree = if dense {
        Tree::from_all_persisted_segments(shape, all)
    } else {
        Tree::from_persisted_pages(shape, kept)
    };
    // A span whose buckets would be wider than the tree is out of range.
    let fits = |s: u8| {
        u64::from(shape.width)
            .checked_pow(u32::from(s))
            .is_some_and(|covered| covered <= crate::bucket::segment_pages(shape))
    };
    tree.persisted_span =
        match span {
            NO_SPAN => None,
            s => Some(u8::try_from(s).ok().filter(|&s| fits(s)).ok_or_else(|| {
                bad_header(format!("partition {id}: bucket span {s} out of range"))
            })?),
        };
    Ok((id, tree))
}

/// The checkpoint epoch a snapshot header names (zero if `head` is too short).
pub(crate) fn header_epoch(head: &[u8]) -> u64 {
    u64::from(u32_at(head, 24)) | u64::from(u32_at(head, 28)) << 32
}

/// What precedes one partition's pages.
#[derive(Clone, Copy)]
struct PartHead {
    id: u32,
    pages: u32,
    span: u32,
}

/// Maps and validates the snapshot in `dir`; `Ok(None)` if there is none.
pub(crate) fn read(dir: &Path, shape: Shape, epoch: u64) -> Result<Option<BTreeMap<u32, Tree>>> {
    Ok(read_summed(dir, shape, epoch)?.map(|(trees, _)| trees))
}

/// As [`read`], with the checksum the file holds (and matched).
fn read_summed(dir: &Path, shape: Shape, epoch: u64) -> Result<Option<(Trees, Checksum)>> {
    let path = dir.join(SNAPSHOT_FILE);
    let file = match File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    // SAFETY: the file is private to this store and only ever replaced by rename (or
    // removed), never modified in place, so the mapped bytes do not change under us, even
    // when read before sled's lock is taken (`Early`): a process that has the store
    // open may replace the file meanwhile, but not the inode mapped here. We copy out of
    // the map before it is dropped.
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
    let found_epoch = header_epoch(head);
    let partitions = u32_at(head, 32);
    let expected = header(shape, epoch, partitions);
    if head != expected {
        return Err(bad_header(format!(
            "format/shape/epoch differ from the store's (snapshot epoch {found_epoch}, store epoch {epoch}); it is stale or from another store"
        )));
    }
    let body = bytes.get(HEADER_LEN..).unwrap_or_default();
    let stored = bytes
        .get(CHECKSUMMED_HEADER..HEADER_LEN)
        .unwrap_or_default();
    // Each partition takes at least its head: a count past that is refused before the
    // list of them is allocated.
    if u64::from(partitions) * PART_HEAD as u64 > body.len() as u64 {
        return Err(bad_header(format!(
            "{partitions} partitions cannot fit in a body of {} bytes",
            body.len()
        )));
    }
    // Split the body by partition (each says its length), then check the checksum on
    // one thread while every core decodes partitions; nothing decoded is used unless the
    // checksum matches.
    let mut parts = Vec::with_capacity(partitions as usize);
    let mut at = 0usize;
    for _ in 0..partitions {
        let head = PartHead {
            id: u32_at(body, at),
            pages: u32_at(body, at + 4),
            span: u32_at(body, at + 16),
        };
        let len = u64::from(u32_at(body, at + 8)) | u64::from(u32_at(body, at + 12)) << 32;
        let start = at.checked_add(PART_HEAD).ok_or_else(|| short(at))?;
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| start.checked_add(l))
            .filter(|&e| e <= body.len())
            .ok_or_else(|| short(start.saturating_add(len as usize)))?;
        parts.push((head, body.get(start..end).unwrap_or_default()));
        at = end;
    }
    if at != body.len() {
        return Err(Error::Corrupt(Corruption::BadLength {
            what: "snapshot",
            location: SNAPSHOT_FILE.into(),
            expected: HEADER_LEN + at,
            found: bytes.len(),
        }));
    }
    let (checked, decoded) = std::thread::scope(|scope| {
        let checksum = scope.spawn(|| {
            let mut sum = blake3::Hasher::new_derive_key(SNAPSHOT_CONTEXT);
            sum.update(head);
            sum.update(body);
            sum.finalize()
        });
        let decoded = parallel::map(
            &parts,
            |&(head, part)| decode_partition(shape, head, part),
            &mut || {},
        );
        (checksum.join(), decoded)
    });
    let sum = checked.map_err(|_| bad_header("checksum thread panicked".into()))?;
    if sum.as_bytes().as_slice() != stored {
        return Err(Error::Corrupt(Corruption::ChecksumMismatch {
            what: "snapshot",
            location: SNAPSHOT_FILE.into(),
            expected: sum.to_hex().to_string(),
            found: stored.iter().map(|b| format!("{b:02x}")).collect(),
        }));
    }
    let mut trees = BTreeMap::new();
    for (id, tree) in decoded? {
        if trees.insert(id, tree).is_some() {
            return Err(bad_header(format!("partition {id} appears twice")));
        }
    }
    Ok(Some((trees, sum.into())))
}

/// A snapshot's checksum: of its header and body, so two files with the same one hold
/// the same bytes.
type Checksum = [u8; 32];

/// The header (checksum included) of the snapshot file in `dir` now, if it has one.
fn head_now(dir: &Path) -> Option<[u8; HEADER_LEN]> {
    let mut head = [0u8; HEADER_LEN];
    let mut file = File::open(dir.join(SNAPSHOT_FILE)).ok()?;
    std::io::Read::read_exact(&mut file, &mut head).ok()?;
    Some(head)
}

/// The snapshot read on a thread of its own while sled opens. Nothing in sled's open
/// (tens of milliseconds of one core on a large store) depends on the snapshot, but which
/// snapshot recovery wants (a clean close's, a base, none) is known only once sled's
/// metadata can be read; so this reads whatever file is there, and recovery takes its
/// trees ([`Early::take`]) only if the header named the store's shape and the epoch
/// recovery wants, and the file there now still holds the checksum of what was read (a
/// process that held the store meanwhile may have replaced it); otherwise recovery
/// reads the file itself.
pub(crate) struct Early {
    dir: PathBuf,
    thread: Option<std::thread::JoinHandle<Option<EarlyTrees>>>,
}

struct EarlyTrees {
    shape: Shape,
    epoch: u64,
    trees: Trees,
    checksum: Checksum,
}

impl Early {
    /// Starts reading the snapshot in `dir`, if there is one.
    pub(crate) fn start(dir: &Path) -> Early {
        let mut early = Early::none(dir);
        if !dir.join(SNAPSHOT_FILE).is_file() {
            return early;
        }
        let dir = dir.to_path_buf();
        let read = move || {
            let head = head_now(&dir)?;
            let shape = Shape::new(u32_at(&head, 16), u32_at(&head, 20)).ok()?;
            let epoch = header_epoch(&head);
            // Any fault is left for recovery's own read of the file to report.
            let (trees, checksum) = read_summed(&dir, shape, epoch).ok()??;
            Some(EarlyTrees {
                shape,
                epoch,
                trees,
                checksum,
            })
        };
        early.thread = std::thread::Builder::new()
            .name("merkle-index snapshot".into())
            .spawn(read)
            .ok();
        early
    }

    /// No read (a new store's open).
    pub(crate) fn none(dir: &Path) -> Early {
        Early {
            dir: dir.to_path_buf(),
            thread: None,
        }
    }

    /// The trees read, if they are the snapshot of `epoch` of trees of `shape` and the
    /// file still holds them (waits for the read to finish); `None` once taken.
    pub(crate) fn take(&mut self, shape: Shape, epoch: u64) -> Option<Trees> {
        let read = self.thread.take()?.join().ok()??;
        let current = read.shape == shape
            && read.epoch == epoch
            && head_now(&self.dir)
                .is_some_and(|head| head.get(CHECKSUMMED_HEADER..) == Some(&read.checksum[..]));
        current.then_some(read.trees)
    }
}

#[cfg(test)]
impl Early {
    fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        // Never left running past the open that started it.
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::hash::value_hash;

    const EPOCH: u64 = 9;

    fn shape() -> Shape {
        Shape::new(16, 3).unwrap() // 4,096 segments in 16 pages of 256
    }

    /// A snapshot of an empty, a sparse and a dense partition, as written on close.
    fn written(dir: &Path) -> Vec<u8> {
        let h = |s: u32| value_hash(&s.to_le_bytes());
        let trees = BTreeMap::from([
            (0, Tree::new(shape())),
            (
                3,
                Tree::from_segments(shape(), [7, 300, 301, 4095].map(|s| (s, h(s)))),
            ),
            (
                7,
                Tree::from_segments(shape(), (0..4096).map(|s| (s, h(s)))),
            ),
        ]);
        write(dir, shape(), EPOCH, &trees).unwrap();
        fs::read(dir.join(SNAPSHOT_FILE)).unwrap()
    }

    /// Writes `bytes` as the snapshot with the checksum they should have, so what reads
    /// them is the structure behind the checksum.
    fn sealed(dir: &Path, mut bytes: Vec<u8>) {
        let mut sum = blake3::Hasher::new_derive_key(SNAPSHOT_CONTEXT);
        sum.update(&bytes[..CHECKSUMMED_HEADER]);
        sum.update(&bytes[HEADER_LEN..]);
        bytes[CHECKSUMMED_HEADER..HEADER_LEN].copy_from_slice(sum.finalize().as_bytes());
        fs::write(dir.join(SNAPSHOT_FILE), bytes).unwrap();
    }

    #[test]
    fn round_trip_of_empty_sparse_and_dense_partitions() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let trees = read(dir.path(), shape(), EPOCH).unwrap().unwrap();
        assert_eq!(trees.keys().copied().collect::<Vec<_>>(), [0, 3, 7]);
        assert!(trees[&0].is_empty());
        let segments = |t: &Tree| {
            let mut n = 0;
            t.for_each_segment(|_, _| n += 1);
            n
        };
        assert_eq!((segments(&trees[&3]), segments(&trees[&7])), (4, 4096));
    }

    #[test]
    fn counts_of_billions_are_refused_before_anything_is_allocated_for_them() {
        let dir = tempfile::tempdir().unwrap();
        let good = written(dir.path());
        // The partition count (header), then the first partition's page count: each
        // was a capacity taken from the file, asked of the allocator before any check.
        for at in [32, HEADER_LEN + 4] {
            let mut bytes = good.clone();
            bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
            match read_bytes(dir.path(), bytes) {
                Err(Error::Corrupt(_)) => {}
                Err(e) => panic!("byte {at}: not a corruption error: {e}"),
                Ok(_) => panic!("byte {at}: a count of u32::MAX was accepted"),
            }
        }
    }

    #[test]
    fn an_early_read_is_taken_only_for_the_shape_and_epoch_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        written(dir.path());
        let expected = read(dir.path(), shape(), EPOCH).unwrap().unwrap();
        let roots = |trees: &BTreeMap<u32, Tree>| -> Vec<(u32, Hash)> {
            trees.iter().map(|(&p, t)| (p, t.root())).collect()
        };
        let mut early = Early::start(dir.path());
        let taken = early
            .take(shape(), EPOCH)
            .expect("the snapshot of its epoch");
        assert_eq!(roots(&taken), roots(&expected));
        assert!(early.take(shape(), EPOCH).is_none(), "taken once");
        for (shape, epoch) in [(shape(), EPOCH + 1), (Shape::new(16, 2).unwrap(), EPOCH)] {
            assert!(Early::start(dir.path()).take(shape, epoch).is_none());
        }
        // A damaged file is left for recovery's own read to report.
        let mut bytes = fs::read(dir.path().join(SNAPSHOT_FILE)).unwrap();
        *bytes.last_mut().unwrap() ^= 1;
        fs::write(dir.path().join(SNAPSHOT_FILE), bytes).unwrap();
        assert!(Early::start(dir.path()).take(shape(), EPOCH).is_none());
        fs::remove_file(dir.path().join(SNAPSHOT_FILE)).unwrap();
        assert!(Early::start(dir.path()).take(shape(), EPOCH).is_none());
    }

    #[test]
    fn an_early_read_of_a_file_since_replaced_is_not_taken() {
        // A process that held the store while this open waited for sled's lock may have
        // replaced the file, at a later epoch or (after a power loss lost a checkpoint
        // record) at the same one.
        for epoch in [EPOCH, EPOCH + 1] {
            let dir = tempfile::tempdir().unwrap();
            written(dir.path());
            let mut early = Early::start(dir.path());
            while !early.is_finished() {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            let other = Tree::from_segments(shape(), [(5, Hash::from_bytes([1; 16]))]);
            write(dir.path(), shape(), epoch, &BTreeMap::from([(1, other)])).unwrap();
            assert!(early.take(shape(), epoch).is_none(), "epoch {epoch}");
        }
    }

    fn read_bytes(dir: &Path, bytes: Vec<u8>) -> Result<Option<BTreeMap<u32, Tree>>> {
        sealed(dir, bytes);
        read(dir, shape(), EPOCH)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Any edit, with or without a checksum to match, reads as consistent trees
        /// (every node the XOR of its children, every segment inside the tree) or as a
        /// corruption error; never a panic.
        #[test]
        fn edited_snapshots_read_as_consistent_trees_or_a_corruption_error(
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            truncate in proptest::option::of(any::<prop::sample::Index>()),
            reseal in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let mut bytes = written(dir.path());
            for (at, byte) in edits {
                let at = at.index(bytes.len());
                bytes[at] = byte;
            }
            if let Some(len) = truncate {
                bytes.truncate(len.index(bytes.len()));
            }
            if reseal && bytes.len() >= HEADER_LEN {
                sealed(dir.path(), bytes);
            } else {
                fs::write(dir.path().join(SNAPSHOT_FILE), bytes).unwrap();
            }
            match read(dir.path(), shape(), EPOCH) {
                Ok(Some(trees)) => {
                    for tree in trees.values() {
                        prop_assert_eq!(tree.first_inconsistency(), None);
                        tree.for_each_segment(|s, _| assert!(u64::from(s) < shape().segments));
                    }
                }
                Ok(None) => prop_assert!(false, "the file is there"),
                Err(Error::Corrupt(_)) => {}
                Err(e) => prop_assert!(false, "not a corruption error: {e}"),
            }
        }
    }
}
