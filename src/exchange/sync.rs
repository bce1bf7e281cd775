//! Sync between two replicas: the diff's differences repaired on both sides, as the
//! resolver decides, in bounded batches.

use std::cmp::Ordering;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exchange::{Applied, Lookup, Repair, Replica, ANSWER_BUDGET};
use crate::record::Record;
use crate::Hash;

use super::diff::{expect_len, walk, DiffReport, Found};

/// The winner of a conflict, as decided by a [`Resolver`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Winner {
    /// Keep the local record (and copy it to the remote).
    Local,
    /// Take the remote record.
    Remote,
}

/// Decides which record of a differing key wins. The default ([`newest_wins`]) picks the
/// higher version; an embedding system can supply its own (e.g. to merge siblings).
pub type Resolver = dyn Fn(&[u8], Option<&Record>, Option<&Record>) -> Winner + Sync;

/// Higher version wins; at equal versions a tombstone wins, then the larger value hash
/// (compared as its bytes), so both sides reach the same decision. A tie (the same
/// record) keeps the local one.
pub fn newest_wins(_key: &[u8], local: Option<&Record>, remote: Option<&Record>) -> Winner {
    let rank = |r: &Record| rank(r.version, r.tombstone, r.value_hash);
    match (local, remote) {
        (Some(l), Some(r)) => match rank(l).cmp(&rank(r)) {
            Ordering::Less => Winner::Remote,
            _ => Winner::Local,
        },
        (None, Some(_)) => Winner::Remote,
        _ => Winner::Local,
    }
}

/// What [`newest_wins`] orders records by.
pub(crate) fn rank(version: u64, tombstone: bool, value_hash: Hash) -> impl Ord {
    (version, tombstone, value_hash.to_bytes())
}

/// How `sync` applies repairs.
pub struct SyncOptions<'a> {
    /// Repairs written per batch (one request to the remote per batch).
    pub batch: usize,
    /// Pause between batches, so a large divergence does not stall foreground writes.
    pub pause: Duration,
    /// Who wins a conflict.
    pub resolver: &'a Resolver,
    /// Called before each batch of repairs is written, with the keys and value bytes
    /// it carries; it may sleep (a rate limit). It returns true when the batch may go,
    /// or false to be asked again after one cheap request to the remote (its roots),
    /// which keeps a network peer from dropping the connection as idle: a throttle that
    /// must wait long waits in steps shorter than the peer's idle timeout.
    pub throttle: Option<&'a (dyn Fn(u64, u64) -> bool + Sync)>,
    /// Called after each batch with the report so far (progress for status displays).
    pub progress: Option<&'a (dyn Fn(&SyncReport) + Sync)>,
    /// For replicas that purge tombstones after this grace: a winning tombstone whose
    /// version is older than it (versions read as the store's clock, unix ms << 16) is
    /// not copied to a side that does not hold the key, which may have purged it. Copied
    /// there, it would start its grace again, and tombstones would bounce between
    /// replicas that purge at different moments forever. Counted in
    /// [`SyncReport::expired`]. `None` (the default): every winner is copied.
    pub tombstone_grace: Option<Duration>,
}

