//! Anti-entropy between two stores: diff finds exactly the differing keys, sync makes
//! both sides equal to an independently computed resolution, deletes do not come back,
//! and a key written during an exchange is never overwritten with older data.

mod common;

use std::collections::BTreeMap;

use common::small_options;
use merkle_index::{
    diff, merged_root, sync, Applied, Entry, Hash, Lookup, Options, Record, Repair, Replica,
    SegmentItem, SegmentsPage, Store, SyncOptions, Winner,
};
use proptest::prelude::*;

type Contents = BTreeMap<Vec<u8>, (u64, bool, Vec<u8>)>;

fn contents(store: &Store, p: u32, keys: impl Iterator<Item = Vec<u8>>) -> Contents {
    keys.filter_map(|k| {
        store
            .partition(p)
            .get_record(&k)
            .unwrap()
            .map(|r| (k, (r.version, r.tombstone, r.value)))
    })
    .collect()
}

#[derive(Debug, Clone)]
enum Change {
    Put(u8, Vec<u8>),
    Delete(u8),
}

fn changes() -> impl Strategy<Value = Vec<(bool, Change)>> {
    proptest::collection::vec(
        (
            any::<bool>(),
            prop_oneof![
                3 => (0..60u8, proptest::collection::vec(any::<u8>(), 0..8)).prop_map(|(k, v)| Change::Put(k, v)),
                1 => (0..60u8).prop_map(Change::Delete),
            ],
        ),
        0..80,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// With `paging`, the remote answers at most that many keys at a time, cut inside
    /// segments as its byte budget would cut them; with `few_segments`, the tree has 4
    /// segments, so most cuts fall inside one.
    #[test]
    fn one_sync_converges_to_the_newest_records(
        base in 0..40u8,
        changes in changes(),
        tie in any::<bool>(),
        paging in prop::option::of(1..5usize),
        few_segments in any::<bool>(),
    ) {
        let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let options = || if few_segments {
            Options::default().with_segments(4, 4).unwrap()
        } else {
            small_options()
        };
        let a = Store::open(da.path(), options()).unwrap();
        let b = Store::open(db.path(), options()).unwrap();
        let mut version = 0;
        for k in 0..base {
            version += 1;
            for s in [&a, &b] {
                s.partition(1).put_versioned(&[k], b"base", version).unwrap();
            }
        }
        // Independent expectation: per key, the record with the highest
        // (version, tombstone, value hash) among both sides.
        let mut sides: [Contents; 2] = [Contents::new(), Contents::new()];
        for side in &mut sides {
            for k in 0..base {
                side.insert(vec![k], ((k + 1).into(), false, b"base".to_vec()));
            }
        }
        for (on_a, change) in changes {
            // With `tie`, both sides sometimes write the same version.
            if !(tie && version % 5 == 0) {
                version += 1;
            }
            let (store, side) = if on_a { (&a, &mut sides[0]) } else { (&b, &mut sides[1]) };
            match change {
                Change::Put(k, v) => {
                    store.partition(1).put_versioned(&[k], &v, version).unwrap();
                    side.insert(vec![k], (version, false, v));
                }
                Change::Delete(k) => {
                    store.partition(1).delete_versioned(&[k], version).unwrap();
                    side.insert(vec![k], (version, true, Vec::new()));
                }
            }
        }
        let mut expected = Contents::new();
        for side in &sides {
            for (k, rec) in side {
                let rank = |r: &(u64, bool, Vec<u8>)| (r.0, r.1, merkle_index::value_hash(&r.2).to_bytes());
                let better = expected.get(k).is_none_or(|cur| rank(rec) > rank(cur));
                if better {
                    expected.insert(k.clone(), rec.clone());
                }
            }
        }
        a.sync_index().unwrap();
        b.sync_index().unwrap();
        let remote = Paging(&b, paging.unwrap_or(usize::MAX));
        let report = sync(&a, &remote, 1, &SyncOptions::default()).unwrap();
        prop_assert_eq!(report.skipped, 0);
        a.sync_index().unwrap();
        b.sync_index().unwrap();
        prop_assert_eq!(a.root(1), b.root(1));
        let keys = || (0..60u8).map(|k| vec![k]);
        prop_assert_eq!(&contents(&a, 1, keys()), &expected);
        prop_assert_eq!(&contents(&b, 1, keys()), &expected);
        let again = diff(&a, &b, 1).unwrap();
        prop_assert!(again.differences.is_empty());
        prop_assert_eq!(again.round_trips, 1);
    }
}

#[test]
fn diff_costs_one_round_trip_per_level_and_bytes_per_difference() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), Options::default()).unwrap();
    let b = Store::open(db.path(), Options::default()).unwrap();
    for i in 0..2000u32 {
        for s in [&a, &b] {
            s.put_versioned(format!("key-{i}").as_bytes(), b"v", u64::from(i) + 1)
                .unwrap();
        }
    }
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let same = diff(&a, &b, 0).unwrap();
    assert_eq!((same.round_trips, same.differences.len()), (1, 0));

    for d in [1u32, 100] {
        for i in 0..d {
            a.put(format!("only-a-{d}-{i}").as_bytes(), b"x").unwrap();
        }
        a.sync_index().unwrap();
        let report = diff(&a, &b, 0).unwrap();
        assert_eq!(report.differences.len() as u32, d);
        assert_eq!(report.round_trips, a.shape().levels / 2 + 2);
        let per_key = report.payload_bytes / u64::from(d);
        assert!(
            per_key <= 2048,
            "{per_key} bytes per differing key at d = {d}"
        );
        assert!(report
            .differences
            .iter()
            .all(|x| x.local.is_some() && x.remote.is_none()));
        sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    }
}

