//! Have feeds, the serving side: a peer that fetches blobs this node is fetching too opens one
//! feed (`network/feed.rs`) and watches them on it; this node pushes its bitfield of each
//! (`shoal_protocol::feed`): at once, then whenever it gained a chunk the watcher is not known
//! to hold (what the watcher told this node's own transfer, `fetch/peer_chunks.rs`), at most
//! once per [`FEED_INTERVAL`], until the blob is whole here or its transfer fails. Each watch is put
//! to the zone's rules as a `Have` request is.

use std::collections::HashMap;

use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use shoal_protocol::feed::{
    FEED_INTERVAL, FEED_REQUEST_BYTES_MAX, FeedRequest, FeedUpdate, push_delay,
};
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
        let (updates, mut outgoing) = mpsc::channel::<FeedUpdate>(UPDATES_QUEUED_MAX);
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
            while let Some(update) = outgoing.recv().await {
                if write_message_frame(&mut writer, &update).await.is_err()
                    || writer.flush().await.is_err()
                {
                    return;
                }
                Counters::add(&self.counters.bitfield_pushes_sent, 1);
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
    async fn push_have(&self, peer: PeerId, blob: Digest, updates: mpsc::Sender<FeedUpdate>) {
        if !self.permitted(peer, &Request::Have { blob }).await {
            let _ = updates.send(FeedUpdate::Lacks { blob }).await;
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
                let _ = updates.send(update).await;
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
                    if updates.send(update).await.is_err() {
                        return;
                    }
                    pushed = Some(progress.have);
                    pushed_before = true;
                    tokio::time::sleep(FEED_INTERVAL).await;
                    continue;
                }
                if transfer.changed().await.is_err() {
                    break;
                }
            }
        }
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
