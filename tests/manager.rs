//! The anti-entropy manager: scheduled exchanges converge replicas, failures back off,
//! the repair rate cap holds, and the status accounts for what was done.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::small_options;
use merkle_index::{Error, Manager, ManagerOptions, Peer, Replica, Store};

fn store() -> (tempfile::TempDir, Arc<Store>) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    (dir, store)
}

fn fast() -> ManagerOptions {
    ManagerOptions {
        interval: Duration::from_millis(100),
        backoff: Duration::from_millis(50),
        ..ManagerOptions::default()
    }
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    done()
}

fn roots(s: &Store, partitions: &[u32]) -> Vec<merkle_index::Hash> {
    s.sync_index().unwrap();
    partitions.iter().map(|&p| s.root(p)).collect()
}

#[test]
fn scheduled_exchanges_converge_every_shared_partition() {
    let ((_da, a), (_db, b), (_dc, c)) = (store(), store(), store());
    for i in 0..60u32 {
        let (side, p) = match i % 3 {
            0 => (&a, 0),
            1 => (&b, 1),
            _ => (&c, 0),
        };
        side.partition(p).put(&i.to_le_bytes(), b"v").unwrap();
    }
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0, 1]));
    manager.set_peer("c", Arc::new(Arc::clone(&c)), BTreeSet::from([0]));
    let converged = wait_until(Duration::from_secs(20), || {
        roots(&a, &[0, 1]) == roots(&b, &[0, 1]) && roots(&a, &[0]) == roots(&c, &[0])
    });
    assert!(converged, "{:?}", manager.status());
    // Let a full round finish, then check what the status accounts for.
    manager.exchange_now(None);
    assert!(wait_until(Duration::from_secs(10), || manager
        .status()
        .peers
        .iter()
        .all(|p| p.running.is_none()
            && p.partitions
                .iter()
                .all(|s| s.last_success_unix_ms.is_some()))));
    let status = manager.status();
    let repaired: u64 = status
        .peers
        .iter()
        .flat_map(|p| &p.partitions)
        .map(|s| s.total_repaired_local + s.total_repaired_remote)
        .sum();
    // b's 20 keys came to a and c's 20 went... every key crossed at least once.
    assert!(repaired >= 60, "{status:?}");
    assert!(status.exchanges >= 2);
    manager.stop();
    assert_eq!(b.count_keys(0).unwrap(), 40); // a's and c's keys of partition 0
}

struct Unreachable;

impl Peer for Unreachable {
    fn open(&self) -> merkle_index::Result<Box<dyn Replica + Send + '_>> {
        Err(Error::Protocol("connection refused (test peer)".into()))
    }
}

/// Options the manager cannot honour are refused at start. Before, an interval past what
/// `Instant` holds (or a NaN jitter) panicked in the exchange thread when it scheduled
/// the next exchange, and the peer was not exchanged with again for an hour.
#[test]
fn options_out_of_range_are_refused_at_start_and_the_longest_interval_runs() {
    let ((_da, a), (_db, b)) = (store(), store());
    let year = Duration::from_secs(365 * 24 * 3600);
    let refused = [
        ManagerOptions {
            interval: Duration::MAX,
            ..fast()
        },
        ManagerOptions {
            interval: year + Duration::from_secs(1),
            ..fast()
        },
        ManagerOptions {
            interval: Duration::ZERO,
            ..fast()
        },
        ManagerOptions {
            backoff: Duration::ZERO,
            ..fast()
        },
        ManagerOptions {
            backoff_max: Duration::MAX,
            ..fast()
        },
        ManagerOptions {
            jitter: f64::NAN,
            ..fast()
        },
        ManagerOptions {
            jitter: 1.5,
            ..fast()
        },
        ManagerOptions {
            jitter: -0.1,
            ..fast()
        },
        ManagerOptions {
            tombstone_grace: Some(Duration::ZERO),
            ..fast()
        },
        ManagerOptions {
            tombstone_grace: Some(year * 2),
            ..fast()
        },
        // A tombstone must outlive the time between exchanges.
        ManagerOptions {
            tombstone_grace: Some(Duration::from_millis(100)),
            ..fast()
        },
        // Purging is the scrub's: a grace without it is refused, not ignored.
        ManagerOptions {
            tombstone_grace: Some(Duration::from_secs(3600)),
            scrub_keys_per_sec: None,
            ..fast()
        },
        ManagerOptions {
            tombstone_grace: Some(Duration::from_secs(3600)),
            scrub_keys_per_sec: Some(0),
            ..fast()
        },
    ];
    for options in refused {
        let shown = format!("{options:?}");
        match Manager::start(Arc::clone(&a), options) {
            Err(Error::InvalidOptions(why)) => assert!(!why.is_empty()),
            Err(e) => panic!("{shown}: {e}"),
            Ok(_) => panic!("{shown} was accepted"),
        }
    }
    // The longest interval, with full jitter: one exchange, then the next is due in
    // about a year. (The index follows writes in the background, and a replica answers
    // with the roots it has: the one exchange must see the write.)
    b.put(b"k", b"v").unwrap();
    b.sync_index().unwrap();
    let manager = Manager::start(
        Arc::clone(&a),
        ManagerOptions {
            interval: year,
            jitter: 1.0,
            ..fast()
        },
    )
    .unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(20), || manager
        .status()
        .exchanges
        == 1));
    let status = manager.status();
    let peer = &status.peers[0];
    assert_eq!(peer.failures, 0, "{status:?}");
    assert!(
        peer.next_in <= year * 2 && peer.next_in > Duration::from_secs(3600),
        "{status:?}"
    );
    assert_eq!(a.get(b"k").unwrap(), Some(b"v".to_vec()));
}

