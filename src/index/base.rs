//! The base of crash recovery: the last snapshot file, kept while the store runs, and
//! the `changed` tree, which lists what the checkpoints since have rewritten.
//!
//! ```text
//! changed key: partition u32 BE                      (4 bytes): the partition's buckets
//!                                                     were rewritten whole or removed,
//!                                                     or most of them written
//!              index key (`bucket.rs`)               (9 bytes): that bucket was rewritten
//! changed value: empty
//! ```
//! After a crash the index is the base, with every listed bucket (and every bucket of a
//! listed partition) read from the `index` tree instead: exactly what reading every
//! bucket would give, for a fraction of the reads. A checkpoint lists what it is about to
//! write before writing it, so a bucket that differs from the base is always listed.
//!
//! The base is renewed (snapshot rewritten at the checkpoint's epoch, `changed` emptied,
//! `meta.base` set) at a clean close that changed anything, after a recovery, and when
//! the buckets written since the base pass half its size, but then at most once a
//! minute: a renewal costs the base's size and three fsyncs, which a checkpoint every
//! few seconds must not pay each time. Where most of a partition's buckets changed, the
//! checkpoint lists the partition and recovery reads it whole, in one pass, so a base
//! left old by busy checkpoints costs a recovery about what reading every bucket costs,
//! no more.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::bucket::{self, BucketId, INDEX_KEY_LEN};
use crate::error::{Corruption, Result};
use crate::index::{Index, Trees};
use crate::meta::Meta;
use crate::options::Shape;
use crate::parallel;
use crate::snapshot;
use crate::Hash;

/// Least time between two renewals that are not asked for (recovery, clean close).
const RENEWAL_INTERVAL: Duration = Duration::from_secs(60);

/// Keys of `changed` listed per sled batch (9 bytes each; a batch takes sled's
/// database-wide write lock).
const LISTED_PER_BATCH: usize = 4_096;

pub(crate) struct Base {
    dir: PathBuf,
    changed: sled::Tree,
    state: Mutex<State>,
}

struct State {
    /// Epoch of the snapshot file recovery starts from, if there is one.
    epoch: Option<u64>,
    /// Size of that file.
    bytes: u64,
    /// Bucket bytes written since it.
    changed_bytes: u64,
    /// Renew at the next checkpoint whatever the sizes (recovery, clean close).
    renew: bool,
    /// When this process last renewed it.
    renewed: Option<Instant>,
}

