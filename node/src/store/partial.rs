//! Blobs being fetched: a sparse file under `partial/<hex>` filled chunk by chunk, and one
//! sled value (`p/<digest>`) holding its chunk index and the bitmap of chunks written.
//!
//! Every chunk is checked against the index before it is written. Progress is made durable in
//! batches (fdatasync, then the bitmap) rather than per chunk, once a batch is worth it
//! ([`PartialBlob::persist_due`]); on reopen, chunks not marked yet are re-checked against the
//! index, so a chunk that reached the disk before a crash is found again and never fetched twice.
//! [`PartialBlob::complete`] checks the whole file's sha256 before the blob enters the store; the
//! hash runs while chunks arrive, over the prefix of chunks had so far, so that only what is left
//! is hashed after the last chunk.
//!
//! Chunks are written around the page cache (`O_DIRECT`) where the file system allows it; see
//! [`DirectFile`]. Readers (peers, streaming clients) read through the page cache as usual,
//! which the kernel keeps coherent with direct writes.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use shoal_protocol::chunk::{ChunkIndex, ChunkLayout};
use shoal_protocol::{Bitmap, Digest, Sha256Writer, wire};

use super::metadata::{self, partial_key};
use super::{Store, StoreError, io_error};

/// Upper bound of an encoded partial record: the largest chunk index plus its bitmap.
const PARTIAL_RECORD_BYTES_MAX: usize = 64 << 20;

/// Progress made durable at once when this much is written since the last time: a crash costs
/// at most re-reading it (the reopen's scan finds what reached the disk). Each time is an
/// fdatasync, a rewrite of the record and a flush of sled's log, so a transfer that gains a
/// chunk a second makes it durable every eight seconds instead of every second: a fan-out
/// member at 4 MiB/s spent some 5 % of its CPU on it (docs/benchmarks.md, "A 32 × 4 member's
/// CPU by task; progress durable by the amount at stake").
const PERSIST_BYTES: u64 = 8 << 20;

/// Progress smaller than [`PERSIST_BYTES`] is made durable this long after the last time.
const PERSIST_AGE_MAX: Duration = Duration::from_secs(10);

/// Chunks read back from the file for the running sha256 per chunk written: the hash catches
/// up over chunks that arrived out of order at a few times the arrival rate, while one arrival
/// never holds the transfer up for more than a few milliseconds.
const HASH_CATCH_UP_CHUNKS_MAX: usize = 4;

/// Alignment of direct I/O buffers, offsets and lengths: the page size, a multiple of every
/// common logical block size. Chunk offsets and lengths are multiples of the chunk size
/// (at least 16 KiB), except a blob's last chunk, which goes through the page cache.
const DIRECT_ALIGN_BYTES: usize = 4096;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PartialRecord {
    index: ChunkIndex,
    have: Bitmap,
}

/// A blob being assembled. One writer (the transfer) owns it; readers share its file through
/// [`PartialBlob::reader`].
#[derive(Debug)]
pub struct PartialBlob {
    store: Store,
    index: ChunkIndex,
    have: Bitmap,
    file: File,
    path: PathBuf,
    /// Bytes counted as had since the record was last made durable.
    unsynced_bytes: u64,
    /// When the record was last made durable; `None` before the first time.
    persisted_at: Option<Instant>,
    /// The sha256 of chunks `0..hashed_chunks`, all of them had; `None` when the sha256 runs
    /// elsewhere ([`PartialBlob::hash_elsewhere`]).
    hasher: Option<Sha256Writer>,
    hashed_chunks: u32,
    /// The same file opened for direct I/O, when the file system supports it, for reading
    /// chunks back.
    direct: Option<DirectFile>,
    writer: ChunkWriter,
}

/// A second handle on a partial file, opened with `O_DIRECT`, and one aligned buffer for
/// reading chunks back.
///
/// Why: on the machines measured here (virtual machines), putting new data into the page
/// cache is the most expensive thing a receiving node does — `dd` of 1 GiB into a new file
/// takes 2.3 CPU-seconds buffered, 0.08 direct (2.7 GB/s), and a profile of a 1 GiB pull
/// showed a third of the receiver's CPU in the kernel's copy into fresh page-cache pages.
/// A direct write waits for the device, so chunks are written by [`ChunkWriter`]s, several
/// at once, off the transfer's path.
#[derive(Debug)]
struct DirectFile {
    file: File,
    /// One chunk plus alignment slack; the aligned part starts at `align_offset`.
    buffer: Vec<u8>,
}

