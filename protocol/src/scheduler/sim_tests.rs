//! Whole transfers in a tiny discrete-event simulation: honest peers that answer after fixed
//! delays (some still downloading themselves), hostile ones that send bad data, slow, silent
//! and busy ones, peers joining and leaving. The loop plays the node's part exactly as the
//! scheduler's documentation asks, and checks the scheduler's promises after every event.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};

use proptest::prelude::*;

use super::*;

type PeerId = u32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Behavior {
    /// Sends the right bytes after `delay_ms`.
    Honest { delay_ms: u64 },
    /// Sends bytes that fail verification.
    Hostile { delay_ms: u64 },
    /// Sends the right bytes, three request timeouts late.
    Slow,
    /// Never answers.
    Silent,
    /// Answers `Busy` after `delay_ms`.
    Busy { delay_ms: u64 },
}

#[derive(Debug, Clone)]
struct SimPeer {
    behavior: Behavior,
    /// The chunks it has at the start.
    initial: Bitmap,
    /// A downloading peer gains one more chunk (in `order`) every `grow_every_ms`.
    grow_every_ms: Option<u64>,
    order: Vec<u32>,
    join_ms: u64,
    leave_ms: Option<u64>,
}

impl SimPeer {
    fn have_at(&self, now_ms: u64) -> Bitmap {
        let mut have = self.initial.clone();
        if let Some(every) = self.grow_every_ms {
            let grown = (now_ms.saturating_sub(self.join_ms) / every) as usize;
            for &chunk in self.order.iter().take(grown) {
                have.set(chunk);
            }
        }
        have
    }
}

