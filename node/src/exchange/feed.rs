//! Have feeds, the serving side: a peer that fetches blobs this node is fetching too opens one
//! feed (`network/feed.rs`) and watches them on it; this node pushes its bitfield of each
//! (`shoal_protocol::feed`): at once, then whenever it gained a chunk the watcher is not known
//! to hold (what the watcher told this node's own transfer, `fetch/peer_chunks.rs`), until the
//! blob is whole here or its transfer fails. Each watch is put to the zone's rules as a `Have`
//! request is.
//!
//! Pushes go at the node's pace (`shoal_protocol::feed::GainPace`, kept by `pace.rs`): a watch
//! waits the node's push interval after each push, and the feed's writer holds what its
//! watches hand it until the same interval has passed since its last write, then writes the
//! latest update of every blob it holds in one record. A node gaining a chunk every quarter
//! of a second thus tells each watcher a few chunks of all its blobs at a time, where it told
//! each chunk of each blob apart; the first update of a watch goes at once.

use std::collections::HashMap;

use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use shoal_protocol::feed::{FEED_REQUEST_BYTES_MAX, FeedRequest, FeedUpdate, push_delay};
use shoal_protocol::rng::SplitMix64;
use shoal_protocol::wire::{Request, Response};
use shoal_protocol::{Bitmap, Digest};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::serve::PeerService;
use crate::network::{LinkStream, read_message_frame, write_message_frame};
use crate::observe::Counters;

/// Blobs one feed may watch at once; a peer watches the few it is fetching.
pub const WATCHES_PER_FEED_MAX: usize = 256;
/// Updates queued for one feed's writer; the watches wait while it is full.
const UPDATES_QUEUED_MAX: usize = 64;

impl PeerService {
    /// Serves the feed `peer` opened on `stream` until the peer closes it or it breaks.
    pub async fn serve_feed(&self, peer: PeerId, stream: Box<dyn LinkStream>) {
        let (mut reader, mut writer) = stream.split();
        let (updates, mut outgoing) = mpsc::channel::<Push>(UPDATES_QUEUED_MAX);
        let mut watches: HashMap<Digest, AbortHandle> = HashMap::new();
        let read = async {
            loop {
                let request: FeedRequest =
                    match read_message_frame(&mut reader, FEED_REQUEST_BYTES_MAX).await {
                        Ok(request) => request,
                        Err(_) => return,
                    };
                watches.retain(|_, watch| !watch.is_finished());
                match request {
                    FeedRequest::Watch { blob } => {
                        if watches.len() >= WATCHES_PER_FEED_MAX {
                            tracing::debug!(%peer, "closing a have feed past its watch limit");
                            return;
                        }
                        let service = self.clone();
                        let updates = updates.clone();
                        let watch = tokio::spawn(async move {
                            service.push_have(peer, blob, updates).await;
                        });
                        if let Some(earlier) = watches.insert(blob, watch.abort_handle()) {
                            earlier.abort();
                        }
                    }
                    FeedRequest::Unwatch { blob } => {
                        if let Some(watch) = watches.remove(&blob) {
                            watch.abort();
                        }
                    }
                }
            }
        };
        let write = async {
            let mut held = HeldPushes::default();
            let mut next_write = tokio::time::Instant::now();
            loop {
                if held.is_empty() {
                    let Some(push) = outgoing.recv().await else {
                        return;
                    };
                    held.hold(push);
                }
                while !held.at_once {
                    tokio::select! {
                        push = outgoing.recv() => match push {
                            Some(push) => held.hold(push),
                            None => break,
                        },
                        () = tokio::time::sleep_until(next_write) => break,
                    }
                }
                while let Ok(push) = outgoing.try_recv() {
                    held.hold(push);
                }
                let updates = held.take();
                for update in &updates {
                    if write_message_frame(&mut writer, update).await.is_err() {
                        return;
                    }
                }
                if writer.flush().await.is_err() {
                    return;
                }
                Counters::add(&self.counters.bitfield_pushes_sent, updates.len() as u64);
                Counters::add(&self.counters.have_feed_writes, 1);
                next_write = tokio::time::Instant::now() + self.pace.push_interval();
            }
        };
        tokio::select! {
            () = read => {}
            () = write => {}
        }
        for watch in watches.values() {
            watch.abort();
        }
    }

