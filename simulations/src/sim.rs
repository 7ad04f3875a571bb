//! The discrete-event loop: one `shoal_protocol::Scheduler` per host, driven exactly as the
//! node's `exchange/fetch/transfer.rs` drives it, over the links of [`crate::link`].
//!
//! What the loop plays, per host, mirroring the node:
//! - on start, a `Have` request to every neighbour; an answer with a bitfield becomes
//!   `PeerJoined` (later ones `PeerHave`); a peer that has not started yet is asked again
//!   after 500 ms (the node's `PEER_REFRESH`);
//! - `Request` → the request travels one latency; the sender answers `NotFound` if it lacks
//!   the chunk, else what the node's serving policy says ([`shoal_protocol::Serving`], the
//!   very machine `exchange/serve.rs` asks, fed the sender's uplink backlog and the virtual
//!   clock): `Busy` past the egress bound or under super-seeding, else the chunk, over its
//!   uplink, the site links crossed and the receiver's downlink; a hostile sender sends garbage
//!   the same way;
//! - on a response, as `Run::on_chunk`: failures of cancelled requests are dropped, `Busy`
//!   → `PeerBusy`, other failures → `RequestFailed`, a chunk already had is ignored, else it
//!   is verified (honest senders' chunks pass, hostile ones' fail) → `ChunkArrived`;
//! - `Cancel` only marks the request (the node cannot abort a request-response exchange: the
//!   bytes still cross the links), `PollHave` sends a `Have`, `Ban` is counted;
//! - `Tick` on the node's 100 ms grid when `next_wakeup` asks for one;
//! - churn: a host that leaves or crashes answers nothing (requests to it fail after one
//!   latency, and its chunks in flight fail on arrival); a restarted host resumes from the
//!   chunks it had verified, with a fresh scheduler.
//!
//! Not modelled: index exchange (the chunk index is known at start), DHT lookups (neighbours
//! are fixed by [`crate::topology`]), the final sha256 check, disk speed, and packet loss.

use std::collections::HashSet;
use std::time::Duration;

use shoal_protocol::{
    Action, Answer, Bitmap, ChunkRequest, Digest, Event, Holding, Scheduler, SchedulerConfig,
    Serving,
};

use crate::link::{Link, Micros, micros, site_links};
use crate::queue::EventQueue;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::topology::{ORIGIN, Role, Topology};

/// The node's `TICK`: it sees time pass on this grid.
const TICK: Micros = 100_000;
/// The node's `PEER_REFRESH`: peers without the blob are asked again this often.
const PEER_REFRESH: Micros = 500_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Data,
    Bad,
    Busy,
    NotFound,
    Failed,
}

#[derive(Debug)]
enum Ev {
    Start(u32),
    Tick(u32),
    HaveAsk {
        from: u32,
        to: u32,
    },
    HaveAnswer {
        to: u32,
        from: u32,
        epoch: u32,
        have: Option<Box<Bitmap>>,
    },
    ChunkReply {
        to: u32,
        from: u32,
        chunk: u32,
        epoch: u32,
        sender_epoch: u32,
        reply: Reply,
    },
    Leave(u32),
    Crash(u32),
    Restart(u32),
}

#[derive(Debug)]
struct NodeState {
    role: Role,
    site: Option<u32>,
    up: Link,
    down: Link,
    /// Verified chunks: what the node has written (and would persist).
    have: Bitmap,
    scheduler: Option<Scheduler<u32>>,
    online: bool,
    left: bool,
    /// Has begun its transfer (so it answers `Have`).
    started: bool,
    /// Bumped on crash and leave: answers addressed to an earlier life are dropped.
    epoch: u32,
    /// When this life's transfer started (the origin of its tick grid).
    life_start: Micros,
    first_start: Option<Micros>,
    done_at: Option<Micros>,
    tick_at: Option<Micros>,
    joined: HashSet<u32>,
    cancelled: HashSet<(u32, u32)>,
    /// Peers this host banned: the node disconnects them, so their later answers fail.
    banned: HashSet<u32>,
    /// What it answers the chunk requests it gets: the node's own serving policy.
    serving: Serving<u32>,
}

/// Counts over the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counters {
    pub events: u64,
    pub chunk_requests: u64,
    pub chunks_delivered: u64,
    pub duplicate_chunks: u64,
    pub busy_replies: u64,
    pub failed_replies: u64,
    pub bad_chunks_received: u64,
    pub bad_chunks_accepted: u64,
    pub bans: u64,
    pub have_polls: u64,
}