/// Opens `path` for direct I/O; `None` where it is not available (tmpfs, other systems):
/// writes and reads then go through the page cache.
fn open_direct(path: &std::path::Path) -> Option<File> {
    #[cfg(target_os = "linux")]
    {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(rustix::fs::OFlags::DIRECT.bits() as i32)
            .open(path)
            .ok()
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = path;
        None
    }
}

fn can_do_direct(offset: u64, length: usize) -> bool {
    offset.is_multiple_of(DIRECT_ALIGN_BYTES as u64) && length.is_multiple_of(DIRECT_ALIGN_BYTES)
}

/// Writes `bytes` at `offset` of `file`, opened for direct I/O; `Ok(false)` when this write
/// has to go through the page cache instead (unaligned, or refused by the file system). Bytes
/// already in aligned memory (the chunk buffers the network reads into) are written from
/// where they are; others are copied into aligned memory first.
fn write_direct(file: &File, bytes: &[u8], offset: u64) -> io::Result<bool> {
    if !can_do_direct(offset, bytes.len()) {
        return Ok(false);
    }
    let mut copy = Vec::new();
    let aligned = if (bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN_BYTES) {
        bytes
    } else {
        copy.resize(bytes.len() + DIRECT_ALIGN_BYTES, 0);
        let start = copy.as_ptr().align_offset(DIRECT_ALIGN_BYTES);
        let aligned = &mut copy[start..start + bytes.len()];
        aligned.copy_from_slice(bytes);
        aligned
    };
    match file.write_all_at(aligned, offset) {
        Ok(()) => Ok(true),
        Err(error) if is_invalid_argument(&error) => Ok(false),
        Err(error) => Err(error),
    }
}

impl DirectFile {
    fn open(path: &std::path::Path) -> Option<DirectFile> {
        Some(DirectFile {
            file: open_direct(path)?,
            buffer: Vec::new(),
        })
    }

    /// Where an aligned run of `length` bytes starts in the buffer, grown if need be.
    fn aligned_start(&mut self, length: usize) -> usize {
        if self.buffer.len() < length + DIRECT_ALIGN_BYTES {
            self.buffer = vec![0; length + DIRECT_ALIGN_BYTES];
        }
        self.buffer.as_ptr().align_offset(DIRECT_ALIGN_BYTES)
    }

    /// Reads `length` bytes at `offset`; `None` when this read has to go through the page
    /// cache instead.
    fn read_at(&mut self, length: usize, offset: u64) -> io::Result<Option<&[u8]>> {
        if !can_do_direct(offset, length) {
            return Ok(None);
        }
        let start = self.aligned_start(length);
        match (self.file).read_exact_at(&mut self.buffer[start..start + length], offset) {
            Ok(()) => {}
            Err(error) if is_invalid_argument(&error) => return Ok(None),
            Err(error) => return Err(error),
        }
        Ok(Some(&self.buffer[start..start + length]))
    }
}

/// The write side of a partial blob, for writing chunks off the transfer's path: cheap to
/// clone, and any number of writes may run at once, each at its chunk's place in the file.
/// A chunk written here counts as had only once its transfer is told
/// ([`PartialBlob::written`]).
#[derive(Debug, Clone)]
pub struct ChunkWriter {
    shared: Arc<WriterFiles>,
}

#[derive(Debug)]
struct WriterFiles {
    store: Store,
    layout: ChunkLayout,
    file: File,
    path: PathBuf,
    /// The file opened for direct I/O, until the file system refuses a direct write.
    direct: Option<File>,
    direct_refused: AtomicBool,
}

impl ChunkWriter {
    /// Writes chunk `chunk`, which the caller has checked against the index, where it belongs.
    /// On a full disk the half-fetched blob only holds space others need: its transfer lets
    /// it go ([`PartialBlob::discard`]) when it sees [`StoreError::DiskFull`].
    pub fn write(&self, chunk: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let files = &self.shared;
        let range = files
            .layout
            .chunk_range(chunk)
            .map_err(|error| StoreError::CorruptRecord {
                key: files.path.display().to_string(),
                reason: error.to_string(),
            })?;
        (files.store.space().check(bytes.len() as u64))
            .and_then(|()| self.write_at(bytes, range.start))
            .map_err(io_error(&files.path))
    }

