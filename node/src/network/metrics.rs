//! libp2p's own metrics, the `libp2p_*` families on `/metrics`: the swarm task records every swarm
//! event (connections, dials, listeners) and the events of the behaviours `libp2p-metrics` knows
//! (gossipsub, Kademlia, identify, ping) into one [`Metrics`], registered in the node's shared
//! registry. mDNS, the request-response exchange and the chunk links have no recorder there; the node's own `shoal_*`
//! counters cover the exchange.

use std::sync::{Mutex, PoisonError};

use libp2p::metrics::{Metrics, Recorder, Registry};

use super::behaviour::BehaviourEvent;

/// Registers libp2p's families in `registry`; the lock is held only while they are added.
pub fn register(registry: &Mutex<Registry>) -> Metrics {
    Metrics::new(&mut registry.lock().unwrap_or_else(PoisonError::into_inner))
}

/// Records `event` if `libp2p-metrics` has a recorder for its behaviour.
pub fn record(metrics: &Metrics, event: &BehaviourEvent) {
    match event {
        BehaviourEvent::Gossipsub(event) => metrics.record(event),
        BehaviourEvent::Kad(event) => metrics.record(event),
        BehaviourEvent::Identify(event) => metrics.record(event),
        BehaviourEvent::Ping(event) => metrics.record(event),
        BehaviourEvent::Gate(never) => match *never {},
        BehaviourEvent::Limits(_)
        | BehaviourEvent::Mdns(_)
        | BehaviourEvent::Exchange(_)
        | BehaviourEvent::Chunks(_) => {}
    }
}
