//! The in-memory Merkle tree of one partition, sized by its content.
//!
//! Invariant (kept by every method): each interior node is the XOR of its `width`
//! children, so the root is the XOR of all segment hashes, and a change to one segment
//! is applied with one XOR per level.
//!
//! Each level below the root is a [`Level`], sized by its content (see `level.rs`): so a
//! partition with one key costs a few hundred bytes, and a full one (1M segments) costs
//! its 16 MiB of segment hashes and little more.
//!
//! The segments' parents (level `levels - 1`) are not held where a node has at most
//! [`MAX_DERIVED_WIDTH`] children: each is the XOR of its `width` segments, read on
//! demand in one page look-up. In a sparse partition they are nearly as many as the
//! segments (about one key each), so holding them would cost nearly what the segments
//! cost, and every write and load would keep them current for the few reads an exchange
//! makes of them.

use crate::level::Level;
use crate::options::Shape;
use crate::page::{Page, PageRef};
use crate::Hash;

/// Widest node whose children are folded on each read rather than held (see above).
const MAX_DERIVED_WIDTH: u32 = 64;

/// Whether trees of `shape` derive the segments' parents rather than hold them.
fn derives_parents(shape: Shape) -> bool {
    shape.levels >= 2 && shape.width <= MAX_DERIVED_WIDTH
}

/// All levels of one partition's tree, plus which segment pages changed since the last
/// checkpoint.
#[derive(Clone)]
pub(crate) struct Tree {
    shape: Shape,
    root: Hash,
    /// `levels[d - 1]` is level `d`, for `d` in `1..=shape.levels`; the segments'
    /// parents' entry stays empty while they are derived.
    levels: Vec<Level>,
    /// Where in `levels` the segments' parents are, if they are derived, not held.
    derived: Option<usize>,
    /// Segment pages changed since the last checkpoint (their ancestors follow).
    dirty: Vec<u32>,
    /// Marks a page in `dirty` already, one bit per segment page, allocated on first use.
    dirty_bits: Vec<u64>,
    /// The span exponent of this partition's persisted buckets, once it has any.
    pub(crate) persisted_span: Option<u8>,
}

impl Tree {
    pub(crate) fn new(shape: Shape) -> Tree {
        let levels = (1..=shape.levels)
            .map(|d| Level::new(shape.nodes_at(d), shape.bucket_len(d) as usize))
            .collect();
        let derived = derives_parents(shape).then(|| shape.levels as usize - 2);
        Tree {
            shape,
            root: Hash::ZERO,
            levels,
            derived,
            dirty: Vec::new(),
            dirty_bits: Vec::new(),
            persisted_span: None,
        }
    }

    /// Builds a tree from its segments (any order; a segment listed twice is XORed),
    /// deriving every level above from the one below in one pass each; every page with
    /// content is dirty.
    pub(crate) fn from_segments(
        shape: Shape,
        segments: impl IntoIterator<Item = (u32, Hash)>,
    ) -> Tree {
        let mut tree = Tree::build(shape, segments);
        let mut pages = Vec::new();
        tree.for_each_segment_page(|page, _| pages.push(page));
        for page in pages {
            tree.mark_dirty(page);
        }
        tree
    }

    /// As [`Tree::from_segments`], with nothing dirty: the tree as persisted.
    pub(crate) fn from_persisted_segments(
        shape: Shape,
        segments: impl IntoIterator<Item = (u32, Hash)>,
    ) -> Tree {
        Tree::build(shape, segments)
    }

    /// A tree as persisted (nothing dirty) from its segment level's pages: non-empty,
    /// in increasing page order, as the snapshot holds them. The pages are kept as they
    /// are, so a sparse partition is loaded without building its segment level again.
    pub(crate) fn from_persisted_pages(shape: Shape, pages: Vec<(u32, Page)>) -> Tree {
        let page_len = shape.bucket_len(shape.levels);
        // The lowest held level above the segments, and its nodes: each the XOR of a run
        // of segments, summed here as the pages go by (they and their nodes are in order).
        let top = shape.levels - 1 - u32::from(derives_parents(shape));
        let fan_in = u64::from(shape.width).pow(shape.levels - top);
        let mut parents: Vec<(u64, Hash)> = Vec::new();
        let mut add = |parent: u64, h: Hash| match parents.last_mut() {
            Some((p, sum)) if *p == parent => *sum ^= h,
            _ => parents.push((parent, h)),
        };
        for (page, nodes) in &pages {
            let base = u64::from(*page) * page_len;
            if fan_in % page_len == 0 {
                // The whole page is under one node (the default shape's case).
                add(base / fan_in, nodes.view().xor_all());
            } else {
                nodes
                    .view()
                    .for_each(|o, h| add((base + o as u64) / fan_in, h));
            }
        }
        let mut tree = Tree::new(shape);
        if let Some(level) = tree.levels.last_mut() {
            *level = Level::from_pages(shape.segments, page_len as usize, pages);
        }
        tree.fill_levels(top, parents);
        tree
    }