    /// Writes directly where it can, through the page cache where it cannot; a file system
    /// that refuses a direct write gets no more of them.
    fn write_at(&self, bytes: &[u8], offset: u64) -> io::Result<()> {
        let files = &self.shared;
        if let Some(direct) = &files.direct
            && !files.direct_refused.load(Ordering::Relaxed)
        {
            if write_direct(direct, bytes, offset)? {
                return Ok(());
            }
            if can_do_direct(offset, bytes.len()) {
                files.direct_refused.store(true, Ordering::Relaxed);
            }
        }
        files.file.write_all_at(bytes, offset)
    }
}

fn is_invalid_argument(error: &io::Error) -> bool {
    error.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error())
}

impl PartialBlob {
    /// Opens the partial blob for `index`, resuming earlier progress: recorded chunks, plus
    /// any chunk on disk that matches the index. A different index recorded for the same blob
    /// (another chunk size) starts over.
    pub fn open(store: &Store, index: ChunkIndex) -> Result<PartialBlob, StoreError> {
        let path = store.layout().partial(&index.blob());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_error(&path))?;
        let bytes_on_disk = file.metadata().map_err(io_error(&path))?.len();
        let path_for_direct = path.clone();
        file.set_len(index.blob_size()).map_err(io_error(&path))?;
        let recorded = load_record(store, &index.blob())?.filter(|record| record.index == index);
        // A file created just now holds nothing to find again; skipping the scan saves reading
        // the whole (sparse) blob before the first request.
        let fresh = recorded.is_none() && bytes_on_disk == 0;
        let mut have =
            recorded.map_or_else(|| Bitmap::new(index.chunk_count()), |record| record.have);
        let unmarked: Vec<u32> = if fresh {
            Vec::new()
        } else {
            have.iter_zeros().collect()
        };
        let mut buffer = Vec::new();
        for chunk in unmarked {
            let Ok(range) = index.chunk_range(chunk) else {
                continue;
            };
            buffer.resize((range.end - range.start) as usize, 0);
            file.read_exact_at(&mut buffer, range.start)
                .map_err(io_error(&path))?;
            if index.verify_chunk(chunk, &buffer).is_ok() {
                have.set(chunk);
            }
        }
        let writer = ChunkWriter {
            shared: Arc::new(WriterFiles {
                store: store.clone(),
                layout: index.layout(),
                file: file.try_clone().map_err(io_error(&path))?,
                path: path.clone(),
                direct: open_direct(&path_for_direct),
                direct_refused: AtomicBool::new(false),
            }),
        };
        let mut partial = PartialBlob {
            store: store.clone(),
            index,
            have,
            file,
            path,
            unsynced_bytes: 0,
            persisted_at: None,
            hasher: Some(Sha256Writer::default()),
            hashed_chunks: 0,
            direct: DirectFile::open(&path_for_direct),
            writer,
        };
        partial.persist()?;
        Ok(partial)
    }

    /// Stops the running sha256: a trusted publisher signed this blob's index root with its
    /// digest, so its chunks are the publisher's bytes once they match the index, and the
    /// whole-blob check runs off the transfer's path ([`PartialBlob::complete_hashed`]).
    pub fn hash_elsewhere(&mut self) {
        self.hasher = None;
    }

    /// Whether [`PartialBlob::written`] feeds a running sha256, reading chunks back from the
    /// file when they arrived out of order: work for a blocking thread. Without it, counting a
    /// chunk as had is a bit set.
    pub fn hashes_in_line(&self) -> bool {
        self.hasher.is_some()
    }

    /// Reads chunks back from the file for a hasher of its own, around the page cache where
    /// the file system allows it.
    pub fn chunk_reader(&self) -> Result<ChunkReader, StoreError> {
        Ok(ChunkReader {
            file: self.reader()?,
            direct: DirectFile::open(&self.path),
            index: self.index.clone(),
        })
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// A second handle on the file for readers (peers, streaming clients). It stays valid after
    /// the blob moves into the store: the rename keeps the same file.
    ///
    /// Readahead is off for it: readers ask for whole chunks, and past the chunks written the
    /// file is holes, which readahead fills with zeroed pages — a third of a receiving node's
    /// CPU when a gateway client read behind the chunks kept in memory (docs/benchmarks.md) —
    /// only for the chunks' writes around the page cache to throw them away.
    pub fn reader(&self) -> Result<File, StoreError> {
        let file = self.file.try_clone().map_err(io_error(&self.path))?;
        rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::Random)
            .map_err(|error| io_error(&self.path)(error.into()))?;
        Ok(file)
    }

    /// The write side of the file, for writes off the transfer's path.
    pub fn writer(&self) -> ChunkWriter {
        self.writer.clone()
    }

    /// Writes a chunk that the caller has checked against the index, and counts it as had.
    #[cfg(test)]
    pub fn write_chunk(&mut self, chunk: u32, bytes: &[u8]) -> Result<(), StoreError> {
        if let Err(error) = self.writer.write(chunk, bytes) {
            if matches!(error, StoreError::DiskFull { .. }) {
                let _ = self.discard();
            }
            return Err(error);
        }
        self.written(chunk, bytes)
    }

    /// Counts chunk `chunk`, written by a [`ChunkWriter`], as had: it is made durable with
    /// the next [`PartialBlob::persist`], and the running sha256 takes `bytes` when they are
    /// next in line.
    pub fn written(&mut self, chunk: u32, bytes: &[u8]) -> Result<(), StoreError> {
        self.have.set(chunk);
        self.unsynced_bytes += bytes.len() as u64;
        self.hash_ahead(chunk, bytes).map_err(io_error(&self.path))
    }

    /// Feeds chunk `chunk` to the running hash from the file.
    fn hash_from_file(&mut self, chunk: u32) -> io::Result<()> {
        let Some(hasher) = &mut self.hasher else {
            return Ok(());
        };
        read_chunk(&self.file, &mut self.direct, &self.index, chunk, |bytes| {
            hasher.update(bytes)
        })
    }

    /// Extends the running sha256 over the chunks had from its cursor on: `bytes` when they
    /// are chunk `written` the cursor is at, other chunks read back from the file (the page
    /// cache), at most [`HASH_CATCH_UP_CHUNKS_MAX`] of them per call.
    fn hash_ahead(&mut self, written: u32, bytes: &[u8]) -> io::Result<()> {
        if self.hasher.is_none() {
            return Ok(());
        }
        let mut reads = 0;
        while self.have.get(self.hashed_chunks) {
            let chunk = self.hashed_chunks;
            if chunk == written {
                if let Some(hasher) = &mut self.hasher {
                    hasher.update(bytes);
                }
            } else {
                if reads == HASH_CATCH_UP_CHUNKS_MAX {
                    break;
                }
                reads += 1;
                self.hash_from_file(chunk)?;
            }
            self.hashed_chunks += 1;
        }
        Ok(())
    }

    /// Whether the progress since the record was last made durable is worth an fdatasync and
    /// a record now: [`PERSIST_BYTES`] of it, or any of it [`PERSIST_AGE_MAX`] after the last
    /// time.
    pub fn persist_due(&self) -> bool {
        self.unsynced_bytes >= PERSIST_BYTES
            || (self.unsynced_bytes > 0
                && self
                    .persisted_at
                    .is_none_or(|at| at.elapsed() >= PERSIST_AGE_MAX))
    }

    /// Makes the chunks written so far durable, then records them.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        if self.persisted_at.is_some() && self.unsynced_bytes == 0 {
            return Ok(());
        }
        self.file.sync_data().map_err(io_error(&self.path))?;
        let record = wire::encode(&PartialRecord {
            index: self.index.clone(),
            have: self.have.clone(),
        })
        .map_err(|error| StoreError::CorruptRecord {
            key: "partial".into(),
            reason: error.to_string(),
        })?;
        self.store
            .db()
            .insert(partial_key(&self.index.blob()), record)?;
        self.unsynced_bytes = 0;
        self.persisted_at = Some(Instant::now());
        Ok(())
    }

    /// Checks the assembled file against its sha256 and moves it into the store. On a
    /// mismatch the partial blob is deleted: its index was wrong.
    pub fn complete(mut self) -> Result<(), StoreError> {
        let (mut hasher, from) = match self.hasher.take() {
            Some(hasher) => (hasher, self.hashed_chunks),
            None => (Sha256Writer::default(), 0),
        };
        for chunk in from..self.index.chunk_count() {
            read_chunk(&self.file, &mut self.direct, &self.index, chunk, |bytes| {
                hasher.update(bytes)
            })
            .map_err(io_error(&self.path))?;
        }
        let (actual, size) = hasher.finish();
        self.complete_hashed(actual, size)
    }

    /// Moves the assembled file into the store if `actual` and `size`, its sha256 and length
    /// computed by the caller from the verified chunks, are the blob's. On a mismatch the
    /// partial blob is deleted.
    pub fn complete_hashed(mut self, actual: Digest, size: u64) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_error(&self.path))?;
        let blob = self.index.blob();
        if actual != blob || size != self.index.blob_size() {
            self.discard()?;
            return Err(StoreError::DigestMismatch {
                what: "assembled blob".into(),
                expected: blob,
                expected_size: self.index.blob_size(),
                actual,
                actual_size: size,
            });
        }
        self.store.adopt(&self.path, &self.index)?;
        Ok(())
    }

    /// Deletes the partial file and its record.
    pub fn discard(&mut self) -> Result<(), StoreError> {
        self.store.db().remove(partial_key(&self.index.blob()))?;
        match fs::remove_file(&self.path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => {
                Err(io_error(&self.path)(error))
            }
            _ => Ok(()),
        }
    }
}

