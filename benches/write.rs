//! Write path: puts/s through the store versus bare sled doing the same, in the same run,
//! same keys, same sled config. Workloads: new keys (100 B and 1 KiB), overwrites of
//! existing keys, 2 and 4 writer threads, a flush every 100 puts (against bare sled with
//! the same durability, and with sled's own flush), 4 threads each flushing every 10
//! puts, and a partitioned store (64 partitions). Keys are random (see `common::key`);
//! `ratio/new_ordered` also writes keys in key order, where bare sled appends to its
//! last leaf and the store, which places every key by a hash, cannot.
//!
//! The `ratio` group runs the main workloads again with the store and bare sled in
//! alternating rounds (`cargo bench --bench write -- ratio`), the steadier comparison
//! on a noisy machine.
//!
//! Every case starts from 300k keys loaded untimed (20k under `--test`), so the store is
//! measured in the steady state of a checkpoint interval; `put_cold` measures the worst
//! case, the first write to each region after a checkpoint. Every write stores new bytes
//! (a counter in the value): sled 0.34 returns early, writing nothing, when an insert's
//! value equals the stored one, so overwriting with an unchanged value would measure
//! bare sled doing a read.

mod common;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use merkle_index::{Record, Store};

const BATCH: u64 = 2_000;

/// What one case writes: new keys (counting up from the preload) or existing ones.
#[derive(Clone, Copy)]
enum Keys {
    New,
    Overwrite,
    /// New keys that arrive in key order (a big-endian counter), the preload too.
    NewOrdered,
}

impl Keys {
    /// The user key numbered `i`.
    fn key(self, i: u64) -> [u8; 16] {
        match self {
            Keys::NewOrdered => {
                let mut k = [0u8; 16];
                k[8..].copy_from_slice(&i.to_be_bytes());
                k
            }
            Keys::New | Keys::Overwrite => common::key(i),
        }
    }
}

/// The engine under test: the store, or bare sled holding the same keys.
trait Engine: Sync {
    /// Writes `value` under `key`, the user key numbered `i`.
    fn put(&self, i: u64, key: &[u8], value: &[u8]);
    /// Makes writes durable as `Store::flush` does (bare sled: its flush plus an fsync of
    /// its files, or only its own flush when `fsync` is false).
    fn flush(&self);
}

struct StoreEngine {
    store: Store,
    partitions: u32,
    /// Write through `Store::replicate` (a replica applying replication messages), with
    /// versions counting up from this one, instead of `put`.
    replicated: Option<AtomicU64>,
}

impl Engine for StoreEngine {
    fn put(&self, i: u64, key: &[u8], value: &[u8]) {
        let p = (i % u64::from(self.partitions)) as u32;
        match &self.replicated {
            Some(next) => {
                let record = Record::value(next.fetch_add(1, Relaxed), value);
                assert!(self.store.replicate(p, key, &record).unwrap());
            }
            None => {
                self.store.partition(p).put(key, value).unwrap();
            }
        }
    }
    fn flush(&self) {
        self.store.flush().unwrap();
    }
}

struct SledEngine {
    db: sled::Db,
    tree: sled::Tree,
    dir: std::path::PathBuf,
    fsync: bool,
    /// Lay keys and values out as the store does (partition and segment before the
    /// key, a 26-byte record header before the value), with no index work.
    layout: bool,
}

impl Engine for SledEngine {
    fn put(&self, _: u64, key: &[u8], value: &[u8]) {
        if self.layout {
            let segment = merkle_index::segment_of(key, 1 << 20);
            let mut k = Vec::with_capacity(8 + key.len());
            k.extend_from_slice(&0u32.to_be_bytes());
            k.extend_from_slice(&segment.to_be_bytes());
            k.extend_from_slice(key);
            let mut v = Vec::with_capacity(26 + value.len());
            v.extend_from_slice(&[1u8; 26]);
            v.extend_from_slice(value);
            self.tree.insert(k, v).unwrap();
        } else {
            self.tree.insert(key, value).unwrap();
        }
    }
    fn flush(&self) {
        self.db.flush().unwrap();
        if self.fsync {
            common::fsync_tree(&self.dir);
        }
    }
}

/// One timed round: `threads` writers of `per_thread` puts each, flushing every
/// `flush_every` puts (0: never).
struct Workload<'a> {
    keys: Keys,
    value: &'a [u8],
    threads: u64,
    per_thread: u64,
    flush_every: u64,
    /// Keys preloaded (overwrites pick among them).
    preload: u64,
}

impl<'a> Workload<'a> {
    /// `threads` writers sharing a round of [`BATCH`] puts of `value`, after 30% of the
    /// bench's key count is preloaded.
    fn new(keys: Keys, value: &'a [u8], threads: u64, flush_every: u64) -> Workload<'a> {
        Workload {
            keys,
            value,
            threads,
            per_thread: BATCH / threads,
            flush_every,
            preload: common::big_keys() * 3 / 10,
        }
    }
}

/// A group of 10 samples over `secs` seconds, counted in puts.
fn bench_group<'c>(
    c: &'c mut Criterion,
    name: &str,
    secs: u64,
) -> criterion::BenchmarkGroup<'c, criterion::measurement::WallTime> {
    let mut g = c.benchmark_group(name);
    g.sample_size(10)
        .measurement_time(Duration::from_secs(secs))
        .throughput(Throughput::Elements(BATCH));
    g
}