    /// Pushes this node's bitfield of `blob` to `peer` as it changes, until the blob is whole
    /// here (the last update says so) or not here at all.
    async fn push_have(&self, peer: PeerId, blob: Digest, updates: mpsc::Sender<Push>) {
        if !self.permitted(peer, &Request::Have { blob }).await {
            let _ = updates
                .send(Push::at_once(FeedUpdate::Lacks { blob }))
                .await;
            return;
        }
        let mut random = SplitMix64::new(random_seed(&peer, &blob));
        // Every push but a watch's first waits its `push_delay`, the last one too.
        let mut pushed_before = false;
        loop {
            let running = self.transfer(blob);
            let Some(mut transfer) = running.filter(|t| t.progress().outcome.is_none()) else {
                // Whole here, or not here (a transfer that failed, or never ran).
                let update = match self.have(blob).await {
                    whole @ Response::Have { complete: true, .. } => {
                        FeedUpdate::from_response(blob, whole)
                    }
                    _ => FeedUpdate::Lacks { blob },
                };
                if pushed_before {
                    tokio::time::sleep(push_delay(random.next_u64())).await;
                }
                let _ = updates.send(Push::of_watch(update, pushed_before)).await;
                return;
            };
            let mut pushed: Option<Bitmap> = None;
            loop {
                let mut progress = transfer.progress();
                if progress.outcome.is_some() {
                    break;
                }
                if let Some(layout) = progress.layout
                    && pushed.as_ref() != Some(&progress.have)
                {
                    if !progress
                        .peer_chunks
                        .news_for(&peer, pushed.as_ref(), &progress.have)
                    {
                        // Only chunks the watcher holds: nothing to tell it.
                        pushed = Some(progress.have);
                        continue;
                    }
                    if pushed_before {
                        tokio::time::sleep(push_delay(random.next_u64())).await;
                        progress = transfer.progress();
                    }
                    let update = FeedUpdate::from_response(
                        blob,
                        Response::Have {
                            blob_size: layout.blob_size(),
                            chunk_bytes: layout.chunk_bytes(),
                            chunks: progress.have.clone(),
                            complete: false,
                        },
                    );
                    if updates
                        .send(Push::of_watch(update, pushed_before))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    pushed = Some(progress.have);
                    pushed_before = true;
                    tokio::time::sleep(self.pace.push_interval()).await;
                    continue;
                }
                if transfer.changed().await.is_err() {
                    break;
                }
            }
        }
    }
}

/// An update on its way to a feed's writer.
#[derive(Debug)]
struct Push {
    update: FeedUpdate,
    /// The first of its watch: it goes at once, and takes with it whatever the feed holds.
    at_once: bool,
}

impl Push {
    fn at_once(update: FeedUpdate) -> Push {
        Push {
            update,
            at_once: true,
        }
    }

    /// An update of a watch that has `pushed_before` or not.
    fn of_watch(update: FeedUpdate, pushed_before: bool) -> Push {
        Push {
            update,
            at_once: !pushed_before,
        }
    }
}

/// The updates a feed's writer holds until its next write: at most one per blob, the latest
/// (each carries the whole bitfield).
#[derive(Debug, Default)]
struct HeldPushes {
    updates: Vec<FeedUpdate>,
    at_once: bool,
}

impl HeldPushes {
    fn is_empty(&self) -> bool {
        self.updates.is_empty()
    }

    fn hold(&mut self, push: Push) {
        self.at_once |= push.at_once;
        let blob = push.update.blob();
        match self.updates.iter_mut().find(|held| held.blob() == blob) {
            Some(held) => *held = push.update,
            None => self.updates.push(push.update),
        }
    }

    fn take(&mut self) -> Vec<FeedUpdate> {
        self.at_once = false;
        std::mem::take(&mut self.updates)
    }
}

/// A seed for the push delays of one watch: distinct per peer, blob and moment.
fn random_seed(peer: &PeerId, blob: &Digest) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&peer.to_bytes());
    hasher.update(blob.as_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use shoal_protocol::Bitmap;

    use super::*;

    fn have(blob: u8, chunks: &[u32]) -> FeedUpdate {
        FeedUpdate::Have {
            blob: Digest::of(&[blob]),
            blob_size: 4 << 20,
            chunk_bytes: 1 << 20,
            chunks: Bitmap::with_ones(4, chunks.iter().copied()),
            complete: false,
        }
    }

    #[test]
    fn a_feed_holds_the_latest_update_of_each_blob_until_it_writes() {
        let mut held = HeldPushes::default();
        assert!(held.is_empty());
        held.hold(Push::of_watch(have(1, &[0]), true));
        held.hold(Push::of_watch(have(2, &[3]), true));
        held.hold(Push::of_watch(have(1, &[0, 1]), true));
        assert!(!held.at_once, "paced updates wait for the feed's interval");
        assert_eq!(held.take(), vec![have(1, &[0, 1]), have(2, &[3])]);
        assert!(held.is_empty());

        held.hold(Push::of_watch(have(2, &[3, 2]), true));
        held.hold(Push::at_once(FeedUpdate::Lacks {
            blob: Digest::of(&[3]),
        }));
        assert!(
            held.at_once,
            "a watch's first update takes the held ones with it"
        );
        assert_eq!(held.take().len(), 2);
        assert!(!held.at_once, "and the next write waits again");
    }
}
