//! The body of every fuzz target, as plain functions over the input bytes, so that two drivers
//! run the same checks: libFuzzer (`fuzz_targets/<name>.rs`, nightly, `scripts/fuzz-smoke` and
//! docs/fuzzing.md) and an ordinary stable test that replays every committed input
//! (`node/tests/fuzz_replay.rs`, which includes this file by path, in `scripts/test`).
//!
//! Each function panics exactly when its target has found something: a decoder panicked, or
//! what it accepted breaks the invariant the target states. Returning early means "input
//! refused", which is fine.

use std::sync::OnceLock;

use libp2p_identity::Keypair;
use shoal_gateway::path::Route;
use shoal_gateway::range::{self, RangeRequest};
use shoal_node::fuzzing::ImportHarness;
use shoal_protocol::announce::{ANNOUNCEMENT_BYTES_MAX, Announcement};
use shoal_protocol::chunk::INDEX_BYTES_MAX;
use shoal_protocol::reference::normalize_namespace;
use shoal_protocol::wire::REQUEST_BYTES_MAX;
use shoal_protocol::{
    ChunkIndex, Digest, ImageRef, ParsedManifest, RepoName, Request, Response, SignedAnnouncement,
    Tag, TagOrDigest, media_type, wire,
};

/// One target's checks over one input; a panic is a finding.
pub type Check = fn(&[u8]);

/// Every target by the name of its binary, corpus directory (`corpus/<name>/`) and regression
/// directory (`regressions/<name>/`).
pub const TARGETS: [(&str, Check); 9] = [
    ("wire_request", wire_request),
    ("wire_response", wire_response),
    ("announcement", announcement),
    ("chunk_index", chunk_index),
    ("manifest", manifest),
    ("import_archive", import_archive),
    ("gateway_path", gateway_path),
    ("reference", reference),
    ("range", range),
];

/// A peer's request frame, as `network/codec.rs` decodes it: whatever decodes must survive a
/// re-encoding unchanged and fit the request limit.
pub fn wire_request(frame: &[u8]) {
    let Ok(request) = Request::decode(frame) else {
        return;
    };
    let encoded = request.encode().expect("a decoded request encodes");
    assert!(encoded.len() <= REQUEST_BYTES_MAX);
    assert_eq!(Request::decode(&encoded).expect("re-decodes"), request);
}

/// A peer's response frame, as `network/codec.rs` decodes it. Whatever decodes must keep its
/// invariants (a `Have` bitmap within its length, an index of the right shape, announcements
/// within their limits) and survive a re-encoding unchanged.
pub fn wire_response(frame: &[u8]) {
    let Ok(response) = Response::decode(frame) else {
        return;
    };
    match &response {
        Response::Have { chunks, .. } => {
            assert_eq!(chunks.iter_ones().count() as u32, chunks.count_ones());
            assert!(chunks.count_ones() <= chunks.len());
        }
        Response::Index(index) => index.validate().expect("decoded indexes are valid"),
        Response::Announcements { announcements, .. } => {
            for signed in announcements {
                let _ = signed.verify();
            }
        }
        _ => {}
    }
    let encoded = response.encode().expect("a decoded response encodes");
    assert_eq!(Response::decode(&encoded).expect("re-decodes"), response);
}

fn keypair() -> &'static Keypair {
    static KEYPAIR: OnceLock<Keypair> = OnceLock::new();
    KEYPAIR.get_or_init(|| Keypair::ed25519_from_bytes([7; 32]).expect("a valid ed25519 seed"))
}

/// A gossiped announcement frame, as `node/src/announce.rs` takes it: decode, then verify the
/// publisher key and signature, then decode and validate the signed payload. Random bytes
/// almost never carry a good signature, so the payload decoder is also driven directly with
/// the payload of every frame that decodes; a payload that validates must sign and verify
/// back to itself.
pub fn announcement(frame: &[u8]) {
    let Ok(signed) = SignedAnnouncement::decode(frame) else {
        return;
    };
    if let Ok(verified) = signed.verify() {
        assert_eq!(verified.signed(), &signed);
        verified
            .announcement()
            .validate()
            .expect("verified announcements are valid");
    }
    let Ok(announcement) = wire::decode::<Announcement>(&signed.payload, ANNOUNCEMENT_BYTES_MAX)
    else {
        return;
    };
    if announcement.validate().is_err() {
        return;
    }
    let resigned = SignedAnnouncement::sign(&announcement, keypair()).expect("a valid one signs");
    let verified = resigned.verify().expect("our own signature verifies");
    assert_eq!(verified.announcement(), &announcement);
    assert_eq!(
        SignedAnnouncement::decode(&resigned.encode().expect("encodes")).expect("decodes"),
        resigned
    );
}

/// A chunk index as a peer sends it (the body of `Response::Index`): whatever decodes has the
/// shape its invariant promises, so every chunk's range and length are in bounds, and
/// verifying a chunk or computing the root never panics.
pub fn chunk_index(frame: &[u8]) {
    let Ok(index) = wire::decode::<ChunkIndex>(frame, INDEX_BYTES_MAX + 1) else {
        return;
    };
    index.validate().expect("decoded indexes are valid");
    let count = index.chunk_count();
    assert_eq!(count == 0, index.blob_size() == 0);
    let mut covered = 0u64;
    for chunk in [0, count / 2, count.saturating_sub(1)] {
        if chunk >= count {
            continue;
        }
        let range = index.chunk_range(chunk).expect("in range");
        assert!(range.start < range.end && range.end <= index.blob_size());
        assert_eq!(index.chunk_at(range.start), Some(chunk));
        assert!(index.chunk_len(chunk).expect("in range") <= index.chunk_bytes());
        assert!(index.verify_chunk(chunk, &[]).is_err());
        covered = covered.max(range.end);
    }
    if count > 0 {
        assert_eq!(covered, index.blob_size());
    }
    assert!(index.chunk_range(count).is_err());
    assert_eq!(index.chunk_at(index.blob_size()), None);
    index
        .verify_root(&index.root())
        .expect("an index matches its own root");
    let encoded = wire::encode(&index).expect("encodes");
    assert_eq!(
        wire::decode::<ChunkIndex>(&encoded, INDEX_BYTES_MAX + 1).expect("re-decodes"),
        index
    );
}

