//! Getting whole images from the network: resolve a reference (store, then trusted
//! announcements), fetch its manifest, then every child manifest and blob it needs, and record
//! the manifests in the store under the repository. Used by `shoal pull`, by `--prefetch`, and
//! by the gateway when a client asks for a manifest the node lacks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{Digest, ImageRef, ParsedManifest, RepoName, TagOrDigest};
use tokio::task::JoinSet;

use crate::announce::Announcements;
use crate::fetch::FetchHandle;
use crate::store::{Commit, ManifestRecord, Store};

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
    #[error("cannot fetch {digest}: {reason}")]
    Fetch { digest: Digest, reason: String },
    #[error("manifest {digest} is invalid: {reason}")]
    Manifest { digest: Digest, reason: String },
    #[error("store failed: {0}")]
    Store(String),
}

/// What pulling needs.
#[derive(Debug, Clone)]
pub struct Puller {
    pub store: Store,
    pub fetch: FetchHandle,
    pub announcements: Arc<Announcements>,
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
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, crate::store::StoreError> + Send + 'static,
    ) -> Result<T, PullError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| PullError::Store(error.to_string()))?
            .map_err(|error| PullError::Store(error.to_string()))
    }

    /// The manifest digest a tag or digest names: the store's tag first, then the newest
    /// trusted announcement.
    pub async fn resolve(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Digest>, PullError> {
        let tag = match reference {
            TagOrDigest::Digest(digest) => return Ok(Some(*digest)),
            TagOrDigest::Tag(tag) => tag.clone(),
        };
        if let Some(manifest) = self.announcements.resolve(repo, &tag) {
            return Ok(Some(manifest));
        }
        let (repo, reference) = (repo.clone(), reference.clone());
        let stored = self
            .blocking(move |store| store.manifest(&repo, &reference))
            .await?;
        Ok(stored.map(|(digest, _, _)| digest))
    }

    /// Makes manifest `digest` available in `repo`, fetching it from peers when needed, and
    /// returns its bytes and parsed form.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        digest: Digest,
    ) -> Result<(Vec<u8>, ParsedManifest), PullError> {
        let stored = self.blocking(move |store| store.has_blob(&digest)).await?;
        if !stored {
            tokio::time::timeout(MANIFEST_FETCH_TIMEOUT, self.fetch.fetch_and_wait(digest))
                .await
                .map_err(|_| PullError::Fetch {
                    digest,
                    reason: "timed out".into(),
                })?
                .map_err(|reason| PullError::Fetch { digest, reason })?;
        }
        let repo = repo.clone();
        self.blocking(move |store| {
            let limit = shoal_protocol::manifest::MANIFEST_BYTES_MAX as u64;
            let staging = store.staging()?;
            let Some(bytes) = staging.read_small(&digest, limit)? else {
                return Ok(Err(PullError::Fetch {
                    digest,
                    reason: "vanished after the fetch".into(),
                }));
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
                repo_manifests: vec![(repo, digest)],
                tags: Vec::new(),
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
        while let Some(digest) = manifests.pop() {
            let (_, parsed) = self.manifest(&reference.repo, digest).await?;
            manifests.extend(parsed.manifests.iter().map(|child| child.digest));
            for blob in parsed.blobs {
                if blobs.insert(blob.digest, blob.size).is_none() {
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
                running.spawn(async move {
                    let stored = tokio::task::spawn_blocking(move || store.has_blob(&digest)).await;
                    let result = match stored {
                        Ok(Ok(true)) => Ok(()),
                        _ => fetch.fetch_and_wait(digest).await,
                    };
                    (digest, size, result)
                });
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            let (digest, size, result) =
                joined.map_err(|error| PullError::Store(error.to_string()))?;
            result.map_err(|reason| PullError::Fetch { digest, reason })?;
            state.blobs_done += 1;
            state.bytes_done = state.bytes_total.min(state.bytes_done + size);
            progress(state);
        }
        Ok(top)
    }
}
