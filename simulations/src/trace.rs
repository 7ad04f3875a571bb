//! One host's exchange as its fetch machine saw it: every input, with its time, and the
//! actions the machine returned. A trace replayed into a fresh machine must give the same
//! actions (`tests/fetch_replay.rs` replays one the way the node drives its machine).

use std::time::Duration;

use shoal_protocol::{Bitmap, FetchAction, FetchEvent, Scheduler, SchedulerConfig};

/// One input to a host's fetch machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The fetch began with a scheduler built from these; the fetch has the same seed.
    Begin {
        chunk_count: u32,
        config: SchedulerConfig,
        seed: u64,
        resumed: Bitmap,
        site: Option<u64>,
    },
    Event(FetchEvent<u32>),
    /// `Fetch::watch_ended`.
    WatchEnded(u32),
    /// `Fetch::add_site_mate`.
    SiteMate(u32),
    /// The driver placed a peer that joined: its site rank key if a site-mate, and its
    /// preference if not 0.
    Place {
        peer: u32,
        site_member: Option<u64>,
        preference: i32,
    },
}

impl Step {
    /// The scheduler a `Begin` step describes.
    pub fn scheduler(
        chunk_count: u32,
        config: &SchedulerConfig,
        seed: u64,
        resumed: &Bitmap,
        site: Option<u64>,
    ) -> Scheduler<u32> {
        let mut scheduler = Scheduler::new(chunk_count, config.clone(), seed);
        for chunk in resumed.iter_ones() {
            scheduler.mark_have(chunk);
        }
        if let Some(key) = site {
            scheduler.set_site(key);
        }
        scheduler
    }
}

/// A step, when it happened, and what the machine answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub at: Duration,
    pub step: Step,
    pub actions: Vec<FetchAction<u32>>,
}

/// Records the first life of one host's fetch.
#[derive(Debug)]
pub struct Recorder {
    pub host: u32,
    pub steps: Vec<Recorded>,
}

impl Recorder {
    pub fn push(&mut self, at: Duration, step: Step, actions: &[FetchAction<u32>]) {
        self.steps.push(Recorded {
            at,
            step,
            actions: actions.to_vec(),
        });
    }
}
