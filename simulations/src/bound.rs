//! The Kumar–Ross lower bound on the time to give a file to N peers.
//!
//! `T_min = max(F/u_seed, F/d_min, N·F/(u_seed + Σ u_i))`: the seed must send every byte at
//! least once, the slowest downloader must receive every byte, and the N copies must all be
//! uploaded by someone. With sites, each site's inbound link must carry at least one copy,
//! which gives a fourth term reported separately (`with_sites_s`); the goals use the
//! classic bound.

use serde::Serialize;

use crate::scenario::Scenario;
use crate::topology::{Role, Topology};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Bound {
    pub t_min_s: f64,
    pub seed_term_s: f64,
    pub download_term_s: f64,
    pub swarm_term_s: f64,
    /// `max(t_min_s, F / slowest site downlink)`, equal to `t_min_s` without sites.
    pub with_sites_s: f64,
}

impl Bound {
    /// Over the hosts that stay (hostile nodes and leavers neither count nor help).
    pub fn of(scenario: &Scenario, topology: &Topology) -> Bound {
        let bits = scenario.image_bytes() as f64 * 8.0;
        let stays: Vec<_> = topology
            .nodes
            .iter()
            .filter(|n| n.role == Role::Host && n.leave_s.is_none())
            .collect();
        let n = stays.len() as f64;
        let u_seed = scenario.origin.up_mbps * 1e6;
        let d_min = stays
            .iter()
            .map(|h| h.down_mbps)
            .fold(f64::INFINITY, f64::min)
            * 1e6;
        let u_sum: f64 = stays.iter().map(|h| h.up_mbps * 1e6).sum();
        let seed_term_s = bits / u_seed;
        let download_term_s = if d_min.is_finite() { bits / d_min } else { 0.0 };
        let swarm_term_s = n * bits / (u_seed + u_sum);
        let t_min_s = seed_term_s.max(download_term_s).max(swarm_term_s);
        let site_min = topology
            .sites
            .iter()
            .map(|s| s.down_mbps)
            .fold(f64::INFINITY, f64::min)
            * 1e6;
        let with_sites_s = if site_min.is_finite() {
            t_min_s.max(bits / site_min)
        } else {
            t_min_s
        };
        Bound {
            t_min_s,
            seed_term_s,
            download_term_s,
            swarm_term_s,
            with_sites_s,
        }
    }
}
