//! Serving a store to anti-entropy peers: one thread per connection, bounded in
//! connections (in all and per peer address), in request and answer sizes, and in time.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exchange::Replica;
use crate::record::MAX_KEY_BYTES;
use crate::store::Store;

use super::channel::{check_timeout, decode, Channel};
use super::key::Key;
use super::proto::{
    self, Hello, Request, Response, Welcome, ANSWER_BUDGET, MAX_DESCEND_HASHES, MAX_DESCEND_NODES,
    MAX_PARTITIONS, PROTOCOL,
};

/// Which partitions peers may write to (`Apply`). Reads of any partition are answered
/// (an absent one is empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Only partitions the store holds.
    Existing,
    /// Those, and these (a node that is to receive a partition it does not hold yet).
    Listed(BTreeSet<u32>),
    /// Any partition.
    Any,
}

/// How a server runs.
#[derive(Clone)]
pub struct ServeOptions {
    /// Deadline for the whole handshake, for each whole frame, and for a peer to start
    /// its next request (default 10 s; positive, at most one day).
    pub timeout: Duration,
    /// Connections served at once (default 64, at least 1); more are refused.
    pub max_connections: usize,
    /// Connections from one peer address at once (default 8, at least 1).
    pub max_per_address: usize,
    /// Partitions peers may write to (default: those the store holds).
    pub accept: Accept,
    /// Answers `Status` requests (a node's manager status as JSON); `None`: refused.
    pub status: Option<StatusFn>,
}

/// Produces the status text a `Status` request answers with.
pub type StatusFn = Arc<dyn Fn() -> String + Send + Sync>;

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("timeout", &self.timeout)
            .field("max_connections", &self.max_connections)
            .field("max_per_address", &self.max_per_address)
            .field("accept", &self.accept)
            .field("status", &self.status.is_some())
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            timeout: Duration::from_secs(10),
            max_connections: 64,
            max_per_address: 8,
            accept: Accept::Existing,
            status: None,
        }
    }
}

/// Where the server's log lines go (stderr for `serve`, a file for the demo).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// Stops a running [`serve`] from another thread (a signal handler, a test).
#[derive(Clone)]
pub struct Stop {
    flag: Arc<AtomicBool>,
    wake: SocketAddr,
}

impl Stop {
    /// A stop handle for a server listening on `listening`.
    pub fn new(listening: SocketAddr) -> Stop {
        let mut wake = listening;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        Stop {
            flag: Arc::new(AtomicBool::new(false)),
            wake,
        }
    }

