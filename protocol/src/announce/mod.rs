//! Signed image announcements: "publisher P says `repository:tag` is manifest M, and here are
//! the chunk-index roots of everything it references".
//!
//! Data flow: a publishing node builds an [`Announcement`] after import, signs it with its
//! libp2p identity key ([`SignedAnnouncement::sign`]) and gossips the wire encoding of the
//! [`SignedAnnouncement`]. A receiving node decodes it with [`SIGNED_ANNOUNCEMENT_BYTES_MAX`],
//! calls [`SignedAnnouncement::verify`] (key, signature, payload limit, field validation) and
//! inserts the resulting [`VerifiedAnnouncement`] into its [`AnnouncementBook`] together with
//! whether it trusts the publisher. Tags then resolve from the book; the `index_roots` let the
//! node check chunk indexes fetched from any peer.
//!
//! Not for: deciding trust (the node's configuration does; the book only applies it), content
//! addressed by digest (verified by hashing, so any peer may serve it), or transport (gossip and
//! request-response are the node's business).

mod book;

pub use book::{
    ANNOUNCEMENT_PAGE_BYTES_MAX, ANNOUNCEMENTS_MAX, AnnouncementBook, AnnouncementCursor,
    AnnouncementPage, BookCounters, InsertOutcome,
};

use libp2p_identity::{Keypair, PeerId, PublicKey};

use crate::codec::{self as wire, WireError};
use crate::digest::Digest;
use crate::manifest::MANIFEST_BYTES_MAX;
use crate::media_type;
use crate::reference::{ReferenceError, RepoName, Tag};

/// The largest encoded [`Announcement`]. An entry of `index_roots` takes 64 bytes, so this
/// allows about 4,000 manifests and blobs per image: far above real multi-platform images,
/// low enough that a hostile publisher cannot make every node hold megabytes per tag.
pub const ANNOUNCEMENT_BYTES_MAX: usize = 256 * 1024;

/// The largest publisher key accepted: an ed25519 key in libp2p's protobuf encoding is 36
/// bytes; 1 KiB leaves room for other key types without letting keys bloat messages.
pub const PUBLISHER_KEY_BYTES_MAX: usize = 1024;

/// The largest signature accepted (ed25519: 64 bytes).
pub const SIGNATURE_BYTES_MAX: usize = 1024;

/// The largest wire frame of a [`SignedAnnouncement`], the limit for gossip messages.
pub const SIGNED_ANNOUNCEMENT_BYTES_MAX: usize =
    ANNOUNCEMENT_BYTES_MAX + PUBLISHER_KEY_BYTES_MAX + SIGNATURE_BYTES_MAX + 64;

/// Prefixed to the payload before signing, so a signature made for an announcement can never
/// be replayed as a signature over anything else the same key signs.
pub const SIGNING_DOMAIN: &[u8] = b"shoal-announcement-v1";

#[derive(Debug, thiserror::Error)]
pub enum AnnounceError {
    #[error("announcement payload is {bytes} bytes, more than the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
    #[error("publisher key is not a valid libp2p public key")]
    PublisherKey(#[source] Option<libp2p_identity::DecodingError>),
    #[error("announcement signature does not verify")]
    BadSignature,
    #[error("signing the announcement failed")]
    Signing(#[source] libp2p_identity::SigningError),
    #[error("announcement payload does not decode")]
    Wire(#[from] WireError),
    #[error("announced repository {repository:?} is not a qualified repository name")]
    Repository {
        repository: String,
        #[source]
        source: ReferenceError,
    },
    #[error("announced media type {0:?} is not a manifest media type")]
    MediaType(String),
    #[error("announced manifest size {0} is outside 1..={MANIFEST_BYTES_MAX}")]
    ManifestSize(u64),
    #[error("index roots must be sorted by digest without duplicates")]
    UnsortedRoots,
    #[error("index roots do not include the announced manifest {0}")]
    MissingManifestRoot(Digest),
}

/// What a publisher states about one tag. Sequence numbers are per publisher and increase with
/// every announcement it makes; `time_unix_ms` is the publisher's clock when it signed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Announcement {
    /// A qualified repository name, `namespace/path` as [`RepoName::qualified`] prints it.
    pub repository: String,
    pub tag: Tag,
    pub manifest: Digest,
    pub media_type: String,
    pub size: u64,
    pub sequence: u64,
    pub time_unix_ms: u64,
    /// The chunk-index root of the manifest and of every blob and child manifest of the image,
    /// sorted by digest without duplicates ([`Announcement::normalize_roots`] does that).
    pub index_roots: Vec<(Digest, [u8; 32])>,
}

impl Announcement {
    /// Sorts `index_roots` by digest and drops exact duplicates; a digest with two different
    /// roots stays and fails validation.
    pub fn normalize_roots(&mut self) {
        self.index_roots.sort_unstable();
        self.index_roots.dedup();
    }

    /// The repository as a checked name.
    pub fn repo_name(&self) -> Result<RepoName, AnnounceError> {
        RepoName::from_qualified(&self.repository).map_err(|source| AnnounceError::Repository {
            repository: self.repository.clone(),
            source,
        })
    }

    /// The announced chunk-index root of `digest`, if the image contains it.
    pub fn index_root(&self, digest: &Digest) -> Option<[u8; 32]> {
        self.index_roots
            .binary_search_by(|(d, _)| d.cmp(digest))
            .ok()
            .map(|i| self.index_roots[i].1)
    }

    /// Checks every field a peer could get wrong. The tag and digests were checked when they
    /// were parsed or decoded.
    pub fn validate(&self) -> Result<(), AnnounceError> {
        self.repo_name()?;
        if !media_type::is_manifest(&self.media_type) {
            return Err(AnnounceError::MediaType(self.media_type.clone()));
        }
        if self.size == 0 || self.size > MANIFEST_BYTES_MAX as u64 {
            return Err(AnnounceError::ManifestSize(self.size));
        }
        if !self.index_roots.windows(2).all(|w| w[0].0 < w[1].0) {
            return Err(AnnounceError::UnsortedRoots);
        }
        if self.index_root(&self.manifest).is_none() {
            return Err(AnnounceError::MissingManifestRoot(self.manifest));
        }
        Ok(())
    }
}

/// An announcement as it travels: the exact payload bytes that were signed, the publisher's
/// public key (libp2p protobuf encoding) and the signature. Keeping the signed bytes, rather
/// than re-encoding, lets any node pass an announcement on unchanged.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SignedAnnouncement {
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub publisher: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub signature: Vec<u8>,
}

impl std::fmt::Debug for SignedAnnouncement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedAnnouncement")
            .field("payload_bytes", &self.payload.len())
            .field("publisher", &hex::encode(&self.publisher))
            .field("signature_bytes", &self.signature.len())
            .finish()
    }
}

