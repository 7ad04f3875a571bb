//! The sans-IO serving policy: what a node answers a peer's chunk request, given what it holds
//! and how much egress it has queued. The node's `exchange/serve.rs` and the simulator's
//! senders (`simulations/src/sim.rs`) both ask [`Serving::decide`], so the two cannot drift:
//! every constant of the serving side is here.
//!
//! Two rules, applied in this order to a chunk the node has:
//! 1. **Super-seeding**, for a blob held whole: within a *wave* of fetchers each chunk leaves
//!    once. A request for a chunk that already left in this wave is answered `Busy`
//!    ([`BusyReason::SuperSeeding`]): whoever got it serves it. Fetchers all want the chunks
//!    only the seed has and ask for the same ones; without this the seed's uplink carries
//!    duplicates while unique chunks wait, and once every chunk has left, it carries the
//!    endgame's copies the fetchers could give each other (a 32-node fan-out's seed sent 1.07
//!    copies of the image in the simulator when every chunk was free again after its first
//!    round, 1.00 with the rule kept, and the last node finished no later). A refusal is a
//!    hint, not a wall: the same peer asking again for the same chunk gets it once the chunk's
//!    latest copy left [`REPEAT_AFTER`] ago, so a fetcher that needs exactly that chunk from
//!    this node (its holders are saturated) waits a few seconds, never for ever, and however
//!    many insist, a chunk leaves at most once per [`REPEAT_AFTER`]; and a chunk whose latest
//!    copy went to a peer that has since disconnected may leave once more, to the next
//!    asker (churn-1k: the seed sent 1.48 copies and the 99th host took 3.07x the bound
//!    without this, 1.13 copies and 2.35x with it; 2.95 copies and 2.35x before waves); and
//!    a chunk wanted by many more peers than its copies can serve ([`DEMAND_PER_COPY`]) gets
//!    another copy at once, so fast fetchers do not wait on the slow holders of a mixed
//!    fleet. A wave
//!    ends when nobody asked for the blob for [`WAVE_GAP`]: the next fetchers start a new one,
//!    in which each chunk may leave once more. A blob still being fetched is not restricted:
//!    what a node has is what is already spreading.
//! 2. **Busy past the egress backlog**: a request whose chunk would queue behind more than
//!    [`EGRESS_AHEAD_MAX`] of egress already booked is answered `Busy`
//!    ([`BusyReason::Egress`]), so the requester asks another holder at once instead of
//!    waiting behind a full uplink. The chunk's own time on the link does not count.
//!
//! Super-seeding applies only while the blob is contested: another peer asked for it within
//! [`CONTESTED_WITHIN`]. A lone fetcher has nobody to spread chunks to, and refusing it the
//! chunks this node sent before (to fetchers since gone) only sends it elsewhere or makes it
//! wait: a node pulling a blob from three seeds that had each served one earlier fetcher got
//! 95 % of it from one of them, and once took 13 s instead of 1.3 (docs/benchmarks.md).
//!
//! Data flow: the driver measures the egress queued ahead (the node from its token buckets,
//! the simulator from its modelled uplink), passes it with the request and the current time,
//! and on [`Answer::Send`] books the chunk's bytes on its uplink; if the chunk then cannot be
//! read after all, it calls [`Serving::unsent`]. The refusal was decided before any read, so a
//! `Busy` costs no disk read and no buffer.
//!
//! Memory: the waves of at most [`WAVES_MAX`] blobs held whole (24 bytes per chunk and the
//! two latest askers each), and at most [`REFUSALS_MAX`] remembered refusals. A wave over
//! for [`WAVE_GAP`] is dropped when room is needed; past a bound the memory is cleared:
//! super-seeding then starts a new wave for the blobs it forgot, which costs at most one more
//! copy of each.
//!
//! Not for: the zone's rules (who may ask for what), reading chunks, or rate limiting itself.

use std::hash::Hash;
use std::time::Duration;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use crate::digest::Digest;

#[cfg(test)]
mod tests;

/// Egress already queued ahead of a chunk beyond which its request is answered `Busy` (the
/// chunk's own time on the link is not counted, so a slow link still sends). 150 ms: one and a
/// half 1 MiB chunks at 10 MiB/s. A short queue sends the requester to another holder at once
/// instead of behind a full uplink, and what it asks for stays fresh. bench_swarm fanout
/// (16 nodes at 10 MiB/s, docs/benchmarks.md), as a limit on the whole wait including the
/// chunk's own 100 ms: 2 s 1.52-1.54x T_min, 1 s 1.38-1.39x, 500 ms 1.27-1.32x, 250 ms 1.21x;
/// as this limit, 150 ms 1.19-1.22x and 50 ms 1.20-1.21x.
pub const EGRESS_AHEAD_MAX: Duration = Duration::from_millis(150);

