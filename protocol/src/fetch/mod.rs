//! The sans-IO fetching side of one blob's exchange: whom to ask whether they have the blob,
//! whose have feed to watch, which answers count, and in which order chunks are picked; around
//! the [`Scheduler`], which picks the chunks.
//!
//! One [`Fetch`] runs per blob being fetched. The node's `exchange/fetch/transfer.rs` and the
//! simulator (`simulations/src/sim.rs`) both drive it with [`FetchEvent`]s stamped with the
//! current time and carry out the [`FetchAction`]s it returns, so the two run the same
//! exchange: every rule and constant of the fetching side's peer bookkeeping is here. It never
//! reads a clock or touches the network or disk.
//!
//! Data flow: `Connected`, and the `Candidates` of the DHT lookups the fetch asks for
//! (`LookUp`: the first once the connected peers prove unable to serve the blob, or
//! [`LOOKUP_EVERY`] after the start; then [`LOOKUP_EVERY`] apart, further while they name
//! nobody new; until it knows [`SOURCES_ENOUGH`] sources) → `AskHave` of each peer once →
//! `Have` answers: a peer with part of the blob joins the scheduler (`Joined`, so that the
//! driver tells it where the peer is) and is watched (`Watch`) while it is still fetching, up
//! to [`FETCHING_PEERS_MAX`] such peers besides site-mates (the best-ranked; one put out is
//! `Unwatch`ed); one without it is asked again [`PEER_REFRESH`] later (a fleet that starts
//! together shows the blob moments later) → `Provide` where the connected peers fall short →
//! `Pushed` updates stop the scheduler's polls of that peer until its watch ends → the
//! scheduler's `Request`s → `Chunk` answers: failures of requests the scheduler cancelled are
//! dropped, a chunk already had is a late duplicate, a verified new one is `Keep` (the driver
//! stores it and hands it to readers) → `Completed`, once.
//!
//! Before the driver has the blob's chunk index (the scheduler needs its chunk count) bitfields
//! are kept, and [`Fetch::begin`] joins them. Finding the index: the first peer heard with part
//! of the blob is asked for it (`RequestIndex`), one at a time; a peer whose index is invalid
//! is banned and the next asked. A peer that showed part of the blob but has no index is
//! downloading it from an upstream itself, and the blob is relayed from it (`Relay`). When no
//! peer has the blob and the transfer has an upstream ([`Fetch::with_upstream`]),
//! [`fallback`] decides who downloads it (`Delegate`, `Download`). A transfer that finds no
//! peer for [`LOCATE_TIMEOUT`], or receives no chunk for [`STALL_TIMEOUT`], says `GiveUp`.
//! Checking the index against the blob and a trusted root, the relay itself and the final
//! sha256 stay with the node's driver; the simulator knows the index from the start and has no
//! upstream, so it never meets these.
//!
//! Chunk order: front to back while only whole copies of the blob are around (a caller that
//! hashes the blob as it arrives then reads nothing back), random once a peer still fetching it
//! shows up, so that fetchers spread and trade ([`Fetch::in_order`]).

use std::fmt::Debug;
use std::hash::{BuildHasher, Hash};
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::bitmap::Bitmap;
use crate::scheduler::{Action, Event, Scheduler};
use crate::serving::BusyReason;

pub mod fallback;
#[cfg(test)]
mod tests;

pub use fallback::Upstream;
use fallback::{Decision, Fallback, Situation};

/// How often a driver lets the machine see time pass (timeouts, polls, re-asks): the node's
/// timer and the simulator's tick grid.
pub const TICK: Duration = Duration::from_millis(100);

/// How long after a connected peer answered that it lacks the blob it is asked again: in a
/// fleet that starts together, every peer begins fetching within moments and can serve what it
/// has at once.
pub const PEER_REFRESH: Duration = Duration::from_millis(500);

/// How long a transfer must have seen only peers holding the whole blob before it asks for
/// chunks front to back: two rounds of [`PEER_REFRESH`], time for the other fetchers of a fleet
/// that starts together to show up. A transfer whose every connected peer holds the whole blob
/// has no one to trade with and goes front to back at once: a 1 GiB pull from one peer lasts
/// about a second, and chunks in a random order left its sha256 to read most of the blob back
/// from the device after the last chunk (docs/benchmarks.md).
pub const IN_ORDER_AFTER: Duration = Duration::from_secs(1);

/// How long after a DHT lookup of the blob's providers ends the next one starts, while the
/// fetch knows fewer than [`SOURCES_ENOUGH`] peers with part of the blob. Each lookup that
/// names nobody new doubles the wait, up to [`LOOKUP_EVERY_MAX`]: in a small swarm the DHT
/// soon has nothing to add to the peers already asked.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(5);

/// The longest wait between two DHT lookups of a fetch that still wants sources.
pub const LOOKUP_EVERY_MAX: Duration = Duration::from_secs(80);

/// How many peers showing part of the blob a fetch must know to stop asking the DHT for more.
/// Every lookup of a blob asks the same few hosts nearest its key, so lookups that go on for
/// the whole transfer load those hosts with the fleet's size; and they cost: a lookup every
/// 5 s by each of 32 hosts fetching 7 blobs took a sixth of a 32-node fan-out's CPU
/// (docs/benchmarks.md). Connected peers are asked directly, without a lookup.
pub const SOURCES_ENOUGH: usize = 16;

