//! Histograms for `/metrics`, recorded by whoever measures (the gateway's blob streams, the fetch
//! actor's transfers) and written by the exposition. Each is a `prometheus-client` histogram: an
//! observation takes one short uncontended lock, and observations happen once per response or
//! transfer, never per chunk.

use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds: from a page-cache hit (1 ms) to a
/// multi-gigabyte layer over a slow uplink (10 min).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
    600.0,
];

/// Upper bounds of the throughput buckets, in bytes per second: from a throttled WAN link
/// (100 kB/s) to loopback (10 GB/s).
pub const BYTES_PER_SECOND_BUCKETS: &[f64] =
    &[1e5, 3e5, 1e6, 3e6, 1e7, 3e7, 1e8, 3e8, 1e9, 3e9, 1e10];

/// Responses and transfers smaller than this are left out of the throughput histograms: their
/// time is latency, and their "throughput" would only say how small they are.
pub const THROUGHPUT_BYTES_MIN: u64 = 1 << 20;

/// A Prometheus histogram ([`prometheus_client`]'s, so it encodes like libp2p's own), with the
/// rules this node records by: durations in seconds, and throughput only of transfers large
/// enough to say something.
#[derive(Debug, Clone)]
pub struct Histogram {
    inner: prometheus_client::metrics::histogram::Histogram,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            inner: prometheus_client::metrics::histogram::Histogram::new(bounds.iter().copied()),
        }
    }

    pub fn seconds() -> Histogram {
        Histogram::new(SECONDS_BUCKETS)
    }

    pub fn bytes_per_second() -> Histogram {
        Histogram::new(BYTES_PER_SECOND_BUCKETS)
    }

    pub fn observe(&self, value: f64) {
        self.inner.observe(value);
    }

    pub fn observe_duration(&self, duration: Duration) {
        self.observe(duration.as_secs_f64());
    }

    /// Records `bytes` moved in `duration`, if there were enough bytes to say anything.
    pub fn observe_throughput(&self, bytes: u64, duration: Duration) {
        if bytes >= THROUGHPUT_BYTES_MIN {
            self.observe(bytes as f64 / duration.as_secs_f64().max(1e-6));
        }
    }

    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.inner.count()
    }

    #[cfg(test)]
    pub fn sum(&self) -> f64 {
        self.inner.sum()
    }

    /// The histogram as the exposition writes it.
    pub fn metric(&self) -> &prometheus_client::metrics::histogram::Histogram {
        &self.inner
    }
}

/// Where a gateway blob response's bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServedFrom {
    /// A blob file already in the store: a cache hit.
    Store,
    /// A transfer from peers or the upstream, streamed while it arrives: a cache miss.
    Network,
}

impl ServedFrom {
    pub const ALL: [ServedFrom; 2] = [ServedFrom::Store, ServedFrom::Network];
}

/// The latency and throughput of one kind of gateway blob response.
#[derive(Debug)]
pub struct ResponseTimings {
    /// From the request reaching the node to the first body byte leaving it.
    pub first_byte: Histogram,
    /// From the request to the last body byte.
    pub duration: Histogram,
    pub throughput: Histogram,
}

impl Default for ResponseTimings {
    fn default() -> ResponseTimings {
        ResponseTimings {
            first_byte: Histogram::seconds(),
            duration: Histogram::seconds(),
            throughput: Histogram::bytes_per_second(),
        }
    }
}

/// Every histogram the node keeps; one instance lives in [`super::Counters`].
#[derive(Debug)]
pub struct Timings {
    gateway_store: ResponseTimings,
    gateway_network: ResponseTimings,
    /// Transfers that stored a blob: from start to the blob verified and stored.
    pub transfer_duration: Histogram,
    /// Transfers that stored a blob: its size over the transfer's duration.
    pub transfer_throughput: Histogram,
}

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            gateway_store: ResponseTimings::default(),
            gateway_network: ResponseTimings::default(),
            transfer_duration: Histogram::seconds(),
            transfer_throughput: Histogram::bytes_per_second(),
        }
    }
}

impl Timings {
    pub fn gateway(&self, from: ServedFrom) -> &ResponseTimings {
        match from {
            ServedFrom::Store => &self.gateway_store,
            ServedFrom::Network => &self.gateway_network,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_are_counted_and_summed() {
        let histogram = Histogram::new(&[1.0, 2.0]);
        for value in [0.5, 1.0, 1.5, 7.0] {
            histogram.observe(value);
        }
        assert_eq!(histogram.count(), 4);
        assert!((histogram.sum() - 10.0).abs() < 1e-9);
    }

    #[test]
    fn small_transfers_stay_out_of_the_throughput_histogram() {
        let histogram = Histogram::bytes_per_second();
        histogram.observe_throughput(THROUGHPUT_BYTES_MIN - 1, Duration::from_secs(1));
        assert_eq!(histogram.count(), 0);
        histogram.observe_throughput(4 << 20, Duration::from_secs(2));
        assert_eq!(histogram.count(), 1);
        assert!((histogram.sum() - f64::from(2 << 20)).abs() < 1.0);
        histogram.observe_throughput(4 << 20, Duration::ZERO);
        assert_eq!(histogram.count(), 2, "no division by zero");
        assert!(histogram.sum().is_finite());
    }

    #[test]
    fn bounds_are_increasing() {
        for bounds in [SECONDS_BUCKETS, BYTES_PER_SECOND_BUCKETS] {
            assert!(bounds.windows(2).all(|pair| pair[0] < pair[1]));
        }
    }
}
