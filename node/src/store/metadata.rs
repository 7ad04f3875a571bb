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
//! ```

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

pub fn blob_size(db: &sled::Db, digest: &Digest) -> Result<Option<u64>, StoreError> {
    let key = blob_key(digest);
    let Some(value) = db.get(&key)? else {
        return Ok(None);
    };
    let bytes: [u8; 8] = value
        .as_ref()
        .try_into()
        .map_err(|_| corrupt(&key, "size is not 8 bytes"))?;
    Ok(Some(u64::from_be_bytes(bytes)))
}

/// Removes a blob's record and, if it was a manifest, the manifest's records and every tag
/// and repository entry pointing at it, so nothing names content that is gone.
pub fn forget_blob(db: &sled::Db, digest: &Digest) -> Result<(), StoreError> {
    let mut batch = sled::Batch::default();
    batch.remove(blob_key(digest));
    batch.remove(index_key(digest));
    batch.remove(manifest_key(digest));
    for prefix in [REPO_MANIFEST, TAG] {
        for entry in db.scan_prefix(prefix) {
            let (key, value) = entry?;
            let points_here = if prefix == TAG {
                value.as_ref() == digest.as_bytes()
            } else {
                key.ends_with(digest.as_bytes())
            };
            if points_here {
                batch.remove(key);
            }
        }
    }
    db.apply_batch(batch)?;
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
    for entry in db.scan_prefix(BLOB) {
        let (key, value) = entry?;
        let size: [u8; 8] = value
            .as_ref()
            .try_into()
            .map_err(|_| corrupt(&key, "size is not 8 bytes"))?;
        blobs += 1;
        bytes += u64::from_be_bytes(size);
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
