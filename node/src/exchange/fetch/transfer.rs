//! One blob's transfer: the driver of the protocol's [`Fetch`] machine, which decides whom to
//! ask whether they have the blob, whose have feed to watch, which chunk to ask of which peer,
//! whom to ask for the index, and when the blob comes from an upstream or the transfer gives
//! up (the simulator drives the same machine). This task carries out its actions over the
//! network, checks the index and every chunk against it, writes chunks, and tells readers.
//!
//! Memory is bounded by the chunks in flight (the scheduler's per-peer limit times the chunk
//! size); progress is persisted every 8 MiB or 10 s and resumed after a restart.
//!
//! When no peer has the blob and its [`Origin`] names a namespace with an upstream, one node
//! downloads it from the upstream for everyone (the fetch's `fallback` chooses it; this task
//! asks it with [`Request::Fetch`]), and the others take the blob from it like from any peer.
//! A peer still downloading from its upstream has no index yet, so the blob is relayed from it
//! front to back while it arrives ([`SequentialBlob`]), checked whole at the end like the
//! upstream's own bytes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::stream::{AbortHandle, SelectAll, Stream, abortable};
use libp2p::PeerId;
use shoal_protocol::chunk::ChunkIndex;
use shoal_protocol::feed::FeedUpdate;
use shoal_protocol::fetch::fallback::DELEGATE_STALL;
use shoal_protocol::fetch::{
    ChunkReply, Fetch, FetchAction, FetchEvent, GiveUp, IndexAnswer, LOCATE_TIMEOUT, PEER_REFRESH,
    PeerHolds, STALL_TIMEOUT, TICK, Upstream,
};
use shoal_protocol::scheduler::{Scheduler, SchedulerConfig};
use shoal_protocol::wire::{Request, Response};
use shoal_protocol::{BusyReason, Digest};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;

use super::sha256_behind::Sha256Behind;
use super::upstream::{self, Download};
use super::{FetchContext, Origin, Progress, SequentialBlob, TransferError, WrongContent};
use crate::network::{ChunkAnswer, HaveWatch, RequestError};
use crate::observe::Counters;
use crate::store::{PartialBlob, recorded_index};

/// When a transfer whose fetch wants no `Tick` ticks anyway, after its start: never, in
/// practice (every event wakes the transfer, and a stalled one gives up long before).
const IDLE_TICK: Duration = Duration::from_secs(365 * 86_400);
/// How often the transfer asks whether its progress is due to be made durable
/// ([`PartialBlob::persist_due`](crate::store::PartialBlob::persist_due)).
const PERSIST_CHECK: Duration = Duration::from_secs(1);
/// Chunk requests in flight to a peer relaying a blob it is downloading from its upstream.
const RELAY_WINDOW: usize = 4;
/// How often a relaying peer is asked again for a chunk it does not have yet.
const RELAY_RETRY: Duration = Duration::from_millis(50);
/// Chunk writes to the file running at once, behind the readers. A chunk is written around
/// the page cache, and a direct write waits for the device (0.5-1.5 ms per MiB on the
/// machines measured here): written one after the other on the transfer's path, they held a
/// 1 GiB pull to about 450 MB/s (docs/benchmarks.md). Past this many the transfer waits for
/// one to end before it takes more chunks, so a slow disk slows the transfer instead of
/// filling memory: at most this many chunks beyond the verified window.
const WRITES_IN_FLIGHT_MAX: usize = 16;

enum Outcome {
    /// Candidate peers; `true` when they come from a DHT lookup.
    Providers(HashSet<PeerId>, bool),
    Have(PeerId, Result<Response, RequestError>),
    Index(PeerId, Result<Response, RequestError>),
    /// A chunk request's answer; a chunk has been checked against the index already (in the
    /// request's own task, so chunks are checked on every core).
    Chunk(PeerId, u32, Result<Arrival, RequestError>),
    Delegation(PeerId, Result<Response, RequestError>),
}

/// What a chunk request got.
enum Arrival {
    /// The chunk, and it matched the index.
    Verified(Bytes),
    /// Bytes that did not match the index.
    Wrong,
    Busy(BusyReason),
    NotFound,
}

impl Arrival {
    fn checked(answer: ChunkAnswer, index: &ChunkIndex, chunk: u32) -> Arrival {
        match answer {
            ChunkAnswer::Chunk(bytes) if index.verify_chunk(chunk, &bytes).is_ok() => {
                Arrival::Verified(bytes)
            }
            ChunkAnswer::Chunk(_) => Arrival::Wrong,
            ChunkAnswer::Busy(reason) => Arrival::Busy(reason),
            ChunkAnswer::NotFound => Arrival::NotFound,
        }
    }
}

/// A chunk write that ended, with the chunk's bytes for the running sha256.
struct Written {
    chunk: u32,
    bytes: Bytes,
    result: Result<(), crate::store::StoreError>,
}

