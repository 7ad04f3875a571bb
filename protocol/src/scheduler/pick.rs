//! Choosing requests: which peers get work first, and which chunk each gets (focus window,
//! rarest first, endgame duplicates), as the parent module's documentation describes.

use std::cmp::Reverse;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use super::rarity::Walk;
use super::{Action, PeerState, RARITY_WALK_STEPS, SCAN_SAMPLE_CHUNKS, Scheduler, touch};

/// How many times its peer's usual delivery time a request may take before the endgame sends
/// a duplicate: twice leaves room for ordinary jitter and still routes around a stalled peer
/// long before `request_timeout`.
const ENDGAME_OVERDUE_FACTOR: u32 = 2;

impl<P: Clone + Eq + Ord + Hash + Debug> Scheduler<P> {
    pub(super) fn fill(&mut self, actions: &mut Vec<Action<P>>) {
        // A full window asks for nothing, whoever has room: in a saturated swarm most events
        // find it so, and the pass over every peer's state below would be for nothing.
        if self.is_complete() || self.window_full() {
            return;
        }
        let now = self.now;
        let mut order = std::mem::take(&mut self.fill_order);
        order.clear();
        let mut bitfields = 0;
        for (peer, state) in self.peers.iter() {
            if state.in_flight.len() < state.limit && state.paused_until <= now {
                order.push((peer.clone(), state.preference));
                if state.useless_at != Some(self.returns) {
                    bitfields |= touch(state.have.words());
                }
            }
        }
        std::hint::black_box(bitfields);
        if order.is_empty() {
            self.fill_order = order;
            return;
        }
        // A fill that asks for nothing leaves no trace, its random draws included: a driver
        // that sends a `Tick` when nothing is due (the node ticks every 100 ms) then gets the
        // same actions as one that ticks only at `next_wakeup` (the simulator).
        let rng_before = self.rng.clone();
        let requests_before = actions.len();
        // A random rotation spreads equal peers fairly; the stable sort then puts preferred
        // peers first.
        let start = self.rng.below(order.len());
        order.rotate_left(start);
        order.sort_by_key(|(_, preference)| Reverse(*preference));
        let fetchers = self.site_fetchers();
        let endgame_before = self.endgame();
        self.overdue_found = false;
        self.fill_pass(&order, fetchers.as_deref(), actions);
        // A pass that asked for the last un-requested chunks started the endgame after the
        // peers before them were passed over: they get their duplicates now, not at the next
        // event (or at the next tick of a driver that ticks more often than it must).
        if !endgame_before && self.endgame() {
            self.fill_pass(&order, fetchers.as_deref(), actions);
        }
        if actions.len() == requests_before {
            self.rng = rng_before;
        }
        order.clear();
        self.fill_order = order;
    }

    /// Gives each peer of `order`, in turn, requests up to its limit.
    fn fill_pass(
        &mut self,
        order: &[(P, i32)],
        fetchers: Option<&[u64]>,
        actions: &mut Vec<Action<P>>,
    ) {
        for (peer, _) in order {
            if self.window_full() {
                break;
            }
            let owners_only = self.owners_only(peer).then_some(fetchers);
            let Some(at) = self.peers.position(peer) else {
                continue;
            };
            loop {
                if !self.overdue_found && self.endgame() {
                    self.find_overdue();
                }
                let state = self.peers.value_at(at);
                if state.in_flight.len() >= state.limit || self.window_full() {
                    break;
                }
                let random = self.rng.next_u64();
                // In the endgame no peer has a needed chunk that is not in flight.
                let useful = !self.endgame() && self.has_useful(at);
                let state = self.peers.value_at(at);
                let Some(chunk) = self.pick(state, random, useful, owners_only) else {
                    break;
                };
                self.start_request(peer, chunk);
                actions.push(Action::Request {
                    peer: peer.clone(),
                    chunk,
                });
            }
        }
    }

    /// The next time a chunk in flight becomes overdue for an endgame duplicate (see
    /// [`Scheduler::pick_endgame`]), after now; `None` outside the endgame.
    pub(super) fn next_overdue(&self) -> Option<Duration> {
        if !self.endgame() {
            return None;
        }
        self.peers
            .values()
            .filter_map(|state| Some((state, state.latency?)))
            .flat_map(|(state, latency)| {
                let after = latency.saturating_mul(ENDGAME_OVERDUE_FACTOR);
                state.in_flight.values().map(move |&sent| sent + after)
            })
            .filter(|&at| at > self.now)
            .min()
    }

    /// Works out `overdue` for the endgame's fill: a chunk in flight is overdue
    /// when every request for it has been out [`ENDGAME_OVERDUE_FACTOR`] times its peer's
    /// smoothed delivery time or longer (at once for a peer that has delivered nothing yet).
    /// One pass over the requests, where asking every peer about every candidate chunk for
    /// every idle peer was a fifth of the simulator's time.
    fn find_overdue(&mut self) {
        let mut overdue = std::mem::take(&mut self.overdue);
        overdue.clone_from(&self.in_flight_chunks);
        for state in self.peers.values() {
            for (&chunk, &sent) in state.in_flight.iter() {
                if !request_overdue(state.latency, sent, self.now) {
                    overdue.clear(chunk);
                }
            }
        }
        self.overdue = overdue;
        self.overdue_found = true;
    }

