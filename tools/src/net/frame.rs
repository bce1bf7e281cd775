//! Length-prefixed frames with a maximum size; decoding never trusts the length.

use std::io::{self, Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest accepted frame (16 MiB); larger lengths are refused before any allocation.
pub const MAX_FRAME: u32 = 16 << 20;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The length prefix was 0 or above [`MAX_FRAME`].
    BadLength(u32),
    /// The payload was not a valid message.
    Decode(postcard::Error),
    /// The connection failed, closed early, or timed out.
    Io(io::Error),
}

impl std::fmt::Display for FrameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FrameError::BadLength(n) => write!(f, "frame length {n} outside 1..={MAX_FRAME}"),
            FrameError::Decode(e) => write!(f, "malformed message: {e}"),
            FrameError::Io(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                write!(f, "connection closed mid-frame")
            }
            FrameError::Io(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                write!(f, "timed out waiting for the peer")
            }
            FrameError::Io(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for FrameError {}

impl From<io::Error> for FrameError {
    fn from(e: io::Error) -> Self {
        FrameError::Io(e)
    }
}

/// Writes one message; returns the bytes put on the wire.
pub fn write<T: Serialize>(out: &mut impl Write, message: &T) -> Result<u64, FrameError> {
    let payload = postcard::to_stdvec(message).map_err(FrameError::Decode)?;
    let len = u32::try_from(payload.len())
        .unwrap_or(u32::MAX)
        .min(MAX_FRAME + 1);
    if len > MAX_FRAME {
        return Err(FrameError::BadLength(len));
    }
    out.write_all(&len.to_be_bytes())?;
    out.write_all(&payload)?;
    out.flush()?;
    Ok(4 + u64::from(len))
}

/// Reads one message; returns it with the bytes taken off the wire.
pub fn read<T: DeserializeOwned>(input: &mut impl Read) -> Result<(T, u64), FrameError> {
    read_next(input)?.ok_or_else(|| FrameError::Io(io::ErrorKind::UnexpectedEof.into()))
}

/// Like [`read`], but a connection closed cleanly between frames gives `Ok(None)`.
pub fn read_next<T: DeserializeOwned>(
    input: &mut impl Read,
) -> Result<Option<(T, u64)>, FrameError> {
    let mut len = [0u8; 4];
    let mut filled = 0;
    while filled < len.len() {
        match input.read(&mut len[filled..]) {
            Ok(0) if filled == 0 => return Ok(None),
            Ok(0) => return Err(FrameError::Io(io::ErrorKind::UnexpectedEof.into())),
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    let len = u32::from_be_bytes(len);
    if len == 0 || len > MAX_FRAME {
        return Err(FrameError::BadLength(len));
    }
    let mut payload = vec![0u8; len as usize];
    input.read_exact(&mut payload)?;
    Ok(Some((decode(&payload)?, 4 + u64::from(len))))
}

/// Decodes a payload; the whole payload must be one message.
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, FrameError> {
    match postcard::take_from_bytes(payload) {
        Ok((message, [])) => Ok(message),
        Ok(_) => Err(FrameError::Decode(postcard::Error::DeserializeBadEncoding)),
        Err(e) => Err(FrameError::Decode(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::proto::{Hello, Request, Response};
    use proptest::prelude::*;

    proptest! {
        // The fuzz target for frames: any bytes, as a frame or as a payload, give a
        // message or an error, never a panic or a huge allocation.
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = read::<Request>(&mut bytes.as_slice());
            let _ = read::<Response>(&mut bytes.as_slice());
            let _ = read::<Hello>(&mut bytes.as_slice());
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }

        #[test]
        fn requests_round_trip(partition in any::<u32>(), parents in proptest::collection::vec(any::<u64>(), 0..50)) {
            let mut wire = Vec::new();
            let request = Request::Children { partition, level: 3, parents: parents.clone() };
            let n = write(&mut wire, &request).unwrap();
            prop_assert_eq!(n as usize, wire.len());
            let (back, m) = read::<Request>(&mut wire.as_slice()).unwrap();
            prop_assert_eq!(m, n);
            let Request::Children { partition: p, parents: q, .. } = back else { panic!("{back:?}") };
            prop_assert_eq!((p, q), (partition, parents));
        }
    }

    #[test]
    fn lengths_are_checked_before_allocating() {
        let huge = [0xffu8, 0xff, 0xff, 0xff];
        assert!(matches!(
            read::<Request>(&mut huge.as_slice()),
            Err(FrameError::BadLength(u32::MAX))
        ));
        let cut = [0u8, 0, 0, 9, 1];
        assert!(matches!(
            read::<Request>(&mut cut.as_slice()),
            Err(FrameError::Io(_))
        ));
        assert!(matches!(read_next::<Request>(&mut [].as_slice()), Ok(None)));
        // Trailing bytes after a valid message are an error, not silently ignored.
        let mut wire = postcard::to_stdvec(&Request::Partitions).unwrap();
        wire.push(0);
        assert!(matches!(
            decode::<Request>(&wire),
            Err(FrameError::Decode(_))
        ));
    }
}
