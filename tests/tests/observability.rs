//! What an operator watches: `shoal node --metrics` serves Prometheus metrics at `/metrics`, the
//! status report at `/status.json` and a status page at `/`. Two real nodes: an image imported
//! on one is pulled through the other's gateway; the metrics must agree with the image's bytes
//! and with `shoal status --json`, and the page, rendered by headless Chromium while a throttled
//! transfer runs, must show the peer and the transfer.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::browser;
use shoal_tests::clients::{require_tools, run_command_timeout, wait_until};
use shoal_tests::http;
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal, shoal_binary};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Enough virtual time for the page to poll `/status.json` a few times.
const PAGE_VIRTUAL_TIME: Duration = Duration::from_secs(3);

const LOCAL_METRICS: [&str; 2] = ["--metrics", "127.0.0.1:0"];

/// Each counter of `shoal status --json` and the series that exposes it.
const COUNTER_SERIES: &[(&str, &str)] = &[
    (
        "bytes_received_from_peers",
        r#"shoal_received_bytes_total{source="peers"}"#,
    ),
    (
        "bytes_from_upstream",
        r#"shoal_received_bytes_total{source="upstream"}"#,
    ),
    (
        "bytes_sent_to_peers",
        r#"shoal_sent_bytes_total{destination="peers"}"#,
    ),
    (
        "bytes_served_by_gateway",
        r#"shoal_sent_bytes_total{destination="gateway_clients"}"#,
    ),
    (
        "bytes_served_from_store",
        r#"shoal_gateway_served_bytes_total{source="store"}"#,
    ),
    (
        "gateway_blob_hits",
        r#"shoal_gateway_requests_total{kind="blob",cache="hit"}"#,
    ),
    (
        "gateway_blob_misses",
        r#"shoal_gateway_requests_total{kind="blob",cache="miss"}"#,
    ),
    (
        "gateway_manifest_hits",
        r#"shoal_gateway_requests_total{kind="manifest",cache="hit"}"#,
    ),
    (
        "gateway_manifest_misses",
        r#"shoal_gateway_requests_total{kind="manifest",cache="miss"}"#,
    ),
    (
        "transfers_completed",
        r#"shoal_transfers_total{outcome="completed"}"#,
    ),
    (
        "transfers_failed",
        r#"shoal_transfers_total{outcome="failed"}"#,
    ),
    ("chunks_rejected", "shoal_chunks_rejected_total"),
    ("peers_banned", "shoal_peers_banned_total"),
    ("peers_refused", "shoal_peers_refused_total"),
    ("peer_requests_denied", "shoal_peer_requests_denied_total"),
    (
        "chunk_links_lane",
        r#"shoal_chunk_links_total{kind="lane"}"#,
    ),
    (
        "chunk_links_stream",
        r#"shoal_chunk_links_total{kind="stream"}"#,
    ),
    ("have_feeds_lane", r#"shoal_have_feeds_total{kind="lane"}"#),
    (
        "have_feeds_stream",
        r#"shoal_have_feeds_total{kind="stream"}"#,
    ),
    (
        "bitfield_polls_on_lanes",
        "shoal_bitfield_polls_on_lanes_total",
    ),
    (
        "bitfield_pushes_sent",
        r#"shoal_bitfield_pushes_total{direction="sent"}"#,
    ),
    (
        "bitfield_pushes_received",
        r#"shoal_bitfield_pushes_total{direction="received"}"#,
    ),
    ("have_feed_writes", "shoal_have_feed_writes_total"),
    ("provider_lookups", "shoal_provider_lookups_total"),
    ("provider_records", "shoal_provider_records_total"),
    (
        "busy_answers_egress",
        r#"shoal_busy_answers_total{reason="egress"}"#,
    ),
    (
        "busy_answers_super_seeding",
        r#"shoal_busy_answers_total{reason="super_seeding"}"#,
    ),
    (
        "announcements_accepted",
        r#"shoal_announcements_total{result="accepted"}"#,
    ),
    (
        "announcements_dropped",
        r#"shoal_announcements_total{result="dropped"}"#,
    ),
    ("evictions", "shoal_evictions_total"),
];

/// `name{labels}` with its labels in name order: Prometheus treats labels as a set, and the
/// encoder writes a histogram's `le` first, so series are compared in this form.
fn canonical(series: &str) -> String {
    let Some((name, labels)) = series.split_once('{') else {
        return series.to_owned();
    };
    let labels = labels
        .strip_suffix('}')
        .unwrap_or_else(|| panic!("malformed series {series:?}"));
    let mut pairs = Vec::new();
    let mut rest = labels;
    while !rest.is_empty() {
        let (label, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("malformed labels in {series:?}"));
        // The value ends at the first quote that no backslash escapes.
        let mut end = None;
        let mut escaped = false;
        for (i, c) in after.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' => escaped = true,
                '"' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
        let end = end.unwrap_or_else(|| panic!("unterminated value in {series:?}"));
        pairs.push(format!("{label}=\"{}\"", &after[..end]));
        rest = after[end + 1..]
            .strip_prefix(',')
            .unwrap_or(&after[end + 1..]);
    }
    pairs.sort();
    format!("{name}{{{}}}", pairs.join(","))
}

/// A scraped `/metrics` page: every sample by its series in [`canonical`] form.
struct Metrics {
    text: String,
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    fn scrape(address: SocketAddr) -> Metrics {
        let response = http::get(&format!("http://{address}/metrics"), &[]).unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(
            response.header("content-type"),
            Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
        );
        let text = String::from_utf8(response.body).unwrap();
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .map(|line| {
                let (series, value) = line
                    .rsplit_once(' ')
                    .unwrap_or_else(|| panic!("malformed line {line:?}"));
                let value = value
                    .parse()
                    .unwrap_or_else(|_| panic!("malformed value in {line:?}"));
                (canonical(series), value)
            })
            .collect();
        assert!(
            text.ends_with("# EOF\n"),
            "an OpenMetrics page ends with # EOF"
        );
        Metrics { text, samples }
    }

    fn get(&self, series: &str) -> u64 {
        let value = self
            .samples
            .get(&canonical(series))
            .unwrap_or_else(|| panic!("no {series} in\n{}", self.text));
        assert!(value.fract() == 0.0 && *value >= 0.0, "{series} = {value}");
        *value as u64
    }

    /// Checks a histogram's shape (cumulative buckets ending in `+Inf` = `_count`) and returns
    /// its count.
    fn histogram_count(&self, name: &str, labels: &str) -> u64 {
        let prefix = format!("{name}_bucket{{");
        let buckets: Vec<u64> = self
            .samples
            .iter()
            .filter(|(series, _)| series.starts_with(&prefix) && series.contains(labels))
            .map(|(series, _)| self.get(series))
            .collect();
        assert!(!buckets.is_empty(), "no {prefix} in\n{}", self.text);
        let with_braces = |suffix: &str| {
            if labels.is_empty() {
                format!("{name}_{suffix}")
            } else {
                format!("{name}_{suffix}{{{labels}}}")
            }
        };
        let count = self.get(&with_braces("count"));
        let separator = if labels.is_empty() { "" } else { "," };
        let infinite = self.get(&format!("{name}_bucket{{{labels}{separator}le=\"+Inf\"}}"));
        assert_eq!(
            infinite, count,
            "{name}{{{labels}}}: +Inf bucket is the count"
        );
        assert!(
            buckets.iter().all(|bucket| *bucket <= count),
            "{name}{{{labels}}}: a bucket above the count in\n{}",
            self.text
        );
        count
    }

    /// Every series that differs from the status report, as `(what, status, metric)`.
    fn disagreements(&self, status: &Value) -> Vec<(String, u64, u64)> {
        let mut pairs: Vec<(String, u64, u64)> = COUNTER_SERIES
            .iter()
            .map(|(counter, series)| {
                let reported = status["counters"][counter]
                    .as_u64()
                    .unwrap_or_else(|| panic!("no counter {counter} in {status}"));
                (counter.to_string(), reported, self.get(series))
            })
            .collect();
        let length = |key: &str| status[key].as_array().map_or(0, Vec::len) as u64;
        pairs.extend([
            (
                "store.bytes".to_owned(),
                status["store"]["bytes"].as_u64().unwrap(),
                self.get("shoal_store_bytes"),
            ),
            (
                "store.blobs".to_owned(),
                status["store"]["blobs"].as_u64().unwrap(),
                self.get("shoal_store_blobs"),
            ),
            (
                "connected_peers".to_owned(),
                length("connected_peers"),
                self.get("shoal_peers_connected"),
            ),
            (
                "transfers".to_owned(),
                length("transfers"),
                self.get("shoal_transfers_active"),
            ),
        ]);
        pairs.retain(|(_, reported, metric)| reported != metric);
        pairs
    }
}

fn metrics_address(node: &ShoalNode) -> SocketAddr {
    node.metrics()
        .expect("the node was started with --metrics and says where")
}

/// Scrapes until the metrics and `shoal status --json` agree (a counter may move between the
/// two reads), then returns both.
fn agreeing(node: &ShoalNode) -> (Metrics, Value) {
    let mut last = None;
    let agreed = wait_until(
        "the metrics to agree with shoal status",
        EVENT_TIMEOUT,
        || {
            let metrics = Metrics::scrape(metrics_address(node));
            let status = node.status()?;
            let agree = metrics.disagreements(&status).is_empty();
            last = Some((metrics, status));
            Ok(agree)
        },
    );
    let (metrics, status) = last.expect("scraped at least once");
    if let Err(error) = agreed {
        panic!(
            "{error}: {:?}\n{}",
            metrics.disagreements(&status),
            metrics.text
        );
    }
    (metrics, status)
}

fn image(dir: &Path, name: &str, seed: u64, layers: &[u64]) -> GeneratedImage {
    let mut spec = ImageSpec::new(seed).gzip(GzipLevel::Store);
    for layer in layers {
        spec = spec.layer(*layer);
    }
    spec.write_oci_layout(&dir.join(name), None).unwrap()
}

/// Pulls the image's manifest by tag and its config and layers by digest through `gateway`, as
/// a registry client would, checking every digest.
fn pull_through_gateway(gateway: SocketAddr, generated: &GeneratedImage, blobs: &[&Blob]) {
    let manifest = http::get(
        &format!("http://{gateway}/v2/team/app/manifests/1"),
        &[("Accept", generated.manifest_media_type.as_str())],
    )
    .unwrap();
    assert_eq!(manifest.status, 200);
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(generated.manifest_digest.as_str())
    );
    for blob in blobs {
        let url = format!("http://{gateway}/v2/team/app/blobs/{}", blob.digest);
        let (status, digest, length) = http::get_digest(&url).unwrap();
        assert_eq!(
            (status, digest.as_str(), length),
            (200, blob.digest.as_str(), blob.size)
        );
    }
}