#[test]
fn a_failing_peer_backs_off_and_others_keep_going() {
    let ((_da, a), (_db, b)) = (store(), store());
    b.put(b"k", b"v").unwrap();
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.set_peer("down", Arc::new(Unreachable), BTreeSet::from([0]));
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(10), || a
        .get(b"k")
        .unwrap()
        .is_some()));
    assert!(wait_until(Duration::from_secs(10), || {
        manager
            .status()
            .peers
            .iter()
            .any(|p| p.name == "down" && p.failures >= 3)
    }));
    let status = manager.status();
    let down = status.peers.iter().find(|p| p.name == "down").unwrap();
    assert!(down
        .partitions
        .iter()
        .all(|s| s.last_success_unix_ms.is_none()));
    // Backoff doubles: after 3+ failures the next attempt is further away than the base.
    assert!(down.failures >= 3);
    // The status says why.
    let why = down.last_error.as_deref().unwrap_or_default();
    assert!(why.contains("connection refused (test peer)"), "{why}");
    let b_status = status.peers.iter().find(|p| p.name == "b").unwrap();
    assert_eq!(b_status.last_error, None);
    assert_eq!(status.store_checkpoint_error, None);
    manager.remove_peer("down");
    assert_eq!(manager.status().peers.len(), 1);
}

#[test]
fn the_repair_rate_cap_holds_and_the_exchange_continues() {
    let ((_da, a), (_db, b)) = (store(), store());
    for i in 0..300u32 {
        b.put(&i.to_le_bytes(), b"value").unwrap();
    }
    let options = ManagerOptions {
        max_repair_keys_per_sec: Some(100),
        ..fast()
    };
    let started = Instant::now();
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(30), || a
        .count_keys(0)
        .unwrap()
        == 300));
    // 300 repairs at 100/s, each batch paid for before it passes and the bucket empty
    // at the start, cannot take under 3 s, however the exchanges split them.
    assert!(
        started.elapsed() >= Duration::from_millis(2950),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(manager.status().max_repair_keys_per_sec, Some(100));
    manager.set_throttle(None, None);
    assert_eq!(manager.status().max_repair_keys_per_sec, None);
}

/// Records worth more than one wait under the byte cap (here 5 s of tokens in all) pass
/// once paid for in full: before, a batch waited at most 2 s and passed owing the rest,
/// so a run of such records went at one per 2 s whatever the cap.
#[test]
fn large_records_under_the_byte_cap_pass_only_once_paid_for_in_full() {
    let ((_da, a), (_db, b)) = (store(), store());
    let big = vec![7u8; 50_000];
    b.put(b"big 1", &big).unwrap();
    b.put(b"big 2", &big).unwrap();
    let options = ManagerOptions {
        max_repair_bytes_per_sec: Some(20_000),
        ..fast()
    };
    let started = Instant::now();
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    let has = |key: &[u8]| a.partition(0).get(key).unwrap().is_some();
    assert!(wait_until(Duration::from_secs(30), || has(b"big 1") && has(b"big 2")));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4900), "{took:?}");
    let status = manager.status();
    assert_eq!(status.peers[0].partitions[0].errors, 0, "{status:?}");
    manager.stop();
}

#[test]
fn a_peer_without_a_partition_list_shares_every_partition_either_side_holds() {
    let ((_da, a), (_db, b)) = (store(), store());
    a.partition(3).put(b"only on a", b"v").unwrap();
    b.partition(5).put(b"only on b", b"v").unwrap();
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::new());
    assert!(wait_until(Duration::from_secs(10), || {
        a.partition(5).get(b"only on b").unwrap().is_some()
            && b.partition(3).get(b"only on a").unwrap().is_some()
    }));
    assert!(wait_until(Duration::from_secs(10), || {
        let status = manager.status();
        let listed: Vec<u32> = status.peers[0]
            .partitions
            .iter()
            .map(|s| s.partition)
            .collect();
        listed == [3, 5]
    }));
}

