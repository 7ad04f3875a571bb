//! Whole images, and their tags. A tag in the store means "this image is here": `shoal status`
//! lists the store's tags as its images, pins and the gateway's tag list read them, and eviction
//! removes a tag together with the content it needs. `shoal import` records an image and its tag
//! in one commit; an image that comes from the network arrives manifest by manifest and blob by
//! blob (a pull, a prefetch, a client pulling through the gateway), so its tag is recorded here,
//! once every piece of it is stored.

use shoal_protocol::{Digest, ParsedManifest, RepoName, Tag, TagOrDigest};

use super::{Commit, Store, StoreError, metadata};

impl Store {
    /// The manifest `tag` of `repo` points at in the store: an image that is here.
    pub fn tagged(&self, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
        metadata::tag(self.db(), repo, tag)
    }

    /// Points `tag` of `repo` at manifest `digest` if that image is whole here: the manifest and
    /// every manifest under it recorded in `repo`, every blob they name stored. Returns whether
    /// the tag now points there. What the image needs is leased while it is checked, so eviction
    /// cannot take a piece of it between the check and the commit. Blocks on disk I/O.
    pub fn tag_if_whole(
        &self,
        repo: &RepoName,
        tag: &Tag,
        digest: Digest,
    ) -> Result<bool, StoreError> {
        let mut leases = Vec::new();
        let mut manifests = vec![digest];
        while let Some(manifest) = manifests.pop() {
            leases.push(self.lease(manifest));
            let Some((_, record, bytes)) = self.manifest(repo, &TagOrDigest::Digest(manifest))?
            else {
                return Ok(false);
            };
            // A stored manifest was parsed when it was recorded; one that no longer parses
            // leaves the image incomplete rather than failing the caller.
            let Ok(parsed) = ParsedManifest::parse(&bytes, Some(&record.media_type)) else {
                return Ok(false);
            };
            manifests.extend(parsed.manifests.iter().map(|child| child.digest));
            for blob in &parsed.blobs {
                leases.push(self.lease(blob.digest));
                if !self.has_blob(&blob.digest)? {
                    return Ok(false);
                }
            }
        }
        if self.tagged(repo, tag)? == Some(digest) {
            return Ok(true);
        }
        self.staging()?.commit(Commit {
            tags: vec![(repo.clone(), tag.clone(), digest)],
            ..Commit::default()
        })?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_image::store_image;
    use super::*;

    fn open(dir: &std::path::Path) -> Store {
        Store::open(dir).unwrap().0
    }

    #[test]
    fn a_tag_is_recorded_only_once_every_blob_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let repo = RepoName::new("docker.io", "team/app").unwrap();
        let tag: Tag = "7".parse().unwrap();
        let [manifest, _, layer] = store_image(&store, "team/app", b"layer", false, false);
        assert!(!store.has_blob(&layer).unwrap());
        assert!(!store.tag_if_whole(&repo, &tag, manifest).unwrap());
        assert!(
            store.images().unwrap().is_empty(),
            "no tag for a partial image"
        );

        // The layer arrives (as a transfer would store it).
        let mut staging = store.staging().unwrap();
        staging.write_blob(&b"layer"[..], None, "layer").unwrap();
        staging
            .commit(Commit {
                blobs: [layer].into(),
                ..Commit::default()
            })
            .unwrap();
        assert!(store.tag_if_whole(&repo, &tag, manifest).unwrap());
        assert!(
            store.tag_if_whole(&repo, &tag, manifest).unwrap(),
            "idempotent"
        );
        let images = store.images().unwrap();
        assert_eq!(images.len(), 1);
        assert_eq!(
            (
                images[0].repository.as_str(),
                images[0].tag.as_str(),
                images[0].digest
            ),
            ("docker.io/team/app", "7", manifest)
        );
    }

    #[test]
    fn a_manifest_not_recorded_in_the_repository_is_not_whole_there() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path());
        let [manifest, ..] = store_image(&store, "team/app", b"layer", true, false);
        let other = RepoName::new("docker.io", "team/other").unwrap();
        let tag: Tag = "1".parse().unwrap();
        assert!(!store.tag_if_whole(&other, &tag, manifest).unwrap());
        assert!(
            !store
                .tag_if_whole(&other, &tag, Digest::of(b"nothing"))
                .unwrap()
        );
        assert_eq!(store.tags(&other).unwrap(), None);
    }
}
