//! Reading the `Authorization` header: HTTP Basic or a Bearer token. Anything else is an
//! error value the gateway answers with `401`, never a panic.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{HeaderMap, header};

/// Longest Authorization header read; tokens and Basic credentials are far shorter.
pub const AUTHORIZATION_BYTES_MAX: usize = 8 * 1024;

/// What the client presented.
pub enum Presented {
    None,
    Basic { user: String, password: Vec<u8> },
    Bearer(String),
}

impl std::fmt::Debug for Presented {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Presented::None => f.write_str("None"),
            Presented::Basic { user, .. } => write!(f, "Basic({user:?}, <password>)"),
            Presented::Bearer(_) => f.write_str("Bearer(<token>)"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("Authorization header longer than {AUTHORIZATION_BYTES_MAX} bytes")]
    TooLong,
    #[error("Authorization header is not ASCII")]
    NotAscii,
    #[error("Authorization scheme is neither Basic nor Bearer")]
    Scheme,
    #[error("Basic credentials are not valid base64")]
    Base64,
    #[error("Basic credentials have no ':' between user and password")]
    NoColon,
    #[error("Basic credentials' user name is not UTF-8")]
    NotUtf8,
    #[error("more than one Authorization header")]
    Repeated,
}

pub fn parse(headers: &HeaderMap) -> Result<Presented, HeaderError> {
    let mut values = headers.get_all(header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Ok(Presented::None);
    };
    if values.next().is_some() {
        return Err(HeaderError::Repeated);
    }
    if value.len() > AUTHORIZATION_BYTES_MAX {
        return Err(HeaderError::TooLong);
    }
    let value = value.to_str().map_err(|_| HeaderError::NotAscii)?.trim();
    let (scheme, rest) = value.split_once(' ').ok_or(HeaderError::Scheme)?;
    let rest = rest.trim();
    if scheme.eq_ignore_ascii_case("basic") {
        let decoded = STANDARD.decode(rest).map_err(|_| HeaderError::Base64)?;
        let colon = decoded
            .iter()
            .position(|b| *b == b':')
            .ok_or(HeaderError::NoColon)?;
        let user = std::str::from_utf8(&decoded[..colon]).map_err(|_| HeaderError::NotUtf8)?;
        Ok(Presented::Basic {
            user: user.to_owned(),
            password: decoded[colon + 1..].to_vec(),
        })
    } else if scheme.eq_ignore_ascii_case("bearer") && !rest.is_empty() {
        Ok(Presented::Bearer(rest.to_owned()))
    } else {
        Err(HeaderError::Scheme)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(value: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_bytes(value).unwrap(),
        );
        headers
    }

    #[test]
    fn basic_and_bearer_are_read() {
        assert!(matches!(parse(&HeaderMap::new()), Ok(Presented::None)));
        let basic = format!("Basic {}", STANDARD.encode("alice:pa:ss"));
        match parse(&with(basic.as_bytes())).unwrap() {
            Presented::Basic { user, password } => {
                assert_eq!(
                    (user.as_str(), password.as_slice()),
                    ("alice", &b"pa:ss"[..])
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            matches!(parse(&with(b"bearer abc.def")), Ok(Presented::Bearer(t)) if t == "abc.def")
        );
    }

    #[test]
    fn malformed_headers_are_errors() {
        let no_colon = format!("Basic {}", STANDARD.encode("alice"));
        let not_utf8 = format!("Basic {}", STANDARD.encode(b"\xff\xfe:pw"));
        let long = format!("Bearer {}", "a".repeat(AUTHORIZATION_BYTES_MAX));
        for (value, error) in [
            (&b"Digest abc"[..], HeaderError::Scheme),
            (b"Basic", HeaderError::Scheme),
            (b"Bearer ", HeaderError::Scheme),
            (b"Basic !!!notbase64", HeaderError::Base64),
            (no_colon.as_bytes(), HeaderError::NoColon),
            (not_utf8.as_bytes(), HeaderError::NotUtf8),
            (b"Basic \xff\xff", HeaderError::NotAscii),
            (long.as_bytes(), HeaderError::TooLong),
        ] {
            assert_eq!(parse(&with(value)).unwrap_err(), error, "{value:?}");
        }
        let mut twice = with(b"Bearer a");
        twice.append(header::AUTHORIZATION, HeaderValue::from_static("Bearer b"));
        assert_eq!(parse(&twice).unwrap_err(), HeaderError::Repeated);
    }
}
