//! The disk budget: `--cache-max` and its low watermark, the task that keeps the store within
//! them, and the node's side of `shoal gc`, `shoal verify`, `shoal pin` and `shoal unpin`.
//!
//! When the store's blobs exceed `--cache-max`, the budget task evicts the least recently used
//! (see `store/evict.rs` for what is never evicted) until they fit under the low watermark, so
//! that the next few commits do not each trigger a pass. It looks after every commit that grows
//! the store, whenever a lease ends (what was in use may go now), and once a minute; evicted
//! blobs stop being provided in the DHT. The store does the work on the blocking pool; this
//! task only decides when, and tells the network and the counters.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{Digest, ImageRef, Tag};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminEvent;
use crate::counters::Counters;
use crate::network::NetworkHandle;
use crate::pull::Puller;
use crate::rate::{byte_unit, split_quantity};
use crate::store::{EvictionReport, Pin, Store, StoreError};

/// The low watermark when none is configured: evicting 10% below the budget leaves room for a
/// few layers before the next pass.
pub const DEFAULT_LOW_WATERMARK_PERCENT: u8 = 90;
/// How often last uses are written to the metadata and the budget checked without a wake-up.
const PERIODIC_CHECK: Duration = Duration::from_secs(60);
/// The least time between two eviction passes. A pass reads every stored manifest; when what
/// is left is all pinned or in use, the store stays over budget and every lease released would
/// otherwise start another pass.
const PASS_GAP: Duration = Duration::from_secs(1);

/// A size such as `10GiB`, `500MB` or a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct ByteSize(pub u64);

impl FromStr for ByteSize {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<ByteSize> {
        let invalid = || {
            anyhow::anyhow!(
                "invalid size {text:?}: use a number with a unit such as 10GiB, 500MB or 1TiB"
            )
        };
        let (number, unit) = split_quantity(text).ok_or_else(invalid)?;
        let bytes = number * byte_unit(unit).ok_or_else(invalid)?;
        if !bytes.is_finite() || bytes < 1.0 {
            return Err(invalid());
        }
        Ok(ByteSize(bytes as u64))
    }
}

impl TryFrom<String> for ByteSize {
    type Error = anyhow::Error;

    fn try_from(text: String) -> anyhow::Result<ByteSize> {
        text.parse()
    }
}

/// How much the store may hold, and how far eviction goes once it holds more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub max_bytes: u64,
    /// Percent of `max_bytes` that eviction brings the store down to.
    pub low_watermark_percent: u8,
}

impl Budget {
    pub fn new(max_bytes: u64, low_watermark_percent: u8) -> anyhow::Result<Budget> {
        anyhow::ensure!(
            (1..=100).contains(&low_watermark_percent),
            "the low watermark is a percentage of --cache-max, from 1 to 100, not {low_watermark_percent}"
        );
        Ok(Budget {
            max_bytes,
            low_watermark_percent,
        })
    }

    /// The budget `--cache-max` and `--cache-low-watermark` (or the config file) ask for.
    pub fn configured(
        max: Option<ByteSize>,
        low_watermark_percent: Option<u8>,
    ) -> anyhow::Result<Option<Budget>> {
        match (max, low_watermark_percent) {
            (Some(max), percent) => {
                Budget::new(max.0, percent.unwrap_or(DEFAULT_LOW_WATERMARK_PERCENT)).map(Some)
            }
            (None, Some(_)) => anyhow::bail!("--cache-low-watermark needs --cache-max"),
            (None, None) => Ok(None),
        }
    }

    /// The bytes eviction aims at.
    pub fn low_watermark_bytes(&self) -> u64 {
        (u128::from(self.max_bytes) * u128::from(self.low_watermark_percent) / 100) as u64
    }

    /// Whether a store of `stored_bytes` must shed some.
    pub fn is_exceeded(&self, stored_bytes: u64) -> bool {
        stored_bytes > self.max_bytes
    }
}

/// What `shoal status` shows about the budget.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct CacheStatus {
    /// `--cache-max`, if set.
    pub max_bytes: Option<u64>,
    pub low_watermark_bytes: Option<u64>,
    /// Bytes of every stored blob.
    pub stored_bytes: u64,
    /// Blobs in use now (read, fetched or gathered by a pull): not evictable.
    pub blobs_in_use: usize,
    pub pinned: Vec<Pin>,
}

