//! Have feeds, the serving side: a peer that fetches blobs this node is fetching too opens one
//! feed (`network/feed.rs`) and watches them on it; this node pushes its bitfield of each
//! (`shoal_protocol::feed`): at once, then whenever it gained a chunk the watcher is not known
//! to hold (what the watcher told this node's own transfer, `fetch/peer_chunks.rs`), until the
//! blob is whole here or its transfer fails. Each watch is put to the zone's rules as a `Have`
//! request is.
//!
//! One task serves a feed and all its watches ([`Pusher`]). Pushes go at the node's pace
//! (`shoal_protocol::feed::GainPace`, kept by `pace.rs`): after each write the feed rests for
//! the node's push interval, then waits for news of any blob it watches, then its
//! `push_delay`, and writes the latest update of every blob with news in one record. A node
//! gaining a chunk every quarter of a second thus tells each watcher a few chunks of all its
//! blobs at a time; a watch's first update goes at once, and takes the others' news with it.
//! The feed wakes for the watches' transfers only while it waits for news (or for a watch
//! that has not told its first update): a task per watch, each with its own timers and a
//! handoff to the feed's writer, woke a 32 × 4 fan-out member some 30 times per MiB it
//! received (docs/benchmarks.md, "One task per have feed; timer slack tried").

use std::collections::HashMap;

use futures_util::future::{Either, select_all};
use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::PeerId;
use shoal_protocol::feed::{FEED_REQUEST_BYTES_MAX, FeedRequest, FeedUpdate, push_delay};
use shoal_protocol::rng::SplitMix64;
use shoal_protocol::wire::{Request, Response};
use shoal_protocol::{Bitmap, Digest};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::fetch::{Progress, Transfer};
use super::serve::PeerService;
use crate::network::{LinkStream, read_message_frame, write_message_frame};
use crate::observe::Counters;

/// Blobs one feed may watch at once; a peer watches the few it is fetching.
pub const WATCHES_PER_FEED_MAX: usize = 256;
/// Watch and unwatch requests read but not yet taken by the feed's pusher.
const REQUESTS_QUEUED_MAX: usize = 64;

impl PeerService {
    /// Serves the feed `peer` opened on `stream` until the peer closes it or it breaks.
    pub async fn serve_feed(&self, peer: PeerId, stream: Box<dyn LinkStream>) {
        let (mut reader, mut writer) = stream.split();
        let (queue, mut requests) = mpsc::channel::<FeedRequest>(REQUESTS_QUEUED_MAX);
        let read = async {
            while let Ok(request) = read_message_frame(&mut reader, FEED_REQUEST_BYTES_MAX).await {
                if queue.send(request).await.is_err() {
                    return;
                }
            }
        };
        let push = async {
            let mut pusher = Pusher::new(self.clone(), peer);
            loop {
                tokio::select! {
                    request = requests.recv() => {
                        let Some(request) = request else {
                            return;
                        };
                        if !pusher.take(request).await {
                            tracing::debug!(%peer, "closing a have feed past its watch limit");
                            return;
                        }
                    }
                    () = pusher.due() => {
                        let updates = pusher.updates().await;
                        if updates.is_empty() {
                            pusher.wrote_nothing();
                            continue;
                        }
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
                        pusher.wrote();
                    }
                }
            }
        };
        tokio::select! {
            () = read => {}
            () = push => {}
        }
    }
}

/// What one feed tells its watcher, and when: the blobs it watches and the feed's stage.
struct Pusher {
    service: PeerService,
    peer: PeerId,
    watches: HashMap<Digest, Watch>,
    /// Updates that go with the next write, whatever the stage: a refused watch's `Lacks`.
    at_once: Vec<FeedUpdate>,
    stage: Stage,
    random: SplitMix64,
}

/// Where a feed is between two writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Wrote at most a push interval ago: only a watch's first update goes before `until`.
    Resting { until: Instant },
    /// Waits for news of a blob it watches.
    Waiting,
    /// Has news: writes at `at`, a `push_delay` after it saw them.
    Delaying { at: Instant },
}

impl Pusher {
    fn new(service: PeerService, peer: PeerId) -> Pusher {
        Pusher {
            service,
            peer,
            watches: HashMap::new(),
            at_once: Vec::new(),
            stage: Stage::Waiting,
            random: SplitMix64::new(random_seed(&peer)),
        }
    }

    /// Takes a watch or unwatch request; false when the feed watches too many blobs to take
    /// another.
    async fn take(&mut self, request: FeedRequest) -> bool {
        match request {
            FeedRequest::Watch { blob } => {
                if self.watches.len() >= WATCHES_PER_FEED_MAX {
                    return false;
                }
                if !self
                    .service
                    .permitted(self.peer, &Request::Have { blob })
                    .await
                {
                    self.watches.remove(&blob);
                    self.at_once.push(FeedUpdate::Lacks { blob });
                    return true;
                }
                let transfer = running(&self.service, blob);
                self.watches.insert(blob, Watch::new(transfer));
            }
            FeedRequest::Unwatch { blob } => {
                self.watches.remove(&blob);
            }
        }
        true
    }

