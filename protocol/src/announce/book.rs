//! The announcement book: the newest announcement of every (repository, tag, publisher), held
//! in memory, bounded, with the rule that resolves a tag from it.
//!
//! Pure state: the node feeds it verified announcements from gossip, from its own imports and
//! from syncing with peers, asks it to resolve tags for the gateway, and serves pages of it to
//! late joiners. Persisting it (if wanted) is the node's business: `all` gives every entry's
//! signed form, which re-verifies on load.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use libp2p_identity::PeerId;

use super::{Announcement, SignedAnnouncement, VerifiedAnnouncement};
use crate::reference::Tag;

/// How many announcements a book holds before it evicts the oldest: with payloads of a few
/// hundred bytes typical, about 100 MB in the worst case of 1 KiB each, and far more tags than
/// any fleet publishes.
pub const ANNOUNCEMENTS_MAX: usize = 100_000;

/// The most signed-announcement bytes in one page of [`AnnouncementBook::page`], so a page fits
/// a response frame whatever the book holds. A page always has at least one entry.
pub const ANNOUNCEMENT_PAGE_BYTES_MAX: usize = 1 << 20;

/// Bytes a signed announcement adds to a page beyond its three byte strings: their length
/// prefixes (at most 9 bytes each as varints).
const PAGE_ENTRY_OVERHEAD_BYTES: usize = 27;

/// What [`AnnouncementBook::insert`] did with an announcement. Only `Accepted` ones are news:
/// a node re-gossips those and nothing else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// New, or newer (higher sequence) than what the book held for that publisher and tag.
    Accepted,
    /// The same signed payload the book already holds.
    Duplicate,
    /// An older sequence than the book holds, or the same sequence with different content.
    Stale,
    /// The publisher is not trusted: not stored at all.
    Untrusted,
    /// The book is full and this announcement is older than everything in it.
    Evicted,
}

/// Counts of what the book refused or dropped, for status output.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BookCounters {
    pub accepted: u64,
    pub duplicate: u64,
    pub stale: u64,
    pub untrusted: u64,
    /// Announcements dropped for space: evicted entries and refused old ones.
    pub evicted: u64,
}

/// A position in the book's order (repository, tag, publisher), to page through it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AnnouncementCursor {
    pub repository: String,
    pub tag: String,
    /// The publisher's peer id bytes ([`PeerId::to_bytes`]).
    #[serde(with = "serde_bytes")]
    pub publisher: Vec<u8>,
}

/// One page of the book: signed announcements in book order, and the cursor to continue from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnouncementPage {
    pub announcements: Vec<SignedAnnouncement>,
    pub next: Option<AnnouncementCursor>,
}

type TagKey = (String, String);
/// (time_unix_ms, sequence, repository, tag, publisher): eviction order, oldest first.
type AgeKey = (u64, u64, String, String, PeerId);

/// The newest announcement per (repository, tag, publisher). See the module documentation.
#[derive(Debug, Clone)]
pub struct AnnouncementBook {
    entries: BTreeMap<TagKey, BTreeMap<PeerId, VerifiedAnnouncement>>,
    by_age: BTreeSet<AgeKey>,
    capacity: usize,
    counters: BookCounters,
}

impl Default for AnnouncementBook {
    fn default() -> Self {
        Self::new()
    }
}

fn age_key(verified: &VerifiedAnnouncement) -> AgeKey {
    let a = &verified.announcement;
    (
        a.time_unix_ms,
        a.sequence,
        a.repository.clone(),
        a.tag.as_str().to_owned(),
        verified.publisher,
    )
}

impl AnnouncementBook {
    /// A book holding at most [`ANNOUNCEMENTS_MAX`] announcements.
    pub fn new() -> Self {
        Self::with_capacity(ANNOUNCEMENTS_MAX)
    }

