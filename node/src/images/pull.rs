//! Getting whole images from the network: resolve a reference (the upstream while its answer
//! is fresh, then trusted announcements, then the store), fetch its manifest, then every child
//! manifest and blob it needs, and record the manifests in the store under the repository —
//! and, once every blob is stored, the tag that named the image.
//! Used by `shoal pull`, by `--prefetch`, and by the gateway for whatever the node lacks.
//!
//! A tag of a namespace with an upstream is asked of the upstream at most once per
//! `--tag-freshness`; the answer is stored (so it outlives a restart and an upstream outage)
//! and announced, so that peers trusting this node resolve it even while the upstream is down.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_protocol::{Digest, ImageRef, ParsedManifest, RepoName, Tag, TagOrDigest};
use tokio::task::JoinSet;

use crate::announce::Announcements;
use crate::exchange::fetch::{FetchHandle, Origin, TransferError};
use crate::network::NetworkHandle;
use crate::store::{BlockingError, Commit, ManifestRecord, Store};
use crate::upstream::{UpstreamError, Upstreams};

/// Blobs of one image fetched at once; each is itself fetched from many peers.
const BLOBS_IN_PARALLEL: usize = 4;
/// How long a manifest may take to arrive before the client is told it is unknown.
pub const MANIFEST_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error(
        "{0} is not known: no image with that tag was imported or announced by a trusted publisher"
    )]
    Unresolved(String),
    #[error("cannot fetch {digest}: {source}")]
    Fetch {
        digest: Digest,
        #[source]
        source: Arc<TransferError>,
    },
    #[error("cannot fetch {digest}: timed out")]
    FetchTimedOut { digest: Digest },
    #[error("cannot fetch {digest}: vanished after the fetch")]
    Vanished { digest: Digest },
    #[error("manifest {digest} is invalid: {reason}")]
    Manifest { digest: Digest, reason: String },
    #[error("store failed: {0}")]
    Store(String),
    #[error("{reference} is not known here and {error}")]
    Upstream {
        reference: String,
        error: UpstreamError,
    },
}

impl From<BlockingError> for PullError {
    fn from(error: BlockingError) -> PullError {
        PullError::Store(error.to_string())
    }
}

/// What pulling needs.
#[derive(Debug, Clone)]
pub struct Puller {
    pub store: Store,
    pub fetch: FetchHandle,
    pub announcements: Arc<Announcements>,
    pub network: NetworkHandle,
    pub upstreams: Upstreams,
    pub tag_freshness: Duration,
    /// When each upstream tag was last confirmed by its upstream.
    pub checked_tags: Arc<Mutex<HashMap<(RepoName, Tag), Instant>>>,
}

/// A pull's progress: blobs and bytes done of those known so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PullProgress {
    pub blobs_done: u64,
    pub blobs_total: u64,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

impl Puller {
    /// The manifest digest a tag or digest names: the upstream's answer (fresh or just asked
    /// for), then the newest trusted announcement, then the store's tag.
    pub async fn resolve(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Digest>, PullError> {
        let tag = match reference {
            TagOrDigest::Digest(digest) => return Ok(Some(*digest)),
            TagOrDigest::Tag(tag) => tag.clone(),
        };
        let stored = {
            let (repo, reference) = (repo.clone(), reference.clone());
            self.store
                .blocking(move |store| store.manifest(&repo, &reference))
                .await?
                .map(|(digest, _, _)| digest)
        };
        let mut upstream_error = None;
        if self.upstreams.for_repo(repo).is_some() {
            if let Some(digest) = stored
                && self.is_fresh(repo, &tag)
            {
                return Ok(Some(digest));
            }
            match self.resolve_upstream(repo, &tag, stored).await {
                Ok(Some(digest)) => return Ok(Some(digest)),
                Ok(None) => {}
                Err(error) => {
                    tracing::warn!(%repo, %tag, %error, "upstream unavailable; using what the network knows");
                    upstream_error = Some(error);
                }
            }
        }
        if let Some(manifest) = self.announcements.resolve(repo, &tag) {
            return Ok(Some(manifest));
        }
        match (stored, upstream_error) {
            (Some(digest), _) => Ok(Some(digest)),
            (None, Some(PullError::Upstream { error, .. })) => Err(PullError::Upstream {
                reference: format!("{repo}:{tag}"),
                error,
            }),
            (None, Some(error)) => Err(error),
            (None, None) => Ok(None),
        }
    }

    fn is_fresh(&self, repo: &RepoName, tag: &Tag) -> bool {
        let checked = self
            .checked_tags
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        checked
            .get(&(repo.clone(), tag.clone()))
            .is_some_and(|at| at.elapsed() < self.tag_freshness)
    }

    /// Asks the upstream what `tag` points to, stores the manifest and the tag, and announces
    /// a tag that moved. `None` if the upstream has no such tag.
    async fn resolve_upstream(
        &self,
        repo: &RepoName,
        tag: &Tag,
        stored: Option<Digest>,
    ) -> Result<Option<Digest>, PullError> {
        let Some(client) = self.upstreams.for_repo(repo) else {
            return Ok(None);
        };
        let upstream = |error| PullError::Upstream {
            reference: format!("{repo}:{tag}"),
            error,
        };
        let Some(digest) = client.tag_digest(repo, tag).await.map_err(upstream)? else {
            return Ok(None);
        };
        let (bytes, parsed) = self.record_manifest(repo, digest, Some(tag)).await?;
        self.checked_tags
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert((repo.clone(), tag.clone()), Instant::now());
        if stored != Some(digest) {
            tracing::info!(%repo, %tag, %digest, "tag resolved from the upstream");
            let root = self
                .store
                .blocking(move |store| store.chunk_index(&digest))
                .await?
                .map(|index| (digest, index.root()));
            let announced = self.announcements.announce(
                repo,
                tag,
                digest,
                &parsed.media_type,
                bytes.len() as u64,
                root.into_iter().collect(),
            );
            if let Some(data) = announced {
                self.network.publish(data).await;
            }
        }
        Ok(Some(digest))
    }

    /// Makes manifest `digest` available in `repo`, fetching it from peers when needed, and
    /// returns its bytes and parsed form.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        digest: Digest,
    ) -> Result<(Vec<u8>, ParsedManifest), PullError> {
        self.record_manifest(repo, digest, None).await
    }

