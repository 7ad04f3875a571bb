//! The frames peers exchange: one length-prefixed frame per request and per response, encoded
//! by `shoal_protocol::wire`, with every length checked before anything is allocated. The
//! request-response protocol `/shoal/exchange/1` sends one frame each way on a substream of
//! its own; the chunk links (`chunks.rs`) send many, in order, on one long-lived stream.

use std::io;

use bytes::Bytes;
use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::StreamProtocol;
use shoal_protocol::BusyReason;
use shoal_protocol::wire::{self, REQUEST_BYTES_MAX, RESPONSE_BYTES_MAX, Request, Response};

use super::buffers::ChunkBuffers;

pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/exchange/1");

#[derive(Debug, Clone, Default)]
pub struct ExchangeCodec;

/// Reads a frame's length prefix, refusing a frame longer than `limit` before anything is
/// allocated for it.
async fn read_length<T: AsyncRead + Unpin>(io: &mut T, limit: usize) -> io::Result<usize> {
    let mut length = [0u8; 4];
    io.read_exact(&mut length).await?;
    let length = u32::from_be_bytes(length) as usize;
    if length > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {length} bytes exceeds the {limit}-byte limit"),
        ));
    }
    Ok(length)
}

/// Reads `length` bytes into a new buffer that already starts with `start`.
async fn read_rest<T: AsyncRead + Unpin>(
    io: &mut T,
    start: &[u8],
    length: usize,
) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::with_capacity(length);
    bytes.extend_from_slice(start);
    bytes.resize(length, 0);
    io.read_exact(&mut bytes[start.len()..]).await?;
    Ok(bytes)
}

async fn read_frame<T: AsyncRead + Unpin>(io: &mut T, limit: usize) -> io::Result<Vec<u8>> {
    let length = read_length(io, limit).await?;
    read_rest(io, &[], length).await
}

/// Reads one request frame. Not cancel-safe: a read dropped half-way leaves the stream
/// mid-frame.
pub async fn read_request_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Request> {
    let frame = read_frame(io, REQUEST_BYTES_MAX).await?;
    wire::decode(&frame, REQUEST_BYTES_MAX).map_err(invalid)
}

/// Writes one request frame, without flushing.
pub async fn write_request_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    request: &Request,
) -> io::Result<()> {
    write_message_frame(io, request).await
}

/// Reads a response frame. A chunk's bytes (nearly all the bytes peers exchange) are read
/// straight into the buffer the response keeps, rather than into a frame that decoding then
/// copies: one 1 MiB buffer per chunk instead of two, and one copy fewer.
pub async fn read_response_frame<T: AsyncRead + Unpin>(io: &mut T) -> io::Result<Response> {
    let length = read_length(io, RESPONSE_BYTES_MAX).await?;
    let mut head = [0u8; wire::FRAME_HEAD_BYTES];
    let head = &mut head[..length.min(wire::FRAME_HEAD_BYTES)];
    io.read_exact(head).await?;
    if let Some(offset) = wire::chunk_response_offset(head, length) {
        let bytes = read_rest(io, &head[offset..], length - offset).await?;
        return Ok(Response::Chunk(bytes));
    }
    let frame = read_rest(io, head, length).await?;
    wire::decode(&frame, RESPONSE_BYTES_MAX).map_err(invalid)
}

/// Reads one frame of a message of at most `limit` bytes (the have feeds' frames). Not
/// cancel-safe, like [`read_request_frame`].
pub async fn read_message_frame<T: AsyncRead + Unpin, M: serde::de::DeserializeOwned>(
    io: &mut T,
    limit: usize,
) -> io::Result<M> {
    let frame = read_frame(io, limit).await?;
    wire::decode(&frame, limit).map_err(invalid)
}

/// Writes one frame of a message, without flushing.
pub async fn write_message_frame<T: AsyncWrite + Unpin, M: serde::Serialize>(
    io: &mut T,
    message: &M,
) -> io::Result<()> {
    write_frame(io, &wire::encode(message).map_err(invalid)?).await
}

/// An answer on a chunk link: the chunk, in a pooled buffer, or why not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChunkAnswer {
    Chunk(Bytes),
    Busy(BusyReason),
    NotFound,
}

