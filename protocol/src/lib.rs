//! Shoal's protocol crate: the pure data types every other crate agrees on.
//!
//! It holds content digests, image references and repository names, the OCI and Docker media
//! types, and the manifest parser that finds which blobs an image needs. It does no I/O at all:
//! callers hand it bytes and get values back, which is what lets the node, the gateway and the
//! simulator share it.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod digest;
pub mod manifest;
pub mod media_type;
pub mod reference;

pub use digest::{Digest, DigestError, Sha256Writer};
pub use manifest::{Descriptor, ManifestError, ParsedManifest};
pub use reference::{ImageRef, ReferenceError, RepoName, Tag, TagOrDigest};
