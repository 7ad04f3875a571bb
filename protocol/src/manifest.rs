//! Parsing image manifests and indexes just far enough to know what they reference.
//!
//! Shoal stores and serves manifests as the exact bytes it received (their digest is over
//! those bytes); this module only reads them to find the blobs and child manifests an image
//! needs, its `subject` for the referrers API, and its media type when the document says it.

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::media_type;

/// Largest manifest accepted, the limit the distribution registry and containerd apply.
pub const MANIFEST_BYTES_MAX: usize = 4 * 1024 * 1024;

/// A reference from one document to another piece of content.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("manifest is {0} bytes, more than the {MANIFEST_BYTES_MAX}-byte limit")]
    TooLarge(usize),
    #[error("manifest is not valid JSON of a known shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("manifest has no mediaType and neither `layers` nor `manifests`")]
    UnknownKind,
    #[error("media type {0:?} is not an image manifest or index")]
    UnsupportedMediaType(String),
    #[error("manifest declares media type {declared:?} but is served as {expected:?}")]
    MediaTypeMismatch { declared: String, expected: String },
    #[error("schemaVersion {0} is not 2")]
    SchemaVersion(u64),
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawManifest {
    schema_version: Option<u64>,
    media_type: Option<String>,
    artifact_type: Option<String>,
    config: Option<Descriptor>,
    #[serde(default)]
    layers: Option<Vec<Descriptor>>,
    #[serde(default)]
    manifests: Option<Vec<Descriptor>>,
    subject: Option<Descriptor>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

/// What a manifest or index references.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedManifest {
    pub media_type: String,
    /// The artifact type for the referrers API: `artifactType`, else the config's media type.
    pub artifact_type: Option<String>,
    /// For an image manifest: the config blob and its layers.
    pub blobs: Vec<Descriptor>,
    /// For an index: the manifests it lists.
    pub manifests: Vec<Descriptor>,
    pub subject: Option<Descriptor>,
    pub annotations: BTreeMap<String, String>,
}

impl ParsedManifest {
    /// Parses `bytes`. `expected_media_type` is what the referring descriptor or the server
    /// said; it is used when the document omits `mediaType` and must agree when it does not.
    pub fn parse(bytes: &[u8], expected_media_type: Option<&str>) -> Result<Self, ManifestError> {
        if bytes.len() > MANIFEST_BYTES_MAX {
            return Err(ManifestError::TooLarge(bytes.len()));
        }
        let raw: RawManifest = serde_json::from_slice(bytes)?;
        if let Some(version) = raw.schema_version.filter(|v| *v != 2) {
            return Err(ManifestError::SchemaVersion(version));
        }
        let media_type = match (&raw.media_type, expected_media_type) {
            (Some(declared), Some(expected)) if declared != expected => {
                return Err(ManifestError::MediaTypeMismatch {
                    declared: declared.clone(),
                    expected: expected.to_owned(),
                });
            }
            (Some(declared), _) => declared.clone(),
            (None, Some(expected)) => expected.to_owned(),
            (None, None) if raw.manifests.is_some() => media_type::OCI_INDEX.to_owned(),
            (None, None) if raw.layers.is_some() => media_type::OCI_MANIFEST.to_owned(),
            (None, None) => return Err(ManifestError::UnknownKind),
        };
        if !media_type::is_manifest(&media_type) {
            return Err(ManifestError::UnsupportedMediaType(media_type));
        }
        let (blobs, manifests) = if media_type::is_index(&media_type) {
            (Vec::new(), raw.manifests.unwrap_or_default())
        } else {
            let config = raw.config.ok_or(ManifestError::UnknownKind)?;
            let mut blobs = vec![config];
            blobs.extend(raw.layers.unwrap_or_default());
            (blobs, Vec::new())
        };
        let artifact_type = raw
            .artifact_type
            .or_else(|| blobs.first().map(|config| config.media_type.clone()));
        Ok(ParsedManifest {
            media_type,
            artifact_type,
            blobs,
            manifests,
            subject: raw.subject,
            annotations: raw.annotations,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn digest(n: u8) -> String {
        Digest::of(&[n]).to_string()
    }

    #[test]
    fn image_manifest_lists_config_then_layers() {
        let json = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","config":{{"mediaType":"{}","digest":"{}","size":3}},
            "layers":[{{"mediaType":"{}","digest":"{}","size":5}}]}}"#,
            media_type::DOCKER_MANIFEST,
            media_type::DOCKER_CONFIG,
            digest(1),
            media_type::OCI_LAYER_GZIP,
            digest(2)
        );
        let parsed = ParsedManifest::parse(json.as_bytes(), None).unwrap();
        assert_eq!(parsed.media_type, media_type::DOCKER_MANIFEST);
        assert_eq!(parsed.blobs.len(), 2);
        assert_eq!(parsed.blobs[1].size, 5);
        assert!(parsed.manifests.is_empty());
        assert_eq!(
            parsed.artifact_type.as_deref(),
            Some(media_type::DOCKER_CONFIG)
        );
    }

    #[test]
    fn index_without_media_type_is_recognised() {
        let json = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"{}","digest":"{}","size":7,"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
            media_type::OCI_MANIFEST,
            digest(3)
        );
        let parsed = ParsedManifest::parse(json.as_bytes(), None).unwrap();
        assert_eq!(parsed.media_type, media_type::OCI_INDEX);
        assert_eq!(parsed.manifests.len(), 1);
        assert!(parsed.manifests[0].platform.is_some());
    }

    #[test]
    fn bad_manifests_are_refused_with_a_reason() {
        let d = digest(1);
        let cases: Vec<(String, Option<&str>)> = vec![
            ("not json".into(), None),
            ("{}".into(), None),
            (r#"{"schemaVersion":1,"layers":[]}"#.into(), None),
            (
                format!(
                    r#"{{"mediaType":"text/plain","layers":[],"config":{{"mediaType":"x","digest":"{d}","size":1}}}}"#
                ),
                None,
            ),
            (
                format!(
                    r#"{{"mediaType":"{}","manifests":[]}}"#,
                    media_type::OCI_INDEX
                ),
                Some(media_type::OCI_MANIFEST),
            ),
            (
                r#"{"layers":[{"mediaType":"x","digest":"sha256:00","size":1}]}"#.into(),
                None,
            ),
            (
                format!(r#"{{"layers":[{{"mediaType":"x","digest":"{d}","size":-1}}]}}"#),
                None,
            ),
            (r#"{"layers":[]}"#.into(), None),
        ];
        for (json, expected) in cases {
            assert!(
                ParsedManifest::parse(json.as_bytes(), expected).is_err(),
                "{json}"
            );
        }
        let huge = vec![b' '; MANIFEST_BYTES_MAX + 1];
        assert!(matches!(
            ParsedManifest::parse(&huge, None),
            Err(ManifestError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn parsing_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = ParsedManifest::parse(&bytes, None);
        }
    }
}
