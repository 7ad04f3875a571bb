//! `shoal node --metrics HOST:PORT`: what an operator watches. One HTTP listener, separate from
//! the gateway, serves
//!
//! - `GET /metrics`: OpenMetrics text written by `prometheus-client` ([`exposition`]) — bytes
//!   by source and destination, cache hits and misses, latency and throughput histograms
//!   (recorded in [`crate::observe`]), peers, bans, announcements, transfers, evictions, disk use — and libp2p's
//!   own families (`libp2p_*`: connections, gossipsub, Kademlia, identify, ping) from the
//!   [`SharedRegistry`] the swarm task records into;
//! - `GET /status.json`: the [`StatusReport`] that `shoal status --json` prints;
//! - `GET /`: a status page (`status.html`, plain HTML and JavaScript embedded in the binary)
//!   that polls `/status.json` every second.
//!
//! Everything here is read-only and built from the same status report as the admin socket, so
//! the page, the metrics and the CLI never disagree. The report names peers, addresses and
//! images, so the listener is refused on anything but a loopback address unless the operator
//! says `--metrics-public`.
//!
//! Not for recording: whoever moves bytes records into [`crate::observe`], which knows nothing
//! of this server.

pub mod exposition;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::admin::StatusReport;
use crate::observe::{Counters, SharedRegistry};

/// The status page, embedded so the binary is all an operator installs.
const STATUS_PAGE: &str = include_str!("status.html");

/// Whatever can produce the node's status report (the daemon's admin context).
pub trait StatusSource: Clone + Send + Sync + 'static {
    /// The report `shoal status` shows. Cancel-safe.
    fn status(&self) -> impl Future<Output = anyhow::Result<StatusReport>> + Send;
}

/// Checks that serving the status on `address` exposes it only to this host, unless `public`.
pub fn check_exposure(address: SocketAddr, public: bool) -> anyhow::Result<()> {
    if public || address.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "--metrics {address} is not a loopback address: the metrics and status page name this \
         node's peers, addresses and images; use 127.0.0.1 (and a scraper or SSH tunnel on this \
         host), or add --metrics-public to serve them to the network"
    )
}

/// Binds the metrics listener after [`check_exposure`].
pub async fn bind(address: SocketAddr, public: bool) -> anyhow::Result<TcpListener> {
    check_exposure(address, public)?;
    TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen on metrics address {address}"))
}

/// Status reports built at once; more requests wait. Each one scans the store's blob records,
/// and a page polls once a second, so a few are plenty.
const REPORTS_CONCURRENT_MAX: usize = 4;

#[derive(Clone)]
struct Observer<S> {
    source: S,
    counters: Arc<Counters>,
    registry: SharedRegistry,
    reports: Arc<Semaphore>,
}

impl<S: StatusSource> Observer<S> {
    async fn report(&self) -> anyhow::Result<StatusReport> {
        let _permit = self.reports.acquire().await?;
        self.source.status().await
    }
}

pub fn router<S: StatusSource>(
    source: S,
    counters: Arc<Counters>,
    registry: SharedRegistry,
) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/status.json", get(status_json::<S>))
        .route("/metrics", get(metrics::<S>))
        .with_state(Observer {
            source,
            counters,
            registry,
            reports: Arc::new(Semaphore::new(REPORTS_CONCURRENT_MAX)),
        })
}

/// Serves [`router`] on `listener` until `shutdown`.
pub async fn serve<S: StatusSource>(
    listener: TcpListener,
    source: S,
    counters: Arc<Counters>,
    registry: SharedRegistry,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    axum::serve(listener, router(source, counters, registry))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
        .context("metrics listener failed")
}

async fn page() -> Html<&'static str> {
    Html(STATUS_PAGE)
}

fn unavailable(error: &anyhow::Error) -> Response {
    tracing::warn!(%error, "status report failed");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        format!("status unavailable: {error:#}\n"),
    )
        .into_response()
}

