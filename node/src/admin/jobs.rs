//! The two admin requests that run long and report progress while they do: `shoal import`
//! (on the blocking pool) and `shoal pull`. Both stop when the client goes away.

use std::time::{Duration, Instant};

use tokio::net::UnixStream;

use super::context::AdminContext;
use super::protocol::{AdminEvent, write_event};
use crate::import;

/// Import progress is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// Progress events buffered for a slow admin client before the import waits for it.
const PROGRESS_QUEUE_LEN: usize = 16;

/// Runs an import on the blocking pool, forwarding its progress to the client. A client that
/// goes away, or a node shutting down, cancels it.
pub async fn run_import(
    stream: &mut UnixStream,
    context: &AdminContext,
    path: std::path::PathBuf,
    tag: Option<String>,
) -> anyhow::Result<AdminEvent> {
    let tag = match tag.as_deref().map(import::parse_tag_name).transpose() {
        Ok(tag) => tag,
        Err(error) => {
            return Ok(AdminEvent::Failed {
                message: error.to_string(),
            });
        }
    };
    let (events, mut received) = tokio::sync::mpsc::channel(PROGRESS_QUEUE_LEN);
    let store = context.store.clone();
    let shutdown = context.shutdown.clone();
    let span = tracing::info_span!("import", path = %path.display());
    let worker = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut last_report = Instant::now();
        let mut progress = |done: u64, total: u64| {
            if shutdown.is_cancelled() || events.is_closed() {
                return false;
            }
            if last_report.elapsed() >= PROGRESS_INTERVAL || done == total {
                last_report = Instant::now();
                return events
                    .blocking_send(AdminEvent::Progress { done, total })
                    .is_ok();
            }
            true
        };
        let started = Instant::now();
        let result = import::import(&store, &path, tag.as_ref(), &mut progress);
        match &result {
            Ok(report) => tracing::info!(
                images = ?report.images.iter().map(|i| &i.reference).collect::<Vec<_>>(),
                blobs_added = report.stored.blobs_added,
                bytes_added = report.stored.bytes_added,
                elapsed = ?started.elapsed(),
                "import finished"
            ),
            Err(error) => tracing::warn!(%error, "import refused"),
        }
        result
    });
    while let Some(event) = received.recv().await {
        if write_event(stream, &event).await.is_err() {
            break;
        }
    }
    drop(received);
    Ok(match worker.await? {
        Ok(report) => {
            announce_imported(context, &report).await;
            AdminEvent::Imported(report)
        }
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    })
}

/// Signs and gossips an announcement per imported tag, with the chunk-index roots of every
/// blob, and tells the DHT this node provides them.
async fn announce_imported(context: &AdminContext, report: &import::ImportReport) {
    let store = context.store.clone();
    let digests = report.digests.clone();
    let roots = tokio::task::spawn_blocking(move || {
        digests
            .iter()
            .filter_map(|digest| Some((*digest, store.chunk_index(digest).ok().flatten()?.root())))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for image in &report.images {
        let Ok(reference) = image.reference.parse::<shoal_protocol::ImageRef>() else {
            continue;
        };
        let Some(tag) = &reference.tag else { continue };
        let Some(size) = context.store.blob_size(&image.digest).ok().flatten() else {
            continue;
        };
        let announced = context.announcements.announce(
            &reference.repo,
            tag,
            image.digest,
            &image.media_type,
            size,
            roots.clone(),
        );
        if let Some(data) = announced {
            context.network.publish(data).await;
        }
    }
    for (digest, _) in &roots {
        context.network.provide(*digest).await;
    }
}

/// Fetches a whole image from the network, reporting bytes as blobs complete.
pub async fn run_pull(
    stream: &mut UnixStream,
    context: &AdminContext,
    reference: &str,
) -> AdminEvent {
    let reference: shoal_protocol::ImageRef = match reference.parse() {
        Ok(reference) => reference,
        Err(error) => {
            return AdminEvent::Failed {
                message: format!("invalid image reference {reference:?}: {error}"),
            };
        }
    };
    let (events, mut received) = tokio::sync::mpsc::channel(PROGRESS_QUEUE_LEN);
    let puller = context.puller.clone();
    let for_pull = reference.clone();
    let pull = async move {
        puller
            .pull(&for_pull, &mut |progress| {
                let _ = events.try_send(AdminEvent::Progress {
                    done: progress.bytes_done,
                    total: progress.bytes_total,
                });
            })
            .await
    };
    tokio::pin!(pull);
    let result = loop {
        tokio::select! {
            result = &mut pull => break result,
            Some(event) = received.recv() => {
                if write_event(stream, &event).await.is_err() {
                    return AdminEvent::Failed { message: "client went away".into() };
                }
            }
        }
    };
    match result {
        Ok(digest) => AdminEvent::Pulled {
            reference: reference.to_string(),
            digest,
        },
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    }
}
