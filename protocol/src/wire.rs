//! The messages of the node-to-node request-response protocol, and the public face of the
//! peer wire codec (`codec.rs`, re-exported here): a frame is `[WIRE_VERSION][bincode payload]`.
//!
//! Data flow: a node encodes a [`Request`] with [`encode`], the transport (libp2p
//! request-response) carries the frame, the peer decodes it with [`Request::decode`] (limit
//! [`REQUEST_BYTES_MAX`]), answers with a [`Response`] (limit [`RESPONSE_BYTES_MAX`]). Gossiped
//! announcements use the same codec with their own limit.
//!
//! Not for: storage formats the node owns (sled values may use it, but a version bump here is a
//! protocol change, not a migration), or framing on a byte stream (the transport delimits
//! messages; this module sees whole frames).
//!
//! Decoded messages re-check their own invariants ([`Bitmap`], [`ChunkIndex`], digests, tags)
//! during deserialization, after the codec's size and claim limits.

use crate::announce::{ANNOUNCEMENT_PAGE_BYTES_MAX, AnnouncementCursor, SignedAnnouncement};
use crate::bitmap::Bitmap;
use crate::chunk::{CHUNK_BYTES_MAX, ChunkIndex, INDEX_BYTES_MAX};
use crate::digest::Digest;

// The codec lives in its own module so that `announce` can sign and verify frames without
// importing the messages (which carry announcements); it is re-exported so `wire::encode` stays
// the one path callers know.
use crate::codec;
pub use crate::codec::{FRAME_BYTES_MAX, WIRE_VERSION, WireError, decode, encode};

/// The codec caps every frame at the largest message, so the cap is no looser than a real
/// message needs.
const _: () = assert!(FRAME_BYTES_MAX == RESPONSE_BYTES_MAX);

/// The largest request frame. Requests are a digest, a chunk number, or an announcement cursor
/// (a repository name of at most 255 bytes, a tag of at most 128 and a peer id of about 40):
/// under 512 bytes. 4 KiB leaves room for fields added later without a version bump.
pub const REQUEST_BYTES_MAX: usize = 4 * 1024;

/// Slack for enum tags, length prefixes and small fields around a response's bulk content.
const RESPONSE_SLACK_BYTES: usize = 64 * 1024;

const fn max(a: usize, b: usize) -> usize {
    if a > b { a } else { b }
}

/// The largest response frame: the largest of a full-size chunk (4 MiB), an index of a blob
/// with the most chunks (2 MiB of hashes) and a page of announcements (1 MiB), plus 64 KiB of
/// slack. Each response carries exactly one of them, so the bound is their maximum, not their
/// sum; `Have` bitmaps (8 KiB at most) are far below it.
pub const RESPONSE_BYTES_MAX: usize = max(
    max(CHUNK_BYTES_MAX as usize, INDEX_BYTES_MAX),
    ANNOUNCEMENT_PAGE_BYTES_MAX,
) + RESPONSE_SLACK_BYTES;

const _: () = {
    assert!(REQUEST_BYTES_MAX < RESPONSE_BYTES_MAX);
    assert!(RESPONSE_BYTES_MAX >= CHUNK_BYTES_MAX as usize + RESPONSE_SLACK_BYTES);
    assert!(RESPONSE_BYTES_MAX >= INDEX_BYTES_MAX + RESPONSE_SLACK_BYTES);
    assert!(RESPONSE_BYTES_MAX >= ANNOUNCEMENT_PAGE_BYTES_MAX + RESPONSE_SLACK_BYTES);
};

/// The bytes at the start of a frame that [`chunk_response_offset`] reads: the version, the
/// variant and the longest varint length (a marker byte and a u64).
pub const FRAME_HEAD_BYTES: usize = 1 + 1 + 9;

/// The variant index of [`Response::Chunk`] as bincode writes it (one varint byte).
const CHUNK_VARIANT: u8 = 2;

