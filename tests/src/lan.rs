//! Several hosts on one L2 network, on one machine: a namespace per host, each with an `eth0`
//! whose other end is a port of a bridge in a namespace of its own (the switch), so the host's
//! root namespace sees none of it.
//!
//! What it is for: running one process per "host" (a node, a container with `--network host`)
//! where every host has its own address and its own 127.0.0.1, as on the nodes of a cluster.
//! What it is not for: shaping links (see `sites.rs`). Everything goes away with the namespaces
//! when the value is dropped.

use std::process::Command;

use anyhow::Result;

use crate::clients::{NetNs, run_command};

/// The hosts' subnet; host `i` (from 0) is `10.79.0.<i + 1>`.
const SUBNET_PREFIX: &str = "10.79.0";

#[derive(Debug)]
pub struct Lan {
    /// Dropped after the hosts (fields drop in order), though either order works.
    hosts: Vec<NetNs>,
    _switch: NetNs,
}

fn ip(args: &[&str]) -> Result<()> {
    run_command(Command::new("ip").args(args)).map(|_| ())
}

impl Lan {
    /// `count` hosts joined by one bridge.
    pub fn create(count: usize) -> Result<Lan> {
        let switch = NetNs::create()?;
        ip(&["-n", switch.name(), "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", switch.name(), "link", "set", "br0", "up"])?;
        let mut hosts = Vec::with_capacity(count);
        for index in 0..count {
            let host = NetNs::create()?;
            let port = format!("port{index}");
            // Each end is created directly in its namespace: fixed names cannot collide with
            // another test's.
            ip(&[
                "link",
                "add",
                "eth0",
                "netns",
                host.name(),
                "type",
                "veth",
                "peer",
                "name",
                &port,
                "netns",
                switch.name(),
            ])?;
            ip(&["-n", switch.name(), "link", "set", &port, "master", "br0"])?;
            ip(&["-n", switch.name(), "link", "set", &port, "up"])?;
            let address = format!("{}/24", Self::address(index));
            ip(&["-n", host.name(), "addr", "add", &address, "dev", "eth0"])?;
            ip(&["-n", host.name(), "link", "set", "eth0", "up"])?;
            hosts.push(host);
        }
        Ok(Lan {
            hosts,
            _switch: switch,
        })
    }

    /// Host `index`'s namespace.
    pub fn host(&self, index: usize) -> &NetNs {
        &self.hosts[index]
    }

    /// Host `index`'s address on the LAN.
    pub fn address(index: usize) -> String {
        format!("{SUBNET_PREFIX}.{}", index + 1)
    }
}
