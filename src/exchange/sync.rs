//! Diff and sync between two replicas: descend only where hashes differ, then exchange
//! only the entries of differing segments.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exchange::{Applied, Lookup, Repair, Replica, SegmentItem, ANSWER_BUDGET};
use crate::record::Record;
use crate::store::Entry;
use crate::{Hash, HASH_BYTES};

/// One key that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The user key.
    pub key: Vec<u8>,
    /// The local entry, if the key exists locally.
    pub local: Option<Entry>,
    /// The remote entry, if the key exists remotely.
    pub remote: Option<Entry>,
}

/// A difference as the walk finds it, with the remote's record when the walk fetched it
/// already (a segment empty here: every key of it is copied, so the records come with
/// the entries).
struct Found {
    difference: Difference,
    remote_record: Option<Lookup>,
}

/// What a diff found and what it cost.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiffReport {
    /// The partition compared.
    pub partition: u32,
    /// Differing keys, in segment order.
    pub differences: Vec<Difference>,
    /// Requests made to the remote side (each one batch).
    pub round_trips: u32,
    /// Tree nodes compared, over all levels.
    pub nodes_compared: u64,
    /// Segments whose entries were listed.
    pub segments_compared: u64,
    /// Hash and entry bytes received from the remote side (payload, not framing).
    pub payload_bytes: u64,
}

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

/// Higher version wins; at equal versions a tombstone wins, then the larger entry hash,
/// so both sides reach the same decision.
pub fn newest_wins(_key: &[u8], local: Option<&Record>, remote: Option<&Record>) -> Winner {
    let rank = |r: &Record| (r.version, r.tombstone, r.value_hash.to_bytes());
    match (local, remote) {
        (Some(l), Some(r)) => match rank(l).cmp(&rank(r)) {
            Ordering::Less => Winner::Remote,
            _ => Winner::Local,
        },
        (None, Some(_)) => Winner::Remote,
        _ => Winner::Local,
    }
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
}

