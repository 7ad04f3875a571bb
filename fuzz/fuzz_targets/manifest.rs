//! A manifest or index as it arrives from a peer, an upstream registry or an import, parsed
//! with and without the media type the referring descriptor claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::{ParsedManifest, media_type};

const EXPECTED: [Option<&str>; 5] = [
    None,
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some("application/octet-stream"),
];

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else {
        return;
    };
    let expected = EXPECTED[usize::from(selector) % EXPECTED.len()];
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
});