/// Runs one round against `engine`; `next` numbers the writes. Returns the wall time.
fn run(engine: &dyn Engine, w: &Workload<'_>, next: &AtomicU64) -> Duration {
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..w.threads {
            scope.spawn(move || {
                // Every write carries new bytes: sled skips an insert whose value equals
                // the stored one, so an unchanged value would time a read, not a write.
                let mut value = w.value.to_vec();
                for n in 0..w.per_thread {
                    let i = match w.keys {
                        Keys::New | Keys::NewOrdered => next.fetch_add(1, Relaxed),
                        // Spread over the preloaded keys, differently per thread.
                        Keys::Overwrite => {
                            (next.fetch_add(1, Relaxed).wrapping_mul(7919) + t) % w.preload
                        }
                    };
                    let stamp = next.fetch_add(0, Relaxed) ^ (t << 56) ^ n;
                    for (b, s) in value.iter_mut().zip(stamp.to_le_bytes()) {
                        *b = s;
                    }
                    engine.put(i, &w.keys.key(i), &value);
                    if w.flush_every > 0 && (n + 1) % w.flush_every == 0 {
                        engine.flush();
                    }
                }
            });
        }
    });
    start.elapsed()
}

fn preload(engine: &dyn Engine, keys: Keys, n: u64, value: &[u8]) {
    for i in 0..n {
        engine.put(i, &keys.key(i), value);
    }
}

fn store_engine(dir: &std::path::Path, partitions: u32) -> StoreEngine {
    StoreEngine {
        store: Store::open(dir, common::options()).unwrap(),
        partitions,
        replicated: None,
    }
}

/// How the store takes the writes of a `ratio` case.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Via {
    Put,
    /// Replication messages (`Store::replicate`), each newer than the stored record.
    Replicate,
}

fn sled_engine(dir: &std::path::Path, fsync: bool, layout: bool) -> SledEngine {
    let db = common::bare_sled(dir);
    let tree = db.open_tree("data").unwrap();
    SledEngine {
        db,
        tree,
        dir: dir.to_path_buf(),
        fsync,
        layout,
    }
}

/// One case for every engine: the store and its bare-sled baselines.
#[allow(clippy::too_many_arguments)]
fn case(
    c: &mut Criterion,
    group: &str,
    keys: Keys,
    size: usize,
    threads: u64,
    flush_every: u64,
    partitions: u32,
    baselines: &[(&str, bool, bool)],
) {
    let mut g = bench_group(c, group, 6);
    let value = vec![5u8; size];
    let w = Workload::new(keys, &value, threads, flush_every);
    let n = w.preload;
    let dir = tempfile::tempdir().unwrap();
    let store = store_engine(dir.path(), partitions);
    preload(&store, keys, n, &value);
    store.store.sync_index().unwrap();
    let next = AtomicU64::new(n);
    g.bench_function(BenchmarkId::new("store", size), |b| {
        b.iter_custom(|iters| (0..iters).map(|_| run(&store, &w, &next)).sum())
    });
    let stats = store.store.flush_stats();
    if flush_every > 0 && stats.calls > 0 {
        eprintln!(
            "{group}: {} flush calls, {} syncs ({:.2} per call)",
            stats.calls,
            stats.syncs,
            stats.syncs as f64 / stats.calls as f64
        );
    }
    drop(store);
    for &(name, fsync, layout) in baselines {
        let dir = tempfile::tempdir().unwrap();
        let sled = sled_engine(dir.path(), fsync, layout);
        preload(&sled, keys, n, &value);
        let next = AtomicU64::new(n);
        g.bench_function(BenchmarkId::new(name, size), |b| {
            b.iter_custom(|iters| (0..iters).map(|_| run(&sled, &w, &next)).sum())
        });
    }
    g.finish();
}

const BARE: &[(&str, bool, bool)] = &[("bare_sled", false, false)];
/// Also bare sled with the store's key and value layout: what the layout costs sled,
/// apart from the index.
const BARE_AND_LAYOUT: &[(&str, bool, bool)] = &[
    ("bare_sled", false, false),
    ("bare_sled_store_layout", false, true),
];
const DURABLE: &[(&str, bool, bool)] = &[
    ("bare_sled_same_durability", true, false),
    ("bare_sled_own_flush", false, false),
];

