//! The simulator (`shoal-simulations`) at a fan-out's own settings, so that a run prints the
//! simulated figures beside the measured ones: the simulator runs the node's scheduler and
//! serving policy, and where the two disagree, what the simulator leaves out is where to look.
//!
//! The settings carried over: the number of nodes, the image's size in 1 MiB chunks (the
//! node's default), every node's upload (and download, when limited) rate, the seed's upload
//! rate, and a loopback latency. Every node knows every other (the real nodes find each other
//! through the seed's DHT within seconds).

use anyhow::{Context, Result};
use shoal_simulations::Scenario;

/// One-way latency of loopback, in milliseconds.
const LOOPBACK_MS: f64 = 0.05;

/// What the simulator says about one fan-out.
#[derive(Debug, Clone, Copy)]
pub struct Simulated {
    pub last_over_t_min: f64,
    pub seed_copies: f64,
    /// Bitfields pushed on have feeds per chunk (1 MiB) delivered.
    pub pushes_per_mib: f64,
    /// Chunk requests answered `Busy` per chunk delivered.
    pub busy_per_mib: f64,
    /// Wall-clock seconds the simulation took.
    pub wall_s: f64,
}

/// Simulates `nodes` nodes fetching `image_bytes` from one seed, every node and the seed
/// uploading at `rate` bytes per second and downloading at `ingress` (unlimited when `None`).
pub fn simulate(
    nodes: usize,
    image_bytes: u64,
    rate: f64,
    ingress: Option<f64>,
    seed: u64,
) -> Result<Simulated> {
    let mbps = |bytes_per_second: f64| bytes_per_second * 8.0 / 1e6;
    // Unlimited downloads: far above any upload, as on loopback.
    let down = ingress.map_or(1e6, mbps);
    let toml = format!(
        "name = \"bench-fanout\"\n\
         seed = {seed}\n\
         nodes = {nodes}\n\
         image_mib = {image_mib}\n\
         chunk_kib = 1024\n\
         peers_per_node = {peers}\n\
         [origin]\n\
         up_mbps = {up}\n\
         [[links]]\n\
         up_mbps = {up}\n\
         down_mbps = {down}\n\
         [latency]\n\
         local_ms = {LOOPBACK_MS}\n\
         remote_ms = {LOOPBACK_MS}\n",
        image_mib = image_bytes.div_ceil(1 << 20),
        peers = nodes.saturating_sub(1).max(1),
        up = mbps(rate),
    );
    let scenario = Scenario::from_toml(&toml).context("the fan-out as a scenario")?;
    let report = shoal_simulations::run(&scenario);
    Ok(Simulated {
        last_over_t_min: report
            .shoal
            .max_over_t_min
            .context("not every simulated node finished")?,
        seed_copies: report.shoal.origin_copies,
        pushes_per_mib: report.counters.have_pushes as f64
            / report.counters.chunks_delivered.max(1) as f64,
        busy_per_mib: report.counters.busy_replies as f64
            / report.counters.chunks_delivered.max(1) as f64,
        wall_s: report.wall_s,
    })
}
