//! A page: a run of `n` consecutive nodes of one tree level (the unit the index is held,
//! persisted and snapshotted in), sparse or dense by how many of its nodes are non-zero.
//!
//! ```text
//! encoded page:  kind u8 = 0 (dense)  | n hashes (16 bytes each)
//!                kind u8 = 1 (sparse) | count u16 LE (1 ..= n)
//!                                     | count offsets u16 LE, strictly increasing, < n
//!                                     | count hashes (16 bytes each, none zero)
//! ```
//! An all-zero page is never encoded (absent means zero). The encoder picks the smaller
//! form; the decoder accepts either and checks every range.
#![deny(clippy::unwrap_used, clippy::indexing_slicing)]

use std::ops::Range;

use crate::error::Corruption;
use crate::hash::{Hash, HASH_BYTES};

const DENSE: u8 = 0;
const SPARSE: u8 = 1;

/// The in-memory page. A sparse page is one byte vector laid out as its encoding after
/// the header: `n` offsets (u16 LE, strictly increasing) then `n` hashes (16 bytes LE,
/// none zero), 18 bytes a node in a single allocation. A page turns dense past half full
/// and sparse again below an eighth, so neither form is ever far from the smaller one
/// and a change that flips one node back and forth cannot make it convert each time.
///
/// Most pages of a store with many small partitions hold one or two nodes; the sparse
/// form costs them one small allocation, and the dense form is boxed so that a page is
/// three words wherever it is kept.
#[derive(Clone, Debug)]
pub(crate) enum Page {
    Sparse(Vec<u8>),
    Dense(Box<Dense>),
}

#[derive(Clone, Debug)]
pub(crate) struct Dense {
    hashes: Box<[Hash]>,
    nonzero: u32,
}

/// Bytes a node takes in a sparse page: its offset and its hash.
const NODE_BYTES: usize = 2 + HASH_BYTES;

/// A read-only view of a page's nodes, in whichever form they are held.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PageRef<'a> {
    /// Sparse nodes, laid out as in [`Page::Sparse`].
    Sparse(&'a [u8]),
    Dense(&'a [Hash]),
}

/// Offset of the `i`th node of a sparse page (zero past the end, never reached).
fn offset_at(nodes: &[u8], i: usize) -> u16 {
    u16_at(nodes, 2 * i).unwrap_or_default()
}

/// Hash of the `i`th of the `n` nodes of a sparse page.
fn hash_at(nodes: &[u8], n: usize, i: usize) -> Hash {
    let at = 2 * n + HASH_BYTES * i;
    nodes
        .get(at..at + HASH_BYTES)
        .and_then(|b| b.try_into().ok())
        .map_or(Hash::ZERO, Hash::from_bytes)
}

/// Where `offset` is (`Ok`) or would go (`Err`) among a sparse page's nodes.
fn search(nodes: &[u8], offset: u16) -> Result<usize, usize> {
    let (mut lo, mut hi) = (0, nodes.len() / NODE_BYTES);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        match offset_at(nodes, mid).cmp(&offset) {
            std::cmp::Ordering::Less => lo = mid + 1,
            std::cmp::Ordering::Greater => hi = mid,
            std::cmp::Ordering::Equal => return Ok(mid),
        }
    }
    Err(lo)
}

/// A sparse page of the `n` nodes `(offset, hash)` of `nodes`, in offset order (any past
/// the `n`th are left out), written in place in one pass.
fn sparse(n: usize, nodes: impl IntoIterator<Item = (usize, Hash)>) -> Page {
    let mut bytes = vec![0u8; n * NODE_BYTES];
    let (offsets, hashes) = bytes.split_at_mut(2 * n);
    let slots = offsets
        .chunks_exact_mut(2)
        .zip(hashes.chunks_exact_mut(HASH_BYTES));
    for ((offset, hash), (o, h)) in slots.zip(nodes) {
        offset.copy_from_slice(&(o as u16).to_le_bytes());
        hash.copy_from_slice(&h.to_bytes());
    }
    Page::Sparse(bytes)
}

impl Page {
    pub(crate) fn empty() -> Page {
        Page::Sparse(Vec::new())
    }