    fn build(shape: Shape, segments: impl IntoIterator<Item = (u32, Hash)>) -> Tree {
        let mut nodes: Vec<(u64, Hash)> = segments
            .into_iter()
            .filter(|&(s, h)| !h.is_zero() && u64::from(s) < shape.segments)
            .map(|(s, h)| (u64::from(s), h))
            .collect();
        if nodes.len() as u64 * 2 > shape.segments {
            // Dense: one flat array and a fold is far cheaper than sparse runs.
            let mut all = vec![Hash::ZERO; shape.segments as usize];
            for (s, h) in nodes {
                if let Some(slot) = all.get_mut(s as usize) {
                    *slot ^= h;
                }
            }
            return Tree::fold_all(shape, all);
        }
        if !nodes.windows(2).all(|w| w[0].0 < w[1].0) {
            nodes.sort_by_key(|&(s, _)| s);
        }
        let mut tree = Tree::new(shape);
        tree.fill_levels(shape.levels, nodes);
        tree
    }

    /// Sets level `top` from `nodes` (its nodes in index order, an index listed twice is
    /// XORed), every level above it from the one below, and the root.
    fn fill_levels(&mut self, top: u32, mut nodes: Vec<(u64, Hash)>) {
        let shape = self.shape;
        let width = u64::from(shape.width);
        for d in (1..=top).rev() {
            // XOR runs of equal indexes in place (siblings' parents, or a segment listed
            // twice), dropping sums that cancel: one buffer serves every level.
            let mut kept: usize = 0;
            for read in 0..nodes.len() {
                let Some(&(i, h)) = nodes.get(read) else {
                    break;
                };
                match kept.checked_sub(1).and_then(|last| nodes.get_mut(last)) {
                    Some((p, sum)) if *p == i => *sum ^= h,
                    _ => {
                        if let Some(slot) = nodes.get_mut(kept) {
                            *slot = (i, h);
                        }
                        kept += 1;
                    }
                }
            }
            nodes.truncate(kept);
            nodes.retain(|(_, h)| !h.is_zero());
            if let Some(level) = self.held_mut(d) {
                *level = Level::from_nodes(shape.nodes_at(d), shape.bucket_len(d) as usize, &nodes);
            }
            for node in &mut nodes {
                node.0 /= width;
            }
        }
        self.root = nodes.iter().fold(Hash::ZERO, |acc, &(_, h)| acc ^ h);
    }

    /// A tree as persisted (nothing dirty) from every segment hash (`segments.len()`
    /// must be the segment count): the fast path for dense partitions.
    pub(crate) fn from_all_persisted_segments(shape: Shape, segments: Vec<Hash>) -> Tree {
        Tree::fold_all(shape, segments)
    }

    /// Folds every level into the one above, counting each level's non-zero nodes in
    /// the same pass (one read of the segments in all).
    fn fold_all(shape: Shape, segments: Vec<Hash>) -> Tree {
        let mut tree = Tree::new(shape);
        if segments.len() as u64 != shape.segments {
            return tree;
        }
        let width = shape.width as usize;
        let mut nodes = segments;
        for d in (1..=shape.levels).rev() {
            let mut nonzero = 0u64;
            let parents: Vec<Hash> = nodes
                .chunks(width)
                .map(|c| {
                    c.iter().fold(Hash::ZERO, |acc, &h| {
                        nonzero += u64::from(!h.is_zero());
                        acc ^ h
                    })
                })
                .collect();
            if let Some(level) = tree.held_mut(d) {
                *level = Level::from_flat(shape.bucket_len(d) as usize, nodes, nonzero);
            }
            nodes = parents;
        }
        tree.root = nodes.first().copied().unwrap_or_default();
        tree
    }

    pub(crate) fn root(&self) -> Hash {
        self.root
    }

    /// Level `d` (1 ..= levels), if it is held.
    fn held_mut(&mut self, d: u32) -> Option<&mut Level> {
        let at = (d as usize).checked_sub(1)?;
        if self.derived == Some(at) {
            return None;
        }
        self.levels.get_mut(at)
    }

    /// True if no segment is non-zero.
    pub(crate) fn is_empty(&self) -> bool {
        self.levels.last().map_or(true, |l| l.nonzero() == 0)
    }

