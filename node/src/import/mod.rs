//! `shoal import`: OCI image layouts (directories or tars) and `docker save` archives (the
//! legacy layout of Docker 20.10 and the OCI layout of Docker 25+) into the store.
//!
//! Data flow: [`archive`] walks the input once, streaming every blob into a staging area while
//! hashing it (a blob named by its digest must match it) and keeping only small JSON files in
//! memory. Then [`oci`] or [`docker`] reads the image description, checks that every manifest
//! parses and every referenced blob is present with its declared size, and produces the
//! metadata. Only then does the staging area commit, in one step. Any error drops the staging
//! area, so a refused import leaves the store exactly as it was.

mod archive;
mod docker;
mod oci;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use shoal_protocol::{Digest, ImageRef, ManifestError, ParsedManifest, Tag};

use crate::store::{Commit, CommitReport, ManifestRecord, Staging, Store, StoreError};
use archive::ArchiveContents;

/// How deeply indexes may nest; real images use one or two levels.
const INDEX_DEPTH_MAX: usize = 8;

/// Most manifests one import may hold, so a hostile index cannot make the walk unbounded.
const MANIFESTS_PER_IMPORT_MAX: usize = 10_000;

/// Most bytes of annotations (and artifact types) the manifests of one import may carry: the
/// metadata records keep them, in memory until the commit and then in sled. Real images carry
/// a few KiB; without a bound, manifests of 4 MiB of annotations each, thousands of them, would
/// compress to a small archive.
const ANNOTATION_BYTES_MAX: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is neither a directory nor a tar archive")]
    NotAnArchive(PathBuf),
    #[error("the archive is truncated or damaged: {0}")]
    Damaged(#[source] std::io::Error),
    #[error("archive entry {0:?} points outside the archive")]
    PathTraversal(String),
    #[error(
        "archive entry {entry:?} is {size} bytes, more than the {limit}-byte limit for metadata files"
    )]
    EntryTooLarge {
        entry: String,
        size: u64,
        limit: u64,
    },
    #[error("the archive has too many metadata files (more than {0})")]
    TooManyEntries(usize),
    #[error(
        "the archive has more than {0} bytes of headers (long names, pax records) before an entry"
    )]
    HeadersTooLarge(u64),
    #[error("the archive's metadata files add up to more than {0} bytes")]
    MetadataTooLarge(u64),
    #[error("the image's manifests carry more than {0} bytes of annotations")]
    AnnotationsTooLarge(u64),
    #[error(
        "not an image: the archive has neither index.json (OCI layout) nor manifest.json (docker save)"
    )]
    NotAnImage,
    #[error("invalid image layout: {0}")]
    BadLayout(String),
    #[error("manifest {digest} is invalid: {source}")]
    Manifest {
        digest: Digest,
        #[source]
        source: ManifestError,
    },
    #[error("blob {digest} is referenced by {referenced_by} but missing from the archive")]
    MissingBlob {
        digest: Digest,
        referenced_by: String,
    },
    #[error(
        "blob {digest} is declared as {declared} bytes by {referenced_by} but is {actual} bytes"
    )]
    SizeMismatch {
        digest: Digest,
        declared: u64,
        actual: u64,
        referenced_by: String,
    },
    #[error("image {0} has no repository name: pass --tag REPO:TAG")]
    NoName(Digest),
    #[error("--tag names one image but the archive holds {0}")]
    TagForManyImages(usize),
    #[error("invalid image name {name:?}: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("the import was cancelled")]
    Cancelled,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One image an import made addressable.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportedImage {
    pub reference: String,
    pub digest: Digest,
    pub media_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportReport {
    pub images: Vec<ImportedImage>,
    pub stored: CommitReport,
    pub blobs_already_stored: u64,
    /// Every blob and manifest of the imported images, for announcing them.
    #[serde(skip)]
    pub digests: Vec<Digest>,
}

/// An image to tag: its top-level manifest and the names it should answer to.
struct NamedImage {
    digest: Digest,
    media_type: String,
    names: Vec<ImageRef>,
}

/// Imports `path` into `store`. `tag` overrides the names found in the archive.
/// `progress(done, total)` is called as input bytes are consumed; returning `false` cancels.
pub fn import(
    store: &Store,
    path: &Path,
    tag: Option<&ImageRef>,
    progress: &mut dyn FnMut(u64, u64) -> bool,
) -> Result<ImportReport, ImportError> {
    let mut staging = store.staging()?;
    let contents = ArchiveContents::read(path, &mut staging, progress)?;
    let mut graph = ManifestGraph::default();
    let images = if contents.has("index.json") {
        oci::describe(&contents, &mut staging, &mut graph)?
    } else if contents.has("manifest.json") {
        docker::describe(&contents, &mut staging, &mut graph)?
    } else {
        return Err(ImportError::NotAnImage);
    };
    let images = apply_tag_override(images, tag)?;
    let blobs_referenced = graph.referenced.len() as u64;
    let digests = graph.referenced.iter().copied().collect();
    let mut commit = Commit {
        blobs: graph.referenced,
        manifests: graph.manifests,
        ..Commit::default()
    };
    let mut imported = Vec::new();
    for image in &images {
        for name in &image.names {
            for digest in &graph.digests {
                commit.repo_manifests.push((name.repo.clone(), *digest));
            }
            if let Some(tag) = &name.tag {
                commit
                    .tags
                    .push((name.repo.clone(), tag.clone(), image.digest));
            }
            imported.push(ImportedImage {
                reference: name.to_string(),
                digest: image.digest,
                media_type: image.media_type.clone(),
            });
        }
    }
    let stored = staging.commit(commit)?;
    Ok(ImportReport {
        images: imported,
        blobs_already_stored: blobs_referenced - stored.blobs_added,
        stored,
        digests,
    })
}

fn apply_tag_override(
    images: Vec<NamedImage>,
    tag: Option<&ImageRef>,
) -> Result<Vec<NamedImage>, ImportError> {
    let Some(tag) = tag else {
        return match images.iter().find(|image| image.names.is_empty()) {
            Some(unnamed) => Err(ImportError::NoName(unnamed.digest)),
            None => Ok(images),
        };
    };
    // Docker 25+ lists one index.json entry per tag of the same image: those are one image.
    let distinct: BTreeSet<Digest> = images.iter().map(|image| image.digest).collect();
    match images.into_iter().next() {
        Some(image) if distinct.len() == 1 => Ok(vec![NamedImage {
            names: vec![tag.clone()],
            ..image
        }]),
        _ => Err(ImportError::TagForManyImages(distinct.len())),
    }
}

/// Parses a user-given image name for tagging: a tag is required, `latest` when omitted.
pub fn parse_tag_name(name: &str) -> Result<ImageRef, ImportError> {
    let invalid = |reason: String| ImportError::InvalidName {
        name: name.to_owned(),
        reason,
    };
    let mut reference: ImageRef = name
        .parse()
        .map_err(|e: shoal_protocol::ReferenceError| invalid(e.to_string()))?;
    if reference.digest.is_some() {
        return Err(invalid(
            "a name to tag with cannot carry a digest".to_owned(),
        ));
    }
    if reference.tag.is_none() {
        reference.tag = Some(Tag::latest());
    }
    Ok(reference)
}

/// Every manifest an import touches, checked, with the records to commit.
#[derive(Default)]
struct ManifestGraph {
    manifests: Vec<(Digest, ManifestRecord)>,
    digests: Vec<Digest>,
    /// Every blob and manifest checked present: exactly what the import keeps.
    referenced: BTreeSet<Digest>,
    annotation_bytes: u64,
}

impl ManifestGraph {
    /// Checks the manifest `digest` (present, declared size, parses) and everything below it.
    fn walk(
        &mut self,
        staging: &Staging,
        digest: Digest,
        media_type: &str,
        declared_size: u64,
        referenced_by: &str,
        depth: usize,
    ) -> Result<(), ImportError> {
        if self.digests.contains(&digest) {
            return Ok(());
        }
        if depth > INDEX_DEPTH_MAX || self.digests.len() >= MANIFESTS_PER_IMPORT_MAX {
            return Err(ImportError::BadLayout(format!(
                "indexes nest deeper than {INDEX_DEPTH_MAX} levels or list more than {MANIFESTS_PER_IMPORT_MAX} manifests"
            )));
        }
        self.check_present(staging, &digest, declared_size, referenced_by)?;
        let limit = shoal_protocol::manifest::MANIFEST_BYTES_MAX as u64;
        let bytes =
            staging
                .read_small(&digest, limit)?
                .ok_or_else(|| ImportError::MissingBlob {
                    digest,
                    referenced_by: referenced_by.to_owned(),
                })?;
        let parsed = ParsedManifest::parse(&bytes, Some(media_type))
            .map_err(|source| ImportError::Manifest { digest, source })?;
        self.annotation_bytes += parsed
            .annotations
            .iter()
            .map(|(key, value)| key.len() + value.len())
            .chain(parsed.artifact_type.as_ref().map(String::len))
            .sum::<usize>() as u64;
        if self.annotation_bytes > ANNOTATION_BYTES_MAX {
            return Err(ImportError::AnnotationsTooLarge(ANNOTATION_BYTES_MAX));
        }
        self.digests.push(digest);
        self.manifests.push((
            digest,
            ManifestRecord {
                media_type: parsed.media_type.clone(),
                size: bytes.len() as u64,
                artifact_type: parsed.artifact_type.clone(),
                subject: parsed.subject.as_ref().map(|subject| subject.digest),
                annotations: parsed.annotations.clone(),
            },
        ));
        let this = format!("manifest {digest}");
        for blob in &parsed.blobs {
            self.check_present(staging, &blob.digest, blob.size, &this)?;
        }
        for child in &parsed.manifests {
            self.walk(
                staging,
                child.digest,
                &child.media_type,
                child.size,
                &this,
                depth + 1,
            )?;
        }
        Ok(())
    }

    fn check_present(
        &mut self,
        staging: &Staging,
        digest: &Digest,
        declared: u64,
        referenced_by: &str,
    ) -> Result<(), ImportError> {
        match staging.size_of(digest)? {
            None => Err(ImportError::MissingBlob {
                digest: *digest,
                referenced_by: referenced_by.to_owned(),
            }),
            Some(actual) if actual != declared => Err(ImportError::SizeMismatch {
                digest: *digest,
                declared,
                actual,
                referenced_by: referenced_by.to_owned(),
            }),
            Some(_) => {
                self.referenced.insert(*digest);
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Imports `archive` into a fresh store, as `shoal import` does a file.
    fn import_bytes(archive: &[u8]) -> Result<ImportReport, ImportError> {
        let dir = tempfile::tempdir().unwrap();
        let (store, _) = Store::open(&dir.path().join("store")).unwrap();
        let path = dir.path().join("archive");
        std::fs::write(&path, archive).unwrap();
        import(&store, &path, None, &mut |_, _| true)
    }

    // Inputs that made an import hold far more memory than the archive's size, found by
    // review and replayed by every fuzz run (fuzz/regressions/import_archive/). Each is a
    // gzipped tar of a few KiB.

    /// A GNU long name of 8 MiB of zeros: the tar reader reads such entries whole, so without
    /// the header budget gigabytes would be as easy.
    #[test]
    fn a_huge_gnu_long_name_is_refused_before_it_is_held() {
        let archive =
            include_bytes!("../../../fuzz/regressions/import_archive/regression-gnu-longname-8mib");
        assert!(matches!(
            import_bytes(archive),
            Err(ImportError::HeadersTooLarge(_))
        ));
    }

    /// Seventeen `.json` files of 4 MiB of zeros each: every one within the per-file limit,
    /// together more than an import may hold.
    #[test]
    fn metadata_files_beyond_the_total_are_refused() {
        let archive =
            include_bytes!("../../../fuzz/regressions/import_archive/regression-metadata-68mib");
        assert!(matches!(
            import_bytes(archive),
            Err(ImportError::MetadataTooLarge(
                archive::SMALL_FILES_BYTES_MAX
            ))
        ));
    }

    /// An OCI layout whose index lists five manifests with a 4 MiB annotation each.
    #[test]
    fn annotations_beyond_the_total_are_refused() {
        let archive =
            include_bytes!("../../../fuzz/regressions/import_archive/regression-annotations-20mib");
        assert!(matches!(
            import_bytes(archive),
            Err(ImportError::AnnotationsTooLarge(ANNOTATION_BYTES_MAX))
        ));
    }
}
