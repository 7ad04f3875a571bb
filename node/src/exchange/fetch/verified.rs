//! The chunks a transfer verified most recently, kept in memory for a short while so that the
//! readers right behind the transfer — gateway clients streaming the blob, peers asking for a
//! chunk the node has just got, the background sha256 — take them without reading the file
//! back. Chunks are written around the page cache (`store/partial.rs`), so a read-back would be
//! a read from the device; from here it is a reference to the very buffer the chunk arrived in.
//!
//! Only chunks that matched the blob's chunk index enter; a reader that falls further behind
//! than the window reads the file as before. A chunk's bytes are written to the file behind
//! the readers (several writes at once, `transfer.rs`), and a chunk not written yet stays here
//! whatever the window: a chunk marked had is always in memory or in the file.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes of verified and written chunks kept for readers: 32 one-MiB chunks, twice the
/// scheduler's streaming window ahead of a client, so a client keeping pace with the transfer
/// never touches the disk, while a transfer's memory stays well within the node's RSS budget.
/// Chunks still being written, and chunks the hasher has not passed yet, come on top.
const VERIFIED_BYTES_MAX: usize = 32 << 20;

/// Bytes of chunks ahead of the hasher beside the transfer (`sha256_behind.rs`) past which
/// the transfer waits for it ([`VerifiedChunks::hasher_caught_up`]) when no client is
/// waiting on the transfer: the hasher then takes every chunk from memory. Reading chunks it
/// fell behind on back from the file (a device read, as they were written around the page
/// cache) held a 1 GiB pull for a second after its last chunk arrived (docs/benchmarks.md).
pub const HASHER_AHEAD_MAX: usize = 32 << 20;

/// Bytes of written chunks ahead of the hasher kept in memory at most: twice the pace above,
/// for when clients stream the blob and the hasher gives way to them (it then reads what it
/// fell behind on from the file).
const HASHER_AHEAD_KEPT_MAX: usize = 2 * HASHER_AHEAD_MAX;

#[derive(Debug, Default)]
pub struct VerifiedChunks {
    state: Mutex<Window>,
    /// Told each time the hasher moves on.
    hasher_moved: Notify,
}

#[derive(Debug, Default)]
struct Window {
    /// Chunk numbers with their bytes, oldest first.
    chunks: VecDeque<Kept>,
    /// The chunk the hasher beside the transfer takes next, when one follows it.
    hasher_at: Option<u32>,
}

#[derive(Debug)]
struct Kept {
    chunk: u32,
    bytes: Bytes,
    written: bool,
}

impl Window {
    fn ahead_of_hasher(&self, kept: &Kept) -> bool {
        self.hasher_at.is_some_and(|at| kept.chunk >= at)
    }

    /// Bytes of the chunks matching `which`.
    fn bytes(&self, which: impl Fn(&Kept) -> bool) -> usize {
        self.chunks
            .iter()
            .filter(|kept| which(kept))
            .map(|kept| kept.bytes.len())
            .sum()
    }

    /// Lets go of the oldest written chunks the hasher has passed beyond the window (always
    /// keeping the newest), and of the oldest written chunks ahead of it beyond
    /// [`HASHER_AHEAD_KEPT_MAX`].
    fn trim(&mut self) {
        loop {
            let passed = |kept: &Kept| kept.written && !self.ahead_of_hasher(kept);
            let ahead = |kept: &Kept| kept.written && self.ahead_of_hasher(kept);
            let gone = if self.bytes(passed) > VERIFIED_BYTES_MAX
                && self
                    .chunks
                    .iter()
                    .filter(|kept| passed(kept))
                    .nth(1)
                    .is_some()
            {
                self.chunks.iter().position(passed)
            } else if self.bytes(ahead) > HASHER_AHEAD_KEPT_MAX {
                self.chunks.iter().position(ahead)
            } else {
                None
            };
            let Some(gone) = gone else {
                return;
            };
            self.chunks.remove(gone);
        }
    }
}

impl VerifiedChunks {
    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Chunk `chunk`, if it is still in memory (a reference, not a copy).
    pub fn get(&self, chunk: u32) -> Option<Bytes> {
        let window = self.lock();
        window
            .chunks
            .iter()
            .rev()
            .find(|kept| kept.chunk == chunk)
            .map(|kept| kept.bytes.clone())
    }

    /// Keeps chunk `chunk`, which matched the index and is being written to the file; it
    /// stays until [`VerifiedChunks::written`] says the file holds it.
    pub fn push(&self, chunk: u32, bytes: Bytes) {
        self.lock().chunks.push_back(Kept {
            chunk,
            bytes,
            written: false,
        });
    }

    /// Notes that the file holds chunk `chunk`, letting go of the oldest chunks beyond the
    /// window.
    pub fn written(&self, chunk: u32) {
        let mut window = self.lock();
        if let Some(kept) = window
            .chunks
            .iter_mut()
            .rev()
            .find(|kept| kept.chunk == chunk && !kept.written)
        {
            kept.written = true;
        }
        window.trim();
    }

    /// Notes that the hasher beside the transfer takes chunk `next` next: the chunks from
    /// there on stay until it has passed them (within [`HASHER_AHEAD_KEPT_MAX`]).
    pub fn hasher_at(&self, next: u32) {
        let mut window = self.lock();
        window.hasher_at = Some(next);
        window.trim();
        drop(window);
        self.hasher_moved.notify_one();
    }