    /// A page of `len` nodes holding `nodes` (non-zero, in offset order).
    pub(crate) fn from_nodes(nodes: &[(u64, Hash)], base: u64, len: usize) -> Page {
        if nodes.len() * 2 > len {
            let mut hashes = vec![Hash::ZERO; len].into_boxed_slice();
            for &(i, h) in nodes {
                if let Some(slot) = hashes.get_mut((i - base) as usize) {
                    *slot = h;
                }
            }
            Page::Dense(Box::new(Dense {
                hashes,
                nonzero: nodes.len() as u32,
            }))
        } else {
            sparse(
                nodes.len(),
                nodes.iter().map(|&(i, h)| ((i - base) as usize, h)),
            )
        }
    }

    /// A page holding `view`'s nodes in the form that suits how many are non-zero.
    pub(crate) fn from_view(view: PageRef<'_>, len: usize) -> Page {
        let nonzero = view.nonzero();
        if nonzero * 2 > len {
            let mut hashes = vec![Hash::ZERO; len].into_boxed_slice();
            view.for_each(|i, h| {
                if let Some(slot) = hashes.get_mut(i) {
                    *slot = h;
                }
            });
            Page::Dense(Box::new(Dense {
                hashes,
                nonzero: nonzero as u32,
            }))
        } else {
            let mut nodes = Vec::with_capacity(nonzero);
            view.for_each(|o, h| nodes.push((o, h)));
            sparse(nonzero, nodes)
        }
    }

    pub(crate) fn view(&self) -> PageRef<'_> {
        match self {
            Page::Sparse(nodes) => PageRef::Sparse(nodes),
            Page::Dense(d) => PageRef::Dense(&d.hashes),
        }
    }

    pub(crate) fn get(&self, offset: usize) -> Hash {
        match self {
            Page::Sparse(nodes) => match search(nodes, offset as u16) {
                Ok(i) => hash_at(nodes, nodes.len() / NODE_BYTES, i),
                Err(_) => Hash::ZERO,
            },
            Page::Dense(d) => d.hashes.get(offset).copied().unwrap_or_default(),
        }
    }

    pub(crate) fn nonzero(&self) -> usize {
        match self {
            Page::Sparse(nodes) => nodes.len() / NODE_BYTES,
            Page::Dense(d) => d.nonzero as usize,
        }
    }

    /// XORs `delta` into node `offset` (< `len`); returns the change in non-zero nodes
    /// (-1, 0 or 1). Converts between the forms at the thresholds.
    pub(crate) fn xor(&mut self, offset: usize, delta: Hash, len: usize) -> i64 {
        if delta.is_zero() || offset >= len {
            return 0;
        }
        let change = match self {
            Page::Sparse(nodes) => {
                let n = nodes.len() / NODE_BYTES;
                match search(nodes, offset as u16) {
                    Ok(i) => {
                        let at = 2 * n + HASH_BYTES * i;
                        let h = hash_at(nodes, n, i) ^ delta;
                        if h.is_zero() {
                            // Hash first: removing the offset moves every hash.
                            nodes.drain(at..at + HASH_BYTES);
                            nodes.drain(2 * i..2 * i + 2);
                            -1
                        } else {
                            if let Some(slot) = nodes.get_mut(at..at + HASH_BYTES) {
                                slot.copy_from_slice(&h.to_bytes());
                            }
                            0
                        }
                    }
                    Err(i) => {
                        let at = 2 * n + HASH_BYTES * i;
                        nodes.splice(at..at, delta.to_bytes());
                        nodes.splice(2 * i..2 * i, (offset as u16).to_le_bytes());
                        1
                    }
                }
            }
            Page::Dense(d) => match d.hashes.get_mut(offset) {
                Some(h) => {
                    let was = !h.is_zero();
                    *h ^= delta;
                    let change = i64::from(!h.is_zero()) - i64::from(was);
                    d.nonzero = d.nonzero.wrapping_add_signed(change as i32);
                    change
                }
                None => 0,
            },
        };
        let n = self.nonzero();
        let convert = match self {
            Page::Sparse(_) => n * 2 > len,
            Page::Dense(_) => n * 8 < len,
        };
        if convert {
            *self = Page::from_view(self.view(), len);
        } else if let Page::Sparse(nodes) = self {
            // Deletes can leave a sparse page's vector far larger than its nodes.
            if nodes.capacity() > 2 * nodes.len() + 8 * NODE_BYTES {
                nodes.shrink_to_fit();
            }
        }
        change
    }

    /// Heap bytes held by the page (its vector or box).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Page::Sparse(nodes) => nodes.capacity(),
            Page::Dense(d) => std::mem::size_of::<Dense>() + d.hashes.len() * HASH_BYTES,
        }
    }
}