#[test]
fn foreground_writes_count_puts_deletes_and_replication_not_repairs() {
    let ((_da, a), (_db, b)) = (store(), store());
    a.put(b"k1", b"v").unwrap();
    a.partition(2).delete(b"k2").unwrap();
    let record = merkle_index::Record::value(7, b"replicated");
    a.replicate(3, b"k3", &record).unwrap();
    assert_eq!(a.foreground_writes(), 3);
    for i in 0..10u32 {
        b.put(&i.to_le_bytes(), b"v").unwrap();
    }
    a.sync_index().unwrap();
    b.sync_index().unwrap();
    let report = merkle_index::sync(&*a, &*b, 0, &Default::default()).unwrap();
    assert_eq!(report.repaired_local, 10);
    assert_eq!(
        a.foreground_writes(),
        3,
        "repairs are not foreground writes"
    );
}

#[test]
fn repairs_yield_to_busy_foreground_writes_and_still_finish() {
    let ((_da, local), (_db, peer)) = (store(), store());
    for i in 0..20_000u32 {
        peer.put(&i.to_le_bytes(), b"a value to repair").unwrap();
    }
    let manager = Manager::start(
        Arc::clone(&local),
        ManagerOptions {
            repair_share: Some(0.1),
            ..fast()
        },
    )
    .unwrap();
    // Foreground writes on another partition, as fast as this machine goes.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = std::thread::spawn({
        let (local, stop) = (Arc::clone(&local), Arc::clone(&stop));
        move || {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                local.partition(9).put(&i.to_le_bytes(), b"fg").unwrap();
                i += 1;
            }
        }
    });
    manager.set_peer("peer", Arc::new(Arc::clone(&peer)), BTreeSet::from([0]));
    // While the writes are busy, the allowed repair rate is a tenth of theirs.
    let yielded = wait_until(Duration::from_secs(20), || {
        let s = manager.status();
        s.foreground_writes_per_sec > merkle_index::BUSY_WRITES_PER_SEC
            && s.repair_keys_per_sec_now
                == Some(((s.foreground_writes_per_sec as f64 / 10.0).round() as u64).max(1))
    });
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(yielded, "{:?}", manager.status());
    // Once they stop, the repair runs at its caps (none here) and finishes.
    let converged = wait_until(Duration::from_secs(60), || {
        roots(&local, &[0]) == roots(&peer, &[0])
    });
    assert!(converged, "{:?}", manager.status());
    manager.stop();
}

#[test]
fn the_status_measures_foreground_writes_with_no_repair_running() {
    let (_d, a) = store();
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.status(); // starts a window
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(manager.status().foreground_writes_per_sec, 0);
    let start = Instant::now();
    let mut writes = 0u64;
    while start.elapsed() < Duration::from_millis(300) {
        a.put(&writes.to_le_bytes(), b"v").unwrap();
        writes += 1;
    }
    let rate = manager.status().foreground_writes_per_sec;
    // The window began at the previous status read, at most a little before the writes.
    let lowest = writes as f64 / (start.elapsed().as_secs_f64() + 0.1);
    assert!(rate as f64 >= lowest * 0.9, "{rate}/s for {writes} writes");
    std::thread::sleep(Duration::from_millis(150));
    assert_eq!(manager.status().foreground_writes_per_sec, 0, "quiet again");
    manager.stop();
}

/// The same over TCP, where the wait matters: a server closes a connection whose peer
/// has not sent its next request within its timeout (here 3 s), and the batch waits 5 s
/// for its tokens. The exchange keeps the connection open with a cheap request every 2 s
/// of waiting; the batch also carries a record for the server, so a request follows the
/// wait on the same connection.
#[cfg(feature = "net")]
#[test]
fn a_slow_batch_under_the_byte_cap_does_not_outlast_a_network_peers_idle_timeout() {
    use merkle_index::net::{self, Key, NetPeer, ServeOptions, Stop};
    let ((_da, a), (_db, b)) = (store(), store());
    b.put(b"big", &vec![7u8; 100_000]).unwrap();
    a.put(b"small", b"for the server").unwrap();
    let key = Key::from_secret(b"a long shared secret, 16+ bytes").unwrap();
    let (listener, addr) = net::bind("127.0.0.1:0").unwrap();
    let stop = Stop::new(addr);
    let server = std::thread::spawn({
        let (served, key, stop) = (Arc::clone(&b), key.clone(), stop.clone());
        let options = ServeOptions {
            timeout: Duration::from_secs(3),
            ..ServeOptions::default()
        };
        move || net::serve(served, listener, key, options, &stop, Arc::new(|_| {}))
    });
    // About 5 s of tokens at 20 KB/s: more than the server waits between requests.
    let options = ManagerOptions {
        max_repair_bytes_per_sec: Some(20_000),
        ..fast()
    };
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    let peer = NetPeer {
        addr: addr.to_string(),
        key,
        timeout: Duration::from_secs(3),
    };
    let started = Instant::now();
    manager.set_peer("b", Arc::new(peer), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(20), || {
        a.partition(0).get(b"big").unwrap().is_some()
            && b.partition(0).get(b"small").unwrap().is_some()
    }));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(4900), "{took:?}");
    let status = manager.status();
    assert_eq!(status.peers[0].partitions[0].errors, 0, "{status:?}");
    manager.stop();
    stop.trigger();
    server.join().unwrap().unwrap();
}