/// How long after a chunk's latest copy left a refused peer's repeated request for it is
/// served. Serving the second request at once sent 1.4 copies of a fan-out's image from its
/// seed (docs/benchmarks.md); waiting lets the fetchers that merely asked first take the chunk
/// from whoever got it, while one that needs exactly this chunk from this node still gets it.
/// Counted from the first copy, not the latest, several fetchers insisting at once each got
/// one: 19 copies of 9 chunks in a 32-node fan-out on two cores. 10 s: with 5 s the seed of a
/// 32-node fan-out at 4 MiB/s sent 1.02-1.07 copies, every extra one a repeat 5-6.5 s after
/// the first; with 10 s 1.00-1.01, the last node no later (docs/benchmarks.md, "Super-seeding's
/// repeats after 10 s").
pub const REPEAT_AFTER: Duration = Duration::from_secs(10);

/// Refusals remembered at once; past this the memory is cleared, which only means a few
/// repeated requests wait another [`REPEAT_AFTER`]. 65,536 `(peer, blob, chunk)` entries are a
/// few MiB.
pub const REFUSALS_MAX: usize = 65_536;

/// Blobs whose waves are tracked at once. 1,024 blobs of 1,024 chunks are 24 MiB.
pub const WAVES_MAX: usize = 1_024;

/// How long nobody asks for a blob before its wave is over: the next fetchers start a new one,
/// in which each chunk may leave once more. Within a wave the fetchers ask the seed several
/// times a second; 30 s of silence means they are done, gone, or served by each other.
pub const WAVE_GAP: Duration = Duration::from_secs(30);

/// Peers newly refused a chunk, per copy of it sent in the wave, past which the next asker
/// gets another copy at once: its holders cannot serve that many soon, and the fetchers that
/// wait on them are faster than they are. A fleet of mixed links (simulations/README.md,
/// heterogeneous-2k: hosts of 20 Mbit/s up to 10 Gbit/s behind a 1 Gbit/s origin) took its
/// median host from 5.8 s to 14.4 s with the chunks held back for the insisting peers alone;
/// 32 brings it to 5.9 s with the origin at 5.05 copies instead of 9.01, and leaves the
/// fan-outs at 1.00-1.02 copies (8: 1.01-1.07; 16: 1.00-1.05, lan-1k at 1.15).
pub const DEMAND_PER_COPY: u32 = 32;

/// How recently another peer must have asked for a blob for super-seeding to apply to a
/// request. A swarm's fetchers each ask a seed several times a second (8 requests in flight
/// per peer, a chunk every 100 ms at 10 MiB/s); one second also lets a fetcher that follows
/// another by a few seconds fetch alone.
pub const CONTESTED_WITHIN: Duration = Duration::from_secs(1);

/// The serving side's tunables. `Default` gives the constants above, which the node uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServingConfig {
    /// See [`EGRESS_AHEAD_MAX`].
    pub egress_ahead_max: Duration,
    /// See [`REPEAT_AFTER`].
    pub repeat_after: Duration,
    /// See [`REFUSALS_MAX`].
    pub refusals_max: usize,
    /// See [`WAVES_MAX`].
    pub waves_max: usize,
    /// See [`WAVE_GAP`].
    pub wave_gap: Duration,
    /// See [`DEMAND_PER_COPY`].
    pub demand_per_copy: u32,
    /// See [`CONTESTED_WITHIN`].
    pub contested_within: Duration,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            egress_ahead_max: EGRESS_AHEAD_MAX,
            repeat_after: REPEAT_AFTER,
            refusals_max: REFUSALS_MAX,
            waves_max: WAVES_MAX,
            wave_gap: WAVE_GAP,
            demand_per_copy: DEMAND_PER_COPY,
            contested_within: CONTESTED_WITHIN,
        }
    }
}

/// How the serving node holds the blob a request names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holding {
    /// Whole (in the store, or every chunk for the simulator): super-seeding applies.
    Whole { chunk_count: u32 },
    /// Still being fetched, with the requested chunk verified: served without restriction.
    Partial,
}

/// A peer's request for one chunk the node has, with what the decision depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkRequest<P> {
    pub peer: P,
    pub blob: Digest,
    pub chunk: u32,
    pub holding: Holding,
    /// How long the egress already booked takes to leave: the wait this chunk would have
    /// before its own first byte goes out. Zero without a rate limit.
    pub egress_ahead: Duration,
}

/// Why a request is answered `Busy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BusyReason {
    /// More than `egress_ahead_max` of egress is already queued.
    Egress,
    /// The chunk already left in this wave of the blob's fetchers.
    SuperSeeding,
}

