//! A bearer-token auth front for a real [`DockerRegistry`]: the challenge flow that Docker Hub
//! and ghcr.io use, on 127.0.0.1, so that Shoal's upstream client (and skopeo, containerd...)
//! can be tested end to end against it.
//!
//! What it is for: a `/v2/` endpoint that answers an unauthenticated request with
//! `401` + `WWW-Authenticate: Bearer realm=...,service=...,scope=...`, a token endpoint at
//! `/token` (optionally behind HTTP basic auth) that issues opaque tokens with a lifetime, and
//! counters that tell a test how often each step happened.
//! What it is not for: real security. Tokens are random hex strings, not JWTs; they are not
//! scoped (a valid token authorizes every repository); the requested scopes are only recorded.
//! Only `GET` and `HEAD` exist (pulls); every other method gets `405`. No TLS.
//!
//! Data flow: [`TokenAuthProxy::start`] binds `127.0.0.1:0` and runs an accept loop on its own
//! thread, which spawns one thread per connection (at most [`CONNECTIONS_MAX`]). A connection
//! thread reads HTTP/1.1 requests one after another (keep-alive) and:
//! - `/token`: checks basic credentials when configured, stores a fresh token with its expiry
//!   and answers `{"token", "access_token", "expires_in", "issued_at"}`;
//! - `/v2/...` without a valid, unexpired `Authorization: Bearer` token: `401` with the challenge
//!   and an OCI error body;
//! - `/v2/...` with one: the same method, path and query go to the registry through ureq (no
//!   redirects followed, 4xx/5xx not treated as errors), and its status, selected headers and
//!   body come back; the body is streamed through a fixed buffer, never held whole.
//!
//! Dropping the proxy sets a flag, connects to itself to wake the accept loop, which then shuts
//! down every open client socket and joins every connection thread before it returns; the drop
//! joins the accept loop.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest as _, Sha256};

use crate::clients::Credentials;
use crate::registry::DockerRegistry;

/// The `service` named in every challenge, as Docker Hub names `registry.docker.io`.
pub const SERVICE: &str = "shoal-test";

/// Live client connections at once; more are answered `503` and closed. Real clients open a
/// handful each (skopeo copies up to 6 blobs in parallel).
pub const CONNECTIONS_MAX: usize = 64;

/// A keep-alive connection idle this long is closed (Go clients keep idle connections 90 s).
const CONNECTION_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on one request's head (request line and headers); registries use 8–64 KiB.
const REQUEST_HEAD_BYTES_MAX: u64 = 64 << 10;

/// Bound on the number of request headers.
const REQUEST_HEADERS_MAX: usize = 100;

/// Bound on a request body that is read and discarded (GET/HEAD carry none in practice).
const REQUEST_BODY_BYTES_MAX: u64 = 1 << 20;

/// Buffer for relaying a registry body to the client: large enough that loopback copies are not
/// dominated by syscalls, small enough that memory per connection stays bounded.
const RELAY_BUFFER_BYTES: usize = 256 << 10;

/// Bound on connecting to the registry (on loopback it takes microseconds).
const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on waiting for the registry's response head; bodies are not bounded in time.
const UPSTREAM_RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);

/// Bound on the request log kept for [`TokenAuthProxy::requests`]; later requests are not
/// recorded (a test that makes more is a benchmark, and should not keep a log).
const REQUESTS_RECORDED_MAX: usize = 100_000;

/// Token lifetime when none is given: Docker Hub's is 300 s.
const DEFAULT_TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// The response headers of the registry that are passed on to the client. Hop-by-hop headers
/// (`Connection`, `Transfer-Encoding`, `Keep-Alive`) are not: the proxy frames its own replies.
const RELAYED_RESPONSE_HEADERS: &[&str] = &[
    "content-type",
    "content-length",
    "docker-content-digest",
    "docker-distribution-api-version",
    "location",
    "link",
    "accept-ranges",
    "content-range",
    "etag",
    "last-modified",
    "cache-control",
];

/// The request headers of the client that are passed on to the registry: content negotiation
/// (manifest media types), ranges and conditional requests. `Authorization` is not: the
/// registry behind the proxy is anonymous.
const FORWARDED_REQUEST_HEADERS: &[&str] = &[
    "accept",
    "range",
    "if-range",
    "if-none-match",
    "if-match",
    "if-modified-since",
    "user-agent",
];