/// A peer whose replica calls `hook` before answering each request (each one round trip
/// over a network), with the partition it concerns if any; an error from the hook is
/// the answer.
type Hook = dyn Fn(Option<u32>) -> merkle_index::Result<()> + Send + Sync;

struct Hooked(Arc<Store>, Arc<Hook>);

struct HookedReplica<'a>(&'a Store, &'a Hook);

impl Replica for HookedReplica<'_> {
    fn shape(&self) -> merkle_index::Result<merkle_index::Shape> {
        Replica::shape(self.0)
    }
    fn partitions(&self) -> merkle_index::Result<Vec<u32>> {
        (self.1)(None)?;
        Replica::partitions(self.0)
    }
    fn roots(&self, p: &[u32]) -> merkle_index::Result<Vec<merkle_index::Hash>> {
        (self.1)(None)?;
        Replica::roots(self.0, p)
    }
    fn children(&self, p: u32, l: u32, n: &[u64]) -> merkle_index::Result<Vec<merkle_index::Hash>> {
        (self.1)(Some(p))?;
        Replica::children(self.0, p, l, n)
    }
    fn descend(
        &self,
        p: u32,
        l: u32,
        theirs: &[(u64, merkle_index::Hash)],
    ) -> merkle_index::Result<Vec<(u64, Vec<merkle_index::Hash>)>> {
        (self.1)(Some(p))?;
        Replica::descend(self.0, p, l, theirs)
    }
    fn entries(&self, p: u32, s: &[u32]) -> merkle_index::Result<Vec<Vec<merkle_index::Entry>>> {
        (self.1)(Some(p))?;
        Replica::entries(self.0, p, s)
    }
    fn segments(
        &self,
        p: u32,
        s: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> merkle_index::Result<merkle_index::SegmentsPage> {
        (self.1)(Some(p))?;
        Replica::segments(self.0, p, s, after)
    }
    fn records(&self, p: u32, k: &[Vec<u8>]) -> merkle_index::Result<Vec<merkle_index::Lookup>> {
        (self.1)(Some(p))?;
        Replica::records(self.0, p, k)
    }
    fn apply(
        &self,
        p: u32,
        r: &[merkle_index::Repair],
    ) -> merkle_index::Result<merkle_index::Applied> {
        (self.1)(Some(p))?;
        Replica::apply(self.0, p, r)
    }
}

impl Peer for Hooked {
    fn open(&self) -> merkle_index::Result<Box<dyn Replica + Send + '_>> {
        Ok(Box::new(HookedReplica(&self.0, &*self.1)))
    }
}

#[test]
fn partitions_that_agree_cost_one_round_trip_for_all_of_them() {
    let ((_da, a), (_db, b)) = (store(), store());
    // 200 partitions alike on both sides, and two that differ.
    for p in 0..200u32 {
        for s in [&a, &b] {
            s.partition(p).put_versioned(b"k", b"v", 1).unwrap();
        }
    }
    a.partition(7).put(b"only on a", b"v").unwrap();
    b.partition(150).put(b"only on b", b"v").unwrap();
    roots(&a, &[]); // the index is current (a write not yet hashed waits for the next round)
    roots(&b, &[]);
    let requests = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counted = Arc::clone(&requests);
    let count = move |_| {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    };
    let options = ManagerOptions {
        interval: Duration::from_secs(3600),
        ..fast()
    };
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    let all: BTreeSet<u32> = (0..200).collect();
    let peer = Hooked(Arc::clone(&b), Arc::new(count));
    manager.set_peer("b", Arc::new(peer), all.clone());
    let done = || {
        let status = manager.status();
        status.exchanges >= 1 && status.peers.iter().all(|p| p.running.is_none())
    };
    assert!(wait_until(Duration::from_secs(20), done));
    let partitions: Vec<u32> = all.into_iter().collect();
    assert!(roots(&a, &partitions) == roots(&b, &partitions));
    let status = manager.status();
    let peer = &status.peers[0];
    assert_eq!(peer.partitions.len(), 200, "every partition has its status");
    assert!(peer
        .partitions
        .iter()
        .all(|s| s.last_success_unix_ms.is_some()));
    // One request for the 200 roots, then a few for each of the two walks (a walk of
    // agreeing trees would take one each: 200 or more).
    let asked = requests.load(std::sync::atomic::Ordering::Relaxed);
    assert!(asked <= 1 + 2 * 6, "{asked} requests");
    manager.stop();
}

