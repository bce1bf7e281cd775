//! The secure channel: a Noise `NNpsk0` handshake keyed by the pre-shared key, then
//! every frame encrypted and authenticated (ChaCha20-Poly1305, implicit nonces), so a
//! replayed, reordered, injected or altered byte ends the connection.
//!
//! ```text
//! handshake message:  length u16 BE (<= HANDSHAKE_MAX) | Noise message
//!     client -> server: psk, e         payload: postcard Hello { protocol }
//!     server -> client: e, ee          payload: postcard Welcome { width, levels }
//! transport chunk:    length u16 BE (17 ..= 65535) | Noise ciphertext (+16-byte tag)
//! frame:              plaintext = total length u32 BE | postcard message, cut into
//!                     chunks of at most 65,519 plaintext bytes, sent in order
//! ```
//! Limits hold before work and allocation: a handshake message is at most
//! [`HANDSHAKE_MAX`] bytes, a frame at most [`MAX_FRAME`] (checked from its first chunk,
//! before the rest is read), and every whole handshake or frame must arrive before its
//! deadline (a slow sender cannot hold a connection by trickling bytes).

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::{Error, Result};

use super::key::Key;

const PATTERN: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";
/// Largest handshake message accepted before the peer has proved it holds the key.
pub const HANDSHAKE_MAX: usize = 256;
/// Largest frame (decrypted message) accepted after the handshake.
pub const MAX_FRAME: usize = 16 << 20;
const NOISE_MAX: usize = 65_535;
const TAG: usize = 16;
const CHUNK: usize = NOISE_MAX - TAG;

/// An authenticated, encrypted connection.
pub struct Channel {
    stream: TcpStream,
    noise: snow::TransportState,
    /// Bytes sent and received on the wire, handshake included.
    pub sent: u64,
    pub received: u64,
}

/// The longest handshake or frame deadline taken (one day): any longer is a mistake, and
/// a deadline must stay a time the clock can hold.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

/// Refuses a deadline of zero or past [`MAX_TIMEOUT`], as an option error.
pub(crate) fn check_timeout(timeout: Duration) -> Result<()> {
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(Error::InvalidOptions(format!(
            "timeout ({timeout:?}) must be positive and at most one day"
        )));
    }
    Ok(())
}

fn protocol(what: impl Into<String>) -> Error {
    Error::Protocol(what.into())
}

fn io(context: &str, e: io::Error) -> Error {
    if matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    ) {
        return Error::Protocol(format!("{context}: deadline passed"));
    }
    Error::io(context, e)
}

fn noise(e: snow::Error) -> Error {
    Error::Protocol(format!("noise: {e} (wrong key, or tampered bytes)"))
}

/// Reads exactly `buf.len()` bytes before `deadline`, or fails.
fn read_by(stream: &mut TcpStream, buf: &mut [u8], deadline: Instant, what: &str) -> Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(protocol(format!("{what}: deadline passed")));
        }
        stream
            .set_read_timeout(Some(left))
            .map_err(|e| io(what, e))?;
        match stream.read(&mut buf[filled..]) {
            Ok(0) => return Err(protocol(format!("{what}: connection closed"))),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(what, e)),
        }
    }
    Ok(())
}

fn read_u16_message(
    stream: &mut TcpStream,
    max: usize,
    deadline: Instant,
    what: &str,
) -> Result<Vec<u8>> {
    let mut len = [0u8; 2];
    read_by(stream, &mut len, deadline, what)?;
    let len = usize::from(u16::from_be_bytes(len));
    if len == 0 || len > max {
        return Err(protocol(format!(
            "{what}: message of {len} bytes (limit {max})"
        )));
    }
    let mut msg = vec![0u8; len];
    read_by(stream, &mut msg, deadline, what)?;
    Ok(msg)
}

fn write_u16_message(stream: &mut TcpStream, msg: &[u8], what: &str) -> Result<u64> {
    let len = u16::try_from(msg.len()).map_err(|_| protocol("message too long"))?;
    stream
        .write_all(&len.to_be_bytes())
        .and_then(|()| stream.write_all(msg))
        .map_err(|e| io(what, e))?;
    Ok(2 + msg.len() as u64)
}

fn encode<T: Serialize>(message: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(message).map_err(|e| protocol(format!("encode: {e}")))
}