/// How the fetch said the transfer goes on or ends, other than by completing.
#[derive(Debug, Clone, Copy)]
enum Ending {
    /// Relayed from a peer downloading the blob from its upstream.
    Relay(PeerId),
    /// Downloaded from the upstream here.
    Download,
    GiveUp(GiveUp),
}

struct Run<'a> {
    context: FetchContext,
    blob: Digest,
    progress: &'a watch::Sender<Progress>,
    tasks: JoinSet<Outcome>,
    /// The exchange's decisions: whom to ask, whom to watch, which chunk of whom.
    fetch: Fetch<PeerId>,
    /// The blob size and chunk size described by peers heard before the index was known:
    /// where the index may come from, checked against it once it does.
    shapes: HashMap<PeerId, (u64, u32)>,
    index_source: Option<PeerId>,
    partial: Option<PartialBlob>,
    /// Chunk writes running (at most [`WRITES_IN_FLIGHT_MAX`]).
    writes: JoinSet<Written>,
    started: Instant,
    /// Where this transfer is in the node's [`UplinkRefusals`](super::downlink::UplinkRefusals).
    refusals_read: u64,
    origin: Option<Origin>,
    ending: Option<Ending>,
    /// The sha256 running beside the transfer, when a trusted publisher signed the index.
    sha256_behind: Option<Sha256Behind>,
    /// Whether a client has waited for a chunk of this transfer (`stream.rs`): from then on
    /// the sha256 beside it gives way, and the transfer no longer keeps pace with it.
    client_waited: bool,
    /// The watches of peers' have feeds (`network/feed.rs`), polled by the transfer's own
    /// task: a push wakes it straight from the feed's reader.
    watches: SelectAll<Watched>,
    /// Ends each watch early, when the fetch says `Unwatch`: its stream stops, and dropping
    /// it unwatches.
    watch_ends: HashMap<PeerId, AbortHandle>,
}

/// One peer's have feed as the transfer reads it: each update as it comes (the latest, when
/// several came since the last read), then `None` once the watch has ended.
type Watched = std::pin::Pin<Box<dyn Stream<Item = (PeerId, Option<FeedUpdate>)> + Send + Sync>>;

fn watched(peer: PeerId, watch: HaveWatch) -> (Watched, AbortHandle) {
    let (updates, end) = abortable(futures_util::stream::unfold(
        Some(watch),
        move |watch| async move {
            let mut watch = watch?;
            let update = watch.next().await;
            let going_on = update.is_some().then_some(watch);
            Some(((peer, update), going_on))
        },
    ));
    (Box::pin(updates), end)
}

pub async fn run(
    context: FetchContext,
    blob: Digest,
    origin: Option<Origin>,
    progress: &watch::Sender<Progress>,
    mut focus: mpsc::Receiver<u32>,
) -> Result<(), TransferError> {
    let has_upstream = origin
        .as_ref()
        .is_some_and(|origin| context.upstreams.for_repo(&origin.repo).is_some());
    let seed = exchange_seed(&context.network.local_peer_id(), &blob);
    let fetch = if has_upstream {
        let upstream = Upstream {
            local: context.network.local_peer_id(),
            rank: Box::new(move |peer: &PeerId| fetcher_rank(peer, &blob)),
        };
        Fetch::with_upstream(Duration::ZERO, seed, upstream)
    } else {
        Fetch::new(Duration::ZERO, seed)
    };
    let refusals_read = context.uplink_refusals.cursor();
    let mut run = Run {
        context,
        blob,
        progress,
        tasks: JoinSet::new(),
        fetch,
        shapes: HashMap::new(),
        index_source: None,
        partial: None,
        writes: JoinSet::new(),
        started: Instant::now(),
        refusals_read,
        origin,
        ending: None,
        sha256_behind: None,
        client_waited: false,
        watches: SelectAll::new(),
        watch_ends: HashMap::new(),
    };
    let store = run.context.store.clone();
    // Asked for by a peer (or a reader racing a transfer that just ended): nothing to do.
    if store.blocking(move |store| store.has_blob(&blob)).await? {
        return Ok(());
    }
    if let Some(index) = store
        .blocking(move |store| recorded_index(store, &blob))
        .await?
    {
        run.begin(index).await?;
    }
    let connected = run.context.network.connected_peers().await;
    run.on_connected(connected).await?;
    let tick = tokio::time::sleep(TICK);
    tokio::pin!(tick);
    let mut ticked = tokio::time::Instant::from_std(run.started);
    let mut persist = tokio::time::interval(PERSIST_CHECK);
    let mut reask = tokio::time::interval(PEER_REFRESH);
    reask.tick().await;
    loop {
        if run.fetch.is_complete() {
            return run.complete().await;
        }
        if let Some(ending) = run.ending.take() {
            return run.end(ending).await;
        }
        let due = run.next_tick().max(ticked + TICK);
        if tick.deadline() != due {
            tick.as_mut().reset(due);
        }
        tokio::select! {
            Some(Ok(outcome)) = run.tasks.join_next(), if !run.tasks.is_empty() => run.on_outcome(outcome).await?,
            Some(written) = run.writes.join_next(), if !run.writes.is_empty() => run.on_written(written?)?,
            Some((peer, update)) = run.watches.next(), if !run.watches.is_empty() => match update {
                Some(update) => run.on_have(peer, Ok(update.into_response()), true).await?,
                None => {
                    run.watch_ends.remove(&peer);
                    run.fetch.watch_ended(&peer);
                }
            },
            Some(chunk) = focus.recv() => {
                run.client_waited = true;
                run.hash_gives_way();
                run.handle(FetchEvent::Focus { chunk }).await?;
            }
            () = &mut tick => {
                ticked = tick.deadline();
                run.handle(FetchEvent::Tick).await?;
            }
            _ = persist.tick() => {
                run.persist_if_due()?;
                run.place_all();
            }
            _ = reask.tick() => run.ask_connected(),
        }
    }
}

