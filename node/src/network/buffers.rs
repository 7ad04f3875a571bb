//! Chunk buffers, reused: a chunk read from the network or from disk lands in a page-aligned
//! buffer that goes back to the pool when the last reader lets go of it.
//!
//! Why: a fresh 1 MiB buffer per chunk costs a zero-fill and, as glibc hands large blocks back
//! to the kernel, a page fault per 4 KiB when it is touched again — together about a tenth of
//! a receiving node's CPU in a profile of a 1 GiB transfer (docs/benchmarks.md). Page
//! alignment lets a chunk be written to disk around the page cache straight from the buffer it
//! arrived in (`store/partial.rs`), without a copy into an aligned one. The lanes lend their
//! record buffers from a pool of their own (`lane/record.rs`).

use std::sync::{Arc, Mutex};

use bytes::Bytes;

/// Alignment of every buffer: the page size, which direct I/O needs.
pub const BUFFER_ALIGN_BYTES: usize = 4096;
/// Free buffers kept for reuse: enough for the chunks in flight to a few peers plus those a
/// transfer keeps in memory (32 MiB, `exchange/fetch/verified.rs`); more are freed.
const FREE_BUFFERS_MAX: usize = 64;

/// A pool of chunk buffers. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct ChunkBuffers {
    free: Arc<Mutex<Vec<Vec<u8>>>>,
}

/// One buffer taken from the pool, `len` bytes of it in use from an aligned start.
#[derive(Debug)]
pub struct ChunkBuffer {
    memory: Vec<u8>,
    start: usize,
    len: usize,
    pool: ChunkBuffers,
}

impl ChunkBuffers {
    /// A buffer of `len` bytes whose contents are unspecified (a reused buffer keeps what it
    /// held): the caller fills all of it.
    pub fn take(&self, len: usize) -> ChunkBuffer {
        let reused = {
            let mut free = self.lock();
            let fitting = free.iter().position(|memory| fits(memory, len));
            fitting.map(|at| free.swap_remove(at))
        };
        let memory = reused.unwrap_or_else(|| vec![0; len + BUFFER_ALIGN_BYTES]);
        let start = memory.as_ptr().align_offset(BUFFER_ALIGN_BYTES);
        ChunkBuffer {
            memory,
            start,
            len,
            pool: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Vec<u8>>> {
        self.free
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Whether `memory` holds `len` bytes from its first aligned byte on.
fn fits(memory: &[u8], len: usize) -> bool {
    memory.len() >= memory.as_ptr().align_offset(BUFFER_ALIGN_BYTES) + len
}

impl ChunkBuffer {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.memory[self.start..self.start + self.len]
    }

    /// The filled buffer as shared bytes; it returns to the pool when the last clone drops.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for ChunkBuffer {
    fn as_ref(&self) -> &[u8] {
        &self.memory[self.start..self.start + self.len]
    }
}

impl std::ops::Deref for ChunkBuffer {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_ref()
    }
}

impl std::ops::DerefMut for ChunkBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.as_mut_slice()
    }
}

impl Drop for ChunkBuffer {
    fn drop(&mut self) {
        let memory = std::mem::take(&mut self.memory);
        let mut free = self.pool.lock();
        if free.len() < FREE_BUFFERS_MAX {
            free.push(memory);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_come_back_for_reuse() {
        let buffers = ChunkBuffers::default();
        let mut buffer = buffers.take(1 << 20);
        buffer.as_mut_slice().fill(7);
        let bytes = buffer.freeze();
        assert_eq!(bytes.len(), 1 << 20);
        assert_eq!(bytes.as_ptr() as usize % BUFFER_ALIGN_BYTES, 0);
        let address = bytes.as_ptr();
        let clone = bytes.clone();
        drop(bytes);
        assert!(buffers.lock().is_empty(), "still held by a clone");
        drop(clone);
        assert_eq!(buffers.lock().len(), 1);
        let mut again = buffers.take(1000);
        assert_eq!(again.as_mut_slice().as_ptr(), address);
        assert_eq!(again.as_mut_slice().len(), 1000);
        assert!(buffers.lock().is_empty());
    }

    #[test]
    fn a_buffer_too_small_is_not_reused_for_a_larger_chunk() {
        let buffers = ChunkBuffers::default();
        drop(buffers.take(100));
        let larger = buffers.take(1 << 20);
        assert_eq!(larger.as_ref().len(), 1 << 20);
        assert_eq!(buffers.lock().len(), 1);
    }

    #[test]
    fn the_pool_keeps_a_bounded_number_of_buffers() {
        let buffers = ChunkBuffers::default();
        let taken: Vec<ChunkBuffer> = (0..FREE_BUFFERS_MAX + 5)
            .map(|_| buffers.take(16))
            .collect();
        drop(taken);
        assert_eq!(buffers.lock().len(), FREE_BUFFERS_MAX);
    }
}
