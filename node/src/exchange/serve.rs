//! Serving peers: answers inbound exchange requests from the store and from transfers in
//! progress, takes gossiped announcements, and syncs announcements with peers that connect.
//!
//! Each inbound request runs as its own task (bounded in number); the answer goes back to the
//! swarm through [`NetworkHandle::respond`]. Every request and every chunk asked on a link is
//! first put to the zone's rules (`zone.rs`) with the provenance of the content it names
//! ([`ContentProvenance`]): content a peer may not have is, to that peer, content this node
//! lacks (`NotFound`), and a delegation it may not ask is answered `Denied`. Whether a chunk
//! goes or the peer is told `Busy` (super-seeding, a full uplink) is the protocol's serving
//! policy ([`shoal_protocol::serving`], through [`SeedLedger`]), the same machine the simulator
//! runs; this module feeds it what the store holds and what the egress limiters have queued.
//! Chunks leave only after the egress limiter lets them, and a chunk is only ever read from
//! content verified against its digest or its index.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::FuturesOrdered;
use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::PeerId;
use shoal_protocol::chunk::ChunkIndex;
use shoal_protocol::wire::{Request, Response};
use shoal_protocol::{Answer, Bitmap, BusyReason, ChunkLayout, Digest, Holding};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::announce::Announcements;
use crate::exchange::fetch::{FetchHandle, Origin, Progress, Transfer};
use crate::exchange::pace::NodePace;
use crate::exchange::provenance::ContentProvenance;
use crate::exchange::rate::{Booking, RateLimiter};
use crate::exchange::seeding::SeedLedger;
use crate::locality::Locality;
use crate::network::{
    ChunkAnswer, ChunkBuffers, InboundRequest, LinkAnswer, LinkStream, NetworkEvent, NetworkHandle,
    read_request_frame, write_link_answer,
};
use crate::observe::Counters;
use crate::store::Store;
use crate::upstream::Upstreams;
use crate::zone::{Decision, Provenance};

/// Inbound requests worked on at once; more wait in the network's queue.
const INBOUND_CONCURRENCY: usize = 64;
/// Pages of announcements taken from one peer at a time; bounds a hostile peer's cursor loop.
const SYNC_PAGES_MAX: usize = 1_000;
/// Chunk requests of one link worked on at once: the next chunk is read while the one before
/// it is sent, and a few more wait in order.
const LINK_ANSWERS_AHEAD: usize = 4;
/// Chunk links served at once, and per peer: a peer opens 8 (`network/chunks.rs`); twice that
/// covers links being replaced and a second connection.
const LINKS_MAX: usize = 1024;
const LINKS_PER_PEER_MAX: usize = 16;
/// Have feeds served at once, and per peer: a peer opens one (`network/feed.rs`); a few
/// cover one being replaced and a second connection.
const FEEDS_MAX: usize = 1024;
const FEEDS_PER_PEER_MAX: usize = 4;

/// Called with each announcement accepted from a trusted publisher.
pub type OnAnnouncement = Arc<dyn Fn(shoal_protocol::announce::Announcement) + Send + Sync>;

#[derive(Clone)]
pub struct PeerService {
    pub store: Store,
    pub network: NetworkHandle,
    pub fetch: FetchHandle,
    pub announcements: Arc<Announcements>,
    pub counters: Arc<Counters>,
    pub egress: Option<Arc<RateLimiter>>,
    /// `--max-site-egress`: chunks to peers outside this node's site.
    pub site_egress: Option<Arc<RateLimiter>>,
    pub locality: Arc<Locality>,
    pub on_announcement: OnAnnouncement,
    pub seeding: Arc<SeedLedger>,
    pub upstreams: Upstreams,
    /// The zone's rules, and where the content a request names comes from.
    pub provenance: Arc<ContentProvenance>,
    /// How fast the node gains chunks: what its feeds space their pushes by.
    pub pace: Arc<NodePace>,
    /// Fault injection for tests: corrupt every chunk sent.
    pub corrupt_chunks: bool,
}

impl std::fmt::Debug for PeerService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerService").finish_non_exhaustive()
    }
}

