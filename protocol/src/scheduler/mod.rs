//! The sans-IO transfer scheduler: which chunk of one blob to ask of which peer, and when.
//!
//! One [`Scheduler`] runs per blob being fetched. The node's transfer task (or the simulator)
//! owns it and drives it with [`Event`]s stamped with the current time; every call returns the
//! [`Action`]s to carry out. It never sleeps, reads a clock, or touches the network or disk, and
//! its only randomness is a small PRNG seeded by the caller, so the same seed and the same
//! events give the same actions, in the daemon and in a 10,000-node simulation alike.
//!
//! Data flow: `PeerJoined`/`PeerHave` (peers' bitfields) → availability per chunk →
//! `Request` actions (at most `requests_per_peer_max` in flight per peer) → the node fetches,
//! verifies against the chunk index, writes, and reports `ChunkArrived` (or `RequestFailed`)
//! → the scheduler marks the chunk had, cancels duplicate requests, refills. `Completed` comes
//! once, when every chunk is had.
//!
//! Policy, in order of precedence, for a peer with spare capacity:
//! 1. chunks inside the focus window `[focus, focus + stream_window_chunks)`, in order, because
//!    a streaming client is waiting on them;
//! 2. otherwise the rarest chunk it has (fewest peers have it), ties broken by a random order
//!    fixed per scheduler, so that different nodes spread over different chunks (or, after
//!    [`Scheduler::set_in_order`], the lowest chunk first: for a caller that hashes the blob
//!    front to back as it arrives, when there is no swarm to spread over). The choice is
//!    exact when the peer has one of the 64 globally rarest needed chunks, and otherwise the
//!    rarest of a sample of 64 of its useful chunks, which bounds the cost per request;
//! 3. once no chunk is left that is un-requested and available from anyone (the *endgame*),
//!    chunks already in flight elsewhere, up to `endgame_duplicates_max` concurrent copies,
//!    fewest copies and oldest request first; the first copy to arrive cancels the others.
//!
//! Failure handling: a request outstanding longer than `request_timeout` counts as failed, is
//! cancelled and its chunk reassigned. Each failure (timeout or `RequestFailed`) halves that
//! peer's in-flight limit (at least 1) and pauses the peer for `failure_backoff`, doubled for
//! each consecutive failure up to `request_timeout`; each good chunk raises the limit by one
//! again (additive increase, multiplicative decrease, as TCP does for the same reason: a slow
//! or overloaded peer gets less work without being abandoned). A peer that sends a chunk that
//! fails verification, or a bitfield of the wrong length, is banned: all its requests are
//! dropped and reassigned and it is never asked again for this blob.
//!
//! Not for: verifying bytes (the node checks chunks against the index and reports `valid`),
//! choosing which blobs to fetch, rate limiting bytes (the node's transport does), or deciding
//! whom to connect to.

use std::collections::BTreeSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use crate::bitmap::Bitmap;
use crate::rng::SplitMix64;
use crate::serving::BusyReason;
use rarity::{Rarity, rank_bit};
use sorted::SortedMap;

mod pick;
mod rarity;
#[cfg(test)]
mod sim_tests;
mod site;
mod sorted;
#[cfg(test)]
mod tests;

/// How many entries of the global rarity order to examine for a peer before sampling its
/// bitfield instead: the walk finds a chunk at once for peers that have most chunks (seeds),
/// and gives the exact rarest choice whenever one of the 64 rarest needed chunks is theirs.
const RARITY_WALK_STEPS: usize = 64;

/// How many of a peer's useful chunks the fallback scan compares. Rarest-first only needs to
/// be approximately right (every node's view of rarity is local anyway); an exact scan would
/// cost a pass over the whole bitfield for every request to a partial peer.
const SCAN_SAMPLE_CHUNKS: usize = 64;