#[derive(Debug, Clone)]
struct Scenario {
    chunk_count: u32,
    config: SchedulerConfig,
    peers: Vec<SimPeer>,
    resumed: Vec<u32>,
    focus: Option<(u64, u32)>,
    honor_cancel: bool,
    seed: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum SimEvent {
    Join(PeerId),
    Leave(PeerId),
    Respond { peer: PeerId, chunk: u32, id: u64 },
    Have(PeerId),
    Focus(u32),
    Tick,
}

#[derive(Debug)]
struct Outcome {
    log: Vec<(u64, Action<PeerId>)>,
    completed_at: Option<u64>,
    banned: BTreeSet<PeerId>,
    writes: Vec<u32>,
    requested_from: BTreeMap<PeerId, u64>,
    responded_invalid: BTreeSet<PeerId>,
}

const TIME_LIMIT_MS: u64 = 10 * 60 * 1000;
const EVENTS_MAX: usize = 200_000;

/// Runs a scenario to completion (or the time limit), asserting the scheduler's promises
/// after every event.
fn run(scenario: &Scenario) -> Outcome {
    let n = scenario.chunk_count;
    let cfg = &scenario.config;
    let mut s: Scheduler<PeerId> = Scheduler::new(n, cfg.clone(), scenario.seed);
    for &chunk in &scenario.resumed {
        s.mark_have(chunk);
    }
    let resumed: BTreeSet<u32> = scenario.resumed.iter().copied().collect();
    let mut queue: BinaryHeap<Reverse<(u64, u64, SimEvent)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut push = |queue: &mut BinaryHeap<_>, at: u64, event: SimEvent| {
        seq += 1;
        queue.push(Reverse((at, seq, event)));
    };
    for (id, peer) in scenario.peers.iter().enumerate() {
        push(&mut queue, peer.join_ms, SimEvent::Join(id as PeerId));
        if let Some(leave) = peer.leave_ms {
            push(&mut queue, leave, SimEvent::Leave(id as PeerId));
        }
    }
    if let Some((at, chunk)) = scenario.focus {
        push(&mut queue, at, SimEvent::Focus(chunk));
    }
    push(&mut queue, 0, SimEvent::Tick);

    let mut outcome = Outcome {
        log: Vec::new(),
        completed_at: None,
        banned: BTreeSet::new(),
        writes: vec![0; n as usize],
        requested_from: BTreeMap::new(),
        responded_invalid: BTreeSet::new(),
    };
    // What the node believes is outstanding: (peer, chunk) → request id.
    let mut outstanding: BTreeMap<(PeerId, u32), u64> = BTreeMap::new();
    let mut dropped: BTreeSet<u64> = BTreeSet::new();
    let mut present: BTreeSet<PeerId> = BTreeSet::new();
    let mut next_id = 0u64;
    let mut scheduled_tick: Option<u64> = Some(0);
    let mut events = 0;

    while let Some(Reverse((now, _, sim_event))) = queue.pop() {
        events += 1;
        assert!(events < EVENTS_MAX, "runaway simulation");
        if now > TIME_LIMIT_MS {
            break;
        }
        let event = match sim_event {
            SimEvent::Join(p) => {
                present.insert(p);
                Event::PeerJoined {
                    peer: p,
                    have: scenario.peers[p as usize].have_at(now),
                }
            }
            SimEvent::Leave(p) => {
                present.remove(&p);
                outstanding.retain(|&(q, _), id| {
                    if q == p {
                        dropped.insert(*id);
                    }
                    q != p
                });
                Event::PeerLeft { peer: p }
            }
            SimEvent::Have(p) => {
                if !present.contains(&p) {
                    continue;
                }
                Event::PeerHave {
                    peer: p,
                    have: scenario.peers[p as usize].have_at(now),
                }
            }
            SimEvent::Focus(chunk) => Event::Focus { chunk },
            SimEvent::Tick => {
                if scheduled_tick == Some(now) {
                    scheduled_tick = None;
                }
                Event::Tick
            }
            SimEvent::Respond { peer, chunk, id } => {
                if dropped.contains(&id) {
                    continue;
                }
                // As the node should: a failure of a request it no longer tracks (cancelled,
                // then asked again) is dropped; bytes are always verified and reported, and
                // any report for (peer, chunk) ends the request the scheduler tracks for it.
                let current = outstanding.get(&(peer, chunk)) == Some(&id);
                let sim_peer = &scenario.peers[peer as usize];
                let fails = matches!(sim_peer.behavior, Behavior::Busy { .. })
                    || !sim_peer.have_at(now).get(chunk);
                if fails && !matches!(sim_peer.behavior, Behavior::Hostile { .. }) {
                    if !current {
                        continue;
                    }
                    outstanding.remove(&(peer, chunk));
                    Event::RequestFailed { peer, chunk }
                } else if let Behavior::Hostile { .. } = sim_peer.behavior {
                    outstanding.remove(&(peer, chunk));
                    outcome.responded_invalid.insert(peer);
                    Event::ChunkArrived {
                        peer,
                        chunk,
                        valid: false,
                    }
                } else {
                    outstanding.remove(&(peer, chunk));
                    // The node writes a verified chunk only while it is needed.
                    if s.needs(chunk) {
                        outcome.writes[chunk as usize] += 1;
                    }
                    Event::ChunkArrived {
                        peer,
                        chunk,
                        valid: true,
                    }
                }
            }
        };
        let actions = s.handle(event, Duration::from_millis(now));
        s.check_invariants();

        for action in &actions {
            outcome.log.push((now, action.clone()));
            match action {
                Action::Request { peer, chunk } => {
                    let p = *peer;
                    assert!(!outcome.banned.contains(&p), "request to banned peer {p}");
                    assert!(!s.have().get(*chunk), "request for had chunk {chunk}");
                    assert!(!resumed.contains(chunk), "request for resumed chunk");
                    assert!(
                        scenario.peers[p as usize].have_at(now).get(*chunk),
                        "request to {p} for chunk {chunk} it lacks"
                    );
                    assert!(
                        outstanding.insert((p, *chunk), next_id).is_none(),
                        "chunk {chunk} requested twice from {p}"
                    );
                    *outcome.requested_from.entry(p).or_default() += 1;
                    let delay = match scenario.peers[p as usize].behavior {
                        Behavior::Honest { delay_ms }
                        | Behavior::Hostile { delay_ms }
                        | Behavior::Busy { delay_ms } => Some(delay_ms),
                        Behavior::Slow => Some(3 * cfg.request_timeout.as_millis() as u64),
                        Behavior::Silent => None,
                    };
                    if let Some(delay) = delay {
                        let respond = SimEvent::Respond {
                            peer: p,
                            chunk: *chunk,
                            id: next_id,
                        };
                        push(&mut queue, now + delay, respond);
                    }
                    next_id += 1;
                }
                Action::Cancel { peer, chunk } => {
                    let id = outstanding.remove(&(*peer, *chunk));
                    assert!(id.is_some(), "cancel of a request never made");
                    if scenario.honor_cancel {
                        dropped.extend(id);
                    }
                }
                Action::Ban { peer } => {
                    outcome.banned.insert(*peer);
                    outstanding.retain(|&(q, _), id| {
                        if q == *peer {
                            dropped.insert(*id);
                        }
                        q != *peer
                    });
                }
                Action::PollHave { peer } => {
                    assert!(outcome.completed_at.is_none(), "poll after completion");
                    push(&mut queue, now + 5, SimEvent::Have(*peer));
                }
                Action::Completed => {
                    assert!(outcome.completed_at.is_none(), "Completed twice");
                    assert!(s.is_complete());
                    outcome.completed_at = Some(now);
                }
            }
        }

        // The node's view of what is outstanding matches the scheduler's, and nothing had is
        // still being fetched: the first copy to arrive cancelled the others.
        assert_eq!(outstanding.len(), s.in_flight());
        assert!(
            outstanding.keys().all(|&(_, chunk)| !s.have().get(chunk)),
            "a request for a chunk already had was left running"
        );
        let mut copies: BTreeMap<u32, usize> = BTreeMap::new();
        for &(_, chunk) in outstanding.keys() {
            *copies.entry(chunk).or_default() += 1;
        }
        assert!(
            copies
                .values()
                .all(|&c| c <= cfg.endgame_duplicates_max.max(1)),
            "too many copies: {copies:?}"
        );
        for (peer, stats) in s.peers() {
            assert!(stats.in_flight <= cfg.requests_per_peer_max, "peer {peer}");
        }

        if let Some(wakeup) = s.next_wakeup() {
            let at = wakeup.as_millis() as u64;
            assert!(
                at > now || outcome.completed_at.is_some(),
                "wakeup in the past"
            );
            if scheduled_tick.is_none_or(|t| at < t) {
                scheduled_tick = Some(at);
                push(&mut queue, at, SimEvent::Tick);
            }
        }
        if outcome.completed_at.is_some() && outstanding.is_empty() {
            break;
        }
    }
    outcome
}

fn honest_seed(chunk_count: u32, delay_ms: u64) -> SimPeer {
    SimPeer {
        behavior: Behavior::Honest { delay_ms },
        initial: Bitmap::full(chunk_count),
        grow_every_ms: None,
        order: Vec::new(),
        join_ms: 0,
        leave_ms: None,
    }
}

fn sim_config() -> SchedulerConfig {
    SchedulerConfig {
        requests_per_peer_max: 4,
        request_timeout: Duration::from_millis(1000),
        stream_window_chunks: 4,
        have_poll_interval: Duration::from_millis(200),
        endgame_duplicates_max: 2,
        failure_backoff: Duration::from_millis(50),
        request_latency_target: Duration::from_secs(5),
        requests_per_peer_initial: 4,
        window_initial: 8,
        window_min: 2,
        window_latency_target: Duration::from_millis(350),
        window_refusals_within: Duration::from_secs(1),
        site_patience: Duration::from_secs(2),
        site_fetchers_max: 2,
    }
}

fn assert_complete(scenario: &Scenario, outcome: &Outcome) {
    assert!(
        outcome.completed_at.is_some(),
        "transfer did not complete: seed {}",
        scenario.seed
    );
    for chunk in 0..scenario.chunk_count {
        let expected = u32::from(!scenario.resumed.contains(&chunk));
        assert_eq!(
            outcome.writes[chunk as usize], expected,
            "chunk {chunk} written {} times",
            outcome.writes[chunk as usize]
        );
    }
    for peer in &outcome.responded_invalid {
        assert!(outcome.banned.contains(peer), "hostile {peer} not banned");
    }
    for (id, peer) in scenario.peers.iter().enumerate() {
        if let Behavior::Honest { .. } | Behavior::Slow = peer.behavior {
            assert!(
                !outcome.banned.contains(&(id as PeerId)),
                "honest {id} banned"
            );
        }
    }
}

#[test]
fn a_crowd_with_hostile_slow_and_leaving_peers_completes() {
    let n = 50;
    // The seed is slow enough (4 chunks per 100 ms) that the others matter.
    let mut peers = vec![honest_seed(n, 100)];
    peers.push(SimPeer {
        behavior: Behavior::Hostile { delay_ms: 1 },
        ..honest_seed(n, 0)
    });
    peers.push(SimPeer {
        behavior: Behavior::Slow,
        ..honest_seed(n, 0)
    });
    peers.push(SimPeer {
        behavior: Behavior::Silent,
        ..honest_seed(n, 0)
    });
    peers.push(SimPeer {
        behavior: Behavior::Busy { delay_ms: 2 },
        ..honest_seed(n, 0)
    });
    peers.push(SimPeer {
        leave_ms: Some(100),
        ..honest_seed(n, 30)
    });
    peers.push(SimPeer {
        initial: Bitmap::new(n),
        grow_every_ms: Some(10),
        order: (0..n).rev().collect(),
        join_ms: 30,
        ..honest_seed(n, 5)
    });
    let scenario = Scenario {
        chunk_count: n,
        config: sim_config(),
        peers,
        resumed: vec![0, 7, 49],
        focus: Some((50, 20)),
        honor_cancel: false,
        seed: 42,
    };
    let outcome = run(&scenario);
    assert_complete(&scenario, &outcome);
    assert!(
        outcome.banned.contains(&1),
        "the hostile peer was used and banned"
    );
    let after_ban = outcome
        .log
        .iter()
        .skip_while(|(_, a)| *a != Action::Ban { peer: 1 })
        .filter(|(_, a)| matches!(a, Action::Request { peer: 1, .. }))
        .count();
    assert_eq!(after_ban, 0);
    assert!(
        outcome.requested_from.get(&6).copied().unwrap_or(0) > 0,
        "the downloading peer was used once its polls showed new chunks"
    );
    // Determinism: the same seed and events give the same actions.
    let again = run(&scenario);
    assert_eq!(outcome.log, again.log);
    let other = run(&Scenario {
        seed: 43,
        ..scenario.clone()
    });
    assert_complete(&scenario, &other);
    assert_ne!(outcome.log, other.log, "the seed matters");
}

#[test]
fn focus_chunks_are_requested_before_the_rest() {
    let n = 64;
    let scenario = Scenario {
        chunk_count: n,
        config: sim_config(),
        peers: vec![SimPeer {
            join_ms: 1,
            ..honest_seed(n, 10)
        }],
        resumed: vec![],
        focus: Some((0, 40)),
        honor_cancel: true,
        seed: 1,
    };
    let outcome = run(&scenario);
    assert_complete(&scenario, &outcome);
    let first: Vec<u32> = outcome
        .log
        .iter()
        .filter_map(|(_, a)| match a {
            Action::Request { chunk, .. } => Some(*chunk),
            _ => None,
        })
        .take(4)
        .collect();
    assert_eq!(first, vec![40, 41, 42, 43]);
}

/// The interesting chunk counts: none, one, around a bitmap word, and many.
const CHUNK_COUNTS: [u32; 8] = [0, 1, 2, 63, 64, 65, 130, 300];

fn arbitrary_peer(n: u32) -> impl Strategy<Value = SimPeer> {
    let behavior = prop_oneof![
        4 => (1u64..50).prop_map(|delay_ms| Behavior::Honest { delay_ms }),
        2 => (0u64..20).prop_map(|delay_ms| Behavior::Hostile { delay_ms }),
        1 => Just(Behavior::Slow),
        1 => Just(Behavior::Silent),
        1 => (0u64..20).prop_map(|delay_ms| Behavior::Busy { delay_ms }),
    ];
    (
        behavior,
        any::<u64>(),
        0u8..4,
        0u64..500,
        proptest::option::of(0u64..3000),
        any::<bool>(),
    )
        .prop_map(move |(behavior, bits, kind, join_ms, leave_after, grows)| {
            let mut initial = Bitmap::new(n);
            let mut state = bits;
            for i in 0..n {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                // kind 0: full; 1: most; 2: few; 3: none.
                let keep = match kind {
                    0 => true,
                    1 => state >> 62 != 0,
                    2 => state >> 62 == 0,
                    _ => false,
                };
                if keep {
                    initial.set(i);
                }
            }
            let order: Vec<u32> = (0..n)
                .map(|i| (i * 7 + (bits as u32 % 13)) % n.max(1))
                .collect();
            SimPeer {
                behavior,
                initial,
                grow_every_ms: (grows && kind != 0).then_some(20),
                order,
                join_ms,
                leave_ms: leave_after.map(|after| join_ms + after),
            }
        })
}

fn arbitrary_scenario() -> impl Strategy<Value = Scenario> {
    (0..CHUNK_COUNTS.len()).prop_flat_map(|i| {
        let n = CHUNK_COUNTS[i];
        (
            (1usize..=6, 1usize..=3, 0u32..8),
            (1u64..40, 0u64..200),
            proptest::collection::vec(arbitrary_peer(n), 0..6),
            proptest::collection::vec(0..n.max(1), 0..(n as usize / 2 + 1)),
            proptest::option::of((0u64..1000, 0..n.max(1))),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(
                move |(
                    (per_peer, duplicates, window),
                    (seed_delay, seed_join),
                    mut peers,
                    resumed,
                    focus,
                    honor_cancel,
                    seed,
                )| {
                    // The guarantee under test needs one honest peer with everything that
                    // stays; where it sits among the others varies with the seed.
                    let anchor = SimPeer {
                        join_ms: seed_join,
                        ..honest_seed(n, seed_delay)
                    };
                    let at = seed as usize % (peers.len() + 1);
                    peers.insert(at, anchor);
                    let mut resumed: Vec<u32> = resumed.into_iter().filter(|&c| c < n).collect();
                    resumed.sort_unstable();
                    resumed.dedup();
                    Scenario {
                        chunk_count: n,
                        config: SchedulerConfig {
                            requests_per_peer_max: per_peer,
                            endgame_duplicates_max: duplicates,
                            stream_window_chunks: window,
                            ..sim_config()
                        },
                        peers,
                        resumed,
                        focus,
                        honor_cancel,
                        seed,
                    }
                },
            )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn every_transfer_with_an_honest_seed_completes(scenario in arbitrary_scenario()) {
        let outcome = run(&scenario);
        assert_complete(&scenario, &outcome);
        // Banned peers are never asked again, whatever their kind.
        for &peer in &outcome.banned {
            let ban_at = outcome
                .log
                .iter()
                .position(|(_, a)| *a == Action::Ban { peer })
                .expect("a banned peer has a Ban action");
            let later = outcome.log[ban_at..]
                .iter()
                .filter(|(_, a)| matches!(a, Action::Request { peer: p, .. } if *p == peer))
                .count();
            prop_assert_eq!(later, 0);
        }
        let again = run(&scenario);
        prop_assert_eq!(&outcome.log, &again.log, "deterministic");
    }
}
