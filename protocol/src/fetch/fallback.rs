//! Where a blob that no peer has comes from, when its transfer has an upstream registry: one
//! node downloads it for everyone. Each node asking picks the same one among itself and its
//! connected peers — the highest rank, a hash of the node's id with the blob, so every node
//! computes the same ranks — and asks it to fetch (`Delegate`); the others take the blob from
//! it like from any peer. If that node declines, another is chosen; if it disappears or shows
//! no progress for [`DELEGATE_STALL`], the asker downloads the blob itself.

use std::fmt::Debug;
use std::hash::Hash;
use std::time::Duration;

use foldhash::{HashSet, HashSetExt};

/// Longest wait for peers' answers before a blob nobody has is taken from the upstream;
/// usually every connected peer has answered long before.
pub const UPSTREAM_AFTER: Duration = Duration::from_secs(1);

/// A peer fetching from the upstream for this node that shows no progress for this long is
/// given up on, and this node downloads the blob itself.
pub const DELEGATE_STALL: Duration = Duration::from_secs(10);

/// A peer's rank as the fetcher of this blob from the upstream.
pub type Rank<P> = Box<dyn Fn(&P) -> [u8; 32] + Send + Sync>;

/// This node's way to the upstream: its own id, ranked with the peers', and the ranking.
pub struct Upstream<P> {
    pub local: P,
    pub rank: Rank<P>,
}

impl<P: Debug> Debug for Upstream<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

/// What the fallback decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<P> {
    /// Ask `peer` to fetch the blob from the upstream.
    Delegate(P),
    /// Download it here.
    Download,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State<P> {
    /// Still finding out whether peers have it.
    Undecided,
    /// Asked the chosen peer to fetch it; waiting for its answer.
    Asking,
    /// A peer fetches it; it last showed progress at `progress_at`.
    Delegated {
        peer: P,
        chunks: u32,
        progress_at: Duration,
    },
}

/// The fallback of one transfer. See the module documentation.
#[derive(Debug)]
pub struct Fallback<P> {
    upstream: Upstream<P>,
    state: State<P>,
    /// Peers that would not fetch from the upstream for this node.
    declined: HashSet<P>,
}

/// What the fallback needs to know of the transfer, each time it decides.
#[derive(Debug)]
pub struct Situation<'a, P> {
    pub now: Duration,
    pub started: Duration,
    /// Whether any peer has shown part of the blob.
    pub sources: bool,
    /// Whether every `Have` asked has been answered and no DHT lookup is running or due (with
    /// no peer connected the DHT cannot name one: no need to wait for it).
    pub settled: bool,
    pub connected: &'a HashSet<P>,
}

impl<P: Clone + Eq + Hash + Debug> Fallback<P> {
    pub fn new(upstream: Upstream<P>) -> Self {
        Fallback {
            upstream,
            state: State::Undecided,
            declined: HashSet::new(),
        }
    }

    /// Whether a peer fetching for this node is being waited for.
    pub fn waiting(&self) -> bool {
        !matches!(self.state, State::Undecided)
    }

    /// Decides whether the blob should come from the upstream now, and through whom.
    pub fn decide(&mut self, situation: &Situation<'_, P>) -> Option<Decision<P>> {
        match &self.state {
            State::Undecided => {
                let waited = situation.now.saturating_sub(situation.started) > UPSTREAM_AFTER;
                if situation.sources || !(situation.settled || waited) {
                    return None;
                }
                let local = &self.upstream.local;
                let chosen = situation
                    .connected
                    .iter()
                    .filter(|peer| !self.declined.contains(peer))
                    .chain([local])
                    .max_by_key(|peer| (self.upstream.rank)(peer))
                    .cloned()
                    .unwrap_or_else(|| local.clone());
                if chosen == *local {
                    return Some(Decision::Download);
                }
                self.state = State::Asking;
                Some(Decision::Delegate(chosen))
            }
            State::Asking => None,
            State::Delegated {
                peer, progress_at, ..
            } => {
                let gone = !situation.connected.contains(peer);
                let stalled = situation.now.saturating_sub(*progress_at) > DELEGATE_STALL;
                (gone || stalled).then_some(Decision::Download)
            }
        }
    }

    /// The chosen peer's answer: it fetches (`accepted`), or another is chosen.
    pub fn answered(&mut self, peer: P, accepted: bool, now: Duration) {
        if accepted {
            self.state = State::Delegated {
                peer,
                chunks: 0,
                progress_at: now,
            };
        } else {
            self.declined.insert(peer);
            self.state = State::Undecided;
        }
    }

    /// A peer showed `chunks` of the blob: progress, if it is the one fetching for this node.
    pub fn progress(&mut self, from: &P, chunks_now: u32, now: Duration) {
        if let State::Delegated {
            peer,
            chunks,
            progress_at,
        } = &mut self.state
            && peer == from
            && chunks_now > *chunks
        {
            *chunks = chunks_now;
            *progress_at = now;
        }
    }

    /// When a delegate that shows no progress is given up on, if one is being waited for.
    pub fn deadline(&self) -> Option<Duration> {
        match &self.state {
            State::Delegated { progress_at, .. } => Some(*progress_at + DELEGATE_STALL),
            _ => None,
        }
    }
}
