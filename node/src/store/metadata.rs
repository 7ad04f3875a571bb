//! The metadata schema: one sled tree with prefixed keys, so that one `Batch` commits a whole
//! import atomically.
//!
//! ```text
//! b/<digest:32>               -> blob size, u64 big-endian         (the blob file is in place)
//! m/<digest:32>               -> ManifestRecord as JSON            (the digest is a manifest)
//! n/<ns>/<path>               -> ()                                (the repository exists)
//! r/<ns>/<path>\0<digest:32>  -> ()                                (the manifest is in the repo)
//! t/<ns>/<path>\0<tag>        -> <digest:32>                       (the tag points at it)
//! i/<digest:32>               -> wire-encoded ChunkIndex           (chunk hashes of a stored blob)
//! p/<digest:32>               -> wire-encoded index + bitmap       (a blob being fetched)
//! a/<blake3 of payload:32>    -> wire-encoded SignedAnnouncement   (gossip received or sent)
//! u/<digest:32>               -> last use, u64 big-endian ms since the Unix epoch (eviction)
//! k/<image reference>         -> <digest:32>                       (pinned: kept whatever the budget)
//! ```
//!
//! `u/` records are written in batches (see `usage.rs`), not on every read, and a blob without
//! one counts as never used. `k/` keys are the normalised reference the operator pinned
//! (`docker.io/team/app:1`); the value is the manifest it resolved to when pinned.

use std::collections::BTreeMap;

use shoal_protocol::{Descriptor, Digest, RepoName, Tag};

use super::StoreError;

const BLOB: &[u8] = b"b/";
const MANIFEST: &[u8] = b"m/";
const REPO: &[u8] = b"n/";
const REPO_MANIFEST: &[u8] = b"r/";
const TAG: &[u8] = b"t/";
const INDEX: &[u8] = b"i/";
const PARTIAL: &[u8] = b"p/";
pub const ANNOUNCEMENT: &[u8] = b"a/";
pub const LAST_USE: &[u8] = b"u/";
pub const PIN: &[u8] = b"k/";

/// What the store remembers about a manifest besides its bytes.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ManifestRecord {
    pub media_type: String,
    pub size: u64,
    #[serde(default)]
    pub artifact_type: Option<String>,
    #[serde(default)]
    pub subject: Option<Digest>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StoreSummary {
    pub blobs: u64,
    pub bytes: u64,
    pub manifests: u64,
    pub repositories: u64,
    pub tags: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImageSummary {
    pub repository: String,
    pub tag: String,
    pub digest: Digest,
    pub media_type: String,
}

fn key(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            key.push(0);
        }
        key.extend_from_slice(part);
    }
    key
}

pub fn blob_key(digest: &Digest) -> Vec<u8> {
    key(BLOB, &[digest.as_bytes()])
}

pub fn index_key(digest: &Digest) -> Vec<u8> {
    key(INDEX, &[digest.as_bytes()])
}

pub fn partial_key(digest: &Digest) -> Vec<u8> {
    key(PARTIAL, &[digest.as_bytes()])
}

pub fn announcement_key(id: &[u8; 32]) -> Vec<u8> {
    key(ANNOUNCEMENT, &[id])
}

pub fn last_use_key(digest: &Digest) -> Vec<u8> {
    key(LAST_USE, &[digest.as_bytes()])
}

pub fn pin_key(reference: &str) -> Vec<u8> {
    key(PIN, &[reference.as_bytes()])
}

pub fn partial_digests(db: &sled::Db) -> impl Iterator<Item = Result<Digest, StoreError>> + '_ {
    db.scan_prefix(PARTIAL).map(|entry| {
        let (key, _) = entry?;
        digest_from(&key, &key[PARTIAL.len()..])
    })
}

pub fn manifest_key(digest: &Digest) -> Vec<u8> {
    key(MANIFEST, &[digest.as_bytes()])
}

pub fn repo_key(repo: &RepoName) -> Vec<u8> {
    key(REPO, &[repo.qualified().as_bytes()])
}

pub fn repo_manifest_key(repo: &RepoName, digest: &Digest) -> Vec<u8> {
    key(
        REPO_MANIFEST,
        &[repo.qualified().as_bytes(), digest.as_bytes()],
    )
}

pub fn tag_key(repo: &RepoName, tag: &Tag) -> Vec<u8> {
    key(TAG, &[repo.qualified().as_bytes(), tag.as_str().as_bytes()])
}

fn corrupt(key: &[u8], reason: impl ToString) -> StoreError {
    StoreError::CorruptRecord {
        key: String::from_utf8_lossy(key).into_owned(),
        reason: reason.to_string(),
    }
}

fn digest_from(key: &[u8], bytes: &[u8]) -> Result<Digest, StoreError> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| corrupt(key, "digest is not 32 bytes"))?;
    Ok(Digest::from_sha256_bytes(array))
}

pub fn encode_manifest(record: &ManifestRecord) -> Vec<u8> {
    serde_json::to_vec(record).unwrap_or_default()
}