/// How many peers still fetching the blob a fetch uses at once, site-mates aside: their
/// bitfields join the scheduler and their have feeds are watched. Each fetch uses the
/// best-ranked of them by a rank of its own ([`Fetch::rank`]), so every peer is used by about
/// as many others; the rest wait as spares, asked again best first as a place frees (one of
/// those used leaves, is banned or holds the whole blob). Peers holding the whole blob cost no
/// pushes and are always used. Without a bound every watch costs its peer a push per chunk it
/// gains and every peer in the scheduler is one more to ask and be refused by, so a node's
/// messages per byte grew with the swarm. Twelve: in the simulator a 32 × 4 fan-out sends 40 %
/// fewer pushes and 45 % fewer refusals for 1.11x T_min instead of 1.06x, and the scenarios
/// whose hosts know 20 neighbours move by 0.02x at most; in the node the 32 × 4 fan-out's CPU
/// per GB fell by a tenth (docs/benchmarks.md, "A bounded set of peers per transfer").
pub const FETCHING_PEERS_MAX: usize = 12;

/// A transfer that finds no peer with the blob for this long gives up.
pub const LOCATE_TIMEOUT: Duration = Duration::from_secs(10);

/// A transfer that receives no chunk for this long gives up.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(120);

/// What a peer said it holds of the blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerHolds {
    pub chunks: Bitmap,
    /// Whether it holds the blob whole (checked and stored), not only every chunk.
    pub complete: bool,
}

/// What a chunk request got, as the driver saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkReply {
    /// The chunk, and it matched the index.
    Verified,
    /// Bytes that did not match the index.
    Wrong,
    /// The peer's uplink was full, or it leaves this chunk to the fetchers it sent it to.
    Busy(BusyReason),
    /// `NotFound`, a transport error, or a peer that went away.
    Failed,
}

/// Why a peer's index was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexAnswer {
    /// Malformed, for another blob, or not the root a trusted publisher signed: the peer is
    /// banned.
    Invalid,
    /// The peer has no index: if it showed part of the blob, it is fetching it from an
    /// upstream, and the blob is relayed from it.
    Missing,
    /// The request failed.
    Failed,
}

/// Why a transfer gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// No peer with the blob for [`LOCATE_TIMEOUT`].
    NoPeer,
    /// No chunk for [`STALL_TIMEOUT`].
    Stalled,
}

/// Something that happened, reported to [`Fetch::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchEvent<P> {
    /// The peers connected now: those not asked yet are, and joined ones missing leave.
    Connected { peers: Vec<P> },
    /// Peers that may have the blob, the answer to `LookUp` (empty when the lookup failed):
    /// each not asked yet is.
    Candidates { peers: Vec<P> },
    /// A peer's answer to `Have`, or to a poll: what it holds, or `None` when it lacks the
    /// blob or the request failed.
    Have { peer: P, holds: Option<PeerHolds> },
    /// What a watched peer's have feed pushed; `None` (it lacks the blob) ends the watch, as
    /// does a push of the whole blob.
    Pushed { peer: P, holds: Option<PeerHolds> },
    /// A chunk request's answer.
    Chunk {
        peer: P,
        chunk: u32,
        reply: ChunkReply,
    },
    /// A peer's index could not be used (a usable one is [`Fetch::begin`]).
    Index { peer: P, answer: IndexAnswer },
    /// The peer asked to fetch the blob from the upstream answered: it does (`accepted`), or
    /// it cannot or will not.
    Delegation { peer: P, accepted: bool },
    /// A streaming reader is waiting on `chunk`.
    Focus { chunk: u32 },
    /// The driver banned `peer` for reasons of its own (a wrong index, a wrong description of
    /// the blob): it is forgotten and never asked again.
    Banned { peer: P },
    /// Time passed: timeouts, polls and re-asks fire. Send one at [`Fetch::next_wakeup`], or
    /// every [`TICK`].
    Tick,
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchAction<P> {
    /// Ask the DHT who provides the blob; report the answer as `Candidates`, an empty one if
    /// the lookup fails or there is no DHT.
    LookUp,
    /// Record this node in the DHT as a provider of the blob. At most once, and only where
    /// the connected peers fall short: with the first lookup once the index is known (at
    /// [`Fetch::begin`] when a lookup came before it), else on completion when fewer than
    /// [`SOURCES_ENOUGH`] peers showed the blob. The DHT keeps 20 providers per key and
    /// ignores the rest; a node among enough peers with the blob is found by them, and a
    /// record by each node of a fleet that starts together cost a 32-node fan-out a tenth of
    /// its CPU (docs/benchmarks.md, "Lookups only where the connected peers fall short").
    Provide,
    /// Ask `peer` whether it has the blob (`Request::Have`); report the answer as `Have`.
    AskHave { peer: P },
    /// The scheduler's poll of a peer that does not push: ask as for `AskHave`.
    PollHave { peer: P },
    /// Watch `peer`'s have feed and report its updates as `Pushed`; if the peer gives no
    /// feed, or the watch ends without a last update, call [`Fetch::watch_ended`].
    Watch { peer: P },
    /// Stop watching `peer`'s have feed: a better-ranked peer took its place (see
    /// [`FETCHING_PEERS_MAX`]). Its pushes still on the way are ignored.
    Unwatch { peer: P },
    /// `peer` joined the scheduler: tell it where the peer is (site, preference) through
    /// [`Fetch::scheduler_mut`].
    Joined { peer: P },
    /// Send `Request::Chunk` for `chunk` to `peer`.
    Request { peer: P, chunk: u32 },
    /// A verified chunk this transfer did not have yet: store it and hand it to readers. It
    /// counts as had from now on; the actions after this one may already ask for more.
    Keep { chunk: u32 },
    /// The peer sent bad data or a malformed bitfield: stop using it (disconnect it).
    Ban { peer: P },
    /// Every chunk is had: check the whole blob and commit it. Emitted once.
    Completed,
    /// Ask `peer` for the blob's chunk index; a usable one is [`Fetch::begin`], else report
    /// `Index`.
    RequestIndex { peer: P },
    /// Take the blob front to back from `peer`, which is downloading it from its upstream;
    /// this fetch is over.
    Relay { peer: P },
    /// Ask `peer` to fetch the blob from the upstream (`Request::Fetch`); report its answer
    /// as `Delegation`.
    Delegate { peer: P },
    /// Download the blob from the upstream here; this fetch is over.
    Download,
    /// Give up on the transfer. Emitted once; a driver that carries on (the simulator, as the
    /// node's prefetch would start the transfer again) gets the machine's actions as before.
    GiveUp(GiveUp),
}