#[test]
fn a_delete_does_not_come_back_and_tombstones_are_purged_after_grace() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    let v = a.put(b"cart", b"3 items").unwrap();
    b.put_versioned(b"cart", b"3 items", v).unwrap();
    a.delete(b"cart").unwrap(); // the delete's replication to b is lost
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!((report.repaired_local, report.repaired_remote), (0, 1));
    assert_eq!(b.get(b"cart").unwrap(), None);
    assert!(
        b.partition(0)
            .get_record(b"cart")
            .unwrap()
            .unwrap()
            .tombstone
    );
    // Within the grace period tombstones stay; after it both sides drop them.
    assert_eq!(
        a.purge_tombstones(0, std::time::Duration::from_secs(3600))
            .unwrap(),
        0
    );
    std::thread::sleep(std::time::Duration::from_millis(5));
    for s in [&a, &b] {
        assert_eq!(s.purge_tombstones(0, std::time::Duration::ZERO).unwrap(), 1);
        s.sync_index().unwrap();
        assert_eq!(s.root(0), Hash::ZERO);
        assert!(s.verify(&mut |_| {}).unwrap().is_ok());
    }
}

/// Forwards the named `Replica` methods to the store in `self.$store`, so each test
/// replica below spells out only what it does differently.
macro_rules! forward {
    ($store:tt; $($method:ident)*) => { $(forward!(@ $store $method);)* };
    (@ $store:tt shape) => {
        fn shape(&self) -> merkle_index::Result<merkle_index::Shape> {
            Replica::shape(self.$store)
        }
    };
    (@ $store:tt partitions) => {
        fn partitions(&self) -> merkle_index::Result<Vec<u32>> {
            Replica::partitions(self.$store)
        }
    };
    (@ $store:tt roots) => {
        fn roots(&self, p: &[u32]) -> merkle_index::Result<Vec<Hash>> {
            Replica::roots(self.$store, p)
        }
    };
    (@ $store:tt children) => {
        fn children(&self, p: u32, l: u32, n: &[u64]) -> merkle_index::Result<Vec<Hash>> {
            Replica::children(self.$store, p, l, n)
        }
    };
    (@ $store:tt entries) => {
        fn entries(&self, p: u32, s: &[u32]) -> merkle_index::Result<Vec<Vec<Entry>>> {
            Replica::entries(self.$store, p, s)
        }
    };
    (@ $store:tt records) => {
        fn records(&self, p: u32, k: &[Vec<u8>]) -> merkle_index::Result<Vec<Lookup>> {
            Replica::records(self.$store, p, k)
        }
    };
    (@ $store:tt apply) => {
        fn apply(&self, p: u32, r: &[Repair]) -> merkle_index::Result<Applied> {
            Replica::apply(self.$store, p, r)
        }
    };
}

