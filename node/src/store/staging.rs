//! Staging areas: where a write puts verified blobs until it commits them all at once.
//!
//! An import or a fetch writes each blob to its own file under `tmp/<staging>/`, hashing on the
//! way and fsyncing before the digest is compared. [`Staging::commit`] then renames the files
//! into `blobs/` and writes every metadata record in one batch; dropping a staging area without
//! committing deletes it, which is how a refused import leaves the store exactly as it was.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};

use shoal_protocol::{Digest, RepoName, Sha256Writer, Tag};

use super::layout::fsync_dir;
use super::metadata::{self, ManifestRecord};
use super::{DiskSpace, Store, StoreError, io_error};

/// Write buffer per staged blob: big enough to keep syscalls rare, small enough to keep memory
/// per transfer bounded.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

static NEXT_STAGING: AtomicU64 = AtomicU64::new(0);

#[derive(Debug)]
struct StagedBlob {
    path: PathBuf,
    size: u64,
}

#[derive(Debug)]
pub struct Staging {
    store: Store,
    dir: PathBuf,
    blobs: BTreeMap<Digest, StagedBlob>,
    files_written: u64,
}

/// What a staging area makes visible: the blobs to keep (staged ones not named are discarded)
/// and the metadata that refers to them.
#[derive(Debug, Default)]
pub struct Commit {
    pub blobs: BTreeSet<Digest>,
    pub manifests: Vec<(Digest, ManifestRecord)>,
    pub repo_manifests: Vec<(RepoName, Digest)>,
    pub tags: Vec<(RepoName, Tag, Digest)>,
}

/// What a commit changed.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CommitReport {
    pub blobs_added: u64,
    pub bytes_added: u64,
}

impl Staging {
    pub(super) fn new(store: Store) -> Result<Staging, StoreError> {
        let name = format!(
            "staging-{}-{}",
            std::process::id(),
            NEXT_STAGING.fetch_add(1, Ordering::Relaxed)
        );
        let dir = store.layout().tmp().join(name);
        fs::create_dir(&dir).map_err(io_error(&dir))?;
        Ok(Staging {
            store,
            dir,
            blobs: BTreeMap::new(),
            files_written: 0,
        })
    }

    /// Whether `digest` is already staged here or stored.
    pub fn has(&self, digest: &Digest) -> Result<bool, StoreError> {
        Ok(self.blobs.contains_key(digest) || self.store.has_blob(digest)?)
    }

    /// Size of a staged or stored blob.
    pub fn size_of(&self, digest: &Digest) -> Result<Option<u64>, StoreError> {
        match self.blobs.get(digest) {
            Some(staged) => Ok(Some(staged.size)),
            None => self.store.blob_size(digest),
        }
    }