impl Default for SyncOptions<'_> {
    fn default() -> Self {
        SyncOptions {
            batch: 1024,
            pause: Duration::ZERO,
            resolver: &newest_wins,
            throttle: None,
            progress: None,
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
}

/// Nodes whose children one step of the walk compares, and segments whose entries one
/// request compares: the walk's memory and every request stay bounded however far apart
/// the replicas are (an empty replica against a full one walks every node, page by page).
pub const PAGE: usize = 16_384;

/// Compares one partition of two replicas by alternating descent: each request carries
/// this side's hashes of one level and brings back the remote's next level where they
/// differ (depth first, a page at a time), then the entries of differing segments are
/// compared, [`PAGE`] segments per request. Identical trees take one round trip; with up
/// to a page of differing nodes per level, `levels / 2 + 2` (4 for 5 levels).
pub fn diff(local: &dyn Replica, remote: &dyn Replica, partition: u32) -> Result<DiffReport> {
    let mut report = DiffReport {
        partition,
        ..DiffReport::default()
    };
    let mut differences = Vec::new();
    walk(
        local,
        remote,
        partition,
        false,
        &mut report,
        &mut |found, _| {
            differences.extend(found.into_iter().map(|f| f.difference));
            Ok(())
        },
    )?;
    report.differences = differences;
    Ok(report)
}

/// Walks the two trees and calls `found` with each page of differing keys (and the
/// report so far), so a caller can act on them without holding them all. With
/// `records`, the remote's records of segments empty here come with their entries (a
/// sync copies them all; a diff only lists them).
fn walk(
    local: &dyn Replica,
    remote: &dyn Replica,
    partition: u32,
    records: bool,
    report: &mut DiffReport,
    found: &mut dyn FnMut(Vec<Found>, &mut DiffReport) -> Result<()>,
) -> Result<()> {
    let shape = local.shape()?;
    let remote_shape = remote.shape()?;
    if shape != remote_shape {
        return Err(Error::InvalidArgument(format!(
            "replicas have different trees: width {} x {} levels here, width {} x {} levels there",
            shape.width, shape.levels, remote_shape.width, remote_shape.levels
        )));
    }
    // Round trip 1: our root; the remote answers with its level 1 if the roots differ.
    let mine = local.roots(&[partition])?;
    expect_len("roots", 1, mine.len(), 1)?;
    let root = mine.first().copied().unwrap_or_default();
    let mut walker = Walker {
        local,
        remote,
        partition,
        levels: shape.levels,
        width: u64::from(shape.width),
        records,
        segments: Vec::new(),
        found,
    };
    let answers = walker.ask(0, &[(0, root)], report)?;
    report.nodes_compared += 1;
    if !answers.is_empty() {
        walker.compare_children(0, answers, report)?;
    }
    walker.flush_segments(report)
}

struct Walker<'a, 'f> {
    local: &'a dyn Replica,
    remote: &'a dyn Replica,
    partition: u32,
    levels: u32,
    width: u64,
    /// Fetch the remote's records of segments empty here with their entries.
    records: bool,
    /// Differing segments not yet compared (at most a page), each with whether to
    /// fetch the remote's records with its entries (it is empty here, in a sync).
    segments: Vec<(u32, bool)>,
    found: &'f mut dyn FnMut(Vec<Found>, &mut DiffReport) -> Result<()>,
}

impl Walker<'_, '_> {
    /// Sends our hashes of `nodes` (of `level`) and returns the remote's answer: its
    /// children of those that differ there. One round trip.
    fn ask(
        &mut self,
        level: u32,
        nodes: &[(u64, Hash)],
        report: &mut DiffReport,
    ) -> Result<Vec<(u64, Vec<Hash>)>> {
        let answers = self.remote.descend(self.partition, level, nodes)?;
        report.round_trips += 1;
        let children = if level == self.levels {
            0
        } else {
            self.width as usize
        };
        let mut sent = nodes.iter().map(|&(n, _)| n).peekable();
        for (node, kids) in &answers {
            // Each answer names a node we sent, in order, with a full set of children.
            while sent.next_if(|n| n < node).is_some() {}
            if sent.next_if(|n| n == node).is_none() || kids.len() != children {
                return Err(Error::Protocol(format!(
                    "the remote answered for node {node} of level {level}, which was not asked, or with {} children",
                    kids.len()
                )));
            }
            report.payload_bytes += (kids.len() * HASH_BYTES + 8) as u64;
        }
        Ok(answers)
    }

    /// `answers` hold the remote's children (of level `level + 1`) of nodes of `level`
    /// that differ. Compares them with ours; sends our grandchildren of those that
    /// differ (one round trip per two levels); recurses. A page at a time.
    fn compare_children(
        &mut self,
        level: u32,
        answers: Vec<(u64, Vec<Hash>)>,
        report: &mut DiffReport,
    ) -> Result<()> {
        let width = self.width;
        for page in answers.chunks(PAGE) {
            let parents: Vec<u64> = page.iter().map(|&(n, _)| n).collect();
            let mine = self.local.children(self.partition, level, &parents)?;
            report.nodes_compared += mine.len() as u64;
            // Each differing child, and whether ours is empty.
            let differing: Vec<(u64, bool)> = page
                .iter()
                .zip(mine.chunks(width as usize))
                .flat_map(|((parent, theirs), ours)| {
                    (0..width)
                        .zip(theirs.iter().zip(ours))
                        .filter(|(_, (a, b))| a != b)
                        .map(move |(i, (_, b))| (parent * width + i, *b == Hash::ZERO))
                })
                .collect();
            let child_level = level + 1;
            if child_level == self.levels {
                self.add_segments(&differing, report)?;
                continue;
            }
            let differing: Vec<u64> = differing.into_iter().map(|(n, _)| n).collect();
            // Our hashes of the next level under the differing children.
            for chunk in differing.chunks(PAGE) {
                let grandchildren = self.local.children(self.partition, child_level, chunk)?;
                let nodes: Vec<(u64, Hash)> = chunk
                    .iter()
                    .flat_map(|&c| c * width..c * width + width)
                    .zip(grandchildren)
                    .collect();
                let next = child_level + 1;
                let answers = self.ask(next, &nodes, report)?;
                if next == self.levels {
                    // `nodes` holds our hash of each segment the remote found different.
                    let segments: Vec<(u64, bool)> = answers
                        .iter()
                        .map(|&(n, _)| {
                            let ours = nodes
                                .binary_search_by_key(&n, |&(id, _)| id)
                                .ok()
                                .and_then(|i| nodes.get(i));
                            (n, ours.is_some_and(|&(_, h)| h == Hash::ZERO))
                        })
                        .collect();
                    self.add_segments(&segments, report)?;
                } else if !answers.is_empty() {
                    self.compare_children(next, answers, report)?;
                }
            }
        }
        Ok(())
    }

    fn add_segments(&mut self, segments: &[(u64, bool)], report: &mut DiffReport) -> Result<()> {
        for &(segment, empty_here) in segments {
            self.segments
                .push((segment as u32, empty_here && self.records));
            if self.segments.len() >= PAGE {
                self.flush_segments(report)?;
            }
        }
        Ok(())
    }

    /// Compares the keys of the pending differing segments and reports those that
    /// differ. The remote lists each segment's entries, with the records of segments
    /// empty here, one answer at a time (it may cut an answer at its byte budget).
    fn flush_segments(&mut self, report: &mut DiffReport) -> Result<()> {
        let pending = std::mem::take(&mut self.segments);
        let mut rest = pending.as_slice();
        while !rest.is_empty() {
            let theirs = self.remote.segments(self.partition, rest)?;
            report.round_trips += 1;
            if theirs.is_empty() || theirs.len() > rest.len() {
                return Err(Error::Protocol(format!(
                    "asked for {} segments, the remote answered for {}",
                    rest.len(),
                    theirs.len()
                )));
            }
            let (done, tail) = rest.split_at(theirs.len());
            rest = tail;
            // A segment asked with records is empty here: nothing to list locally.
            let listed: Vec<u32> = done.iter().filter(|s| !s.1).map(|s| s.0).collect();
            let mut mine = self.local.entries(self.partition, &listed)?.into_iter();
            expect_len(
                "segment entry lists",
                listed.len(),
                mine.len(),
                listed.len(),
            )?;
            report.segments_compared += done.len() as u64;
            let mut found = Vec::new();
            for (&(_, with_records), theirs) in done.iter().zip(theirs) {
                let ours = if with_records {
                    Vec::new()
                } else {
                    mine.next().unwrap_or_default()
                };
                report.payload_bytes += theirs.iter().map(|i| i.size() as u64).sum::<u64>();
                compare_segment(ours, theirs, &mut found);
            }
            (self.found)(found, report)?;
        }
        Ok(())
    }
}

/// Pairs one segment's keys on both sides and adds those whose entries differ.
fn compare_segment(ours: Vec<Entry>, theirs: Vec<SegmentItem>, found: &mut Vec<Found>) {
    if ours.is_empty() {
        // Every key there differs (the common case of a new replica).
        found.extend(theirs.into_iter().map(|item| Found {
            difference: Difference {
                key: item.entry.key.clone(),
                local: None,
                remote: Some(item.entry),
            },
            remote_record: item.record,
        }));
        return;
    }
    let mut by_key: BTreeMap<Vec<u8>, (Option<Entry>, Option<SegmentItem>)> = BTreeMap::new();
    for e in ours {
        let key = e.key.clone();
        by_key.entry(key).or_default().0 = Some(e);
    }
    for item in theirs {
        let key = item.entry.key.clone();
        by_key.entry(key).or_default().1 = Some(item);
    }
    for (key, (local, remote)) in by_key {
        if local.as_ref().map(|e| e.hash) == remote.as_ref().map(|i| i.entry.hash) {
            continue;
        }
        let (remote, remote_record) = match remote {
            Some(item) => (Some(item.entry), item.record),
            None => (None, None),
        };
        found.push(Found {
            difference: Difference { key, local, remote },
            remote_record,
        });
    }
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
                    to_remote.push(Repair {
                        key: d.key,
                        expected: expected_remote,
                        record,
                    });
                }
            }
            Winner::Remote => {
                if let Some(record) = r {
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
    let total = applied.written + applied.stale + applied.refused;
    if total != repairs.len() as u64 {
        return Err(Error::Protocol(format!(
            "replica accounted for {total} of {} repairs",
            repairs.len()
        )));
    }
    Ok(applied)
}

/// A replica that answers with more or fewer items than asked for would silently hide
/// differences (or invent them): that is a protocol error.
fn expect_len(what: &str, asked: usize, mine: usize, theirs: usize) -> Result<()> {
    if mine != asked || theirs != asked {
        return Err(Error::Protocol(format!(
            "asked for {asked} {what}, got {mine} locally and {theirs} remotely"
        )));
    }
    Ok(())
}

/// Root of the union of disjoint partitions: the XOR of their roots (entry hashes
/// include the partition, so trees of different partitions merge by XOR).
pub fn merged_root(roots: &[Hash]) -> Hash {
    roots.iter().fold(Hash::ZERO, |acc, &h| acc ^ h)
}
