//! The transfers a node runs, one per blob, each in a task of its own. A transfer is forgotten
//! when its task ends, whether it returned or panicked: a panicked one left behind would be
//! handed to every later request for its blob, which would find it stopped, until a restart.
//!
//! Readers find a transfer through a [`RunningView`] without a round trip to the task that
//! starts them: a peer's every chunk request looks its blob up, and in a fan-out most are
//! refused at once, so the lookup was most of what a refusal cost.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};

use shoal_protocol::Digest;
use tokio::task::{Id, JoinSet};

/// Running transfers by blob (`T` is what a request for the blob is handed), with their tasks.
#[derive(Debug)]
pub struct Running<T> {
    transfers: RunningView<T>,
    tasks: JoinSet<()>,
    blobs: HashMap<Id, Digest>,
}

/// The running transfers by blob, as readers elsewhere see them.
#[derive(Debug)]
pub struct RunningView<T> {
    transfers: Arc<Mutex<HashMap<Digest, T>>>,
}

impl<T> Clone for RunningView<T> {
    fn clone(&self) -> Self {
        RunningView {
            transfers: self.transfers.clone(),
        }
    }
}

impl<T: Clone> RunningView<T> {
    fn lock(&self) -> MutexGuard<'_, HashMap<Digest, T>> {
        self.transfers.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, blob: &Digest) -> Option<T> {
        self.lock().get(blob).cloned()
    }

    pub fn all(&self) -> Vec<T> {
        self.lock().values().cloned().collect()
    }
}

impl<T: Clone> Running<T> {
    pub fn new() -> Running<T> {
        Running {
            transfers: RunningView {
                transfers: Arc::default(),
            },
            tasks: JoinSet::new(),
            blobs: HashMap::new(),
        }
    }

    /// What readers elsewhere see of the running transfers.
    pub fn view(&self) -> RunningView<T> {
        self.transfers.clone()
    }

    pub fn get(&self, blob: &Digest) -> Option<T> {
        self.transfers.get(blob)
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// Runs `task` as the transfer of `blob`, known as `transfer` until the task ends.
    pub fn spawn(
        &mut self,
        blob: Digest,
        transfer: T,
        task: impl Future<Output = ()> + Send + 'static,
    ) {
        let id = self.tasks.spawn(task).id();
        self.blobs.insert(id, blob);
        self.transfers.lock().insert(blob, transfer);
    }

    /// Waits for a transfer's task to end and forgets the transfer; its blob, or `None` when
    /// no task runs. Cancel-safe.
    pub async fn join_next(&mut self) -> Option<Digest> {
        let joined = self.tasks.join_next_with_id().await?;
        let id = match &joined {
            Ok((id, ())) => *id,
            Err(error) => error.id(),
        };
        let blob = self.blobs.remove(&id)?;
        if let Err(error) = joined {
            tracing::error!(%blob, %error, "the transfer's task ended abnormally");
        }
        self.transfers.lock().remove(&blob);
        Some(blob)
    }

    /// Aborts every task and waits for them to end.
    pub async fn shutdown(&mut self) {
        self.tasks.shutdown().await;
        self.transfers.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest::of(&[byte])
    }

    #[tokio::test]
    async fn a_transfer_is_forgotten_when_its_task_returns_or_panics() {
        let mut running = Running::new();
        let view = running.view();
        let (finish, finished) = tokio::sync::oneshot::channel::<()>();
        running.spawn(digest(1), "returns", async move {
            let _ = finished.await;
        });
        running.spawn(digest(2), "panics", async {
            panic!("a bug in a transfer");
        });
        assert_eq!(running.get(&digest(1)), Some("returns"));
        assert_eq!(view.get(&digest(2)), Some("panics"));

        assert_eq!(running.join_next().await, Some(digest(2)));
        assert_eq!(view.get(&digest(2)), None, "a panicked transfer stays");
        assert_eq!(view.all(), vec!["returns"]);

        finish.send(()).unwrap();
        assert_eq!(running.join_next().await, Some(digest(1)));
        assert!(view.all().is_empty());
        assert!(running.is_empty());
        assert_eq!(running.join_next().await, None);
    }

    #[tokio::test]
    async fn shutdown_leaves_no_transfer_to_find() {
        let mut running = Running::new();
        let view = running.view();
        running.spawn(digest(1), "pending", std::future::pending());
        assert_eq!(view.get(&digest(1)), Some("pending"));
        running.shutdown().await;
        assert!(view.all().is_empty());
    }
}
