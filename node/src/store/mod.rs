//! The store: blob bytes in files addressed by sha256, metadata in sled.
//!
//! What it guarantees:
//! - A blob file exists under `blobs/sha256/<xx>/<hex>` only after its bytes were written to a
//!   temporary file, fsynced, checked against their digest and size, and renamed into place.
//! - Metadata (the `b/` blob records, manifests, repositories, tags) is written in one atomic
//!   sled batch, *after* every file it points at is in place and its directory fsynced. So the
//!   metadata never names a missing blob; a crash between the rename and the batch leaves
//!   orphan files, which [`Store::open`] removes together with the `tmp/` leftovers of any
//!   interrupted write.
//! - Blobs are shared: a digest is stored once whatever the number of images using it.
//! - Bytes read back from disk are checked against their digest before they are first served
//!   after a start ("pair assertions"); manifests are checked on every read.
//!
//! The store is a cheap clone around shared state: sled synchronises its own trees and blob
//! files never change once in place, so the only lock is the one that serialises commits.
//! Its methods block on disk I/O; async callers run them with `spawn_blocking`.
//!
//! Room is managed here too: [`usage`] tracks when blobs were last used and which are in use,
//! [`evict`] removes the least recently used (never a pinned image's, never one in use) and
//! re-hashes the store on demand, and [`space`] refuses blob writes before the disk is full.

mod blocking;
mod evict;
mod layout;
mod metadata;
mod partial;
mod provenance;
mod space;
mod staging;
#[cfg(test)]
mod test_image;
mod usage;
mod whole;

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_protocol::chunk::{ChunkIndex, ChunkIndexBuilder, chunk_bytes_for};
use shoal_protocol::{Descriptor, Digest, RepoName, Sha256Writer, Tag, TagOrDigest, wire};

pub use blocking::BlockingError;
pub use evict::{EvictionReport, Pin, VerifyReport};
pub use layout::Layout;
pub use metadata::{ImageSummary, ManifestRecord, StoreSummary};
#[cfg(test)]
pub(crate) use partial::test_blobs;
pub use partial::{ChunkReader, PartialBlob, recorded_index};
pub use space::{DiskSpace, DiskUsage};
pub use staging::{Commit, CommitReport, Staging};
pub use usage::BlobLease;

/// Bytes read per call while hashing a blob file; large enough that syscalls do not dominate.
const HASH_BUFFER_BYTES: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store I/O failed on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("disk full: cannot write {path}: {source}; free space there or lower --cache-max")]
    DiskFull {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading the incoming bytes failed: {0}")]
    Incoming(#[source] io::Error),
    #[error("metadata database failed: {0}")]
    Metadata(#[from] sled::Error),
    #[error("metadata record {key} is corrupt: {reason}")]
    CorruptRecord { key: String, reason: String },
    #[error("content {digest} is corrupt on disk (read {actual}); it was removed")]
    CorruptContent { digest: Digest, actual: Digest },
    #[error(
        "{what}: expected {expected} ({expected_size} bytes), got {actual} ({actual_size} bytes)"
    )]
    DigestMismatch {
        what: String,
        expected: Digest,
        expected_size: u64,
        actual: Digest,
        actual_size: u64,
    },
}

/// Wraps an I/O error with the path it concerns; a full disk (or quota) is its own error, so the
/// request that hit it says so plainly.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| match source.kind() {
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded => StoreError::DiskFull {
            path: path.to_owned(),
            source,
        },
        _ => StoreError::Io {
            path: path.to_owned(),
            source,
        },
    }
}

#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    layout: Layout,
    db: sled::Db,
    commit_lock: Mutex<()>,
    /// Blobs whose file was hashed (or written) since this process started.
    verified: Mutex<HashSet<Digest>>,
    /// Held while a blob is hashed before its first serve, so that concurrent first readers
    /// (many peers asking for chunks at once) wait for one hash instead of each hashing.
    verify_lock: Mutex<()>,
    /// Decoded chunk indexes of stored blobs: peers ask for chunks of the same few blobs many
    /// times a second, and each would otherwise decode the index from sled again.
    indexes: Mutex<HashMap<Digest, Arc<ChunkIndex>>>,
    usage: usage::Usage,
    space: DiskSpace,
    /// Bumped whenever manifests or their repositories may have changed, so that what is
    /// derived from them (`content_namespaces`) knows when to read them again.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("root", &self.inner.layout.root())
            .finish_non_exhaustive()
    }
}

