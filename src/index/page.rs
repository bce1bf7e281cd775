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

use crate::error::Corruption;
use crate::hash::{Hash, HASH_BYTES};

const DENSE: u8 = 0;
const SPARSE: u8 = 1;

/// The in-memory page. Sparse pages keep offsets and hashes in two sorted vectors (18
/// bytes a node, no padding); a page turns dense past half full and sparse again below
/// an eighth, so neither form is ever far from the smaller one and a change that flips
/// one node back and forth cannot make it convert each time.
///
/// Both forms are boxed so that a page is two words wherever it is kept (most pages of
/// a store with many small partitions hold one or two nodes).
#[derive(Clone, Debug)]
pub(crate) enum Page {
    Sparse(Box<Sparse>),
    Dense(Box<Dense>),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Sparse {
    offsets: Vec<u16>,
    hashes: Vec<Hash>,
}

#[derive(Clone, Debug)]
pub(crate) struct Dense {
    hashes: Box<[Hash]>,
    nonzero: u32,
}

/// A read-only view of a page's nodes, in whichever form they are held.
#[derive(Clone, Copy, Debug)]
pub(crate) enum PageRef<'a> {
    Sparse(&'a [u16], &'a [Hash]),
    Dense(&'a [Hash]),
}

impl Page {
    pub(crate) fn empty() -> Page {
        Page::Sparse(Box::default())
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
            Page::Sparse(Box::new(Sparse {
                offsets: nodes.iter().map(|&(i, _)| (i - base) as u16).collect(),
                hashes: nodes.iter().map(|&(_, h)| h).collect(),
            }))
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
            let (mut offsets, mut out) = (Vec::with_capacity(nonzero), Vec::with_capacity(nonzero));
            view.for_each(|i, h| {
                offsets.push(i as u16);
                out.push(h);
            });
            Page::Sparse(Box::new(Sparse {
                offsets,
                hashes: out,
            }))
        }
    }

    pub(crate) fn view(&self) -> PageRef<'_> {
        match self {
            Page::Sparse(s) => PageRef::Sparse(&s.offsets, &s.hashes),
            Page::Dense(d) => PageRef::Dense(&d.hashes),
        }
    }

    pub(crate) fn get(&self, offset: usize) -> Hash {
        match self {
            Page::Sparse(s) => s
                .offsets
                .binary_search(&(offset as u16))
                .ok()
                .and_then(|i| s.hashes.get(i).copied())
                .unwrap_or_default(),
            Page::Dense(d) => d.hashes.get(offset).copied().unwrap_or_default(),
        }
    }

    pub(crate) fn nonzero(&self) -> usize {
        match self {
            Page::Sparse(s) => s.offsets.len(),
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
            Page::Sparse(s) => match s.offsets.binary_search(&(offset as u16)) {
                Ok(i) => match s.hashes.get_mut(i) {
                    Some(h) => {
                        *h ^= delta;
                        if h.is_zero() {
                            s.offsets.remove(i);
                            s.hashes.remove(i);
                            -1
                        } else {
                            0
                        }
                    }
                    None => 0,
                },
                Err(i) => {
                    s.offsets.insert(i, offset as u16);
                    s.hashes.insert(i, delta);
                    1
                }
            },
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
        } else if let Page::Sparse(s) = self {
            // Deletes can leave a sparse page's vectors far larger than its nodes.
            if s.offsets.capacity() > 2 * s.offsets.len() + 8 {
                s.offsets.shrink_to_fit();
                s.hashes.shrink_to_fit();
            }
        }
        change
    }

    /// Heap bytes held by the page (its box and vectors).
    pub(crate) fn heap_bytes(&self) -> usize {
        match self {
            Page::Sparse(s) => {
                std::mem::size_of::<Sparse>()
                    + s.offsets.capacity() * 2
                    + s.hashes.capacity() * HASH_BYTES
            }
            Page::Dense(d) => std::mem::size_of::<Dense>() + d.hashes.len() * HASH_BYTES,
        }
    }
}

impl<'a> PageRef<'a> {
    /// Calls `f(offset, hash)` for every non-zero node, in offset order.
    pub(crate) fn for_each(&self, mut f: impl FnMut(usize, Hash)) {
        match self {
            PageRef::Sparse(offsets, hashes) => {
                for (&o, &h) in offsets.iter().zip(hashes.iter()) {
                    f(usize::from(o), h);
                }
            }
            PageRef::Dense(hashes) => {
                for (i, &h) in hashes.iter().enumerate() {
                    if !h.is_zero() {
                        f(i, h);
                    }
                }
            }
        }
    }

    pub(crate) fn nonzero(&self) -> usize {
        match self {
            PageRef::Sparse(offsets, _) => offsets.len(),
            PageRef::Dense(hashes) => hashes.iter().filter(|h| !h.is_zero()).count(),
        }
    }

    /// Appends the encoded page (see the module docs) to `out`; nothing if all zero.
    pub(crate) fn encode(&self, len: usize, out: &mut Vec<u8>) {
        let nonzero = self.nonzero();
        if nonzero == 0 {
            return;
        }
        if 2 + nonzero * (2 + HASH_BYTES) < len * HASH_BYTES {
            out.push(SPARSE);
            out.extend_from_slice(&(nonzero as u16).to_le_bytes());
            self.for_each(|i, _| out.extend_from_slice(&(i as u16).to_le_bytes()));
            self.for_each(|_, h| out.extend_from_slice(&h.to_bytes()));
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
            let count = u16_at(bytes, 1).map(usize::from).ok_or_else(|| short(3))?;
            if count == 0 || count > len {
                return Err(bad(location, format!("{count} nodes in a page of {len}")));
            }
            let used = 3 + count * (2 + HASH_BYTES);
            if bytes.len() < used {
                return Err(short(used));
            }
            let mut last = None;
            for i in 0..count {
                let at = 3 + 2 * i;
                let o = u16_at(bytes, at).ok_or_else(|| short(at + 2))?;
                if usize::from(o) >= len || last.is_some_and(|l| o <= l) {
                    return Err(bad(
                        location,
                        format!("node offset {o} out of order or range"),
                    ));
                }
                last = Some(o);
                let h = hash_at(3 + 2 * count + i * HASH_BYTES)?;
                if h.is_zero() {
                    return Err(bad(location, format!("zero hash listed at offset {o}")));
                }
                node(usize::from(o), h);
            }
            Ok(used)
        }
        Some(&kind) => Err(bad(location, format!("page kind {kind} (0 or 1)"))),
        None => Err(short(1)),
    }
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
            prop_assert_eq!(back, expected);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600), len in 1usize..300) {
            let _ = decode_nodes(&bytes, len, &String::new, &mut |_, _| {});
        }
    }
}
