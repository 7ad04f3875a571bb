//! Where everything lives inside the data directory.
//!
//! ```text
//! DATA/blobs/sha256/ab/abcdef…   verified blob and manifest bytes, named by digest
//! DATA/tmp/                      staging areas of writes in progress; emptied on start
//! DATA/partial/<hex>             blobs being fetched from peers, filled chunk by chunk
//! DATA/metadata/                 the sled database
//! DATA/shoal.sock                the admin socket of the running node
//! DATA/lock                      held (flock) by the running node
//! DATA/identity.key              the node's ed25519 key
//! ```

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use shoal_protocol::Digest;

use super::{StoreError, io_error};

#[derive(Debug, Clone)]
pub struct Layout {
    root: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        Layout {
            root: root.to_owned(),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs").join("sha256")
    }

    pub fn blob(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.blobs().join(&hex[..2]).join(hex)
    }

    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn partial_dir(&self) -> PathBuf {
        self.root.join("partial")
    }

    pub fn partial(&self, digest: &Digest) -> PathBuf {
        self.partial_dir().join(digest.hex())
    }

    pub fn metadata(&self) -> PathBuf {
        self.root.join("metadata")
    }

    pub fn socket(&self) -> PathBuf {
        self.root.join("shoal.sock")
    }

    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }

    pub fn identity(&self) -> PathBuf {
        self.root.join("identity.key")
    }

    pub fn create_dirs(&self) -> Result<(), StoreError> {
        for dir in [self.blobs(), self.tmp(), self.partial_dir()] {
            fs::create_dir_all(&dir).map_err(io_error(&dir))?;
        }
        Ok(())
    }

    /// Removes every staging leftover and returns how many entries it removed.
    pub fn clear_tmp(&self) -> Result<usize, StoreError> {
        let tmp = self.tmp();
        let mut removed = 0;
        for entry in fs::read_dir(&tmp).map_err(io_error(&tmp))? {
            let path = entry.map_err(io_error(&tmp))?.path();
            let result = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            result.map_err(io_error(&path))?;
            removed += 1;
        }
        Ok(removed)
    }

    /// The digests of every file under `blobs/`. Anything that is not a well-named blob file
    /// is left alone and logged: it was not put there by the store.
    pub fn blob_files(&self) -> Result<HashSet<Digest>, StoreError> {
        let blobs = self.blobs();
        let mut digests = HashSet::new();
        for shard in fs::read_dir(&blobs).map_err(io_error(&blobs))? {
            let shard = shard.map_err(io_error(&blobs))?.path();
            if !shard.is_dir() {
                continue;
            }
            for file in fs::read_dir(&shard).map_err(io_error(&shard))? {
                let path = file.map_err(io_error(&shard))?.path();
                let name = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .unwrap_or_default();
                match format!("sha256:{name}").parse::<Digest>() {
                    Ok(digest) if path == self.blob(&digest) => {
                        digests.insert(digest);
                    }
                    _ => {
                        tracing::warn!(path = %path.display(), "ignoring unexpected file in the blob directory")
                    }
                }
            }
        }
        Ok(digests)
    }

    /// The digests of the files under `partial/`.
    pub fn partial_files(&self) -> Result<HashSet<Digest>, StoreError> {
        let dir = self.partial_dir();
        let mut digests = HashSet::new();
        for file in fs::read_dir(&dir).map_err(io_error(&dir))? {
            let path = file.map_err(io_error(&dir))?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            match format!("sha256:{name}").parse::<Digest>() {
                Ok(digest) => {
                    digests.insert(digest);
                }
                Err(_) => {
                    tracing::warn!(path = %path.display(), "ignoring unexpected file in the partial directory")
                }
            }
        }
        Ok(digests)
    }
}

/// Makes a rename or a new file in `dir` durable.
pub fn fsync_dir(dir: &Path) -> Result<(), StoreError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error(dir))
}