impl Run<'_> {
    /// When the fetch wants its next `Tick` ([`Fetch::next_tick`]).
    fn next_tick(&self) -> tokio::time::Instant {
        let started = tokio::time::Instant::from_std(self.started);
        started + self.fetch.next_tick().unwrap_or(IDLE_TICK)
    }

    /// Whoever the DHT says provides the blob, including nodes that started fetching it after
    /// this one.
    fn look_up(&mut self) {
        Counters::add(&self.context.counters.provider_lookups, 1);
        let network = self.context.network.clone();
        let blob = self.blob;
        self.tasks
            .spawn(async move { Outcome::Providers(network.find_providers(blob).await, true) });
    }

    /// The connected peers not yet known to have the blob (in a small network, everyone).
    fn ask_connected(&mut self) {
        let network = self.context.network.clone();
        self.tasks.spawn(async move {
            Outcome::Providers(network.connected_peers().await.into_iter().collect(), false)
        });
    }

    fn ask_have(&mut self, peer: PeerId) {
        let network = self.context.network.clone();
        let blob = self.blob;
        self.tasks.spawn(async move {
            Outcome::Have(peer, network.request(peer, Request::Have { blob }).await)
        });
    }

    /// The download of the blob from this node's upstream, if its origin has one.
    fn own_download(&self) -> Option<Download> {
        let origin = self.origin.clone()?;
        Some(Download {
            client: self.context.upstreams.for_repo(&origin.repo)?,
            repo: origin.repo,
            blob: self.blob,
            manifest: origin.manifest,
        })
    }

    /// Ends the transfer the way the fetch said.
    async fn end(&mut self, ending: Ending) -> Result<(), TransferError> {
        let blob = self.blob;
        match ending {
            Ending::Relay(peer) => self.relay_from(peer).await,
            Ending::Download => match self.own_download() {
                Some(download) => self.download(download).await,
                None => Err(TransferError::NoPeer {
                    blob,
                    waited: self.started.elapsed(),
                }),
            },
            Ending::GiveUp(GiveUp::NoPeer) => Err(TransferError::NoPeer {
                blob,
                waited: LOCATE_TIMEOUT,
            }),
            Ending::GiveUp(GiveUp::Stalled) => Err(TransferError::Stalled {
                blob,
                waited: STALL_TIMEOUT,
            }),
        }
    }

    /// Asks `peer` to fetch the blob from the upstream for this node (and the others).
    fn delegate(&mut self, peer: PeerId) {
        let Some(download) = self.own_download() else {
            return;
        };
        tracing::info!(%peer, "asking a peer to fetch from the upstream");
        let network = self.context.network.clone();
        let request = Request::Fetch {
            blob: self.blob,
            repository: download.repo.qualified(),
            manifest: download.manifest,
        };
        self.tasks
            .spawn(async move { Outcome::Delegation(peer, network.request(peer, request).await) });
    }

    /// Downloads the blob from the upstream; the transfer ends with it.
    async fn download(&mut self, download: Download) -> Result<(), TransferError> {
        tracing::info!(upstream = download.client.namespace(), repo = %download.repo, "fetching from the upstream");
        self.tasks.abort_all();
        self.settle_writes().await?;
        upstream::download(&download, &self.context, self.progress).await?;
        let store = self.context.store.clone();
        let blob = self.blob;
        if let Ok(Some(index)) = store.blocking(move |store| store.chunk_index(&blob)).await {
            self.progress
                .send_modify(|progress| progress.index = Some(index));
        }
        self.context.network.provide(self.blob).await;
        Ok(())
    }

    /// Takes the blob front to back from `peer`, which is downloading it from its upstream,
    /// while it arrives there. If the relay fails, the blob comes from this node's own upstream
    /// when there is one.
    async fn relay_from(&mut self, peer: PeerId) -> Result<(), TransferError> {
        tracing::info!(%peer, "relaying the blob from a peer that is fetching it from its upstream");
        self.tasks.abort_all();
        self.settle_writes().await?;
        let relayed = match self.shapes.get(&peer) {
            Some(&shape) => self.relay_chunks(peer, shape).await,
            None => Err(TransferError::RelayStopped { peer, chunk: 0 }),
        };
        match relayed {
            Ok(()) => {
                self.context.network.provide(self.blob).await;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(%peer, %error, "relay failed");
                if let TransferError::WrongContent { peer: sender, .. } = &error {
                    self.ban(*sender).await?;
                }
                self.progress.send_modify(|progress| {
                    progress.layout = None;
                    progress.file = None;
                    progress.arriving = None;
                });
                match self.own_download() {
                    Some(download) => self.download(download).await,
                    None => Err(error),
                }
            }
        }
    }

    async fn relay_chunks(
        &mut self,
        peer: PeerId,
        (size, chunk_bytes): (u64, u32),
    ) -> Result<(), TransferError> {
        let wrong = |wrong| TransferError::WrongContent { peer, wrong };
        let mut file = SequentialBlob::create(&self.context.store, self.blob, size, self.progress)?;
        let layout = file.layout();
        if layout.chunk_bytes() != chunk_bytes {
            return Err(wrong(WrongContent::ChunkBytes {
                theirs: chunk_bytes,
                ours: layout.chunk_bytes(),
            }));
        }
        let mut pending = futures_util::stream::FuturesOrdered::new();
        let mut next = 0;
        while next < layout.chunk_count() || !pending.is_empty() {
            while pending.len() < RELAY_WINDOW && next < layout.chunk_count() {
                pending.push_back(relayed_chunk(self.context.clone(), peer, self.blob, next));
                next += 1;
            }
            let Some(arrived) = futures_util::StreamExt::next(&mut pending).await else {
                break;
            };
            let (chunk, bytes) = arrived?;
            let expected = layout.chunk_len(chunk)?;
            if bytes.len() != expected as usize {
                return Err(wrong(WrongContent::ChunkLength {
                    chunk,
                    arrived: bytes.len(),
                    expected,
                }));
            }
            Counters::add(
                &self.context.counters.bytes_received_from_peers,
                bytes.len() as u64,
            );
            file.append(bytes).await?;
        }
        // Every failure to store what the peer relayed counts against the peer, as its bytes
        // are the likeliest cause (they do not hash to the digest).
        file.finish(&self.context.store)
            .await
            .map_err(|error| wrong(WrongContent::Blob(Box::new(error))))
    }

    async fn on_outcome(&mut self, outcome: Outcome) -> Result<(), TransferError> {
        match outcome {
            Outcome::Providers(providers, true) => {
                let local = self.context.network.local_peer_id();
                let peers = providers.into_iter().filter(|&p| p != local).collect();
                self.handle(FetchEvent::Candidates { peers }).await?;
            }
            Outcome::Providers(connected, false) => self.on_connected(connected).await?,
            Outcome::Have(peer, result) => self.on_have(peer, result, false).await?,
            Outcome::Index(peer, Ok(Response::Index(index))) => self.on_index(peer, index).await?,
            Outcome::Index(peer, result) => {
                let answer = match result {
                    Ok(Response::NotFound) => IndexAnswer::Missing,
                    _ => IndexAnswer::Failed,
                };
                self.handle(FetchEvent::Index { peer, answer }).await?;
            }
            Outcome::Chunk(peer, chunk, result) => self.on_chunk(peer, chunk, result).await?,
            Outcome::Delegation(peer, result) => {
                let accepted = matches!(result, Ok(Response::Fetching));
                match result {
                    Ok(Response::Fetching) => {}
                    Ok(Response::Denied) => {
                        tracing::info!(%peer, "the peer does not fetch from the upstream for this node (peer zones)");
                    }
                    _ => tracing::info!(%peer, "the peer cannot fetch from the upstream"),
                }
                self.handle(FetchEvent::Delegation { peer, accepted })
                    .await?;
            }
        }
        Ok(())
    }

    /// The peers connected now: the fetch asks the new ones, and those gone leave.
    async fn on_connected(
        &mut self,
        connected: impl IntoIterator<Item = PeerId>,
    ) -> Result<(), TransferError> {
        let peers: Vec<PeerId> = connected.into_iter().collect();
        self.progress.borrow().peer_chunks.keep_only(&peers);
        for peer in &peers {
            if self.context.locality.same_site(peer) {
                self.fetch.add_site_mate(*peer);
            }
        }
        self.handle(FetchEvent::Connected { peers }).await
    }

    /// A peer's bitfield, answering `Have` or pushed on its feed (`pushed`): a peer with (part
    /// of) the blob becomes a source, and the fetch decides the rest.
    async fn on_have(
        &mut self,
        peer: PeerId,
        result: Result<Response, RequestError>,
        pushed: bool,
    ) -> Result<(), TransferError> {
        let holds = match result {
            Ok(Response::Have {
                blob_size,
                chunk_bytes,
                chunks,
                complete,
            }) => {
                let shape = (blob_size, chunk_bytes);
                if let Some(partial) = &self.partial {
                    let index = partial.index();
                    if shape != (index.blob_size(), index.chunk_bytes()) {
                        tracing::warn!(%peer, "peer describes the blob differently from its index");
                        return self.ban(peer).await;
                    }
                }
                if self.fetch.scheduler().is_none() {
                    self.shapes.insert(peer, shape);
                }
                Some(PeerHolds { chunks, complete })
            }
            _ => None,
        };
        let event = if pushed {
            FetchEvent::Pushed { peer, holds }
        } else {
            FetchEvent::Have { peer, holds }
        };
        self.handle(event).await?;
        // What the fetch now knows of the peer, as the simulator's feeds read it: nothing
        // before the scheduler begins, or once it lacks the blob or was banned.
        let told = self
            .fetch
            .scheduler()
            .and_then(|scheduler| scheduler.peer_have(&peer))
            .cloned();
        self.progress.borrow().peer_chunks.told(peer, told);
        // Readers and have feeds watch the progress: wake them only for news.
        let peers = self.fetch.sources();
        self.progress.send_if_modified(|progress| {
            let changed = progress.peers != peers;
            progress.peers = peers;
            changed
        });
        Ok(())
    }

    /// Watches `peer`'s bitfield on its have feed; a peer that gives no feed is polled.
    fn watch(&mut self, peer: PeerId) {
        let Some(watch) = self.context.network.watch_have(peer, self.blob) else {
            self.fetch.watch_ended(&peer);
            return;
        };
        let (updates, end) = watched(peer, watch);
        self.watches.push(updates);
        if let Some(earlier) = self.watch_ends.insert(peer, end) {
            earlier.abort();
        }
    }

    /// Stops watching `peer`'s have feed: its stream ends and drops the watch.
    fn unwatch(&mut self, peer: PeerId) {
        if let Some(end) = self.watch_ends.remove(&peer) {
            end.abort();
        }
    }

    fn request_index(&mut self, peer: PeerId) {
        let network = self.context.network.clone();
        let blob = self.blob;
        self.tasks.spawn(async move {
            Outcome::Index(peer, network.request(peer, Request::Index { blob }).await)
        });
    }

    /// An index from a peer is used only if it is well formed, describes this blob, and
    /// matches the root a trusted publisher announced for it (when one did).
    async fn on_index(&mut self, peer: PeerId, index: ChunkIndex) -> Result<(), TransferError> {
        let trusted_root = self.context.announcements.index_root(&self.blob);
        let valid = index.validate().is_ok()
            && index.blob() == self.blob
            && trusted_root.is_none_or(|root| root == index.root());
        if !valid {
            tracing::warn!(%peer, "peer sent an invalid chunk index");
            self.shapes.remove(&peer);
            let answer = IndexAnswer::Invalid;
            return self.handle(FetchEvent::Index { peer, answer }).await;
        }
        self.index_source = Some(peer);
        self.begin(index).await
    }

    /// Opens (or resumes) the partial blob and starts scheduling.
    async fn begin(&mut self, index: ChunkIndex) -> Result<(), TransferError> {
        let for_partial = index.clone();
        let mut partial = self
            .context
            .store
            .blocking(move |store| PartialBlob::open(store, for_partial))
            .await?;
        let signed = self.context.announcements.index_root(&self.blob) == Some(index.root());
        if signed {
            partial.hash_elsewhere();
            let reader = partial.chunk_reader()?;
            let behind =
                Sha256Behind::start(reader, index.chunk_count(), self.progress.subscribe())
                    .map_err(TransferError::Sha256Behind)?;
            self.sha256_behind = Some(behind);
            // A client already waiting (for the index) reads the blob as it arrives.
            if self.client_waited {
                self.hash_gives_way();
            }
        }
        let file = Arc::new(partial.reader()?);
        let layout = index.layout();
        let index_shape = (index.blob_size(), index.chunk_bytes());
        let seed = exchange_seed(&self.context.network.local_peer_id(), &self.blob);
        let mut scheduler = Scheduler::new(index.chunk_count(), SchedulerConfig::default(), seed);
        if self.context.locality.own_site().is_some() {
            let local = self.context.network.local_peer_id();
            scheduler.set_site(site_rank_key(&local, &self.blob));
        }
        let resumed: Vec<u32> = partial.have().iter_ones().collect();
        for chunk in &resumed {
            scheduler.mark_have(*chunk);
        }
        if !resumed.is_empty() {
            tracing::info!(
                chunks = resumed.len(),
                of = index.chunk_count(),
                "resuming a partial fetch"
            );
        }
        let have = partial.have().clone();
        self.progress.send_modify(|progress| {
            progress.index = Some(Arc::new(index));
            progress.layout = Some(layout);
            progress.file = Some(file);
            progress.have = have;
        });
        self.partial = Some(partial);
        for (peer, described) in std::mem::take(&mut self.shapes) {
            if described != index_shape {
                self.ban(peer).await?;
            }
        }
        scheduler.set_requests_elsewhere(self.context.chunk_requests.in_flight());
        let actions = self.fetch.begin(scheduler, self.started.elapsed());
        self.carry_out(actions, None).await
    }

    async fn on_chunk(
        &mut self,
        peer: PeerId,
        chunk: u32,
        result: Result<Arrival, RequestError>,
    ) -> Result<(), TransferError> {
        if self.partial.is_none() {
            return Ok(());
        }
        let (reply, bytes) = match result {
            Ok(Arrival::Verified(bytes)) => (ChunkReply::Verified, Some(bytes)),
            Ok(Arrival::Wrong) => (ChunkReply::Wrong, None),
            Ok(Arrival::Busy(reason)) => (ChunkReply::Busy(reason), None),
            Ok(Arrival::NotFound) | Err(_) => (ChunkReply::Failed, None),
        };
        if reply == ChunkReply::Busy(BusyReason::Egress) {
            self.context
                .uplink_refusals
                .record(peer, self.blob, Instant::now());
        }
        if reply == ChunkReply::Wrong && !self.progress.borrow().have.get(chunk) {
            tracing::warn!(%peer, chunk, "chunk failed verification");
            Counters::add(&self.context.counters.chunks_rejected, 1);
        }
        self.share_downlink();
        let actions = self.fetch.handle(
            FetchEvent::Chunk { peer, chunk, reply },
            self.started.elapsed(),
        );
        self.carry_out(actions, bytes).await
    }

    /// A verified chunk the fetch did not have: readers take it from memory at once, while it
    /// is written behind them.
    async fn keep(&mut self, chunk: u32, bytes: Bytes) -> Result<(), TransferError> {
        self.pace_to_hasher().await;
        Counters::add(
            &self.context.counters.bytes_received_from_peers,
            bytes.len() as u64,
        );
        self.progress.send_modify(|progress| {
            progress.verified.push(chunk, bytes.clone());
            progress.have.set(chunk);
        });
        self.context.pace.gained();
        self.write_behind(chunk, bytes).await
    }

    /// A client waits on the transfer: the sha256 beside it gives way, and no chunk is kept in
    /// memory for it any more (`verified.rs`).
    fn hash_gives_way(&self) {
        if let Some(behind) = &self.sha256_behind {
            behind.give_way();
            self.progress.borrow().verified.hasher_gave_way();
        }
    }

    /// Waits for the sha256 beside the transfer while it is far behind, until a client waits
    /// for a chunk. Then the hash takes every chunk from memory instead of reading the ones it
    /// fell behind on back from the device, and the pull or prefetch it finishes ends sooner;
    /// a client streaming the blob is never held up for it, since the hash gives way and is
    /// off its path (`sha256_behind.rs`). Both for good: a transfer paced to a hash at nice 19
    /// could stall on a saturated machine.
    async fn pace_to_hasher(&self) {
        if self.sha256_behind.is_none() || self.client_waited {
            return;
        }
        let verified = self.progress.borrow().verified.clone();
        verified
            .hasher_caught_up(|chunk| self.progress.borrow().have.get(chunk))
            .await;
    }

    /// Starts writing a verified chunk to the file, after waiting for earlier writes while
    /// [`WRITES_IN_FLIGHT_MAX`] run.
    async fn write_behind(&mut self, chunk: u32, bytes: Bytes) -> Result<(), TransferError> {
        while self.writes.len() >= WRITES_IN_FLIGHT_MAX {
            let Some(written) = self.writes.join_next().await else {
                break;
            };
            self.on_written(written?)?;
        }
        let Some(partial) = &self.partial else {
            return Ok(());
        };
        let writer = partial.writer();
        self.writes.spawn_blocking(move || {
            let result = writer.write(chunk, &bytes);
            Written {
                chunk,
                bytes,
                result,
            }
        });
        Ok(())
    }

    /// A chunk write ended: the chunk now counts as had on disk (made durable with the next
    /// persist), and leaves memory when the readers' window moves on. A full disk ends the
    /// transfer and lets the half-fetched blob go.
    fn on_written(&mut self, written: Written) -> Result<(), TransferError> {
        let Some(partial) = &mut self.partial else {
            return Ok(());
        };
        let Written {
            chunk,
            bytes,
            result,
        } = written;
        if let Err(error) = result {
            if matches!(error, crate::store::StoreError::DiskFull { .. }) {
                let _ = partial.discard();
            }
            return Err(error.into());
        }
        if partial.hashes_in_line() {
            tokio::task::block_in_place(|| partial.written(chunk, &bytes))?;
        } else {
            partial.written(chunk, &bytes)?;
        }
        self.progress.borrow().verified.written(chunk);
        Ok(())
    }

    /// Waits for the chunk writes still running.
    async fn settle_writes(&mut self) -> Result<(), TransferError> {
        while let Some(written) = self.writes.join_next().await {
            self.on_written(written?)?;
        }
        Ok(())
    }

    /// Hands an event to the fetch and carries out what it decides.
    async fn handle(&mut self, event: FetchEvent<PeerId>) -> Result<(), TransferError> {
        self.share_downlink();
        let actions = self.fetch.handle(event, self.started.elapsed());
        self.carry_out(actions, None).await
    }

    /// Tells the scheduler how many chunk requests the node's other transfers have out (they
    /// count against its window) and which peers refused them for full uplinks since it last
    /// heard.
    fn share_downlink(&mut self) {
        let refusals = self
            .context
            .uplink_refusals
            .read(&mut self.refusals_read, &self.blob);
        let all = self.context.chunk_requests.in_flight();
        if let Some(scheduler) = self.fetch.scheduler_mut() {
            let own = scheduler.in_flight();
            scheduler.set_requests_elsewhere(all.saturating_sub(own));
            for refusal in refusals {
                let at = refusal.at.saturating_duration_since(self.started);
                scheduler.uplink_refused_elsewhere(&refusal.peer, at);
            }
        }
    }

    /// Carries out the fetch's actions; `arrived` holds the bytes of the chunk a `Keep` is for.
    async fn carry_out(
        &mut self,
        actions: Vec<FetchAction<PeerId>>,
        mut arrived: Option<Bytes>,
    ) -> Result<(), TransferError> {
        for action in actions {
            match action {
                FetchAction::LookUp => self.look_up(),
                // One record, which says the same once the blob is whole: a second one at the
                // end cost a fan-out's members 7-17 % of their CPU (docs/benchmarks.md, "Who
                // wakes whom in a 32 × 4 member").
                FetchAction::Provide => self.context.network.provide(self.blob).await,
                FetchAction::AskHave { peer } | FetchAction::PollHave { peer } => {
                    self.ask_have(peer);
                }
                FetchAction::Watch { peer } => self.watch(peer),
                FetchAction::Unwatch { peer } => self.unwatch(peer),
                FetchAction::Joined { peer } => self.place(peer),
                FetchAction::Request { peer, chunk } => self.request_chunk(peer, chunk),
                FetchAction::Keep { chunk } => {
                    if let Some(bytes) = arrived.take() {
                        self.keep(chunk, bytes).await?;
                    }
                }
                FetchAction::Ban { peer } => self.disconnect(peer).await,
                FetchAction::Completed => {}
                FetchAction::RequestIndex { peer } => self.request_index(peer),
                FetchAction::Delegate { peer } => self.delegate(peer),
                FetchAction::Relay { peer } => self.ending = Some(Ending::Relay(peer)),
                FetchAction::Download => self.ending = Some(Ending::Download),
                FetchAction::GiveUp(reason) => self.ending = Some(Ending::GiveUp(reason)),
            }
        }
        Ok(())
    }

    /// Tells the scheduler how near `peer` is: a site-mate (for one copy per site) and its
    /// preference. Measurements change, so this runs again for every peer once a second.
    fn place(&mut self, peer: PeerId) {
        let Some(scheduler) = self.fetch.scheduler_mut() else {
            return;
        };
        let locality = &self.context.locality;
        if locality.same_site(&peer) {
            scheduler.add_site_member(&peer, site_rank_key(&peer, &self.blob));
        }
        scheduler.set_preference(&peer, locality.preference(&peer));
    }

    fn place_all(&mut self) {
        let Some(scheduler) = self.fetch.scheduler() else {
            return;
        };
        let peers: Vec<PeerId> = scheduler.peers().map(|(peer, _)| *peer).collect();
        for peer in peers {
            self.place(peer);
        }
    }

    /// Sends a chunk request. The ingress limit is paid for bytes that arrived, not for
    /// requests sent: a `Busy` answer costs nothing, and the request's slot stays taken until
    /// the bytes are paid for, which is what holds the average to the limit.
    fn request_chunk(&mut self, peer: PeerId, chunk: u32) {
        let context = self.context.clone();
        let blob = self.blob;
        let Some(index) = self.progress.borrow().index.clone() else {
            return;
        };
        let in_flight = context.chunk_requests.start();
        self.tasks.spawn(async move {
            let _in_flight = in_flight;
            let asked = Instant::now();
            let result = context.network.request_chunk(peer, blob, chunk).await;
            if let Ok(ChunkAnswer::Chunk(bytes)) = &result {
                received(&context, peer, bytes.len() as u64, asked.elapsed()).await;
            }
            let arrival = result.map(|answer| Arrival::checked(answer, &index, chunk));
            Outcome::Chunk(peer, chunk, arrival)
        });
    }

    /// Bans `peer` for what this driver found (a wrong index, a wrong description of the
    /// blob, a relay's wrong bytes): the fetch forgets it, and it is disconnected.
    async fn ban(&mut self, peer: PeerId) -> Result<(), TransferError> {
        self.shapes.remove(&peer);
        self.progress.borrow().peer_chunks.forget(&peer);
        self.handle(FetchEvent::Banned { peer }).await?;
        self.disconnect(peer).await;
        Ok(())
    }

    async fn disconnect(&mut self, peer: PeerId) {
        Counters::add(&self.context.counters.peers_banned, 1);
        self.context.network.ban(peer).await;
    }

    /// Makes the progress durable when enough of it is at stake.
    fn persist_if_due(&mut self) -> Result<(), TransferError> {
        match &mut self.partial {
            Some(partial) if partial.persist_due() => {
                Ok(tokio::task::block_in_place(|| partial.persist())?)
            }
            _ => Ok(()),
        }
    }

    /// Checks the whole blob against its digest and moves it into the store. A mismatch
    /// means the index was a lie: its source is banned.
    async fn complete(&mut self) -> Result<(), TransferError> {
        self.settle_writes().await?;
        let Some(partial) = self.partial.take() else {
            return Err(TransferError::NoPartial);
        };
        let Some(behind) = self.sha256_behind.take() else {
            return match tokio::task::spawn_blocking(move || partial.complete()).await? {
                Ok(()) => Ok(()),
                Err(error) => {
                    if let Some(source) = self.index_source {
                        self.ban(source).await?;
                    }
                    Err(error.into())
                }
            };
        };
        let (actual, size) = behind.finish().await.map_err(TransferError::Sha256Behind)?;
        match tokio::task::spawn_blocking(move || partial.complete_hashed(actual, size)).await? {
            Ok(()) => Ok(()),
            // The chunks matched the index its publisher signed: the peers passed on what
            // they were given, and the publisher's root and digest disagree.
            // Reported as a corrupt blob is: removed (the partial file is gone), never served
            // whole, and the fetch fails.
            Err(error) => {
                tracing::error!(digest = %self.blob, %actual, %error, "the blob a trusted publisher signed does not match its digest; removed");
                Err(error.into())
            }
        }
    }
}