pub fn blob_digests(db: &sled::Db) -> impl Iterator<Item = Result<Digest, StoreError>> + '_ {
    db.scan_prefix(BLOB).map(|entry| {
        let (key, _) = entry?;
        digest_from(&key, &key[BLOB.len()..])
    })
}

/// Every stored blob with its size.
pub fn blob_records(db: &sled::Db) -> impl Iterator<Item = Result<(Digest, u64), StoreError>> + '_ {
    db.scan_prefix(BLOB).map(|entry| {
        let (key, value) = entry?;
        Ok((
            digest_from(&key, &key[BLOB.len()..])?,
            decode_u64(&key, &value)?,
        ))
    })
}

fn decode_u64(key: &[u8], value: &[u8]) -> Result<u64, StoreError> {
    let bytes: [u8; 8] = value
        .try_into()
        .map_err(|_| corrupt(key, "value is not 8 bytes"))?;
    Ok(u64::from_be_bytes(bytes))
}

pub fn blob_size(db: &sled::Db, digest: &Digest) -> Result<Option<u64>, StoreError> {
    let key = blob_key(digest);
    db.get(&key)?
        .map(|value| decode_u64(&key, &value))
        .transpose()
}

/// Every manifest record.
pub fn manifests(
    db: &sled::Db,
) -> impl Iterator<Item = Result<(Digest, ManifestRecord), StoreError>> + '_ {
    db.scan_prefix(MANIFEST).map(|entry| {
        let (key, value) = entry?;
        let digest = digest_from(&key, &key[MANIFEST.len()..])?;
        let record = serde_json::from_slice(&value).map_err(|error| corrupt(&key, error))?;
        Ok((digest, record))
    })
}

/// Every manifest recorded in a repository: the repository's namespace and the manifest.
pub fn repo_manifests(
    db: &sled::Db,
) -> impl Iterator<Item = Result<(String, Digest), StoreError>> + '_ {
    db.scan_prefix(REPO_MANIFEST).map(|entry| {
        let (key, _) = entry?;
        let rest = &key[REPO_MANIFEST.len()..];
        let split = rest
            .len()
            .checked_sub(33)
            .ok_or_else(|| corrupt(&key, "too short"))?;
        let qualified = std::str::from_utf8(&rest[..split]).map_err(|e| corrupt(&key, e))?;
        let namespace = qualified.split_once('/').map_or(qualified, |(ns, _)| ns);
        Ok((namespace.to_owned(), digest_from(&key, &rest[split + 1..])?))
    })
}

/// Last-use times recorded for eviction.
pub fn last_uses(db: &sled::Db) -> impl Iterator<Item = Result<(Digest, u64), StoreError>> + '_ {
    db.scan_prefix(LAST_USE).map(|entry| {
        let (key, value) = entry?;
        Ok((
            digest_from(&key, &key[LAST_USE.len()..])?,
            decode_u64(&key, &value)?,
        ))
    })
}

/// Pinned references and the manifests they resolved to.
pub fn pins(db: &sled::Db) -> impl Iterator<Item = Result<(String, Digest), StoreError>> + '_ {
    db.scan_prefix(PIN).map(|entry| {
        let (key, value) = entry?;
        let reference =
            String::from_utf8(key[PIN.len()..].to_vec()).map_err(|e| corrupt(&key, e))?;
        Ok((reference, digest_from(&key, &value)?))
    })
}

/// Removes a blob's records; see [`forget_blobs`].
pub fn forget_blob(db: &sled::Db, digest: &Digest) -> Result<(), StoreError> {
    forget_blobs(db, &[*digest])
}

/// Removes the records of `digests` in one batch: blob, index and last use, and for a manifest
/// its record and every tag and repository entry pointing at it, so nothing names content that
/// is gone. A repository left without manifests or tags is forgotten too.
pub fn forget_blobs(db: &sled::Db, digests: &[Digest]) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    let mut manifests = std::collections::HashSet::new();
    for digest in digests {
        batch.remove(blob_key(digest));
        batch.remove(index_key(digest));
        batch.remove(last_use_key(digest));
        if db.contains_key(manifest_key(digest))? {
            batch.remove(manifest_key(digest));
            manifests.insert(*digest);
        }
    }
    let mut touched_repos = std::collections::BTreeSet::new();
    if !manifests.is_empty() {
        for prefix in [REPO_MANIFEST, TAG] {
            for entry in db.scan_prefix(prefix) {
                let (key, value) = entry?;
                let target = if prefix == TAG {
                    &value[..]
                } else {
                    &key[key.len().saturating_sub(32)..]
                };
                let points_here = <[u8; 32]>::try_from(target)
                    .is_ok_and(|bytes| manifests.contains(&Digest::from_sha256_bytes(bytes)));
                if points_here {
                    let rest = &key[prefix.len()..];
                    let repo = &rest[..rest.iter().position(|b| *b == 0).unwrap_or(rest.len())];
                    touched_repos.insert(repo.to_vec());
                    batch.remove(key);
                }
            }
        }
    }
    db.apply_batch(batch)?;
    for repo in touched_repos {
        let mut prefix = repo.clone();
        prefix.push(0);
        let left = [REPO_MANIFEST, TAG]
            .iter()
            .any(|kind| db.scan_prefix(key(kind, &[&prefix])).next().is_some());
        if !left {
            db.remove(key(REPO, &[&repo]))?;
        }
    }
    Ok(())
}

