//! Have feeds: a peer pushes its bitfield of a blob to the peers fetching from it as it gains
//! chunks, on one long-lived stream per pair of peers, instead of being asked for it every
//! 250 ms by each of them.
//!
//! Data flow: a fetcher that learns a peer holds part of a blob sends [`FeedRequest::Watch`]
//! on its feed to that peer; the peer answers with a [`FeedUpdate`] at once and another each
//! time it gained a chunk that is news to the fetcher ([`news_for`]: one the fetcher is not
//! known to hold), at the node's pace ([`GainPace`]: at least [`FEED_INTERVAL`] and at most
//! [`FEED_INTERVAL_MAX`] apart, so that a slow node tells a few chunks at a time), until the
//! blob is whole there
//! (the last update says `complete`), its transfer fails, or the fetcher sends
//! [`FeedRequest::Unwatch`]. [`FeedUpdate::Lacks`] ends a watch: the peer does not have the
//! blob (or may not tell this fetcher), and the fetcher asks again later as it asks any peer.
//! Every update carries the whole bitfield, so a lost or superseded one costs nothing, and
//! the receiver keeps only the latest.
//!
//! The fetcher's scheduler does not poll a peer whose feed has delivered
//! ([`crate::Scheduler::set_pushes`]); the simulator pushes on the same rule.

use std::time::Duration;

use crate::bitmap::Bitmap;
use crate::digest::Digest;
use crate::wire::Response;

/// The least time between two updates of a watch (and two writes of a feed), the first at
/// once; a node gaining chunks slowly waits longer ([`GainPace`]). 100 ms: a peer
/// gaining chunks at 10 Gbit/s is known to have each within a tenth of a second, where polls
/// every 250 ms left it 125 ms stale on average plus a round trip; a peer gaining chunks
/// slowly pushes only what it gained, where polls cost a request and an answer each whether
/// anything changed or not.
pub const FEED_INTERVAL: Duration = Duration::from_millis(100);

/// How long a push waits after the change it tells, given a fresh random number: a uniform
/// part of [`FEED_INTERVAL`]. Every watcher of a peer would otherwise learn of its newest
/// chunk at the same instant and ask the peer for it at once; all but one are answered
/// `Busy` and go elsewhere, the seed included. The simulator measured the herd: without the
/// wait, 32 nodes at 4 MiB/s finished at 1.28x T_min and took 1.22 copies from the seed,
/// with it 1.12x (simulations/README.md). The first push of a watch goes at once.
pub fn push_delay(random: u64) -> Duration {
    let interval = FEED_INTERVAL.as_nanos();
    let nanos = (u128::from(random) * interval) >> 64;
    Duration::from_nanos(u64::try_from(nanos).unwrap_or_default())
}

/// How many of its node's gains a feed waits for between two pushes: a push tells about this
/// many new chunks where the node gains them slowly. A node gaining a chunk every quarter of
/// a second (4 MiB/s) pushed every gain to each of its dozen watchers, 11 pushes per MiB it
/// received, and each push costs both ends a wake (docs/benchmarks.md, "Pushes at the node's
/// pace"); the simulator put the cost in time at nothing to speak of (simulations/README.md).
pub const GAINS_PER_PUSH: usize = 4;

/// The longest a feed waits between two pushes, however slowly its node gains chunks, so that
/// a watcher hears of a chunk within about a second.
pub const FEED_INTERVAL_MAX: Duration = Duration::from_millis(1000);

/// The times of a node's latest gains, over all its transfers: how far apart its feeds push.
/// Two pushes of one feed (and of one watch) go at least [`GainPace::push_interval`] apart:
/// the time the node took for its latest [`GAINS_PER_PUSH`] gains, no less than
/// [`FEED_INTERVAL`] and no more than [`FEED_INTERVAL_MAX`]. A node gaining fast pushes every
/// [`FEED_INTERVAL`] as before; a slow one pushes a few chunks at a time.
#[derive(Debug, Clone, Default)]
pub struct GainPace {
    /// The latest gains' times, oldest first; `None` before the node's first gains.
    latest: [Option<Duration>; GAINS_PER_PUSH],
}

impl GainPace {
    /// The node verified a chunk at `at`, a time since any fixed origin that never goes back.
    pub fn gained(&mut self, at: Duration) {
        self.latest.rotate_left(1);
        self.latest[GAINS_PER_PUSH - 1] = Some(at);
    }