/// The answer to a [`ChunkRequest`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Send the chunk; the driver books its bytes on the uplink now.
    Send,
    /// Answer `Busy`: the requester asks elsewhere, or again later.
    Busy(BusyReason),
}

/// The serving policy of one node, over every blob it serves. `P` is the driver's peer key
/// (the node's `PeerId`, the simulator's host index). See the module documentation.
#[derive(Debug, Clone)]
pub struct Serving<P> {
    config: ServingConfig,
    /// The current wave of each blob held whole that peers asked for.
    waves: HashMap<Digest, Wave<P>>,
    /// Requests refused by super-seeding: the same peer asking again may be served.
    refused: HashSet<(P, Digest, u32)>,
}

/// The fetchers of one blob held whole, from the first request until nobody asked for
/// `wave_gap`.
#[derive(Debug, Clone)]
struct Wave<P> {
    /// When each chunk's latest copy in this wave left, and to whom.
    sent: Vec<Option<Sent>>,
    /// The peers copies went to: [`Sent::to`] indexes this.
    recipients: Vec<P>,
    /// The last asker, and the latest other peer before it, with when they asked.
    askers: Vec<(P, Duration)>,
}

#[derive(Debug, Clone, Copy)]
struct Sent {
    /// When the latest copy left.
    at: Duration,
    /// Whom it went to.
    to: u32,
    /// Copies sent in this wave.
    copies: u16,
    /// Peers newly refused the chunk since its latest copy left.
    wanting: u16,
}

impl<P: Eq + Clone> Wave<P> {
    fn new(chunk_count: u32) -> Self {
        Wave {
            sent: vec![None; chunk_count as usize],
            recipients: Vec::new(),
            askers: Vec::with_capacity(2),
        }
    }

    /// `peer`'s index in `recipients`, if a copy went to it.
    fn recipient(&self, peer: &P) -> Option<u32> {
        let index = self
            .recipients
            .iter()
            .position(|recipient| recipient == peer)?;
        Some(u32::try_from(index).unwrap_or(u32::MAX))
    }

    /// Records that a copy of `chunk` left at `now`, to `peer`.
    fn record(&mut self, chunk: u32, peer: &P, now: Duration) {
        let to = self.recipient(peer).unwrap_or_else(|| {
            self.recipients.push(peer.clone());
            u32::try_from(self.recipients.len() - 1).unwrap_or(u32::MAX)
        });
        let slot = &mut self.sent[chunk as usize];
        let copies = slot.map_or(0, |sent| sent.copies).saturating_add(1);
        *slot = Some(Sent {
            at: now,
            to,
            copies,
            wanting: 0,
        });
    }

    /// Counts a peer refused `chunk` for the first time since its latest copy left.
    fn wanted(&mut self, chunk: u32) {
        if let Some(Some(sent)) = self.sent.get_mut(chunk as usize) {
            sent.wanting = sent.wanting.saturating_add(1);
        }
    }

    /// Forgets the copies that went to `peer` last: the only one may have left with it.
    fn recipient_left(&mut self, peer: &P) {
        let Some(index) = self.recipient(peer) else {
            return;
        };
        for sent in &mut self.sent {
            if sent.is_some_and(|sent| sent.to == index) {
                *sent = None;
            }
        }
    }

    /// When anyone last asked.
    fn last_ask(&self) -> Duration {
        self.askers
            .iter()
            .map(|&(_, at)| at)
            .max()
            .unwrap_or_default()
    }

    /// Notes that `peer` asked at `now`; whether another peer asked within `within`.
    fn ask(&mut self, peer: &P, now: Duration, within: Duration) -> bool {
        let contested = self
            .askers
            .iter()
            .any(|(other, at)| other != peer && now.saturating_sub(*at) < within);
        self.askers.retain(|(other, _)| other != peer);
        self.askers.push((peer.clone(), now));
        if self.askers.len() > 2 {
            self.askers.remove(0);
        }
        contested
    }
}

impl<P: Eq + Hash + Clone> Default for Serving<P> {
    fn default() -> Self {
        Serving::new(ServingConfig::default())
    }
}

impl<P: Eq + Hash + Clone> Serving<P> {
    pub fn new(config: ServingConfig) -> Self {
        Serving {
            config,
            waves: HashMap::new(),
            refused: HashSet::new(),
        }
    }

    pub fn config(&self) -> &ServingConfig {
        &self.config
    }

