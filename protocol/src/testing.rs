//! Proptest strategies shared by the modules' tests.

use proptest::prelude::*;

use crate::announce::{AnnouncementCursor, SignedAnnouncement};
use crate::bitmap::Bitmap;
use crate::chunk::{CHUNK_BYTES_MAX, CHUNK_BYTES_MIN, ChunkIndex, chunk_count};
use crate::digest::Digest;
use crate::wire::{Request, Response};

pub fn arbitrary_digest() -> impl Strategy<Value = Digest> {
    any::<[u8; 32]>().prop_map(Digest::from_sha256_bytes)
}

pub fn arbitrary_bitmap() -> impl Strategy<Value = Bitmap> {
    (0u32..300, any::<u64>()).prop_map(|(len, seed)| {
        let mut bitmap = Bitmap::new(len);
        let mut state = seed;
        for i in 0..len {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            if state >> 63 == 1 {
                bitmap.set(i);
            }
        }
        bitmap
    })
}

pub fn arbitrary_index() -> impl Strategy<Value = ChunkIndex> {
    (
        arbitrary_digest(),
        0u64..(40 * u64::from(CHUNK_BYTES_MIN)),
        prop_oneof![
            Just(CHUNK_BYTES_MIN),
            Just(CHUNK_BYTES_MIN + 1),
            Just(CHUNK_BYTES_MAX)
        ],
        any::<u8>(),
    )
        .prop_map(|(blob, size, chunk_bytes, fill)| {
            let count = chunk_count(size, chunk_bytes).unwrap_or(0);
            let hashes = (0..count).map(|i| [fill ^ i as u8; 32]).collect();
            ChunkIndex::from_parts(blob, size, chunk_bytes, hashes)
                .expect("a count from chunk_count is consistent")
        })
}

pub fn arbitrary_cursor() -> impl Strategy<Value = AnnouncementCursor> {
    (
        "[a-z0-9./:-]{0,60}",
        "[a-zA-Z0-9._-]{0,40}",
        proptest::collection::vec(any::<u8>(), 0..40),
    )
        .prop_map(|(repository, tag, publisher)| AnnouncementCursor {
            repository,
            tag,
            publisher,
        })
}

pub fn arbitrary_signed() -> impl Strategy<Value = SignedAnnouncement> {
    (
        proptest::collection::vec(any::<u8>(), 0..300),
        proptest::collection::vec(any::<u8>(), 0..40),
        proptest::collection::vec(any::<u8>(), 0..70),
    )
        .prop_map(|(payload, publisher, signature)| SignedAnnouncement {
            payload,
            publisher,
            signature,
        })
}

pub fn arbitrary_request() -> impl Strategy<Value = Request> {
    prop_oneof![
        arbitrary_digest().prop_map(|blob| Request::Have { blob }),
        arbitrary_digest().prop_map(|blob| Request::Index { blob }),
        (arbitrary_digest(), any::<u32>()).prop_map(|(blob, chunk)| Request::Chunk { blob, chunk }),
        proptest::option::of(arbitrary_cursor()).prop_map(|after| Request::Announcements { after }),
    ]
}

pub fn arbitrary_response() -> impl Strategy<Value = Response> {
    prop_oneof![
        (
            any::<u64>(),
            any::<u32>(),
            arbitrary_bitmap(),
            any::<bool>()
        )
            .prop_map(
                |(blob_size, chunk_bytes, chunks, complete)| Response::Have {
                    blob_size,
                    chunk_bytes,
                    chunks,
                    complete
                }
            ),
        arbitrary_index().prop_map(Response::Index),
        // Table of interesting chunk lengths around the minimum chunk size.
        (
            prop_oneof![
                Just(0usize),
                Just(1),
                Just(CHUNK_BYTES_MIN as usize - 1),
                Just(CHUNK_BYTES_MIN as usize),
                Just(CHUNK_BYTES_MIN as usize + 1),
                0usize..2000,
            ],
            any::<u8>()
        )
            .prop_map(|(len, fill)| Response::Chunk(vec![fill; len])),
        (
            proptest::collection::vec(arbitrary_signed(), 0..4),
            proptest::option::of(arbitrary_cursor())
        )
            .prop_map(|(announcements, next)| Response::Announcements {
                announcements,
                next
            }),
        Just(Response::NotFound),
        Just(Response::Busy),
        Just(Response::BusySpreading),
        Just(Response::Denied),
    ]
}
