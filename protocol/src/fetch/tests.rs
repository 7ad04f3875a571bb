//! Hand-driven cases, one rule each, and a property test that throws random event orders at
//! the machine (hostile peers, vanishing peers, Busy storms, late and duplicate answers) and
//! checks its invariants after every event and its promises at the end.

use proptest::prelude::*;

use super::*;
use crate::scheduler::SchedulerConfig;

type F = Fetch<u32>;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn bits(len: u32, ones: impl IntoIterator<Item = u32>) -> Bitmap {
    Bitmap::with_ones(len, ones)
}

fn holds(len: u32, ones: impl IntoIterator<Item = u32>) -> Option<PeerHolds> {
    let chunks = bits(len, ones);
    Some(PeerHolds {
        complete: chunks.is_full(),
        chunks,
    })
}

fn have(fetch: &mut F, peer: u32, holds: Option<PeerHolds>, at: u64) -> Vec<FetchAction<u32>> {
    fetch.handle(FetchEvent::Have { peer, holds }, ms(at))
}

fn push(fetch: &mut F, peer: u32, holds: Option<PeerHolds>, at: u64) -> Vec<FetchAction<u32>> {
    fetch.handle(FetchEvent::Pushed { peer, holds }, ms(at))
}

fn scheduler(chunk_count: u32) -> Scheduler<u32> {
    let config = SchedulerConfig {
        requests_per_peer_initial: 8,
        ..SchedulerConfig::default()
    };
    Scheduler::new(chunk_count, config, 7)
}