/// Reads chunk `chunk` of a file laid out by `index` and hands its bytes to `take`: through
/// `direct` when it can, through the page cache otherwise.
fn read_chunk(
    file: &File,
    direct: &mut Option<DirectFile>,
    index: &ChunkIndex,
    chunk: u32,
    take: impl FnOnce(&[u8]),
) -> io::Result<()> {
    let range = index
        .chunk_range(chunk)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error.to_string()))?;
    let length = (range.end - range.start) as usize;
    if let Some(direct) = direct
        && let Some(bytes) = direct.read_at(length, range.start)?
    {
        take(bytes);
        return Ok(());
    }
    let mut buffer = vec![0u8; length];
    file.read_exact_at(&mut buffer, range.start)?;
    take(&buffer);
    Ok(())
}

/// Chunks of a partial blob read back from its file, for a hasher that runs beside the
/// transfer. Only chunks the transfer has written may be read.
#[derive(Debug)]
pub struct ChunkReader {
    file: File,
    direct: Option<DirectFile>,
    index: ChunkIndex,
}

impl ChunkReader {
    /// Hands the bytes of chunk `chunk` to `take`.
    pub fn read(&mut self, chunk: u32, take: impl FnOnce(&[u8])) -> io::Result<()> {
        read_chunk(&self.file, &mut self.direct, &self.index, chunk, take)
    }
}

