//! The sans-IO serving policy: what a node answers a peer's chunk request, given what it holds
//! and how much egress it has queued. The node's `exchange/serve.rs` and the simulator's
//! senders (`simulations/src/sim.rs`) both ask [`Serving::decide`], so the two cannot drift:
//! every constant of the serving side is here.
//!
//! Two rules, applied in this order to a chunk the node has:
//! 1. **Super-seeding**, for a blob held whole: each of its chunks is sent once before any is
//!    sent twice. A request for a chunk that already left while others never have is answered
//!    `Busy` ([`BusyReason::SuperSeeding`]). Fetchers all want the chunks only the seed has and
//!    ask for the same ones; without this the seed's uplink carries duplicates while unique
//!    chunks wait. A refusal is a hint, not a wall: the same peer asking again for the same
//!    chunk gets it once the chunk left [`REPEAT_AFTER`] ago, so a fetcher that needs exactly
//!    that chunk from this node waits a few seconds, never for ever. Once every chunk has left
//!    once, the blob is no longer restricted. A blob still being fetched is not restricted:
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
//! Memory: one first-send time per chunk of at most [`SEEDING_BLOBS_MAX`] blobs being seeded
//! (dropped once the blob has been sent whole once), the digests of at most [`SEEDED_MAX`]
//! blobs seeded whole, and at most [`REFUSALS_MAX`] remembered refusals. Past a bound the
//! memory is cleared: super-seeding then starts again for the blobs it forgot, which costs at
//! most a few chunks sent twice.
//!
//! Not for: the zone's rules (who may ask for what), reading chunks, or rate limiting itself.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::Duration;

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

/// How long after a chunk first left a refused peer's repeated request for it is served.
/// Serving the second request at once sent 1.4 copies of a fan-out's image from its seed
/// (docs/benchmarks.md); 5 s lets the fetchers that merely asked first take the chunk from
/// whoever got it, while one that needs exactly this chunk from this node still gets it.
pub const REPEAT_AFTER: Duration = Duration::from_secs(5);

/// Refusals remembered at once; past this the memory is cleared, which only means a few
/// repeated requests wait another [`REPEAT_AFTER`]. 65,536 `(peer, blob, chunk)` entries are a
/// few MiB.
pub const REFUSALS_MAX: usize = 65_536;

/// Blobs whose first sends are tracked at once. A blob held whole that peers stop asking for
/// before every chunk left (they found it elsewhere) would otherwise stay for ever; 1,024
/// blobs of 1,024 chunks are 16 MiB.
pub const SEEDING_BLOBS_MAX: usize = 1_024;

/// Blobs remembered as seeded whole: 65,536 digests are about 4 MiB.
pub const SEEDED_MAX: usize = 65_536;

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
    /// See [`SEEDING_BLOBS_MAX`].
    pub seeding_blobs_max: usize,
    /// See [`SEEDED_MAX`].
    pub seeded_max: usize,
    /// See [`CONTESTED_WITHIN`].
    pub contested_within: Duration,
}

impl Default for ServingConfig {
    fn default() -> Self {
        ServingConfig {
            egress_ahead_max: EGRESS_AHEAD_MAX,
            repeat_after: REPEAT_AFTER,
            refusals_max: REFUSALS_MAX,
            seeding_blobs_max: SEEDING_BLOBS_MAX,
            seeded_max: SEEDED_MAX,
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
    /// The chunk already left while others of the blob never have.
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
    /// When each chunk of each blob held whole first left, until all have.
    sent: HashMap<Digest, FirstSends>,
    /// Blobs sent whole at least once: no longer restricted.
    seeded: HashSet<Digest>,
    /// Requests refused by super-seeding: the same peer asking again may be served.
    refused: HashSet<(P, Digest, u32)>,
    /// The latest requesters of each blob being seeded: the last asker, and the latest other
    /// peer before it, with when they asked.
    askers: HashMap<Digest, Vec<(P, Duration)>>,
}

#[derive(Debug, Clone)]
struct FirstSends {
    at: Vec<Option<Duration>>,
    count: usize,
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
            sent: HashMap::new(),
            seeded: HashSet::new(),
            refused: HashSet::new(),
            askers: HashMap::new(),
        }
    }

    pub fn config(&self) -> &ServingConfig {
        &self.config
    }

