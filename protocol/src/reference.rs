//! Repository names, tags and image references, checked against the OCI distribution grammar.
//!
//! Every repository lives in a *namespace*: the registry host it belongs to (`docker.io`,
//! `ghcr.io`, `localhost:5000`). References are normalised the way Docker does it, so
//! `alpine:3.20` is `docker.io/library/alpine:3.20` and `team/app:1` is `docker.io/team/app:1`.
//! The gateway answers `/v2/library/alpine/...?ns=docker.io` for the first; without `?ns=` it
//! assumes the default namespace.

use std::fmt;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The namespace of references that name no registry host, as Docker assumes.
pub const DEFAULT_NAMESPACE: &str = "docker.io";

/// Longest repository name accepted, host included, as the distribution registry limits it.
pub const REPO_NAME_BYTES_MAX: usize = 255;

const TAG_BYTES_MAX: usize = 128;

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ReferenceError {
    #[error("repository name {0:?} does not match the OCI name grammar")]
    InvalidName(String),
    #[error("tag {0:?} does not match the OCI tag grammar")]
    InvalidTag(String),
    #[error("namespace {0:?} is not a registry host name")]
    InvalidNamespace(String),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

/// A repository within a namespace, such as `docker.io` + `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct RepoName {
    namespace: String,
    path: String,
}

impl RepoName {
    /// Checks `path` against the distribution grammar
    /// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
    pub fn new(namespace: &str, path: &str) -> Result<Self, ReferenceError> {
        let namespace = normalize_namespace(namespace)?;
        if path.is_empty()
            || namespace.len() + 1 + path.len() > REPO_NAME_BYTES_MAX
            || !path.split('/').all(is_path_component)
        {
            return Err(ReferenceError::InvalidName(path.to_owned()));
        }
        Ok(RepoName {
            namespace,
            path: path.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The repository path without its namespace, as it appears in `/v2/<path>/...`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `namespace/path`, unique across namespaces; the key the store files it under.
    pub fn qualified(&self) -> String {
        format!("{}/{}", self.namespace, self.path)
    }

    /// Parses the output of [`RepoName::qualified`] back, refusing any other spelling (an
    /// upper-case host, a Docker Hub alias, a missing namespace), so a qualified name received
    /// from a peer is a unique key.
    pub fn from_qualified(qualified: &str) -> Result<Self, ReferenceError> {
        let Some((namespace, path)) = qualified.split_once('/') else {
            return Err(ReferenceError::InvalidName(qualified.to_owned()));
        };
        let name = RepoName::new(namespace, path)?;
        if name.namespace != namespace {
            return Err(ReferenceError::InvalidNamespace(namespace.to_owned()));
        }
        Ok(name)
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.path)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

fn is_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if bytes.is_empty() || !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
        return false;
    }
    // Separators between alphanumeric runs: one `.`, one or two `_`, or any number of `-`.
    let mut i = 0;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && !alnum(bytes[i]) {
            i += 1;
        }
        let separator = &component[start..i];
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.bytes().all(|b| b == b'-');
        if !valid {
            return false;
        }
    }
    true
}

/// Lower-cases a registry host and folds Docker Hub's aliases into `docker.io`.
pub fn normalize_namespace(namespace: &str) -> Result<String, ReferenceError> {
    let lower = namespace.to_ascii_lowercase();
    let valid = !lower.is_empty()
        && lower.len() <= REPO_NAME_BYTES_MAX
        && lower
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
        && !lower.starts_with(['.', '-', ':']);
    if !valid {
        return Err(ReferenceError::InvalidNamespace(namespace.to_owned()));
    }
    Ok(match lower.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DEFAULT_NAMESPACE.to_owned()
        }
        _ => lower,
    })
}

/// A tag: `[A-Za-z0-9_][A-Za-z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Tag(String);

impl Tag {
    /// The tag Docker assumes when a reference names none.
    pub fn latest() -> Tag {
        Tag("latest".to_owned())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Tag {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= TAG_BYTES_MAX
            && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(b));
        if valid {
            Ok(Tag(s.to_owned()))
        } else {
            Err(ReferenceError::InvalidTag(s.to_owned()))
        }
    }
}

