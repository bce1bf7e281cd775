//! `merkle-index serve`: answers authenticated peers, one thread per connection, until
//! stopped.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use merkle_index::{Replica, Store};

use super::auth::{nonce, Key};
use super::frame::{self, FrameError};
use super::proto::{self, Challenge, Hello, Request, Response, Welcome, PROTOCOL};

/// Limits of one server.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Read and write timeout per frame; also how long a shutdown waits for requests
    /// in flight.
    pub timeout: Duration,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
}

/// Where the server's log lines go (stderr for `serve`, a file for the demo).
pub type Log = Arc<dyn Fn(&str) + Send + Sync>;

/// A log that writes `merkle-index serve: ...` lines to stderr.
pub fn stderr_log() -> Log {
    Arc::new(|line| eprintln!("merkle-index serve: {line}"))
}

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

    /// Asks the server to stop: no new connections; connections end after the request
    /// they are serving.
    pub fn trigger(&self) {
        self.flag.store(true, SeqCst);
        // Wake the blocking accept with a connection of our own.
        let _ = TcpStream::connect_timeout(&self.wake, Duration::from_secs(1));
    }

    fn is_set(&self) -> bool {
        self.flag.load(SeqCst)
    }
}

/// Serves `store` on `listener` until `stop` is triggered, then lets each connection
/// finish the request it is serving (idle ones are closed at once) and returns once
/// every connection thread has ended, so the caller can close the store cleanly.
pub fn serve(
    store: Arc<Store>,
    listener: TcpListener,
    key: Key,
    limits: Limits,
    stop: &Stop,
    log: Log,
) -> anyhow::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    // Each connection's socket, so a stop can end the reads of idle ones.
    let open: Arc<Mutex<HashMap<u64, TcpStream>>> = Arc::default();
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
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
        if active.fetch_add(1, SeqCst) >= limits.max_connections {
            active.fetch_sub(1, SeqCst);
            log(&format!(
                "{peer}: refused, {} connections already",
                limits.max_connections
            ));
            continue;
        }
        if let Ok(clone) = stream.try_clone() {
            lock(&open).insert(id, clone);
        }
        let name = format!("peer {peer}");
        let spawned = {
            let (store, key, active, open, log, stop) = (
                Arc::clone(&store),
                key.clone(),
                Arc::clone(&active),
                Arc::clone(&open),
                Arc::clone(&log),
                stop.clone(),
            );
            std::thread::Builder::new()
                .name(name.clone())
                .spawn(move || {
                    let mut stream = stream;
                    // Logged before the socket closes, so the peer's view and the log agree.
                    match connection(&store, &mut stream, &key, limits, &stop) {
                        Ok(requests) => log(&format!("{peer}: done after {requests} requests")),
                        Err(e) => log(&format!("{peer}: refused: {e:#}")),
                    }
                    lock(&open).remove(&id);
                    drop(stream);
                    active.fetch_sub(1, SeqCst);
                })
        };
        match spawned {
            Ok(t) => threads.push(t),
            Err(e) => {
                lock(&open).remove(&id);
                active.fetch_sub(1, SeqCst);
                log(&format!("{name}: no thread for it: {e}"));
            }
        }
    }
    drop(listener);
    // Idle connections are blocked reading their next request: end those reads. A
    // request being served finishes and is answered; the connection then ends.
    for stream in lock(&open).values() {
        let _ = stream.shutdown(Shutdown::Read);
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `addr` (port 0 picks a free one) and says where it listens.
pub fn bind(addr: &str) -> anyhow::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).with_context(|| format!("listen on {addr}"))?;
    let local = listener.local_addr()?;
    Ok((listener, local))
}

/// Runs one connection: handshake first, then requests until the peer hangs up.
fn connection(
    store: &Store,
    stream: &mut TcpStream,
    key: &Key,
    limits: Limits,
    stop: &Stop,
) -> anyhow::Result<u64> {
    stream.set_read_timeout(Some(limits.timeout))?;
    stream.set_write_timeout(Some(limits.timeout))?;
    stream.set_nodelay(true)?;
    let server_nonce = nonce()?;
    frame::write(
        stream,
        &Challenge {
            protocol: PROTOCOL,
            server_nonce,
        },
    )?;
    let (hello, _) = frame::read::<Hello>(stream).context("handshake")?;
    if !key.check("client", &server_nonce, &hello.client_nonce, &hello.mac) {
        anyhow::bail!("handshake: wrong key (MAC mismatch)");
    }
    let shape = store.shape();
    let welcome = Welcome {
        mac: key.mac("server", &hello.client_nonce, &server_nonce),
        width: shape.width,
        levels: shape.levels,
    };
    frame::write(stream, &welcome)?;
    let mut requests = 0;
    loop {
        if stop.is_set() {
            return Ok(requests);
        }
        let request = match frame::read_next::<Request>(stream) {
            Ok(Some((r, _))) => r,
            Ok(None) => return Ok(requests),
            Err(e) => return Err(e).context(format!("request {}", requests + 1)),
        };
        requests += 1;
        let response = answer(store, request).unwrap_or_else(|e| Response::Error(e.to_string()));
        match frame::write(stream, &response) {
            Err(FrameError::BadLength(n)) => {
                let e = format!(
                    "response of {n} bytes is over the frame limit; ask for a smaller batch"
                );
                frame::write(stream, &Response::Error(e))?;
            }
            other => {
                other?;
            }
        }
    }
}

fn answer(store: &Store, request: Request) -> merkle_index::Result<Response> {
    Ok(match request {
        Request::Partitions => Response::Partitions(Replica::partitions(store)?),
        Request::Roots(p) => Response::Hashes(proto::hashes(&store.roots(&p)?)),
        Request::Children {
            partition,
            level,
            parents,
        } => {
            // Bound the answer before computing it: an authenticated peer still must not
            // make us allocate more than one frame.
            let hashes = parents.len() as u64 * u64::from(store.shape().width);
            if hashes * 18 > u64::from(frame::MAX_FRAME) {
                return Err(merkle_index::Error::InvalidArgument(format!(
                    "{} parents is too many for one request",
                    parents.len()
                )));
            }
            Response::Hashes(proto::hashes(&Replica::children(
                store, partition, level, &parents,
            )?))
        }
        Request::Entries {
            partition,
            segments,
        } => Response::Entries(
            store
                .entries(partition, &segments)?
                .iter()
                .map(|s| s.iter().map(Into::into).collect())
                .collect(),
        ),
        Request::Records { partition, keys } => Response::Records(
            store
                .records(partition, &keys)?
                .iter()
                .map(Into::into)
                .collect(),
        ),
        Request::Apply { partition, repairs } => {
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