/// Enforces the budget; cheap to clone.
#[derive(Debug, Clone)]
pub struct Evictor {
    pub store: Store,
    pub network: NetworkHandle,
    pub counters: Arc<Counters>,
    pub budget: Option<Budget>,
}

impl Evictor {
    /// Keeps the store within the budget until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut periodic = tokio::time::interval(PERIODIC_CHECK);
        periodic.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = self.store.changed() => {}
                _ = periodic.tick() => {
                    let store = self.store.clone();
                    match tokio::task::spawn_blocking(move || store.persist_usage()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(error)) => tracing::warn!(%error, "cannot record blob use"),
                        Err(error) => tracing::warn!(%error, "cannot record blob use"),
                    }
                }
            }
            let Some(budget) = self.budget else { continue };
            if !budget.is_exceeded(self.store.stored_bytes()) {
                continue;
            }
            if let Err(error) = self.evict_to(budget.low_watermark_bytes()).await {
                tracing::warn!(%error, "eviction failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(PASS_GAP) => {}
            }
        }
    }

    /// One eviction pass down to `target_bytes`; evicted blobs stop being provided. Cancel-safe
    /// (the pass goes on).
    async fn evict_to(&self, target_bytes: u64) -> Result<EvictionReport, String> {
        let store = self.store.clone();
        let report = tokio::task::spawn_blocking(move || store.evict(target_bytes))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())?;
        if !report.evicted.is_empty() {
            Counters::add(&self.counters.evictions, report.evicted.len() as u64);
            tracing::info!(
                blobs = report.evicted.len(),
                bytes_freed = report.bytes_freed,
                stored_bytes = report.stored_bytes,
                target_bytes,
                "evicted least recently used blobs"
            );
        }
        if report.stored_bytes > target_bytes {
            tracing::info!(
                stored_bytes = report.stored_bytes,
                target_bytes,
                "what is left is pinned or in use; the store stays above its low watermark"
            );
        }
        self.unprovide(&report.evicted).await;
        Ok(report)
    }

    async fn unprovide(&self, digests: &[Digest]) {
        for digest in digests {
            self.network.unprovide(*digest).await;
        }
    }

    /// `shoal gc`: evicts down to the low watermark now.
    pub async fn gc(&self) -> AdminEvent {
        let Some(budget) = self.budget else {
            return AdminEvent::Collected {
                max_bytes: None,
                report: EvictionReport {
                    stored_bytes: self.store.stored_bytes(),
                    ..EvictionReport::default()
                },
            };
        };
        match self.evict_to(budget.low_watermark_bytes()).await {
            Ok(report) => AdminEvent::Collected {
                max_bytes: Some(budget.max_bytes),
                report,
            },
            Err(message) => AdminEvent::Failed { message },
        }
    }

    /// `shoal verify`: re-hashes every stored blob, removing what is corrupt.
    pub async fn verify(&self) -> AdminEvent {
        let store = self.store.clone();
        let verified = tokio::task::spawn_blocking(move || store.verify()).await;
        match verified {
            Ok(Ok(report)) => {
                let removed: Vec<Digest> = (report.corrupt.iter())
                    .chain(&report.missing)
                    .chain(&report.dependents_removed)
                    .copied()
                    .collect();
                self.unprovide(&removed).await;
                AdminEvent::Verified(report)
            }
            Ok(Err(error)) => failed(error),
            Err(error) => failed(error),
        }
    }

    /// `shoal pin REF`: records the pin, then makes sure the whole image is stored (pulling
    /// what is missing, every platform). A pull that fails leaves the pins as they were.
    pub async fn pin(&self, puller: &Puller, reference: &str) -> AdminEvent {
        let reference = match pin_reference(reference) {
            Ok(reference) => reference,
            Err(message) => return AdminEvent::Failed { message },
        };
        let key = reference.to_string();
        let digest = match puller.resolve(&reference.repo, &reference.target()).await {
            Ok(Some(digest)) => digest,
            Ok(None) => {
                return AdminEvent::Failed {
                    message: format!("{key} is not known: pull or import it first"),
                };
            }
            Err(error) => return failed(error),
        };
        let previous = match self.blocking(move |store| store.pin(&key, digest)).await {
            Ok(previous) => previous,
            Err(error) => return failed(error),
        };
        let key = reference.to_string();
        let whole = ImageRef {
            repo: reference.repo.clone(),
            tag: None,
            digest: Some(digest),
        };
        if let Err(error) = puller.pull(&whole, &mut |_| {}).await {
            let restored = key.clone();
            let _ = self
                .blocking(move |store| match previous {
                    Some(previous) => store.pin(&restored, previous).map(|_| ()),
                    None => store.unpin(&restored).map(|_| ()),
                })
                .await;
            return AdminEvent::Failed {
                message: format!("cannot pin {key}: {error}"),
            };
        }
        tracing::info!(reference = %key, %digest, "image pinned");
        AdminEvent::Pinned {
            reference: key,
            digest,
        }
    }

    /// `shoal unpin REF`: the image may be evicted again.
    pub async fn unpin(&self, reference: &str) -> AdminEvent {
        let key = match pin_reference(reference) {
            Ok(reference) => reference.to_string(),
            Err(message) => return AdminEvent::Failed { message },
        };
        let for_store = key.clone();
        match self.blocking(move |store| store.unpin(&for_store)).await {
            Ok(Some(digest)) => AdminEvent::Unpinned {
                reference: key,
                digest,
            },
            Ok(None) => AdminEvent::Failed {
                message: format!("{key} is not pinned"),
            },
            Err(error) => failed(error),
        }
    }

    /// The budget's part of `shoal status`. Blocks on the metadata (the pins).
    pub fn status(&self) -> Result<CacheStatus, StoreError> {
        Ok(CacheStatus {
            max_bytes: self.budget.map(|budget| budget.max_bytes),
            low_watermark_bytes: self.budget.map(|budget| budget.low_watermark_bytes()),
            stored_bytes: self.store.stored_bytes(),
            blobs_in_use: self.store.leased_blobs(),
            pinned: self.store.pins()?,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, String> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || work(&store))
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| error.to_string())
    }
}

