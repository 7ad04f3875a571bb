//! Scenario files: what a run simulates, read from TOML.
//!
//! A scenario fixes everything a run depends on, the seed included, so a file names one
//! result. Rates are in Mbit/s, times in seconds (latencies in milliseconds), sizes in MiB.
//! See `simulations/README.md` for a commented example; unknown keys are refused so that a
//! typo does not silently fall back to a default.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub seed: u64,
    /// Hosts that fetch the image (the origin and hostile nodes come on top).
    pub nodes: u32,
    /// The image, simulated as one blob of this many MiB.
    pub image_mib: u64,
    /// Chunk size in KiB; 1024 is the node's default (`CHUNK_BYTES_DEFAULT`).
    #[serde(default = "default_chunk_kib")]
    pub chunk_kib: u32,
    /// Random peers each host knows besides its site-mates and the origin (the node learns
    /// them from the DHT and its connections; it keeps a bounded number).
    #[serde(default = "default_peers")]
    pub peers_per_node: u32,
    /// Hosts start at a uniformly random time in `[0, start_spread_s]`.
    #[serde(default)]
    pub start_spread_s: f64,
    /// The run stops at this virtual time whether or not everyone is done.
    #[serde(default = "default_time_limit")]
    pub time_limit_s: f64,
    pub origin: OriginSpec,
    /// Host link classes, drawn per host with the given weights.
    pub links: Vec<LinkClass>,
    #[serde(default)]
    pub latency: LatencySpec,
    pub sites: Option<SiteSpec>,
    pub churn: Option<ChurnSpec>,
    pub hostile: Option<HostileSpec>,
    #[serde(default)]
    pub baselines: BaselineSpec,
    #[serde(default)]
    pub scheduler: SchedulerOverrides,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OriginSpec {
    /// The origin's (seed's or upstream registry's) upload capacity.
    pub up_mbps: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LinkClass {
    #[serde(default = "default_weight")]
    pub weight: f64,
    pub up_mbps: f64,
    pub down_mbps: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LatencySpec {
    /// One-way latency between hosts of the same site (or of a flat network).
    pub local_ms: f64,
    /// One-way latency between sites, and between a site and the origin.
    pub remote_ms: f64,
}

impl Default for LatencySpec {
    fn default() -> Self {
        LatencySpec {
            local_ms: 0.2,
            remote_ms: 20.0,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SiteSpec {
    /// Hosts are dealt to sites round-robin, `nodes / count` each.
    pub count: u32,
    /// Each site's shared uplink (site → rest) is uniform in `[min, max]`.
    pub up_mbps_min: f64,
    pub up_mbps_max: f64,
    /// The site's shared downlink (rest → site); when absent, equal to its uplink.
    pub down_mbps: Option<f64>,
    /// Hosts per site that talk to the outside (other sites, the origin); the others know
    /// only their site-mates. Absent: every host also gets `peers_per_node` random peers.
    pub bridges_per_site: Option<u32>,
    /// Set a higher [`Scheduler::set_preference`] for same-site peers.
    ///
    /// [`Scheduler::set_preference`]: shoal_protocol::Scheduler::set_preference
    #[serde(default)]
    pub prefer_same_site: bool,
    /// Run the node's one-copy-per-site logic ([`Scheduler::set_site`]): each chunk is
    /// fetched from outside the site only by its owner among the site's hosts.
    ///
    /// [`Scheduler::set_site`]: shoal_protocol::Scheduler::set_site
    #[serde(default)]
    pub one_copy_per_site: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChurnSpec {
    /// Churn events happen at uniformly random times in `[0, window_s]`.
    pub window_s: f64,
    /// Hosts that leave for good (and are not expected to complete).
    #[serde(default)]
    pub leave_fraction: f64,
    /// Hosts that crash and restart after `downtime_s`, keeping their verified chunks.
    #[serde(default)]
    pub crash_fraction: f64,
    #[serde(default = "default_downtime")]
    pub downtime_s: f64,
    /// Hosts that join late, at a random time in the window.
    #[serde(default)]
    pub late_join_fraction: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HostileSpec {
    /// Extra nodes (this many times `nodes`) that claim every chunk and send garbage.
    pub fraction: f64,
    /// Their upload capacity.
    #[serde(default = "default_hostile_up")]
    pub up_mbps: f64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineSpec {
    /// Children per node in the fixed fan-out tree baseline.
    pub tree_fanout: u32,
}

impl Default for BaselineSpec {
    fn default() -> Self {
        BaselineSpec { tree_fanout: 4 }
    }
}

/// Changes to the node's `SchedulerConfig::default()`, for experiments.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SchedulerOverrides {
    pub requests_per_peer_max: Option<usize>,
    pub request_timeout_s: Option<f64>,
    pub have_poll_interval_ms: Option<u64>,
    pub endgame_duplicates_max: Option<usize>,
    pub failure_backoff_ms: Option<u64>,
    /// `Scheduler::set_preference` for the origin in every host's scheduler: negative values
    /// offer it work only after every other peer. The node does not do this (an experiment).
    pub origin_preference: Option<i32>,
}

fn default_chunk_kib() -> u32 {
    1024
}
fn default_peers() -> u32 {
    20
}
fn default_time_limit() -> f64 {
    3600.0
}
fn default_weight() -> f64 {
    1.0
}
fn default_downtime() -> f64 {
    5.0
}
fn default_hostile_up() -> f64 {
    1000.0
}

impl Scenario {
    pub fn from_toml(text: &str) -> anyhow::Result<Scenario> {
        let scenario: Scenario = toml::from_str(text)?;
        scenario.validate()?;
        Ok(scenario)
    }

    pub fn image_bytes(&self) -> u64 {
        self.image_mib << 20
    }

    pub fn chunk_bytes(&self) -> u64 {
        u64::from(self.chunk_kib) << 10
    }

    pub fn chunk_count(&self) -> u32 {
        self.image_bytes().div_ceil(self.chunk_bytes()) as u32
    }

    /// The size of `chunk`: all full-size but perhaps the last.
    pub fn chunk_len(&self, chunk: u32) -> u64 {
        let start = u64::from(chunk) * self.chunk_bytes();
        self.chunk_bytes().min(self.image_bytes() - start)
    }

    fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.nodes >= 1, "nodes must be at least 1");
        anyhow::ensure!(self.image_mib >= 1, "image_mib must be at least 1");
        anyhow::ensure!(
            (16..=4096).contains(&self.chunk_kib),
            "chunk_kib must be within 16..=4096, as the node's chunk sizes are"
        );
        anyhow::ensure!(self.chunk_count() <= 1 << 16, "too many chunks");
        anyhow::ensure!(!self.links.is_empty(), "at least one [[links]] class");
        for class in &self.links {
            anyhow::ensure!(
                class.up_mbps > 0.0 && class.down_mbps > 0.0 && class.weight > 0.0,
                "link rates and weights must be positive"
            );
        }
        anyhow::ensure!(self.origin.up_mbps > 0.0, "origin.up_mbps must be positive");
        if let Some(sites) = &self.sites {
            anyhow::ensure!(
                sites.count >= 1 && sites.count <= self.nodes,
                "sites.count must be within 1..=nodes"
            );
            anyhow::ensure!(
                sites.up_mbps_min > 0.0 && sites.up_mbps_max >= sites.up_mbps_min,
                "site rates must be positive and min <= max"
            );
        }
        if let Some(churn) = &self.churn {
            let total = churn.leave_fraction + churn.crash_fraction + churn.late_join_fraction;
            anyhow::ensure!(total <= 1.0, "churn fractions add up to more than 1");
        }
        Ok(())
    }
}
