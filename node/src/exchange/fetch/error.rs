//! Why a transfer ended without its blob. One [`TransferError`] per transfer, shared (in an
//! `Arc`) by every reader watching it: the gateway, `shoal pull`, peers relaying through us.
//!
//! Decisions read variants, never text: a peer is banned for [`TransferError::WrongContent`],
//! which names it. The messages stay what users saw before the errors were typed, since
//! `shoal pull` prints them.

use std::path::PathBuf;
use std::time::Duration;

use libp2p::PeerId;
use shoal_protocol::Digest;
use shoal_protocol::chunk::ChunkError;

use crate::network::RequestError;
use crate::store::{BlockingError, StoreError};
use crate::upstream::UpstreamError;

#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The peer we relayed from sent content that is not the blob; it is banned.
    #[error("the peer sent wrong content: {wrong}")]
    WrongContent {
        peer: PeerId,
        #[source]
        wrong: WrongContent,
    },
    #[error("no peer has {blob} (looked for {waited:?})")]
    NoPeer { blob: Digest, waited: Duration },
    #[error("no chunk of {blob} arrived for {waited:?}")]
    Stalled { blob: Digest, waited: Duration },
    #[error("the peer stopped serving chunk {chunk}")]
    RelayStopped { peer: PeerId, chunk: u32 },
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The blob's size or chunk size admits no chunk layout.
    #[error(transparent)]
    Layout(#[from] ChunkError),
    #[error("more than the {size} bytes of {blob} arrived")]
    TooLong { blob: Digest, size: u64 },
    #[error("{blob} ended after {arrived} of {size} bytes")]
    TooShort {
        blob: Digest,
        arrived: u64,
        size: u64,
    },
    /// The bytes written front to back do not hash to the blob's digest.
    #[error("wrong content: {0}")]
    Mismatch(#[source] ChunkError),
    #[error("cannot create {}: {source}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("syncing {}: {source}", path.display())]
    Sync {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the blob's writer stopped early")]
    WriterStopped,
    /// The sha256 running beside a transfer whose index root a trusted publisher signed.
    #[error(transparent)]
    Sha256Behind(std::io::Error),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blocking(#[from] BlockingError),
    /// A task of the transfer panicked, or the runtime is shutting down.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
    #[error("completed without a partial blob")]
    NoPartial,
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("upstream {namespace} has no {} {blob}", if *manifest { "manifest" } else { "blob" })]
    UpstreamLacks {
        namespace: String,
        blob: Digest,
        manifest: bool,
    },
    #[error("upstream {namespace} sent {blob} without a length")]
    UpstreamNoLength { namespace: String, blob: Digest },
    #[error("reading {blob} from upstream: {source}")]
    UpstreamRead {
        blob: Digest,
        #[source]
        source: reqwest::Error,
    },
    /// What the upstream sent could not be stored as the blob (wrong bytes, or the disk).
    #[error("upstream {namespace}: {source}")]
    UpstreamBlob {
        namespace: String,
        #[source]
        source: Box<TransferError>,
    },
    /// The transfer's task ended without an outcome (the node is stopping).
    #[error("the transfer stopped")]
    Stopped,
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// What was wrong with content a peer relayed.
#[derive(Debug, thiserror::Error)]
pub enum WrongContent {
    #[error("the peer cuts the blob into {theirs}-byte chunks, not {ours}")]
    ChunkBytes { theirs: u32, ours: u32 },
    #[error("chunk {chunk} has {arrived} bytes, not {expected}")]
    ChunkLength {
        chunk: u32,
        arrived: usize,
        expected: u32,
    },
    /// The relayed blob, whole, is not the blob (or could not be stored as it).
    #[error(transparent)]
    Blob(Box<TransferError>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_content_names_the_peer_and_reads_as_before() {
        let peer = PeerId::random();
        let error = TransferError::WrongContent {
            peer,
            wrong: WrongContent::ChunkLength {
                chunk: 3,
                arrived: 5,
                expected: 4,
            },
        };
        assert!(
            matches!(error, TransferError::WrongContent { peer: sender, .. } if sender == peer)
        );
        assert_eq!(
            error.to_string(),
            "the peer sent wrong content: chunk 3 has 5 bytes, not 4"
        );
        let source = std::error::Error::source(&error).map(ToString::to_string);
        assert_eq!(source.as_deref(), Some("chunk 3 has 5 bytes, not 4"));
    }
}
