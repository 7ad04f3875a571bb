//! The newest bytes of a blob arriving front to back, kept in memory so that gateway clients
//! take them the moment they arrive instead of after they were hashed, written and read back.
//! A piece leaves memory only once it is on disk (and a little later, for readers just behind),
//! so every arrived byte is always either here or in the file.

use std::collections::VecDeque;
use std::sync::Mutex;

use bytes::Bytes;

/// Written bytes kept after they are on disk, for readers slightly behind the download.
const KEEP_WRITTEN_BYTES: u64 = 2 << 20;

#[derive(Debug, Default)]
pub struct ArrivingBytes {
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Each piece with the blob offset it starts at, in order and contiguous.
    pieces: VecDeque<(u64, Bytes)>,
    /// One past the last arrived byte.
    end: u64,
    /// Bytes on disk: the file holds `0..written`.
    written: u64,
}

impl ArrivingBytes {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Up to `max` bytes from `position` on, if they are in memory (a slice, not a copy).
    pub fn at(&self, position: u64, max: usize) -> Option<Bytes> {
        let state = self.lock();
        if position >= state.end {
            return None;
        }
        let after = state
            .pieces
            .partition_point(|(start, _)| *start <= position);
        let (start, piece) = state.pieces.get(after.checked_sub(1)?)?;
        let from = (position - start) as usize;
        Some(piece.slice(from..piece.len().min(from + max)))
    }

    /// How many bytes from the start of the blob are in the file.
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    /// Appends the next piece of the blob.
    pub fn push(&self, piece: Bytes) {
        let mut state = self.lock();
        let start = state.end;
        state.end += piece.len() as u64;
        state.pieces.push_back((start, piece));
    }

    /// Records that the file now holds the first `written` bytes, and lets go of pieces that
    /// are on disk and far enough behind.
    pub fn mark_written(&self, written: u64) {
        let mut state = self.lock();
        state.written = written;
        let keep_from = written.saturating_sub(KEEP_WRITTEN_BYTES);
        while let Some((start, piece)) = state.pieces.front()
            && start + piece.len() as u64 <= keep_from
        {
            state.pieces.pop_front();
        }
    }

    /// Lets go of every piece: the whole blob is on disk.
    pub fn release(&self) {
        self.lock().pieces.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(sizes: &[usize]) -> ArrivingBytes {
        let arriving = ArrivingBytes::default();
        let mut next = 0u8;
        for &size in sizes {
            let piece: Vec<u8> = (0..size)
                .map(|_| {
                    next = next.wrapping_add(1);
                    next
                })
                .collect();
            arriving.push(Bytes::from(piece));
        }
        arriving
    }

    #[test]
    fn serves_slices_of_the_piece_holding_a_position() {
        let arriving = pieces(&[3, 5, 2]);
        assert_eq!(arriving.at(0, 10).unwrap().as_ref(), &[1, 2, 3]);
        assert_eq!(arriving.at(4, 10).unwrap().as_ref(), &[5, 6, 7, 8]);
        assert_eq!(arriving.at(4, 2).unwrap().as_ref(), &[5, 6]);
        assert_eq!(arriving.at(9, 10).unwrap().as_ref(), &[10]);
        assert!(arriving.at(10, 10).is_none(), "not arrived yet");
    }

    #[test]
    fn keeps_pieces_until_written_and_then_a_margin() {
        let piece = (KEEP_WRITTEN_BYTES / 2) as usize;
        let arriving = pieces(&[piece; 5]);
        arriving.mark_written(piece as u64);
        assert!(arriving.at(0, 1).is_some(), "within the margin");
        arriving.mark_written(4 * piece as u64);
        assert!(arriving.at(0, 1).is_none(), "on disk and far behind");
        assert_eq!(arriving.written(), 4 * piece as u64);
        assert!(arriving.at(2 * piece as u64, 1).is_some());
        assert!(
            arriving.at(4 * piece as u64, 1).is_some(),
            "not written yet"
        );
        arriving.release();
        assert!(arriving.at(4 * piece as u64, 1).is_none());
    }
}
