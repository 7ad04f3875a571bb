//! The discrete-event loop: one `shoal_protocol::Fetch` per host (the node's own fetching
//! machine, with its scheduler inside), driven as the node's `exchange/fetch/transfer.rs`
//! drives it, over the links of [`crate::link`]; and the node's serving policy
//! ([`shoal_protocol::Serving`]) and have-feed rule on the senders' side.
//!
//! What the machine decides (whom to ask `Have` and when to ask again, whom to watch, which
//! answers count, chunk order, which chunk of whom) is the node's code; what this loop plays is
//! the world around it:
//! - on start, the host's fetch begins with the chunk count known (a restarted host resumes
//!   from the chunks it had verified, with a fresh machine) and is told its neighbours are
//!   connected; each `AskHave` or `PollHave` travels one latency, and the answer (the peer's
//!   bitfield then, or nothing from a host that has not started or is offline) comes back one
//!   latency later as `Have`;
//! - have feeds (`shoal_protocol::feed`): a `Watch` request reaches the peer one latency later
//!   and the peer pushes its bitfield back at once. Each later push of a watch, as the node's,
//!   goes `push_delay` (a fresh random part of `FEED_INTERVAL`, from the peer's own stream)
//!   after the change it tells, or after the peer's push interval has passed since the
//!   watch's last push if that is later (`feed::GainPace`: what the peer's latest gains took,
//!   within `FEED_INTERVAL` and `FEED_INTERVAL_MAX`; a host fetches one blob, so a watch is
//!   what a node's feed is, and the node's feed spaces its writes the same way), and carries
//!   the bitfield of that moment: the watchers of one peer hear of its new chunk at different
//!   times, not all at once (which herds them onto it). A gain the watcher already holds, as
//!   far as the peer's own fetch knows, is no news and gets no push (`feed::news_for`); the
//!   push of the whole blob always goes. Every push reaches its watcher one latency later as
//!   `Pushed`. A push of the whole blob ends the watch; a peer going offline ends its watches
//!   (`Fetch::watch_ended`); a watcher that goes offline or completes drops its own;
//! - `Request` → the request travels one latency; the sender answers `NotFound` if it lacks
//!   the chunk, else what the node's serving policy says (fed the sender's uplink backlog and
//!   the virtual clock): `Busy` past the egress bound or under super-seeding, else the chunk,
//!   over its uplink, the site links crossed and the receiver's downlink; a hostile sender
//!   sends garbage the same way. The answer arrives as `Chunk` (honest senders' chunks verify,
//!   hostile ones' do not); a `Keep` is the host verifying and storing a chunk;
//! - the node cannot abort a request-response exchange, so a cancelled request's bytes still
//!   cross the links;
//! - `Tick` at `Fetch::next_tick`, as the node's transfer ticks;
//! - churn: a host that leaves or crashes answers nothing (requests to it fail after one
//!   latency, and its chunks in flight fail on arrival).
//!
//! Not modelled: index exchange (the chunk index is known at start), DHT lookups (neighbours
//! are fixed by [`crate::topology`]), the final sha256 check, disk speed, and packet loss.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_protocol::feed::{GainPace, news_for, push_delay};
use shoal_protocol::{
    Answer, Bitmap, BusyReason, ChunkReply, ChunkRequest, Digest, Fetch, FetchAction, FetchEvent,
    Holding, PeerHolds, SchedulerConfig, Serving,
};

use crate::link::{Link, Micros, micros, site_links};
use crate::queue::EventQueue;
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::topology::{ORIGIN, Role, Topology};
use crate::trace::{Recorded, Recorder, Step};

/// The derived random stream of each host's push delays is this plus the host's id (its
/// scheduler's seed is drawn from `1 << 32` plus the id).
const STREAM_PUSH_DELAYS: u64 = 2 << 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Data,
    Bad,
    Busy(BusyReason),
    NotFound,
    Failed,
}

