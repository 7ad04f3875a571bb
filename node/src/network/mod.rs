//! The node's network: one task owns the libp2p swarm; everything else talks to it through a
//! cloneable [`NetworkHandle`] (commands on a bounded channel, answers on oneshots) and hears
//! from it through a bounded stream of [`NetworkEvent`]s.
//!
//! The actor does no disk I/O and no verification itself: inbound exchange requests are handed
//! out as events with an id, and whoever answers sends the response back with
//! [`NetworkHandle::respond`]. That keeps the swarm loop responsive whatever the store does.

mod behaviour;
mod bootstrap;
mod buffers;
mod chunks;
mod codec;
mod feed;
mod gate;
mod lane;
mod metrics;
mod muxer;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use libp2p::futures::StreamExt;
use libp2p::identity::Keypair;
use libp2p::pnet::PreSharedKey;
use libp2p::request_response::{self, OutboundRequestId, ResponseChannel};
use libp2p::swarm::SwarmEvent;
use libp2p::{Multiaddr, PeerId, Swarm, gossipsub, identify, kad, mdns, ping};
use shoal_protocol::Digest;
use shoal_protocol::fetch::SOURCES_ENOUGH;
use shoal_protocol::wire::{Request, Response};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use behaviour::{ANNOUNCEMENT_TOPIC, Behaviour, BehaviourEvent};
pub use buffers::ChunkBuffers;
pub use chunks::{ChunkLinks, LinkStream};
pub use codec::{
    ChunkAnswer, LinkAnswer, read_message_frame, read_request_frame, write_link_answer,
    write_message_frame,
};
pub use feed::HaveWatch;

use crate::locality::{self, Locality};
use crate::observe::Counters;
use crate::zone::PeerZone;

/// Commands queued for the swarm task before senders wait.
const COMMAND_QUEUE_LEN: usize = 1024;
/// Events queued for the node before the swarm task waits.
const EVENT_QUEUE_LEN: usize = 1024;
/// Inbound requests awaiting an answer; past this the node answers `Busy` at once.
const PENDING_INBOUND_MAX: usize = 4096;
/// Inbound requests one peer may have waiting for answers, so one peer cannot take the whole
/// queue; a well-behaved peer keeps at most the scheduler's per-peer limit in flight.
const PENDING_INBOUND_PER_PEER_MAX: usize = 64;
/// How long a provider lookup may run before it returns what it found.
const PROVIDER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Announcements kept for gossiping again once a peer subscribes.
const UNSENT_ANNOUNCEMENTS_MAX: usize = 256;

/// What the network needs to start.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub psk: Option<PreSharedKey>,
    /// Where peers' sites and round trips are recorded; its own site is announced.
    pub locality: Arc<Locality>,
    /// Where libp2p's own metrics are registered, for `/metrics`.
    pub registry: Arc<Mutex<libp2p::metrics::Registry>>,
    /// Which peers may connect (`zone.rs`); refusals are counted in `counters`.
    pub zone: Arc<PeerZone>,
    pub counters: Arc<Counters>,
    /// Where peers connect for lanes (`lane/`); `None`: this node offers none.
    pub lane_listen: Option<LaneListen>,
}

/// Where the lane listener binds, and whether failing to is fatal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaneListen {
    pub address: SocketAddr,
    /// Asked for by name (`--lane-listen`), rather than derived from `--listen`.
    pub explicit: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("request to {peer} failed: {reason}")]
    Failed { peer: PeerId, reason: String },
    #[error("the chunk links to {peer} closed before answering")]
    LinkClosed { peer: PeerId },
    #[error("the network task has stopped")]
    Stopped,
}

/// An inbound exchange request waiting for its answer.
#[derive(Debug)]
pub struct InboundRequest {
    pub id: u64,
    pub peer: PeerId,
    pub request: Request,
}