    /// Non-zero segments.
    pub(crate) fn nonzero_segments(&self) -> u64 {
        self.levels.last().map_or(0, Level::nonzero)
    }

    /// Node `index` of `level` (0 = root); zero past the tree.
    pub(crate) fn node(&self, level: u32, index: u64) -> Hash {
        let Some(at) = (level as usize).checked_sub(1) else {
            return if index == 0 { self.root } else { Hash::ZERO };
        };
        if Some(at) == self.derived {
            let mut out = Vec::with_capacity(1);
            self.node_run(level, index, 1, &mut out);
            return out.first().copied().unwrap_or_default();
        }
        self.levels.get(at).map_or(Hash::ZERO, |l| l.get(index))
    }

    /// Appends nodes `first .. first + count` of `level` (0 = root) to `out`, zero past
    /// the tree, in one pass over the pages they span (for derived nodes, the segment
    /// pages).
    pub(crate) fn node_run(&self, level: u32, first: u64, count: usize, out: &mut Vec<Hash>) {
        let Some(at) = (level as usize).checked_sub(1) else {
            out.extend((0..count as u64).map(|i| match first.checked_add(i) {
                Some(0) => self.root,
                _ => Hash::ZERO,
            }));
            return;
        };
        match (self.levels.get(at), self.levels.last()) {
            (_, Some(segments)) if Some(at) == self.derived => {
                let width = u64::from(self.shape.width);
                segments.fold_runs(first.saturating_mul(width), width, count, out);
            }
            // A held run is a fold of runs of one node: a page look-up per page, not
            // per node.
            (Some(held), _) => held.fold_runs(first, 1, count, out),
            _ => out.resize(out.len() + count, Hash::ZERO),
        }
    }

    /// Segment hash.
    pub(crate) fn segment(&self, segment: u32) -> Hash {
        self.node(self.shape.levels, u64::from(segment))
    }

    /// Every non-zero segment `(segment, hash)`, in order.
    pub(crate) fn for_each_segment(&self, mut f: impl FnMut(u32, Hash)) {
        if let Some(level) = self.levels.last() {
            level.for_each_nonzero(|i, h| f(i as u32, h));
        }
    }

    /// XORs `delta` into `segment` and each of its ancestors.
    pub(crate) fn apply(&mut self, segment: u32, delta: Hash) {
        if delta.is_zero() || u64::from(segment) >= self.shape.segments {
            return;
        }
        let width = u64::from(self.shape.width);
        let page_len = self.shape.bucket_len(self.shape.levels);
        self.mark_dirty((u64::from(segment) / page_len) as u32);
        let mut index = u64::from(segment);
        for (at, level) in self.levels.iter_mut().enumerate().rev() {
            if Some(at) != self.derived {
                level.xor(index, delta);
            }
            index /= width;
        }
        self.root ^= delta;
    }

    /// Asks the CPU to start loading the nodes `apply(segment, _)` will change.
    pub(crate) fn prefetch(&self, segment: u32) {
        let width = u64::from(self.shape.width);
        let mut index = u64::from(segment);
        for (at, level) in self.levels.iter().enumerate().rev() {
            if Some(at) != self.derived {
                level.prefetch(index);
            }
            index /= width;
        }
    }

    fn mark_dirty(&mut self, page: u32) {
        let (word, bit) = (page as usize / 64, page % 64);
        if self.dirty_bits.is_empty() {
            let pages = self.levels.last().map_or(0, Level::pages) as usize;
            self.dirty_bits = vec![0; pages.div_ceil(64)];
        }
        if let Some(w) = self.dirty_bits.get_mut(word) {
            if *w & (1 << bit) == 0 {
                *w |= 1 << bit;
                self.dirty.push(page);
            }
        }
    }

    /// Makes segments `first .. first + count` hold exactly `found` (non-zero, in order;
    /// every other segment of the range becomes zero), visiting only the segments that
    /// are non-zero before or after: the cost follows the content, not the range.
    pub(crate) fn replace_segments(&mut self, first: u32, count: u32, found: &[(u32, Hash)]) {
        let end = u64::from(first) + u64::from(count);
        let page_len = self.shape.bucket_len(self.shape.levels);
        let mut current = Vec::new();
        let (first_page, last_page) = (u64::from(first) / page_len, (end.max(1) - 1) / page_len);
        self.for_each_segment_page_in(first_page, last_page + 1 - first_page, |page, view| {
            let base = u64::from(page) * page_len;
            view.for_each(|o, h| {
                let s = base + o as u64;
                if s >= u64::from(first) && s < end {
                    current.push((s as u32, h));
                }
            });
        });
        let mut deltas: Vec<(u32, Hash)> = current;
        deltas.extend(
            found
                .iter()
                .filter(|(s, _)| u64::from(*s) < end && *s >= first),
        );
        deltas.sort_by_key(|&(s, _)| s);
        let mut i = 0;
        while let Some(&(s, mut delta)) = deltas.get(i) {
            i += 1;
            while let Some(&(t, h)) = deltas.get(i) {
                if t != s {
                    break;
                }
                delta ^= h;
                i += 1;
            }
            self.apply(s, delta);
        }
    }