impl<'a> PageRef<'a> {
    /// Calls `f(offset, hash)` for every non-zero node, in offset order.
    pub(crate) fn for_each(&self, f: impl FnMut(usize, Hash)) {
        self.for_each_in(0..usize::MAX, f);
    }

    /// Calls `f(offset, hash)` for every non-zero node with an offset in `range`, in
    /// offset order, without visiting the nodes before it.
    pub(crate) fn for_each_in(&self, range: Range<usize>, mut f: impl FnMut(usize, Hash)) {
        match self {
            PageRef::Sparse(nodes) => {
                let n = nodes.len() / NODE_BYTES;
                // Offsets are u16: a range starting past them holds none.
                let Ok(start) = u16::try_from(range.start) else {
                    return;
                };
                let (Ok(i) | Err(i)) = if start == 0 {
                    Err(0)
                } else {
                    search(nodes, start)
                };
                let (offsets, hashes) = nodes.split_at(2 * n);
                let offsets = offsets.get(2 * i..).unwrap_or_default().chunks_exact(2);
                let hashes = hashes
                    .get(HASH_BYTES * i..)
                    .unwrap_or_default()
                    .chunks_exact(HASH_BYTES);
                for (o, h) in offsets.zip(hashes) {
                    // `chunks_exact` makes both conversions infallible.
                    let offset = usize::from(o.try_into().map_or(0, u16::from_le_bytes));
                    if offset >= range.end {
                        break;
                    }
                    f(offset, h.try_into().map_or(Hash::ZERO, Hash::from_bytes));
                }
            }
            PageRef::Dense(hashes) => {
                let end = range.end.min(hashes.len());
                let within = hashes.get(range.start..end).unwrap_or_default();
                for (i, &h) in (range.start..).zip(within) {
                    if !h.is_zero() {
                        f(i, h);
                    }
                }
            }
        }
    }

    /// XOR of all the page's nodes.
    pub(crate) fn xor_all(&self) -> Hash {
        match self {
            PageRef::Sparse(nodes) => {
                let hashes = nodes
                    .get(2 * (nodes.len() / NODE_BYTES)..)
                    .unwrap_or_default();
                hashes
                    .chunks_exact(HASH_BYTES)
                    .map(|h| h.try_into().map_or(Hash::ZERO, Hash::from_bytes))
                    .fold(Hash::ZERO, |acc, h| acc ^ h)
            }
            PageRef::Dense(hashes) => hashes.iter().fold(Hash::ZERO, |acc, &h| acc ^ h),
        }
    }

    pub(crate) fn nonzero(&self) -> usize {
        match self {
            PageRef::Sparse(nodes) => nodes.len() / NODE_BYTES,
            PageRef::Dense(hashes) => hashes.iter().filter(|h| !h.is_zero()).count(),
        }
    }

    /// Appends the encoded page (see the module docs) to `out`; nothing if all zero.
    pub(crate) fn encode(&self, len: usize, out: &mut Vec<u8>) {
        let nonzero = self.nonzero();
        if nonzero == 0 {
            return;
        }
        if 2 + nonzero * NODE_BYTES < len * HASH_BYTES {
            out.push(SPARSE);
            out.extend_from_slice(&(nonzero as u16).to_le_bytes());
            match self {
                // Held as encoded.
                PageRef::Sparse(nodes) => out.extend_from_slice(nodes),
                PageRef::Dense(_) => {
                    self.for_each(|i, _| out.extend_from_slice(&(i as u16).to_le_bytes()));
                    self.for_each(|_, h| out.extend_from_slice(&h.to_bytes()));
                }
            }
        } else {
            out.push(DENSE);
            let mut next = 0;
            self.for_each(|i, h| {
                for _ in next..i {
                    out.extend_from_slice(&[0u8; HASH_BYTES]);
                }
                out.extend_from_slice(&h.to_bytes());
                next = i + 1;
            });
            for _ in next..len {
                out.extend_from_slice(&[0u8; HASH_BYTES]);
            }
        }
    }
}

