//! Opening a store: the directory, sled, the format check and migration, an
//! interrupted drop finished, the index recovered (`recovery`), and the hasher started.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::base::{self, Base};
use crate::clock::Clock;
use crate::dropping;
use crate::error::{Error, Result};
use crate::file::{sync_dir, sync_tree};
use crate::flush::GroupCommit;
use crate::hasher::{Hasher, Msg, Request};
use crate::index::Index;
use crate::marks::Marks;
use crate::meta::Meta;
use crate::migrate;
use crate::options::Options;
use crate::recovery::{prepare_dir, recover, OpenReport, Sources, SLED_DIR};
use crate::snapshot::Early;
use crate::FORMAT_VERSION;

use super::Store;

impl Store {
    pub(super) fn open_inner(dir: &Path, mut options: Options, adopt_shape: bool) -> Result<Store> {
        options.validate()?;
        let created_dirs = prepare_dir(dir, &options)?;
        // Anchors the wall clock that tombstones' times follow (the first open does):
        // one set forward or back from here on cannot hasten a purge.
        crate::clock::steady_unix_ms();
        // Read while sled opens, for the recovery below to take if it is the one wanted.
        let mut early = if created_dirs.is_empty() {
            Early::start(dir)
        } else {
            Early::none(dir)
        };
        let db = open_sled(dir, &options)?;
        // A new store's directory entries (its own, its parents' if they were made, and
        // sled's) must survive power loss before the first flush returns.
        for created in &created_dirs {
            sync_dir(created)?;
        }
        let meta = Meta::new(db.open_tree("meta")?);
        let created = meta.is_new()?;
        if created && !options.create_if_missing {
            return Err(Error::NotAStore {
                path: dir.to_path_buf(),
                reason: "its database holds no merkle-index metadata".into(),
            });
        }
        if adopt_shape {
            if let Some((width, levels)) = meta.shape()? {
                options.width = width;
                options.levels = levels;
            }
        }
        let shape = options.validate()?;
        let data = db.open_tree("data")?;
        if created {
            meta.init(shape)?;
            sync_tree(&dir.join(SLED_DIR))?;
        } else if meta.check(shape)? < FORMAT_VERSION {
            migrate::to_current(&db, &data, &meta)?;
        }
        let started = Instant::now();
        let buckets = db.open_tree("index")?;
        let quarantine = db.open_tree("quarantine")?;
        let marks_tree = db.open_tree("marks")?;
        let changed = db.open_tree("changed")?;
        // A snapshot still holds the trees of a drop a crash interrupted: it serves no
        // clean open, and as a base its `changed` lists them whole (before they are
        // removed), so recovery reads them from their buckets, which are gone.
        let interrupted = meta.dropping()?;
        if !interrupted.is_empty() {
            meta.set_state(false, 0)?;
            base::list_whole(&changed, &interrupted)?;
        }
        let finished = dropping::finish_interrupted(
            &meta,
            &dropping::Trees {
                data: &data,
                buckets: &buckets,
                marks: &marks_tree,
                quarantine: &quarantine,
            },
        )?;
        let marks = Marks::new(marks_tree, options.region_segments, shape.segments);
        let sources = Sources {
            early: &mut early,
            meta: &meta,
            data: &data,
            buckets: &buckets,
            changed: &changed,
            marks: &marks,
        };
        let found = recover(dir, shape, sources, created)?;
        // Joined, if recovery did not take it.
        drop(early);
        // From here on the snapshot is no clean close's: it is at most the base of a
        // recovery (`base.rs`), and only while `meta.base` names it.
        meta.set_state(false, 0)?;
        match found.base {
            Some(epoch) => meta.set_base(Some(epoch))?,
            None => base::forget(dir, &meta)?,
        }
        // No flush needed for these: sled recovers a gap-free prefix of its log, so they
        // are durable before any later write is, and until one is, the snapshot they
        // retire still matches the data. A drop finished here is made durable at once
        // (its removals are many), and a new store's metadata should not wait for its
        // first write: those paths flush.
        if finished > 0 || created {
            db.flush()?;
        }
        let base = Base::new(dir, changed, found.base, found.needs_checkpoint);
        let index = Arc::new(Index::new(
            shape,
            db,
            data,
            buckets,
            quarantine,
            meta,
            marks,
            base,
            found.trees,
            found.epoch,
            Clock::new(found.clock, options.max_clock_drift),
        )?);
        let hasher = Hasher::spawn(
            Arc::clone(&index),
            options.channel_capacity,
            options.checkpoint_interval,
        )?;
        if found.needs_checkpoint {
            // Persist the recovered index in the background; until that checkpoint lands
            // the marks stay, so a crash meanwhile repeats this recovery, nothing worse.
            let request = Request::Checkpoint(found.full, crossbeam_channel::bounded(1).0);
            hasher.send(Msg::Request(request))?;
        }
        Ok(Store {
            dir: dir.to_path_buf(),
            index,
            hasher,
            flushes: GroupCommit::default(),
            foreground: AtomicU64::new(0),
            report: OpenReport {
                recovery: found.recovery,
                duration: started.elapsed(),
            },
            closed: false,
        })
    }
}

/// Opens sled, waiting up to a second for its lock: sled's I/O threads release the
/// database file a moment after the previous handle is dropped, so a close followed at
/// once by an open (in this process) would otherwise fail. A store held by a live process
/// still fails, after that second, with [`Error::InUse`].
fn open_sled(dir: &Path, options: &Options) -> Result<sled::Db> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let opened = sled::Config::new()
            .path(dir.join(SLED_DIR))
            .cache_capacity(options.cache_bytes)
            .open();
        match opened {
            Err(sled::Error::Io(e)) if e.to_string().contains("could not acquire lock") => {
                if Instant::now() >= deadline {
                    return Err(Error::InUse(dir.to_path_buf()));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return Ok(other?),
        }
    }
}