    /// The least time between two pushes of a feed at `now` (same origin as
    /// [`GainPace::gained`]): [`FEED_INTERVAL`] until the node has gained
    /// [`GAINS_PER_PUSH`] chunks.
    pub fn push_interval(&self, now: Duration) -> Duration {
        match self.latest[0] {
            Some(oldest) => now
                .saturating_sub(oldest)
                .clamp(FEED_INTERVAL, FEED_INTERVAL_MAX),
            None => FEED_INTERVAL,
        }
    }
}

/// Whether a watch has news to push: this node now holds `have`, its last push (or skip)
/// told `pushed`, and the watcher is known (from its own pushes or `Have` answers to this
/// node) to hold `watcher_has`. A chunk the watcher holds is no news to it: it never asks
/// for it, and rarity counts only the chunks a node still needs. So a gain is pushed only if
/// it holds a chunk the watcher may lack; in a fan-out, where every node watches a dozen
/// others, about half the gains are chunks most watchers already hold. The first push of a watch is
/// always news, and so is the last (the blob whole: the driver pushes it regardless).
pub fn news_for(pushed: Option<&Bitmap>, have: &Bitmap, watcher_has: Option<&Bitmap>) -> bool {
    let Some(pushed) = pushed else {
        return true;
    };
    if pushed.len() != have.len() {
        return true;
    }
    let watcher = watcher_has
        .filter(|bitmap| bitmap.len() == have.len())
        .map(Bitmap::words);
    have.words()
        .iter()
        .zip(pushed.words())
        .enumerate()
        .any(|(i, (now, before))| {
            let gained = now & !before;
            let unknown = watcher.map_or(u64::MAX, |words| !words[i]);
            gained & unknown != 0
        })
}

/// The largest [`FeedRequest`] frame: a digest and a variant.
pub const FEED_REQUEST_BYTES_MAX: usize = 256;

/// The largest [`FeedUpdate`] frame: a bitfield of the most chunks a blob may have (8 KiB)
/// and a few fields.
pub const FEED_UPDATE_BYTES_MAX: usize = 16 * 1024;

/// What a fetcher sends on its feed to a peer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FeedRequest {
    /// Push me your bitfield of `blob` as it changes.
    Watch { blob: Digest },
    /// Stop pushing `blob`.
    Unwatch { blob: Digest },
}

/// What a peer pushes on a feed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum FeedUpdate {
    /// The peer's progress on `blob`, as [`Response::Have`] tells it.
    Have {
        blob: Digest,
        blob_size: u64,
        chunk_bytes: u32,
        chunks: Bitmap,
        complete: bool,
    },
    /// The peer does not have `blob` (or may not say): the watch ends.
    Lacks { blob: Digest },
}

impl FeedUpdate {
    /// The update of `blob` that `response` (an answer to `Request::Have`) tells.
    pub fn from_response(blob: Digest, response: Response) -> FeedUpdate {
        match response {
            Response::Have {
                blob_size,
                chunk_bytes,
                chunks,
                complete,
            } => FeedUpdate::Have {
                blob,
                blob_size,
                chunk_bytes,
                chunks,
                complete,
            },
            _ => FeedUpdate::Lacks { blob },
        }
    }

    pub fn blob(&self) -> Digest {
        match self {
            FeedUpdate::Have { blob, .. } | FeedUpdate::Lacks { blob } => *blob,
        }
    }

    /// Whether the watch ends with this update: the blob is whole there, or not there.
    pub fn ends_watch(&self) -> bool {
        match self {
            FeedUpdate::Have { complete, .. } => *complete,
            FeedUpdate::Lacks { .. } => true,
        }
    }