/// Options for [`TokenAuthProxy::start`].
#[derive(Debug, Clone)]
pub struct TokenAuthOptions {
    /// When set, `/token` requires HTTP basic auth with these credentials; when `None` it issues
    /// anonymous tokens to anyone (as Docker Hub does for public images).
    pub credentials: Option<Credentials>,
    /// How long an issued token is accepted; returned as `expires_in` (whole seconds, at least
    /// 1) and enforced: a request with an expired token gets `401`.
    pub token_lifetime: Duration,
    /// Relay response bodies at no more than this many bytes per second: a far, slow
    /// registry, so a test can watch a download while it is still arriving.
    pub body_bytes_per_second: Option<u64>,
}

impl Default for TokenAuthOptions {
    /// Anonymous tokens valid for 300 s, bodies at full speed.
    fn default() -> Self {
        Self {
            credentials: None,
            token_lifetime: DEFAULT_TOKEN_LIFETIME,
            body_bytes_per_second: None,
        }
    }
}

/// A token-auth front on `127.0.0.1:<ephemeral>` for one [`DockerRegistry`].
#[derive(Debug)]
pub struct TokenAuthProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: Option<JoinHandle<()>>,
}

/// State shared by the accept loop and the connection threads. Each field is either atomic or
/// behind its own mutex, held only for a map or vector operation (never across I/O).
#[derive(Debug)]
struct Shared {
    /// `http://127.0.0.1:<registry port>`.
    upstream: String,
    /// `http://127.0.0.1:<our port>/token`.
    realm: String,
    options: TokenAuthOptions,
    agent: ureq::Agent,
    stopping: AtomicBool,
    /// Token -> the instant it stops being accepted.
    tokens: Mutex<HashMap<String, Instant>>,
    token_counter: AtomicU64,
    tokens_issued: AtomicU64,
    unauthorized_responses: AtomicU64,
    requests: Mutex<Vec<(String, String, bool)>>,
    scopes_requested: Mutex<Vec<String>>,
}

