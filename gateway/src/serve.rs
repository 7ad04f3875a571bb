//! Serving the gateway's router on a TCP listener with a bound on everything a client controls:
//! how many connections it holds, how long it may take to send a request head (and so how long
//! an idle keep-alive connection stays open), how large that head may be, how long a response
//! may wait on a client that stopped reading, and how long a handler may take to answer.
//!
//! `axum::serve` sets none of these (hyper's header timeout needs a timer it is not given), so
//! a client that opened connections and sent nothing, or stopped reading a blob, held a
//! connection, a task and an open blob for ever. Here each connection is a hyper HTTP/1.1
//! connection with a timer, over a socket wrapped in a [`StallGuard`], holding one of
//! [`ServeLimits::connections_max`] permits; beyond that, connections wait in the listen
//! backlog until one closes.
//!
//! With TLS ([`crate::tls`]), an accepted connection first shows its first byte: a TLS
//! handshake goes on to the handshake, which must complete within
//! [`ServeLimits::header_read_timeout`] like a request head (as Go's `ReadHeaderTimeout` bounds
//! its handshakes), so a client that connects and sends nothing frees its permit; anything
//! else is a plain HTTP request and gets a `400` saying so before the connection closes (as Go
//! does), rather than a silent close. ALPN then picks hyper's HTTP/2 or HTTP/1.1 connection;
//! both run over the same [`StallGuard`] under the TLS stream. HTTP/2 gets the header size
//! bound as its header list limit and a bound on streams at once; hyper has no header or idle
//! timeout for HTTP/2, so keep-alive pings close connections to clients that are gone instead.
//!
//! Not for: rate limits or fairness between clients (the node's egress limits are for peers;
//! the gateway serves the local host), or access control (auth reads [`ClientInfo`]).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::GatewayError;
use crate::source::SourceError;
use crate::tls::GatewayTls;

/// What one client may hold, and for how long.
#[derive(Debug, Clone)]
pub struct ServeLimits {
    /// Connections served at once; more wait in the listen backlog until one closes.
    pub connections_max: usize,
    /// A request head must arrive whole within this, counted from the first byte asked for;
    /// an idle keep-alive connection is closed after it too.
    pub header_read_timeout: Duration,
    /// Largest request head (request line and headers) read; a larger one gets `431`.
    pub header_bytes_max: usize,
    /// A connection whose response cannot be written for this long (the client stopped
    /// reading, or reads too slowly to drain the socket buffer) is closed.
    pub write_stall_timeout: Duration,
    /// A handler that has not produced its response head by then gets `503`, so a request
    /// waiting on content that never comes does not hold its task for ever.
    pub response_head_timeout: Duration,
}

/// Enough for every client of a node-local gateway: a host pulling several images at once
/// opens a few connections per image (containerd 3 per layer at most by default; the load test
/// runs 200 clients). File descriptors are the resource at stake: a default soft limit of 1024
/// must leave room for peers and blob files.
pub const CONNECTIONS_MAX: usize = 512;

/// hyper's own default header timeout, long enough for any real client on loopback or a LAN
/// to send its head; also the idle keep-alive timeout (Go's and nginx's are 60–75 s; clients
/// reconnect transparently).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Registry clients send heads of a few hundred bytes; a bearer token can take several KiB.
/// 64 KiB is ample and far below hyper's ~400 KiB default.
pub const HEADER_BYTES_MAX: usize = 64 * 1024;

/// nginx's `send_timeout` is 60 s: a client that cannot take a byte for a minute is gone.
pub const WRITE_STALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The time to a response head includes fetching a manifest from an upstream or finding a blob
/// on peers (transfers give up on silent peers within seconds); five minutes is far beyond any
/// healthy path.
pub const RESPONSE_HEAD_TIMEOUT: Duration = Duration::from_secs(300);

impl Default for ServeLimits {
    fn default() -> Self {
        ServeLimits {
            connections_max: CONNECTIONS_MAX,
            header_read_timeout: HEADER_READ_TIMEOUT,
            header_bytes_max: HEADER_BYTES_MAX,
            write_stall_timeout: WRITE_STALL_TIMEOUT,
            response_head_timeout: RESPONSE_HEAD_TIMEOUT,
        }
    }
}

/// Requests one HTTP/2 connection may have in flight. A registry client fetches a handful of
/// layers at once; 100 is what RFC 9113 recommends as the least a server should allow, and
/// bounds the tasks and open blobs one connection holds.
pub const H2_STREAMS_MAX: u32 = 100;

