use std::time::Duration;

use proptest::prelude::*;

use super::*;

fn blob() -> Digest {
    Digest::of(b"blob")
}

fn whole(peer: u32, chunk: u32, chunk_count: u32) -> ChunkRequest<u32> {
    ChunkRequest {
        peer,
        blob: blob(),
        chunk,
        holding: Holding::Whole { chunk_count },
        egress_ahead: Duration::ZERO,
    }
}

/// The serving policy with every blob contested for an hour once two peers asked for it: the
/// rules of super-seeding alone.
fn contested_serving() -> Serving<u32> {
    Serving::new(ServingConfig {
        contested_within: Duration::from_secs(3_600),
        ..ServingConfig::default()
    })
}

const SEEDING: Answer = Answer::Busy(BusyReason::SuperSeeding);
const EGRESS: Answer = Answer::Busy(BusyReason::Egress);

#[test]
fn every_chunk_leaves_once_before_any_leaves_twice() {
    let mut serving = contested_serving();
    let (a, b) = (1, 2);
    let at = |secs: u64| Duration::from_secs(secs);
    assert_eq!(serving.decide(&whole(a, 0, 3), at(0)), Answer::Send);
    assert_eq!(
        serving.decide(&whole(b, 0, 3), at(0)),
        SEEDING,
        "chunk 0 again while 1 and 2 never left"
    );
    assert_eq!(
        serving.decide(&whole(b, 0, 3), at(1)),
        SEEDING,
        "not yet to a peer that insists: the chunk is still spreading"
    );
    assert_eq!(
        serving.decide(&whole(b, 0, 3), REPEAT_AFTER),
        Answer::Send,
        "but to one that still insists once it had time to spread"
    );
    assert_eq!(
        serving.decide(&whole(a, 0, 3), REPEAT_AFTER),
        SEEDING,
        "a peer never refused is refused"
    );
    assert_eq!(serving.decide(&whole(a, 1, 3), at(0)), Answer::Send);
    serving.unsent(blob(), 1);
    assert_eq!(
        serving.decide(&whole(b, 1, 3), at(0)),
        Answer::Send,
        "an unsent chunk may go again"
    );
    assert_eq!(serving.decide(&whole(a, 2, 3), at(0)), Answer::Send);
    assert_eq!(
        serving.decide(&whole(a, 2, 3), at(1)),
        SEEDING,
        "every chunk left once: the fetchers give each other the rest"
    );
    assert_eq!(
        serving.decide(&whole(a, 2, 3), REPEAT_AFTER),
        Answer::Send,
        "unless one insists"
    );
    assert_eq!(serving.waves(), 1);
}

#[test]
fn a_wave_ends_after_wave_gap_without_a_request_and_the_next_one_sends_each_chunk_again() {
    let mut serving = contested_serving();
    let (a, b, c) = (1, 2, 3);
    let at = |secs: u64| Duration::from_secs(secs);
    assert_eq!(serving.decide(&whole(a, 0, 2), at(0)), Answer::Send);
    assert_eq!(serving.decide(&whole(a, 1, 2), at(0)), Answer::Send);
    assert_eq!(
        serving.decide(&whole(b, 0, 2), at(20)),
        SEEDING,
        "still the same wave"
    );
    let quiet_from = at(20);
    assert_eq!(
        serving.decide(&whole(c, 0, 2), quiet_from + WAVE_GAP - at(1)),
        SEEDING,
        "asked within the gap: the wave goes on"
    );
    let next = quiet_from + WAVE_GAP - at(1) + WAVE_GAP;
    assert_eq!(serving.decide(&whole(c, 1, 2), next), Answer::Send);
    assert_eq!(serving.decide(&whole(b, 1, 2), next), SEEDING);
    assert_eq!(serving.decide(&whole(b, 0, 2), next), Answer::Send);
}

#[test]
fn a_refused_repeat_is_served_after_repeat_after_and_only_once() {
    let mut serving = contested_serving();
    assert_eq!(
        serving.decide(&whole(1, 0, 2), Duration::ZERO),
        Answer::Send
    );
    let refused_at = Duration::from_secs(3);
    assert_eq!(serving.decide(&whole(2, 0, 2), refused_at), SEEDING);
    assert_eq!(serving.decide(&whole(3, 0, 2), refused_at), SEEDING);
    // REPEAT_AFTER counts from when the chunk left, not from the refusal.
    let due = REPEAT_AFTER;
    assert_eq!(
        serving.decide(&whole(2, 0, 2), due - Duration::from_millis(1)),
        SEEDING
    );
    assert_eq!(serving.decide(&whole(2, 0, 2), due), Answer::Send);
    assert_eq!(
        serving.decide(&whole(2, 0, 2), due),
        SEEDING,
        "the refusal was used up: a third ask is a new refusal"
    );
    assert_eq!(
        serving.decide(&whole(3, 0, 2), due),
        SEEDING,
        "another insisting peer waits for the copy that just left to spread"
    );
    assert_eq!(
        serving.decide(&whole(3, 0, 2), due + REPEAT_AFTER),
        Answer::Send
    );
}

