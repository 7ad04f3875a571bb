//! Image references, qualified repository names, tags, digests and namespaces as users, the
//! admin socket, peers' announcements and the gateway give them: whatever parses prints back to
//! a string that parses to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_protocol::reference::normalize_namespace;
use shoal_protocol::{Digest, ImageRef, RepoName, Tag, TagOrDigest};

fuzz_target!(|data: &[u8]| {
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
});
