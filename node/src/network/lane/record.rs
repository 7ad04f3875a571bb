//! The record layer of a lane: a TCP stream carried in AES-128-GCM records, one key per
//! direction, each record's nonce its number in that direction.
//!
//! A record on the wire is `length: u32 BE`, then `length` bytes of ciphertext and its 16-byte
//! tag; the length is the record's associated data. A record that fails to open (a changed,
//! reordered, replayed or foreign byte) ends the stream with an error; nothing of it is read.
//!
//! Records are up to [`RECORD_PLAINTEXT_MAX`] bytes, with one buffer per direction, held only
//! while a record is in it ([`RecordBuffer`]): a fan-out member keeps a lane to each of dozens
//! of peers, and a buffer per idle lane was a quarter of its fresh memory. A large
//! write is sealed from the caller's buffer into the outgoing one, and a record read into a
//! buffer at least its plaintext's size is opened straight into it: a chunk costs the sealing
//! and the opening, no copy besides. Small writes gather into one record; a read smaller than
//! the next record opens it in place and copies out of it, so the chunk links' codec writes a
//! chunk's first bytes with its frame's head, where the reader takes them
//! (`network/codec.rs`), and each of the chunk's records meets a read of its own size or more.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use aws_lc_rs::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use futures_util::{AsyncRead, AsyncWrite};
use tokio::io::ReadBuf;
use tokio::net::TcpStream;

use crate::network::buffers::{ChunkBuffer, ChunkBuffers};

/// Bytes of a key: AES-128.
pub const KEY_BYTES: usize = 16;
/// Plaintext bytes per record. Large enough that sealing, opening and the system calls run a
/// few times per 1 MiB chunk; small enough that the receiver opens one record while the next
/// is on the wire.
pub const RECORD_PLAINTEXT_MAX: usize = 256 * 1024;
const TAG_BYTES: usize = 16;
const HEAD_BYTES: usize = 4;
const RECORD_BYTES_MAX: usize = HEAD_BYTES + RECORD_PLAINTEXT_MAX + TAG_BYTES;
/// Writes of at least this many bytes are sealed from the caller's buffer as records of their
/// own (after what was gathered before them); smaller ones are gathered.
const DIRECT_WRITE_MIN: usize = 16 * 1024;

/// The two keys of a lane: what the asking side sends with, and what the serving side does.
#[derive(Clone, PartialEq, Eq)]
pub struct LaneKeys {
    pub asker_to_server: [u8; KEY_BYTES],
    pub server_to_asker: [u8; KEY_BYTES],
}

impl std::fmt::Debug for LaneKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LaneKeys(..)")
    }
}

/// Which end of the lane this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    Asker,
    Server,
}

/// One direction's key and the number of the next record.
struct Direction {
    key: LessSafeKey,
    sequence: u64,
}

impl Direction {
    fn new(key: &[u8; KEY_BYTES]) -> Direction {
        let key = UnboundKey::new(&AES_128_GCM, key).expect("a 16-byte key fits AES-128-GCM");
        Direction {
            key: LessSafeKey::new(key),
            sequence: 0,
        }
    }

    fn next_nonce(&mut self) -> Nonce {
        let mut nonce = [0u8; 12];
        nonce[4..].copy_from_slice(&self.sequence.to_be_bytes());
        self.sequence += 1;
        Nonce::assume_unique_for_key(nonce)
    }
}

/// A lane's TCP stream with its records sealed and opened; futures' `AsyncRead` and
/// `AsyncWrite` over the plaintext.
///
/// A large write is sealed from the caller's buffer straight into the outgoing record, and a
/// record whose plaintext fits the caller's buffer is opened straight into it: the cipher does
/// the copy. Small writes (a frame's head) gather in the record first.
pub struct SealedStream {
    tcp: TcpStream,
    sending: Direction,
    /// The outgoing record: `HEAD_BYTES` for its length, then `buffered` bytes of plaintext
    /// being gathered, or, once sealed, `sealed` bytes being written out from `sent`.
    outgoing: RecordBuffer,
    buffered: usize,
    sealed: usize,
    sent: usize,
    receiving: Direction,
    /// The head of the record being read, kept apart so that a lane waiting for its next
    /// record holds no buffer.
    incoming_head: [u8; HEAD_BYTES],
    /// The record being read (`received` bytes so far, the head's included, the rest from
    /// `HEAD_BYTES` on), then its opened plaintext from `plain_start` to `plain_end`.
    incoming: RecordBuffer,
    received: usize,
    plain_start: usize,
    plain_end: usize,
}

