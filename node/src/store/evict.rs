//! Making room and checking what is kept: least-recently-used eviction down to a target,
//! pinned images, and re-hashing the whole store.
//!
//! Eviction works on blobs, but images are what users see, so a blob leaves together with every
//! manifest that (directly or through an index) references it: an image with a blob gone is no
//! longer listed, tagged or served as stored, and a later pull fetches it again. What is never
//! evicted: everything a pinned image needs (its index, every platform's manifest, config and
//! layers), and blobs leased right now (read by a gateway client, fetched, or gathered by a
//! pull). A blob used after a pass began is left for the next pass.
//!
//! The references between manifests and blobs are read from the stored manifests at each pass,
//! which only runs when the store is over its budget, on `shoal gc` and on `shoal verify`.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::{self, Read};
use std::sync::MutexGuard;

use shoal_protocol::manifest::MANIFEST_BYTES_MAX;
use shoal_protocol::{Digest, ParsedManifest};

use super::usage::now_ms;
use super::{Store, StoreError, hash_reader, io_error, metadata};

/// What an eviction pass removed.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EvictionReport {
    /// Blobs (manifests included) removed, least recently used first.
    pub evicted: Vec<Digest>,
    pub bytes_freed: u64,
    /// Bytes stored after the pass, and the target it aimed at.
    pub stored_bytes: u64,
    pub target_bytes: u64,
}

/// What a verification pass found.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VerifyReport {
    pub blobs_checked: u64,
    pub bytes_checked: u64,
    /// Blobs whose bytes no longer match their digest; removed.
    pub corrupt: Vec<Digest>,
    /// Blobs recorded but whose file is gone; forgotten.
    pub missing: Vec<Digest>,
    /// Manifests removed because content they reference was corrupt or missing.
    pub dependents_removed: Vec<Digest>,
}

/// An image kept whatever the budget.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Pin {
    /// The normalised reference, such as `docker.io/team/app:1`.
    pub reference: String,
    /// The manifest (or index) it resolved to when pinned.
    pub digest: Digest,
}

/// Which manifests reference which content, as read from the stored manifests.
#[derive(Debug, Default)]
pub(crate) struct Graph {
    children: HashMap<Digest, Vec<Digest>>,
    parents: HashMap<Digest, Vec<Digest>>,
}

impl Graph {
    pub(crate) fn add(&mut self, manifest: Digest, child: Digest) {
        self.children.entry(manifest).or_default().push(child);
        self.parents.entry(child).or_default().push(manifest);
    }

    /// `roots` and everything they reference, transitively.
    pub(crate) fn descendants(&self, roots: impl IntoIterator<Item = Digest>) -> HashSet<Digest> {
        self.closure(roots, &self.children)
    }

    /// `digest` and every manifest that references it, transitively.
    pub(crate) fn with_ancestors(&self, digest: Digest) -> HashSet<Digest> {
        self.closure([digest], &self.parents)
    }

    fn closure(
        &self,
        roots: impl IntoIterator<Item = Digest>,
        edges: &HashMap<Digest, Vec<Digest>>,
    ) -> HashSet<Digest> {
        let mut seen = HashSet::new();
        let mut pending: Vec<Digest> = roots.into_iter().collect();
        while let Some(digest) = pending.pop() {
            if seen.insert(digest) {
                pending.extend(edges.get(&digest).into_iter().flatten().copied());
            }
        }
        seen
    }
}

/// A stored blob as eviction sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub digest: Digest,
    pub size: u64,
    /// Milliseconds since the Unix epoch; 0 when never recorded.
    pub last_used: u64,
}