    /// Asks the server to stop: no new connections; each connection ends after the
    /// request it is serving.
    pub fn trigger(&self) {
        self.flag.store(true, SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
    }

    /// True once triggered.
    pub fn is_set(&self) -> bool {
        self.flag.load(SeqCst)
    }
}

#[derive(Default)]
struct Open {
    /// Each connection's socket, so a stop can end the reads of idle ones.
    sockets: HashMap<u64, TcpStream>,
    per_address: HashMap<IpAddr, usize>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Serves `store` on `listener` until `stop` is triggered, then lets each connection
/// finish the request it is serving (idle ones are closed at once) and returns once
/// every connection thread has ended, so the caller can close the store cleanly.
pub fn serve(
    store: Arc<Store>,
    listener: TcpListener,
    key: Key,
    options: ServeOptions,
    stop: &Stop,
    log: Log,
) -> Result<()> {
    check_timeout(options.timeout)?;
    if options.max_connections == 0 || options.max_per_address == 0 {
        return Err(Error::InvalidOptions(
            "max_connections and max_per_address must be at least 1".into(),
        ));
    }
    let open: Arc<Mutex<Open>> = Arc::default();
    let mut threads: Vec<JoinHandle<()>> = Vec::new();
    for (id, stream) in (0u64..).zip(listener.incoming()) {
        if stop.is_set() {
            break;
        }
        threads.retain(|t| !t.is_finished());
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                log(&format!("accept failed: {e}"));
                continue;
            }
        };
        let Ok(peer) = stream.peer_addr() else {
            continue;
        };
        {
            let mut open = lock(&open);
            let from_here = open.per_address.get(&peer.ip()).copied().unwrap_or(0);
            if open.sockets.len() >= options.max_connections {
                log(&format!(
                    "{peer}: refused, {} connections already",
                    options.max_connections
                ));
                continue;
            }
            if from_here >= options.max_per_address {
                log(&format!(
                    "{peer}: refused, {from_here} connections from {} already",
                    peer.ip()
                ));
                continue;
            }
            let Ok(clone) = stream.try_clone() else {
                continue;
            };
            open.sockets.insert(id, clone);
            *open.per_address.entry(peer.ip()).or_default() += 1;
        }
        let release = {
            let open = Arc::clone(&open);
            move || {
                let mut open = lock(&open);
                open.sockets.remove(&id);
                if let Some(n) = open.per_address.get_mut(&peer.ip()) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        open.per_address.remove(&peer.ip());
                    }
                }
            }
        };
        let spawned = {
            let (store, key, log, stop, options) = (
                Arc::clone(&store),
                key.clone(),
                Arc::clone(&log),
                stop.clone(),
                options.clone(),
            );
            let release = release.clone();
            std::thread::Builder::new()
                .name(format!("peer {peer}"))
                .spawn(move || {
                    // Logged before the socket closes, so the peer's view and the log agree.
                    match connection(&store, stream, &key, &options, &stop) {
                        Ok(requests) => log(&format!("{peer}: done after {requests} requests")),
                        Err(e) => log(&format!("{peer}: ended: {e}")),
                    }
                    release();
                })
        };
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                release();
                log(&format!("{peer}: no thread for it: {e}"));
            }
        }
    }
    drop(listener);
    // Idle connections are blocked reading their next request: end those reads. A
    // request being served finishes and is answered; the connection then ends.
    for stream in lock(&open).sockets.values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