/// Tunables of one scheduler. `Default` gives the values the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedulerConfig {
    /// Requests in flight per peer. 8 one-MiB chunks keep 8 MiB outstanding: the
    /// bandwidth-delay product of 1 Gbit/s at a 64 ms round trip, so one peer can fill a fast
    /// link, while a slow peer holds at most 8 chunks hostage until they time out.
    pub requests_per_peer_max: usize,
    /// How long a request may stay outstanding. 20 s covers 8 queued MiB at 400 KB/s; a
    /// request slower than that is better reassigned.
    pub request_timeout: Duration,
    /// How many chunks from the focus onwards count as urgent: 16 MiB ahead of a streaming
    /// client at the default chunk size.
    pub stream_window_chunks: u32,
    /// How often to refresh the bitfield of a peer that is itself still downloading: such a
    /// peer gains chunks continually. 250 ms: at 10 Gbit/s a node gains a chunk every few
    /// milliseconds, and the simulator's 10,000-node rollout went from 1.37 to 1.21 × T_min
    /// when polls went from 1 s to 250 ms; each poll is one request of at most 8 KiB.
    pub have_poll_interval: Duration,
    /// Concurrent requests for one chunk in the endgame: 2 is the original plus one duplicate,
    /// enough to route around one slow peer at the cost of at most one extra copy per chunk.
    pub endgame_duplicates_max: usize,
    /// Pause after a peer's first failure, doubled per consecutive failure up to
    /// `request_timeout`. 250 ms keeps a peer that answers `Busy` from being asked in a loop;
    /// after a `Busy` answer while this node's own requests were queued there, the limit does
    /// not grow for this long instead (see [`Event::PeerBusy`]).
    pub failure_backoff: Duration,
    /// A chunk that took longer than this from request to arrival shrinks its peer's
    /// in-flight limit by one instead of growing it: the path to that peer is queueing.
    pub request_latency_target: Duration,
    /// A new peer's in-flight limit, grown by one per chunk that arrives within
    /// `request_latency_target` (slow start): a peer behind a thin or shared link is not sent
    /// `requests_per_peer_max` requests that would outlive `request_timeout` in its queue.
    pub requests_per_peer_initial: usize,
    /// The transfer's window at its start: requests in flight over all peers. While a peer
    /// refused this transfer `Busy` for a full uplink within `window_refusals_within`, each
    /// chunk that took longer than the latency target shrinks the window by one, down to
    /// `window_min`; any other chunk that arrives while the window is full grows it by one.
    /// The target is `window_latency_target`, or one and a half times the transfer's fastest
    /// chunk when that is more (a path of high latency still opens its window).
    ///
    /// Why: a fetcher asks every peer with spare capacity, and one whose downlink is slower
    /// than the sum of its peers' uplinks has more chunks accepted than it can take. They then
    /// come in one after another at its downlink's pace, holding the senders' uplinks (a chunk
    /// leaves no faster than its receiver takes it), while the other fetchers are refused and
    /// ask round: the simulator's 32-host fan-out at 4 MiB/s got 16.7 `Busy` answers per chunk
    /// delivered without the window, 4.8 with it, and its 99th host finished at 1.06x T_min
    /// instead of 1.09x (simulations/README.md). Without refusals the window only grows: a
    /// fetcher behind a slow shared link (an edge site's) needs many requests out, and its
    /// chunks are slow because the link is, not because it asked too much.
    pub window_initial: usize,
    /// The smallest the window shrinks to: one chunk arriving while the next is asked for.
    pub window_min: usize,
    /// See `window_initial`: 350 ms is a 1 MiB chunk's own time at 4 MiB/s and a tenth of a
    /// second of queue; at 1 Gbit/s it is 40 MiB in flight.
    pub window_latency_target: Duration,
    /// See `window_initial`: how recent a `Busy` answer for a full uplink must be for slow
    /// chunks to shrink the window. 1 s is several refusals' worth of rests in a saturated
    /// swarm, where they come every few hundred milliseconds.
    pub window_refusals_within: Duration,
    /// With a site ([`Scheduler::set_site`]): how long the site may go without gaining a chunk
    /// before every node fetches any chunk from outside, not only those it owns. 5 s is many
    /// chunk times even on a 10 Mbit/s site link shared by its owners, and bounds the stall
    /// when an owner hangs without disconnecting.
    pub site_patience: Duration,
    /// With a site: how many of the site's hosts fetch from outside it (see the `site`
    /// module). 2: one more than the minimum, so one slow host does not set the pace alone.
    pub site_fetchers_max: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            requests_per_peer_max: 8,
            request_timeout: Duration::from_secs(20),
            stream_window_chunks: 16,
            have_poll_interval: Duration::from_millis(250),
            endgame_duplicates_max: 2,
            failure_backoff: Duration::from_millis(250),
            request_latency_target: Duration::from_secs(5),
            requests_per_peer_initial: 1,
            window_initial: 8,
            window_min: 2,
            window_latency_target: Duration::from_millis(350),
            window_refusals_within: Duration::from_secs(1),
            site_patience: Duration::from_secs(5),
            site_fetchers_max: 2,
        }
    }
}

/// Something that happened, reported to [`Scheduler::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event<P> {
    /// A peer that may have the blob, with its bitfield (from a `Have` response). Joining
    /// again updates the bitfield.
    PeerJoined { peer: P, have: Bitmap },
    /// A refreshed bitfield of a peer, answering a `PollHave` (or pushed by the peer).
    PeerHave { peer: P, have: Bitmap },
    /// A chunk response arrived; `valid` says whether it passed verification against the
    /// index. Report it whether or not the chunk was requested from that peer or is still
    /// needed.
    ChunkArrived { peer: P, chunk: u32, valid: bool },
    /// The request failed: `NotFound`, `Busy`, a transport error, or the node gave up on it.
    /// Failures of requests already cancelled are best not reported: if the chunk has been
    /// asked of the same peer again since, the report would end the newer request.
    RequestFailed { peer: P, chunk: u32 },
    /// The peer answered `Busy`: its uplink is full, or (`reason` super-seeding) it sent the
    /// chunk to another fetcher and leaves the spreading to them; only the first kind tells
    /// the window that peers are saturated. Either way the request ends, without the doubling
    /// failures get: a busy peer is healthy, only saturated. If this node still has other
    /// requests at the peer, the uplink is full of them: the limit drops to those and does not
    /// grow for `failure_backoff`, and the peer is asked for more as each arrives (resting it
    /// would leave its uplink idle once they are sent: a lone fetcher of a rate-limited seed
    /// took 1.49x the bound in the simulator, 1.00x without the rest). Otherwise the uplink is
    /// full of other peers' chunks: the limit drops by one and the peer rests for
    /// `failure_backoff` while other peers take the work.
    PeerBusy {
        peer: P,
        chunk: u32,
        reason: BusyReason,
    },
    /// The peer disconnected or stopped serving this blob.
    PeerLeft { peer: P },
    /// A streaming reader is waiting on `chunk`: prefer it and the window after it.
    Focus { chunk: u32 },
    /// Nothing happened but time passed: lets timeouts, polls and backoffs fire. Send one
    /// at [`Scheduler::next_wakeup`].
    Tick,
}

/// Something the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action<P> {
    /// Send `Request::Chunk` for `chunk` to `peer`.
    Request { peer: P, chunk: u32 },
    /// The request is no longer wanted (another copy arrived, or it timed out): abort it if
    /// the transport can. If its response arrives anyway, report it as usual.
    Cancel { peer: P, chunk: u32 },
    /// The peer sent bad data or a malformed bitfield: drop its outstanding requests for this
    /// blob and stop using it (the node may disconnect it). The scheduler has forgotten it.
    Ban { peer: P },
    /// Send `Request::Have` to `peer` and report the answer as `PeerHave`.
    PollHave { peer: P },
    /// Every chunk is had: verify the whole blob's digest and commit it. Emitted once.
    Completed,
}

/// Per-peer figures for status output and for future peer selection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerStats {
    /// Chunks the peer has, per its latest bitfield.
    pub chunks_available: u32,
    /// Valid chunks received that were still needed.
    pub chunks_received: u64,
    /// Valid chunks received that were already had (lost endgame races).
    pub duplicates_received: u64,
    /// Requests reported failed.
    pub requests_failed: u64,
    /// Requests that exceeded `request_timeout`.
    pub requests_timed_out: u64,
    pub in_flight: usize,
    /// The peer's current in-flight limit (shrinks on failures, grows back on successes).
    pub in_flight_limit: usize,
    /// See [`Scheduler::set_preference`].
    pub preference: i32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    #[error("progress bitmap has {actual} bits, the blob has {expected} chunks")]
    ResumeLength { expected: u32, actual: u32 },
}