/// The fetching side of one blob's exchange. See the module documentation.
#[derive(Debug)]
pub struct Fetch<P> {
    scheduler: Option<Scheduler<P>>,
    /// Ranks peers for this fetch alone ([`Fetch::rank`]).
    seed: u64,
    /// When the fetch started, for [`IN_ORDER_AFTER`].
    started: Duration,
    now: Duration,
    /// Peers connected as last told (`Connected`).
    connected: HashSet<P>,
    /// Peers asked `Have` whose answer is pending or showed the blob; each is asked once
    /// until an answer shows it lacks the blob.
    asked: HashSet<P>,
    /// Connected peers that lacked the blob, with when to ask them again.
    lacking: HashMap<P, Duration>,
    /// Bitfields of peers heard before [`Fetch::begin`].
    pending: HashMap<P, Bitmap>,
    /// Peers the scheduler knows.
    joined: HashSet<P>,
    /// Requests the scheduler cancelled: their failures are not news to it.
    cancelled: HashSet<(P, u32)>,
    banned: HashSet<P>,
    /// Peers whose have feed this fetch watches.
    watching: HashSet<P>,
    /// Watched peers whose feed has pushed: the scheduler does not poll them.
    feeding: HashSet<P>,
    /// Peers that answered holding the whole blob.
    whole: HashSet<P>,
    /// Whether a peer still fetching the blob has shown up: then chunks are never asked for
    /// in order.
    swarm_seen: bool,
    /// Peers that showed part of the blob.
    sources: HashSet<P>,
    /// Sources still fetching the blob that this fetch uses (joined, or heard before the
    /// scheduler began), site-mates aside: at most [`FETCHING_PEERS_MAX`].
    fetching: HashSet<P>,
    /// Sources still fetching the blob that are not used: heard while `fetching` was full of
    /// better-ranked peers, or put out by one.
    spares: Vec<P>,
    /// Spares asked again for a place that freed, until they answer.
    promoted: HashSet<P>,
    /// Peers on this node's site ([`Fetch::add_site_mate`]): used whatever the bound.
    site_mates: HashSet<P>,
    /// [`FETCHING_PEERS_MAX`], but for tests of the rule with few peers.
    fetching_max: usize,
    /// Peers asked `Have` that have not answered yet.
    awaiting: HashSet<P>,
    lookup_running: bool,
    /// Whether `Provide` has been emitted.
    provided: bool,
    /// When the next lookup is due, while fewer than [`SOURCES_ENOUGH`] sources are known;
    /// `None` before the first (see [`Fetch::lookup_due`]).
    next_lookup: Option<Duration>,
    /// The wait after the lookup that runs, from [`LOOKUP_EVERY`] to [`LOOKUP_EVERY_MAX`].
    lookup_every: Duration,
    /// The peer asked for the index, while one is.
    index_asked: Option<P>,
    /// Peers whose index could not be used.
    index_tried: HashSet<P>,
    /// When the last chunk was kept (or the fetch started).
    last_kept: Duration,
    fallback: Option<Fallback<P>>,
    /// A `Relay` or `Download` ended this fetch.
    over: bool,
    gave_up: bool,
}

impl<P: Clone + Eq + Ord + Hash + Debug> Fetch<P> {
    /// A fetch that starts at `now` and knows no peer yet; `seed` ranks the peers it may use
    /// ([`Fetch::rank`]), and should differ from node to node (the node draws it from its
    /// identity and the blob).
    pub fn new(now: Duration, seed: u64) -> Self {
        Fetch {
            scheduler: None,
            seed,
            started: now,
            now,
            connected: HashSet::new(),
            asked: HashSet::new(),
            lacking: HashMap::new(),
            pending: HashMap::new(),
            joined: HashSet::new(),
            cancelled: HashSet::new(),
            banned: HashSet::new(),
            watching: HashSet::new(),
            feeding: HashSet::new(),
            whole: HashSet::new(),
            swarm_seen: false,
            sources: HashSet::new(),
            fetching: HashSet::new(),
            spares: Vec::new(),
            promoted: HashSet::new(),
            site_mates: HashSet::new(),
            fetching_max: FETCHING_PEERS_MAX,
            awaiting: HashSet::new(),
            lookup_running: false,
            provided: false,
            next_lookup: None,
            lookup_every: LOOKUP_EVERY,
            index_asked: None,
            index_tried: HashSet::new(),
            last_kept: now,
            fallback: None,
            over: false,
            gave_up: false,
        }
    }

