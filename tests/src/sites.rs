//! Two sites on one machine: two network namespaces joined by a veth pair whose both ends are
//! shaped with `tc ... tbf`, the slow link between a shop and the rest of the fleet.
//!
//! What it is for: running several `shoal node`s per site (each site's nodes share its
//! namespace and its address, on different ports) and reading how many bytes crossed the
//! link from the interface counters. What it is not for: delay or loss (`netem` is not in this
//! kernel). Everything is removed with the namespaces when the value is dropped.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};

use crate::clients::{NetNs, run_command};
use crate::node::ShoalNode;

/// One of the two sites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Site {
    A,
    B,
}

/// Site A's address on the link.
pub const SITE_A_IP: &str = "10.77.0.1";
/// Site B's address on the link.
pub const SITE_B_IP: &str = "10.77.0.2";
const LINK_A: &str = "site-a";
const LINK_B: &str = "site-b";

#[derive(Debug)]
pub struct TwoSites {
    pub a: NetNs,
    pub b: NetNs,
}

fn ip(args: &[&str]) -> Result<()> {
    run_command(Command::new("ip").args(args)).map(|_| ())
}

impl TwoSites {
    /// Two namespaces linked at `rate_mbit` megabits per second each way.
    pub fn create(rate_mbit: u32) -> Result<TwoSites> {
        let sites = TwoSites {
            a: NetNs::create()?,
            b: NetNs::create()?,
        };
        let (a, b) = (sites.a.name(), sites.b.name());
        ip(&[
            "link", "add", LINK_A, "netns", a, "type", "veth", "peer", "name", LINK_B, "netns", b,
        ])?;
        for (netns, link, address) in [(a, LINK_A, SITE_A_IP), (b, LINK_B, SITE_B_IP)] {
            ip(&[
                "-n",
                netns,
                "addr",
                "add",
                &format!("{address}/24"),
                "dev",
                link,
            ])?;
            ip(&["-n", netns, "link", "set", link, "up"])?;
            let rate = format!("{rate_mbit}mbit");
            run_command(Command::new("tc").args([
                "-n", netns, "qdisc", "add", "dev", link, "root", "tbf", "rate", &rate, "burst",
                "64kb", "latency", "200ms",
            ]))?;
        }
        Ok(sites)
    }

    pub fn netns(&self, site: Site) -> &NetNs {
        match site {
            Site::A => &self.a,
            Site::B => &self.b,
        }
    }

    /// The site's address on the link.
    pub fn ip(site: Site) -> &'static str {
        match site {
            Site::A => SITE_A_IP,
            Site::B => SITE_B_IP,
        }
    }

    /// A `shoal node` in `site` listening on the site's address, bootstrapped to `seeds`
    /// (and trusting them); returns once it is connected to each.
    pub fn start_node(
        &self,
        site: Site,
        data: &Path,
        seeds: &[&ShoalNode],
        extra: &[&str],
    ) -> Result<ShoalNode> {
        let listen = format!("/ip4/{}/tcp/0", Self::ip(site));
        let args: Vec<&str> = ["--listen", listen.as_str()]
            .into_iter()
            .chain(extra.iter().copied())
            .collect();
        ShoalNode::start_joined_in(Some(self.netns(site)), data, seeds, &args)
    }

    /// Bytes site B's end of the link has received so far (headers included).
    pub fn bytes_into_b(&self) -> Result<u64> {
        let output = run_command(Command::new("ip").args([
            "-n",
            self.b.name(),
            "-s",
            "-j",
            "link",
            "show",
            LINK_B,
        ]))?;
        let links: serde_json::Value = serde_json::from_str(output.stdout_text()?)?;
        links[0]["stats64"]["rx"]["bytes"]
            .as_u64()
            .with_context(|| format!("no rx bytes in {links}"))
    }
}
