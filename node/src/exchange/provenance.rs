//! The provenance of content peers ask for, for the zone's decisions (`zone.rs`): public, or
//! held only because of credentialed namespaces, or not (yet) part of any stored image.
//!
//! Stored content is attributed through the store's repositories and manifest graph
//! ([`Store::content_namespaces`]), read again only when the store's generation moves (a
//! commit or a removal) and only when some namespace has credentials at all; a blob still
//! arriving is attributed by the repository its transfer was started for.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use shoal_protocol::Digest;

use crate::exchange::fetch::Origin;
use crate::store::Store;
use crate::zone::{PeerZone, Provenance};

/// Stored content's namespaces, as of one store generation.
struct Attribution {
    generation: u64,
    namespaces: Arc<HashMap<Digest, BTreeSet<String>>>,
}

pub struct ContentProvenance {
    zone: Arc<PeerZone>,
    /// Held while the attribution is rebuilt, so concurrent askers wait for one rebuild.
    attribution: Mutex<Option<Attribution>>,
}

impl std::fmt::Debug for ContentProvenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContentProvenance").finish_non_exhaustive()
    }
}

impl ContentProvenance {
    pub fn new(zone: Arc<PeerZone>) -> ContentProvenance {
        ContentProvenance {
            zone,
            attribution: Mutex::new(None),
        }
    }

    pub fn zone(&self) -> &PeerZone {
        &self.zone
    }

    /// The provenance of `digest`, stored or arriving for `origin`. Without any credentialed
    /// namespace everything is public and nothing is read; otherwise it may read every stored
    /// manifest once per store generation: blocks on disk I/O.
    pub fn of(&self, store: &Store, digest: &Digest, origin: Option<&Origin>) -> Provenance {
        if !self.zone.has_credentialed() {
            return Provenance::Public;
        }
        let stored = self
            .namespaces(store)
            .and_then(|namespaces| namespaces.get(digest).cloned());
        match (stored, origin) {
            (Some(namespaces), _) => self.classify(namespaces),
            (None, Some(origin)) => self.zone.namespace_provenance(origin.repo.namespace()),
            (None, None) => Provenance::Unattributed,
        }
    }

    /// Public as soon as one namespace holding it has no credentials here.
    fn classify(&self, namespaces: BTreeSet<String>) -> Provenance {
        if namespaces.is_empty() || namespaces.iter().any(|ns| !self.zone.is_credentialed(ns)) {
            Provenance::Public
        } else {
            Provenance::Credentialed(namespaces)
        }
    }

    /// The attribution of the store's current generation; `None` when the store cannot be
    /// read (everything then counts as unattributed: members only).
    fn namespaces(&self, store: &Store) -> Option<Arc<HashMap<Digest, BTreeSet<String>>>> {
        let mut attribution = self
            .attribution
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = store.generation();
        if let Some(current) = attribution.as_ref()
            && current.generation == generation
        {
            return Some(current.namespaces.clone());
        }
        match store.content_namespaces() {
            Ok(namespaces) => {
                let namespaces = Arc::new(namespaces);
                *attribution = Some(Attribution {
                    generation,
                    namespaces: namespaces.clone(),
                });
                Some(namespaces)
            }
            Err(error) => {
                tracing::warn!(%error, "cannot attribute stored content to namespaces");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use shoal_protocol::RepoName;

    use super::*;
    use crate::zone::{ServePeers, Share};

    #[test]
    fn stored_and_arriving_content_is_attributed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let zone = PeerZone::new(
            ServePeers::Any,
            [],
            false,
            BTreeMap::from([("registry.example".to_owned(), Share::Zone)]),
        );
        let provenance = ContentProvenance::new(Arc::new(zone));
        let digest = Digest::of(b"arriving");
        let private = Origin {
            repo: RepoName::new("registry.example", "team/app").unwrap(),
            manifest: false,
        };
        let public = Origin {
            repo: RepoName::new("docker.io", "library/app").unwrap(),
            manifest: false,
        };
        assert_eq!(
            provenance.of(&store, &digest, None),
            Provenance::Unattributed
        );
        assert_eq!(
            provenance.of(&store, &digest, Some(&private)),
            Provenance::credentialed("registry.example")
        );
        assert_eq!(
            provenance.of(&store, &digest, Some(&public)),
            Provenance::Public
        );
        let open = ContentProvenance::new(Arc::new(PeerZone::default()));
        assert_eq!(open.of(&store, &digest, None), Provenance::Public);
    }
}
