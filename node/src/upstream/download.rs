//! Downloading one blob (or manifest) from an upstream into the store, while readers watch.
//!
//! The bytes go to a file under `tmp/` as they arrive, hashed on the way (sha256 for the
//! digest, BLAKE3 per chunk for the index peers will get), and each chunk is marked had as soon
//! as it is on disk, so gateway clients stream it at once. At the end the file is synced and
//! checked against the digest, and only then does it enter the store with its index.

use std::fs::File;
use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::{Bitmap, ChunkIndexBuilder, ChunkLayout, Digest, RepoName};
use tokio::sync::watch;

use super::UpstreamClient;
use crate::counters::Counters;
use crate::fetch::Progress;
use crate::store::Store;

/// Bytes gathered before each write and progress update: one default chunk.
const WRITE_BYTES: usize = 1 << 20;

static NEXT_DOWNLOAD: AtomicU64 = AtomicU64::new(0);

/// What to download, and from where.
#[derive(Debug, Clone)]
pub struct Download {
    pub client: Arc<UpstreamClient>,
    pub repo: RepoName,
    pub blob: Digest,
    /// Whether the digest names a manifest (fetched from the manifests endpoint).
    pub manifest: bool,
}

/// The file being filled, removed again unless it entered the store.
struct TempFile {
    path: std::path::PathBuf,
    file: Arc<File>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a successful adoption the path names nothing any more.
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Runs `download`, publishing progress; `Ok` once the blob is verified and stored.
pub async fn download(
    download: &Download,
    store: &Store,
    counters: &Counters,
    progress: &watch::Sender<Progress>,
) -> Result<(), String> {
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
    let layout = ChunkLayout::for_size(size).map_err(|error| error.to_string())?;
    let mut builder =
        ChunkIndexBuilder::new(*blob, layout.chunk_bytes()).map_err(|error| error.to_string())?;
    let path = store.layout().tmp().join(format!(
        "upstream-{}-{}",
        std::process::id(),
        NEXT_DOWNLOAD.fetch_add(1, Ordering::Relaxed)
    ));
    let file = File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|error| format!("cannot create {}: {error}", path.display()))?;
    let temp = TempFile {
        path,
        file: Arc::new(file),
    };
    progress.send_modify(|progress| {
        progress.layout = Some(layout);
        progress.file = Some(temp.file.clone());
        progress.have = Bitmap::new(layout.chunk_count());
    });
    let mut buffer = Vec::with_capacity(WRITE_BYTES);
    let mut written = 0u64;
    loop {
        let piece = response
            .chunk()
            .await
            .map_err(|error| format!("reading {blob} from upstream: {error}"))?;
        let done = piece.is_none();
        if let Some(piece) = &piece {
            Counters::add(&counters.bytes_from_upstream, piece.len() as u64);
            if written + (buffer.len() + piece.len()) as u64 > size {
                return Err(format!(
                    "upstream sent more than the {size} bytes of {blob}"
                ));
            }
            buffer.extend_from_slice(piece);
        }
        if buffer.len() >= WRITE_BYTES || (done && !buffer.is_empty()) {
            tokio::task::block_in_place(|| {
                builder.update(&buffer);
                (&*temp.file).write_all(&buffer)
            })
            .map_err(|error| format!("writing {}: {error}", temp.path.display()))?;
            written += buffer.len() as u64;
            buffer.clear();
            let have = chunks_on_disk(&layout, written);
            progress.send_modify(|progress| progress.have = have);
        }
        if done {
            break;
        }
    }
    if written != size {
        return Err(format!(
            "upstream ended {blob} after {written} of {size} bytes"
        ));
    }
    let index = builder
        .finish()
        .map_err(|error| format!("upstream sent a wrong {blob}: {error}"))?;
    let store = store.clone();
    let file = temp.file.clone();
    let path = temp.path.clone();
    tokio::task::spawn_blocking(move || {
        file.sync_all()
            .map_err(|error| format!("syncing {}: {error}", path.display()))?;
        store
            .adopt(&path, &index)
            .map_err(|error| error.to_string())
    })
    .await
    .map_err(|error| error.to_string())?
}

/// The chunks wholly within the first `written` bytes.
fn chunks_on_disk(layout: &ChunkLayout, written: u64) -> Bitmap {
    let mut have = Bitmap::new(layout.chunk_count());
    for chunk in 0..layout.chunk_count() {
        match layout.chunk_range(chunk) {
            Ok(range) if range.end <= written => {
                have.set(chunk);
            }
            _ => break,
        }
    }
    have
}
