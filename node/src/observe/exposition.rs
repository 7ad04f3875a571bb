//! The Prometheus text exposition format (version 0.0.4), written by hand: `# HELP` and
//! `# TYPE` lines, then one sample per line. [`render`] turns a [`StatusReport`] (the same one
//! `shoal status --json` prints, so the two always agree) and the node's [`Timings`] into the
//! `/metrics` page.

use std::fmt::{Display, Write as _};

use super::histogram::{HistogramSnapshot, ServedFrom, Timings};
use crate::admin::StatusReport;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

type Labels<'a> = &'a [(&'a str, &'a str)];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// A metrics page being written. Each family is written whole: its help, its type, its samples.
#[derive(Debug, Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn header(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: Labels, value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let value = value
                    .replace('\\', "\\\\")
                    .replace('"', "\\\"")
                    .replace('\n', "\\n");
                let _ = write!(self.text, "{label}=\"{value}\"");
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }

    fn family(&mut self, name: &str, kind: Kind, help: &str, samples: &[(Labels, u64)]) {
        self.header(name, kind, help);
        for (labels, value) in samples {
            self.sample(name, labels, value);
        }
    }

    fn counter(&mut self, name: &str, help: &str, samples: &[(Labels, u64)]) {
        self.family(name, Kind::Counter, help, samples);
    }

    fn gauge(&mut self, name: &str, help: &str, value: u64) {
        self.family(name, Kind::Gauge, help, &[(&[], value)]);
    }

    fn histogram(&mut self, name: &str, help: &str, series: &[(Labels, HistogramSnapshot)]) {
        self.header(name, Kind::Histogram, help);
        for (labels, snapshot) in series {
            for (bound, count) in &snapshot.buckets {
                let le = if bound.is_infinite() {
                    "+Inf".to_owned()
                } else {
                    bound.to_string()
                };
                let mut with_le = labels.to_vec();
                with_le.push(("le", &le));
                self.sample(&format!("{name}_bucket"), &with_le, count);
            }
            self.sample(&format!("{name}_sum"), labels, snapshot.sum);
            self.sample(&format!("{name}_count"), labels, snapshot.count);
        }
    }
}