fn failed(error: impl std::fmt::Display) -> AdminEvent {
    AdminEvent::Failed {
        message: error.to_string(),
    }
}

/// A reference as pins are keyed: normalised, with `latest` when it names neither tag nor
/// digest, so `alpine`, `docker.io/library/alpine` and `alpine:latest` are one pin.
fn pin_reference(text: &str) -> Result<ImageRef, String> {
    let mut reference: ImageRef = text
        .parse()
        .map_err(|error| format!("invalid image reference {text:?}: {error}"))?;
    if reference.tag.is_none() && reference.digest.is_none() {
        reference.tag = Some(Tag::latest());
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_low_watermark_is_a_percentage_of_the_budget() {
        let budget = Budget::new(10 << 30, 90).unwrap();
        assert_eq!(budget.low_watermark_bytes(), (10u64 << 30) / 10 * 9);
        assert!(!budget.is_exceeded(10 << 30));
        assert!(budget.is_exceeded((10 << 30) + 1));
        // No overflow at the top of the range, and 100% means "just under the budget".
        let huge = Budget::new(u64::MAX, 100).unwrap();
        assert_eq!(huge.low_watermark_bytes(), u64::MAX);
        assert_eq!(Budget::new(1000, 1).unwrap().low_watermark_bytes(), 10);
        assert_eq!(Budget::new(999, 50).unwrap().low_watermark_bytes(), 499);
        assert!(Budget::new(1000, 0).is_err());
        assert!(Budget::new(1000, 101).is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!("10GiB".parse::<ByteSize>().unwrap(), ByteSize(10 << 30));
        assert_eq!("500MB".parse::<ByteSize>().unwrap(), ByteSize(500_000_000));
        assert_eq!("1.5 TiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 39));
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        for bad in ["", "big", "10GiB/s", "10Mbit", "-1GiB", "0"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
    }

    #[test]
    fn pins_are_keyed_by_the_normalised_reference() {
        let key = |text: &str| pin_reference(text).unwrap().to_string();
        assert_eq!(key("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(key("docker.io/library/alpine:latest"), key("alpine"));
        assert_eq!(key("team/app:1"), "docker.io/team/app:1");
        assert!(pin_reference("UPPER/case").is_err());
    }
}
