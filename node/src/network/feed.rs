//! Have feeds, the watching side: one long-lived `/shoal/have-feed/1` stream per peer, on
//! which this node's transfers watch the peer's bitfield of the blobs they fetch, and the
//! peer pushes it as it changes (`shoal_protocol::feed`; the serving side is
//! `exchange/feed.rs`). Replaces polling a downloading peer every 250 ms per blob: a push
//! costs one small frame when something changed, a poll a request and an answer, and a
//! lookup of the blob, whether or not anything changed.
//!
//! A transfer calls [`HaveFeeds::watch`] and reads the latest update from the [`HaveWatch`] it
//! gets; dropping the watch unwatches. A feed that cannot be opened (a peer without the
//! protocol) or breaks ends every watch on it: the transfer then polls that peer as before,
//! and a peer that gave no feed is not asked again for [`RETRY_AFTER`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{AsyncReadExt, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use shoal_protocol::Digest;
use shoal_protocol::feed::{FEED_UPDATE_BYTES_MAX, FeedRequest, FeedUpdate};
use tokio::sync::{mpsc, watch};
use tokio::task::AbortHandle;

use super::chunks::{Carrier, LinkStream, open_lane_or_stream};
use super::codec::{read_message_frame, write_message_frame};
use super::lane::{LaneUse, Lanes};
use crate::observe::Counters;

pub const FEED_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/have-feed/1");
/// Watch and unwatch requests queued for one feed: a node fetches a few blobs at a time.
const FEED_QUEUE_LEN: usize = 64;
/// How long a peer that gave no feed is not asked for one again.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// Peers whose feeds are remembered before the ended ones are forgotten.
const PEERS_KEPT_MAX: usize = 256;

/// The latest update of one watch; `None` until the first arrives.
type Latest = watch::Sender<Option<FeedUpdate>>;

/// This node's feeds to its peers. Cheap to clone; the feeds end when the last clone drops.
#[derive(Clone)]
pub struct HaveFeeds {
    control: libp2p_stream::Control,
    lanes: Lanes,
    shared: Arc<Mutex<Shared>>,
    counters: Arc<Counters>,
}

#[derive(Default)]
struct Shared {
    feeds: HashMap<PeerId, Feed>,
    /// Peers that gave no feed, until when they are not asked again.
    without: HashMap<PeerId, Instant>,
}

/// A running feed to one peer; dropping it stops its task, which ends its watches.
struct Feed {
    requests: mpsc::Sender<FeedRequest>,
    watches: Arc<Mutex<HashMap<Digest, Latest>>>,
    task: AbortHandle,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for HaveFeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HaveFeeds").finish_non_exhaustive()
    }
}

/// One blob watched on one peer's feed. Dropping it unwatches.
#[derive(Debug)]
pub struct HaveWatch {
    blob: Digest,
    latest: watch::Receiver<Option<FeedUpdate>>,
    requests: mpsc::Sender<FeedRequest>,
    watches: Arc<Mutex<HashMap<Digest, Latest>>>,
}

impl HaveWatch {
    /// The next update not seen yet: the latest, when several came since the last call.
    /// `None` once the watch has ended: the peer's last update ended it, or the feed broke.
    pub async fn next(&mut self) -> Option<FeedUpdate> {
        loop {
            self.latest.changed().await.ok()?;
            if let Some(update) = self.latest.borrow_and_update().clone() {
                return Some(update);
            }
        }
    }
}

