//! The node's announcements: verifying and keeping what peers gossip, resolving tags from
//! trusted publishers, and signing and publishing this node's own images.
//!
//! The book of announcements is pure protocol state ([`AnnouncementBook`]); this module adds
//! what needs the node: which publishers are trusted (this node's key always, plus `--trust`),
//! persistence of accepted announcements in the store's metadata, and the signing key. The
//! lock is a `std` mutex: nothing awaits while holding it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use libp2p::PeerId;
use libp2p::identity::Keypair;
use shoal_protocol::announce::{ANNOUNCEMENT_PAGE_BYTES_MAX, AnnouncementPage};
use shoal_protocol::{
    Announcement, AnnouncementBook, AnnouncementCursor, Digest, InsertOutcome, RepoName,
    SignedAnnouncement, Tag,
};

use crate::observe::Counters;
use crate::store::{Store, StoreError};
use crate::zone::PeerZone;

#[derive(Debug)]
pub struct Announcements {
    book: Mutex<Book>,
    trusted: HashSet<PeerId>,
    keypair: Keypair,
    store: Store,
    counters: Arc<Counters>,
    /// Fault injection for tests: sign with a key other than the one announced.
    forge_signatures: bool,
    /// Which namespaces' announcements may be gossiped (`zone.rs`); all without one.
    zone: Option<Arc<PeerZone>>,
}

#[derive(Debug, Default)]
struct Book {
    announcements: AnnouncementBook,
    /// Chunk-index roots of blobs in trusted announcements.
    roots: HashMap<Digest, [u8; 32]>,
}

impl Announcements {
    /// Loads the announcements kept in the store.
    pub fn load(
        store: Store,
        keypair: Keypair,
        trust: &[PeerId],
        counters: Arc<Counters>,
        forge_signatures: bool,
    ) -> Result<Announcements, StoreError> {
        let mut trusted: HashSet<PeerId> = trust.iter().copied().collect();
        trusted.insert(keypair.public().to_peer_id());
        let announcements = Announcements {
            book: Mutex::new(Book::default()),
            trusted,
            keypair,
            store,
            counters,
            forge_signatures,
            zone: None,
        };
        for (id, encoded) in announcements.store.announcements()? {
            let kept = SignedAnnouncement::decode(&encoded)
                .ok()
                .and_then(|signed| announcements.insert(signed, false));
            if kept.is_none() {
                announcements.store.forget_announcement(&id)?;
            }
        }
        Ok(announcements)
    }