    /// Waits until the feed has updates to write. Cancel-safe: what it learns stays in the
    /// stage, so a request taken meanwhile does not restart the wait.
    async fn due(&mut self) {
        loop {
            let news = self.news();
            if news == Some(Due::AtOnce) {
                return;
            }
            match self.stage {
                Stage::Resting { until } => {
                    if self.slept_until(until).await {
                        self.stage = Stage::Waiting;
                    }
                }
                Stage::Waiting => {
                    if news.is_some() {
                        let delay = push_delay(self.random.next_u64());
                        self.stage = Stage::Delaying {
                            at: Instant::now() + delay,
                        };
                    } else {
                        self.changed(|_| true).await;
                    }
                }
                Stage::Delaying { .. } if news.is_none() => self.stage = Stage::Waiting,
                Stage::Delaying { at } => {
                    if self.slept_until(at).await {
                        return;
                    }
                }
            }
        }
    }

    /// Sleeps until `until`, or until the transfer of a watch that has not told its first
    /// update changes, whichever comes first; true when `until` came.
    async fn slept_until(&mut self, until: Instant) -> bool {
        let sleep = std::pin::pin!(tokio::time::sleep_until(until));
        let first = std::pin::pin!(self.changed(|watch| !watch.told));
        matches!(
            futures_util::future::select(sleep, first).await,
            Either::Left(_)
        )
    }

    /// Waits until the transfer of a watch that `wanted` changes; forever if there is none.
    async fn changed(&mut self, wanted: impl Fn(&Watch) -> bool) {
        let (blobs, changes): (Vec<Digest>, Vec<_>) = self
            .watches
            .iter_mut()
            .filter(|(_, watch)| wanted(watch))
            .filter_map(|(blob, watch)| {
                let transfer = watch.transfer.as_mut()?;
                Some((*blob, Box::pin(transfer.changed())))
            })
            .unzip();
        if changes.is_empty() {
            return std::future::pending().await;
        }
        let (changed, index, _) = select_all(changes).await;
        if changed.is_err()
            && let Some(watch) = self.watches.get_mut(&blobs[index])
        {
            // The transfer is gone without an outcome: the watch ends with what is stored.
            watch.transfer = None;
        }
    }

    /// Whether any watch has news to write, and whether it goes at once.
    fn news(&mut self) -> Option<Due> {
        if !self.at_once.is_empty() {
            return Some(Due::AtOnce);
        }
        let mut due = None;
        for (blob, watch) in &mut self.watches {
            let progress = watch.progress(&self.service, *blob);
            match watch.news(&self.peer, progress.as_ref()) {
                Some(Due::AtOnce) => return Some(Due::AtOnce),
                Some(Due::Paced) => due = Some(Due::Paced),
                None => {}
            }
        }
        due
    }

    /// The updates of every watch with news, the last of each watch that ends with them.
    async fn updates(&mut self) -> Vec<FeedUpdate> {
        let mut updates = std::mem::take(&mut self.at_once);
        let mut ended = Vec::new();
        for (blob, watch) in &mut self.watches {
            let Some(progress) = watch.progress(&self.service, *blob) else {
                ended.push(*blob);
                continue;
            };
            if watch.news(&self.peer, Some(&progress)).is_none() {
                continue;
            }
            if let Some(layout) = progress.layout {
                updates.push(FeedUpdate::from_response(
                    *blob,
                    Response::Have {
                        blob_size: layout.blob_size(),
                        chunk_bytes: layout.chunk_bytes(),
                        chunks: progress.have.clone(),
                        complete: false,
                    },
                ));
                watch.told(progress.have);
            }
        }
        for blob in ended {
            self.watches.remove(&blob);
            updates.push(match self.service.have(blob).await {
                whole @ Response::Have { complete: true, .. } => {
                    FeedUpdate::from_response(blob, whole)
                }
                _ => FeedUpdate::Lacks { blob },
            });
        }
        updates
    }

    /// The feed wrote: it rests for the node's push interval.
    fn wrote(&mut self) {
        self.stage = Stage::Resting {
            until: Instant::now() + self.service.pace.push_interval(),
        };
    }

    /// The feed found nothing to write after all: it waits for news again.
    fn wrote_nothing(&mut self) {
        self.stage = Stage::Waiting;
    }
}

/// The transfer of `blob` running at `service`, if any.
fn running(service: &PeerService, blob: Digest) -> Option<Transfer> {
    service
        .transfer(blob)
        .filter(|t| t.progress().outcome.is_none())
}

/// When a watch's news goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// The watch's first update: at once.
    AtOnce,
    /// At the feed's pace.
    Paced,
}