/// A peer whose answers hold at most `.1` keys: cut inside a segment where the limit
/// falls inside one, as an answer at its byte budget is.
struct Paging<'a>(&'a Store, usize);

impl Replica for Paging<'_> {
    forward!(0; shape partitions roots children entries records apply);
    fn segments(
        &self,
        p: u32,
        s: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> merkle_index::Result<SegmentsPage> {
        let mut page = Replica::segments(self.0, p, s, after)?;
        let mut left = self.1;
        for i in 0..page.lists.len() {
            let list = &mut page.lists[i];
            if list.len() <= left {
                left -= list.len();
                continue;
            }
            // Inside this segment if any of it fits, else before it.
            let partial = left > 0;
            list.truncate(left);
            page.lists.truncate(i + usize::from(partial));
            page.partial = partial;
            break;
        }
        Ok(page)
    }
}

/// A replica that writes a newer value to the real store between the diff and the
/// repair, as a foreground write racing an exchange would.
struct Racing<'a> {
    store: &'a Store,
    key: &'a [u8],
}

impl Replica for Racing<'_> {
    forward!(store; shape partitions roots children entries apply);
    fn records(&self, p: u32, k: &[Vec<u8>]) -> merkle_index::Result<Vec<Lookup>> {
        let before = self.store.records(p, k);
        self.store
            .partition(p)
            .put_versioned(self.key, b"newest", 1_000_000)
            .unwrap();
        before
    }
}

#[test]
fn a_write_during_the_exchange_is_not_overwritten() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    a.put_versioned(b"k", b"old", 1).unwrap();
    b.put_versioned(b"k", b"newer", 2).unwrap();
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let racing = Racing {
        store: &a,
        key: b"k",
    };
    let report = sync(&racing, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!((report.repaired_local, report.skipped), (0, 1));
    assert_eq!(a.get(b"k").unwrap(), Some(b"newest".to_vec()));
    // The next exchange carries the newest value over.
    a.sync_index().unwrap();
    sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(b.get(b"k").unwrap(), Some(b"newest".to_vec()));
}

#[test]
fn a_resolver_decides_instead_of_versions() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    a.put_versioned(b"k", b"local, newer", 9).unwrap();
    b.put_versioned(b"k", b"remote, older", 1).unwrap();
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let remote_wins = |_: &[u8], _: Option<&Record>, _: Option<&Record>| Winner::Remote;
    let options = SyncOptions {
        resolver: &remote_wins,
        ..SyncOptions::default()
    };
    sync(&a, &b, 0, &options).unwrap();
    assert_eq!(a.get(b"k").unwrap(), Some(b"remote, older".to_vec()));
}

#[test]
fn trees_of_disjoint_partitions_merge_by_xor() {
    let (da, db, dc) = (
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
        tempfile::tempdir().unwrap(),
    );
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    let union = Store::open(dc.path(), small_options()).unwrap();
    for i in 0..90u32 {
        let p = i % 3;
        let side = if p < 2 { &a } else { &b };
        side.partition(p)
            .put_versioned(&i.to_le_bytes(), b"v", 7)
            .unwrap();
        union
            .partition(p)
            .put_versioned(&i.to_le_bytes(), b"v", 7)
            .unwrap();
    }
    for s in [&a, &b, &union] {
        s.sync_index().unwrap();
    }
    let merged = merged_root(&[a.root(0), a.root(1), b.root(2)]);
    assert_eq!(
        merged,
        merged_root(&[union.root(0), union.root(1), union.root(2)])
    );
    assert!(!merged.is_zero());
    // Both stores hold partition 0 only on a: b's empty partition differs in every key.
    let report = diff(&a, &b, 0).unwrap();
    assert_eq!(report.differences.len(), 30);
}

