//! The gateway's view of the store: [`StoreSource`] implements the gateway's
//! [`ContentSource`] by running store reads on the blocking pool and streaming blob files.

use std::io::{Seek, SeekFrom};
use std::ops::Range;

use shoal_gateway::{BlobStream, ContentSource, Manifest, OpenBlob, SourceError};
use shoal_protocol::{Descriptor, Digest, RepoName, Tag, TagOrDigest};
use tokio::io::AsyncReadExt;
use tokio_util::io::ReaderStream;

use crate::store::{Store, StoreError};

/// Bytes per read when streaming a blob to a client; measured against smaller buffers in the
/// gateway benchmark (see docs/benchmarks.md).
const STREAM_CHUNK_BYTES: usize = 512 * 1024;

#[derive(Debug, Clone)]
pub struct StoreSource {
    store: Store,
}

impl StoreSource {
    pub fn new(store: Store) -> StoreSource {
        StoreSource { store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, SourceError> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|error| SourceError::Internal(Box::new(error)))?
            .map_err(|error| SourceError::Internal(Box::new(error)))
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

impl ContentSource for StoreSource {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Manifest>, SourceError> {
        let (repo, reference) = (repo.clone(), reference.clone());
        let found = self
            .blocking(move |store| absent_if_corrupt(store.manifest(&repo, &reference)))
            .await?;
        Ok(found.map(|(digest, record, bytes)| Manifest {
            digest,
            media_type: record.media_type,
            bytes: bytes.into(),
        }))
    }

    async fn open_blob(
        &self,
        _repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<OpenBlob>, SourceError> {
        let digest = *digest;
        let opened = self
            .blocking(move |store| absent_if_corrupt(store.open_blob(&digest)))
            .await?;
        Ok(opened.map(|(file, size)| OpenBlob {
            size,
            read: Box::new(move |range| stream_file(file, range)),
        }))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>, SourceError> {
        let repo = repo.clone();
        self.blocking(move |store| store.tags(&repo)).await
    }

    async fn repositories(&self, namespace: &str) -> Result<Vec<String>, SourceError> {
        let namespace = namespace.to_owned();
        self.blocking(move |store| store.repositories(&namespace))
            .await
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, SourceError> {
        let (repo, digest) = (repo.clone(), *digest);
        self.blocking(move |store| store.referrers(&repo, &digest))
            .await
    }
}
