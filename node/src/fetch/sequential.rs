//! A blob written front to back as its bytes arrive from a source that cannot vouch for each
//! chunk: an upstream registry, or a peer still downloading the blob from one. Each chunk is
//! marked had as soon as it is on disk, so readers stream it at once; the bytes are hashed on
//! the way (sha256 for the digest, BLAKE3 per chunk for the index this node will serve), and the
//! file enters the store only once the whole blob matches its digest.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::{Bitmap, ChunkIndexBuilder, ChunkLayout, Digest};
use tokio::sync::watch;

use super::Progress;
use crate::store::{DiskSpace, Store};

/// Bytes gathered before each write and progress update: one default chunk.
const WRITE_BYTES: usize = 1 << 20;

static NEXT_FILE: AtomicU64 = AtomicU64::new(0);

/// The file being filled under `tmp/`; removed again unless it entered the store.
struct TempFile {
    path: PathBuf,
    file: Arc<File>,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After the store adopted it the path names nothing any more.
        let _ = std::fs::remove_file(&self.path);
    }
}

pub struct SequentialBlob<'a> {
    blob: Digest,
    layout: ChunkLayout,
    builder: ChunkIndexBuilder,
    temp: TempFile,
    buffer: Vec<u8>,
    written: u64,
    progress: &'a watch::Sender<Progress>,
    space: DiskSpace,
}

impl<'a> SequentialBlob<'a> {
    /// Creates the file for `blob` of `size` bytes and tells readers its layout.
    pub fn create(
        store: &Store,
        blob: Digest,
        size: u64,
        progress: &'a watch::Sender<Progress>,
    ) -> Result<Self, String> {
        let layout = ChunkLayout::for_size(size).map_err(|error| error.to_string())?;
        let builder = ChunkIndexBuilder::new(blob, layout.chunk_bytes())
            .map_err(|error| error.to_string())?;
        let path = store.layout().tmp().join(format!(
            "sequential-{}-{}",
            std::process::id(),
            NEXT_FILE.fetch_add(1, Ordering::Relaxed)
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
        Ok(SequentialBlob {
            blob,
            layout,
            builder,
            temp,
            buffer: Vec::with_capacity(WRITE_BYTES),
            written: 0,
            progress,
            space: store.space().clone(),
        })
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Adds the next bytes of the blob.
    pub fn append(&mut self, bytes: &[u8]) -> Result<(), String> {
        let total = self.written + (self.buffer.len() + bytes.len()) as u64;
        if total > self.layout.blob_size() {
            return Err(format!(
                "more than the {} bytes of {} arrived",
                self.layout.blob_size(),
                self.blob
            ));
        }
        self.buffer.extend_from_slice(bytes);
        if self.buffer.len() >= WRITE_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), String> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let (builder, buffer, file) = (&mut self.builder, &self.buffer, &self.temp.file);
        let space = &self.space;
        tokio::task::block_in_place(|| {
            builder.update(buffer);
            space.check(buffer.len() as u64)?;
            (&**file).write_all(buffer)
        })
        .map_err(|error| crate::store::io_error(&self.temp.path)(error).to_string())?;
        self.written += self.buffer.len() as u64;
        self.buffer.clear();
        let have = chunks_within(&self.layout, self.written);
        self.progress.send_modify(|progress| progress.have = have);
        Ok(())
    }

    /// Checks the whole blob against its digest and moves it into the store with its index.
    pub async fn finish(mut self, store: &Store) -> Result<(), String> {
        self.flush()?;
        if self.written != self.layout.blob_size() {
            return Err(format!(
                "{} ended after {} of {} bytes",
                self.blob,
                self.written,
                self.layout.blob_size()
            ));
        }
        let index = self
            .builder
            .finish()
            .map_err(|error| format!("wrong content: {error}"))?;
        let store = store.clone();
        let temp = self.temp;
        tokio::task::spawn_blocking(move || {
            temp.file
                .sync_all()
                .map_err(|error| format!("syncing {}: {error}", temp.path.display()))?;
            store
                .adopt(&temp.path, &index)
                .map_err(|error| error.to_string())
        })
        .await
        .map_err(|error| error.to_string())?
    }
}

/// The chunks wholly within the first `written` bytes.
fn chunks_within(layout: &ChunkLayout, written: u64) -> Bitmap {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_whole_chunks_count_as_had() {
        let layout = ChunkLayout::new(10 << 20, 4 << 20).unwrap();
        assert_eq!(chunks_within(&layout, 0).count_ones(), 0);
        assert_eq!(chunks_within(&layout, (4 << 20) - 1).count_ones(), 0);
        assert_eq!(chunks_within(&layout, 4 << 20).count_ones(), 1);
        assert_eq!(chunks_within(&layout, 10 << 20).count_ones(), 3);
    }
}
