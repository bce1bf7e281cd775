//! The in-memory Merkle tree of one partition.
//!
//! Invariant (kept by every method): each interior node is the XOR of its `width`
//! children, so the root is the XOR of all segment hashes, and a change to one segment
//! is applied with one XOR per level.

use crate::options::Shape;
use crate::Hash;

/// All levels of one partition's tree, plus which segment buckets changed since the last
/// checkpoint.
#[derive(Clone)]
pub(crate) struct Tree {
    shape: Shape,
    /// `levels[d]` holds the `width^d` nodes of level `d`; `levels[0]` is the root.
    levels: Vec<Vec<Hash>>,
    /// One bit per bucket of segments changed since the last checkpoint.
    dirty: Vec<u64>,
}

impl Tree {
    pub(crate) fn new(shape: Shape) -> Tree {
        let levels = (0..=shape.levels)
            .map(|d| vec![Hash::ZERO; shape.nodes_at(d) as usize])
            .collect();
        let buckets = (shape.segments / shape.bucket_len(shape.levels)) as usize;
        Tree {
            shape,
            levels,
            dirty: vec![0; buckets.div_ceil(64)],
        }
    }

    /// Builds a tree from its segment hashes; every bucket is dirty.
    pub(crate) fn from_segments(shape: Shape, segments: Vec<Hash>) -> Tree {
        let mut tree = Tree::new(shape);
        tree.levels[shape.levels as usize] = segments;
        tree.recompute_interior();
        let buckets = (shape.segments / shape.bucket_len(shape.levels)) as usize;
        for bucket in 0..buckets {
            tree.dirty[bucket / 64] |= 1 << (bucket % 64);
        }
        tree
    }

    pub(crate) fn root(&self) -> Hash {
        self.levels[0][0]
    }

    /// The nodes of `level`, or `None` past the segment level.
    pub(crate) fn level(&self, level: u32) -> Option<&[Hash]> {
        self.levels.get(level as usize).map(Vec::as_slice)
    }

    pub(crate) fn segments(&self) -> &[Hash] {
        &self.levels[self.shape.levels as usize]
    }

    /// XORs `delta` into `segment` and each of its ancestors.
    pub(crate) fn apply(&mut self, segment: u32, delta: Hash) {
        if delta.is_zero() {
            return;
        }
        let width = self.shape.width as usize;
        let mut index = segment as usize;
        let bucket = index / self.shape.bucket_len(self.shape.levels) as usize;
        self.dirty[bucket / 64] |= 1 << (bucket % 64);
        for level in self.levels.iter_mut().rev() {
            level[index] ^= delta;
            index /= width;
        }
    }

    /// Sets a segment's hash, fixing its ancestors.
    pub(crate) fn set_segment(&mut self, segment: u32, hash: Hash) {
        let old = self.segments()[segment as usize];
        self.apply(segment, old ^ hash);
    }

    /// Overwrites bucket `bucket` of `level` (loading only: the caller restores the
    /// invariant with `recompute_interior` or checks it). False if out of range.
    pub(crate) fn load_bucket(&mut self, level: u32, bucket: u32, hashes: &[Hash]) -> bool {
        if level == 0 || level > self.shape.levels {
            return false;
        }
        let len = self.shape.bucket_len(level) as usize;
        let start = bucket as usize * len;
        match self
            .levels
            .get_mut(level as usize)
            .and_then(|l| l.get_mut(start..start + len))
        {
            Some(slot) if hashes.len() == len => {
                slot.copy_from_slice(hashes);
                true
            }
            _ => false,
        }
    }

    /// Fills every level, root first, from `nodes` (snapshot loading); missing nodes
    /// stay zero.
    pub(crate) fn fill_from(&mut self, nodes: &mut impl Iterator<Item = Hash>) {
        for level in &mut self.levels {
            for (slot, h) in level.iter_mut().zip(&mut *nodes) {
                *slot = h;
            }
        }
    }

    /// The nodes of bucket `bucket` of `level` (1..=levels).
    pub(crate) fn bucket(&self, level: u32, bucket: u32) -> &[Hash] {
        let len = self.shape.bucket_len(level) as usize;
        let start = bucket as usize * len;
        &self.levels[level as usize][start..start + len]
    }

