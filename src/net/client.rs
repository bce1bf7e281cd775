//! A [`Replica`] on the other end of a secure connection.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::exchange::{Applied, Lookup, Repair, Replica, SegmentsPage};
use crate::options::Shape;
use crate::record::Record;
use crate::store::Entry;
use crate::Hash;

use super::channel::{check_timeout, Channel, MAX_FRAME};
use super::key::Key;
use super::proto::{
    Hello, Request, Response, Welcome, WireRepair, WireWrite, MAX_DESCEND_HASHES,
    MAX_DESCEND_NODES, MAX_ITEMS, MAX_SEGMENTS, PROTOCOL,
};

/// A connection to a peer's [`serve`](super::serve), usable wherever a [`Replica`] is.
/// Long requests are paged ([`MAX_ITEMS`] items, and answers the server cut at its
/// byte budget are asked for again), so any divergence works within bounded frames.
pub struct Client {
    shape: Shape,
    timeout: Duration,
    channel: Mutex<Channel>,
    /// Requests answered after the handshake.
    pub round_trips: AtomicU64,
    /// Bytes of the handshake alone (both directions).
    pub handshake_bytes: u64,
}

impl Client {
    /// Connects to `addr`, runs the handshake with `key`, and learns the peer's shape.
    /// `timeout` bounds the connect, the handshake and each whole frame (positive, at
    /// most one day).
    pub fn connect(addr: &str, key: &Key, timeout: Duration) -> Result<Client> {
        check_timeout(timeout)?;
        let target = addr
            .to_socket_addrs()
            .map_err(|e| Error::io(format!("resolve {addr}"), e))?
            .next()
            .ok_or_else(|| Error::InvalidArgument(format!("no address for {addr}")))?;
        let stream = TcpStream::connect_timeout(&target, timeout)
            .map_err(|e| Error::io(format!("connect to {addr}"), e))?;
        let _ = stream.set_nodelay(true);
        let hello = Hello { protocol: PROTOCOL };
        let (channel, welcome): (Channel, Welcome) =
            Channel::connect(stream, key, &hello, timeout)?;
        if welcome.protocol != PROTOCOL {
            return Err(Error::Protocol(format!(
                "server speaks protocol {}, this client {PROTOCOL}",
                welcome.protocol
            )));
        }
        let shape = Shape::new(welcome.width, welcome.levels)
            .map_err(|e| Error::Protocol(format!("the server sent an invalid shape: {e}")))?;
        let handshake_bytes = channel.sent + channel.received;
        Ok(Client {
            shape,
            timeout,
            channel: Mutex::new(channel),
            round_trips: AtomicU64::new(0),
            handshake_bytes,
        })
    }

    /// Bytes sent and received so far, handshake included.
    pub fn wire_bytes(&self) -> (u64, u64) {
        let channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        (channel.sent, channel.received)
    }

    fn call(&self, request: &Request) -> Result<Response> {
        let mut channel = self.channel.lock().unwrap_or_else(|p| p.into_inner());
        channel.send(request, self.timeout)?;
        let response = channel
            .recv::<Response>(self.timeout, None)?
            .ok_or_else(|| Error::Protocol("the peer closed the connection".into()))?;
        self.round_trips.fetch_add(1, Relaxed);
        match response {
            Response::Error(e) => Err(Error::Protocol(format!("peer: {e}"))),
            other => Ok(other),
        }
    }
}

impl Client {
    /// Sends replication messages (the write path of a replicated store): each record
    /// is written on the peer unless its stored record wins. Returns how many were
    /// written. Paged like every request, by count and by bytes.
    pub fn replicate(&self, partition: u32, writes: &[(Vec<u8>, Record)]) -> Result<u64> {
        let mut written = 0;
        let mut rest = writes;
        while !rest.is_empty() {
            let size = |(key, record): &(Vec<u8>, Record)| key.len() + record.value.len() + 64;
            let (page, tail) = rest.split_at(page_len(rest, MAX_ITEMS, size));
            rest = tail;
            let request = Request::Write {
                partition,
                writes: page
                    .iter()
                    .map(|(key, record)| WireWrite {
                        key: key.clone(),
                        record: record.into(),
                    })
                    .collect(),
            };
            match self.call(&request)? {
                Response::Written(n) if n <= page.len() as u64 => written += n,
                other => return Err(unexpected("write", &other)),
            }
        }
        Ok(written)
    }