impl PeerService {
    pub async fn run(self, mut events: mpsc::Receiver<NetworkEvent>, shutdown: CancellationToken) {
        let permits = Arc::new(Semaphore::new(INBOUND_CONCURRENCY));
        let links = LinkCount::new(LINKS_MAX, LINKS_PER_PEER_MAX);
        let feeds = LinkCount::new(FEEDS_MAX, FEEDS_PER_PEER_MAX);
        let mut tasks = JoinSet::new();
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => break,
                event = events.recv() => match event { Some(event) => event, None => break },
            };
            while tasks.try_join_next().is_some() {}
            match event {
                NetworkEvent::Inbound(inbound) => {
                    let Ok(permit) = permits.clone().acquire_owned().await else {
                        break;
                    };
                    let service = self.clone();
                    tasks.spawn(async move {
                        service.answer(inbound).await;
                        drop(permit);
                    });
                }
                NetworkEvent::Announcement { data, .. } => self.take_announcement(&data),
                NetworkEvent::PeerConnected(peer) => {
                    let service = self.clone();
                    tasks.spawn(async move { service.sync_announcements(peer).await });
                }
                NetworkEvent::PeerDisconnected(peer) => self.seeding.peer_left(&peer),
                NetworkEvent::FeedStream { peer, stream } => {
                    let Some(admitted) = feeds.admit(peer) else {
                        tracing::debug!(%peer, "refusing a have feed beyond the limits");
                        continue;
                    };
                    let service = self.clone();
                    tasks.spawn(async move {
                        service.serve_feed(peer, stream).await;
                        drop(admitted);
                    });
                }
                NetworkEvent::ChunkStream { peer, stream } => {
                    let Some(admitted) = links.admit(peer) else {
                        tracing::debug!(%peer, "refusing a chunk link beyond the limits");
                        continue;
                    };
                    let service = self.clone();
                    tasks.spawn(async move {
                        service.serve_chunk_link(peer, stream).await;
                        drop(admitted);
                    });
                }
            }
        }
        tasks.shutdown().await;
    }

    fn take_announcement(&self, data: &[u8]) {
        if let Some(announcement) = self.announcements.receive(data) {
            tracing::info!(repository = %announcement.repository, tag = %announcement.tag, manifest = %announcement.manifest, "announcement accepted");
            (self.on_announcement)(announcement);
        }
    }

    /// A node that joins late learns every announcement its peers keep, page by page.
    async fn sync_announcements(&self, peer: PeerId) {
        let mut after = None;
        for _ in 0..SYNC_PAGES_MAX {
            match self
                .network
                .request(peer, Request::Announcements { after })
                .await
            {
                Ok(Response::Announcements {
                    announcements,
                    next,
                }) => {
                    for signed in announcements {
                        if let Ok(data) = signed.encode() {
                            self.take_announcement(&data);
                        }
                    }
                    match next {
                        Some(cursor) => after = Some(cursor),
                        None => return,
                    }
                }
                Ok(_) => return,
                Err(error) => {
                    tracing::debug!(%peer, %error, "announcement sync failed");
                    return;
                }
            }
        }
    }

    async fn answer(&self, inbound: InboundRequest) {
        tracing::trace!(peer = %inbound.peer, request = ?inbound.request, "answering");
        if !self.permitted(inbound.peer, &inbound.request).await {
            let refusal = match inbound.request {
                Request::Fetch { .. } => Response::Denied,
                _ => Response::NotFound,
            };
            self.network.respond(inbound.id, refusal).await;
            return;
        }
        let response = match inbound.request {
            Request::Have { blob } => self.have(blob).await,
            Request::Index { blob } => self.index(blob).await,
            Request::Chunk { blob, chunk } => self
                .chunk_permitted(inbound.peer, blob, chunk)
                .await
                .into_response(),
            Request::Fetch {
                blob,
                repository,
                manifest,
            } => self.fetch_for_peer(blob, &repository, manifest).await,
            Request::Announcements { after } => {
                let mut page = self.announcements.page(after.as_ref());
                let zone = self.provenance.zone();
                if zone.has_credentialed() {
                    page.announcements.retain(|signed| {
                        signed.verify().is_ok_and(|verified| {
                            let repository = &verified.announcement().repository;
                            let namespace = repository.split_once('/').map_or("", |(ns, _)| ns);
                            zone.may_see_namespace(&inbound.peer, namespace)
                        })
                    });
                }
                Response::Announcements {
                    announcements: page.announcements,
                    next: page.next,
                }
            }
        };
        self.network.respond(inbound.id, response).await;
    }

    /// Answers the chunk requests a peer sends on its chunk link, in order, working on up to
    /// [`LINK_ANSWERS_AHEAD`] at once (reads from disk overlap with sending), until the peer
    /// closes the stream or it breaks.
    async fn serve_chunk_link(&self, peer: PeerId, stream: Box<dyn LinkStream>) {
        let (mut reader, mut writer) = stream.split();
        let (requests, mut queued) = mpsc::channel(LINK_ANSWERS_AHEAD);
        let read = async move {
            loop {
                match read_request_frame(&mut reader).await {
                    Ok(request @ (Request::Chunk { .. } | Request::Have { .. })) => {
                        if requests.send(request).await.is_err() {
                            return;
                        }
                    }
                    Ok(other) => {
                        tracing::debug!(%peer, request = ?other, "not a chunk request on a chunk link");
                        return;
                    }
                    Err(_) => return,
                }
            }
        };
        let answer = async move {
            let mut answers = FuturesOrdered::new();
            let mut open = true;
            loop {
                tokio::select! {
                    biased;
                    Some(answer) = answers.next(), if !answers.is_empty() => {
                        // Flushed at once: a lane keeps a chunk's last record until then, and
                        // the next answer may wait (for the egress limiter, a read).
                        if write_link_answer(&mut writer, &answer).await.is_err()
                            || writer.flush().await.is_err()
                        {
                            return;
                        }
                    }
                    request = queued.recv(), if open && answers.len() < LINK_ANSWERS_AHEAD => {
                        match request {
                            Some(request) => answers.push_back(self.link_answer(peer, request)),
                            None => open = false,
                        }
                    }
                    else => return,
                }
            }
        };
        tokio::join!(read, answer);
    }

    /// The answer to a request on a chunk link: a chunk, or a bitfield (peers poll bitfields
    /// on their lanes rather than on a substream each).
    async fn link_answer(&self, peer: PeerId, request: Request) -> LinkAnswer {
        match request {
            Request::Chunk { blob, chunk } => {
                LinkAnswer::Chunk(self.chunk(peer, blob, chunk).await)
            }
            Request::Have { blob } if self.permitted(peer, &request).await => {
                LinkAnswer::Response(self.have(blob).await)
            }
            _ => LinkAnswer::Response(Response::NotFound),
        }
    }

    /// Asks the serving policy whether `chunk` goes to `peer`, with the egress queued ahead on
    /// the limiters it would cross (`--max-egress`, and `--max-site-egress` for a peer outside
    /// this node's site; the longer queue counts), and books its `length` bytes on them in the
    /// same step if it does. Decided before the chunk is read, so a `Busy` costs no read and no
    /// buffer. Returns how long to wait before sending.
    fn decide(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
        holding: Holding,
        length: u64,
    ) -> Result<Duration, ChunkAnswer> {
        let outside = self.locality.outside(&peer);
        let site_egress = self.site_egress.as_ref().filter(|_| outside);
        let bookings: Vec<Booking<'_>> = [self.egress.as_ref(), site_egress]
            .into_iter()
            .flatten()
            .map(|limiter| limiter.lock())
            .collect();
        let egress_ahead = bookings
            .iter()
            .map(Booking::ahead)
            .max()
            .unwrap_or_default();
        let answer = self
            .seeding
            .decide(peer, blob, chunk, holding, egress_ahead, Instant::now());
        match answer {
            Answer::Send => {
                tracing::trace!(%peer, %blob, chunk, "chunk request answered");
                Ok(bookings
                    .into_iter()
                    .map(|booking| booking.book(length))
                    .max()
                    .unwrap_or_default())
            }
            Answer::Busy(reason) => {
                tracing::trace!(%peer, %blob, chunk, ?reason, "chunk request answered busy");
                let counter = match reason {
                    BusyReason::Egress => &self.counters.busy_answers_egress,
                    BusyReason::SuperSeeding => &self.counters.busy_answers_super_seeding,
                };
                Counters::add(counter, 1);
                Err(ChunkAnswer::Busy(reason))
            }
        }
    }

    /// Counts a chunk of `length` bytes sent to `peer`.
    fn sent(&self, peer: PeerId, length: u64) {
        Counters::add(&self.counters.bytes_sent_to_peers, length);
        if self.locality.outside(&peer) {
            Counters::add(&self.counters.bytes_sent_to_other_sites, length);
        }
        self.locality.record_sent(peer, length);
    }

    /// Starts fetching `blob` from the upstream a peer chose this node to fetch it from; the
    /// peer then takes it from here like any blob in progress.
    async fn fetch_for_peer(&self, blob: Digest, repository: &str, manifest: bool) -> Response {
        let Ok(repo) = shoal_protocol::RepoName::from_qualified(repository) else {
            return Response::NotFound;
        };
        if self.upstreams.for_repo(&repo).is_none() {
            return Response::NotFound;
        }
        let origin = Origin { repo, manifest };
        match self.fetch.fetch(blob, Some(origin)).await {
            Some(_) => Response::Fetching,
            None => Response::NotFound,
        }
    }

    /// Runs `work` through [`Store::blocking`]. A peer's answer has no room for our errors: a
    /// blob the store cannot read is, to the peer, a blob we lack, so `work` says `None` and a
    /// task that panicked or was cancelled (shutdown) does too.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Option<T> + Send + 'static,
    ) -> Option<T> {
        match self.store.blocking(move |store| Ok(work(store))).await {
            Ok(held) => held,
            Err(error) => {
                tracing::debug!(%error, "store work for a peer failed");
                None
            }
        }
    }

    /// The transfer of `blob` running here, if any.
    pub(super) fn transfer(&self, blob: Digest) -> Option<Transfer> {
        self.fetch.running(&blob)
    }

    fn partial(&self, blob: Digest) -> Option<Progress> {
        let progress = self.transfer(blob)?.progress();
        progress.layout.is_some().then_some(progress)
    }

    /// The chunk index of a stored blob: from the store's memory without leaving this task
    /// when it is there (a seed's every chunk request asks), else from a blocking thread.
    async fn stored_index(&self, blob: Digest) -> Option<Arc<ChunkIndex>> {
        if let Some(index) = self.store.cached_chunk_index(&blob) {
            return Some(index);
        }
        self.blocking(move |store| store.chunk_index(&blob).ok().flatten())
            .await
    }

    /// This node's bitfield of `blob`. A transfer still running here answers first, as for
    /// chunks: its blob is not in the store yet. A blob coming from an upstream has no index
    /// until it is whole: its bitmap tells peers that it is coming, and they ask for the
    /// index again later.
    pub(super) async fn have(&self, blob: Digest) -> Response {
        let running = self.partial(blob);
        if let Some(progress) = running.as_ref().filter(|p| p.outcome.is_none()) {
            return partial_have(progress);
        }
        if let Some(index) = self.stored_index(blob).await {
            return Response::Have {
                blob_size: index.blob_size(),
                chunk_bytes: index.chunk_bytes(),
                chunks: Bitmap::full(index.chunk_count()),
                complete: true,
            };
        }
        running.as_ref().map_or(Response::NotFound, partial_have)
    }

    async fn index(&self, blob: Digest) -> Response {
        if let Some(index) = self.stored_index(blob).await {
            return Response::Index((*index).clone());
        }
        match self.partial(blob).and_then(|progress| progress.index) {
            Some(index) => Response::Index((*index).clone()),
            None => Response::NotFound,
        }
    }

    /// Whether the zone lets `peer` ask `request`, given where the content it names comes
    /// from; a refusal is counted and logged.
    pub(super) async fn permitted(&self, peer: PeerId, request: &Request) -> bool {
        let zone = self.provenance.zone();
        let blob = match request {
            Request::Have { blob }
            | Request::Index { blob }
            | Request::Chunk { blob, .. }
            | Request::Fetch { blob, .. } => Some(*blob),
            Request::Announcements { .. } => None,
        };
        let provenance = match blob {
            Some(blob) if zone.has_credentialed() => self.provenance_of(blob).await,
            _ => Provenance::Public,
        };
        match zone.decide(&peer, request, &provenance) {
            Decision::Allow => true,
            Decision::Deny => {
                Counters::add(&self.counters.peer_requests_denied, 1);
                tracing::debug!(%peer, ?request, ?provenance, "request denied by the zone's rules");
                false
            }
        }
    }

    /// The provenance of `blob`: stored, else arriving for the repository its transfer names.
    async fn provenance_of(&self, blob: Digest) -> Provenance {
        let provenance = self.provenance.clone();
        let stored = self
            .blocking(move |store| Some(provenance.of(store, &blob, None)))
            .await;
        match stored {
            Some(Provenance::Unattributed) => {}
            Some(known) => return known,
            None => return Provenance::Unattributed,
        }
        let origin = self.transfer(blob).and_then(|transfer| transfer.origin);
        let provenance = self.provenance.clone();
        self.blocking(move |store| Some(provenance.of(store, &blob, origin.as_ref())))
            .await
            .unwrap_or(Provenance::Unattributed)
    }

    /// A chunk from the store (within super-seeding's rule) or from a transfer in progress,
    /// once the zone allows it and the egress limit lets it leave.
    async fn chunk(&self, peer: PeerId, blob: Digest, chunk: u32) -> ChunkAnswer {
        if !self.permitted(peer, &Request::Chunk { blob, chunk }).await {
            return ChunkAnswer::NotFound;
        }
        self.chunk_permitted(peer, blob, chunk).await
    }

    /// [`PeerService::chunk`] once the zone has allowed it. A transfer running here is asked
    /// first: in a fan-out nearly every request is for a blob still arriving, which the store
    /// would look for in its metadata and on disk first, from a blocking thread, only to miss.
    async fn chunk_permitted(&self, peer: PeerId, blob: Digest, chunk: u32) -> ChunkAnswer {
        let bytes = match self.partial(blob) {
            Some(progress) => match self.arriving_chunk(peer, blob, chunk, progress).await {
                Ok(bytes) => bytes,
                Err(refusal) => return refusal,
            },
            None => match self.stored_chunk(peer, blob, chunk).await {
                Ok(bytes) => bytes,
                Err(refusal) => return refusal,
            },
        };
        match bytes {
            Some(bytes) => self.send_chunk(peer, bytes),
            None => ChunkAnswer::NotFound,
        }
    }

    /// A chunk of a blob held whole, within super-seeding's rule; the answer instead when the
    /// policy refuses it.
    async fn stored_chunk(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
    ) -> Result<Option<Bytes>, ChunkAnswer> {
        let Some(layout) = self.stored_index(blob).await.map(|index| index.layout()) else {
            return Ok(None);
        };
        let holding = Holding::Whole {
            chunk_count: layout.chunk_count(),
        };
        if let Some(refusal) = self.refusal(peer, blob, &layout, chunk, holding).await {
            return Err(refusal);
        }
        let buffers = self.network.chunk_buffers().clone();
        let read = self
            .blocking(move |store| {
                let _serving = store.lease(blob);
                let (file, _) = store.open_blob(&blob).ok().flatten()?;
                read_chunk(&file, &layout, chunk, &buffers)
            })
            .await;
        if read.is_none() {
            self.seeding.unsent(blob, chunk);
        }
        Ok(read)
    }

    /// A chunk of a blob whose transfer runs here, once verified: from memory while the
    /// transfer keeps it, else from its file. A chunk of a blob still coming from an upstream
    /// is served unchecked (there is no index yet): the peer relaying it checks the whole
    /// blob at the end.
    async fn arriving_chunk(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
        progress: Progress,
    ) -> Result<Option<Bytes>, ChunkAnswer> {
        if !progress.have.get(chunk) {
            return Ok(None);
        }
        let (Some(layout), Some(file)) = (progress.layout, progress.file) else {
            return Ok(None);
        };
        if let Some(refusal) = self
            .refusal(peer, blob, &layout, chunk, Holding::Partial)
            .await
        {
            return Err(refusal);
        }
        if let Some(bytes) = progress.verified.get(chunk) {
            return Ok(Some(bytes));
        }
        let buffers = self.network.chunk_buffers().clone();
        Ok(
            tokio::task::spawn_blocking(move || read_chunk(&file, &layout, chunk, &buffers))
                .await
                .ok()
                .flatten(),
        )
    }

    /// The answer carrying a chunk's bytes, counted as sent.
    fn send_chunk(&self, peer: PeerId, bytes: Bytes) -> ChunkAnswer {
        self.sent(peer, bytes.len() as u64);
        if self.corrupt_chunks && !bytes.is_empty() {
            let mut corrupt = bytes.to_vec();
            corrupt[0] ^= 0xff;
            return ChunkAnswer::Chunk(corrupt.into());
        }
        ChunkAnswer::Chunk(bytes)
    }

    /// Decides on `chunk` of `blob`, laid out as `layout` and held as `holding`, and waits
    /// for its egress, before it is read; the answer to send instead when it does not exist
    /// or the serving policy says `Busy`.
    async fn refusal(
        &self,
        peer: PeerId,
        blob: Digest,
        layout: &ChunkLayout,
        chunk: u32,
        holding: Holding,
    ) -> Option<ChunkAnswer> {
        let Ok(length) = layout.chunk_len(chunk) else {
            return Some(ChunkAnswer::NotFound);
        };
        match self.decide(peer, blob, chunk, holding, length.into()) {
            Ok(wait) => {
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                None
            }
            Err(refusal) => Some(refusal),
        }
    }
}