impl std::fmt::Debug for SealedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedStream")
            .field("tcp", &self.tcp)
            .finish_non_exhaustive()
    }
}

impl SealedStream {
    /// A lane over `tcp`, its record buffers lent by `buffers`.
    pub fn new(tcp: TcpStream, keys: &LaneKeys, end: End, buffers: &ChunkBuffers) -> SealedStream {
        let (sending, receiving) = match end {
            End::Asker => (&keys.asker_to_server, &keys.server_to_asker),
            End::Server => (&keys.server_to_asker, &keys.asker_to_server),
        };
        SealedStream {
            tcp,
            sending: Direction::new(sending),
            outgoing: RecordBuffer::new(buffers),
            buffered: 0,
            sealed: 0,
            sent: 0,
            receiving: Direction::new(receiving),
            incoming_head: [0; HEAD_BYTES],
            incoming: RecordBuffer::new(buffers),
            received: 0,
            plain_start: 0,
            plain_end: 0,
        }
    }

    /// Writes the outgoing record's length, `plaintext` bytes and the tag; the next nonce.
    fn head(&mut self, plaintext: usize) -> (Nonce, [u8; HEAD_BYTES]) {
        let length = u32::try_from(plaintext + TAG_BYTES).expect("a record is far below 4 GiB");
        let head = length.to_be_bytes();
        self.outgoing.lent()[..HEAD_BYTES].copy_from_slice(&head);
        self.sealed = HEAD_BYTES + plaintext + TAG_BYTES;
        self.sent = 0;
        (self.sending.next_nonce(), head)
    }

    /// Seals the plaintext gathered in the outgoing record, if there is any.
    fn seal_buffered(&mut self) {
        if self.sealed > 0 || self.buffered == 0 {
            return;
        }
        let plaintext = std::mem::take(&mut self.buffered);
        let (nonce, head) = self.head(plaintext);
        let (body, tag) = self.outgoing.lent()[HEAD_BYTES..].split_at_mut(plaintext);
        let sealed = self
            .sending
            .key
            .seal_in_place_separate_tag(nonce, Aad::from(head), body)
            .expect("sealing a record within AES-GCM's limits");
        tag[..TAG_BYTES].copy_from_slice(sealed.as_ref());
    }

    /// Seals `plaintext` (at most a record's worth, nothing gathered) from where it is into
    /// the outgoing record.
    fn seal_from(&mut self, plaintext: &[u8]) {
        let (nonce, head) = self.head(plaintext.len());
        let (body, tag) = self.outgoing.lent()[HEAD_BYTES..].split_at_mut(plaintext.len());
        self.sending
            .key
            .seal_out_of_place_scatter(
                nonce,
                Aad::from(head),
                plaintext,
                body,
                &[],
                &mut tag[..TAG_BYTES],
            )
            .expect("sealing a record within AES-GCM's limits");
    }

    /// Writes out the sealed record, if there is one; ready once it is all on the socket.
    fn poll_send_sealed(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sealed > 0 {
            let unsent = &self.outgoing.lent()[self.sent..self.sealed];
            let written = ready!(tokio::io::AsyncWrite::poll_write(
                Pin::new(&mut self.tcp),
                cx,
                unsent
            ))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += written;
            if self.sent == self.sealed {
                self.sealed = 0;
            }
        }
        if self.buffered == 0 {
            self.outgoing.give_back();
        }
        Poll::Ready(Ok(()))
    }

    /// Reads the record until `until` bytes of it are in; `Ok(false)` at a clean end of the
    /// stream before any byte of a record.
    fn poll_fill(&mut self, cx: &mut Context<'_>, until: usize) -> Poll<io::Result<bool>> {
        while self.received < until {
            let unread = if self.received < HEAD_BYTES {
                &mut self.incoming_head[self.received..until.min(HEAD_BYTES)]
            } else {
                &mut self.incoming.lent()[self.received..until]
            };
            let mut buffer = ReadBuf::new(unread);
            ready!(tokio::io::AsyncRead::poll_read(
                Pin::new(&mut self.tcp),
                cx,
                &mut buffer
            ))?;
            let read = buffer.filled().len();
            if read == 0 {
                if self.received == 0 {
                    return Poll::Ready(Ok(false));
                }
                return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
            }
            self.received += read;
        }
        Poll::Ready(Ok(true))
    }

