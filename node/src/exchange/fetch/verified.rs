//! The chunks a transfer verified most recently, kept in memory for a short while so that the
//! readers right behind the transfer — gateway clients streaming the blob, peers asking for a
//! chunk the node has just got, the background sha256 — take them without reading the file
//! back. Chunks are written around the page cache (`store/partial.rs`), so a read-back would be
//! a read from the device; from here it is a reference to the very buffer the chunk arrived in.
//!
//! Only chunks that matched the blob's chunk index enter; a reader that falls further behind
//! than the window reads the file as before.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Bytes of verified chunks kept: 32 one-MiB chunks, twice the scheduler's streaming window
/// ahead of a client, so a client or hasher keeping pace with the transfer never touches the
/// disk, while a transfer's memory stays well within the node's RSS budget.
const VERIFIED_BYTES_MAX: usize = 32 << 20;

#[derive(Debug, Default)]
pub struct VerifiedChunks {
    state: Mutex<Window>,
}

#[derive(Debug, Default)]
struct Window {
    /// Chunk numbers with their bytes, oldest first.
    chunks: VecDeque<(u32, Bytes)>,
    bytes: usize,
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
            .find(|(number, _)| *number == chunk)
            .map(|(_, bytes)| bytes.clone())
    }

    /// Keeps chunk `chunk`, which matched the index, letting go of the oldest chunks beyond
    /// the window. The caller writes it to the file before it pushes another chunk, so a chunk
    /// leaves memory only once the file holds it.
    pub fn push(&self, chunk: u32, bytes: Bytes) {
        let mut window = self.lock();
        window.bytes += bytes.len();
        window.chunks.push_back((chunk, bytes));
        while window.bytes > VERIFIED_BYTES_MAX && window.chunks.len() > 1 {
            if let Some((_, oldest)) = window.chunks.pop_front() {
                window.bytes -= oldest.len();
            }
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
        assert!(verified.get(0).is_some());
        verified.push(1, Bytes::from(vec![2; 10]));
        assert!(verified.get(0).is_none());
        assert_eq!(verified.get(1).as_deref(), Some(&[2u8; 10][..]));
    }
}