#[test]
fn metrics_after_a_pull_match_the_image_and_shoal_status() {
    let dir = tempfile::tempdir().unwrap();
    let seed = ShoalNode::start(&dir.path().join("seed"), &LOCAL_METRICS).unwrap();
    let mut extra = vec!["--cache-max", "1GiB"];
    extra.extend(LOCAL_METRICS);
    let edge = ShoalNode::start_joined(&dir.path().join("edge"), &[&seed], &extra).unwrap();
    let generated = image(dir.path(), "image", 7, &[3 << 20, 1 << 20, 4096]);
    seed.import_ok(&generated.path, Some("team/app:1")).unwrap();
    wait_until("the announcement to reach the edge", EVENT_TIMEOUT, || {
        edge.knows_tag("docker.io/team/app", "1")
    })
    .unwrap();

    let platform = &generated.platforms[0];
    let blobs: Vec<&Blob> = std::iter::once(&platform.config)
        .chain(platform.layers.iter().map(|layer| &layer.blob))
        .collect();
    let blob_bytes: u64 = blobs.iter().map(|blob| blob.size).sum();
    let large_blobs = blobs.iter().filter(|blob| blob.size >= 1 << 20).count() as u64;
    let blob_count = blobs.len() as u64;
    // Once from the network, then again from the store, once the first pull's transfers have
    // stored the blobs (a client has every byte a moment before its transfer has checked the
    // whole blob's sha256 and stored it).
    pull_through_gateway(edge.gateway(), &generated, &blobs);
    wait_until("the first pull's transfers to end", EVENT_TIMEOUT, || {
        Ok(edge.status()?["transfers"]
            .as_array()
            .is_some_and(Vec::is_empty))
    })
    .unwrap();
    pull_through_gateway(edge.gateway(), &generated, &blobs);

    let (metrics, status) = agreeing(&edge);
    let get = |series: &str| metrics.get(series);
    assert_eq!(
        get(r#"shoal_sent_bytes_total{destination="gateway_clients"}"#),
        2 * blob_bytes,
        "both pulls' blob bodies, exactly"
    );
    assert_eq!(
        get(r#"shoal_gateway_served_bytes_total{source="network"}"#),
        blob_bytes
    );
    assert_eq!(
        get(r#"shoal_gateway_served_bytes_total{source="store"}"#),
        blob_bytes
    );
    let from_peers = get(r#"shoal_received_bytes_total{source="peers"}"#);
    assert!(
        from_peers >= blob_bytes && from_peers <= 2 * generated.total_bytes,
        "{from_peers} bytes from peers for {blob_bytes} bytes of blobs"
    );
    assert_eq!(get(r#"shoal_received_bytes_total{source="upstream"}"#), 0);
    assert_eq!(
        get(r#"shoal_gateway_requests_total{kind="blob",cache="miss"}"#),
        blob_count
    );
    assert_eq!(
        get(r#"shoal_gateway_requests_total{kind="blob",cache="hit"}"#),
        blob_count
    );
    assert_eq!(
        get(r#"shoal_gateway_requests_total{kind="manifest",cache="miss"}"#),
        1
    );
    assert_eq!(
        get(r#"shoal_gateway_requests_total{kind="manifest",cache="hit"}"#),
        1
    );
    // The manifest, the config and the layers each came in one transfer.
    let transfers = get(r#"shoal_transfers_total{outcome="completed"}"#);
    assert_eq!(transfers, blob_count + 1, "{}", metrics.text);
    assert_eq!(get(r#"shoal_transfers_total{outcome="failed"}"#), 0);
    assert_eq!(get("shoal_transfers_active"), 0);
    assert_eq!(get("shoal_peers_connected"), 1);
    assert_eq!(get("shoal_peers_banned_total"), 0);
    assert_eq!(get("shoal_chunks_rejected_total"), 0);
    assert!(get(r#"shoal_announcements_total{result="accepted"}"#) >= 1);
    assert_eq!(get("shoal_evictions_total"), 0);
    assert_eq!(get("shoal_cache_max_bytes"), 1 << 30);
    assert_eq!(get("shoal_store_bytes"), generated.total_bytes);
    assert_eq!(get("shoal_store_blobs"), blob_count + 1);
    assert!(metrics.text.contains(&format!(
        "shoal_info{{peer_id=\"{}\",site=\"\",version=",
        edge.peer_id()
    )));

    for source in ["network", "store"] {
        let labels = format!("source=\"{source}\"");
        for name in [
            "shoal_gateway_blob_first_byte_seconds",
            "shoal_gateway_blob_duration_seconds",
        ] {
            assert_eq!(
                metrics.histogram_count(name, &labels),
                blob_count,
                "{name}{{{labels}}}"
            );
        }
        assert_eq!(
            metrics.histogram_count("shoal_gateway_blob_throughput_bytes_per_second", &labels),
            large_blobs
        );
    }
    assert_eq!(
        metrics.histogram_count("shoal_transfer_duration_seconds", ""),
        transfers
    );
    assert_eq!(
        metrics.histogram_count("shoal_transfer_throughput_bytes_per_second", ""),
        large_blobs
    );

    // /status.json is the report `shoal status --json` prints.
    let json = http::get(
        &format!("http://{}/status.json", metrics_address(&edge)),
        &[],
    )
    .unwrap()
    .json()
    .unwrap();
    for key in [
        "peer_id",
        "gateway",
        "data_dir",
        "images",
        "store",
        "known_images",
    ] {
        assert_eq!(json[key], status[key], "{key}");
    }

    // The seed's side: what it sent to its peer, and nothing from the gateway.
    let (seed_metrics, _) = agreeing(&seed);
    assert!(seed_metrics.get(r#"shoal_sent_bytes_total{destination="peers"}"#) >= blob_bytes);
    assert_eq!(
        seed_metrics.get(r#"shoal_sent_bytes_total{destination="gateway_clients"}"#),
        0
    );
    assert_eq!(
        seed_metrics.get(r#"shoal_received_bytes_total{source="peers"}"#),
        0
    );
}

/// Every family the README names, which scrapers and dashboards already use.
const NODE_FAMILIES: &[&str] = &[
    // An OpenMetrics info family: its sample is `shoal_info{peer_id=..,site=..,version=..} 1`.
    "shoal",
    "shoal_received_bytes",
    "shoal_sent_bytes",
    "shoal_gateway_served_bytes",
    "shoal_gateway_requests",
    "shoal_gateway_blob_first_byte_seconds",
    "shoal_gateway_blob_duration_seconds",
    "shoal_gateway_blob_throughput_bytes_per_second",
    "shoal_transfer_duration_seconds",
    "shoal_transfer_throughput_bytes_per_second",
    "shoal_transfers",
    "shoal_transfers_active",
    "shoal_peers_connected",
    "shoal_peers_banned",
    "shoal_peers_refused",
    "shoal_peer_requests_denied",
    "shoal_chunk_links",
    "shoal_bitfield_polls_on_lanes",
    "shoal_bitfield_pushes",
    "shoal_have_feed_writes",
    "shoal_busy_answers",
    "shoal_chunks_rejected",
    "shoal_announcements",
    "shoal_evictions",
    "shoal_store_bytes",
    "shoal_store_blobs",
    "shoal_store_manifests",
    "shoal_store_tags",
    "shoal_known_images",
    "shoal_cache_max_bytes",
    "shoal_cache_pinned_images",
    "shoal_cache_blobs_in_use",
];

/// libp2p's families (`libp2p-metrics`), declared whether or not anything was recorded yet.
const LIBP2P_FAMILIES: &[&str] = &[
    "libp2p_swarm_dial_attempt",
    "libp2p_gossipsub_messages",
    "libp2p_kad_query_result_get_providers_ok",
    "libp2p_identify_received",
    "libp2p_ping_rtt_seconds",
];

impl Metrics {
    fn declares(&self, family: &str) -> bool {
        self.text.contains(&format!("\n# TYPE {family} "))
    }

    /// The sum of every sample of `name`, whatever its labels.
    fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| series.split('{').next() == Some(name))
            .map(|(_, value)| value)
            .sum()
    }
}

#[test]
fn metrics_carry_libp2p_families_beside_the_node_s_own() {
    let dir = tempfile::tempdir().unwrap();
    let mut extra = vec!["--cache-max", "1GiB"];
    extra.extend(LOCAL_METRICS);
    let seed = ShoalNode::start(&dir.path().join("seed"), &LOCAL_METRICS).unwrap();
    let edge = ShoalNode::start_joined(&dir.path().join("edge"), &[&seed], &extra).unwrap();
    let generated = image(dir.path(), "image", 11, &[4096]);
    seed.import_ok(&generated.path, Some("team/app:1")).unwrap();
    wait_until("the announcement to reach the edge", EVENT_TIMEOUT, || {
        edge.knows_tag("docker.io/team/app", "1")
    })
    .unwrap();

    // Identify and gossip are recorded as their events reach the swarm task; wait for both.
    let mut last = None;
    let recorded = wait_until("libp2p's events to be recorded", EVENT_TIMEOUT, || {
        let metrics = Metrics::scrape(metrics_address(&edge));
        let done = metrics.sum("libp2p_identify_received_total") >= 1.0
            && metrics.sum("libp2p_gossipsub_messages_total") >= 1.0;
        last = Some(metrics);
        Ok(done)
    });
    let metrics = last.expect("scraped at least once");
    if let Err(error) = recorded {
        panic!("{error}:\n{}", metrics.text);
    }
    for family in NODE_FAMILIES.iter().chain(LIBP2P_FAMILIES) {
        assert!(metrics.declares(family), "no {family} in\n{}", metrics.text);
    }
    assert!(
        metrics.sum("libp2p_swarm_connections_established_total") >= 1.0,
        "the connection to the seed is counted:\n{}",
        metrics.text
    );
    assert_eq!(metrics.get("shoal_peers_connected"), 1);
    assert!(metrics.get(r#"shoal_announcements_total{result="accepted"}"#) >= 1);
    let node_families = metrics.text.find("# TYPE shoal info").unwrap();
    let libp2p_families = metrics.text.find("# TYPE libp2p_").unwrap();
    assert!(
        node_families < libp2p_families,
        "one page, the node's families first"
    );
}

#[test]
fn metrics_on_a_non_loopback_address_need_metrics_public() {
    let dir = tempfile::tempdir().unwrap();
    let mut refused = std::process::Command::new(shoal_binary().unwrap());
    refused
        .args(["node", "--no-mdns", "--gateway", "127.0.0.1:0"])
        .args(["--listen", "/ip4/127.0.0.1/tcp/0", "--metrics", "0.0.0.0:0"])
        .arg("--data")
        .arg(dir.path().join("refused"));
    let error = run_command_timeout(&mut refused, EVENT_TIMEOUT)
        .expect_err("a node must not serve its status to the network unasked");
    assert!(
        format!("{error:#}").contains("--metrics-public"),
        "{error:#}"
    );

    let public = ShoalNode::start(
        &dir.path().join("public"),
        &["--metrics", "0.0.0.0:0", "--metrics-public"],
    )
    .unwrap();
    let address = metrics_address(&public);
    assert!(address.ip().is_unspecified(), "{address}");
    let local = SocketAddr::from(([127, 0, 0, 1], address.port()));
    assert_eq!(Metrics::scrape(local).get("shoal_peers_connected"), 0);
}

/// The value of attribute `name` in the first tag of `dom` that contains `anchor`.
fn attribute(dom: &str, anchor: &str, name: &str) -> Option<String> {
    let at = dom.find(anchor)?;
    let tag_start = dom[..at].rfind('<')?;
    let tag = &dom[tag_start..tag_start + dom[tag_start..].find('>')?];
    let value = tag.split(&format!("{name}=\"")).nth(1)?;
    Some(value[..value.find('"')?].to_owned())
}

#[test]
fn the_status_page_in_chromium_shows_peers_and_a_transfer_in_progress() {
    if !require_tools(&["chromium"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = ShoalNode::start(&dir.path().join("seed"), &[]).unwrap();
    // 24 MiB at 2 MiB/s: about 12 s of transfer to catch in the page.
    let mut extra = vec!["--max-ingress", "2MiB/s"];
    extra.extend(LOCAL_METRICS);
    let edge = ShoalNode::start_joined(&dir.path().join("edge"), &[&seed], &extra).unwrap();
    let generated = image(dir.path(), "image", 11, &[24 << 20]);
    let layer = generated.platforms[0].layers[0].blob.clone();
    seed.import_ok(&generated.path, Some("team/app:1")).unwrap();
    wait_until("the announcement to reach the edge", EVENT_TIMEOUT, || {
        edge.knows_tag("docker.io/team/app", "1")
    })
    .unwrap();

    let mut pull = shoal(edge.data(), "pull").unwrap();
    pull.arg("team/app:1");
    let pulling = std::thread::spawn(move || pull.output());
    wait_until("the layer's transfer to start", EVENT_TIMEOUT, || {
        let status = edge.status()?;
        Ok(status["transfers"].as_array().unwrap().iter().any(|t| {
            t["blob"] == layer.digest.as_str() && t["chunks_have"].as_u64().unwrap_or(0) > 0
        }))
    })
    .unwrap();
    let during = Metrics::scrape(metrics_address(&edge));
    assert!(during.get("shoal_transfers_active") >= 1, "{}", during.text);

    let url = format!("http://{}/", metrics_address(&edge));
    let page = browser::capture(&url, dir.path(), "status-page", PAGE_VIRTUAL_TIME).unwrap();
    let dom = &page.dom;
    assert!(
        dom.contains(&format!("id=\"peer-id\">{}<", edge.peer_id())),
        "the page names its node:\n{dom}"
    );
    assert!(
        dom.contains(&format!("data-peer-id=\"{}\"", seed.peer_id())),
        "the page lists the peer:\n{dom}"
    );
    let anchor = format!("data-blob=\"{}\"", layer.digest);
    let chunks = |name: &str| -> u64 {
        attribute(dom, &anchor, name)
            .unwrap_or_else(|| panic!("no transfer of {} on the page:\n{dom}", layer.digest))
            .parse()
            .unwrap()
    };
    let (have, total) = (chunks("data-chunks-have"), chunks("data-chunks-total"));
    assert!(
        0 < have && have < total,
        "the transfer is shown in progress: {have} of {total} chunks"
    );
    assert!(dom.contains("class=\"bar\""), "with a progress bar");
    assert!(dom.contains("team/app:1") || dom.contains("docker.io/team/app"));
    assert!(std::fs::metadata(&page.screenshot).unwrap().len() > 10_000);
    // To refresh the README's picture: SHOAL_STATUS_SCREENSHOT=$PWD/docs/status-page.png.
    if let Some(keep) = std::env::var_os("SHOAL_STATUS_SCREENSHOT") {
        std::fs::copy(&page.screenshot, keep).unwrap();
    }

    let output = pulling.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "shoal pull failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        edge.logs()
    );
    assert!(
        edge.status().unwrap()["transfers"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}
