//! The pages of a paged level, by page number.
//!
//! A level with few non-empty pages keeps them in a sorted map, so a partition with one
//! key costs one entry. Once at least half of the level's page numbers are in use, they
//! move to a table indexed by page number: a look-up is then one load, not a search down
//! a B-tree, and the hasher thread makes one for every write, into the segment level of
//! a partition with a few thousand keys or more. A table costs one empty slot (three
//! words) per unused page number, about what the map spends per page it holds, and it
//! turns back into a map below an eighth in use.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use crate::page::Page;
use crate::Hash;

#[derive(Clone)]
pub(crate) struct Pages {
    /// Page numbers in the level (`0..slots`).
    slots: u32,
    repr: Repr,
}

#[derive(Clone)]
enum Repr {
    Sorted(BTreeMap<u32, Page>),
    /// `table[n]` is page `n`; `present` of them are `Some`.
    Table {
        table: Vec<Option<Page>>,
        present: usize,
    },
}

impl Pages {
    /// No pages, in a level of `slots` page numbers.
    pub(crate) fn new(slots: u32) -> Pages {
        Pages {
            slots,
            repr: Repr::Sorted(BTreeMap::new()),
        }
    }

    /// `pages` (non-empty, distinct page numbers below `slots`), in a level of `slots`
    /// page numbers.
    pub(crate) fn from_pages(slots: u32, pages: impl IntoIterator<Item = (u32, Page)>) -> Pages {
        let pages: Vec<(u32, Page)> = pages.into_iter().filter(|(n, _)| *n < slots).collect();
        let repr = if pages.len() * 2 >= slots as usize {
            table(slots, pages)
        } else {
            Repr::Sorted(pages.into_iter().collect())
        };
        let mut out = Pages { slots, repr };
        // A table from a list whose page numbers repeat may hold fewer than half.
        out.reshape();
        out
    }

    pub(crate) fn get(&self, page: u32) -> Option<&Page> {
        match &self.repr {
            Repr::Sorted(map) => map.get(&page),
            Repr::Table { table, .. } => table.get(page as usize)?.as_ref(),
        }
    }

    /// XORs `delta` into node `offset` of page `page` (of `len` nodes), adding the page
    /// if it was empty and removing it if it becomes so. Returns the change in non-zero
    /// nodes, as [`Page::xor`]. A page number past the level changes nothing.
    pub(crate) fn xor(&mut self, page: u32, offset: usize, delta: Hash, len: usize) -> i64 {
        if page >= self.slots {
            return 0;
        }
        let change = match &mut self.repr {
            Repr::Sorted(map) => {
                let entry = map.entry(page).or_insert_with(Page::empty);
                let change = entry.xor(offset, delta, len);
                if entry.nonzero() == 0 {
                    map.remove(&page);
                }
                change
            }
            Repr::Table { table, present } => {
                let Some(slot) = table.get_mut(page as usize) else {
                    return 0;
                };
                let entry = slot.get_or_insert_with(|| {
                    *present += 1;
                    Page::empty()
                });
                let change = entry.xor(offset, delta, len);
                if entry.nonzero() == 0 {
                    *slot = None;
                    *present -= 1;
                }
                change
            }
        };
        self.reshape();
        change
    }

    /// Each page among page numbers `first..end`, in order.
    pub(crate) fn for_each_in<'a>(
        &'a self,
        first: u32,
        end: u32,
        mut f: impl FnMut(u32, &'a Page),
    ) {
        let end = end.min(self.slots);
        if first >= end {
            return;
        }
        match &self.repr {
            Repr::Sorted(map) => {
                for (&n, page) in map.range(first..end) {
                    f(n, page);
                }
            }
            Repr::Table { table, .. } => {
                let slots = table.get(first as usize..end as usize).unwrap_or_default();
                for (n, page) in (first..).zip(slots) {
                    if let Some(page) = page {
                        f(n, page);
                    }
                }
            }
        }
    }

    /// Each page, in order.
    pub(crate) fn for_each(&self, f: impl FnMut(u32, &Page)) {
        self.for_each_in(0, self.slots, f);
    }

    /// Heap bytes held, the pages' own included.
    pub(crate) fn heap_bytes(&self) -> usize {
        let mut content = 0;
        self.for_each(|_, page| content += page.heap_bytes());
        content
            + match &self.repr {
                Repr::Sorted(map) => {
                    // A B-tree node has room for 11 keys and values, a parent pointer and
                    // two lengths (internal nodes add 12 child pointers; at most 1 in 6
                    // nodes is internal).
                    let entry = std::mem::size_of::<u32>() + std::mem::size_of::<Page>();
                    let nodes = map.len().div_ceil(6).max(usize::from(!map.is_empty()));
                    let node = 11 * entry + 2 * std::mem::size_of::<usize>();
                    nodes * node + nodes.div_ceil(6) * 12 * std::mem::size_of::<usize>()
                }
                Repr::Table { table, .. } => table.capacity() * std::mem::size_of::<Option<Page>>(),
            }
    }

