//! Yamux over Noise, with data frames that fill a Noise message.
//!
//! libp2p-yamux's `Config` keeps yamux's default of splitting a stream's data into 16 KiB
//! frames and offers no way to change it. Yamux flushes after each frame, so every 16 KiB of a
//! chunk became a Noise message of its own, sealed and written to the socket by itself: four
//! seals, four syscalls and four trips through the TCP stack per 64 KiB, on both ends. This is
//! the same adapter as libp2p-yamux's (MIT, rust-libp2p `muxers/yamux/src/lib.rs`), over the
//! same `yamux` crate and protocol name, with frames as large as one Noise message carries;
//! peers running libp2p-yamux read them unchanged (a frame is bounded by the stream's window,
//! at least 256 KiB, not by the sender's split size).

use std::collections::VecDeque;
use std::io;
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use futures_util::future;
use futures_util::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use yamux::{Connection, ConnectionError, Mode};

/// Data bytes per yamux frame: a Noise message carries 65535 bytes, 16 of them its tag, and
/// the frame's header takes 12, so one frame is one Noise message.
const SPLIT_SEND_BYTES: usize = 65_535 - 16 - 12;
/// Inbound streams buffered while the node does not take them yet; more are dropped (as
/// libp2p-yamux does).
const BUFFERED_INBOUND_STREAMS_MAX: usize = 256;

/// The yamux upgrade with Noise-sized frames.
#[derive(Debug, Clone)]
pub struct YamuxConfig(yamux::Config);

impl Default for YamuxConfig {
    fn default() -> Self {
        let mut config = yamux::Config::default();
        config.set_split_send_size(SPLIT_SEND_BYTES);
        YamuxConfig(config)
    }
}

impl UpgradeInfo for YamuxConfig {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for YamuxConfig
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(Connection::new(io, self.0, Mode::Server))))
    }
}

impl<C> OutboundConnectionUpgrade<C> for YamuxConfig
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(Connection::new(io, self.0, Mode::Client))))
    }
}

/// One yamux connection as libp2p's [`StreamMuxer`].
#[derive(Debug)]
pub struct Muxer<C> {
    connection: Connection<C>,
    /// Inbound streams that arrived while the swarm polled the connection for other work: yamux
    /// makes progress only through `poll_next_inbound`.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(connection: Connection<C>) -> Self {
        Muxer {
            connection,
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_next_inbound(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, ConnectionError>> {
        match ready!(self.connection.poll_next_inbound(cx)) {
            Some(stream) => Poll::Ready(stream),
            None => Poll::Ready(Err(ConnectionError::Closed)),
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = ConnectionError;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(stream) = self.poll_next_inbound(cx) {
            return Poll::Ready(stream);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::Substream, Self::Error>> {
        self.connection.poll_new_outbound(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.connection.poll_close(cx)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, Self::Error>> {
        let this = self.get_mut();
        let stream = ready!(this.poll_next_inbound(cx))?;
        if this.inbound.len() >= BUFFERED_INBOUND_STREAMS_MAX {
            tracing::warn!(stream = %stream, "dropping an inbound stream: too many buffered");
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Come back at once: other work of the connection may be ready.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
