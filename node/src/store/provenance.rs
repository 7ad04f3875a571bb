//! Which namespaces' images hold each piece of stored content: the store's side of peer
//! zones' provenance (`zone.rs`, `exchange/provenance.rs`). Read from the repository records
//! and the manifest graph; [`Store::generation`] says when that may have changed.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::Ordering;

use shoal_protocol::Digest;

use super::{Store, StoreError, metadata};

impl Store {
    /// A number that changes whenever a commit or a removal may have changed manifests or
    /// repositories.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    pub(super) fn next_generation(&self) {
        self.inner.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Every manifest and blob that a stored image references, with the namespaces of the
    /// repositories whose images reference it. Content no repository's image references is
    /// absent. Reads every stored manifest: blocks on disk I/O.
    pub fn content_namespaces(&self) -> Result<HashMap<Digest, BTreeSet<String>>, StoreError> {
        let mut roots: HashMap<String, Vec<Digest>> = HashMap::new();
        for entry in metadata::repo_manifests(self.db()) {
            let (namespace, manifest) = entry?;
            roots.entry(namespace).or_default().push(manifest);
        }
        let graph = self.manifest_graph()?;
        let mut namespaces: HashMap<Digest, BTreeSet<String>> = HashMap::new();
        for (namespace, manifests) in roots {
            for digest in graph.descendants(manifests) {
                namespaces
                    .entry(digest)
                    .or_default()
                    .insert(namespace.clone());
            }
        }
        Ok(namespaces)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::test_image::store_image_in;

    #[test]
    fn content_is_attributed_to_every_namespace_whose_images_hold_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        assert!(store.content_namespaces().unwrap().is_empty());
        let before = store.generation();
        let private = "registry.example".to_owned();
        let only_private = store_image_in(&store, &private, "team/app", b"private", true, true);
        assert_ne!(store.generation(), before);
        let public = "docker.io".to_owned();
        let both = store_image_in(&store, &private, "team/base", b"both", true, false);
        store_image_in(&store, &public, "library/base", b"both", true, false);
        let namespaces = store.content_namespaces().unwrap();
        for digest in only_private {
            assert_eq!(namespaces[&digest], BTreeSet::from([private.clone()]));
        }
        for digest in both {
            assert_eq!(
                namespaces[&digest],
                BTreeSet::from([public.clone(), private.clone()])
            );
        }
        // Evicting an image forgets its attribution. Eviction skips blobs used in the
        // millisecond its pass starts (the commits above used them), so let one go by.
        std::thread::sleep(std::time::Duration::from_millis(2));
        let generation = store.generation();
        store.evict(0).unwrap();
        assert_ne!(store.generation(), generation);
        assert!(store.content_namespaces().unwrap().is_empty());
    }
}