    /// Switches between map and table at the thresholds (see the module docs).
    fn reshape(&mut self) {
        let slots = self.slots as usize;
        match &mut self.repr {
            Repr::Sorted(map) if map.len() * 2 >= slots => {
                self.repr = table(self.slots, std::mem::take(map));
            }
            Repr::Table { table, present } if *present * 8 < slots => {
                let map = (0u32..)
                    .zip(std::mem::take(table))
                    .filter_map(|(n, page)| Some((n, page?)))
                    .collect();
                self.repr = Repr::Sorted(map);
            }
            _ => {}
        }
    }

    /// True if held as a table (tests).
    #[cfg(test)]
    pub(crate) fn is_table(&self) -> bool {
        matches!(self.repr, Repr::Table { .. })
    }
}

/// A table of `slots` page numbers holding `pages` (a page number listed twice: the
/// last one; one past the level: left out).
fn table(slots: u32, pages: impl IntoIterator<Item = (u32, Page)>) -> Repr {
    let mut table: Vec<Option<Page>> = Vec::new();
    table.resize_with(slots as usize, || None);
    let mut present = 0;
    for (n, page) in pages {
        if let Some(slot) = table.get_mut(n as usize) {
            present += usize::from(slot.replace(page).is_none());
        }
    }
    Repr::Table { table, present }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::hash::value_hash;
    use proptest::prelude::*;

    const SLOTS: u32 = 64;
    const LEN: usize = 16;

    fn h(i: u32) -> Hash {
        value_hash(&i.to_le_bytes())
    }

    /// Every node held, as (page, offset, hash), in order.
    fn nodes(pages: &Pages, first: u32, end: u32) -> Vec<(u32, usize, Hash)> {
        let mut out = Vec::new();
        pages.for_each_in(first, end, |n, page| {
            page.view().for_each(|o, h| out.push((n, o, h)));
        });
        out
    }

    #[test]
    fn a_level_turns_to_a_table_at_half_its_pages_and_back_below_an_eighth() {
        let mut pages = Pages::new(SLOTS);
        for n in 0..SLOTS / 2 - 1 {
            pages.xor(n, 3, h(n), LEN);
        }
        assert!(!pages.is_table());
        pages.xor(SLOTS / 2 - 1, 3, h(0), LEN);
        assert!(pages.is_table());
        // Emptied pages leave; the table holds until fewer than an eighth are left.
        for n in 0..SLOTS / 2 - SLOTS / 8 {
            pages.xor(n, 3, h(n), LEN);
        }
        assert!(pages.is_table());
        pages.xor(SLOTS / 2 - SLOTS / 8, 3, h(SLOTS / 2 - SLOTS / 8), LEN);
        assert!(!pages.is_table());
        let left: Vec<u32> = nodes(&pages, 0, SLOTS).iter().map(|n| n.0).collect();
        assert_eq!(
            left,
            (SLOTS / 2 - SLOTS / 8 + 1..SLOTS / 2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_page_number_past_the_level_changes_nothing() {
        let mut pages = Pages::from_pages(SLOTS, [(SLOTS, Page::empty())]);
        assert_eq!(pages.xor(SLOTS, 0, h(1), LEN), 0);
        assert!(pages.get(SLOTS).is_none());
        for n in 0..SLOTS {
            pages.xor(n, 0, h(n), LEN);
        }
        assert!(pages.is_table());
        assert_eq!(pages.xor(SLOTS, 0, h(1), LEN), 0);
        assert_eq!(nodes(&pages, 0, u32::MAX).len(), SLOTS as usize);
    }

    proptest! {
        /// In either form, the pages hold what a plain map of the same XORs holds.
        #[test]
        fn pages_hold_what_a_map_of_the_same_xors_holds(
            xors in proptest::collection::vec((0u32..SLOTS, 0usize..4, 0u32..3), 0..400),
            first in 0u32..SLOTS + 2,
            count in 0u32..SLOTS + 2,
        ) {
            // Three distinct hashes into 4 nodes a page: nodes come and go, and pages
            // empty out, so both forms and both switches are met.
            let mut pages = Pages::new(SLOTS);
            let mut model: BTreeMap<(u32, usize), Hash> = BTreeMap::new();
            for &(n, o, v) in &xors {
                let before = pages.get(n).map_or(Hash::ZERO, |p| p.get(o));
                let change = pages.xor(n, o, h(v), LEN);
                let slot = model.entry((n, o)).or_default();
                *slot ^= h(v);
                let after = *slot;
                prop_assert_eq!(change, i64::from(!after.is_zero()) - i64::from(!before.is_zero()));
            }
            model.retain(|_, h| !h.is_zero());
            let end = first.saturating_add(count);
            let want: Vec<_> = model
                .iter()
                .filter(|((n, _), _)| (first..end).contains(n))
                .map(|(&(n, o), &h)| (n, o, h))
                .collect();
            prop_assert_eq!(nodes(&pages, first, end), want);
            for n in 0..SLOTS {
                let held = pages.get(n).map(|p| p.nonzero());
                let want = model.keys().filter(|(m, _)| *m == n).count();
                prop_assert_eq!(held.unwrap_or(0), want);
                prop_assert!(held != Some(0), "an empty page is dropped");
            }
        }
    }
}
