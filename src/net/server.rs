//! Serving a store to anti-entropy peers: one thread per connection, bounded in
//! connections (in all and per peer address), in request and answer sizes, and in time.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::store::Store;

use super::answer::answer;
use super::channel::{check_timeout, decode, Channel};
use super::key::Key;
use super::proto::{Hello, Request, Response, Welcome, PROTOCOL};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::MAX_ITEMS;
    use crate::options::Options;

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