#[derive(Debug)]
pub enum NetworkEvent {
    Inbound(InboundRequest),
    /// A gossip message on the announcement topic.
    Announcement {
        data: Vec<u8>,
    },
    PeerConnected(PeerId),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer opened a chunk link: chunk requests to answer in order on `stream`.
    ChunkStream {
        peer: PeerId,
        stream: Box<dyn LinkStream>,
    },
    /// A peer opened a have feed (on a lane, or a libp2p stream): blobs it watches, whose
    /// bitfields to push on `stream`.
    FeedStream {
        peer: PeerId,
        stream: Box<dyn LinkStream>,
    },
}

/// A snapshot for `shoal status`.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct NetworkStatus {
    pub listen_addresses: Vec<String>,
    pub connected_peers: Vec<String>,
}

enum Command {
    Request {
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, RequestError>>,
    },
    Respond {
        id: u64,
        response: Response,
    },
    Publish {
        data: Vec<u8>,
    },
    Provide {
        blob: Digest,
    },
    Unprovide {
        blob: Digest,
    },
    FindProviders {
        blob: Digest,
        reply: oneshot::Sender<HashSet<PeerId>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    Status {
        reply: oneshot::Sender<NetworkStatus>,
    },
    Ban {
        peer: PeerId,
    },
}

/// The cloneable way to use the network.
#[derive(Debug, Clone)]
pub struct NetworkHandle {
    commands: mpsc::Sender<Command>,
    local_peer_id: PeerId,
    chunk_links: ChunkLinks,
    feeds: feed::HaveFeeds,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl NetworkHandle {
    pub fn local_peer_id(&self) -> PeerId {
        self.local_peer_id
    }

    async fn send(&self, command: Command) -> Result<(), RequestError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| RequestError::Stopped)
    }

    /// Sends an exchange request and waits for the answer. Cancel-safe: dropping the future
    /// abandons the answer, the request still completes or times out in the swarm.
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, RequestError> {
        if let Request::Have { blob } = request
            && let Some(response) = self.chunk_links.request_have(peer, blob).await
        {
            return Ok(response);
        }
        let (reply, answer) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await?;
        answer.await.map_err(|_| RequestError::Stopped)?
    }

    /// Asks `peer` for chunk `chunk` of `blob` on the chunk link to it. Cancel-safe, like
    /// [`NetworkHandle::request`].
    pub async fn request_chunk(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
    ) -> Result<ChunkAnswer, RequestError> {
        self.chunk_links.request(peer, blob, chunk).await
    }

    /// Watches `peer`'s bitfield of `blob` on the have feed to it; `None` when the peer gives
    /// no feed, and its bitfield is polled instead.
    pub fn watch_have(&self, peer: PeerId, blob: Digest) -> Option<HaveWatch> {
        self.feeds.watch(peer, blob)
    }

    /// The pool chunk buffers come from, for chunks read from disk to send.
    pub fn chunk_buffers(&self) -> &ChunkBuffers {
        self.chunk_links.buffers()
    }

    /// Answers the inbound request `id`.
    pub async fn respond(&self, id: u64, response: Response) {
        let _ = self.send(Command::Respond { id, response }).await;
    }

    /// Gossips an announcement to the network.
    pub async fn publish(&self, data: Vec<u8>) {
        let _ = self.send(Command::Publish { data }).await;
    }

    /// Tells the DHT this node can provide `blob`.
    pub async fn provide(&self, blob: Digest) {
        let _ = self.send(Command::Provide { blob }).await;
    }

    /// Stops telling the DHT this node provides `blob` (it was evicted or removed). Records
    /// other nodes hold expire on their own; until then a peer asking gets `NotFound`.
    pub async fn unprovide(&self, blob: Digest) {
        let _ = self.send(Command::Unprovide { blob }).await;
    }

