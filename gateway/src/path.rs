//! Decoding `/v2/...` request paths. Repository names contain slashes, so the name is
//! everything between `/v2/` and the last endpoint keyword.

use shoal_protocol::{Digest, DigestError, ReferenceError, TagOrDigest};

/// The endpoint a path addresses, with its still-unvalidated name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    Base,
    Catalog,
    Manifest {
        name: String,
        reference: TagOrDigest,
    },
    Blob {
        name: String,
        digest: Digest,
    },
    /// `/v2/<name>/blobs/uploads/...`: exists only to be refused as a write.
    Upload {
        name: String,
    },
    Tags {
        name: String,
    },
    Referrers {
        name: String,
        digest: Digest,
    },
}

/// Why a path is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("no such endpoint")]
    NotFound,
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// A manifest reference that is neither a tag nor a digest. No manifest can have it, so
    /// the gateway answers as for any missing manifest (404, as the distribution spec's end-3
    /// lists no other failure); the name is kept so that an unknown repository still reads
    /// `NAME_UNKNOWN`.
    #[error("{error}")]
    Reference { name: String, error: ReferenceError },
}

/// Longest request path considered; longer ones cannot hold a valid name and reference.
const PATH_BYTES_MAX: usize = 1024;

impl Route {
    /// The repository name the route addresses, if any.
    pub fn name(&self) -> Option<&str> {
        match self {
            Route::Base | Route::Catalog => None,
            Route::Manifest { name, .. }
            | Route::Blob { name, .. }
            | Route::Upload { name }
            | Route::Tags { name }
            | Route::Referrers { name, .. } => Some(name),
        }
    }

    pub fn parse(path: &str) -> Result<Route, PathError> {
        if path.len() > PATH_BYTES_MAX {
            return Err(PathError::NotFound);
        }
        let Some(rest) = path.strip_prefix("/v2/") else {
            return if path == "/v2" {
                Ok(Route::Base)
            } else {
                Err(PathError::NotFound)
            };
        };
        if rest.is_empty() {
            return Ok(Route::Base);
        }
        if rest == "_catalog" {
            return Ok(Route::Catalog);
        }
        if let Some(name) = rest.strip_suffix("/tags/list") {
            return Ok(Route::Tags {
                name: name.to_owned(),
            });
        }
        if let Some(i) = rest.find("/blobs/uploads") {
            let tail = &rest[i + "/blobs/uploads".len()..];
            if tail.is_empty() || tail.starts_with('/') {
                return Ok(Route::Upload {
                    name: rest[..i].to_owned(),
                });
            }
        }
        let (head, last) = rest.rsplit_once('/').ok_or(PathError::NotFound)?;
        let (name, kind) = head.rsplit_once('/').ok_or(PathError::NotFound)?;
        match kind {
            "manifests" => {
                let reference = last.parse().map_err(|error| match error {
                    ReferenceError::Digest(digest) => PathError::Digest(digest),
                    error => PathError::Reference {
                        name: name.to_owned(),
                        error,
                    },
                })?;
                Ok(Route::Manifest {
                    name: name.to_owned(),
                    reference,
                })
            }
            "blobs" => Ok(Route::Blob {
                name: name.to_owned(),
                digest: last.parse()?,
            }),
            "referrers" => Ok(Route::Referrers {
                name: name.to_owned(),
                digest: last.parse()?,
            }),
            _ => Err(PathError::NotFound),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn paths_decode_to_routes() {
        let digest: Digest = D.parse().unwrap();
        assert_eq!(Route::parse("/v2/"), Ok(Route::Base));
        assert_eq!(Route::parse("/v2"), Ok(Route::Base));
        assert_eq!(Route::parse("/v2/_catalog"), Ok(Route::Catalog));
        assert_eq!(
            Route::parse("/v2/a/b/c/manifests/latest"),
            Ok(Route::Manifest {
                name: "a/b/c".into(),
                reference: TagOrDigest::Tag("latest".parse().unwrap())
            })
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/manifests/{D}")),
            Ok(Route::Manifest {
                name: "x".into(),
                reference: TagOrDigest::Digest(digest)
            })
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/blobs/{D}")),
            Ok(Route::Blob {
                name: "x".into(),
                digest
            })
        );
        assert_eq!(
            Route::parse(&format!("/v2/x/referrers/{D}")),
            Ok(Route::Referrers {
                name: "x".into(),
                digest
            })
        );
        assert_eq!(
            Route::parse("/v2/a/b/tags/list"),
            Ok(Route::Tags { name: "a/b".into() })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/"),
            Ok(Route::Upload { name: "a".into() })
        );
        assert_eq!(
            Route::parse("/v2/a/blobs/uploads/123"),
            Ok(Route::Upload { name: "a".into() })
        );
        // A repository may itself be called `manifests` or `blobs`.
        assert_eq!(
            Route::parse("/v2/blobs/manifests/v1"),
            Ok(Route::Manifest {
                name: "blobs".into(),
                reference: TagOrDigest::Tag("v1".parse().unwrap())
            })
        );
    }

    #[test]
    fn bad_paths_are_errors() {
        assert_eq!(Route::parse("/v1/"), Err(PathError::NotFound));
        assert_eq!(Route::parse("/v2/x"), Err(PathError::NotFound));
        assert_eq!(Route::parse("/v2/x/other/y"), Err(PathError::NotFound));
        assert!(matches!(
            Route::parse("/v2/x/blobs/sha256:abc"),
            Err(PathError::Digest(_))
        ));
        assert!(matches!(
            Route::parse("/v2/x/manifests/sha256:abc"),
            Err(PathError::Digest(_))
        ));
        assert!(matches!(
            Route::parse("/v2/x/manifests/-bad"),
            Err(PathError::Reference { name, .. }) if name == "x"
        ));
        assert_eq!(
            Route::parse(&format!("/v2/{}/tags/list", "a".repeat(2000))),
            Err(PathError::NotFound)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_paths_never_panic(path in "/v2/.{0,120}") {
            let _ = Route::parse(&path);
        }
    }
}
