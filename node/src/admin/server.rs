//! The node's side of the admin socket: accepts connections (a bounded number at once), reads
//! one request from each, runs it against the services and writes the events back.
//!
//! Services answer with their own results and errors; this is where they become
//! [`AdminEvent`]s, so no service imports the admin protocol.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::context::AdminContext;
use super::jobs::{run_import, run_pull};
use super::protocol::{AdminEvent, AdminRequest, read_request, write_event};
use super::status::status_report;

/// Admin connections served at once; more wait in the accept queue.
const ADMIN_CONNECTIONS_MAX: usize = 32;

/// Binds the admin socket, replacing a stale socket file. The caller holds the data-dir lock,
/// so no live node can own the old file.
pub fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error)
                .with_context(|| format!("cannot remove stale socket {}", path.display()));
        }
        _ => {}
    }
    UnixListener::bind(path).with_context(|| format!("cannot bind admin socket {}", path.display()))
}

/// Serves admin connections on `listener` until the context's shutdown, then waits for those
/// in progress.
pub async fn serve(
    listener: tokio::net::UnixListener,
    context: AdminContext,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = context.shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let (stream, _) = tokio::select! {
            _ = context.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted.context("admin socket accept failed")?,
        };
        let context = context.clone();
        connections.spawn(async move {
            if let Err(error) = serve_connection(stream, context).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_connection(stream: UnixStream, context: AdminContext) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let request = read_request(&mut reader).await;
    let mut stream = reader.into_inner();
    let event = match request {
        Err(error) => AdminEvent::Failed {
            message: format!("{error:#}"),
        },
        Ok(AdminRequest::Status) => match status_report(&context).await {
            Ok(report) => AdminEvent::Status(Box::new(report)),
            Err(error) => AdminEvent::Failed {
                message: format!("{error:#}"),
            },
        },
        Ok(AdminRequest::Import { path, tag }) => {
            run_import(&mut stream, &context, path, tag).await?
        }
        Ok(AdminRequest::Pull { reference }) => run_pull(&mut stream, &context, &reference).await,
        Ok(AdminRequest::Pin { reference }) => answer(
            context.evictor.pin(&context.puller, &reference).await,
            |pinned| AdminEvent::Pinned {
                reference: pinned.reference,
                digest: pinned.digest,
            },
        ),
        Ok(AdminRequest::Unpin { reference }) => {
            answer(context.evictor.unpin(&reference).await, |unpinned| {
                AdminEvent::Unpinned {
                    reference: unpinned.reference,
                    digest: unpinned.digest,
                }
            })
        }
        Ok(AdminRequest::Gc) => answer(context.evictor.gc().await, |collected| {
            AdminEvent::Collected {
                max_bytes: collected.max_bytes,
                report: collected.report,
            }
        }),
        Ok(AdminRequest::Verify) => answer(context.evictor.verify().await, AdminEvent::Verified),
    };
    write_event(&mut stream, &event).await
}

/// The final event for a service's result: `done` of what it did, or its error's text.
fn answer<T, E: std::fmt::Display>(
    result: Result<T, E>,
    done: impl FnOnce(T) -> AdminEvent,
) -> AdminEvent {
    match result {
        Ok(value) => done(value),
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    }
}