    /// A fetch that, when no peer has the blob, takes it from an upstream (see [`fallback`]).
    pub fn with_upstream(now: Duration, seed: u64, upstream: Upstream<P>) -> Self {
        Fetch {
            fallback: Some(Fallback::new(upstream)),
            ..Fetch::new(now, seed)
        }
    }

    /// The same fetch, using at most `max` peers still fetching the blob.
    #[cfg(test)]
    fn with_fetching_max(self, max: usize) -> Self {
        Fetch {
            fetching_max: max,
            ..self
        }
    }

    /// Starts picking chunks with `scheduler` (built by the driver from the index, with its
    /// seed, configuration, site and the chunks resumed from disk); the peers heard so far
    /// join it.
    pub fn begin(&mut self, scheduler: Scheduler<P>, now: Duration) -> Vec<FetchAction<P>> {
        self.now = self.now.max(now);
        self.scheduler = Some(scheduler);
        self.index_asked = None;
        self.last_kept = self.now;
        self.choose_order();
        let mut actions = Vec::new();
        let mut pending: Vec<(P, Bitmap)> = std::mem::take(&mut self.pending).into_iter().collect();
        pending.sort_by(|a, b| a.0.cmp(&b.0));
        for (peer, have) in pending {
            self.join(peer, have, &mut actions);
        }
        if self.lookup_running || self.next_lookup.is_some() {
            self.provide(&mut actions);
        }
        self.drive(Event::Tick, &mut actions);
        self.check_invariants();
        actions
    }

    /// Processes one event at `now` (a duration since any fixed epoch; an earlier time than
    /// one already seen counts as that one) and returns what to do, in order.
    pub fn handle(&mut self, event: FetchEvent<P>, now: Duration) -> Vec<FetchAction<P>> {
        self.now = self.now.max(now);
        let mut actions = Vec::new();
        if self.over {
            return actions;
        }
        match event {
            FetchEvent::Connected { peers } => self.connected(peers, &mut actions),
            FetchEvent::Candidates { peers } => {
                let mut named_new = false;
                for peer in peers {
                    named_new |= self.ask(peer, &mut actions);
                }
                if self.lookup_running {
                    self.lookup_running = false;
                    self.lookup_every = if named_new {
                        LOOKUP_EVERY
                    } else {
                        (self.lookup_every * 2).min(LOOKUP_EVERY_MAX)
                    };
                    self.next_lookup = Some(self.now + self.lookup_every);
                }
            }
            FetchEvent::Index { peer, answer } => self.index_unusable(peer, answer, &mut actions),
            FetchEvent::Delegation { peer, accepted } => {
                if let Some(fallback) = &mut self.fallback {
                    fallback.answered(peer.clone(), accepted, self.now);
                }
                if accepted {
                    self.asked.remove(&peer);
                    self.ask(peer, &mut actions);
                }
            }
            FetchEvent::Have { peer, holds } => self.heard(peer, holds, false, &mut actions),
            FetchEvent::Pushed { peer, holds } => self.heard(peer, holds, true, &mut actions),
            FetchEvent::Chunk { peer, chunk, reply } => {
                self.chunk(peer, chunk, reply, &mut actions);
            }
            FetchEvent::Focus { chunk } => self.drive(Event::Focus { chunk }, &mut actions),
            FetchEvent::Banned { peer } => {
                self.banned.insert(peer.clone());
                self.forget(&peer, &mut actions);
            }
            FetchEvent::Tick => {
                self.ask_lacking_again(&mut actions);
                self.choose_order();
                self.drive(Event::Tick, &mut actions);
                self.check_timeouts(&mut actions);
            }
        }
        self.promote_spares(&mut actions);
        // After every event, not only on ticks: a client may be waiting on this decision.
        self.decide_fallback(&mut actions);
        self.look_up_when_due(&mut actions);
        self.check_invariants();
        actions
    }

    /// Whether the fetch gives up, found nobody, or stalled.
    fn check_timeouts(&mut self, actions: &mut Vec<FetchAction<P>>) {
        if self.gave_up {
            return;
        }
        let reason = if self.scheduler.is_none() {
            self.locate_deadline()
                .filter(|&deadline| self.now > deadline)
                .map(|_| GiveUp::NoPeer)
        } else {
            (self.now > self.last_kept + STALL_TIMEOUT).then_some(GiveUp::Stalled)
        };
        if let Some(reason) = reason {
            self.gave_up = true;
            actions.push(FetchAction::GiveUp(reason));
        }
    }

    /// When the fetch gives up finding anybody with the blob: while it has no scheduler, no
    /// source and no upstream download it waits on. Past due is still due: a wakeup for it
    /// must not vanish because another event moved the clock past it first (a lone fetch
    /// whose tick was overtaken by a peer refresh at 10 s waited for ever).
    fn locate_deadline(&self) -> Option<Duration> {
        let waiting_on_upstream = self.fallback.as_ref().is_some_and(Fallback::waiting);
        let alone = self.sources.is_empty() && !waiting_on_upstream;
        (self.scheduler.is_none() && !self.gave_up && alone)
            .then_some(self.started + LOCATE_TIMEOUT)
    }

