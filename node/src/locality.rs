//! How near each peer is: its site label (`--site`, carried in identify's agent version), its
//! round-trip time (libp2p ping), the throughput its chunks arrived at, and the bytes moved
//! each way. The network writes sites and round trips, transfers and the peer service write
//! bytes and throughput; transfers read it to prefer near peers and to keep one copy per site,
//! the rate limiters to tell traffic that leaves the site, and `shoal status` to show it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use libp2p::PeerId;

/// Weight of a new sample in the smoothed round trip and throughput.
const SMOOTHING: f64 = 0.25;
/// Preference of a site-mate over any peer outside the site.
const SAME_SITE_PREFERENCE: i32 = 10_000;
/// Longest site label, in bytes.
pub const SITE_BYTES_MAX: usize = 64;

/// A site label: letters, digits, `.`, `_` and `-`, at most [`SITE_BYTES_MAX`] bytes.
pub fn valid_site(site: &str) -> bool {
    !site.is_empty()
        && site.len() <= SITE_BYTES_MAX
        && site
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// The agent version a node announces through identify: its version and its site.
pub fn agent_version(site: Option<&str>) -> String {
    let version = concat!("shoal/", env!("CARGO_PKG_VERSION"));
    match site {
        Some(site) => format!("{version} site={site}"),
        None => version.to_owned(),
    }
}

/// The site a peer announced in its agent version, if a valid one.
pub fn site_of_agent(agent_version: &str) -> Option<String> {
    agent_version
        .split_whitespace()
        .find_map(|field| field.strip_prefix("site="))
        .filter(|site| valid_site(site))
        .map(str::to_owned)
}

/// What is known of one peer.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerRecord {
    pub site: Option<String>,
    pub rtt_ms: Option<f64>,
    /// Smoothed rate at which this peer's chunks arrived, request to last byte.
    pub throughput_bytes_per_s: Option<f64>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// One line of `shoal status` per connected peer.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub peer_id: String,
    pub same_site: bool,
    #[serde(flatten)]
    pub record: PeerRecord,
}

#[derive(Debug, Default)]
pub struct Locality {
    own_site: Option<String>,
    peers: Mutex<HashMap<PeerId, PeerRecord>>,
}

fn smoothed(old: Option<f64>, sample: f64) -> f64 {
    match old {
        Some(old) => old + SMOOTHING * (sample - old),
        None => sample,
    }
}

impl Locality {
    pub fn new(own_site: Option<String>) -> Locality {
        Locality {
            own_site,
            peers: Mutex::default(),
        }
    }

    fn update(&self, peer: PeerId, change: impl FnOnce(&mut PeerRecord)) {
        let mut peers = self
            .peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        change(peers.entry(peer).or_default());
    }

    fn record(&self, peer: &PeerId) -> PeerRecord {
        self.peers
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .get(peer)
            .cloned()
            .unwrap_or_default()
    }

    pub fn own_site(&self) -> Option<&str> {
        self.own_site.as_deref()
    }

    pub fn set_site(&self, peer: PeerId, site: Option<String>) {
        self.update(peer, |record| record.site = site);
    }

    pub fn record_rtt(&self, peer: PeerId, rtt: Duration) {
        let sample = rtt.as_secs_f64() * 1000.0;
        self.update(peer, |record| {
            record.rtt_ms = Some(smoothed(record.rtt_ms, sample));
        });
    }

    /// `bytes` of a chunk arrived from `peer`, `took` after they were asked for.
    pub fn record_received(&self, peer: PeerId, bytes: u64, took: Duration) {
        let sample = bytes as f64 / took.as_secs_f64().max(1e-6);
        self.update(peer, |record| {
            record.bytes_received += bytes;
            record.throughput_bytes_per_s = Some(smoothed(record.throughput_bytes_per_s, sample));
        });
    }

    pub fn record_sent(&self, peer: PeerId, bytes: u64) {
        self.update(peer, |record| record.bytes_sent += bytes);
    }

    /// Whether this node has a site and `peer` announced the same one.
    pub fn same_site(&self, peer: &PeerId) -> bool {
        self.own_site.is_some() && self.record(peer).site == self.own_site
    }

    /// Whether traffic with `peer` leaves this node's site (never, without a site label).
    pub fn outside(&self, peer: &PeerId) -> bool {
        self.own_site.is_some() && !self.same_site(peer)
    }

    /// The scheduler preference of `peer`: site-mates first, then lower round trip and higher
    /// throughput (one point per millisecond and per MB/s, each capped at 1000).
    pub fn preference(&self, peer: &PeerId) -> i32 {
        let record = self.record(peer);
        let same_site = self.own_site.is_some() && record.site == self.own_site;
        let rtt = record.rtt_ms.map_or(0.0, |rtt| rtt.min(1000.0));
        let throughput = record
            .throughput_bytes_per_s
            .map_or(0.0, |rate| (rate / 1e6).min(1000.0));
        i32::from(same_site) * SAME_SITE_PREFERENCE + (throughput - rtt) as i32
    }

    /// What is known of each of `connected`.
    pub fn status(&self, connected: &[PeerId]) -> Vec<PeerStatus> {
        connected
            .iter()
            .map(|peer| PeerStatus {
                peer_id: peer.to_string(),
                same_site: self.same_site(peer),
                record: self.record(peer),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sites_travel_in_the_agent_version_and_bad_ones_are_ignored() {
        assert_eq!(
            site_of_agent(&agent_version(Some("shop-12"))),
            Some("shop-12".into())
        );
        assert_eq!(site_of_agent(&agent_version(None)), None);
        assert_eq!(site_of_agent("shoal/9 site=a/b"), None);
        assert_eq!(site_of_agent(&format!("x site={}", "a".repeat(65))), None);
        assert!(!valid_site(""));
    }

    #[test]
    fn site_mates_come_first_then_near_and_fast_peers() {
        let locality = Locality::new(Some("a".into()));
        let (mate, near, far) = (PeerId::random(), PeerId::random(), PeerId::random());
        locality.set_site(mate, Some("a".into()));
        locality.set_site(near, Some("b".into()));
        locality.record_rtt(mate, Duration::from_millis(50));
        locality.record_rtt(near, Duration::from_millis(1));
        locality.record_rtt(far, Duration::from_millis(80));
        locality.record_received(near, 1 << 20, Duration::from_millis(10));
        locality.record_received(far, 1 << 20, Duration::from_millis(500));
        assert!(locality.same_site(&mate) && !locality.outside(&mate));
        assert!(locality.outside(&near) && locality.outside(&far));
        assert!(locality.preference(&mate) > locality.preference(&near));
        assert!(locality.preference(&near) > locality.preference(&far));
        let status = locality.status(&[near]);
        assert_eq!(status[0].record.bytes_received, 1 << 20);
        assert!(!status[0].same_site);

        let unlabelled = Locality::new(None);
        assert!(!unlabelled.outside(&far) && !unlabelled.same_site(&far));
    }
}
