//! The node's handle on its serving policy: [`shoal_protocol::Serving`] (super-seeding and the
//! `Busy` rule, with every constant of the serving side) behind a mutex, shared by the tasks
//! that answer peers, on a clock that counts from the ledger's creation. The policy itself
//! lives in `protocol/src/serving/`, where the simulator drives the same machine.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use shoal_protocol::{Answer, ChunkRequest, Digest, Holding, Serving};

#[derive(Debug)]
pub struct SeedLedger {
    serving: Mutex<Serving<PeerId>>,
    /// Time zero of the policy's clock.
    epoch: Instant,
}

impl Default for SeedLedger {
    fn default() -> Self {
        SeedLedger {
            serving: Mutex::new(Serving::default()),
            epoch: Instant::now(),
        }
    }
}

impl SeedLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Serving<PeerId>> {
        self.serving.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What to answer `peer`'s request for `chunk` of `blob`, held as `holding`, with
    /// `egress_ahead` of egress already queued, at `now`. An answer to send counts the chunk as
    /// sent at once (see [`Serving::decide`]); book its bytes before anything else is decided.
    pub fn decide(
        &self,
        peer: PeerId,
        blob: Digest,
        chunk: u32,
        holding: Holding,
        egress_ahead: Duration,
        now: Instant,
    ) -> Answer {
        let request = ChunkRequest {
            peer,
            blob,
            chunk,
            holding,
            egress_ahead,
        };
        self.lock()
            .decide(&request, now.saturating_duration_since(self.epoch))
    }

    /// A chunk answered `Send` did not leave after all (it could not be read).
    pub fn unsent(&self, blob: Digest, chunk: u32) {
        self.lock().unsent(blob, chunk);
    }

    /// The last connection to `peer` closed: see [`Serving::peer_left`].
    pub fn peer_left(&self, peer: &PeerId) {
        self.lock().peer_left(peer);
    }
}

#[cfg(test)]
mod tests {
    use shoal_protocol::BusyReason;
    use shoal_protocol::serving::{EGRESS_AHEAD_MAX, REPEAT_AFTER};

    use super::*;

    #[test]
    fn the_node_drives_the_protocol_policy_on_its_own_clock() {
        let ledger = SeedLedger::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let blob = Digest::of(b"blob");
        let start = ledger.epoch;
        let whole = Holding::Whole { chunk_count: 2 };
        let decide = |peer, chunk, ahead, after| {
            ledger.decide(peer, blob, chunk, whole, ahead, start + after)
        };
        let idle = Duration::ZERO;
        assert_eq!(decide(a, 0, idle, Duration::ZERO), Answer::Send);
        assert_eq!(
            decide(b, 0, idle, Duration::ZERO),
            Answer::Busy(BusyReason::SuperSeeding)
        );
        assert_eq!(decide(b, 0, idle, REPEAT_AFTER), Answer::Send);
        let full = EGRESS_AHEAD_MAX + Duration::from_millis(1);
        assert_eq!(
            decide(a, 1, full, Duration::ZERO),
            Answer::Busy(BusyReason::Egress)
        );
        assert_eq!(decide(b, 1, idle, Duration::ZERO), Answer::Send);
        ledger.unsent(blob, 1);
        assert_eq!(decide(a, 1, idle, Duration::ZERO), Answer::Send);
    }
}