#[test]
fn a_lone_fetcher_is_never_refused_and_a_second_one_within_a_second_restricts_both() {
    let mut serving = Serving::<u32>::default();
    let at = |millis: u64| Duration::from_millis(millis);
    let (a, b) = (1, 2);
    // `b` fetched chunk 0 and left; `a` follows two seconds later, alone.
    assert_eq!(serving.decide(&whole(b, 0, 4), at(0)), Answer::Send);
    assert_eq!(serving.decide(&whole(a, 0, 4), at(2_000)), Answer::Send);
    assert_eq!(serving.decide(&whole(a, 0, 4), at(2_001)), Answer::Send);
    // `b` is back within a second of `a`: the blob is contested again.
    assert_eq!(serving.decide(&whole(b, 0, 4), at(2_500)), SEEDING);
    assert_eq!(serving.decide(&whole(a, 0, 4), at(2_600)), SEEDING);
    assert_eq!(serving.decide(&whole(a, 1, 4), at(2_700)), Answer::Send);
    // A second after `b` last asked, `a` is alone again.
    assert_eq!(serving.decide(&whole(a, 1, 4), at(3_500)), Answer::Send);
}

#[test]
fn busy_when_the_egress_ahead_exceeds_the_bound() {
    let mut serving = Serving::<u32>::default();
    let partial = |egress_ahead| ChunkRequest {
        peer: 1,
        blob: blob(),
        chunk: 0,
        holding: Holding::Partial,
        egress_ahead,
    };
    let now = Duration::ZERO;
    assert_eq!(
        serving.decide(&partial(EGRESS_AHEAD_MAX), now),
        Answer::Send
    );
    assert_eq!(
        serving.decide(&partial(EGRESS_AHEAD_MAX + Duration::from_micros(1)), now),
        EGRESS
    );
    assert_eq!(
        serving.decide(&partial(Duration::from_secs(60)), now),
        EGRESS
    );
    // A whole blob's chunk refused for the egress is not counted as sent...
    let mut busy = whole(1, 0, 2);
    busy.egress_ahead = Duration::from_secs(1);
    assert_eq!(serving.decide(&busy, now), EGRESS);
    // ...so another peer still gets its first copy once the uplink has room.
    assert_eq!(serving.decide(&whole(2, 0, 2), now), Answer::Send);
    // Super-seeding is judged first: a repeat is refused for seeding even on a busy uplink,
    // and remembered as a refusal.
    let mut repeat = whole(3, 0, 2);
    repeat.egress_ahead = Duration::from_secs(1);
    assert_eq!(serving.decide(&repeat, now), SEEDING);
    assert_eq!(serving.refusals(), 1);
}

#[test]
fn a_partial_blob_is_not_restricted() {
    let mut serving = Serving::<u32>::default();
    for peer in 0..5 {
        let request = ChunkRequest {
            peer,
            blob: blob(),
            chunk: 0,
            holding: Holding::Partial,
            egress_ahead: Duration::ZERO,
        };
        assert_eq!(serving.decide(&request, Duration::ZERO), Answer::Send);
    }
    assert_eq!(serving.waves(), 0);
}

#[test]
fn refusal_memory_is_bounded() {
    let config = ServingConfig {
        refusals_max: 8,
        demand_per_copy: u32::MAX,
        ..ServingConfig::default()
    };
    let mut serving = Serving::<u32>::new(config);
    assert_eq!(
        serving.decide(&whole(0, 0, 2), Duration::ZERO),
        Answer::Send
    );
    for peer in 1..1_000 {
        assert_eq!(serving.decide(&whole(peer, 0, 2), Duration::ZERO), SEEDING);
        assert!(serving.refusals() <= 8, "{}", serving.refusals());
    }
    // The default bound is the constant.
    assert_eq!(ServingConfig::default().refusals_max, REFUSALS_MAX);
}

/// A request for chunk `chunk` of a whole blob of `chunk_count` chunks numbered `n`.
fn whole_of(n: u32, chunk: u32, chunk_count: u32) -> ChunkRequest<u32> {
    ChunkRequest {
        blob: Digest::of(&n.to_le_bytes()),
        ..whole(0, chunk, chunk_count)
    }
}