impl TryFrom<String> for Tag {
    type Error = ReferenceError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Tag> for String {
    fn from(tag: Tag) -> String {
        tag.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// The `<reference>` of `/v2/<name>/manifests/<reference>`: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TagOrDigest {
    Tag(Tag),
    Digest(Digest),
}

impl FromStr for TagOrDigest {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.contains(':') {
            Ok(TagOrDigest::Digest(s.parse()?))
        } else {
            Ok(TagOrDigest::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for TagOrDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TagOrDigest::Tag(tag) => tag.fmt(f),
            TagOrDigest::Digest(digest) => digest.fmt(f),
        }
    }
}

/// A full image reference as users type it: `[host/]path[:tag][@digest]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    pub repo: RepoName,
    pub tag: Option<Tag>,
    pub digest: Option<Digest>,
}

impl ImageRef {
    /// The tag or digest to resolve: the digest when both are given, `latest` when neither is.
    pub fn target(&self) -> TagOrDigest {
        match (&self.digest, &self.tag) {
            (Some(digest), _) => TagOrDigest::Digest(*digest),
            (None, Some(tag)) => TagOrDigest::Tag(tag.clone()),
            (None, None) => TagOrDigest::Tag(Tag::latest()),
        }
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (rest, digest) = match s.split_once('@') {
            Some((rest, digest)) => (rest, Some(digest.parse::<Digest>()?)),
            None => (s, None),
        };
        // A `:` after the last `/` separates the tag; one before it belongs to a host port.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].parse::<Tag>()?),
            ),
            None => (rest, None),
        };
        let (namespace, path) = match name.split_once('/') {
            Some((host, path))
                if host.contains('.') || host.contains(':') || host == "localhost" =>
            {
                (host, path.to_owned())
            }
            _ => (DEFAULT_NAMESPACE, name.to_owned()),
        };
        let namespace = normalize_namespace(namespace)?;
        let path = if namespace == DEFAULT_NAMESPACE && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        Ok(ImageRef {
            repo: RepoName::new(&namespace, &path)?,
            tag,
            digest,
        })
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.repo)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn repository_names_follow_the_spec_grammar() {
        for good in [
            "a",
            "library/alpine",
            "a/b/c",
            "my-app",
            "my--app",
            "a.b",
            "a_b",
            "a__b",
            "0x/y9",
        ] {
            assert!(RepoName::new("docker.io", good).is_ok(), "{good}");
        }
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a___b", "a._b", "a b", "../x",
            "a/../b",
        ] {
            assert_eq!(
                RepoName::new("docker.io", bad),
                Err(ReferenceError::InvalidName(bad.to_owned())),
                "{bad}"
            );
        }
        assert!(RepoName::new("docker.io", &"a".repeat(300)).is_err());
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for good in ["latest", "3.20", "_x", "v1.0-rc_2", &"a".repeat(128)] {
            assert!(good.parse::<Tag>().is_ok(), "{good}");
        }
        for bad in ["", ".a", "-a", "a:b", "a/b", &"a".repeat(129)] {
            assert!(bad.parse::<Tag>().is_err(), "{bad}");
        }
    }

    #[test]
    fn references_normalise_like_docker() {
        let cases = [
            ("alpine", "docker.io/library/alpine", None, None),
            (
                "alpine:3.20",
                "docker.io/library/alpine",
                Some("3.20"),
                None,
            ),
            (
                "docker.io/library/alpine:3.20",
                "docker.io/library/alpine",
                Some("3.20"),
                None,
            ),
            (
                "index.docker.io/library/alpine",
                "docker.io/library/alpine",
                None,
                None,
            ),
            ("team/app:1", "docker.io/team/app", Some("1"), None),
            (
                "localhost:5000/foo:bar",
                "localhost:5000/foo",
                Some("bar"),
                None,
            ),
            ("localhost/foo", "localhost/foo", None, None),
            ("ghcr.io/a/b/c:v", "ghcr.io/a/b/c", Some("v"), None),
            (
                "ghcr.io/a/b@sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
                "ghcr.io/a/b",
                None,
                Some("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
            ),
        ];
        for (input, repo, tag, digest) in cases {
            let parsed: ImageRef = input.parse().unwrap();
            assert_eq!(parsed.repo.to_string(), repo, "{input}");
            assert_eq!(parsed.tag.as_ref().map(Tag::as_str), tag, "{input}");
            assert_eq!(
                parsed.digest.map(|d| d.to_string()).as_deref(),
                digest,
                "{input}"
            );
        }
        for bad in ["", "UPPER/case", "a:b:c", "a@sha256:12", "host.io/"] {
            assert!(bad.parse::<ImageRef>().is_err(), "{bad}");
        }
    }

    #[test]
    fn qualified_names_parse_back_only_in_canonical_form() {
        for good in [
            "docker.io/library/alpine",
            "localhost:5000/foo",
            "ghcr.io/a/b/c",
            "localhost/x",
        ] {
            let name = RepoName::from_qualified(good).unwrap();
            assert_eq!(name.qualified(), good);
        }
        for bad in [
            "",
            "alpine",
            "Docker.io/library/alpine",
            "index.docker.io/library/alpine",
            "docker.io/",
            "docker.io/UPPER",
            "/library/alpine",
        ] {
            assert!(RepoName::from_qualified(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn target_prefers_digest_then_tag_then_latest() {
        let r: ImageRef = "a".parse().unwrap();
        assert_eq!(r.target().to_string(), "latest");
        let r: ImageRef = "a:v1".parse().unwrap();
        assert_eq!(r.target().to_string(), "v1");
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_references_never_panics(s in ".{0,100}") {
            let _ = s.parse::<ImageRef>();
            let _ = s.parse::<TagOrDigest>();
            let _ = RepoName::new("docker.io", &s);
        }

        #[test]
        fn valid_names_round_trip(path in "[a-z0-9]{1,8}(/[a-z0-9]{1,8}(-[a-z0-9]{1,4})?){0,3}", tag in "[a-z0-9][a-z0-9.-]{0,10}") {
            let input = format!("example.com/{path}:{tag}");
            let parsed: ImageRef = input.parse().unwrap();
            prop_assert_eq!(parsed.to_string(), input);
        }
    }
}