/// What [`Store::open`] cleaned up.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovery {
    pub temporary_files_removed: usize,
    pub orphan_blobs_removed: usize,
    pub missing_blobs_forgotten: usize,
    pub orphan_partials_removed: usize,
}

impl Store {
    /// Opens (creating if needed) the store under `root` and repairs what an interrupted write
    /// left: temporary files, blob files without metadata, and records of vanished files.
    pub fn open(root: &Path) -> Result<(Store, Recovery), StoreError> {
        let layout = Layout::new(root);
        layout.create_dirs()?;
        let db = sled::Config::new().path(layout.metadata()).open()?;
        let store = Store {
            inner: Arc::new(Inner {
                layout,
                db,
                commit_lock: Mutex::new(()),
                verified: Mutex::new(HashSet::new()),
                verify_lock: Mutex::new(()),
                indexes: Mutex::new(HashMap::new()),
                usage: usage::Usage::default(),
                space: DiskSpace::new(root),
                generation: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        let recovery = store.recover()?;
        store.inner.usage.load(&store.inner.db)?;
        Ok((store, recovery))
    }

    /// Opens the store again in the same process, as a restart would: sled's I/O threads may
    /// hold its lock for a moment after the previous `Store` is dropped (a new process never
    /// meets this), so a lock refused is tried again for up to 5 s.
    #[cfg(test)]
    pub(crate) fn reopen(root: &Path) -> Result<(Store, Recovery), StoreError> {
        let give_up = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            match Store::open(root) {
                Err(StoreError::Metadata(error))
                    if error.to_string().contains("could not acquire lock")
                        && std::time::Instant::now() < give_up =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                opened => return opened,
            }
        }
    }

    /// The free-space check every blob write makes.
    pub(crate) fn space(&self) -> &DiskSpace {
        &self.inner.space
    }

    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    fn recover(&self) -> Result<Recovery, StoreError> {
        let temporary_files_removed = self.inner.layout.clear_tmp()?;
        let mut on_disk = self.inner.layout.blob_files()?;
        let mut missing = Vec::new();
        for record in metadata::blob_digests(&self.inner.db) {
            let digest = record?;
            if !on_disk.remove(&digest) {
                missing.push(digest);
            }
        }
        for digest in &on_disk {
            let path = self.inner.layout.blob(digest);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            tracing::warn!(%digest, "removed blob file left by an interrupted commit");
        }
        for digest in &missing {
            tracing::warn!(%digest, "blob file vanished from disk; forgetting it");
            metadata::forget_blob(&self.inner.db, digest)?;
        }
        let orphan_partials_removed = self.recover_partials()?;
        self.inner.db.flush()?;
        Ok(Recovery {
            temporary_files_removed,
            orphan_blobs_removed: on_disk.len(),
            missing_blobs_forgotten: missing.len(),
            orphan_partials_removed,
        })
    }

    /// Partial files without a record, and records without a file, are forgotten; a partial
    /// blob that is also fully stored is finished already.
    fn recover_partials(&self) -> Result<usize, StoreError> {
        let layout = &self.inner.layout;
        let mut files = layout.partial_files()?;
        let mut removed = 0;
        for record in partial::recorded(self).collect::<Vec<_>>() {
            let digest = record?;
            if !files.remove(&digest) || self.has_blob(&digest)? {
                self.inner.db.remove(metadata::partial_key(&digest))?;
                let _ = std::fs::remove_file(layout.partial(&digest));
            }
        }
        for digest in files {
            let path = layout.partial(&digest);
            std::fs::remove_file(&path).map_err(io_error(&path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Moves a verified blob file (assembled in `partial/` or downloaded into `tmp/`) into the
    /// store with its index.
    pub(crate) fn adopt(&self, path: &Path, index: &ChunkIndex) -> Result<(), StoreError> {
        let _guard = self.lock_commits();
        let digest = index.blob();
        let mut grown = 0;
        let mut batch = sled::Batch::default();
        batch.remove(metadata::partial_key(&digest));
        if self.has_blob(&digest)? {
            std::fs::remove_file(path).map_err(io_error(path))?;
        } else {
            let target = self.inner.layout.blob(&digest);
            let shard = target.parent().unwrap_or(path);
            std::fs::create_dir_all(shard).map_err(io_error(shard))?;
            std::fs::rename(path, &target).map_err(io_error(&target))?;
            layout::fsync_dir(shard)?;
            batch.insert(
                metadata::blob_key(&digest),
                &index.blob_size().to_be_bytes(),
            );
            batch.insert(metadata::index_key(&digest), encode_index(index)?);
            self.mark_verified(digest);
            grown = index.blob_size();
        }
        self.inner.db.apply_batch(batch)?;
        self.inner.db.flush()?;
        self.touch(&digest);
        if grown > 0 {
            self.inner.usage.grew(grown);
        }
        Ok(())
    }

    /// The chunk index of a stored blob if the store has it in memory: no disk, no wait, so
    /// async code may ask before it sends [`Store::chunk_index`] to a blocking thread.
    pub fn cached_chunk_index(&self, digest: &Digest) -> Option<Arc<ChunkIndex>> {
        self.cached_indexes().get(digest).cloned()
    }

    /// The chunk index of a stored blob, computed from the verified file the first time and
    /// kept in the metadata after that.
    pub fn chunk_index(&self, digest: &Digest) -> Result<Option<Arc<ChunkIndex>>, StoreError> {
        if let Some(index) = self.cached_indexes().get(digest) {
            return Ok(Some(index.clone()));
        }
        let Some(index) = self.load_chunk_index(digest)? else {
            return Ok(None);
        };
        let index = Arc::new(index);
        let mut cache = self.cached_indexes();
        if cache.len() >= INDEX_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(*digest, index.clone());
        Ok(Some(index))
    }

    fn cached_indexes(&self) -> MutexGuard<'_, HashMap<Digest, Arc<ChunkIndex>>> {
        self.inner.indexes.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn load_chunk_index(&self, digest: &Digest) -> Result<Option<ChunkIndex>, StoreError> {
        let key = metadata::index_key(digest);
        if let Some(value) = self.inner.db.get(&key)? {
            match wire::decode::<ChunkIndex>(&value, INDEX_RECORD_BYTES_MAX) {
                Ok(index) if index.blob() == *digest => return Ok(Some(index)),
                _ => tracing::warn!(%digest, "recomputing an unreadable chunk index"),
            }
        }
        let Some((mut file, size)) = self.open_blob(digest)? else {
            return Ok(None);
        };
        let not_indexable = |error: shoal_protocol::ChunkError| StoreError::CorruptRecord {
            key: digest.to_string(),
            reason: format!("cannot index the blob: {error}"),
        };
        let chunk_bytes = chunk_bytes_for(size).map_err(not_indexable)?;
        let mut builder = ChunkIndexBuilder::new(*digest, chunk_bytes).map_err(not_indexable)?;
        let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
        let path = self.inner.layout.blob(digest);
        loop {
            let n = file.read(&mut buffer).map_err(io_error(&path))?;
            if n == 0 {
                break;
            }
            builder.update(&buffer[..n]);
        }
        let index = builder.finish().map_err(not_indexable)?;
        self.inner.db.insert(key, encode_index(&index)?)?;
        Ok(Some(index))
    }

    /// A fresh staging area for one write (an import, a fetch). Dropping it without committing
    /// removes everything written to it.
    pub fn staging(&self) -> Result<Staging, StoreError> {
        Staging::new(self.clone())
    }

    /// Stores a small blob held in memory (a manifest) after checking it against `digest`.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8]) -> Result<(), StoreError> {
        let mut staging = self.staging()?;
        staging.write_blob(bytes, Some((*digest, bytes.len() as u64)), "manifest")?;
        staging.commit(Commit {
            blobs: [*digest].into(),
            ..Commit::default()
        })?;
        Ok(())
    }

    pub fn has_blob(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(metadata::blob_size(&self.inner.db, digest)?.is_some())
    }

    pub fn blob_size(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        metadata::blob_size(&self.inner.db, digest)
    }

    /// Opens a stored blob for reading, hashing it first if it has not been checked since this
    /// process started. A corrupt file is removed with its record and reported as an error.
    pub fn open_blob(&self, digest: &Digest) -> Result<Option<(File, u64)>, StoreError> {
        let Some(size) = metadata::blob_size(&self.inner.db, digest)? else {
            return Ok(None);
        };
        let path = self.inner.layout.blob(digest);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let _verifying = (!self.is_verified(digest)).then(|| {
            self.inner
                .verify_lock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
        });
        if !self.is_verified(digest) {
            let (actual, _) = hash_reader(&mut file).map_err(io_error(&path))?;
            if actual != *digest {
                self.remove_corrupt(digest)?;
                return Err(StoreError::CorruptContent {
                    digest: *digest,
                    actual,
                });
            }
            self.mark_verified(*digest);
            file = File::open(&path).map_err(io_error(&path))?;
        }
        self.touch(digest);
        Ok(Some((file, size)))
    }

    fn remove_corrupt(&self, digest: &Digest) -> Result<(), StoreError> {
        let _guard = self.lock_commits();
        self.forget_cached(digest);
        let path = self.inner.layout.blob(digest);
        let size = metadata::blob_size(&self.inner.db, digest)?.unwrap_or(0);
        metadata::forget_blob(&self.inner.db, digest)?;
        self.inner.db.flush()?;
        self.next_generation();
        self.inner.usage.shrank(size);
        match std::fs::remove_file(&path) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => Err(io_error(&path)(error)),
            _ => Ok(()),
        }
    }

    /// Drops what memory holds about a blob that is leaving the store.
    fn forget_cached(&self, digest: &Digest) {
        self.cached_indexes().remove(digest);
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(digest);
        self.inner.usage.forget(digest);
    }

    fn is_verified(&self, digest: &Digest) -> bool {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(digest)
    }

    fn mark_verified(&self, digest: Digest) {
        self.inner
            .verified
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest);
    }

    fn lock_commits(&self) -> MutexGuard<'_, ()> {
        self.inner
            .commit_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Resolves a tag or digest within `repo` to the manifest's record and exact bytes, checked
    /// against the digest.
    pub fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<(Digest, ManifestRecord, Vec<u8>)>, StoreError> {
        let db = &self.inner.db;
        let digest = match reference {
            TagOrDigest::Digest(digest) if metadata::repo_has_manifest(db, repo, digest)? => {
                *digest
            }
            TagOrDigest::Digest(_) => return Ok(None),
            TagOrDigest::Tag(tag) => match metadata::tag(db, repo, tag)? {
                Some(digest) => digest,
                None => return Ok(None),
            },
        };
        let Some(record) = metadata::manifest(db, &digest)? else {
            return Ok(None);
        };
        let path = self.inner.layout.blob(&digest);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io_error(&path)(error)),
        };
        let actual = Digest::of(&bytes);
        if actual != digest {
            self.remove_corrupt(&digest)?;
            return Err(StoreError::CorruptContent { digest, actual });
        }
        self.touch(&digest);
        Ok(Some((digest, record, bytes)))
    }

    /// Tags of `repo`, or `None` when the store has never held the repository.
    pub fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>, StoreError> {
        metadata::tags(&self.inner.db, repo)
    }

    pub fn repositories(&self, namespace: &str) -> Result<Vec<String>, StoreError> {
        metadata::repositories(&self.inner.db, namespace)
    }

    /// Manifests of `repo` whose subject is `subject`, as descriptors for the referrers API.
    pub fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, StoreError> {
        metadata::referrers(&self.inner.db, repo, subject)
    }

    pub fn summary(&self) -> Result<StoreSummary, StoreError> {
        metadata::summary(&self.inner.db)
    }

    /// Images by tag, for status output.
    pub fn images(&self) -> Result<Vec<ImageSummary>, StoreError> {
        metadata::images(&self.inner.db)
    }

    /// Keeps a signed announcement (encoded) under its id.
    pub fn keep_announcement(&self, id: &[u8; 32], encoded: &[u8]) -> Result<(), StoreError> {
        self.inner
            .db
            .insert(metadata::announcement_key(id), encoded)?;
        Ok(())
    }

    /// Every kept announcement, encoded, with its id.
    pub fn announcements(&self) -> Result<Vec<KeptAnnouncement>, StoreError> {
        let prefix = metadata::ANNOUNCEMENT;
        let mut kept = Vec::new();
        for entry in self.inner.db.scan_prefix(prefix) {
            let (key, value) = entry?;
            if let Ok(id) = <[u8; 32]>::try_from(&key[prefix.len()..]) {
                kept.push((id, value.to_vec()));
            }
        }
        Ok(kept)
    }

    pub fn forget_announcement(&self, id: &[u8; 32]) -> Result<(), StoreError> {
        self.inner.db.remove(metadata::announcement_key(id))?;
        Ok(())
    }

    /// Makes every metadata write so far durable, last uses included.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.persist_usage()?;
        self.inner.db.flush()?;
        Ok(())
    }