    /// A book holding at most `capacity` announcements (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        AnnouncementBook {
            entries: BTreeMap::new(),
            by_age: BTreeSet::new(),
            capacity: capacity.max(1),
            counters: BookCounters::default(),
        }
    }

    pub fn len(&self) -> usize {
        self.by_age.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_age.is_empty()
    }

    pub fn counters(&self) -> BookCounters {
        self.counters
    }

    /// Records `verified` if `trusted` says its publisher is trusted and it is newer than what
    /// the book holds for the same publisher, repository and tag.
    ///
    /// Untrusted announcements are not stored, so no amount of them can evict trusted ones; the
    /// cost is that a node does not relay announcements of publishers it does not trust itself.
    pub fn insert(&mut self, verified: VerifiedAnnouncement, trusted: bool) -> InsertOutcome {
        let outcome = self.insert_inner(verified, trusted);
        let counter = match outcome {
            InsertOutcome::Accepted => &mut self.counters.accepted,
            InsertOutcome::Duplicate => &mut self.counters.duplicate,
            InsertOutcome::Stale => &mut self.counters.stale,
            InsertOutcome::Untrusted => &mut self.counters.untrusted,
            InsertOutcome::Evicted => &mut self.counters.evicted,
        };
        *counter += 1;
        outcome
    }

    fn insert_inner(&mut self, verified: VerifiedAnnouncement, trusted: bool) -> InsertOutcome {
        if !trusted {
            return InsertOutcome::Untrusted;
        }
        let a = &verified.announcement;
        let tag_key = (a.repository.clone(), a.tag.as_str().to_owned());
        let existing = self
            .entries
            .get(&tag_key)
            .and_then(|publishers| publishers.get(&verified.publisher));
        if let Some(existing) = existing {
            let held = existing.announcement.sequence;
            if a.sequence == held && existing.signed.payload == verified.signed.payload {
                return InsertOutcome::Duplicate;
            }
            if a.sequence <= held {
                return InsertOutcome::Stale;
            }
            let old_age = age_key(existing);
            self.by_age.remove(&old_age);
        } else if self.by_age.len() >= self.capacity {
            let new_age = age_key(&verified);
            let Some(oldest) = self.by_age.first().cloned() else {
                return InsertOutcome::Evicted;
            };
            if new_age < oldest {
                return InsertOutcome::Evicted;
            }
            self.remove(&oldest);
            self.counters.evicted += 1;
        }
        self.by_age.insert(age_key(&verified));
        self.entries
            .entry(tag_key)
            .or_default()
            .insert(verified.publisher, verified);
        InsertOutcome::Accepted
    }

    fn remove(&mut self, age: &AgeKey) {
        self.by_age.remove(age);
        let (_, _, repository, tag, publisher) = age;
        let tag_key = (repository.clone(), tag.clone());
        if let Some(publishers) = self.entries.get_mut(&tag_key) {
            publishers.remove(publisher);
            if publishers.is_empty() {
                self.entries.remove(&tag_key);
            }
        }
    }

    /// What `publisher` announced for `repository:tag`, if the book holds it.
    pub fn get(
        &self,
        repository: &str,
        tag: &Tag,
        publisher: &PeerId,
    ) -> Option<&VerifiedAnnouncement> {
        self.entries
            .get(&(repository.to_owned(), tag.as_str().to_owned()))?
            .get(publisher)
    }

    /// Resolves `repository:tag` among the publishers `trusted` accepts now: the announcement
    /// with the latest `time_unix_ms`, then the highest `sequence`, then the greatest publisher
    /// id (an arbitrary but deterministic tie-break, so every node resolves alike).
    ///
    /// Time decides between publishers because their sequence numbers are unrelated; a
    /// publisher's own announcements are already ordered by sequence when inserted. Trust is
    /// asked again here so that revoking a key takes effect without rebuilding the book.
    pub fn resolve(
        &self,
        repository: &str,
        tag: &Tag,
        trusted: impl Fn(&PeerId) -> bool,
    ) -> Option<&Announcement> {
        self.entries
            .get(&(repository.to_owned(), tag.as_str().to_owned()))?
            .values()
            .filter(|v| trusted(&v.publisher))
            .max_by_key(|v| {
                (
                    v.announcement.time_unix_ms,
                    v.announcement.sequence,
                    v.publisher,
                )
            })
            .map(|v| &v.announcement)
    }

    /// The tags of `repository` that resolve through a trusted publisher, sorted.
    pub fn tags(&self, repository: &str, trusted: impl Fn(&PeerId) -> bool) -> Vec<Tag> {
        let start = (repository.to_owned(), String::new());
        self.entries
            .range(start..)
            .take_while(|((repo, _), _)| repo == repository)
            .filter(|(_, publishers)| publishers.keys().any(&trusted))
            .filter_map(|(_, publishers)| {
                publishers
                    .values()
                    .next()
                    .map(|v| v.announcement.tag.clone())
            })
            .collect()
    }

    /// Every announcement the book holds, in book order (repository, tag, publisher).
    pub fn all(&self) -> impl Iterator<Item = &VerifiedAnnouncement> {
        self.entries
            .values()
            .flat_map(|publishers| publishers.values())
    }

    /// The entries strictly after `after` in book order, up to `bytes_max` of signed bytes
    /// (capped to [`ANNOUNCEMENT_PAGE_BYTES_MAX`], and at least one entry). A cursor naming a
    /// publisher that is not a valid peer id yields an empty last page.
    pub fn page(&self, after: Option<&AnnouncementCursor>, bytes_max: usize) -> AnnouncementPage {
        let bytes_max = bytes_max.min(ANNOUNCEMENT_PAGE_BYTES_MAX);
        let (start, after_publisher) = match after {
            None => (Bound::Unbounded, None),
            Some(cursor) => {
                let Ok(publisher) = PeerId::from_bytes(&cursor.publisher) else {
                    return AnnouncementPage {
                        announcements: Vec::new(),
                        next: None,
                    };
                };
                (
                    Bound::Included((cursor.repository.clone(), cursor.tag.clone())),
                    Some((cursor, publisher)),
                )
            }
        };
        let mut entries = self
            .entries
            .range((start, Bound::Unbounded))
            .flat_map(|(tag_key, publishers)| {
                let from = match &after_publisher {
                    Some((cursor, publisher))
                        if tag_key.0 == cursor.repository && tag_key.1 == cursor.tag =>
                    {
                        Bound::Excluded(*publisher)
                    }
                    _ => Bound::Unbounded,
                };
                publishers.range((from, Bound::Unbounded)).map(|(_, v)| v)
            })
            .peekable();
        let mut announcements = Vec::new();
        let mut bytes = 0;
        let mut last = None;
        while let Some(entry) = entries.peek() {
            let signed = &entry.signed;
            let size = signed.payload.len()
                + signed.publisher.len()
                + signed.signature.len()
                + PAGE_ENTRY_OVERHEAD_BYTES;
            if !announcements.is_empty() && bytes + size > bytes_max {
                break;
            }
            bytes += size;
            announcements.push(signed.clone());
            last = Some(*entry);
            entries.next();
        }
        let next = match (entries.peek(), last) {
            (Some(_), Some(last)) => Some(AnnouncementCursor {
                repository: last.announcement.repository.clone(),
                tag: last.announcement.tag.as_str().to_owned(),
                publisher: last.publisher.to_bytes(),
            }),
            _ => None,
        };
        AnnouncementPage {
            announcements,
            next,
        }
    }
}