/// Where the bytes of a [`Response::Chunk`] begin in a frame of `frame_len` bytes (at most
/// [`RESPONSE_BYTES_MAX`]) whose first bytes are `head` (the first `FRAME_HEAD_BYTES`, or the
/// whole frame if shorter); `None` for any other frame. The chunk's bytes run to the end of the
/// frame, so a transport can read them straight into their own buffer instead of reading the
/// frame and decoding a copy of it. Agrees with [`decode`]: whenever this says `Some(offset)`,
/// the frame decodes to `Response::Chunk(frame[offset..])`.
pub fn chunk_response_offset(head: &[u8], frame_len: usize) -> Option<usize> {
    if frame_len > RESPONSE_BYTES_MAX
        || head.len() != frame_len.min(FRAME_HEAD_BYTES)
        || head.get(..2)? != [WIRE_VERSION, CHUNK_VARIANT]
    {
        return None;
    }
    let (length, used) = codec::decode_length(&head[2..])?;
    let offset = 2 + used;
    (offset as u64 + length == frame_len as u64).then_some(offset)
}

/// The first bytes of the frame of a [`Response::Chunk`] of `length` bytes: with the chunk's
/// bytes after them, exactly [`encode`] of that response. Lets a transport send a chunk from
/// its own buffer instead of copying it into a frame first.
pub fn chunk_response_head(length: usize) -> Result<Vec<u8>, WireError> {
    let mut head = vec![WIRE_VERSION, CHUNK_VARIANT];
    codec::encode_length(length as u64, &mut head)?;
    Ok(head)
}

/// What one node asks another about a blob (or the announcement book).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Request {
    /// Which chunks of `blob` do you have? Answered with [`Response::Have`] or `NotFound`.
    Have { blob: Digest },
    /// Send the chunk index of `blob`: [`Response::Index`] or `NotFound`.
    Index { blob: Digest },
    /// Send chunk `chunk` of `blob`: [`Response::Chunk`], `NotFound`, `Busy` or `BusySpreading`.
    Chunk { blob: Digest, chunk: u32 },
    /// Send the announcements you hold, in book order, starting after `after`: a late joiner
    /// pages through with the `next` cursor of each [`Response::Announcements`].
    Announcements { after: Option<AnnouncementCursor> },
    /// Fetch `blob` from your upstream registry for `repository` (a qualified name, such as
    /// `docker.io/library/alpine`; `manifest` says which endpoint holds it), so that a blob
    /// missing from the whole network crosses the uplink once: the requester then takes it
    /// from you. Answered with [`Response::Fetching`], `NotFound` without an upstream, or
    /// [`Response::Denied`] when the requester may not ask it of the responder (peer zones).
    Fetch {
        blob: Digest,
        repository: String,
        manifest: bool,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    /// The responder's progress on the blob. `chunks` has one bit per chunk of a blob of
    /// `blob_size` bytes cut into `chunk_bytes` chunks; `complete` means the whole blob is in
    /// the responder's store, verified (and then `chunks` is full). A requester compares
    /// `blob_size` and `chunk_bytes` with the blob's index before trusting the bitmap.
    Have {
        blob_size: u64,
        chunk_bytes: u32,
        chunks: Bitmap,
        complete: bool,
    },
    Index(ChunkIndex),
    /// The chunk's bytes, unverified until the requester checks them against the index.
    Chunk(#[serde(with = "serde_bytes")] Vec<u8>),
    /// A page of at most [`ANNOUNCEMENT_PAGE_BYTES_MAX`] of signed announcements; `next` is
    /// the cursor to ask with for the following page, `None` on the last one.
    Announcements {
        announcements: Vec<SignedAnnouncement>,
        next: Option<AnnouncementCursor>,
    },
    NotFound,
    /// The responder's uplink is full; ask again later or elsewhere.
    Busy,
    /// The responder is getting the blob asked for by [`Request::Fetch`].
    Fetching,
    /// The responder's zone does not let the requester ask this (a [`Request::Fetch`] from a
    /// peer it serves only public content to). Added last, so the other variants keep their
    /// numbers; a node older than it fails to decode it, which it treats as a failed request.
    Denied,
    /// The responder sent this chunk to another fetcher of the blob's current wave
    /// (super-seeding): ask the fetchers that have it, or this responder again later. Unlike
    /// `Busy` it says nothing of the responder's uplink. Added last, as `Denied` was; a node
    /// older than it treats it as a failed request.
    BusySpreading,
}

impl Request {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode(self)
    }

    /// Decodes a request frame from a peer, with [`REQUEST_BYTES_MAX`].
    pub fn decode(frame: &[u8]) -> Result<Request, WireError> {
        decode(frame, REQUEST_BYTES_MAX)
    }
}