/// The rank of `peer` as the fetcher of `blob` from an upstream: every node computes the same
/// ranks, so nodes asking at once choose the same fetcher.
fn fetcher_rank(peer: &PeerId, blob: &Digest) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(&peer.to_bytes());
    hasher.update(blob.as_bytes());
    *hasher.finalize().as_bytes()
}

/// The seed of a transfer's exchange: distinct per node, so that nodes fetching the same
/// blob break ties differently and rank their peers differently.
fn exchange_seed(local: &PeerId, blob: &Digest) -> u64 {
    let local = blake3::hash(&local.to_bytes());
    u64::from_le_bytes(blob.as_bytes()[..8].try_into().unwrap_or_default())
        ^ u64::from_le_bytes(local.as_bytes()[..8].try_into().unwrap_or_default())
}

/// A peer's rank for one copy per site: the same on every node, different per blob.
fn site_rank_key(peer: &PeerId, blob: &Digest) -> u64 {
    let rank = fetcher_rank(peer, blob);
    u64::from_le_bytes(rank[..8].try_into().unwrap_or_default())
}

/// Accounts for `bytes` of a chunk that arrived from `peer`, `took` after it was asked for,
/// and waits for the ingress limits: the node's, and the site's when the peer is outside it.
async fn received(context: &FetchContext, peer: PeerId, bytes: u64, took: Duration) {
    crate::exchange::rate::acquire(context.ingress.as_deref(), bytes).await;
    if context.locality.outside(&peer) {
        crate::exchange::rate::acquire(context.site_ingress.as_deref(), bytes).await;
        Counters::add(&context.counters.bytes_received_from_other_sites, bytes);
    }
    // Counted once paid for, as the node's own counters are; the throughput is the network's,
    // measured before the wait.
    context.locality.record_received(peer, bytes, took);
}

/// Chunk `chunk` from a peer relaying a blob, asked for again until the peer has it.
async fn relayed_chunk(
    context: FetchContext,
    peer: PeerId,
    blob: Digest,
    chunk: u32,
) -> Result<(u32, Bytes), TransferError> {
    let started = Instant::now();
    loop {
        let asked = Instant::now();
        match context.network.request_chunk(peer, blob, chunk).await {
            Ok(ChunkAnswer::Chunk(bytes)) => {
                received(&context, peer, bytes.len() as u64, asked.elapsed()).await;
                return Ok((chunk, bytes));
            }
            Ok(ChunkAnswer::NotFound | ChunkAnswer::Busy(_))
                if started.elapsed() < DELEGATE_STALL =>
            {
                tokio::time::sleep(RELAY_RETRY).await;
            }
            Ok(_) => return Err(TransferError::RelayStopped { peer, chunk }),
            Err(error) => return Err(error.into()),
        }
    }
}
