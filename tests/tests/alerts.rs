//! The operator's alerting and dashboard (deploy/prometheus, deploy/grafana) against real tools
//! and a real node: `promtool` accepts the rules and passes their unit tests, every metric the
//! rules and the dashboard use is on a real node's `/metrics` page, and a real Prometheus
//! scraping a node fires the budget alert once a small budget fills.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use shoal_tests::clients::{ChildGuard, free_port, require_tool, run_command, wait_until};
use shoal_tests::http;
use shoal_tests::image::ImageSpec;
use shoal_tests::node::ShoalNode;

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(90);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn rules_file() -> PathBuf {
    deploy_dir().join("prometheus/shoal-alerts.yml")
}

/// Every `shoal_*` name in `text`.
fn shoal_metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("shoal_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// The sample names of an OpenMetrics page (`name{labels} value` or `name value`).
fn sample_names(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| line.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn scrape(address: SocketAddr) -> String {
    let page = http::get(&format!("http://{address}/metrics"), &[]).unwrap();
    assert_eq!(page.status, 200);
    String::from_utf8(page.body).unwrap()
}

#[test]
fn the_rules_pass_promtool_check_and_their_unit_tests() {
    if !require_tool("promtool").unwrap() {
        return;
    }
    let checked = run_command(
        Command::new("promtool")
            .arg("check")
            .arg("rules")
            .arg(rules_file()),
    )
    .unwrap();
    let text = checked.stdout_text().unwrap();
    assert!(text.contains("SUCCESS: 8 rules found"), "{text}");
    let tested = run_command(
        Command::new("promtool")
            .current_dir(deploy_dir().join("prometheus"))
            .args(["test", "rules", "shoal-alerts.test.yml"]),
    )
    .unwrap();
    assert!(tested.stdout_text().unwrap().contains("SUCCESS"));
}

#[test]
fn every_metric_the_rules_and_the_dashboard_use_is_on_a_real_nodes_page() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(
        dir.path(),
        &["--metrics", "127.0.0.1:0", "--cache-max", "1GiB"],
    )
    .unwrap();
    let page = scrape(node.metrics().expect("started with --metrics"));
    let served = sample_names(&page);

    let dashboard_text =
        std::fs::read_to_string(deploy_dir().join("grafana/shoal-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard_text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let queries: Vec<&str> = panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().unwrap())
        .collect();
    assert!(queries.len() >= 10, "{} queries", queries.len());

    let rules = std::fs::read_to_string(rules_file()).unwrap();
    for (file, text) in [("the rules", rules), ("the dashboard", queries.join("\n"))] {
        let used = shoal_metric_names(&text);
        assert!(used.len() >= 5, "{file} use {used:?}");
        let missing: Vec<&String> = used
            .iter()
            // A histogram's samples are `_bucket`, `_count` and `_sum` of its family name.
            .filter(|name| !served.contains(*name))
            .collect();
        assert!(
            missing.is_empty(),
            "{file} use metrics the node does not serve: {missing:?}\n{page}"
        );
    }
}

/// A Prometheus server on 127.0.0.1 scraping one node every second, with the rules of
/// deploy/prometheus evaluated every second.
struct Prometheus {
    address: SocketAddr,
    _process: ChildGuard,
}

impl Prometheus {
    /// `rules` is the rule file's text; `target` the node's metrics address.
    fn start(dir: &Path, rules: &str, target: SocketAddr) -> Prometheus {
        std::fs::write(dir.join("rules.yml"), rules).unwrap();
        std::fs::write(
            dir.join("prometheus.yml"),
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 rule_files: [rules.yml]\n\
                 scrape_configs:\n  - job_name: shoal\n    static_configs:\n      \
                 - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let address = SocketAddr::from(([127, 0, 0, 1], free_port().unwrap()));
        let process = ChildGuard::spawn_logged(
            Command::new("prometheus")
                .arg(format!(
                    "--config.file={}",
                    dir.join("prometheus.yml").display()
                ))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.join("data").display()
                ))
                .arg(format!("--web.listen-address={address}")),
            "prometheus",
            &dir.join("prometheus.out"),
            &dir.join("prometheus.err"),
            Duration::from_secs(5),
        )
        .unwrap();
        Prometheus {
            address,
            _process: process,
        }
    }

    fn get(&self, path: &str) -> serde_json::Value {
        let answer = http::get(&format!("http://{}{path}", self.address), &[]).unwrap();
        assert_eq!(answer.status, 200, "{path}");
        answer.json().unwrap()
    }

    /// The state of `alert` ("pending", "firing"), if Prometheus has it active.
    fn alert_state(&self, alert: &str) -> anyhow::Result<Option<String>> {
        let answer = http::get(&format!("http://{}/api/v1/alerts", self.address), &[])?;
        let alerts = answer.json()?;
        Ok(alerts["data"]["alerts"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|active| active["labels"]["alertname"] == alert)
            .map(|active| active["state"].as_str().unwrap_or("").to_owned()))
    }
}

#[test]
fn prometheus_fires_the_budget_alert_when_a_small_budget_fills() {
    if !require_tool("prometheus").unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(
        &dir.path().join("node"),
        &["--metrics", "127.0.0.1:0", "--cache-max", "4MiB"],
    )
    .unwrap();
    // The same expressions, with their `for:` shortened so the test need not wait 15 minutes.
    let rules = std::fs::read_to_string(rules_file()).unwrap();
    let quick: String = rules
        .lines()
        .map(|line| match line.trim_start().strip_prefix("for: ") {
            Some(_) => format!("{}for: 2s\n", &line[..line.len() - line.trim_start().len()]),
            None => format!("{line}\n"),
        })
        .collect();
    assert_ne!(quick, rules, "the rules have `for:` clauses to shorten");
    let prometheus_dir = dir.path().join("prometheus");
    std::fs::create_dir(&prometheus_dir).unwrap();
    let prometheus = Prometheus::start(
        &prometheus_dir,
        &quick,
        node.metrics().expect("started with --metrics"),
    );
    wait_until("Prometheus to scrape the node", EVENT_TIMEOUT, || {
        let up = http::get(
            &format!("http://{}/api/v1/query?query=up", prometheus.address),
            &[],
        );
        Ok(up.is_ok_and(|up| {
            up.json()
                .is_ok_and(|value| value["data"]["result"][0]["value"][1] == "1")
        }))
    })
    .unwrap();
    let rules_loaded = prometheus.get("/api/v1/rules");
    assert_eq!(rules_loaded["data"]["groups"].as_array().unwrap().len(), 2);
    // An empty store is far from its budget.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        prometheus.alert_state("ShoalStoreNearBudget").unwrap(),
        None
    );

    // 3.9 MiB of a 4 MiB budget: under it, so nothing is evicted, but above 95 %.
    let image = ImageSpec::with_layers(31, &[3_900 * 1024])
        .write_oci_layout(&dir.path().join("image"), None)
        .unwrap();
    node.import_ok(&image.path, Some("alerts/full:1")).unwrap();
    wait_until("the budget alert to fire", EVENT_TIMEOUT, || {
        Ok(prometheus.alert_state("ShoalStoreNearBudget")?.as_deref() == Some("firing"))
    })
    .unwrap();
    let status = node.status().unwrap();
    assert_eq!(status["cache"]["max_bytes"], 4 << 20);
    assert_eq!(shoal_tests::node::counter(&status, "evictions"), 0);
}
