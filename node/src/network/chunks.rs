//! Chunk links: chunks move between two nodes on a few long-lived streams per peer
//! (`/shoal/chunks/1`), with requests pipelined, instead of on a new substream — with its own
//! protocol negotiation — per chunk.
//!
//! The asking side keeps one [`ChunkLinks`] for all peers: requests to a peer take its
//! [`LINKS_PER_PEER`] links in turn, each opened on first use with a task that writes requests
//! as they come and reads the answers, which the serving side sends in the order of the
//! requests. A broken stream fails every request on it; the next request opens a new one. The serving side gets each inbound
//! stream as a [`NetworkEvent::ChunkStream`](super::NetworkEvent) and answers it (`exchange/serve.rs`).
//!
//! A link is a lane (`lane/`: its own TCP connection, sealed records) when the peer offers one,
//! else a libp2p stream.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use shoal_protocol::Digest;
use shoal_protocol::wire::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::RequestError;
use super::buffers::ChunkBuffers;
use super::codec::{ChunkAnswer, read_chunk_answer, read_response_frame, write_request_frame};
use super::lane::{LaneUse, Lanes};
use crate::observe::Counters;

pub const CHUNK_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/chunks/1");

/// Links (streams) to one peer: one per request the scheduler keeps in flight to a peer
/// (`requests_per_peer_max`, 8). Yamux grants a stream 256 KiB of window and grows it only when
/// a round trip is long enough to measure against (never on loopback or a LAN, where the first
/// round trip, measured at connection set-up, is a few hundred microseconds), so each link
/// keeps at most 256 KiB in flight: 8 keep 2 MiB. bench_swarm transfer, one peer, unpinned
/// pull: 4 links 267-318 MB/s, 8 links 369-381, 16 links no better than 8
/// (docs/benchmarks.md).
const LINKS_PER_PEER: usize = 8;
/// Links to one peer when they are lanes: a TCP connection has no per-stream window, so one
/// would carry all 8 requests; two let the serving node seal on both cores.
const LANES_PER_PEER: usize = 2;
/// Peers whose links are remembered before those whose links have all ended are forgotten:
/// peers come and go in a large swarm, and a departed peer's links end with its connection.
const PEERS_KEPT_MAX: usize = 256;
/// Attempts of one request on successive links. libp2p-stream hands inbound streams to the
/// serving node through a channel with no room to spare and drops a stream that arrives while
/// the one before is still being taken (seen when a node opens its links to a peer at once), so
/// a new link can close before it answers anything; reading a chunk again is harmless.
const LINK_ATTEMPTS: usize = 3;
/// Requests queued for one link beyond those on the wire; the scheduler keeps at most 8 in
/// flight per peer, so this never holds a transfer back.
const LINK_QUEUE_LEN: usize = 64;
/// Requests written and not yet answered on one link. The serving side works on a few at a
/// time and reads the rest as they come; this bounds what a link keeps track of.
const LINK_IN_FLIGHT_MAX: usize = 64;
/// A link whose peer sends nothing for this long while requests wait is broken: the same
/// bound as a request-response request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// What a chunk link runs on: a libp2p stream or a lane.
pub trait LinkStream: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> LinkStream for T {}

/// One pending request: what to ask, and where the answer goes.
struct LinkRequest {
    request: Request,
    reply: Reply,
}

/// Where an answer goes: a chunk's into a pooled buffer, a bitfield's as a response.
enum Reply {
    Chunk(oneshot::Sender<ChunkAnswer>),
    Response(oneshot::Sender<Response>),
}

/// A running link to one peer; dropping it stops the link task.
struct Link {
    requests: mpsc::Sender<LinkRequest>,
    task: AbortHandle,
    /// Set once the link runs on a lane, which answers bitfield requests too.
    lane: Arc<AtomicBool>,
}

impl Link {
    /// Whether the link task still runs (it drops its queue when it ends).
    fn is_open(&self) -> bool {
        !self.requests.is_closed()
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The chunk links of this node to its peers. Cheap to clone; the links end when the last
/// clone is dropped.
#[derive(Clone)]
pub struct ChunkLinks {
    control: libp2p_stream::Control,
    links: Arc<Mutex<HashMap<PeerId, PeerLinks>>>,
    buffers: ChunkBuffers,
    lanes: Lanes,
    counters: Arc<Counters>,
}

/// The links to one peer, and which one the next request takes.
#[derive(Default)]
struct PeerLinks {
    links: Vec<Link>,
    next: usize,
}

impl std::fmt::Debug for ChunkLinks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChunkLinks").finish_non_exhaustive()
    }
}