/// How often an HTTP/2 connection pings its client, and how long it waits for the answer before
/// closing: a client that vanished without closing frees its permit within a minute.
const H2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);
const H2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// The first byte of every TLS connection: a handshake record.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// The answer to plain HTTP on the TLS port, before closing.
const PLAIN_HTTP_REFUSAL: &[u8] = b"HTTP/1.1 400 Bad Request\r\n\
Content-Type: text/plain; charset=utf-8\r\n\
Content-Length: 35\r\n\
Connection: close\r\n\
\r\n\
this port speaks TLS: use https://\n";

/// How much of a plain HTTP request is read (and dropped) after the refusal, so that closing
/// with unread bytes does not reset the connection before the client reads the refusal.
const PLAIN_HTTP_DRAIN_BYTES_MAX: usize = 64 * 1024;

/// How long to wait after an accept error that is not one client's (out of file descriptors,
/// say) before accepting again, as hyper 0.14 and axum do.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets every connection finish the request in flight and close, and returns once
/// all have. The caller bounds that wait if it must (a stalled client is cut off by
/// [`ServeLimits::write_stall_timeout`] anyway).
///
/// With `tls`, every connection is TLS, with the certificate current when it is accepted
/// (HTTP/2 or HTTP/1.1 by ALPN); without, plain HTTP/1.1.
///
/// Cancel-safe in the sense that dropping the future drops every connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    tls: Option<GatewayTls>,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let mut http1 = http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.header_bytes_max);
    let mut http2 = http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.header_bytes_max).unwrap_or(u32::MAX))
        .max_concurrent_streams(H2_STREAMS_MAX)
        .keep_alive_interval(H2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(H2_KEEP_ALIVE_TIMEOUT);
    let (stop, stopping) = watch::channel(false);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) if is_connection_error(&error) => continue,
                Err(error) => {
                    tracing::error!(%error, "gateway accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        // Small responses (a config blob after its headers) must not wait for the client's
        // delayed ACK: 40 ms per blob otherwise (docs/benchmarks.md).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a gateway connection");
        }
        let connection = Connection {
            http1: http1.clone(),
            http2: http2.clone(),
            router: router.clone(),
            limits: limits.clone(),
            permit,
        };
        let stopping = stopping.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let result = match tls {
                None => connection.run_plain(stream, peer, stopping).await,
                Some(tls) => connection.run_tls(stream, peer, &tls, stopping).await,
            };
            if let Err(error) = result {
                tracing::debug!(%peer, %error, "gateway connection ended with an error");
            }
        });
        while connections.try_join_next().is_some() {}
    }
    drop(listener);
    let _ = stop.send(true);
    while connections.join_next().await.is_some() {}
    Ok(())
}

fn is_connection_error(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

/// Who sent a request: put into every request's extensions by [`serve()`], so handlers can
/// tell a loopback client from a remote one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientInfo {
    /// The client's address as the socket saw it.
    pub addr: std::net::SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
}

/// One accepted client.
struct Connection {
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    router: Router,
    limits: ServeLimits,
    /// Held for the life of the connection.
    permit: OwnedSemaphorePermit,
}

/// Why a connection ended before its client closed it.
#[derive(Debug, thiserror::Error)]
enum ConnectionError {
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("TLS handshake: {0}")]
    Handshake(#[source] io::Error),
    #[error("no TLS handshake within {} s", .0.as_secs_f32())]
    HandshakeTimeout(Duration),
}

impl Connection {
    async fn run_plain(
        self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        stopping: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let io = TokioIo::new(StallGuard::new(stream, self.limits.write_stall_timeout));
        let client = ClientInfo {
            addr: peer,
            tls: false,
        };
        let service = service(
            self.router.clone(),
            self.limits.response_head_timeout,
            client,
        );
        let connection = self.http1.serve_connection(io, service);
        let result = until_stopped(connection, |c| c.graceful_shutdown(), stopping).await;
        drop(self.permit);
        Ok(result?)
    }