impl Response {
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        encode(self)
    }

    /// Decodes a response frame from a peer, with [`RESPONSE_BYTES_MAX`].
    pub fn decode(frame: &[u8]) -> Result<Response, WireError> {
        decode(frame, RESPONSE_BYTES_MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{arbitrary_request, arbitrary_response};
    use proptest::prelude::*;

    #[test]
    fn frames_start_with_the_version_byte() {
        let frame = Request::Have {
            blob: Digest::of(b"x"),
        }
        .encode()
        .unwrap();
        assert_eq!(frame[0], WIRE_VERSION);
        // Version, variant index, 32 digest bytes: compact, no strings.
        assert_eq!(frame.len(), 1 + 1 + 32);
    }

    #[test]
    fn largest_responses_fit_the_limit() {
        // The largest possible chunk response fits.
        let frame = Response::Chunk(vec![0xab; CHUNK_BYTES_MAX as usize])
            .encode()
            .unwrap();
        assert!(frame.len() <= RESPONSE_BYTES_MAX);
        assert!(matches!(
            Response::decode(&frame).unwrap(),
            Response::Chunk(bytes) if bytes.len() == CHUNK_BYTES_MAX as usize
        ));
        // The largest possible index response fits.
        let index = ChunkIndex::from_parts(
            Digest::of(b""),
            u64::from(crate::chunk::CHUNKS_PER_BLOB_MAX) * u64::from(CHUNK_BYTES_MAX),
            CHUNK_BYTES_MAX,
            vec![[0xff; 32]; crate::chunk::CHUNKS_PER_BLOB_MAX as usize],
        )
        .unwrap();
        let frame = Response::Index(index.clone()).encode().unwrap();
        assert!(frame.len() <= INDEX_BYTES_MAX + 1, "{}", frame.len());
        assert_eq!(Response::decode(&frame).unwrap(), Response::Index(index));
    }

    #[test]
    fn oversize_frames_are_refused_before_decoding() {
        let frame = vec![WIRE_VERSION; REQUEST_BYTES_MAX + 1];
        assert!(matches!(
            Request::decode(&frame),
            Err(WireError::TooLarge { len, limit: REQUEST_BYTES_MAX }) if len == REQUEST_BYTES_MAX + 1
        ));
        // Limits beyond the frame maximum are capped.
        let frame = vec![0u8; FRAME_BYTES_MAX + 1];
        assert!(matches!(
            decode::<Vec<u8>>(&frame, usize::MAX),
            Err(WireError::TooLarge {
                limit: FRAME_BYTES_MAX,
                ..
            })
        ));
    }

    #[test]
    fn unknown_versions_empty_frames_and_trailing_bytes_are_refused() {
        let mut frame = Request::Index {
            blob: Digest::of(b""),
        }
        .encode()
        .unwrap();
        assert!(matches!(Request::decode(&[]), Err(WireError::Empty)));
        frame.push(0);
        assert!(matches!(
            Request::decode(&frame),
            Err(WireError::TrailingBytes(1))
        ));
        frame.pop();
        frame[0] = 2;
        assert!(matches!(
            Request::decode(&frame),
            Err(WireError::UnknownVersion(2))
        ));
        frame[0] = 0;
        assert!(matches!(
            Request::decode(&frame),
            Err(WireError::UnknownVersion(0))
        ));
    }

    #[test]
    fn huge_declared_lengths_fail_on_the_claim_limit() {
        // Response::Chunk (variant 2) declaring 2^40 bytes: varint marker 253 = u64 follows.
        let mut frame = vec![WIRE_VERSION, 2, 253];
        frame.extend_from_slice(&(1u64 << 40).to_le_bytes());
        frame.extend_from_slice(&[0; 16]);
        let error = Response::decode(&frame).unwrap_err();
        assert!(
            matches!(
                error,
                WireError::Decode(bincode::error::DecodeError::LimitExceeded)
            ),
            "{error:?}"
        );
        // The same inside a request: a cursor whose repository claims 2^60 bytes.
        let mut frame = vec![WIRE_VERSION, 3, 1, 253];
        frame.extend_from_slice(&(1u64 << 60).to_le_bytes());
        assert!(matches!(
            Request::decode(&frame),
            Err(WireError::Decode(
                bincode::error::DecodeError::LimitExceeded
            ))
        ));
        // A declared length within the claim limit but beyond the frame: truncated, not allocated.
        let mut frame = vec![WIRE_VERSION, 2, 252];
        frame.extend_from_slice(&(1u32 << 20).to_le_bytes());
        assert!(matches!(
            Response::decode(&frame),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn a_have_bitmap_that_breaks_its_invariant_does_not_decode() {
        let response = Response::Have {
            blob_size: 10,
            chunk_bytes: 1 << 20,
            chunks: Bitmap::full(3),
            complete: false,
        };
        let mut frame = response.encode().unwrap();
        assert_eq!(Response::decode(&frame).unwrap(), response);
        // The bitmap's single byte is the last but one (before `complete`); set bit 3 of 3.
        let at = frame.len() - 2;
        frame[at] |= 0b1000;
        assert!(matches!(
            Response::decode(&frame),
            Err(WireError::Decode(_))
        ));
    }

    #[test]
    fn chunk_frames_are_found_by_their_head() {
        assert_eq!(
            Response::Chunk(Vec::new()).encode().unwrap()[1],
            CHUNK_VARIANT
        );
        for len in [
            0,
            1,
            250,
            251,
            65_535,
            65_536,
            1 << 20,
            CHUNK_BYTES_MAX as usize,
        ] {
            let frame = Response::Chunk(vec![7; len]).encode().unwrap();
            let head = &frame[..frame.len().min(FRAME_HEAD_BYTES)];
            let offset = chunk_response_offset(head, frame.len()).unwrap();
            assert_eq!(frame.len() - offset, len, "{len}");
            assert_eq!(chunk_response_head(len).unwrap(), frame[..offset]);
            // A frame cut short, or longer than its chunk, is not a chunk frame.
            assert_eq!(chunk_response_offset(head, frame.len() + 1), None);
        }
        let frame = Response::Busy.encode().unwrap();
        assert_eq!(chunk_response_offset(&frame, frame.len()), None);
    }

    proptest! {
        #[test]
        fn requests_round_trip(request in arbitrary_request()) {
            let frame = request.encode().unwrap();
            prop_assert!(frame.len() <= REQUEST_BYTES_MAX);
            prop_assert_eq!(Request::decode(&frame).unwrap(), request);
        }

        #[test]
        fn responses_round_trip(response in arbitrary_response()) {
            let frame = response.encode().unwrap();
            prop_assert_eq!(Response::decode(&frame).unwrap(), response.clone());
            let head = &frame[..frame.len().min(FRAME_HEAD_BYTES)];
            match (&response, chunk_response_offset(head, frame.len())) {
                (Response::Chunk(bytes), Some(offset)) => prop_assert_eq!(&frame[offset..], &bytes[..]),
                (_, offset) => prop_assert_eq!(offset, None),
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..512), versioned in any::<bool>()) {
            if versioned && !bytes.is_empty() {
                bytes[0] = WIRE_VERSION;
            }
            // Whatever decodes survives a re-encoding unchanged. (bincode accepts non-minimal
            // varints, so the frame itself need not be canonical: nothing may rely on that.)
            if let Ok(request) = Request::decode(&bytes) {
                prop_assert_eq!(Request::decode(&request.encode().unwrap()).unwrap(), request);
            }
            if let Ok(response) = Response::decode(&bytes) {
                prop_assert_eq!(Response::decode(&response.encode().unwrap()).unwrap(), response);
            }
            let head = &bytes[..bytes.len().min(FRAME_HEAD_BYTES)];
            if let Some(offset) = chunk_response_offset(head, bytes.len()) {
                prop_assert_eq!(Response::decode(&bytes).unwrap(), Response::Chunk(bytes[offset..].to_vec()));
            }
        }

        #[test]
        fn truncated_frames_never_decode(response in arbitrary_response(), cut in any::<prop::sample::Index>()) {
            let frame = response.encode().unwrap();
            let cut = cut.index(frame.len());
            prop_assert!(Response::decode(&frame[..cut]).is_err());
        }
    }
}