    /// The non-empty segment pages among `first .. first + count`, in order.
    pub(crate) fn for_each_segment_page_in<'a>(
        &'a self,
        first: u64,
        count: u64,
        f: impl FnMut(u32, PageRef<'a>),
    ) {
        if let Some(level) = self.levels.last() {
            level.for_each_page_in(first, count, f);
        }
    }

    /// Segment pages changed since the last checkpoint, in order.
    pub(crate) fn dirty_segment_pages(&self) -> Vec<u32> {
        let mut pages = self.dirty.clone();
        pages.sort_unstable();
        pages
    }

    /// Every non-empty page `(page, nodes)` of the segment level, in order.
    pub(crate) fn for_each_segment_page(&self, f: impl FnMut(u32, PageRef<'_>)) {
        if let Some(level) = self.levels.last() {
            level.for_each_page(f);
        }
    }

    /// The first interior node (level, index) that is not the XOR of its children.
    #[cfg(test)]
    pub(crate) fn first_inconsistency(&self) -> Option<(u32, u64)> {
        let width = u64::from(self.shape.width);
        // The held levels, from the top, with their depth.
        let held: Vec<(u32, &Level)> = (1u32..)
            .zip(&self.levels)
            .enumerate()
            .filter(|&(at, _)| Some(at) != self.derived)
            .map(|(_, level)| level)
            .collect();
        let mut expected_root = Hash::ZERO;
        if let Some((_, level)) = held.first() {
            level.for_each_nonzero(|_, h| expected_root ^= h);
        }
        if expected_root != self.root {
            return Some((0, 0));
        }
        for pair in held.windows(2) {
            let [(d, upper), (lower_d, lower)] = [pair[0], pair[1]];
            let fan_in = width.pow(lower_d - d);
            // XOR the non-zero children into their parents, then compare with the
            // parents' non-zero nodes: both lists are in index order.
            let mut sums: Vec<(u64, Hash)> = Vec::new();
            lower.for_each_nonzero(|i, h| match sums.last_mut() {
                Some((p, sum)) if *p == i / fan_in => *sum ^= h,
                _ => sums.push((i / fan_in, h)),
            });
            sums.retain(|(_, h)| !h.is_zero());
            let mut parents = Vec::new();
            upper.for_each_nonzero(|i, h| parents.push((i, h)));
            let mut sums = sums.into_iter().peekable();
            let mut parents = parents.into_iter().peekable();
            loop {
                match (sums.peek().copied(), parents.peek().copied()) {
                    (None, None) => break,
                    (Some((i, a)), Some((j, b))) if i == j => {
                        if a != b {
                            return Some((d, i));
                        }
                        sums.next();
                        parents.next();
                    }
                    (Some((i, _)), Some((j, _))) => return Some((d, i.min(j))),
                    (Some((i, _)), None) | (None, Some((i, _))) => return Some((d, i)),
                }
            }
        }
        None
    }

    pub(crate) fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    pub(crate) fn clear_dirty(&mut self) {
        self.dirty.clear();
        self.dirty_bits = Vec::new();
    }

    /// Heap bytes held by this tree.
    pub(crate) fn memory_bytes(&self) -> usize {
        self.levels.capacity() * std::mem::size_of::<Level>()
            + self.levels.iter().map(Level::memory_bytes).sum::<usize>()
            + self.dirty.capacity() * 4
            + self.dirty_bits.capacity() * 8
    }
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
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
        t.replace_segments(4, 2, &[(5, value_hash(b"c"))]);
        assert_eq!(t.first_inconsistency(), None);
        assert_eq!(t.root(), value_hash(b"b") ^ value_hash(b"c"));
        let mut segs = Vec::new();
        t.for_each_segment(|s, h| segs.push((s, h)));
        let rebuilt = Tree::from_segments(shape(), segs);
        assert_eq!(rebuilt.root(), t.root());
    }

    #[test]
    fn both_builders_match_applying_segments_one_by_one() {
        // 4,096 segments either way: a page under one derived parent's parent (16 x 3),
        // or spanning sixteen of them (4 x 6).
        for shape in [Shape::new(16, 3).unwrap(), Shape::new(4, 6).unwrap()] {
            builders_match(shape);
        }
    }