    /// Rebuilds every interior level from the segments.
    pub(crate) fn recompute_interior(&mut self) {
        let width = self.shape.width as usize;
        for d in (0..self.shape.levels as usize).rev() {
            let (upper, lower) = self.levels.split_at_mut(d + 1);
            for (parent, children) in upper[d].iter_mut().zip(lower[0].chunks_exact(width)) {
                *parent = children.iter().fold(Hash::ZERO, |acc, &h| acc ^ h);
            }
        }
    }

    /// Sets the root from level 1 (the root has no bucket of its own).
    pub(crate) fn recompute_root(&mut self) {
        let root = self.levels[1].iter().fold(Hash::ZERO, |acc, &h| acc ^ h);
        self.levels[0][0] = root;
    }

    /// The first interior node (level, index) that is not the XOR of its children.
    pub(crate) fn first_inconsistency(&self) -> Option<(u32, u64)> {
        let width = self.shape.width as usize;
        for d in 0..self.shape.levels as usize {
            let children = self.levels[d + 1].chunks_exact(width);
            for (i, (parent, kids)) in self.levels[d].iter().zip(children).enumerate() {
                if *parent != kids.iter().fold(Hash::ZERO, |acc, &h| acc ^ h) {
                    return Some((d as u32, i as u64));
                }
            }
        }
        None
    }

    /// Buckets (level, index) to persist at the next checkpoint: each dirty segment
    /// bucket and the buckets of its ancestors, in key order. A bucket holds a power of
    /// `width` nodes, so the parents of bucket `b` all lie in bucket `b / width` of the
    /// level above (bucket 0 once a level fits in one bucket).
    pub(crate) fn dirty_buckets(&self) -> Vec<(u32, u32)> {
        let width = u64::from(self.shape.width);
        let mut out = std::collections::BTreeSet::new();
        for (word_index, &word) in self.dirty.iter().enumerate() {
            let mut bits = word;
            while bits != 0 {
                let mut bucket = (word_index * 64) as u64 + u64::from(bits.trailing_zeros());
                bits &= bits - 1;
                for level in (1..=self.shape.levels).rev() {
                    if !out.insert((level, bucket as u32)) {
                        break; // ancestors already added by a sibling
                    }
                    bucket /= width;
                }
            }
        }
        out.into_iter().collect()
    }

    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.fill(0);
    }

    /// Heap bytes held by this tree.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.levels
            .iter()
            .map(|l| l.capacity() * std::mem::size_of::<Hash>())
            .sum::<usize>()
            + self.dirty.capacity() * 8
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::value_hash;

    fn shape() -> Shape {
        Shape::new(4, 3).unwrap()
    }

    #[test]
    fn apply_keeps_interior_consistent() {
        let mut t = Tree::new(shape());
        t.apply(5, value_hash(b"a"));
        t.apply(63, value_hash(b"b"));
        t.set_segment(5, value_hash(b"c"));
        assert_eq!(t.first_inconsistency(), None);
        assert_eq!(t.root(), value_hash(b"b") ^ value_hash(b"c"));
        let rebuilt = Tree::from_segments(shape(), t.segments().to_vec());
        assert_eq!(rebuilt.root(), t.root());
    }

    #[test]
    fn dirty_buckets_include_ancestors_once() {
        // 2^10 segments of width 2: buckets of 256 nodes.
        let mut t = Tree::new(Shape::new(2, 10).unwrap());
        t.apply(0, value_hash(b"a"));
        t.apply(1, value_hash(b"a"));
        t.apply(1023, value_hash(b"a"));
        assert_eq!(
            t.dirty_buckets(),
            vec![
                (1, 0),
                (2, 0),
                (3, 0),
                (4, 0),
                (5, 0),
                (6, 0),
                (7, 0),
                (8, 0),
                (9, 0),
                (9, 1),
                (10, 0),
                (10, 3)
            ]
        );
        t.clear_dirty();
        assert!(t.dirty_buckets().is_empty());
    }

    #[test]
    fn corrupt_level_is_found() {
        let mut t = Tree::new(shape());
        t.apply(9, value_hash(b"x"));
        assert!(t.load_bucket(2, 0, &[Hash::ZERO; 16]));
        assert_eq!(t.first_inconsistency(), Some((1, 0)));
        assert!(!t.load_bucket(2, 0, &[Hash::ZERO; 4]));
        assert!(!t.load_bucket(4, 0, &[Hash::ZERO; 16]));
    }
}