#[derive(Debug)]
enum Ev {
    Start(u32),
    Tick(u32),
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
    /// A watch request reaches the watched peer.
    Watch {
        watcher: u32,
        peer: u32,
        epoch: u32,
    },
    /// A push reaches a watcher, one latency after `from` sent it at `sent_at`: one event per
    /// push, scheduled when the push is, and the bitfield read on arrival as it was when sent
    /// (see [`NodeState::have_at`]).
    Pushed {
        to: u32,
        from: u32,
        epoch: u32,
        sender_epoch: u32,
        sent_at: Micros,
    },
    /// The watched peer went offline: its feed broke.
    FeedEnded {
        to: u32,
        from: u32,
        epoch: u32,
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
    /// The fetching side of the exchange, the node's own machine, while this life fetches.
    fetch: Option<Fetch<u32>>,
    online: bool,
    left: bool,
    /// Has begun its transfer (so it answers `Have`).
    started: bool,
    /// Bumped on crash and leave: answers addressed to an earlier life are dropped.
    epoch: u32,
    /// When each earlier life ended, by epoch: whether a push due then was still sent.
    offline_at: Vec<Micros>,
    first_start: Option<Micros>,
    done_at: Option<Micros>,
    tick_at: Option<Micros>,
    /// What it answers the chunk requests it gets: the node's own serving policy.
    serving: Serving<u32>,
    /// Hosts watching this one's feed, each with when its latest push goes or went.
    watchers: Vec<Watcher>,
    /// No watch's latest push goes earlier: a change before this needs no new push. A lower
    /// bound (a dropped watch leaves it low), kept so that most changes skip the watchers.
    pushes_cover_until: Micros,
    /// Chunks verified in the last latency, oldest first: a push that arrives reads its
    /// bitfield as sent one latency earlier by taking these off.
    recent_gains: VecDeque<(Micros, u32)>,
    /// This host's push delays.
    feed_rng: Rng,
    /// How fast the host gains chunks: how far apart its pushes go (`feed::GainPace`).
    pace: GainPace,
}

/// One watch of a host's feed, on the host's side.
#[derive(Debug, Clone, Copy)]
struct Watcher {
    host: u32,
    /// When the latest push goes (if in the future) or went: a change at or before it is in
    /// that push; a later one gets the next push, the host's push interval after it at the
    /// earliest.
    pushed_at: Micros,
}

impl NodeState {
    /// Whether the host was still in its life `epoch` at `at`.
    fn online_at(&self, epoch: u32, at: Micros) -> bool {
        self.epoch == epoch
            || self
                .offline_at
                .get(epoch as usize)
                .is_some_and(|&end| end > at)
    }