    /// Reads the next record whole; its length (ciphertext and tag), or `None` at a clean end
    /// of the stream.
    fn poll_next_record(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<usize>>> {
        if !ready!(self.poll_fill(cx, HEAD_BYTES))? {
            return Poll::Ready(Ok(None));
        }
        let length = u32::from_be_bytes(self.incoming_head) as usize;
        if !(TAG_BYTES..=RECORD_PLAINTEXT_MAX + TAG_BYTES).contains(&length) {
            return Poll::Ready(Err(invalid(format!("a lane record of {length} bytes"))));
        }
        ready!(self.poll_fill(cx, HEAD_BYTES + length))?;
        self.received = 0;
        Poll::Ready(Ok(Some(length)))
    }

    /// Opens the record just read into `out`, which is exactly its plaintext's length.
    fn open_into(&mut self, length: usize, out: &mut [u8]) -> io::Result<()> {
        let nonce = self.receiving.next_nonce();
        let (ciphertext, tag) =
            self.incoming.lent()[HEAD_BYTES..HEAD_BYTES + length].split_at(out.len());
        self.receiving
            .key
            .open_separate_gather(nonce, Aad::from(self.incoming_head), ciphertext, tag, out)
            .map_err(|_| invalid("a lane record failed authentication"))
    }

    /// Opens the record just read where it is, for reads smaller than it.
    fn open_in_place(&mut self, length: usize) -> io::Result<()> {
        let nonce = self.receiving.next_nonce();
        let record = &mut self.incoming.lent()[HEAD_BYTES..HEAD_BYTES + length];
        let plain = self
            .receiving
            .key
            .open_in_place(nonce, Aad::from(self.incoming_head), record)
            .map_err(|_| invalid("a lane record failed authentication"))?;
        self.plain_start = HEAD_BYTES;
        self.plain_end = HEAD_BYTES + plain.len();
        Ok(())
    }
}

/// A record buffer lent by the pool while a record is in it, and given back between records.
struct RecordBuffer {
    pool: ChunkBuffers,
    lent: Option<ChunkBuffer>,
}

impl RecordBuffer {
    fn new(pool: &ChunkBuffers) -> RecordBuffer {
        RecordBuffer {
            pool: pool.clone(),
            lent: None,
        }
    }

    /// The buffer, taken from the pool if it is not held yet.
    fn lent(&mut self) -> &mut ChunkBuffer {
        self.lent
            .get_or_insert_with(|| self.pool.take(RECORD_BYTES_MAX))
    }

    /// Gives the buffer back: nothing in it is needed any more.
    fn give_back(&mut self) {
        self.lent = None;
    }
}

fn invalid(error: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error.into())
}

impl AsyncRead for SealedStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let read = this.poll_read_records(cx, buf);
        if this.received <= HEAD_BYTES && this.plain_start == this.plain_end {
            this.incoming.give_back();
        }
        read
    }
}

impl SealedStream {
    /// Reads plaintext into `buf` from what is left of the record in hand, else from the next
    /// records (opening one straight into `buf` when it fits).
    fn poll_read_records(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        while self.plain_start == self.plain_end {
            if buf.is_empty() {
                return Poll::Ready(Ok(0));
            }
            let Some(length) = ready!(self.poll_next_record(cx))? else {
                return Poll::Ready(Ok(0));
            };
            let plaintext = length - TAG_BYTES;
            if plaintext == 0 {
                // Nothing to hand out (and `Ok(0)` would read as the end): authenticate it.
                self.open_in_place(length)?;
            } else if plaintext <= buf.len() {
                self.open_into(length, &mut buf[..plaintext])?;
                return Poll::Ready(Ok(plaintext));
            } else {
                self.open_in_place(length)?;
            }
        }
        let taken = buf.len().min(self.plain_end - self.plain_start);
        buf[..taken]
            .copy_from_slice(&self.incoming.lent()[self.plain_start..self.plain_start + taken]);
        self.plain_start += taken;
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for SealedStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        ready!(this.poll_send_sealed(cx))?;
        if buf.len() >= DIRECT_WRITE_MIN {
            this.seal_buffered();
            ready!(this.poll_send_sealed(cx))?;
            let taken = buf.len().min(RECORD_PLAINTEXT_MAX);
            this.seal_from(&buf[..taken]);
            return Poll::Ready(Ok(taken));
        }
        let taken = buf.len().min(RECORD_PLAINTEXT_MAX - this.buffered);
        let at = HEAD_BYTES + this.buffered;
        this.outgoing.lent()[at..at + taken].copy_from_slice(&buf[..taken]);
        this.buffered += taken;
        if this.buffered == RECORD_PLAINTEXT_MAX {
            this.seal_buffered();
        }
        Poll::Ready(Ok(taken))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.seal_buffered();
        ready!(this.poll_send_sealed(cx))?;
        tokio::io::AsyncWrite::poll_flush(Pin::new(&mut this.tcp), cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.as_mut().poll_flush(cx))?;
        tokio::io::AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().tcp), cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{AsyncReadExt, AsyncWriteExt};
    use tokio::io::AsyncWriteExt as _;
    use tokio::net::TcpListener;

