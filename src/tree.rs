//! The in-memory Merkle tree of one partition, sized by its content.
//!
//! Invariant (kept by every method): each interior node is the XOR of its `width`
//! children, so the root is the XOR of all segment hashes, and a change to one segment
//! is applied with one XOR per level.
//!
//! Each level below the root is held in pages of `bucket_len(level)` nodes (the persisted
//! bucket). A level is *paged* while at most half its nodes are non-zero: only pages with
//! a non-zero node exist, each sparse or dense by its own fill (see `page.rs`). Past half
//! full the level becomes one flat array, as a dense tree would hold it, and below an
//! eighth it becomes paged again. So a partition with one key costs a few hundred bytes,
//! and a full one (1M segments) costs the dense 17 MiB and no more.

use std::collections::BTreeMap;

use crate::options::Shape;
use crate::page::{Page, PageRef};
use crate::Hash;

/// All levels of one partition's tree, plus which segment pages changed since the last
/// checkpoint.
#[derive(Clone)]
pub(crate) struct Tree {
    shape: Shape,
    root: Hash,
    /// `levels[d - 1]` is level `d`, for `d` in `1..=shape.levels`.
    levels: Vec<Level>,
    /// Segment pages changed since the last checkpoint (their ancestors follow).
    dirty: Vec<u32>,
    /// Marks a page in `dirty` already, one bit per segment page, allocated on first use.
    dirty_bits: Vec<u64>,
}

#[derive(Clone)]
struct Level {
    /// Nodes in the level.
    len: u64,
    /// Nodes per page.
    page_len: usize,
    /// Non-zero nodes in the level.
    nonzero: u64,
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Paged(BTreeMap<u32, Page>),
    Flat(Vec<Hash>),
}

impl Level {
    fn new(len: u64, page_len: usize) -> Level {
        Level {
            len,
            page_len,
            nonzero: 0,
            repr: Repr::Paged(BTreeMap::new()),
        }
    }

    fn pages(&self) -> u64 {
        self.len.div_ceil(self.page_len as u64)
    }

    fn get(&self, index: u64) -> Hash {
        match &self.repr {
            Repr::Flat(nodes) => nodes.get(index as usize).copied().unwrap_or_default(),
            Repr::Paged(pages) => {
                let (page, offset) = self.split(index);
                pages.get(&page).map_or(Hash::ZERO, |p| p.get(offset))
            }
        }
    }

    fn split(&self, index: u64) -> (u32, usize) {
        let page_len = self.page_len as u64;
        ((index / page_len) as u32, (index % page_len) as usize)
    }

    fn xor(&mut self, index: u64, delta: Hash) {
        if delta.is_zero() || index >= self.len {
            return;
        }
        let change = match &mut self.repr {
            Repr::Flat(nodes) => match nodes.get_mut(index as usize) {
                Some(h) => {
                    let was = !h.is_zero();
                    *h ^= delta;
                    i64::from(!h.is_zero()) - i64::from(was)
                }
                None => 0,
            },
            Repr::Paged(pages) => {
                let page_len = self.page_len as u64;
                let (page, offset) = ((index / page_len) as u32, (index % page_len) as usize);
                let entry = pages.entry(page).or_insert_with(Page::empty);
                let change = entry.xor(offset, delta, self.page_len);
                if entry.nonzero() == 0 {
                    pages.remove(&page);
                }
                change
            }
        };
        self.nonzero = self.nonzero.wrapping_add_signed(change);
        self.reshape();
    }

    /// Switches between paged and flat at the thresholds (single-page levels stay paged:
    /// their one page is already dense when full).
    fn reshape(&mut self) {
        let single = self.pages() <= 1;
        match &self.repr {
            Repr::Paged(_) if !single && self.nonzero * 2 > self.len => {
                let mut flat = vec![Hash::ZERO; self.len as usize];
                self.for_each_nonzero(|i, h| {
                    if let Some(slot) = flat.get_mut(i as usize) {
                        *slot = h;
                    }
                });
                self.repr = Repr::Flat(flat);
            }
            Repr::Flat(nodes) if self.nonzero * 8 < self.len => {
                let mut pages = BTreeMap::new();
                for (page, chunk) in (0u32..).zip(nodes.chunks(self.page_len)) {
                    if chunk.iter().any(|h| !h.is_zero()) {
                        pages.insert(page, Page::from_view(PageRef::Dense(chunk), chunk.len()));
                    }
                }
                self.repr = Repr::Paged(pages);
            }
            _ => {}
        }
    }