    /// A chunk to ask `peer` for; with `owners_only` (a peer outside this node's site: the
    /// site's fetchers), only one this node owns for its site.
    /// `useful`: whether the peer holds a needed chunk not in flight (`has_useful`).
    fn pick(
        &self,
        peer: &PeerState,
        random: u64,
        useful: bool,
        owners_only: Option<Option<&[u64]>>,
    ) -> Option<u32> {
        let allowed =
            |chunk: u32| owners_only.is_none_or(|fetchers| self.owned_here(chunk, fetchers));
        self.pick_focus(peer, &allowed)
            .or_else(|| {
                useful
                    .then(|| self.pick_rarest(peer, random, &allowed))
                    .flatten()
            })
            .or_else(|| self.pick_endgame(peer, &allowed))
    }

    fn focus_window(&self) -> std::ops::Range<u32> {
        match self.focus {
            Some(focus) if focus < self.chunk_count => {
                let end = focus
                    .saturating_add(self.config.stream_window_chunks)
                    .min(self.chunk_count);
                focus..end
            }
            _ => 0..0,
        }
    }

    fn pick_focus(&self, peer: &PeerState, allowed: &impl Fn(u32) -> bool) -> Option<u32> {
        self.focus_window()
            .find(|&c| self.unrequested(c) && peer.have.get(c) && allowed(c))
    }

    fn pick_rarest(
        &self,
        peer: &PeerState,
        random: u64,
        allowed: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        match self
            .rarity
            .first_held(&peer.have_ranked, RARITY_WALK_STEPS, allowed)
        {
            Walk::Found(chunk) => Some(chunk),
            Walk::Walked => self.scan_rarest(peer, random, allowed),
            Walk::Exhausted => None,
        }
    }

    /// The rarest of a sample of the peer's useful chunks, scanning its bitfield from a
    /// random word: at least [`SCAN_SAMPLE_CHUNKS`] candidates (or all there are), so the
    /// cost stays bounded for peers with many useful chunks that are not globally rarest.
    fn scan_rarest(
        &self,
        peer: &PeerState,
        random: u64,
        allowed: &impl Fn(u32) -> bool,
    ) -> Option<u32> {
        let theirs = peer.have.words();
        let words = theirs.len();
        if words == 0 {
            return None;
        }
        let start = (random % words as u64) as usize;
        let mut best: Option<((u32, u32), u32)> = None;
        let mut sampled = 0;
        for k in 0..words {
            let i = (start + k) % words;
            let mut candidates =
                theirs[i] & !self.have.words()[i] & !self.in_flight_chunks.words()[i];
            while candidates != 0 {
                let chunk = i as u32 * 64 + candidates.trailing_zeros();
                candidates &= candidates - 1;
                if !allowed(chunk) {
                    continue;
                }
                sampled += 1;
                let key = self.rarity_key(chunk);
                if best.is_none_or(|(b, _)| key < b) {
                    best = Some((key, chunk));
                }
            }
            if sampled >= SCAN_SAMPLE_CHUNKS {
                break;
            }
        }
        best.map(|(_, chunk)| chunk)
    }

    /// Whether no needed chunk is both un-requested and available from anyone: the rarity
    /// order ends with the most available one.
    fn endgame(&self) -> bool {
        self.rarity.none_available()
    }

    /// In the endgame (no needed chunk is both un-requested and available from anyone),
    /// duplicates a chunk in flight elsewhere: fewest copies first, then the one in flight
    /// the longest (the likeliest to be stuck). Only an *overdue* chunk is duplicated (see
    /// [`Scheduler::find_overdue`]). A healthy request on a slow link is left alone, which is
    /// what keeps a site's shared uplink at one copy.
    fn pick_endgame(&self, peer: &PeerState, allowed: &impl Fn(u32) -> bool) -> Option<u32> {
        if !self.endgame() {
            return None;
        }
        let copies_max = self.config.endgame_duplicates_max as u32;
        // The least key among the candidates; the costly checks only for keys that beat the
        // best so far.
        let mut best: Option<(u32, Duration, u32)> = None;
        for chunk in self.overdue.iter_ones() {
            let key = (
                self.chunks[chunk as usize].copies,
                self.in_flight_since[chunk as usize],
                chunk,
            );
            if key.0 >= copies_max || best.is_some_and(|best| best <= key) {
                continue;
            }
            if peer.have.get(chunk)
                && !peer.in_flight.contains_key(&chunk)
                && !self.have.get(chunk)
                && allowed(chunk)
            {
                best = Some(key);
            }
        }
        best.map(|(_, _, chunk)| chunk)
    }
}

/// Whether a request sent at `sent` to a peer whose smoothed delivery time is `latency` is
/// overdue at `now`: at the moment [`Scheduler::next_overdue`] reports, so that a driver waking
/// then acts then. (With "longer" only, the wakeup came a moment too early and was not reported
/// again: the simulator's hosts sent the duplicate at their next event, a node ticking every
/// 100 ms at its next tick.)
pub(super) fn request_overdue(latency: Option<Duration>, sent: Duration, now: Duration) -> bool {
    latency.is_none_or(|latency| {
        now.saturating_sub(sent) >= latency.saturating_mul(ENDGAME_OVERDUE_FACTOR)
    })
}
