//! One host's exchange recorded in the simulator, replayed into a fresh fetch machine with a
//! `Tick` on every point of the 100 ms grid, as the node's transfer ticked until it learnt
//! `Fetch::next_tick` (and as any driver may), where the simulator ticks only when the
//! machine asks. Both must get the same actions: the recorded steps give exactly the
//! recorded actions, and the extra ticks give none. A timer the machine forgot to report in
//! `next_wakeup`, or a tick that changes state without acting, would make drivers that tick
//! differently run different exchanges.

use shoal_protocol::fetch::TICK;
use shoal_protocol::{Fetch, FetchAction, FetchEvent};
use shoal_simulations::Scenario;
use shoal_simulations::sim::Simulation;
use shoal_simulations::topology::Topology;
use shoal_simulations::trace::{Recorded, Step};

/// Sixteen hosts starting over two seconds (so that early ones find peers lacking the blob and
/// ask again, and peers that show up later put out the worse-ranked ones a fetch used), three
/// hostile nodes, and a 24 MiB image from a slow origin: watches and unwatches, pushes, `Busy`
/// answers, bans and the endgame all happen.
const SWARM: &str = r#"
name = "replay"
seed = 7
nodes = 16
image_mib = 24
chunk_kib = 1024
peers_per_node = 15
start_spread_s = 2.0
[origin]
up_mbps = 40
[[links]]
up_mbps = 80
down_mbps = 200
[latency]
local_ms = 2
remote_ms = 2
[hostile]
fraction = 0.2
up_mbps = 80
"#;

/// Replays `steps` into a fresh machine, ticking every `TICK` from the fetch's start; returns
/// the actions of each recorded step, and those of the extra ticks.
fn replay_as_the_node(steps: &[Recorded]) -> (Vec<Vec<FetchAction<u32>>>, Vec<FetchAction<u32>>) {
    let start = steps.first().map(|r| r.at).unwrap_or_default();
    let seed = match steps.first().map(|r| &r.step) {
        Some(Step::Begin { seed, .. }) => *seed,
        _ => 0,
    };
    let mut fetch = Fetch::new(start, seed);
    let mut next_tick = start + TICK;
    let mut answers = Vec::new();
    let mut extra = Vec::new();
    for recorded in steps {
        while next_tick < recorded.at {
            extra.extend(fetch.handle(FetchEvent::Tick, next_tick));
            next_tick += TICK;
        }
        let actions = match &recorded.step {
            Step::Begin {
                chunk_count,
                config,
                seed,
                resumed,
                site,
            } => {
                let scheduler = Step::scheduler(*chunk_count, config, *seed, resumed, *site);
                fetch.begin(scheduler, recorded.at)
            }
            Step::Event(FetchEvent::Tick) if recorded.at == next_tick => {
                next_tick += TICK;
                fetch.handle(FetchEvent::Tick, recorded.at)
            }
            Step::Event(event) => fetch.handle(event.clone(), recorded.at),
            Step::WatchEnded(peer) => {
                fetch.watch_ended(peer);
                Vec::new()
            }
            Step::SiteMate(peer) => {
                fetch.add_site_mate(*peer);
                Vec::new()
            }
            Step::Place {
                peer,
                site_member,
                preference,
            } => {
                if let Some(scheduler) = fetch.scheduler_mut() {
                    if let Some(key) = site_member {
                        scheduler.add_site_member(peer, *key);
                    }
                    if *preference != 0 {
                        scheduler.set_preference(peer, *preference);
                    }
                }
                Vec::new()
            }
        };
        answers.push(actions);
    }
    (answers, extra)
}

fn count(steps: &[Recorded], wanted: fn(&FetchAction<u32>) -> bool) -> usize {
    steps
        .iter()
        .flat_map(|r| &r.actions)
        .filter(|a| wanted(a))
        .count()
}

#[test]
fn a_recorded_exchange_replayed_with_a_tick_every_100_ms_gives_the_same_actions() {
    let scenario = Scenario::from_toml(SWARM).expect("the replay scenario parses");
    let topology = Topology::build(&scenario);
    let mut checked = 0;
    for host in topology.hosts().map(|(id, _)| id) {
        let (outcome, steps) = Simulation::new(&scenario, &topology).run_recording(host);
        assert!(
            outcome.completion_s.iter().all(Option::is_some),
            "every host completes"
        );
        assert!(
            matches!(steps.first().map(|r| &r.step), Some(Step::Begin { .. })),
            "the trace starts with the fetch"
        );
        let (answers, extra) = replay_as_the_node(&steps);
        for (recorded, replayed) in steps.iter().zip(&answers) {
            assert_eq!(
                &recorded.actions, replayed,
                "host {host}: {:?} at {:?} answered differently",
                recorded.step, recorded.at
            );
        }
        assert_eq!(extra, [], "host {host}: the extra ticks acted");
        assert_eq!(
            count(&steps, |a| matches!(a, FetchAction::Completed)),
            1,
            "host {host} completes once"
        );
        assert!(count(&steps, |a| matches!(a, FetchAction::Keep { .. })) > 0);
        checked += 1;
    }
    assert_eq!(checked, 16, "every host replayed");
}

#[test]
fn the_replayed_exchange_covers_the_machine() {
    let scenario = Scenario::from_toml(SWARM).expect("the replay scenario parses");
    let topology = Topology::build(&scenario);
    let mut all = Vec::new();
    for (host, _) in topology.hosts() {
        let (_, steps) = Simulation::new(&scenario, &topology).run_recording(host);
        all.extend(steps);
    }
    let asked_again = count(&all, |a| matches!(a, FetchAction::AskHave { .. }))
        > all
            .iter()
            .filter(|r| matches!(r.step, Step::Begin { .. }))
            .count()
            * 15;
    assert!(asked_again, "peers lacking the blob are asked again");
    for (what, wanted) in [
        (
            "watches",
            (|a| matches!(a, FetchAction::Watch { .. })) as fn(&FetchAction<u32>) -> bool,
        ),
        ("requests", |a| matches!(a, FetchAction::Request { .. })),
        ("bans", |a| matches!(a, FetchAction::Ban { .. })),
        ("unwatches", |a| matches!(a, FetchAction::Unwatch { .. })),
        ("joins", |a| matches!(a, FetchAction::Joined { .. })),
    ] {
        assert!(count(&all, wanted) > 0, "no {what} in the traces");
    }
    let pushes = all
        .iter()
        .filter(|r| matches!(r.step, Step::Event(FetchEvent::Pushed { .. })))
        .count();
    assert!(pushes > 0, "no pushes in the traces");
}