    /// The nodes of page `page`, or `None` if they are all zero.
    fn page(&self, page: u32) -> Option<PageRef<'_>> {
        match &self.repr {
            Repr::Paged(pages) => pages.get(&page).map(Page::view),
            Repr::Flat(nodes) => {
                let start = page as usize * self.page_len;
                let chunk = nodes.get(start..(start + self.page_len).min(nodes.len()))?;
                chunk
                    .iter()
                    .any(|h| !h.is_zero())
                    .then_some(PageRef::Dense(chunk))
            }
        }
    }

    /// Every page with a non-zero node, in order.
    fn for_each_page(&self, mut f: impl FnMut(u32, PageRef<'_>)) {
        match &self.repr {
            Repr::Paged(pages) => {
                for (&page, p) in pages {
                    f(page, p.view());
                }
            }
            Repr::Flat(nodes) => {
                for (page, chunk) in (0u32..).zip(nodes.chunks(self.page_len)) {
                    if chunk.iter().any(|h| !h.is_zero()) {
                        f(page, PageRef::Dense(chunk));
                    }
                }
            }
        }
    }

    /// Every non-zero node `(index, hash)`, in index order.
    fn for_each_nonzero(&self, mut f: impl FnMut(u64, Hash)) {
        let page_len = self.page_len as u64;
        self.for_each_page(|page, view| {
            let base = u64::from(page) * page_len;
            view.for_each(|offset, h| f(base + offset as u64, h));
        });
    }

    /// Replaces page `page` with `page_value` (loading only; the tree's invariant is
    /// the caller's to restore or check).
    fn set_page(&mut self, page: u32, value: Page) {
        let old = self.page(page).map_or(0, |p| p.nonzero()) as u64;
        let new = value.nonzero() as u64;
        match &mut self.repr {
            Repr::Paged(pages) => {
                if new == 0 {
                    pages.remove(&page);
                } else {
                    pages.insert(page, value);
                }
            }
            Repr::Flat(nodes) => {
                let start = page as usize * self.page_len;
                let end = (start + self.page_len).min(nodes.len());
                if let Some(chunk) = nodes.get_mut(start..end) {
                    chunk.fill(Hash::ZERO);
                    value.view().for_each(|i, h| {
                        if let Some(slot) = chunk.get_mut(i) {
                            *slot = h;
                        }
                    });
                }
            }
        }
        self.nonzero = self.nonzero + new - old;
        self.reshape();
    }

    fn memory_bytes(&self) -> usize {
        match &self.repr {
            Repr::Flat(nodes) => nodes.capacity() * std::mem::size_of::<Hash>(),
            Repr::Paged(pages) => {
                // A B-tree node has room for 11 keys and values, a parent pointer and
                // two lengths (internal nodes add 12 child pointers; at most 1 in 6 nodes
                // is internal).
                let entry = std::mem::size_of::<u32>() + std::mem::size_of::<Page>();
                let nodes = pages.len().div_ceil(6).max(usize::from(!pages.is_empty()));
                let node = 11 * entry + 2 * std::mem::size_of::<usize>();
                pages.values().map(Page::heap_bytes).sum::<usize>()
                    + nodes * node
                    + nodes.div_ceil(6) * 12 * std::mem::size_of::<usize>()
            }
        }
    }
}

impl Tree {
    pub(crate) fn new(shape: Shape) -> Tree {
        let levels = (1..=shape.levels)
            .map(|d| Level::new(shape.nodes_at(d), shape.bucket_len(d) as usize))
            .collect();
        Tree {
            shape,
            root: Hash::ZERO,
            levels,
            dirty: Vec::new(),
            dirty_bits: Vec::new(),
        }
    }

    /// Builds a tree from its non-zero segments, in increasing segment order; every
    /// page is dirty.
    pub(crate) fn from_segments(
        shape: Shape,
        segments: impl IntoIterator<Item = (u32, Hash)>,
    ) -> Tree {
        let mut tree = Tree::new(shape);
        for (segment, hash) in segments {
            tree.apply(segment, hash);
        }
        tree
    }

    pub(crate) fn root(&self) -> Hash {
        self.root
    }

    /// True if no segment is non-zero.
    pub(crate) fn is_empty(&self) -> bool {
        self.levels.last().map_or(true, |l| l.nonzero == 0)
    }

    /// Non-zero segments.
    pub(crate) fn nonzero_segments(&self) -> u64 {
        self.levels.last().map_or(0, |l| l.nonzero)
    }