/// Decodes a payload; the whole payload must be one message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T> {
    match postcard::take_from_bytes(payload) {
        Ok((message, [])) => Ok(message),
        Ok(_) => Err(protocol("malformed message: trailing bytes")),
        // Postcard drops the text of serde's own errors; here they come from a list over
        // its protocol limit or an unknown kind of message or item.
        Err(postcard::Error::SerdeDeCustom) => Err(protocol(
            "malformed message: a list over its limit, or an unknown kind of message",
        )),
        Err(e) => Err(protocol(format!("malformed message: {e}"))),
    }
}

fn builder(key: &Key) -> Result<snow::Builder<'_>> {
    let params = PATTERN
        .parse()
        .map_err(|e| protocol(format!("noise parameters: {e:?}")))?;
    Ok(snow::Builder::new(params).psk(0, key.bytes()))
}

impl Channel {
    /// Client side: connects the handshake on `stream`, sending `hello` and returning the
    /// server's `welcome`, all before `timeout` runs out.
    pub fn connect<H: Serialize, W: DeserializeOwned>(
        mut stream: TcpStream,
        key: &Key,
        hello: &H,
        timeout: Duration,
    ) -> Result<(Channel, W)> {
        let deadline = Instant::now() + timeout;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io("handshake", e))?;
        let mut hs = builder(key)?.build_initiator().map_err(noise)?;
        let mut buf = vec![0u8; HANDSHAKE_MAX];
        let n = hs.write_message(&encode(hello)?, &mut buf).map_err(noise)?;
        let sent = write_u16_message(&mut stream, &buf[..n], "handshake")?;
        let msg =
            read_u16_message(&mut stream, HANDSHAKE_MAX, deadline, "handshake").map_err(|e| {
                protocol(format!(
                    "the server ended the handshake ({e}); is the key file the same on both sides?"
                ))
            })?;
        let mut payload = vec![0u8; HANDSHAKE_MAX];
        let n = hs
            .read_message(&msg, &mut payload)
            .map_err(|_| protocol("the server failed the handshake: it does not hold the key"))?;
        let welcome = decode(&payload[..n])?;
        let noise = hs.into_transport_mode().map_err(noise)?;
        let received = 2 + msg.len() as u64;
        Ok((
            Channel {
                stream,
                noise,
                sent,
                received,
            },
            welcome,
        ))
    }

    /// Server side: reads the client's hello (checked by `check`, which answers with the
    /// welcome to send) before `timeout` runs out.
    pub fn accept<H: DeserializeOwned, W: Serialize>(
        mut stream: TcpStream,
        key: &Key,
        timeout: Duration,
        check: impl FnOnce(H) -> Result<W>,
    ) -> Result<Channel> {
        let deadline = Instant::now() + timeout;
        stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io("handshake", e))?;
        let mut hs = builder(key)?.build_responder().map_err(noise)?;
        let msg = read_u16_message(&mut stream, HANDSHAKE_MAX, deadline, "handshake")?;
        let mut payload = vec![0u8; HANDSHAKE_MAX];
        let n = hs
            .read_message(&msg, &mut payload)
            .map_err(|_| protocol("handshake: the client does not hold the key"))?;
        let welcome = check(decode(&payload[..n])?)?;
        let mut buf = vec![0u8; HANDSHAKE_MAX];
        let n = hs
            .write_message(&encode(&welcome)?, &mut buf)
            .map_err(noise)?;
        let sent = write_u16_message(&mut stream, &buf[..n], "handshake")?;
        let noise = hs.into_transport_mode().map_err(noise)?;
        Ok(Channel {
            stream,
            noise,
            sent,
            received: 2 + msg.len() as u64,
        })
    }

    /// Sends one message as one frame; returns the bytes put on the wire.
    pub fn send<T: Serialize>(&mut self, message: &T, timeout: Duration) -> Result<u64> {
        let payload = encode(message)?;
        self.send_payload(&payload, timeout)
    }

    /// Sends `message`, or, if it would pass the frame limit, the message `instead`
    /// makes of its size (an answer that cannot be sent becomes an error the peer reads,
    /// and the connection goes on).
    pub fn send_or<T: Serialize>(
        &mut self,
        message: &T,
        instead: impl FnOnce(usize) -> T,
        timeout: Duration,
    ) -> Result<u64> {
        let mut payload = encode(message)?;
        if payload.len() + 4 > MAX_FRAME {
            payload = encode(&instead(payload.len()))?;
        }
        self.send_payload(&payload, timeout)
    }

    fn send_payload(&mut self, payload: &[u8], timeout: Duration) -> Result<u64> {
        if payload.len() + 4 > MAX_FRAME {
            return Err(protocol(format!(
                "message of {} bytes is over the frame limit",
                payload.len()
            )));
        }
        let mut plain = Vec::with_capacity(payload.len() + 4);
        plain.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        plain.extend_from_slice(payload);
        self.stream
            .set_write_timeout(Some(timeout))
            .map_err(|e| io("send", e))?;
        let mut out = vec![0u8; NOISE_MAX];
        let mut wire = Vec::with_capacity(plain.len() + plain.len() / CHUNK * 18 + 18);
        for chunk in plain.chunks(CHUNK) {
            let n = self.noise.write_message(chunk, &mut out).map_err(noise)?;
            wire.extend_from_slice(&(n as u16).to_be_bytes());
            wire.extend_from_slice(&out[..n]);
        }
        self.stream.write_all(&wire).map_err(|e| io("send", e))?;
        self.sent += wire.len() as u64;
        Ok(wire.len() as u64)
    }

    /// Receives one frame, whole, before `timeout` runs out, and decodes it; `Ok(None)`
    /// if the peer closed the connection cleanly between frames (or `idle` passed before
    /// a frame began, when `idle` is given).
    pub fn recv<T: DeserializeOwned>(
        &mut self,
        timeout: Duration,
        idle: Option<Duration>,
    ) -> Result<Option<T>> {
        self.recv_with(timeout, idle, decode)?.transpose()
    }

    /// [`recv`](Self::recv), handing the frame's message bytes to `read` instead of
    /// decoding them: a frame that arrived whole leaves the channel in step whatever
    /// `read` makes of its message (one that does not decode can be answered).
    pub fn recv_with<R>(
        &mut self,
        timeout: Duration,
        idle: Option<Duration>,
        read: impl FnOnce(&[u8]) -> R,
    ) -> Result<Option<R>> {
        // Wait for the first byte (the peer may be thinking), then the whole frame.
        let mut first = [0u8; 1];
        let wait = idle.unwrap_or(timeout);
        self.stream
            .set_read_timeout(Some(wait))
            .map_err(|e| io("receive", e))?;
        loop {
            match self.stream.read(&mut first) {
                Ok(0) => return Ok(None),
                Ok(_) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e)
                    if idle.is_some()
                        && matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                        ) =>
                {
                    return Ok(None)
                }
                Err(e) => return Err(io("receive", e)),
            }
        }
        let deadline = Instant::now() + timeout;
        let mut second = [0u8; 1];
        read_by(&mut self.stream, &mut second, deadline, "receive")?;
        let mut plain = Vec::new();
        let mut total = None;
        let mut chunk_len = usize::from(u16::from_be_bytes([first[0], second[0]]));
        let mut buf = vec![0u8; NOISE_MAX];
        loop {
            if chunk_len <= TAG {
                return Err(protocol(format!("chunk of {chunk_len} bytes")));
            }
            let mut cipher = vec![0u8; chunk_len];
            read_by(&mut self.stream, &mut cipher, deadline, "receive")?;
            self.received += 2 + chunk_len as u64;
            let n = self.noise.read_message(&cipher, &mut buf).map_err(noise)?;
            let part = &buf[..n];
            if total.is_none() {
                let len: [u8; 4] = part
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| protocol("frame shorter than its length"))?;
                let len = u32::from_be_bytes(len) as usize;
                if len == 0 || len + 4 > MAX_FRAME {
                    return Err(protocol(format!(
                        "frame of {len} bytes (limit {MAX_FRAME})"
                    )));
                }
                total = Some(len + 4);
                plain.reserve_exact(len + 4);
            }
            plain.extend_from_slice(part);
            let want = total.unwrap_or(0);
            if plain.len() >= want {
                if plain.len() > want {
                    return Err(protocol("frame longer than its length"));
                }
                return Ok(Some(read(plain.get(4..).unwrap_or_default())));
            }
            let mut len = [0u8; 2];
            read_by(&mut self.stream, &mut len, deadline, "receive")?;
            chunk_len = usize::from(u16::from_be_bytes(len));
        }
    }
}