    /// Peers the DHT knows to provide `blob`, after a bounded lookup.
    pub async fn find_providers(&self, blob: Digest) -> HashSet<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self
            .send(Command::FindProviders { blob, reply })
            .await
            .is_err()
        {
            return HashSet::new();
        }
        answer.await.unwrap_or_default()
    }

    pub async fn connected_peers(&self) -> Vec<PeerId> {
        let (reply, answer) = oneshot::channel();
        if self.send(Command::ConnectedPeers { reply }).await.is_err() {
            return Vec::new();
        }
        answer.await.unwrap_or_default()
    }

    pub async fn status(&self) -> Option<NetworkStatus> {
        let (reply, answer) = oneshot::channel();
        self.send(Command::Status { reply }).await.ok()?;
        answer.await.ok()
    }

    /// Disconnects `peer` and refuses it from now on.
    pub async fn ban(&self, peer: PeerId) {
        self.chunk_links.close(&peer);
        self.feeds.close(&peer);
        let _ = self.send(Command::Ban { peer }).await;
    }
}

/// Builds the swarm, starts listening and dialling, and spawns the swarm task. The task ends
/// when `shutdown` is cancelled.
pub async fn start(
    keypair: Keypair,
    config: NetworkConfig,
    shutdown: CancellationToken,
) -> anyhow::Result<(
    NetworkHandle,
    mpsc::Receiver<NetworkEvent>,
    tokio::task::JoinHandle<()>,
)> {
    let local_peer_id = keypair.public().to_peer_id();
    let transport = behaviour::transport(&keypair, config.psk)?;
    log_zone(&config);
    let behaviour = Behaviour::new(
        &keypair,
        config.mdns,
        locality::agent_version(config.locality.own_site()),
        gate::Gate::new(config.zone.clone(), config.counters.clone()),
    )?;
    let mut chunk_control = behaviour.chunks.new_control();
    let chunk_streams = chunk_control
        .accept(chunks::CHUNK_PROTOCOL)
        .context("cannot accept chunk links")?;
    let feed_streams = chunk_control
        .accept(feed::FEED_PROTOCOL)
        .context("cannot accept have feeds")?;
    let (events, event_receiver) = mpsc::channel(EVENT_QUEUE_LEN);
    let lanes = lane::Lanes::default();
    if let Some(listen) = config.lane_listen {
        match lanes
            .listen(listen.address, events.clone(), shutdown.clone())
            .await
        {
            Ok(bound) => {
                tracing::info!(address = %bound, "listening for lanes");
                for lane_use in [lane::LaneUse::Chunks, lane::LaneUse::Feed] {
                    let offers = chunk_control
                        .accept(lane_use.protocol())
                        .context("cannot accept lane requests")?;
                    let answering = lanes
                        .clone()
                        .answer_offers(offers, lane_use, shutdown.clone());
                    tokio::spawn(answering);
                }
            }
            Err(error) if listen.explicit => {
                return Err(error)
                    .with_context(|| format!("cannot listen for lanes on {}", listen.address));
            }
            Err(error) => tracing::warn!(
                address = %listen.address,
                %error,
                "cannot listen for lanes; peers fetch from this node over libp2p streams (set --lane-listen)"
            ),
        }
    }
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|_| transport)
        .context("cannot build the transport")?
        .with_behaviour(|_| behaviour)
        .context("cannot build the behaviour")?
        .with_swarm_config(|config| {
            config.with_idle_connection_timeout(behaviour::idle_connection_timeout())
        })
        .build();
    for address in &config.listen {
        swarm
            .listen_on(address.clone())
            .with_context(|| format!("cannot listen on {address}"))?;
    }
    let resolver = bootstrap::Resolver::spawn(config.bootstrap.clone(), shutdown.clone());
    let (commands, command_receiver) = mpsc::channel(COMMAND_QUEUE_LEN);
    let mut actor = SwarmActor {
        swarm,
        events,
        outbound: HashMap::new(),
        inbound: HashMap::new(),
        inbound_per_peer: HashMap::new(),
        next_inbound: 0,
        provider_lookups: HashMap::new(),
        banned: HashSet::new(),
        unsent: VecDeque::new(),
        locality: config.locality.clone(),
        bootstrap: bootstrap::Bootstrap::default(),
        metrics: metrics::register(&config.registry),
        lanes: lanes.clone(),
        counters: config.counters.clone(),
    };
    let task = tokio::spawn(async move {
        actor
            .run(
                command_receiver,
                chunk_streams,
                feed_streams,
                resolver,
                shutdown,
            )
            .await
    });
    Ok((
        NetworkHandle {
            commands,
            local_peer_id,
            feeds: feed::HaveFeeds::new(
                chunk_control.clone(),
                lanes.clone(),
                config.counters.clone(),
            ),
            chunk_links: ChunkLinks::new(chunk_control, lanes, config.counters.clone()),
        },
        event_receiver,
        task,
    ))
}

