//! Peer zones: which peers a node serves, and what each of them may ask. Pure decisions, no
//! I/O; the network and the serving side apply them.
//!
//! A node's *zone* is the peers it names (`--trust` publishers and `--serve-peer`s) and, on a
//! network with a pre-shared key, every peer (a connection that passed the key is a member).
//! With `serve-peers = "zone"` (the default) only the zone may connect at all: the network
//! refuses every other connection once the peer's id is known and never dials a peer outside
//! it (`network/gate.rs`), so an outsider learns nothing — no gossip, no DHT, no answers. With
//! `serve-peers = "any"` every peer may connect and gets public content, as on an open LAN.
//!
//! What a connected peer may ask ([`PeerZone::decide`], applied in `exchange/serve.rs`):
//! - content (`Have`, `Index`, `Chunk`) whose [`Provenance`] is public: any connected peer;
//! - content held only because of a *credentialed* namespace (an upstream with credentials in
//!   the config file): only the peers that namespace is shared with — the zone's named members
//!   and key members by default, or exactly the `share-with` list — never strangers;
//! - upstream delegation (`Fetch`), which spends this node's uplink and maybe its credentials:
//!   zone members only, and for a credentialed namespace only the peers it is shared with;
//! - the announcement book (`Announcements`): any connected peer, but the announcements of a
//!   credentialed namespace only go to the peers it is shared with
//!   ([`PeerZone::may_see_namespace`]); gossip cannot be aimed, so they are gossiped only when
//!   every peer that can connect may see them ([`PeerZone::gossips_namespace`]).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use libp2p::PeerId;
use shoal_protocol::RepoName;
use shoal_protocol::wire::Request;

/// Which peers a node serves (`--serve-peers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServePeers {
    /// Only the zone: named peers, and every peer of a pre-shared-key network.
    #[default]
    Zone,
    /// Every peer that reaches the node; strangers get public content only.
    Any,
}

/// Who may have the content of one credentialed namespace.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Share {
    /// The zone's named members and key members (never strangers).
    #[default]
    Zone,
    /// Only these peers (`share-with`), who must also be in the zone to connect.
    With(BTreeSet<PeerId>),
}

/// How a connected peer relates to this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerKind {
    /// Named by `--trust` or `--serve-peer`.
    Named,
    /// Connected through the pre-shared key.
    KeyMember,
    /// Anyone else; only served with `serve-peers = "any"`.
    Stranger,
}

/// Why this node holds a piece of content, as far as sharing it goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// Part of an image of a namespace without credentials here (or no namespace has any).
    Public,
    /// Part only of images of these credentialed namespaces.
    Credentialed(BTreeSet<String>),
    /// Held, or arriving, but not (yet) part of any stored image, while some namespace has
    /// credentials: zone members may have it, strangers may not.
    Unattributed,
}

impl Provenance {
    pub fn credentialed(namespace: &str) -> Provenance {
        Provenance::Credentialed(BTreeSet::from([namespace.to_owned()]))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny,
}

/// The node's zone and sharing rules.
#[derive(Debug, Clone, Default)]
pub struct PeerZone {
    mode: ServePeers,
    named: HashSet<PeerId>,
    key: bool,
    credentialed: BTreeMap<String, Share>,
}

impl PeerZone {
    /// `named`: the `--trust` and `--serve-peer` ids; `key`: a pre-shared key is set;
    /// `credentialed`: every namespace whose upstream has credentials, with its sharing rule.
    pub fn new(
        mode: ServePeers,
        named: impl IntoIterator<Item = PeerId>,
        key: bool,
        credentialed: BTreeMap<String, Share>,
    ) -> PeerZone {
        PeerZone {
            mode,
            named: named.into_iter().collect(),
            key,
            credentialed,
        }
    }

    pub fn mode(&self) -> ServePeers {
        self.mode
    }

