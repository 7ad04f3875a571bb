//! The gateway's view of the node: [`NodeSource`] implements the gateway's [`ContentSource`].
//! It answers from the store first (reads on the blocking pool, blob files streamed); what the
//! store lacks it gets from peers or else the namespace's upstream: tags resolve through the
//! [`Puller`] (upstream, trusted announcements, store), manifests are fetched and recorded, and
//! blobs stream to the client chunk by chunk as they arrive.

use std::io::{Seek, SeekFrom};
use std::ops::Range;
use std::time::Instant;

use shoal_gateway::{
    AuthFailure, BlobStream, ContentSource, Manifest, OpenBlob, PullKind, SourceError, Zone,
};
use shoal_protocol::{Descriptor, Digest, RepoName, Tag, TagOrDigest};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use std::sync::Arc;

use super::pull::{PullError, Puller};
use super::tagger::TaggerHandle;
use crate::exchange::fetch::{Origin, stream_transfer};
use crate::observe::{Counters, ServedFrom, measured};
use crate::store::{BlobLease, BlockingError, Store, StoreError};

/// Bytes per read when streaming a blob to a client; measured against smaller buffers in the
/// gateway benchmark (see docs/benchmarks.md).
const STREAM_CHUNK_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone)]
pub struct NodeSource {
    store: Store,
    puller: Puller,
    counters: Arc<Counters>,
    /// Records the tag of an image pulled through here once all of it is stored.
    tagger: TaggerHandle,
}

impl NodeSource {
    pub fn new(puller: Puller, counters: Arc<Counters>, tagger: TaggerHandle) -> NodeSource {
        NodeSource {
            store: puller.store.clone(),
            puller,
            counters,
            tagger,
        }
    }
}

/// A store that failed, or work that never ran, is this node's fault, not the client's.
impl From<BlockingError> for SourceError {
    fn from(error: BlockingError) -> SourceError {
        SourceError::Internal(Box::new(error))
    }
}

/// A corrupt file was removed by the store: the content is now simply absent.
fn absent_if_corrupt<T>(result: Result<Option<T>, StoreError>) -> Result<Option<T>, StoreError> {
    match result {
        Err(StoreError::CorruptContent { digest, actual }) => {
            tracing::error!(%digest, %actual, "stored content was corrupt on disk and has been removed");
            Ok(None)
        }
        other => other,
    }
}

/// `stream`, holding `lease` until the client has it all or goes away.
fn leased(stream: BlobStream, lease: BlobLease) -> BlobStream {
    Box::pin(futures_util::StreamExt::inspect(stream, move |_| {
        let _held = &lease;
    }))
}

fn stream_file(mut file: std::fs::File, range: Range<u64>) -> BlobStream {
    // lseek only moves the file offset; it never waits on the disk.
    if let Err(error) = file.seek(SeekFrom::Start(range.start)) {
        return Box::pin(futures_util::stream::once(std::future::ready(Err(error))));
    }
    let mut file = tokio::fs::File::from_std(file);
    file.set_max_buf_size(STREAM_CHUNK_BYTES);
    Box::pin(ReaderStream::with_capacity(
        file.take(range.end - range.start),
        STREAM_CHUNK_BYTES,
    ))
}

impl ContentSource for NodeSource {
    fn pulled(&self, kind: PullKind, zone: Zone) {
        self.counters.gateway.pulled(kind.as_str(), zone.as_str());
    }

