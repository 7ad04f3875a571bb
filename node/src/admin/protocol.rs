//! The admin protocol's messages and framing: the client writes one JSON [`AdminRequest`] line;
//! the node answers with JSON [`AdminEvent`] lines, ending with a final one (anything but
//! `Progress`). Closing the connection cancels the request in progress.
//!
//! The messages carry the services' own result types (import and eviction reports, store
//! summaries); those services never import this module, the server maps their results.

use std::path::PathBuf;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use shoal_protocol::Digest;

use crate::budget::CacheStatus;
use crate::exchange::fetch::TransferStatus;
use crate::import::ImportReport;
use crate::observe::CountersSnapshot;
use crate::store::{EvictionReport, ImageSummary, StoreSummary, VerifyReport};

/// Longest request line accepted from a client.
pub const REQUEST_BYTES_MAX: usize = 64 * 1024;

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminRequest {
    Import {
        path: PathBuf,
        tag: Option<String>,
    },
    Pull {
        reference: String,
    },
    Status,
    /// Keep an image whatever the budget (pulling what is missing).
    Pin {
        reference: String,
    },
    Unpin {
        reference: String,
    },
    /// Evict down to the low watermark now.
    Gc,
    /// Re-hash every stored blob, removing what is corrupt.
    Verify,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdminEvent {
    Progress {
        done: u64,
        total: u64,
    },
    Imported(ImportReport),
    Pulled {
        reference: String,
        digest: Digest,
    },
    Status(Box<StatusReport>),
    Pinned {
        reference: String,
        digest: Digest,
    },
    Unpinned {
        reference: String,
        digest: Digest,
    },
    /// `max_bytes` is `--cache-max`; without one, gc has nothing to aim at.
    Collected {
        max_bytes: Option<u64>,
        report: EvictionReport,
    },
    Verified(VerifyReport),
    Failed {
        message: String,
    },
}

impl AdminEvent {
    pub(super) fn is_final(&self) -> bool {
        !matches!(self, AdminEvent::Progress { .. })
    }
}

/// What `shoal status` shows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct StatusReport {
    pub peer_id: String,
    pub data_dir: PathBuf,
    pub gateway: String,
    /// `http` or `https` (TLS); absent from nodes older than the gateway's TLS.
    #[serde(default = "http")]
    pub gateway_scheme: String,
    pub listen_addresses: Vec<String>,
    pub connected_peers: Vec<String>,
    /// This node's site label, if any.
    #[serde(default)]
    pub site: Option<String>,
    /// What is known of each connected peer: site, round trip, throughput, bytes each way.
    #[serde(default)]
    pub peers: Vec<crate::locality::PeerStatus>,
    pub store: StoreSummary,
    /// Images tagged in the store.
    pub images: Vec<ImageSummary>,
    /// Images announced by trusted publishers (this node included).
    pub known_images: Vec<KnownImage>,
    pub transfers: Vec<TransferStatus>,
    pub counters: CountersSnapshot,
    /// The disk budget, pinned images, blobs in use.
    #[serde(default)]
    pub cache: CacheStatus,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct KnownImage {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
}

/// Reads one request line from a connection, refusing anything longer than the limit.
pub async fn read_request(stream: &mut BufReader<UnixStream>) -> anyhow::Result<AdminRequest> {
    let mut line = Vec::new();
    let mut limited = (&mut *stream).take(REQUEST_BYTES_MAX as u64 + 1);
    limited.read_until(b'\n', &mut line).await?;
    anyhow::ensure!(
        line.len() <= REQUEST_BYTES_MAX,
        "request longer than {REQUEST_BYTES_MAX} bytes"
    );
    serde_json::from_slice(&line).context("malformed admin request")
}

pub async fn write_event(
    stream: &mut (impl AsyncWriteExt + Unpin),
    event: &AdminEvent,
) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(event)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    Ok(())
}

fn http() -> String {
    "http".to_owned()
}
