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
    /// Of `bytes_served_by_gateway`, those read from blob files already stored.
    pub bytes_served_from_store: AtomicU64,
    /// Gateway requests (GET and HEAD) answered from the store, and the others.
    pub gateway_blob_hits: AtomicU64,
    pub gateway_blob_misses: AtomicU64,
    pub gateway_manifest_hits: AtomicU64,
    pub gateway_manifest_misses: AtomicU64,
    /// Transfers that stored their blob, and transfers that failed.
    pub transfers_completed: AtomicU64,
    pub transfers_failed: AtomicU64,
    /// Blobs evicted to keep the store within its budget.
    pub evictions: AtomicU64,
    /// Upstream registry requests that failed (not a 404).
    pub upstream_errors: AtomicU64,
    /// Of the peer traffic, what crossed this node's site boundary (`--site`).
    pub bytes_sent_to_other_sites: AtomicU64,
    pub bytes_received_from_other_sites: AtomicU64,
    /// Connections refused because the peer is outside this node's zone (`zone.rs`).
    pub peers_refused: AtomicU64,
    /// Requests from connected peers that the zone's rules denied.
    pub peer_requests_denied: AtomicU64,
    /// Chunk links this node opened to peers: lanes (`network/lane/`), and libp2p streams
    /// where the peer gave no lane.
    pub chunk_links_lane: AtomicU64,
    pub chunk_links_stream: AtomicU64,
    /// Have feeds this node opened to peers: on lanes, and on libp2p streams where the peer
    /// gave no lane for a feed.
    pub have_feeds_lane: AtomicU64,
    pub have_feeds_stream: AtomicU64,
    /// Bitfield polls this node sent on lanes (the others went on request-response substreams).
    pub bitfield_polls_on_lanes: AtomicU64,
    /// Bitfield updates pushed on have feeds (`network/feed.rs`): sent to peers watching
    /// this node's blobs, and received from peers this node watches.
    pub bitfield_pushes_sent: AtomicU64,
    pub bitfield_pushes_received: AtomicU64,
    /// Writes of the have feeds this node serves: each one record, with the latest update of
    /// every blob the feed held since its last write (`exchange/feed.rs`).
    pub have_feed_writes: AtomicU64,
    /// DHT lookups of a blob's providers this node's transfers started
    /// (`shoal_protocol::fetch::SOURCES_ENOUGH` says when they stop).
    pub provider_lookups: AtomicU64,
    /// Blobs this node recorded itself in the DHT as a provider of: each blob of an image it
    /// imported, and each blob its transfers fetched where the connected peers fell short
    /// (`shoal_protocol::fetch::FetchAction::Provide`) or took from an upstream or a relay.
    pub provider_records: AtomicU64,
    /// Chunk requests this node answered `Busy`: its egress queue was full, or super-seeding
    /// held the chunk back (`shoal_protocol::serving`).
    pub busy_answers_egress: AtomicU64,
    pub busy_answers_super_seeding: AtomicU64,
    /// Latency and throughput histograms for `/metrics` (not in the snapshot).
    pub timings: super::Timings,
    /// Gateway pulls per zone and auth failures, registered in the shared registry.
    pub gateway: super::GatewayMetrics,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct CountersSnapshot {
    pub bytes_sent_to_peers: u64,
    pub bytes_received_from_peers: u64,
    pub bytes_from_upstream: u64,
    pub bytes_served_by_gateway: u64,
    pub chunks_rejected: u64,
    pub peers_banned: u64,
    pub announcements_accepted: u64,
    pub announcements_dropped: u64,
    pub bytes_served_from_store: u64,
    pub gateway_blob_hits: u64,
    pub gateway_blob_misses: u64,
    pub gateway_manifest_hits: u64,
    pub gateway_manifest_misses: u64,
    pub transfers_completed: u64,
    pub transfers_failed: u64,
    pub evictions: u64,
    pub upstream_errors: u64,
    pub bytes_sent_to_other_sites: u64,
    pub bytes_received_from_other_sites: u64,
    pub peers_refused: u64,
    pub peer_requests_denied: u64,
    pub chunk_links_lane: u64,
    pub chunk_links_stream: u64,
    pub have_feeds_lane: u64,
    pub have_feeds_stream: u64,
    pub bitfield_polls_on_lanes: u64,
    pub bitfield_pushes_sent: u64,
    pub bitfield_pushes_received: u64,
    pub have_feed_writes: u64,
    pub provider_lookups: u64,
    pub provider_records: u64,
    pub busy_answers_egress: u64,
    pub busy_answers_super_seeding: u64,
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
            bytes_served_from_store: get(&self.bytes_served_from_store),
            gateway_blob_hits: get(&self.gateway_blob_hits),
            gateway_blob_misses: get(&self.gateway_blob_misses),
            gateway_manifest_hits: get(&self.gateway_manifest_hits),
            gateway_manifest_misses: get(&self.gateway_manifest_misses),
            transfers_completed: get(&self.transfers_completed),
            transfers_failed: get(&self.transfers_failed),
            evictions: get(&self.evictions),
            upstream_errors: get(&self.upstream_errors),
            bytes_sent_to_other_sites: get(&self.bytes_sent_to_other_sites),
            bytes_received_from_other_sites: get(&self.bytes_received_from_other_sites),
            peers_refused: get(&self.peers_refused),
            peer_requests_denied: get(&self.peer_requests_denied),
            chunk_links_lane: get(&self.chunk_links_lane),
            chunk_links_stream: get(&self.chunk_links_stream),
            have_feeds_lane: get(&self.have_feeds_lane),
            have_feeds_stream: get(&self.have_feeds_stream),
            bitfield_polls_on_lanes: get(&self.bitfield_polls_on_lanes),
            bitfield_pushes_sent: get(&self.bitfield_pushes_sent),
            bitfield_pushes_received: get(&self.bitfield_pushes_received),
            have_feed_writes: get(&self.have_feed_writes),
            provider_lookups: get(&self.provider_lookups),
            provider_records: get(&self.provider_records),
            busy_answers_egress: get(&self.busy_answers_egress),
            busy_answers_super_seeding: get(&self.busy_answers_super_seeding),
        }
    }
}
