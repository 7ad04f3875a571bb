//! Naive strategies on the same links, for comparison: every host fetches the whole image
//! from the origin, and a fixed fan-out tree rooted at the origin (each host forwards every
//! chunk to its children as soon as it has it, pipelined per chunk).
//!
//! Both are computed by a direct pass over the chunks rather than the event loop: their
//! schedule is fixed, so each chunk's arrival is the time its sender had it plus its link
//! reservations (the same FIFO links as [`crate::link`]) plus latency. They ignore churn and
//! hostile nodes (a naive tree has no defence against either) and count only hosts that stay.

use crate::link::{Link, Micros, micros, seconds, site_links};
use crate::rng::Rng;
use crate::scenario::Scenario;
use crate::topology::{ORIGIN, Role, Topology};

/// Completion time per host that stays, bytes the origin sent, bytes into each site.
#[derive(Debug, Clone)]
pub struct BaselineOutcome {
    pub name: &'static str,
    pub completion_s: Vec<Option<f64>>,
    pub origin_bytes: u64,
    pub site_in_bytes: Vec<u64>,
}

struct Links<'a> {
    topology: &'a Topology,
    up: Vec<Link>,
    down: Vec<Link>,
    site_up: Vec<Link>,
    site_down: Vec<Link>,
    local: Micros,
    remote: Micros,
}

impl<'a> Links<'a> {
    fn new(scenario: &Scenario, topology: &'a Topology) -> Self {
        let (site_up, site_down) = site_links(&topology.sites);
        Links {
            topology,
            up: topology
                .nodes
                .iter()
                .map(|n| Link::new(n.up_mbps))
                .collect(),
            down: topology
                .nodes
                .iter()
                .map(|n| Link::new(n.down_mbps))
                .collect(),
            site_up,
            site_down,
            local: micros(scenario.latency.local_ms / 1e3),
            remote: micros(scenario.latency.remote_ms / 1e3),
        }
    }

    /// When `bytes` that `sender` has at `ready` reach `receiver`.
    fn send(&mut self, sender: u32, receiver: u32, bytes: u64, ready: Micros) -> Micros {
        let ss = self.topology.nodes[sender as usize].site;
        let rs = self.topology.nodes[receiver as usize].site;
        let mut up = std::mem::replace(&mut self.up[sender as usize], Link::new(1.0));
        let mut down = std::mem::replace(&mut self.down[receiver as usize], Link::new(1.0));
        let mut site_up = ss
            .filter(|_| ss != rs)
            .map(|s| std::mem::replace(&mut self.site_up[s as usize], Link::new(1.0)));
        let mut site_down = rs
            .filter(|_| ss != rs)
            .map(|s| std::mem::replace(&mut self.site_down[s as usize], Link::new(1.0)));
        let mut path: Vec<&mut Link> = vec![&mut up];
        path.extend(site_up.as_mut());
        path.extend(site_down.as_mut());
        path.push(&mut down);
        let end = Link::reserve_path(&mut path, 0, ready, bytes);
        self.up[sender as usize] = up;
        self.down[receiver as usize] = down;
        if let (Some(link), Some(s)) = (site_up, ss) {
            self.site_up[s as usize] = link;
        }
        if let (Some(link), Some(s)) = (site_down, rs) {
            self.site_down[s as usize] = link;
        }
        let latency = if self.topology.sites.is_empty() || (ss.is_some() && ss == rs) {
            self.local
        } else {
            self.remote
        };
        end + latency
    }

    fn finish(self, name: &'static str, done: &[Micros], hosts: &[u32]) -> BaselineOutcome {
        BaselineOutcome {
            name,
            completion_s: hosts
                .iter()
                .map(|&h| Some(seconds(done[h as usize])))
                .collect(),
            origin_bytes: self.up[ORIGIN as usize].bytes(),
            site_in_bytes: self.site_down.iter().map(Link::bytes).collect(),
        }
    }
}

fn staying_hosts(topology: &Topology) -> Vec<u32> {
    topology
        .hosts()
        .filter(|(_, n)| n.role == Role::Host && n.leave_s.is_none())
        .map(|(i, _)| i)
        .collect()
}

/// Every host from the origin, chunk by chunk in turn (the origin's uplink serves them all).
pub fn from_origin(scenario: &Scenario, topology: &Topology) -> BaselineOutcome {
    let hosts = staying_hosts(topology);
    let mut links = Links::new(scenario, topology);
    let mut done = vec![0; topology.nodes.len()];
    for chunk in 0..scenario.chunk_count() {
        let bytes = scenario.chunk_len(chunk);
        for &h in &hosts {
            done[h as usize] = links.send(ORIGIN, h, bytes, 0);
        }
    }
    links.finish("from-origin", &done, &hosts)
}

/// A complete `fanout`-ary tree over the hosts in a seeded random order, the origin at its
/// root; each chunk flows down it as soon as each parent has it.
pub fn tree(scenario: &Scenario, topology: &Topology) -> BaselineOutcome {
    let mut hosts = staying_hosts(topology);
    Rng::derived(scenario.seed, 99).shuffle(&mut hosts);
    let fanout = scenario.baselines.tree_fanout.max(1) as usize;
    // Position 0 is the origin, 1..=N the hosts; the parent of position p is (p - 1) / fanout.
    let mut order = vec![ORIGIN];
    order.extend(&hosts);
    let mut links = Links::new(scenario, topology);
    let mut ready = vec![0; order.len()];
    let mut done = vec![0; topology.nodes.len()];
    for chunk in 0..scenario.chunk_count() {
        let bytes = scenario.chunk_len(chunk);
        for p in 1..order.len() {
            let parent = (p - 1) / fanout;
            ready[p] = links.send(order[parent], order[p], bytes, ready[parent]);
            done[order[p] as usize] = ready[p];
        }
    }
    links.finish("tree", &done, &hosts)
}
