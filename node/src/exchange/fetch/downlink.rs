//! What a node's transfers share about its downlink.
//!
//! - The chunk requests it has out over all its transfers. They come in over one downlink, so
//!   each transfer's window counts the others' (`Scheduler::set_requests_elsewhere`): a node
//!   pulls several blobs of an image at once, and in a fan-out at 4 MiB/s four transfers that
//!   each kept their own window of 2 had 8 chunks out, two seconds of the node's downlink,
//!   while the peers holding them refused the other fetchers.
//! - The peers that refused one of them `Busy` for a full uplink lately: that uplink is as full
//!   for the others, which learn it here instead of by a refusal each
//!   (`Scheduler::uplink_refused_elsewhere`).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use libp2p::PeerId;
use shoal_protocol::Digest;

/// Refusals kept for the transfers that have not read them yet; one that falls further behind
/// misses the oldest, whose rests are over by then (a fan-out member hears about 50 a second).
const REFUSALS_KEPT: usize = 256;

/// The count of chunk requests in flight, shared by a node's transfers.
#[derive(Debug, Default)]
pub struct ChunkRequests(AtomicUsize);

impl ChunkRequests {
    /// Counts one request until the returned guard is dropped: when its answer is in, or when
    /// its task is aborted with its transfer.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request counted in [`ChunkRequests`].
#[derive(Debug)]
pub struct InFlight(Arc<ChunkRequests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A refusal for a full uplink heard by one of the node's transfers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub peer: PeerId,
    pub at: Instant,
    /// The blob of the transfer that was refused: it knows already.
    blob: Digest,
}

/// The latest refusals for full uplinks over all of a node's transfers, each numbered; every
/// transfer reads those after the last it read, except its own.
#[derive(Debug, Default)]
pub struct UplinkRefusals {
    /// The number of the latest refusal: a transfer with nothing new to read takes no lock.
    latest: AtomicU64,
    kept: Mutex<VecDeque<(u64, Refusal)>>,
}

impl UplinkRefusals {
    pub fn record(&self, peer: PeerId, blob: Digest, at: Instant) {
        let mut kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let number = self.latest.load(Ordering::Relaxed) + 1;
        if kept.len() == REFUSALS_KEPT {
            kept.pop_front();
        }
        kept.push_back((number, Refusal { peer, at, blob }));
        self.latest.store(number, Ordering::Release);
    }

    /// Where a new transfer starts reading: after every refusal so far.
    pub fn cursor(&self) -> u64 {
        self.latest.load(Ordering::Acquire)
    }

    /// The refusals after `cursor` that other transfers than `blob`'s heard; moves `cursor`
    /// past them.
    pub fn read(&self, cursor: &mut u64, blob: &Digest) -> Vec<Refusal> {
        if self.latest.load(Ordering::Acquire) == *cursor {
            return Vec::new();
        }
        let kept = self.kept.lock().unwrap_or_else(PoisonError::into_inner);
        let from = *cursor;
        *cursor = kept.back().map_or(from, |(number, _)| *number);
        kept.iter()
            .filter(|(number, refusal)| *number > from && refusal.blob != *blob)
            .map(|(_, refusal)| *refusal)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(byte: u8) -> Digest {
        Digest::of(&[byte])
    }

    #[test]
    fn a_transfer_reads_the_others_refusals_once_and_never_its_own() {
        let refusals = UplinkRefusals::default();
        let (a, b) = (blob(1), blob(2));
        let (p, q) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        refusals.record(p, a, now);
        let mut late_cursor = refusals.cursor();
        let mut cursor = 0;
        refusals.record(q, b, now);
        let read: Vec<PeerId> = refusals
            .read(&mut cursor, &a)
            .iter()
            .map(|r| r.peer)
            .collect();
        assert_eq!(read, vec![q], "a's own refusal is not read back");
        assert!(refusals.read(&mut cursor, &a).is_empty(), "read once");
        let read: Vec<PeerId> = refusals
            .read(&mut late_cursor, &a)
            .iter()
            .map(|r| r.peer)
            .collect();
        assert_eq!(
            read,
            vec![q],
            "a transfer started later reads only what came after"
        );
    }

    #[test]
    fn a_transfer_far_behind_misses_only_the_oldest() {
        let refusals = UplinkRefusals::default();
        let mut cursor = refusals.cursor();
        let peers: Vec<PeerId> = (0..REFUSALS_KEPT + 10).map(|_| PeerId::random()).collect();
        for &peer in &peers {
            refusals.record(peer, blob(2), Instant::now());
        }
        let read: Vec<PeerId> = refusals
            .read(&mut cursor, &blob(1))
            .iter()
            .map(|r| r.peer)
            .collect();
        assert_eq!(read, peers[10..]);
        assert_eq!(cursor, refusals.cursor());
    }

    #[tokio::test]
    async fn a_request_counts_until_its_answer_or_its_aborted_task() {
        let requests = Arc::new(ChunkRequests::default());
        let answered = requests.start();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let in_flight = requests.start();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            held.await.ok();
        });
        assert_eq!(requests.in_flight(), 2);
        drop(answered);
        assert_eq!(requests.in_flight(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(
            requests.in_flight(),
            0,
            "an aborted task's request is no longer out"
        );
        drop(hold);
    }
}
