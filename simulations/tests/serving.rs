//! One sequence of chunk requests replayed through the node's serving driver
//! (`node/src/exchange/seeding.rs`, which `exchange/serve.rs` asks) and the simulator's
//! (`sim::serve`, which every simulated sender asks): both must give the same answers, since
//! both run `shoal_protocol::Serving`. What differs between them is only how each feeds it —
//! peer ids or host indexes, a wall clock or a virtual one, a token bucket's queue or a
//! modelled uplink's backlog, a store's chunk index or a bitmap — and that is what this checks.

use std::time::{Duration, Instant};

use shoal_node::serving_driver::{PeerId, SeedLedger};
use shoal_protocol::rng::SplitMix64;
use shoal_protocol::{Answer, Bitmap, BusyReason, Digest, Holding, Serving};
use shoal_simulations::link::Micros;
use shoal_simulations::sim;

const PEERS: usize = 5;
const CHUNKS: u32 = 12;

/// One recorded request: when it reached the sender, who asked, for what, whether the sender
/// held the blob whole, and how much egress it had queued.
#[derive(Debug, Clone, Copy)]
struct Step {
    at: Micros,
    peer: usize,
    chunk: u32,
    whole: bool,
    egress_ahead: Micros,
    /// Which of the blobs held whole: a fresh one now and then, to be seeded from the start.
    round: usize,
    /// Instead of a request: the peer's connection closed (it comes back at its next step).
    left: bool,
}

/// The sequence: a seeder's start (many peers asking for the same first chunks at once, a
/// full uplink, a peer insisting past `REPEAT_AFTER`), then a long stretch of requests at
/// random, with the uplink's backlog around the `Busy` bound, a second blob that the sender
/// is still fetching, and peers disconnecting now and then.
fn sequence() -> Vec<Step> {
    let step = |at_ms: u64, peer, chunk, whole, ahead_ms: u64| Step {
        at: at_ms * 1_000,
        peer,
        chunk,
        whole,
        egress_ahead: ahead_ms * 1_000,
        round: 0,
        left: false,
    };
    let mut steps = vec![
        step(0, 0, 0, true, 0),
        step(0, 1, 0, true, 0),
        step(1, 2, 0, true, 0),
        step(2, 1, 1, true, 400),
        step(3, 1, 1, true, 100),
        step(4, 2, 1, true, 150),
        step(4_000, 1, 0, true, 0),
        step(5_000, 1, 0, true, 0),
        step(5_001, 1, 0, true, 0),
        step(5_002, 2, 0, true, 0),
        step(6_000, 3, 2, false, 0),
        step(6_000, 4, 2, false, 0),
        step(6_001, 4, 3, false, 151),
    ];
    let mut rng = SplitMix64::new(13);
    let mut at = 7_000_000;
    for i in 0..3_000 {
        at += rng.below(20_000) as Micros;
        steps.push(Step {
            at,
            peer: rng.below(PEERS),
            chunk: rng.below(CHUNKS as usize) as u32,
            whole: rng.below(4) != 0,
            egress_ahead: rng.below(300_000) as Micros,
            round: 1 + i / 100,
            left: rng.below(40) == 0,
        });
    }
    steps
}

#[test]
fn the_node_and_the_simulator_answer_a_recorded_sequence_alike() {
    let partial_blob = Digest::of(b"blob being fetched");
    // The node's driver, on its own clock and peer ids.
    let ledger = SeedLedger::default();
    let start = Instant::now();
    let peer_ids: Vec<PeerId> = (0..PEERS).map(|_| PeerId::random()).collect();
    // The simulator's: one blob per `Serving` key, as the simulator keys its one blob.
    let mut serving = Serving::<u32>::default();
    let full = Bitmap::full(CHUNKS);
    let mut partial = Bitmap::new(CHUNKS);
    for chunk in (0..CHUNKS).step_by(2) {
        partial.set(chunk);
    }

    let (mut sends, mut seeding, mut egress, mut departures) = (0, 0, 0, 0);
    for step in sequence() {
        if step.left {
            // The node hears it from the network, the simulator from the host going offline.
            ledger.peer_left(&peer_ids[step.peer]);
            serving.peer_left(&(step.peer as u32));
            departures += 1;
            continue;
        }
        // A partial holder is asked only for chunks it has; the node serves those, the others
        // are `NotFound` before any policy is asked, in both drivers.
        let chunk = if step.whole {
            step.chunk
        } else {
            step.chunk & !1
        };
        let (blob, holding, have) = if step.whole {
            let holding = Holding::Whole {
                chunk_count: CHUNKS,
            };
            (Digest::of(&step.round.to_le_bytes()), holding, &full)
        } else {
            (partial_blob, Holding::Partial, &partial)
        };
        let node = ledger.decide(
            peer_ids[step.peer],
            blob,
            chunk,
            holding,
            Duration::from_micros(step.egress_ahead),
            start + Duration::from_micros(step.at),
        );
        let simulated = sim::serve(
            &mut serving,
            blob,
            step.peer as u32,
            chunk,
            have,
            step.egress_ahead,
            step.at,
        );
        assert_eq!(node, simulated, "{step:?}");
        match node {
            Answer::Send => sends += 1,
            Answer::Busy(BusyReason::SuperSeeding) => seeding += 1,
            Answer::Busy(BusyReason::Egress) => egress += 1,
        }
    }
    // The sequence exercises every answer, and departures.
    assert!(
        sends > 0 && seeding > 0 && egress > 0 && departures > 0,
        "{sends} {seeding} {egress} {departures}"
    );
}