/// What a referring descriptor may claim a manifest to be; the input's first byte picks one.
const CLAIMED_MEDIA_TYPES: [Option<&str>; 5] = [
    None,
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some("application/octet-stream"),
];

/// A manifest or index as it arrives from a peer, an upstream registry or an import, parsed
/// with and without the media type the referring descriptor claims.
pub fn manifest(data: &[u8]) {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let expected = CLAIMED_MEDIA_TYPES[usize::from(selector) % CLAIMED_MEDIA_TYPES.len()];
    let Ok(parsed) = ParsedManifest::parse(bytes, expected) else {
        return;
    };
    assert!(media_type::is_manifest(&parsed.media_type));
    if let Some(expected) = expected {
        assert_eq!(parsed.media_type, expected);
    }
    if media_type::is_index(&parsed.media_type) {
        assert!(parsed.blobs.is_empty());
    } else {
        assert!(parsed.manifests.is_empty() && !parsed.blobs.is_empty());
    }
}

/// Scratch directories are `<tmpfs or temp>/<prefix><pid>`, so stale ones can be found.
const IMPORT_DIR_PREFIX: &str = "shoal-fuzz-import-";

/// libFuzzer exits without running destructors, so each run's scratch directory is left
/// behind: remove those of processes that are gone.
fn remove_stale(base: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|name| name.strip_prefix(IMPORT_DIR_PREFIX))
        else {
            continue;
        };
        if !std::path::Path::new("/proc").join(pid).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

fn harness() -> &'static ImportHarness {
    static HARNESS: OnceLock<ImportHarness> = OnceLock::new();
    HARNESS.get_or_init(|| {
        // tmpfs when there is one: the importer fsyncs every blob it stages.
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_owned()
        } else {
            std::env::temp_dir()
        };
        remove_stale(&base);
        let dir = base.join(format!("{IMPORT_DIR_PREFIX}{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a scratch directory");
        ImportHarness::open(&dir).expect("a store in the scratch directory")
    })
}

/// `shoal import` of a tar or gzipped tar whose bytes the fuzzer chooses, through the node's
/// own importer and store ([`shoal_node::fuzzing::ImportHarness`]): a refusal is fine, a panic
/// or an accepted import whose blobs are not intact in the store is not.
pub fn import_archive(archive: &[u8]) {
    let _ = harness().import(archive);
}

/// A `/v2/...` request path and `ns` parameter as the gateway decodes them: route, then the
/// repository name within the namespace.
pub fn gateway_path(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    // An optional namespace after a newline, as `?ns=` would give it.
    let (path, namespace) = text.split_once('\n').unwrap_or((text, "docker.io"));
    let Ok(route) = Route::parse(path) else {
        return;
    };
    let name = match &route {
        Route::Base | Route::Catalog => return,
        Route::Manifest { name, .. }
        | Route::Blob { name, .. }
        | Route::Upload { name }
        | Route::Tags { name }
        | Route::Referrers { name, .. } => name,
    };
    assert!(path.contains(name.as_str()));
    if let Ok(repo) = RepoName::new(namespace, name) {
        assert_eq!(repo.path(), name);
        assert_eq!(
            RepoName::from_qualified(&repo.qualified()).expect("qualified names round-trip"),
            repo
        );
    }
}

/// Image references, qualified repository names, tags, digests and namespaces as users, the
/// admin socket, peers' announcements and the gateway give them: whatever parses prints back to
/// a string that parses to the same value.
pub fn reference(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(reference) = text.parse::<ImageRef>() {
        let printed = reference.to_string();
        assert_eq!(
            printed.parse::<ImageRef>().as_ref(),
            Ok(&reference),
            "{printed}"
        );
        let _ = reference.target();
    }
    if let Ok(repo) = RepoName::from_qualified(text) {
        assert_eq!(repo.qualified(), text);
    }
    if let Ok(tag) = text.parse::<Tag>() {
        assert_eq!(tag.as_str(), text);
    }
    if let Ok(target) = text.parse::<TagOrDigest>() {
        assert_eq!(
            target.to_string().parse::<TagOrDigest>().as_ref(),
            Ok(&target)
        );
    }
    if let Ok(digest) = text.parse::<Digest>() {
        assert_eq!(digest.to_string().parse::<Digest>().as_ref(), Ok(&digest));
    }
    if let Ok(namespace) = normalize_namespace(text) {
        assert_eq!(normalize_namespace(&namespace).as_ref(), Ok(&namespace));
    }
}

/// A `Range` header against a blob size: a partial answer always lies within the blob.
pub fn range(data: &[u8]) {
    // The blob size in the first 8 bytes (little-endian), the header after them.
    let Some((size, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    let size = u64::from_le_bytes(*size);
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    match range::parse(Some(header), size) {
        RangeRequest::Partial(range) => {
            assert!(range.start < range.end, "{header:?} of {size}: {range:?}");
            assert!(range.end <= size, "{header:?} of {size}: {range:?}");
        }
        RangeRequest::Unsatisfiable | RangeRequest::Full => {}
    }
}