impl Drop for HaveWatch {
    fn drop(&mut self) {
        lock(&self.watches).remove(&self.blob);
        let _ = self
            .requests
            .try_send(FeedRequest::Unwatch { blob: self.blob });
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl HaveFeeds {
    pub fn new(
        control: libp2p_stream::Control,
        lanes: Lanes,
        counters: Arc<Counters>,
    ) -> HaveFeeds {
        HaveFeeds {
            control,
            lanes,
            shared: Arc::default(),
            counters,
        }
    }

    /// Watches `peer`'s bitfield of `blob` on the feed to it, opened if none runs; `None`
    /// when the peer gave no feed lately (it is polled instead).
    pub fn watch(&self, peer: PeerId, blob: Digest) -> Option<HaveWatch> {
        let mut shared = lock(&self.shared);
        let now = Instant::now();
        if shared.without.get(&peer).is_some_and(|until| *until > now) {
            return None;
        }
        shared.without.retain(|_, until| *until > now);
        if shared.feeds.len() >= PEERS_KEPT_MAX && !shared.feeds.contains_key(&peer) {
            shared.feeds.retain(|_, feed| !feed.requests.is_closed());
        }
        let feed = match shared.feeds.get(&peer) {
            Some(feed) if !feed.requests.is_closed() => feed,
            _ => {
                let feed = self.open(peer);
                shared.feeds.insert(peer, feed);
                shared.feeds.get(&peer)?
            }
        };
        // Registered before the request goes, so that the first update finds it.
        let (sender, latest) = watch::channel(None);
        lock(&feed.watches).insert(blob, sender);
        if feed.requests.try_send(FeedRequest::Watch { blob }).is_err() {
            lock(&feed.watches).remove(&blob);
            return None;
        }
        Some(HaveWatch {
            blob,
            latest,
            requests: feed.requests.clone(),
            watches: feed.watches.clone(),
        })
    }

    /// Ends the feed to `peer` and its watches (the peer was banned or left).
    pub fn close(&self, peer: &PeerId) {
        lock(&self.shared).feeds.remove(peer);
    }

    fn open(&self, peer: PeerId) -> Feed {
        let (requests, queue) = mpsc::channel(FEED_QUEUE_LEN);
        let watches: Arc<Mutex<HashMap<Digest, Latest>>> = Arc::default();
        let run = run_feed(self.clone(), peer, queue, watches.clone());
        Feed {
            requests,
            watches,
            task: tokio::spawn(run).abort_handle(),
        }
    }

    fn give_up_on(&self, peer: PeerId) {
        lock(&self.shared)
            .without
            .insert(peer, Instant::now() + RETRY_AFTER);
    }
}

/// Opens the feed to `peer`: on a lane of its own when the peer gives one, else on a libp2p
/// stream; `None` when it gives neither.
async fn open_feed(feeds: &HaveFeeds, peer: PeerId) -> Option<Box<dyn LinkStream>> {
    let opened = open_lane_or_stream(
        &feeds.control,
        &feeds.lanes,
        peer,
        LaneUse::Feed,
        FEED_PROTOCOL,
    )
    .await;
    match opened {
        Ok((stream, carrier)) => {
            let count = match carrier {
                Carrier::Lane => &feeds.counters.have_feeds_lane,
                Carrier::Stream => &feeds.counters.have_feeds_stream,
            };
            Counters::add(count, 1);
            Some(stream)
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "no have feed; polling the peer's bitfields");
            None
        }
    }
}

/// Opens the feed to `peer`, sends the watch requests of `queue` on it and hands each update
/// to its watch, until either side stops; then every watch on it ends.
async fn run_feed(
    feeds: HaveFeeds,
    peer: PeerId,
    mut queue: mpsc::Receiver<FeedRequest>,
    watches: Arc<Mutex<HashMap<Digest, Latest>>>,
) {
    let Some(stream) = open_feed(&feeds, peer).await else {
        feeds.give_up_on(peer);
        lock(&watches).clear();
        return;
    };
    let (mut reader, mut writer) = stream.split();
    let write = async move {
        while let Some(request) = queue.recv().await {
            if write_message_frame(&mut writer, &request).await.is_err()
                || writer.flush().await.is_err()
            {
                return;
            }
        }
        let _ = writer.close().await;
    };
    let read = async {
        loop {
            let update: FeedUpdate =
                match read_message_frame(&mut reader, FEED_UPDATE_BYTES_MAX).await {
                    Ok(update) => update,
                    Err(error) => {
                        tracing::debug!(%peer, %error, "have feed ended");
                        return;
                    }
                };
            Counters::add(&feeds.counters.bitfield_pushes_received, 1);
            let mut watches = lock(&watches);
            let blob = update.blob();
            let ends = update.ends_watch();
            if let Some(latest) = watches.get(&blob) {
                latest.send_replace(Some(update));
            }
            if ends {
                watches.remove(&blob);
            }
        }
    };
    tokio::select! {
        () = write => {}
        () = read => {}
    }
    lock(&watches).clear();
}