impl ChunkAnswer {
    /// The same answer as the request-response protocol gives it.
    pub fn into_response(self) -> Response {
        match self {
            ChunkAnswer::Chunk(bytes) => Response::Chunk(bytes.to_vec()),
            ChunkAnswer::Busy(reason) => busy_response(reason),
            ChunkAnswer::NotFound => Response::NotFound,
        }
    }
}

/// The wire's word for a `Busy` answer of this reason.
fn busy_response(reason: BusyReason) -> Response {
    match reason {
        BusyReason::Egress => Response::Busy,
        BusyReason::SuperSeeding => Response::BusySpreading,
    }
}

/// Reads the answer to a chunk request, the chunk's bytes straight into a buffer of
/// `buffers`. Any response but a chunk, `Busy`, `BusySpreading` or `NotFound` is an error.
/// Not cancel-safe, like [`read_request_frame`].
pub async fn read_chunk_answer<T: AsyncRead + Unpin>(
    io: &mut T,
    buffers: &ChunkBuffers,
) -> io::Result<ChunkAnswer> {
    let length = read_length(io, RESPONSE_BYTES_MAX).await?;
    let mut head = [0u8; wire::FRAME_HEAD_BYTES];
    let head = &mut head[..length.min(wire::FRAME_HEAD_BYTES)];
    io.read_exact(head).await?;
    if let Some(offset) = wire::chunk_response_offset(head, length) {
        let mut buffer = buffers.take(length - offset);
        let bytes = buffer.as_mut_slice();
        let (start, rest) = bytes.split_at_mut(head.len() - offset);
        start.copy_from_slice(&head[offset..]);
        io.read_exact(rest).await?;
        return Ok(ChunkAnswer::Chunk(buffer.freeze()));
    }
    let frame = read_rest(io, head, length).await?;
    match wire::decode(&frame, RESPONSE_BYTES_MAX).map_err(invalid)? {
        Response::Busy => Ok(ChunkAnswer::Busy(BusyReason::Egress)),
        Response::BusySpreading => Ok(ChunkAnswer::Busy(BusyReason::SuperSeeding)),
        Response::NotFound => Ok(ChunkAnswer::NotFound),
        other => Err(invalid(format!(
            "not an answer to a chunk request: {other:?}"
        ))),
    }
}

/// An answer on a chunk link: to a chunk request, or (on lanes) to a bitfield request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAnswer {
    Chunk(ChunkAnswer),
    Response(Response),
}

/// Writes one answer on a chunk link, without flushing.
pub async fn write_link_answer<T: AsyncWrite + Unpin>(
    io: &mut T,
    answer: &LinkAnswer,
) -> io::Result<()> {
    match answer {
        LinkAnswer::Chunk(answer) => write_chunk_answer(io, answer).await,
        LinkAnswer::Response(response) => write_response_frame(io, response).await,
    }
}

/// Writes one chunk answer, without flushing; a chunk leaves from its own buffer.
pub async fn write_chunk_answer<T: AsyncWrite + Unpin>(
    io: &mut T,
    answer: &ChunkAnswer,
) -> io::Result<()> {
    match answer {
        ChunkAnswer::Chunk(bytes) => write_chunk_frame(io, bytes).await,
        ChunkAnswer::Busy(reason) => {
            write_frame(io, &wire::encode(&busy_response(*reason)).map_err(invalid)?).await
        }
        ChunkAnswer::NotFound => {
            write_frame(io, &wire::encode(&Response::NotFound).map_err(invalid)?).await
        }
    }
}

/// Writes the frame of a chunk response carrying `bytes`, without flushing.
///
/// [`read_chunk_answer`] takes the frame's first [`wire::FRAME_HEAD_BYTES`] in one read, the
/// chunk's first few bytes among them, and the rest of the chunk in a second read, straight
/// into the chunk's buffer. Those first few go out with the head, in writes of their own, so
/// that on a lane (which gathers small writes into one record and seals a large one as
/// records of its own) the chunk's records begin where that second read does: each opens
/// straight into the buffer, where a record straddling the two reads is opened in place and
/// copied out.
async fn write_chunk_frame<T: AsyncWrite + Unpin>(io: &mut T, bytes: &[u8]) -> io::Result<()> {
    let head = wire::chunk_response_head(bytes.len()).map_err(invalid)?;
    let read_with_head = wire::FRAME_HEAD_BYTES
        .saturating_sub(head.len())
        .min(bytes.len());
    let (first, rest) = bytes.split_at(read_with_head);
    write_frame_parts(io, &[&head, first, rest]).await
}

