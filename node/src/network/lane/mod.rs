//! Lanes: chunk links on a TCP connection of their own beside the libp2p connection, so that
//! the bytes of chunks cross no multiplexer, no per-connection task of libp2p and no 64 KiB
//! Noise messages — a profile of a 1 GiB transfer put about half of each node's CPU there.
//!
//! The libp2p connection still decides who may have one, and keys it: the asking node opens a
//! `/shoal/lane/1` stream (Noise, and the pre-shared key when there is one, protect it as they
//! protect every stream) and the serving node answers with an [`Offer`] — the port of its lane
//! listener, a one-time token and two fresh AES-128-GCM keys. The asking node connects to that
//! port at the address of the libp2p connection, sends the token, and from then on both ends
//! speak the chunk-link protocol (`chunks.rs`, `exchange/serve.rs`) in sealed records
//! (`record.rs`). The token names the peer the offer went to and is good once, for
//! [`OFFER_LIFETIME`]; a connection that does not present a live token is closed unread.
//!
//! Where no lane can be had — the peer offers none (`--lane-listen off`, an older node), the
//! port cannot be reached — the link runs on a libp2p stream as before, and the peer is not
//! asked again for [`RETRY_AFTER`].
//!
//! A lane carries one of two things ([`LaneUse`]), asked for on a protocol of its own: chunk
//! links, or a have feed (`feed.rs`). A feed's pushes are small and many — 13–18 per MiB a
//! node receives in a rate-limited fan-out — and on a libp2p stream each cost a yamux frame,
//! a Noise message and a wake of the connection's task on both ends: a fifth of a fan-out
//! member's CPU went to libp2p's connection tasks (docs/benchmarks.md).

mod offer;
mod record;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, StreamProtocol};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

pub use offer::{Offer, TOKEN_BYTES};
use record::End;
pub use record::SealedStream;

use super::NetworkEvent;
use super::buffers::ChunkBuffers;

pub const LANE_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/lane/1");
/// Asks for a lane that carries a have feed. A node older than it knows no such protocol, and
/// feeds to it stay on libp2p streams.
pub const FEED_LANE_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/lane/feed/1");
/// How long an offer's token stays good.
const OFFER_LIFETIME: Duration = Duration::from_secs(10);
/// Offers waiting for their connection; past this the oldest are dropped.
const OFFERS_MAX: usize = 1024;
/// Connections that have not yet shown a token, at once; more are closed at once.
const HANDSHAKES_MAX: usize = 64;
/// Time for each step of setting up a lane: the offer, the TCP connection, the token.
const STEP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a peer that gave no lane is not asked again.
const RETRY_AFTER: Duration = Duration::from_secs(600);
/// How often a peer whose libp2p dropped the request unanswered is asked, in all.
const ASKS_MAX: u32 = 4;
/// The rest before asking such a peer again, doubled after each ask.
const FIRST_REST: Duration = Duration::from_millis(50);

/// What a lane carries, as the asking node said by the protocol it asked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LaneUse {
    /// Chunk links (`chunks.rs`, `exchange/serve.rs`).
    Chunks,
    /// A have feed (`feed.rs`, `exchange/feed.rs`).
    Feed,
}

impl LaneUse {
    pub fn protocol(self) -> StreamProtocol {
        match self {
            LaneUse::Chunks => LANE_PROTOCOL,
            LaneUse::Feed => FEED_LANE_PROTOCOL,
        }
    }
}

/// This node's lanes, both ways. Cheap to clone.
#[derive(Clone, Default)]
pub struct Lanes {
    shared: Arc<Mutex<Shared>>,
    /// The lanes' record buffers, reused from lane to lane.
    record_buffers: ChunkBuffers,
}

#[derive(Default)]
struct Shared {
    /// The port of this node's lane listener; `None`: it offers none.
    port: Option<u16>,
    offers: HashMap<[u8; TOKEN_BYTES], PendingOffer>,
    /// The address each connected peer's libp2p connection has.
    addresses: HashMap<PeerId, IpAddr>,
    /// Peers that gave no lane for a use, until when they are not asked again for one.
    without: HashMap<(PeerId, LaneUse), Instant>,
}

struct PendingOffer {
    peer: PeerId,
    lane_use: LaneUse,
    offer: Offer,
    expires: Instant,
}

impl std::fmt::Debug for Lanes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lanes").finish_non_exhaustive()
    }
}

impl Lanes {
    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records the address of a connection to `peer`, where its lane listener is asked for.
    pub fn connected(&self, peer: PeerId, address: &Multiaddr) {
        if let Some(ip) = ip_of(address) {
            self.lock().addresses.insert(peer, ip);
        }
    }

    /// `peer` has no connection left.
    pub fn disconnected(&self, peer: &PeerId) {
        self.lock().addresses.remove(peer);
    }

