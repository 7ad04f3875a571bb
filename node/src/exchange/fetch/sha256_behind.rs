//! The whole-blob sha256 of a transfer whose chunk index a trusted publisher signed, computed
//! beside the transfer instead of in it.
//!
//! Why it may run behind: the publisher's signed announcement binds the blob's digest to its
//! chunk-index root, so every chunk that matches that index is the publisher's byte for byte,
//! and gateway clients and peers may have it at once. The sha256 still runs over every byte
//! before the blob enters the store and before the node provides it as whole
//! (`transfer.rs`), which catches a publisher whose root and digest disagree. Without a
//! trusted root the transfer hashes in line, as `store/partial.rs` describes.
//!
//! The hashing thread takes each chunk, in order, from the transfer's verified chunks in
//! memory or else from the file. While no client waits on the transfer (a `shoal pull`, a
//! prefetch) the hash is what the transfer's end waits for, and it runs at normal priority
//! with the transfer keeping pace with it (`transfer.rs`). Once a client waits for a chunk,
//! it gives way for good ([`Sha256Behind::give_way`], [`HASHER_NICE`]): on a machine with a
//! spare core it still keeps pace; on a busy one it leaves the cores to the transfer and its
//! clients and catches up once they are done.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use shoal_protocol::{Digest, Sha256Writer};
use tokio::sync::watch;

use super::Progress;
use crate::store::ChunkReader;

/// The hashing thread's nice value (0 normal, 19 lowest) once it gives way to clients. At 19
/// it takes a core's idle time and next to nothing from the transfer and the gateway's clients
/// when they want the core; at 10 it still took about a tenth of a core pinned with them
/// (perf, docs/benchmarks.md). Raising a thread's nice needs no privilege; lowering it back
/// would, so giving way is for good.
const HASHER_NICE: i32 = 19;

/// The running hash; dropping it stops the thread at its next chunk.
#[derive(Debug)]
pub struct Sha256Behind {
    thread: Option<std::thread::JoinHandle<io::Result<(Digest, u64)>>>,
    stop: Arc<AtomicBool>,
    /// Set when the hash is to give way; the thread lowers its own priority at its next chunk.
    give_way: Arc<AtomicBool>,
    /// The hashing thread's id, once it runs (0 before), for the tests.
    #[cfg(test)]
    tid: Arc<std::sync::atomic::AtomicI32>,
}

impl Sha256Behind {
    /// Starts hashing the `chunk_count` chunks of the blob as the transfer behind `progress`
    /// gets them.
    pub fn start(
        reader: ChunkReader,
        chunk_count: u32,
        progress: watch::Receiver<Progress>,
    ) -> io::Result<Sha256Behind> {
        let stop = Arc::new(AtomicBool::new(false));
        let give_way = Arc::new(AtomicBool::new(false));
        #[cfg(test)]
        let tid = Arc::new(std::sync::atomic::AtomicI32::new(0));
        let runtime = tokio::runtime::Handle::current();
        let hashing = Hashing {
            stop: stop.clone(),
            give_way: give_way.clone(),
            #[cfg(test)]
            tid: tid.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("sha256-behind".into())
            .spawn(move || hash_chunks(reader, chunk_count, progress, &runtime, &hashing))?;
        Ok(Sha256Behind {
            thread: Some(thread),
            stop,
            give_way,
            #[cfg(test)]
            tid,
        })
    }

    /// Makes the hash give way for the rest of the transfer: a client waits on it, and the
    /// hash is off the client's path. The thread lowers its priority to [`HASHER_NICE`] at its
    /// next chunk.
    pub fn give_way(&self) {
        self.give_way.store(true, Ordering::Relaxed);
    }

    /// The hashing thread's nice value, once it runs.
    #[cfg(test)]
    fn nice(&self) -> Option<i32> {
        let thread = rustix::process::Pid::from_raw(self.tid.load(Ordering::Acquire))?;
        rustix::process::getpriority_process(Some(thread)).ok()
    }

    /// Waits for the digest and length of the whole blob. Not cancel-safe: dropping the future
    /// loses the result (the thread still stops).
    pub async fn finish(mut self) -> io::Result<(Digest, u64)> {
        let thread = self
            .thread
            .take()
            .ok_or_else(|| io::Error::other("the hash was already taken"))?;
        tokio::task::spawn_blocking(move || thread.join())
            .await
            .map_err(io::Error::other)?
            .map_err(|_| io::Error::other("the hashing thread panicked"))?
    }
}

impl Drop for Sha256Behind {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// What the hashing thread shares with its [`Sha256Behind`].
struct Hashing {
    stop: Arc<AtomicBool>,
    give_way: Arc<AtomicBool>,
    #[cfg(test)]
    tid: Arc<std::sync::atomic::AtomicI32>,
}

fn hash_chunks(
    mut reader: ChunkReader,
    chunk_count: u32,
    mut progress: watch::Receiver<Progress>,
    runtime: &tokio::runtime::Handle,
    hashing: &Hashing,
) -> io::Result<(Digest, u64)> {
    #[cfg(test)]
    hashing.tid.store(
        rustix::thread::gettid().as_raw_nonzero().get(),
        Ordering::Release,
    );
    let mut hasher = Sha256Writer::default();
    let mut next = 0;
    let mut gave_way = false;
    progress.borrow().verified.hasher_at(next);
    while next < chunk_count {
        if hashing.stop.load(Ordering::Relaxed) {
            return Err(io::Error::other("the transfer stopped"));
        }
        if !gave_way && hashing.give_way.load(Ordering::Relaxed) {
            gave_way = true;
            lower_priority();
        }
        let in_memory = {
            let progress = progress.borrow_and_update();
            progress.have.get(next).then(|| progress.verified.get(next))
        };
        match in_memory {
            Some(Some(bytes)) => hasher.update(&bytes),
            // Had, and out of memory: the file holds it.
            Some(None) => reader.read(next, |bytes| hasher.update(bytes))?,
            None => {
                progress.borrow().verified.hasher_waits();
                if runtime.block_on(progress.changed()).is_err() {
                    return Err(io::Error::other("the transfer stopped"));
                }
                continue;
            }
        }
        next += 1;
        progress.borrow().verified.hasher_at(next);
    }
    Ok(hasher.finish())
}

/// Lowers the calling thread's priority to [`HASHER_NICE`]; where that fails the hash runs at
/// normal priority, which is only slower for others.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), HASHER_NICE) {
        tracing::debug!(%error, "cannot lower the hashing thread's priority");
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use shoal_protocol::Bitmap;
    use shoal_protocol::chunk::{CHUNK_BYTES_MIN, ChunkIndex};

