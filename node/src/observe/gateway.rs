//! The gateway's pulls per client zone and its authentication failures, as Prometheus
//! counters registered in the node's shared registry: `shoal_gateway_pulls_total{kind,zone}`
//! and `shoal_gateway_auth_failures_total{reason}`. The gateway reports them through
//! `ContentSource::pulled` and `auth_failed`.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use shoal_gateway::{AuthFailure, PullKind, Zone};

type Labels = Vec<(&'static str, &'static str)>;

#[derive(Debug, Default)]
pub struct GatewayMetrics {
    pulls: Family<Labels, Counter>,
    auth_failures: Family<Labels, Counter>,
}

impl GatewayMetrics {
    /// Adds the families to `registry` (names without `_total`, which the encoder adds), every
    /// label set at zero, so that a scrape sees each series from the start and `rate()` counts
    /// its first increase.
    pub fn register(&self, registry: &mut Registry) {
        for kind in PullKind::ALL {
            for zone in Zone::ALL {
                drop(
                    self.pulls
                        .get_or_create(&vec![("kind", kind.as_str()), ("zone", zone.as_str())]),
                );
            }
        }
        for failure in AuthFailure::ALL {
            drop(
                self.auth_failures
                    .get_or_create(&vec![("reason", failure.as_str())]),
            );
        }
        registry.register(
            "shoal_gateway_pulls",
            "Manifests and blobs served by the gateway (GET), by client zone: loopback, site (private, unique-local, link-local and CGNAT addresses) or other.",
            self.pulls.clone(),
        );
        registry.register(
            "shoal_gateway_auth_failures",
            "Gateway logins and requests refused by authentication, by reason.",
            self.auth_failures.clone(),
        );
    }

    pub fn pulled(&self, kind: &'static str, zone: &'static str) {
        self.pulls
            .get_or_create(&vec![("kind", kind), ("zone", zone)])
            .inc();
    }

    pub fn auth_failed(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&vec![("reason", reason)])
            .inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_appear_under_the_names_users_scrape() {
        let metrics = GatewayMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        metrics.pulled("blob", "site");
        metrics.pulled("blob", "site");
        metrics.auth_failed("credentials");
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("shoal_gateway_pulls_total{kind=\"blob\",zone=\"site\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("shoal_gateway_auth_failures_total{reason=\"credentials\"} 1"),
            "{text}"
        );
    }
}