impl ChunkLinks {
    pub fn new(
        control: libp2p_stream::Control,
        lanes: Lanes,
        counters: Arc<Counters>,
    ) -> ChunkLinks {
        ChunkLinks {
            control,
            links: Arc::default(),
            buffers: ChunkBuffers::default(),
            lanes,
            counters,
        }
    }

    /// The pool the chunks that arrive are read into.
    pub fn buffers(&self) -> &ChunkBuffers {
        &self.buffers
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PeerId, PeerLinks>> {
        self.links
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Asks `peer` for chunk `chunk` of `blob` and waits for the answer: the chunk, `Busy` or
    /// `NotFound`. A link that closes before answering is tried again on the next link, up to
    /// [`LINK_ATTEMPTS`] in all. Cancel-safe: dropping the future abandons the answer; the
    /// link goes on.
    pub async fn request(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
    ) -> Result<ChunkAnswer, RequestError> {
        for _ in 1..LINK_ATTEMPTS {
            if let Some(answer) = self.request_once(peer, blob, chunk).await {
                return Ok(answer);
            }
        }
        self.request_once(peer, blob, chunk)
            .await
            .ok_or(RequestError::LinkClosed { peer })
    }

    /// One attempt on the next link to `peer`; `None` when that link closed first.
    async fn request_once(&self, peer: PeerId, blob: Digest, chunk: u32) -> Option<ChunkAnswer> {
        let (reply, answer) = oneshot::channel();
        let request = LinkRequest {
            request: Request::Chunk { blob, chunk },
            reply: Reply::Chunk(reply),
        };
        self.link(peer).send(request).await.ok()?;
        answer.await.ok()
    }

    /// Asks `peer` for its bitfield of `blob` on a lane already open to it; `None` when there
    /// is none (or it closed first), and the request-response protocol should carry it. A
    /// poll on a lane costs a frame each way; on request-response, a substream with its
    /// protocol negotiation — most of a rate-limited fan-out's CPU (docs/benchmarks.md).
    /// With no lane open yet, one is started for the polls to come.
    pub async fn request_have(&self, peer: PeerId, blob: Digest) -> Option<Response> {
        let lane = self.lock().get(&peer).and_then(|peer_links| {
            let lane = peer_links
                .links
                .iter()
                .find(|link| link.is_open() && link.lane.load(Ordering::Relaxed))?;
            Some(lane.requests.clone())
        });
        let Some(requests) = lane else {
            let opening = self
                .lock()
                .get(&peer)
                .is_none_or(|peer_links| !peer_links.links.iter().any(Link::is_open));
            if opening && self.lanes.expected(&peer, LaneUse::Chunks) {
                self.link(peer);
            }
            return None;
        };
        let (reply, answer) = oneshot::channel();
        let request = LinkRequest {
            request: Request::Have { blob },
            reply: Reply::Response(reply),
        };
        requests.send(request).await.ok()?;
        let response = answer.await.ok()?;
        Counters::add(&self.counters.bitfield_polls_on_lanes, 1);
        Some(response)
    }

    /// Ends the link to `peer`, failing its requests (the peer was banned or left).
    pub fn close(&self, peer: &PeerId) {
        self.lock().remove(peer);
    }

    /// The request queue of the next link to `peer`, started if there is none or it has
    /// ended.
    fn link(&self, peer: PeerId) -> mpsc::Sender<LinkRequest> {
        let mut links = self.lock();
        if links.len() >= PEERS_KEPT_MAX && !links.contains_key(&peer) {
            links.retain(|_, peer_links| peer_links.links.iter().any(Link::is_open));
        }
        let width = if self.lanes.expected(&peer, LaneUse::Chunks) {
            LANES_PER_PEER
        } else {
            LINKS_PER_PEER
        };
        let peer_links = links.entry(peer).or_default();
        let turn = peer_links.next % width;
        peer_links.next = peer_links.next.wrapping_add(1);
        if let Some(link) = peer_links.links.get(turn)
            && link.is_open()
        {
            return link.requests.clone();
        }
        let (requests, queue) = mpsc::channel(LINK_QUEUE_LEN);
        let lane = Arc::new(AtomicBool::new(false));
        let opening = open_link(
            self.control.clone(),
            self.lanes.clone(),
            self.counters.clone(),
            peer,
            lane.clone(),
        );
        let run = run_link(opening, self.buffers.clone(), peer, queue);
        let link = Link {
            requests: requests.clone(),
            task: tokio::spawn(run).abort_handle(),
            lane,
        };
        match peer_links.links.get_mut(turn) {
            Some(ended) => *ended = link,
            None => peer_links.links.push(link),
        }
        requests
    }
}

/// What carries a link to a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Carrier {
    Lane,
    Stream,
}

/// Opens a link to `peer` for `lane_use`: a lane if the peer gives one, else a libp2p stream
/// of `fallback`; and which of the two it is.
pub(super) async fn open_lane_or_stream(
    control: &libp2p_stream::Control,
    lanes: &Lanes,
    peer: PeerId,
    lane_use: LaneUse,
    fallback: StreamProtocol,
) -> Result<(Box<dyn LinkStream>, Carrier), libp2p_stream::OpenStreamError> {
    if lanes.expected(&peer, lane_use)
        && let Some(lane) = lanes.open(control, peer, lane_use).await
    {
        return Ok((Box::new(lane), Carrier::Lane));
    }
    let stream = control.clone().open_stream(peer, fallback).await?;
    Ok((Box::new(stream), Carrier::Stream))
}

/// Opens a chunk link to `peer`: a lane if it gives one, else a libp2p stream.
async fn open_link(
    control: libp2p_stream::Control,
    lanes: Lanes,
    counters: Arc<Counters>,
    peer: PeerId,
    is_lane: Arc<AtomicBool>,
) -> Option<Box<dyn LinkStream>> {
    let opened = open_lane_or_stream(&control, &lanes, peer, LaneUse::Chunks, CHUNK_PROTOCOL).await;
    match opened {
        Ok((stream, carrier)) => {
            let count = match carrier {
                Carrier::Lane => &counters.chunk_links_lane,
                Carrier::Stream => &counters.chunk_links_stream,
            };
            Counters::add(count, 1);
            is_lane.store(carrier == Carrier::Lane, Ordering::Relaxed);
            Some(stream)
        }
        Err(error) => {
            tracing::debug!(%peer, %error, "cannot open a chunk link");
            None
        }
    }
}

/// Opens the link to `peer` and carries the requests of `queue` over it until either side
/// stops. Requests still queued or unanswered when it ends fail (their reply senders drop).
async fn run_link(
    opening: impl Future<Output = Option<Box<dyn LinkStream>>>,
    buffers: ChunkBuffers,
    peer: PeerId,
    mut queue: mpsc::Receiver<LinkRequest>,
) {
    let Some(stream) = opening.await else {
        return;
    };
    let (mut reader, mut writer) = stream.split();
    let (sent, mut unanswered) = mpsc::channel::<Reply>(LINK_IN_FLIGHT_MAX);
    let write = async move {
        while let Some(request) = queue.recv().await {
            if write_request_frame(&mut writer, &request.request)
                .await
                .is_err()
                || writer.flush().await.is_err()
                || sent.send(request.reply).await.is_err()
            {
                return;
            }
        }
        let _ = writer.close().await;
    };
    let read = async move {
        while let Some(reply) = unanswered.recv().await {
            let answer = tokio::time::timeout(ANSWER_TIMEOUT, async {
                match reply {
                    Reply::Chunk(reply) => {
                        let answer = read_chunk_answer(&mut reader, &buffers).await?;
                        let _ = reply.send(answer);
                    }
                    Reply::Response(reply) => {
                        let response = read_response_frame(&mut reader).await?;
                        let _ = reply.send(response);
                    }
                }
                std::io::Result::Ok(())
            })
            .await;
            match answer {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    tracing::debug!(%peer, %error, "chunk link broken");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "chunk link silent; closing it");
                    return;
                }
            }
        }
    };
    // Either half ending ends the link: a reader that stopped leaves answers nobody reads.
    tokio::select! {
        () = write => {}
        () = read => {}
    }
}