#[test]
fn a_chunk_whose_first_copy_left_with_its_peer_is_sent_once_more() {
    let mut serving = contested_serving();
    let (a, b, c) = (1, 2, 3);
    let at = |secs: u64| Duration::from_secs(secs);
    assert_eq!(serving.decide(&whole(a, 0, 2), at(0)), Answer::Send);
    assert_eq!(serving.decide(&whole(b, 1, 2), at(0)), Answer::Send);
    assert_eq!(serving.decide(&whole(c, 0, 2), at(1)), SEEDING);
    serving.peer_left(&a);
    assert_eq!(
        serving.decide(&whole(c, 0, 2), at(1)),
        Answer::Send,
        "its only copy may have left with `a`"
    );
    assert_eq!(
        serving.decide(&whole(b, 0, 2), at(1)),
        SEEDING,
        "`c` has it now"
    );
    assert_eq!(
        serving.decide(&whole(a, 1, 2), at(1)),
        SEEDING,
        "what went to others stays sent"
    );
    serving.peer_left(&7);
    assert_eq!(serving.decide(&whole(a, 1, 2), at(1)), SEEDING);
}

#[test]
fn a_chunk_wanted_by_more_peers_than_its_copies_can_serve_gets_another_copy() {
    let mut serving = contested_serving();
    let at = |secs: u64| Duration::from_secs(secs);
    assert_eq!(serving.decide(&whole(0, 0, 2), at(0)), Answer::Send);
    let per_copy = DEMAND_PER_COPY;
    for peer in 1..per_copy {
        assert_eq!(serving.decide(&whole(peer, 0, 2), at(1)), SEEDING, "{peer}");
        assert_eq!(
            serving.decide(&whole(1, 0, 2), at(1)),
            SEEDING,
            "asking again is not more demand"
        );
    }
    assert_eq!(serving.decide(&whole(per_copy, 0, 2), at(1)), SEEDING);
    assert_eq!(
        serving.decide(&whole(per_copy + 1, 0, 2), at(1)),
        Answer::Send,
        "{per_copy} peers waiting on one copy: a second goes out"
    );
    // Two copies now: twice the demand for a third.
    for peer in 100..100 + 2 * per_copy {
        assert_eq!(serving.decide(&whole(peer, 0, 2), at(1)), SEEDING, "{peer}");
    }
    assert_eq!(serving.decide(&whole(1, 0, 2), at(1)), Answer::Send);
    assert_eq!(serving.decide(&whole(2, 0, 2), at(1)), SEEDING);
    assert_eq!(ServingConfig::default().demand_per_copy, DEMAND_PER_COPY);
}

#[test]
fn waves_are_bounded_those_over_go_first_and_forgetting_only_starts_a_new_wave() {
    let config = ServingConfig {
        waves_max: 4,
        ..ServingConfig::default()
    };
    let mut serving = Serving::<u32>::new(config);
    let over = WAVE_GAP;
    // Blobs of which one chunk of two left, asked for long ago: their waves are over.
    for n in 0..3 {
        assert_eq!(
            serving.decide(&whole_of(n, 0, 2), Duration::ZERO),
            Answer::Send
        );
    }
    // A wave still going on at `over` keeps its memory when room is made for a new one.
    assert_eq!(serving.decide(&whole_of(3, 0, 2), over), Answer::Send);
    assert_eq!(serving.decide(&whole_of(4, 0, 2), over), Answer::Send);
    assert_eq!(serving.waves(), 2, "the three waves over were dropped");
    let second = |n| ChunkRequest {
        peer: 1,
        ..whole_of(n, 0, 2)
    };
    assert_eq!(serving.decide(&second(3), over), SEEDING);
    // Waves all going on: past the bound, everything is forgotten.
    for n in 100..200 {
        assert_eq!(serving.decide(&whole_of(n, 0, 2), over), Answer::Send);
        assert!(serving.waves() <= 4, "{}", serving.waves());
    }
    // A blob forgotten starts a new wave: its chunk 0 leaves once more, then is refused.
    assert_eq!(serving.decide(&whole_of(3, 0, 2), over), Answer::Send);
    assert_eq!(serving.decide(&second(3), over), SEEDING);
    assert_eq!(ServingConfig::default().waves_max, WAVES_MAX);
}

#[test]
fn a_chunk_beyond_the_blob_is_not_tracked() {
    let mut serving = Serving::<u32>::default();
    assert_eq!(
        serving.decide(&whole(1, 7, 3), Duration::ZERO),
        Answer::Send
    );
    assert_eq!(
        serving.decide(&whole(2, 7, 3), Duration::ZERO),
        Answer::Send
    );
    assert_eq!(serving.waves(), 0);
}

