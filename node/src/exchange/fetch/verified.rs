//! The chunks a transfer verified most recently, kept in memory for a short while so that the
//! readers right behind the transfer — gateway clients streaming the blob, peers asking for a
//! chunk the node has just got, the background sha256 — take them without reading the file
//! back. Chunks are written around the page cache (`store/partial.rs`), so a read-back would be
//! a read from the device; from here it is a reference to the very buffer the chunk arrived in.
//!
//! Only chunks that matched the blob's chunk index enter. Two kinds of reader are followed:
//! the hasher (until it gives way to clients) and each gateway stream ([`StreamMark`]); what a
//! followed reader has yet to read stays, within a bound (for a hasher waiting for a chunk the
//! transfer lacks, only the few it takes next). Others (a peer asking for a chunk the
//! node just got) find the newest few chunks here. A reader that falls further behind reads
//! the file as before. A chunk's bytes are written to the file behind the readers (several
//! writes at once, `transfer.rs`), and a chunk not written yet stays here whatever the window:
//! a chunk marked had is always in memory or in the file.
//!
//! Why followed readers and a short window rather than one long window: every chunk kept is a
//! buffer the transfer cannot reuse, and a fresh one is a zero-filled page per 4 KiB — on the
//! VMs these benchmarks run on, a fault in the host too, several microseconds each
//! (docs/benchmarks.md, "Fresh pages in the transfer").

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use tokio::sync::Notify;

/// Bytes of verified and written chunks kept for readers that are not followed: the newest 4
/// one-MiB chunks, for peers asking for what this node has just shown them. Chunks still being
/// written, and chunks a followed reader has yet to read, come on top. A fan-out member runs
/// four transfers at once; 8 MiB each was a third of its fresh memory (docs/benchmarks.md, "A
/// waiting hash keeps what it takes next").
const VERIFIED_BYTES_MAX: usize = 4 << 20;

/// Bytes of chunks ahead of the hasher beside the transfer (`sha256_behind.rs`) past which
/// the transfer waits for it ([`VerifiedChunks::hasher_caught_up`]) when no client is
/// waiting on the transfer: the hasher then takes every chunk from memory. Reading chunks it
/// fell behind on back from the file (a device read, as they were written around the page
/// cache) held a 1 GiB pull for a second after its last chunk arrived (docs/benchmarks.md).
pub const HASHER_AHEAD_MAX: usize = 32 << 20;

/// Bytes after the hasher's position within which written chunks stay for it while it waits
/// for a chunk the transfer does not have yet. Chunks that arrive out of order (rarest first,
/// in a fan-out) may come long before the hasher gets to them; kept, each is a buffer the
/// transfer cannot reuse, and the peak of those is fresh memory — on these VMs a fault in the
/// host for every 4 KiB (docs/benchmarks.md, "A waiting hash keeps what it takes next"). Read
/// back from the file they cost a direct read, a small fraction of that.
const WAITING_HASHER_SPAN_BYTES: usize = 4 << 20;

/// Bytes of written chunks that followed readers have yet to read kept in memory at most:
/// twice the hasher's pace above. Past it the oldest go, and a reader that far behind reads them
/// back from the file: a gateway client on a slow link, or the hasher once it gave way to
/// clients (it catches up after they are served).
const FOLLOWED_KEPT_MAX: usize = 2 * HASHER_AHEAD_MAX;

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
    /// The hasher gave way to clients: chunks are no longer kept for it.
    hasher_gave_way: bool,
    /// The hasher waits for a chunk the transfer does not have: only chunks within
    /// [`WAITING_HASHER_SPAN_BYTES`] after it are kept for it.
    hasher_waiting: bool,
    /// The chunk each gateway stream following the transfer reads next.
    streams: HashMap<u64, u32>,
    /// The next stream's key in `streams`.
    next_stream: u64,
}

#[derive(Debug)]
struct Kept {
    chunk: u32,
    bytes: Bytes,
    written: bool,
}

