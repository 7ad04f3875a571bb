//! The zone at the connection level: a behaviour that refuses every connection, inbound or
//! outbound, with a peer outside the node's zone (`zone.rs`) as soon as the peer's id is known
//! — before any other behaviour sees it, so an outsider gets no gossip, no DHT answers and no
//! exchange. It is the first field of the stack, so no other behaviour builds a handler for a
//! connection it refuses.
//!
//! A refusal is counted (`peers_refused`) and logged at debug once per peer.

use std::collections::HashSet;
use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};

use crate::observe::Counters;
use crate::zone::PeerZone;

/// Peers whose refusal was logged; past this the memory starts again empty (the worst case is
/// one more debug line per peer).
const LOGGED_PEERS_MAX: usize = 4096;

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
#[error("peer {0} is outside this node's zone")]
pub struct OutsideZone(PeerId);

pub struct Gate {
    zone: Arc<PeerZone>,
    counters: Arc<Counters>,
    logged: OnceEach,
}

impl Gate {
    pub fn new(zone: Arc<PeerZone>, counters: Arc<Counters>) -> Gate {
        Gate {
            zone,
            counters,
            logged: OnceEach::default(),
        }
    }

    /// Whether to dial `peer` at all (mDNS, Kademlia); logs a skipped peer once.
    pub fn may_dial(&mut self, peer: &PeerId) -> bool {
        let admitted = self.zone.admits_connection(peer);
        if !admitted && self.logged.first(*peer) {
            tracing::debug!(%peer, "not dialling a peer outside this node's zone");
        }
        admitted
    }

    fn check(&mut self, peer: PeerId, established: bool) -> Result<(), ConnectionDenied> {
        if self.zone.admits_connection(&peer) {
            return Ok(());
        }
        if established {
            Counters::add(&self.counters.peers_refused, 1);
        }
        if self.logged.first(peer) {
            tracing::debug!(%peer, "refusing a connection: the peer is outside this node's zone");
        }
        Err(ConnectionDenied::new(OutsideZone(peer)))
    }
}

/// Remembers which peers were seen, within [`LOGGED_PEERS_MAX`].
#[derive(Debug, Default)]
struct OnceEach(HashSet<PeerId>);

impl OnceEach {
    fn first(&mut self, peer: PeerId) -> bool {
        if self.0.len() >= LOGGED_PEERS_MAX {
            self.0.clear();
        }
        self.0.insert(peer)
    }
}

impl NetworkBehaviour for Gate {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, true)?;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        if let Some(peer) = peer {
            self.check(peer, false)?;
        }
        Ok(Vec::new())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.check(peer, true)?;
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::zone::ServePeers;

    #[test]
    fn refuses_peers_outside_the_zone_and_counts_established_connections() {
        let member = PeerId::random();
        let outsider = PeerId::random();
        let zone = PeerZone::new(ServePeers::Zone, [member], false, BTreeMap::new());
        let counters = Arc::new(Counters::default());
        let mut gate = Gate::new(Arc::new(zone), counters.clone());
        assert!(gate.check(member, true).is_ok());
        assert!(gate.check(outsider, true).is_err());
        assert!(gate.check(outsider, false).is_err());
        assert!(gate.may_dial(&member) && !gate.may_dial(&outsider));
        assert_eq!(counters.snapshot().peers_refused, 1);
    }
}