#[derive(Debug, Clone)]
struct PeerState {
    have: Bitmap,
    /// `have.is_full()`, cached: it is checked for every peer on every event.
    complete: bool,
    /// `have` by rarity rank (see the `rarity` module), so that the rarest-first walk meets
    /// only the chunks the peer has.
    have_ranked: Vec<u64>,
    /// Chunk → when it was requested.
    in_flight: SortedMap<u32, Duration>,
    /// The earliest time in `in_flight`; `Duration::MAX` when empty. Expiry and the next
    /// wakeup look only at the oldest request, and each peer keeps its own: an ordered set of
    /// every request was a tree insert and removal per chunk.
    oldest_sent: Duration,
    limit: usize,
    paused_until: Duration,
    /// The limit does not grow before this: a `Busy` answer while this node's own requests
    /// were queued at the peer showed the limit that fits its queue.
    grow_from: Duration,
    consecutive_failures: u32,
    /// When the peer is next asked for its bitfield; never while it pushes it.
    next_poll: Duration,
    /// The peer pushes its bitfield as it changes ([`Scheduler::set_pushes`]).
    pushes: bool,
    preference: i32,
    /// Smoothed time from request to arrival of this peer's chunks, once one has arrived.
    latency: Option<Duration>,
    /// The scheduler's `returns` when this peer was last found to have no useful chunk
    /// (`has_useful`); `None` since its bitfield last changed. While it matches, the peer
    /// still has none: this node's needs only shrink, except when a chunk returns.
    useless_at: Option<u64>,
    stats: PeerStats,
}

impl PeerState {
    /// The earliest time in `in_flight`, as `oldest_sent` keeps it.
    fn oldest_in_flight(&self) -> Duration {
        self.in_flight
            .values()
            .copied()
            .min()
            .unwrap_or(Duration::MAX)
    }
}

/// The first word of each cache line of `words`, or'ed: a caller that reads the result (or
/// passes it to `std::hint::black_box`) has loaded each line. Touching data about to be used
/// one piece at a time first lets its cache misses overlap instead of following one another:
/// at 10,000 simulated hosts every event finds its host's state cold, and stable Rust has no
/// prefetch instruction outside `unsafe`, which the workspace does not allow.
fn touch(words: &[u64]) -> u64 {
    words.iter().step_by(8).fold(0, |acc, word| acc | word)
}

/// What the scheduler keeps per chunk for its rarity decisions, together: a decision about a
/// chunk reads several of these, and `scan_rarest` reads them for runs of consecutive chunks.
/// At 10,000 simulated hosts each array of its own was a cache miss of its own, and a record
/// twice this size (with `in_flight_since` in it) put a scan's run on twice the lines.
#[derive(Debug, Clone, Copy, Default)]
struct ChunkState {
    /// Peers (not banned) whose bitfield has the chunk.
    availability: u32,
    /// Its place in the tie-break among equally rare chunks (`Rarity::ranks`): random, or
    /// the chunk number when `in_order`.
    rank: u32,
    /// Requests in flight.
    copies: u32,
}

/// The scheduler of one blob's transfer. See the module documentation.
#[derive(Debug, Clone)]
pub struct Scheduler<P> {
    config: SchedulerConfig,
    chunk_count: u32,
    have: Bitmap,
    /// `have.count_ones()`, kept so that completion is an O(1) check on every event.
    have_count: u32,
    /// Chunks with at least one request in flight.
    in_flight_chunks: Bitmap,
    /// Requests in flight, over all peers.
    requests: usize,
    /// How many requests may be in flight over all peers (see
    /// [`SchedulerConfig::window_initial`]); more may be, just after it shrank.
    window: usize,
    /// See [`Scheduler::set_requests_elsewhere`].
    requests_elsewhere: usize,
    /// When a peer last answered `Busy` because its uplink was full.
    uplink_refused_at: Option<Duration>,
    /// The shortest time from request to arrival of any chunk so far: the path's own latency,
    /// without queues; `Duration::MAX` before the first.
    fastest: Duration,
    /// Per chunk, indexed by chunk.
    chunks: Vec<ChunkState>,
    /// Per chunk, for those in `in_flight_chunks`: since when it has been continuously in
    /// flight.
    in_flight_since: Vec<Duration>,
    in_order: bool,
    /// Every chunk that is needed and not in flight, in `(availability, tiebreak, chunk)`
    /// order.
    rarity: Rarity,
    peers: SortedMap<P, PeerState>,
    /// No peer that is still downloading is due a poll before this: most events end
    /// `poll_peers` here, without visiting every peer.
    polls_due_from: Duration,
    /// How many times a needed chunk went back from in flight to un-requested (a request that
    /// failed, timed out or left with its peer): each may make a peer useful again.
    returns: u64,
    /// `fill`'s list of peers with spare capacity, kept to reuse its allocation.
    fill_order: Vec<(P, i32)>,
    /// During an endgame fill, the chunks in flight that are overdue for a duplicate
    /// (`pick::find_overdue`, once per fill when it first needs them, which `overdue_found`
    /// tells); kept up to date as the fill adds requests.
    overdue: Bitmap,
    overdue_found: bool,
    banned: BTreeSet<P>,
    focus: Option<u32>,
    rng: SplitMix64,
    now: Duration,
    completed_reported: bool,
    site: Option<site::Site<P>>,
}