impl TokenAuthProxy {
    /// Starts the proxy in front of `upstream`, which must serve on the host's loopback (not in
    /// a network namespace) and be anonymous (the proxy forwards no credentials).
    pub fn start(upstream: &DockerRegistry, options: TokenAuthOptions) -> Result<Self> {
        ensure!(
            upstream.netns().is_none(),
            "the token-auth proxy runs on the host and cannot reach a registry in a namespace"
        );
        ensure!(
            upstream.credentials().is_none(),
            "the token-auth proxy forwards no credentials: start the registry anonymous"
        );
        ensure!(
            !options.token_lifetime.is_zero(),
            "a zero token lifetime would refuse every token"
        );
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .context("token-auth proxy: cannot bind 127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(UPSTREAM_CONNECT_TIMEOUT))
            .timeout_recv_response(Some(UPSTREAM_RESPONSE_TIMEOUT))
            .build()
            .into();
        let shared = Arc::new(Shared {
            upstream: upstream.url(),
            realm: format!("http://{addr}/token"),
            options,
            agent,
            stopping: AtomicBool::new(false),
            tokens: Mutex::new(HashMap::new()),
            token_counter: AtomicU64::new(0),
            tokens_issued: AtomicU64::new(0),
            unauthorized_responses: AtomicU64::new(0),
            requests: Mutex::new(Vec::new()),
            scopes_requested: Mutex::new(Vec::new()),
        });
        let accept_shared = Arc::clone(&shared);
        let accept_loop = std::thread::Builder::new()
            .name("token-auth-accept".to_owned())
            .spawn(move || accept_loop(&listener, &accept_shared))
            .context("cannot spawn the token-auth accept loop")?;
        Ok(Self {
            addr,
            shared,
            accept_loop: Some(accept_loop),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `127.0.0.1:<port>/<repo_and_tag>`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// `http://127.0.0.1:<port>/token`, the realm named in every challenge.
    pub fn realm(&self) -> &str {
        &self.shared.realm
    }

    /// Tokens issued by `/token` so far.
    pub fn tokens_issued(&self) -> u64 {
        self.shared.tokens_issued.load(Ordering::Relaxed)
    }

    /// `401` responses sent so far: challenges on `/v2/...` and refused basic auth on `/token`.
    pub fn unauthorized_responses(&self) -> u64 {
        self.shared.unauthorized_responses.load(Ordering::Relaxed)
    }

    /// Every request so far, in arrival order: (method, path without the query, whether it
    /// carried a valid unexpired bearer token). Requests to `/token` are included.
    pub fn requests(&self) -> Vec<(String, String, bool)> {
        lock(&self.shared.requests).clone()
    }

    /// Every `scope` parameter sent to `/token` so far, decoded, in arrival order.
    pub fn scopes_requested(&self) -> Vec<String> {
        lock(&self.shared.scopes_requested).clone()
    }
}

impl Drop for TokenAuthProxy {
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        // Wakes the blocking accept(); a failed connect means the loop has already ended.
        drop(TcpStream::connect_timeout(
            &self.addr,
            Duration::from_secs(1),
        ));
        if let Some(accept_loop) = self.accept_loop.take()
            && accept_loop.join().is_err()
        {
            eprintln!("warning: the token-auth accept loop panicked");
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking connection thread cannot leave these maps and logs inconsistent: every
    // critical section is a single insert, remove or push.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// ---------------------------------------------------------------------------------------------
// Accept loop and connections

/// A connection thread and a clone of its socket, to shut it down at stop.
struct Connection {
    socket: TcpStream,
    thread: JoinHandle<()>,
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    let mut connections: Vec<Connection> = Vec::new();
    for incoming in listener.incoming() {
        if shared.stopping.load(Ordering::SeqCst) {
            break;
        }
        let socket = match incoming {
            Ok(socket) => socket,
            Err(error) => {
                eprintln!("warning: token-auth proxy: accept: {error}");
                continue;
            }
        };
        connections.retain(|connection| !connection.thread.is_finished());
        if connections.len() >= CONNECTIONS_MAX {
            refuse_busy(socket);
            continue;
        }
        match spawn_connection(socket, shared) {
            Ok(connection) => connections.push(connection),
            Err(error) => eprintln!("warning: token-auth proxy: {error:#}"),
        }
    }
    for connection in &connections {
        // Unblocks a thread waiting for the next request or writing a body; it then returns.
        let _ = connection.socket.shutdown(Shutdown::Both);
    }
    for connection in connections {
        if connection.thread.join().is_err() {
            eprintln!("warning: a token-auth connection thread panicked");
        }
    }
}

fn spawn_connection(socket: TcpStream, shared: &Arc<Shared>) -> Result<Connection> {
    let handle = socket.try_clone()?;
    let shared = Arc::clone(shared);
    let thread = std::thread::Builder::new()
        .name("token-auth-conn".to_owned())
        .spawn(move || {
            if let Err(error) = serve_connection(&shared, socket)
                && !is_disconnect(&error)
                && !shared.stopping.load(Ordering::SeqCst)
            {
                eprintln!("warning: token-auth proxy connection: {error:#}");
            }
        })
        .context("cannot spawn a token-auth connection thread")?;
    Ok(Connection {
        socket: handle,
        thread,
    })
}

fn refuse_busy(mut socket: TcpStream) {
    let body = oci_error_body("TOOMANYREQUESTS", "too many connections");
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = socket
        .write_all(head.as_bytes())
        .and_then(|()| socket.write_all(&body));
}

/// True when `error` only says that the client went away.
fn is_disconnect(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause.downcast_ref::<io::Error>().is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::WouldBlock
                    | io::ErrorKind::TimedOut
            )
        })
    })
}

/// Serves requests on one connection until the client closes it, asks to close it, sends
/// something the proxy cannot frame, or the proxy stops.
fn serve_connection(shared: &Shared, socket: TcpStream) -> Result<()> {
    socket.set_read_timeout(Some(CONNECTION_IDLE_TIMEOUT))?;
    socket.set_nodelay(true)?;
    let mut reader = BufReader::new(socket.try_clone()?);
    let mut writer = socket;
    loop {
        let request = match read_request_head(&mut reader)? {
            ReadHead::Request(request) => request,
            ReadHead::Closed => return Ok(()),
            ReadHead::Malformed(reason) => {
                let reply = Reply::error(400, "Bad Request", "UNSUPPORTED", reason);
                return reply.write(&mut writer, false, false);
            }
        };
        let body_read = discard_request_body(&mut reader, &request)?;
        let keep_alive =
            body_read && request.keep_alive() && !shared.stopping.load(Ordering::SeqCst);
        let keep_alive = handle_request(shared, &request, &mut writer, keep_alive)?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads and drops a `Content-Length` request body. False when the body cannot be framed or is
/// too large, so the connection must close after the response.
fn discard_request_body(reader: &mut impl BufRead, request: &RequestHead) -> Result<bool> {
    if request.header("transfer-encoding").is_some() {
        return Ok(false);
    }
    let Some(length) = request.header("content-length") else {
        return Ok(true);
    };
    let Ok(length) = length.trim().parse::<u64>() else {
        return Ok(false);
    };
    if length > REQUEST_BODY_BYTES_MAX {
        return Ok(false);
    }
    let copied = io::copy(&mut reader.take(length), &mut io::sink())?;
    ensure!(copied == length, "request body ended after {copied} bytes");
    Ok(true)
}

/// Answers one request; returns whether the connection may serve another.
fn handle_request(
    shared: &Shared,
    request: &RequestHead,
    writer: &mut TcpStream,
    keep_alive: bool,
) -> Result<bool> {
    let head_only = request.method == "HEAD";
    let path = request.path();
    let authorized = path_is_v2(path) && shared.bearer_is_valid(request);
    shared.record(&request.method, path, authorized);
    if request.method != "GET" && request.method != "HEAD" {
        let reply = Reply::error(
            405,
            "Method Not Allowed",
            "UNSUPPORTED",
            "only GET and HEAD",
        )
        .header("Allow", "GET, HEAD");
        reply.write(writer, head_only, keep_alive)?;
        return Ok(keep_alive);
    }
    if path == "/token" {
        // A HEAD would issue a token nobody can read.
        let reply = if head_only {
            Reply::error(405, "Method Not Allowed", "UNSUPPORTED", "GET only")
                .header("Allow", "GET")
        } else {
            shared.token_reply(request)
        };
        reply.write(writer, head_only, keep_alive)?;
        return Ok(keep_alive);
    }
    if !path_is_v2(path) {
        let reply = Reply::error(404, "Not Found", "NOT_FOUND", "no such endpoint");
        reply.write(writer, head_only, keep_alive)?;
        return Ok(keep_alive);
    }
    if !authorized {
        shared
            .unauthorized_responses
            .fetch_add(1, Ordering::Relaxed);
        shared
            .challenge(path)
            .write(writer, head_only, keep_alive)?;
        return Ok(keep_alive);
    }
    forward(shared, request, writer, keep_alive)
}

fn path_is_v2(path: &str) -> bool {
    path == "/v2" || path.starts_with("/v2/")
}

impl Shared {
    fn record(&self, method: &str, path: &str, authorized: bool) {
        let mut requests = lock(&self.requests);
        if requests.len() < REQUESTS_RECORDED_MAX {
            requests.push((method.to_owned(), path.to_owned(), authorized));
        }
    }

    fn bearer_is_valid(&self, request: &RequestHead) -> bool {
        let Some(token) = request
            .header("authorization")
            .and_then(|value| strip_scheme(value, "Bearer"))
        else {
            return false;
        };
        let mut tokens = lock(&self.tokens);
        match tokens.get(token) {
            Some(expiry) if Instant::now() < *expiry => true,
            Some(_) => {
                tokens.remove(token);
                false
            }
            None => false,
        }
    }

    /// The `401` for a `/v2/...` request without a valid token.
    fn challenge(&self, path: &str) -> Reply {
        let mut header = format!("Bearer realm=\"{}\",service=\"{SERVICE}\"", self.realm);
        if let Some(scope) = scope_for_path(path) {
            let _ = write!(header, ",scope=\"{scope}\"");
        }
        Reply::error(
            401,
            "Unauthorized",
            "UNAUTHORIZED",
            "authentication required",
        )
        .header("WWW-Authenticate", &header)
    }

    /// The answer of `GET /token`: a new token, or `401` when basic auth is required and wrong.
    fn token_reply(&self, request: &RequestHead) -> Reply {
        if let Some(expected) = &self.options.credentials {
            let presented = request
                .header("authorization")
                .and_then(|value| strip_scheme(value, "Basic"))
                .and_then(decode_basic);
            let matches = presented.is_some_and(|(user, password)| {
                user == expected.user && password == expected.password
            });
            if !matches {
                self.unauthorized_responses.fetch_add(1, Ordering::Relaxed);
                return Reply::error(
                    401,
                    "Unauthorized",
                    "UNAUTHORIZED",
                    "authentication required",
                )
                .header("WWW-Authenticate", &format!("Basic realm=\"{SERVICE}\""));
            }
        }
        let scopes = query_values(request.query(), "scope");
        lock(&self.scopes_requested).extend(scopes);
        let token = match self.new_token() {
            Ok(token) => token,
            Err(error) => {
                eprintln!("warning: token-auth proxy: {error:#}");
                return Reply::error(500, "Internal Server Error", "UNKNOWN", "no randomness");
            }
        };
        let now = Instant::now();
        let lifetime = self.options.token_lifetime;
        {
            let mut tokens = lock(&self.tokens);
            tokens.retain(|_, expiry| now < *expiry);
            tokens.insert(token.clone(), now + lifetime);
        }
        self.tokens_issued.fetch_add(1, Ordering::Relaxed);
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": lifetime.as_secs().max(1),
            "issued_at": rfc3339_utc(SystemTime::now()),
        });
        Reply::json(200, "OK", body.to_string().into_bytes())
    }

    /// sha256 of a counter, the wall-clock time and 32 bytes of `/dev/urandom`, as hex.
    fn new_token(&self) -> Result<String> {
        let mut random = [0u8; 32];
        File::open("/dev/urandom")
            .and_then(|mut urandom| urandom.read_exact(&mut random))
            .context("reading /dev/urandom")?;
        let counter = self.token_counter.fetch_add(1, Ordering::Relaxed);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let mut hasher = Sha256::new();
        hasher.update(counter.to_le_bytes());
        hasher.update(nanos.to_le_bytes());
        hasher.update(random);
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Forwards an authorized request to the registry and relays the answer; returns whether the
/// connection may serve another request.
fn forward(
    shared: &Shared,
    request: &RequestHead,
    writer: &mut TcpStream,
    keep_alive: bool,
) -> Result<bool> {
    let head_only = request.method == "HEAD";
    let url = format!("{}{}", shared.upstream, request.target);
    let mut builder = ureq::http::Request::builder()
        .method(request.method.as_str())
        .uri(&url);
    for (name, value) in &request.headers {
        if FORWARDED_REQUEST_HEADERS.contains(&name.as_str()) {
            builder = builder.header(name.as_str(), value.as_str());
        }
    }
    let upstream_request = builder
        .body(())
        .with_context(|| format!("building {} {url}", request.method))?;
    let mut response = match shared.agent.run(upstream_request) {
        Ok(response) => response,
        Err(error) => {
            eprintln!(
                "warning: token-auth proxy: {} {url}: {error}",
                request.method
            );
            let reply = Reply::error(502, "Bad Gateway", "UNAVAILABLE", "registry unreachable");
            reply.write(writer, head_only, keep_alive)?;
            return Ok(keep_alive);
        }
    };
    let status = response.status();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Unknown")
    );
    let mut content_length = None;
    for (name, value) in response.headers() {
        let name = name.as_str();
        if !RELAYED_RESPONSE_HEADERS.contains(&name) {
            continue;
        }
        let Ok(value) = value.to_str() else { continue };
        if name == "content-length" {
            content_length = Some(
                value
                    .trim()
                    .parse::<u64>()
                    .with_context(|| format!("registry sent Content-Length {value:?}"))?,
            );
        }
        let _ = write!(head, "{name}: {value}\r\n");
    }
    // A status that never has a body (RFC 9110): 1xx, 204, 304.
    let bodiless = head_only || status.as_u16() == 204 || status.as_u16() == 304;
    let chunked = !bodiless && content_length.is_none() && keep_alive;
    if chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    // Without a length and without keep-alive the body ends when the connection closes.
    let keep_alive = keep_alive && (bodiless || content_length.is_some() || chunked);
    if !keep_alive {
        head.push_str("Connection: close\r\n");
    }
    head.push_str("\r\n");
    writer.write_all(head.as_bytes())?;
    if bodiless {
        return Ok(keep_alive);
    }
    let mut body = response.body_mut().as_reader();
    let relayed = relay_body(
        &mut body,
        writer,
        chunked,
        shared.options.body_bytes_per_second,
    )?;
    if let Some(expected) = content_length {
        ensure!(
            relayed == expected,
            "registry body ended after {relayed} of {expected} bytes"
        );
    }
    Ok(keep_alive)
}

/// Copies `body` to `writer` through one fixed buffer, as HTTP chunks when `chunked`, at most
/// `bytes_per_second` when given; returns the body bytes copied.
fn relay_body(
    body: &mut impl Read,
    writer: &mut impl Write,
    chunked: bool,
    bytes_per_second: Option<u64>,
) -> Result<u64> {
    let mut buffer = vec![0u8; RELAY_BUFFER_BYTES];
    let mut total = 0u64;
    let started = Instant::now();
    loop {
        if let Some(rate) = bytes_per_second {
            let due = Duration::from_secs_f64(total as f64 / rate.max(1) as f64);
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
        let n = match body.read(&mut buffer) {
            Ok(0) => break,
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(anyhow!(error).context("reading the registry's body")),
        };
        if chunked {
            write!(writer, "{n:x}\r\n")?;
            writer.write_all(&buffer[..n])?;
            writer.write_all(b"\r\n")?;
        } else {
            writer.write_all(&buffer[..n])?;
        }
        total += n as u64;
    }
    if chunked {
        writer.write_all(b"0\r\n\r\n")?;
    }
    writer.flush()?;
    Ok(total)
}

// ---------------------------------------------------------------------------------------------
// Replies the proxy makes itself

/// A small response with the whole body in memory (errors and tokens only).
#[derive(Debug)]
struct Reply {
    status: u16,
    reason: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(status: u16, reason: &'static str, body: Vec<u8>) -> Self {
        Self {
            status,
            reason,
            headers: vec![
                ("Content-Type", "application/json".to_owned()),
                ("Docker-Distribution-API-Version", "registry/2.0".to_owned()),
            ],
            body,
        }
    }

    /// An OCI distribution error response.
    fn error(status: u16, reason: &'static str, code: &str, message: &str) -> Self {
        Self::json(status, reason, oci_error_body(code, message))
    }

    fn header(mut self, name: &'static str, value: &str) -> Self {
        self.headers.push((name, value.to_owned()));
        self
    }

    fn write(&self, writer: &mut impl Write, head_only: bool, keep_alive: bool) -> Result<()> {
        let mut head = format!("HTTP/1.1 {} {}\r\n", self.status, self.reason);
        for (name, value) in &self.headers {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        let _ = write!(head, "Content-Length: {}\r\n", self.body.len());
        if !keep_alive {
            head.push_str("Connection: close\r\n");
        }
        head.push_str("\r\n");
        writer.write_all(head.as_bytes())?;
        if !head_only {
            writer.write_all(&self.body)?;
        }
        writer.flush()?;
        Ok(())
    }
}

/// `{"errors":[{"code":CODE,"message":MESSAGE,"detail":null}]}`.
fn oci_error_body(code: &str, message: &str) -> Vec<u8> {
    serde_json::json!({"errors": [{"code": code, "message": message, "detail": null}]})
        .to_string()
        .into_bytes()
}

// ---------------------------------------------------------------------------------------------
// Request parsing

/// A request line and its headers (names lower-cased, in order, repeats kept).
#[derive(Debug, Clone, PartialEq, Eq)]
struct RequestHead {
    method: String,
    /// Path and query, exactly as sent.
    target: String,
    /// `HTTP/1.1` or `HTTP/1.0`.
    version: String,
    headers: Vec<(String, String)>,
}

impl RequestHead {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(header, _)| header == name)
            .map(|(_, value)| value.as_str())
    }

    fn path(&self) -> &str {
        self.target
            .split_once('?')
            .map_or(self.target.as_str(), |(path, _)| path)
    }

    fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, query)| query)
    }

    /// HTTP/1.1 keeps the connection unless told `close`; HTTP/1.0 closes unless told
    /// `keep-alive`.
    fn keep_alive(&self) -> bool {
        let connection = self.header("connection").unwrap_or_default();
        let has = |token: &str| {
            connection
                .split(',')
                .any(|part| part.trim().eq_ignore_ascii_case(token))
        };
        if self.version == "HTTP/1.0" {
            has("keep-alive")
        } else {
            !has("close")
        }
    }
}