    /// Whether `peer` is expected to give a lane for `lane_use`: it has not failed to give
    /// one lately.
    pub fn expected(&self, peer: &PeerId, lane_use: LaneUse) -> bool {
        let mut shared = self.lock();
        let key = (*peer, lane_use);
        match shared.without.get(&key) {
            Some(until) if *until > Instant::now() => false,
            Some(_) => {
                shared.without.remove(&key);
                true
            }
            None => true,
        }
    }

    fn give_up_on(&self, peer: PeerId, lane_use: LaneUse, why: &str) {
        tracing::debug!(%peer, ?lane_use, why, "no lane; libp2p streams carry it");
        let mut shared = self.lock();
        let now = Instant::now();
        shared.without.retain(|_, until| *until > now);
        shared.without.insert((peer, lane_use), now + RETRY_AFTER);
    }

    /// Asks `peer` for a lane and connects it; `None` (and the peer not asked again for a
    /// while) when it offers none or the offer leads nowhere. A request the peer dropped
    /// unanswered is asked again after a rest, up to [`ASKS_MAX`] times: libp2p drops an
    /// inbound stream when the stream before it of the same protocol has not been taken yet,
    /// which a busy node that many peers ask at once does often (in a 32-node fan-out on two
    /// cores, about 40 % of the nodes' peers went without lanes so, each for [`RETRY_AFTER`]).
    pub async fn open(
        &self,
        control: &libp2p_stream::Control,
        peer: PeerId,
        lane_use: LaneUse,
    ) -> Option<SealedStream> {
        let asked = ask_until_answered(|| self.try_open(control.clone(), peer, lane_use)).await;
        asked
            .inspect_err(|why| self.give_up_on(peer, lane_use, why))
            .ok()
    }

    async fn try_open(
        &self,
        mut control: libp2p_stream::Control,
        peer: PeerId,
        lane_use: LaneUse,
    ) -> Result<SealedStream, NoLane> {
        let ip = self
            .lock()
            .addresses
            .get(&peer)
            .copied()
            .ok_or("no address for the peer")?;
        let mut stream = control
            .open_stream(peer, lane_use.protocol())
            .await
            .map_err(|error| format!("no lane protocol: {error}"))?;
        let mut encoded = [0u8; offer::OFFER_BYTES];
        tokio::time::timeout(STEP_TIMEOUT, stream.read_exact(&mut encoded))
            .await
            .map_err(|_| "no offer in time".to_owned())?
            .map_err(no_offer)?;
        let offer = Offer::decode(&encoded).map_err(|error| error.to_owned())?;
        let address = SocketAddr::new(ip, offer.port);
        let mut tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| format!("cannot reach {address} in time"))?
            .map_err(|error| format!("cannot reach {address}: {error}"))?;
        tcp.set_nodelay(true)
            .map_err(|error| format!("cannot set TCP_NODELAY: {error}"))?;
        tcp.write_all(&offer.token)
            .await
            .map_err(|error| format!("cannot send the token: {error}"))?;
        Ok(SealedStream::new(
            tcp,
            &offer.keys,
            End::Asker,
            &self.record_buffers,
        ))
    }

    /// Makes an offer to `peer` of a lane for `lane_use` and keeps it until its connection
    /// comes or it expires; `None` when this node offers no lanes.
    fn offer(&self, peer: PeerId, lane_use: LaneUse) -> Option<Offer> {
        let mut shared = self.lock();
        let port = shared.port?;
        let now = Instant::now();
        shared.offers.retain(|_, pending| pending.expires > now);
        if shared.offers.len() >= OFFERS_MAX {
            let oldest = shared
                .offers
                .iter()
                .min_by_key(|(_, pending)| pending.expires)
                .map(|(token, _)| *token);
            if let Some(oldest) = oldest {
                shared.offers.remove(&oldest);
            }
        }
        let offer = Offer::new(port);
        shared.offers.insert(
            offer.token,
            PendingOffer {
                peer,
                lane_use,
                offer: offer.clone(),
                expires: now + OFFER_LIFETIME,
            },
        );
        Some(offer)
    }

    /// The offer a connection's token stands for, once.
    fn redeem(&self, token: &[u8; TOKEN_BYTES]) -> Option<PendingOffer> {
        let pending = self.lock().offers.remove(token)?;
        (pending.expires > Instant::now()).then_some(pending)
    }

    /// Listens at `address` for lanes; their streams go to `events` as chunk links or have
    /// feeds, as their offers said. Returns the address bound.
    pub async fn listen(
        &self,
        address: SocketAddr,
        events: mpsc::Sender<NetworkEvent>,
        shutdown: CancellationToken,
    ) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind(address).await?;
        let bound = listener.local_addr()?;
        self.lock().port = Some(bound.port());
        tokio::spawn(self.clone().accept(listener, events, shutdown));
        Ok(bound)
    }

    async fn accept(
        self,
        listener: TcpListener,
        events: mpsc::Sender<NetworkEvent>,
        shutdown: CancellationToken,
    ) {
        let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let tcp = match accepted {
                Ok((tcp, _)) => tcp,
                Err(error) => {
                    // Out of descriptors, most likely: wait rather than spin.
                    tracing::warn!(%error, "cannot accept a lane");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                continue;
            };
            let lanes = self.clone();
            let events = events.clone();
            tokio::spawn(async move {
                let lane = lanes.handshake(tcp).await;
                drop(permit);
                if let Some((peer, lane_use, stream)) = lane {
                    let stream = Box::new(stream);
                    let event = match lane_use {
                        LaneUse::Chunks => NetworkEvent::ChunkStream { peer, stream },
                        LaneUse::Feed => NetworkEvent::FeedStream { peer, stream },
                    };
                    let _ = events.send(event).await;
                }
            });
        }
    }

    /// Reads a new connection's token and, when it is a live one, makes it that peer's lane
    /// for what its offer was for.
    async fn handshake(&self, mut tcp: TcpStream) -> Option<(PeerId, LaneUse, SealedStream)> {
        let mut token = [0u8; TOKEN_BYTES];
        tokio::time::timeout(STEP_TIMEOUT, tcp.read_exact(&mut token))
            .await
            .ok()?
            .ok()?;
        let Some(pending) = self.redeem(&token) else {
            tracing::debug!("a lane connection without a live token; closed");
            return None;
        };
        tcp.set_nodelay(true).ok()?;
        let stream = SealedStream::new(tcp, &pending.offer.keys, End::Server, &self.record_buffers);
        Some((pending.peer, pending.lane_use, stream))
    }

    /// Answers each peer that asks for a lane for `lane_use` (on its protocol) with an offer.
    pub async fn answer_offers(
        self,
        mut incoming: libp2p_stream::IncomingStreams,
        lane_use: LaneUse,
        shutdown: CancellationToken,
    ) {
        loop {
            let (peer, mut stream) = tokio::select! {
                () = shutdown.cancelled() => return,
                next = incoming.next() => match next { Some(next) => next, None => return },
            };
            let Some(offer) = self.offer(peer, lane_use) else {
                continue;
            };
            tokio::spawn(async move {
                let encoded = offer.encode();
                let sent = async {
                    stream.write_all(&encoded).await?;
                    stream.close().await
                };
                if let Err(error) = tokio::time::timeout(STEP_TIMEOUT, sent)
                    .await
                    .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
                {
                    tracing::debug!(%peer, %error, "cannot send a lane offer");
                }
            });
        }
    }
}

