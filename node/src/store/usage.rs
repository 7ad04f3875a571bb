//! What eviction needs to know about use: when each blob was last used, which blobs are in use
//! right now (leased), and how many bytes the store holds.
//!
//! Last use lives in memory and reaches sled (`u/` records) in batches, at most once per
//! [`Store::persist_usage`] call (the budget task calls it about once a minute, and
//! [`Store::flush`] at shutdown): a blob read many times a second costs one map update per read,
//! not one metadata write. A crash loses at most the last minute of recency, which only changes
//! the order of eviction.
//!
//! A [`BlobLease`] marks a blob in use — a gateway client streaming it, a transfer fetching
//! it, a pull gathering an image — and eviction skips leased blobs. Leases are counted, so any
//! number of readers can hold one on the same blob.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use shoal_protocol::Digest;
use tokio::sync::Notify;

use super::{Store, StoreError, metadata};

#[derive(Debug, Default)]
pub(super) struct Usage {
    state: Mutex<UsageState>,
    /// Bytes of every stored blob, kept up to date by commits and removals and recounted by
    /// each eviction pass.
    stored_bytes: AtomicU64,
    /// Woken when the store grows or a lease ends: the budget task checks the budget then.
    wake: Notify,
    /// Serialises eviction and verification passes.
    pub(super) passes: Mutex<()>,
}

#[derive(Debug, Default)]
struct UsageState {
    /// Milliseconds since the Unix epoch.
    last_used: HashMap<Digest, u64>,
    /// Blobs whose last use changed since it was last persisted.
    dirty: HashSet<Digest>,
    leases: HashMap<Digest, usize>,
}

/// Now, in milliseconds since the Unix epoch: last use has to outlive restarts.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl Usage {
    fn state(&self) -> MutexGuard<'_, UsageState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Loads the recorded last uses of stored blobs and counts the stored bytes. Records of
    /// blobs no longer stored are dropped.
    pub(super) fn load(&self, db: &sled::Db) -> Result<(), StoreError> {
        let mut sizes = HashMap::new();
        for record in metadata::blob_records(db) {
            let (digest, size) = record?;
            sizes.insert(digest, size);
        }
        let mut last_used = HashMap::new();
        let mut stale = sled::Batch::default();
        for record in metadata::last_uses(db) {
            let (digest, at) = record?;
            if sizes.contains_key(&digest) {
                last_used.insert(digest, at);
            } else {
                stale.remove(metadata::last_use_key(&digest));
            }
        }
        db.apply_batch(stale)?;
        self.state().last_used = last_used;
        self.stored_bytes
            .store(sizes.values().sum(), Ordering::Relaxed);
        Ok(())
    }

    pub(super) fn touch(&self, digest: Digest) {
        let mut state = self.state();
        state.last_used.insert(digest, now_ms());
        state.dirty.insert(digest);
    }

    /// When `digest` was last used; 0 (the oldest) when never recorded.
    pub(super) fn last_used(&self, digest: &Digest) -> u64 {
        self.state().last_used.get(digest).copied().unwrap_or(0)
    }

    pub(super) fn forget(&self, digest: &Digest) {
        let mut state = self.state();
        state.last_used.remove(digest);
        state.dirty.remove(digest);
    }

    pub(super) fn is_leased(&self, digest: &Digest) -> bool {
        self.state().leases.contains_key(digest)
    }

    pub(super) fn leased(&self) -> HashSet<Digest> {
        self.state().leases.keys().copied().collect()
    }

    pub(super) fn grew(&self, bytes: u64) {
        self.stored_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.wake();
    }

    /// Tells the budget task to look at the store again.
    pub(super) fn wake(&self) {
        self.wake.notify_one();
    }

    pub(super) fn shrank(&self, bytes: u64) {
        let _ = self
            .stored_bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |stored| {
                Some(stored.saturating_sub(bytes))
            });
    }

    pub(super) fn recount(&self, bytes: u64) {
        self.stored_bytes.store(bytes, Ordering::Relaxed);
    }
}

/// A blob marked in use until dropped: eviction leaves it alone.
#[derive(Debug)]
pub struct BlobLease {
    store: Store,
    digest: Digest,
}

impl Drop for BlobLease {
    fn drop(&mut self) {
        let usage = &self.store.inner.usage;
        let mut state = usage.state();
        if let Some(count) = state.leases.get_mut(&self.digest) {
            *count -= 1;
            if *count == 0 {
                state.leases.remove(&self.digest);
                drop(state);
                // What was protected may now be evicted, if the store is over its budget.
                usage.wake();
            }
        }
    }
}

impl Store {
    /// Marks `digest` in use (and used now) until the lease is dropped. The blob need not be
    /// stored yet: a lease taken before a fetch protects the blob from the moment it lands.
    pub fn lease(&self, digest: Digest) -> BlobLease {
        let usage = &self.inner.usage;
        {
            let mut state = usage.state();
            *state.leases.entry(digest).or_default() += 1;
        }
        usage.touch(digest);
        BlobLease {
            store: self.clone(),
            digest,
        }
    }

    /// Records a use of `digest` for eviction's least-recently-used order.
    pub(crate) fn touch(&self, digest: &Digest) {
        self.inner.usage.touch(*digest);
    }

    /// Bytes of every stored blob (manifests included).
    pub fn stored_bytes(&self) -> u64 {
        self.inner.usage.stored_bytes.load(Ordering::Relaxed)
    }

    /// Blobs in use now.
    pub fn leased_blobs(&self) -> usize {
        self.inner.usage.state().leases.len()
    }

    /// Resolves when the store has grown, or a lease ended, since the last call: the moments
    /// the budget may have to be enforced. Cancel-safe.
    pub async fn changed(&self) {
        self.inner.usage.wake.notified().await;
    }

    /// Writes the last uses recorded since the previous call in one batch. Uses of blobs that
    /// are not stored (leased for a fetch that failed) are dropped instead.
    pub fn persist_usage(&self) -> Result<(), StoreError> {
        let usage = &self.inner.usage;
        let dirty = std::mem::take(&mut usage.state().dirty);
        let mut batch = sled::Batch::default();
        for digest in dirty {
            let stored = self.has_blob(&digest)?;
            let mut state = usage.state();
            match state.last_used.get(&digest) {
                Some(at) if stored => {
                    batch.insert(metadata::last_use_key(&digest), &at.to_be_bytes());
                }
                Some(_) if !state.leases.contains_key(&digest) => {
                    state.last_used.remove(&digest);
                }
                _ => {}
            }
        }
        self.db().apply_batch(batch)?;
        Ok(())
    }
}
