//! Bearer tokens, as the registry token flow hands them out: a client that gets `401` with
//! `WWW-Authenticate: Bearer realm=...,service=...,scope=...` asks the realm for a token (with
//! HTTP Basic credentials, or none for anonymous access) and sends it as
//! `Authorization: Bearer <token>` from then on.
//!
//! A token is `base64url(claims JSON) "." base64url(HMAC-SHA256(key, claims JSON))`, with a
//! random key made when the gateway starts, so tokens need no storage, end with the process, and
//! cannot be forged or altered without the key. The claims are the user, the issue and expiry
//! times and the repository paths granted pull in the token request's scope.
//!
//! Not for: deciding access (the rules are checked again on every request), or sharing tokens
//! between nodes (each node has its own key).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

/// The `service` the challenge names and token requests echo.
pub const SERVICE: &str = "shoal";

/// Where tokens are issued. At the root, outside `/v2/`, so no repository name can shadow it.
pub const TOKEN_PATH: &str = "/token";

/// Longest token accepted; the Authorization header is bounded before this anyway.
const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// The HMAC key. `Debug` does not show it.
#[derive(Clone)]
pub struct TokenKey([u8; 32]);

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKey(..)")
    }
}

impl TokenKey {
    /// A key from the operating system's random source.
    pub fn random() -> Result<TokenKey, getrandom::Error> {
        let mut key = [0; 32];
        getrandom::fill(&mut key)?;
        Ok(TokenKey(key))
    }

    #[cfg(test)]
    pub fn from_bytes(key: [u8; 32]) -> TokenKey {
        TokenKey(key)
    }
}

/// What a token says. `user` is `None` for an anonymous token.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Claims {
    #[serde(rename = "sub")]
    pub user: Option<String>,
    #[serde(rename = "iat")]
    pub issued_at: u64,
    #[serde(rename = "exp")]
    pub expires_at: u64,
    /// Repository paths the token may pull.
    #[serde(rename = "pull")]
    pub repositories: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token signature does not match")]
    BadSignature,
    #[error("token expired")]
    Expired,
}

/// HMAC-SHA256 (RFC 2104). Written out over the workspace's sha2 0.10: the `hmac` release in
/// the lock (0.13) is built on digest 0.11, which sha2 0.10 does not implement.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut inner_pad = [0x36u8; BLOCK];
    let mut outer_pad = [0x5cu8; BLOCK];
    for (i, byte) in key.iter().enumerate() {
        inner_pad[i] ^= byte;
        outer_pad[i] ^= byte;
    }
    let inner = Sha256::new()
        .chain_update(inner_pad)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_pad)
        .chain_update(inner)
        .finalize()
        .into()
}

/// Compares in time that does not depend on where the inputs differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn issue(key: &TokenKey, claims: &Claims) -> String {
    // Serialising plain strings and integers cannot fail.
    let payload = serde_json::to_vec(claims).unwrap_or_default();
    let mac = hmac_sha256(&key.0, &payload);
    format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(&payload),
        URL_SAFE_NO_PAD.encode(mac)
    )
}

/// The claims of a token this key issued that has not expired at `now` (Unix seconds).
pub fn verify(key: &TokenKey, token: &str, now: u64) -> Result<Claims, TokenError> {
    if token.len() > TOKEN_BYTES_MAX {
        return Err(TokenError::Malformed);
    }
    let (payload, mac) = token.split_once('.').ok_or(TokenError::Malformed)?;
    let payload = URL_SAFE_NO_PAD
        .decode(payload)
        .map_err(|_| TokenError::Malformed)?;
    let mac = URL_SAFE_NO_PAD
        .decode(mac)
        .map_err(|_| TokenError::Malformed)?;
    if !constant_time_eq(&mac, &hmac_sha256(&key.0, &payload)) {
        return Err(TokenError::BadSignature);
    }
    let claims: Claims = serde_json::from_slice(&payload).map_err(|_| TokenError::Malformed)?;
    if now >= claims.expires_at {
        return Err(TokenError::Expired);
    }
    Ok(claims)
}

/// The repository paths a token request asks to pull: each `scope` parameter holds
/// space-separated `repository:<path>:<actions>` entries.
pub fn requested_repositories<'a>(scopes: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut paths: Vec<String> = scopes
        .flat_map(str::split_whitespace)
        .filter_map(|scope| {
            let rest = scope.strip_prefix("repository:")?;
            let (path, actions) = rest.rsplit_once(':')?;
            actions
                .split(',')
                .any(|action| action == "pull" || action == "*")
                .then(|| path.to_owned())
        })
        .collect();
    paths.sort();
    paths.dedup();
    paths
}

