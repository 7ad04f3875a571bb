//! Fetching blobs from peers, and from the upstream registry when no peer has them
//! (`upstream.rs`, over the client in [`crate::upstream`]). The [`FetchActor`] owns the table of
//! active transfers and starts one [`transfer`] task per blob; a second request for the same blob joins the running one,
//! so a node never fetches a blob twice at once. Readers (gateway clients, peers asking for
//! chunks) watch a transfer's progress and read verified chunks from its file while it is
//! still arriving.

mod arriving;
mod downlink;
mod error;
mod peer_chunks;
mod running;
mod sequential;
mod sha256_behind;
mod stream;
mod transfer;
mod upstream;
mod verified;

use std::fs::File;
use std::sync::Arc;

use shoal_protocol::chunk::ChunkIndex;
use shoal_protocol::{Bitmap, ChunkLayout, Digest, RepoName};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::announce::Announcements;
use crate::exchange::pace::NodePace;
use crate::exchange::rate::RateLimiter;
use crate::locality::Locality;
use crate::network::NetworkHandle;
use crate::observe::Counters;
use crate::store::Store;
use crate::upstream::Upstreams;
pub use downlink::{ChunkRequests, UplinkRefusals};
use running::{Running, RunningView};

pub use arriving::ArrivingBytes;
pub use error::{TransferError, WrongContent};
pub use peer_chunks::PeerChunks;
pub use sequential::SequentialBlob;
pub use stream::stream_transfer;
pub use verified::{StreamMark, VerifiedChunks};

/// Commands queued for the fetch actor.
const COMMAND_QUEUE_LEN: usize = 256;
/// Focus hints queued per transfer; extra hints are dropped (the next read sends another).
const FOCUS_QUEUE_LEN: usize = 64;

/// What the node needs to run transfers.
#[derive(Debug, Clone)]
pub struct FetchContext {
    pub store: Store,
    pub network: NetworkHandle,
    pub counters: Arc<Counters>,
    pub announcements: Arc<Announcements>,
    pub ingress: Option<Arc<RateLimiter>>,
    /// `--max-site-ingress`: bytes from outside the site, peers and upstreams alike.
    pub site_ingress: Option<Arc<RateLimiter>>,
    pub locality: Arc<Locality>,
    pub upstreams: Upstreams,
    /// Chunk requests out over all transfers, which share the node's downlink.
    pub chunk_requests: Arc<ChunkRequests>,
    /// Peers that refused one of the transfers for a full uplink lately.
    pub uplink_refusals: Arc<UplinkRefusals>,
    /// How fast the node gains chunks, told of each chunk verified.
    pub pace: Arc<NodePace>,
}

/// Where a blob was asked for, which says which upstream may have it when no peer does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub repo: RepoName,
    /// The digest names a manifest, which the upstream serves from its manifests endpoint.
    pub manifest: bool,
}

/// A transfer as readers see it.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Known once a peer has sent a valid index, or a download from the upstream has ended.
    pub index: Option<Arc<ChunkIndex>>,
    /// Known as soon as the blob's size is: how its chunks lie in `file`.
    pub layout: Option<ChunkLayout>,
    /// The file being filled; it stays readable after the blob enters the store.
    pub file: Option<Arc<File>>,
    /// The newest bytes of a blob filled front to back, until it is all on disk.
    pub arriving: Option<Arc<ArrivingBytes>>,
    /// The chunks verified most recently, in memory for the readers right behind.
    pub verified: Arc<VerifiedChunks>,
    /// Chunks verified against the index: in `verified` or in `file`, or both.
    pub have: Bitmap,
    pub peers: usize,
    /// The peers' chunks as they told this transfer.
    pub peer_chunks: Arc<PeerChunks>,
    /// Set when the transfer ends: `Ok` once the blob is verified and stored. Shared, since
    /// every reader of the transfer gets the same error.
    pub outcome: Option<Result<(), Arc<TransferError>>>,
}

/// A handle on one running (or finished) transfer.
#[derive(Debug, Clone)]
pub struct Transfer {
    pub blob: Digest,
    /// Where the transfer that started it asked for the blob.
    pub origin: Option<Origin>,
    progress: watch::Receiver<Progress>,
    focus: mpsc::Sender<u32>,
}

impl Transfer {
    pub fn progress(&self) -> Progress {
        self.progress.borrow().clone()
    }

    /// Waits until the blob's size and layout are known or the transfer ends. Cancel-safe.
    pub async fn ready(&mut self) -> Result<ChunkLayout, Arc<TransferError>> {
        loop {
            {
                let progress = self.progress.borrow_and_update();
                if let Some(layout) = progress.layout {
                    return Ok(layout);
                }
                if let Some(Err(error)) = &progress.outcome {
                    return Err(error.clone());
                }
            }
            if self.progress.changed().await.is_err() {
                return Err(Arc::new(TransferError::Stopped));
            }
        }
    }

    /// Waits until the transfer ends. Cancel-safe.
    pub async fn finished(&mut self) -> Result<(), Arc<TransferError>> {
        loop {
            if let Some(outcome) = self.progress.borrow_and_update().outcome.clone() {
                return outcome;
            }
            if self.progress.changed().await.is_err() {
                return Err(Arc::new(TransferError::Stopped));
            }
        }
    }

