//! Running store work from async code. The store's methods block on disk I/O, so async callers
//! hand them to tokio's blocking pool; this is the one way they do it, so that a panicked or
//! cancelled task and a store error reach every caller as the same two cases.

use super::{Store, StoreError};

/// Why work handed to the blocking pool produced no value. Displays as its cause, so callers
/// that report it as text say what they said before.
#[derive(Debug, thiserror::Error)]
pub enum BlockingError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The task panicked, or the runtime is shutting down.
    #[error(transparent)]
    Join(#[from] tokio::task::JoinError),
}

impl Store {
    /// Runs `work` with a clone of this store on the blocking pool. Cancel-safe in that the work
    /// runs to its end whether or not the future is awaited.
    pub async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, BlockingError> {
        let store = self.clone();
        Ok(tokio::task::spawn_blocking(move || work(&store)).await??)
    }
}
