//! Downloading one blob (or manifest) from an upstream into the store, while readers watch
//! (see [`SequentialBlob`]).

use std::sync::Arc;

use shoal_protocol::{Digest, RepoName};
use tokio::sync::watch;

use super::{FetchContext, Progress, SequentialBlob};
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
) -> Result<(), String> {
    let (store, counters) = (&context.store, &context.counters);
    let Download {
        client,
        repo,
        blob,
        manifest,
    } = download;
    if *manifest {
        let fetched = client
            .manifest(repo, &blob.to_string())
            .await
            .map_err(|error| error.to_string())?
            .ok_or_else(|| format!("upstream {} has no manifest {blob}", client.namespace()))?;
        Counters::add(&counters.bytes_from_upstream, fetched.bytes.len() as u64);
        let store = store.clone();
        let blob = *blob;
        return tokio::task::spawn_blocking(move || store.put_small(&blob, &fetched.bytes))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string());
    }
    let mut response = client
        .blob(repo, blob)
        .await
        .map_err(|error| error.to_string())?
        .ok_or_else(|| format!("upstream {} has no blob {blob}", client.namespace()))?;
    let size = response.content_length().ok_or_else(|| {
        format!(
            "upstream {} sent {blob} without a length",
            client.namespace()
        )
    })?;
    let mut file = SequentialBlob::create(store, *blob, size, progress)?;
    while let Some(piece) = response
        .chunk()
        .await
        .map_err(|error| format!("reading {blob} from upstream: {error}"))?
    {
        Counters::add(&counters.bytes_from_upstream, piece.len() as u64);
        crate::exchange::rate::acquire(context.site_ingress.as_deref(), piece.len() as u64).await;
        file.append(piece).await?;
    }
    file.finish(store)
        .await
        .map_err(|error| format!("upstream {}: {error}", client.namespace()))
}