proptest! {
    /// Requests from a few peers in any order, all within `REPEAT_AFTER`: no chunk of a
    /// contested blob leaves twice, and once every peer has asked for every chunk, every chunk
    /// has left.
    #[test]
    fn any_request_order_sends_each_chunk_once_before_any_twice(
        chunk_count in 1u32..40,
        requests in proptest::collection::vec((0u32..6, 0u32..40, 0u64..500), 0..400),
        busy in proptest::collection::vec(any::<bool>(), 0..400),
    ) {
        let mut serving = Serving::<u32>::default();
        let mut sends = vec![0u32; chunk_count as usize];
        let mut asked: HashMap<u32, Duration> = HashMap::new();
        let mut now = Duration::ZERO;
        let mut check = |serving: &mut Serving<u32>, peer, chunk, egress_busy, now: Duration| {
            let mut request = whole(peer, chunk, chunk_count);
            if egress_busy {
                request.egress_ahead = EGRESS_AHEAD_MAX * 2;
            }
            let contested = asked
                .iter()
                .any(|(&other, &at)| other != peer && now - at < CONTESTED_WITHIN);
            asked.insert(peer, now);
            if serving.decide(&request, now) == Answer::Send {
                prop_assert!(!egress_busy, "sent past the egress bound");
                let sent = &mut sends[chunk as usize];
                prop_assert!(
                    *sent == 0 || !contested,
                    "chunk {chunk} of a contested blob sent twice: {sends:?}"
                );
                *sent += 1;
            }
            Ok(())
        };
        for (i, &(peer, chunk, step_ms)) in requests.iter().enumerate() {
            // Time moves, but never as far as REPEAT_AFTER in all.
            now = (now + Duration::from_millis(step_ms / 50)).min(REPEAT_AFTER / 2);
            let egress_busy = busy.get(i).copied().unwrap_or(false);
            check(&mut serving, peer, chunk % chunk_count, egress_busy, now)?;
        }
        for peer in 0..6 {
            for chunk in 0..chunk_count {
                check(&mut serving, peer, chunk, false, now)?;
            }
        }
        prop_assert!(sends.iter().all(|&n| n > 0), "a chunk never left: {sends:?}");
        prop_assert_eq!(serving.waves(), 1);
    }

    /// With time running past `REPEAT_AFTER`, now and then past `WAVE_GAP`, and peers leaving:
    /// within a wave, a chunk leaves a second time to a contested blob's fetcher only if that
    /// peer was refused it before, at least `REPEAT_AFTER` after its latest copy left; a new
    /// wave, or the departure of the peer its latest copy went to, sends it once more. (Four
    /// peers never make the demand that releases a copy at once: `DEMAND_PER_COPY` is 32.)
    #[test]
    fn a_second_copy_in_a_wave_goes_only_to_an_insisting_peer(
        chunk_count in 1u32..20,
        requests in proptest::collection::vec(
            (
                0u32..4,
                0u32..20,
                prop_oneof![20 => 0u64..3_000, 1 => 30_000u64..40_000],
                proptest::bool::weighted(0.05),
            ),
            0..300,
        ),
    ) {
        let mut serving = Serving::<u32>::default();
        let mut first_sent: Vec<Option<(Duration, u32)>> = vec![None; chunk_count as usize];
        let mut refused = std::collections::HashSet::new();
        let mut asked: HashMap<u32, Duration> = HashMap::new();
        let mut now = Duration::ZERO;
        for &(peer, chunk, step_ms, leaves) in &requests {
            now += Duration::from_millis(step_ms);
            if leaves {
                serving.peer_left(&peer);
                for sent in &mut first_sent {
                    if sent.is_some_and(|(_, to)| to == peer) {
                        *sent = None;
                    }
                }
                continue;
            }
            let chunk = chunk % chunk_count;
            let last_ask = asked.values().max().copied();
            if last_ask.is_some_and(|last| now - last >= WAVE_GAP) {
                first_sent.fill(None);
                refused.clear();
            }
            let contested = asked
                .iter()
                .any(|(&other, &at)| other != peer && now - at < CONTESTED_WITHIN);
            asked.insert(peer, now);
            match serving.decide(&whole(peer, chunk, chunk_count), now) {
                Answer::Send => match first_sent[chunk as usize] {
                    None => first_sent[chunk as usize] = Some((now, peer)),
                    Some(_) if !contested => {}
                    Some((left, _)) => {
                        prop_assert!(refused.remove(&(peer, chunk)), "never refused");
                        prop_assert!(now - left >= REPEAT_AFTER);
                        first_sent[chunk as usize] = Some((now, peer));
                    }
                },
                Answer::Busy(reason) => {
                    prop_assert_eq!(reason, BusyReason::SuperSeeding);
                    prop_assert!(contested, "a lone fetcher was refused");
                    prop_assert!(first_sent[chunk as usize].is_some());
                    refused.insert((peer, chunk));
                }
            }
        }
    }
}