/// Decodes one encoded page of `len` nodes from the front of `bytes`, calling
/// `node(offset, hash)` for each non-zero node in offset order; returns the bytes used.
/// Every range is checked: offsets in order and below `len`, no zero listed, no
/// all-zero page.
pub(crate) fn decode_nodes(
    bytes: &[u8],
    len: usize,
    location: &dyn Fn() -> String,
    node: &mut dyn FnMut(usize, Hash),
) -> Result<usize, Corruption> {
    let short = |expected: usize| Corruption::BadLength {
        what: "index page",
        location: location(),
        expected,
        found: bytes.len(),
    };
    let hash_at = |at: usize| -> Result<Hash, Corruption> {
        let b: [u8; HASH_BYTES] = bytes
            .get(at..at + HASH_BYTES)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| short(at + HASH_BYTES))?;
        Ok(Hash::from_bytes(b))
    };
    match bytes.first() {
        Some(&DENSE) => {
            let used = 1 + len * HASH_BYTES;
            if bytes.len() < used {
                return Err(short(used));
            }
            let mut nonzero = 0;
            for i in 0..len {
                let h = hash_at(1 + i * HASH_BYTES)?;
                if !h.is_zero() {
                    nonzero += 1;
                    node(i, h);
                }
            }
            if nonzero == 0 {
                return Err(bad(location, "an all-zero page is never stored".into()));
            }
            Ok(used)
        }
        Some(&SPARSE) => {
            let (held, used) = check_sparse(bytes, len, location)?;
            PageRef::Sparse(held).for_each(node);
            Ok(used)
        }
        Some(&kind) => Err(bad(location, format!("page kind {kind} (0 or 1)"))),
        None => Err(short(1)),
    }
}

/// Checks the sparse page encoded at the front of `bytes` (a page of `len` nodes):
/// `count` in 1..=len, offsets strictly increasing and below `len`, no zero hash.
/// Returns its nodes in the in-memory layout (after the kind and count) and the bytes
/// used.
fn check_sparse<'a>(
    bytes: &'a [u8],
    len: usize,
    location: &dyn Fn() -> String,
) -> Result<(&'a [u8], usize), Corruption> {
    let short = |expected: usize| Corruption::BadLength {
        what: "index page",
        location: location(),
        expected,
        found: bytes.len(),
    };
    let count = u16_at(bytes, 1).map(usize::from).ok_or_else(|| short(3))?;
    if count == 0 || count > len {
        return Err(bad(location, format!("{count} nodes in a page of {len}")));
    }
    let used = 3 + count * NODE_BYTES;
    let held = bytes.get(3..used).ok_or_else(|| short(used))?;
    let (offsets, hashes) = held.split_at(2 * count);
    let mut next = 0usize; // the least offset the next node may have
    for o in offsets.chunks_exact(2) {
        // `chunks_exact` makes the conversion infallible.
        let o = o
            .try_into()
            .map_or(0, |b| usize::from(u16::from_le_bytes(b)));
        if o < next || o >= len {
            return Err(bad(
                location,
                format!("node offset {o} out of order or range"),
            ));
        }
        next = o + 1;
    }
    if let Some(i) = hashes
        .chunks_exact(HASH_BYTES)
        .position(|h| h.iter().all(|&b| b == 0))
    {
        let o = offset_at(held, i);
        return Err(bad(location, format!("zero hash listed at offset {o}")));
    }
    Ok((held, used))
}

/// Decodes one encoded page of `len` nodes from the front of `bytes` into the page it
/// encodes (checked as [`decode_nodes`] checks it); returns the page and the bytes used.
/// A sparse encoding that the in-memory page keeps sparse is copied as it is: it is
/// the in-memory layout after its kind and count.
pub(crate) fn decode_page(
    bytes: &[u8],
    len: usize,
    location: &dyn Fn() -> String,
) -> Result<(Page, usize), Corruption> {
    let stays_sparse = u16_at(bytes, 1).is_some_and(|count| usize::from(count) * 2 <= len);
    if bytes.first() == Some(&SPARSE) && stays_sparse {
        let (held, used) = check_sparse(bytes, len, location)?;
        return Ok((Page::Sparse(held.to_vec()), used));
    }
    let mut nodes = Vec::new();
    let used = decode_nodes(bytes, len, location, &mut |o, h| nodes.push((o as u64, h)))?;
    Ok((Page::from_nodes(&nodes, 0, len), used))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b: [u8; 2] = bytes.get(at..at + 2)?.try_into().ok()?;
    Some(u16::from_le_bytes(b))
}