    /// Waits while more than [`HASHER_AHEAD_MAX`] bytes of chunks wait for the hasher and it
    /// has the chunk it takes next (`has(chunk)`), so is not itself waiting for the transfer.
    /// Returns at once when no hasher follows the transfer.
    pub async fn hasher_caught_up(&self, has: impl Fn(u32) -> bool) {
        loop {
            let moved = self.hasher_moved.notified();
            let (at, ahead) = {
                let window = self.lock();
                let Some(at) = window.hasher_at else {
                    return;
                };
                (at, window.bytes(|kept| window.ahead_of_hasher(kept)))
            };
            if ahead <= HASHER_AHEAD_MAX || !has(at) {
                return;
            }
            moved.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_chunks_within_the_window() {
        let verified = VerifiedChunks::default();
        let chunk_bytes = 1 << 20;
        let held = VERIFIED_BYTES_MAX / chunk_bytes;
        for chunk in 0..(held as u32 + 3) {
            verified.push(chunk, Bytes::from(vec![chunk as u8; chunk_bytes]));
            verified.written(chunk);
        }
        for gone in 0..3 {
            assert!(verified.get(gone).is_none(), "chunk {gone} should be gone");
        }
        for kept in 3..(held as u32 + 3) {
            let bytes = verified.get(kept).expect("kept");
            assert_eq!(bytes.len(), chunk_bytes);
            assert!(bytes.iter().all(|byte| *byte == kept as u8));
        }
        assert!(verified.get(held as u32 + 3).is_none());
    }

    #[test]
    fn a_chunk_larger_than_the_window_still_stays_until_the_next() {
        let verified = VerifiedChunks::default();
        verified.push(0, Bytes::from(vec![1; VERIFIED_BYTES_MAX + 1]));
        verified.written(0);
        assert!(verified.get(0).is_some());
        verified.push(1, Bytes::from(vec![2; 10]));
        assert!(verified.get(0).is_some(), "chunk 1 is not written yet");
        verified.written(1);
        assert!(verified.get(0).is_none());
        assert_eq!(verified.get(1).as_deref(), Some(&[2u8; 10][..]));
    }

    #[test]
    fn chunks_not_written_yet_stay_beyond_the_window() {
        let verified = VerifiedChunks::default();
        let chunk_bytes = 1 << 20;
        let held = (VERIFIED_BYTES_MAX / chunk_bytes) as u32;
        // Chunk 0's write is slow; every later chunk is written at once.
        verified.push(0, Bytes::from(vec![0; chunk_bytes]));
        for chunk in 1..=2 * held {
            verified.push(chunk, Bytes::from(vec![chunk as u8; chunk_bytes]));
            verified.written(chunk);
        }
        assert!(verified.get(0).is_some(), "an unwritten chunk left memory");
        assert!(verified.get(1).is_none());
        assert!(verified.get(2 * held).is_some());
        verified.written(0);
        assert!(
            verified.get(0).is_none(),
            "the oldest written chunk stays past the window"
        );
        assert!(verified.get(2 * held).is_some());
    }

    /// Chunks 0.. of 1 MiB, written, with a hasher at `hasher_at`.
    fn window_with_hasher(chunks: u32, hasher_at: u32) -> VerifiedChunks {
        let verified = VerifiedChunks::default();
        verified.hasher_at(hasher_at);
        for chunk in 0..chunks {
            verified.push(chunk, Bytes::from(vec![chunk as u8; 1 << 20]));
            verified.written(chunk);
        }
        verified
    }

    #[test]
    fn chunks_stay_until_the_hasher_passes_them_within_twice_its_pace() {
        let kept_max = (HASHER_AHEAD_KEPT_MAX >> 20) as u32;
        let verified = window_with_hasher(kept_max + 8, 0);
        // Beyond the bound, the oldest chunks ahead of the hasher go (it reads them back).
        for gone in 0..8 {
            assert!(verified.get(gone).is_none(), "chunk {gone} should be gone");
        }
        for kept in 8..kept_max + 8 {
            assert!(verified.get(kept).is_some(), "chunk {kept} should be kept");
        }
        // Passed chunks are kept within the window only.
        verified.hasher_at(kept_max + 8);
        let window = (VERIFIED_BYTES_MAX >> 20) as u32;
        assert!(verified.get(kept_max + 8 - window - 1).is_none());
        assert!(verified.get(kept_max + 8 - window).is_some());
    }

    #[tokio::test]
    async fn the_transfer_waits_only_for_a_hasher_far_behind_that_has_its_next_chunk() {
        let ahead = (HASHER_AHEAD_MAX >> 20) as u32;
        // No hasher: never a wait.
        let verified = VerifiedChunks::default();
        verified.push(0, Bytes::from(vec![0; HASHER_AHEAD_MAX * 2]));
        verified.hasher_caught_up(|_| true).await;
        // Within the pace: no wait.
        window_with_hasher(ahead, 0)
            .hasher_caught_up(|_| true)
            .await;
        // Far behind, but its next chunk is missing: it waits for the transfer, not the
        // other way round.
        window_with_hasher(ahead + 4, 0)
            .hasher_caught_up(|chunk| chunk != 0)
            .await;
        // Far behind with its chunk at hand: the wait ends when it moves on.
        let verified = std::sync::Arc::new(window_with_hasher(ahead + 4, 0));
        let waiting = tokio::spawn({
            let verified = verified.clone();
            async move { verified.hasher_caught_up(|_| true).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(
            !waiting.is_finished(),
            "the transfer ran ahead of a hasher far behind"
        );
        verified.hasher_at(2);
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "still more than the pace ahead");
        verified.hasher_at(4);
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the wait ends once the hasher is within the pace")
            .unwrap();
    }
}
