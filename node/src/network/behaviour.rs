//! The libp2p stack of a node: the transport (TCP, and QUIC unless a pre-shared key is set,
//! with Noise and Yamux) and the combined behaviour (the zone's gate, connection limits, identify, ping, mDNS,
//! Kademlia, gossipsub, the request-response exchange, and the streams of chunk links).

use std::time::Duration;

use anyhow::Context;
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{Boxed, OrTransport};
use libp2p::core::upgrade::Version;
use libp2p::futures::future::Either;
use libp2p::identity::Keypair;
use libp2p::pnet::{PnetConfig, PreSharedKey};
use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    PeerId, StreamProtocol, Transport, connection_limits, gossipsub, identify, kad, mdns, noise,
    ping, quic, request_response, tcp,
};

use super::codec::{ExchangeCodec, PROTOCOL};
use super::gate::Gate;
use super::muxer::YamuxConfig;

/// Connections per remote peer; one is normal, two covers simultaneous dials.
const CONNECTIONS_PER_PEER_MAX: u32 = 2;
/// Established connections in total, so a flood of peers cannot exhaust the node.
const CONNECTIONS_MAX: u32 = 512;
/// Handshakes in progress at once.
const PENDING_INCOMING_MAX: u32 = 128;
/// Concurrent exchange streams per connection handler (requests in flight both ways).
const EXCHANGE_STREAMS_MAX: usize = 256;
/// A chunk request that takes longer than this has failed; the scheduler reassigns it.
const EXCHANGE_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest gossip message: a signed announcement with the index roots of a large image.
const GOSSIP_BYTES_MAX: usize = 512 * 1024;
/// Provider records kept locally: one per blob the node holds, for large stores.
const PROVIDED_KEYS_MAX: usize = 1_000_000;
/// Idle connections stay up so that peers keep each other's bitfields fresh.
const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(300);

pub const ANNOUNCEMENT_TOPIC: &str = "shoal/announcements/1";
const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/shoal/kad/1");
const IDENTIFY_PROTOCOL: &str = "/shoal/id/1";

#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// First, so that a connection it refuses reaches no other behaviour.
    pub gate: Gate,
    pub limits: connection_limits::Behaviour,
    pub identify: identify::Behaviour,
    pub ping: ping::Behaviour,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub kad: kad::Behaviour<kad::store::MemoryStore>,
    pub gossipsub: gossipsub::Behaviour,
    pub exchange: request_response::Behaviour<ExchangeCodec>,
    /// Long-lived chunk streams (`chunks.rs`).
    pub chunks: libp2p_stream::Behaviour,
}

impl Behaviour {
    /// `agent_version` is what identify tells peers (the node's version and site).
    pub fn new(
        keypair: &Keypair,
        mdns_enabled: bool,
        agent_version: String,
        gate: Gate,
    ) -> anyhow::Result<Behaviour> {
        let peer_id = keypair.public().to_peer_id();
        let limits = connection_limits::ConnectionLimits::default()
            .with_max_established_per_peer(Some(CONNECTIONS_PER_PEER_MAX))
            .with_max_established(Some(CONNECTIONS_MAX))
            .with_max_pending_incoming(Some(PENDING_INCOMING_MAX));
        let mdns = if mdns_enabled {
            Some(
                mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
                    .context("cannot start mDNS")?,
            )
        } else {
            None
        };
        let store_config = kad::store::MemoryStoreConfig {
            max_provided_keys: PROVIDED_KEYS_MAX,
            ..kad::store::MemoryStoreConfig::default()
        };
        let mut kad = kad::Behaviour::with_config(
            peer_id,
            kad::store::MemoryStore::with_config(peer_id, store_config),
            kad::Config::new(KAD_PROTOCOL),
        );
        kad.set_mode(Some(kad::Mode::Server));
        let gossip_config = gossipsub::ConfigBuilder::default()
            .max_transmit_size(GOSSIP_BYTES_MAX)
            .validation_mode(gossipsub::ValidationMode::Strict)
            .build()
            .map_err(|error| anyhow::anyhow!("invalid gossipsub configuration: {error}"))?;
        let mut gossipsub = gossipsub::Behaviour::new(
            gossipsub::MessageAuthenticity::Signed(keypair.clone()),
            gossip_config,
        )
        .map_err(|error| anyhow::anyhow!("cannot start gossipsub: {error}"))?;
        gossipsub
            .subscribe(&gossipsub::IdentTopic::new(ANNOUNCEMENT_TOPIC))
            .context("cannot subscribe to announcements")?;
        let exchange = request_response::Behaviour::new(
            [(PROTOCOL, request_response::ProtocolSupport::Full)],
            request_response::Config::default()
                .with_request_timeout(EXCHANGE_REQUEST_TIMEOUT)
                .with_max_concurrent_streams(EXCHANGE_STREAMS_MAX),
        );
        Ok(Behaviour {
            gate,
            limits: connection_limits::Behaviour::new(limits),
            identify: identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), keypair.public())
                    .with_agent_version(agent_version),
            ),
            ping: ping::Behaviour::default(),
            mdns: mdns.into(),
            kad,
            gossipsub,
            exchange,
            chunks: libp2p_stream::Behaviour::new(),
        })
    }
}

/// TCP with Noise and Yamux, behind the pre-shared key when one is set; plus QUIC without one
/// (QUIC brings its own TLS handshake, which a libp2p private network cannot wrap, so a node
/// with a key speaks TCP only).
pub fn transport(
    keypair: &Keypair,
    psk: Option<PreSharedKey>,
) -> anyhow::Result<Boxed<(PeerId, StreamMuxerBox)>> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::default().nodelay(true));
    let noise = noise::Config::new(keypair).context("cannot set up Noise")?;
    let yamux = YamuxConfig::default();
    let Some(psk) = psk else {
        let tcp = tcp
            .upgrade(Version::V1Lazy)
            .authenticate(noise)
            .multiplex(yamux);
        let quic = quic::tokio::Transport::new(quic::Config::new(keypair));
        return Ok(OrTransport::new(quic, tcp)
            .map(|either, _| match either {
                Either::Left((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
                Either::Right((peer, muxer)) => (peer, StreamMuxerBox::new(muxer)),
            })
            .boxed());
    };
    Ok(tcp
        .and_then(move |socket, _| PnetConfig::new(psk).handshake(socket))
        .upgrade(Version::V1Lazy)
        .authenticate(noise)
        .multiplex(yamux)
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

pub fn idle_connection_timeout() -> Duration {
    IDLE_CONNECTION_TIMEOUT
}