    /// Whether no peer at all may connect: zone mode with nobody named and no key.
    pub fn is_closed(&self) -> bool {
        self.mode == ServePeers::Zone && self.named.is_empty() && !self.key
    }

    pub fn kind(&self, peer: &PeerId) -> PeerKind {
        if self.named.contains(peer) {
            PeerKind::Named
        } else if self.key {
            PeerKind::KeyMember
        } else {
            PeerKind::Stranger
        }
    }

    /// Whether a connection with `peer` may exist at all (either way), and whether to dial it.
    pub fn admits_connection(&self, peer: &PeerId) -> bool {
        self.mode == ServePeers::Any || self.kind(peer) != PeerKind::Stranger
    }

    /// Peers a `share-with` list names that cannot connect (outside the zone): never served.
    pub fn shares_outside_zone(&self) -> Vec<PeerId> {
        self.credentialed
            .values()
            .filter_map(|share| match share {
                Share::With(peers) => Some(peers),
                Share::Zone => None,
            })
            .flatten()
            .filter(|peer| !self.admits_connection(peer))
            .copied()
            .collect()
    }

    /// Whether any namespace has credentials (provenance matters only then).
    pub fn has_credentialed(&self) -> bool {
        !self.credentialed.is_empty()
    }

    pub fn is_credentialed(&self, namespace: &str) -> bool {
        self.credentialed.contains_key(namespace)
    }

    /// The provenance of content asked for under `namespace`.
    pub fn namespace_provenance(&self, namespace: &str) -> Provenance {
        if self.is_credentialed(namespace) {
            Provenance::credentialed(namespace)
        } else {
            Provenance::Public
        }
    }

    /// Whether `peer` may ask `request` about content of `provenance` (for `Fetch`, the
    /// requested repository's namespace counts too).
    pub fn decide(&self, peer: &PeerId, request: &Request, provenance: &Provenance) -> Decision {
        let kind = self.kind(peer);
        if !self.admits_connection(peer) {
            return Decision::Deny;
        }
        let allowed = match request {
            Request::Announcements { .. } => true,
            Request::Have { .. } | Request::Index { .. } | Request::Chunk { .. } => {
                self.may_have(peer, kind, provenance)
            }
            Request::Fetch { repository, .. } => match RepoName::from_qualified(repository) {
                Ok(repo) => {
                    kind != PeerKind::Stranger
                        && self.may_have(peer, kind, &self.namespace_provenance(repo.namespace()))
                        && self.may_have(peer, kind, provenance)
                }
                Err(_) => false,
            },
        };
        if allowed {
            Decision::Allow
        } else {
            Decision::Deny
        }
    }

    /// Whether announcements of images of `namespace` may go to `peer`.
    pub fn may_see_namespace(&self, peer: &PeerId, namespace: &str) -> bool {
        self.admits_connection(peer)
            && self.may_have(peer, self.kind(peer), &self.namespace_provenance(namespace))
    }

    /// Whether announcements of images of `namespace` may be gossiped: gossip reaches every
    /// connected peer, so only when every peer that can connect may see them.
    pub fn gossips_namespace(&self, namespace: &str) -> bool {
        match self.credentialed.get(namespace) {
            None => true,
            Some(Share::Zone) => self.mode == ServePeers::Zone,
            Some(Share::With(_)) => false,
        }
    }