async fn status_json<S: StatusSource>(State(observer): State<Observer<S>>) -> Response {
    match observer.report().await {
        // The page polls this every second: never let a browser cache it.
        Ok(report) => ([(header::CACHE_CONTROL, "no-store")], axum::Json(report)).into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn metrics<S: StatusSource>(State(observer): State<Observer<S>>) -> Response {
    let report = match observer.report().await {
        Ok(report) => report,
        Err(error) => return unavailable(&error),
    };
    match exposition::render(report, observer.counters.clone(), &observer.registry) {
        Ok(page) => ([(header::CONTENT_TYPE, exposition::CONTENT_TYPE)], page).into_response(),
        Err(error) => unavailable(&anyhow::Error::new(error).context("cannot encode the metrics")),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report built from JSON, so fields added to the report later take their defaults.
    pub(crate) fn sample_report() -> StatusReport {
        serde_json::from_value(serde_json::json!({
            "peer_id": "12D3Koo\"odd\\",
            "data_dir": "/data",
            "gateway": "127.0.0.1:5050",
            "listen_addresses": [],
            "connected_peers": ["a", "b"],
            "store": {"blobs": 3, "bytes": 4096, "manifests": 1, "repositories": 1, "tags": 1},
            "images": [],
            "known_images": [],
            "transfers": [],
            "counters": {
                "bytes_served_by_gateway": 100,
                "bytes_served_from_store": 60,
                "gateway_blob_hits": 2,
            },
        }))
        .unwrap()
    }

    /// A status source that answers with [`sample_report`], or fails when `broken`.
    #[derive(Clone)]
    struct Fixed {
        broken: bool,
    }

    impl StatusSource for Fixed {
        async fn status(&self) -> anyhow::Result<StatusReport> {
            anyhow::ensure!(!self.broken, "the node is shutting down");
            Ok(sample_report())
        }
    }

    async fn served(source: Fixed) -> (String, CancellationToken) {
        let listener = bind("127.0.0.1:0".parse().unwrap(), false).await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let counters = Arc::new(Counters::default());
        let registry = SharedRegistry::default();
        tokio::spawn(serve(
            listener,
            source,
            counters,
            registry,
            shutdown.clone(),
        ));
        (base, shutdown)
    }

    #[tokio::test]
    async fn the_page_the_report_and_the_metrics_are_served() {
        let (base, shutdown) = served(Fixed { broken: false }).await;
        let client = reqwest::Client::new();
        let page = client.get(format!("{base}/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        let content_type = page.headers()[header::CONTENT_TYPE].to_str().unwrap();
        assert!(content_type.starts_with("text/html"), "{content_type}");
        let html = page.text().await.unwrap();
        assert!(html.contains("/status.json"), "the page polls the report");

        let json = client
            .get(format!("{base}/status.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(json.headers()[header::CACHE_CONTROL], "no-store");
        let json: serde_json::Value = serde_json::from_slice(&json.bytes().await.unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::to_value(sample_report()).unwrap(),
            "the same JSON as `shoal status --json`"
        );

        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(
            metrics.headers()[header::CONTENT_TYPE],
            exposition::CONTENT_TYPE
        );
        let text = metrics.text().await.unwrap();
        assert!(text.contains("shoal_peers_connected 2\n"), "{text}");

        let missing = client.get(format!("{base}/nope")).send().await.unwrap();
        assert_eq!(missing.status(), 404);
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_failing_report_is_a_503_not_an_empty_page() {
        let (base, shutdown) = served(Fixed { broken: true }).await;
        for path in ["/status.json", "/metrics"] {
            let response = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(response.status(), 503, "{path}");
            assert!(response.text().await.unwrap().contains("shutting down"));
        }
        shutdown.cancel();
    }

    #[test]
    fn only_loopback_is_served_unless_public() {
        let loopback: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let v6: SocketAddr = "[::1]:9090".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:9090".parse().unwrap();
        let lan: SocketAddr = "10.0.0.5:9090".parse().unwrap();
        assert!(check_exposure(loopback, false).is_ok());
        assert!(check_exposure(v6, false).is_ok());
        let error = check_exposure(any, false).unwrap_err().to_string();
        assert!(error.contains("--metrics-public"), "{error}");
        assert!(check_exposure(lan, false).is_err());
        assert!(check_exposure(lan, true).is_ok());
    }
}