    use super::*;
    use crate::store::test_blobs::{chunk_of, index_of, lying_index};
    use crate::store::{PartialBlob, Store, StoreError};

    /// Runs a transfer's side by hand: chunks written in `order`, each announced through the
    /// progress the hasher watches (`in_memory` says whether it also stays in the verified
    /// window), then the blob completed with the hash from beside.
    async fn transfer(
        store: &Store,
        index: ChunkIndex,
        bytes: &[u8],
        order: &[u32],
        in_memory: impl Fn(u32) -> bool,
    ) -> Result<(), StoreError> {
        let mut partial = PartialBlob::open(store, index.clone()).unwrap();
        partial.hash_elsewhere();
        let (progress, behind) = hash_beside(&partial);
        for &chunk in order {
            let chunk_bytes = chunk_of(bytes, &index, chunk);
            partial.write_chunk(chunk, &chunk_bytes).unwrap();
            progress.send_modify(|progress| {
                if in_memory(chunk) {
                    progress.verified.push(chunk, Bytes::from(chunk_bytes));
                }
                progress.have.set(chunk);
            });
            tokio::task::yield_now().await;
        }
        let (actual, size) = behind.finish().await.unwrap();
        tokio::task::spawn_blocking(move || partial.complete_hashed(actual, size))
            .await
            .unwrap()
    }

    /// A transfer's progress, with nothing had yet, and the hash watching it.
    fn hash_beside(partial: &PartialBlob) -> (watch::Sender<Progress>, Sha256Behind) {
        let chunk_count = partial.index().chunk_count();
        let (progress, watched) = watch::channel(Progress {
            have: Bitmap::new(chunk_count),
            ..Progress::default()
        });
        let reader = partial.chunk_reader().unwrap();
        let behind = Sha256Behind::start(reader, chunk_count, watched).unwrap();
        (progress, behind)
    }

    fn bytes(chunks: u32) -> Vec<u8> {
        (0..CHUNK_BYTES_MIN * chunks + 7)
            .map(|i| (i % 241) as u8)
            .collect()
    }

    /// Chunks out of order, some from memory and some read back from the file, hash to the
    /// blob's digest, and the blob enters the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signed_blob_is_hashed_beside_the_transfer_and_stored() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = bytes(9);
        let index = index_of(&bytes, Digest::of(&bytes));
        let order = [9, 0, 2, 1, 4, 3, 6, 5, 8, 7];
        transfer(&store, index.clone(), &bytes, &order, |chunk| {
            chunk % 3 != 0
        })
        .await
        .unwrap();
        assert!(store.has_blob(&index.blob()).unwrap());
    }

    /// A publisher whose signed root does not match its digest: every chunk verifies, the hash
    /// beside the transfer does not match, and nothing enters the store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_signed_root_that_does_not_match_its_digest_is_caught_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = bytes(4);
        let index = lying_index(&bytes);
        let claimed = index.blob();
        let result = transfer(&store, index, &bytes, &[0, 1, 2, 3, 4], |_| true).await;
        assert!(matches!(result, Err(StoreError::DigestMismatch { .. })));
        assert!(!store.has_blob(&claimed).unwrap());
        assert!(!store.layout().partial(&claimed).exists());
    }

    /// A transfer that ends before the blob is whole stops the hasher with an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hash_stops_when_the_transfer_does() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = bytes(3);
        let index = index_of(&bytes, Digest::of(&bytes));
        let partial = PartialBlob::open(&store, index).unwrap();
        let (progress, behind) = hash_beside(&partial);
        drop(progress);
        assert!(behind.finish().await.is_err());
    }

    /// The hash runs at the transfer's priority until a client waits, and at
    /// [`HASHER_NICE`] from its next chunk on.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_hash_gives_way_once_a_client_waits() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let bytes = bytes(3);
        let index = index_of(&bytes, Digest::of(&bytes));
        let mut partial = PartialBlob::open(&store, index.clone()).unwrap();
        partial.hash_elsewhere();
        let (progress, behind) = hash_beside(&partial);
        let mut arrive = |chunk: u32| {
            let chunk_bytes = chunk_of(&bytes, &index, chunk);
            partial.write_chunk(chunk, &chunk_bytes).unwrap();
            progress.send_modify(|progress| {
                progress.have.set(chunk);
            });
        };
        let nice_eventually = |wanted: i32| {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
            while behind.nice() != Some(wanted) {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the hash runs at nice {:?}, not {wanted}",
                    behind.nice()
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let own = rustix::process::getpriority_process(None).unwrap();
        arrive(0);
        nice_eventually(own);
        behind.give_way();
        arrive(1);
        nice_eventually(HASHER_NICE.max(own));
        arrive(2);
        arrive(3);
        let (actual, _) = behind.finish().await.unwrap();
        assert_eq!(actual, index.blob());
    }
}