fn load_record(store: &Store, blob: &Digest) -> Result<Option<PartialRecord>, StoreError> {
    let key = partial_key(blob);
    let Some(value) = store.db().get(&key)? else {
        return Ok(None);
    };
    match wire::decode::<PartialRecord>(&value, PARTIAL_RECORD_BYTES_MAX) {
        Ok(record) => Ok(Some(record)),
        Err(error) => {
            tracing::warn!(%blob, %error, "dropping an unreadable partial record");
            store.db().remove(key)?;
            Ok(None)
        }
    }
}

/// The recorded chunk index of a partial blob, if any, so a restarted fetch can resume without
/// asking peers for the index again.
pub fn recorded_index(store: &Store, blob: &Digest) -> Result<Option<ChunkIndex>, StoreError> {
    Ok(load_record(store, blob)?.map(|record| record.index))
}

/// Partial digests recorded in the metadata, for recovery.
pub fn recorded(store: &Store) -> impl Iterator<Item = Result<Digest, StoreError>> + '_ {
    metadata::partial_digests(store.db())
}

/// Blobs and chunk indexes for the tests of partial blobs and of what hashes them.
#[cfg(test)]
pub(crate) mod test_blobs {
    use shoal_protocol::Digest;
    use shoal_protocol::chunk::{CHUNK_BYTES_MIN, ChunkIndex, ChunkIndexBuilder};

    /// The index of `bytes` in the smallest chunks, claiming they are `digest`.
    pub fn index_of(bytes: &[u8], digest: Digest) -> ChunkIndex {
        let mut builder = ChunkIndexBuilder::new(digest, CHUNK_BYTES_MIN).unwrap();
        builder.update(bytes);
        builder.finish().unwrap()
    }

    /// An index whose chunk hashes are those of `bytes` but whose digest is another blob's:
    /// every chunk verifies, the whole does not.
    pub fn lying_index(bytes: &[u8]) -> ChunkIndex {
        let honest = index_of(bytes, Digest::of(bytes));
        ChunkIndex::from_parts(
            Digest::of(b"something else"),
            honest.blob_size(),
            honest.chunk_bytes(),
            honest.hashes().to_vec(),
        )
        .unwrap()
    }

