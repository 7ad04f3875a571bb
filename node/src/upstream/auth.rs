//! Registry authentication as the distribution spec and Docker Hub practise it: a request goes
//! out anonymously (or with what worked before); a `401` carries a `WWW-Authenticate`
//! challenge, either `Basic` (send the configured credentials) or `Bearer realm,service,scope`
//! (get a token from the realm, with the credentials when there are some, and send it). Tokens
//! are kept per scope until shortly before they expire.
//!
//! Nothing here logs a credential or a token, and [`Token`]'s `Debug` hides its value.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::Credentials;

/// Lifetime assumed when a token response names none (the distribution token spec's default).
const TOKEN_LIFETIME_DEFAULT: Duration = Duration::from_secs(60);
/// A token is renewed this long before it expires, so it does not expire in flight.
const TOKEN_RENEW_MARGIN: Duration = Duration::from_secs(5);
/// Token responses larger than this are refused.
pub const TOKEN_RESPONSE_BYTES_MAX: usize = 64 * 1024;

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Challenge {
    /// Parses `Basic realm="x"` or `Bearer realm="…",service="…",scope="…"`. Parameter values
    /// may be quoted (with `\"` escapes) or bare tokens.
    pub fn parse(header: &str) -> Option<Challenge> {
        let header = header.trim();
        let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
        if scheme.eq_ignore_ascii_case("basic") {
            return Some(Challenge::Basic);
        }
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let parameters = parse_parameters(rest);
        let find = |name: &str| {
            parameters
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(name))
                .map(|(_, value)| value.clone())
        };
        Some(Challenge::Bearer {
            realm: find("realm")?,
            service: find("service"),
            scope: find("scope"),
        })
    }
}

fn parse_parameters(text: &str) -> Vec<(String, String)> {
    let mut parameters = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if key.is_empty() || chars.next() != Some('=') {
            return parameters;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
        }
        parameters.push((key.trim().to_owned(), value.trim().to_owned()));
    }
}

/// A bearer token; its `Debug` never shows the value.
#[derive(Clone)]
pub struct Token {
    value: String,
    renew_at: Instant,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("value", &"<hidden>")
            .field("renew_at", &self.renew_at)
            .finish()
    }
}

impl Token {
    /// Reads a token endpoint's JSON answer (`token` or `access_token`, `expires_in`).
    pub fn from_response(body: &[u8], now: Instant) -> Option<Token> {
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
            expires_in: Option<u64>,
        }
        let response: TokenResponse = serde_json::from_slice(body).ok()?;
        let value = response.token.or(response.access_token)?;
        if value.is_empty() {
            return None;
        }
        let lifetime = response
            .expires_in
            .map_or(TOKEN_LIFETIME_DEFAULT, Duration::from_secs);
        Some(Token {
            value,
            renew_at: now + lifetime.saturating_sub(TOKEN_RENEW_MARGIN),
        })
    }
}

/// How requests to one registry authenticate.
#[derive(Debug, Default)]
pub struct AuthState {
    /// Set once the registry asked for basic auth: later requests send it straight away.
    basic: Mutex<bool>,
    tokens: Mutex<HashMap<String, Token>>,
}

/// The `Authorization` header value to send, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authorization {
    None,
    Basic,
    Bearer(String),
}

impl AuthState {
    /// What to send for `scope` before any challenge: a live token, or basic credentials if
    /// the registry wanted them before.
    pub fn current(&self, scope: &str, now: Instant) -> Authorization {
        let tokens = self
            .tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(token) = tokens.get(scope)
            && token.renew_at > now
        {
            return Authorization::Bearer(token.value.clone());
        }
        drop(tokens);
        if *self
            .basic
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
        {
            Authorization::Basic
        } else {
            Authorization::None
        }
    }

    pub fn use_basic(&self) {
        *self
            .basic
            .lock()
            .unwrap_or_else(|poison| poison.into_inner()) = true;
    }

    pub fn keep_token(&self, scope: &str, token: Token) {
        self.tokens
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .insert(scope.to_owned(), token);
    }
}

/// Adds basic credentials to a request when there are some.
pub fn with_basic(
    request: reqwest::RequestBuilder,
    credentials: Option<&Credentials>,
) -> reqwest::RequestBuilder {
    match credentials {
        Some(credentials) => request.basic_auth(&credentials.username, Some(&credentials.password)),
        None => request,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_registries_send_them() {
        assert_eq!(
            Challenge::parse(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"bearer realm=http://x/token, scope="a:b\"c:pull""#),
            Some(Challenge::Bearer {
                realm: "http://x/token".into(),
                service: None,
                scope: Some("a:b\"c:pull".into()),
            })
        );
        assert_eq!(
            Challenge::parse(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(Challenge::parse("Bearer service=x"), None);
        assert_eq!(Challenge::parse("Negotiate"), None);
        assert_eq!(Challenge::parse(""), None);
    }

    #[test]
    fn tokens_are_reused_until_shortly_before_they_expire() {
        let now = Instant::now();
        let state = AuthState::default();
        assert_eq!(state.current("s", now), Authorization::None);
        let token =
            Token::from_response(br#"{"access_token":"abc","expires_in":60}"#, now).unwrap();
        assert!(!format!("{token:?}").contains("abc"));
        state.keep_token("s", token);
        assert_eq!(
            state.current("s", now + Duration::from_secs(50)),
            Authorization::Bearer("abc".into())
        );
        assert_eq!(
            state.current("s", now + Duration::from_secs(56)),
            Authorization::None
        );
        assert_eq!(state.current("other", now), Authorization::None);
        state.use_basic();
        assert_eq!(state.current("other", now), Authorization::Basic);
        assert!(Token::from_response(br#"{"token":""}"#, now).is_none());
        assert!(Token::from_response(b"not json", now).is_none());
    }
}
