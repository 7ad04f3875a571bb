//! Bootstrap peers that stay found. Every `--bootstrap` address is dialled at start and again in
//! later rounds while the node has fewer than [`PEERS_WANTED`] peers, and a DNS name in one
//! (`/dns4/NAME/tcp/4050`, `/dns6/...`, `/dns/...`, with or without `/p2p/<id>`) stands for
//! every address it resolves to, looked up afresh each round. That is what a Kubernetes
//! DaemonSet needs: a headless Service's name resolves to the hosts running a node right now,
//! which change as nodes come and go, and no peer id is known in advance.
//!
//! Data flow: a [`Resolver`] task looks the names up on a schedule (soon after start, then
//! backing off to every [`ROUND_INTERVAL_MAX`]) and hands each round's addresses to the swarm
//! task, which picks what to dial with [`Bootstrap::plan`]: never one of its own listen
//! addresses, never an address whose peer is connected or banned (learned from earlier dials,
//! from identify, or from a `/p2p` suffix), and no more than needed to reach [`PEERS_WANTED`].
//!
//! Not for: finding peers beyond the bootstrap list. Once one peer is connected, Kademlia,
//! identify and gossipsub spread the rest; mDNS covers one L2 network.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId, Swarm};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::behaviour::Behaviour;

/// Connected peers at which bootstrap stops dialling: enough for gossipsub's mesh (6 peers by
/// default) plus a spare, few enough that a thousand-node DaemonSet does not make every node
/// dial every other one. Kademlia finds the rest.
pub const PEERS_WANTED: usize = 8;
/// The first re-dial comes this soon after start: nodes of a DaemonSet start at about the same
/// time, and the first dials of a name often reach peers that are not listening yet.
const ROUND_INTERVAL_MIN: Duration = Duration::from_secs(1);
/// Rounds back off to this: a joining node dials the others itself, so this only bounds how
/// long an isolated node (every peer restarted) stays alone. CoreDNS's default record TTL for
/// Services is 5-30 s, so looking up more often would mostly read its cache.
const ROUND_INTERVAL_MAX: Duration = Duration::from_secs(30);
/// A lookup that takes longer has failed; the next round tries again.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Addresses remembered with the peer found there; past this the memory starts again empty
/// (the worst case is one extra dial per forgotten address).
const KNOWN_ADDRESSES_MAX: usize = 4096;

/// How long the resolver waits after round `round` (0 is the round at start).
pub fn round_interval(round: u32) -> Duration {
    let factor = 1u32.checked_shl(round).unwrap_or(u32::MAX);
    ROUND_INTERVAL_MIN
        .saturating_mul(factor)
        .min(ROUND_INTERVAL_MAX)
}

/// Which addresses a DNS name may resolve to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    V4,
    V6,
    Any,
}

impl Family {
    fn admits(self, ip: &IpAddr) -> bool {
        match self {
            Family::V4 => ip.is_ipv4(),
            Family::V6 => ip.is_ipv6(),
            Family::Any => true,
        }
    }
}

/// The DNS name that `address` starts with, its family and the port that follows it (0 when
/// none does: the lookup needs one, the address keeps its own).
fn name_of(address: &Multiaddr) -> Option<(String, Family, u16)> {
    let mut parts = address.iter();
    let (host, family) = match parts.next()? {
        Protocol::Dns(host) => (host, Family::Any),
        Protocol::Dns4(host) => (host, Family::V4),
        Protocol::Dns6(host) => (host, Family::V6),
        _ => return None,
    };
    let port = match parts.next() {
        Some(Protocol::Tcp(port) | Protocol::Udp(port)) => port,
        _ => 0,
    };
    Some((host.into_owned(), family, port))
}

/// `address` with its leading DNS name replaced by each of `ips` that the name's family admits,
/// in order and without repeats.
fn expand(address: &Multiaddr, family: Family, ips: &[IpAddr]) -> Vec<Multiaddr> {
    let mut seen = HashSet::new();
    ips.iter()
        .filter(|ip| family.admits(ip) && seen.insert(**ip))
        .map(|ip| {
            let mut expanded = Multiaddr::empty();
            expanded.push(match ip {
                IpAddr::V4(ip) => Protocol::Ip4(*ip),
                IpAddr::V6(ip) => Protocol::Ip6(*ip),
            });
            for part in address.iter().skip(1) {
                expanded.push(part);
            }
            expanded
        })
        .collect()
}

