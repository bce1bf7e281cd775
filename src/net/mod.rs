//! Anti-entropy over the network (cargo feature `net`): serve a store to peers, and a
//! [`Client`] that is a [`Replica`](crate::Replica), so `diff` and `sync` run between
//! nodes exactly as between local stores.
//!
//! Transport: TCP carrying a Noise `NNpsk0` session (X25519, ChaCha20-Poly1305,
//! BLAKE2s) keyed by a pre-shared key: both sides prove they hold the key in the
//! handshake, and every later frame is encrypted and authenticated with an implicit
//! nonce, so reading, injecting, replaying or reordering bytes fails (see `channel`).
//! Everything a peer sends is bounded before work and allocation: handshake messages
//! ([`HANDSHAKE_MAX`]), frames ([`MAX_FRAME`]), items per list of a request or answer
//! ([`MAX_ITEMS`] and its kin, checked while the list is decoded),
//! answer bytes ([`ANSWER_BUDGET`](crate::ANSWER_BUDGET)), time per handshake and per
//! frame, connections in all and per address; and a peer may write only to partitions
//! the server accepts.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use merkle_index::net::{self, Client, Key, ServeOptions, Stop};
//! use merkle_index::{Options, Store, SyncOptions};
//!
//! # fn main() -> merkle_index::Result<()> {
//! let key = Key::from_secret(b"a long shared secret, 16+ bytes")?;
//! let store = Arc::new(Store::open("/tmp/node-a", Options::default())?);
//! let (listener, addr) = net::bind("127.0.0.1:0")?;
//! let stop = Stop::new(addr);
//! let served = Arc::clone(&store);
//! let server = std::thread::spawn({
//!     let (key, stop) = (key.clone(), stop.clone());
//!     move || net::serve(served, listener, key, ServeOptions::default(), &stop, net::stderr_log())
//! });
//! let local = Store::open("/tmp/node-b", Options::default())?;
//! let peer = Client::connect(&addr.to_string(), &key, Duration::from_secs(10))?;
//! merkle_index::sync(&local, &peer, 0, &SyncOptions::default())?;
//! stop.trigger();
//! # Ok(())
//! # }
//! ```

mod answer;
mod channel;
mod client;
mod key;
mod proto;
mod server;

pub use channel::{HANDSHAKE_MAX, MAX_FRAME};
pub use client::{Client, NetPeer};
pub use key::Key;
pub use proto::{
    MAX_DESCEND_HASHES, MAX_DESCEND_NODES, MAX_HASHES, MAX_ITEMS, MAX_PARTITIONS, MAX_SEGMENTS,
    PROTOCOL,
};
pub use server::{bind, serve, Accept, Log, ServeOptions, StatusFn, Stop};

// One record with the longest key and value, in any message that carries it, fits a
// frame: so a store's every record can reach a replica.
const _: () = assert!(crate::MAX_KEY_BYTES + crate::MAX_VALUE_BYTES + 1024 <= MAX_FRAME);

/// A log that writes `merkle-index serve: ...` lines to stderr.
pub fn stderr_log() -> Log {
    std::sync::Arc::new(|line| eprintln!("merkle-index serve: {line}"))
}
