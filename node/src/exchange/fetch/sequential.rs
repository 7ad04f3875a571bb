//! A blob written front to back as its bytes arrive from a source that cannot vouch for each
//! chunk: an upstream registry, or a peer still downloading the blob from one. Each piece goes
//! to readers from memory at once ([`ArrivingBytes`]) and to a writer thread that hashes it
//! (sha256 for the digest, BLAKE3 per chunk for the index this node will serve) and writes it,
//! so clients never wait for the hashing or the page cache. A chunk is marked had once it is on
//! disk, for peers; the file enters the store only once the whole blob matches its digest.

use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use shoal_protocol::{Bitmap, ChunkIndexBuilder, ChunkLayout, Digest};
use tokio::sync::{Semaphore, mpsc, watch};

use super::Progress;
use super::TransferError;
use super::arriving::ArrivingBytes;
use crate::store::{DiskSpace, Store};

/// Bytes handed to the writer and not yet written: bounds memory when the disk is slower than
/// the source. 16 MiB gave the same pull times as this with a third more peak RSS
/// (docs/benchmarks.md, bench_upstream).
const UNWRITTEN_BYTES_MAX: usize = 4 << 20;
/// Free space is checked before each this many bytes are written.
const SPACE_CHECK_BYTES: u64 = 1 << 20;

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
    arrived: u64,
    arriving: Arc<ArrivingBytes>,
    /// Chunks wholly on disk, as last told to readers.
    chunks_had: u32,
    pieces: mpsc::UnboundedSender<Bytes>,
    unwritten: Arc<Semaphore>,
    writer: tokio::task::JoinHandle<Result<Written, TransferError>>,
    progress: &'a watch::Sender<Progress>,
}

/// What the writer thread hands back once every piece is on disk.
struct Written {
    temp: TempFile,
    builder: ChunkIndexBuilder,
    bytes: u64,
}

impl<'a> SequentialBlob<'a> {
    /// Creates the file for `blob` of `size` bytes, starts its writer and tells readers its
    /// layout.
    pub fn create(
        store: &Store,
        blob: Digest,
        size: u64,
        progress: &'a watch::Sender<Progress>,
    ) -> Result<Self, TransferError> {
        let layout = ChunkLayout::for_size(size)?;
        let builder = ChunkIndexBuilder::new(blob, layout.chunk_bytes())?;
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
            .map_err(|source| TransferError::Create {
                path: path.clone(),
                source,
            })?;
        let temp = TempFile {
            path,
            file: Arc::new(file),
        };
        let arriving = Arc::new(ArrivingBytes::default());
        progress.send_modify(|progress| {
            progress.layout = Some(layout);
            progress.file = Some(temp.file.clone());
            progress.arriving = Some(arriving.clone());
            progress.have = Bitmap::new(layout.chunk_count());
        });
        let (pieces, receiver) = mpsc::unbounded_channel();
        let unwritten = Arc::new(Semaphore::new(UNWRITTEN_BYTES_MAX));
        let writer = Writer {
            written: Written {
                temp,
                builder,
                bytes: 0,
            },
            space: store.space().clone(),
            space_checked_to: 0,
            arriving: arriving.clone(),
            unwritten: unwritten.clone(),
        };
        Ok(SequentialBlob {
            blob,
            layout,
            arrived: 0,
            arriving,
            chunks_had: 0,
            pieces,
            unwritten,
            writer: tokio::task::spawn_blocking(move || writer.run(receiver)),
            progress,
        })
    }

    pub fn layout(&self) -> ChunkLayout {
        self.layout
    }

    /// Adds the next bytes of the blob: readers see them at once; they are written behind.
    pub async fn append(&mut self, piece: Bytes) -> Result<(), TransferError> {
        if self.arrived + piece.len() as u64 > self.layout.blob_size() {
            return Err(TransferError::TooLong {
                blob: self.blob,
                size: self.layout.blob_size(),
            });
        }
        let permits = piece.len().min(UNWRITTEN_BYTES_MAX) as u32;
        let booked = self
            .unwritten
            .acquire_many(permits)
            .await
            .map(|p| p.forget());
        if booked.is_err() {
            return Err(self.writer_failure().await);
        }
        self.arrived += piece.len() as u64;
        self.arriving.push(piece.clone());
        if self.pieces.send(piece).is_err() {
            return Err(self.writer_failure().await);
        }
        let had = self.chunks_on_disk();
        let newly_had = self.chunks_had..had;
        self.chunks_had = had;
        self.progress.send_modify(|progress| {
            for chunk in newly_had {
                progress.have.set(chunk);
            }
        });
        Ok(())
    }

    /// The chunks wholly written so far.
    fn chunks_on_disk(&self) -> u32 {
        let written = self.arriving.written();
        if written >= self.layout.blob_size() {
            return self.layout.chunk_count();
        }
        self.layout.chunk_at(written).unwrap_or(0)
    }

