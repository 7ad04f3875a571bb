//! Super-seeding: a node holding a whole blob sends each of its chunks once before it sends
//! any chunk twice, answering `Busy` to requests for chunks already sent while others have
//! never left. Fetchers all want the chunks only the seed has and ask for the same ones; without
//! this the seed's uplink carries duplicates while unique chunks wait. Measured with the
//! fan-out benchmark (docs/benchmarks.md) and in the simulator (simulations/README.md, item 4).
//!
//! A refusal is a hint, not a wall: a peer that asks again for a chunk it was refused gets it,
//! so a fetcher that needs exactly that chunk from this node (it lost it, or no one else has
//! it) waits one backoff, never for ever. Nodes still fetching a blob do not restrict what they
//! serve: what they have is what is already spreading. Memory is one bit per chunk of each
//! blob being seeded, dropped when the blob has been sent whole once, plus a bounded set of
//! recent refusals.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use libp2p::PeerId;
use shoal_protocol::{Bitmap, Digest};

/// Refusals remembered at once; past this the oldest knowledge is dropped (the set is
/// cleared), which only means a few chunks get sent twice.
const REFUSALS_MAX: usize = 65_536;

#[derive(Debug, Default)]
pub struct SeedLedger {
    state: Mutex<Ledger>,
}

#[derive(Debug, Default)]
struct Ledger {
    /// Chunks of each blob sent at least once, until all have been.
    sent: HashMap<Digest, Bitmap>,
    /// Blobs sent whole at least once: no longer restricted.
    seeded: HashSet<Digest>,
    /// Requests refused once: the same peer asking again is served.
    refused: HashSet<(PeerId, Digest, u32)>,
}

impl SeedLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `chunk` of a blob of `chunk_count` chunks may be sent to `peer` now; an
    /// admitted chunk counts as sent at once, so concurrent requests for it are refused.
    pub fn admit(&self, peer: PeerId, blob: Digest, chunk: u32, chunk_count: u32) -> bool {
        let mut ledger = self.lock();
        if ledger.seeded.contains(&blob) || chunk >= chunk_count {
            return true;
        }
        let sent = ledger
            .sent
            .entry(blob)
            .or_insert_with(|| Bitmap::new(chunk_count));
        if !sent.get(chunk) {
            sent.set(chunk);
            if sent.is_full() {
                ledger.sent.remove(&blob);
                ledger.seeded.insert(blob);
            }
            return true;
        }
        if ledger.refused.remove(&(peer, blob, chunk)) {
            return true;
        }
        if ledger.refused.len() >= REFUSALS_MAX {
            ledger.refused.clear();
        }
        ledger.refused.insert((peer, blob, chunk));
        false
    }

    /// An admitted chunk did not leave after all (the uplink was full): it is unsent again.
    pub fn unrecord(&self, blob: Digest, chunk: u32) {
        if let Some(sent) = self.lock().sent.get_mut(&blob) {
            sent.clear(chunk);
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
        assert!(ledger.admit(a, blob, 0, 3));
        assert!(
            !ledger.admit(b, blob, 0, 3),
            "chunk 0 again while 1 and 2 never left"
        );
        assert!(
            ledger.admit(b, blob, 0, 3),
            "but not twice to a peer that insists"
        );
        assert!(ledger.admit(a, blob, 1, 3));
        ledger.unrecord(blob, 1);
        assert!(ledger.admit(b, blob, 1, 3), "an unsent chunk may go again");
        assert!(ledger.admit(a, blob, 2, 3));
        // Sent whole once: no longer restricted.
        assert!(ledger.admit(a, blob, 0, 3));
        assert!(ledger.admit(b, blob, 0, 3));
        assert!(ledger.admit(a, Digest::of(b"other"), 0, 1));
    }
}
