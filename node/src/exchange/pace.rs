//! How fast this node gains chunks, over all its transfers: the pace its have feeds push at
//! (`shoal_protocol::feed::GainPace`). A transfer tells it of each chunk it verifies; a feed
//! asks it how long to wait between two pushes.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use shoal_protocol::feed::GainPace;

/// The node's [`GainPace`], shared by its transfers and its feeds.
#[derive(Debug)]
pub struct NodePace {
    origin: Instant,
    pace: Mutex<GainPace>,
}

impl Default for NodePace {
    fn default() -> NodePace {
        NodePace {
            origin: Instant::now(),
            pace: Mutex::default(),
        }
    }
}

impl NodePace {
    /// A transfer of this node verified a chunk.
    pub fn gained(&self) {
        let at = self.origin.elapsed();
        self.lock().gained(at);
    }

    /// The least time between two pushes of one of this node's feeds, now.
    pub fn push_interval(&self) -> Duration {
        let now = self.origin.elapsed();
        self.lock().push_interval(now)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GainPace> {
        self.pace
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
