//! The disk budget: `--cache-max` and its low watermark, the task that keeps the store within
//! them, and the node's side of `shoal gc`, `shoal verify`, `shoal pin` and `shoal unpin`.
//!
//! When the store's blobs exceed `--cache-max`, the budget task evicts the least recently used
//! (see `store/evict.rs` for what is never evicted) until they fit under the low watermark, so
//! that the next few commits do not each trigger a pass. It looks after every commit that grows
//! the store, whenever a lease ends (what was in use may go now), and once a minute; evicted
//! blobs stop being provided in the DHT. The store does the work on the blocking pool; this
//! task only decides when, and tells the network and the counters.

use std::sync::Arc;
use std::time::Duration;

use shoal_protocol::{Digest, ImageRef, Tag};
use tokio_util::sync::CancellationToken;

use crate::images::pull::{PullError, Puller};
use crate::network::NetworkHandle;
use crate::observe::Counters;
use crate::store::{
    BlockingError, DiskUsage, EvictionReport, Pin, Store, StoreError, VerifyReport,
};
use crate::values::Budget;

/// How often last uses are written to the metadata and the budget checked without a wake-up.
const PERIODIC_CHECK: Duration = Duration::from_secs(60);
/// The least time between two eviction passes. A pass reads every stored manifest; when what
/// is left is all pinned or in use, the store stays over budget and every lease released would
/// otherwise start another pass.
const PASS_GAP: Duration = Duration::from_secs(1);

/// Why `shoal gc`, `verify`, `pin` or `unpin` did not do what was asked. The admin socket
/// passes the text to the client as it is.
#[derive(Debug, thiserror::Error)]
pub enum BudgetError {
    #[error("invalid image reference {text:?}: {source}")]
    InvalidReference {
        text: String,
        source: shoal_protocol::ReferenceError,
    },
    #[error("{reference} is not known: pull or import it first")]
    Unknown { reference: String },
    #[error("{reference} is not pinned")]
    NotPinned { reference: String },
    #[error("cannot pin {reference}: {source}")]
    PinPull {
        reference: String,
        source: PullError,
    },
    #[error(transparent)]
    Resolve(#[from] PullError),
    #[error(transparent)]
    Store(#[from] BlockingError),
}

/// What `shoal gc` did: `max_bytes` is `--cache-max`; without one, gc has nothing to aim at.
#[derive(Debug, Clone)]
pub struct Collected {
    pub max_bytes: Option<u64>,
    pub report: EvictionReport,
}

/// An image whose pin was recorded or removed: the normalised reference and its manifest.
#[derive(Debug, Clone)]
pub struct PinChange {
    pub reference: String,
    pub digest: Digest,
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
    /// The data directory's disk: blob writes stop when only the reserve is left.
    #[serde(default)]
    pub disk: Option<DiskUsage>,
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
                    if let Err(error) = self.store.blocking(|store| store.persist_usage()).await {
                        tracing::warn!(%error, "cannot record blob use");
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
    async fn evict_to(&self, target_bytes: u64) -> Result<EvictionReport, BlockingError> {
        let report = self
            .store
            .blocking(move |store| store.evict(target_bytes))
            .await?;
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
    pub async fn gc(&self) -> Result<Collected, BudgetError> {
        let Some(budget) = self.budget else {
            return Ok(Collected {
                max_bytes: None,
                report: EvictionReport {
                    stored_bytes: self.store.stored_bytes(),
                    ..EvictionReport::default()
                },
            });
        };
        let report = self.evict_to(budget.low_watermark_bytes()).await?;
        Ok(Collected {
            max_bytes: Some(budget.max_bytes),
            report,
        })
    }

    /// `shoal verify`: re-hashes every stored blob, removing what is corrupt.
    pub async fn verify(&self) -> Result<VerifyReport, BudgetError> {
        let report = self.store.blocking(|store| store.verify()).await?;
        let removed: Vec<Digest> = (report.corrupt.iter())
            .chain(&report.missing)
            .chain(&report.dependents_removed)
            .copied()
            .collect();
        self.unprovide(&removed).await;
        Ok(report)
    }

    /// `shoal pin REF`: records the pin, then makes sure the whole image is stored (pulling
    /// what is missing, every platform). A pull that fails leaves the pins as they were.
    pub async fn pin(&self, puller: &Puller, reference: &str) -> Result<PinChange, BudgetError> {
        let reference = pin_reference(reference)?;
        let key = reference.to_string();
        let Some(digest) = puller.resolve(&reference.repo, &reference.target()).await? else {
            return Err(BudgetError::Unknown { reference: key });
        };
        let previous = self
            .store
            .blocking(move |store| store.pin(&key, digest))
            .await?;
        let key = reference.to_string();
        let whole = ImageRef {
            repo: reference.repo.clone(),
            tag: None,
            digest: Some(digest),
        };
        if let Err(error) = puller.pull(&whole, &mut |_| {}).await {
            let restored = key.clone();
            let _ = self
                .store
                .blocking(move |store| match previous {
                    Some(previous) => store.pin(&restored, previous).map(|_| ()),
                    None => store.unpin(&restored).map(|_| ()),
                })
                .await;
            return Err(BudgetError::PinPull {
                reference: key,
                source: error,
            });
        }
        tracing::info!(reference = %key, %digest, "image pinned");
        Ok(PinChange {
            reference: key,
            digest,
        })
    }

    /// `shoal unpin REF`: the image may be evicted again.
    pub async fn unpin(&self, reference: &str) -> Result<PinChange, BudgetError> {
        let key = pin_reference(reference)?.to_string();
        let for_store = key.clone();
        match self
            .store
            .blocking(move |store| store.unpin(&for_store))
            .await?
        {
            Some(digest) => Ok(PinChange {
                reference: key,
                digest,
            }),
            None => Err(BudgetError::NotPinned { reference: key }),
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
            disk: self.store.space().usage().ok(),
        })
    }
}

/// A reference as pins are keyed: normalised, with `latest` when it names neither tag nor
/// digest, so `alpine`, `docker.io/library/alpine` and `alpine:latest` are one pin.
fn pin_reference(text: &str) -> Result<ImageRef, BudgetError> {
    let mut reference: ImageRef = text
        .parse()
        .map_err(|source| BudgetError::InvalidReference {
            text: text.to_owned(),
            source,
        })?;
    if reference.tag.is_none() && reference.digest.is_none() {
        reference.tag = Some(Tag::latest());
    }
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_keyed_by_the_normalised_reference() {
        let key = |text: &str| pin_reference(text).unwrap().to_string();
        assert_eq!(key("alpine"), "docker.io/library/alpine:latest");
        assert_eq!(key("docker.io/library/alpine:latest"), key("alpine"));
        assert_eq!(key("team/app:1"), "docker.io/team/app:1");
        assert!(pin_reference("UPPER/case").is_err());
    }
}