/// The blobs to remove so that `stored_bytes` falls to `target_bytes` or below: least recently
/// used first (ties broken by digest, so the choice is deterministic), each with the manifests
/// that reference it, skipping any blob that is — or whose referencing manifests are —
/// `protected`. Returns fewer than needed when the rest is protected.
pub(crate) fn choose_victims(
    candidates: &[Candidate],
    graph: &Graph,
    protected: &HashSet<Digest>,
    stored_bytes: u64,
    target_bytes: u64,
) -> Vec<Digest> {
    let sizes: HashMap<Digest, u64> = candidates.iter().map(|c| (c.digest, c.size)).collect();
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by_key(|candidate| (candidate.last_used, candidate.digest));
    let mut remaining = stored_bytes;
    let mut chosen = Vec::new();
    let mut taken = HashSet::new();
    for candidate in order {
        if remaining <= target_bytes {
            break;
        }
        if taken.contains(&candidate.digest) {
            continue;
        }
        let unit = graph.with_ancestors(candidate.digest);
        if unit.iter().any(|digest| protected.contains(digest)) {
            continue;
        }
        let mut unit: Vec<Digest> = unit.into_iter().collect();
        unit.sort();
        for digest in unit {
            if taken.insert(digest) {
                remaining = remaining.saturating_sub(sizes.get(&digest).copied().unwrap_or(0));
                chosen.push(digest);
            }
        }
    }
    chosen
}

impl Store {
    /// Records that `reference` (normalised) keeps manifest `digest` and everything it needs.
    /// Returns the digest it kept before, if it was pinned already.
    pub fn pin(&self, reference: &str, digest: Digest) -> Result<Option<Digest>, StoreError> {
        let previous = self
            .db()
            .insert(metadata::pin_key(reference), digest.as_bytes())?;
        self.db().flush()?;
        Ok(previous
            .and_then(|bytes| Some(Digest::from_sha256_bytes(bytes.as_ref().try_into().ok()?))))
    }

    /// Forgets the pin of `reference`; returns the digest it kept, if any.
    pub fn unpin(&self, reference: &str) -> Result<Option<Digest>, StoreError> {
        let previous = self.db().remove(metadata::pin_key(reference))?;
        self.db().flush()?;
        self.inner.usage.wake();
        Ok(previous
            .and_then(|bytes| Some(Digest::from_sha256_bytes(bytes.as_ref().try_into().ok()?))))
    }

    pub fn pins(&self) -> Result<Vec<Pin>, StoreError> {
        metadata::pins(self.db())
            .map(|pin| pin.map(|(reference, digest)| Pin { reference, digest }))
            .collect()
    }

    /// Removes least-recently-used blobs, with the manifests that reference them, until the
    /// store holds `target_bytes` or less; pinned images and leased blobs stay. Blocks on disk
    /// I/O; one pass (or verification) runs at a time.
    pub fn evict(&self, target_bytes: u64) -> Result<EvictionReport, StoreError> {
        let started = now_ms();
        let (_pass, blobs) = self.begin_pass()?;
        let stored: u64 = blobs.iter().map(|(_, size)| size).sum();
        self.inner.usage.recount(stored);
        let mut report = EvictionReport {
            stored_bytes: stored,
            target_bytes,
            ..EvictionReport::default()
        };
        if stored <= target_bytes {
            return Ok(report);
        }
        let graph = self.manifest_graph()?;
        let pinned = self.pins()?.into_iter().map(|pin| pin.digest);
        let mut protected = graph.descendants(pinned);
        protected.extend(self.inner.usage.leased());
        let candidates: Vec<Candidate> = blobs
            .iter()
            .map(|(digest, size)| Candidate {
                digest: *digest,
                size: *size,
                last_used: self.inner.usage.last_used(digest),
            })
            .collect();
        let victims = choose_victims(&candidates, &graph, &protected, stored, target_bytes);
        // A blob leased or used since the choice (a reader, a commit naming it) stays.
        let still_idle = |digest: &Digest| {
            !self.inner.usage.is_leased(digest) && self.inner.usage.last_used(digest) < started
        };
        let removed = self.remove_blobs(&victims, still_idle)?;
        let sizes: HashMap<Digest, u64> = blobs.into_iter().collect();
        report.bytes_freed = removed.iter().filter_map(|d| sizes.get(d)).sum();
        report.stored_bytes = stored.saturating_sub(report.bytes_freed);
        report.evicted = removed;
        Ok(report)
    }