fn puts(c: &mut Criterion) {
    case(c, "put_new", Keys::New, 100, 1, 0, 1, BARE_AND_LAYOUT);
    case(c, "put_new", Keys::New, 1024, 1, 0, 1, BARE_AND_LAYOUT);
    case(c, "put_overwrite", Keys::Overwrite, 100, 1, 0, 1, BARE);
    case(c, "put_new_2_threads", Keys::New, 100, 2, 0, 1, BARE);
    case(c, "put_new_4_threads", Keys::New, 100, 4, 0, 1, BARE);
    case(
        c,
        "put_overwrite_2_threads",
        Keys::Overwrite,
        100,
        2,
        0,
        1,
        BARE,
    );
    case(
        c,
        "put_overwrite_4_threads",
        Keys::Overwrite,
        100,
        4,
        0,
        1,
        BARE,
    );
    case(c, "put_new_64_partitions", Keys::New, 100, 1, 0, 64, BARE);
    case(c, "flush_every_100", Keys::New, 100, 1, 100, 1, DURABLE);
    case(
        c,
        "flush_every_10_4_threads",
        Keys::New,
        100,
        4,
        10,
        1,
        DURABLE,
    );
    case(
        c,
        "flush_every_10_1_thread",
        Keys::New,
        100,
        1,
        10,
        1,
        DURABLE,
    );
}

/// The same workload on the store and on bare sled in alternating rounds, every engine
/// loaded side by side: each criterion iteration times one store round, then one round
/// of bare sled with plain keys and one of bare sled with the store's key and value
/// layout, so the machine's drift weighs on all alike (one after the other, as in
/// `case`, the ratio of one case moved by up to 0.18 between runs). Prints the ratios of
/// the summed times (bare sled / store) over every round: against plain sled, the
/// target; against the layout, what the index work costs.
#[allow(clippy::too_many_arguments)]
fn interleaved(
    c: &mut Criterion,
    name: &str,
    keys: Keys,
    size: usize,
    threads: u64,
    flush_every: u64,
    via: Via,
) {
    let mut g = bench_group(c, "ratio", 8);
    let value = vec![5u8; size];
    let w = Workload::new(keys, &value, threads, flush_every);
    let n = w.preload;
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut store = store_engine(dirs[0].path(), 1);
    if via == Via::Replicate {
        // Versions of the store's clock (unix ms << 16), from now on.
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        store.replicated = Some(AtomicU64::new(now_ms << 16));
    }
    preload(&store, keys, n, &value);
    store.store.sync_index().unwrap();
    // With flushes, the baselines give the same durability (a flush and an fsync).
    let plain = sled_engine(dirs[1].path(), flush_every > 0, false);
    let layout = sled_engine(dirs[2].path(), flush_every > 0, true);
    preload(&plain, keys, n, &value);
    preload(&layout, keys, n, &value);
    let next: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(n)).collect();
    let mut totals = [Duration::ZERO; 3];
    g.bench_function(BenchmarkId::new(name, size), |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for _ in 0..iters {
                let t = run(&store, &w, &next[0]);
                timed += t;
                totals[0] += t;
                totals[1] += run(&plain, &w, &next[1]);
                totals[2] += run(&layout, &w, &next[2]);
            }
            timed
        })
    });
    g.finish();
    if !totals[0].is_zero() {
        let ratio = |t: Duration| t.as_secs_f64() / totals[0].as_secs_f64();
        eprintln!(
            "ratio/{name}/{size}: bare sled / store = {:.2}; bare sled with the store's layout / store = {:.2} (over {:.1} s of store rounds)",
            ratio(totals[1]),
            ratio(totals[2]),
            totals[0].as_secs_f64()
        );
    }
}

fn ratios(c: &mut Criterion) {
    interleaved(c, "new", Keys::New, 100, 1, 0, Via::Put);
    interleaved(c, "new", Keys::New, 1024, 1, 0, Via::Put);
    interleaved(c, "overwrite", Keys::Overwrite, 100, 1, 0, Via::Put);
    interleaved(c, "new_2_threads", Keys::New, 100, 2, 0, Via::Put);
    interleaved(c, "new_4_threads", Keys::New, 100, 4, 0, Via::Put);
    interleaved(
        c,
        "overwrite_2_threads",
        Keys::Overwrite,
        100,
        2,
        0,
        Via::Put,
    );
    interleaved(
        c,
        "overwrite_4_threads",
        Keys::Overwrite,
        100,
        4,
        0,
        Via::Put,
    );
    interleaved(c, "flush_every_100", Keys::New, 100, 1, 100, Via::Put);
    // Not a target: a replica's write path, replication messages overwriting keys.
    interleaved(
        c,
        "overwrite_replicated",
        Keys::Overwrite,
        100,
        1,
        0,
        Via::Replicate,
    );
    // Not a target: what hashed placement costs a writer whose keys come in key order.
    interleaved(c, "new_ordered", Keys::NewOrdered, 100, 1, 0, Via::Put);
}

/// The first write to every region after a checkpoint: each put also inserts a mark.
fn cold_puts(c: &mut Criterion) {
    let mut group = c.benchmark_group("put_cold");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(5));
    group.throughput(Throughput::Elements(BATCH));
    let value = [5u8; 100];
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), common::options()).unwrap();
    let mut next = 0u64;
    group.bench_function("store_after_checkpoint/100", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                store.checkpoint().unwrap();
                let start = Instant::now();
                for _ in 0..BATCH {
                    store.put(&common::key(next), &value).unwrap();
                    next += 1;
                }
                total += start.elapsed();
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, puts, cold_puts, ratios);
criterion_main!(benches);
