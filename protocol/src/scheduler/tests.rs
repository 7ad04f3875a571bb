//! Hand-driven scenarios, one policy rule each. The randomised whole-transfer runs are in
//! `sim_tests.rs`.

use super::*;

type S = Scheduler<&'static str>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        requests_per_peer_max: 8,
        request_timeout: ms(1000),
        stream_window_chunks: 4,
        have_poll_interval: ms(100),
        endgame_duplicates_max: 2,
        failure_backoff: ms(50),
        request_latency_target: ms(5000),
        requests_per_peer_initial: 8,
        window_initial: 1000,
        window_min: 2,
        window_latency_target: ms(350),
        window_refusals_within: ms(1000),
        site_patience: ms(2000),
        site_fetchers_max: 2,
    }
}

fn bits(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitmap {
    Bitmap::with_ones(len, ones)
}

fn requests(actions: &[Action<&'static str>]) -> Vec<(&'static str, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Request { peer, chunk } => Some((*peer, *chunk)),
            _ => None,
        })
        .collect()
}

fn polls(actions: &[Action<&'static str>]) -> Vec<&'static str> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::PollHave { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn join(s: &mut S, peer: &'static str, have: Bitmap, now: u64) -> Vec<Action<&'static str>> {
    let actions = s.handle(Event::PeerJoined { peer, have }, ms(now));
    s.check_invariants();
    actions
}

/// A refreshed bitfield of `peer`, polled or pushed.
fn have(s: &mut S, peer: &'static str, have: Bitmap, now: u64) -> Vec<Action<&'static str>> {
    let actions = s.handle(Event::PeerHave { peer, have }, ms(now));
    s.check_invariants();
    actions
}

fn arrive(s: &mut S, peer: &'static str, chunk: u32, now: u64) -> Vec<Action<&'static str>> {
    let actions = s.handle(
        Event::ChunkArrived {
            peer,
            chunk,
            valid: true,
        },
        ms(now),
    );
    s.check_invariants();
    actions
}

#[test]
fn a_full_peer_gets_at_most_the_limit() {
    let mut s = S::new(20, config(), 1);
    let actions = join(&mut s, "a", Bitmap::full(20), 0);
    let reqs = requests(&actions);
    assert_eq!(reqs.len(), 8);
    assert!(reqs.iter().all(|(p, _)| *p == "a"));
    let distinct: BTreeSet<u32> = reqs.iter().map(|(_, c)| *c).collect();
    assert_eq!(distinct.len(), 8, "no chunk requested twice");
    assert_eq!(s.in_flight(), 8);
    // One arrival frees one slot: exactly one new request.
    let actions = arrive(&mut s, "a", reqs[0].1, 10);
    assert_eq!(requests(&actions).len(), 1);
    assert_eq!(s.in_flight(), 8);
    let (_, stats) = s.peers().next().unwrap();
    assert_eq!(stats.chunks_received, 1);
    assert_eq!(stats.in_flight, 8);
    assert_eq!(stats.chunks_available, 20);
}

#[test]
fn focus_window_chunks_come_first_and_in_order() {
    let mut cfg = config();
    cfg.requests_per_peer_max = 6;
    let mut s = S::new(100, cfg, 7);
    s.handle(Event::Focus { chunk: 50 }, ms(0));
    let actions = join(&mut s, "a", Bitmap::full(100), 0);
    let chunks: Vec<u32> = requests(&actions).iter().map(|(_, c)| *c).collect();
    assert_eq!(&chunks[..4], &[50, 51, 52, 53]);
    assert!(chunks[4..].iter().all(|c| !(50..54).contains(c) && *c < 90));
    // Moving the focus redirects the next free slots to the new window.
    s.handle(Event::Focus { chunk: 90 }, ms(1));
    let actions = arrive(&mut s, "a", 50, 2);
    assert_eq!(requests(&actions), vec![("a", 90)]);
    // A focus window at the end of the blob is clipped, not wrapped.
    s.handle(Event::Focus { chunk: 98 }, ms(3));
    let actions = arrive(&mut s, "a", 51, 4);
    assert_eq!(requests(&actions), vec![("a", 98)]);
    let actions = arrive(&mut s, "a", 52, 5);
    assert_eq!(requests(&actions), vec![("a", 99)]);
}

#[test]
fn rarest_chunks_are_requested_first_with_random_ties() {
    let mut orders = BTreeSet::new();
    for seed in 0..8 {
        let mut cfg = config();
        cfg.requests_per_peer_max = 2;
        let mut s = S::new(30, cfg, seed);
        // x has 0..20, y has 0..10: after a joins, chunks 20..30 are held by a alone.
        join(&mut s, "x", bits(30, 0..20), 0);
        join(&mut s, "y", bits(30, 0..10), 0);
        let actions = join(&mut s, "a", Bitmap::full(30), 0);
        let chunks: Vec<u32> = requests(&actions).iter().map(|(_, c)| *c).collect();
        assert_eq!(chunks.len(), 2);
        assert!(chunks.iter().all(|c| (20..30).contains(c)), "{chunks:?}");
        orders.insert(chunks);
    }
    assert!(orders.len() > 1, "ties are broken differently per seed");
}

#[test]
fn in_order_ties_go_front_to_back_and_rarity_still_comes_first() {
    let mut cfg = config();
    cfg.requests_per_peer_max = 3;
    let mut s = S::new(30, cfg, 5);
    s.set_in_order(true);
    s.check_invariants();
    // x has 0..20 too: 20..30 are rarer (only a has them), then in order.
    join(&mut s, "x", bits(30, 0..20), 0);
    let actions = join(&mut s, "a", Bitmap::full(30), 0);
    let chunks: Vec<u32> = requests(&actions)
        .iter()
        .filter(|(p, _)| *p == "a")
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(chunks, vec![20, 21, 22]);
    // Back to random ties: still consistent, nothing requested twice.
    s.set_in_order(false);
    s.check_invariants();
    let actions = arrive(&mut s, "a", 20, 2);
    assert_eq!(requests(&actions).len(), 1);
    assert!(requests(&actions)[0].1 > 22);
}

#[test]
fn endgame_duplicates_are_bounded_and_cancelled() {
    let mut s = S::new(3, config(), 3);
    let first = requests(&join(&mut s, "a", Bitmap::full(3), 0));
    assert_eq!(first.len(), 3);
    // Everything is in flight: b gets one duplicate of each chunk.
    let dup = requests(&join(&mut s, "b", Bitmap::full(3), 1));
    assert_eq!(dup.len(), 3);
    assert!(dup.iter().all(|(p, _)| *p == "b"));
    // Two copies each: c gets nothing.
    assert!(requests(&join(&mut s, "c", Bitmap::full(3), 2)).is_empty());
    assert_eq!(s.in_flight(), 6);
    // The first copy to arrive cancels the other.
    let actions = arrive(&mut s, "b", 1, 3);
    assert!(actions.contains(&Action::Cancel {
        peer: "a",
        chunk: 1
    }));
    assert!(requests(&actions).is_empty(), "{actions:?}");
    assert_eq!(s.in_flight(), 4);
    // The loser's late copy is a duplicate: counted, not accepted again.
    let actions = arrive(&mut s, "a", 1, 4);
    assert!(!actions.contains(&Action::Completed));
    let a_stats = s.peers().find(|(p, _)| **p == "a").unwrap().1;
    assert_eq!(a_stats.duplicates_received, 1);
    assert_eq!(a_stats.chunks_received, 0);
    arrive(&mut s, "a", 0, 5);
    let actions = arrive(&mut s, "b", 2, 6);
    assert!(actions.contains(&Action::Completed));
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn no_duplicates_outside_the_endgame_or_when_disabled() {
    let mut cfg = config();
    cfg.requests_per_peer_max = 2;
    let mut s = S::new(10, cfg.clone(), 3);
    join(&mut s, "a", Bitmap::full(10), 0);
    join(&mut s, "b", Bitmap::full(10), 0);
    // c only has chunk 9, which is un-requested... or requested once: no duplicate either way
    // while other chunks are un-requested.
    let reqs = requests(&join(&mut s, "c", bits(10, [9]), 0));
    assert!(reqs.iter().all(|&(_, c)| s.chunks[c as usize].copies == 1));

    cfg.endgame_duplicates_max = 1;
    let mut s = S::new(2, cfg, 3);
    join(&mut s, "a", Bitmap::full(2), 0);
    assert!(requests(&join(&mut s, "b", Bitmap::full(2), 0)).is_empty());
}

#[test]
fn timeouts_cancel_penalize_and_reassign() {
    let mut cfg = config();
    cfg.endgame_duplicates_max = 1;
    let mut s = S::new(4, cfg, 5);
    let reqs = requests(&join(&mut s, "slow", Bitmap::full(4), 0));
    assert_eq!(reqs.len(), 4);
    assert_eq!(
        s.next_wakeup(),
        Some(ms(1000)),
        "a full peer is never polled"
    );
    // Not yet.
    assert!(s.handle(Event::Tick, ms(999)).is_empty());
    join(&mut s, "fast", Bitmap::full(4), 999);
    let actions = s.handle(Event::Tick, ms(1000));
    s.check_invariants();
    let cancels = actions
        .iter()
        .filter(|a| matches!(a, Action::Cancel { peer: "slow", .. }))
        .count();
    assert_eq!(cancels, 4);
    let reqs = requests(&actions);
    assert!(reqs.iter().all(|(p, _)| *p == "fast"), "slow is paused");
    assert_eq!(reqs.len(), 4);
    let slow = s.peers().find(|(p, _)| **p == "slow").unwrap().1;
    assert_eq!(slow.requests_timed_out, 4);
    assert_eq!(slow.in_flight_limit, 4, "halved once per expiry pass");
    // A late response from the slow peer is still useful.
    let actions = arrive(&mut s, "slow", 0, 1001);
    assert!(actions.contains(&Action::Cancel {
        peer: "fast",
        chunk: 0
    }));
}

#[test]
fn failures_back_off_then_retry() {
    let mut s = S::new(1, config(), 5);
    let reqs = requests(&join(&mut s, "a", Bitmap::full(1), 0));
    assert_eq!(reqs, vec![("a", 0)]);
    let actions = s.handle(
        Event::RequestFailed {
            peer: "a",
            chunk: 0,
        },
        ms(10),
    );
    assert!(requests(&actions).is_empty(), "paused for the backoff");
    assert_eq!(s.next_wakeup(), Some(ms(60)));
    // A second report of the same failure is not counted twice.
    s.handle(
        Event::RequestFailed {
            peer: "a",
            chunk: 0,
        },
        ms(11),
    );
    assert_eq!(s.peers().next().unwrap().1.requests_failed, 1);
    assert_eq!(requests(&s.handle(Event::Tick, ms(60))), vec![("a", 0)]);
    // The second consecutive failure doubles the pause.
    s.handle(
        Event::RequestFailed {
            peer: "a",
            chunk: 0,
        },
        ms(70),
    );
    assert_eq!(s.next_wakeup(), Some(ms(170)));
    assert!(requests(&s.handle(Event::Tick, ms(169))).is_empty());
    assert_eq!(requests(&s.handle(Event::Tick, ms(170))), vec![("a", 0)]);
    let actions = arrive(&mut s, "a", 0, 180);
    assert_eq!(actions, vec![Action::Completed]);
}

#[test]
fn a_busy_peer_rests_one_backoff_each_time_without_doubling() {
    let mut s = S::new(1, config(), 5);
    assert_eq!(
        requests(&join(&mut s, "busy", Bitmap::full(1), 0)),
        vec![("busy", 0)]
    );
    let actions = s.handle(
        Event::PeerBusy {
            peer: "busy",
            chunk: 0,
            reason: BusyReason::Egress,
        },
        ms(10),
    );
    assert!(requests(&actions).is_empty(), "resting");
    assert_eq!(s.next_wakeup(), Some(ms(60)));
    assert_eq!(requests(&s.handle(Event::Tick, ms(60))), vec![("busy", 0)]);
    // A second busy answer rests the same 50 ms; a second failure would have rested 100.
    s.handle(
        Event::PeerBusy {
            peer: "busy",
            chunk: 0,
            reason: BusyReason::Egress,
        },
        ms(70),
    );
    assert_eq!(s.next_wakeup(), Some(ms(120)));
    s.check_invariants();
    assert_eq!(
        s.peers().next().unwrap().1.requests_failed,
        0,
        "busy is not a failure"
    );
    assert_eq!(requests(&s.handle(Event::Tick, ms(120))), vec![("busy", 0)]);
    assert_eq!(arrive(&mut s, "busy", 0, 130), vec![Action::Completed]);
}

#[test]
fn a_peer_busy_with_our_own_requests_keeps_them_without_resting_and_grows_no_further_for_a_while() {
    let mut cfg = config();
    cfg.requests_per_peer_initial = 3;
    let mut s = S::new(16, cfg, 5);
    let sent = requests(&join(&mut s, "seed", Bitmap::full(16), 0));
    assert_eq!(sent.len(), 3);
    // The third request found the first two queued ahead of it at the peer.
    let actions = s.handle(
        Event::PeerBusy {
            peer: "seed",
            chunk: sent[2].1,
            reason: BusyReason::Egress,
        },
        ms(1),
    );
    s.check_invariants();
    assert!(requests(&actions).is_empty(), "two are still queued there");
    assert_eq!(
        s.next_wakeup(),
        Some(ms(1000)),
        "no rest: only the requests' timeout"
    );
    // Each arrival makes room for one more at once, no rest, and no growth for a backoff.
    assert_eq!(requests(&arrive(&mut s, "seed", sent[0].1, 20)).len(), 1);
    assert_eq!(requests(&arrive(&mut s, "seed", sent[1].1, 40)).len(), 1);
    assert_eq!(s.peers().next().unwrap().1.in_flight_limit, 2);
    // After the backoff, good chunks grow the limit again.
    let in_flight: Vec<u32> = s.requests_in_flight().map(|(_, c)| c).collect();
    assert_eq!(
        requests(&arrive(&mut s, "seed", in_flight[0], 100)).len(),
        2
    );
    s.check_invariants();
}

#[test]
fn a_peer_that_refused_another_transfer_rests_here_too_without_being_asked() {
    let mut s = S::new(2, config(), 5);
    assert!(requests(&join(&mut s, "busy", Bitmap::new(2), 0)).is_empty());
    s.uplink_refused_elsewhere(&"busy", ms(10));
    let actions = have(&mut s, "busy", Bitmap::full(2), 20);
    assert!(requests(&actions).is_empty(), "resting until 10 + 50 ms");
    assert_eq!(s.next_wakeup(), Some(ms(60)));
    assert_eq!(requests(&s.handle(Event::Tick, ms(60))).len(), 2);
    s.check_invariants();
    assert_eq!(
        s.peers().next().unwrap().1.in_flight_limit,
        8,
        "its limit did not shrink: this transfer was not refused"
    );
}

#[test]
fn a_refusal_elsewhere_caps_a_peer_at_the_requests_already_queued_there() {
    let mut cfg = config();
    cfg.requests_per_peer_initial = 2;
    let mut s = S::new(16, cfg, 5);
    let sent = requests(&join(&mut s, "seed", Bitmap::full(16), 0));
    assert_eq!(sent.len(), 2);
    s.uplink_refused_elsewhere(&"seed", ms(5));
    // An arrival within the rest makes room for one more, not two.
    assert_eq!(requests(&arrive(&mut s, "seed", sent[0].1, 20)).len(), 1);
    assert_eq!(s.peers().next().unwrap().1.in_flight_limit, 2);
    // After it, good chunks grow the limit again.
    let in_flight: Vec<u32> = s.requests_in_flight().map(|(_, c)| c).collect();
    assert_eq!(requests(&arrive(&mut s, "seed", in_flight[0], 60)).len(), 2);
    s.check_invariants();
}

#[test]
fn a_refusal_elsewhere_already_past_its_rest_changes_nothing() {
    let mut s = S::new(2, config(), 5);
    assert!(requests(&join(&mut s, "late", Bitmap::new(2), 100)).is_empty());
    s.uplink_refused_elsewhere(&"late", ms(40));
    s.uplink_refused_elsewhere(&"nobody", ms(90));
    let actions = have(&mut s, "late", Bitmap::full(2), 110);
    assert_eq!(requests(&actions).len(), 2, "40 + 50 ms was over at 100");
}

/// A config whose window, not the peers' limits, bounds the requests in flight.
fn windowed() -> SchedulerConfig {
    SchedulerConfig {
        window_initial: 4,
        ..config()
    }
}

/// The oldest request in flight.
fn oldest(s: &S) -> (&'static str, u32) {
    let (peer, chunk) = s.requests_in_flight().next().expect("a request in flight");
    (*peer, chunk)
}

fn refuse(s: &mut S, (peer, chunk): (&'static str, u32), reason: BusyReason, now: u64) {
    s.handle(
        Event::PeerBusy {
            peer,
            chunk,
            reason,
        },
        ms(now),
    );
    s.check_invariants();
}

/// Six peers that each have every chunk and room for 8 requests.
fn six_peers(s: &mut S) -> usize {
    ["a", "b", "c", "d", "e", "f"]
        .into_iter()
        .map(|peer| requests(&join(s, peer, Bitmap::full(64), 0)).len())
        .sum()
}

#[test]
fn the_window_bounds_requests_over_all_peers_and_shrinks_while_uplinks_refuse() {
    let mut s = S::new(64, windowed(), 3);
    assert_eq!(
        six_peers(&mut s),
        4,
        "room for 48 at the peers, a window of 4"
    );
    // A peer refuses for a full uplink; another is asked at once.
    let first = oldest(&s);
    refuse(&mut s, first, BusyReason::Egress, 50);
    assert_eq!(s.in_flight(), 4);
    // A chunk within the target, the window full: it grows to 5.
    let fast = oldest(&s);
    assert_eq!(requests(&arrive(&mut s, fast.0, fast.1, 100)).len(), 2);
    assert_eq!((s.window, s.in_flight()), (5, 5));
    // Each chunk over the 350 ms target, within a second of the refusal, shrinks it by one:
    // an arrival then asks for nothing until the window is under what is in flight.
    for now in [500, 600, 700] {
        let slow = oldest(&s);
        let asked = requests(&arrive(&mut s, slow.0, slow.1, now));
        assert!(asked.is_empty(), "{asked:?}");
    }
    assert_eq!((s.window, s.in_flight()), (2, 2), "the minimum");
    // At the minimum it stays: a slow arrival is replaced by one request.
    let slow = oldest(&s);
    assert_eq!(requests(&arrive(&mut s, slow.0, slow.1, 900)).len(), 1);
    assert_eq!((s.window, s.in_flight()), (2, 2));
}

#[test]
fn slow_chunks_grow_the_window_when_no_uplink_refused_nor_when_a_seed_only_spreads() {
    let mut s = S::new(64, windowed(), 4);
    assert_eq!(six_peers(&mut s), 4);
    // Slow chunks with nobody refusing: a shared link is slow, not this fetcher greedy.
    let slow = oldest(&s);
    assert_eq!(requests(&arrive(&mut s, slow.0, slow.1, 600)).len(), 2);
    assert_eq!(s.window, 5);
    // A refusal for super-seeding says nothing of uplinks.
    let spread = oldest(&s);
    refuse(&mut s, spread, BusyReason::SuperSeeding, 610);
    let slow = oldest(&s);
    arrive(&mut s, slow.0, slow.1, 700);
    assert_eq!(s.window, 6);
    // A window that does not limit the transfer does not grow.
    let mut cfg = windowed();
    cfg.requests_per_peer_max = 2;
    cfg.requests_per_peer_initial = 2;
    let mut s = S::new(64, cfg, 4);
    assert_eq!(requests(&join(&mut s, "a", Bitmap::full(64), 0)).len(), 2);
    for now in [100, 110] {
        let fast = oldest(&s);
        arrive(&mut s, fast.0, fast.1, now);
    }
    assert_eq!(s.window, 4, "two of four in flight: not full");
}

#[test]
fn the_node_s_other_transfers_count_against_the_window_but_never_shut_one_out() {
    let mut s = S::new(64, windowed(), 6);
    // Three of the node's requests are out for other blobs: one slot left of the window of 4.
    s.set_requests_elsewhere(3);
    assert_eq!(six_peers(&mut s), 1);
    // Others fill the window: the request out may be replaced, no more.
    s.set_requests_elsewhere(10);
    let one = oldest(&s);
    assert_eq!(requests(&arrive(&mut s, one.0, one.1, 100)).len(), 1);
    // A transfer with nothing of its own out still asks for one.
    let one = oldest(&s);
    refuse(&mut s, one, BusyReason::SuperSeeding, 110);
    assert_eq!(s.in_flight(), 1, "asked elsewhere at once");
    s.set_requests_elsewhere(0);
    let one = oldest(&s);
    assert_eq!(
        requests(&arrive(&mut s, one.0, one.1, 150)).len(),
        5,
        "the window of 5"
    );
}

#[test]
fn a_path_slower_than_the_target_is_judged_by_its_fastest_chunk() {
    let mut s = S::new(64, windowed(), 5);
    assert_eq!(six_peers(&mut s), 4);
    let first = oldest(&s);
    refuse(&mut s, first, BusyReason::Egress, 10);
    // 300 ms is the path itself (the fastest chunk), so 400 ms is within one and a half
    // times it: the window grows although 400 ms is over the 350 ms target.
    for now in [300, 400] {
        let chunk = oldest(&s);
        arrive(&mut s, chunk.0, chunk.1, now);
    }
    assert_eq!(s.window, 6);
    // Over one and a half times the fastest, with a refusal within the second: it shrinks.
    let chunk = oldest(&s);
    arrive(&mut s, chunk.0, chunk.1, 700);
    assert_eq!(s.window, 5);
}

#[test]
fn endgame_duplicates_only_overdue_requests() {
    let mut cfg = config();
    cfg.requests_per_peer_initial = cfg.requests_per_peer_max;
    let mut s = S::new(2, cfg, 3);
    let first = requests(&join(&mut s, "a", Bitmap::full(2), 0));
    assert_eq!(first.len(), 2);
    // "a" delivers in 10 ms: its usual delivery time.
    arrive(&mut s, "a", first[0].1, 10);
    let last = first[1].1;
    // At 11 ms the other request is not overdue: no duplicate to a newcomer.
    assert!(requests(&join(&mut s, "b", Bitmap::full(2), 11)).is_empty());
    // Past twice the usual time it is: the newcomer takes a duplicate.
    assert_eq!(requests(&s.handle(Event::Tick, ms(25))), vec![("b", last)]);
    s.check_invariants();
}

#[test]
fn invalid_data_bans_and_reassigns() {
    let mut cfg = config();
    cfg.endgame_duplicates_max = 1;
    let mut s = S::new(2, cfg, 9);
    let evil = requests(&join(&mut s, "evil", Bitmap::full(2), 0));
    assert_eq!(evil.len(), 2);
    join(&mut s, "good", Bitmap::full(2), 0);
    let actions = s.handle(
        Event::ChunkArrived {
            peer: "evil",
            chunk: 0,
            valid: false,
        },
        ms(5),
    );
    s.check_invariants();
    assert_eq!(actions[0], Action::Ban { peer: "evil" });
    let mut reqs = requests(&actions);
    reqs.sort();
    assert_eq!(reqs, vec![("good", 0), ("good", 1)]);
    assert_eq!(s.banned().collect::<Vec<_>>(), vec![&"evil"]);
    // Coming back does not help.
    let actions = join(&mut s, "evil", Bitmap::full(2), 6);
    assert_eq!(actions, vec![Action::Ban { peer: "evil" }]);
    assert!(s.peers().all(|(p, _)| *p != "evil"));
}

#[test]
fn malformed_bitfields_ban() {
    let mut s = S::new(10, config(), 9);
    assert_eq!(
        join(&mut s, "short", Bitmap::full(9), 0),
        vec![Action::Ban { peer: "short" }]
    );
    join(&mut s, "ok", bits(10, [1]), 0);
    let actions = have(&mut s, "ok", Bitmap::full(11), 1);
    assert_eq!(actions, vec![Action::Ban { peer: "ok" }]);
    assert_eq!(s.in_flight(), 0);
}

#[test]
fn downloading_peers_are_polled_complete_ones_are_not() {
    let mut s = S::new(10, config(), 2);
    join(&mut s, "partial", bits(10, [0]), 0);
    join(&mut s, "seed", bits(10, []), 0);
    join(&mut s, "full", Bitmap::full(10), 0);
    assert!(polls(&s.handle(Event::Tick, ms(99))).is_empty());
    assert_eq!(
        polls(&s.handle(Event::Tick, ms(100))),
        vec!["partial", "seed"]
    );
    assert!(polls(&s.handle(Event::Tick, ms(150))).is_empty());
    // An answer resets the peer's poll timer and may bring new chunks to request.
    let actions = have(&mut s, "seed", Bitmap::full(10), 160);
    assert_eq!(polls(&s.handle(Event::Tick, ms(200))), vec!["partial"]);
    assert!(requests(&actions).iter().all(|(p, _)| *p == "seed"));
    let seed = s.peers().find(|(p, _)| **p == "seed").unwrap().1;
    assert_eq!(seed.chunks_available, 10);
}

#[test]
fn peers_that_push_are_not_polled_until_their_pushes_stop() {
    let mut s = S::new(10, config(), 2);
    join(&mut s, "pushing", bits(10, [0]), 0);
    join(&mut s, "polled", bits(10, [1]), 0);
    s.set_pushes(&"pushing", true);
    s.check_invariants();
    assert_eq!(polls(&s.handle(Event::Tick, ms(100))), vec!["polled"]);
    assert_eq!(s.next_wakeup(), Some(ms(200)));
    // A push is news like a polled answer, and does not start polls again.
    let actions = have(&mut s, "pushing", bits(10, [0, 2]), 150);
    assert!(requests(&actions).contains(&("pushing", 2)));
    assert_eq!(polls(&s.handle(Event::Tick, ms(200))), vec!["polled"]);
    assert_eq!(polls(&s.handle(Event::Tick, ms(1000))), vec!["polled"]);
    // The feed closed: the peer is polled at once, then on the usual interval.
    s.set_pushes(&"pushing", false);
    s.check_invariants();
    assert_eq!(polls(&s.handle(Event::Tick, ms(1001))), vec!["pushing"]);
    assert!(polls(&s.handle(Event::Tick, ms(1050))).is_empty());
    s.check_invariants();
    assert_eq!(
        polls(&s.handle(Event::Tick, ms(1101))),
        vec!["polled", "pushing"]
    );
    // Unknown peers are ignored.
    s.set_pushes(&"stranger", true);
    s.check_invariants();
}

#[test]
fn completion_is_reported_once_and_ends_polling() {
    let mut s = S::new(0, config(), 0);
    assert!(s.is_complete());
    assert_eq!(s.handle(Event::Tick, ms(0)), vec![Action::Completed]);
    assert!(s.handle(Event::Tick, ms(1)).is_empty());

    let mut s = S::new(2, config(), 0);
    join(&mut s, "partial", bits(2, [0]), 0);
    arrive(&mut s, "partial", 0, 1);
    s.mark_have(1);
    assert_eq!(s.handle(Event::Tick, ms(500)), vec![Action::Completed]);
    assert!(
        s.handle(Event::Tick, ms(1000)).is_empty(),
        "no polls after completion"
    );
    assert!(arrive(&mut s, "partial", 1, 1001).is_empty());
    assert_eq!(s.next_wakeup(), None);
}

#[test]
fn resumed_chunks_are_never_requested() {
    let mut s = S::new(10, config(), 4);
    s.resume(&bits(10, [0, 2, 4, 6, 8])).unwrap();
    s.mark_have(9);
    s.mark_have(99); // ignored
    s.check_invariants();
    assert_eq!(
        s.resume(&Bitmap::new(11)),
        Err(SchedulerError::ResumeLength {
            expected: 10,
            actual: 11
        })
    );
    let chunks: BTreeSet<u32> = requests(&join(&mut s, "a", Bitmap::full(10), 0))
        .iter()
        .map(|(_, c)| *c)
        .collect();
    assert_eq!(chunks, [1, 3, 5, 7].into_iter().collect());
    assert!(!s.needs(0) && s.needs(1) && !s.needs(10));
}

#[test]
fn preferred_peers_are_offered_work_first() {
    let mut cfg = config();
    cfg.requests_per_peer_max = 1;
    for seed in 0..8 {
        let mut s = S::new(10, cfg.clone(), seed);
        join(&mut s, "far", Bitmap::full(10), 0);
        join(&mut s, "near", Bitmap::full(10), 0);
        s.set_preference(&"near", 10);
        s.set_preference(&"unknown", 5);
        s.handle(Event::Focus { chunk: 5 }, ms(1));
        // Both requests time out together, so both peers become free in the same pass.
        let actions = s.handle(Event::Tick, ms(1000));
        assert!(requests(&actions).is_empty(), "both paused");
        let actions = s.handle(Event::Tick, ms(1050));
        assert_eq!(
            requests(&actions),
            vec![("near", 5), ("far", 6)],
            "seed {seed}"
        );
        assert_eq!(
            s.peers().find(|(p, _)| **p == "near").unwrap().1.preference,
            10
        );
    }
}

#[test]
fn leaving_peers_release_their_requests() {
    let mut s = S::new(4, config(), 8);
    assert_eq!(requests(&join(&mut s, "a", Bitmap::full(4), 0)).len(), 4);
    // b arrives during the endgame and duplicates two chunks.
    let dups = requests(&join(&mut s, "b", bits(4, [0, 1]), 0));
    assert_eq!(dups.len(), 2);
    let actions = s.handle(Event::PeerLeft { peer: "a" }, ms(1));
    s.check_invariants();
    // b already holds 0 and 1; 2 and 3 wait for a peer that has them.
    assert!(requests(&actions).is_empty());
    assert_eq!(s.in_flight(), 2);
    // c takes the un-requested chunks first, then duplicates b's two.
    let reqs = requests(&join(&mut s, "c", Bitmap::full(4), 2));
    let chunks: Vec<u32> = reqs.iter().map(|(_, c)| *c).collect();
    assert_eq!(chunks.len(), 4);
    let first: BTreeSet<u32> = chunks[..2].iter().copied().collect();
    assert_eq!(first, [2, 3].into_iter().collect());
    // Unknown peers' events are harmless.
    s.handle(Event::PeerLeft { peer: "nobody" }, ms(3));
    s.handle(
        Event::RequestFailed {
            peer: "nobody",
            chunk: 1,
        },
        ms(3),
    );
    s.check_invariants();
}

#[test]
fn time_never_goes_backwards() {
    let mut s = S::new(1, config(), 8);
    join(&mut s, "a", Bitmap::full(1), 5000);
    // An earlier timestamp counts as 5000: the request is not expired by 5999.
    assert!(s.handle(Event::Tick, ms(10)).is_empty());
    assert!(s.handle(Event::Tick, ms(5999)).is_empty());
    assert!(s.handle(Event::Tick, ms(6000)).contains(&Action::Cancel {
        peer: "a",
        chunk: 0
    }));
}

#[test]
fn completion_cancels_requests_made_moot_by_resumed_chunks() {
    let mut s = S::new(2, config(), 1);
    assert_eq!(requests(&join(&mut s, "a", Bitmap::full(2), 0)).len(), 2);
    s.mark_have(0);
    s.mark_have(1);
    let actions = s.handle(Event::Tick, ms(1));
    s.check_invariants();
    let mut cancelled: Vec<u32> = actions
        .iter()
        .filter_map(|a| match a {
            Action::Cancel { peer: "a", chunk } => Some(*chunk),
            _ => None,
        })
        .collect();
    cancelled.sort();
    assert_eq!(cancelled, vec![0, 1]);
    assert_eq!(actions.last(), Some(&Action::Completed));
    assert_eq!(s.in_flight(), 0);
    assert_eq!(s.next_wakeup(), None);
}

#[test]
fn with_a_site_only_owned_chunks_are_asked_from_outside_until_a_mate_leaves_or_stalls() {
    let chunks = 64;
    let mut s = S::new(chunks, config(), 3);
    s.set_site(1);
    s.add_site_member(&"mate", 2);
    join(&mut s, "mate", Bitmap::new(chunks), 0);
    let asked = requests(&join(&mut s, "far", Bitmap::full(chunks), 0));
    assert!(!asked.is_empty());
    assert!(asked.iter().all(|(peer, _)| *peer == "far"));
    // Each chunk asked of the outside is one this node owns, never one of the mate's.
    let fetchers = s.site_fetchers();
    let owned: Vec<u32> = (0..chunks)
        .filter(|&c| s.owned_here(c, fetchers.as_deref()))
        .collect();
    assert!(owned.len() > 16 && owned.len() < 48, "{owned:?}");
    assert!(asked.iter().all(|(_, chunk)| owned.contains(chunk)));
    for (_, chunk) in &asked {
        arrive(&mut s, "far", *chunk, 10);
    }
    // The mate gets one of its own chunks: it is taken from the mate, not from outside.
    let mates = (0..chunks).find(|c| !owned.contains(c)).unwrap();
    let from_mate = requests(&s.handle(
        Event::PeerHave {
            peer: "mate",
            have: bits(chunks, [mates]),
        },
        ms(20),
    ));
    assert!(from_mate.contains(&("mate", mates)), "{from_mate:?}");
    assert!(
        s.requests_in_flight()
            .all(|(peer, chunk)| *peer == "mate" || owned.contains(&chunk))
    );
    // The mate leaves: its chunks pass to this node at once.
    s.handle(Event::PeerLeft { peer: "mate" }, ms(30));
    let fetchers = s.site_fetchers();
    assert!((0..chunks).all(|c| s.owned_here(c, fetchers.as_deref())));
    let in_flight: Vec<u32> = s.requests_in_flight().map(|(_, chunk)| chunk).collect();
    let mut taken_over = Vec::new();
    for chunk in in_flight {
        taken_over.extend(requests(&arrive(&mut s, "far", chunk, 40)));
    }
    assert!(
        taken_over
            .iter()
            .any(|(peer, chunk)| *peer == "far" && !owned.contains(chunk)),
        "{taken_over:?}"
    );
}

#[test]
fn a_stalled_site_lets_every_node_fetch_any_chunk_from_outside() {
    let chunks = 64;
    let mut s = S::new(chunks, config(), 4);
    s.set_site(1);
    s.add_site_member(&"mate", 2);
    join(&mut s, "mate", Bitmap::new(chunks), 0);
    let fetchers = s.site_fetchers();
    let owned: Vec<u32> = (0..chunks)
        .filter(|&c| s.owned_here(c, fetchers.as_deref()))
        .collect();
    join(&mut s, "far", Bitmap::full(chunks), 0);
    let mut asked: Vec<u32> = Vec::new();
    let mut now = 0;
    // The far peer answers everything asked; the mate never gains anything.
    while now < 5_000 {
        now += 100;
        let in_flight: Vec<u32> = s.requests_in_flight().map(|(_, chunk)| chunk).collect();
        asked.extend(&in_flight);
        for chunk in in_flight {
            arrive(&mut s, "far", chunk, now);
        }
        s.handle(Event::Tick, ms(now));
    }
    assert!(s.is_complete(), "the transfer stalled");
    assert!(asked.iter().any(|chunk| !owned.contains(chunk)));
}

#[test]
fn a_fill_that_starts_the_endgame_gives_the_peers_it_passed_their_duplicates() {
    let mut s = S::new(2, config(), 1);
    assert_eq!(
        requests(&join(&mut s, "x", bits(2, [0]), 0)),
        vec![("x", 0)]
    );
    assert_eq!(
        requests(&join(&mut s, "c", bits(2, [1]), 0)),
        vec![("c", 1)]
    );
    s.handle(
        Event::PeerBusy {
            peer: "c",
            chunk: 1,
            reason: BusyReason::Egress,
        },
        ms(1),
    );
    // Chunk 1 is un-requested again while c rests: no endgame, so b (holding only chunk 0,
    // in flight at x) gets nothing.
    assert!(requests(&join(&mut s, "b", bits(2, [0]), 2)).is_empty());
    s.set_preference(&"b", 1);
    // When c's rest ends, the fill passes b first, then asks c for chunk 1, which starts the
    // endgame: b gets its duplicate of chunk 0 (x has delivered nothing, so it is overdue)
    // in the same fill.
    let actions = s.handle(Event::Tick, ms(51));
    s.check_invariants();
    assert_eq!(requests(&actions), vec![("c", 1), ("b", 0)]);
}
