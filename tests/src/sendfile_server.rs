//! The loopback ceiling for blob serving: a minimal HTTP/1.1 server that hands files to the
//! kernel with sendfile(2), so the bytes go from the page cache to the socket without being
//! copied through user space; or, with [`Transfer::ReadWrite`], the plain read(2)/write(2) loop
//! through one buffer that any user-space server does at best.
//!
//! What it is for: benchmarks that report how close a gateway comes to what this machine can
//! serve at all. The same client fetches the same files from it as from the server under test.
//! (On loopback, sendfile is not always the faster of the two: the receiver then copies from
//! page-cache fragments, and curl receives a read/write server's bytes faster; see
//! docs/benchmarks.md.)
//! What it is not: a registry. It answers `GET` and `HEAD` of any path whose last segment is a
//! digest (`/v2/<name>/blobs/sha256:<hex>`, `/sha256:<hex>` or plain `/<hex>`) with the file
//! `<root>/<hex>`, so point it at an OCI layout's `blobs/sha256`; everything else is a 404. No
//! ranges, no manifests, no auth.
//!
//! Data flow: one accept thread on 127.0.0.1:0, one thread per connection. A connection reads a
//! request head, answers it, and keeps the connection open (HTTP/1.1 keep-alive) until the
//! client closes it or asks `Connection: close`. Dropping the server stops accepting, shuts
//! every open connection down and joins every thread.

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;

use anyhow::Context;

/// Largest request head accepted; a blob GET from curl or skopeo is a few hundred bytes.
const MAX_HEAD_BYTES: usize = 16 * 1024;

/// Largest count passed to one sendfile call: Linux transfers at most 0x7ffff000 bytes per call.
const SENDFILE_CALL_BYTES: usize = 0x7fff_f000;

/// How the server moves a file's bytes to the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transfer {
    /// sendfile(2): from the page cache to the socket inside the kernel, no user-space copy.
    #[default]
    Sendfile,
    /// read(2) into a user-space buffer of this many bytes, then write(2) of it: what a plain
    /// user-space server does, for comparison with sendfile.
    ReadWrite(usize),
}

/// A running sendfile server. Dropping it stops it.
#[derive(Debug)]
pub struct SendfileServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_thread: Option<JoinHandle<()>>,
}

#[derive(Debug)]
struct Shared {
    root: PathBuf,
    transfer: Transfer,
    stopping: AtomicBool,
    /// Open connections (a clone of each socket, to shut it down) and their threads.
    connections: Mutex<Vec<(TcpStream, JoinHandle<()>)>>,
}

impl SendfileServer {
    /// Serves the files directly inside `root` on an ephemeral port of 127.0.0.1, with
    /// sendfile(2).
    pub fn start(root: &Path) -> anyhow::Result<SendfileServer> {
        Self::start_with(root, Transfer::Sendfile)
    }