#[test]
fn different_shapes_are_refused() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), Options::default()).unwrap();
    let err = diff(&a, &b, 0).unwrap_err();
    assert!(err.to_string().contains("different trees"), "{err}");
}

/// A peer that answers entry requests with one list too few.
struct Short<'a>(&'a Store);

impl Replica for Short<'_> {
    forward!(0; shape partitions roots children records apply);
    fn entries(&self, p: u32, s: &[u32]) -> merkle_index::Result<Vec<Vec<Entry>>> {
        let mut all = self.0.entries(p, s)?;
        all.pop();
        Ok(all)
    }
}

/// A peer that answers every `segments` request with nothing.
struct Silent<'a>(&'a Store);

impl Replica for Silent<'_> {
    forward!(0; shape partitions roots children entries records apply);
    fn segments(
        &self,
        _: u32,
        _: &[(u32, bool)],
        _: Option<&[u8]>,
    ) -> merkle_index::Result<SegmentsPage> {
        Ok(SegmentsPage::default())
    }
}

/// A peer that ignores where to start and answers the first key of the first segment
/// again and again, as if the segment went on.
struct Repeating<'a>(&'a Store);

impl Replica for Repeating<'_> {
    forward!(0; shape partitions roots children entries records apply);
    fn segments(
        &self,
        p: u32,
        s: &[(u32, bool)],
        _: Option<&[u8]>,
    ) -> merkle_index::Result<SegmentsPage> {
        let mut page = Replica::segments(self.0, p, &s[..1], None)?;
        page.lists[0].truncate(1);
        page.partial = true;
        Ok(page)
    }
}

/// Answers with too few lists, none, or the same page again are protocol errors: a walk
/// that took them would report fewer differences or never end.
#[test]
fn bad_answers_are_protocol_errors_not_fewer_differences() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    // The same keys on both sides, newer on `b`: every differing segment has keys on both.
    for i in 0..20u32 {
        a.put_versioned(&i.to_le_bytes(), b"old", 1).unwrap();
        b.put_versioned(&i.to_le_bytes(), b"new", 2).unwrap();
    }
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let protocol_error = |result: merkle_index::Result<_>, says: &str| match result {
        Err(merkle_index::Error::Protocol(m)) => assert!(m.contains(says), "{m}"),
        other => panic!("not a protocol error saying {says:?}: {other:?}"),
    };
    protocol_error(diff(&a, &Short(&b), 0), "asked for");
    // A replica may answer `segments` for a prefix (its byte budget), never for none.
    protocol_error(diff(&a, &Silent(&b), 0), "answered for 0");
    protocol_error(diff(&a, &Repeating(&b), 0), "repeated");
}

/// Reads each segment on its own (`Store::segment_entries`) and leaves `segments` to
/// the trait's default (entries, then records, one lookup per segment and per key).
struct Plain<'a>(&'a Store);