    /// The host's verified chunks as they were at `at`, no more than one latency ago.
    fn have_at(&self, at: Micros) -> Bitmap {
        let mut have = self.have.clone();
        for &(_, chunk) in self.recent_gains.iter().rev().take_while(|&&(t, _)| t > at) {
            have.clear(chunk);
        }
        have
    }
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
    /// Bitfields pushed on have feeds, one per watcher per push.
    pub have_pushes: u64,
    /// Fetches that would have given up (no chunk for `STALL_TIMEOUT`).
    pub give_ups: u64,
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
    /// One host's fetch, recorded while its first life lasts.
    recorder: Option<Recorder>,
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
    if let Some(v) = o.failure_backoff_ms {
        config.failure_backoff = Duration::from_millis(v);
    }
    config
}

impl<'a> Simulation<'a> {
    pub fn new(scenario: &'a Scenario, topology: &'a Topology) -> Self {
        let chunk_count = scenario.chunk_count();
        let nodes = topology
            .nodes
            .iter()
            .zip(0u64..)
            .map(|(spec, id)| {
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
                    fetch: None,
                    online: seeded,
                    left: false,
                    started: seeded,
                    epoch: 0,
                    offline_at: Vec::new(),
                    first_start: None,
                    done_at: seeded.then_some(0),
                    tick_at: None,
                    serving: Serving::default(),
                    watchers: Vec::new(),
                    pushes_cover_until: 0,
                    recent_gains: VecDeque::new(),
                    feed_rng: Rng::derived(scenario.seed, STREAM_PUSH_DELAYS | id),
                    pace: GainPace::default(),
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
            recorder: None,
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

    /// Runs as [`Simulation::run`] does, and returns the first life of `host`'s fetch: every
    /// input its machine got and every action it returned.
    pub fn run_recording(mut self, host: u32) -> (RunOutcome, Vec<Recorded>) {
        self.recorder = Some(Recorder {
            host,
            steps: Vec::new(),
        });
        self.play();
        let steps = self
            .recorder
            .take()
            .map(|recorder| recorder.steps)
            .unwrap_or_default();
        (self.outcome(), steps)
    }

    /// Runs until every host that stays is done, nothing is left to happen, or the limit.
    pub fn run(mut self) -> RunOutcome {
        self.play();
        self.outcome()
    }

    /// The recorder, if it records `node` (in its first life).
    fn recording(&mut self, node: u32) -> Option<&mut Recorder> {
        let first_life = self.nodes[node as usize].epoch == 0;
        self.recorder
            .as_mut()
            .filter(|recorder| recorder.host == node && first_life)
    }

    fn play(&mut self) {
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
                    self.drive(node, FetchEvent::Tick);
                }
            }
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
            Ev::Watch {
                watcher,
                peer,
                epoch,
            } => self.watch_arrived(watcher, peer, epoch),
            Ev::Pushed {
                to,
                from,
                epoch,
                sender_epoch,
                sent_at,
            } => self.pushed(to, from, epoch, sender_epoch, sent_at),
            Ev::FeedEnded { to, from, epoch } => self.feed_ended(to, from, epoch),
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
        let now = self.now;
        let state = &mut self.nodes[node as usize];
        state.online = false;
        state.offline_at.push(now);
        state.epoch += 1;
        state.tick_at = None;
        // The node's serving ledger lives only as long as its process.
        state.serving = Serving::default();
        let watchers = std::mem::take(&mut state.watchers);
        // Those it asked see its connection close.
        for &server in &self.topology.nodes[node as usize].neighbours {
            self.nodes[server as usize].serving.peer_left(&node);
        }
        for Watcher { host: watcher, .. } in watchers {
            let at = self.now + self.latency(node, watcher);
            let epoch = self.nodes[watcher as usize].epoch;
            self.push(
                at,
                Ev::FeedEnded {
                    to: watcher,
                    from: node,
                    epoch,
                },
            );
        }
        self.drop_watches(node);
    }

    /// A host that goes offline or completes stops watching: its peers stop pushing to it,
    /// and its fetch ends.
    fn drop_watches(&mut self, node: u32) {
        let Some(fetch) = self.nodes[node as usize].fetch.take() else {
            return;
        };
        for &peer in fetch.watching() {
            self.unwatch(node, peer);
        }
    }

    /// `node` stops watching `peer`'s feed: the peer pushes to it no more.
    fn unwatch(&mut self, node: u32, peer: u32) {
        self.nodes[peer as usize]
            .watchers
            .retain(|watcher| watcher.host != node);
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
        let seed = seed ^ u64::from(state.epoch);
        let resumed = state.have.clone();
        let scheduler = Step::scheduler(chunk_count, &config, seed, &resumed, site_key);
        let at = Duration::from_micros(now);
        let mut fetch = Fetch::new(at, seed);
        let begun = fetch.begin(scheduler, at);
        state.fetch = Some(fetch);
        if let Some(recorder) = self.recording(node) {
            let begin = Step::Begin {
                chunk_count,
                config,
                seed,
                resumed,
                site: site_key,
            };
            recorder.push(at, begin, &begun);
        }
        self.carry_out(node, begun);
        let peers = self.topology.nodes[node as usize].neighbours.clone();
        let site = self.nodes[node as usize].site;
        for &peer in &peers {
            if site.is_some() && self.nodes[peer as usize].site == site {
                self.add_site_mate(node, peer);
            }
        }
        self.drive(node, FetchEvent::Connected { peers });
    }

    /// Tells `node`'s fetch that `peer` is on its site, as the node's transfer does for the
    /// peers its locality puts there.
    fn add_site_mate(&mut self, node: u32, peer: u32) {
        let at = Duration::from_micros(self.now);
        if let Some(fetch) = self.nodes[node as usize].fetch.as_mut() {
            fetch.add_site_mate(peer);
        }
        if let Some(recorder) = self.recording(node) {
            recorder.push(at, Step::SiteMate(peer), &[]);
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
        if self.nodes[node as usize].epoch != epoch {
            return;
        }
        let holds = have.map(holds);
        self.drive(node, FetchEvent::Have { peer, holds });
    }

    /// Tells a host's scheduler where a peer that joined it is: a site-mate (for one copy per
    /// site) and its preference, as the node's `Run::place`.
    fn place(&mut self, node: u32, peer: u32) {
        let prefer = self
            .scenario
            .sites
            .as_ref()
            .is_some_and(|s| s.prefer_same_site);
        let same_site = self.nodes[node as usize].site.is_some()
            && self.nodes[node as usize].site == self.nodes[peer as usize].site;
        let one_copy_per_site = self.one_copy_per_site();
        let preference = if peer == ORIGIN {
            self.scenario.scheduler.origin_preference.unwrap_or(0)
        } else {
            i32::from(prefer && same_site)
        };
        let Some(scheduler) = self.nodes[node as usize]
            .fetch
            .as_mut()
            .and_then(Fetch::scheduler_mut)
        else {
            return;
        };
        let site_member = (same_site && one_copy_per_site).then(|| site_rank_key(peer));
        if let Some(key) = site_member {
            scheduler.add_site_member(&peer, key);
        }
        if preference != 0 {
            scheduler.set_preference(&peer, preference);
        }
        let at = Duration::from_micros(self.now);
        if let Some(recorder) = self.recording(node) {
            let place = Step::Place {
                peer,
                site_member,
                preference,
            };
            recorder.push(at, place, &[]);
        }
    }

    /// Sends a watch request for `peer`'s feed: it reaches the peer one latency later.
    fn watch(&mut self, node: u32, peer: u32) {
        let epoch = self.nodes[node as usize].epoch;
        let at = self.now + self.latency(node, peer);
        self.push(
            at,
            Ev::Watch {
                watcher: node,
                peer,
                epoch,
            },
        );
    }

    /// The watch request reaches the peer, which pushes its bitfield at once, and then on
    /// every change until it holds the whole blob; an offline peer's feed breaks instead.
    fn watch_arrived(&mut self, watcher: u32, peer: u32, epoch: u32) {
        let state = &self.nodes[watcher as usize];
        if state.epoch != epoch || !state.fetch.as_ref().is_some_and(|f| f.is_watching(&peer)) {
            return;
        }
        let now = self.now;
        let sender = &mut self.nodes[peer as usize];
        if !sender.online {
            let at = now + self.latency(peer, watcher);
            self.push(
                at,
                Ev::FeedEnded {
                    to: watcher,
                    from: peer,
                    epoch,
                },
            );
            return;
        }
        if !sender.have.is_full() {
            sender.watchers.push(Watcher {
                host: watcher,
                pushed_at: now,
            });
            sender.pushes_cover_until = sender.pushes_cover_until.min(now);
        }
        self.send_push(peer, watcher, now);
    }

    /// A host verified `chunk`. Each watch whose latest push went before now gets another,
    /// `push_delay` after now or after the host's push interval has passed since that push,
    /// whichever is later, as the node's feeds wait; once the host is whole, the watches
    /// end with those pushes.
    fn gained(&mut self, node: u32, chunk: u32) {
        let now = self.now;
        let latency_max = self.local_latency.max(self.remote_latency);
        let state = &mut self.nodes[node as usize];
        // A push still to arrive went no earlier than one latency before now: a gain before
        // that, or at it, is in every bitfield a push still reads, and need not be kept.
        while state
            .recent_gains
            .front()
            .is_some_and(|&(at, _)| at + latency_max <= now)
        {
            state.recent_gains.pop_front();
        }
        state.recent_gains.push_back((now, chunk));
        state.pace.gained(Duration::from_micros(now));
        if state.watchers.is_empty() || now <= state.pushes_cover_until {
            return;
        }
        let interval = state
            .pace
            .push_interval(Duration::from_micros(now))
            .as_micros() as Micros;
        let mut cover_until = Micros::MAX;
        // As the node's feeds: a gain the watcher holds (as far as this host's fetch knows) is
        // no news to it; the blob whole always is.
        let whole = self.nodes[node as usize].have.is_full();
        let mut before: Option<Bitmap> = None;
        for i in 0..self.nodes[node as usize].watchers.len() {
            let state = &mut self.nodes[node as usize];
            if state.watchers[i].pushed_at >= now {
                cover_until = cover_until.min(state.watchers[i].pushed_at);
                continue;
            }
            let watcher = state.watchers[i].host;
            let known = state
                .fetch
                .as_ref()
                .and_then(Fetch::scheduler)
                .and_then(|scheduler| scheduler.peer_have(&watcher));
            let before = before.get_or_insert_with(|| {
                let mut before = state.have.clone();
                before.clear(chunk);
                before
            });
            let news = whole || news_for(Some(before), &state.have, known);
            let watch = &mut state.watchers[i];
            if news {
                let delay = push_delay(state.feed_rng.next_u64()).as_micros() as Micros;
                watch.pushed_at = now.max(watch.pushed_at + interval) + delay;
                let (watcher, at) = (watch.host, watch.pushed_at);
                self.send_push(node, watcher, at);
            }
            cover_until = cover_until.min(self.nodes[node as usize].watchers[i].pushed_at);
        }
        let state = &mut self.nodes[node as usize];
        state.pushes_cover_until = cover_until;
        if state.have.is_full() {
            state.watchers.clear();
        }
    }

    /// Schedules `sender`'s push to `watcher` at `at` (now or later): its arrival, one latency
    /// after.
    fn send_push(&mut self, sender: u32, watcher: u32, at: Micros) {
        let arrival = at + self.latency(sender, watcher);
        let epoch = self.nodes[watcher as usize].epoch;
        let sender_epoch = self.nodes[sender as usize].epoch;
        self.push(
            arrival,
            Ev::Pushed {
                to: watcher,
                from: sender,
                epoch,
                sender_epoch,
                sent_at: at,
            },
        );
    }

    /// A push reaches a watcher, unless the sender went offline before it was due or the
    /// watcher stopped watching; the host's fetch takes it from there (the push of the whole
    /// blob is the last).
    fn pushed(&mut self, node: u32, peer: u32, epoch: u32, sender_epoch: u32, sent_at: Micros) {
        let (sender, state) = (&self.nodes[peer as usize], &self.nodes[node as usize]);
        if !sender.online_at(sender_epoch, sent_at)
            || !state.online_at(epoch, sent_at)
            || state.done_at.is_some_and(|done| done <= sent_at)
        {
            return;
        }
        self.counters.have_pushes += 1;
        if state.epoch != epoch {
            return;
        }
        let holds = Some(holds(sender.have_at(sent_at)));
        self.drive(node, FetchEvent::Pushed { peer, holds });
    }

    /// The watched peer went offline: the watcher polls it again (in vain until it is back,
    /// when a poll's answer starts a new watch).
    fn feed_ended(&mut self, node: u32, peer: u32, epoch: u32) {
        let state = &mut self.nodes[node as usize];
        if state.epoch != epoch {
            return;
        }
        if let Some(fetch) = &mut state.fetch {
            fetch.watch_ended(&peer);
            let at = Duration::from_micros(self.now);
            if let Some(recorder) = self.recording(node) {
                recorder.push(at, Step::WatchEnded(peer), &[]);
            }
            self.arm_tick(node);
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
                Answer::Busy(reason) => Reply::Busy(reason),
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
        let state = &self.nodes[node as usize];
        if state.epoch != epoch || state.fetch.is_none() {
            return;
        }
        let reply = match reply {
            Reply::Data => ChunkReply::Verified,
            Reply::Bad => ChunkReply::Wrong,
            Reply::Busy(reason) => ChunkReply::Busy(reason),
            Reply::NotFound | Reply::Failed => ChunkReply::Failed,
        };
        match reply {
            ChunkReply::Verified if state.have.get(chunk) => self.counters.duplicate_chunks += 1,
            ChunkReply::Wrong => self.counters.bad_chunks_received += 1,
            ChunkReply::Busy(_) => self.counters.busy_replies += 1,
            ChunkReply::Failed => self.counters.failed_replies += 1,
            ChunkReply::Verified => {}
        }
        self.drive(node, FetchEvent::Chunk { peer, chunk, reply });
        // The fetch must never count a rejected chunk as had.
        let state = &self.nodes[node as usize];
        if reply == ChunkReply::Wrong && !state.have.get(chunk) {
            let had = state
                .fetch
                .as_ref()
                .and_then(Fetch::scheduler)
                .is_some_and(|s| s.have().get(chunk));
            if had {
                self.counters.bad_chunks_accepted += 1;
            }
        }
    }

    /// Hands an event to a host's fetch and carries out its actions, as the node's transfer
    /// does.
    fn drive(&mut self, node: u32, event: FetchEvent<u32>) {
        let now = Duration::from_micros(self.now);
        let recorded = self.recording(node).is_some().then(|| event.clone());
        let Some(fetch) = &mut self.nodes[node as usize].fetch else {
            return;
        };
        let actions = fetch.handle(event, now);
        if let (Some(event), Some(recorder)) = (recorded, self.recording(node)) {
            recorder.push(now, Step::Event(event), &actions);
        }
        self.carry_out(node, actions);
    }

    fn carry_out(&mut self, node: u32, actions: Vec<FetchAction<u32>>) {
        let mut completed = false;
        let mut looked_up = false;
        for action in actions {
            match action {
                // No DHT here: a host's peers are its topology's neighbours, `Connected`.
                FetchAction::LookUp => looked_up = true,
                FetchAction::Provide => {}
                FetchAction::AskHave { peer } => self.have_ask(node, peer),
                FetchAction::PollHave { peer } => {
                    self.counters.have_polls += 1;
                    self.have_ask(node, peer);
                }
                FetchAction::Watch { peer } => self.watch(node, peer),
                FetchAction::Joined { peer } => self.place(node, peer),
                FetchAction::Unwatch { peer } => self.unwatch(node, peer),
                FetchAction::Request { peer, chunk } => {
                    self.counters.chunk_requests += 1;
                    self.chunk_ask(node, peer, chunk);
                }
                FetchAction::Keep { chunk } => {
                    self.nodes[node as usize].have.set(chunk);
                    self.counters.chunks_delivered += 1;
                    self.gained(node, chunk);
                }
                FetchAction::Ban { .. } => self.counters.bans += 1,
                FetchAction::Completed => completed = true,
                // The node's transfer would end with an error here and its prefetch start it
                // again; the simulated host carries on with the same fetch.
                FetchAction::GiveUp(_) => self.counters.give_ups += 1,
                // A host knows the index from the start and has no upstream: its fetch never
                // asks for an index, relays, delegates or downloads.
                FetchAction::RequestIndex { .. }
                | FetchAction::Relay { .. }
                | FetchAction::Delegate { .. }
                | FetchAction::Download => {}
            }
        }
        if completed {
            let state = &mut self.nodes[node as usize];
            state.done_at = Some(self.now);
            state.tick_at = None;
            if !state.left {
                self.hosts_pending -= 1;
            }
            self.drop_watches(node);
            return;
        }
        if looked_up {
            self.drive(node, FetchEvent::Candidates { peers: Vec::new() });
        }
        self.arm_tick(node);
    }

    /// Schedules the host's next `Tick` at `Fetch::next_tick`, when that is earlier than the
    /// one pending (and after now). A wakeup beyond the virtual clock's range saturates at its
    /// end, past any time limit.
    fn arm_tick(&mut self, node: u32) {
        let now = self.now;
        let state = &mut self.nodes[node as usize];
        let wakeup = state
            .fetch
            .as_ref()
            .and_then(Fetch::next_tick)
            .map(|at| Micros::try_from(at.as_micros()).unwrap_or(Micros::MAX));
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

/// What a host holding `chunks` tells a peer: every chunk is the blob whole, as the node's
/// store holds it once a transfer completes.
fn holds(chunks: Bitmap) -> PeerHolds {
    PeerHolds {
        complete: chunks.is_full(),
        chunks,
    }
}

/// A host's rank key for choosing chunk owners within its site: the same on every host, as a
/// hash of the peer id and the blob is in the node.
fn site_rank_key(node: u32) -> u64 {
    shoal_protocol::rng::mix64(u64::from(node))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// [`shoal_protocol::FEED_INTERVAL`] on the virtual clock.
    const FEED_INTERVAL: Micros = shoal_protocol::FEED_INTERVAL.as_micros() as Micros;

    const MESH: &str = r#"
name = "mesh"
seed = 1
nodes = 5
image_mib = 4
chunk_kib = 1024
peers_per_node = 4
[origin]
up_mbps = 100
[[links]]
up_mbps = 100
down_mbps = 100
[latency]
local_ms = 1
remote_ms = 1
"#;

    /// The `Pushed` events queued, as (watcher, sent at, arrival).
    fn pushes(simulation: &mut Simulation<'_>) -> Vec<(u32, Micros, Micros)> {
        let mut pushes = Vec::new();
        while let Some((arrival, ev)) = simulation.queue.pop() {
            if let Ev::Pushed { to, sent_at, .. } = ev {
                pushes.push((to, sent_at, arrival));
            }
        }
        pushes
    }

    #[test]
    fn later_pushes_wait_apart_and_carry_the_bitfield_as_sent() {
        let scenario = Scenario::from_toml(MESH).expect("the mesh scenario parses");
        let topology = Topology::build(&scenario);
        let mut simulation = Simulation::new(&scenario, &topology);
        pushes(&mut simulation);
        let host = 1;
        simulation.nodes[host as usize].watchers = [2, 3, 4, 5]
            .map(|watcher| Watcher {
                host: watcher,
                pushed_at: 0,
            })
            .to_vec();
        simulation.nodes[host as usize].have.set(0);
        simulation.now = 40_000;
        simulation.gained(host, 0);
        let first = pushes(&mut simulation);
        assert_eq!(first.len(), 4, "one push per watch");
        let mut sent: Vec<Micros> = first.iter().map(|&(_, sent_at, _)| sent_at).collect();
        assert!(
            sent.iter()
                .all(|&at| (FEED_INTERVAL..2 * FEED_INTERVAL).contains(&at)),
            "a push waits out the interval, then its own delay: {sent:?}"
        );
        sent.dedup();
        assert_eq!(sent.len(), 4, "each watch draws its own delay");
        assert!(first.iter().all(|&(_, at, arrival)| arrival == at + 1_000));

        // A change before those pushes go is in them: no more pushes.
        simulation.nodes[host as usize].have.set(1);
        simulation.now = FEED_INTERVAL;
        simulation.gained(host, 1);
        assert!(pushes(&mut simulation).is_empty());
        // A push reads the bitfield as it was when sent, not as it is on arrival.
        simulation.nodes[host as usize].have.set(2);
        simulation.now = FEED_INTERVAL + 500;
        simulation.gained(host, 2);
        let state = &simulation.nodes[host as usize];
        assert_eq!(state.have_at(FEED_INTERVAL).count_ones(), 2);
        assert_eq!(state.have_at(FEED_INTERVAL + 500).count_ones(), 3);
    }

    #[test]
    fn a_push_due_after_its_sender_went_offline_is_not_sent() {
        let scenario = Scenario::from_toml(MESH).expect("the mesh scenario parses");
        let topology = Topology::build(&scenario);
        let mut simulation = Simulation::new(&scenario, &topology);
        let state = &mut simulation.nodes[1];
        state.offline_at.push(5_000);
        state.epoch = 1;
        assert!(state.online_at(0, 4_999));
        assert!(!state.online_at(0, 5_000));
        assert!(state.online_at(1, 9_000));
    }
}