impl Default for SyncOptions<'_> {
    fn default() -> Self {
        SyncOptions {
            batch: 1024,
            pause: Duration::ZERO,
            resolver: &newest_wins,
            throttle: None,
            progress: None,
            tombstone_grace: None,
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// The walk's costs (round trips, nodes, bytes); its `differences` list is empty,
    /// see `differences`.
    pub diff: DiffReport,
    /// Keys found different (each repaired on one side, skipped or refused).
    pub differences: u64,
    /// Records written locally.
    pub repaired_local: u64,
    /// Records written remotely.
    pub repaired_remote: u64,
    /// Repairs skipped because the key changed during the exchange.
    pub skipped: u64,
    /// Remote records this side refused (version too far ahead of its clock, or value
    /// not matching its hash).
    pub refused_local: u64,
    /// Local records the remote side refused.
    pub refused_remote: u64,
    /// Local records whose bytes fail their hash or do not decode: never shipped, and
    /// replaced by the remote's record where it has one.
    pub corrupt_local: u64,
    /// Remote records found corrupt, likewise.
    pub corrupt_remote: u64,
    /// Key and value bytes of the repairs sent to either side.
    pub repaired_bytes: u64,
    /// Tombstones past [`SyncOptions::tombstone_grace`] not copied to a side that does
    /// not hold their key.
    pub expired: u64,
}

/// Diffs one partition and repairs both sides: each differing key gets the record the
/// resolver picks, written only where it is not already, and only if the key has not
/// changed since the diff saw it. Differences are repaired page by page as the walk
/// finds them, so memory stays bounded by the page size however far apart the replicas
/// are; the report counts them (`differences`) and keeps the walk's costs in `diff`
/// (whose `differences` list stays empty).
///
/// Local repairs are written on a second thread while the walk asks the remote for
/// the next page (at most [`ANSWER_BUDGET`] bytes of them wait), so the remote's
/// reading and this side's writing overlap: a new replica's bootstrap runs at the pace
/// of the slower of the two.
pub fn sync(
    local: &(dyn Replica + Sync),
    remote: &dyn Replica,
    partition: u32,
    options: &SyncOptions<'_>,
) -> Result<SyncReport> {
    let mut report = SyncReport::default();
    let mut walked = DiffReport {
        partition,
        ..DiffReport::default()
    };
    let batch = options.batch.clamp(1, 4096);
    let mut batches = 0u64;
    let (to_writer, batches_in) = crossbeam_channel::unbounded::<Vec<Repair>>();
    let (applied_out, applied_in) = crossbeam_channel::unbounded::<Applied>();
    let backlog = Backlog::new(ANSWER_BUDGET);
    std::thread::scope(|scope| {
        let backlog = &backlog;
        // One writer: on two cores a second one only added contention (measured: no
        // faster, 17% more CPU).
        let writer = scope.spawn(move || -> Result<()> {
            // Ends when the walk is done, or on an error: then the walk, waiting or
            // sending, stops too.
            let _closing = Closing(backlog);
            for repairs in batches_in {
                let applied = apply_all(local, partition, &repairs);
                backlog.release(repairs.iter().map(repair_size).sum());
                applied_out
                    .send(applied?)
                    .map_err(|_| Error::Protocol("the sync stopped".into()))?;
            }
            Ok(())
        });
        let walked_ok = walk(
            local,
            remote,
            partition,
            true,
            &mut walked,
            &mut |found, _| {
                report.differences += found.len() as u64;
                let mut found = found.into_iter().peekable();
                while found.peek().is_some() {
                    let chunk: Vec<Found> = found.by_ref().take(batch).collect();
                    if batches > 0 && !options.pause.is_zero() {
                        std::thread::sleep(options.pause);
                    }
                    batches += 1;
                    let to_local = repair(local, remote, partition, chunk, options, &mut report)?;
                    if !to_local.is_empty() {
                        backlog.acquire(to_local.iter().map(repair_size).sum());
                        if to_writer.send(to_local).is_err() {
                            // The writer failed; its error is reported below.
                            return Err(Error::Protocol("the local writer stopped".into()));
                        }
                    }
                    for applied in applied_in.try_iter() {
                        count_local(&mut report, applied);
                    }
                    if let Some(progress) = options.progress {
                        progress(&report);
                    }
                }
                Ok(())
            },
        );
        drop(to_writer);
        backlog.close();
        let written = writer
            .join()
            .unwrap_or_else(|_| Err(Error::Protocol("the local writer panicked".into())));
        for applied in applied_in.try_iter() {
            count_local(&mut report, applied);
        }
        // The writer's own error explains a walk stopped for it.
        written.and(walked_ok)
    })?;
    report.diff = walked;
    Ok(report)
}

/// Bytes of repairs waiting for the local writer, bounded: the walk waits while more
/// than the budget waits (one batch always passes, however large).
struct Backlog {
    budget: usize,
    queued: Mutex<(usize, bool)>,
    changed: Condvar,
}

impl Backlog {
    fn new(budget: usize) -> Backlog {
        Backlog {
            budget,
            queued: Mutex::new((0, false)),
            changed: Condvar::new(),
        }
    }

    fn acquire(&self, bytes: usize) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        while queued.0 > 0 && queued.0 + bytes > self.budget && !queued.1 {
            queued = self.changed.wait(queued).unwrap_or_else(|p| p.into_inner());
        }
        queued.0 += bytes;
    }

    fn release(&self, bytes: usize) {
        let mut queued = self.queued.lock().unwrap_or_else(|p| p.into_inner());
        queued.0 = queued.0.saturating_sub(bytes);
        self.changed.notify_all();
    }

    /// The writer is gone (or the walk is over): nobody waits any more.
    fn close(&self) {
        self.queued.lock().unwrap_or_else(|p| p.into_inner()).1 = true;
        self.changed.notify_all();
    }
}

/// Closes the backlog when the writer ends, however it ends.
struct Closing<'a>(&'a Backlog);

impl Drop for Closing<'_> {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn repair_size(r: &Repair) -> usize {
    r.key.len() + r.record.value.len() + 64
}

fn count_local(report: &mut SyncReport, applied: Applied) {
    report.repaired_local += applied.written;
    report.skipped += applied.stale;
    report.refused_local += applied.refused;
}

