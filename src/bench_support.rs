//! Internals exposed to this crate's own benches, examples and tests (not a stable API):
//! the in-memory tree, a snapshot load, and the wall clock's offset.

use crate::options::Shape;
use crate::tree::Tree;
use crate::Hash;

/// One partition's in-memory tree.
pub struct MemoryTree(Tree);

impl MemoryTree {
    /// An empty tree of `shape`.
    pub fn new(shape: Shape) -> MemoryTree {
        MemoryTree(Tree::new(shape))
    }

    /// XORs `delta` into `segment` and its ancestors, as the hasher thread does.
    pub fn apply(&mut self, segment: u32, delta: Hash) {
        self.0.apply(segment, delta);
    }

    /// The root hash.
    pub fn root(&self) -> Hash {
        self.0.root()
    }

    /// Heap bytes held.
    pub fn memory_bytes(&self) -> usize {
        self.0.memory_bytes()
    }
}

/// Maps, checks and decodes the snapshot file in `dir` as a clean open does, at whatever
/// epoch its header names; the trees are returned so that dropping them is not timed.
pub fn load_snapshot(dir: &std::path::Path, shape: Shape) -> crate::Result<LoadedTrees> {
    let path = dir.join(crate::snapshot::SNAPSHOT_FILE);
    let io = |e| crate::Error::io(format!("read {}", path.display()), e);
    let mut head = [0u8; 32];
    std::io::Read::read_exact(&mut std::fs::File::open(&path).map_err(io)?, &mut head)
        .map_err(io)?;
    let epoch = crate::snapshot::header_epoch(&head);
    let trees = crate::snapshot::read(dir, shape, epoch)?;
    Ok(LoadedTrees(trees.unwrap_or_default()))
}

/// Every partition's tree, as a snapshot load left them.
pub struct LoadedTrees(std::collections::BTreeMap<u32, Tree>);

impl LoadedTrees {
    /// Partitions loaded.
    pub fn partitions(&self) -> usize {
        self.0.len()
    }
}

/// Moves this process's wall clock as the stores read it (for versions, deletion times
/// and purges) by `ms` from the real one: forward if positive, back if negative.
/// Process-wide, so a test that moves it must be alone in its test binary.
pub fn set_wall_clock_offset_ms(ms: i64) {
    crate::clock::WALL_OFFSET_MS.store(ms, std::sync::atomic::Ordering::Relaxed);
}