/// Says at start who may connect. A `--bootstrap` address naming a peer outside the zone is
/// dialled in vain: say so once. Addresses without a peer id (a DNS name) are checked when the
/// connection tells the id.
fn log_zone(config: &NetworkConfig) {
    let mode = config.zone.mode();
    tracing::info!(?mode, psk = config.psk.is_some(), "serving peers");
    if config.zone.is_closed() {
        tracing::warn!(
            "no peer may connect: name peers with --serve-peer or --trust, share a --psk, or \
             use --serve-peers any"
        );
    }
    for peer in config.zone.shares_outside_zone() {
        tracing::warn!(%peer, "a share-with peer is outside this node's zone and cannot connect");
    }
    for address in &config.bootstrap {
        let peer = address.iter().find_map(|part| match part {
            libp2p::multiaddr::Protocol::P2p(peer) => Some(peer),
            _ => None,
        });
        if let Some(peer) = peer
            && !config.zone.admits_connection(&peer)
        {
            tracing::warn!(
                %address,
                "bootstrap peer is outside this node's zone and will be refused; name it with \
                 --serve-peer or --trust, share a --psk, or use --serve-peers any"
            );
        }
    }
}

struct ProviderLookup {
    found: HashSet<PeerId>,
    reply: oneshot::Sender<HashSet<PeerId>>,
    deadline: tokio::time::Instant,
}

struct SwarmActor {
    swarm: Swarm<Behaviour>,
    events: mpsc::Sender<NetworkEvent>,
    outbound: HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<Response, RequestError>>)>,
    inbound: HashMap<u64, (PeerId, ResponseChannel<Response>)>,
    inbound_per_peer: HashMap<PeerId, usize>,
    next_inbound: u64,
    provider_lookups: HashMap<kad::QueryId, ProviderLookup>,
    banned: HashSet<PeerId>,
    /// Announcements published while no peer was known to subscribe (a peer that has just
    /// connected has not said so yet); gossiped again when one subscribes.
    unsent: VecDeque<Vec<u8>>,
    locality: Arc<Locality>,
    bootstrap: bootstrap::Bootstrap,
    metrics: libp2p::metrics::Metrics,
    lanes: lane::Lanes,
    /// Where the provider records this node starts are counted.
    counters: Arc<Counters>,
}