/// What reading a request head produced.
#[derive(Debug, PartialEq, Eq)]
enum ReadHead {
    Request(RequestHead),
    /// The client closed the connection (or went idle) between requests.
    Closed,
    /// Not HTTP/1.x, or over a limit: answer 400 and close.
    Malformed(&'static str),
}

fn read_request_head(reader: &mut impl BufRead) -> Result<ReadHead> {
    let mut budget = REQUEST_HEAD_BYTES_MAX;
    // RFC 9112 lets a server skip empty lines before the request line.
    let request_line = loop {
        match read_line(reader, &mut budget) {
            Ok(Some(line)) if line.is_empty() => continue,
            Ok(Some(line)) => break line,
            Ok(None) => return Ok(ReadHead::Closed),
            Err(error) if is_idle_end(&error) => return Ok(ReadHead::Closed),
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                return Ok(ReadHead::Malformed("request head too large or not UTF-8"));
            }
            Err(error) => return Err(error.into()),
        }
    };
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Ok(ReadHead::Malformed("malformed request line"));
    };
    if !matches!(version, "HTTP/1.1" | "HTTP/1.0") || !target.starts_with('/') {
        return Ok(ReadHead::Malformed("unsupported request line"));
    }
    let mut headers = Vec::new();
    loop {
        let line = match read_line(reader, &mut budget) {
            Ok(Some(line)) => line,
            Ok(None) => bail!("connection closed inside a request head"),
            Err(error) if error.kind() == io::ErrorKind::InvalidData => {
                return Ok(ReadHead::Malformed("request head too large or not UTF-8"));
            }
            Err(error) => return Err(error.into()),
        };
        if line.is_empty() {
            break;
        }
        if headers.len() >= REQUEST_HEADERS_MAX {
            return Ok(ReadHead::Malformed("too many headers"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Ok(ReadHead::Malformed("malformed header"));
        };
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(ReadHead::Request(RequestHead {
        method: method.to_owned(),
        target: target.to_owned(),
        version: version.to_owned(),
        headers,
    }))
}

/// An idle keep-alive connection timing out or being reset before a new request is just its end.
fn is_idle_end(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::WouldBlock
            | io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

/// One line without its CRLF (or LF), reading at most `budget` bytes; `None` at a clean EOF.
/// A line longer than what is left of the budget, or not UTF-8, is an `InvalidData` error.
fn read_line(reader: &mut impl BufRead, budget: &mut u64) -> io::Result<Option<String>> {
    let mut line = Vec::new();
    let n = reader.take(*budget).read_until(b'\n', &mut line)?;
    *budget -= n as u64;
    if n == 0 && *budget > 0 {
        return Ok(None);
    }
    if line.last() != Some(&b'\n') {
        return Err(if *budget == 0 {
            io::Error::new(io::ErrorKind::InvalidData, "request head too large")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line")
        });
    }
    line.pop();
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line)
        .map(Some)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "request head is not UTF-8"))
}

