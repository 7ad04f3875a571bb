//! The `/metrics` page, in the OpenMetrics text format written by `prometheus-client` (the
//! Prometheus project's Rust client, which libp2p's own metrics use too). The page is the node's
//! families (`shoal_*`), then whatever is registered in the node's shared [`Registry`]: libp2p's
//! `libp2p_*` families, recorded by the swarm task.
//!
//! The `shoal_*` families are written at each scrape from a [`StatusReport`] (the same one
//! `shoal status --json` prints, so the two always agree) and the node's [`Timings`], rather
//! than kept as registered metrics: the counters are the atomics that `shoal status` reads too,
//! and the gauges (peers, store, transfers) only exist in the report.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::text::{encode_eof, encode_registry};
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::admin::StatusReport;
use crate::observe::{Counters, Histogram, ResponseTimings, ServedFrom, Timings};

/// What Prometheus asks for first, and what `prometheus-client` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

type Labels<'a> = &'a [(&'a str, &'a str)];

/// Writes the `/metrics` page: this report's and these timings' families, then `registry`'s.
pub fn render(
    report: StatusReport,
    counters: Arc<Counters>,
    registry: &Mutex<Registry>,
) -> Result<String, fmt::Error> {
    let mut node = Registry::default();
    node.register_collector(Box::new(NodeFamilies { report, counters }));
    let mut text = String::new();
    encode_registry(&mut text, &node)?;
    encode_registry(
        &mut text,
        &registry.lock().unwrap_or_else(PoisonError::into_inner),
    )?;
    encode_eof(&mut text)?;
    Ok(text)
}

/// The `shoal_*` families of one scrape.
#[derive(Debug)]
struct NodeFamilies {
    report: StatusReport,
    counters: Arc<Counters>,
}

impl Collector for NodeFamilies {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        write_families(
            &self.report,
            &self.counters.timings,
            &mut Families { encoder },
        )
    }
}

/// A page being written. Each family is written whole: its help, its type, its samples.
struct Families<'a> {
    encoder: DescriptorEncoder<'a>,
}

impl Families<'_> {
    fn family(
        &mut self,
        name: &str,
        kind: MetricType,
        help: &str,
        samples: &[(Labels, &dyn EncodeMetric)],
    ) -> fmt::Result {
        let mut metric = self.encoder.encode_descriptor(name, help, None, kind)?;
        match samples {
            // A family without labels is one sample, written without braces.
            [([], value)] => value.encode(metric),
            _ => {
                for (labels, value) in samples {
                    value.encode(metric.encode_family(labels)?)?;
                }
                Ok(())
            }
        }
    }

    /// `name` without `_total`: the encoder adds it to each sample, as OpenMetrics wants.
    fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) -> fmt::Result {
        let values: Vec<ConstCounter<u64>> = samples
            .iter()
            .map(|(_, value)| ConstCounter::new(*value))
            .collect();
        let samples: Vec<(Labels, &dyn EncodeMetric)> = samples
            .iter()
            .zip(&values)
            .map(|((labels, _), value)| (*labels, value as &dyn EncodeMetric))
            .collect();
        self.family(name, MetricType::Counter, help, &samples)
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) -> fmt::Result {
        self.family(
            name,
            MetricType::Gauge,
            help,
            &[(&[], &ConstGauge::new(value))],
        )
    }

    /// `name` without `_info`, which the encoder adds.
    fn info(&mut self, name: &str, help: &str, labels: Labels) -> fmt::Result {
        let mut metric = self
            .encoder
            .encode_descriptor(name, help, None, MetricType::Info)?;
        metric.encode_info(&labels)
    }

    fn histogram(
        &mut self,
        name: &str,
        help: &str,
        series: &[(Labels, &Histogram)],
    ) -> fmt::Result {
        let series: Vec<(Labels, &dyn EncodeMetric)> = series
            .iter()
            .map(|(labels, histogram)| (*labels, histogram.metric() as &dyn EncodeMetric))
            .collect();
        self.family(name, MetricType::Histogram, help, &series)
    }
}