fn signed_message(payload: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(SIGNING_DOMAIN.len() + payload.len());
    message.extend_from_slice(SIGNING_DOMAIN);
    message.extend_from_slice(payload);
    message
}

impl SignedAnnouncement {
    /// Validates, encodes and signs `announcement` with `keypair`.
    pub fn sign(announcement: &Announcement, keypair: &Keypair) -> Result<Self, AnnounceError> {
        announcement.validate()?;
        let payload = wire::encode(announcement)?;
        if payload.len() > ANNOUNCEMENT_BYTES_MAX {
            return Err(AnnounceError::TooLarge {
                bytes: payload.len(),
                limit: ANNOUNCEMENT_BYTES_MAX,
            });
        }
        let signature = keypair
            .sign(&signed_message(&payload))
            .map_err(AnnounceError::Signing)?;
        Ok(SignedAnnouncement {
            payload,
            publisher: keypair.public().encode_protobuf(),
            signature,
        })
    }

    /// Checks sizes, decodes the publisher key, verifies the signature over the domain-prefixed
    /// payload, and only then decodes and validates the payload.
    pub fn verify(&self) -> Result<VerifiedAnnouncement, AnnounceError> {
        if self.payload.len() > ANNOUNCEMENT_BYTES_MAX {
            return Err(AnnounceError::TooLarge {
                bytes: self.payload.len(),
                limit: ANNOUNCEMENT_BYTES_MAX,
            });
        }
        if self.publisher.len() > PUBLISHER_KEY_BYTES_MAX {
            return Err(AnnounceError::PublisherKey(None));
        }
        if self.signature.len() > SIGNATURE_BYTES_MAX {
            return Err(AnnounceError::BadSignature);
        }
        let key = PublicKey::try_decode_protobuf(&self.publisher)
            .map_err(|e| AnnounceError::PublisherKey(Some(e)))?;
        if !key.verify(&signed_message(&self.payload), &self.signature) {
            return Err(AnnounceError::BadSignature);
        }
        let announcement: Announcement = wire::decode(&self.payload, ANNOUNCEMENT_BYTES_MAX)?;
        announcement.validate()?;
        Ok(VerifiedAnnouncement {
            announcement,
            publisher: key.to_peer_id(),
            signed: self.clone(),
        })
    }

    /// The wire frame, as gossiped.
    pub fn encode(&self) -> Result<Vec<u8>, WireError> {
        wire::encode(self)
    }

    /// Decodes a gossiped frame with [`SIGNED_ANNOUNCEMENT_BYTES_MAX`]; call `verify` next.
    pub fn decode(frame: &[u8]) -> Result<Self, WireError> {
        wire::decode(frame, SIGNED_ANNOUNCEMENT_BYTES_MAX)
    }
}

/// An announcement whose signature verified and whose fields validated. Only
/// [`SignedAnnouncement::verify`] makes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAnnouncement {
    announcement: Announcement,
    publisher: PeerId,
    signed: SignedAnnouncement,
}

impl VerifiedAnnouncement {
    pub fn announcement(&self) -> &Announcement {
        &self.announcement
    }

    /// The peer id of the key that signed it.
    pub fn publisher(&self) -> &PeerId {
        &self.publisher
    }

    /// The original signed form, to pass on unchanged.
    pub fn signed(&self) -> &SignedAnnouncement {
        &self.signed
    }
}

#[cfg(test)]
mod tests;
