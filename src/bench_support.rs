//! The in-memory tree, exposed for the index benchmark only (not a stable API).

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
