//! Content negotiation for manifests on the `Accept` header.

use http::HeaderMap;
use http::header::ACCEPT;

/// The media types a client accepts, from every `Accept` header and every comma-separated
/// entry in them, parameters (`;q=0.5`) dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted(Vec<String>);

impl Accepted {
    pub fn from_headers(headers: &HeaderMap) -> Accepted {
        let types = headers
            .get_all(ACCEPT)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .filter_map(|entry| entry.split(';').next())
            .map(|media_type| media_type.trim().to_ascii_lowercase())
            .filter(|media_type| !media_type.is_empty())
            .collect();
        Accepted(types)
    }

    /// Whether a manifest of `media_type` may be sent. A client that states no preference, or
    /// a wildcard, accepts anything.
    pub fn accepts(&self, media_type: &str) -> bool {
        if self.0.is_empty() {
            return true;
        }
        let major = media_type.split('/').next().unwrap_or_default();
        self.0.iter().any(|accepted| {
            accepted == media_type
                || accepted == "*/*"
                || accepted
                    .strip_suffix("/*")
                    .is_some_and(|prefix| prefix == major)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;
    use shoal_protocol::media_type::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(ACCEPT, HeaderValue::from_str(value).unwrap());
        }
        map
    }

    #[test]
    fn several_headers_and_comma_lists_are_merged() {
        let accepted = Accepted::from_headers(&headers(&[
            &format!("{OCI_MANIFEST}, {DOCKER_MANIFEST};q=0.9"),
            DOCKER_MANIFEST_LIST,
        ]));
        assert!(accepted.accepts(OCI_MANIFEST));
        assert!(accepted.accepts(DOCKER_MANIFEST));
        assert!(accepted.accepts(DOCKER_MANIFEST_LIST));
        assert!(!accepted.accepts(OCI_INDEX));
    }

    #[test]
    fn no_preference_or_wildcards_accept_everything() {
        assert!(Accepted::from_headers(&headers(&[])).accepts(OCI_INDEX));
        assert!(Accepted::from_headers(&headers(&["*/*"])).accepts(OCI_INDEX));
        assert!(Accepted::from_headers(&headers(&["application/*"])).accepts(OCI_INDEX));
        assert!(!Accepted::from_headers(&headers(&["text/*"])).accepts(OCI_INDEX));
    }
}