impl Replica for Plain<'_> {
    forward!(0; shape partitions roots children records apply);
    fn entries(&self, p: u32, s: &[u32]) -> merkle_index::Result<Vec<Vec<Entry>>> {
        s.iter().map(|&s| self.0.segment_entries(p, s)).collect()
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The store reads nearby segments with one range scan; whatever the request (in
    /// order or not, repeated, next to other partitions' data), the answer, with records
    /// or entries only, is what one lookup per segment and per key gives.
    #[test]
    fn segments_read_by_range_match_a_lookup_each(
        keys in prop::collection::vec((0..3u32, any::<u16>(), any::<bool>()), 0..200),
        asked in prop::collection::vec((0..64u32, any::<bool>()), 1..40),
        sorted in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), small_options()).unwrap();
        for (partition, key, delete) in keys {
            let p = store.partition(partition);
            p.put(&key.to_le_bytes(), &key.to_be_bytes()).unwrap();
            if delete {
                p.delete(&key.to_le_bytes()).unwrap();
            }
        }
        let mut asked = asked;
        if sorted {
            asked.sort();
            asked.dedup_by_key(|a| a.0);
        }
        let ids: Vec<u32> = asked.iter().map(|&(s, _)| s).collect();
        for partition in 0..3 {
            let fast = Replica::segments(&store, partition, &asked, None).unwrap();
            let plain = Plain(&store).segments(partition, &asked, None).unwrap();
            prop_assert_eq!(&fast, &plain);
            // Started after a key of the first segment (or one between its keys).
            if let Some(item) = fast.lists[0].get(fast.lists[0].len() / 2) {
                for after in [item.entry.key.clone(), [&item.entry.key[..], &[0]].concat()] {
                    let fast = Replica::segments(&store, partition, &asked, Some(&after));
                    let plain = Plain(&store).segments(partition, &asked, Some(&after));
                    prop_assert_eq!(fast.unwrap(), plain.unwrap());
                }
            }
            let entries = Replica::entries(&store, partition, &ids).unwrap();
            prop_assert_eq!(entries, Plain(&store).entries(partition, &ids).unwrap());
        }
    }
}

#[test]
fn answers_stop_at_the_byte_budget_and_the_walk_asks_for_the_rest() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    // Twelve values of 1 MiB: more than one answer's budget.
    let big = vec![7u8; 1 << 20];
    for i in 0..12u32 {
        b.put(&i.to_le_bytes(), &big).unwrap();
    }
    b.sync_index().unwrap();
    let all: Vec<(u32, bool)> = (0..64).map(|s| (s, true)).collect();
    let first = Replica::segments(&b, 0, &all, None).unwrap().lists;
    let records = first.iter().flatten().count();
    assert!(
        (1..12).contains(&records),
        "one answer held {records} of the 12 records"
    );
    let bytes: usize = first.iter().flatten().map(SegmentItem::size).sum();
    assert!(
        bytes <= merkle_index::ANSWER_BUDGET + (1 << 20) + 64,
        "{bytes}"
    );
    // A diff only lists the keys: no values travel.
    let listed = diff(&a, &b, 0).unwrap();
    assert_eq!(listed.differences.len(), 12);
    assert!(listed.payload_bytes < 1 << 20, "{}", listed.payload_bytes);
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.repaired_local, 12);
    assert!(report.diff.round_trips > 2, "{:?}", report.diff);
    a.sync_index().unwrap();
    assert_eq!(a.root(0), b.root(0));
}

/// A local side whose writes fail (a full disk, say).
struct Failing<'a>(&'a Store);

impl Replica for Failing<'_> {
    forward!(0; shape partitions roots children entries records);
    fn apply(&self, _: u32, _: &[Repair]) -> merkle_index::Result<Applied> {
        Err(merkle_index::Error::InvalidArgument("no space left".into()))
    }
}

#[test]
fn a_failing_local_writer_ends_the_sync_with_its_error() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    for i in 0..5_000u32 {
        b.put(&i.to_le_bytes(), b"v").unwrap();
    }
    b.sync_index().unwrap();
    // Small batches, so the walk has many more to hand over after the writer failed.
    let options = SyncOptions {
        batch: 8,
        ..SyncOptions::default()
    };
    let err = sync(&Failing(&a), &b, 0, &options).unwrap_err();
    assert!(err.to_string().contains("no space left"), "{err}");
    assert_eq!(a.count_keys(0).unwrap(), 0);
}