    /// The peer's status text (its anti-entropy manager's, as JSON).
    pub fn status(&self) -> Result<String> {
        match self.call(&Request::Status)? {
            Response::Status(text) => Ok(text),
            other => Err(unexpected("status", &other)),
        }
    }
}

/// A network peer for the [`Manager`](crate::Manager): each exchange opens a fresh
/// connection.
#[derive(Debug, Clone)]
pub struct NetPeer {
    /// host:port of the peer's server.
    pub addr: String,
    /// The shared key.
    pub key: Key,
    /// Connect, handshake and frame deadline.
    pub timeout: Duration,
}

impl crate::manager::Peer for NetPeer {
    fn open(&self) -> Result<Box<dyn Replica + Send + '_>> {
        Ok(Box::new(Client::connect(
            &self.addr,
            &self.key,
            self.timeout,
        )?))
    }
}

fn unexpected(what: &str, got: &Response) -> Error {
    let kind = match got {
        Response::Partitions(_) => "partitions",
        Response::Hashes(_) => "hashes",
        Response::Records(_) => "records",
        Response::Segments { .. } => "segments",
        Response::Applied { .. } => "applied",
        Response::Written(_) => "written",
        Response::Descended { .. } => "descended",
        Response::Status(_) => "status",
        Response::Error(_) => "error",
    };
    Error::Protocol(format!("peer answered {kind} to a {what} request"))
}

/// An answer with more items than asked for, or (where the answer may not be cut) fewer,
/// is a protocol error: paired with the request it would hide or invent differences.
fn expect_items(what: &str, asked: usize, got: usize) -> Result<()> {
    if asked != got {
        return Err(Error::Protocol(format!(
            "peer answered {got} {what} for {asked} asked"
        )));
    }
    Ok(())
}

fn hashes(response: Response, what: &str) -> Result<Vec<Hash>> {
    match response {
        Response::Hashes(h) => Ok(h.into_iter().map(Hash::from_bytes).collect()),
        other => Err(unexpected(what, &other)),
    }
}

/// Asks for `items` in pages: each request holds at most `limit` items and about half
/// a frame of them by `size` (at least one), and an answer may cover only a prefix of
/// its request (the server's byte budget), never nothing.
fn paged<I: Clone, O>(
    items: &[I],
    limit: usize,
    size: impl Fn(&I) -> usize,
    what: &str,
    mut ask: impl FnMut(&[I]) -> Result<Vec<O>>,
) -> Result<Vec<O>> {
    let mut out = Vec::with_capacity(items.len());
    let mut rest = items;
    while !rest.is_empty() {
        let page = rest.get(..page_len(rest, limit, &size)).unwrap_or(rest);
        let got = ask(page)?;
        if got.is_empty() || got.len() > page.len() {
            return Err(Error::Protocol(format!(
                "peer answered {} {what} for {} asked",
                got.len(),
                page.len()
            )));
        }
        rest = rest.get(got.len()..).unwrap_or_default();
        out.extend(got);
    }
    Ok(out)
}

/// How many of `items` the next request takes: at most `limit`, and items of at most
/// half a frame in all by `size` (but at least one; one item always fits a frame, see
/// [`MAX_VALUE_BYTES`](crate::MAX_VALUE_BYTES)).
fn page_len<I>(items: &[I], limit: usize, size: impl Fn(&I) -> usize) -> usize {
    let mut bytes = 0usize;
    let fits = items
        .iter()
        .take(limit)
        .take_while(|item| {
            bytes = bytes.saturating_add(size(item));
            bytes <= MAX_FRAME / 2
        })
        .count();
    fits.max(1).min(items.len())
}

impl Replica for Client {
    fn shape(&self) -> Result<Shape> {
        Ok(self.shape)
    }

    fn partitions(&self) -> Result<Vec<u32>> {
        match self.call(&Request::Partitions)? {
            Response::Partitions(p) => Ok(p),
            other => Err(unexpected("partitions", &other)),
        }
    }