async fn write_frame<T: AsyncWrite + Unpin>(io: &mut T, frame: &[u8]) -> io::Result<()> {
    write_frame_parts(io, &[frame]).await
}

/// Writes one frame made of `parts`, each in writes of its own, without flushing.
async fn write_frame_parts<T: AsyncWrite + Unpin>(io: &mut T, parts: &[&[u8]]) -> io::Result<()> {
    let length = parts.iter().map(|part| part.len()).sum::<usize>();
    let length = u32::try_from(length).map_err(|_| io::Error::other("frame too large"))?;
    io.write_all(&length.to_be_bytes()).await?;
    for part in parts {
        io.write_all(part).await?;
    }
    Ok(())
}

/// Writes one response frame, without flushing. A chunk leaves from its own buffer, not
/// copied into an encoded frame first.
async fn write_response_frame<T: AsyncWrite + Unpin>(
    io: &mut T,
    response: &Response,
) -> io::Result<()> {
    if let Response::Chunk(bytes) = response {
        return write_chunk_frame(io, bytes).await;
    }
    write_frame(io, &wire::encode(response).map_err(invalid)?).await
}

fn invalid(error: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.to_string())
}

impl libp2p::request_response::Codec for ExchangeCodec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Request> {
        read_request_frame(io).await
    }

    async fn read_response<T: AsyncRead + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
    ) -> io::Result<Response> {
        read_response_frame(io).await
    }

    async fn write_request<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        request: Request,
    ) -> io::Result<()> {
        write_request_frame(io, &request).await?;
        io.close().await
    }

    async fn write_response<T: AsyncWrite + Unpin + Send>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        response: Response,
    ) -> io::Result<()> {
        write_response_frame(io, &response).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::io::Cursor;
    use libp2p::request_response::Codec;

    async fn round_trip(response: Response) -> io::Result<Response> {
        let mut wire = Cursor::new(Vec::new());
        ExchangeCodec
            .write_response(&PROTOCOL, &mut wire, response)
            .await?;
        let mut wire = Cursor::new(wire.into_inner());
        ExchangeCodec.read_response(&PROTOCOL, &mut wire).await
    }

    #[tokio::test]
    async fn responses_read_back_whole() {
        for len in [0, 1, 10, 11, 12, 300, 1 << 20] {
            let chunk = Response::Chunk((0..len).map(|i| i as u8).collect());
            assert_eq!(round_trip(chunk.clone()).await.unwrap(), chunk);
        }
        for response in [
            Response::Busy,
            Response::BusySpreading,
            Response::NotFound,
            Response::Fetching,
        ] {
            assert_eq!(round_trip(response.clone()).await.unwrap(), response);
        }
    }

    #[tokio::test]
    async fn chunk_answers_read_back_whole_and_match_the_responses() {
        let buffers = ChunkBuffers::default();
        for len in [0, 1, 10, 11, 12, 300, 1 << 20] {
            let bytes: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let answers = [
                ChunkAnswer::Chunk(Bytes::from(bytes)),
                ChunkAnswer::Busy(BusyReason::Egress),
                ChunkAnswer::Busy(BusyReason::SuperSeeding),
                ChunkAnswer::NotFound,
            ];
            for answer in answers {
                let mut wire = Cursor::new(Vec::new());
                write_chunk_answer(&mut wire, &answer).await.unwrap();
                let written = wire.into_inner();
                // The same bytes as the request-response protocol sends.
                let mut response = Cursor::new(Vec::new());
                write_response_frame(&mut response, &answer.clone().into_response())
                    .await
                    .unwrap();
                assert_eq!(written, response.into_inner());
                let read = read_chunk_answer(&mut Cursor::new(written), &buffers).await;
                assert_eq!(read.unwrap(), answer);
            }
        }
    }

    /// Records where each write call starts, as a lane's record boundaries would.
    #[derive(Default)]
    struct WriteStarts {
        written: Vec<u8>,
        starts: Vec<usize>,
    }

    impl futures_util::AsyncWrite for WriteStarts {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let this = self.get_mut();
            this.starts.push(this.written.len());
            this.written.extend_from_slice(buf);
            std::task::Poll::Ready(Ok(buf.len()))
        }

        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }

        fn poll_close(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    /// The reader takes a chunk frame's length and first `FRAME_HEAD_BYTES` in two reads and
    /// the rest in a third: the writer starts a write where that third read starts, so that a
    /// lane's records of the chunk open straight into the reader's buffer.
    #[tokio::test]
    async fn a_chunk_is_written_from_where_its_reader_reads_it_whole() {
        for len in [0, 3, 4, 5, 300, 1 << 20] {
            let answer = ChunkAnswer::Chunk(Bytes::from(vec![9u8; len]));
            let mut wire = WriteStarts::default();
            write_chunk_answer(&mut wire, &answer).await.unwrap();
            let frame_len = wire.written.len() - 4;
            let head_read = 4 + frame_len.min(wire::FRAME_HEAD_BYTES);
            if head_read < wire.written.len() {
                assert!(wire.starts.contains(&head_read), "{len}: {:?}", wire.starts);
            }
            let buffers = ChunkBuffers::default();
            let read = read_chunk_answer(&mut Cursor::new(wire.written), &buffers).await;
            assert_eq!(read.unwrap(), answer);
        }
    }

    /// Hands out what it holds at most `piece` bytes per read, as a stream does.
    struct Pieces {
        wire: Cursor<Vec<u8>>,
        piece: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let this = self.get_mut();
            let piece = buf.len().min(this.piece);
            std::pin::Pin::new(&mut this.wire).poll_read(cx, &mut buf[..piece])
        }
    }

    #[tokio::test]
    async fn a_chunk_read_in_pieces_reads_back_whole() {
        let bytes: Vec<u8> = (0..(1 << 20) + 17).map(|i| (i * 7) as u8).collect();
        let answer = ChunkAnswer::Chunk(Bytes::from(bytes));
        let mut wire = Cursor::new(Vec::new());
        write_chunk_answer(&mut wire, &answer).await.unwrap();
        for piece in [1, 3, 1000, 65_536, 300_001] {
            let mut pieces = Pieces {
                wire: Cursor::new(wire.get_ref().clone()),
                piece,
            };
            let read = read_chunk_answer(&mut pieces, &ChunkBuffers::default()).await;
            assert_eq!(read.unwrap(), answer, "pieces of {piece}");
        }
    }

    /// On a lane, bitfield answers and chunk answers share the link, in order.
    #[tokio::test]
    async fn link_answers_of_both_kinds_read_back_in_order() {
        let have = Response::Have {
            blob_size: 10 << 20,
            chunk_bytes: 1 << 20,
            chunks: shoal_protocol::Bitmap::new(10),
            complete: false,
        };
        let chunk = ChunkAnswer::Chunk(Bytes::from(vec![7u8; 5000]));
        let mut wire = Cursor::new(Vec::new());
        for answer in [
            LinkAnswer::Response(have.clone()),
            LinkAnswer::Chunk(chunk.clone()),
            LinkAnswer::Response(Response::NotFound),
        ] {
            write_link_answer(&mut wire, &answer).await.unwrap();
        }
        let mut wire = Cursor::new(wire.into_inner());
        let buffers = ChunkBuffers::default();
        assert_eq!(read_response_frame(&mut wire).await.unwrap(), have);
        assert_eq!(read_chunk_answer(&mut wire, &buffers).await.unwrap(), chunk);
        assert_eq!(
            read_response_frame(&mut wire).await.unwrap(),
            Response::NotFound
        );
    }

    #[tokio::test]
    async fn a_chunk_link_refuses_answers_that_are_not_about_chunks() {
        let mut wire = Cursor::new(Vec::new());
        write_response_frame(&mut wire, &Response::Fetching)
            .await
            .unwrap();
        let mut wire = Cursor::new(wire.into_inner());
        let read = read_chunk_answer(&mut wire, &ChunkBuffers::default()).await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn a_chunk_frame_cut_short_is_an_error() {
        let frame = wire::encode(&Response::Chunk(vec![1; 1000])).unwrap();
        let mut bytes = (frame.len() as u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame[..frame.len() - 1]);
        let read = ExchangeCodec
            .read_response(&PROTOCOL, &mut Cursor::new(bytes))
            .await;
        assert!(read.is_err());
        let mut bytes = (RESPONSE_BYTES_MAX as u32 + 1).to_be_bytes().to_vec();
        bytes.extend_from_slice(&frame);
        let read = ExchangeCodec
            .read_response(&PROTOCOL, &mut Cursor::new(bytes))
            .await;
        assert_eq!(read.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