/// Every address of `bootstrap` with its names resolved (through the system resolver, so
/// `/etc/hosts` and the cluster's DNS both count). A name that does not resolve is logged and
/// left out of this round. Cancel-safe: nothing is kept between calls.
pub async fn resolve(bootstrap: &[Multiaddr]) -> Vec<Multiaddr> {
    let mut found = Vec::new();
    for address in bootstrap {
        let Some((host, family, port)) = name_of(address) else {
            found.push(address.clone());
            continue;
        };
        let lookup = tokio::time::timeout(
            LOOKUP_TIMEOUT,
            tokio::net::lookup_host((host.as_str(), port)),
        )
        .await;
        match lookup {
            Ok(Ok(addresses)) => {
                let ips: Vec<IpAddr> = addresses.map(|socket| socket.ip()).collect();
                let expanded = expand(address, family, &ips);
                tracing::debug!(%address, count = expanded.len(), "bootstrap name resolved");
                found.extend(expanded);
            }
            Ok(Err(error)) => tracing::warn!(%address, %error, "cannot resolve bootstrap name"),
            Err(_) => tracing::warn!(%address, ?LOOKUP_TIMEOUT, "bootstrap lookup timed out"),
        }
    }
    found
}

/// The task that resolves the bootstrap list round after round; aborted when dropped, and it
/// ends by itself on shutdown.
#[derive(Debug)]
pub struct Resolver {
    rounds: mpsc::Receiver<Vec<Multiaddr>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Resolver {
    /// Starts resolving `bootstrap`; with an empty list no task starts and [`Resolver::next`]
    /// answers `None` at once.
    pub fn spawn(bootstrap: Vec<Multiaddr>, shutdown: CancellationToken) -> Resolver {
        // One round waiting is enough: a newer round replaces what an older one found.
        let (sender, rounds) = mpsc::channel(1);
        if bootstrap.is_empty() {
            return Resolver { rounds, task: None };
        }
        let task = tokio::spawn(async move {
            let mut round = 0u32;
            loop {
                let found = tokio::select! {
                    _ = shutdown.cancelled() => break,
                    found = resolve(&bootstrap) => found,
                };
                if sender.send(found).await.is_err() {
                    break;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(round_interval(round)) => {}
                }
                round = round.saturating_add(1);
            }
        });
        Resolver {
            rounds,
            task: Some(task),
        }
    }

    /// The next round's addresses; `None` once the resolver has stopped (or never started).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<Vec<Multiaddr>> {
        self.rounds.recv().await
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// `address` without a trailing `/p2p/<id>`, and that id.
fn split_peer(address: &Multiaddr) -> (Multiaddr, Option<PeerId>) {
    let mut base = address.clone();
    match base.pop() {
        Some(Protocol::P2p(peer)) => (base, Some(peer)),
        _ => (address.clone(), None),
    }
}

/// The swarm task's bootstrap memory: which peer answered at which address, so that a round
/// does not dial a peer that is already connected.
#[derive(Debug, Default)]
pub struct Bootstrap {
    peers_at: HashMap<Multiaddr, PeerId>,
    round: u64,
}

impl Bootstrap {
    /// A dial to `address` reached `peer`.
    pub fn on_dialed(&mut self, address: &Multiaddr, peer: PeerId) {
        self.learn(address, peer);
    }

    /// `peer` says it listens on `listen` (identify), which covers peers that dialled us first.
    pub fn on_identified(&mut self, peer: PeerId, listen: &[Multiaddr]) {
        for address in listen {
            self.learn(address, peer);
        }
    }

    fn learn(&mut self, address: &Multiaddr, peer: PeerId) {
        let (base, _) = split_peer(address);
        if self.peers_at.len() >= KNOWN_ADDRESSES_MAX && !self.peers_at.contains_key(&base) {
            self.peers_at.clear();
        }
        self.peers_at.insert(base, peer);
    }

    /// Which of `found` to dial now. Left out: the node's own addresses (`own`, `local`),
    /// addresses whose peer `unwanted` says to leave alone (connected or banned), repeats, and
    /// all of them once `connected` reaches [`PEERS_WANTED`]. Among the rest the order is a hash
    /// of the local peer id and the round, so that nodes resolving the same name spread their
    /// dials over different peers, and a round that dials a few tries others than the last.
    pub fn plan(
        &mut self,
        found: Vec<Multiaddr>,
        local: PeerId,
        own: &[Multiaddr],
        connected: usize,
        unwanted: impl Fn(&PeerId) -> bool,
    ) -> Vec<Multiaddr> {
        let round = self.round;
        self.round = self.round.wrapping_add(1);
        let wanted = PEERS_WANTED.saturating_sub(connected);
        if wanted == 0 {
            return Vec::new();
        }
        let mut seen = HashSet::new();
        let mut candidates: Vec<(u64, Multiaddr)> = found
            .into_iter()
            .filter(|address| {
                let (base, named) = split_peer(address);
                let peer = named.or_else(|| self.peers_at.get(&base).copied());
                !own.contains(&base)
                    && peer.is_none_or(|peer| peer != local && !unwanted(&peer))
                    && seen.insert(address.clone())
            })
            .map(|address| {
                let mut hasher = DefaultHasher::new();
                (local, round, &address).hash(&mut hasher);
                (hasher.finish(), address)
            })
            .collect();
        candidates.sort();
        candidates
            .into_iter()
            .take(wanted)
            .map(|(_, address)| address)
            .collect()
    }

    /// Plans a round against the swarm's state and dials what the plan says.
    pub fn dial_round(
        &mut self,
        swarm: &mut Swarm<Behaviour>,
        found: Vec<Multiaddr>,
        banned: &HashSet<PeerId>,
    ) {
        let own: Vec<Multiaddr> = swarm.listeners().cloned().collect();
        let connected = swarm.connected_peers().count();
        let local = *swarm.local_peer_id();
        let dials = self.plan(found, local, &own, connected, |peer| {
            banned.contains(peer) || swarm.is_connected(peer)
        });
        for address in dials {
            tracing::debug!(%address, "dialling bootstrap address");
            if let Err(error) = swarm.dial(address.clone()) {
                tracing::warn!(%address, %error, "cannot dial bootstrap peer");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> Multiaddr {
        text.parse().expect("a valid multiaddr")
    }

    fn peer() -> PeerId {
        PeerId::random()
    }

    #[test]
    fn rounds_back_off_to_the_maximum() {
        let seconds: Vec<u64> = (0..8).map(|r| round_interval(r).as_secs()).collect();
        assert_eq!(seconds, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(round_interval(u32::MAX), ROUND_INTERVAL_MAX);
    }

    #[test]
    fn names_are_found_with_their_family_and_port() {
        assert_eq!(
            name_of(&addr("/dns4/shoal-peers.shoal.svc/tcp/4050")),
            Some(("shoal-peers.shoal.svc".into(), Family::V4, 4050))
        );
        assert_eq!(
            name_of(&addr("/dns6/h/udp/9/quic-v1")),
            Some(("h".into(), Family::V6, 9))
        );
        assert_eq!(name_of(&addr("/dns/h")), Some(("h".into(), Family::Any, 0)));
        assert_eq!(name_of(&addr("/ip4/10.0.0.1/tcp/4050")), None);
    }

    #[test]
    fn a_name_expands_to_each_address_of_its_family_keeping_the_rest() {
        let id = peer();
        let ips: Vec<IpAddr> = ["10.0.0.1", "::1", "10.0.0.2", "10.0.0.1"]
            .iter()
            .map(|ip| ip.parse().expect("an ip"))
            .collect();
        let named = addr(&format!("/dns4/peers/tcp/4050/p2p/{id}"));
        assert_eq!(
            expand(&named, Family::V4, &ips),
            [
                addr(&format!("/ip4/10.0.0.1/tcp/4050/p2p/{id}")),
                addr(&format!("/ip4/10.0.0.2/tcp/4050/p2p/{id}")),
            ]
        );
        assert_eq!(
            expand(&addr("/dns6/peers/tcp/1"), Family::V6, &ips),
            [addr("/ip6/::1/tcp/1")]
        );
        assert_eq!(
            expand(&addr("/dns/peers/tcp/1"), Family::Any, &ips).len(),
            3
        );
    }

    #[tokio::test]
    async fn resolving_reads_the_system_resolver_and_keeps_fixed_addresses() {
        // localhost comes from /etc/hosts: no query leaves the machine.
        let fixed = addr("/ip4/10.1.2.3/tcp/4050");
        let found = resolve(&[addr("/dns4/localhost/tcp/4050"), fixed.clone()]).await;
        assert_eq!(found, [addr("/ip4/127.0.0.1/tcp/4050"), fixed]);
    }

    #[test]
    fn a_round_skips_itself_connected_and_banned_peers() {
        let local = peer();
        let (dialled, identified, banned, named) = (peer(), peer(), peer(), peer());
        let mut bootstrap = Bootstrap::default();
        bootstrap.on_dialed(&addr("/ip4/10.0.0.2/tcp/4050"), dialled);
        bootstrap.on_identified(identified, &[addr("/ip4/10.0.0.3/tcp/4050")]);
        bootstrap.on_dialed(&addr("/ip4/10.0.0.4/tcp/4050"), banned);
        let found = vec![
            addr("/ip4/10.0.0.1/tcp/4050"),
            addr("/ip4/10.0.0.2/tcp/4050"),
            addr("/ip4/10.0.0.3/tcp/4050"),
            addr("/ip4/10.0.0.4/tcp/4050"),
            addr(&format!("/ip4/10.0.0.5/tcp/4050/p2p/{named}")),
            addr(&format!("/ip4/10.0.0.6/tcp/4050/p2p/{local}")),
            addr("/ip4/10.0.0.7/tcp/4050"),
            addr("/ip4/10.0.0.7/tcp/4050"),
        ];
        let own = [addr("/ip4/10.0.0.1/tcp/4050")];
        let connected = [dialled, identified, named];
        let unwanted = |p: &PeerId| connected.contains(p) || *p == banned;
        let mut dials = bootstrap.plan(found.clone(), local, &own, 3, unwanted);
        dials.sort();
        assert_eq!(dials, [addr("/ip4/10.0.0.7/tcp/4050")]);

        // Once those peers are gone, their addresses are dialled again (the banned one never).
        let mut dials = bootstrap.plan(found, local, &own, 0, |p| *p == banned);
        dials.sort();
        assert_eq!(
            dials,
            [
                addr("/ip4/10.0.0.2/tcp/4050"),
                addr("/ip4/10.0.0.3/tcp/4050"),
                addr(&format!("/ip4/10.0.0.5/tcp/4050/p2p/{named}")),
                addr("/ip4/10.0.0.7/tcp/4050"),
            ]
        );
    }

    #[test]
    fn a_round_dials_only_up_to_the_peers_wanted_and_rotates() {
        let local = peer();
        let found: Vec<Multiaddr> = (1..=40)
            .map(|i| addr(&format!("/ip4/10.0.1.{i}/tcp/4050")))
            .collect();
        let mut bootstrap = Bootstrap::default();
        let first = bootstrap.plan(found.clone(), local, &[], 5, |_| false);
        assert_eq!(first.len(), PEERS_WANTED - 5);
        let second = bootstrap.plan(found.clone(), local, &[], 5, |_| false);
        assert_ne!(first, second, "each round tries others");
        assert!(
            bootstrap
                .plan(found.clone(), local, &[], PEERS_WANTED, |_| false)
                .is_empty()
        );
        let elsewhere = Bootstrap::default().plan(found, peer(), &[], 5, |_| false);
        assert_ne!(first, elsewhere, "other nodes pick other peers");
    }

    #[tokio::test(start_paused = true)]
    async fn the_resolver_repeats_rounds_and_stops_on_shutdown() {
        let fixed = vec![addr("/ip4/10.1.2.3/tcp/4050")];
        let shutdown = CancellationToken::new();
        let mut resolver = Resolver::spawn(fixed.clone(), shutdown.clone());
        let start = tokio::time::Instant::now();
        assert_eq!(resolver.next().await, Some(fixed.clone()));
        assert_eq!(resolver.next().await, Some(fixed.clone()));
        assert_eq!(resolver.next().await, Some(fixed));
        assert_eq!(start.elapsed(), round_interval(0) + round_interval(1));
        shutdown.cancel();
        assert_eq!(resolver.next().await, None);

        let mut idle = Resolver::spawn(Vec::new(), CancellationToken::new());
        assert_eq!(idle.next().await, None);
    }
}