    pub fn chunk_of(bytes: &[u8], index: &ChunkIndex, chunk: u32) -> Vec<u8> {
        let range = index.chunk_range(chunk).unwrap();
        bytes[range.start as usize..range.end as usize].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use shoal_protocol::chunk::CHUNK_BYTES_MIN;

    use super::test_blobs::{chunk_of, index_of, lying_index};
    use super::*;

    /// A new store in a temporary directory, and a blob of `chunks` smallest chunks of a
    /// repeating pattern (`i % modulus`) with its index.
    struct Blob {
        _dir: tempfile::TempDir,
        store: Store,
        bytes: Vec<u8>,
        index: ChunkIndex,
    }

    impl Blob {
        fn in_new_store(chunks: u32, modulus: u32) -> Blob {
            let dir = tempfile::tempdir().unwrap();
            let (store, _) = Store::open(dir.path()).unwrap();
            let bytes: Vec<u8> = (0..CHUNK_BYTES_MIN * chunks)
                .map(|i| (i % modulus) as u8)
                .collect();
            let index = index_of(&bytes, Digest::of(&bytes));
            Blob {
                _dir: dir,
                store,
                bytes,
                index,
            }
        }
    }

    /// Writes the chunks of `bytes` in `order`, completes the blob and checks it is stored.
    fn write_and_complete(
        store: &Store,
        mut partial: PartialBlob,
        bytes: &[u8],
        order: impl IntoIterator<Item = u32>,
    ) {
        let index = partial.index.clone();
        for chunk in order {
            partial
                .write_chunk(chunk, &chunk_of(bytes, &index, chunk))
                .unwrap();
        }
        partial.complete().unwrap();
        assert!(store.has_blob(&index.blob()).unwrap());
    }

    /// Chunks in any order (here: last first, then every other, then the rest) make the blob;
    /// the running hash and the rest hashed at the end give its digest.
    #[test]
    fn chunks_in_any_order_complete_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..CHUNK_BYTES_MIN * 11 + 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let digest = Digest::of(&bytes);
        let index = index_of(&bytes, digest);
        let count = index.chunk_count();
        let partial = PartialBlob::open(&store, index).unwrap();
        let order = [count - 1]
            .into_iter()
            .chain((0..count - 1).step_by(2))
            .chain((1..count - 1).step_by(2));
        write_and_complete(&store, partial, &bytes, order);
    }

    /// Progress is due to be made durable once [`PERSIST_BYTES`] of it are at stake, or any of
    /// it [`PERSIST_AGE_MAX`] after the last time; what was made durable is in the record.
    #[test]
    fn progress_is_made_durable_by_the_bytes_or_the_age_at_stake() {
        let chunks_worth_it = (PERSIST_BYTES / u64::from(CHUNK_BYTES_MIN)) as u32;
        let blob = Blob::in_new_store(chunks_worth_it + 2, 7);
        let (store, bytes, index) = (&blob.store, &blob.bytes, &blob.index);
        let mut partial = PartialBlob::open(store, index.clone()).unwrap();
        let recorded = || {
            load_record(store, &index.blob())
                .unwrap()
                .unwrap()
                .have
                .count_ones()
        };
        assert!(!partial.persist_due(), "the open recorded the index");
        partial.write_chunk(0, &chunk_of(bytes, index, 0)).unwrap();
        assert!(!partial.persist_due(), "one chunk just after the open");
        partial.persisted_at = Instant::now().checked_sub(PERSIST_AGE_MAX);
        assert!(partial.persist_due(), "any progress, long enough after");
        partial.persist().unwrap();
        assert_eq!(recorded(), 1);
        assert!(!partial.persist_due(), "nothing new");
        for chunk in 1..chunks_worth_it {
            partial
                .write_chunk(chunk, &chunk_of(bytes, index, chunk))
                .unwrap();
        }
        assert!(!partial.persist_due(), "a chunk short of PERSIST_BYTES");
        let last = chunks_worth_it;
        partial
            .write_chunk(last, &chunk_of(bytes, index, last))
            .unwrap();
        assert!(partial.persist_due(), "PERSIST_BYTES at stake");
        partial.persist().unwrap();
        assert_eq!(recorded(), chunks_worth_it + 1);
        assert!(!partial.persist_due());
    }