    /// Starts a DHT lookup if one is due ([`Fetch::lookup_due`]).
    fn look_up_when_due(&mut self, actions: &mut Vec<FetchAction<P>>) {
        if !self.over && self.lookup_due().is_some_and(|due| due <= self.now) {
            self.lookup_running = true;
            actions.push(FetchAction::LookUp);
            if self.scheduler.is_some() {
                self.provide(actions);
            }
        }
    }

    /// Emits `Provide` unless it was emitted before (see [`FetchAction::Provide`]).
    fn provide(&mut self, actions: &mut Vec<FetchAction<P>>) {
        if !self.provided {
            self.provided = true;
            actions.push(FetchAction::Provide);
        }
    }

    /// When the next DHT lookup starts, while no lookup runs and fewer than [`SOURCES_ENOUGH`]
    /// sources are known: [`LOOKUP_EVERY`] (or longer, see there) after the last one ended.
    /// The first goes at once where the connected peers cannot name a source (none is
    /// connected, or each answered without any of the blob), else [`LOOKUP_EVERY`] after the
    /// start: in a fleet that starts together the connected peers show the blob within
    /// moments, and a lookup at the start by every node and blob, with each node's provider
    /// record, made a 32-node fan-out's first seconds cost 15 times the CPU per byte of its
    /// middle (docs/benchmarks.md, "Lookups only where the connected peers fall short"). Past
    /// due is still due, as for [`Fetch::locate_deadline`].
    fn lookup_due(&self) -> Option<Duration> {
        if self.lookup_running || self.sources.len() >= SOURCES_ENOUGH {
            return None;
        }
        Some(match self.next_lookup {
            Some(due) => due,
            None if self.sources.is_empty() && self.awaiting.is_empty() => self.now,
            None => self.started + LOOKUP_EVERY,
        })
    }

    /// Whether the blob should come from the upstream now, and through whom.
    fn decide_fallback(&mut self, actions: &mut Vec<FetchAction<P>>) {
        if self.scheduler.is_some() || self.over {
            return;
        }
        let lookup_now = self.lookup_due().is_some_and(|due| due <= self.now);
        let Some(fallback) = &mut self.fallback else {
            return;
        };
        let situation = Situation {
            now: self.now,
            started: self.started,
            sources: !self.sources.is_empty(),
            settled: self.awaiting.is_empty()
                && (self.connected.is_empty() || !self.lookup_running && !lookup_now),
            connected: &self.connected,
        };
        match fallback.decide(&situation) {
            Some(Decision::Delegate(peer)) => actions.push(FetchAction::Delegate { peer }),
            Some(Decision::Download) => {
                self.over = true;
                actions.push(FetchAction::Download);
            }
            None => {}
        }
    }

    /// A peer's index could not be used: an invalid one bans it; a missing one from a peer
    /// with part of the blob means it is downloading it from an upstream; else the next
    /// source is asked.
    fn index_unusable(&mut self, peer: P, answer: IndexAnswer, actions: &mut Vec<FetchAction<P>>) {
        if self.index_asked.as_ref() == Some(&peer) {
            self.index_asked = None;
        }
        self.index_tried.insert(peer.clone());
        match answer {
            IndexAnswer::Invalid => {
                self.banned.insert(peer.clone());
                self.forget(&peer, actions);
                actions.push(FetchAction::Ban { peer });
            }
            IndexAnswer::Missing if self.sources.contains(&peer) && self.scheduler.is_none() => {
                self.over = true;
                actions.push(FetchAction::Relay { peer });
                return;
            }
            IndexAnswer::Missing | IndexAnswer::Failed => {}
        }
        self.request_index(None, actions);
    }

    /// Asks for the index, one peer at a time, until the scheduler runs: `heard` (a peer that
    /// just showed part of the blob) first, else the first source not tried.
    fn request_index(&mut self, heard: Option<&P>, actions: &mut Vec<FetchAction<P>>) {
        if self.scheduler.is_some() || self.index_asked.is_some() || self.over {
            return;
        }
        let untried = |peer: &&P| !self.index_tried.contains(*peer);
        let next = match heard.filter(untried) {
            Some(peer) => Some(peer.clone()),
            None => self.sources.iter().filter(untried).min().cloned(),
        };
        if let Some(peer) = next {
            self.index_asked = Some(peer.clone());
            actions.push(FetchAction::RequestIndex { peer });
        }
    }

    /// A watch ended without a last update (the feed broke, or the peer gives none): the peer
    /// is polled again from now while it has part of the blob.
    pub fn watch_ended(&mut self, peer: &P) {
        self.watching.remove(peer);
        if self.feeding.remove(peer)
            && let Some(scheduler) = &mut self.scheduler
        {
            scheduler.set_pushes(peer, false);
        }
        self.check_invariants();
    }

