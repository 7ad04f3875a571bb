//! The gateway's connection limits, over real sockets: [`shoal_gateway::serve`] with short
//! limits on an ephemeral loopback port, driven by raw TCP clients that misbehave — silent,
//! half-sent, oversized, not reading, too many — and a source that can be made to hang.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use shoal_gateway::{BlobStream, ContentSource, Manifest, OpenBlob, ServeLimits, SourceError};
use shoal_protocol::{Descriptor, Digest, RepoName, Tag, TagOrDigest};

/// Size of the blob every blob request gets: far more than socket buffers hold.
const BLOB_BYTES: u64 = 256 << 20;
const PIECE_BYTES: usize = 1 << 20;
/// Slack on every bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);

/// Serves a huge blob for any digest, hangs on manifests of `hang/*`, knows nothing else.
/// Counts blob streams alive, so a test sees when the server has let go of one.
#[derive(Clone, Default)]
struct Source {
    live_streams: Arc<AtomicUsize>,
}

/// Decrements the live count when the stream holding it is dropped.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl ContentSource for Source {
    async fn manifest(
        &self,
        repo: &RepoName,
        _: &TagOrDigest,
    ) -> Result<Option<Manifest>, SourceError> {
        if repo.path().starts_with("hang/") {
            std::future::pending::<()>().await;
        }
        Ok(None)
    }

    async fn open_blob(&self, _: &RepoName, _: &Digest) -> Result<Option<OpenBlob>, SourceError> {
        let live = self.live_streams.clone();
        Ok(Some(OpenBlob {
            size: BLOB_BYTES,
            read: Box::new(move |range| {
                live.fetch_add(1, Ordering::SeqCst);
                let guard = Live(live);
                let piece = Bytes::from(vec![0x5a; PIECE_BYTES]);
                let pieces = (range.end - range.start).div_ceil(PIECE_BYTES as u64);
                // The stream owns the guard: dropping the response drops it.
                let stream = futures_util::stream::iter((0..pieces).map(move |_| {
                    let _owned_by_the_stream = &guard;
                    Ok(piece.clone())
                }));
                Box::pin(stream) as BlobStream
            }),
        }))
    }

    async fn tags(&self, _: &RepoName) -> Result<Option<Vec<Tag>>, SourceError> {
        Ok(None)
    }

    async fn repositories(&self, _: &str) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }

    async fn referrers(
        &self,
        _: &RepoName,
        _: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, SourceError> {
        Ok(None)
    }
}

fn quick_limits() -> ServeLimits {
    ServeLimits {
        connections_max: 64,
        header_read_timeout: Duration::from_millis(500),
        header_bytes_max: 16 * 1024,
        write_stall_timeout: Duration::from_secs(1),
        response_head_timeout: Duration::from_millis(500),
    }
}

/// Starts a gateway with `limits`, for the rest of the test process.
fn start(limits: ServeLimits) -> (SocketAddr, Source) {
    let source = Source::default();
    let router = shoal_gateway::router(source.clone(), None);
    (common::serve_in_background(router, limits, None), source)
}

fn connect(address: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream
}

/// Reads until the server closes the connection (end of stream or reset); the bytes read.
fn read_until_closed(stream: &mut TcpStream) -> Vec<u8> {
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buffer) {
            Ok(0) => return received,
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return received,
            Err(error) => panic!("reading from the gateway: {error}"),
        }
    }
}

fn get(address: SocketAddr, path: &str) -> String {
    let mut stream = connect(address);
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned()
}