    fn builders_match(shape: Shape) {
        let h = |s: u32| value_hash(&s.to_le_bytes());
        for n in [0u32, 1, 40, 900, 4096] {
            let mut applied = Tree::new(shape);
            let segments: Vec<(u32, Hash)> = (0..n).map(|i| ((i * 7919) % 4096, h(i))).collect();
            let mut all = vec![Hash::ZERO; 4096];
            for &(s, x) in &segments {
                applied.apply(s, x);
                all[s as usize] ^= x;
            }
            let page_len = shape.bucket_len(shape.levels) as usize;
            let mut pages = Vec::new();
            applied.for_each_segment_page(|page, view| {
                pages.push((page, Page::from_view(view, page_len)));
            });
            for (built, dirty) in [
                (Tree::from_persisted_pages(shape, pages), false),
                (Tree::from_segments(shape, segments.clone()), true),
                (
                    Tree::from_persisted_segments(shape, segments.clone()),
                    false,
                ),
                (Tree::from_all_persisted_segments(shape, all.clone()), false),
            ] {
                assert_eq!(built.root(), applied.root());
                assert_eq!(built.first_inconsistency(), None);
                for level in 0..=shape.levels {
                    for i in 0..shape.nodes_at(level) {
                        assert_eq!(built.node(level, i), applied.node(level, i));
                    }
                }
                if dirty {
                    assert_eq!(built.dirty_segment_pages(), applied.dirty_segment_pages());
                } else {
                    assert!(!built.has_dirty());
                }
            }
        }
    }

    #[test]
    fn every_node_read_is_the_xor_of_its_children_held_or_derived() {
        // (16, 3) and (4, 3) derive the segments' parents, (128, 2) holds them, (2, 1)
        // has none; each filled sparse, then dense, then emptied again in part.
        for (width, levels) in [(16, 3), (4, 3), (128, 2), (2, 1)] {
            let shape = Shape::new(width, levels).unwrap();
            let mut t = Tree::new(shape);
            let n = shape.segments as u32;
            for round in 0..3u32 {
                for i in 0..n {
                    if (i * 7919 + round) % [13, 1, 3][round as usize] == 0 {
                        t.apply((i * 7919) % n, value_hash(&(i, round).0.to_le_bytes()));
                    }
                }
                assert_eq!(t.first_inconsistency(), None);
                for level in 0..levels {
                    for i in 0..shape.nodes_at(level) {
                        let w = u64::from(width);
                        let kids =
                            (i * w..i * w + w).fold(Hash::ZERO, |a, c| a ^ t.node(level + 1, c));
                        assert_eq!(
                            t.node(level, i),
                            kids,
                            "shape {width}x{levels} level {level} node {i}"
                        );
                    }
                }
                assert_eq!(t.node(levels - 1, shape.nodes_at(levels - 1)), Hash::ZERO);
                // Runs read in one pass, across pages and past the end, match.
                for level in 0..=levels {
                    let n = shape.nodes_at(level);
                    for (first, count) in [(0, n as usize + 3), (n / 3, 40), (n - 1, 2)] {
                        let mut run = Vec::new();
                        t.node_run(level, first, count, &mut run);
                        let one_by_one: Vec<Hash> = (first..first + count as u64)
                            .map(|i| t.node(level, i))
                            .collect();
                        assert_eq!(run, one_by_one, "shape {width}x{levels} level {level}");
                    }
                }
            }
        }
    }

    #[test]
    fn levels_go_flat_when_full_and_paged_again_when_emptied() {
        let shape = Shape::new(16, 3).unwrap(); // 4096 segments, 16 pages
        let mut t = Tree::new(shape);
        let empty = t.memory_bytes();
        let h = |s: u32| value_hash(&s.to_le_bytes());
        for s in 0..4096u32 {
            t.apply(s, h(s));
        }
        assert!(t.levels[2].is_flat());
        let full = t.memory_bytes();
        assert!(full < 4096 * 16 + 256 * 16 + 16 * 16 + 4096, "{full}");
        assert_eq!(t.first_inconsistency(), None);
        for s in 0..4000u32 {
            t.apply(s, h(s));
        }
        assert!(!t.levels[2].is_flat());
        assert_eq!(t.first_inconsistency(), None);
        for s in 4000..4096u32 {
            t.apply(s, h(s));
        }
        assert!(t.is_empty() && t.root().is_zero());
        t.clear_dirty();
        assert!(
            t.memory_bytes() <= empty + 64,
            "{} vs {empty}",
            t.memory_bytes()
        );
    }
}