    fn auth_failed(&self, failure: AuthFailure) {
        self.counters.gateway.auth_failed(failure.as_str());
    }

    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Manifest>, SourceError> {
        let (hits, misses) = (
            &self.counters.gateway_manifest_hits,
            &self.counters.gateway_manifest_misses,
        );
        let digest = match self.puller.resolve(repo, reference).await {
            Ok(Some(digest)) => digest,
            Ok(None) => {
                Counters::add(misses, 1);
                return Ok(None);
            }
            Err(error) => {
                Counters::add(misses, 1);
                // An unreachable upstream is news for the client; a store failure is not.
                return Err(match error {
                    PullError::Upstream { .. } => SourceError::Unavailable(error.to_string()),
                    other => SourceError::Internal(Box::new(other)),
                });
            }
        };
        let (for_store, by_digest) = (repo.clone(), TagOrDigest::Digest(digest));
        let tag = match reference {
            TagOrDigest::Tag(tag) => Some(tag.clone()),
            TagOrDigest::Digest(_) => None,
        };
        let (stored, tagged) = self
            .store
            .blocking(move |store| {
                let tagged = match &tag {
                    Some(tag) => store.tagged(&for_store, tag)?,
                    None => None,
                };
                let stored = absent_if_corrupt(store.manifest(&for_store, &by_digest))?;
                Ok((stored, tagged))
            })
            .await?;
        if let TagOrDigest::Tag(tag) = reference
            && tagged != Some(digest)
        {
            // The client goes on to fetch the image's pieces; the tag is recorded once they are
            // all stored (a manifest that cannot be had below makes no image whole).
            self.tagger.candidate(repo.clone(), tag.clone(), digest);
        }
        if let Some((digest, record, bytes)) = stored {
            Counters::add(hits, 1);
            return Ok(Some(Manifest {
                digest,
                media_type: record.media_type,
                bytes: bytes.into(),
            }));
        }
        Counters::add(misses, 1);
        match self.puller.manifest(repo, digest).await {
            Ok((bytes, parsed)) => Ok(Some(Manifest {
                digest,
                media_type: parsed.media_type,
                bytes: bytes.into(),
            })),
            Err(error) => {
                tracing::info!(%repo, %digest, %error, "manifest not available from peers");
                Ok(None)
            }
        }
    }

    async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<OpenBlob>, SourceError> {
        let (digest, started) = (*digest, Instant::now());
        // Taken before the store is asked, so eviction cannot take the blob from under a reader.
        let lease = self.store.lease(digest);
        let opened = self
            .store
            .blocking(move |store| absent_if_corrupt(store.open_blob(&digest)))
            .await?;
        let counters = self.counters.clone();
        if let Some((file, size)) = opened {
            Counters::add(&counters.gateway_blob_hits, 1);
            let read = Box::new(move |range: Range<u64>| {
                let length = range.end - range.start;
                let body = leased(stream_file(file, range), lease);
                measured(body, length, counters, ServedFrom::Store, started)
            });
            return Ok(Some(OpenBlob { size, read }));
        }
        Counters::add(&counters.gateway_blob_misses, 1);
        let origin = Origin {
            repo: repo.clone(),
            manifest: false,
        };
        let Some(mut transfer) = self.puller.fetch.fetch(digest, Some(origin)).await else {
            return Ok(None);
        };
        self.tagger.watch(transfer.clone());
        match transfer.ready().await {
            Ok(layout) => {
                let read = Box::new(move |range: Range<u64>| {
                    let length = range.end - range.start;
                    let body = leased(stream_transfer(transfer, range), lease);
                    measured(body, length, counters, ServedFrom::Network, started)
                });
                Ok(Some(OpenBlob {
                    size: layout.blob_size(),
                    read,
                }))
            }
            Err(error) => {
                tracing::info!(%digest, %error, "blob not available from peers");
                Ok(None)
            }
        }
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>, SourceError> {
        let for_store = repo.clone();
        let stored = self
            .store
            .blocking(move |store| store.tags(&for_store))
            .await?;
        let announced = self.puller.announcements.tags(repo);
        if stored.is_none() && announced.is_empty() {
            return Ok(None);
        }
        let mut tags = stored.unwrap_or_default();
        tags.extend(announced);
        tags.sort();
        tags.dedup();
        Ok(Some(tags))
    }

    async fn repositories(&self, namespace: &str) -> Result<Vec<String>, SourceError> {
        let namespace = namespace.to_owned();
        self.store
            .blocking(move |store| store.repositories(&namespace))
            .await
            .map_err(SourceError::from)
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, SourceError> {
        let (repo, digest) = (repo.clone(), *digest);
        self.store
            .blocking(move |store| store.referrers(&repo, &digest))
            .await
            .map_err(SourceError::from)
    }
}