impl<P: Clone + Eq + Ord + Hash + Debug> Scheduler<P> {
    /// A scheduler for a blob of `chunk_count` chunks, none had yet. `seed` drives every
    /// random choice: the node passes OS randomness, the simulator a per-node seed.
    pub fn new(chunk_count: u32, mut config: SchedulerConfig, seed: u64) -> Self {
        config.requests_per_peer_max = config.requests_per_peer_max.max(1);
        config.endgame_duplicates_max = config.endgame_duplicates_max.max(1);
        config.window_min = config.window_min.max(1);
        config.window_initial = config.window_initial.max(config.window_min);
        let mut rng = SplitMix64::new(seed);
        let tiebreak: Vec<u32> = (0..chunk_count).map(|_| rng.next_u64() as u32).collect();
        let mut rarity = Rarity::new(&tiebreak);
        let ranks = rarity.ranks();
        for &rank in &ranks {
            rarity.insert(0, rank);
        }
        Scheduler {
            window: config.window_initial,
            requests_elsewhere: 0,
            uplink_refused_at: None,
            fastest: Duration::MAX,
            config,
            chunk_count,
            have: Bitmap::new(chunk_count),
            have_count: 0,
            in_flight_chunks: Bitmap::new(chunk_count),
            requests: 0,
            chunks: ranks
                .iter()
                .map(|&rank| ChunkState {
                    rank,
                    ..ChunkState::default()
                })
                .collect(),
            in_flight_since: vec![Duration::ZERO; chunk_count as usize],
            in_order: false,
            rarity,
            peers: SortedMap::default(),
            polls_due_from: Duration::MAX,
            returns: 0,
            fill_order: Vec::new(),
            overdue: Bitmap::new(chunk_count),
            overdue_found: false,
            banned: BTreeSet::new(),
            focus: None,
            rng,
            now: Duration::ZERO,
            completed_reported: false,
            site: None,
        }
    }

    /// Records a chunk as had without fetching it (progress resumed from disk). It is never
    /// requested again. Out-of-range chunks are ignored.
    pub fn mark_have(&mut self, chunk: u32) {
        if chunk < self.chunk_count {
            self.acquire(chunk);
        }
    }

    /// [`Scheduler::mark_have`] for every set bit of a stored progress bitmap.
    pub fn resume(&mut self, have: &Bitmap) -> Result<(), SchedulerError> {
        if have.len() != self.chunk_count {
            return Err(SchedulerError::ResumeLength {
                expected: self.chunk_count,
                actual: have.len(),
            });
        }
        for chunk in have.iter_ones() {
            self.acquire(chunk);
        }
        Ok(())
    }

    /// Sets a peer's preference score: peers with higher scores are offered work first, so
    /// they get the focus and rarest chunks and, when little is left, all of it. Default 0.
    ///
    /// This is the extension point for locality: the node will score peers on the same site
    /// or with lower latency higher. A score for an unknown peer is ignored; it resets when the
    /// peer leaves.
    pub fn set_preference(&mut self, peer: &P, preference: i32) {
        if let Some(state) = self.peers.get_mut(peer) {
            state.preference = preference;
            state.stats.preference = preference;
        }
    }

    /// How many requests the node has in flight for its other transfers. They come in over
    /// the same downlink, so they count against this transfer's window (a node pulls several
    /// blobs of an image at once; the simulator, one blob per host, never sets this). A
    /// transfer with no request of its own in flight may still ask for one, so that none waits
    /// on the others for ever.
    pub fn set_requests_elsewhere(&mut self, requests: usize) {
        self.requests_elsewhere = requests;
    }

    /// `peer` refused another of the node's transfers `Busy` for a full uplink at `at` (this
    /// scheduler's time): its uplink is as full for this transfer, which learns so without a
    /// refusal of its own. Until `at` plus `failure_backoff` the peer is not asked for more
    /// than this transfer already has out there (none: it rests), and the window reads slow
    /// chunks as it does after a refusal of its own (see [`Event::PeerBusy`]). A node pulls
    /// the blobs of an image at once, and in a 32-node fan-out at 4 MiB/s each of its four
    /// transfers found every full uplink by asking: 12 refusals per MiB delivered, against 4.6
    /// in the simulator's one blob per host (docs/benchmarks.md). The simulator never calls
    /// this. A refusal already past its rest changes nothing.
    pub fn uplink_refused_elsewhere(&mut self, peer: &P, at: Duration) {
        let until = at.saturating_add(self.config.failure_backoff);
        if until <= self.now {
            return;
        }
        self.uplink_refused_at = Some(self.uplink_refused_at.map_or(at, |last| last.max(at)));
        if let Some(state) = self.peers.get_mut(peer) {
            if state.in_flight.len() == 0 {
                state.paused_until = state.paused_until.max(until);
            } else {
                state.limit = state.in_flight.len();
                state.grow_from = state.grow_from.max(until);
            }
        }
    }

    /// Whether the window is full: requests in flight, here and (see
    /// [`Scheduler::set_requests_elsewhere`]) for the node's other transfers, fill it, and this
    /// transfer has one of its own out.
    fn window_full(&self) -> bool {
        self.requests > 0 && self.requests + self.requests_elsewhere >= self.window
    }