/// The `/metrics` page for this report and these timings.
pub fn render(report: &StatusReport, timings: &Timings) -> String {
    let counters = &report.counters;
    let mut page = Exposition::default();
    page.family(
        "shoal_info",
        Kind::Gauge,
        "This node: its peer id, site (empty when unset) and version (always 1).",
        &[(
            &[
                ("peer_id", &report.peer_id),
                ("site", report.site.as_deref().unwrap_or("")),
                ("version", env!("CARGO_PKG_VERSION")),
            ],
            1,
        )],
    );
    page.counter(
        "shoal_received_bytes_total",
        "Blob bytes received, by source (peers: verified chunks; upstream: registry downloads).",
        &[
            (&[("source", "peers")], counters.bytes_received_from_peers),
            (&[("source", "upstream")], counters.bytes_from_upstream),
        ],
    );
    page.counter(
        "shoal_sent_bytes_total",
        "Blob bytes sent, by destination (peers: chunks; gateway_clients: /v2/ blob bodies).",
        &[
            (&[("destination", "peers")], counters.bytes_sent_to_peers),
            (
                &[("destination", "gateway_clients")],
                counters.bytes_served_by_gateway,
            ),
        ],
    );
    page.counter(
        "shoal_gateway_served_bytes_total",
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
    );
    page.counter(
        "shoal_gateway_requests_total",
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
    );
    page.counter(
        "shoal_transfers_total",
        "Blob transfers ended, by outcome (completed: verified and stored).",
        &[
            (&[("outcome", "completed")], counters.transfers_completed),
            (&[("outcome", "failed")], counters.transfers_failed),
        ],
    );
    page.counter(
        "shoal_chunks_rejected_total",
        "Chunks from peers that failed their BLAKE3 check.",
        &[(&[], counters.chunks_rejected)],
    );
    page.counter(
        "shoal_peers_banned_total",
        "Peers banned for sending bad data.",
        &[(&[], counters.peers_banned)],
    );
    page.counter(
        "shoal_announcements_total",
        "Signed announcements received, by result (dropped: bad signature, untrusted or stale).",
        &[
            (&[("result", "accepted")], counters.announcements_accepted),
            (&[("result", "dropped")], counters.announcements_dropped),
        ],
    );
    page.counter(
        "shoal_evictions_total",
        "Blobs evicted from the store to keep it within its budget.",
        &[(&[], counters.evictions)],
    );
    page.gauge(
        "shoal_peers_connected",
        "Peers connected now.",
        report.connected_peers.len() as u64,
    );
    page.gauge(
        "shoal_transfers_active",
        "Blob transfers in progress.",
        report.transfers.len() as u64,
    );
    page.gauge(
        "shoal_store_bytes",
        "Bytes of blobs in the store.",
        report.store.bytes,
    );
    page.gauge(
        "shoal_store_blobs",
        "Blobs in the store.",
        report.store.blobs,
    );
    page.gauge(
        "shoal_store_manifests",
        "Manifests in the store.",
        report.store.manifests,
    );
    page.gauge("shoal_store_tags", "Tags in the store.", report.store.tags);
    page.gauge(
        "shoal_known_images",
        "Images announced by trusted publishers, this node included.",
        report.known_images.len() as u64,
    );
    if let Some(max_bytes) = report.cache.max_bytes {
        page.gauge(
            "shoal_cache_max_bytes",
            "The store's budget (--cache-max); absent when unset.",
            max_bytes,
        );
    }
    page.gauge(
        "shoal_cache_pinned_images",
        "Images pinned (shoal pin): kept whatever the budget.",
        report.cache.pinned.len() as u64,
    );
    page.gauge(
        "shoal_cache_blobs_in_use",
        "Blobs being read, fetched or gathered by a pull now: not evictable.",
        report.cache.blobs_in_use as u64,
    );

    let by_source = |pick: fn(&super::histogram::ResponseTimings) -> HistogramSnapshot| {
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
        &by_source(|t| t.first_byte.snapshot()),
    );
    page.histogram(
        "shoal_gateway_blob_duration_seconds",
        "Gateway blob GETs sent whole: time from the request to the last body byte, by source.",
        &by_source(|t| t.duration.snapshot()),
    );
    page.histogram(
        "shoal_gateway_blob_throughput_bytes_per_second",
        "Gateway blob GETs of at least 1 MiB sent whole: body bytes over duration, by source.",
        &by_source(|t| t.throughput.snapshot()),
    );
    page.histogram(
        "shoal_transfer_duration_seconds",
        "Transfers that stored a blob: time from start to the blob verified and stored.",
        &[(&[], timings.transfer_duration.snapshot())],
    );
    page.histogram(
        "shoal_transfer_throughput_bytes_per_second",
        "Transfers of blobs of at least 1 MiB that stored them: blob size over duration.",
        &[(&[], timings.transfer_throughput.snapshot())],
    );
    page.text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observe::tests::sample_report;

    /// Every line is a comment or `name{labels} value`; every sample's family was declared.
    #[test]
    fn the_page_is_well_formed_and_agrees_with_the_report() {
        let timings = Timings::default();
        timings
            .gateway(ServedFrom::Network)
            .first_byte
            .observe(0.02);
        let page = render(&sample_report(), &timings);
        let mut declared = Vec::new();
        for line in page.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                assert!(
                    kind != "counter" || name.ends_with("_total"),
                    "a counter's name ends in _total: {line}"
                );
                declared.push(name.to_owned());
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value.parse::<f64>().unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                declared.iter().any(|family| name == family
                    || ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|suffix| name.strip_suffix(suffix) == Some(family))),
                "undeclared {line}"
            );
        }
        assert!(page.contains("shoal_info{peer_id=\"12D3Koo\\\"odd\\\\\",site=\"\",version="));
        assert!(page.contains("shoal_cache_pinned_images 0\n"));
        assert!(
            !page.contains("shoal_cache_max_bytes"),
            "no budget, no gauge"
        );
        assert!(page.contains("shoal_gateway_served_bytes_total{source=\"store\"} 60\n"));
        assert!(page.contains("shoal_gateway_served_bytes_total{source=\"network\"} 40\n"));
        assert!(page.contains("shoal_gateway_requests_total{kind=\"blob\",cache=\"hit\"} 2\n"));
        assert!(page.contains("shoal_peers_connected 2\n"));
        assert!(page.contains("shoal_store_bytes 4096\n"));
        assert!(page.contains(
            "shoal_gateway_blob_first_byte_seconds_bucket{source=\"network\",le=\"0.025\"} 1\n"
        ));
        assert!(page.contains(
            "shoal_gateway_blob_first_byte_seconds_bucket{source=\"network\",le=\"+Inf\"} 1\n"
        ));
        assert!(page.contains("shoal_gateway_blob_first_byte_seconds_count{source=\"store\"} 0\n"));
    }
}
