//! One level of a partition's tree, sized by its content.
//!
//! A level is held in pages of `bucket_len(level)` nodes (the persisted bucket). It is
//! *paged* while at most half its nodes are non-zero: only pages with a non-zero node
//! exist (found by page number as `pages.rs` describes), each sparse or dense by its own
//! fill (see `page.rs`). Past half full the level becomes one flat array, as a dense
//! tree would hold it, and below an eighth it becomes paged again.

use crate::page::{Page, PageRef};
use crate::pages::Pages;
use crate::Hash;

/// A hint that `at` will be read soon; it never faults and changes nothing.
#[inline]
fn prefetch(at: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it reads nothing into the program, and the
    // CPU ignores it for an address it cannot load (x86 `prefetcht0` never faults);
    // SSE, which it needs, is part of the x86_64 baseline.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Page numbers in a level of `len` nodes, `page_len` to a page.
fn page_count(len: u64, page_len: usize) -> u32 {
    len.div_ceil(page_len.max(1) as u64)
        .min(u64::from(u32::MAX)) as u32
}

/// The nodes of one level, paged or flat by its fill.
#[derive(Clone)]
pub(crate) struct Level {
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
    Paged(Pages),
    Flat(Vec<Hash>),
}

impl Level {
    /// Non-zero nodes in the level.
    pub(crate) fn nonzero(&self) -> u64 {
        self.nonzero
    }

    /// True if the level is held as one flat array (tests).
    #[cfg(test)]
    pub(crate) fn is_flat(&self) -> bool {
        matches!(self.repr, Repr::Flat(_))
    }

    pub(crate) fn new(len: u64, page_len: usize) -> Level {
        Level {
            len,
            page_len,
            nonzero: 0,
            repr: Repr::Paged(Pages::new(page_count(len, page_len))),
        }
    }

    /// A level holding `nodes` (non-zero, in index order), in the form its fill calls for.
    pub(crate) fn from_nodes(len: u64, page_len: usize, nodes: &[(u64, Hash)]) -> Level {
        let nonzero = nodes.len() as u64;
        let step = page_len as u64;
        let repr = if len > step && nonzero * 2 > len {
            let mut flat = vec![Hash::ZERO; len as usize];
            for &(i, h) in nodes {
                if let Some(slot) = flat.get_mut(i as usize) {
                    *slot = h;
                }
            }
            Repr::Flat(flat)
        } else {
            Repr::Paged(Pages::from_pages(
                page_count(len, page_len),
                nodes
                    .chunk_by(|a, b| a.0 / step == b.0 / step)
                    .filter_map(|run| {
                        let page = run.first()?.0 / step;
                        Some((page as u32, Page::from_nodes(run, page * step, page_len)))
                    }),
            ))
        };
        Level {
            len,
            page_len,
            nonzero,
            repr,
        }
    }

    /// A level from all its nodes, `nonzero` of them non-zero, kept flat if more than
    /// half are.
    pub(crate) fn from_flat(page_len: usize, nodes: Vec<Hash>, nonzero: u64) -> Level {
        let len = nodes.len() as u64;
        if len > page_len as u64 && nonzero * 2 > len {
            return Level {
                len,
                page_len,
                nonzero,
                repr: Repr::Flat(nodes),
            };
        }
        let listed: Vec<(u64, Hash)> = (0u64..).zip(nodes).filter(|(_, h)| !h.is_zero()).collect();
        Level::from_nodes(len, page_len, &listed)
    }

    /// A level from its non-empty pages, in page order; flat if more than half full.
    pub(crate) fn from_pages(len: u64, page_len: usize, pages: Vec<(u32, Page)>) -> Level {
        let nonzero = pages.iter().map(|(_, p)| p.nonzero() as u64).sum();
        let mut level = Level {
            len,
            page_len,
            nonzero,
            repr: Repr::Paged(Pages::from_pages(page_count(len, page_len), pages)),
        };
        level.reshape();
        level
    }

    pub(crate) fn pages(&self) -> u64 {
        self.len.div_ceil(self.page_len as u64)
    }

    pub(crate) fn get(&self, index: u64) -> Hash {
        match &self.repr {
            Repr::Flat(nodes) => nodes.get(index as usize).copied().unwrap_or_default(),
            Repr::Paged(pages) => {
                let (page, offset) = self.split(index);
                pages.get(page).map_or(Hash::ZERO, |p| p.get(offset))
            }
        }
    }

    /// Appends the XOR of each of `runs` consecutive runs of `run` nodes from `first`
    /// on (zero past the level): one pass over the pages they span.
    pub(crate) fn fold_runs(&self, first: u64, run: u64, runs: usize, out: &mut Vec<Hash>) {
        let start = out.len();
        out.resize(start + runs, Hash::ZERO);
        let run = run.max(1);
        let end = first
            .saturating_add(run.saturating_mul(runs as u64))
            .min(self.len);
        let (Some(sums), true) = (out.get_mut(start..), first < end) else {
            return;
        };
        match &self.repr {
            Repr::Flat(nodes) => {
                let nodes = nodes.get(first as usize..end as usize).unwrap_or_default();
                for (sum, chunk) in sums.iter_mut().zip(nodes.chunks(run as usize)) {
                    *sum = chunk.iter().fold(Hash::ZERO, |acc, &h| acc ^ h);
                }
            }
            Repr::Paged(_) => {
                let page_len = self.page_len as u64;
                let (first_page, last_page) = (first / page_len, (end - 1) / page_len);
                self.for_each_page_in(first_page, last_page + 1 - first_page, |page, view| {
                    let base = u64::from(page) * page_len;
                    // The part of this page within `first..end`, as page offsets.
                    let lo = first.saturating_sub(base) as usize;
                    let hi = (end - base).min(page_len) as usize;
                    view.for_each_in(lo..hi, |offset, h| {
                        let i = base + offset as u64;
                        if let Some(sum) = sums.get_mut(((i - first) / run) as usize) {
                            *sum ^= h;
                        }
                    });
                });
            }
        }
    }

    pub(crate) fn split(&self, index: u64) -> (u32, usize) {
        let page_len = self.page_len as u64;
        ((index / page_len) as u32, (index % page_len) as usize)
    }

    pub(crate) fn xor(&mut self, index: u64, delta: Hash) {
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
                pages.xor(page, offset, delta, self.page_len)
            }
        };
        self.nonzero = self.nonzero.wrapping_add_signed(change);
        self.reshape();
    }

    /// Switches between paged and flat at the thresholds (single-page levels stay paged:
    /// their one page is already dense when full).
    pub(crate) fn reshape(&mut self) {
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
                let pages = (0u32..)
                    .zip(nodes.chunks(self.page_len))
                    .filter(|(_, chunk)| chunk.iter().any(|h| !h.is_zero()))
                    .map(|(page, chunk)| {
                        (page, Page::from_view(PageRef::Dense(chunk), chunk.len()))
                    });
                self.repr = Repr::Paged(Pages::from_pages(self.pages() as u32, pages));
            }
            _ => {}
        }
    }

    /// The nodes of page `page`, or `None` if they are all zero.
    pub(crate) fn page(&self, page: u32) -> Option<PageRef<'_>> {
        match &self.repr {
            Repr::Paged(pages) => pages.get(page).map(Page::view),
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
    pub(crate) fn for_each_page(&self, mut f: impl FnMut(u32, PageRef<'_>)) {
        match &self.repr {
            Repr::Paged(pages) => pages.for_each(|page, p| f(page, p.view())),
            Repr::Flat(nodes) => {
                for (page, chunk) in (0u32..).zip(nodes.chunks(self.page_len)) {
                    if chunk.iter().any(|h| !h.is_zero()) {
                        f(page, PageRef::Dense(chunk));
                    }
                }
            }
        }
    }

    /// The pages with a non-zero node among `first .. first + count`, in order.
    pub(crate) fn for_each_page_in<'a>(
        &'a self,
        first: u64,
        count: u64,
        mut f: impl FnMut(u32, PageRef<'a>),
    ) {
        let end = first.saturating_add(count).min(self.pages());
        match &self.repr {
            Repr::Paged(pages) => pages.for_each_in(first as u32, end as u32, |page, p| {
                f(page, p.view());
            }),
            Repr::Flat(_) => {
                for page in first..end {
                    if let Some(view) = self.page(page as u32) {
                        f(page as u32, view);
                    }
                }
            }
        }
    }

    /// Every non-zero node `(index, hash)`, in index order.
    pub(crate) fn for_each_nonzero(&self, mut f: impl FnMut(u64, Hash)) {
        let page_len = self.page_len as u64;
        self.for_each_page(|page, view| {
            let base = u64::from(page) * page_len;
            view.for_each(|offset, h| f(base + offset as u64, h));
        });
    }

    /// Starts loading node `index` (its page's nodes, where paged) into the cache.
    pub(crate) fn prefetch(&self, index: u64) {
        match &self.repr {
            Repr::Flat(nodes) => {
                if let Some(node) = nodes.get(index as usize) {
                    prefetch(std::ptr::from_ref(node).cast());
                }
            }
            Repr::Paged(pages) => {
                if let Some(page) = pages.get(self.split(index).0) {
                    match page.view() {
                        PageRef::Sparse(nodes) => {
                            // The offsets, where the search starts, and the first
                            // hash (offsets take 2 of every 18 bytes).
                            prefetch(nodes.as_ptr());
                            if let Some(mid) = nodes.get(nodes.len() / 9..) {
                                prefetch(mid.as_ptr());
                            }
                        }
                        PageRef::Dense(hashes) => {
                            if let Some(node) = hashes.get(self.split(index).1) {
                                prefetch(std::ptr::from_ref(node).cast());
                            }
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        match &self.repr {
            Repr::Flat(nodes) => nodes.capacity() * std::mem::size_of::<Hash>(),
            Repr::Paged(pages) => pages.heap_bytes(),
        }
    }
}