fn write_families(report: &StatusReport, timings: &Timings, page: &mut Families) -> fmt::Result {
    let counters = &report.counters;
    page.info(
        "shoal",
        "This node: its peer id, site (empty when unset) and version",
        &[
            ("peer_id", &report.peer_id),
            ("site", report.site.as_deref().unwrap_or("")),
            ("version", env!("CARGO_PKG_VERSION")),
        ],
    )?;
    page.counter(
        "shoal_received_bytes",
        "Blob bytes received, by source (peers: verified chunks; upstream: registry downloads).",
        &[
            (&[("source", "peers")], counters.bytes_received_from_peers),
            (&[("source", "upstream")], counters.bytes_from_upstream),
        ],
    )?;
    page.counter(
        "shoal_sent_bytes",
        "Blob bytes sent, by destination (peers: chunks; gateway_clients: /v2/ blob bodies).",
        &[
            (&[("destination", "peers")], counters.bytes_sent_to_peers),
            (
                &[("destination", "gateway_clients")],
                counters.bytes_served_by_gateway,
            ),
        ],
    )?;
    page.counter(
        "shoal_gateway_served_bytes",
        "Blob bytes sent to gateway clients, by where they were read (store: a blob file already \
         stored; network: a transfer from peers or the upstream).",
        &[
            (&[("source", "store")], counters.bytes_served_from_store),
            (
                &[("source", "network")],
                counters
                    .bytes_served_by_gateway
                    .saturating_sub(counters.bytes_served_from_store),
            ),
        ],
    )?;
    page.counter(
        "shoal_gateway_requests",
        "Gateway blob and manifest requests (GET and HEAD); cache=hit when the store had the \
         content, miss when it had to come from the network (or was not found).",
        &[
            (
                &[("kind", "blob"), ("cache", "hit")],
                counters.gateway_blob_hits,
            ),
            (
                &[("kind", "blob"), ("cache", "miss")],
                counters.gateway_blob_misses,
            ),
            (
                &[("kind", "manifest"), ("cache", "hit")],
                counters.gateway_manifest_hits,
            ),
            (
                &[("kind", "manifest"), ("cache", "miss")],
                counters.gateway_manifest_misses,
            ),
        ],
    )?;
    page.counter(
        "shoal_transfers",
        "Blob transfers ended, by outcome (completed: verified and stored).",
        &[
            (&[("outcome", "completed")], counters.transfers_completed),
            (&[("outcome", "failed")], counters.transfers_failed),
        ],
    )?;
    page.counter(
        "shoal_chunk_links",
        "Chunk links opened to peers, by kind (lane: a TCP connection of its own; stream: a \
         libp2p stream, where the peer gave no lane).",
        &[
            (&[("kind", "lane")], counters.chunk_links_lane),
            (&[("kind", "stream")], counters.chunk_links_stream),
        ],
    )?;
    page.counter(
        "shoal_have_feeds",
        "Have feeds opened to peers, by kind (lane: a TCP connection of its own; stream: a \
         libp2p stream, where the peer gave no lane for a feed).",
        &[
            (&[("kind", "lane")], counters.have_feeds_lane),
            (&[("kind", "stream")], counters.have_feeds_stream),
        ],
    )?;
    page.counter(
        "shoal_bitfield_polls_on_lanes",
        "Bitfield polls sent on lanes rather than on a request-response substream each.",
        &[(&[], counters.bitfield_polls_on_lanes)],
    )?;
    page.counter(
        "shoal_bitfield_pushes",
        "Bitfield updates pushed on have feeds, sent to watching peers and received from watched ones.",
        &[
            (&[("direction", "sent")], counters.bitfield_pushes_sent),
            (&[("direction", "received")], counters.bitfield_pushes_received),
        ],
    )?;
    page.counter(
        "shoal_have_feed_writes",
        "Writes of the have feeds this node serves, each one record with the updates of one or more blobs.",
        &[(&[], counters.have_feed_writes)],
    )?;
    page.counter(
        "shoal_provider_lookups",
        "DHT lookups of a blob's providers started by this node's transfers.",
        &[(&[], counters.provider_lookups)],
    )?;
    page.counter(
        "shoal_provider_records",
        "Blobs this node recorded itself in the DHT as a provider of: imported, or fetched.",
        &[(&[], counters.provider_records)],
    )?;
    page.counter(
        "shoal_busy_answers",
        "Chunk requests from peers answered Busy: a full egress queue, or super-seeding.",
        &[
            (&[("reason", "egress")], counters.busy_answers_egress),
            (
                &[("reason", "super_seeding")],
                counters.busy_answers_super_seeding,
            ),
        ],
    )?;
    page.counter(
        "shoal_chunks_rejected",
        "Chunks from peers that failed their BLAKE3 check.",
        &[(&[], counters.chunks_rejected)],
    )?;
    page.counter(
        "shoal_upstream_errors",
        "Requests to upstream registries that failed: unreachable, refused, a server error or \
         invalid content (a 404 is an answer, not an error).",
        &[(&[], counters.upstream_errors)],
    )?;
    page.counter(
        "shoal_peers_banned",
        "Peers banned for sending bad data.",
        &[(&[], counters.peers_banned)],
    )?;
    page.counter(
        "shoal_peers_refused",
        "Connections refused because the peer is outside this node's zone.",
        &[(&[], counters.peers_refused)],
    )?;
    page.counter(
        "shoal_peer_requests_denied",
        "Peer requests denied by the zone's rules (credentialed content, upstream delegation).",
        &[(&[], counters.peer_requests_denied)],
    )?;
    page.counter(
        "shoal_announcements",
        "Signed announcements received, by result (dropped: bad signature, untrusted or stale).",
        &[
            (&[("result", "accepted")], counters.announcements_accepted),
            (&[("result", "dropped")], counters.announcements_dropped),
        ],
    )?;
    page.counter(
        "shoal_evictions",
        "Blobs evicted from the store to keep it within its budget.",
        &[(&[], counters.evictions)],
    )?;
    page.gauge(
        "shoal_peers_connected",
        "Peers connected now.",
        report.connected_peers.len() as u64,
    )?;
    page.gauge(
        "shoal_transfers_active",
        "Blob transfers in progress.",
        report.transfers.len() as u64,
    )?;
    page.gauge(
        "shoal_store_bytes",
        "Bytes of blobs in the store.",
        report.store.bytes,
    )?;
    page.gauge(
        "shoal_store_blobs",
        "Blobs in the store.",
        report.store.blobs,
    )?;
    page.gauge(
        "shoal_store_manifests",
        "Manifests in the store.",
        report.store.manifests,
    )?;
    page.gauge("shoal_store_tags", "Tags in the store.", report.store.tags)?;
    page.gauge(
        "shoal_known_images",
        "Images announced by trusted publishers, this node included.",
        report.known_images.len() as u64,
    )?;
    if let Some(max_bytes) = report.cache.max_bytes {
        page.gauge(
            "shoal_cache_max_bytes",
            "The store's budget (--cache-max); absent when unset.",
            max_bytes,
        )?;
    }
    if let Some(disk) = report.cache.disk {
        page.gauge(
            "shoal_disk_available_bytes",
            "Free bytes on the data directory's file system.",
            disk.available_bytes,
        )?;
        page.gauge(
            "shoal_disk_reserve_bytes",
            "Free bytes blob writes leave alone (for the metadata): new content stops when \
             shoal_disk_available_bytes comes down to this.",
            disk.reserve_bytes,
        )?;
    }
    page.gauge(
        "shoal_cache_pinned_images",
        "Images pinned (shoal pin): kept whatever the budget.",
        report.cache.pinned.len() as u64,
    )?;
    page.gauge(
        "shoal_cache_blobs_in_use",
        "Blobs being read, fetched or gathered by a pull now: not evictable.",
        report.cache.blobs_in_use as u64,
    )?;

    let by_source = |pick: fn(&ResponseTimings) -> &Histogram| {
        ServedFrom::ALL.map(|from| {
            let labels: Labels = match from {
                ServedFrom::Store => &[("source", "store")],
                ServedFrom::Network => &[("source", "network")],
            };
            (labels, pick(timings.gateway(from)))
        })
    };
    page.histogram(
        "shoal_gateway_blob_first_byte_seconds",
        "Gateway blob GETs: time from the request to the first body byte, by source.",
        &by_source(|t| &t.first_byte),
    )?;
    page.histogram(
        "shoal_gateway_blob_duration_seconds",
        "Gateway blob GETs sent whole: time from the request to the last body byte, by source.",
        &by_source(|t| &t.duration),
    )?;
    page.histogram(
        "shoal_gateway_blob_throughput_bytes_per_second",
        "Gateway blob GETs of at least 1 MiB sent whole: body bytes over duration, by source.",
        &by_source(|t| &t.throughput),
    )?;
    page.histogram(
        "shoal_transfer_duration_seconds",
        "Transfers that stored a blob: time from start to the blob verified and stored.",
        &[(&[], &timings.transfer_duration)],
    )?;
    page.histogram(
        "shoal_transfer_throughput_bytes_per_second",
        "Transfers of blobs of at least 1 MiB that stored them: blob size over duration.",
        &[(&[], &timings.transfer_throughput)],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics_server::tests::sample_report;

    /// The page with one gateway observation, and libp2p's families registered but unrecorded.
    fn sample_page() -> String {
        let counters = Arc::new(Counters::default());
        counters
            .timings
            .gateway(ServedFrom::Network)
            .first_byte
            .observe(0.02);
        let mut registry = Registry::default();
        let _libp2p = libp2p::metrics::Metrics::new(&mut registry);
        render(sample_report(), counters, &Mutex::new(registry)).unwrap()
    }

    /// Every line is a comment or `name{labels} value`; every sample belongs to the family
    /// declared last; the page ends with `# EOF`.
    #[test]
    fn the_page_is_well_formed_openmetrics() {
        let page = sample_page();
        assert!(page.ends_with("\n# EOF\n"), "{page}");
        let mut family: Option<(String, String)> = None;
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(
                    ["counter", "gauge", "histogram", "info"].contains(&kind),
                    "{line}"
                );
                assert!(!name.ends_with("_total"), "OpenMetrics: {line}");
                family = Some((name.to_owned(), kind.to_owned()));
                continue;
            }
            if line.starts_with("# HELP ") || line.starts_with("# UNIT ") || line == "# EOF" {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            let (declared, kind) = family.as_ref().expect("a sample before any family");
            let suffixes: &[&str] = match kind.as_str() {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                "info" => &["_info"],
                _ => &[""],
            };
            assert!(
                suffixes
                    .iter()
                    .any(|suffix| name.strip_suffix(suffix) == Some(declared)),
                "{line} outside its family {declared}"
            );
        }
    }

    #[test]
    fn the_page_agrees_with_the_report_under_the_names_users_scrape() {
        let page = sample_page();
        for expected in [
            "shoal_info{peer_id=\"12D3Koo\\\"odd\\\\\",site=\"\",version=",
            "shoal_cache_pinned_images 0\n",
            "shoal_gateway_served_bytes_total{source=\"store\"} 60\n",
            "shoal_gateway_served_bytes_total{source=\"network\"} 40\n",
            "shoal_gateway_requests_total{kind=\"blob\",cache=\"hit\"} 2\n",
            "shoal_sent_bytes_total{destination=\"gateway_clients\"} 100\n",
            "shoal_peers_connected 2\n",
            "shoal_store_bytes 4096\n",
            "shoal_gateway_blob_first_byte_seconds_bucket{le=\"0.025\",source=\"network\"} 1\n",
            "shoal_gateway_blob_first_byte_seconds_bucket{le=\"+Inf\",source=\"network\"} 1\n",
            "shoal_gateway_blob_first_byte_seconds_count{source=\"store\"} 0\n",
            "shoal_transfer_duration_seconds_count 0\n",
        ] {
            assert!(page.contains(expected), "no {expected:?} in\n{page}");
        }
        assert!(
            !page.contains("shoal_cache_max_bytes"),
            "no budget, no gauge"
        );
    }

    #[test]
    fn libp2p_families_follow_the_node_s_on_the_same_page() {
        let page = sample_page();
        let node = page.find("# TYPE shoal info").unwrap();
        for family in [
            "# TYPE libp2p_swarm_dial_attempt counter",
            "# TYPE libp2p_gossipsub_messages counter",
            "# TYPE libp2p_kad_query_result_get_providers_ok histogram",
            "# TYPE libp2p_identify_errors counter",
            "# TYPE libp2p_ping_rtt_seconds histogram",
        ] {
            let at = page.find(family);
            assert!(at.is_some_and(|at| at > node), "no {family} in\n{page}");
        }
    }
}
