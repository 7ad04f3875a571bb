//! Free space on the data directory's file system: blob writes stop, with a "disk full" error
//! on the request that is writing, while a reserve is still free.
//!
//! Why a reserve rather than waiting for `ENOSPC`: sled, measured here, turns a failed write
//! into a lasting error — after one `ENOSPC` every later metadata write fails until the process
//! restarts, even once space is freed. Blob bytes are almost all of what the store writes, so
//! refusing them while a few megabytes remain keeps the metadata database writable: the node
//! stores nothing half-way, keeps serving what it has, and takes new content again as soon as
//! space is freed (by `--cache-max`, `shoal gc`, or the operator).

use std::io;
use std::path::{Path, PathBuf};

/// The least free space kept: room for many metadata batches (sled writes 512 KiB segments).
const RESERVE_BYTES_MIN: u64 = 4 << 20;
/// The most kept, however large the disk.
const RESERVE_BYTES_MAX: u64 = 1 << 30;
/// Otherwise, one hundredth of the file system, as ext4 keeps for root by default (5%) but
/// smaller: the reserve only has to absorb metadata and writes buffered before a check.
const RESERVE_DIVISOR: u64 = 100;

/// Free space on the data directory's file system, and how much of it blob writes leave alone.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskUsage {
    pub available_bytes: u64,
    pub reserve_bytes: u64,
}

/// The free space check for blob writes under one data directory.
#[derive(Debug, Clone)]
pub struct DiskSpace {
    root: PathBuf,
}

impl DiskSpace {
    pub fn new(root: &Path) -> DiskSpace {
        DiskSpace {
            root: root.to_owned(),
        }
    }

    /// The file system's free space now and the reserve kept on it, for `shoal status` and the
    /// alert that fires before blob writes stop.
    pub fn usage(&self) -> io::Result<DiskUsage> {
        let stat = rustix::fs::statvfs(&self.root).map_err(io::Error::from)?;
        Ok(DiskUsage {
            available_bytes: stat.f_bavail.saturating_mul(stat.f_frsize),
            reserve_bytes: reserve_bytes(stat.f_blocks.saturating_mul(stat.f_frsize)),
        })
    }

    /// `Ok` when `bytes` more can be written and the reserve still be free; otherwise an
    /// [`io::ErrorKind::StorageFull`] error saying how much is free. One `statvfs`, cheap next
    /// to the write it guards.
    pub fn check(&self, bytes: u64) -> io::Result<()> {
        let DiskUsage {
            available_bytes: available,
            reserve_bytes: reserve,
        } = self.usage()?;
        if available < reserve.saturating_add(bytes) {
            return Err(io::Error::new(
                io::ErrorKind::StorageFull,
                format!(
                    "no space left on the data directory's disk ({available} bytes free, \
                     {reserve} kept free for the metadata)"
                ),
            ));
        }
        Ok(())
    }
}

/// The space kept free on a file system of `total` bytes.
fn reserve_bytes(total: u64) -> u64 {
    (total / RESERVE_DIVISOR).clamp(RESERVE_BYTES_MIN, RESERVE_BYTES_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_a_hundredth_of_the_disk_within_bounds() {
        assert_eq!(reserve_bytes(24 << 20), RESERVE_BYTES_MIN);
        assert_eq!(reserve_bytes(10 << 30), (10 << 30) / 100);
        assert_eq!(reserve_bytes(u64::MAX), RESERVE_BYTES_MAX);
    }

    #[test]
    fn a_write_larger_than_the_free_space_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let space = DiskSpace::new(dir.path());
        space.check(0).unwrap();
        let error = space.check(u64::MAX / 2).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::StorageFull);
        assert!(error.to_string().contains("no space left"), "{error}");
    }
}
