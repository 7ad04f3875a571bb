//! Downloading one blob (or manifest) from an upstream into the store, while readers watch
//! (see [`SequentialBlob`]).

use std::sync::Arc;

use shoal_protocol::{Digest, RepoName};
use tokio::sync::watch;

use super::{FetchContext, Progress, SequentialBlob, TransferError};
use crate::observe::Counters;
use crate::upstream::UpstreamClient;

/// What to download, and from where.
#[derive(Debug, Clone)]
pub struct Download {
    pub client: Arc<UpstreamClient>,
    pub repo: RepoName,
    pub blob: Digest,
    /// Whether the digest names a manifest (fetched from the manifests endpoint).
    pub manifest: bool,
}

/// Runs `download`, publishing progress; `Ok` once the blob is verified and stored.
/// What comes from the upstream crosses the site's link: it pays `--max-site-ingress`.
pub async fn download(
    download: &Download,
    context: &FetchContext,
    progress: &watch::Sender<Progress>,
) -> Result<(), TransferError> {
    let (store, counters) = (&context.store, &context.counters);
    let Download {
        client,
        repo,
        blob,
        manifest,
    } = download;
    let lacks = || TransferError::UpstreamLacks {
        namespace: client.namespace().to_owned(),
        blob: *blob,
        manifest: *manifest,
    };
    if *manifest {
        let fetched = client
            .manifest(repo, &blob.to_string())
            .await?
            .ok_or_else(lacks)?;
        Counters::add(&counters.bytes_from_upstream, fetched.bytes.len() as u64);
        let blob = *blob;
        return Ok(store
            .blocking(move |store| store.put_small(&blob, &fetched.bytes))
            .await?);
    }
    let mut response = client.blob(repo, blob).await?.ok_or_else(lacks)?;
    let size = response
        .content_length()
        .ok_or_else(|| TransferError::UpstreamNoLength {
            namespace: client.namespace().to_owned(),
            blob: *blob,
        })?;
    let mut file = SequentialBlob::create(store, *blob, size, progress)?;
    while let Some(piece) =
        response
            .chunk()
            .await
            .map_err(|source| TransferError::UpstreamRead {
                blob: *blob,
                source,
            })?
    {
        Counters::add(&counters.bytes_from_upstream, piece.len() as u64);
        crate::exchange::rate::acquire(context.site_ingress.as_deref(), piece.len() as u64).await;
        file.append(piece).await?;
    }
    file.finish(store)
        .await
        .map_err(|source| TransferError::UpstreamBlob {
            namespace: client.namespace().to_owned(),
            source: Box::new(source),
        })
}