    /// Once the sha256 runs elsewhere, counting a written chunk as had reads nothing back and
    /// hashes nothing (the transfer then does it on its own task, not a blocking thread); the
    /// blob still completes, hashed from the file at the end.
    #[test]
    fn a_hash_elsewhere_leaves_written_chunks_unhashed() {
        let blob = Blob::in_new_store(4, 7);
        let (store, bytes, index) = (&blob.store, &blob.bytes, &blob.index);
        let mut partial = PartialBlob::open(store, index.clone()).unwrap();
        assert!(partial.hashes_in_line());
        partial.hash_elsewhere();
        assert!(!partial.hashes_in_line());
        for chunk in [0, 1, 2, 3] {
            partial
                .write_chunk(chunk, &chunk_of(bytes, index, chunk))
                .unwrap();
        }
        assert_eq!(partial.hashed_chunks, 0);
        partial.complete().unwrap();
        assert!(store.has_blob(&index.blob()).unwrap());
    }

    /// Without direct I/O (tmpfs, or a file system that refuses it), the same works through
    /// the page cache, read-backs for the running hash included.
    #[test]
    fn chunks_complete_through_the_page_cache_too() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..CHUNK_BYTES_MIN * 5).map(|i| (i % 13) as u8).collect();
        let digest = Digest::of(&bytes);
        let index = index_of(&bytes, digest);
        let mut partial = PartialBlob::open(&store, index).unwrap();
        partial.direct = None;
        write_and_complete(&store, partial, &bytes, [4, 2, 0, 1, 3]);
    }

    /// Chunks that arrive in aligned memory (the network's chunk buffers) are written to
    /// disk from where they are.
    #[test]
    fn chunks_written_at_once_from_many_threads_complete_the_blob() {
        let blob = Blob::in_new_store(16, 251);
        let (store, bytes, index) = (&blob.store, &blob.bytes, &blob.index);
        let mut partial = PartialBlob::open(store, index.clone()).unwrap();
        let order = [9, 3, 15, 0, 7, 12, 1, 14, 4, 10, 2, 13, 5, 8, 11, 6];
        std::thread::scope(|scope| {
            for chunk in order {
                let writer = partial.writer();
                let chunk_bytes = chunk_of(bytes, index, chunk);
                scope.spawn(move || writer.write(chunk, &chunk_bytes).unwrap());
            }
        });
        assert_eq!(
            partial.have().count_ones(),
            0,
            "written is not had until told"
        );
        for chunk in order {
            partial
                .written(chunk, &chunk_of(bytes, index, chunk))
                .unwrap();
        }
        partial.complete().unwrap();
        assert!(store.has_blob(&index.blob()).unwrap());
    }

    #[test]
    fn chunks_in_aligned_buffers_complete_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..CHUNK_BYTES_MIN * 6).map(|i| (i % 97) as u8).collect();
        let index = index_of(&bytes, Digest::of(&bytes));
        let mut partial = PartialBlob::open(&store, index.clone()).unwrap();
        let buffers = crate::network::ChunkBuffers::default();
        for chunk in [5, 0, 3, 1, 4, 2] {
            let source = chunk_of(&bytes, &index, chunk);
            let mut buffer = buffers.take(source.len());
            buffer.as_mut_slice().copy_from_slice(&source);
            let aligned = buffer.freeze();
            assert_eq!(aligned.as_ptr() as usize % DIRECT_ALIGN_BYTES, 0);
            partial.write_chunk(chunk, &aligned).unwrap();
        }
        partial.complete().unwrap();
        assert!(store.has_blob(&index.blob()).unwrap());
    }

    /// An index that lies about the blob (its chunks hash right, the whole does not) is
    /// caught when the blob completes, and the partial blob is removed.
    #[test]
    fn a_lying_index_fails_at_completion() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = vec![9u8; CHUNK_BYTES_MIN as usize * 3];
        let index = lying_index(&bytes);
        let claimed = index.blob();
        let mut partial = PartialBlob::open(&store, index.clone()).unwrap();
        for chunk in 0..index.chunk_count() {
            partial
                .write_chunk(chunk, &chunk_of(&bytes, &index, chunk))
                .unwrap();
        }
        assert!(matches!(
            partial.complete(),
            Err(StoreError::DigestMismatch { .. })
        ));
        assert!(!store.has_blob(&claimed).unwrap());
        assert!(!store.layout().partial(&claimed).exists());
    }
}