/// The `WWW-Authenticate` value sending a client to the token endpoint: for `repository`'s pull
/// scope when one is named, and with `insufficient_scope` when the client's token lacked it.
pub fn challenge(realm: &str, repository: Option<&str>, insufficient_scope: bool) -> String {
    let mut value = format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"");
    if let Some(path) = repository {
        value.push_str(&format!(",scope=\"repository:{path}:pull\""));
    }
    if insufficient_scope {
        value.push_str(",error=\"insufficient_scope\"");
    }
    value
}

/// The realm URL for a request that arrived with this `Host` header on a TLS connection or
/// not. A Host that could break the header's quoting is replaced by `localhost`.
pub fn realm(host: Option<&str>, tls: bool) -> String {
    let host = host
        .filter(|host| {
            !host.is_empty()
                && host.len() <= 255
                && host
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".-:[]_".contains(&b))
        })
        .unwrap_or("localhost");
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://{host}{TOKEN_PATH}")
}

/// `seconds` since the Unix epoch as RFC 3339 UTC, as token responses' `issued_at` is written.
pub fn rfc3339(seconds: u64) -> String {
    let days = seconds / 86_400;
    let time = seconds % 86_400;
    // Howard Hinnant's civil_from_days, for days since 1970-01-01 (never negative here).
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        time / 3600,
        time % 3600 / 60,
        time % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(expires_at: u64) -> Claims {
        Claims {
            user: Some("alice".into()),
            issued_at: 1000,
            expires_at,
            repositories: vec!["team/app".into()],
        }
    }

    #[test]
    fn hmac_matches_rfc_4231_test_case_1() {
        // RFC 4231 test case 1 uses a 20-byte key of 0x0b; padded with zeros to our 32 bytes,
        // HMAC is the same (keys shorter than a block are zero-padded).
        let mut key = [0u8; 32];
        key[..20].copy_from_slice(&[0x0b; 20]);
        assert_eq!(
            hex(&hmac_sha256(&key, b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
    }

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn valid_tokens_verify_and_expired_or_tampered_ones_do_not() {
        let key = TokenKey::from_bytes([7; 32]);
        let token = issue(&key, &claims(2000));
        assert_eq!(verify(&key, &token, 1999).unwrap(), claims(2000));
        assert_eq!(verify(&key, &token, 2000), Err(TokenError::Expired));
        // Another key (another node, or this one restarted) did not issue it.
        let other = TokenKey::from_bytes([8; 32]);
        assert_eq!(verify(&other, &token, 1500), Err(TokenError::BadSignature));
        // Claims altered to extend the expiry or add a repository, signature kept.
        let (_, mac) = token.split_once('.').unwrap();
        for forged in [claims(9999), {
            let mut c = claims(2000);
            c.repositories.push("other/app".into());
            c
        }] {
            let payload = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).unwrap());
            assert_eq!(
                verify(&key, &format!("{payload}.{mac}"), 1500),
                Err(TokenError::BadSignature)
            );
        }
        for garbage in ["", ".", "abc", "a.b.c", "!!!.???"] {
            assert!(verify(&key, garbage, 1500).is_err(), "{garbage}");
        }
        assert_eq!(
            verify(&key, &"a".repeat(TOKEN_BYTES_MAX + 1), 0),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn scopes_challenges_and_times_are_written_as_clients_expect() {
        assert_eq!(
            requested_repositories(
                [
                    "repository:team/app:pull",
                    "repository:a:push repository:b:pull,push",
                    "registry:catalog:*",
                    "repository:team/app:pull"
                ]
                .into_iter()
            ),
            vec!["b", "team/app"]
        );
        assert_eq!(
            challenge(
                &realm(Some("10.0.0.5:5050"), false),
                Some("team/app"),
                false
            ),
            "Bearer realm=\"http://10.0.0.5:5050/token\",service=\"shoal\",scope=\"repository:team/app:pull\""
        );
        assert_eq!(realm(Some("evil\",x=\"y"), true), "https://localhost/token");
        assert!(challenge("r", None, true).ends_with(",error=\"insufficient_scope\""));
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
