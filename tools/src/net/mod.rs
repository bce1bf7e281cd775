//! The anti-entropy protocol over TCP: length-prefixed postcard frames, a pre-shared-key
//! challenge-response handshake, and a client that implements `merkle_index::Replica`.
//!
//! ```text
//! frame:      length u32 BE (1 ..= MAX_FRAME) | postcard-encoded message
//! handshake:  server -> Challenge { protocol, server_nonce }
//!             client -> Hello { client_nonce, mac = keyed_blake3(K, "client" | sn | cn) }
//!             server -> Welcome { mac = keyed_blake3(K, "server" | cn | sn), width, levels }
//!             (or the server closes the connection)
//! then:       client -> Request, server -> Response, repeated
//! K = blake3 derive_key("merkle-index 2026-11-24 pre-shared key v1", key file contents)
//! ```

pub mod auth;
pub mod client;
pub mod frame;
pub mod proto;
pub mod server;