fn wait_until(what: &str, bound: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < bound,
            "{what} did not happen within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const BLOB_PATH: &str =
    "/v2/a/blobs/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[test]
fn a_client_that_sends_half_a_request_head_and_goes_silent_is_disconnected() {
    let limits = quick_limits();
    let (address, _) = start(limits.clone());
    let mut stream = connect(address);
    let started = Instant::now();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: gatew")
        .unwrap();
    let answer = read_until_closed(&mut stream);
    let elapsed = started.elapsed();
    assert!(
        elapsed >= limits.header_read_timeout - Duration::from_millis(50),
        "closed too early, after {elapsed:?}"
    );
    assert!(
        elapsed < limits.header_read_timeout + SLACK,
        "closed only after {elapsed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains(" 200 "),
        "{answer:?}"
    );
}

#[test]
fn a_silent_connection_and_an_idle_keep_alive_one_are_closed() {
    let limits = quick_limits();
    let (address, _) = start(limits.clone());
    // Says nothing at all.
    let mut silent = connect(address);
    let started = Instant::now();
    assert!(read_until_closed(&mut silent).is_empty());
    assert!(started.elapsed() < limits.header_read_timeout + SLACK);

    // One request answered, then nothing.
    let mut idle = connect(address);
    idle.write_all(b"GET /v2/ HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut idle)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(started.elapsed() < limits.header_read_timeout + SLACK);
}

#[test]
fn a_1_mib_header_is_refused() {
    let limits = quick_limits();
    let (address, _) = start(limits);
    let mut stream = connect(address);
    let mut head = b"GET /v2/ HTTP/1.1\r\nHost: gateway\r\nX-Padding: ".to_vec();
    head.resize(head.len() + (1 << 20), b'a');
    head.extend_from_slice(b"\r\n\r\n");
    // The server answers and closes once the limit is passed, so the rest of the head may
    // not be taken: write from another thread and read here.
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        let sent = writer.write_all(&head);
        let _ = writer.shutdown(Shutdown::Write);
        sent.is_ok()
    });
    let answer = String::from_utf8_lossy(&read_until_closed(&mut stream)).into_owned();
    let sent_whole_head = sender.join().unwrap();
    // Either the 431 arrived, or the server's close reset the connection before the client
    // could read it; never a normal answer.
    assert!(
        answer.starts_with("HTTP/1.1 431 ") || (answer.is_empty() && !sent_whole_head),
        "{answer:?} (whole head sent: {sent_whole_head})"
    );
    // The gateway still serves everyone else.
    assert!(get(address, "/v2/").starts_with("HTTP/1.1 200 "));
}

#[test]
fn a_client_that_stops_reading_a_blob_is_cut_off_and_the_blob_let_go() {
    let limits = quick_limits();
    let (address, source) = start(limits.clone());
    let mut stream = connect(address);
    write!(stream, "GET {BLOB_PATH} HTTP/1.1\r\nHost: gateway\r\n\r\n").unwrap();
    // The response starts...
    let mut first = [0u8; 12];
    stream.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert_eq!(source.live_streams.load(Ordering::SeqCst), 1);
    // ...then the client reads nothing more, holding its socket open: the server gives up on
    // it and drops the blob stream within the stall timeout.
    wait_until(
        "the stalled response to be dropped",
        limits.write_stall_timeout + SLACK,
        || source.live_streams.load(Ordering::SeqCst) == 0,
    );
    let rest = read_until_closed(&mut stream);
    assert!(
        (rest.len() as u64) < BLOB_BYTES,
        "the whole blob arrived after all"
    );
}

#[test]
fn a_slow_reader_still_gets_the_whole_blob_while_it_keeps_reading() {
    let (address, source) = start(quick_limits());
    let mut stream = connect(address);
    write!(
        stream,
        "GET {BLOB_PATH} HTTP/1.1\r\nHost: gateway\r\nRange: bytes=0-8388607\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // 8 MiB in 64 KiB reads with pauses well under the stall timeout between them.
    let mut received = Vec::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buffer).unwrap() {
            0 => break,
            n => received.extend_from_slice(&buffer[..n]),
        }
        if received.len() % (1 << 20) < (1 << 16) {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    let text = String::from_utf8_lossy(&received[..64]).into_owned();
    assert!(text.starts_with("HTTP/1.1 206 "), "{text}");
    let body_start = received.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert_eq!(received.len() - body_start, 8 << 20);
    assert_eq!(source.live_streams.load(Ordering::SeqCst), 0);
}

#[test]
fn a_handler_that_does_not_answer_in_time_gets_503() {
    let limits = quick_limits();
    let (address, _) = start(limits.clone());
    let started = Instant::now();
    let answer = get(address, "/v2/hang/forever/manifests/latest");
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(answer.contains("UNAVAILABLE"), "{answer}");
    assert!(started.elapsed() < limits.response_head_timeout + SLACK);
}

#[test]
fn connections_beyond_the_limit_wait_until_one_closes() {
    let limits = ServeLimits {
        connections_max: 2,
        header_read_timeout: Duration::from_secs(30),
        ..quick_limits()
    };
    let (address, _) = start(limits);
    let holders = [connect(address), connect(address)];
    // Both are accepted (they hold the two permits) before the third arrives.
    std::thread::sleep(Duration::from_millis(300));
    let mut waiting = connect(address);
    waiting
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let mut byte = [0u8; 1];
    let early = waiting.read(&mut byte);
    assert!(
        matches!(&early, Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "a third connection was served beyond the limit: {early:?}"
    );
    drop(holders);
    waiting
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let answer = String::from_utf8_lossy(&read_until_closed(&mut waiting)).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
}
