//! Shoal's protocol crate: the pure logic every other crate agrees on.
//!
//! It holds content digests, image references and repository names, the OCI and Docker media
//! types, the manifest parser that finds which blobs an image needs, chunk indexes and bitmaps,
//! the peer wire codec and its messages, signed announcements and the book that resolves tags
//! from them, the sans-IO transfer scheduler, and the sans-IO serving policy (what to answer a
//! peer's chunk request). It does no I/O at all and reads no clock or OS randomness: callers
//! hand it bytes, times and seeds and get values back, which is what lets the node, the gateway
//! and the simulator share it.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod announce;
pub mod bitmap;
pub mod chunk;
mod codec;
pub mod digest;
pub mod feed;
pub mod fetch;
pub mod glob;
pub mod manifest;
pub mod media_type;
pub mod reference;
pub mod rng;
pub mod scheduler;
pub mod serving;
pub mod wire;

#[cfg(test)]
mod testing;

pub use announce::{
    AnnounceError, Announcement, AnnouncementBook, AnnouncementCursor, InsertOutcome,
    SignedAnnouncement, VerifiedAnnouncement,
};
pub use bitmap::{Bitmap, BitmapError};
pub use chunk::{CHUNK_BYTES_DEFAULT, ChunkError, ChunkIndex, ChunkIndexBuilder, ChunkLayout};
pub use digest::{Digest, DigestError, Sha256Writer};
pub use feed::{FEED_INTERVAL, FeedRequest, FeedUpdate};
pub use fetch::{ChunkReply, Fetch, FetchAction, FetchEvent, PeerHolds};
pub use manifest::{Descriptor, ManifestError, ParsedManifest};
pub use reference::{ImageRef, ReferenceError, RepoName, Tag, TagOrDigest};
pub use scheduler::{Action, Event, PeerStats, Scheduler, SchedulerConfig, SchedulerError};
pub use serving::{Answer, BusyReason, ChunkRequest, Holding, Serving, ServingConfig};
pub use wire::{Request, Response, WireError};
