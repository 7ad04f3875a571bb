//! Super-seeding: a node holding a whole blob sends each of its chunks once before it sends
//! any chunk twice, answering `Busy` to requests for chunks already sent while others have
//! never left. Fetchers all want the chunks only the seed has and ask for the same ones; without
//! this the seed's uplink carries duplicates while unique chunks wait. Measured with the
//! fan-out benchmark (docs/benchmarks.md) and in the simulator (simulations/README.md, item 4).
//!
//! A refusal is a hint, not a wall: a peer that asks again for a chunk it was refused gets it
//! once the chunk left this node [`REPEAT_AFTER`] ago, so a fetcher that needs exactly that
//! chunk from this node (it lost it, or no one it knows has it) waits a few seconds, never for
//! ever — while the fetchers that merely asked first, as they all do at the start, take it from
//! whoever got it. (Serving the second request at once sent 1.4 copies of a fan-out's image
//! from its seed; see docs/benchmarks.md.) Nodes still fetching a blob do not restrict what
//! they serve: what they have is what is already spreading. Memory is one time per chunk of
//! each blob being seeded, dropped when the blob has been sent whole once, plus a bounded set
//! of recent refusals.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_protocol::Digest;

/// Refusals remembered at once; past this the oldest knowledge is dropped (the set is
/// cleared), which only means a few chunks get sent twice.
const REFUSALS_MAX: usize = 65_536;
/// How long after a chunk first left a refused peer's repeated request for it is served.
const REPEAT_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub struct SeedLedger {
    state: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// When each chunk of each blob first left, until all have.
    sent: HashMap<Digest, FirstSends>,
    /// Blobs sent whole at least once: no longer restricted.
    seeded: HashSet<Digest>,
    /// Requests refused once: the same peer asking again is served.
    refused: HashSet<(PeerId, Digest, u32)>,
}

#[derive(Debug)]
struct FirstSends {
    at: Vec<Option<Instant>>,
    count: usize,
}

impl SeedLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `chunk` of a blob of `chunk_count` chunks may be sent to `peer` now; an
    /// admitted chunk counts as sent at once, so concurrent requests for it are refused.
    pub fn admit(&self, peer: PeerId, blob: Digest, chunk: u32, chunk_count: u32) -> bool {
        self.admit_at(peer, blob, chunk, chunk_count, Instant::now())
    }

    fn admit_at(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
        chunk_count: u32,
        now: Instant,
    ) -> bool {
        let mut ledger = self.lock();
        if ledger.seeded.contains(&blob) || chunk >= chunk_count {
            return true;
        }
        let sent = ledger.sent.entry(blob).or_insert_with(|| FirstSends {
            at: vec![None; chunk_count as usize],
            count: 0,
        });
        let first_sent = &mut sent.at[chunk as usize];
        let Some(left) = *first_sent else {
            *first_sent = Some(now);
            sent.count += 1;
            if sent.count == sent.at.len() {
                ledger.sent.remove(&blob);
                ledger.seeded.insert(blob);
            }
            return true;
        };
        let key = (peer, blob, chunk);
        if now.duration_since(left) >= REPEAT_AFTER && ledger.refused.remove(&key) {
            return true;
        }
        if ledger.refused.len() >= REFUSALS_MAX {
            ledger.refused.clear();
        }
        ledger.refused.insert(key);
        false
    }

    /// An admitted chunk did not leave after all (the uplink was full): it is unsent again.
    pub fn unrecord(&self, blob: Digest, chunk: u32) {
        if let Some(sent) = self.lock().sent.get_mut(&blob)
            && let Some(first_sent) = sent.at.get_mut(chunk as usize)
            && first_sent.take().is_some()
        {
            sent.count -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_chunk_leaves_once_before_any_leaves_twice() {
        let ledger = SeedLedger::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let blob = Digest::of(b"blob");
        let start = Instant::now();
        let admit =
            |peer, chunk, after: Duration| ledger.admit_at(peer, blob, chunk, 3, start + after);
        assert!(admit(a, 0, Duration::ZERO));
        assert!(
            !admit(b, 0, Duration::ZERO),
            "chunk 0 again while 1 and 2 never left"
        );
        assert!(
            !admit(b, 0, Duration::from_secs(1)),
            "not yet to a peer that insists: the chunk is still spreading"
        );
        assert!(
            admit(b, 0, REPEAT_AFTER),
            "but to one that still insists once it had time to spread"
        );
        assert!(
            !admit(a, 0, REPEAT_AFTER),
            "a peer never refused is refused"
        );
        assert!(admit(a, 1, Duration::ZERO));
        ledger.unrecord(blob, 1);
        assert!(admit(b, 1, Duration::ZERO), "an unsent chunk may go again");
        assert!(admit(a, 2, Duration::ZERO));
        // Sent whole once: no longer restricted.
        assert!(admit(a, 0, Duration::ZERO));
        assert!(admit(b, 0, Duration::ZERO));
        assert!(ledger.admit(a, Digest::of(b"other"), 0, 1));
    }
}