#[test]
fn a_partition_that_fails_does_not_keep_the_others_from_their_exchange() {
    let ((_da, a), (_db, b)) = (store(), store());
    for p in 0..3u32 {
        a.partition(p).put(b"only on a", b"v").unwrap();
    }
    roots(&a, &[]);
    // Every request about partition 1 fails, as one holding a record no frame can carry.
    let fail_one = |p: Option<u32>| match p {
        Some(1) => Err(Error::Protocol(
            "peer: partition 1 cannot be answered".into(),
        )),
        _ => Ok(()),
    };
    let options = ManagerOptions {
        interval: Duration::from_secs(3600),
        ..fast()
    };
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    let peer = Hooked(Arc::clone(&b), Arc::new(fail_one));
    manager.set_peer("b", Arc::new(peer), BTreeSet::from([0, 1, 2]));
    let done = || {
        let status = manager.status();
        status.exchanges >= 1 && status.peers.iter().all(|p| p.running.is_none())
    };
    assert!(wait_until(Duration::from_secs(20), done));
    assert_eq!(
        roots(&a, &[0, 2]),
        roots(&b, &[0, 2]),
        "partitions 0 and 2 synced"
    );
    assert_ne!(roots(&a, &[1]), roots(&b, &[1]));
    let status = manager.status();
    let peer = &status.peers[0];
    let errors: Vec<u64> = peer.partitions.iter().map(|s| s.errors).collect();
    assert_eq!(errors, [0, 1, 0], "{status:?}");
    assert!(peer.partitions[1]
        .last_error
        .as_deref()
        .is_some_and(|e| e.contains("cannot be answered")));
    // The peer answered: it is not backed off for one partition's failure.
    assert_eq!(peer.failures, 0);
    manager.stop();
}

/// A peer whose trees have another shape cannot be exchanged with at all: it backs off
/// as an unreachable one does, after one comparison, not one failure per partition.
#[test]
fn a_peer_with_other_trees_backs_off_at_once() {
    let (_da, a) = store();
    let db = tempfile::tempdir().unwrap();
    let b = Arc::new(Store::open(db.path(), merkle_index::Options::default()).unwrap());
    for p in 0..3u32 {
        a.partition(p).put(b"k", b"v").unwrap();
        b.partition(p).put(b"k", b"w").unwrap();
    }
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0, 1, 2]));
    let backed_off = || manager.status().peers.iter().any(|p| p.failures >= 2);
    assert!(wait_until(Duration::from_secs(20), backed_off));
    let status = manager.status();
    assert!(
        status.peers[0].partitions.iter().all(|s| s.errors == 0),
        "{status:?}"
    );
    let why = status.peers[0].last_error.as_deref().unwrap_or_default();
    assert!(why.contains("different trees"), "{why}");
    manager.stop();
}

/// A peer whose versions run ahead of this node's clock by more than its drift bound:
/// the repairs are refused every time, and the status says so, not only that the
/// partition differs.
#[test]
fn repairs_refused_for_a_skewed_clock_show_in_the_status() {
    let (_da, a) = store();
    let db = tempfile::tempdir().unwrap();
    let lenient = small_options().max_clock_drift(Duration::from_secs(10 * 3600));
    let b = Arc::new(Store::open(db.path(), lenient).unwrap());
    let ahead = common::hlc_now_plus(Duration::from_secs(2 * 3600));
    b.partition(0)
        .put_versioned(b"from the future", b"v", ahead)
        .unwrap();
    b.sync_index().unwrap();
    let options = ManagerOptions {
        interval: Duration::from_secs(3600),
        ..fast()
    };
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    let done = || {
        let status = manager.status();
        status.exchanges >= 1 && status.peers.iter().all(|p| p.running.is_none())
    };
    assert!(wait_until(Duration::from_secs(20), done));
    let status = manager.status();
    let partition = &status.peers[0].partitions[0];
    assert_eq!(
        (
            partition.differences,
            partition.repaired_local,
            partition.refused
        ),
        (1, 0, 1),
        "{status:?}"
    );
    assert!(status
        .to_prometheus()
        .contains("merkle_index_last_exchange_refused{peer=\"b\",partition=\"0\"} 1"));
    manager.stop();
}