    fn roots(&self, partitions: &[u32]) -> Result<Vec<Hash>> {
        let mut out = Vec::with_capacity(partitions.len());
        for page in partitions.chunks(MAX_ITEMS) {
            let roots = hashes(self.call(&Request::Roots(page.to_vec()))?, "roots")?;
            expect_items("roots", page.len(), roots.len())?;
            out.extend(roots);
        }
        Ok(out)
    }

    fn children(&self, partition: u32, level: u32, parents: &[u64]) -> Result<Vec<Hash>> {
        let width = self.shape.width as usize;
        // As many parents as the server answers for: at most MAX_DESCEND_HASHES children.
        let per_request = (MAX_DESCEND_HASHES / width).clamp(1, MAX_ITEMS);
        let mut out = Vec::with_capacity(parents.len() * width);
        for page in parents.chunks(per_request) {
            let request = Request::Children {
                partition,
                level,
                parents: page.to_vec(),
            };
            let children = hashes(self.call(&request)?, "children")?;
            expect_items("child hashes", page.len() * width, children.len())?;
            out.extend(children);
        }
        Ok(out)
    }

    fn descend(
        &self,
        partition: u32,
        level: u32,
        theirs: &[(u64, Hash)],
    ) -> Result<Vec<(u64, Vec<Hash>)>> {
        let mut out = Vec::new();
        let mut rest = theirs;
        while !rest.is_empty() {
            let page = rest
                .get(..MAX_DESCEND_NODES.min(rest.len()))
                .unwrap_or(rest);
            // Runs of consecutive nodes travel as (first node, hashes): 16 bytes a node.
            let mut runs: Vec<(u64, Vec<[u8; 16]>)> = Vec::new();
            for &(n, h) in page {
                match runs.last_mut() {
                    Some((first, hashes)) if *first + hashes.len() as u64 == n => {
                        hashes.push(h.to_bytes())
                    }
                    _ => runs.push((n, vec![h.to_bytes()])),
                }
            }
            let request = Request::Descend {
                partition,
                level,
                runs,
            };
            match self.call(&request)? {
                Response::Descended { covered, nodes } => {
                    let covered = usize::try_from(covered).unwrap_or(usize::MAX);
                    if covered == 0 || covered > page.len() || nodes.len() > covered {
                        return Err(Error::Protocol(format!(
                            "peer answered {} nodes covering {covered} of {} sent",
                            nodes.len(),
                            page.len()
                        )));
                    }
                    out.extend(
                        nodes
                            .into_iter()
                            .map(|(n, kids)| (n, kids.into_iter().map(Hash::from_bytes).collect())),
                    );
                    rest = rest.get(covered..).unwrap_or_default();
                }
                other => return Err(unexpected("descend", &other)),
            }
        }
        Ok(out)
    }

    fn entries(&self, partition: u32, segments: &[u32]) -> Result<Vec<Vec<Entry>>> {
        // Whole segments, assembled from as many answers as the server's budget takes.
        let asked: Vec<(u32, bool)> = segments.iter().map(|&s| (s, false)).collect();
        let mut out: Vec<Vec<Entry>> = Vec::with_capacity(segments.len());
        let (mut rest, mut after, mut continued) = (asked.as_slice(), None, false);
        while !rest.is_empty() {
            let page = self.segments(partition, rest, after.as_deref())?;
            page.check_order(after.as_deref())?;
            let answered = page.lists.len();
            for (i, list) in page.lists.into_iter().enumerate() {
                let list = list.into_iter().map(|item| item.entry);
                match out.last_mut() {
                    // The rest of a segment the previous answer stopped inside.
                    Some(last) if i == 0 && continued => last.extend(list),
                    _ => out.push(list.collect()),
                }
            }
            continued = page.partial;
            after = if page.partial {
                out.last().and_then(|l| l.last()).map(|e| e.key.clone())
            } else {
                None
            };
            rest = rest
                .get(answered - usize::from(page.partial)..)
                .unwrap_or_default();
        }
        Ok(out)
    }

