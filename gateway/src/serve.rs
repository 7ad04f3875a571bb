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
//! Not for: rate limits or fairness between clients (the node's egress limits are for peers;
//! the gateway serves the local host), or TLS (the gateway listens on loopback).

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
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use crate::error::GatewayError;
use crate::source::SourceError;

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

/// How long to wait after an accept error that is not one client's (out of file descriptors,
/// say) before accepting again, as hyper 0.14 and axum do.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` completes; then stops
/// accepting, lets every connection finish the request in flight and close, and returns once
/// all have. The caller bounds that wait if it must (a stalled client is cut off by
/// [`ServeLimits::write_stall_timeout`] anyway).
///
/// Cancel-safe in the sense that dropping the future drops every connection at once.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ServeLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections_max.max(1)));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.header_bytes_max);
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
            builder: builder.clone(),
            router: router.clone(),
            limits: limits.clone(),
            permit,
        };
        let stopping = stopping.clone();
        connections.spawn(async move {
            let client = ClientInfo {
                addr: peer,
                tls: false,
            };
            if let Err(error) = connection.run(stream, client, stopping).await {
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
    builder: http1::Builder,
    router: Router,
    limits: ServeLimits,
    /// Held for the life of the connection.
    permit: OwnedSemaphorePermit,
}

impl Connection {
    async fn run(
        self,
        stream: TcpStream,
        client: ClientInfo,
        mut stopping: watch::Receiver<bool>,
    ) -> hyper::Result<()> {
        let Connection {
            builder,
            router,
            limits,
            permit,
        } = self;
        let io = TokioIo::new(StallGuard::new(stream, limits.write_stall_timeout));
        let head_timeout = limits.response_head_timeout;
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request.extensions_mut().insert(client);
            let router = router.clone();
            async move {
                let response =
                    match tokio::time::timeout(head_timeout, router.oneshot(request)).await {
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
        });
        let connection = builder.serve_connection(io, service);
        tokio::pin!(connection);
        let result = tokio::select! {
            result = connection.as_mut() => result,
            () = async { drop(stopping.wait_for(|stop| *stop).await) } => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        drop(permit);
        result
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
