//! Diff between two replicas: descend only where hashes differ, then compare only the
//! entries of differing segments, a bounded page at a time.

use std::collections::{BTreeMap, VecDeque};

use crate::error::{Error, Result};
use crate::exchange::{Lookup, Replica, SegmentItem};
use crate::options::Shape;
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
pub(super) struct Found {
    pub(super) difference: Difference,
    pub(super) remote_record: Option<Lookup>,
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

/// Nodes whose children one step of the walk compares, and segments whose entries one
/// request compares: the walk's memory and every request stay bounded however far apart
/// the replicas are (an empty replica against a full one walks every node, page by page).
pub const PAGE: usize = 16_384;
/// Fewest segments of ours worth reading on a thread of their own while the remote
/// answers: starting and joining a thread took 0.2-0.3 ms on the 2-core test machine,
/// about what reading fifty segments takes.
const OVERLAP_MIN: usize = 128;
/// Most segments of ours read before the remote's answer says how many it covers (the
/// rest are read as its answers come, so our side's memory follows theirs).
const READ_AHEAD: usize = 4096;

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

/// Of `partitions`, those whose trees a diff or sync has to walk: those whose roots
/// differ between the two sides, in the same order. One request to each side (a
/// network client pages a list of thousands) instead of a walk's first round trip per
/// partition, so a node holding hundreds of partitions that agree pays one round trip
/// for all of them. A single partition is returned without asking: a walk of agreeing
/// trees costs that same one round trip. Replicas whose trees differ in shape are an
/// error here already, as in every walk.
pub fn partitions_to_walk(
    local: &dyn Replica,
    remote: &dyn Replica,
    partitions: &[u32],
) -> Result<Vec<u32>> {
    same_shape(local, remote)?;
    if partitions.len() <= 1 {
        return Ok(partitions.to_vec());
    }
    let mine = local.roots(partitions)?;
    let theirs = remote.roots(partitions)?;
    expect_len("roots", partitions.len(), mine.len(), theirs.len())?;
    Ok(partitions
        .iter()
        .zip(mine.iter().zip(&theirs))
        .filter(|(_, (a, b))| a != b)
        .map(|(&p, _)| p)
        .collect())
}

/// The shape both replicas' trees have; trees of different shapes cannot be compared.
fn same_shape(local: &dyn Replica, remote: &dyn Replica) -> Result<Shape> {
    let (shape, remote_shape) = (local.shape()?, remote.shape()?);
    if shape != remote_shape {
        return Err(Error::InvalidArgument(format!(
            "replicas have different trees: width {} x {} levels here, width {} x {} levels there",
            shape.width, shape.levels, remote_shape.width, remote_shape.levels
        )));
    }
    Ok(shape)
}

/// Walks the two trees and calls `found` with each page of differing keys (and the
/// report so far), so a caller can act on them without holding them all. With
/// `records`, the remote's records of segments empty here come with their entries (a
/// sync copies them all; a diff only lists them).
pub(super) fn walk(
    local: &dyn Replica,
    remote: &dyn Replica,
    partition: u32,
    records: bool,
    report: &mut DiffReport,
    found: &mut dyn FnMut(Vec<Found>, &mut DiffReport) -> Result<()>,
) -> Result<()> {
    let shape = same_shape(local, remote)?;
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
    /// empty here, one answer at a time (it may cut an answer at its byte budget, even
    /// inside a segment). Our entries of up to [`READ_AHEAD`] segments are read while the
    /// remote answers the first request (over a network while the request is on the
    /// wire, between two local stores on a second core), the rest as its answers come.
    fn flush_segments(&mut self, report: &mut DiffReport) -> Result<()> {
        let pending = std::mem::take(&mut self.segments);
        if pending.is_empty() {
            return Ok(());
        }
        // A segment asked with records is empty here: nothing to list locally.
        let listed: Vec<u32> = pending.iter().filter(|s| !s.1).map(|s| s.0).collect();
        let (local, remote, partition) = (self.local, self.remote, self.partition);
        let ahead = listed.get(..READ_AHEAD).unwrap_or(&listed);
        let ahead = if ahead.len() >= OVERLAP_MIN {
            ahead
        } else {
            &[]
        };
        let (first, mine) = if !ahead.is_empty() {
            std::thread::scope(|scope| {
                let ours = scope.spawn(|| local.entries(partition, ahead));
                let theirs = remote.segments(partition, &pending, None);
                let ours = ours
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
                (theirs, ours)
            })
        } else {
            (remote.segments(partition, &pending, None), Ok(Vec::new()))
        };
        // Ours of the listed segments read so far (`listed[..read]`) and not yet compared
        // (of a segment the remote answered in part, the keys after its answer's last).
        let mut mine: VecDeque<Vec<Entry>> = mine?.into();
        let mut read = mine.len();
        expect_len("segment entry lists", ahead.len(), read, read)?;
        let mut first = Some(first);
        let mut rest = pending.as_slice();
        // The last key answered of `rest[0]`, when the remote answered it in part.
        let mut after: Option<Vec<u8>> = None;
        while !rest.is_empty() {
            let page = match first.take() {
                Some(answer) => answer?,
                None => remote.segments(partition, rest, after.as_deref())?,
            };
            report.round_trips += 1;
            page.check_order(after.as_deref())?;
            let theirs = page.lists;
            if theirs.is_empty() || theirs.len() > rest.len() {
                return Err(Error::Protocol(format!(
                    "asked for {} segments, the remote answered for {}",
                    rest.len(),
                    theirs.len()
                )));
            }
            let answered = theirs.len();
            let needed = rest[..answered].iter().filter(|s| !s.1).count();
            if mine.len() < needed {
                let more = listed
                    .get(read..read + needed - mine.len())
                    .unwrap_or_default();
                let lists = local.entries(partition, more)?;
                expect_len("segment entry lists", more.len(), lists.len(), more.len())?;
                read += lists.len();
                mine.extend(lists);
            }
            // Where the remote's answer stops inside a segment, the next one starts.
            after = if page.partial {
                theirs
                    .last()
                    .and_then(|l| l.last())
                    .map(|i| i.entry.key.clone())
            } else {
                None
            };
            let mut found = Vec::new();
            for (i, (&(_, with_records), theirs)) in rest.iter().zip(theirs).enumerate() {
                let ours = match (&after, i + 1 == answered) {
                    _ if with_records => Vec::new(),
                    // Of a segment answered in part, ours up to the answer's last key.
                    (Some(last), true) => match mine.front_mut() {
                        Some(front) => {
                            let upto = front.partition_point(|e| e.key <= *last);
                            front.drain(..upto).collect()
                        }
                        None => Vec::new(),
                    },
                    _ => mine.pop_front().unwrap_or_default(),
                };
                report.payload_bytes += theirs.iter().map(|i| i.size() as u64).sum::<u64>();
                compare_segment(ours, theirs, &mut found);
            }
            let done = answered - usize::from(page.partial);
            report.segments_compared += done as u64;
            rest = rest.get(done..).unwrap_or_default();
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

/// A replica that answers with more or fewer items than asked for would silently hide
/// differences (or invent them): that is a protocol error.
pub(super) fn expect_len(what: &str, asked: usize, mine: usize, theirs: usize) -> Result<()> {
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