    /// Re-hashes every stored blob. Corrupt or vanished content is removed, with the manifests
    /// that reference it; content found intact is not hashed again before it is served.
    pub fn verify(&self) -> Result<VerifyReport, StoreError> {
        let (_pass, blobs) = self.begin_pass()?;
        let mut report = VerifyReport::default();
        for (digest, size) in blobs {
            let path = self.layout().blob(&digest);
            let hashed = File::open(&path).and_then(|mut file| hash_reader(&mut file));
            report.blobs_checked += 1;
            match hashed {
                Ok((actual, actual_size)) if actual == digest && actual_size == size => {
                    report.bytes_checked += size;
                    self.mark_verified(digest);
                }
                Ok((actual, _)) => {
                    tracing::error!(%digest, %actual, "stored blob is corrupt; removing it");
                    report.corrupt.push(digest);
                }
                // Evicted while this pass read the list, or deleted behind the store's back.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {
                    if self.has_blob(&digest)? {
                        tracing::error!(%digest, "stored blob's file is gone; forgetting it");
                        report.missing.push(digest);
                    }
                }
                Err(error) => return Err(io_error(&path)(error)),
            }
        }
        if report.corrupt.is_empty() && report.missing.is_empty() {
            return Ok(report);
        }
        let graph = self.manifest_graph()?;
        let bad: Vec<Digest> = report
            .corrupt
            .iter()
            .chain(&report.missing)
            .copied()
            .collect();
        let mut doomed: HashSet<Digest> = HashSet::new();
        for digest in &bad {
            doomed.extend(graph.with_ancestors(*digest));
        }
        let mut doomed: Vec<Digest> = doomed.into_iter().collect();
        doomed.sort();
        self.remove_blobs(&doomed, |_| true)?;
        report.dependents_removed = doomed.into_iter().filter(|d| !bad.contains(d)).collect();
        Ok(report)
    }

    /// Starts an eviction or verification pass (one runs at a time): the guard, and every
    /// stored blob with its size.
    #[allow(clippy::type_complexity)]
    fn begin_pass(&self) -> Result<(MutexGuard<'_, ()>, Vec<(Digest, u64)>), StoreError> {
        let pass = (self.inner.usage.passes.lock()).unwrap_or_else(|e| e.into_inner());
        let blobs = metadata::blob_records(self.db()).collect::<Result<_, _>>()?;
        Ok((pass, blobs))
    }

    /// Reads every stored manifest to learn what it references. A manifest that cannot be read
    /// or parsed references nothing (verification deals with unreadable content).
    pub(crate) fn manifest_graph(&self) -> Result<Graph, StoreError> {
        let mut graph = Graph::default();
        for record in metadata::manifests(self.db()) {
            let (digest, record) = record?;
            let path = self.layout().blob(&digest);
            let mut bytes = Vec::new();
            let read = File::open(&path).and_then(|file| {
                file.take(MANIFEST_BYTES_MAX as u64 + 1)
                    .read_to_end(&mut bytes)
            });
            if let Err(error) = read {
                tracing::debug!(%digest, %error, "cannot read a stored manifest");
                continue;
            }
            match ParsedManifest::parse(&bytes, Some(&record.media_type)) {
                Ok(parsed) => {
                    for child in parsed.manifests.iter().chain(&parsed.blobs) {
                        graph.add(digest, child.digest);
                    }
                }
                Err(error) => tracing::debug!(%digest, %error, "cannot parse a stored manifest"),
            }
        }
        Ok(graph)
    }

    /// Removes the blobs in `digests` that `keep_going` still allows: records first, in one
    /// batch, then files (a crash in between leaves orphan files, which opening the store
    /// removes). Returns those removed.
    fn remove_blobs(
        &self,
        digests: &[Digest],
        keep_going: impl Fn(&Digest) -> bool,
    ) -> Result<Vec<Digest>, StoreError> {
        let _guard = self.lock_commits();
        let mut removed = Vec::new();
        let mut bytes = 0;
        for digest in digests {
            if !keep_going(digest) {
                continue;
            }
            if let Some(size) = self.blob_size(digest)? {
                bytes += size;
            }
            removed.push(*digest);
        }
        if removed.is_empty() {
            return Ok(removed);
        }
        metadata::forget_blobs(self.db(), &removed)?;
        self.next_generation();
        self.db().flush()?;
        self.inner.usage.shrank(bytes);
        for digest in &removed {
            self.forget_cached(digest);
            let path = self.layout().blob(digest);
            match std::fs::remove_file(&path) {
                Err(error) if error.kind() != io::ErrorKind::NotFound => {
                    return Err(io_error(&path)(error));
                }
                _ => {}
            }
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    fn candidate(n: u8, size: u64, last_used: u64) -> Candidate {
        Candidate {
            digest: digest(n),
            size,
            last_used,
        }
    }

    #[test]
    fn the_least_recently_used_go_first_until_the_target_is_met() {
        let candidates = [
            candidate(1, 10, 300),
            candidate(2, 10, 100),
            candidate(3, 10, 200),
            candidate(4, 10, 0),
        ];
        let graph = Graph::default();
        let none = HashSet::new();
        // 40 stored, 25 wanted: the two oldest (never used, then 100) free 20.
        assert_eq!(
            choose_victims(&candidates, &graph, &none, 40, 25),
            vec![digest(4), digest(2)]
        );
        assert_eq!(choose_victims(&candidates, &graph, &none, 40, 40), vec![]);
        assert_eq!(choose_victims(&candidates, &graph, &none, 40, 0).len(), 4);
    }

    #[test]
    fn protected_blobs_and_the_manifests_above_them_stay() {
        // Manifest 10 references 1 and 2; an index 20 references manifest 10.
        let mut graph = Graph::default();
        graph.add(digest(10), digest(1));
        graph.add(digest(10), digest(2));
        graph.add(digest(20), digest(10));
        let candidates = [
            candidate(1, 100, 1),
            candidate(2, 100, 2),
            candidate(10, 1, 50),
            candidate(20, 1, 60),
            candidate(3, 100, 70),
        ];
        // Evicting layer 1 takes its manifest and the index with it.
        let victims = choose_victims(&candidates, &graph, &HashSet::new(), 302, 250);
        assert_eq!(victims.len(), 3);
        assert!(victims.contains(&digest(1)));
        assert!(victims.contains(&digest(10)) && victims.contains(&digest(20)));

        // A pinned index protects everything below it; only the unrelated blob can go.
        let pinned = graph.descendants([digest(20)]);
        assert_eq!(pinned.len(), 4);
        assert_eq!(
            choose_victims(&candidates, &graph, &pinned, 302, 0),
            vec![digest(3)]
        );

        // A leased layer stays; its sibling may go, and takes the manifests with it.
        let leased = HashSet::from([digest(1)]);
        let victims = choose_victims(&candidates, &graph, &leased, 302, 250);
        assert!(!victims.contains(&digest(1)));
        assert!(victims.contains(&digest(2)) && victims.contains(&digest(10)));
    }

    /// Stores a one-layer image tagged `repo:1`: (manifest, config, layer).
    fn store_image(store: &Store, repo: &str, layer: &[u8]) -> [Digest; 3] {
        let digests = super::super::test_image::store_image(store, repo, layer, true, true);
        // Last use has millisecond resolution: keep the images' order unambiguous.
        std::thread::sleep(std::time::Duration::from_millis(3));
        digests
    }

    fn stored(store: &Store, digests: &[Digest]) -> Vec<bool> {
        digests.iter().map(|d| store.has_blob(d).unwrap()).collect()
    }

    #[test]
    fn a_store_evicts_whole_images_but_never_pinned_or_leased_content() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let a = store_image(&store, "team/a", &[1; 1000]);
        let b = store_image(&store, "team/b", &[2; 1000]);
        let c = store_image(&store, "team/c", &[3; 1000]);
        let total = store.summary().unwrap().bytes;
        assert_eq!(store.stored_bytes(), total);

        store.pin("docker.io/team/a:1", a[0]).unwrap();
        let lease = store.lease(b[2]);
        let report = store.evict(0).unwrap();
        assert_eq!(stored(&store, &a), [true, true, true]);
        assert_eq!(stored(&store, &b), [false, false, true]);
        assert_eq!(stored(&store, &c), [false, false, false]);
        assert_eq!(report.evicted.len(), 5);
        assert_eq!(report.stored_bytes, store.summary().unwrap().bytes);
        assert_eq!(store.stored_bytes(), report.stored_bytes);
        // Tags and repositories follow the manifests.
        let images: Vec<String> = store
            .images()
            .unwrap()
            .into_iter()
            .map(|i| i.repository)
            .collect();
        assert_eq!(images, ["docker.io/team/a"]);
        assert_eq!(store.repositories("docker.io").unwrap(), ["team/a"]);

        drop(lease);
        store.evict(0).unwrap();
        assert_eq!(stored(&store, &b), [false, false, false]);
        assert_eq!(stored(&store, &a), [true, true, true]);

        assert_eq!(store.unpin("docker.io/team/a:1").unwrap(), Some(a[0]));
        assert_eq!(store.evict(0).unwrap().evicted.len(), 3);
        assert_eq!(store.summary().unwrap().blobs, 0);
        assert!(store.repositories("docker.io").unwrap().is_empty());
        assert!(store.evict(0).unwrap().evicted.is_empty());
    }

    #[test]
    fn eviction_takes_the_least_recently_used_first_and_remembers_use_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let old = store_image(&store, "team/old", &[1; 1000]);
        let new = store_image(&store, "team/new", &[2; 1000]);
        // Reading the old image makes it the most recently used.
        store
            .manifest(
                &shoal_protocol::RepoName::new("docker.io", "team/old").unwrap(),
                &shoal_protocol::TagOrDigest::Digest(old[0]),
            )
            .unwrap();
        for digest in &old[1..] {
            store.open_blob(digest).unwrap().unwrap();
        }
        store.flush().unwrap();
        drop(store);
        let (store, _) = Store::reopen(dir.path()).unwrap();
        let usage = &store.inner.usage;
        assert!(usage.last_used(&old[0]) > usage.last_used(&new[0]));
        let image_bytes = store.stored_bytes() / 2;
        store.evict(image_bytes).unwrap();
        assert_eq!(stored(&store, &new), [false, false, false]);
        assert_eq!(stored(&store, &old), [true, true, true]);
    }

    #[test]
    fn verify_removes_corrupt_content_and_the_manifests_that_need_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(dir.path()).unwrap();
        let image = store_image(&store, "team/app", &[7; 5000]);
        let clean = store.verify().unwrap();
        assert_eq!(clean.blobs_checked, 3);
        assert!(clean.corrupt.is_empty() && clean.dependents_removed.is_empty());

        std::fs::write(store.layout().blob(&image[2]), [8; 5000]).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.corrupt, [image[2]]);
        assert_eq!(report.dependents_removed, [image[0]]);
        assert_eq!(stored(&store, &image), [false, true, false]);
        assert!(!store.layout().blob(&image[2]).exists());
        assert!(store.images().unwrap().is_empty());

        std::fs::remove_file(store.layout().blob(&image[1])).unwrap();
        let report = store.verify().unwrap();
        assert_eq!(report.missing, [image[1]]);
        assert_eq!(store.summary().unwrap().blobs, 0);
        assert_eq!(store.stored_bytes(), 0);
    }

    #[test]
    fn nothing_is_chosen_when_everything_is_protected() {
        let candidates = [candidate(1, 10, 0)];
        let protected = HashSet::from([digest(1)]);
        assert!(choose_victims(&candidates, &Graph::default(), &protected, 10, 0).is_empty());
    }
}