/// What a run produced, before any statistics.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOutcome {
    /// Per host that did not leave: its completion time since it first started, if any.
    pub completion_s: Vec<Option<f64>>,
    pub hosts_left: u32,
    pub origin_bytes: u64,
    pub site_in_bytes: Vec<u64>,
    pub site_out_bytes: Vec<u64>,
    pub counters: Counters,
    pub end_s: f64,
}

pub struct Simulation<'a> {
    scenario: &'a Scenario,
    topology: &'a Topology,
    config: SchedulerConfig,
    chunk_count: u32,
    nodes: Vec<NodeState>,
    site_up: Vec<Link>,
    site_down: Vec<Link>,
    queue: EventQueue<Ev>,
    now: Micros,
    local_latency: Micros,
    remote_latency: Micros,
    hosts_pending: usize,
    counters: Counters,
    /// The simulated blob's digest, as the serving policy keys its ledger by blob.
    blob: Digest,
}

impl std::fmt::Debug for Simulation<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulation")
            .field("scenario", &self.scenario.name)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

/// The node's scheduler configuration with the scenario's overrides applied.
pub fn scheduler_config(scenario: &Scenario) -> SchedulerConfig {
    let mut config = SchedulerConfig::default();
    let o = &scenario.scheduler;
    if let Some(v) = o.requests_per_peer_max {
        config.requests_per_peer_max = v;
    }
    if let Some(v) = o.request_timeout_s {
        config.request_timeout = Duration::from_secs_f64(v);
    }
    if let Some(v) = o.have_poll_interval_ms {
        config.have_poll_interval = Duration::from_millis(v);
    }
    if let Some(v) = o.endgame_duplicates_max {
        config.endgame_duplicates_max = v;
    }
    config
}

impl<'a> Simulation<'a> {
    pub fn new(scenario: &'a Scenario, topology: &'a Topology) -> Self {
        let chunk_count = scenario.chunk_count();
        let nodes = topology
            .nodes
            .iter()
            .map(|spec| {
                let seeded = spec.role != Role::Host;
                NodeState {
                    role: spec.role,
                    site: spec.site,
                    up: Link::new(spec.up_mbps),
                    down: Link::new(spec.down_mbps),
                    have: if seeded {
                        Bitmap::full(chunk_count)
                    } else {
                        Bitmap::new(chunk_count)
                    },
                    scheduler: None,
                    online: seeded,
                    left: false,
                    started: seeded,
                    epoch: 0,
                    life_start: 0,
                    first_start: None,
                    done_at: seeded.then_some(0),
                    tick_at: None,
                    joined: HashSet::new(),
                    cancelled: HashSet::new(),
                    banned: HashSet::new(),
                    serving: Serving::default(),
                }
            })
            .collect();
        let (site_up, site_down) = site_links(&topology.sites);
        let mut simulation = Simulation {
            scenario,
            topology,
            config: scheduler_config(scenario),
            chunk_count,
            nodes,
            site_up,
            site_down,
            queue: EventQueue::default(),
            now: 0,
            local_latency: micros(scenario.latency.local_ms / 1e3),
            remote_latency: micros(scenario.latency.remote_ms / 1e3),
            hosts_pending: 0,
            counters: Counters::default(),
            blob: Digest::of(scenario.name.as_bytes()),
        };
        for (id, spec) in topology.hosts() {
            simulation.hosts_pending += 1;
            simulation.push(micros(spec.start_s), Ev::Start(id));
            if let Some(at) = spec.leave_s {
                simulation.push(micros(at), Ev::Leave(id));
            }
            if let Some((at, _)) = spec.crash {
                simulation.push(micros(at), Ev::Crash(id));
            }
        }
        simulation
    }

    fn push(&mut self, at: Micros, ev: Ev) {
        self.queue.push(at, ev);
    }

    fn latency(&self, a: u32, b: u32) -> Micros {
        let (sa, sb) = (self.nodes[a as usize].site, self.nodes[b as usize].site);
        if self.topology.sites.is_empty() || (sa.is_some() && sa == sb) {
            self.local_latency
        } else {
            self.remote_latency
        }
    }