/// Binds `addr` (port 0 picks a free one) and says where it listens.
pub fn bind(addr: &str) -> Result<(TcpListener, SocketAddr)> {
    let listener =
        TcpListener::bind(addr).map_err(|e| Error::io(format!("listen on {addr}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| Error::io("listening address", e))?;
    Ok((listener, local))
}

/// Runs one connection: the handshake, then requests until the peer hangs up.
fn connection(
    store: &Store,
    stream: TcpStream,
    key: &Key,
    options: &ServeOptions,
    stop: &Stop,
) -> Result<u64> {
    let _ = stream.set_nodelay(true);
    let shape = store.shape();
    let mut channel = Channel::accept(stream, key, options.timeout, |hello: Hello| {
        if hello.protocol != PROTOCOL {
            return Err(Error::Protocol(format!(
                "client speaks protocol {}, this server {PROTOCOL}",
                hello.protocol
            )));
        }
        Ok(Welcome {
            protocol: PROTOCOL,
            width: shape.width,
            levels: shape.levels,
        })
    })?;
    let mut requests = 0;
    loop {
        if stop.is_set() {
            return Ok(requests);
        }
        let received = channel.recv_with(options.timeout, Some(options.timeout), decode)?;
        let Some(request) = received else {
            return Ok(requests);
        };
        requests += 1;
        // A request that does not decode (a list over its limit, a kind of request this
        // version does not know) is answered with the reason; the frame was whole, so
        // the connection stays in step.
        let response = match request {
            Err(e) => Response::Error(e.to_string()),
            Ok(Request::Status) => match &options.status {
                Some(status) => Response::Status(status()),
                None => Response::Error("this server runs no manager".into()),
            },
            Ok(request) => answer(store, request, &options.accept)
                .unwrap_or_else(|e| Response::Error(e.to_string())),
        };
        // Answers are bounded to fit a frame, but for a record stored before the size
        // limits existed (or a status of very many partitions); the peer is told, and
        // the connection goes on.
        let too_large = |bytes| {
            Response::Error(format!(
                "the answer ({bytes} bytes) is over the frame limit: a record over the \
                 store's size limits (`merkle-index verify` lists them), or a status of \
                 very many partitions"
            ))
        };
        channel.send_or(&response, too_large, options.timeout)?;
    }
}

/// Peers write only to partitions the store holds or the server accepts.
fn check_accepted(store: &Store, partition: u32, accept: &Accept) -> Result<()> {
    let allowed = match accept {
        Accept::Any => true,
        Accept::Listed(listed) => {
            listed.contains(&partition) || store.partitions().contains(&partition)
        }
        Accept::Existing => store.partitions().contains(&partition),
    };
    if !allowed {
        return Err(Error::Protocol(format!(
            "partition {partition} is not served here; nothing written"
        )));
    }
    Ok(())
}

fn too_many(what: &str, n: usize) -> Error {
    Error::Protocol(format!("{n} {what} in one request (over the limit)"))
}

fn answer(store: &Store, request: Request, accept: &Accept) -> Result<Response> {
    Ok(match request {
        Request::Partitions => {
            let partitions = Replica::partitions(store)?;
            if partitions.len() > MAX_PARTITIONS {
                return Err(Error::InvalidArgument(format!(
                    "this store holds {} partitions, more than one answer lists ({MAX_PARTITIONS}); \
                     give its peers their partitions",
                    partitions.len()
                )));
            }
            Response::Partitions(partitions)
        }
        Request::Roots(p) => Response::Hashes(proto::hashes(&store.roots(&p)?)),
        Request::Children {
            partition,
            level,
            parents,
        } => {
            // Children of a few thousand parents are millions of hashes in a wide tree:
            // bounded before they are read.
            let hashes = parents.len().saturating_mul(store.shape().width as usize);
            if hashes > MAX_DESCEND_HASHES {
                return Err(too_many("child hashes asked", hashes));
            }
            Response::Hashes(proto::hashes(&Replica::children(
                store, partition, level, &parents,
            )?))
        }
        Request::Descend {
            partition,
            level,
            runs,
        } => {
            let count: usize = runs.iter().map(|(_, hashes)| hashes.len()).sum();
            if count > MAX_DESCEND_NODES {
                return Err(too_many("nodes", count));
            }
            let width = store.shape().width as usize;
            let mut nodes = Vec::with_capacity(count);
            for (first, hashes) in runs {
                for (i, h) in (0u64..).zip(hashes) {
                    // A run counting past u64::MAX is past any tree (the store refuses
                    // numbers past the level's nodes).
                    let n = first.checked_add(i).ok_or_else(|| {
                        Error::InvalidArgument(format!("node {first} + {i} is past the tree"))
                    })?;
                    nodes.push((n, crate::Hash::from_bytes(h)));
                }
            }
            // Answer a prefix whose children fit the budget (each differing node may
            // bring `width` hashes), at least one node.
            let step = (MAX_DESCEND_HASHES / width).max(1);
            let (mut covered, mut hashes, mut out) = (0usize, 0usize, Vec::new());
            for chunk in nodes.chunks(step) {
                // Stop once the budget is spent: an answer holds at most the budget plus
                // one chunk's worst case, well inside a frame.
                if hashes >= MAX_DESCEND_HASHES {
                    break;
                }
                let answers = store.descend(partition, level, chunk)?;
                hashes += answers.iter().map(|(_, kids)| kids.len()).sum::<usize>();
                covered += chunk.len();
                out.extend(
                    answers
                        .into_iter()
                        .map(|(n, kids)| (n, proto::hashes(&kids))),
                );
            }
            Response::Descended {
                covered: covered as u64,
                nodes: out,
            }
        }
        Request::Segments {
            partition,
            segments,
            after,
        } => {
            if after.as_ref().is_some_and(|k| k.len() > MAX_KEY_BYTES) {
                return Err(Error::InvalidArgument(format!(
                    "a key to start after of more than {MAX_KEY_BYTES} bytes"
                )));
            }
            // The store stops at the byte budget; the client asks again for the rest.
            let page = store.segments(partition, &segments, after.as_deref())?;
            Response::Segments {
                lists: page
                    .lists
                    .iter()
                    .map(|items| items.iter().map(Into::into).collect())
                    .collect(),
                partial: page.partial,
            }
        }
        Request::Records { partition, keys } => {
            let mut out = Vec::new();
            let mut bytes = 0;
            for key in &keys {
                let found = store.records(partition, std::slice::from_ref(key))?;
                let size: usize = found
                    .iter()
                    .map(|l| l.record().map_or(8, |r| r.value.len() + 48))
                    .sum();
                if !out.is_empty() && bytes + size > ANSWER_BUDGET {
                    break;
                }
                bytes += size;
                out.extend(found.iter().map(Into::into));
            }
            Response::Records(out)
        }
        Request::Write { partition, writes } => {
            check_accepted(store, partition, accept)?;
            let mut written = 0;
            for proto::WireWrite { key, record } in writes {
                written += u64::from(store.replicate(partition, &key, &record.into())?);
            }
            // Acknowledged writes are durable, as a replica's acknowledgement promises.
            store.flush()?;
            Response::Written(written)
        }
        Request::Status => Response::Error("status is answered by the connection".into()),
        Request::Apply { partition, repairs } => {
            check_accepted(store, partition, accept)?;
            let repairs: Vec<_> = repairs.into_iter().map(Into::into).collect();
            let applied = store.apply(partition, &repairs)?;
            // Acknowledged repairs are durable: the peer will not send them again.
            store.flush()?;
            Response::Applied {
                written: applied.written,
                stale: applied.stale,
                refused: applied.refused,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::{MAX_ITEMS, MAX_SEGMENTS};
    use crate::options::Options;

    #[test]
    fn requests_over_the_limits_are_refused_before_work() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        let over = MAX_ITEMS + 1;
        let record = || (&crate::Record::value(1, b"v")).into();
        // Each list one item over its limit is refused by the decoder, before the
        // request exists; at its limit it decodes.
        let requests = |n: usize, segments: usize, nodes: usize| {
            [
                Request::Roots(vec![0; n]),
                Request::Children {
                    partition: 0,
                    level: 0,
                    parents: vec![0; n],
                },
                Request::Descend {
                    partition: 0,
                    level: 1,
                    runs: vec![(0, Vec::new()); nodes],
                },
                Request::Records {
                    partition: 0,
                    keys: vec![Vec::new(); n],
                },
                Request::Segments {
                    partition: 0,
                    segments: vec![(0, true); segments],
                    after: None,
                },
                Request::Apply {
                    partition: 0,
                    repairs: (0..n)
                        .map(|_| proto::WireRepair {
                            key: Vec::new(),
                            expected: None,
                            record: record(),
                        })
                        .collect(),
                },
                Request::Write {
                    partition: 0,
                    writes: (0..n)
                        .map(|_| proto::WireWrite {
                            key: Vec::new(),
                            record: record(),
                        })
                        .collect(),
                },
            ]
        };
        let decoded = |request: &Request| {
            crate::net::channel::decode::<Request>(&postcard::to_stdvec(request).unwrap())
        };
        for request in requests(MAX_ITEMS, MAX_SEGMENTS, MAX_DESCEND_NODES) {
            assert!(decoded(&request).is_ok(), "{request:?}");
        }
        for request in requests(over, MAX_SEGMENTS + 1, MAX_DESCEND_NODES + 1) {
            let err = decoded(&request).unwrap_err().to_string();
            assert!(err.contains("over its limit"), "{err}");
        }
        // Nodes over the limit spread over runs within it are refused before work.
        let spread = Request::Descend {
            partition: 0,
            level: 1,
            runs: vec![(0, vec![[0u8; 16]; MAX_DESCEND_NODES / 2 + 1]); 2],
        };
        let err = answer(&store, decoded(&spread).unwrap(), &Accept::Any).unwrap_err();
        assert!(err.to_string().contains("in one request"), "{err}");
        // Children are bounded by the hashes they make: in a tree of width 65,536, four
        // parents at most (a few thousand would be gigabytes).
        let wide_dir = tempfile::tempdir().unwrap();
        let wide = Options::default().with_segments(1 << 16, 1 << 16).unwrap();
        let wide = Store::open(wide_dir.path(), wide).unwrap();
        let children = |n: usize| Request::Children {
            partition: 0,
            level: 0,
            parents: vec![0; n],
        };
        match answer(&wide, children(4), &Accept::Any).unwrap() {
            Response::Hashes(h) => assert_eq!(h.len(), 4 << 16),
            other => panic!("{other:?}"),
        }
        let err = answer(&wide, children(5), &Accept::Any).unwrap_err();
        assert!(err.to_string().contains("child hashes asked"), "{err}");
        // A partition the store does not hold is not written unless accepted.
        let repair = |key: &[u8]| proto::WireRepair {
            key: key.to_vec(),
            expected: None,
            record: (&crate::Record::value(1, b"v")).into(),
        };
        let refused = answer(
            &store,
            Request::Apply {
                partition: 9,
                repairs: vec![repair(b"k")],
            },
            &Accept::Existing,
        );
        assert!(refused.unwrap_err().to_string().contains("not served here"));
        assert_eq!(store.count_keys(9).unwrap(), 0);
        let listed = Accept::Listed([9].into_iter().collect());
        let applied = answer(
            &store,
            Request::Apply {
                partition: 9,
                repairs: vec![repair(b"k")],
            },
            &listed,
        )
        .unwrap();
        assert!(matches!(applied, Response::Applied { written: 1, .. }));
    }

    #[test]
    fn node_numbers_past_the_tree_are_refused_without_panicking() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), Options::default()).unwrap();
        store.partition(0).put(b"k", b"v").unwrap();
        store.sync_index().unwrap();
        let levels = store.shape().levels;
        let requests = [
            // Runs that would count past u64::MAX, at an upper level and the segments.
            Request::Descend {
                partition: 0,
                level: 1,
                runs: vec![(u64::MAX, vec![[1u8; 16]; 2])],
            },
            Request::Descend {
                partition: 0,
                level: levels,
                runs: vec![(u64::MAX - 1, vec![[1u8; 16]; 3])],
            },
            Request::Descend {
                partition: 0,
                level: 2,
                runs: vec![(1 << 40, vec![[1u8; 16]])],
            },
            // Parents whose children are past the tree, or past u64::MAX.
            Request::Children {
                partition: 0,
                level: 1,
                parents: vec![u64::MAX],
            },
            Request::Children {
                partition: 0,
                level: levels - 1,
                parents: vec![1 << 40],
            },
            Request::Children {
                partition: 0,
                level: levels,
                parents: vec![0],
            },
        ];
        for request in requests {
            let shown = format!("{request:?}");
            let err = answer(&store, request, &Accept::Any).unwrap_err();
            assert!(
                err.to_string().contains("past") || err.to_string().contains("no children"),
                "{shown}: {err}"
            );
        }
    }

    /// A request that does not decode gets an answer saying why, and the connection
    /// goes on: a client that pages wrongly or speaks a newer request learns the reason
    /// instead of finding the connection closed.
    #[test]
    fn an_undecodable_request_is_answered_and_the_connection_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Options::default()).unwrap());
        store.partition(3).put(b"k", b"v").unwrap();
        let key = Key::from_secret(b"a long shared secret, 16+ bytes").unwrap();
        let (listener, addr) = bind("127.0.0.1:0").unwrap();
        let stop = Stop::new(addr);
        let server = std::thread::spawn({
            let (store, key, stop) = (Arc::clone(&store), key.clone(), stop.clone());
            move || {
                serve(
                    store,
                    listener,
                    key,
                    ServeOptions::default(),
                    &stop,
                    Arc::new(|_| {}),
                )
            }
        });
        let timeout = Duration::from_secs(10);
        let stream = TcpStream::connect(addr).unwrap();
        let hello = Hello { protocol: PROTOCOL };
        let (mut channel, _): (Channel, Welcome) =
            Channel::connect(stream, &key, &hello, timeout).unwrap();
        let mut ask = |request: &Request| {
            channel.send(request, timeout).unwrap();
            channel.recv::<Response>(timeout, None).unwrap().unwrap()
        };
        match ask(&Request::Roots(vec![3; MAX_ITEMS + 1])) {
            Response::Error(e) => assert!(e.contains("over its limit"), "{e}"),
            other => panic!("not an error: {other:?}"),
        }
        match ask(&Request::Partitions) {
            Response::Partitions(p) => assert_eq!(p, [3]),
            other => panic!("the connection did not go on: {other:?}"),
        }
        drop(channel);
        stop.trigger();
        server.join().unwrap().unwrap();
    }
}