    /// Waits for the next change of progress. Cancel-safe.
    pub async fn changed(&mut self) -> Result<(), TransferError> {
        self.progress
            .changed()
            .await
            .map_err(|_| TransferError::Stopped)
    }

    /// Tells the transfer a reader waits for `chunk`, so it is fetched first.
    pub fn focus(&self, chunk: u32) {
        let _ = self.focus.try_send(chunk);
    }
}

/// One line of `shoal status` about a transfer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct TransferStatus {
    pub blob: Digest,
    pub size: Option<u64>,
    pub chunks_have: u64,
    pub chunks_total: u64,
    pub peers: usize,
}

enum FetchCommand {
    Fetch {
        blob: Digest,
        origin: Option<Origin>,
        reply: oneshot::Sender<Transfer>,
    },
}

/// The cloneable way to start or join transfers.
#[derive(Debug, Clone)]
pub struct FetchHandle {
    commands: mpsc::Sender<FetchCommand>,
    running: RunningView<Transfer>,
}

impl std::fmt::Debug for FetchCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FetchCommand")
    }
}

impl FetchHandle {
    /// The transfer of `blob`, started if none runs. With an `origin` whose namespace has an
    /// upstream, the upstream is the fall-back when no peer has the blob. Cancel-safe.
    pub async fn fetch(&self, blob: Digest, origin: Option<Origin>) -> Option<Transfer> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(FetchCommand::Fetch {
                blob,
                origin,
                reply,
            })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Fetches `blob` and waits until it is stored. Cancel-safe (the transfer goes on).
    pub async fn fetch_and_wait(
        &self,
        blob: Digest,
        origin: Option<Origin>,
    ) -> Result<(), Arc<TransferError>> {
        let mut transfer = self
            .fetch(blob, origin)
            .await
            .ok_or_else(|| Arc::new(TransferError::ShuttingDown))?;
        transfer.finished().await
    }

    /// The transfer of `blob` in progress, if any: for readers that want a partial blob.
    pub fn running(&self, blob: &Digest) -> Option<Transfer> {
        self.running.get(blob)
    }

    pub fn status(&self) -> Vec<TransferStatus> {
        self.running
            .all()
            .into_iter()
            .map(|transfer| {
                let progress = transfer.progress();
                TransferStatus {
                    blob: transfer.blob,
                    size: progress.layout.map(|layout| layout.blob_size()),
                    chunks_have: progress.have.count_ones() as u64,
                    chunks_total: progress.have.len() as u64,
                    peers: progress.peers,
                }
            })
            .collect()
    }
}

/// Starts the fetch actor; it ends (aborting its transfers) when `shutdown` is cancelled.
pub fn start(
    context: FetchContext,
    shutdown: CancellationToken,
) -> (FetchHandle, tokio::task::JoinHandle<()>) {
    let (commands, receiver) = mpsc::channel(COMMAND_QUEUE_LEN);
    let actor = FetchActor {
        context,
        running: Running::new(),
    };
    let running = actor.running.view();
    let task = tokio::spawn(actor.run(receiver, shutdown));
    (FetchHandle { commands, running }, task)
}

struct FetchActor {
    context: FetchContext,
    running: Running<Transfer>,
}

impl FetchActor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<FetchCommand>,
        shutdown: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(command) = commands.recv() => self.on_command(command),
                Some(_) = self.running.join_next(), if !self.running.is_empty() => {}
            }
        }
        self.running.shutdown().await;
    }

    fn on_command(&mut self, command: FetchCommand) {
        match command {
            FetchCommand::Fetch {
                blob,
                origin,
                reply,
            } => {
                let transfer = match self.running.get(&blob) {
                    Some(transfer) => transfer,
                    None => self.start(blob, origin),
                };
                let _ = reply.send(transfer);
            }
        }
    }

    fn start(&mut self, blob: Digest, origin: Option<Origin>) -> Transfer {
        let (progress_sender, progress) = watch::channel(Progress::default());
        let (focus, focus_receiver) = mpsc::channel(FOCUS_QUEUE_LEN);
        let transfer = Transfer {
            blob,
            origin: origin.clone(),
            progress,
            focus,
        };
        let context = self.context.clone();
        let counters = context.counters.clone();
        let span = tracing::info_span!("fetch", %blob);
        // Not evicted while it is fetched, nor the moment it lands.
        let lease = context.store.lease(blob);
        let task = tracing::Instrument::instrument(
            async move {
                let _lease = lease;
                let started = std::time::Instant::now();
                let outcome =
                    transfer::run(context, blob, origin, &progress_sender, focus_receiver).await;
                let size = progress_sender.borrow().layout.map(|l| l.blob_size());
                crate::observe::record_transfer(
                    &counters,
                    outcome.is_ok(),
                    size,
                    started.elapsed(),
                );
                match &outcome {
                    Ok(()) => tracing::info!("blob fetched and verified"),
                    Err(error) => tracing::warn!(%error, "fetch failed"),
                }
                let outcome = outcome.map_err(Arc::new);
                progress_sender.send_modify(|progress| progress.outcome = Some(outcome));
            },
            span,
        );
        self.running.spawn(blob, transfer.clone(), task);
        transfer
    }
}