/// The streams of one kind being served (chunk links, have feeds), in all and per peer.
#[derive(Debug, Clone)]
struct LinkCount {
    per_peer: Arc<std::sync::Mutex<HashMap<PeerId, usize>>>,
    max: usize,
    per_peer_max: usize,
}

/// One admitted link; dropping it makes room for another.
struct AdmittedLink {
    count: LinkCount,
    peer: PeerId,
}

impl LinkCount {
    fn new(max: usize, per_peer_max: usize) -> LinkCount {
        LinkCount {
            per_peer: Arc::default(),
            max,
            per_peer_max,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, usize>> {
        self.per_peer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Room for one more stream from `peer`, within the limits in all and per peer.
    fn admit(&self, peer: PeerId) -> Option<AdmittedLink> {
        let mut per_peer = self.lock();
        let total: usize = per_peer.values().sum();
        let count = per_peer.entry(peer).or_default();
        if total >= self.max || *count >= self.per_peer_max {
            return None;
        }
        *count += 1;
        Some(AdmittedLink {
            count: self.clone(),
            peer,
        })
    }
}

impl Drop for AdmittedLink {
    fn drop(&mut self) {
        let mut per_peer = self.count.lock();
        if let Some(count) = per_peer.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                per_peer.remove(&self.peer);
            }
        }
    }
}

/// A running transfer's bitfield, as `Have` tells it (`NotFound` before its layout is known).
fn partial_have(progress: &Progress) -> Response {
    match progress.layout {
        Some(layout) => Response::Have {
            blob_size: layout.blob_size(),
            chunk_bytes: layout.chunk_bytes(),
            chunks: progress.have.clone(),
            complete: false,
        },
        None => Response::NotFound,
    }
}

/// Reads chunk `chunk` of `file` into a buffer of `buffers`.
fn read_chunk(
    file: &std::fs::File,
    layout: &ChunkLayout,
    chunk: u32,
    buffers: &ChunkBuffers,
) -> Option<Bytes> {
    let range = layout.chunk_range(chunk).ok()?;
    let mut buffer = buffers.take((range.end - range.start) as usize);
    file.read_exact_at(buffer.as_mut_slice(), range.start)
        .ok()?;
    Some(buffer.freeze())
}
