//! The trait through which the gateway asks for content, implemented by the node.

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use shoal_protocol::{Descriptor, Digest, RepoName, Tag, TagOrDigest};

use crate::events::{AuthFailure, PullKind};
use crate::zone::Zone;

/// Blob bytes as they become available; an error ends the response early.
pub type BlobStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// A manifest exactly as stored: `bytes` hash to `digest`.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// A blob the source has agreed to serve. Holding it keeps the content readable (for the
/// node, an open file descriptor) even if the store evicts the blob meanwhile.
pub struct OpenBlob {
    pub size: u64,
    pub read: Box<dyn FnOnce(Range<u64>) -> BlobStream + Send>,
}

impl std::fmt::Debug for OpenBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenBlob")
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// A failure inside the source. The gateway logs the detail and tells the client only that
/// the server failed: internals never reach the response.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("content source failed: {0}")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
    #[error("content is not available right now: {0}")]
    Unavailable(String),
}

/// Where the gateway gets manifests, blobs and listings. `Ok(None)` means "not here" and
/// becomes the matching `*_UNKNOWN` error.
pub trait ContentSource: Clone + Send + Sync + 'static {
    /// Resolves a tag or digest in `repo`.
    fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> impl Future<Output = Result<Option<Manifest>, SourceError>> + Send;

    /// Opens a blob for reading; the returned reader serves any range within `size`.
    fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<OpenBlob>, SourceError>> + Send;

    /// Every tag of `repo`, or `None` when the repository is unknown.
    fn tags(
        &self,
        repo: &RepoName,
    ) -> impl Future<Output = Result<Option<Vec<Tag>>, SourceError>> + Send;

    /// Repository paths (without namespace) known in `namespace`.
    fn repositories(
        &self,
        namespace: &str,
    ) -> impl Future<Output = Result<Vec<String>, SourceError>> + Send;

    /// Manifests in `repo` whose `subject` is `digest`, or `None` when the repository is unknown.
    fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> impl Future<Output = Result<Option<Vec<Descriptor>>, SourceError>> + Send;

    /// A manifest or blob was served whole or in part (GET, not HEAD) to a client in `zone`.
    /// For the node's metrics; the default records nothing.
    fn pulled(&self, kind: PullKind, zone: Zone) {
        let _ = (kind, zone);
    }

    /// A login or request was refused by the gateway's authentication. For the node's
    /// metrics; the default records nothing.
    fn auth_failed(&self, failure: AuthFailure) {
        let _ = failure;
    }
}
