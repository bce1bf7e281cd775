//! A `Replica` on the other end of a TCP connection.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, Context};
use merkle_index::{Applied, Entry, Error, Hash, Lookup, Repair, Replica, Shape};

use super::auth::{nonce, Key};
use super::frame;
use super::proto::{Challenge, Hello, Request, Response, Welcome, PROTOCOL};

/// An authenticated connection to `merkle-index serve`.
pub struct Client {
    shape: Shape,
    stream: Mutex<TcpStream>,
    /// Bytes written and read, handshake included.
    pub sent: AtomicU64,
    pub received: AtomicU64,
    /// Request/response exchanges after the handshake.
    pub round_trips: AtomicU64,
    /// Bytes of the handshake alone (both directions).
    pub handshake_bytes: u64,
}

impl Client {
    /// Connects, authenticates both ways, and returns the client.
    pub fn connect(addr: &str, key: &Key, timeout: Duration) -> anyhow::Result<Client> {
        let target = addr
            .to_socket_addrs()
            .with_context(|| format!("resolve {addr}"))?
            .next()
            .with_context(|| format!("no address for {addr}"))?;
        let mut stream = TcpStream::connect_timeout(&target, timeout)
            .with_context(|| format!("connect to {addr}"))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        let (challenge, mut received) =
            frame::read::<Challenge>(&mut stream).context("read the server's challenge")?;
        if challenge.protocol != PROTOCOL {
            bail!(
                "server speaks protocol {}, this client {PROTOCOL}",
                challenge.protocol
            );
        }
        let client_nonce = nonce()?;
        let hello = Hello {
            client_nonce,
            mac: key.mac("client", &challenge.server_nonce, &client_nonce),
        };
        let sent = frame::write(&mut stream, &hello)?;
        let (welcome, n) = frame::read::<Welcome>(&mut stream)
            .context("the server refused the handshake (wrong key file?)")?;
        received += n;
        if !key.check(
            "server",
            &client_nonce,
            &challenge.server_nonce,
            &welcome.mac,
        ) {
            bail!("the server failed to prove it holds the key; not talking to it");
        }
        let shape = Shape::new(welcome.width, welcome.levels)
            .context("the server sent an invalid tree shape")?;
        Ok(Client {
            shape,
            stream: Mutex::new(stream),
            sent: AtomicU64::new(sent),
            received: AtomicU64::new(received),
            round_trips: AtomicU64::new(0),
            handshake_bytes: sent + received,
        })
    }

    fn call(&self, request: &Request) -> merkle_index::Result<Response> {
        let mut stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let remote = |e: frame::FrameError| Error::Io {
            context: "anti-entropy peer".into(),
            source: std::io::Error::other(e.to_string()),
        };
        let sent = frame::write(&mut *stream, request).map_err(remote)?;
        let (response, received) = frame::read::<Response>(&mut *stream).map_err(remote)?;
        self.sent.fetch_add(sent, Relaxed);
        self.received.fetch_add(received, Relaxed);
        self.round_trips.fetch_add(1, Relaxed);
        match response {
            Response::Error(e) => Err(Error::InvalidArgument(format!("peer: {e}"))),
            other => Ok(other),
        }
    }
}

fn unexpected(what: &str, got: &Response) -> Error {
    Error::InvalidArgument(format!("peer answered {got:?} to a {what} request"))
}

/// An answer with more or fewer items than asked for is a protocol error: paired up
/// with the request, it would hide (or invent) differences.
fn expect_items(what: &str, asked: usize, got: usize) -> merkle_index::Result<()> {
    if asked != got {
        return Err(Error::Protocol(format!(
            "peer answered {got} {what} for {asked} asked"
        )));
    }
    Ok(())
}

fn hashes(response: Response, what: &str) -> merkle_index::Result<Vec<Hash>> {
    match response {
        Response::Hashes(h) => Ok(h.into_iter().map(Hash::from_bytes).collect()),
        other => Err(unexpected(what, &other)),
    }
}

impl Replica for Client {
    fn shape(&self) -> merkle_index::Result<Shape> {
        Ok(self.shape)
    }

    fn partitions(&self) -> merkle_index::Result<Vec<u32>> {
        match self.call(&Request::Partitions)? {
            Response::Partitions(p) => Ok(p),
            other => Err(unexpected("partitions", &other)),
        }
    }

    fn roots(&self, partitions: &[u32]) -> merkle_index::Result<Vec<Hash>> {
        let roots = hashes(self.call(&Request::Roots(partitions.to_vec()))?, "roots")?;
        expect_items("roots", partitions.len(), roots.len())?;
        Ok(roots)
    }

    fn children(
        &self,
        partition: u32,
        level: u32,
        parents: &[u64],
    ) -> merkle_index::Result<Vec<Hash>> {
        let request = Request::Children {
            partition,
            level,
            parents: parents.to_vec(),
        };
        let children = hashes(self.call(&request)?, "children")?;
        expect_items(
            "child hashes",
            parents.len() * self.shape.width as usize,
            children.len(),
        )?;
        Ok(children)
    }

    fn entries(&self, partition: u32, segments: &[u32]) -> merkle_index::Result<Vec<Vec<Entry>>> {
        let request = Request::Entries {
            partition,
            segments: segments.to_vec(),
        };
        match self.call(&request)? {
            Response::Entries(e) => {
                expect_items("segment entry lists", segments.len(), e.len())?;
                Ok(e.into_iter()
                    .map(|s| s.into_iter().map(Entry::from).collect())
                    .collect())
            }
            other => Err(unexpected("entries", &other)),
        }
    }

    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> merkle_index::Result<Vec<Lookup>> {
        let request = Request::Records {
            partition,
            keys: keys.to_vec(),
        };
        match self.call(&request)? {
            Response::Records(r) => {
                expect_items("records", keys.len(), r.len())?;
                Ok(r.into_iter().map(Lookup::from).collect())
            }
            other => Err(unexpected("records", &other)),
        }
    }

    fn apply(&self, partition: u32, repairs: &[Repair]) -> merkle_index::Result<Applied> {
        if repairs.is_empty() {
            return Ok(Applied::default());
        }
        let request = Request::Apply {
            partition,
            repairs: repairs.iter().map(Into::into).collect(),
        };
        match self.call(&request)? {
            Response::Applied {
                written,
                stale,
                refused,
            } => Ok(Applied {
                written,
                stale,
                refused,
            }),
            other => Err(unexpected("apply", &other)),
        }
    }
}