fn asked(actions: &[FetchAction<u32>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            FetchAction::AskHave { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn requests(actions: &[FetchAction<u32>]) -> Vec<(u32, u32)> {
    actions
        .iter()
        .filter_map(|a| match a {
            FetchAction::Request { peer, chunk } => Some((*peer, *chunk)),
            _ => None,
        })
        .collect()
}

fn polls(actions: &[FetchAction<u32>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            FetchAction::PollHave { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

/// A fetch of `chunk_count` chunks that began at 0 with peers 1 and 2 connected, peer 1
/// holding every chunk.
fn running(chunk_count: u32) -> F {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    have(&mut fetch, 1, holds(chunk_count, 0..chunk_count), 1);
    fetch.begin(scheduler(chunk_count), ms(2));
    fetch
}

#[test]
fn each_connected_peer_is_asked_once_and_one_lacking_the_blob_again_later() {
    let mut fetch = F::new(ms(0), 7);
    let actions = fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    assert_eq!(asked(&actions), [1, 2]);
    let again = fetch.handle(
        FetchEvent::Candidates {
            peers: vec![1, 2, 3],
        },
        ms(10),
    );
    assert_eq!(asked(&again), [3], "asked once each");

    have(&mut fetch, 2, None, 20);
    assert_eq!(fetch.next_wakeup(), Some(ms(20) + PEER_REFRESH));
    assert!(asked(&fetch.handle(FetchEvent::Tick, ms(100))).is_empty());
    let later = fetch.handle(FetchEvent::Tick, ms(20) + PEER_REFRESH);
    assert_eq!(asked(&later), [2], "a lacking peer is asked again");

    // A candidate that is not connected is asked again only when named again.
    have(&mut fetch, 3, None, 30);
    assert!(asked(&fetch.handle(FetchEvent::Tick, ms(2000))).is_empty());
    assert_eq!(
        asked(&fetch.handle(FetchEvent::Candidates { peers: vec![3] }, ms(2100))),
        [3]
    );
}

fn lookups(actions: &[FetchAction<u32>]) -> usize {
    occurrences(actions, &FetchAction::LookUp)
}

fn provides(actions: &[FetchAction<u32>]) -> usize {
    occurrences(actions, &FetchAction::Provide)
}

fn occurrences(actions: &[FetchAction<u32>], action: &FetchAction<u32>) -> usize {
    actions.iter().filter(|a| *a == action).count()
}

#[test]
fn the_first_lookup_goes_at_once_only_where_the_connected_peers_cannot_serve() {
    let mut alone = F::new(ms(0), 7);
    let first = alone.handle(FetchEvent::Connected { peers: vec![] }, ms(0));
    assert_eq!(lookups(&first), 1, "nobody connected");

    let mut fetch = F::new(ms(0), 7);
    let first = fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    assert_eq!(lookups(&first), 0, "the connected peers may have it");
    assert_eq!(lookups(&have(&mut fetch, 1, None, 5)), 0, "peer 2 may");
    assert_eq!(
        lookups(&have(&mut fetch, 2, None, 6)),
        1,
        "neither has any of it"
    );
}

#[test]
fn the_dht_is_asked_every_few_seconds_until_enough_sources_are_known() {
    let mut fetch = F::new(ms(0), 7);
    let first = fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    assert_eq!(
        lookups(&first),
        0,
        "not while a connected peer may have the blob"
    );
    have(&mut fetch, 1, holds(4, [0]), 1);
    assert_eq!(
        fetch.next_wakeup(),
        Some(LOOKUP_EVERY),
        "one source is too few"
    );
    assert_eq!(
        lookups(&fetch.handle(FetchEvent::Tick, LOOKUP_EVERY)),
        1,
        "LOOKUP_EVERY after the start"
    );
    assert_eq!(
        lookups(&fetch.handle(FetchEvent::Tick, ms(6000))),
        0,
        "one at a time"
    );
    // Peer 2 is news: the next lookup comes as soon as ever.
    fetch.handle(FetchEvent::Candidates { peers: vec![1, 2] }, ms(7000));
    assert_eq!(fetch.next_wakeup(), Some(ms(7000) + LOOKUP_EVERY));
    assert_eq!(lookups(&fetch.handle(FetchEvent::Tick, ms(11_900))), 0);
    // Past due is due, whatever event comes first.
    assert_eq!(lookups(&have(&mut fetch, 2, None, 12_600)), 1);

    // Lookups that name nobody new come further and further apart.
    let mut ended = 12_700;
    let mut wait = LOOKUP_EVERY;
    for _ in 0..6 {
        fetch.handle(FetchEvent::Candidates { peers: vec![1] }, ms(ended));
        wait = (wait * 2).min(LOOKUP_EVERY_MAX);
        let due = ms(ended) + wait;
        let before = fetch.handle(FetchEvent::Tick, due - ms(100));
        assert_eq!(lookups(&before), 0, "{wait:?} after {ended} ms");
        assert_eq!(lookups(&fetch.handle(FetchEvent::Tick, due)), 1);
        ended = due.as_millis() as u64 + 50;
    }
    assert_eq!(wait, LOOKUP_EVERY_MAX);
    fetch.handle(FetchEvent::Candidates { peers: vec![] }, ms(ended));

    // Enough sources: no more lookups, and no wakeup for one.
    let enough = SOURCES_ENOUGH as u32;
    let now = ended + 100;
    fetch.handle(
        FetchEvent::Connected {
            peers: (1..=enough).collect(),
        },
        ms(now),
    );
    for peer in 2..=enough {
        have(&mut fetch, peer, holds(4, [1]), now);
    }
    assert_eq!(fetch.sources(), SOURCES_ENOUGH);
    let later = ms(now) + LOOKUP_EVERY_MAX * 2;
    assert!(fetch.next_wakeup().is_none_or(|at| at > later));
    assert_eq!(lookups(&fetch.handle(FetchEvent::Tick, later)), 0);
    // A source leaves: the lookups resume.
    let left = fetch.handle(FetchEvent::Banned { peer: 2 }, later + ms(1));
    assert_eq!(lookups(&left), 1);
}

#[test]
fn a_node_records_itself_as_a_provider_once_and_only_where_its_connected_peers_fall_short() {
    // One source connected: no record at the start, one with the lookup LOOKUP_EVERY later.
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    have(&mut fetch, 1, holds(4, [0]), 1);
    assert_eq!(provides(&fetch.begin(scheduler(4), ms(2))), 0);
    let lookup = fetch.handle(FetchEvent::Tick, LOOKUP_EVERY);
    assert_eq!((lookups(&lookup), provides(&lookup)), (1, 1));
    fetch.handle(
        FetchEvent::Candidates { peers: vec![] },
        LOOKUP_EVERY + ms(1),
    );
    let again = fetch.handle(FetchEvent::Tick, LOOKUP_EVERY * 4);
    assert_eq!((lookups(&again), provides(&again)), (1, 0), "once");

    // A lookup before the index: the record comes with the index.
    let mut fetch = F::new(ms(0), 7);
    let alone = fetch.handle(FetchEvent::Connected { peers: vec![] }, ms(0));
    assert_eq!((lookups(&alone), provides(&alone)), (1, 0));
    fetch.handle(FetchEvent::Candidates { peers: vec![3] }, ms(1));
    have(&mut fetch, 3, holds(4, [0, 1]), 2);
    assert_eq!(provides(&fetch.begin(scheduler(4), ms(3))), 1);

    // Whole before any lookup: recorded on completion, where few peers showed the blob...
    let arrived = FetchEvent::Chunk {
        peer: 1,
        chunk: 0,
        reply: ChunkReply::Verified,
    };
    let mut fetch = running(1);
    let done = fetch.handle(arrived.clone(), ms(10));
    assert!(
        done.ends_with(&[FetchAction::Provide, FetchAction::Completed]),
        "{done:?}"
    );
    // ...and not among enough of them.
    let mut fetch = F::new(ms(0), 7);
    let peers: Vec<u32> = (1..=SOURCES_ENOUGH as u32).collect();
    fetch.handle(
        FetchEvent::Connected {
            peers: peers.clone(),
        },
        ms(0),
    );
    for &peer in &peers {
        have(&mut fetch, peer, holds(1, [0]), 1);
    }
    fetch.begin(scheduler(1), ms(2));
    let done = fetch.handle(arrived, ms(10));
    assert_eq!(done.last(), Some(&FetchAction::Completed));
    assert_eq!(provides(&done), 0, "{done:?}");
}

#[test]
fn bitfields_heard_before_the_index_join_when_the_scheduler_begins() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    have(&mut fetch, 1, holds(4, 0..4), 1);
    let actions = have(&mut fetch, 2, holds(4, [1]), 1);
    assert_eq!(
        actions,
        [FetchAction::Watch { peer: 2 }],
        "no scheduler, no requests"
    );
    let actions = fetch.begin(scheduler(4), ms(5));
    assert!(actions.contains(&FetchAction::Joined { peer: 1 }));
    assert!(actions.contains(&FetchAction::Joined { peer: 2 }));
    let mut chunks: Vec<u32> = requests(&actions).into_iter().map(|(_, c)| c).collect();
    chunks.sort();
    chunks.dedup();
    assert_eq!(chunks, [0, 1, 2, 3], "every chunk asked for");
}

#[test]
fn a_peer_still_fetching_is_watched_and_not_polled_while_it_pushes() {
    let mut fetch = running(8);
    let actions = have(&mut fetch, 2, holds(8, [0]), 10);
    assert!(actions.contains(&FetchAction::Watch { peer: 2 }));
    assert!(fetch.is_watching(&2));
    push(&mut fetch, 2, holds(8, [0, 1]), 20);
    for t in (100..3000).step_by(100) {
        assert!(
            polls(&fetch.handle(FetchEvent::Tick, ms(t))).is_empty(),
            "no polls at {t}"
        );
    }
    // Its feed broke: polled again at once.
    fetch.watch_ended(&2);
    assert!(!fetch.is_watching(&2));
    assert_eq!(polls(&fetch.handle(FetchEvent::Tick, ms(3000))), [2]);
    // A poll's answer watches it again.
    let actions = have(&mut fetch, 2, holds(8, [0, 1]), 3010);
    assert!(actions.contains(&FetchAction::Watch { peer: 2 }));
}

#[test]
fn a_push_of_the_whole_blob_or_of_nothing_ends_the_watch() {
    let mut fetch = running(4);
    have(&mut fetch, 2, holds(4, [0]), 10);
    push(&mut fetch, 2, holds(4, 0..4), 20);
    assert!(!fetch.is_watching(&2));

    let mut fetch = running(4);
    have(&mut fetch, 2, holds(4, [0]), 10);
    push(&mut fetch, 2, None, 20);
    assert!(!fetch.is_watching(&2));
    // A late push after the watch ended is news, but starts no watch.
    let actions = push(&mut fetch, 2, holds(4, [0, 1]), 30);
    assert!(!actions.contains(&FetchAction::Watch { peer: 2 }));
}

/// Peers 1..=`count` connected to a running fetch of 8 chunks (peer 1 holds the blob whole),
/// in the fetch's own rank order, best first.
fn ranked_peers(fetch: &F, count: u32) -> Vec<u32> {
    let mut peers: Vec<u32> = (2..=count).collect();
    peers.sort_by_key(|peer| fetch.rank(peer));
    peers
}

fn watched(actions: &[FetchAction<u32>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            FetchAction::Watch { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

fn used(fetch: &F) -> Vec<u32> {
    let mut peers: Vec<u32> = fetch
        .scheduler()
        .map(|s| s.peers().map(|(peer, _)| *peer).collect())
        .unwrap_or_default();
    peers.sort_unstable();
    peers
}

#[test]
fn the_best_ranked_peers_still_fetching_are_used_whichever_answer_first() {
    let mut fetch = running(8).with_fetching_max(3);
    let ranked = ranked_peers(&fetch, 8);
    fetch.handle(
        FetchEvent::Connected {
            peers: (1..=8).collect(),
        },
        ms(3),
    );
    // The worst-ranked answer first and take the places; each better one puts out the last.
    let mut unwatched = Vec::new();
    for (i, &peer) in ranked.iter().rev().enumerate() {
        let actions = have(&mut fetch, peer, holds(8, [0]), 10 + i as u64);
        unwatched.extend(actions.iter().filter_map(|a| match a {
            FetchAction::Unwatch { peer } => Some(*peer),
            _ => None,
        }));
    }
    let mut best: Vec<u32> = ranked[..3].to_vec();
    best.push(1);
    best.sort_unstable();
    assert_eq!(used(&fetch), best, "the three best and the whole peer");
    let mut watching: Vec<u32> = fetch.watching().copied().collect();
    watching.sort_unstable();
    assert_eq!(watching, best[1..], "the whole peer is not watched");
    assert_eq!(unwatched.len(), ranked.len() - 3, "each put out once");
    // A push from a peer put out changes nothing.
    let late = push(&mut fetch, ranked[6], holds(8, [0, 1, 2]), 40);
    assert!(watched(&late).is_empty());
    assert_eq!(used(&fetch), best);
}

#[test]
fn a_spare_is_asked_again_when_a_used_peer_completes_or_leaves() {
    let mut fetch = running(8).with_fetching_max(2);
    let ranked = ranked_peers(&fetch, 5);
    let mut peers: Vec<u32> = (1..=5).collect();
    fetch.handle(
        FetchEvent::Connected {
            peers: peers.clone(),
        },
        ms(3),
    );
    for (i, &peer) in ranked.iter().enumerate() {
        have(&mut fetch, peer, holds(8, [0]), 10 + i as u64);
    }
    assert_eq!(fetch.watching().count(), 2, "two used, two spares");
    // The best-ranked used peer holds the blob whole now: the best spare is asked again.
    let actions = push(&mut fetch, ranked[0], holds(8, 0..8), 20);
    assert_eq!(asked(&actions), [ranked[2]]);
    let actions = have(&mut fetch, ranked[2], holds(8, [0, 3]), 21);
    assert_eq!(watched(&actions), [ranked[2]]);
    // The other used peer disconnects: the last spare is asked.
    peers.retain(|&peer| peer != ranked[1]);
    let actions = fetch.handle(FetchEvent::Connected { peers }, ms(30));
    assert_eq!(asked(&actions), [ranked[3]]);
    // Asked once per place: ticks ask nobody more.
    assert!(asked(&fetch.handle(FetchEvent::Tick, ms(100))).is_empty());
}

#[test]
fn site_mates_are_used_whatever_the_bound() {
    let mut fetch = running(8).with_fetching_max(1);
    fetch.add_site_mate(4);
    fetch.handle(
        FetchEvent::Connected {
            peers: vec![1, 2, 3, 4],
        },
        ms(3),
    );
    for (i, peer) in [2, 3, 4].into_iter().enumerate() {
        have(&mut fetch, peer, holds(8, [0]), 10 + i as u64);
    }
    assert!(fetch.is_watching(&4), "the site-mate");
    assert_eq!(fetch.watching().count(), 2, "and one other");
    // A spare found to be a site-mate is asked again at the next tick, and used.
    let spare = if fetch.is_watching(&2) { 3 } else { 2 };
    fetch.add_site_mate(spare);
    assert_eq!(asked(&fetch.handle(FetchEvent::Tick, ms(100))), [spare]);
    let actions = have(&mut fetch, spare, holds(8, [0]), 110);
    assert_eq!(watched(&actions), [spare]);
}

#[test]
fn chunks_go_front_to_back_only_while_every_peer_around_holds_the_blob_whole() {
    // Peer 1 whole, peer 2 connected and not heard from: random order for a while.
    let mut fetch = running(4);
    assert!(!fetch.in_order());
    fetch.handle(FetchEvent::Tick, IN_ORDER_AFTER);
    assert!(fetch.in_order(), "nobody fetching showed up");

    // Every connected peer whole: in order at once.
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    have(&mut fetch, 1, holds(4, 0..4), 1);
    assert!(fetch.in_order());

    // Once a peer still fetching shows, never again.
    let mut fetch = running(4);
    have(&mut fetch, 2, holds(4, [3]), 10);
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(20));
    fetch.handle(FetchEvent::Tick, IN_ORDER_AFTER * 10);
    assert!(!fetch.in_order());
}

#[test]
fn a_verified_chunk_is_kept_once_and_late_duplicates_are_not() {
    let mut fetch = running(2);
    let kept = |actions: &[FetchAction<u32>]| actions.contains(&FetchAction::Keep { chunk: 0 });
    let reply = FetchEvent::Chunk {
        peer: 1,
        chunk: 0,
        reply: ChunkReply::Verified,
    };
    assert!(kept(&fetch.handle(reply.clone(), ms(10))));
    assert!(!kept(&fetch.handle(reply, ms(11))), "a duplicate");
    let actions = fetch.handle(
        FetchEvent::Chunk {
            peer: 1,
            chunk: 1,
            reply: ChunkReply::Verified,
        },
        ms(12),
    );
    assert_eq!(actions.last(), Some(&FetchAction::Completed));
    assert!(fetch.is_complete());
}

#[test]
fn a_peer_sending_bad_chunks_is_banned_and_never_asked_again() {
    let mut fetch = running(4);
    let actions = fetch.handle(
        FetchEvent::Chunk {
            peer: 1,
            chunk: 0,
            reply: ChunkReply::Wrong,
        },
        ms(10),
    );
    assert!(actions.contains(&FetchAction::Ban { peer: 1 }));
    assert!(!actions.contains(&FetchAction::Keep { chunk: 0 }));
    let later = have(&mut fetch, 1, holds(4, 0..4), 20);
    assert!(later.is_empty(), "a banned peer's answers are ignored");
    let connected = fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(30));
    assert!(asked(&connected).is_empty());
}

#[test]
fn failures_of_cancelled_requests_are_not_news() {
    // Two peers with both chunks: the endgame asks both for chunk 1, and the first copy to
    // arrive cancels the other.
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    have(&mut fetch, 1, holds(2, 0..2), 0);
    have(&mut fetch, 2, holds(2, 0..2), 0);
    let mut out = fetch.begin(scheduler(2), ms(0));
    for chunk in 0..2 {
        let arrived = FetchEvent::Chunk {
            peer: requests(&out)[0].0,
            chunk,
            reply: ChunkReply::Verified,
        };
        out.extend(fetch.handle(arrived, ms(5)));
    }
    let busy_of_a_cancelled = fetch.handle(
        FetchEvent::Chunk {
            peer: 2,
            chunk: 1,
            reply: ChunkReply::Busy(BusyReason::Egress),
        },
        ms(6),
    );
    assert!(busy_of_a_cancelled.is_empty());
}

#[test]
fn peers_that_disconnect_leave_with_their_requests_and_are_asked_when_back() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    have(&mut fetch, 1, holds(4, 0..4), 0);
    have(&mut fetch, 2, holds(4, 0..4), 0);
    let first = fetch.begin(scheduler(4), ms(0));
    assert!(requests(&first).iter().any(|&(peer, _)| peer == 2));
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(10));
    let scheduler = fetch.scheduler().expect("begun");
    assert!(scheduler.peers().all(|(&peer, _)| peer == 1));
    assert!(scheduler.requests_in_flight().all(|(&peer, _)| peer == 1));
    let back = fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(20));
    assert_eq!(asked(&back), [2], "asked again when it is back");
}

/// One peer of the property test: what it holds and how it answers.
#[derive(Debug, Clone)]
struct Peer {
    holds: Bitmap,
    hostile: bool,
    busy: bool,
}

#[derive(Debug, Clone)]
enum Step {
    Connect(Vec<u32>),
    Answer(u32),
    Push(u32),
    PushNothing(u32),
    WatchBroke(u32),
    /// The oldest outstanding chunk request of this many is answered.
    Reply(usize),
    Fail(usize),
    Focus(u32),
    /// The index asked of a peer could not be used: invalid (0), missing (1), failed (2).
    Index(u32, u8),
    Delegation(u32, bool),
    /// The DHT answers the lookup the fetch asked for, naming these peers.
    LookedUp(Vec<u32>),
    Tick,
}

fn step(peers: u32, chunk_count: u32) -> impl Strategy<Value = Step> {
    prop_oneof![
        proptest::collection::vec(0..peers, 0..peers as usize).prop_map(Step::Connect),
        (0..peers).prop_map(Step::Answer),
        (0..peers).prop_map(Step::Push),
        (0..peers).prop_map(Step::PushNothing),
        (0..peers).prop_map(Step::WatchBroke),
        (0usize..8).prop_map(Step::Reply),
        (0usize..8).prop_map(Step::Reply),
        (0usize..8).prop_map(Step::Reply),
        (0usize..8).prop_map(Step::Fail),
        (0..chunk_count).prop_map(Step::Focus),
        (0..peers, 0u8..3).prop_map(|(peer, kind)| Step::Index(peer, kind)),
        (0..peers, any::<bool>()).prop_map(|(peer, accepted)| Step::Delegation(peer, accepted)),
        proptest::collection::vec(0..peers, 0..3).prop_map(Step::LookedUp),
        Just(Step::Tick),
    ]
}

fn peer() -> impl Strategy<Value = Peer> {
    (
        crate::testing::arbitrary_bitmap(),
        prop::bool::weighted(0.2),
        prop::bool::weighted(0.2),
    )
        .prop_map(|(holds, hostile, busy)| Peer {
            holds,
            hostile,
            busy,
        })
}

proptest! {
    #[test]
    fn random_event_orders_keep_the_invariants_and_only_verified_news_is_kept(
        chunk_count in 1u32..24,
        peers in proptest::collection::vec(peer(), 1..6),
        begin_after in 0usize..20,
        with_upstream in any::<bool>(),
        fetching_max in 1usize..4,
        steps in proptest::collection::vec(step(6, 24), 1..200),
    ) {
        let peers: Vec<Peer> = peers
            .into_iter()
            .map(|mut peer| {
                let mut holds = Bitmap::new(chunk_count);
                for chunk in peer.holds.iter_ones().filter(|&c| c < chunk_count) {
                    holds.set(chunk);
                }
                peer.holds = holds;
                peer
            })
            .collect();
        let count = peers.len() as u32;
        let answer = |peer: u32| {
            let peer = &peers[peer as usize];
            (peer.holds.count_ones() > 0).then(|| PeerHolds {
                chunks: peer.holds.clone(),
                complete: peer.holds.is_full(),
            })
        };
        let fetch = if with_upstream { upstream_fetch() } else { F::new(ms(0), 7) };
        let mut fetch = fetch.with_fetching_max(fetching_max);
        let mut outstanding: Vec<(u32, u32)> = Vec::new();
        let mut kept = Bitmap::new(chunk_count);
        let mut banned = std::collections::HashSet::new();
        let mut lied = std::collections::HashSet::new();
        let mut heard = std::collections::HashSet::new();
        let mut completed = 0;
        let mut gave_up = 0;
        let mut over = false;
        let mut looking_up = false;
        for (i, step) in steps.into_iter().enumerate() {
            let now = ms(i as u64 * 37);
            if over {
                prop_assert!(fetch.handle(FetchEvent::Tick, now).is_empty(), "nothing after the end");
                break;
            }
            if i == begin_after {
                let actions = fetch.begin(scheduler(chunk_count), now);
                outstanding.extend(requests(&actions));
            }
            let event = match step {
                Step::Connect(connected) => FetchEvent::Connected {
                    peers: connected.into_iter().filter(|&p| p < count).collect(),
                },
                Step::Answer(peer) if peer < count => FetchEvent::Have { peer, holds: answer(peer) },
                Step::Push(peer) if peer < count => FetchEvent::Pushed { peer, holds: answer(peer) },
                Step::PushNothing(peer) if peer < count => FetchEvent::Pushed { peer, holds: None },
                Step::WatchBroke(peer) => {
                    fetch.watch_ended(&peer);
                    continue;
                }
                Step::Reply(n) | Step::Fail(n) if outstanding.is_empty() || n >= outstanding.len() => FetchEvent::Tick,
                Step::Reply(n) => {
                    let (peer, chunk) = outstanding.remove(n);
                    let sender = &peers[peer as usize];
                    let reply = if !sender.holds.get(chunk) {
                        ChunkReply::Failed
                    } else if sender.hostile {
                        ChunkReply::Wrong
                    } else if sender.busy {
                        // Both kinds, as a seed's super-seeding and a full uplink mix.
                        ChunkReply::Busy(if chunk % 2 == 0 {
                            BusyReason::Egress
                        } else {
                            BusyReason::SuperSeeding
                        })
                    } else {
                        ChunkReply::Verified
                    };
                    FetchEvent::Chunk { peer, chunk, reply }
                }
                Step::Fail(n) => {
                    let (peer, chunk) = outstanding.remove(n);
                    FetchEvent::Chunk { peer, chunk, reply: ChunkReply::Failed }
                }
                Step::Focus(chunk) if chunk < chunk_count => FetchEvent::Focus { chunk },
                Step::Index(peer, kind) if peer < count => {
                    let answer = match kind {
                        0 => IndexAnswer::Invalid,
                        1 => IndexAnswer::Missing,
                        _ => IndexAnswer::Failed,
                    };
                    if answer == IndexAnswer::Invalid {
                        lied.insert(peer);
                    }
                    FetchEvent::Index { peer, answer }
                }
                Step::Delegation(peer, accepted) if peer < count => FetchEvent::Delegation { peer, accepted },
                Step::LookedUp(named) if looking_up => {
                    looking_up = false;
                    FetchEvent::Candidates { peers: named.into_iter().filter(|&p| p < count).collect() }
                }
                _ => FetchEvent::Tick,
            };
            if let FetchEvent::Have { peer, holds: Some(_) } | FetchEvent::Pushed { peer, holds: Some(_) } = &event {
                heard.insert(*peer);
            }
            let replied = match &event {
                FetchEvent::Chunk { peer, reply, .. } => Some((*peer, *reply)),
                _ => None,
            };
            for action in fetch.handle(event, now) {
                match action {
                    FetchAction::Request { peer, chunk } => {
                        prop_assert!(!banned.contains(&peer), "a banned peer is asked");
                        outstanding.push((peer, chunk));
                    }
                    FetchAction::Keep { chunk } => {
                        prop_assert_eq!(replied.map(|(_, r)| r), Some(ChunkReply::Verified));
                        prop_assert!(!kept.get(chunk), "chunk {} kept twice", chunk);
                        kept.set(chunk);
                    }
                    FetchAction::Ban { peer } => {
                        prop_assert!(
                            peers[peer as usize].hostile || lied.contains(&peer),
                            "an honest peer banned"
                        );
                        banned.insert(peer);
                    }
                    FetchAction::Completed => completed += 1,
                    FetchAction::RequestIndex { peer } => {
                        prop_assert!(fetch.scheduler().is_none());
                        prop_assert!(heard.contains(&peer) && !banned.contains(&peer));
                    }
                    FetchAction::Relay { peer } => {
                        prop_assert!(heard.contains(&peer));
                        over = true;
                    }
                    FetchAction::Download => {
                        prop_assert!(with_upstream && fetch.scheduler().is_none());
                        over = true;
                    }
                    FetchAction::Delegate { .. } => prop_assert!(with_upstream),
                    FetchAction::GiveUp(_) => gave_up += 1,
                    FetchAction::Unwatch { peer } => {
                        prop_assert!(!fetch.is_watching(&peer), "still watched once put out");
                    }
                    FetchAction::LookUp => {
                        prop_assert!(!looking_up, "a second lookup while one runs");
                        prop_assert!(fetch.sources() < SOURCES_ENOUGH);
                        looking_up = true;
                    }
                    _ => {}
                }
            }
            if let Some(scheduler) = fetch.scheduler() {
                prop_assert_eq!(scheduler.have(), &kept, "the scheduler has what was kept");
            }
        }
        prop_assert!(completed <= 1 && gave_up <= 1);
        prop_assert_eq!(completed == 1, fetch.is_complete());
    }
}

fn index_requests(actions: &[FetchAction<u32>]) -> Vec<u32> {
    actions
        .iter()
        .filter_map(|a| match a {
            FetchAction::RequestIndex { peer } => Some(*peer),
            _ => None,
        })
        .collect()
}

#[test]
fn the_index_is_asked_of_one_source_at_a_time_and_a_liar_is_banned() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(
        FetchEvent::Connected {
            peers: vec![1, 2, 3],
        },
        ms(0),
    );
    assert_eq!(index_requests(&have(&mut fetch, 2, holds(4, 0..4), 1)), [2]);
    assert!(index_requests(&have(&mut fetch, 1, holds(4, 0..4), 2)).is_empty());
    let lied = fetch.handle(
        FetchEvent::Index {
            peer: 2,
            answer: IndexAnswer::Invalid,
        },
        ms(3),
    );
    assert!(lied.contains(&FetchAction::Ban { peer: 2 }));
    assert_eq!(index_requests(&lied), [1], "the next source");
    let failed = fetch.handle(
        FetchEvent::Index {
            peer: 1,
            answer: IndexAnswer::Failed,
        },
        ms(4),
    );
    assert!(index_requests(&failed).is_empty(), "nobody left to ask");
    assert_eq!(index_requests(&have(&mut fetch, 3, holds(4, 0..4), 5)), [3]);
    let begun = fetch.begin(scheduler(4), ms(6));
    assert!(!begun.contains(&FetchAction::Joined { peer: 2 }), "banned");
    assert!(begun.contains(&FetchAction::Joined { peer: 1 }));
    assert!(index_requests(&have(&mut fetch, 1, holds(4, 0..4), 7)).is_empty());
}

#[test]
fn a_source_without_an_index_is_downloading_the_blob_and_it_is_relayed() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    have(&mut fetch, 1, holds(4, [0]), 1);
    let actions = fetch.handle(
        FetchEvent::Index {
            peer: 1,
            answer: IndexAnswer::Missing,
        },
        ms(2),
    );
    assert_eq!(actions, [FetchAction::Relay { peer: 1 }]);
    assert!(
        fetch.handle(FetchEvent::Tick, ms(20_000)).is_empty(),
        "over"
    );
    assert_eq!(fetch.next_wakeup(), None);
}

/// A fetch with an upstream, this node being 0; a peer's rank is its id, so the highest id
/// connected is the chosen fetcher.
fn upstream_fetch() -> F {
    let upstream = Upstream {
        local: 0,
        rank: Box::new(|peer: &u32| [*peer as u8; 32]),
    };
    F::with_upstream(ms(0), 7, upstream)
}

#[test]
fn a_blob_nobody_has_is_downloaded_by_the_highest_ranked_node() {
    // Alone: at once.
    let mut fetch = upstream_fetch();
    let actions = fetch.handle(FetchEvent::Connected { peers: vec![] }, ms(0));
    assert_eq!(actions, [FetchAction::Download]);

    // Peers 1 and 2 lack it: once both answered the DHT is asked, and when it names nobody
    // else, 2 ranks highest and is asked to fetch.
    let mut fetch = upstream_fetch();
    fetch.handle(FetchEvent::Connected { peers: vec![1, 2] }, ms(0));
    assert!(have(&mut fetch, 1, None, 5).is_empty());
    assert_eq!(have(&mut fetch, 2, None, 6), [FetchAction::LookUp]);
    assert_eq!(
        fetch.handle(FetchEvent::Candidates { peers: vec![] }, ms(7)),
        [FetchAction::Delegate { peer: 2 }]
    );
    // It declines: the next highest is 1 (this node, 0, ranks lowest).
    let declined = fetch.handle(
        FetchEvent::Delegation {
            peer: 2,
            accepted: false,
        },
        ms(8),
    );
    assert_eq!(declined, [FetchAction::Delegate { peer: 1 }]);
    let accepted = fetch.handle(
        FetchEvent::Delegation {
            peer: 1,
            accepted: true,
        },
        ms(9),
    );
    assert_eq!(asked(&accepted), [1], "asked what it has");
    // It shows progress, then none for DELEGATE_STALL: this node downloads it.
    have(&mut fetch, 1, holds(4, []), 10);
    let waiting = fetch.handle(FetchEvent::Tick, ms(5_000));
    assert!(!waiting.contains(&FetchAction::Download), "{waiting:?}");
    let stalled = fetch.handle(FetchEvent::Tick, ms(10) + fallback::DELEGATE_STALL + ms(1));
    assert_eq!(stalled, [FetchAction::Download]);
}

#[test]
fn an_unanswered_have_holds_the_upstream_back_for_at_most_a_second() {
    let mut fetch = upstream_fetch();
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    assert!(fetch.handle(FetchEvent::Tick, ms(500)).is_empty());
    assert_eq!(fetch.next_wakeup(), Some(fallback::UPSTREAM_AFTER));
    let after = fetch.handle(FetchEvent::Tick, fallback::UPSTREAM_AFTER + ms(1));
    assert_eq!(after, [FetchAction::Delegate { peer: 1 }]);
    // A delegate that disconnects is given up on at once.
    fetch.handle(
        FetchEvent::Delegation {
            peer: 1,
            accepted: true,
        },
        ms(1_100),
    );
    let gone = fetch.handle(FetchEvent::Connected { peers: vec![] }, ms(1_200));
    assert_eq!(gone, [FetchAction::Download]);
}

#[test]
fn a_lone_fetch_still_gives_up_when_another_event_passes_the_deadline_before_its_tick() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![] }, ms(0));
    // A peer refresh lands just after the deadline, before the tick due at it.
    fetch.handle(
        FetchEvent::Connected { peers: vec![] },
        LOCATE_TIMEOUT + ms(1),
    );
    let due = fetch.next_wakeup().expect("the give-up is still due");
    assert!(due <= LOCATE_TIMEOUT + ms(1), "{due:?}");
    let ticked = fetch.handle(FetchEvent::Tick, LOCATE_TIMEOUT + ms(2));
    assert!(
        ticked.contains(&FetchAction::GiveUp(GiveUp::NoPeer)),
        "{ticked:?}"
    );
    assert_eq!(
        fetch.next_wakeup(),
        None,
        "given up: nothing more to wake for"
    );
}