    /// Runs until every host that stays is done, nothing is left to happen, or the limit.
    pub fn run(mut self) -> RunOutcome {
        let limit = micros(self.scenario.time_limit_s);
        while self.hosts_pending > 0 {
            let Some((at, ev)) = self.queue.pop() else {
                break;
            };
            if at > limit {
                break;
            }
            self.now = at;
            self.counters.events += 1;
            self.dispatch(ev);
        }
        self.outcome()
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(node) => {
                // Already started by a restart (a crash scheduled before a late start).
                if !self.nodes[node as usize].started {
                    self.start(node);
                }
            }
            Ev::Tick(node) => {
                if self.nodes[node as usize].tick_at == Some(self.now) {
                    self.nodes[node as usize].tick_at = None;
                    self.feed(node, Event::Tick);
                }
            }
            Ev::HaveAsk { from, to } => self.have_ask(from, to),
            Ev::HaveAnswer {
                to,
                from,
                epoch,
                have,
            } => self.have_answer(to, from, epoch, have.map(|b| *b)),
            Ev::ChunkReply {
                to,
                from,
                chunk,
                epoch,
                sender_epoch,
                reply,
            } => self.chunk_reply(to, from, chunk, epoch, sender_epoch, reply),
            Ev::Leave(node) => {
                let state = &mut self.nodes[node as usize];
                if state.done_at.is_none() && !state.left {
                    self.hosts_pending -= 1;
                }
                state.left = true;
                self.go_offline(node);
            }
            Ev::Crash(node) => {
                // A host that has not started yet has nothing to lose.
                let state = &self.nodes[node as usize];
                if !state.left && state.started {
                    self.go_offline(node);
                    let downtime = self.topology.nodes[node as usize]
                        .crash
                        .map_or(0.0, |(_, d)| d);
                    self.push(self.now + micros(downtime), Ev::Restart(node));
                }
            }
            Ev::Restart(node) => {
                if !self.nodes[node as usize].left {
                    self.start(node);
                }
            }
        }
    }

    fn go_offline(&mut self, node: u32) {
        let state = &mut self.nodes[node as usize];
        state.online = false;
        state.epoch += 1;
        state.scheduler = None;
        state.tick_at = None;
        state.joined.clear();
        state.cancelled.clear();
        // The node's serving ledger lives only as long as its process.
        state.serving = Serving::default();
    }

    fn start(&mut self, node: u32) {
        let now = self.now;
        let chunk_count = self.chunk_count;
        let seed = Rng::derived(self.scenario.seed, 1 << 32 | u64::from(node)).next_u64();
        let config = self.config.clone();
        let site_key = (self.one_copy_per_site()
            && self.topology.nodes[node as usize].site.is_some())
        .then(|| site_rank_key(node));
        let state = &mut self.nodes[node as usize];
        state.online = true;
        state.started = true;
        state.first_start.get_or_insert(now);
        if state.done_at.is_some() {
            return;
        }
        state.life_start = now;
        let mut scheduler = Scheduler::new(chunk_count, config, seed ^ u64::from(state.epoch));
        for chunk in state.have.iter_ones() {
            scheduler.mark_have(chunk);
        }
        if let Some(key) = site_key {
            scheduler.set_site(key);
        }
        state.scheduler = Some(scheduler);
        for i in 0..self.topology.nodes[node as usize].neighbours.len() {
            let peer = self.topology.nodes[node as usize].neighbours[i];
            self.have_ask(node, peer);
        }
    }

    fn one_copy_per_site(&self) -> bool {
        self.scenario
            .sites
            .as_ref()
            .is_some_and(|sites| sites.one_copy_per_site)
    }

    /// A `Have` request, answered with the peer's state when it is sent (a host only gains
    /// chunks, so the answer is at most one latency stale) and arriving a round trip later.
    fn have_ask(&mut self, from: u32, to: u32) {
        let peer = &self.nodes[to as usize];
        let have = (peer.online && peer.started).then(|| Box::new(peer.have.clone()));
        let epoch = self.nodes[from as usize].epoch;
        let at = self.now + 2 * self.latency(from, to);
        self.push(
            at,
            Ev::HaveAnswer {
                to: from,
                from: to,
                epoch,
                have,
            },
        );
    }

    fn have_answer(&mut self, node: u32, peer: u32, epoch: u32, have: Option<Bitmap>) {
        let state = &mut self.nodes[node as usize];
        if state.epoch != epoch || state.scheduler.is_none() || state.banned.contains(&peer) {
            return;
        }
        let Some(have) = have else {
            if !state.joined.contains(&peer) {
                let at = self.now + PEER_REFRESH;
                self.push(
                    at,
                    Ev::HaveAsk {
                        from: node,
                        to: peer,
                    },
                );
            }
            return;
        };
        let event = if state.joined.insert(peer) {
            Event::PeerJoined { peer, have }
        } else {
            Event::PeerHave { peer, have }
        };
        self.feed(node, event);
        let prefer = self
            .scenario
            .sites
            .as_ref()
            .is_some_and(|s| s.prefer_same_site);
        let same_site = self.nodes[node as usize].site.is_some()
            && self.nodes[node as usize].site == self.nodes[peer as usize].site;
        if same_site
            && self.one_copy_per_site()
            && let Some(scheduler) = &mut self.nodes[node as usize].scheduler
        {
            scheduler.add_site_member(&peer, site_rank_key(peer));
        }
        let preference = if peer == ORIGIN {
            self.scenario.scheduler.origin_preference.unwrap_or(0)
        } else {
            i32::from(prefer && same_site)
        };
        if preference != 0
            && let Some(scheduler) = &mut self.nodes[node as usize].scheduler
        {
            scheduler.set_preference(&peer, preference);
        }
    }

    /// A chunk request. The sender's answer is decided when the request is sent, from its
    /// chunks then (it only gains chunks; a crash meanwhile is caught on arrival) and its
    /// links one latency later, when the request reaches it: one event per request instead of
    /// two, which is most of what makes 10,000 hosts cheap.
    fn chunk_ask(&mut self, from: u32, to: u32, chunk: u32) {
        let latency = self.latency(from, to);
        let now = self.now + latency;
        let blob = self.blob;
        let sender = &mut self.nodes[to as usize];
        let reply = if !sender.online {
            Reply::Failed
        } else if sender.role == Role::Hostile {
            Reply::Bad
        } else if !sender.have.get(chunk) {
            Reply::NotFound
        } else {
            let backlog = sender.up.backlog(now);
            match serve(
                &mut sender.serving,
                blob,
                from,
                chunk,
                &sender.have,
                backlog,
                now,
            ) {
                Answer::Send => Reply::Data,
                Answer::Busy(_) => Reply::Busy,
            }
        };
        let at = match reply {
            Reply::Data | Reply::Bad => self.send(to, from, chunk, now) + latency,
            _ => now + latency,
        };
        let epoch = self.nodes[from as usize].epoch;
        let sender_epoch = self.nodes[to as usize].epoch;
        self.push(
            at,
            Ev::ChunkReply {
                to: from,
                from: to,
                chunk,
                epoch,
                sender_epoch,
                reply,
            },
        );
    }

    /// Reserves every link a chunk crosses from `sender` to `receiver`; returns when it has
    /// crossed them all.
    fn send(&mut self, sender: u32, receiver: u32, chunk: u32, now: Micros) -> Micros {
        let bytes = self.scenario.chunk_len(chunk);
        let (ss, rs) = (
            self.nodes[sender as usize].site,
            self.nodes[receiver as usize].site,
        );
        let crossing = ss != rs;
        let mut up = std::mem::replace(&mut self.nodes[sender as usize].up, Link::new(1.0));
        let mut down = std::mem::replace(&mut self.nodes[receiver as usize].down, Link::new(1.0));
        let mut path: Vec<&mut Link> = vec![&mut up];
        let (mut site_up, mut site_down) = (None, None);
        if crossing {
            site_up = ss.map(|s| std::mem::replace(&mut self.site_up[s as usize], Link::new(1.0)));
            site_down =
                rs.map(|s| std::mem::replace(&mut self.site_down[s as usize], Link::new(1.0)));
        }
        path.extend(site_up.as_mut());
        path.extend(site_down.as_mut());
        path.push(&mut down);
        let end = Link::reserve_path(&mut path, self.now, now, bytes);
        self.nodes[sender as usize].up = up;
        self.nodes[receiver as usize].down = down;
        if let (Some(link), Some(s)) = (site_up, ss) {
            self.site_up[s as usize] = link;
        }
        if let (Some(link), Some(s)) = (site_down, rs) {
            self.site_down[s as usize] = link;
        }
        end
    }

    fn chunk_reply(
        &mut self,
        node: u32,
        peer: u32,
        chunk: u32,
        epoch: u32,
        sender_epoch: u32,
        reply: Reply,
    ) {
        let sender = &self.nodes[peer as usize];
        // A sender that crashed or left mid-chunk: the connection closed.
        let reply = match reply {
            Reply::Data | Reply::Bad if sender.epoch != sender_epoch || !sender.online => {
                Reply::Failed
            }
            other => other,
        };
        let state = &mut self.nodes[node as usize];
        if state.epoch != epoch || state.scheduler.is_none() {
            return;
        }
        // A banned peer was disconnected: whatever it was sending fails.
        let reply = if state.banned.contains(&peer) {
            Reply::Failed
        } else {
            reply
        };
        let was_cancelled = state.cancelled.remove(&(peer, chunk));
        match reply {
            Reply::Data | Reply::Bad => {}
            _ if was_cancelled => return,
            Reply::Busy => {
                self.counters.busy_replies += 1;
                self.feed(node, Event::PeerBusy { peer, chunk });
                return;
            }
            _ => {
                self.counters.failed_replies += 1;
                self.feed(node, Event::RequestFailed { peer, chunk });
                return;
            }
        }
        if state.have.get(chunk) {
            self.counters.duplicate_chunks += 1;
            return;
        }
        let valid = reply == Reply::Data;
        if valid {
            state.have.set(chunk);
            self.counters.chunks_delivered += 1;
        } else {
            self.counters.bad_chunks_received += 1;
        }
        self.feed(node, Event::ChunkArrived { peer, chunk, valid });
        // The scheduler must never count a rejected chunk as had.
        let state = &self.nodes[node as usize];
        if !valid
            && state
                .scheduler
                .as_ref()
                .is_some_and(|s| s.have().get(chunk))
        {
            self.counters.bad_chunks_accepted += 1;
        }
    }

    /// Hands an event to a host's scheduler and carries out its actions, as `Run::feed`.
    fn feed(&mut self, node: u32, event: Event<u32>) {
        let now = self.now;
        let Some(scheduler) = &mut self.nodes[node as usize].scheduler else {
            return;
        };
        let actions = scheduler.handle(event, Duration::from_micros(now));
        let mut completed = false;
        for action in actions {
            match action {
                Action::Request { peer, chunk } => {
                    self.counters.chunk_requests += 1;
                    self.chunk_ask(node, peer, chunk);
                }
                Action::PollHave { peer } => {
                    self.counters.have_polls += 1;
                    self.have_ask(node, peer);
                }
                Action::Cancel { peer, chunk } => {
                    self.nodes[node as usize].cancelled.insert((peer, chunk));
                }
                Action::Ban { peer } => {
                    if self.nodes[node as usize].banned.insert(peer) {
                        self.counters.bans += 1;
                    }
                }
                Action::Completed => completed = true,
            }
        }
        let state = &mut self.nodes[node as usize];
        if completed {
            state.done_at = Some(now);
            state.scheduler = None;
            state.joined = HashSet::new();
            state.cancelled = HashSet::new();
            state.tick_at = None;
            if !state.left {
                self.hosts_pending -= 1;
            }
            return;
        }
        let wakeup = state
            .scheduler
            .as_ref()
            .and_then(Scheduler::next_wakeup)
            .map(|w| {
                let since = (w.as_micros() as Micros).saturating_sub(state.life_start);
                state.life_start + since.div_ceil(TICK).max(1) * TICK
            });
        if let Some(at) = wakeup {
            let at = at.max(now + 1);
            if state.tick_at.is_none_or(|t| at < t) {
                state.tick_at = Some(at);
                self.push(at, Ev::Tick(node));
            }
        }
    }

    fn outcome(self) -> RunOutcome {
        let mut completion_s = Vec::new();
        let mut hosts_left = 0;
        for state in &self.nodes {
            if state.role != Role::Host {
                continue;
            }
            if state.left {
                hosts_left += 1;
                continue;
            }
            completion_s.push(match (state.done_at, state.first_start) {
                (Some(done), Some(start)) => Some(crate::link::seconds(done - start)),
                _ => None,
            });
        }
        RunOutcome {
            completion_s,
            hosts_left,
            origin_bytes: self.nodes[ORIGIN as usize].up.bytes(),
            site_in_bytes: self.site_down.iter().map(Link::bytes).collect(),
            site_out_bytes: self.site_up.iter().map(Link::bytes).collect(),
            counters: self.counters,
            end_s: crate::link::seconds(self.now),
        }
    }
}

/// The simulator's driver of the serving policy, as `exchange/serve.rs` is the node's: a
/// sender holding `have` (with `chunk` in it) answers `peer`'s request arriving at `now`, its
/// uplink busy for `backlog` more (the egress queued ahead of the chunk). A host with every
/// chunk holds the blob whole, as the node's store does once a transfer completes, and
/// super-seeds it.
pub fn serve(
    serving: &mut Serving<u32>,
    blob: Digest,
    peer: u32,
    chunk: u32,
    have: &Bitmap,
    backlog: Micros,
    now: Micros,
) -> Answer {
    let holding = if have.is_full() {
        Holding::Whole {
            chunk_count: have.len(),
        }
    } else {
        Holding::Partial
    };
    let request = ChunkRequest {
        peer,
        blob,
        chunk,
        holding,
        egress_ahead: Duration::from_micros(backlog),
    };
    serving.decide(&request, Duration::from_micros(now))
}

/// A host's rank key for choosing chunk owners within its site: the same on every host, as a
/// hash of the peer id and the blob is in the node.
fn site_rank_key(node: u32) -> u64 {
    shoal_protocol::rng::mix64(u64::from(node))
}