/// Runs `ask` until it gets an answer, resting between asks the peer dropped, at most
/// [`ASKS_MAX`] times; why not, when it got none.
async fn ask_until_answered<T, Asked>(mut ask: impl FnMut() -> Asked) -> Result<T, String>
where
    Asked: Future<Output = Result<T, NoLane>>,
{
    let (mut asks, mut rest) = (1, FIRST_REST);
    loop {
        match ask().await {
            Ok(answer) => return Ok(answer),
            Err(NoLane::Refused(why)) => return Err(why),
            Err(NoLane::Dropped) if asks == ASKS_MAX => {
                return Err("the peer dropped every request for a lane unanswered".into());
            }
            Err(NoLane::Dropped) => {
                tokio::time::sleep(rest).await;
                (asks, rest) = (asks + 1, rest * 2);
            }
        }
    }
}

/// What an error reading a peer's offer means: a stream closed before any offer was dropped.
fn no_offer(error: std::io::Error) -> NoLane {
    match error.kind() {
        std::io::ErrorKind::UnexpectedEof => NoLane::Dropped,
        _ => NoLane::Refused(format!("no offer: {error}")),
    }
}

/// Why a lane could not be had.
#[derive(Debug)]
enum NoLane {
    /// The peer accepted the request and closed it without an offer: its libp2p dropped it
    /// for want of room (an answering node always offers). Worth asking again.
    Dropped,
    /// It offers none, or its offer leads nowhere.
    Refused(String),
}

impl From<String> for NoLane {
    fn from(why: String) -> NoLane {
        NoLane::Refused(why)
    }
}

impl From<&str> for NoLane {
    fn from(why: &str) -> NoLane {
        NoLane::Refused(why.to_owned())
    }
}

/// The IP address of a libp2p address, if it has one.
fn ip_of(address: &Multiaddr) -> Option<IpAddr> {
    address.iter().find_map(|part| match part {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

#[cfg(test)]
mod tests;
