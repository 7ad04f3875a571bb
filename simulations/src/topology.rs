//! Who is where: the nodes of a run (origin, hosts, hostile nodes), their link capacities,
//! sites, start/leave/crash times, and whom each host knows.
//!
//! Node 0 is the origin; hosts are `1..=nodes`; hostile nodes follow. Everything is drawn from
//! the scenario seed. A host's *neighbours* are the peers its transfer may ask: every
//! site-mate (the node finds them by mDNS), plus — when it talks to the outside — the origin
//! and `peers_per_node` random peers (the DHT and its connections). The real node asks every
//! connected peer; a bounded neighbour set stands in for its connection limits and is what
//! keeps a 10,000-node run cheap.

use crate::rng::Rng;
use crate::scenario::Scenario;

pub const ORIGIN: u32 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Origin,
    Host,
    Hostile,
}

#[derive(Debug, Clone)]
pub struct NodeSpec {
    pub role: Role,
    pub up_mbps: f64,
    pub down_mbps: f64,
    pub site: Option<u32>,
    pub neighbours: Vec<u32>,
    pub start_s: f64,
    pub leave_s: Option<f64>,
    /// Crash time and downtime.
    pub crash: Option<(f64, f64)>,
}

#[derive(Debug, Clone, Copy)]
pub struct SiteLinks {
    pub up_mbps: f64,
    pub down_mbps: f64,
}

#[derive(Debug, Clone)]
pub struct Topology {
    pub nodes: Vec<NodeSpec>,
    pub sites: Vec<SiteLinks>,
}

/// Streams of the scenario seed, one per purpose, so that adding a draw to one purpose does
/// not change the others.
const STREAM_LINKS: u64 = 1;
const STREAM_NEIGHBOURS: u64 = 2;
const STREAM_CHURN: u64 = 3;
const STREAM_SITES: u64 = 4;

