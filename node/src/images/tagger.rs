//! Tags for images that registry clients pull through the gateway. A client asks for a manifest
//! by tag and then for each blob by digest, so no single request sees the image whole, and the
//! store would hold every piece of it without the tag that says the image is here (see
//! `store/whole.rs`). The gateway tells the [`TaggerActor`] which tag it resolved to which
//! manifest (a candidate) and which transfers it started for a client; each time one of those
//! transfers ends, the candidates are checked, and the tag of an image now whole is recorded.
//!
//! Candidates live in memory only: after a restart, the next request for the tag adds it again.

use std::collections::VecDeque;
use std::time::Duration;

use shoal_protocol::{Digest, RepoName, Tag};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::exchange::fetch::Transfer;
use crate::store::Store;

/// Messages queued for the tagger; when full, the gateway drops what it would send rather than
/// wait (a later request or transfer sends it again).
const QUEUE_LEN: usize = 256;
/// Tags waiting for their image to be whole; past this the oldest is forgotten. A handful of
/// images are pulled at once; each check reads every candidate's manifests from the store.
const CANDIDATES_MAX: usize = 64;
/// How long a tag waits for its image. A client that takes one platform of a multi-platform
/// index never makes the image whole, and its candidate should not be checked forever.
const CANDIDATE_TTL: Duration = Duration::from_secs(3600);
/// Transfers watched at once. The fetch actor bounds transfers too; one not watched only delays
/// the check to the end of the next one that is.
const WATCHED_MAX: usize = 256;

#[derive(Debug)]
enum TaggerMessage {
    Candidate {
        repo: RepoName,
        tag: Tag,
        digest: Digest,
    },
    Watch(Transfer),
}

/// What the gateway holds to tell the tagger what it resolved and fetched.
#[derive(Debug, Clone)]
pub struct TaggerHandle {
    messages: mpsc::Sender<TaggerMessage>,
}

impl TaggerHandle {
    /// A client resolved `tag` of `repo` to manifest `digest`: record the tag once the image is
    /// whole. Never waits.
    pub fn candidate(&self, repo: RepoName, tag: Tag, digest: Digest) {
        let message = TaggerMessage::Candidate { repo, tag, digest };
        if self.messages.try_send(message).is_err() {
            tracing::debug!("tagger queue full or stopped; candidate dropped");
        }
    }

    /// A transfer a client waits for: check the candidates when it ends. Never waits.
    pub fn watch(&self, transfer: Transfer) {
        if self
            .messages
            .try_send(TaggerMessage::Watch(transfer))
            .is_err()
        {
            tracing::debug!("tagger queue full or stopped; transfer not watched");
        }
    }
}

#[derive(Debug)]
struct Candidate {
    repo: RepoName,
    tag: Tag,
    digest: Digest,
    since: Instant,
}

/// Owns the candidates and the watched transfers.
#[derive(Debug)]
pub struct TaggerActor {
    store: Store,
    messages: mpsc::Receiver<TaggerMessage>,
    candidates: VecDeque<Candidate>,
    watched: JoinSet<()>,
}

/// The tagger's handle, and its actor to run until shutdown.
pub fn start(store: Store) -> (TaggerHandle, TaggerActor) {
    let (messages, receiver) = mpsc::channel(QUEUE_LEN);
    let actor = TaggerActor {
        store,
        messages: receiver,
        candidates: VecDeque::new(),
        watched: JoinSet::new(),
    };
    (TaggerHandle { messages }, actor)
}

impl TaggerActor {
    /// Runs until `shutdown`; the watched transfers' tasks are aborted with the actor. Not
    /// cancel-safe in the middle of a check (a tag being committed finishes on the blocking
    /// pool; the candidates are lost), which only matters at shutdown.
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                message = self.messages.recv() => match message {
                    Some(message) => self.on_message(message).await,
                    None => return,
                },
                Some(_) = self.watched.join_next(), if !self.watched.is_empty() => {
                    self.check().await;
                }
            }
        }
    }

    async fn on_message(&mut self, message: TaggerMessage) {
        match message {
            TaggerMessage::Candidate { repo, tag, digest } => {
                self.candidates
                    .retain(|candidate| (&candidate.repo, &candidate.tag) != (&repo, &tag));
                if self.candidates.len() >= CANDIDATES_MAX {
                    self.candidates.pop_front();
                }
                self.candidates.push_back(Candidate {
                    repo,
                    tag,
                    digest,
                    since: Instant::now(),
                });
                // The image may be whole already (its blobs fetched earlier by digest).
                self.check().await;
            }
            TaggerMessage::Watch(mut transfer) => {
                if self.watched.len() < WATCHED_MAX {
                    self.watched.spawn(async move {
                        // Success or failure alike: a check is cheap and says what is stored.
                        let _ = transfer.finished().await;
                    });
                }
            }
        }
    }

    /// Records the tags of the candidates whose images are whole, and forgets those.
    async fn check(&mut self) {
        self.candidates
            .retain(|candidate| candidate.since.elapsed() < CANDIDATE_TTL);
        if self.candidates.is_empty() {
            return;
        }
        let store = self.store.clone();
        let candidates = std::mem::take(&mut self.candidates);
        let checked = tokio::task::spawn_blocking(move || {
            candidates
                .into_iter()
                .filter(|candidate| {
                    let Candidate {
                        repo, tag, digest, ..
                    } = candidate;
                    match store.tag_if_whole(repo, tag, *digest) {
                        Ok(true) => {
                            tracing::info!(%repo, %tag, %digest, "pulled through the gateway; tag recorded");
                            false
                        }
                        Ok(false) => true,
                        Err(error) => {
                            tracing::warn!(%repo, %tag, %error, "cannot check whether an image is whole");
                            true
                        }
                    }
                })
                .collect::<VecDeque<_>>()
        })
        .await;
        match checked {
            Ok(waiting) => self.candidates = waiting,
            Err(error) => tracing::warn!(%error, "tag check failed; candidates forgotten"),
        }
    }
}
