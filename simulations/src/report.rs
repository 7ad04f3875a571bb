//! One run's results (the simulated scheduler, the baselines, the bound) as a serializable
//! report, and the Markdown summary of many reports.

use serde::Serialize;

use crate::baseline::{self, BaselineOutcome};
use crate::bound::Bound;
use crate::scenario::Scenario;
use crate::sim::{Counters, RunOutcome, Simulation};
use crate::stats::Distribution;
use crate::topology::Topology;

/// One strategy's figures.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StrategyResult {
    pub name: String,
    pub completion: Distribution,
    pub p99_over_t_min: Option<f64>,
    pub max_over_t_min: Option<f64>,
    /// p99 over the bound with the sites' inbound links counted (`Bound::with_sites_s`).
    pub p99_over_site_bound: Option<f64>,
    pub origin_bytes: u64,
    /// Origin bytes over the image size.
    pub origin_copies: f64,
    /// Bytes into each site over the image size.
    pub site_in_copies: Vec<f64>,
    pub site_in_copies_max: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub chunk_count: u32,
    pub hosts_left: u32,
    pub bound: Bound,
    pub shoal: StrategyResult,
    pub site_out_copies: Vec<f64>,
    pub counters: Counters,
    /// Virtual time at which the run stopped.
    pub end_s: f64,
    pub baselines: Vec<StrategyResult>,
    /// Wall-clock seconds of the event loop (the only non-deterministic field).
    pub wall_s: f64,
}

fn copies(bytes: u64, image: u64) -> f64 {
    bytes as f64 / image as f64
}

fn strategy(
    name: &str,
    completion_s: &[Option<f64>],
    origin_bytes: u64,
    site_in_bytes: &[u64],
    image: u64,
    bound: &Bound,
) -> StrategyResult {
    let completion = Distribution::of(completion_s);
    let site_in_copies: Vec<f64> = site_in_bytes.iter().map(|&b| copies(b, image)).collect();
    StrategyResult {
        name: name.to_string(),
        p99_over_t_min: completion.p99_s.map(|t| t / bound.t_min_s),
        max_over_t_min: completion.max_s.map(|t| t / bound.t_min_s),
        p99_over_site_bound: completion.p99_s.map(|t| t / bound.with_sites_s),
        completion,
        origin_bytes,
        origin_copies: copies(origin_bytes, image),
        site_in_copies_max: site_in_copies.iter().copied().reduce(f64::max),
        site_in_copies,
    }
}

/// Runs a scenario: the event simulation of the node's scheduler, then the baselines.
pub fn run(scenario: &Scenario) -> Report {
    let topology = Topology::build(scenario);
    let bound = Bound::of(scenario, &topology);
    let image = scenario.image_bytes();
    let started = std::time::Instant::now();
    let outcome: RunOutcome = Simulation::new(scenario, &topology).run();
    let wall_s = started.elapsed().as_secs_f64();
    let shoal = strategy(
        "shoal",
        &outcome.completion_s,
        outcome.origin_bytes,
        &outcome.site_in_bytes,
        image,
        &bound,
    );
    let baselines = [
        baseline::from_origin(scenario, &topology),
        baseline::tree(scenario, &topology),
    ]
    .iter()
    .map(|b: &BaselineOutcome| {
        strategy(
            b.name,
            &b.completion_s,
            b.origin_bytes,
            &b.site_in_bytes,
            image,
            &bound,
        )
    })
    .collect();
    Report {
        scenario: scenario.clone(),
        chunk_count: scenario.chunk_count(),
        hosts_left: outcome.hosts_left,
        bound,
        shoal,
        site_out_copies: outcome
            .site_out_bytes
            .iter()
            .map(|&b| copies(b, image))
            .collect(),
        counters: outcome.counters,
        end_s: outcome.end_s,
        baselines,
        wall_s,
    }
}

fn secs(t: Option<f64>) -> String {
    t.map_or_else(|| "—".to_string(), |t| format!("{t:.2}"))
}

fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_string(), |r| format!("{r:.2}×"))
}

/// A Markdown table with one row per report.
pub fn summary(reports: &[Report]) -> String {
    let mut out = String::from(
        "# Simulation summary\n\n\
         Times in seconds of virtual time; ratios are to the Kumar–Ross bound `T_min`; copies \
         are bytes over the image size. Written by `cargo run --release -p shoal-simulations -- \
         --all simulations/scenarios`.\n\n\
         | scenario | hosts | done | T_min | p50 | p90 | p99 | max | p99/T_min | T_min with sites \
         | p99/that | origin copies | max site-in copies | from-origin p99/T_min | tree p99/T_min \
         | bans | wall s |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in reports {
        let s = &r.shoal;
        let baseline = |name: &str| {
            r.baselines
                .iter()
                .find(|b| b.name == name)
                .and_then(|b| b.p99_over_t_min)
        };
        out.push_str(&format!(
            "| {} | {} | {} | {:.2} | {} | {} | {} | {} | {} | {:.2} | {} | {:.2} | {} | {} | {} | {} | {:.1} |\n",
            r.scenario.name,
            s.completion.hosts,
            s.completion.completed,
            r.bound.t_min_s,
            secs(s.completion.p50_s),
            secs(s.completion.p90_s),
            secs(s.completion.p99_s),
            secs(s.completion.max_s),
            ratio(s.p99_over_t_min),
            r.bound.with_sites_s,
            ratio(s.p99_over_site_bound),
            s.origin_copies,
            s.site_in_copies_max
                .map_or_else(|| "—".to_string(), |c| format!("{c:.2}")),
            ratio(baseline("from-origin")),
            ratio(baseline("tree")),
            r.counters.bans,
            r.wall_s,
        ));
    }
    out
}