    /// Node `index` of `level` (0 = root); zero past the tree.
    pub(crate) fn node(&self, level: u32, index: u64) -> Hash {
        match level {
            0 if index == 0 => self.root,
            0 => Hash::ZERO,
            d => self
                .levels
                .get(d as usize - 1)
                .map_or(Hash::ZERO, |l| l.get(index)),
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
        for level in self.levels.iter_mut().rev() {
            level.xor(index, delta);
            index /= width;
        }
        self.root ^= delta;
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

    /// Sets a segment's hash, fixing its ancestors.
    pub(crate) fn set_segment(&mut self, segment: u32, hash: Hash) {
        let old = self.segment(segment);
        self.apply(segment, old ^ hash);
    }

    /// Overwrites page `page` of `level` (loading only: the caller restores the
    /// invariant with `recompute_root` and checks it). False if out of range.
    pub(crate) fn load_page(&mut self, level: u32, page: u32, value: Page) -> bool {
        let Some(l) = (level as usize)
            .checked_sub(1)
            .and_then(|d| self.levels.get_mut(d))
        else {
            return false;
        };
        if u64::from(page) >= l.pages() {
            return false;
        }
        l.set_page(page, value);
        true
    }

    /// The nodes of page `page` of `level` (1..=levels), `None` if all zero.
    pub(crate) fn page(&self, level: u32, page: u32) -> Option<PageRef<'_>> {
        self.levels
            .get((level as usize).checked_sub(1)?)?
            .page(page)
    }

    /// Every non-empty page `(level, page, nodes)`, levels top-down.
    pub(crate) fn for_each_page(&self, mut f: impl FnMut(u32, u32, PageRef<'_>)) {
        for (d, level) in (1u32..).zip(&self.levels) {
            level.for_each_page(|page, view| f(d, page, view));
        }
    }

    /// Sets the root from level 1 (the root has no page of its own).
    pub(crate) fn recompute_root(&mut self) {
        let mut root = Hash::ZERO;
        if let Some(level) = self.levels.first() {
            level.for_each_nonzero(|_, h| root ^= h);
        }
        self.root = root;
    }

    /// The first interior node (level, index) that is not the XOR of its children.
    pub(crate) fn first_inconsistency(&self) -> Option<(u32, u64)> {
        let width = u64::from(self.shape.width);
        let mut expected_root = Hash::ZERO;
        if let Some(level) = self.levels.first() {
            level.for_each_nonzero(|_, h| expected_root ^= h);
        }
        if expected_root != self.root {
            return Some((0, 0));
        }
        for d in 1..self.levels.len() {
            let (upper, lower) = (&self.levels[d - 1], &self.levels[d]);
            // XOR the non-zero children into their parents, then compare with the
            // parents' non-zero nodes: both lists are in index order.
            let mut sums: Vec<(u64, Hash)> = Vec::new();
            lower.for_each_nonzero(|i, h| match sums.last_mut() {
                Some((p, sum)) if *p == i / width => *sum ^= h,
                _ => sums.push((i / width, h)),
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
                            return Some((d as u32, i));
                        }
                        sums.next();
                        parents.next();
                    }
                    (Some((i, _)), Some((j, _))) => return Some((d as u32, i.min(j))),
                    (Some((i, _)), None) | (None, Some((i, _))) => return Some((d as u32, i)),
                }
            }
        }
        None
    }

    /// Pages (level, page) to persist at the next checkpoint: each dirty segment page
    /// and the pages of its ancestors, in key order. A page holds a power of `width`
    /// nodes, so the parents of page `b` all lie in page `b / width` of the level above
    /// (page 0 once a level fits in one page).
    pub(crate) fn dirty_pages(&self) -> Vec<(u32, u32)> {
        let width = u64::from(self.shape.width);
        let mut out = std::collections::BTreeSet::new();
        for &page in &self.dirty {
            let mut page = u64::from(page);
            for level in (1..=self.shape.levels).rev() {
                let pages = self.levels.get(level as usize - 1).map_or(1, Level::pages);
                if !out.insert((level, page.min(pages - 1) as u32)) {
                    break; // ancestors already added by a sibling
                }
                page /= width;
            }
        }
        out.into_iter().collect()
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
        t.set_segment(5, value_hash(b"c"));
        assert_eq!(t.first_inconsistency(), None);
        assert_eq!(t.root(), value_hash(b"b") ^ value_hash(b"c"));
        let mut segs = Vec::new();
        t.for_each_segment(|s, h| segs.push((s, h)));
        let rebuilt = Tree::from_segments(shape(), segs);
        assert_eq!(rebuilt.root(), t.root());
    }

    #[test]
    fn dirty_pages_include_ancestors_once() {
        // 2^10 segments of width 2: pages of 256 nodes.
        let mut t = Tree::new(Shape::new(2, 10).unwrap());
        t.apply(0, value_hash(b"a"));
        t.apply(1, value_hash(b"a"));
        t.apply(1023, value_hash(b"a"));
        assert_eq!(
            t.dirty_pages(),
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
        assert!(t.dirty_pages().is_empty());
    }

    #[test]
    fn corrupt_level_is_found() {
        let mut t = Tree::new(shape());
        t.apply(9, value_hash(b"x"));
        assert!(t.load_page(2, 0, Page::empty()));
        assert_eq!(t.first_inconsistency(), Some((1, 0)));
        assert!(!t.load_page(4, 0, Page::empty()));
        assert!(!t.load_page(2, 1, Page::empty()));
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
        assert!(matches!(t.levels[2].repr, Repr::Flat(_)));
        let full = t.memory_bytes();
        assert!(full < 4096 * 16 + 256 * 16 + 16 * 16 + 4096, "{full}");
        assert_eq!(t.first_inconsistency(), None);
        for s in 0..4000u32 {
            t.apply(s, h(s));
        }
        assert!(matches!(t.levels[2].repr, Repr::Paged(_)));
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