/// Peers given no partition list bring their other partitions only while this node
/// holds fewer than `max_partitions`, however many exchanges run at once; the rest are
/// left out and counted. Before the cap, a peer could make a node create any number.
#[test]
fn peers_without_a_list_fill_this_node_only_up_to_max_partitions() {
    let ((_da, a), (_db, b), (_dc, c)) = (store(), store(), store());
    for p in [100, 101] {
        a.partition(p).put(b"own", b"a").unwrap();
    }
    for p in 0..10 {
        b.partition(p).put(b"k", b"b").unwrap();
        c.partition(p + 10).put(b"k", b"c").unwrap();
    }
    b.partition(100).put(b"shared", b"b").unwrap();
    let manager = Manager::start(
        Arc::clone(&a),
        ManagerOptions {
            max_partitions: 6,
            ..fast()
        },
    )
    .unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::new());
    manager.set_peer("c", Arc::new(Arc::clone(&c)), BTreeSet::new());
    let settled = || {
        let status = manager.status();
        status.exchanges >= 6 && status.peers.iter().map(|p| p.left_out).sum::<u64>() == 16
    };
    assert!(
        wait_until(Duration::from_secs(20), settled),
        "{:?}",
        manager.status()
    );
    a.sync_index().unwrap();
    assert_eq!(a.partitions().len(), 6, "{:?}", a.partitions());
    // What this node held is still exchanged.
    assert!(a.partition(100).get(b"shared").unwrap().is_some());
    assert!(b.partition(101).get(b"own").unwrap().is_some());
    manager.stop();
}

/// A partition given away leaves every peer's list, and neither a listed nor a
/// discovering peer brings it back; naming it in a list again takes it back.
#[test]
fn a_dropped_partition_stays_given_away_until_listed_again() {
    let ((_da, a), (_db, b), (_dc, c)) = (store(), store(), store());
    for p in [0, 1] {
        a.partition(p).put(b"a", b"a").unwrap();
        b.partition(p).put(b"b", b"b").unwrap();
        c.partition(p).put(b"c", b"c").unwrap();
    }
    let manager = Manager::start(Arc::clone(&a), fast()).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0, 1]));
    manager.set_peer("c", Arc::new(Arc::clone(&c)), BTreeSet::new());
    let holds = |s: &Store, p: u32, k: &[u8]| s.partition(p).get(k).unwrap().is_some();
    let converged = || [b"a", b"b", b"c"].iter().all(|k| holds(&a, 1, &k[..]));
    assert!(wait_until(Duration::from_secs(20), converged));

    assert_eq!(manager.drop_partition(1).unwrap(), 3);
    let before = manager.status().exchanges;
    manager.exchange_now(None);
    assert!(wait_until(Duration::from_secs(20), || manager
        .status()
        .exchanges
        >= before + 4));
    a.sync_index().unwrap();
    assert_eq!(a.partitions(), vec![0]);
    assert_eq!(a.count_keys(1).unwrap(), 0);
    let status = manager.status();
    for peer in &status.peers {
        assert!(
            peer.partitions.iter().all(|s| s.partition == 0),
            "{status:?}"
        );
    }
    // The peers keep theirs (a drop is local).
    assert!(holds(&b, 1, b"b") && holds(&c, 1, b"c"));

    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0, 1]));
    manager.exchange_now(Some("b"));
    assert!(wait_until(Duration::from_secs(20), || holds(&a, 1, b"b")));
    manager.stop();
}

/// A drop waits for an exchange that is repairing the partition: otherwise the rest of
/// that exchange would write part of the partition back after the drop.
#[test]
fn a_drop_waits_for_the_exchange_repairing_the_partition() {
    let ((_da, a), (_db, b)) = (store(), store());
    for i in 0..200u32 {
        b.partition(1).put(&i.to_be_bytes(), b"v").unwrap();
    }
    // The peer holds its first request about partition 1 until told to go on.
    let (entered_tx, entered) = std::sync::mpsc::channel::<()>();
    let (go, go_rx) = std::sync::mpsc::channel::<()>();
    let gate = std::sync::Mutex::new(Some((entered_tx, go_rx)));
    let hook = move |partition: Option<u32>| {
        if partition == Some(1) {
            if let Some((entered, go)) = gate.lock().unwrap().take() {
                entered.send(()).unwrap();
                go.recv().unwrap();
            }
        }
        Ok(())
    };
    let manager = Arc::new(Manager::start(Arc::clone(&a), fast()).unwrap());
    let peer = Hooked(Arc::clone(&b), Arc::new(hook));
    manager.set_peer("b", Arc::new(peer), BTreeSet::from([1]));
    entered.recv_timeout(Duration::from_secs(20)).unwrap();

    let (dropped_tx, dropped) = std::sync::mpsc::channel();
    let dropping = {
        let manager = Arc::clone(&manager);
        std::thread::spawn(move || dropped_tx.send(manager.drop_partition(1).unwrap()).unwrap())
    };
    std::thread::sleep(Duration::from_millis(300));
    let early = dropped.try_recv().is_ok();
    go.send(()).unwrap();
    assert!(!early, "the drop did not wait");
    dropped.recv_timeout(Duration::from_secs(20)).unwrap();
    dropping.join().unwrap();
    a.sync_index().unwrap();
    assert_eq!(a.count_keys(1).unwrap(), 0);
    assert!(a.root(1).is_zero());
    // And no later exchange brings it back.
    manager.exchange_now(None);
    std::thread::sleep(Duration::from_millis(500));
    a.sync_index().unwrap();
    assert_eq!(a.count_keys(1).unwrap(), 0);
}