impl Window {
    fn ahead_of_hasher(&self, kept: &Kept) -> bool {
        let within_span = |at: u32| {
            !self.hasher_waiting
                || (kept.chunk - at) as usize * kept.bytes.len() < WAITING_HASHER_SPAN_BYTES
        };
        !self.hasher_gave_way
            && self
                .hasher_at
                .is_some_and(|at| kept.chunk >= at && within_span(at))
    }

    /// Whether a followed reader has yet to read the chunk.
    fn awaited(&self, kept: &Kept) -> bool {
        self.ahead_of_hasher(kept) || self.streams.values().any(|&at| kept.chunk >= at)
    }

    /// Bytes of the chunks matching `which`.
    fn bytes(&self, which: impl Fn(&Kept) -> bool) -> usize {
        self.chunks
            .iter()
            .filter(|kept| which(kept))
            .map(|kept| kept.bytes.len())
            .sum()
    }

    /// Lets go of the oldest written chunks no followed reader awaits beyond the window (always
    /// keeping the newest), and of the oldest awaited written chunks beyond
    /// [`FOLLOWED_KEPT_MAX`].
    fn trim(&mut self) {
        loop {
            let passed = |kept: &Kept| kept.written && !self.awaited(kept);
            let ahead = |kept: &Kept| kept.written && self.awaited(kept);
            let gone = if self.bytes(passed) > VERIFIED_BYTES_MAX
                && self
                    .chunks
                    .iter()
                    .filter(|kept| passed(kept))
                    .nth(1)
                    .is_some()
            {
                self.chunks.iter().position(passed)
            } else if self.bytes(ahead) > FOLLOWED_KEPT_MAX {
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
    /// there on stay until it has passed them (within [`FOLLOWED_KEPT_MAX`]).
    pub fn hasher_at(&self, next: u32) {
        let mut window = self.lock();
        window.hasher_at = Some(next);
        window.hasher_waiting = false;
        window.trim();
        drop(window);
        self.hasher_moved.notify_one();
    }

    /// The hasher waits for its next chunk, which the transfer does not have yet: of the chunks
    /// after it, only those within [`WAITING_HASHER_SPAN_BYTES`] stay for it.
    pub fn hasher_waits(&self) {
        let mut window = self.lock();
        if !window.hasher_waiting {
            window.hasher_waiting = true;
            window.trim();
        }
    }

    /// The hasher gave way to clients and catches up from the file once they are served: no
    /// chunk is kept for it from now on.
    pub fn hasher_gave_way(&self) {
        let mut window = self.lock();
        window.hasher_gave_way = true;
        window.trim();
    }

    /// Follows a gateway stream that reads chunk `next` next: the chunks from there on stay
    /// until it has read them (within [`FOLLOWED_KEPT_MAX`]), for as long as the mark lives.
    pub fn follow(verified: &Arc<VerifiedChunks>, next: u32) -> StreamMark {
        let mut window = verified.lock();
        let key = window.next_stream;
        window.next_stream += 1;
        window.streams.insert(key, next);
        StreamMark {
            verified: verified.clone(),
            key,
        }
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

/// Where a gateway stream following the transfer reads ([`VerifiedChunks::follow`]); dropping
/// it stops keeping chunks for the stream.
#[derive(Debug)]
pub struct StreamMark {
    verified: Arc<VerifiedChunks>,
    key: u64,
}

impl StreamMark {
    /// The stream reads chunk `next` next: the chunks before it may go.
    pub fn reads(&self, next: u32) {
        let mut window = self.verified.lock();
        if let Some(at) = window.streams.get_mut(&self.key)
            && *at != next
        {
            *at = next;
            window.trim();
        }
    }
}

impl Drop for StreamMark {
    fn drop(&mut self) {
        let mut window = self.verified.lock();
        window.streams.remove(&self.key);
        window.trim();
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
        let kept_max = (FOLLOWED_KEPT_MAX >> 20) as u32;
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

    /// Chunks that arrive out of order while the hasher waits for its next one: only those it
    /// takes soon stay for it; the others are kept as any reader's, the newest few.
    #[test]
    fn a_waiting_hasher_keeps_only_the_chunks_it_takes_next() {
        let span = (WAITING_HASHER_SPAN_BYTES >> 20) as u32;
        let window = (VERIFIED_BYTES_MAX >> 20) as u32;
        let verified = VerifiedChunks::default();
        verified.hasher_at(0);
        verified.hasher_waits();
        // Chunk 0 is missing; the far end of the blob arrives first, then the near chunks.
        let far = 100..100 + 2 * window;
        for chunk in far.clone().chain(1..1 + 2 * span) {
            verified.push(chunk, Bytes::from(vec![chunk as u8; 1 << 20]));
            verified.written(chunk);
        }
        for kept in 1..span {
            assert!(
                verified.get(kept).is_some(),
                "chunk {kept} is near the hasher"
            );
        }
        for gone in far {
            assert!(
                verified.get(gone).is_none(),
                "chunk {gone} stayed for the hasher"
            );
        }
        let newest = (span + 1..1 + 2 * span).rev().take(window as usize);
        for kept in newest {
            assert!(
                verified.get(kept).is_some(),
                "chunk {kept} is among the newest"
            );
        }
        // Once it moves on, chunks ahead stay for it as before.
        verified.hasher_at(1);
        for chunk in 200..200 + span + 2 {
            verified.push(chunk, Bytes::from(vec![0; 1 << 20]));
            verified.written(chunk);
        }
        assert!(verified.get(200).is_some(), "kept for a hasher that runs");
    }

    #[test]
    fn once_the_hasher_gives_way_no_chunk_is_kept_for_it() {
        let verified = window_with_hasher(16, 0);
        assert!(verified.get(0).is_some(), "kept for the hasher");
        verified.hasher_gave_way();
        let window = (VERIFIED_BYTES_MAX >> 20) as u32;
        assert!(verified.get(15 - window).is_none(), "kept past the window");
        for kept in 16 - window..16 {
            assert!(verified.get(kept).is_some(), "chunk {kept} left the window");
        }
    }

    #[test]
    fn a_followed_stream_finds_every_chunk_it_has_yet_to_read_until_it_moves_on() {
        let verified = Arc::new(VerifiedChunks::default());
        let window = (VERIFIED_BYTES_MAX >> 20) as u32;
        let kept_max = (FOLLOWED_KEPT_MAX >> 20) as u32;
        let mark = VerifiedChunks::follow(&verified, 2);
        let other = VerifiedChunks::follow(&verified, 4);
        for chunk in 0..3 * window {
            verified.push(chunk, Bytes::from(vec![chunk as u8; 1 << 20]));
            verified.written(chunk);
        }
        for kept in 2..3 * window {
            assert!(
                verified.get(kept).is_some(),
                "chunk {kept} left before its read"
            );
        }
        // The slowest stream holds the chunks; once it moves on, the other one does, and
        // once no stream awaits them, only the window's newest stay.
        mark.reads(3 * window);
        for kept in 4..3 * window {
            assert!(
                verified.get(kept).is_some(),
                "chunk {kept} left before its read"
            );
        }
        drop(other);
        assert!(
            verified.get(2 * window - 1).is_none(),
            "no stream awaits it"
        );
        assert!(verified.get(2 * window).is_some(), "within the window");
        // A stream far behind does not hold more than the bound.
        let _slow = VerifiedChunks::follow(&verified, 3 * window);
        for chunk in 3 * window..3 * window + kept_max + 4 {
            verified.push(chunk, Bytes::from(vec![0; 1 << 20]));
            verified.written(chunk);
        }
        assert!(
            verified.get(3 * window + 3).is_none(),
            "kept past the bound"
        );
        assert!(verified.get(3 * window + 4).is_some());
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
