//! The chunk requests a node has out over all its transfers. They come in over one downlink,
//! so each transfer's window counts the others' (`Scheduler::set_requests_elsewhere`): a node
//! pulls several blobs of an image at once, and in a fan-out at 4 MiB/s four transfers that each
//! kept their own window of 2 had 8 chunks out, two seconds of the node's downlink, while the
//! peers holding them refused the other fetchers.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The count of chunk requests in flight, shared by a node's transfers.
#[derive(Debug, Default)]
pub struct ChunkRequests(AtomicUsize);

impl ChunkRequests {
    /// Counts one request until the returned guard is dropped: when its answer is in, or when
    /// its task is aborted with its transfer.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.0.fetch_add(1, Ordering::Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.0.load(Ordering::Relaxed)
    }
}

/// One request counted in [`ChunkRequests`].
#[derive(Debug)]
pub struct InFlight(Arc<ChunkRequests>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_counts_until_its_answer_or_its_aborted_task() {
        let requests = Arc::new(ChunkRequests::default());
        let answered = requests.start();
        let (hold, held) = tokio::sync::oneshot::channel::<()>();
        let in_flight = requests.start();
        let task = tokio::spawn(async move {
            let _in_flight = in_flight;
            held.await.ok();
        });
        assert_eq!(requests.in_flight(), 2);
        drop(answered);
        assert_eq!(requests.in_flight(), 1);
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert_eq!(
            requests.in_flight(),
            0,
            "an aborted task's request is no longer out"
        );
        drop(hold);
    }
}
