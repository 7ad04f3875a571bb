//! Blobs being fetched: a sparse file under `partial/<hex>` filled chunk by chunk, and one
//! sled value (`p/<digest>`) holding its chunk index and the bitmap of chunks written.
//!
//! Every chunk is checked against the index before it is written. Progress is made durable in
//! batches (fdatasync, then the bitmap) rather than per chunk; on reopen, chunks not marked yet
//! are re-checked against the index, so a chunk that reached the disk before a crash is found
//! again and never fetched twice. [`PartialBlob::complete`] checks the whole file's sha256
//! before the blob enters the store.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;

use shoal_protocol::chunk::ChunkIndex;
use shoal_protocol::{Bitmap, Digest, wire};

use super::metadata::{self, partial_key};
use super::{Store, StoreError, io_error};

/// Upper bound of an encoded partial record: the largest chunk index plus its bitmap.
const PARTIAL_RECORD_BYTES_MAX: usize = 64 << 20;

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
    unsynced: bool,
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
        let mut partial = PartialBlob {
            store: store.clone(),
            index,
            have,
            file,
            path,
            unsynced: true,
        };
        partial.persist()?;
        Ok(partial)
    }

    pub fn index(&self) -> &ChunkIndex {
        &self.index
    }

    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// A second handle on the file for readers (peers, streaming clients). It stays valid after
    /// the blob moves into the store: the rename keeps the same file.
    pub fn reader(&self) -> Result<File, StoreError> {
        self.file.try_clone().map_err(io_error(&self.path))
    }

    /// Writes a chunk that the caller has checked against the index.
    pub fn write_chunk(&mut self, chunk: u32, bytes: &[u8]) -> Result<(), StoreError> {
        let offset = self
            .index
            .chunk_range(chunk)
            .map_err(|error| StoreError::CorruptRecord {
                key: self.index.blob().to_string(),
                reason: error.to_string(),
            })?;
        let written = (self.store.space().check(bytes.len() as u64))
            .and_then(|()| self.file.write_all_at(bytes, offset.start))
            .map_err(io_error(&self.path));
        if let Err(error) = written {
            // On a full disk a half-fetched blob only holds space others need: let it go.
            if matches!(error, StoreError::DiskFull { .. }) {
                let _ = self.discard();
            }
            return Err(error);
        }
        self.have.set(chunk);
        self.unsynced = true;
        Ok(())
    }

    /// Makes the chunks written so far durable, then records them.
    pub fn persist(&mut self) -> Result<(), StoreError> {
        if !self.unsynced {
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
        self.unsynced = false;
        Ok(())
    }

    /// Checks the assembled file against its sha256 and moves it into the store. On a
    /// mismatch the partial blob is deleted: its index was wrong.
    pub fn complete(mut self) -> Result<(), StoreError> {
        self.file.sync_all().map_err(io_error(&self.path))?;
        let mut reader = self.reader()?;
        let (actual, size) =
            super::hash_reader(&mut ReadFrom::new(&mut reader)).map_err(io_error(&self.path))?;
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

/// Reads a file from offset 0 with positional reads, leaving the shared cursor alone.
struct ReadFrom<'a> {
    file: &'a mut File,
    offset: u64,
}

impl<'a> ReadFrom<'a> {
    fn new(file: &'a mut File) -> Self {
        ReadFrom { file, offset: 0 }
    }
}

impl io::Read for ReadFrom<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
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