/// `value` without its auth `scheme` prefix (case-insensitive), e.g. the token of `Bearer x`.
fn strip_scheme<'a>(value: &'a str, scheme: &str) -> Option<&'a str> {
    let (given, rest) = value.trim().split_once(' ')?;
    given
        .eq_ignore_ascii_case(scheme)
        .then(|| rest.trim())
        .filter(|rest| !rest.is_empty())
}

/// The `scope` a request path needs: `repository:<name>:pull` for
/// `/v2/<name>/{manifests,blobs,tags}/...`, `registry:catalog:*` for `/v2/_catalog`, none for
/// `/v2/` itself or anything else. The name ends at the last such marker, as distribution's
/// routes read it (a repository may itself contain a `blobs` component).
pub fn scope_for_path(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/v2/")?;
    if rest == "_catalog" {
        return Some("registry:catalog:*".to_owned());
    }
    let end = ["/manifests/", "/blobs/", "/tags/"]
        .iter()
        .filter_map(|marker| rest.rfind(marker))
        .max()?;
    let name = &rest[..end];
    (!name.is_empty()).then(|| format!("repository:{name}:pull"))
}

/// Every value of `key` in a query string, percent-decoded (`+` is a space).
fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
        .filter(|(name, _)| percent_decode(name) == key)
        .map(|(_, value)| percent_decode(value))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let decoded = bytes
                    .get(i + 1..i + 3)
                    .filter(|hex| hex.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|hex| u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok());
                match decoded {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Basic <base64(user:password)>` credentials split at the first `:`.
fn decode_basic(encoded: &str) -> Option<(String, String)> {
    let decoded = String::from_utf8(base64_decode(encoded)?).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// The `Authorization` header value for HTTP basic auth with `credentials`.
pub fn basic_authorization(credentials: &Credentials) -> String {
    format!(
        "Basic {}",
        base64_encode(credentials.user_colon_password().as_bytes())
    )
}

const BASE64_ALPHABET: &[u8; 64] =
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding; a dozen lines spare a dependency for one header.
fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
        for (i, shift) in [18u32, 12, 6, 0].into_iter().enumerate() {
            if i <= chunk.len() {
                out.push(char::from(BASE64_ALPHABET[(n >> shift & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Standard base64, padding optional; `None` on any other character.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let text = text.trim().trim_end_matches('=');
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut accumulator = 0u32;
    let mut bits = 0u32;
    for byte in text.bytes() {
        let value = BASE64_ALPHABET.iter().position(|&c| c == byte)?;
        accumulator = accumulator << 6 | value as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((accumulator >> bits & 0xff) as u8);
        }
    }
    // A lone trailing character carries fewer than 8 bits: not valid base64.
    (bits < 6).then_some(out)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for `time` (UTC), the `issued_at` format of distribution's token
/// servers, written by the gateway's own token endpoint too.
fn rfc3339_utc(time: SystemTime) -> String {
    let seconds = time.duration_since(UNIX_EPOCH).unwrap_or_default();
    shoal_gateway::auth::token::rfc3339(seconds.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_distribution_routes() {
        let scope = |path| scope_for_path(path);
        assert_eq!(scope("/v2/"), None);
        assert_eq!(scope("/v2"), None);
        assert_eq!(
            scope("/v2/a/b/manifests/v1"),
            Some("repository:a/b:pull".to_owned())
        );
        assert_eq!(
            scope("/v2/a/blobs/sha256:00"),
            Some("repository:a:pull".to_owned())
        );
        assert_eq!(
            scope("/v2/a/blobs/blobs/sha256:00"),
            Some("repository:a/blobs:pull".to_owned())
        );
        assert_eq!(
            scope("/v2/x/tags/list"),
            Some("repository:x:pull".to_owned())
        );
        assert_eq!(scope("/v2/_catalog"), Some("registry:catalog:*".to_owned()));
        assert_eq!(scope("/v2/blobs/sha256:00"), None);
        assert_eq!(scope("/token"), None);
    }

    #[test]
    fn base64_round_trips_every_padding() {
        for text in ["", "a", "ab", "abc", "abcd", "alice:s3cret:with:colons"] {
            let encoded = base64_encode(text.as_bytes());
            assert_eq!(encoded.len() % 4, 0, "{encoded}");
            assert_eq!(base64_decode(&encoded), Some(text.as_bytes().to_vec()));
        }
        assert_eq!(base64_encode(b"alice:s3cret"), "YWxpY2U6czNjcmV0");
        assert_eq!(
            base64_decode("YWxpY2U6czNjcmV0"),
            Some(b"alice:s3cret".to_vec())
        );
        assert_eq!(base64_decode("YW*x"), None);
        assert_eq!(base64_decode("Y"), None);
    }

    #[test]
    fn basic_credentials_split_at_the_first_colon() {
        let header = basic_authorization(&Credentials::new("alice", "pa:ss"));
        let encoded = strip_scheme(&header, "basic");
        assert_eq!(
            encoded.and_then(decode_basic),
            Some(("alice".to_owned(), "pa:ss".to_owned()))
        );
        assert_eq!(strip_scheme("Bearer abc", "Basic"), None);
        assert_eq!(strip_scheme("bearer  abc ", "Bearer"), Some("abc"));
        assert_eq!(strip_scheme("Bearer ", "Bearer"), None);
    }

    #[test]
    fn query_scopes_are_decoded_and_may_repeat() {
        let query = "service=shoal-test&scope=repository%3Aa%2Fb%3Apull&scope=repository:c:pull";
        assert_eq!(
            query_values(query, "scope"),
            vec!["repository:a/b:pull", "repository:c:pull"]
        );
        assert_eq!(query_values(query, "service"), vec!["shoal-test"]);
        assert_eq!(percent_decode("a+b%2"), "a b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn issued_at_is_rfc3339_utc() {
        let at = |seconds| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(seconds));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
    }

    #[test]
    fn request_heads_are_parsed_with_keep_alive_rules() -> Result<()> {
        let raw = b"\r\nGET /v2/a/manifests/v1?x=1 HTTP/1.1\r\nHost: h\r\n\
                    Accept: a\r\naccept: b\r\nConnection: Keep-Alive, close\r\n\r\nrest";
        let mut reader = &raw[..];
        let ReadHead::Request(head) = read_request_head(&mut reader)? else {
            bail!("not parsed");
        };
        assert_eq!(head.method, "GET");
        assert_eq!(head.path(), "/v2/a/manifests/v1");
        assert_eq!(head.query(), "x=1");
        assert_eq!(
            head.headers.iter().filter(|(n, _)| n == "accept").count(),
            2
        );
        assert!(!head.keep_alive());
        assert_eq!(reader, b"rest");

        let mut reader = &b"GET / HTTP/1.0\r\n\r\n"[..];
        let ReadHead::Request(head) = read_request_head(&mut reader)? else {
            bail!("not parsed");
        };
        assert!(!head.keep_alive());
        assert_eq!(read_request_head(&mut reader)?, ReadHead::Closed);

        let mut reader = &b"GET /x SPDY/3\r\n\r\n"[..];
        assert!(matches!(
            read_request_head(&mut reader)?,
            ReadHead::Malformed(_)
        ));
        let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(70_000));
        let mut reader = huge.as_bytes();
        assert!(matches!(
            read_request_head(&mut reader)?,
            ReadHead::Malformed(_)
        ));
        Ok(())
    }

    #[test]
    fn chunked_relay_frames_every_read() -> Result<()> {
        let mut out = Vec::new();
        let copied = relay_body(&mut &b"hello"[..], &mut out, true, None)?;
        assert_eq!(copied, 5);
        assert_eq!(out, b"5\r\nhello\r\n0\r\n\r\n");
        Ok(())
    }
}