    use super::*;

    fn keys(seed: u8) -> LaneKeys {
        LaneKeys {
            asker_to_server: [seed; KEY_BYTES],
            server_to_asker: [seed.wrapping_add(1); KEY_BYTES],
        }
    }

    async fn tcp_pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let (asker, server) = tokio::join!(TcpStream::connect(address), listener.accept());
        (asker.unwrap(), server.unwrap().0)
    }

    async fn sealed_pair(
        asker_keys: &LaneKeys,
        server_keys: &LaneKeys,
    ) -> (SealedStream, SealedStream) {
        let (asker, server) = tcp_pair().await;
        (
            SealedStream::new(asker, asker_keys, End::Asker, &ChunkBuffers::default()),
            SealedStream::new(server, server_keys, End::Server, &ChunkBuffers::default()),
        )
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_across_many_records() {
        let (mut asker, mut server) = sealed_pair(&keys(1), &keys(1)).await;
        let sent: Vec<u8> = (0..3 * RECORD_PLAINTEXT_MAX + 12_345)
            .map(|i| (i % 251) as u8)
            .collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            server.write_all(&sent).await.unwrap();
            server.flush().await.unwrap();
            let mut answer = [0u8; 5];
            server.read_exact(&mut answer).await.unwrap();
            answer
        });
        let mut received = vec![0u8; expected.len()];
        asker.read_exact(&mut received).await.unwrap();
        assert_eq!(received, expected);
        asker.write_all(b"thank").await.unwrap();
        asker.flush().await.unwrap();
        assert_eq!(&writer.await.unwrap(), b"thank");
    }

    /// Small writes gather, large ones are sealed where they are; reads smaller than a record
    /// are served from it, larger ones get records opened into them: every mix reads back.
    #[tokio::test]
    async fn small_and_large_writes_and_reads_interleave() {
        let (mut asker, mut server) = sealed_pair(&keys(7), &keys(7)).await;
        let writes = [
            3,
            70_000,
            5,
            RECORD_PLAINTEXT_MAX + 7,
            1,
            40_000,
            16 * 1024,
            2,
        ];
        let total: usize = writes.iter().sum();
        let sent: Vec<u8> = (0..total).map(|i| (i % 253) as u8).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            let mut at = 0;
            for (i, size) in writes.into_iter().enumerate() {
                server.write_all(&sent[at..at + size]).await.unwrap();
                at += size;
                if i % 3 == 0 {
                    server.flush().await.unwrap();
                }
            }
            server.close().await.unwrap();
        });
        let mut received = Vec::new();
        let reads = [2, 100, 300_000, 7, RECORD_PLAINTEXT_MAX, 1];
        for size in reads.iter().cycle() {
            let mut buffer = vec![0u8; *size];
            let read = asker.read(&mut buffer).await.unwrap();
            if read == 0 {
                break;
            }
            received.extend_from_slice(&buffer[..read]);
        }
        writer.await.unwrap();
        assert_eq!(received.len(), expected.len());
        assert!(received == expected, "the bytes differ");
    }

    /// A lane holds a buffer only while a record is in it, and gives it back between records.
    #[tokio::test]
    async fn a_lane_between_records_holds_no_buffer() {
        let pool = ChunkBuffers::default();
        let (asker, server) = tcp_pair().await;
        let mut asker = SealedStream::new(asker, &keys(3), End::Asker, &pool);
        let mut server = SealedStream::new(server, &keys(3), End::Server, &pool);
        let length = 2 * RECORD_PLAINTEXT_MAX + 100;
        let writer = tokio::spawn(async move {
            server.write_all(&vec![9u8; length]).await.unwrap();
            server.flush().await.unwrap();
            server
        });
        let mut first = [0u8; 10];
        asker.read_exact(&mut first).await.unwrap();
        assert!(
            asker.incoming.lent.is_some(),
            "the rest of the record is in the buffer"
        );
        let mut rest = vec![0u8; length - first.len()];
        asker.read_exact(&mut rest).await.unwrap();
        let server = writer.await.unwrap();
        assert!(first.iter().chain(&rest).all(|&byte| byte == 9));
        for (end, stream) in [("asker", &asker), ("server", &server)] {
            assert!(
                stream.incoming.lent.is_none() && stream.outgoing.lent.is_none(),
                "the {end} holds a buffer between records"
            );
        }
    }

    #[tokio::test]
    async fn a_clean_close_reads_as_the_end() {
        let (mut asker, mut server) = sealed_pair(&keys(2), &keys(2)).await;
        server.write_all(b"last words").await.unwrap();
        server.close().await.unwrap();
        let mut received = Vec::new();
        asker.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"last words");
    }

    #[tokio::test]
    async fn a_stream_sealed_with_other_keys_is_refused() {
        let (mut asker, mut server) = sealed_pair(&keys(3), &keys(4)).await;
        server.write_all(b"from a stranger").await.unwrap();
        server.flush().await.unwrap();
        let mut received = [0u8; 4];
        let error = asker.read_exact(&mut received).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    /// Records written by hand over a raw socket: a changed byte, a replayed record and an
    /// oversized length each end the stream, and nothing of the bad record is read.
    #[tokio::test]
    async fn changed_replayed_and_oversized_records_are_refused() {
        let lane_keys = keys(5);
        let record = |sequence: u64, plain: &[u8]| {
            let mut direction = Direction::new(&lane_keys.server_to_asker);
            direction.sequence = sequence;
            let length = (plain.len() + TAG_BYTES) as u32;
            let mut body = plain.to_vec();
            let nonce = direction.next_nonce();
            let aad = Aad::from(length.to_be_bytes());
            let tag = direction
                .key
                .seal_in_place_separate_tag(nonce, aad, &mut body)
                .unwrap();
            let mut wire = length.to_be_bytes().to_vec();
            wire.extend_from_slice(&body);
            wire.extend_from_slice(tag.as_ref());
            wire
        };
        let first = record(0, b"first");
        let mut changed = record(1, b"second");
        changed[HEAD_BYTES] ^= 1;
        let oversized = ((RECORD_PLAINTEXT_MAX + TAG_BYTES + 1) as u32)
            .to_be_bytes()
            .to_vec();
        for bad in [changed, first.clone(), oversized] {
            let (asker, mut raw_server) = tcp_pair().await;
            let mut asker =
                SealedStream::new(asker, &lane_keys, End::Asker, &ChunkBuffers::default());
            raw_server.write_all(&first).await.unwrap();
            raw_server.write_all(&bad).await.unwrap();
            raw_server.flush().await.unwrap();
            let mut received = [0u8; 5];
            asker.read_exact(&mut received).await.unwrap();
            assert_eq!(&received, b"first");
            let error = asker.read(&mut [0u8; 16]).await.unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        }
    }

    /// An empty record is authenticated and skipped, not taken for the end of the stream.
    #[tokio::test]
    async fn an_empty_record_is_not_the_end() {
        let lane_keys = keys(8);
        let mut direction = Direction::new(&lane_keys.server_to_asker);
        let mut wire = Vec::new();
        for plain in [&b""[..], b"x"] {
            let length = (plain.len() + TAG_BYTES) as u32;
            let mut body = plain.to_vec();
            let nonce = direction.next_nonce();
            let tag = direction
                .key
                .seal_in_place_separate_tag(nonce, Aad::from(length.to_be_bytes()), &mut body)
                .unwrap();
            wire.extend_from_slice(&length.to_be_bytes());
            wire.extend_from_slice(&body);
            wire.extend_from_slice(tag.as_ref());
        }
        let (asker, mut raw_server) = tcp_pair().await;
        let mut asker = SealedStream::new(asker, &lane_keys, End::Asker, &ChunkBuffers::default());
        raw_server.write_all(&wire).await.unwrap();
        drop(raw_server);
        let mut received = Vec::new();
        asker.read_to_end(&mut received).await.unwrap();
        assert_eq!(received, b"x");
    }

    #[tokio::test]
    async fn a_record_cut_short_is_an_error() {
        let (asker, mut raw_server) = tcp_pair().await;
        let mut asker = SealedStream::new(asker, &keys(6), End::Asker, &ChunkBuffers::default());
        raw_server.write_all(&100u32.to_be_bytes()).await.unwrap();
        raw_server.write_all(&[0u8; 50]).await.unwrap();
        drop(raw_server);
        let error = asker.read(&mut [0u8; 16]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::UnexpectedEof);
    }
}