    /// Whether `peer` pushes its bitfield as it changes (a have feed, `crate::feed`): then
    /// it is never polled; when its pushes stop, polls resume from now.
    pub fn set_pushes(&mut self, peer: &P, pushes: bool) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.pushes = pushes;
        state.next_poll = if pushes { Duration::MAX } else { self.now };
        if !pushes {
            self.polls_due_from = self.polls_due_from.min(self.now);
        }
    }

    /// Breaks ties among equally rare chunks by chunk number (`true`) or by a random order
    /// (`false`, the default). In order, a peer that has every chunk is asked for them front
    /// to back, which lets the caller hash the blob while it arrives; at random, nodes
    /// fetching the same blob from the same peers ask for different chunks and then trade
    /// them. Switching draws a fresh random order.
    pub fn set_in_order(&mut self, in_order: bool) {
        if in_order == self.in_order {
            return;
        }
        self.in_order = in_order;
        let tiebreak: Vec<u32> = (0..self.chunk_count)
            .map(|chunk| {
                if in_order {
                    chunk
                } else {
                    self.rng.next_u64() as u32
                }
            })
            .collect();
        self.rarity.reset(&tiebreak);
        for (state, rank) in self.chunks.iter_mut().zip(self.rarity.ranks()) {
            state.rank = rank;
        }
        for chunk in 0..self.chunk_count {
            if self.unrequested(chunk) {
                let state = self.chunks[chunk as usize];
                self.rarity.insert(state.availability, state.rank);
            }
        }
        for (_, state) in self.peers.iter_mut() {
            state.have_ranked.iter_mut().for_each(|w| *w = 0);
            for chunk in state.have.iter_ones() {
                let (word, bit) = rank_bit(self.chunks[chunk as usize].rank);
                state.have_ranked[word] |= bit;
            }
        }
    }

    /// Turns on one copy per site (see the `site` module): this node's rank key for this
    /// blob (the same on every node, such as a hash of its peer id and the blob). Peers then
    /// count as outside the site unless added with [`Scheduler::add_site_member`].
    pub fn set_site(&mut self, own_key: u64) {
        self.site = Some(site::Site::new(
            own_key,
            self.config.site_fetchers_max,
            self.config.site_patience,
            self.now,
        ));
    }

    /// Marks `peer` as a site-mate with its rank key for this blob. Ignored without a site.
    pub fn add_site_member(&mut self, peer: &P, key: u64) {
        if let Some(site) = &mut self.site {
            site.add_member(peer.clone(), key);
        }
    }

    /// Whether a request to `peer` may only be for chunks this node owns for its site: the
    /// peer is outside the site and the site is not stalled.
    fn owners_only(&self, peer: &P) -> bool {
        self.site
            .as_ref()
            .is_some_and(|site| !site.is_member(peer) && !site.stalled(self.now))
    }

    /// This node's site fetchers (see the `site` module), when it has a site.
    fn site_fetchers(&self) -> Option<Vec<u64>> {
        let site = self.site.as_ref()?;
        Some(site.fetchers(|peer| self.peers.contains_key(peer)))
    }

    /// Whether this node owns `chunk` for its site (always without a site), given
    /// [`Scheduler::site_fetchers`].
    fn owned_here(&self, chunk: u32, fetchers: Option<&[u64]>) -> bool {
        match (&self.site, fetchers) {
            (Some(site), Some(fetchers)) => site.owns(chunk, fetchers),
            _ => true,
        }
    }

    /// Processes one event at time `now` (a duration since any fixed epoch; a time earlier
    /// than one already seen counts as that one) and returns what to do, in order.
    pub fn handle(&mut self, event: Event<P>, now: Duration) -> Vec<Action<P>> {
        self.now = self.now.max(now);
        let mut actions = Vec::new();
        // The event first: a response that arrives while its request is due to expire counts
        // as an answer, and a peer that left gets no `Cancel`.
        match event {
            Event::PeerJoined { peer, have } | Event::PeerHave { peer, have } => {
                self.update_peer(peer, have, &mut actions);
            }
            Event::ChunkArrived { peer, chunk, valid } => {
                self.chunk_arrived(peer, chunk, valid, &mut actions);
            }
            Event::RequestFailed { peer, chunk } => self.request_failed(&peer, chunk),
            Event::PeerBusy {
                peer,
                chunk,
                reason,
            } => self.peer_busy(&peer, chunk, reason),
            Event::PeerLeft { peer } => {
                self.forget_peer(&peer);
            }
            Event::Focus { chunk } => self.focus = Some(chunk),
            Event::Tick => {}
        }
        self.expire_requests(&mut actions);
        self.poll_peers(&mut actions);
        self.fill(&mut actions);
        if self.is_complete() && !self.completed_reported {
            self.completed_reported = true;
            // Requests still out (for chunks resumed from disk while in flight) are moot.
            let moot: Vec<(P, u32)> = self
                .requests_by_age()
                .into_iter()
                .map(|(_, peer, chunk)| (peer.clone(), chunk))
                .collect();
            for (peer, chunk) in moot {
                self.end_request(&peer, chunk);
                actions.push(Action::Cancel { peer, chunk });
            }
            actions.push(Action::Completed);
        }
        actions
    }

    /// `peer`'s chunks as its latest bitfield told them, if it is a peer of this transfer.
    pub fn peer_have(&self, peer: &P) -> Option<&Bitmap> {
        self.peers.get(peer).map(|state| &state.have)
    }

    /// The chunks had so far.
    pub fn have(&self) -> &Bitmap {
        &self.have
    }

    /// Whether `chunk` is still wanted: the node writes an arriving valid chunk only if so.
    pub fn needs(&self, chunk: u32) -> bool {
        chunk < self.chunk_count && !self.have.get(chunk)
    }

    /// Every request in flight, as (peer, chunk), oldest first.
    pub fn requests_in_flight(&self) -> impl Iterator<Item = (&P, u32)> {
        self.requests_by_age()
            .into_iter()
            .map(|(_, peer, chunk)| (peer, chunk))
    }

    /// Every request in flight as (sent at, peer, chunk), in that order: what expiry and
    /// completion cancel, in the order they cancel it.
    fn requests_by_age(&self) -> Vec<(Duration, &P, u32)> {
        let mut requests: Vec<(Duration, &P, u32)> = self
            .peers
            .iter()
            .flat_map(|(peer, state)| state.in_flight.iter().map(move |(&c, &t)| (t, peer, c)))
            .collect();
        requests.sort_unstable();
        requests
    }

    /// When the oldest request in flight was sent.
    fn oldest_sent(&self) -> Option<Duration> {
        self.peers
            .values()
            .map(|state| state.oldest_sent)
            .min()
            .filter(|&sent| sent != Duration::MAX)
    }

    pub fn is_complete(&self) -> bool {
        self.have_count == self.chunk_count
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunk_count
    }

    /// Requests in flight, over all peers.
    pub fn in_flight(&self) -> usize {
        self.requests
    }

    pub fn peers(&self) -> impl Iterator<Item = (&P, PeerStats)> {
        self.peers.iter().map(|(peer, state)| {
            let mut stats = state.stats;
            stats.chunks_available = state.have.count_ones();
            stats.in_flight = state.in_flight.len();
            stats.in_flight_limit = state.limit;
            (peer, stats)
        })
    }

    /// Peers banned from this transfer.
    pub fn banned(&self) -> impl Iterator<Item = &P> {
        self.banned.iter()
    }

    /// The earliest time at which a `Tick` would do something (a request times out, a paused
    /// peer resumes, a poll is due, a request in the endgame becomes overdue for a duplicate),
    /// or `None` if only a new event can change anything. A `Tick` at any other time does
    /// nothing at all, not even draw a random number.
    pub fn next_wakeup(&self) -> Option<Duration> {
        let mut earliest: Option<Duration> = None;
        let mut consider = |t: Duration| earliest = Some(earliest.map_or(t, |e| e.min(t)));
        if let Some(sent) = self.oldest_sent() {
            consider(sent + self.config.request_timeout);
        }
        if self.is_complete() {
            return earliest;
        }
        if let Some(at) = self.next_overdue() {
            consider(at);
        }
        for state in self.peers.values() {
            if state.paused_until > self.now {
                consider(state.paused_until);
            }
            if !state.complete && !state.pushes {
                consider(state.next_poll);
            }
        }
        earliest
    }

    // ---- bookkeeping that keeps `rarity`, `chunks` and `in_flight_*` consistent ----

    fn unrequested(&self, chunk: u32) -> bool {
        !self.have.get(chunk) && self.chunks[chunk as usize].copies == 0
    }

    /// What orders chunks by rarity: availability, then the tie-break's rank.
    fn rarity_key(&self, chunk: u32) -> (u32, u32) {
        let state = &self.chunks[chunk as usize];
        (state.availability, state.rank)
    }

    /// Whether the peer at `at` in `peers` holds a chunk that is needed and not in flight: a
    /// peer without one is skipped without walking the rarity order (late in a transfer, most
    /// idle peers are). A pass over the words, with no state to keep for every peer on every
    /// chunk change, and none at all while nothing can have changed the answer
    /// (`PeerState::useless_at`).
    fn has_useful(&mut self, at: usize) -> bool {
        let Scheduler {
            peers,
            have,
            in_flight_chunks,
            returns,
            ..
        } = self;
        let state = peers.value_at_mut(at);
        if state.useless_at == Some(*returns) {
            return false;
        }
        let useful = state
            .have
            .words()
            .iter()
            .zip(have.words())
            .zip(in_flight_chunks.words())
            .any(|((theirs, ours), in_flight)| theirs & !ours & !in_flight != 0);
        if !useful {
            state.useless_at = Some(*returns);
        }
        useful
    }

    fn acquire(&mut self, chunk: u32) {
        if self.unrequested(chunk) {
            let state = self.chunks[chunk as usize];
            self.rarity.remove(state.availability, state.rank);
        }
        if self.have.set(chunk) {
            self.have_count += 1;
        }
    }

    fn add_copy(&mut self, chunk: u32) {
        if self.unrequested(chunk) {
            let state = self.chunks[chunk as usize];
            self.rarity.remove(state.availability, state.rank);
        }
        self.chunks[chunk as usize].copies += 1;
        if self.in_flight_chunks.set(chunk) {
            self.in_flight_since[chunk as usize] = self.now;
        }
    }

    fn remove_copy(&mut self, chunk: u32) {
        let state = &mut self.chunks[chunk as usize];
        state.copies = state.copies.saturating_sub(1);
        if state.copies == 0 {
            let state = *state;
            self.in_flight_chunks.clear(chunk);
            if !self.have.get(chunk) {
                self.rarity.insert(state.availability, state.rank);
                self.returns += 1;
            }
        }
    }

    fn change_availability(&mut self, chunk: u32, gained: bool) {
        let count = self.chunks[chunk as usize].availability;
        let next = if gained {
            count + 1
        } else {
            count.saturating_sub(1)
        };
        if self.unrequested(chunk) {
            let rank = self.chunks[chunk as usize].rank;
            self.rarity.remove(count, rank);
            self.rarity.insert(next, rank);
        }
        self.chunks[chunk as usize].availability = next;
    }

    /// Applies the change from `old` to `new` (a peer's bitfields; `old` may have no bits) to
    /// availability and to the peer's bitfield by rank; whether the peer gained any chunk.
    fn apply_availability(&mut self, old: &Bitmap, new: &Bitmap, ranked: &mut [u64]) -> bool {
        // The changed chunks' records are loaded together first, as `touch` does for words.
        let changed = new
            .words()
            .iter()
            .enumerate()
            .map(|(i, &now_word)| (i, now_word ^ old.words().get(i).copied().unwrap_or(0)));
        let mut counts = 0;
        for (i, mut bits) in changed {
            while bits != 0 {
                let chunk = i * 64 + bits.trailing_zeros() as usize;
                counts |= self.chunks[chunk].availability;
                bits &= bits - 1;
            }
        }
        std::hint::black_box(counts);
        let mut gained_any = false;
        for (i, &now_word) in new.words().iter().enumerate() {
            let before = old.words().get(i).copied().unwrap_or(0);
            let mut gained = now_word & !before;
            let mut lost = before & !now_word;
            gained_any |= gained != 0;
            while gained != 0 {
                let chunk = i as u32 * 64 + gained.trailing_zeros();
                self.change_availability(chunk, true);
                let (word, bit) = rank_bit(self.chunks[chunk as usize].rank);
                ranked[word] |= bit;
                gained &= gained - 1;
            }
            while lost != 0 {
                let chunk = i as u32 * 64 + lost.trailing_zeros();
                self.change_availability(chunk, false);
                let (word, bit) = rank_bit(self.chunks[chunk as usize].rank);
                ranked[word] &= !bit;
                lost &= lost - 1;
            }
        }
        gained_any
    }

    // ---- events ----

    fn update_peer(&mut self, peer: P, have: Bitmap, actions: &mut Vec<Action<P>>) {
        if self.banned.contains(&peer) {
            actions.push(Action::Ban { peer });
            return;
        }
        if have.len() != self.chunk_count {
            self.ban(peer, actions);
            return;
        }
        let next_poll = self.now + self.config.have_poll_interval;
        // The peer's bitfield is taken out while availability follows the change.
        let old = match self.peers.get_mut(&peer) {
            Some(state) => {
                state.complete = have.is_full();
                if !state.pushes {
                    state.next_poll = next_poll;
                    self.polls_due_from = self.polls_due_from.min(next_poll);
                }
                let ranked = std::mem::take(&mut state.have_ranked);
                (std::mem::replace(&mut state.have, Bitmap::new(0)), ranked)
            }
            None => {
                self.polls_due_from = self.polls_due_from.min(next_poll);
                self.peers.insert(
                    peer.clone(),
                    PeerState {
                        complete: have.is_full(),
                        have_ranked: Vec::new(),
                        have: Bitmap::new(0),
                        in_flight: SortedMap::default(),
                        oldest_sent: Duration::MAX,
                        limit: self
                            .config
                            .requests_per_peer_initial
                            .clamp(1, self.config.requests_per_peer_max),
                        paused_until: Duration::ZERO,
                        grow_from: Duration::ZERO,
                        consecutive_failures: 0,
                        next_poll,
                        pushes: false,
                        preference: 0,
                        latency: None,
                        useless_at: None,
                        stats: PeerStats::default(),
                    },
                );
                (
                    Bitmap::new(0),
                    vec![0; self.chunk_count.div_ceil(64) as usize],
                )
            }
        };
        let (old, mut ranked) = old;
        let gained = self.apply_availability(&old, &have, &mut ranked);
        if let Some(state) = self.peers.get_mut(&peer) {
            state.have = have;
            state.have_ranked = ranked;
            state.useless_at = None;
        }
        if let Some(site) = &mut self.site
            && gained
            && site.is_member(&peer)
        {
            site.progressed(self.now);
        }
    }

    fn chunk_arrived(&mut self, peer: P, chunk: u32, valid: bool, actions: &mut Vec<Action<P>>) {
        if !valid {
            self.ban(peer, actions);
            return;
        }
        if chunk >= self.chunk_count {
            return;
        }
        let needed = !self.have.get(chunk);
        let window_was_full = self.window_full();
        if let Some(state) = self.peers.get_mut(&peer) {
            if needed {
                state.stats.chunks_received += 1;
            } else {
                state.stats.duplicates_received += 1;
            }
            state.consecutive_failures = 0;
            let took = state
                .in_flight
                .get(&chunk)
                .map(|&sent| self.now.saturating_sub(sent));
            if let Some(took) = took {
                state.latency = Some(match state.latency {
                    Some(latency) => (latency * 7 + took) / 8,
                    None => took,
                });
            }
            let slow = took.is_some_and(|took| took > self.config.request_latency_target);
            state.limit = if slow {
                state.limit.saturating_sub(1).max(1)
            } else if self.now < state.grow_from {
                state.limit
            } else {
                (state.limit + 1).min(self.config.requests_per_peer_max)
            };
            self.end_request(&peer, chunk);
            if let Some(took) = took {
                self.adjust_window(took, window_was_full);
            }
        }
        if !needed {
            return;
        }
        self.acquire(chunk);
        if let Some(site) = &mut self.site
            && site.is_member(&peer)
        {
            site.progressed(self.now);
        }
        // The other copies of an endgame duplicate are no longer wanted.
        if self.chunks[chunk as usize].copies > 0 {
            let holders: Vec<P> = self
                .peers
                .iter()
                .filter(|(_, state)| state.in_flight.contains_key(&chunk))
                .map(|(p, _)| p.clone())
                .collect();
            for holder in holders {
                self.end_request(&holder, chunk);
                actions.push(Action::Cancel {
                    peer: holder,
                    chunk,
                });
            }
        }
    }

    fn request_failed(&mut self, peer: &P, chunk: u32) {
        // A failure of a request already cancelled or timed out was counted then.
        if !self.end_request(peer, chunk) {
            return;
        }
        if let Some(state) = self.peers.get_mut(peer) {
            state.stats.requests_failed += 1;
        }
        self.penalize(peer);
    }

    fn peer_busy(&mut self, peer: &P, chunk: u32, reason: BusyReason) {
        if !self.end_request(peer, chunk) {
            return;
        }
        if reason == BusyReason::Egress {
            self.uplink_refused_at = Some(self.now);
        }
        let now = self.now;
        let backoff = self.config.failure_backoff;
        if let Some(state) = self.peers.get_mut(peer) {
            if state.in_flight.len() == 0 {
                state.limit = state.limit.saturating_sub(1).max(1);
                state.paused_until = now + backoff;
            } else {
                state.limit = state.in_flight.len();
                state.grow_from = now + backoff;
            }
        }
    }

    /// Shrinks the window by one for a chunk that `took` longer than the latency target while
    /// peers refuse this transfer for full uplinks; otherwise grows it by one if it was full
    /// (a window that does not limit the transfer learns nothing from its chunks).
    fn adjust_window(&mut self, took: Duration, window_was_full: bool) {
        self.fastest = self.fastest.min(took);
        let target = self
            .config
            .window_latency_target
            .max(self.fastest.saturating_add(self.fastest / 2));
        let refused = self
            .uplink_refused_at
            .is_some_and(|at| self.now < at.saturating_add(self.config.window_refusals_within));
        if took > target && refused {
            self.window = self.window.saturating_sub(1).max(self.config.window_min);
        } else if window_was_full {
            self.window = self.window.saturating_add(1);
        }
    }

    /// Halves the peer's limit and pauses it, longer for each consecutive failure.
    fn penalize(&mut self, peer: &P) {
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        state.consecutive_failures = state.consecutive_failures.saturating_add(1);
        state.limit = (state.limit / 2).max(1);
        let doublings = state.consecutive_failures.saturating_sub(1).min(16);
        let backoff = self
            .config
            .failure_backoff
            .saturating_mul(1 << doublings)
            .min(self.config.request_timeout);
        state.paused_until = self.now + backoff;
    }

    fn expire_requests(&mut self, actions: &mut Vec<Action<P>>) {
        let timeout = self.config.request_timeout;
        let now = self.now;
        if self.oldest_sent().is_none_or(|sent| sent + timeout > now) {
            return;
        }
        let expired: Vec<(P, u32)> = self
            .requests_by_age()
            .into_iter()
            .take_while(|&(sent, _, _)| sent + timeout <= now)
            .map(|(_, peer, chunk)| (peer.clone(), chunk))
            .collect();
        let mut penalized: BTreeSet<P> = BTreeSet::new();
        for (peer, chunk) in expired {
            self.end_request(&peer, chunk);
            if let Some(state) = self.peers.get_mut(&peer) {
                state.stats.requests_timed_out += 1;
            }
            actions.push(Action::Cancel {
                peer: peer.clone(),
                chunk,
            });
            penalized.insert(peer);
        }
        // Requests sent together expire together: one penalty per peer and pass.
        for peer in penalized {
            self.penalize(&peer);
        }
    }

    /// Removes a peer and its requests, keeping availability and rarity consistent.
    fn forget_peer(&mut self, peer: &P) {
        let Some(state) = self.peers.remove(peer) else {
            return;
        };
        for chunk in state.have.iter_ones() {
            self.change_availability(chunk, false);
        }
        self.requests -= state.in_flight.len();
        for &chunk in state.in_flight.keys() {
            self.remove_copy(chunk);
        }
    }

    fn start_request(&mut self, peer: &P, chunk: u32) {
        let now = self.now;
        let Some(state) = self.peers.get_mut(peer) else {
            return;
        };
        if state.in_flight.insert(chunk, now).is_some() {
            // Asked again of the same peer (never, as picks go): the old request is replaced.
            state.oldest_sent = state.oldest_in_flight();
        } else {
            self.requests += 1;
            state.oldest_sent = state.oldest_sent.min(now);
        }
        let overdue = pick::request_overdue(state.latency, now, now);
        // A chunk is overdue while every request for it is.
        if self.chunks[chunk as usize].copies == 0 && overdue {
            self.overdue.set(chunk);
        } else if !overdue {
            self.overdue.clear(chunk);
        }
        self.add_copy(chunk);
    }

    /// Ends the request for `chunk` to `peer`, whatever the reason; false if there was none.
    fn end_request(&mut self, peer: &P, chunk: u32) -> bool {
        let Some(state) = self.peers.get_mut(peer) else {
            return false;
        };
        let Some(sent) = state.in_flight.remove(&chunk) else {
            return false;
        };
        if sent == state.oldest_sent {
            state.oldest_sent = state.oldest_in_flight();
        }
        self.requests -= 1;
        self.remove_copy(chunk);
        true
    }

    fn ban(&mut self, peer: P, actions: &mut Vec<Action<P>>) {
        self.forget_peer(&peer);
        self.banned.insert(peer.clone());
        actions.push(Action::Ban { peer });
    }

    fn poll_peers(&mut self, actions: &mut Vec<Action<P>>) {
        if self.is_complete() {
            return;
        }
        let now = self.now;
        if now < self.polls_due_from {
            return;
        }
        let interval = self.config.have_poll_interval;
        let mut due_from = Duration::MAX;
        for (peer, state) in self.peers.iter_mut() {
            if state.complete {
                continue;
            }
            if state.next_poll <= now {
                state.next_poll = now + interval;
                actions.push(Action::PollHave { peer: peer.clone() });
            }
            due_from = due_from.min(state.next_poll);
        }
        self.polls_due_from = due_from;
    }

    /// Checks the internal invariants; tests call it after every event.
    #[cfg(test)]
    fn check_invariants(&self) {
        for c in 0..self.chunk_count {
            let i = c as usize;
            let holders = self.peers.values().filter(|p| p.have.get(c)).count() as u32;
            assert_eq!(self.chunks[i].availability, holders, "availability of {c}");
            let copies = self
                .peers
                .values()
                .filter(|p| p.in_flight.contains_key(&c))
                .count() as u32;
            assert_eq!(self.chunks[i].copies, copies, "copies of {c}");
            assert_eq!(self.in_flight_chunks.get(c), copies > 0, "in flight {c}");
            // In flight continuously since no later than its oldest request was sent.
            if let Some(oldest) = self
                .peers
                .values()
                .filter_map(|p| p.in_flight.get(&c))
                .min()
            {
                assert!(self.in_flight_since[i] <= *oldest, "since {c}");
            }
            assert_eq!(
                self.rarity
                    .contains(self.chunks[i].availability, self.chunks[i].rank),
                self.unrequested(c),
                "rarity membership of {c}"
            );
        }
        assert_eq!(self.have_count, self.have.count_ones());
        assert!(self.window >= self.config.window_min);
        assert_eq!(
            self.requests,
            self.peers
                .values()
                .map(|s| s.in_flight.len())
                .sum::<usize>()
        );
        for state in self.peers.values() {
            assert_eq!(state.oldest_sent, state.oldest_in_flight());
        }
        let needed_unrequested = (0..self.chunk_count)
            .filter(|&c| self.unrequested(c))
            .count();
        assert_eq!(self.rarity.len(), needed_unrequested);
        assert_eq!(
            self.rarity.bits_set(),
            needed_unrequested,
            "one level per chunk"
        );
        for (peer, state) in self.peers.iter() {
            assert!(!self.banned.contains(peer), "banned peer {peer:?} kept");
            assert_eq!(state.complete, state.have.is_full());
            for c in 0..self.chunk_count {
                let (word, bit) = rank_bit(self.chunks[c as usize].rank);
                assert_eq!(
                    state.have_ranked[word] & bit != 0,
                    state.have.get(c),
                    "ranked {c}"
                );
            }
            assert!(state.complete || state.next_poll >= self.polls_due_from);
            if state.useless_at == Some(self.returns) {
                assert!(
                    state.have.iter_ones().all(|c| !self.unrequested(c)),
                    "{peer:?} marked useless holds a needed un-requested chunk"
                );
            }
            assert!(!state.pushes || state.next_poll == Duration::MAX);
            assert!(state.limit >= 1 && state.limit <= self.config.requests_per_peer_max);
            assert!(state.in_flight.len() <= self.config.requests_per_peer_max);
            assert!(state.in_flight.keys().all(|&c| c < self.chunk_count));
        }
    }
}
