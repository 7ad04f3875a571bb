//! Measures a gateway blob body while it streams: the bytes it carries (and whether they come
//! from the store or the network), the time to its first byte, and — when it is sent to the
//! end — its duration and throughput. A body the client abandons counts its bytes but no
//! duration, since it says nothing about how long a whole one takes.
//!
//! The end is when the body's last byte leaves, not when the stream says it is over: hyper
//! stops polling a body once it has sent `Content-Length` bytes, so the stream's final `None`
//! may never be asked for.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use futures_util::Stream;
use shoal_gateway::BlobStream;

use super::Counters;
use super::histogram::ServedFrom;

/// Wraps `body`, `length` bytes answering a request that reached the node at `started`.
pub fn measured(
    body: BlobStream,
    length: u64,
    counters: Arc<Counters>,
    from: ServedFrom,
    started: Instant,
) -> BlobStream {
    Box::pin(MeasuredBody {
        body,
        counters,
        from,
        started,
        length,
        bytes: 0,
        ended: false,
    })
}

struct MeasuredBody {
    body: BlobStream,
    counters: Arc<Counters>,
    from: ServedFrom,
    started: Instant,
    length: u64,
    bytes: u64,
    ended: bool,
}

impl MeasuredBody {
    fn on_piece(&mut self, length: u64) {
        if length == 0 {
            return;
        }
        let counters = &self.counters;
        if self.bytes == 0 {
            let timings = counters.timings.gateway(self.from);
            timings.first_byte.observe_duration(self.started.elapsed());
        }
        self.bytes += length;
        Counters::add(&counters.bytes_served_by_gateway, length);
        if self.from == ServedFrom::Store {
            Counters::add(&counters.bytes_served_from_store, length);
        }
        if self.bytes >= self.length {
            self.on_end();
        }
    }

    fn on_end(&mut self) {
        if std::mem::replace(&mut self.ended, true) {
            return;
        }
        let timings = self.counters.timings.gateway(self.from);
        let elapsed = self.started.elapsed();
        timings.duration.observe_duration(elapsed);
        timings.throughput.observe_throughput(self.bytes, elapsed);
    }
}

impl Stream for MeasuredBody {
    type Item = std::io::Result<bytes::Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.ended {
            return Poll::Ready(None);
        }
        let polled = this.body.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(piece))) => this.on_piece(piece.len() as u64),
            Poll::Ready(None) => this.on_end(),
            // A failed body is not a whole one: its bytes counted, no duration.
            Poll::Ready(Some(Err(_))) => this.ended = true,
            Poll::Pending => {}
        }
        polled
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    fn body(pieces: Vec<std::io::Result<&'static [u8]>>) -> BlobStream {
        Box::pin(futures_util::stream::iter(
            pieces
                .into_iter()
                .map(|piece| piece.map(bytes::Bytes::from_static)),
        ))
    }

    #[tokio::test]
    async fn a_whole_body_counts_its_bytes_and_its_times() {
        let counters = Arc::new(Counters::default());
        let started = Instant::now();
        let stream = measured(
            body(vec![Ok(b""), Ok(b"abc"), Ok(b"de")]),
            5,
            counters.clone(),
            ServedFrom::Store,
            started,
        );
        let pieces: Vec<_> = stream.collect().await;
        assert_eq!(pieces.len(), 3);
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.bytes_served_by_gateway, 5);
        assert_eq!(snapshot.bytes_served_from_store, 5);
        let store = counters.timings.gateway(ServedFrom::Store);
        assert_eq!(store.first_byte.count(), 1);
        assert_eq!(store.duration.count(), 1);
        assert_eq!(store.throughput.count(), 0, "5 bytes is no throughput");
        let network = counters.timings.gateway(ServedFrom::Network);
        assert_eq!(network.first_byte.count(), 0);
    }

    /// hyper never asks for the `None` after `Content-Length` bytes: the last byte is the end.
    #[tokio::test]
    async fn the_last_byte_ends_the_body_without_waiting_for_the_stream_to_say_so() {
        let counters = Arc::new(Counters::default());
        let endless = futures_util::stream::iter([Ok(bytes::Bytes::from_static(b"abcd"))])
            .chain(futures_util::stream::pending());
        let mut stream = measured(
            Box::pin(endless),
            4,
            counters.clone(),
            ServedFrom::Network,
            Instant::now(),
        );
        assert!(stream.next().await.is_some());
        let network = counters.timings.gateway(ServedFrom::Network);
        assert_eq!(network.duration.count(), 1);
        assert!(stream.next().await.is_none(), "and nothing after it");
        assert_eq!(network.duration.count(), 1, "counted once");
    }

    #[tokio::test]
    async fn a_failed_body_counts_bytes_but_no_duration() {
        let counters = Arc::new(Counters::default());
        let failure = std::io::Error::other("peer gone");
        let stream = measured(
            body(vec![Ok(b"abc"), Err(failure), Ok(b"never")]),
            8,
            counters.clone(),
            ServedFrom::Network,
            Instant::now(),
        );
        let pieces: Vec<_> = stream.collect().await;
        assert_eq!(pieces.len(), 2, "nothing after the error");
        let snapshot = counters.snapshot();
        assert_eq!(snapshot.bytes_served_by_gateway, 3);
        assert_eq!(snapshot.bytes_served_from_store, 0);
        let network = counters.timings.gateway(ServedFrom::Network);
        assert_eq!(network.first_byte.count(), 1);
        assert_eq!(network.duration.count(), 0);
    }
}
