//! `merkle-index serve`: answers authenticated peers, one thread per connection.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use merkle_index::{Replica, Store};

use super::auth::{nonce, Key};
use super::frame::{self, FrameError};
use super::proto::{self, Challenge, Hello, Request, Response, Welcome, PROTOCOL};

/// Limits of one server.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Read and write timeout per frame.
    pub timeout: Duration,
    /// Connections served at once; more are refused.
    pub max_connections: usize,
}

/// Serves `store` on `listener` until the process ends.
pub fn serve(
    store: Arc<Store>,
    listener: TcpListener,
    key: Key,
    limits: Limits,
) -> anyhow::Result<()> {
    let active = Arc::new(AtomicUsize::new(0));
    for stream in listener.incoming() {
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                eprintln!("merkle-index serve: accept failed: {e}");
                continue;
            }
        };
        let peer = stream
            .peer_addr()
            .map_or_else(|_| "unknown peer".to_string(), |a| a.to_string());
        if active.fetch_add(1, SeqCst) >= limits.max_connections {
            active.fetch_sub(1, SeqCst);
            eprintln!(
                "merkle-index serve: {peer}: refused, {} connections already",
                limits.max_connections
            );
            continue;
        }
        let (store, key, active) = (Arc::clone(&store), key.clone(), Arc::clone(&active));
        let name = format!("peer {peer}");
        let spawned = std::thread::Builder::new()
            .name(name.clone())
            .spawn(move || {
                let mut stream = stream;
                // Logged before the socket closes, so the peer's view and the log agree.
                match connection(&store, &mut stream, &key, limits) {
                    Ok(requests) => {
                        eprintln!("merkle-index serve: {peer}: done after {requests} requests")
                    }
                    Err(e) => eprintln!("merkle-index serve: {peer}: refused: {e:#}"),
                }
                drop(stream);
                active.fetch_sub(1, SeqCst);
            });
        if let Err(e) = spawned {
            eprintln!("merkle-index serve: {name}: no thread for it: {e}");
        }
    }
    Ok(())
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