    fn segments(
        &self,
        partition: u32,
        segments: &[(u32, bool)],
        after: Option<&[u8]>,
    ) -> Result<SegmentsPage> {
        // One request; the caller asks again for what an answer cut at the budget left.
        let page = segments.get(..MAX_SEGMENTS).unwrap_or(segments);
        let request = Request::Segments {
            partition,
            segments: page.to_vec(),
            after: after.map(<[u8]>::to_vec),
        };
        match self.call(&request)? {
            Response::Segments { lists, partial } => {
                if lists.len() > page.len() || (lists.is_empty() && !page.is_empty()) {
                    return Err(Error::Protocol(format!(
                        "peer answered {} segments for {} asked",
                        lists.len(),
                        page.len()
                    )));
                }
                let lists = lists
                    .into_iter()
                    .zip(page)
                    .map(|(items, &(_, with_records))| {
                        items
                            .into_iter()
                            .map(|item| item.into_item(partition, with_records))
                            .collect()
                    })
                    .collect();
                Ok(SegmentsPage { lists, partial })
            }
            other => Err(unexpected("segments", &other)),
        }
    }

    fn records(&self, partition: u32, keys: &[Vec<u8>]) -> Result<Vec<Lookup>> {
        paged(
            keys,
            MAX_ITEMS,
            |key| key.len() + 8,
            "records",
            |page| {
                let request = Request::Records {
                    partition,
                    keys: page.to_vec(),
                };
                match self.call(&request)? {
                    Response::Records(r) => Ok(r.into_iter().map(Lookup::from).collect()),
                    other => Err(unexpected("records", &other)),
                }
            },
        )
    }

    fn apply(&self, partition: u32, repairs: &[Repair]) -> Result<Applied> {
        let mut total = Applied::default();
        let mut rest = repairs;
        while !rest.is_empty() {
            // Pages bounded in items and in bytes (values can be large).
            let size = |r: &Repair| r.key.len() + r.record.value.len() + 64;
            let (page, tail) = rest.split_at(page_len(rest, MAX_ITEMS, size));
            rest = tail;
            let asked = page.len() as u64;
            let request = Request::Apply {
                partition,
                repairs: page.iter().map(WireRepair::from).collect(),
            };
            match self.call(&request)? {
                Response::Applied {
                    written,
                    stale,
                    refused,
                } => {
                    // Counted without overflow: a peer's counts that wrap around to the
                    // number asked are as wrong as any other.
                    let accounted = written
                        .checked_add(stale)
                        .and_then(|n| n.checked_add(refused));
                    if accounted != Some(asked) {
                        return Err(Error::Protocol(format!(
                            "peer accounted for {written} written, {stale} stale and {refused} refused of {asked} repairs"
                        )));
                    }
                    total.add(Applied {
                        written,
                        stale,
                        refused,
                    });
                }
                other => return Err(unexpected("apply", &other)),
            }
        }
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;
    use crate::net::proto::Hello;

    /// A server that holds the key but answers every request with `answer`.
    fn lying_server(key: &Key, answer: fn() -> Response) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let key = key.clone();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let timeout = Duration::from_secs(10);
            let mut channel = Channel::accept(stream, &key, timeout, |_: Hello| {
                Ok(Welcome {
                    protocol: PROTOCOL,
                    width: 16,
                    levels: 5,
                })
            })
            .unwrap();
            while let Ok(Some(_)) = channel.recv::<Request>(timeout, None) {
                if channel.send(&answer(), timeout).is_err() {
                    break;
                }
            }
        });
        addr
    }

    #[test]
    fn repair_counts_that_wrap_around_are_a_protocol_error_not_a_panic() {
        let key = Key::from_secret(b"a secret shared by both sides").unwrap();
        // 2^64 - 1 written and 2 stale "add up" to the one repair sent, modulo 2^64.
        let addr = lying_server(&key, || Response::Applied {
            written: u64::MAX,
            stale: 2,
            refused: 0,
        });
        let client = Client::connect(&addr, &key, Duration::from_secs(10)).unwrap();
        let repair = Repair {
            key: b"k".to_vec(),
            expected: None,
            record: Record::value(1, b"v"),
        };
        let err = client.apply(0, &[repair]).unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err}");
        assert!(err.to_string().contains("of 1 repairs"), "{err}");
    }
}