    /// Gossips only the announcements the zone lets every connected peer see; the others are
    /// kept, and go to the peers allowed them when they ask for the book.
    pub fn with_zone(mut self, zone: Arc<PeerZone>) -> Announcements {
        self.zone = Some(zone);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn is_trusted(&self, publisher: &PeerId) -> bool {
        self.trusted.contains(publisher)
    }

    /// Takes an announcement from the network. Returns it when it was accepted from a trusted
    /// publisher (the caller may prefetch it); bad, untrusted and stale ones are counted.
    pub fn receive(&self, data: &[u8]) -> Option<Announcement> {
        let accepted = SignedAnnouncement::decode(data)
            .ok()
            .and_then(|signed| self.insert(signed, true));
        let counter = if accepted.is_some() {
            &self.counters.announcements_accepted
        } else {
            &self.counters.announcements_dropped
        };
        Counters::add(counter, 1);
        accepted
    }

    /// Verifies and keeps `signed`; returns the announcement if it came from a trusted
    /// publisher and is the newest of its tag.
    fn insert(&self, signed: SignedAnnouncement, persist: bool) -> Option<Announcement> {
        let verified = match signed.verify() {
            Ok(verified) => verified,
            Err(error) => {
                tracing::debug!(%error, "dropping an announcement");
                return None;
            }
        };
        let trusted = self.is_trusted(verified.publisher());
        let announcement = verified.announcement().clone();
        let mut book = self.lock();
        match book.announcements.insert(verified, trusted) {
            InsertOutcome::Accepted => {}
            outcome => {
                tracing::debug!(?outcome, repository = %announcement.repository, "announcement not taken");
                return None;
            }
        }
        for (digest, root) in &announcement.index_roots {
            book.roots.insert(*digest, *root);
        }
        drop(book);
        if persist
            && let Ok(encoded) = signed.encode()
            && let Err(error) = self
                .store
                .keep_announcement(blake3::hash(&signed.payload).as_bytes(), &encoded)
        {
            tracing::warn!(%error, "cannot persist an announcement");
        }
        Some(announcement)
    }

    /// The manifest a trusted publisher last announced for `repo:tag`.
    pub fn resolve(&self, repo: &RepoName, tag: &Tag) -> Option<Digest> {
        let book = self.lock();
        let announcement = book
            .announcements
            .resolve(&repo.qualified(), tag, |publisher| {
                self.is_trusted(publisher)
            })?;
        Some(announcement.manifest)
    }

    /// Tags of `repo` known from trusted announcements.
    pub fn tags(&self, repo: &RepoName) -> Vec<Tag> {
        self.lock()
            .announcements
            .tags(&repo.qualified(), |publisher| self.is_trusted(publisher))
    }

    /// The chunk-index root a trusted publisher announced for `blob`.
    pub fn index_root(&self, blob: &Digest) -> Option<[u8; 32]> {
        self.lock().roots.get(blob).copied()
    }

    /// One page of the announcements kept, for a peer that joined late.
    pub fn page(&self, after: Option<&AnnouncementCursor>) -> AnnouncementPage {
        self.lock()
            .announcements
            .page(after, ANNOUNCEMENT_PAGE_BYTES_MAX)
    }

    /// Tags known from trusted announcements, for status.
    pub fn known_images(&self) -> Vec<(String, String, Digest)> {
        let book = self.lock();
        let mut images: Vec<_> = book
            .announcements
            .all()
            .filter(|verified| self.is_trusted(verified.publisher()))
            .map(|verified| {
                let a = verified.announcement();
                (a.repository.clone(), a.tag.to_string(), a.manifest)
            })
            .collect();
        images.sort();
        images.dedup();
        images
    }

    /// Signs an announcement of `repo:tag` -> `manifest` and keeps it; returns the bytes to
    /// gossip, unless the zone keeps the namespace's announcements from gossip.
    pub fn announce(
        &self,
        repo: &RepoName,
        tag: &Tag,
        manifest: Digest,
        media_type: &str,
        size: u64,
        index_roots: Vec<(Digest, [u8; 32])>,
    ) -> Option<Vec<u8>> {
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut announcement = Announcement {
            repository: repo.qualified(),
            tag: tag.clone(),
            manifest,
            media_type: media_type.to_owned(),
            size,
            sequence: now_ms,
            time_unix_ms: now_ms,
            index_roots,
        };
        announcement.normalize_roots();
        let signed = if self.forge_signatures {
            SignedAnnouncement::sign(&announcement, &Keypair::generate_ed25519()).map(
                |mut forged| {
                    forged.publisher = self.keypair.public().encode_protobuf();
                    forged
                },
            )
        } else {
            SignedAnnouncement::sign(&announcement, &self.keypair)
        };
        let signed = match signed {
            Ok(signed) => signed,
            Err(error) => {
                tracing::warn!(%repo, %tag, %error, "cannot sign an announcement");
                return None;
            }
        };
        let encoded = signed.encode().ok()?;
        self.insert(signed, true);
        if let Some(zone) = &self.zone
            && !zone.gossips_namespace(repo.namespace())
        {
            tracing::info!(%repo, %tag, "not gossiped: the namespace has credentials and peers it is not shared with may connect");
            return None;
        }
        Some(encoded)
    }
}
