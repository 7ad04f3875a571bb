//! What the node records about itself: byte counters ([`counters`]), latency and throughput
//! histograms ([`histogram`]), the measuring wrapper around gateway responses ([`response`]),
//! and the registry libp2p records its own metrics into. Whoever moves bytes records here.
//!
//! Not for serving: `/metrics`, `/status.json` and the status page are `metrics_server`, which
//! reads what is recorded here; this module imports nothing of it, so recording code never
//! depends on the HTTP server.

mod counters;
mod gateway;
mod histogram;
mod response;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::registry::Registry;

pub use counters::{Counters, CountersSnapshot};
pub use gateway::GatewayMetrics;
pub use histogram::{Histogram, ResponseTimings, ServedFrom, Timings};
pub use response::measured;

/// The registry every part of the node registers its metrics with (today the swarm task, for
/// libp2p's). Locked only to register at start-up and to encode a scrape; nothing awaits under
/// the lock.
pub type SharedRegistry = Arc<Mutex<Registry>>;

/// Records a transfer that ended after `elapsed`. `size` is the blob's, when the transfer
/// learnt it; a transfer `completed` without one found the blob already stored and moved
/// nothing, so it is not counted.
pub fn record_transfer(counters: &Counters, completed: bool, size: Option<u64>, elapsed: Duration) {
    match (completed, size) {
        (true, Some(size)) => {
            Counters::add(&counters.transfers_completed, 1);
            counters.timings.transfer_duration.observe_duration(elapsed);
            counters
                .timings
                .transfer_throughput
                .observe_throughput(size, elapsed);
        }
        (true, None) => {}
        (false, _) => Counters::add(&counters.transfers_failed, 1),
    }
}