    /// The answer to `request` at `now` (any clock, as long as the driver always uses the
    /// same one). A chunk answered [`Answer::Send`] counts as sent at once, so concurrent
    /// requests for it are refused; a `Busy` for the egress records nothing but the ask.
    pub fn decide(&mut self, request: &ChunkRequest<P>, now: Duration) -> Answer {
        let seeding = match request.holding {
            Holding::Whole { chunk_count } => self.seeding(request, chunk_count, now),
            Holding::Partial => Seeding::Free,
        };
        if seeding == Seeding::Refused {
            if self.refused.len() >= self.config.refusals_max {
                self.refused.clear();
            }
            let newly = self
                .refused
                .insert((request.peer.clone(), request.blob, request.chunk));
            if newly && let Some(wave) = self.waves.get_mut(&request.blob) {
                wave.wanted(request.chunk);
            }
            return Answer::Busy(BusyReason::SuperSeeding);
        }
        if request.egress_ahead > self.config.egress_ahead_max {
            return Answer::Busy(BusyReason::Egress);
        }
        match seeding {
            Seeding::First => {
                if let Some(wave) = self.waves.get_mut(&request.blob) {
                    wave.record(request.chunk, &request.peer, now);
                }
            }
            Seeding::Repeat => {
                self.refused
                    .remove(&(request.peer.clone(), request.blob, request.chunk));
                if let Some(wave) = self.waves.get_mut(&request.blob) {
                    wave.record(request.chunk, &request.peer, now);
                }
            }
            Seeding::Free | Seeding::Refused => {}
        }
        Answer::Send
    }

    /// What super-seeding says of `request` for a blob held whole, noting the ask in the
    /// blob's wave.
    fn seeding(&mut self, request: &ChunkRequest<P>, chunk_count: u32, now: Duration) -> Seeding {
        if request.chunk >= chunk_count {
            return Seeding::Free;
        }
        let within = self.config.contested_within;
        let wave = self.wave(request.blob, chunk_count, now);
        let contested = wave.ask(&request.peer, now, within);
        let Some(sent) = wave.sent[request.chunk as usize] else {
            return Seeding::First;
        };
        if !contested {
            return Seeding::Free;
        }
        let demand = u32::from(sent.wanting);
        if demand
            >= self
                .config
                .demand_per_copy
                .saturating_mul(u32::from(sent.copies))
        {
            return Seeding::Repeat;
        }
        let key = (request.peer.clone(), request.blob, request.chunk);
        let insists = self.refused.contains(&key);
        if now.saturating_sub(sent.at) >= self.config.repeat_after && insists {
            Seeding::Repeat
        } else {
            Seeding::Refused
        }
    }

    /// The blob's current wave: a new one if none is tracked, or nobody asked for
    /// `wave_gap`; a new wave forgets the blob's refusals. Room for a new one is made by
    /// dropping waves that are over, else all.
    fn wave(&mut self, blob: Digest, chunk_count: u32, now: Duration) -> &mut Wave<P> {
        let gap = self.config.wave_gap;
        let over = |wave: &Wave<P>| now.saturating_sub(wave.last_ask()) >= gap;
        let current = self
            .waves
            .get(&blob)
            .is_some_and(|wave| wave.sent.len() == chunk_count as usize && !over(wave));
        if !current {
            if !self.waves.contains_key(&blob) && self.waves.len() >= self.config.waves_max {
                self.waves.retain(|_, wave| !over(wave));
                if self.waves.len() >= self.config.waves_max {
                    self.waves.clear();
                }
            }
            self.waves.insert(blob, Wave::new(chunk_count));
            self.refused.retain(|(_, refused, _)| *refused != blob);
        }
        self.waves
            .entry(blob)
            .or_insert_with(|| Wave::new(chunk_count))
    }

    /// A chunk answered [`Answer::Send`] did not leave after all (it could not be read): it is
    /// unsent again, so the next request for it is served.
    pub fn unsent(&mut self, blob: Digest, chunk: u32) {
        if let Some(wave) = self.waves.get_mut(&blob)
            && let Some(sent) = wave.sent.get_mut(chunk as usize)
        {
            *sent = None;
        }
    }

    /// `peer` disconnected: the chunks whose first copy in a wave went to it may be sent once
    /// more, to whoever asks next (a fetcher that left took the only copy it had not passed
    /// on yet).
    pub fn peer_left(&mut self, peer: &P) {
        for wave in self.waves.values_mut() {
            wave.recipient_left(peer);
        }
    }

    /// Refusals remembered now; never more than `refusals_max`.
    pub fn refusals(&self) -> usize {
        self.refused.len()
    }

    /// Blobs whose waves are tracked; never more than `waves_max`.
    pub fn waves(&self) -> usize {
        self.waves.len()
    }
}

/// What super-seeding says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeding {
    /// Not restricted: a partial blob, a chunk out of range, or a chunk already sent that
    /// nobody else contests.
    Free,
    /// The chunk's first copy in the blob's wave.
    First,
    /// A further copy: to a refused peer asking again long enough after the chunk's latest copy
    /// left, or to anyone once the copies are wanted by more peers than they can serve.
    Repeat,
    Refused,
}