impl SwarmActor {
    async fn run(
        &mut self,
        mut commands: mpsc::Receiver<Command>,
        mut chunk_streams: libp2p_stream::IncomingStreams,
        mut feed_streams: libp2p_stream::IncomingStreams,
        mut resolver: bootstrap::Resolver,
        shutdown: CancellationToken,
    ) {
        let mut sweep = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.on_command(command),
                Some((peer, stream)) = chunk_streams.next() => {
                    if !self.banned.contains(&peer) {
                        let stream = Box::new(stream);
                        self.emit(NetworkEvent::ChunkStream { peer, stream }).await;
                    }
                }
                Some((peer, stream)) = feed_streams.next() => {
                    if !self.banned.contains(&peer) {
                        let stream = Box::new(stream);
                        self.emit(NetworkEvent::FeedStream { peer, stream }).await;
                    }
                }
                event = self.swarm.select_next_some() => self.on_swarm_event(event).await,
                _ = sweep.tick() => self.expire_provider_lookups(),
                Some(found) = resolver.next() => {
                    self.bootstrap.dial_round(&mut self.swarm, found, &self.banned);
                }
            }
        }
    }

    fn on_command(&mut self, command: Command) {
        let behaviour = self.swarm.behaviour_mut();
        match command {
            Command::Request {
                peer,
                request,
                reply,
            } => {
                if self.banned.contains(&peer) {
                    let _ = reply.send(Err(RequestError::Failed {
                        peer,
                        reason: "peer is banned".into(),
                    }));
                    return;
                }
                let id = behaviour.exchange.send_request(&peer, request);
                self.outbound.insert(id, (peer, reply));
            }
            Command::Respond { id, response } => {
                if let Some((peer, channel)) = self.inbound.remove(&id) {
                    if let Some(count) = self.inbound_per_peer.get_mut(&peer) {
                        *count = count.saturating_sub(1);
                        if *count == 0 {
                            self.inbound_per_peer.remove(&peer);
                        }
                    }
                    let _ = behaviour.exchange.send_response(channel, response);
                }
            }
            Command::Publish { data } => self.publish(data),
            Command::Provide { blob } => {
                match behaviour
                    .kad
                    .start_providing(kad::RecordKey::new(blob.as_bytes()))
                {
                    Ok(_) => Counters::add(&self.counters.provider_records, 1),
                    Err(error) => tracing::warn!(%blob, %error, "cannot record provider"),
                }
            }
            Command::Unprovide { blob } => {
                behaviour
                    .kad
                    .stop_providing(&kad::RecordKey::new(blob.as_bytes()));
            }
            Command::FindProviders { blob, reply } => {
                let id = behaviour
                    .kad
                    .get_providers(kad::RecordKey::new(blob.as_bytes()));
                let deadline = tokio::time::Instant::now() + PROVIDER_LOOKUP_TIMEOUT;
                self.provider_lookups.insert(
                    id,
                    ProviderLookup {
                        found: HashSet::new(),
                        reply,
                        deadline,
                    },
                );
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::Status { reply } => {
                let mut connected: Vec<String> = self
                    .swarm
                    .connected_peers()
                    .map(ToString::to_string)
                    .collect();
                connected.sort();
                let _ = reply.send(NetworkStatus {
                    listen_addresses: self.swarm.listeners().map(ToString::to_string).collect(),
                    connected_peers: connected,
                });
            }
            Command::Ban { peer } => {
                tracing::warn!(%peer, "banning peer");
                self.banned.insert(peer);
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    fn expire_provider_lookups(&mut self) {
        let now = tokio::time::Instant::now();
        let expired: Vec<kad::QueryId> = self
            .provider_lookups
            .iter()
            .filter(|(_, lookup)| lookup.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(lookup) = self.provider_lookups.remove(&id) {
                let _ = lookup.reply.send(lookup.found);
            }
            if let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                query.finish();
            }
        }
    }

    async fn emit(&mut self, event: NetworkEvent) {
        let _ = self.events.send(event).await;
    }

    async fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        libp2p::metrics::Recorder::record(&self.metrics, &event);
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening for peers");
                println!("listening {address}");
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                endpoint,
                num_established,
                ..
            } => {
                if self.banned.contains(&peer_id) {
                    let _ = self.swarm.disconnect_peer_id(peer_id);
                    return;
                }
                self.lanes.connected(peer_id, endpoint.get_remote_address());
                if endpoint.is_dialer() {
                    self.bootstrap
                        .on_dialed(endpoint.get_remote_address(), peer_id);
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, endpoint.get_remote_address().clone());
                }
                if num_established.get() == 1 {
                    tracing::debug!(peer = %peer_id, "peer connected");
                    self.emit(NetworkEvent::PeerConnected(peer_id)).await;
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } => {
                tracing::debug!(peer = %peer_id, "peer disconnected");
                self.lanes.disconnected(&peer_id);
                self.emit(NetworkEvent::PeerDisconnected(peer_id)).await;
            }
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event).await,
            _ => {}
        }
    }

    fn publish(&mut self, data: Vec<u8>) {
        let topic = gossipsub::IdentTopic::new(ANNOUNCEMENT_TOPIC);
        match self
            .swarm
            .behaviour_mut()
            .gossipsub
            .publish(topic, data.clone())
        {
            Ok(_) => {}
            Err(gossipsub::PublishError::NoPeersSubscribedToTopic) => {
                tracing::debug!("no peer subscribes yet; the announcement waits for one");
                if self.unsent.len() >= UNSENT_ANNOUNCEMENTS_MAX {
                    self.unsent.pop_front();
                }
                self.unsent.push_back(data);
            }
            Err(error) => tracing::debug!(%error, "announcement not gossiped"),
        }
    }

    async fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        metrics::record(&self.metrics, &event);
        match event {
            BehaviourEvent::Gossipsub(gossipsub::Event::Subscribed { topic, .. })
                if topic == gossipsub::IdentTopic::new(ANNOUNCEMENT_TOPIC).hash() =>
            {
                for data in std::mem::take(&mut self.unsent) {
                    self.publish(data);
                }
            }
            BehaviourEvent::Exchange(event) => self.on_exchange_event(event).await,
            BehaviourEvent::Gossipsub(gossipsub::Event::Message { message, .. }) => {
                self.emit(NetworkEvent::Announcement { data: message.data })
                    .await;
            }
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.locality
                    .set_site(peer_id, locality::site_of_agent(&info.agent_version));
                self.bootstrap.on_identified(peer_id, &info.listen_addrs);
                for address in info.listen_addrs {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer_id, address);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => self.locality.record_rtt(peer, rtt),
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                for (peer, address) in found {
                    if !self.banned.contains(&peer)
                        && !self.swarm.is_connected(&peer)
                        && self.swarm.behaviour_mut().gate.may_dial(&peer)
                    {
                        self.swarm
                            .behaviour_mut()
                            .kad
                            .add_address(&peer, address.clone());
                        let _ = self.swarm.dial(address);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id,
                result: kad::QueryResult::GetProviders(result),
                step,
                ..
            }) => {
                if let Ok(kad::GetProvidersOk::FoundProviders { providers, .. }) = result
                    && let Some(lookup) = self.provider_lookups.get_mut(&id)
                {
                    lookup.found.extend(providers);
                    // As many as a transfer wants (this node may be among them): no need to ask
                    // the rest of the hosts nearest the key.
                    if lookup.found.len() > SOURCES_ENOUGH
                        && let Some(mut query) = self.swarm.behaviour_mut().kad.query_mut(&id)
                    {
                        query.finish();
                    }
                }
                if step.last
                    && let Some(lookup) = self.provider_lookups.remove(&id)
                {
                    let _ = lookup.reply.send(lookup.found);
                }
            }
            _ => {}
        }
    }

    async fn on_exchange_event(&mut self, event: request_response::Event<Request, Response>) {
        match event {
            request_response::Event::Message { peer, message, .. } => match message {
                request_response::Message::Request {
                    request, channel, ..
                } => {
                    if self.banned.contains(&peer) {
                        return;
                    }
                    let from_peer = self.inbound_per_peer.get(&peer).copied().unwrap_or(0);
                    if self.inbound.len() >= PENDING_INBOUND_MAX
                        || from_peer >= PENDING_INBOUND_PER_PEER_MAX
                    {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .exchange
                            .send_response(channel, Response::Busy);
                        return;
                    }
                    let id = self.next_inbound;
                    self.next_inbound += 1;
                    self.inbound.insert(id, (peer, channel));
                    *self.inbound_per_peer.entry(peer).or_default() += 1;
                    self.emit(NetworkEvent::Inbound(InboundRequest { id, peer, request }))
                        .await;
                }
                request_response::Message::Response {
                    request_id,
                    response,
                } => {
                    if let Some((_, reply)) = self.outbound.remove(&request_id) {
                        let _ = reply.send(Ok(response));
                    }
                }
            },
            request_response::Event::OutboundFailure {
                request_id,
                error,
                peer,
                ..
            } => {
                if let Some((_, reply)) = self.outbound.remove(&request_id) {
                    let _ = reply.send(Err(RequestError::Failed {
                        peer,
                        reason: error.to_string(),
                    }));
                }
            }
            request_response::Event::InboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "inbound request failed");
            }
            request_response::Event::ResponseSent { .. } => {}
        }
    }
}