    /// [`Puller::manifest`], also pointing `tag` at it when given.
    async fn record_manifest(
        &self,
        repo: &RepoName,
        digest: Digest,
        tag: Option<&Tag>,
    ) -> Result<(Vec<u8>, ParsedManifest), PullError> {
        let stored = self
            .store
            .blocking(move |store| store.has_blob(&digest))
            .await?;
        if !stored {
            let origin = Origin {
                repo: repo.clone(),
                manifest: true,
            };
            let fetched = self.fetch.fetch_and_wait(digest, Some(origin));
            tokio::time::timeout(MANIFEST_FETCH_TIMEOUT, fetched)
                .await
                .map_err(|_| PullError::FetchTimedOut { digest })?
                .map_err(|source| PullError::Fetch { digest, source })?;
        }
        let repo = repo.clone();
        let tag = tag.cloned();
        self.store
            .blocking(move |store| {
                let limit = shoal_protocol::manifest::MANIFEST_BYTES_MAX as u64;
                let staging = store.staging()?;
                let Some(bytes) = staging.read_small(&digest, limit)? else {
                    return Ok(Err(PullError::Vanished { digest }));
                };
                let parsed = match ParsedManifest::parse(&bytes, None) {
                    Ok(parsed) => parsed,
                    Err(error) => {
                        return Ok(Err(PullError::Manifest {
                            digest,
                            reason: error.to_string(),
                        }));
                    }
                };
                let record = ManifestRecord {
                    media_type: parsed.media_type.clone(),
                    size: bytes.len() as u64,
                    artifact_type: parsed.artifact_type.clone(),
                    subject: parsed.subject.as_ref().map(|subject| subject.digest),
                    annotations: parsed.annotations.clone(),
                };
                staging.commit(Commit {
                    blobs: [digest].into(),
                    manifests: vec![(digest, record)],
                    repo_manifests: vec![(repo.clone(), digest)],
                    tags: tag.map(|tag| (repo, tag, digest)).into_iter().collect(),
                })?;
                Ok(Ok((bytes, parsed)))
            })
            .await?
    }

    /// Fetches the whole image `reference` names: every manifest (every platform of an index)
    /// and every blob. `progress` is called as blobs complete.
    pub async fn pull(
        &self,
        reference: &ImageRef,
        progress: &mut (dyn FnMut(PullProgress) + Send),
    ) -> Result<Digest, PullError> {
        let top = self
            .resolve(&reference.repo, &reference.target())
            .await?
            .ok_or_else(|| PullError::Unresolved(reference.to_string()))?;
        let mut manifests = vec![top];
        let mut blobs = BTreeMap::new();
        let mut state = PullProgress::default();
        // Everything the image needs stays until the pull ends, so that a tight budget cannot
        // evict its first layers while the last ones arrive.
        let mut leases = Vec::new();
        while let Some(digest) = manifests.pop() {
            leases.push(self.store.lease(digest));
            let (_, parsed) = self.manifest(&reference.repo, digest).await?;
            manifests.extend(parsed.manifests.iter().map(|child| child.digest));
            for blob in parsed.blobs {
                if blobs.insert(blob.digest, blob.size).is_none() {
                    leases.push(self.store.lease(blob.digest));
                    state.blobs_total += 1;
                    state.bytes_total += blob.size;
                }
            }
        }
        progress(state);
        let mut pending: Vec<(Digest, u64)> = blobs.into_iter().collect();
        let mut running = JoinSet::new();
        loop {
            while running.len() < BLOBS_IN_PARALLEL
                && let Some((digest, size)) = pending.pop()
            {
                let fetch = self.fetch.clone();
                let store = self.store.clone();
                let origin = Origin {
                    repo: reference.repo.clone(),
                    manifest: false,
                };
                running.spawn(async move {
                    let stored = tokio::task::spawn_blocking(move || store.has_blob(&digest)).await;
                    let result = match stored {
                        Ok(Ok(true)) => Ok(()),
                        _ => fetch.fetch_and_wait(digest, Some(origin)).await,
                    };
                    (digest, size, result)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (digest, size, result) =
                joined.map_err(|error| PullError::Store(error.to_string()))?;
            result.map_err(|source| PullError::Fetch { digest, source })?;
            state.blobs_done += 1;
            state.bytes_done = state.bytes_total.min(state.bytes_done + size);
            progress(state);
        }
        // Every piece is stored (and still leased): record the tag, as an import does, so the
        // image is listed and resolved as stored. A tag given with a digest is not recorded:
        // the digest chose the image, not the tag.
        if let TagOrDigest::Tag(tag) = reference.target() {
            let repo = reference.repo.clone();
            let whole = self
                .store
                .blocking(move |store| store.tag_if_whole(&repo, &tag, top))
                .await?;
            if !whole {
                tracing::warn!(image = %reference, digest = %top, "pulled, but not whole in the store");
            }
        }
        drop(leases);
        Ok(top)
    }
}