    /// The same news as the answer to `Request::Have` would give it.
    pub fn into_response(self) -> Response {
        match self {
            FeedUpdate::Have {
                blob_size,
                chunk_bytes,
                chunks,
                complete,
                ..
            } => Response::Have {
                blob_size,
                chunk_bytes,
                chunks,
                complete,
            },
            FeedUpdate::Lacks { .. } => Response::NotFound,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{decode, encode};

    #[test]
    fn pushes_go_as_far_apart_as_the_latest_gains_took_within_bounds() {
        let ms = Duration::from_millis;
        let mut pace = GainPace::default();
        assert_eq!(pace.push_interval(ms(5_000)), FEED_INTERVAL, "no gains yet");
        for at in 0..GAINS_PER_PUSH as u64 - 1 {
            pace.gained(ms(250 * at));
        }
        assert_eq!(
            pace.push_interval(ms(5_000)),
            FEED_INTERVAL,
            "too few gains to tell a pace"
        );
        // A gain every 250 ms: the latest four took 750 ms by the last one, 800 ms by now.
        pace.gained(ms(750));
        assert_eq!(pace.push_interval(ms(800)), ms(800));
        // Fast gains: no closer than the floor.
        let mut fast = GainPace::default();
        for at in 0..10 {
            fast.gained(ms(at));
        }
        assert_eq!(fast.push_interval(ms(10)), FEED_INTERVAL);
        // Slow gains, or a node that stopped gaining: no further apart than the ceiling.
        assert_eq!(pace.push_interval(ms(60_000)), FEED_INTERVAL_MAX);
        // Only the latest gains count.
        for at in [10_000, 10_050, 10_100, 10_150] {
            pace.gained(ms(at));
        }
        assert_eq!(
            pace.push_interval(ms(10_160)),
            FEED_INTERVAL_MAX.min(ms(160))
        );
    }

    #[test]
    fn only_gains_the_watcher_may_lack_are_news() {
        let bits = |ones: &[u32]| Bitmap::with_ones(130, ones.iter().copied());
        let pushed = bits(&[0, 64]);
        let gained = bits(&[0, 64, 70, 129]);
        assert!(
            news_for(None, &pushed, Some(&Bitmap::full(130))),
            "a first push"
        );
        assert!(
            news_for(Some(&pushed), &gained, None),
            "nothing known of the watcher"
        );
        assert!(!news_for(Some(&pushed), &gained, Some(&bits(&[70, 129]))));
        assert!(
            news_for(Some(&pushed), &gained, Some(&bits(&[70]))),
            "chunk 129, in the last word, it may lack"
        );
        assert!(!news_for(Some(&gained), &gained, None), "nothing gained");
        assert!(
            news_for(Some(&pushed), &gained, Some(&Bitmap::full(64))),
            "a bitfield of another length tells nothing"
        );
    }

    #[test]
    fn push_delays_spread_over_the_interval() {
        assert_eq!(push_delay(0), Duration::ZERO);
        assert!(push_delay(u64::MAX) < FEED_INTERVAL);
        let mut rng = crate::rng::SplitMix64::new(7);
        let delays: Vec<Duration> = (0..1000).map(|_| push_delay(rng.next_u64())).collect();
        let early = delays.iter().filter(|d| **d < FEED_INTERVAL / 2).count();
        assert!(
            (400..600).contains(&early),
            "{early} of 1000 in the first half"
        );
    }

    #[test]
    fn updates_round_trip_within_their_limit_and_say_when_a_watch_ends() {
        let blob = Digest::of(b"blob");
        let largest = FeedUpdate::Have {
            blob,
            blob_size: u64::MAX,
            chunk_bytes: u32::MAX,
            chunks: Bitmap::full(crate::chunk::CHUNKS_PER_BLOB_MAX),
            complete: true,
        };
        let frame = encode(&largest).unwrap();
        assert!(frame.len() <= FEED_UPDATE_BYTES_MAX, "{}", frame.len());
        let decoded: FeedUpdate = decode(&frame, FEED_UPDATE_BYTES_MAX).unwrap();
        assert_eq!(decoded, largest);
        assert!(decoded.ends_watch());
        let partial = FeedUpdate::from_response(
            blob,
            Response::Have {
                blob_size: 10,
                chunk_bytes: 4,
                chunks: Bitmap::new(3),
                complete: false,
            },
        );
        assert!(!partial.ends_watch());
        assert_eq!(partial.blob(), blob);
        let lacks = FeedUpdate::from_response(blob, Response::NotFound);
        assert!(lacks.ends_watch());
        assert_eq!(lacks.into_response(), Response::NotFound);
        let watch = encode(&FeedRequest::Watch { blob }).unwrap();
        assert!(watch.len() <= FEED_REQUEST_BYTES_MAX);
        assert_eq!(
            decode::<FeedRequest>(&watch, FEED_REQUEST_BYTES_MAX).unwrap(),
            FeedRequest::Watch { blob }
        );
    }
}