impl Base {
    /// `epoch`: the base the index was opened from, if any; `renew`: write a new one at
    /// the first checkpoint.
    pub(crate) fn new(dir: &Path, changed: sled::Tree, epoch: Option<u64>, renew: bool) -> Base {
        let bytes = epoch
            .and_then(|_| std::fs::metadata(dir.join(snapshot::SNAPSHOT_FILE)).ok())
            .map_or(0, |m| m.len());
        Base {
            dir: dir.to_path_buf(),
            changed,
            state: Mutex::new(State {
                epoch,
                bytes,
                changed_bytes: 0,
                renew,
                renewed: None,
            }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lists what a checkpoint is about to write, `(partition, whole, buckets)` each,
    /// in bounded batches that are durable before the buckets (the caller writes them
    /// after this returns, in the same sled log, which a crash cuts only at its end). A
    /// crash part-way leaves more listed than written, which costs recovery a read.
    pub(crate) fn record<'a>(
        &self,
        changes: impl Iterator<Item = (u32, bool, &'a [BucketId])>,
    ) -> Result<()> {
        let mut batch = sled::Batch::default();
        let mut queued = 0usize;
        let mut list = |key: &[u8]| -> Result<()> {
            batch.insert(key, &[]);
            queued += 1;
            if queued % LISTED_PER_BATCH == 0 {
                self.changed.apply_batch(std::mem::take(&mut batch))?;
            }
            Ok(())
        };
        for (partition, whole, buckets) in changes {
            if whole {
                list(&whole_key(partition))?;
            } else {
                for id in buckets {
                    list(&id.key())?;
                }
            }
        }
        self.changed.apply_batch(batch)?;
        Ok(())
    }

    /// Counts bucket bytes a checkpoint wrote, towards the next renewal.
    pub(crate) fn written(&self, bytes: u64) {
        self.state().changed_bytes += bytes;
    }

    /// Asks for a new base at the next checkpoint.
    pub(crate) fn request_renewal(&self) {
        self.state().renew = true;
    }

    /// The base's epoch, if the persisted index is still exactly the base: nothing
    /// listed in `changed` since it was written (every bucket write and every drop is),
    /// and no renewal asked for.
    pub(crate) fn unchanged(&self) -> Result<Option<u64>> {
        let s = self.state();
        match s.epoch {
            Some(epoch) if !s.renew => Ok(self.changed.is_empty().then_some(epoch)),
            _ => Ok(None),
        }
    }

    /// Whether the checkpoint that just persisted should also write a new base.
    pub(crate) fn due(&self) -> bool {
        let s = self.state();
        let grown = s.changed_bytes.saturating_mul(2) > s.bytes;
        let rested = s
            .renewed
            .map_or(true, |at| at.elapsed() >= RENEWAL_INTERVAL);
        s.epoch.is_none() || s.renew || (grown && rested)
    }

    /// Writes the snapshot of `index` at `epoch` (whose checkpoint has just been
    /// persisted, so the snapshot equals the buckets) and makes it the base. A crash
    /// part-way leaves `meta.base` naming the old epoch while the file holds the new
    /// one, which recovery refuses and so reads every bucket: slower, never wrong.
    pub(crate) fn renew(&self, index: &Index, epoch: u64) -> Result<()> {
        let bytes = snapshot::write(&self.dir, index.shape, epoch, &index.trees())?;
        self.changed.clear()?;
        index.meta.set_base(Some(epoch))?;
        index.db.flush()?;
        *self.state() = State {
            epoch: Some(epoch),
            bytes,
            changed_bytes: 0,
            renew: false,
            renewed: Some(Instant::now()),
        };
        Ok(())
    }
}

/// The key of `changed` that lists a partition whole.
fn whole_key(partition: u32) -> [u8; 4] {
    partition.to_be_bytes()
}

/// Lists `partitions` whole in `changed` (open, before it finishes their drops: the
/// base then reads them from their buckets, which the drops remove).
pub(crate) fn list_whole(changed: &sled::Tree, partitions: &[u32]) -> Result<()> {
    for &partition in partitions {
        changed.insert(whole_key(partition), &[])?;
    }
    Ok(())
}

/// A recovery's starting index, from the base.
pub(crate) struct Loaded {
    pub trees: Trees,
    /// Entries of `changed` applied: buckets, and partitions read whole.
    pub changed: u64,
}

/// The index as the buckets hold it: `trees`, the base snapshot's, with the buckets
/// listed in `changed` read in their place.
pub(crate) fn load(
    mut trees: Trees,
    shape: Shape,
    buckets: &sled::Tree,
    changed: &sled::Tree,
) -> Result<Loaded> {
    let mut whole = BTreeSet::new();
    let mut listed = Vec::new();
    for key in changed.iter().keys() {
        let key = key?;
        match key.len() {
            4 => whole.insert(u32::from_be_bytes([key[0], key[1], key[2], key[3]])),
            INDEX_KEY_LEN => {
                listed.push(BucketId::from_key(&key)?);
                continue;
            }
            found => {
                return Err(Corruption::BadLength {
                    what: "changed key",
                    location: format!("{:02x?}", &key[..]),
                    expected: INDEX_KEY_LEN,
                    found,
                }
                .into())
            }
        };
    }
    // A bucket of another span than its partition's in the base, or too wide to replace
    // in one call: read the partition whole; likewise where most of its buckets are
    // listed (one pass over them beats a look-up each).
    let page_len = shape.bucket_len(shape.levels);
    let mut per_partition = BTreeMap::<u32, (u64, u8)>::new();
    for id in &listed {
        let same_span = trees.get(&id.partition).map(|t| t.persisted_span) == Some(Some(id.span));
        let narrow = id
            .pages(shape)
            .is_some_and(|(_, count)| count * page_len <= u64::from(u32::MAX));
        if !same_span || !narrow {
            whole.insert(id.partition);
        }
        per_partition.entry(id.partition).or_insert((0, id.span)).0 += 1;
    }
    for (partition, (count, span)) in per_partition {
        if count.saturating_mul(2) > bucket::buckets_per_partition(shape, span) {
            whole.insert(partition);
        }
    }
    listed.retain(|id| !whole.contains(&id.partition));
    let read = whole.len() as u64 + listed.len() as u64;
    for partition in &whole {
        trees.remove(partition);
    }
    trees.extend(Index::load_buckets(shape, buckets, Some(&whole))?);
    let fetched = parallel::map(
        &listed,
        |&id| {
            let (first, count) = id.pages(shape).ok_or_else(|| Corruption::OutOfRange {
                what: "changed bucket",
                location: id.describe(),
                detail: "past the tree".into(),
            })?;
            let mut segments: Vec<(u32, Hash)> = Vec::new();
            if let Some(bytes) = buckets.get(id.key())? {
                bucket::decode(id, shape, &bytes, &mut |s, h| segments.push((s, h)))?;
            }
            Ok((first * page_len, count * page_len, segments))
        },
        &mut || {},
    )?;
    for (id, (first, count, segments)) in listed.iter().zip(fetched) {
        if let Some(tree) = trees.get_mut(&id.partition) {
            // In range: `pages` put the bucket inside the tree, and it is narrow.
            tree.replace_segments(first as u32, count as u32, &segments);
        }
    }
    // As read from the buckets: nothing to persist, and no tree without a bucket.
    trees.retain(|_, tree| !tree.is_empty());
    for tree in trees.values_mut() {
        tree.clear_dirty();
    }
    Ok(Loaded {
        trees,
        changed: read,
    })
}

/// Forgets the base: no later recovery may start from the file.
pub(crate) fn forget(dir: &Path, meta: &Meta) -> Result<()> {
    meta.set_base(None)?;
    snapshot::remove(dir)
}