/// Repairs one batch of differing keys on the remote side and returns those for this
/// side (which the caller writes).
fn repair(
    local: &dyn Replica,
    remote: &dyn Replica,
    partition: u32,
    mut chunk: Vec<Found>,
    options: &SyncOptions<'_>,
    report: &mut SyncReport,
) -> Result<Vec<Repair>> {
    // A key the walk found absent on one side is not read there again (the repair is
    // conditional on its absence anyway), nor is a record the walk already fetched: a
    // new replica reads nothing of its own and asks the remote for nothing more.
    let mine = lookup(local, partition, &mut chunk, |f| {
        f.difference.local.is_some().then_some(None)
    })?;
    let theirs = lookup(remote, partition, &mut chunk, |f| {
        f.difference
            .remote
            .is_some()
            .then(|| f.remote_record.take())
    })?;
    let (mut to_local, mut to_remote) = (Vec::new(), Vec::new());
    // Versions at or below this are tombstones a purging replica may have dropped.
    let expired_below = options.tombstone_grace.map(|grace| {
        let now = crate::clock::unix_ms_not_ahead() << 16;
        now.saturating_sub(crate::clock::hlc_span(grace))
    });
    let expired = |record: &Record| {
        record.tombstone && expired_below.is_some_and(|below| record.version < below)
    };
    for ((f, l), r) in chunk.into_iter().zip(mine).zip(theirs) {
        let d = f.difference;
        let expected_local = d.local.as_ref().map(|e| e.hash);
        let expected_remote = d.remote.as_ref().map(|e| e.hash);
        report.corrupt_local += u64::from(l == Lookup::Corrupt);
        report.corrupt_remote += u64::from(r == Lookup::Corrupt);
        // A corrupt record counts as absent: it is never shipped, and the other side's
        // good record (if any) replaces it. Records read now may be newer than the diff;
        // the conditional write then skips them rather than act on a stale view.
        let (l, r) = (found(l), found(r));
        match (options.resolver)(&d.key, l.as_ref(), r.as_ref()) {
            Winner::Local => {
                if let Some(record) = l {
                    if d.remote.is_none() && expired(&record) {
                        report.expired += 1;
                        continue;
                    }
                    to_remote.push(Repair {
                        key: d.key,
                        expected: expected_remote,
                        record,
                    });
                }
            }
            Winner::Remote => {
                if let Some(record) = r {
                    if d.local.is_none() && expired(&record) {
                        report.expired += 1;
                        continue;
                    }
                    to_local.push(Repair {
                        key: d.key,
                        expected: expected_local,
                        record,
                    });
                }
            }
        }
    }
    let bytes: usize = to_local
        .iter()
        .chain(&to_remote)
        .map(|r| r.key.len() + r.record.value.len())
        .sum();
    report.repaired_bytes += bytes as u64;
    if let Some(throttle) = options.throttle {
        while !throttle((to_local.len() + to_remote.len()) as u64, bytes as u64) {
            remote.roots(&[partition])?;
        }
    }
    let there = apply_all(remote, partition, &to_remote)?;
    report.repaired_remote += there.written;
    report.skipped += there.stale;
    report.refused_remote += there.refused;
    Ok(to_local)
}

/// The records of the keys of `chunk`, in order: `Absent` where `known` says the key is
/// absent on `replica` (`None`), the record the walk already fetched where it hands it
/// over (`Some(Some(_))`, moved out of the chunk, not copied), and the others read in
/// one request.
fn lookup(
    replica: &dyn Replica,
    partition: u32,
    chunk: &mut [Found],
    mut known: impl FnMut(&mut Found) -> Option<Option<Lookup>>,
) -> Result<Vec<Lookup>> {
    let known: Vec<Option<Option<Lookup>>> = chunk.iter_mut().map(&mut known).collect();
    let keys: Vec<Vec<u8>> = chunk
        .iter()
        .zip(&known)
        .filter(|(_, k)| matches!(k, Some(None)))
        .map(|(f, _)| f.difference.key.clone())
        .collect();
    let read = if keys.is_empty() {
        Vec::new()
    } else {
        replica.records(partition, &keys)?
    };
    expect_len("records", keys.len(), read.len(), read.len())?;
    let mut read = read.into_iter();
    Ok(known
        .into_iter()
        .map(|k| match k {
            None => Lookup::Absent,
            Some(Some(record)) => record,
            Some(None) => read.next().unwrap_or(Lookup::Absent),
        })
        .collect())
}

fn found(lookup: Lookup) -> Option<Record> {
    match lookup {
        Lookup::Found(r) => Some(r),
        Lookup::Absent | Lookup::Corrupt => None,
    }
}

/// Applies `repairs`, checking that the replica accounted for each one.
fn apply_all(replica: &dyn Replica, partition: u32, repairs: &[Repair]) -> Result<Applied> {
    if repairs.is_empty() {
        return Ok(Applied::default());
    }
    let applied = replica.apply(partition, repairs)?;
    let total = applied
        .written
        .checked_add(applied.stale)
        .and_then(|n| n.checked_add(applied.refused));
    if total != Some(repairs.len() as u64) {
        return Err(Error::Protocol(format!(
            "replica accounted for {} written, {} stale and {} refused of {} repairs",
            applied.written,
            applied.stale,
            applied.refused,
            repairs.len()
        )));
    }
    Ok(applied)
}