    async fn run_tls(
        self,
        stream: TcpStream,
        peer: std::net::SocketAddr,
        tls: &GatewayTls,
        stopping: watch::Receiver<bool>,
    ) -> Result<(), ConnectionError> {
        let handshake_timeout = self.limits.header_read_timeout;
        let guarded = StallGuard::new(stream, self.limits.write_stall_timeout);
        let handshake = async {
            let mut first = [0u8; 1];
            if guarded.stream.peek(&mut first).await? == 0 {
                return Ok(None);
            }
            if first[0] != TLS_HANDSHAKE_RECORD {
                refuse_plain_http(guarded.stream).await;
                return Ok(None);
            }
            tls.acceptor().accept(guarded).await.map(Some)
        };
        let stream = match tokio::time::timeout(handshake_timeout, handshake).await {
            Ok(Ok(Some(stream))) => stream,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(error)) => return Err(ConnectionError::Handshake(error)),
            Err(_) => return Err(ConnectionError::HandshakeTimeout(handshake_timeout)),
        };
        let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
        let client = ClientInfo {
            addr: peer,
            tls: true,
        };
        let service = service(
            self.router.clone(),
            self.limits.response_head_timeout,
            client,
        );
        let io = TokioIo::new(stream);
        let result = if h2 {
            let connection = self.http2.serve_connection(io, service);
            until_stopped(connection, |c| c.graceful_shutdown(), stopping).await
        } else {
            let connection = self.http1.serve_connection(io, service);
            until_stopped(connection, |c| c.graceful_shutdown(), stopping).await
        };
        drop(self.permit);
        Ok(result?)
    }
}

/// The router as a hyper service for one connection: each request carries `client` and gets
/// its response head within [`ServeLimits::response_head_timeout`].
fn service(
    router: Router,
    head_timeout: Duration,
    client: ClientInfo,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone
+ Send {
    hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(client);
        let router = router.clone();
        async move {
            let response = match tokio::time::timeout(head_timeout, router.oneshot(request)).await {
                Ok(Ok(response)) => response,
                Ok(Err(infallible)) => match infallible {},
                Err(_) => GatewayError::Source(SourceError::Unavailable(format!(
                    "no answer within {} s",
                    head_timeout.as_secs()
                )))
                .into_response(),
            };
            Ok::<_, Infallible>(response)
        }
    })
}

/// Drives a hyper connection to its end; once `stopping` turns true, lets the request in
/// flight finish and closes.
async fn until_stopped<C>(
    connection: C,
    graceful_shutdown: impl FnOnce(Pin<&mut C>),
    mut stopping: watch::Receiver<bool>,
) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    tokio::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
            graceful_shutdown(connection.as_mut());
            connection.await
        }
    }
}

/// Answers a plain HTTP request on the TLS port with a `400` that says why, then closes. Bounded
/// by the caller's handshake timeout; errors only mean the client is gone.
async fn refuse_plain_http(mut stream: TcpStream) {
    if stream.write_all(PLAIN_HTTP_REFUSAL).await.is_err() || stream.shutdown().await.is_err() {
        return;
    }
    let mut drained = 0;
    let mut buffer = [0u8; 4096];
    while drained < PLAIN_HTTP_DRAIN_BYTES_MAX {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => drained += n,
        }
    }
}

/// A client socket whose writes fail with `TimedOut` once they have been blocked for longer
/// than the stall timeout: hyper then drops the connection, its response body and whatever the
/// body holds (an open blob, a transfer reader). Reads are untouched: hyper's header timeout
/// covers the only reads that matter (GET and HEAD carry no body the gateway reads).
///
/// The kernel wakes a blocked writer only once a good part of the socket buffer has drained,
/// so a client reading a trickle is treated like one reading nothing.
struct StallGuard {
    stream: TcpStream,
    stall_timeout: Duration,
    /// The deadline of the current stall, armed by the first write that would block.
    deadline: Pin<Box<Sleep>>,
    stalled: bool,
}

impl StallGuard {
    fn new(stream: TcpStream, stall_timeout: Duration) -> Self {
        StallGuard {
            stream,
            stall_timeout,
            deadline: Box::pin(tokio::time::sleep(stall_timeout)),
            stalled: false,
        }
    }

    /// Passes a write's outcome through, arming the deadline when it blocks, disarming it when
    /// it completes, and failing it when the deadline passed.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        outcome: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if outcome.is_ready() {
            self.stalled = false;
            return outcome;
        }
        if !self.stalled {
            self.stalled = true;
            self.deadline
                .as_mut()
                .reset(Instant::now() + self.stall_timeout);
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "client took nothing for {} s",
                    self.stall_timeout.as_secs_f32()
                ),
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for StallGuard {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StallGuard {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.watch(cx, outcome)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let outcome = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.watch(cx, outcome)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.stream).poll_flush(cx);
        self.watch(cx, outcome)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let outcome = Pin::new(&mut self.stream).poll_shutdown(cx);
        self.watch(cx, outcome)
    }
}