    /// The answer to `request` at `now` (any clock, as long as the driver always uses the
    /// same one). A chunk answered [`Answer::Send`] counts as sent at once, so concurrent
    /// requests for it are refused; a `Busy` for the egress records nothing.
    pub fn decide(&mut self, request: &ChunkRequest<P>, now: Duration) -> Answer {
        let seeding = match request.holding {
            Holding::Whole { chunk_count } => {
                let contested = self.contested(request, now);
                self.seeding(request, chunk_count, contested, now)
            }
            Holding::Partial => Seeding::Free,
        };
        if seeding == Seeding::Refused {
            if self.refused.len() >= self.config.refusals_max {
                self.refused.clear();
            }
            self.refused
                .insert((request.peer.clone(), request.blob, request.chunk));
            return Answer::Busy(BusyReason::SuperSeeding);
        }
        if request.egress_ahead > self.config.egress_ahead_max {
            return Answer::Busy(BusyReason::Egress);
        }
        match seeding {
            Seeding::First { chunk_count } => {
                self.record_first(request.blob, request.chunk, chunk_count, now)
            }
            Seeding::Repeat => {
                self.refused
                    .remove(&(request.peer.clone(), request.blob, request.chunk));
            }
            Seeding::Free | Seeding::Refused => {}
        }
        Answer::Send
    }

    /// Notes that `request`'s peer asked for its blob at `now`; whether another peer asked for
    /// it within `contested_within`.
    fn contested(&mut self, request: &ChunkRequest<P>, now: Duration) -> bool {
        if self.seeded.contains(&request.blob) {
            return false;
        }
        if !self.askers.contains_key(&request.blob)
            && self.askers.len() >= self.config.seeding_blobs_max
        {
            self.askers.clear();
        }
        let askers = self.askers.entry(request.blob).or_default();
        let contested = askers.iter().any(|(peer, at)| {
            *peer != request.peer && now.saturating_sub(*at) < self.config.contested_within
        });
        askers.retain(|(peer, _)| *peer != request.peer);
        askers.push((request.peer.clone(), now));
        if askers.len() > 2 {
            askers.remove(0);
        }
        contested
    }

    /// What super-seeding says of `request`, `contested` or not, without changing anything.
    fn seeding(
        &self,
        request: &ChunkRequest<P>,
        chunk_count: u32,
        contested: bool,
        now: Duration,
    ) -> Seeding {
        if request.chunk >= chunk_count || self.seeded.contains(&request.blob) {
            return Seeding::Free;
        }
        let left = self
            .sent
            .get(&request.blob)
            .and_then(|sent| sent.at.get(request.chunk as usize).copied().flatten());
        let Some(left) = left else {
            return Seeding::First { chunk_count };
        };
        if !contested {
            return Seeding::Free;
        }
        let key = (request.peer.clone(), request.blob, request.chunk);
        if now.saturating_sub(left) >= self.config.repeat_after && self.refused.contains(&key) {
            Seeding::Repeat
        } else {
            Seeding::Refused
        }
    }

    fn record_first(&mut self, blob: Digest, chunk: u32, chunk_count: u32, now: Duration) {
        if !self.sent.contains_key(&blob) && self.sent.len() >= self.config.seeding_blobs_max {
            self.sent.clear();
        }
        let sent = self.sent.entry(blob).or_insert_with(|| FirstSends {
            at: vec![None; chunk_count as usize],
            count: 0,
        });
        if let Some(first_sent @ None) = sent.at.get_mut(chunk as usize) {
            *first_sent = Some(now);
            sent.count += 1;
        }
        if sent.count == sent.at.len() {
            self.sent.remove(&blob);
            self.askers.remove(&blob);
            if self.seeded.len() >= self.config.seeded_max {
                self.seeded.clear();
            }
            self.seeded.insert(blob);
        }
    }

    /// A chunk answered [`Answer::Send`] did not leave after all (it could not be read): it is
    /// unsent again, so the next request for it is served.
    pub fn unsent(&mut self, blob: Digest, chunk: u32) {
        if let Some(sent) = self.sent.get_mut(&blob)
            && let Some(first_sent) = sent.at.get_mut(chunk as usize)
            && first_sent.take().is_some()
        {
            sent.count -= 1;
        }
    }

    /// Refusals remembered now; never more than `refusals_max`.
    pub fn refusals(&self) -> usize {
        self.refused.len()
    }

    /// Blobs whose first sends are being tracked (held whole, not yet sent whole once).
    pub fn blobs_seeding(&self) -> usize {
        self.sent.len()
    }

    /// Blobs remembered as sent whole once; never more than `seeded_max`.
    pub fn blobs_seeded(&self) -> usize {
        self.seeded.len()
    }
}

/// What super-seeding says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seeding {
    /// Not restricted: a partial blob, a blob already sent whole once, a chunk out of range, or
    /// a request nobody else contests.
    Free,
    /// The chunk's first send, of a blob of `chunk_count` chunks.
    First {
        chunk_count: u32,
    },
    /// A refused peer asking again, long enough after the chunk first left.
    Repeat,
    Refused,
}