pub fn manifest(db: &sled::Db, digest: &Digest) -> Result<Option<ManifestRecord>, StoreError> {
    let key = manifest_key(digest);
    let Some(value) = db.get(&key)? else {
        return Ok(None);
    };
    serde_json::from_slice(&value)
        .map(Some)
        .map_err(|error| corrupt(&key, error))
}

pub fn repo_has_manifest(
    db: &sled::Db,
    repo: &RepoName,
    digest: &Digest,
) -> Result<bool, StoreError> {
    Ok(db.contains_key(repo_manifest_key(repo, digest))?)
}

pub fn tag(db: &sled::Db, repo: &RepoName, tag: &Tag) -> Result<Option<Digest>, StoreError> {
    let key = tag_key(repo, tag);
    db.get(&key)?
        .map(|value| digest_from(&key, &value))
        .transpose()
}

fn repo_prefix(prefix: &[u8], repo: &RepoName) -> Vec<u8> {
    let mut key = key(prefix, &[repo.qualified().as_bytes()]);
    key.push(0);
    key
}

pub fn tags(db: &sled::Db, repo: &RepoName) -> Result<Option<Vec<Tag>>, StoreError> {
    if !db.contains_key(repo_key(repo))? {
        return Ok(None);
    }
    let prefix = repo_prefix(TAG, repo);
    let mut tags = Vec::new();
    for entry in db.scan_prefix(&prefix) {
        let (key, _) = entry?;
        let name = std::str::from_utf8(&key[prefix.len()..]).map_err(|e| corrupt(&key, e))?;
        tags.push(name.parse().map_err(|e| corrupt(&key, e))?);
    }
    Ok(Some(tags))
}

pub fn repositories(db: &sled::Db, namespace: &str) -> Result<Vec<String>, StoreError> {
    let prefix = key(REPO, &[format!("{namespace}/").as_bytes()]);
    db.scan_prefix(&prefix)
        .map(|entry| {
            let (key, _) = entry?;
            String::from_utf8(key[prefix.len()..].to_vec()).map_err(|e| corrupt(&key, e))
        })
        .collect()
}

pub fn referrers(
    db: &sled::Db,
    repo: &RepoName,
    subject: &Digest,
) -> Result<Option<Vec<Descriptor>>, StoreError> {
    if !db.contains_key(repo_key(repo))? {
        return Ok(None);
    }
    let prefix = repo_prefix(REPO_MANIFEST, repo);
    let mut found = Vec::new();
    for entry in db.scan_prefix(&prefix) {
        let (key, _) = entry?;
        let digest = digest_from(&key, &key[prefix.len()..])?;
        if let Some(record) = manifest(db, &digest)?
            && record.subject == Some(*subject)
        {
            found.push(Descriptor {
                media_type: record.media_type,
                digest,
                size: record.size,
                artifact_type: record.artifact_type,
                platform: None,
                annotations: record.annotations,
            });
        }
    }
    Ok(Some(found))
}

fn count(db: &sled::Db, prefix: &[u8]) -> u64 {
    db.scan_prefix(prefix).keys().count() as u64
}

pub fn summary(db: &sled::Db) -> Result<StoreSummary, StoreError> {
    let mut blobs = 0;
    let mut bytes = 0;
    for record in blob_records(db) {
        let (_, size) = record?;
        blobs += 1;
        bytes += size;
    }
    Ok(StoreSummary {
        blobs,
        bytes,
        manifests: count(db, MANIFEST),
        repositories: count(db, REPO),
        tags: count(db, TAG),
    })
}

pub fn images(db: &sled::Db) -> Result<Vec<ImageSummary>, StoreError> {
    let mut images = Vec::new();
    for entry in db.scan_prefix(TAG) {
        let (key, value) = entry?;
        let rest = &key[TAG.len()..];
        let split = rest
            .iter()
            .position(|b| *b == 0)
            .ok_or_else(|| corrupt(&key, "no separator"))?;
        let repository = String::from_utf8(rest[..split].to_vec()).map_err(|e| corrupt(&key, e))?;
        let tag = String::from_utf8(rest[split + 1..].to_vec()).map_err(|e| corrupt(&key, e))?;
        let digest = digest_from(&key, &value)?;
        let media_type = manifest(db, &digest)?
            .map(|record| record.media_type)
            .unwrap_or_default();
        images.push(ImageSummary {
            repository,
            tag,
            digest,
            media_type,
        });
    }
    Ok(images)
}
