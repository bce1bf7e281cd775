//! Internals exposed to this crate's own benches, examples and tests (not a stable API):
//! the in-memory tree, a snapshot load, the wall clock's offset, and a counting allocator.

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

static LIVE_BYTES: std::sync::atomic::AtomicIsize = std::sync::atomic::AtomicIsize::new(0);

/// The system allocator, counting the bytes it holds for the program. A test or example
/// installs it (`#[global_allocator] static A: CountingAllocator = CountingAllocator;`)
/// and reads [`CountingAllocator::live_bytes`].
pub struct CountingAllocator;

impl CountingAllocator {
    /// Bytes allocated and not yet freed, through this allocator.
    pub fn live_bytes() -> isize {
        LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count(delta: isize) {
        LIVE_BYTES.fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }
}

// SAFETY: every call is passed on unchanged to the system allocator; the counter beside
// it is only arithmetic.
unsafe impl std::alloc::GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::count(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        Self::count(layout.size() as isize);
        // SAFETY: as for `alloc`. (The default would write the zeros itself and make
        // every page of a large zeroed allocation resident at once.)
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        Self::count(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        Self::count(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`, and `new_size` is the caller's valid new size.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}