    /// The earliest time at which a `Tick` would do something, or `None` if only a new event
    /// can change anything.
    pub fn next_wakeup(&self) -> Option<Duration> {
        if self.over {
            return None;
        }
        let scheduler = self.scheduler.as_ref().and_then(Scheduler::next_wakeup);
        let ask_again = self.lacking.values().min().copied();
        let later = |at: Duration| (self.now < at).then_some(at);
        let order = later(self.started + IN_ORDER_AFTER).filter(|_| !self.swarm_seen);
        let give_up = match (&self.scheduler, self.gave_up) {
            (_, true) => None,
            (None, false) => self.locate_deadline(),
            (Some(_), false) => Some(self.last_kept + STALL_TIMEOUT),
        };
        let fallback = self.fallback.as_ref().filter(|_| self.scheduler.is_none());
        let upstream = fallback.and_then(|fallback| {
            fallback
                .deadline()
                .or_else(|| later(self.started + fallback::UPSTREAM_AFTER))
        });
        [
            scheduler,
            ask_again,
            order,
            give_up,
            upstream,
            self.lookup_due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// When a driver sends its next `Tick`: [`Fetch::next_wakeup`] rounded up to the [`TICK`]
    /// grid that starts with the fetch (a whole tick after the start at the earliest). Both
    /// drivers tick on this grid, so their clocks agree on what is due; a time already
    /// passed is due at once.
    pub fn next_tick(&self) -> Option<Duration> {
        let wakeup = self.next_wakeup()?;
        let since = wakeup.saturating_sub(self.started);
        let ticks = since.as_nanos().div_ceil(TICK.as_nanos()).max(1);
        let ticks = u32::try_from(ticks).unwrap_or(u32::MAX);
        Some(self.started.saturating_add(TICK.saturating_mul(ticks)))
    }

    /// How many peers have shown part of the blob.
    pub fn sources(&self) -> usize {
        self.sources.len()
    }

    /// The scheduler, once [`Fetch::begin`] gave it.
    pub fn scheduler(&self) -> Option<&Scheduler<P>> {
        self.scheduler.as_ref()
    }

    /// The scheduler, for the driver's placement of peers (sites, preferences).
    pub fn scheduler_mut(&mut self) -> Option<&mut Scheduler<P>> {
        self.scheduler.as_mut()
    }

    pub fn is_complete(&self) -> bool {
        self.scheduler.as_ref().is_some_and(Scheduler::is_complete)
    }

    /// Whether this fetch watches `peer`'s have feed.
    pub fn is_watching(&self, peer: &P) -> bool {
        self.watching.contains(peer)
    }

    /// The peers whose have feeds this fetch watches.
    pub fn watching(&self) -> impl Iterator<Item = &P> {
        self.watching.iter()
    }

    /// Whether chunks are asked for front to back (see the module documentation): never once
    /// a peer still fetching the blob has shown up; at once when every connected peer holds
    /// the whole blob; else after [`IN_ORDER_AFTER`].
    pub fn in_order(&self) -> bool {
        if self.swarm_seen {
            return false;
        }
        let only_whole = !self.connected.is_empty() && self.connected.is_subset(&self.whole);
        only_whole || self.now >= self.started + IN_ORDER_AFTER
    }

    fn choose_order(&mut self) {
        let in_order = self.in_order();
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.set_in_order(in_order);
        }
    }

    /// Asks `peer` whether it has the blob, unless it is banned or was asked already and did
    /// not answer that it lacks it; whether it was asked.
    fn ask(&mut self, peer: P, actions: &mut Vec<FetchAction<P>>) -> bool {
        if self.banned.contains(&peer) || !self.asked.insert(peer.clone()) {
            return false;
        }
        self.lacking.remove(&peer);
        self.awaiting.insert(peer.clone());
        actions.push(FetchAction::AskHave { peer });
        true
    }

    fn connected(&mut self, peers: Vec<P>, actions: &mut Vec<FetchAction<P>>) {
        self.connected = peers.iter().cloned().collect();
        let mut gone: Vec<P> = self
            .joined
            .iter()
            .chain(self.pending.keys())
            .chain(self.lacking.keys())
            .chain(self.sources.iter())
            .chain(self.awaiting.iter())
            .filter(|peer| !self.connected.contains(peer))
            .cloned()
            .collect();
        gone.sort();
        gone.dedup();
        for peer in gone {
            self.forget(&peer, actions);
        }
        for peer in peers {
            self.ask(peer, actions);
        }
        self.choose_order();
    }

    /// A peer's rank in this fetch: random, fixed for the fetch and different on every node.
    /// The fetch uses the best-ranked peers still fetching ([`FETCHING_PEERS_MAX`]). Chosen
    /// by when they answered, or by their ids, every node would use the same few.
    fn rank(&self, peer: &P) -> u64 {
        foldhash::fast::FixedState::with_seed(self.seed).hash_one(peer)
    }

    /// Drops everything known of `peer`; the scheduler reassigns its work.
    fn forget(&mut self, peer: &P, actions: &mut Vec<FetchAction<P>>) {
        if self.drop_peer(peer) {
            self.drive(Event::PeerLeft { peer: peer.clone() }, actions);
        }
    }

    /// Removes `peer` from every set of this machine; whether it had joined the scheduler.
    fn drop_peer(&mut self, peer: &P) -> bool {
        self.asked.remove(peer);
        self.lacking.remove(peer);
        self.pending.remove(peer);
        self.watching.remove(peer);
        self.feeding.remove(peer);
        self.whole.remove(peer);
        self.sources.remove(peer);
        self.fetching.remove(peer);
        self.spares.retain(|spare| spare != peer);
        self.promoted.remove(peer);
        self.awaiting.remove(peer);
        self.cancelled.retain(|(p, _)| p != peer);
        self.joined.remove(peer)
    }

    fn ask_lacking_again(&mut self, actions: &mut Vec<FetchAction<P>>) {
        let now = self.now;
        let mut due: Vec<P> = self
            .lacking
            .iter()
            .filter(|&(_, &at)| at <= now)
            .map(|(peer, _)| peer.clone())
            .collect();
        due.sort();
        for peer in due {
            self.lacking.remove(&peer);
            self.ask(peer, actions);
        }
    }

    /// A peer's bitfield, answering `Have` or pushed on its feed: a peer with (part of) the
    /// blob becomes a source, and one still fetching it is watched from then on.
    fn heard(
        &mut self,
        peer: P,
        holds: Option<PeerHolds>,
        pushed: bool,
        actions: &mut Vec<FetchAction<P>>,
    ) {
        if !pushed {
            self.awaiting.remove(&peer);
            self.promoted.remove(&peer);
        }
        if self.banned.contains(&peer) {
            return;
        }
        let Some(PeerHolds { chunks, complete }) = holds else {
            if pushed {
                self.watch_ended(&peer);
            }
            self.asked.remove(&peer);
            self.pending.remove(&peer);
            if !self.joined.contains(&peer) {
                self.fetching.remove(&peer);
            }
            if self.connected.contains(&peer) && !self.joined.contains(&peer) {
                self.lacking.insert(peer, self.now + PEER_REFRESH);
            }
            return;
        };
        self.asked.insert(peer.clone());
        self.lacking.remove(&peer);
        self.sources.insert(peer.clone());
        if let Some(fallback) = &mut self.fallback {
            fallback.progress(&peer, chunks.count_ones(), self.now);
        }
        if pushed && !self.joined.contains(&peer) && !self.pending.contains_key(&peer) {
            // From a peer put out of use: its watch is ending.
            return;
        }
        if !complete && !self.admit_fetching(&peer, actions) {
            self.swarm_seen = true;
            self.choose_order();
            if !self.spares.contains(&peer) {
                self.spares.push(peer);
            }
            return;
        }
        if complete {
            self.fetching.remove(&peer);
            self.whole.insert(peer.clone());
            if pushed {
                self.watch_ended(&peer);
            }
        } else {
            self.swarm_seen = true;
            if pushed {
                // A push that arrives after its watch ended is news, but starts nothing.
                if self.watching.contains(&peer) {
                    self.feeding.insert(peer.clone());
                }
            } else if self.watching.insert(peer.clone()) {
                actions.push(FetchAction::Watch { peer: peer.clone() });
            }
        }
        self.choose_order();
        if self.scheduler.is_some() {
            self.join(peer, chunks, actions);
        } else {
            self.pending.insert(peer.clone(), chunks);
            self.request_index(Some(&peer), actions);
        }
    }

    /// Whether `peer`, still fetching the blob, is used: it is already, it is a site-mate,
    /// [`FETCHING_PEERS_MAX`] are not reached, or it ranks before the last of those used, who
    /// then becomes a spare. So each fetch settles on the best-ranked of the peers still
    /// fetching, whichever answered first, and every peer is used by about as many others.
    fn admit_fetching(&mut self, peer: &P, actions: &mut Vec<FetchAction<P>>) -> bool {
        if self.site_mates.contains(peer)
            || self.joined.contains(peer)
            || self.pending.contains_key(peer)
        {
            return true;
        }
        if self.fetching.len() >= self.fetching_max {
            let last = self
                .fetching
                .iter()
                .max_by_key(|used| self.rank(used))
                .cloned();
            match last {
                Some(last) if self.rank(peer) < self.rank(&last) => self.put_out(&last, actions),
                _ => return false,
            }
        }
        self.spares.retain(|spare| spare != peer);
        self.fetching.insert(peer.clone());
        true
    }

    /// Stops using `peer`, still fetching the blob: it leaves the scheduler (which reassigns
    /// its requests), is no longer watched, and becomes a spare.
    fn put_out(&mut self, peer: &P, actions: &mut Vec<FetchAction<P>>) {
        self.fetching.remove(peer);
        self.pending.remove(peer);
        self.feeding.remove(peer);
        if self.watching.remove(peer) {
            actions.push(FetchAction::Unwatch { peer: peer.clone() });
        }
        self.cancelled.retain(|(p, _)| p != peer);
        if self.joined.remove(peer) {
            self.drive(Event::PeerLeft { peer: peer.clone() }, actions);
        }
        self.spares.push(peer.clone());
    }

    /// Asks the best-ranked spares again while places are free: their bitfields are stale,
    /// and their answers take the places.
    fn promote_spares(&mut self, actions: &mut Vec<FetchAction<P>>) {
        while self.fetching.len() + self.promoted.len() < self.fetching_max {
            let Some(best) = (0..self.spares.len()).min_by_key(|&i| self.rank(&self.spares[i]))
            else {
                return;
            };
            let peer = self.spares.swap_remove(best);
            self.asked.remove(&peer);
            if self.ask(peer.clone(), actions) {
                self.promoted.insert(peer);
            }
        }
    }

    /// `peer` is on this node's site: it is used whatever [`FETCHING_PEERS_MAX`] says (one
    /// copy per site counts on every site-mate's bitfield, and a site-mate is the nearest
    /// source). A spare is asked again at the next `Tick`.
    pub fn add_site_mate(&mut self, peer: P) {
        if !self.site_mates.insert(peer.clone()) {
            return;
        }
        self.fetching.remove(&peer);
        if let Some(at) = self.spares.iter().position(|spare| *spare == peer) {
            self.spares.swap_remove(at);
            self.asked.remove(&peer);
            self.lacking.insert(peer, self.now);
        }
        self.check_invariants();
    }

    /// Tells the scheduler about a peer's bitfield: as a new peer, or as news of one it knows.
    fn join(&mut self, peer: P, have: Bitmap, actions: &mut Vec<FetchAction<P>>) {
        let pushes = self.feeding.contains(&peer);
        if self.joined.insert(peer.clone()) {
            actions.push(FetchAction::Joined { peer: peer.clone() });
            self.drive(
                Event::PeerJoined {
                    peer: peer.clone(),
                    have,
                },
                actions,
            );
        } else {
            self.drive(
                Event::PeerHave {
                    peer: peer.clone(),
                    have,
                },
                actions,
            );
        }
        if pushes
            && self.joined.contains(&peer)
            && let Some(scheduler) = &mut self.scheduler
        {
            scheduler.set_pushes(&peer, true);
        }
    }

    fn chunk(&mut self, peer: P, chunk: u32, reply: ChunkReply, actions: &mut Vec<FetchAction<P>>) {
        if self.banned.contains(&peer) {
            return;
        }
        let Some(scheduler) = &self.scheduler else {
            return;
        };
        let was_cancelled = self.cancelled.remove(&(peer.clone(), chunk));
        let valid = match reply {
            ChunkReply::Verified => true,
            ChunkReply::Wrong => false,
            _ if was_cancelled => return,
            ChunkReply::Busy(reason) => {
                return self.drive(
                    Event::PeerBusy {
                        peer,
                        chunk,
                        reason,
                    },
                    actions,
                );
            }
            ChunkReply::Failed => return self.drive(Event::RequestFailed { peer, chunk }, actions),
        };
        // Had already: a late duplicate.
        if !scheduler.needs(chunk) {
            return;
        }
        if valid {
            self.last_kept = self.now;
            actions.push(FetchAction::Keep { chunk });
        }
        self.drive(Event::ChunkArrived { peer, chunk, valid }, actions);
    }

    /// Hands an event to the scheduler and turns what it decides into actions.
    fn drive(&mut self, event: Event<P>, actions: &mut Vec<FetchAction<P>>) {
        let Some(scheduler) = &mut self.scheduler else {
            return;
        };
        for action in scheduler.handle(event, self.now) {
            match action {
                Action::Request { peer, chunk } => {
                    actions.push(FetchAction::Request { peer, chunk })
                }
                Action::PollHave { peer } => {
                    self.awaiting.insert(peer.clone());
                    actions.push(FetchAction::PollHave { peer });
                }
                // A late duplicate is ignored on arrival: the chunk is had by then.
                Action::Cancel { peer, chunk } => {
                    self.cancelled.insert((peer, chunk));
                }
                // The scheduler has forgotten the peer already.
                Action::Ban { peer } => {
                    self.banned.insert(peer.clone());
                    self.drop_peer(&peer);
                    actions.push(FetchAction::Ban { peer });
                }
                Action::Completed => {
                    if self.sources.len() < SOURCES_ENOUGH {
                        self.provide(actions);
                    }
                    actions.push(FetchAction::Completed);
                }
            }
        }
    }

    /// Checks the machine's invariants; tests call it after every event.
    #[cfg(test)]
    fn check_invariants(&self) {
        assert!(
            self.feeding.is_subset(&self.watching),
            "only watched peers push"
        );
        assert!(self.joined.is_disjoint(&self.banned), "a banned peer left");
        assert!(
            self.sources.is_disjoint(&self.banned),
            "a banned peer is no source"
        );
        assert!(
            self.joined.is_subset(&self.sources),
            "joined peers showed the blob"
        );
        assert!(
            self.watching.is_disjoint(&self.banned),
            "a banned peer is not watched"
        );
        assert!(
            self.lacking
                .keys()
                .all(|peer| !self.joined.contains(peer) && !self.asked.contains(peer)),
            "a lacking peer is neither joined nor awaiting an answer"
        );
        assert!(
            self.fetching.len() <= self.fetching_max,
            "at most so many peers still fetching are used"
        );
        for peer in &self.fetching {
            assert!(
                self.joined.contains(peer) || self.pending.contains_key(peer),
                "a peer counted as used is used"
            );
            assert!(
                !self.whole.contains(peer) && !self.site_mates.contains(peer),
                "neither whole peers nor site-mates count"
            );
        }
        for peer in &self.spares {
            assert!(
                !self.joined.contains(peer) && !self.pending.contains_key(peer),
                "a spare is not used"
            );
            assert!(!self.watching.contains(peer), "a spare is not watched");
            assert!(self.sources.contains(peer), "a spare showed the blob");
        }
        assert!(
            self.promoted.is_subset(&self.awaiting),
            "a promoted spare's answer is awaited"
        );
        match &self.scheduler {
            Some(scheduler) => {
                assert!(
                    self.pending.is_empty(),
                    "bitfields join once the scheduler runs"
                );
                for (peer, _) in scheduler.peers() {
                    assert!(
                        self.joined.contains(peer),
                        "the scheduler knows only joined peers"
                    );
                }
                for peer in &self.joined {
                    assert!(
                        scheduler.peers().any(|(p, _)| p == peer),
                        "joined peers are the scheduler's"
                    );
                }
            }
            None => assert!(self.joined.is_empty(), "nobody joins before the scheduler"),
        }
    }

    #[cfg(not(test))]
    fn check_invariants(&self) {}
}