fn bad(location: &dyn Fn() -> String, detail: String) -> Corruption {
    Corruption::OutOfRange {
        what: "index page",
        location: location(),
        detail,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use crate::hash::value_hash;
    use proptest::prelude::*;

    fn h(i: u32) -> Hash {
        value_hash(&i.to_le_bytes())
    }

    #[test]
    fn pages_turn_dense_and_back_and_empty() {
        let len = 256;
        let mut p = Page::empty();
        for i in 0..200 {
            assert_eq!(p.xor(i, h(i as u32), len), 1);
        }
        assert!(matches!(&p, Page::Dense(d) if d.nonzero == 200));
        for i in 0..190 {
            assert_eq!(p.xor(i, h(i as u32), len), -1);
        }
        assert!(matches!(p, Page::Sparse(_)));
        assert_eq!(p.nonzero(), 10);
        assert_eq!(p.get(195), h(195));
        assert_eq!(p.get(5), Hash::ZERO);
    }

    proptest! {
        #[test]
        fn a_range_visits_the_nodes_a_full_visit_finds_there(
            nodes in proptest::collection::btree_map(0u16..256, 1u32.., 0..256),
            a in 0usize..300,
            b in 0usize..300,
        ) {
            // Few nodes stay sparse, many turn the page dense: both forms are covered.
            let len = 256;
            let mut page = Page::empty();
            for (&o, &v) in &nodes {
                page.xor(usize::from(o), h(v), len);
            }
            let range = a.min(b)..a.max(b);
            let mut all = Vec::new();
            page.view().for_each(|o, h| all.push((o, h)));
            all.retain(|(o, _)| range.contains(o));
            let mut within = Vec::new();
            page.view().for_each_in(range, |o, h| within.push((o, h)));
            prop_assert_eq!(within, all);
        }

        #[test]
        fn encode_decode_round_trip(nodes in proptest::collection::btree_map(0u16..256, 1u32.., 1..256)) {
            let len = 256;
            let mut page = Page::empty();
            for (&o, &v) in &nodes {
                page.xor(usize::from(o), h(v), len);
            }
            let mut bytes = Vec::new();
            page.view().encode(len, &mut bytes);
            let mut back = Vec::new();
            let used = decode_nodes(&bytes, len, &String::new, &mut |o, h| back.push((o, h))).unwrap();
            prop_assert_eq!(used, bytes.len());
            let mut expected = Vec::new();
            page.view().for_each(|o, h| expected.push((o, h)));
            prop_assert_eq!(&back, &expected);
            let (decoded, used) = decode_page(&bytes, len, &String::new).unwrap();
            prop_assert_eq!(used, bytes.len());
            prop_assert_eq!(decoded.nonzero(), page.nonzero());
            prop_assert_eq!(matches!(decoded, Page::Sparse(_)), matches!(page, Page::Sparse(_)));
            let mut held = Vec::new();
            decoded.view().for_each(|o, h| held.push((o, h)));
            prop_assert_eq!(held, expected);
        }

        /// XORs in any order (inserts, changes, removals, both conversions) leave the
        /// page holding exactly what a map of the same XORs holds.
        #[test]
        fn xors_match_a_model(ops in proptest::collection::vec((0u16..64, 0u32..4), 0..400)) {
            let len = 64;
            let mut page = Page::empty();
            let mut model = std::collections::BTreeMap::new();
            for (o, v) in ops {
                let o = usize::from(o);
                let before = model.len() as i64;
                let slot = model.entry(o).or_insert(Hash::ZERO);
                *slot ^= h(v);
                if slot.is_zero() {
                    model.remove(&o);
                }
                prop_assert_eq!(page.xor(o, h(v), len), model.len() as i64 - before);
                prop_assert_eq!(page.nonzero(), model.len());
            }
            let mut held = Vec::new();
            page.view().for_each(|o, h| held.push((o, h)));
            prop_assert_eq!(held, model.iter().map(|(&o, &h)| (o, h)).collect::<Vec<_>>());
            for o in 0..len {
                prop_assert_eq!(page.get(o), model.get(&o).copied().unwrap_or_default());
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), len in 1usize..300) {
            let _ = decode_nodes(&bytes, len, &String::new, &mut |_, _| {});
            let _ = decode_page(&bytes, len, &String::new);
        }
    }
}