/// Two nodes that purge tombstones after a grace: a delete reaches both, both purge it,
/// and it stays purged (neither hands it back to the other). Without the exchanges'
/// grace rule the tombstones bounce: each node's copy restarts the other's grace.
#[test]
fn purged_tombstones_stay_purged_on_both_nodes() {
    let ((_da, a), (_db, b)) = (store(), store());
    let options = || ManagerOptions {
        interval: Duration::from_millis(30),
        scrub_keys_per_sec: Some(5_000),
        tombstone_grace: Some(Duration::from_millis(300)),
        ..fast()
    };
    // The scrubs pass every second, half a second apart, so a purges each tombstone
    // about half a second before b does (or after), and exchanges run in between.
    let on_a = Manager::start(Arc::clone(&a), options()).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let on_b = Manager::start(Arc::clone(&b), options()).unwrap();
    on_a.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    on_b.set_peer("a", Arc::new(Arc::clone(&a)), BTreeSet::from([0]));
    for i in 0..40u32 {
        a.partition(0).put(&i.to_be_bytes(), b"v").unwrap();
    }
    assert!(wait_until(Duration::from_secs(10), || b
        .count_keys(0)
        .unwrap()
        == 40));
    for i in 0..40u32 {
        a.partition(0).delete(&i.to_be_bytes()).unwrap();
    }
    let empty = |s: &Store| s.count_keys(0).unwrap() == 0;
    assert!(
        wait_until(Duration::from_secs(20), || empty(&a) && empty(&b)),
        "a holds {}, b {}",
        a.count_keys(0).unwrap(),
        b.count_keys(0).unwrap()
    );
    // A few more graces' worth of exchanges and scrubs: nothing comes back.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(empty(&a) && empty(&b));
    assert!(roots(&a, &[0])[0].is_zero() && roots(&b, &[0])[0].is_zero());
    let purged = on_a.status().scrub.purged + on_b.status().scrub.purged;
    assert!(purged >= 80, "purged {purged}");
    on_a.stop();
    on_b.stop();
}

/// A peer that can be switched off.
struct Flaky(Arc<Store>, Arc<std::sync::atomic::AtomicBool>);

impl Peer for Flaky {
    fn open(&self) -> merkle_index::Result<Box<dyn Replica + Send + '_>> {
        if self.1.load(std::sync::atomic::Ordering::SeqCst) {
            Ok(Box::new(&*self.0))
        } else {
            Err(Error::Protocol("connection refused (test peer)".into()))
        }
    }
}

/// With a tombstone grace, a peer out of reach for longer than the grace may hold keys
/// deleted and purged here meanwhile: it is held, not exchanged with, until added again.
/// A shorter outage changes nothing.
#[test]
fn a_peer_gone_longer_than_the_tombstone_grace_is_held_until_added_again() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let ((_da, a), (_db, b)) = (store(), store());
    let up = Arc::new(AtomicBool::new(true));
    let options = ManagerOptions {
        interval: Duration::from_millis(30),
        tombstone_grace: Some(Duration::from_millis(800)),
        ..fast()
    };
    let manager = Manager::start(Arc::clone(&a), options).unwrap();
    let peer = || Arc::new(Flaky(Arc::clone(&b), Arc::clone(&up)));
    manager.set_peer("b", peer(), BTreeSet::from([0]));
    let synced = |key: &[u8]| a.partition(0).get(key).unwrap().is_some();
    b.partition(0).put(b"first", b"v").unwrap();
    assert!(wait_until(Duration::from_secs(10), || synced(b"first")));

    // Away for less than the grace: exchanges resume.
    up.store(false, SeqCst);
    std::thread::sleep(Duration::from_millis(200));
    b.partition(0).put(b"after a short outage", b"v").unwrap();
    up.store(true, SeqCst);
    assert!(wait_until(Duration::from_secs(10), || synced(
        b"after a short outage"
    )));

    // Away for longer: held.
    up.store(false, SeqCst);
    std::thread::sleep(Duration::from_millis(1200));
    b.partition(0).put(b"after a long outage", b"v").unwrap();
    up.store(true, SeqCst);
    let held = || manager.status().peers[0].held;
    assert!(wait_until(Duration::from_secs(10), held));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!synced(b"after a long outage"));
    let status = manager.status();
    let why = status.peers[0].last_error.clone().unwrap_or_default();
    assert!(why.contains("longer than tombstone_grace"), "{why}");

    // Added again: accepted, and its record starts afresh.
    manager.remove_peer("b");
    assert_eq!(a.peer_last_exchange_unix_ms("b"), None);
    manager.set_peer("b", peer(), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(10), || synced(
        b"after a long outage"
    )));
    assert!(!manager.status().peers[0].held);
    manager.stop();
}