    /// Streams `reader` into a new staged blob. When `expected` is given, reading stops one byte past the expected size and the blob
    /// must match both digest and size; otherwise its digest is whatever the bytes hash to.
    pub fn write_blob(
        &mut self,
        reader: impl Read,
        expected: Option<(Digest, u64)>,
        what: &str,
    ) -> Result<(Digest, u64), StoreError> {
        self.files_written += 1;
        let path = self.dir.join(self.files_written.to_string());
        let limit = expected.map_or(u64::MAX, |(_, size)| size.saturating_add(1));
        let result = write_hashed(reader.take(limit), &path, self.store.space());
        let (digest, size) = match result {
            Ok(written) => written,
            Err(error) => {
                let _ = fs::remove_file(&path);
                return Err(match error {
                    CopyError::Read(source) => StoreError::Incoming(source),
                    CopyError::Write(source) => io_error(&path)(source),
                });
            }
        };
        if let Some((_, expected_size)) = expected
            && size < expected_size
        {
            let _ = fs::remove_file(&path);
            return Err(StoreError::Incoming(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{what} ended after {size} of {expected_size} bytes"),
            )));
        }
        if let Some((expected, expected_size)) = expected
            && (expected != digest || expected_size != size)
        {
            let _ = fs::remove_file(&path);
            return Err(StoreError::DigestMismatch {
                what: what.to_owned(),
                expected,
                expected_size,
                actual: digest,
                actual_size: size,
            });
        }
        match self.blobs.entry(digest) {
            std::collections::btree_map::Entry::Occupied(_) => {
                let _ = fs::remove_file(&path);
            }
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(StagedBlob { path, size });
            }
        }
        Ok((digest, size))
    }

    /// Reads a staged or stored blob of at most `bytes_max` bytes into memory (manifests and
    /// configs), checking its digest again.
    pub fn read_small(
        &self,
        digest: &Digest,
        bytes_max: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let path = match self.blobs.get(digest) {
            Some(staged) => staged.path.clone(),
            None if self.store.has_blob(digest)? => self.store.layout().blob(digest),
            None => return Ok(None),
        };
        let mut bytes = Vec::new();
        File::open(&path)
            .and_then(|file| {
                file.take(bytes_max.saturating_add(1))
                    .read_to_end(&mut bytes)
            })
            .map_err(io_error(&path))?;
        let actual = Digest::of(&bytes);
        if actual != *digest || bytes.len() as u64 > bytes_max {
            return Err(StoreError::DigestMismatch {
                what: format!("re-reading {}", path.display()),
                expected: *digest,
                expected_size: bytes_max,
                actual,
                actual_size: bytes.len() as u64,
            });
        }
        Ok(Some(bytes))
    }

    /// Moves the blobs `commit` names into the store and writes its metadata in one batch.
    /// Every blob and manifest it names must be staged or stored already.
    pub fn commit(mut self, commit: Commit) -> Result<CommitReport, StoreError> {
        let store = self.store.clone();
        let _guard = store.lock_commits();
        for digest in commit
            .blobs
            .iter()
            .chain(commit.manifests.iter().map(|(digest, _)| digest))
        {
            if !self.has(digest)? {
                return Err(StoreError::CorruptRecord {
                    key: digest.to_string(),
                    reason: "committed without its bytes".to_owned(),
                });
            }
        }
        let mut report = CommitReport::default();
        let mut batch = sled::Batch::default();
        let mut touched_dirs = BTreeSet::new();
        for digest in &commit.blobs {
            let Some(staged) = self.blobs.remove(digest) else {
                continue;
            };
            if store.has_blob(digest)? {
                continue;
            }
            let digest = *digest;
            let target = store.layout().blob(&digest);
            if let Some(shard) = target.parent() {
                fs::create_dir_all(shard).map_err(io_error(shard))?;
                touched_dirs.insert(shard.to_owned());
            }
            fs::rename(&staged.path, &target).map_err(io_error(&target))?;
            batch.insert(metadata::blob_key(&digest), &staged.size.to_be_bytes());
            store.mark_verified(digest);
            report.blobs_added += 1;
            report.bytes_added += staged.size;
        }
        for dir in &touched_dirs {
            fsync_dir(dir)?;
        }
        if !touched_dirs.is_empty() {
            fsync_dir(&store.layout().blobs())?;
        }
        for (digest, record) in &commit.manifests {
            batch.insert(
                metadata::manifest_key(digest),
                metadata::encode_manifest(record),
            );
        }
        for (repo, digest) in &commit.repo_manifests {
            batch.insert(metadata::repo_key(repo), &[]);
            batch.insert(metadata::repo_manifest_key(repo, digest), &[]);
        }
        for (repo, tag, digest) in &commit.tags {
            batch.insert(metadata::repo_key(repo), &[]);
            batch.insert(metadata::tag_key(repo, tag), digest.as_bytes());
        }
        store.db().apply_batch(batch)?;
        store.db().flush()?;
        store.next_generation();
        // Content named again (an import sharing layers, a pull re-recording a manifest) counts
        // as used, and is not evicted by a pass that chose it a moment ago.
        for digest in commit
            .blobs
            .iter()
            .chain(commit.manifests.iter().map(|(d, _)| d))
        {
            store.touch(digest);
        }
        if report.bytes_added > 0 {
            store.inner.usage.grew(report.bytes_added);
        }
        Ok(report)
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(error) = fs::remove_dir_all(&self.dir)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %self.dir.display(), %error, "could not remove staging area");
        }
    }
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
}

fn write_hashed(
    mut reader: impl Read,
    path: &PathBuf,
    space: &DiskSpace,
) -> Result<(Digest, u64), CopyError> {
    let file = File::create_new(path).map_err(CopyError::Write)?;
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER_BYTES, file);
    let mut hasher = Sha256Writer::default();
    let mut buffer = vec![0u8; WRITE_BUFFER_BYTES];
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(CopyError::Read(error)),
        };
        hasher.update(&buffer[..n]);
        space.check(n as u64).map_err(CopyError::Write)?;
        writer.write_all(&buffer[..n]).map_err(CopyError::Write)?;
    }
    let file = writer
        .into_inner()
        .map_err(|error| CopyError::Write(error.into_error()))?;
    file.sync_all().map_err(CopyError::Write)?;
    Ok(hasher.finish())
}