#[test]
fn a_fetch_gives_up_once_when_nobody_has_the_blob_or_nothing_arrives() {
    let mut fetch = F::new(ms(0), 7);
    fetch.handle(FetchEvent::Connected { peers: vec![1] }, ms(0));
    have(&mut fetch, 1, None, 1);
    let give_up = FetchAction::GiveUp(GiveUp::NoPeer);
    assert!(
        !fetch
            .handle(FetchEvent::Tick, LOCATE_TIMEOUT)
            .contains(&give_up)
    );
    let gave_up = fetch.handle(FetchEvent::Tick, LOCATE_TIMEOUT + ms(1));
    assert!(gave_up.contains(&give_up));
    let again = fetch.handle(FetchEvent::Tick, LOCATE_TIMEOUT + ms(200));
    assert!(!again.contains(&give_up), "once");

    let mut fetch = running(4);
    let kept = fetch.handle(
        FetchEvent::Chunk {
            peer: 1,
            chunk: 0,
            reply: ChunkReply::Verified,
        },
        ms(1_000),
    );
    assert!(kept.contains(&FetchAction::Keep { chunk: 0 }));
    let waited = ms(1_000) + STALL_TIMEOUT;
    assert!(
        !fetch
            .handle(FetchEvent::Tick, waited)
            .contains(&FetchAction::GiveUp(GiveUp::Stalled))
    );
    let stalled = fetch.handle(FetchEvent::Tick, waited + ms(1));
    assert!(stalled.contains(&FetchAction::GiveUp(GiveUp::Stalled)));
}