impl Topology {
    pub fn build(scenario: &Scenario) -> Topology {
        let seed = scenario.seed;
        let hosts = scenario.nodes as usize;
        let hostile = scenario
            .hostile
            .as_ref()
            .map_or(0, |h| (h.fraction * hosts as f64).round() as usize);
        let mut links = Rng::derived(seed, STREAM_LINKS);
        let mut nodes = Vec::with_capacity(1 + hosts + hostile);
        nodes.push(NodeSpec {
            role: Role::Origin,
            up_mbps: scenario.origin.up_mbps,
            down_mbps: scenario.origin.up_mbps,
            site: None,
            neighbours: Vec::new(),
            start_s: 0.0,
            leave_s: None,
            crash: None,
        });
        let weight_total: f64 = scenario.links.iter().map(|c| c.weight).sum();
        let site_count = scenario.sites.as_ref().map(|s| s.count);
        for i in 0..hosts + hostile {
            let mut pick = links.unit() * weight_total;
            let mut class = &scenario.links[0];
            for candidate in &scenario.links {
                class = candidate;
                if pick < candidate.weight {
                    break;
                }
                pick -= candidate.weight;
            }
            let role = if i < hosts { Role::Host } else { Role::Hostile };
            let (up_mbps, down_mbps) = match (role, &scenario.hostile) {
                (Role::Hostile, Some(h)) => (h.up_mbps, h.up_mbps),
                _ => (class.up_mbps, class.down_mbps),
            };
            nodes.push(NodeSpec {
                role,
                up_mbps,
                down_mbps,
                site: site_count.map(|count| (i as u32) % count),
                neighbours: Vec::new(),
                start_s: 0.0,
                leave_s: None,
                crash: None,
            });
        }
        let mut site_rng = Rng::derived(seed, STREAM_SITES);
        let sites = scenario
            .sites
            .as_ref()
            .map(|spec| {
                (0..spec.count)
                    .map(|_| {
                        let up = site_rng.between(spec.up_mbps_min, spec.up_mbps_max);
                        SiteLinks {
                            up_mbps: up,
                            down_mbps: spec.down_mbps.unwrap_or(up),
                        }
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut topology = Topology { nodes, sites };
        topology.assign_neighbours(scenario);
        topology.assign_churn(scenario);
        topology
    }

    pub fn hosts(&self) -> impl Iterator<Item = (u32, &NodeSpec)> {
        self.nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.role == Role::Host)
            .map(|(i, n)| (i as u32, n))
    }

    /// Whether `node` is one of its site's bridges (or there are no bridges: everyone is).
    fn talks_outside(&self, scenario: &Scenario, node: u32) -> bool {
        match (scenario.sites.as_ref(), self.nodes[node as usize].site) {
            (Some(spec), Some(site)) => match spec.bridges_per_site {
                // Hosts are dealt round-robin, so a site's first hosts have the lowest ids.
                Some(bridges) => (node - 1) / spec.count < bridges && site < spec.count,
                None => true,
            },
            _ => true,
        }
    }

    fn assign_neighbours(&mut self, scenario: &Scenario) {
        let mut rng = Rng::derived(scenario.seed, STREAM_NEIGHBOURS);
        let count = self.nodes.len() as u32;
        let mut by_site: Vec<Vec<u32>> = vec![Vec::new(); self.sites.len()];
        for (i, node) in self.nodes.iter().enumerate() {
            if let Some(site) = node.site {
                by_site[site as usize].push(i as u32);
            }
        }
        let outside: Vec<u32> = (1..count)
            .filter(|&i| self.talks_outside(scenario, i))
            .collect();
        let wanted = scenario.peers_per_node as usize;
        for i in 1..count {
            if self.nodes[i as usize].role != Role::Host {
                continue;
            }
            let site = self.nodes[i as usize].site;
            let mut neighbours: Vec<u32> = site
                .map(|s| {
                    by_site[s as usize]
                        .iter()
                        .copied()
                        .filter(|&j| j != i)
                        .collect()
                })
                .unwrap_or_default();
            if self.talks_outside(scenario, i) {
                neighbours.push(ORIGIN);
                let pool: Vec<u32> = outside
                    .iter()
                    .copied()
                    .filter(|&j| j != i && (site.is_none() || self.nodes[j as usize].site != site))
                    .collect();
                let target = wanted.min(pool.len());
                let mut chosen = std::collections::BTreeSet::new();
                let mut attempts = 0;
                while chosen.len() < target && attempts < target * 20 {
                    chosen.insert(pool[rng.below(pool.len())]);
                    attempts += 1;
                }
                neighbours.extend(chosen);
            }
            self.nodes[i as usize].neighbours = neighbours;
        }
    }

    fn assign_churn(&mut self, scenario: &Scenario) {
        let mut rng = Rng::derived(scenario.seed, STREAM_CHURN);
        let hosts: Vec<u32> = self.hosts().map(|(i, _)| i).collect();
        for &i in &hosts {
            if scenario.start_spread_s > 0.0 {
                self.nodes[i as usize].start_s = rng.between(0.0, scenario.start_spread_s);
            }
        }
        let Some(churn) = &scenario.churn else {
            return;
        };
        let mut order = hosts;
        rng.shuffle(&mut order);
        let n = order.len() as f64;
        let leave = (churn.leave_fraction * n).round() as usize;
        let crash = (churn.crash_fraction * n).round() as usize;
        let late = (churn.late_join_fraction * n).round() as usize;
        for (k, &i) in order.iter().enumerate() {
            let at = rng.between(0.0, churn.window_s);
            let node = &mut self.nodes[i as usize];
            if k < leave {
                node.leave_s = Some(at);
            } else if k < leave + crash {
                node.crash = Some((at, churn.downtime_s));
            } else if k < leave + crash + late {
                node.start_s = node.start_s.max(at);
            }
        }
    }
}
