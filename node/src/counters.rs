//! Byte counters for `shoal status`: where bytes came from and where they went. Plain atomics,
//! updated by whoever moves the bytes.

use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Counters {
    pub bytes_sent_to_peers: AtomicU64,
    pub bytes_received_from_peers: AtomicU64,
    pub bytes_from_upstream: AtomicU64,
    pub bytes_served_by_gateway: AtomicU64,
    pub chunks_rejected: AtomicU64,
    pub peers_banned: AtomicU64,
    pub announcements_accepted: AtomicU64,
    pub announcements_dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct CountersSnapshot {
    pub bytes_sent_to_peers: u64,
    pub bytes_received_from_peers: u64,
    pub bytes_from_upstream: u64,
    pub bytes_served_by_gateway: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    pub announcements_accepted: u64,
    pub announcements_dropped: u64,
}

impl Counters {
    pub fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        CountersSnapshot {
            bytes_sent_to_peers: get(&self.bytes_sent_to_peers),
            bytes_received_from_peers: get(&self.bytes_received_from_peers),
            bytes_from_upstream: get(&self.bytes_from_upstream),
            bytes_served_by_gateway: get(&self.bytes_served_by_gateway),
            chunks_rejected: get(&self.chunks_rejected),
            peers_banned: get(&self.peers_banned),
            announcements_accepted: get(&self.announcements_accepted),
            announcements_dropped: get(&self.announcements_dropped),
        }
    }
}