    /// [`SendfileServer::start`] moving the bytes as `transfer` says.
    pub fn start_with(root: &Path, transfer: Transfer) -> anyhow::Result<SendfileServer> {
        if let Transfer::ReadWrite(buffer) = transfer {
            anyhow::ensure!(buffer > 0, "a read/write buffer needs at least one byte");
        }
        anyhow::ensure!(root.is_dir(), "{} is not a directory", root.display());
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("sendfile server cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            root: root.to_owned(),
            transfer,
            stopping: AtomicBool::new(false),
            connections: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_thread = std::thread::Builder::new()
            .name("sendfile-accept".into())
            .spawn(move || accept_loop(&listener, &accept_shared))?;
        Ok(SendfileServer {
            addr,
            shared,
            accept_thread: Some(accept_thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for SendfileServer {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wake the blocked accept() with a connection of our own; it sees the flag and returns.
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.accept_thread.take() {
            let _ = thread.join();
        }
        let connections = std::mem::take(
            &mut *self
                .shared
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for (stream, _) in &connections {
            let _ = stream.shutdown(Shutdown::Both);
        }
        for (_, thread) in connections {
            let _ = thread.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let connection_shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("sendfile-conn".into())
            .spawn(move || {
                // A client that goes away mid-transfer is no error worth reporting here.
                let _ = serve_connection(stream, &connection_shared);
            });
        let Ok(thread) = spawned else { continue };
        let mut connections = shared
            .connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        // Forget connections that have ended, so a long benchmark does not accumulate them.
        let (done, open): (Vec<_>, Vec<_>) = std::mem::take(&mut *connections)
            .into_iter()
            .partition(|(_, thread)| thread.is_finished());
        *connections = open;
        connections.push((handle, thread));
        drop(connections);
        for (_, thread) in done {
            let _ = thread.join();
        }
    }
}

/// Answers requests on one connection until the client closes it or asks to.
fn serve_connection(mut stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nodelay(true)?;
    let mut buffered = Vec::new();
    loop {
        let Some(head) = read_head(&mut stream, &mut buffered)? else {
            return Ok(());
        };
        let request = Request::parse(&head);
        let keep_alive = request.as_ref().is_some_and(|request| request.keep_alive);
        match request {
            Some(request) if request.method == "GET" || request.method == "HEAD" => {
                respond_with_file(&mut stream, shared, &request)?;
            }
            Some(_) => respond_status(&mut stream, "405 Method Not Allowed", false)?,
            None => {
                respond_status(&mut stream, "400 Bad Request", false)?;
                return Ok(());
            }
        }
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads up to the end of a request head (`\r\n\r\n`), keeping any bytes after it (a pipelined
/// next request) in `buffered`. `None` when the client closed the connection between requests.
fn read_head(stream: &mut TcpStream, buffered: &mut Vec<u8>) -> io::Result<Option<String>> {
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = find(buffered, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffered[..end]).into_owned();
            buffered.drain(..end + 4);
            return Ok(Some(head));
        }
        if buffered.len() > MAX_HEAD_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "request head too large",
            ));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return if buffered.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buffered.extend_from_slice(&chunk[..n]);
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

#[derive(Debug)]
struct Request {
    method: String,
    path: String,
    keep_alive: bool,
}

impl Request {
    fn parse(head: &str) -> Option<Request> {
        let mut lines = head.split("\r\n");
        let mut request_line = lines.next()?.split_whitespace();
        let method = request_line.next()?.to_owned();
        let target = request_line.next()?;
        let version = request_line.next()?;
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        let mut keep_alive = version == "HTTP/1.1";
        for line in lines {
            if let Some((name, value)) = line.split_once(':')
                && name.trim().eq_ignore_ascii_case("connection")
            {
                let value = value.trim();
                if value.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if value.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
        Some(Request {
            method,
            path: path.to_owned(),
            keep_alive,
        })
    }
}

/// The file a request path names: its last segment, minus any `sha256:`, must be 64 lowercase
/// hex digits (so nothing outside `root` can be named).
fn file_for(root: &Path, path: &str) -> Option<PathBuf> {
    let last = path.rsplit('/').next()?;
    let hex = last.strip_prefix("sha256:").unwrap_or(last);
    let is_hex = hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    is_hex.then(|| root.join(hex))
}

fn respond_with_file(stream: &mut TcpStream, shared: &Shared, request: &Request) -> io::Result<()> {
    let file = file_for(&shared.root, &request.path).and_then(|path| File::open(path).ok());
    let Some(file) = file else {
        return respond_status(stream, "404 Not Found", request.keep_alive);
    };
    let size = file.metadata()?.len();
    let connection = if request.keep_alive {
        "keep-alive"
    } else {
        "close"
    };
    let head = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {size}\r\n\
         Connection: {connection}\r\n\r\n"
    );
    stream.write_all(head.as_bytes())?;
    if request.method == "GET" {
        match shared.transfer {
            Transfer::Sendfile => send_whole_file(stream, &file, size)?,
            Transfer::ReadWrite(buffer) => copy_whole_file(stream, file, size, buffer)?,
        }
    }
    Ok(())
}

/// sendfile(2) until `size` bytes of `file` went to `stream`.
fn send_whole_file(stream: &TcpStream, file: &File, size: u64) -> io::Result<()> {
    let mut offset = 0u64;
    while offset < size {
        let count = usize::try_from(size - offset)
            .unwrap_or(usize::MAX)
            .min(SENDFILE_CALL_BYTES);
        let sent = rustix::fs::sendfile(stream, file, Some(&mut offset), count)?;
        if sent == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
    }
    Ok(())
}

/// read(2) and write(2) through a buffer of `buffer` bytes until `size` bytes went out.
fn copy_whole_file(stream: &mut TcpStream, file: File, size: u64, buffer: usize) -> io::Result<()> {
    let mut buffer = vec![0u8; buffer];
    let mut file = file;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(buffer.len());
        let n = file.read(&mut buffer[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being sent",
            ));
        }
        stream.write_all(&buffer[..n])?;
        left -= n as u64;
    }
    Ok(())
}

fn respond_status(stream: &mut TcpStream, status: &str, keep_alive: bool) -> io::Result<()> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let response =
        format!("HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: {connection}\r\n\r\n");
    stream.write_all(response.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_files_by_digest_and_refuses_other_paths() -> anyhow::Result<()> {
        serves_files_with(Transfer::Sendfile)
    }

    #[test]
    fn read_write_serves_the_same_bytes() -> anyhow::Result<()> {
        // A buffer smaller than the file and not dividing it: several reads, a short last one.
        serves_files_with(Transfer::ReadWrite(7_000))
    }

    fn serves_files_with(transfer: Transfer) -> anyhow::Result<()> {
        let dir = tempfile::TempDir::new()?;
        let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&content));
        std::fs::write(dir.path().join(&hex), &content)?;
        let server = SendfileServer::start_with(dir.path(), transfer)?;
        let url = server.url();
        for path in [
            format!("/v2/some/repo/blobs/sha256:{hex}"),
            format!("/sha256:{hex}"),
            format!("/{hex}"),
        ] {
            let (status, digest, len) = crate::http::get_digest(&format!("{url}{path}"))?;
            assert_eq!(status, 200, "{path}");
            assert_eq!(digest, format!("sha256:{hex}"));
            assert_eq!(len, content.len() as u64);
        }
        let missing = crate::http::get(&format!("{url}/{}", "0".repeat(64)), &[])?;
        assert_eq!(missing.status, 404);
        let traversal = crate::http::get(&format!("{url}/../etc/passwd"), &[])?;
        assert_eq!(traversal.status, 404);
        drop(server);
        Ok(())
    }

    #[test]
    fn drop_closes_idle_keep_alive_connections() -> anyhow::Result<()> {
        let dir = tempfile::TempDir::new()?;
        let server = SendfileServer::start(dir.path())?;
        let mut idle = TcpStream::connect(server.addr())?;
        idle.write_all(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")?;
        let mut answer = [0u8; 12];
        idle.read_exact(&mut answer)?;
        assert_eq!(&answer, b"HTTP/1.1 404");
        drop(server);
        // The server shut the connection down: reads reach end of stream instead of blocking.
        let mut rest = Vec::new();
        idle.read_to_end(&mut rest)?;
        Ok(())
    }
}
