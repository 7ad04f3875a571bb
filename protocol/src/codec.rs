//! The peer wire codec: how any value becomes a frame and a frame becomes a value.
//!
//! Every byte that crosses between nodes is encoded and decoded here and nowhere else, so that
//! replacing bincode (every release is flagged unmaintained, RUSTSEC-2025-0141; postcard is the
//! usual successor) touches only this file. A frame is `[WIRE_VERSION][bincode payload]`.
//!
//! Not for: the messages themselves (`wire`), which carry announcements; `announce` encodes its
//! signed payloads with this codec, so the codec must not know them.
//!
//! Untrusted input is refused in three layers: a frame longer than the caller's limit is refused
//! before any decoding; bincode runs with a configured limit on the bytes it may *claim*, so a
//! length prefix of 2^60 fails before anything is allocated; and decoded values re-check their
//! own invariants during deserialization.

use bincode::config::{Config, Configuration, Limit, LittleEndian, Varint};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// The first byte of every frame. A node refuses frames of any other version.
pub const WIRE_VERSION: u8 = 1;

/// No frame of any kind is larger: limits passed to [`decode`] are capped to it. It equals the
/// largest response of the request-response protocol (a 4 MiB chunk plus 64 KiB of slack);
/// `wire` checks that at compile time.
pub const FRAME_BYTES_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("empty frame")]
    Empty,
    #[error("wire version {0} is not supported (this node speaks {WIRE_VERSION})")]
    UnknownVersion(u8),
    #[error("frame has {0} bytes after its message")]
    TrailingBytes(usize),
    #[error("message does not encode")]
    Encode(#[source] bincode::error::EncodeError),
    #[error("message does not decode")]
    Decode(#[source] bincode::error::DecodeError),
}

/// bincode's standard configuration (little-endian, varint integers) with a claim limit.
const fn config<const N: usize>() -> Configuration<LittleEndian, Varint, Limit<N>> {
    bincode::config::standard().with_limit::<N>()
}

/// Encodes `value` as a frame: the version byte, then the bincode payload.
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, WireError> {
    let mut frame = vec![WIRE_VERSION];
    bincode::serde::encode_into_std_write(
        value,
        &mut frame,
        bincode::config::standard().with_no_limit(),
    )
    .map_err(WireError::Encode)?;
    Ok(frame)
}

/// Decodes a frame of at most `limit_bytes` (capped to [`FRAME_BYTES_MAX`]), refusing an oversize
/// frame before looking inside, an unknown version, and trailing bytes.
///
/// bincode may only *claim* (allocate or read) a small multiple of the limit: a few tiers of
/// compile-time limits, picked by the caller's limit, stand in for a run-time one. Claims
/// exceed the encoded size only for varint integers (8 claimed per byte at worst), and the
/// messages here are mostly byte strings, so twice the frame limit is ample.
pub fn decode<T: DeserializeOwned>(frame: &[u8], limit_bytes: usize) -> Result<T, WireError> {
    let limit = limit_bytes.min(FRAME_BYTES_MAX);
    if frame.len() > limit {
        return Err(WireError::TooLarge {
            len: frame.len(),
            limit,
        });
    }
    let (&version, payload) = frame.split_first().ok_or(WireError::Empty)?;
    if version != WIRE_VERSION {
        return Err(WireError::UnknownVersion(version));
    }
    let (value, read) = if limit <= 32 * 1024 {
        decode_payload(payload, config::<{ 64 * 1024 }>())
    } else if limit <= 512 * 1024 {
        decode_payload(payload, config::<{ 1024 * 1024 }>())
    } else {
        decode_payload(payload, config::<{ 2 * FRAME_BYTES_MAX }>())
    }?;
    if read != payload.len() {
        return Err(WireError::TrailingBytes(payload.len() - read));
    }
    Ok(value)
}

fn decode_payload<T: DeserializeOwned, C: Config>(
    payload: &[u8],
    config: C,
) -> Result<(T, usize), WireError> {
    bincode::serde::decode_from_slice(payload, config).map_err(WireError::Decode)
}

/// Appends `length` as the payload encodes a length prefix (a varint), for a transport that
/// writes a message's head itself and its bulk bytes from its own buffer.
pub(crate) fn encode_length(length: u64, out: &mut Vec<u8>) -> Result<(), WireError> {
    bincode::encode_into_std_write(length, out, bincode::config::standard().with_no_limit())
        .map_err(WireError::Encode)?;
    Ok(())
}

/// Reads a length prefix written by [`encode_length`] from the start of `bytes`: the length and
/// how many bytes it took; `None` if they do not hold one.
pub(crate) fn decode_length(bytes: &[u8]) -> Option<(u64, usize)> {
    bincode::decode_from_slice(bytes, config::<{ 2 * FRAME_BYTES_MAX }>()).ok()
}
