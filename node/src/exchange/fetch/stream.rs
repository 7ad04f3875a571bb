//! Streaming a blob to a gateway client while its transfer is still running: each chunk is
//! taken as soon as it is there, in order — from memory while the transfer keeps it among its
//! most recently verified chunks, else from the transfer's file — and the transfer is told
//! which chunk the client waits for so that one is fetched first. A chunk from a peer is there
//! once verified against the index. Bytes from an upstream (or a peer relaying one) go to the
//! client from memory the moment they arrive, and from the file once they are written and out
//! of memory: an upstream's bytes can only be checked whole, at the end, like any pull-through
//! proxy's; a blob that fails that check never enters the store and the client's stream ends
//! with an error.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use bytes::Bytes;
use shoal_gateway::BlobStream;

use super::{StreamMark, Transfer, VerifiedChunks};

/// Most bytes read per piece sent to the client.
const PIECE_BYTES_MAX: u64 = 512 * 1024;

struct Reader {
    transfer: Transfer,
    position: u64,
    end: u64,
    /// Keeps the chunks this stream has yet to read in the transfer's memory.
    mark: Option<StreamMark>,
}

/// The bytes of `range` of the transfer's blob, as they become available. The stream ends
/// with an error if the transfer fails.
pub fn stream_transfer(transfer: Transfer, range: Range<u64>) -> BlobStream {
    let reader = Reader {
        transfer,
        position: range.start,
        end: range.end,
        mark: None,
    };
    Box::pin(futures_util::stream::try_unfold(
        reader,
        |mut reader| async move {
            if reader.position >= reader.end {
                return Ok(None);
            }
            let piece = reader.next_piece().await?;
            reader.position += piece.len() as u64;
            Ok(Some((piece, reader)))
        },
    ))
}

impl Reader {
    async fn next_piece(&mut self) -> std::io::Result<Bytes> {
        let layout = self.transfer.ready().await.map_err(std::io::Error::other)?;
        let chunk = layout
            .chunk_at(self.position)
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        let chunk_range = layout.chunk_range(chunk).map_err(std::io::Error::other)?;
        let chunk_end = chunk_range.end;
        let position = self.position;
        let longest = (self.end - position).min(PIECE_BYTES_MAX);
        match &self.mark {
            Some(mark) => mark.reads(chunk),
            None => {
                let verified = self.transfer.progress().verified;
                self.mark = Some(VerifiedChunks::follow(&verified, chunk));
            }
        }
        let mut announced = false;
        loop {
            let progress = self.transfer.progress();
            if let Some(Err(error)) = &progress.outcome {
                return Err(std::io::Error::other(error.clone()));
            }
            if let Some(arriving) = &progress.arriving
                && let Some(piece) = arriving.at(position, longest as usize)
            {
                return Ok(piece);
            }
            if progress.have.get(chunk)
                && let Some(bytes) = progress.verified.get(chunk)
            {
                let from = (position - chunk_range.start) as usize;
                let to = bytes.len().min(from + (self.end - position) as usize);
                return Ok(bytes.slice(from..to));
            }
            let on_disk_to = if matches!(progress.outcome, Some(Ok(()))) {
                layout.blob_size()
            } else if progress.have.get(chunk) {
                chunk_end
            } else {
                progress
                    .arriving
                    .as_ref()
                    .map_or(0, |arriving| arriving.written())
            };
            if let Some(file) = progress.file
                && on_disk_to > position
            {
                let length = (on_disk_to - position).min(longest) as usize;
                return read_at(file, position, length).await;
            }
            if !announced {
                self.transfer.focus(chunk);
                announced = true;
            }
            self.transfer
                .changed()
                .await
                .map_err(std::io::Error::other)?;
        }
    }
}

async fn read_at(file: Arc<File>, position: u64, length: usize) -> std::io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buffer = vec![0u8; length];
        file.read_exact_at(&mut buffer, position)?;
        Ok(Bytes::from(buffer))
    })
    .await
    .map_err(std::io::Error::other)?
}