/// One blob a feed watches.
struct Watch {
    /// The blob's transfer here; `None` once there is none running (the blob is whole here,
    /// or not here at all): the watch's last update is due.
    transfer: Option<Transfer>,
    /// The bitfield the watcher was last told, or found to hold already.
    pushed: Option<Bitmap>,
    /// Whether its first update went.
    told: bool,
}

impl Watch {
    fn new(transfer: Option<Transfer>) -> Watch {
        Watch {
            transfer,
            pushed: None,
            told: false,
        }
    }

    /// Whether the watch has news for `peer`, given its transfer's `progress` (`None`: no
    /// transfer runs). A gain the watcher holds already is no news, and is remembered as
    /// told.
    fn news(&mut self, peer: &PeerId, progress: Option<&Progress>) -> Option<Due> {
        let due = if self.told { Due::Paced } else { Due::AtOnce };
        let Some(progress) = progress.filter(|p| p.outcome.is_none()) else {
            return Some(due);
        };
        progress.layout?;
        if self.pushed.as_ref() == Some(&progress.have) {
            return None;
        }
        if !progress
            .peer_chunks
            .news_for(peer, self.pushed.as_ref(), &progress.have)
        {
            self.pushed = Some(progress.have.clone());
            return None;
        }
        Some(due)
    }

    /// The progress of the blob's transfer here, `None` once none runs. A transfer that
    /// failed may have been followed by a new one, which the watch then follows.
    fn progress(&mut self, service: &PeerService, blob: Digest) -> Option<Progress> {
        let progress = self.transfer.as_ref().map(Transfer::progress);
        if progress.as_ref().is_some_and(|p| p.outcome.is_none()) {
            return progress;
        }
        self.transfer = running(service, blob);
        self.transfer.as_ref().map(Transfer::progress)
    }

    fn told(&mut self, have: Bitmap) {
        self.pushed = Some(have);
        self.told = true;
    }
}

/// A seed for the push delays of one feed: distinct per peer and moment.
fn random_seed(peer: &PeerId) -> u64 {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&peer.to_bytes());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    hasher.update(&now.as_nanos().to_le_bytes());
    let hash = hasher.finalize();
    u64::from_le_bytes(hash.as_bytes()[..8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use shoal_protocol::ChunkLayout;

    use super::*;
    use crate::exchange::fetch::PeerChunks;

    fn bits(ones: &[u32]) -> Bitmap {
        Bitmap::with_ones(8, ones.iter().copied())
    }

    fn progress(have: &[u32], peer_chunks: &Arc<PeerChunks>) -> Progress {
        Progress {
            layout: Some(ChunkLayout::new(8 << 20, 1 << 20).unwrap()),
            have: bits(have),
            peer_chunks: peer_chunks.clone(),
            ..Progress::default()
        }
    }

    #[test]
    fn a_watch_tells_its_first_news_at_once_and_the_rest_at_the_feed_s_pace() {
        let peer = PeerId::random();
        let known = Arc::new(PeerChunks::default());
        let mut watch = Watch::new(None);
        assert_eq!(
            watch.news(&peer, Some(&Progress::default())),
            None,
            "nothing to tell before the blob's layout is known"
        );
        assert_eq!(
            watch.news(&peer, Some(&progress(&[1], &known))),
            Some(Due::AtOnce)
        );
        watch.told(bits(&[1]));
        assert_eq!(watch.news(&peer, Some(&progress(&[1], &known))), None);
        assert_eq!(
            watch.news(&peer, Some(&progress(&[1, 2], &known))),
            Some(Due::Paced)
        );
    }

    #[test]
    fn a_gain_the_watcher_holds_is_no_news_and_counts_as_told() {
        let peer = PeerId::random();
        let known = Arc::new(PeerChunks::default());
        known.told(peer, Some(bits(&[0, 1, 2, 3])));
        let mut watch = Watch::new(None);
        watch.told(bits(&[1]));
        assert_eq!(watch.news(&peer, Some(&progress(&[1, 2], &known))), None);
        assert_eq!(watch.pushed, Some(bits(&[1, 2])));
        assert_eq!(
            watch.news(&peer, Some(&progress(&[1, 2, 5], &known))),
            Some(Due::Paced),
            "chunk 5 is news"
        );
    }

    #[test]
    fn a_watch_without_a_transfer_has_its_last_update_due() {
        let peer = PeerId::random();
        let mut untold = Watch::new(None);
        assert_eq!(untold.news(&peer, None), Some(Due::AtOnce));
        let known = Arc::new(PeerChunks::default());
        let mut told = Watch::new(None);
        told.told(bits(&[1]));
        let mut ended = progress(&[1], &known);
        ended.outcome = Some(Ok(()));
        assert_eq!(
            told.news(&peer, Some(&ended)),
            Some(Due::Paced),
            "a transfer that ended ends the watch at the feed's pace"
        );
    }
}