#[test]
fn a_segment_whose_records_pass_the_budget_arrives_in_pages() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    let segments = b.shape().segments;
    // Ten values of 1 MiB, all in segment 0: more than one answer's budget.
    let keys: Vec<Vec<u8>> = (0u32..)
        .map(|i| i.to_le_bytes().to_vec())
        .filter(|k| merkle_index::segment_of(k, segments) == 0)
        .take(10)
        .collect();
    let big = vec![3u8; 1 << 20];
    for k in &keys {
        b.put(k, &big).unwrap();
    }
    b.sync_index().unwrap();
    // The first answer stops inside the segment, with its records; the second starts
    // after its last key and ends the segment.
    let first = Replica::segments(&b, 0, &[(0, true)], None).unwrap();
    assert!(first.partial);
    assert_eq!(first.lists.len(), 1);
    let got = first.lists[0].len();
    assert!((1..10).contains(&got), "{got} of 10 in the first page");
    let last = first.lists[0][got - 1].entry.key.clone();
    let second = Replica::segments(&b, 0, &[(0, true)], Some(&last)).unwrap();
    assert!(!second.partial);
    let mut pages: Vec<SegmentItem> = first.lists[0].clone();
    pages.extend(second.lists[0].iter().cloned());
    let mut sorted = keys.clone();
    sorted.sort();
    let listed: Vec<Vec<u8>> = pages.iter().map(|i| i.entry.key.clone()).collect();
    assert_eq!(listed, sorted);
    assert!(pages
        .iter()
        .all(|i| matches!(&i.record, Some(Lookup::Found(r)) if r.value == big)));
    let report = sync(&a, &b, 0, &SyncOptions::default()).unwrap();
    assert_eq!(report.repaired_local, 10);
    a.sync_index().unwrap();
    assert_eq!(a.root(0), b.root(0));
}

/// A peer that answers at most 700 segments a request, as one whose answers pass the
/// byte budget does.
struct Stingy<'a>(&'a Store);

impl Replica for Stingy<'_> {
    forward!(0; shape partitions roots children entries records apply);
    fn segments(
        &self,
        p: u32,
        s: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> merkle_index::Result<SegmentsPage> {
        Replica::segments(self.0, p, s.get(..700).unwrap_or(s), after)
    }
}

#[test]
fn answers_of_a_few_segments_each_are_compared_with_ours_in_order() {
    // More differing segments than this side reads ahead of the first answer (4,096),
    // answered 700 at a time: our entries read ahead and those read as the answers come
    // must both line up with theirs.
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), merkle_index::Options::default()).unwrap();
    let b = Store::open(db.path(), merkle_index::Options::default()).unwrap();
    for i in 0..6_000u32 {
        a.put_versioned(&i.to_be_bytes(), b"a", 1).unwrap();
        b.put_versioned(&i.to_be_bytes(), b"b", 2).unwrap();
    }
    for i in 6_000..7_000u32 {
        b.put_versioned(&i.to_be_bytes(), b"only on b", 1).unwrap();
    }
    for i in 7_000..7_500u32 {
        a.put_versioned(&i.to_be_bytes(), b"only on a", 1).unwrap();
    }
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let whole = diff(&a, &b, 0).unwrap();
    let paged = diff(&a, &Stingy(&b), 0).unwrap();
    assert_eq!(whole.differences.len(), 7_500);
    assert_eq!(paged.differences, whole.differences);
    assert!(
        paged.round_trips > whole.round_trips + 5,
        "{} against {}",
        paged.round_trips,
        whole.round_trips
    );
}

/// A remote that writes its repairs but miscounts them so the sum wraps around to the
/// number sent (2^64 - 1 written, and one more stale than there were repairs).
struct Miscounting<'a>(&'a Store);

impl Replica for Miscounting<'_> {
    forward!(0; shape partitions roots children entries records);
    fn apply(&self, p: u32, repairs: &[Repair]) -> merkle_index::Result<Applied> {
        Replica::apply(self.0, p, repairs)?;
        Ok(Applied {
            written: u64::MAX,
            stale: repairs.len() as u64 + 1,
            refused: 0,
        })
    }
}

#[test]
fn repair_counts_that_wrap_around_end_the_sync_with_a_protocol_error() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Store::open(da.path(), small_options()).unwrap();
    let b = Store::open(db.path(), small_options()).unwrap();
    a.put(b"only here", b"v").unwrap();
    a.sync_index().unwrap();
    let err = sync(&a, &Miscounting(&b), 0, &SyncOptions::default()).unwrap_err();
    assert!(matches!(err, merkle_index::Error::Protocol(_)), "{err}");
    assert!(err.to_string().contains("of 1 repairs"), "{err}");
}