    /// The writer's error, once it has stopped.
    async fn writer_failure(&mut self) -> TransferError {
        match (&mut self.writer).await {
            Ok(Err(error)) => error,
            Ok(Ok(_)) => TransferError::WriterStopped,
            Err(error) => error.into(),
        }
    }

    /// Waits for the writer, checks the whole blob against its digest and moves it into the
    /// store with its index.
    pub async fn finish(self, store: &Store) -> Result<(), TransferError> {
        let SequentialBlob {
            blob,
            layout,
            arriving,
            pieces,
            writer,
            progress,
            ..
        } = self;
        drop(pieces);
        let written = writer.await??;
        if written.bytes != layout.blob_size() {
            return Err(TransferError::TooShort {
                blob,
                arrived: written.bytes,
                size: layout.blob_size(),
            });
        }
        let index = written.builder.finish().map_err(TransferError::Mismatch)?;
        let store = store.clone();
        let temp = written.temp;
        tokio::task::spawn_blocking(move || {
            temp.file.sync_all().map_err(|source| TransferError::Sync {
                path: temp.path.clone(),
                source,
            })?;
            Ok::<_, TransferError>(store.adopt(&temp.path, &index)?)
        })
        .await??;
        progress.send_modify(|progress| progress.have = Bitmap::full(layout.chunk_count()));
        arriving.release();
        Ok(())
    }
}

/// Hashes and writes the pieces on a blocking thread, in order.
struct Writer {
    written: Written,
    space: DiskSpace,
    space_checked_to: u64,
    arriving: Arc<ArrivingBytes>,
    unwritten: Arc<Semaphore>,
}

impl Writer {
    /// Writes pieces until the sender is dropped; on failure, the appender is woken by the
    /// closed semaphore and asks for the error.
    fn run(mut self, mut pieces: mpsc::UnboundedReceiver<Bytes>) -> Result<Written, TransferError> {
        while let Some(piece) = pieces.blocking_recv() {
            if let Err(error) = self.write(&piece) {
                self.unwritten.close();
                return Err(crate::store::io_error(&self.written.temp.path)(error).into());
            }
            self.unwritten
                .add_permits(piece.len().min(UNWRITTEN_BYTES_MAX));
        }
        Ok(self.written)
    }

    fn write(&mut self, piece: &[u8]) -> std::io::Result<()> {
        let written = &mut self.written;
        let end = written.bytes + piece.len() as u64;
        if end > self.space_checked_to {
            self.space.check(piece.len() as u64 + SPACE_CHECK_BYTES)?;
            self.space_checked_to = end + SPACE_CHECK_BYTES;
        }
        written.builder.update(piece);
        (&*written.temp.file).write_all(piece)?;
        written.bytes = end;
        self.arriving.mark_written(end);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blob of three and a half 1 MiB chunks.
    fn blob() -> Vec<u8> {
        (0..(7u32 << 19)).map(|i| (i % 251) as u8).collect()
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn readers_see_pieces_at_once_and_the_checked_blob_enters_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = blob();
        let digest = Digest::of(&bytes);
        let (progress, watcher) = watch::channel(Progress::default());
        let mut file =
            SequentialBlob::create(&store, digest, bytes.len() as u64, &progress).unwrap();
        let arriving = watcher.borrow().arriving.clone().unwrap();
        for (number, piece) in bytes.chunks(100_000).enumerate() {
            file.append(Bytes::copy_from_slice(piece)).await.unwrap();
            let position = (number * 100_000) as u64;
            let seen = arriving.at(position, piece.len()).expect("just arrived");
            assert_eq!(seen.as_ref(), piece);
        }
        file.finish(&store).await.unwrap();
        assert!(store.has_blob(&digest).unwrap());
        let progress = watcher.borrow();
        assert_eq!(progress.have.count_ones(), 4, "every chunk is had");
        assert!(arriving.at(0, 1).is_none(), "memory let go once stored");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn a_blob_that_does_not_match_its_digest_never_enters_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let mut bytes = blob();
        let digest = Digest::of(&bytes);
        bytes[12_345] ^= 1;
        let (progress, _watcher) = watch::channel(Progress::default());
        let mut file =
            SequentialBlob::create(&store, digest, bytes.len() as u64, &progress).unwrap();
        file.append(Bytes::from(bytes)).await.unwrap();
        let error = file.finish(&store).await.unwrap_err();
        assert!(matches!(error, TransferError::Mismatch(_)), "{error}");
        assert!(!store.has_blob(&digest).unwrap());
        let leftovers = std::fs::read_dir(store.layout().tmp()).unwrap().count();
        assert_eq!(leftovers, 0, "the temporary file is removed");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn bytes_beyond_the_announced_size_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = blob();
        let (progress, _watcher) = watch::channel(Progress::default());
        let mut file = SequentialBlob::create(&store, Digest::of(&bytes), 1000, &progress).unwrap();
        let error = file.append(Bytes::from(bytes)).await.unwrap_err();
        assert!(
            matches!(error, TransferError::TooLong { size: 1000, .. }),
            "{error}"
        );
    }
}