/// The hold survives a restart of this node: a peer out of reach since before the
/// restart, for longer than the grace in all, is held when it is back (the store records
/// each peer's last exchange). Wiped, it is accepted.
#[test]
fn a_peer_gone_longer_than_the_tombstone_grace_is_held_across_a_restart() {
    use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
    let dir = tempfile::tempdir().unwrap();
    let (_db, b) = store();
    let up = Arc::new(AtomicBool::new(true));
    let options = || ManagerOptions {
        interval: Duration::from_millis(30),
        tombstone_grace: Some(Duration::from_millis(800)),
        ..fast()
    };
    let peer = || Arc::new(Flaky(Arc::clone(&b), Arc::clone(&up)));
    let a = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    let manager = Manager::start(Arc::clone(&a), options()).unwrap();
    manager.set_peer("b", peer(), BTreeSet::from([0]));
    b.partition(0).put(b"first", b"v").unwrap();
    assert!(wait_until(Duration::from_secs(10), || a
        .partition(0)
        .get(b"first")
        .unwrap()
        .is_some()));
    let reached = a.peer_last_exchange_unix_ms("b").unwrap();
    assert!(manager.status().peers[0].last_exchange_unix_ms >= Some(reached));

    // b goes away; this node restarts soon after, within the grace, while b is away.
    up.store(false, SeqCst);
    manager.stop();
    Arc::into_inner(a).unwrap().close().unwrap();
    let a = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    assert_eq!(a.peer_last_exchange_unix_ms("b"), Some(reached));
    let manager = Manager::start(Arc::clone(&a), options()).unwrap();
    manager.set_peer("b", peer(), BTreeSet::from([0]));
    // Known from before the restart, in the status too.
    assert_eq!(
        manager.status().peers[0].last_exchange_unix_ms,
        Some(reached)
    );
    std::thread::sleep(Duration::from_millis(1200));
    b.partition(0).put(b"after a long outage", b"v").unwrap();
    up.store(true, SeqCst);
    let synced = || {
        a.partition(0)
            .get(b"after a long outage")
            .unwrap()
            .is_some()
    };
    assert!(wait_until(Duration::from_secs(10), || manager
        .status()
        .peers[0]
        .held));
    std::thread::sleep(Duration::from_millis(300));
    assert!(!synced());

    // Wiped (a new node at its address): it holds nothing that could come back, so it
    // is accepted as it is, and bootstrapped from here.
    let (_dw, wiped) = store();
    manager.set_peer("b", Arc::new(Arc::clone(&wiped)), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(10), || wiped
        .partition(0)
        .get(b"first")
        .unwrap()
        .is_some()));
    assert!(!manager.status().peers[0].held);
    assert!(a.peer_last_exchange_unix_ms("b").unwrap() > reached);
    manager.stop();
}

/// A store whose last exchange is older than the tombstone grace may bring back keys its
/// replicas deleted and purged meanwhile: a manager with a grace refuses to start on it
/// (the time survives a reopen), unless told to accept it. A store never exchanged, or
/// one exchanged recently, starts.
#[test]
fn a_store_away_longer_than_the_tombstone_grace_is_refused_unless_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let (_db, b) = store();
    let options = |accept_stale| ManagerOptions {
        interval: Duration::from_millis(30),
        tombstone_grace: Some(Duration::from_millis(600)),
        accept_stale,
        ..fast()
    };
    let a = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    assert_eq!(a.last_exchange_unix_ms(), None);
    let manager = Manager::start(Arc::clone(&a), options(false)).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    assert!(wait_until(Duration::from_secs(10), || a
        .last_exchange_unix_ms()
        .is_some()));
    manager.stop();
    // Restarted at once: fine.
    Manager::start(Arc::clone(&a), options(false))
        .unwrap()
        .stop();
    // Away for longer than the grace, and reopened.
    Arc::into_inner(a).unwrap().close().unwrap();
    std::thread::sleep(Duration::from_millis(900));
    let a = Arc::new(Store::open(dir.path(), small_options()).unwrap());
    match Manager::start(Arc::clone(&a), options(false)) {
        Err(Error::StaleReplica { grace_secs: 0, .. }) => {}
        Err(e) => panic!("expected StaleReplica, got {e}"),
        Ok(_) => panic!("a stale store was accepted"),
    }
    // Accepted knowingly; its next exchange makes it current again.
    let manager = Manager::start(Arc::clone(&a), options(true)).unwrap();
    manager.set_peer("b", Arc::new(Arc::clone(&b)), BTreeSet::from([0]));
    let before = a.last_exchange_unix_ms().unwrap();
    assert!(wait_until(Duration::from_secs(10), || a
        .last_exchange_unix_ms()
        .is_some_and(|t| t > before)));
    manager.stop();
    Manager::start(Arc::clone(&a), options(false))
        .unwrap()
        .stop();
}