    pub(crate) fn db(&self) -> &sled::Db {
        &self.inner.db
    }
}

/// An announcement as kept: its id and its encoded signed form.
pub type KeptAnnouncement = ([u8; 32], Vec<u8>);

/// Decoded chunk indexes kept in memory: at most 64 KiB chunks × 32 bytes = 2 MiB each, and
/// usually far less; peers fetch a handful of blobs at a time.
const INDEX_CACHE_ENTRIES: usize = 64;

/// Upper bound of a stored chunk index: the most chunks a blob may have, 32 bytes each.
const INDEX_RECORD_BYTES_MAX: usize = 64 << 20;

fn encode_index(index: &ChunkIndex) -> Result<Vec<u8>, StoreError> {
    wire::encode(index).map_err(|error| StoreError::CorruptRecord {
        key: index.blob().to_string(),
        reason: error.to_string(),
    })
}

/// Hashes everything `reader` yields.
pub fn hash_reader(reader: &mut impl Read) -> io::Result<(Digest, u64)> {
    let mut hasher = Sha256Writer::default();
    let mut buffer = vec![0u8; HASH_BUFFER_BYTES];
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            return Ok(hasher.finish());
        }
        hasher.update(&buffer[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path) -> (Store, Recovery) {
        Store::open(dir).unwrap()
    }

    fn commit_blob(store: &Store, bytes: &[u8]) -> Digest {
        let mut staging = store.staging().unwrap();
        let (digest, _) = staging.write_blob(bytes, None, "test").unwrap();
        let commit = Commit {
            blobs: [digest].into(),
            ..Commit::default()
        };
        staging.commit(commit).unwrap();
        digest
    }

    fn read_all(store: &Store, digest: &Digest) -> Vec<u8> {
        let (mut file, _) = store.open_blob(digest).unwrap().unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        bytes
    }

    #[test]
    fn committed_blobs_survive_a_reopen_and_are_stored_once() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let digest = commit_blob(&store, b"layer bytes");
        assert_eq!(commit_blob(&store, b"layer bytes"), digest);
        assert_eq!(store.summary().unwrap().blobs, 1);
        drop(store);
        let (store, recovery) = Store::reopen(dir.path()).unwrap();
        assert_eq!(recovery, Recovery::default());
        assert_eq!(read_all(&store, &digest), b"layer bytes");
    }

    #[test]
    fn a_wrong_digest_or_size_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut staging = store.staging().unwrap();
        let claimed = Digest::of(b"other");
        let error = staging
            .write_blob(&b"actual"[..], Some((claimed, 6)), "entry")
            .unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { .. }),
            "{error}"
        );
        let right = Digest::of(b"actual");
        let error = staging
            .write_blob(&b"actual and more"[..], Some((right, 6)), "entry")
            .unwrap_err();
        assert!(
            matches!(error, StoreError::DigestMismatch { actual_size: 7, .. }),
            "{error}"
        );
        let staged_dir = std::fs::read_dir(store.layout().tmp())
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        assert_eq!(std::fs::read_dir(&staged_dir).unwrap().count(), 0);
        drop(staging);
        assert_eq!(std::fs::read_dir(store.layout().tmp()).unwrap().count(), 0);
        assert!(!store.has_blob(&right).unwrap());
    }

    #[test]
    fn uncommitted_blobs_are_discarded() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let mut staging = store.staging().unwrap();
        let (kept, _) = staging.write_blob(&b"kept"[..], None, "a").unwrap();
        let (dropped, _) = staging.write_blob(&b"dropped"[..], None, "b").unwrap();
        staging
            .commit(Commit {
                blobs: [kept].into(),
                ..Commit::default()
            })
            .unwrap();
        assert!(store.has_blob(&kept).unwrap());
        assert!(!store.has_blob(&dropped).unwrap());
        assert!(!store.layout().blob(&dropped).exists());
    }

    #[test]
    fn open_repairs_what_an_interrupted_write_left() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let kept = commit_blob(&store, b"kept");
        let vanished = commit_blob(&store, b"vanished");
        let layout = store.layout().clone();
        drop(store);
        // A crash after a rename but before the metadata batch: a file without a record.
        let orphan = Digest::of(b"orphan");
        std::fs::create_dir_all(layout.blob(&orphan).parent().unwrap()).unwrap();
        std::fs::write(layout.blob(&orphan), b"orphan").unwrap();
        // A crash mid-write: a staging leftover.
        std::fs::create_dir_all(layout.tmp().join("staging-1-0")).unwrap();
        std::fs::write(layout.tmp().join("staging-1-0/1"), b"half").unwrap();
        // A file deleted behind the store's back.
        std::fs::remove_file(layout.blob(&vanished)).unwrap();

        let (store, recovery) = Store::reopen(dir.path()).unwrap();
        assert_eq!(
            recovery,
            Recovery {
                temporary_files_removed: 1,
                orphan_blobs_removed: 1,
                missing_blobs_forgotten: 1,
                orphan_partials_removed: 0,
            }
        );
        assert!(!layout.blob(&orphan).exists());
        assert!(store.has_blob(&kept).unwrap());
        assert!(!store.has_blob(&vanished).unwrap());
        assert_eq!(store.summary().unwrap().blobs, 1);
    }

    #[test]
    fn corruption_on_disk_is_caught_before_serving_after_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let digest = commit_blob(&store, b"precious bytes");
        let path = store.layout().blob(&digest);
        drop(store);
        std::fs::write(&path, b"precious bytez").unwrap();
        let (store, _) = Store::reopen(dir.path()).unwrap();
        let error = store.open_blob(&digest).unwrap_err();
        assert!(
            matches!(error, StoreError::CorruptContent { .. }),
            "{error}"
        );
        assert!(!path.exists());
        assert!(store.open_blob(&digest).unwrap().is_none());
    }

    #[test]
    fn manifests_tags_and_referrers_resolve_per_repository() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = open(dir.path());
        let subject = Digest::of(b"subject");
        let manifest_bytes = br#"{"schemaVersion":2}"#;
        let mut staging = store.staging().unwrap();
        let (digest, size) = staging
            .write_blob(&manifest_bytes[..], None, "manifest")
            .unwrap();
        let repo = RepoName::new("docker.io", "team/app").unwrap();
        let other = RepoName::new("docker.io", "team/other").unwrap();
        let tag: Tag = "1".parse().unwrap();
        let record = ManifestRecord {
            media_type: shoal_protocol::media_type::OCI_MANIFEST.to_owned(),
            size,
            artifact_type: Some("application/example".to_owned()),
            subject: Some(subject),
            annotations: Default::default(),
        };
        staging
            .commit(Commit {
                blobs: [digest].into(),
                manifests: vec![(digest, record)],
                repo_manifests: vec![(repo.clone(), digest)],
                tags: vec![(repo.clone(), tag.clone(), digest)],
            })
            .unwrap();
        let (found, _, bytes) = store
            .manifest(&repo, &TagOrDigest::Tag(tag.clone()))
            .unwrap()
            .unwrap();
        assert_eq!((found, bytes.as_slice()), (digest, &manifest_bytes[..]));
        assert!(
            store
                .manifest(&repo, &TagOrDigest::Digest(digest))
                .unwrap()
                .is_some()
        );
        assert!(
            store
                .manifest(&other, &TagOrDigest::Digest(digest))
                .unwrap()
                .is_none()
        );
        assert_eq!(store.tags(&repo).unwrap(), Some(vec![tag]));
        assert_eq!(store.tags(&other).unwrap(), None);
        assert_eq!(
            store.repositories("docker.io").unwrap(),
            vec!["team/app".to_owned()]
        );
        let referrers = store.referrers(&repo, &subject).unwrap().unwrap();
        assert_eq!(referrers.len(), 1);
        assert_eq!(
            referrers[0].artifact_type.as_deref(),
            Some("application/example")
        );
        assert_eq!(store.images().unwrap()[0].repository, "docker.io/team/app");
    }
}