    fn may_have(&self, peer: &PeerId, kind: PeerKind, provenance: &Provenance) -> bool {
        if !self.has_credentialed() {
            return true;
        }
        match provenance {
            Provenance::Public => true,
            Provenance::Unattributed => kind != PeerKind::Stranger,
            Provenance::Credentialed(namespaces) => {
                namespaces
                    .iter()
                    .any(|namespace| match self.credentialed.get(namespace) {
                        None => true,
                        Some(Share::Zone) => kind != PeerKind::Stranger,
                        Some(Share::With(peers)) => {
                            kind != PeerKind::Stranger && peers.contains(peer)
                        }
                    })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_protocol::Digest;

    const PRIVATE: &str = "registry.example";
    const LISTED: &str = "listed.example";

    struct Peers {
        trusted: PeerId,
        serve_peer: PeerId,
        listed: PeerId,
        other: PeerId,
    }

    fn peers() -> Peers {
        Peers {
            trusted: PeerId::random(),
            serve_peer: PeerId::random(),
            listed: PeerId::random(),
            other: PeerId::random(),
        }
    }

    fn zone(mode: ServePeers, key: bool, peers: &Peers) -> PeerZone {
        PeerZone::new(
            mode,
            [peers.trusted, peers.serve_peer, peers.listed],
            key,
            BTreeMap::from([
                (PRIVATE.to_owned(), Share::Zone),
                (
                    LISTED.to_owned(),
                    Share::With(BTreeSet::from([peers.listed])),
                ),
            ]),
        )
    }

    fn requests(namespace: &str) -> Vec<Request> {
        let blob = Digest::of(b"blob");
        vec![
            Request::Have { blob },
            Request::Index { blob },
            Request::Chunk { blob, chunk: 0 },
            Request::Announcements { after: None },
            Request::Fetch {
                blob,
                repository: format!("{namespace}/team/app"),
                manifest: false,
            },
        ]
    }

    /// What each kind of peer may ask, per request and provenance: the whole table.
    #[test]
    fn every_request_kind_for_every_peer_kind_and_provenance() {
        let p = peers();
        let public = Provenance::Public;
        let shared = Provenance::credentialed(PRIVATE);
        let not_shared = Provenance::credentialed(LISTED);
        // (zone, peer, provenance, namespace of Fetch, [Have, Index, Chunk, Announcements, Fetch])
        let zone_mode = zone(ServePeers::Zone, false, &p);
        let any_mode = zone(ServePeers::Any, false, &p);
        let key_mode = zone(ServePeers::Zone, true, &p);
        let cases: Vec<(&PeerZone, PeerId, &Provenance, &str, [bool; 5])> = vec![
            // A trusted publisher and a --serve-peer: everything but what is shared with others.
            (&zone_mode, p.trusted, &public, "docker.io", [true; 5]),
            (&zone_mode, p.trusted, &shared, PRIVATE, [true; 5]),
            (
                &zone_mode,
                p.trusted,
                &not_shared,
                LISTED,
                [false, false, false, true, false],
            ),
            (&zone_mode, p.serve_peer, &public, "docker.io", [true; 5]),
            (&zone_mode, p.serve_peer, &shared, PRIVATE, [true; 5]),
            (
                &zone_mode,
                p.serve_peer,
                &not_shared,
                LISTED,
                [false, false, false, true, false],
            ),
            // The peer a namespace is shared with gets it.
            (&zone_mode, p.listed, &not_shared, LISTED, [true; 5]),
            // A member through the pre-shared key, like a named peer.
            (&key_mode, p.other, &public, "docker.io", [true; 5]),
            (&key_mode, p.other, &shared, PRIVATE, [true; 5]),
            (
                &key_mode,
                p.other,
                &not_shared,
                LISTED,
                [false, false, false, true, false],
            ),
            // A stranger with serve-peers = "any": public content, no delegation.
            (
                &any_mode,
                p.other,
                &public,
                "docker.io",
                [true, true, true, true, false],
            ),
            (
                &any_mode,
                p.other,
                &shared,
                PRIVATE,
                [false, false, false, true, false],
            ),
            (
                &any_mode,
                p.other,
                &not_shared,
                LISTED,
                [false, false, false, true, false],
            ),
            // A stranger in the default mode: nothing (it cannot even connect).
            (&zone_mode, p.other, &public, "docker.io", [false; 5]),
            (&zone_mode, p.other, &shared, PRIVATE, [false; 5]),
            (&zone_mode, p.other, &not_shared, LISTED, [false; 5]),
        ];
        for (zone, peer, provenance, namespace, expected) in cases {
            for (request, allowed) in requests(namespace).iter().zip(expected) {
                let decision = zone.decide(&peer, request, provenance);
                let want = if allowed {
                    Decision::Allow
                } else {
                    Decision::Deny
                };
                assert_eq!(
                    decision,
                    want,
                    "{:?} peer, {request:?}, {provenance:?}",
                    zone.kind(&peer)
                );
            }
        }
    }

    #[test]
    fn fetch_for_a_credentialed_namespace_needs_its_share_even_for_public_content() {
        let p = peers();
        let zone = zone(ServePeers::Zone, false, &p);
        let fetch = &requests(LISTED)[4];
        assert_eq!(
            zone.decide(&p.trusted, fetch, &Provenance::Public),
            Decision::Deny
        );
        assert_eq!(
            zone.decide(&p.listed, fetch, &Provenance::Public),
            Decision::Allow
        );
        let bad = Request::Fetch {
            blob: Digest::of(b"x"),
            repository: "not a repository".into(),
            manifest: false,
        };
        assert_eq!(
            zone.decide(&p.trusted, &bad, &Provenance::Public),
            Decision::Deny
        );
    }

    #[test]
    fn unattributed_content_goes_to_members_only_and_is_public_without_credentials() {
        let p = peers();
        let any_mode = zone(ServePeers::Any, false, &p);
        let have = &requests("docker.io")[0];
        assert_eq!(
            any_mode.decide(&p.other, have, &Provenance::Unattributed),
            Decision::Deny
        );
        assert_eq!(
            any_mode.decide(&p.serve_peer, have, &Provenance::Unattributed),
            Decision::Allow
        );
        let open = PeerZone::new(ServePeers::Any, [], false, BTreeMap::new());
        assert_eq!(
            open.decide(&p.other, have, &Provenance::Unattributed),
            Decision::Allow
        );
    }

    #[test]
    fn connections_follow_the_mode_the_names_and_the_key() {
        let p = peers();
        assert!(zone(ServePeers::Zone, false, &p).admits_connection(&p.trusted));
        assert!(!zone(ServePeers::Zone, false, &p).admits_connection(&p.other));
        assert!(zone(ServePeers::Zone, true, &p).admits_connection(&p.other));
        assert!(zone(ServePeers::Any, false, &p).admits_connection(&p.other));
        assert_eq!(PeerZone::default().mode(), ServePeers::Zone);
        assert!(PeerZone::default().is_closed());
        assert!(!zone(ServePeers::Zone, false, &p).is_closed());
        let outside = PeerZone::new(
            ServePeers::Zone,
            [p.trusted],
            false,
            BTreeMap::from([(
                PRIVATE.to_owned(),
                Share::With(BTreeSet::from([p.trusted, p.other])),
            )]),
        );
        assert_eq!(outside.shares_outside_zone(), vec![p.other]);
    }

    #[test]
    fn credentialed_announcements_are_gossiped_only_where_every_peer_may_see_them() {
        let p = peers();
        let zone_mode = zone(ServePeers::Zone, false, &p);
        let any_mode = zone(ServePeers::Any, false, &p);
        assert!(zone_mode.gossips_namespace("docker.io"));
        assert!(zone_mode.gossips_namespace(PRIVATE));
        assert!(!zone_mode.gossips_namespace(LISTED));
        assert!(any_mode.gossips_namespace("docker.io"));
        assert!(!any_mode.gossips_namespace(PRIVATE));
        assert!(any_mode.may_see_namespace(&p.other, "docker.io"));
        assert!(!any_mode.may_see_namespace(&p.other, PRIVATE));
        assert!(any_mode.may_see_namespace(&p.trusted, PRIVATE));
        assert!(!any_mode.may_see_namespace(&p.trusted, LISTED));
        assert!(any_mode.may_see_namespace(&p.listed, LISTED));
    }
}
