//! Pull credentials and access rules, so machines that run no node (developer laptops, CI
//! runners) can pull from a node with a user name and password, and each user only what the
//! rules grant.
//!
//! - [`htpasswd`]: users and bcrypt hashes; [`verified`]: recent successes, so bcrypt runs
//!   about once a minute per client rather than per request; [`limit`]: failed logins per
//!   address.
//! - [`access`]: who may pull which repositories.
//! - [`token`]: the registry token flow (`401` + `WWW-Authenticate: Bearer realm=...`, then
//!   `GET /token` with Basic credentials, then `Authorization: Bearer`), which docker, podman,
//!   containerd and skopeo follow unchanged. Basic credentials on `/v2/` requests work too.
//! - [`header`]: reading `Authorization`.
//!
//! Request flow (`handlers.rs`): [`Auth::authenticate`] turns the request's credentials and
//! client address into a [`Caller`] (loopback clients are the host's own runtime and get
//! everything, unless `loopback_requires_auth`); then the route is checked with
//! [`Caller::check_version`] or [`Caller::check_repository`] before anything is looked up, so a
//! denied client learns nothing about what exists; listings are filtered with
//! [`Caller::may_pull`]. Without an [`Auth`] the gateway serves everyone, as before.
//!
//! Not for: TLS (the serving side), writes (there are none), or per-user rate limits.

pub mod access;
pub mod header;
pub mod htpasswd;
pub mod limit;
pub mod token;
pub mod verified;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shoal_protocol::RepoName;
use tokio::sync::Semaphore;

use self::access::{AccessRules, Who};
use self::header::{HeaderError, Presented};
use self::htpasswd::Htpasswd;
use self::limit::FailureLimiter;
use self::token::{Claims, TokenError, TokenKey};
use self::verified::VerifiedCache;
use crate::ClientInfo;
use crate::error::GatewayError;
use crate::events::AuthFailure;

/// How long an issued token is good for, unless configured otherwise; the distribution
/// registry's token servers use the same, and clients ask again when one expires.
pub const TOKEN_LIFETIME: Duration = Duration::from_secs(300);

/// bcrypt checks run at once; more wait. Each holds a core for up to a quarter second, and the
/// node has transfers to run.
const BCRYPT_CONCURRENCY: usize = 2;

/// Checked for an unknown user, so that a wrong user name takes as long as a wrong password
/// and answers do not tell which users exist (`htpasswd -nbB -C 10`).
const UNKNOWN_USER_HASH: &str = "$2y$10$0PZ..r2MytYOLA9Wh2QnVOkRi0sjUl5eN/Vr9bj5Cfw.Dqknm4Oxy";

/// What the node configures.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    pub htpasswd: Htpasswd,
    pub rules: AccessRules,
    /// Loopback clients must authenticate too, rather than getting everything.
    pub loopback_requires_auth: bool,
    pub token_lifetime: Duration,
}

/// A refusal before it is rendered: the challenge depends on the request's host and route.
#[derive(Debug)]
pub(crate) enum Refusal {
    Unauthorized {
        message: String,
        failure: Option<AuthFailure>,
        insufficient_scope: bool,
    },
    Denied,
    TooManyRequests,
}

impl Refusal {
    fn unauthorized(message: impl Into<String>, failure: Option<AuthFailure>) -> Refusal {
        Refusal::Unauthorized {
            message: message.into(),
            failure,
            insufficient_scope: false,
        }
    }

    pub(crate) fn failure(&self) -> Option<AuthFailure> {
        match self {
            Refusal::Unauthorized { failure, .. } => *failure,
            Refusal::Denied => Some(AuthFailure::Denied),
            Refusal::TooManyRequests => Some(AuthFailure::RateLimited),
        }
    }

    /// The error to answer, challenging the client to get a token for `repository`.
    pub(crate) fn into_error(self, realm: &str, repository: Option<&str>) -> GatewayError {
        match self {
            Refusal::Unauthorized {
                message,
                insufficient_scope,
                ..
            } => GatewayError::Unauthorized {
                message,
                challenge: token::challenge(realm, repository, insufficient_scope),
            },
            Refusal::Denied => GatewayError::Denied,
            Refusal::TooManyRequests => GatewayError::TooManyRequests,
        }
    }
}

#[derive(Debug)]
struct Policy {
    htpasswd: Htpasswd,
    rules: AccessRules,
}

#[derive(Debug)]
struct Inner {
    policy: RwLock<Arc<Policy>>,
    key: TokenKey,
    limiter: FailureLimiter,
    verified: VerifiedCache,
    bcrypt: Semaphore,
    loopback_requires_auth: bool,
    token_lifetime: Duration,
}

/// The gateway's authentication and access state; cheap to clone.
#[derive(Debug, Clone)]
pub struct Auth {
    inner: Arc<Inner>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Identity {
    /// A loopback client when loopback needs no credentials: the host's own runtime.
    Host,
    Anonymous,
    User(String),
}

/// Who a request comes from, with the policy it is judged by.
#[derive(Debug)]
pub(crate) struct Caller {
    identity: Identity,
    /// The repositories a Bearer token grants; `None` for other callers.
    token_scope: Option<Vec<String>>,
    policy: Arc<Policy>,
    /// The gateway's default namespace, for the rules' short patterns.
    default_namespace: String,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

fn is_loopback(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

impl Auth {
    /// Fails only when the operating system gives no random bytes for the token key.
    pub fn new(config: AuthConfig) -> Result<Auth, getrandom::Error> {
        Ok(Auth {
            inner: Arc::new(Inner {
                policy: RwLock::new(Arc::new(Policy {
                    htpasswd: config.htpasswd,
                    rules: config.rules,
                })),
                key: TokenKey::random()?,
                limiter: FailureLimiter::default(),
                verified: VerifiedCache::default(),
                bcrypt: Semaphore::new(BCRYPT_CONCURRENCY),
                loopback_requires_auth: config.loopback_requires_auth,
                token_lifetime: config.token_lifetime,
            }),
        })
    }

    /// Replaces users and rules (on SIGHUP, say). Requests in flight finish under the old
    /// ones; remembered passwords are forgotten, tokens stay valid but are checked against the
    /// new rules and users.
    pub fn reload(&self, htpasswd: Htpasswd, rules: AccessRules) {
        *self
            .inner
            .policy
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Policy { htpasswd, rules });
        self.inner.verified.clear();
    }

    fn policy(&self) -> Arc<Policy> {
        self.inner
            .policy
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn caller(&self, identity: Identity, default_namespace: &str) -> Caller {
        Caller {
            identity,
            token_scope: None,
            policy: self.policy(),
            default_namespace: default_namespace.to_owned(),
        }
    }

    /// Who sent a `/v2/` request. A request without `ClientInfo` counts as remote.
    /// Cancel-safe: a cancelled bcrypt check finishes on the blocking pool and is dropped.
    pub(crate) async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        client: Option<ClientInfo>,
        default_namespace: &str,
    ) -> Result<Caller, Refusal> {
        if let Some(client) = client
            && is_loopback(client.addr.ip())
            && !self.inner.loopback_requires_auth
        {
            return Ok(self.caller(Identity::Host, default_namespace));
        }
        match read_header(headers, client)? {
            Presented::None => Ok(self.caller(Identity::Anonymous, default_namespace)),
            Presented::Basic { user, password } => {
                self.check_password(&user, password, client).await?;
                Ok(self.caller(Identity::User(user), default_namespace))
            }
            Presented::Bearer(token) => {
                let claims =
                    token::verify(&self.inner.key, &token, unix_now()).map_err(|error| {
                        tracing::info!(client = ?client.map(|c| c.addr), %error, "token refused");
                        let message = match error {
                            TokenError::Expired => "token expired",
                            _ => "invalid token",
                        };
                        Refusal::unauthorized(message, Some(AuthFailure::Token))
                    })?;
                let mut caller = self.caller(Identity::Anonymous, default_namespace);
                if let Some(user) = claims.user {
                    // A user removed since the token was issued is refused at once.
                    if !caller.policy.htpasswd.contains(&user) {
                        return Err(Refusal::unauthorized(
                            "invalid token",
                            Some(AuthFailure::Token),
                        ));
                    }
                    caller.identity = Identity::User(user);
                }
                caller.token_scope = Some(claims.repositories);
                Ok(caller)
            }
        }
    }

    /// Checks Basic credentials, refusing without bcrypt an address that failed too often.
    async fn check_password(
        &self,
        user: &str,
        password: Vec<u8>,
        client: Option<ClientInfo>,
    ) -> Result<(), Refusal> {
        let address = client.map_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED), |c| c.addr.ip());
        let now = Instant::now();
        if self.inner.limiter.is_limited(address, now) {
            tracing::info!(user, %address, "login refused: too many failures from this address");
            return Err(Refusal::TooManyRequests);
        }
        let hash = self.policy().htpasswd.hash_of(user).map(str::to_owned);
        if hash.is_some() && self.inner.verified.contains(user, &password, now) {
            return Ok(());
        }
        let matched = {
            let _permit = self.inner.bcrypt.acquire().await;
            let (known, hash) = (
                hash.is_some(),
                hash.unwrap_or_else(|| UNKNOWN_USER_HASH.into()),
            );
            let password = password.clone();
            tokio::task::spawn_blocking(move || htpasswd::verify(&password, &hash) && known)
                .await
                .unwrap_or(false)
        };
        if matched {
            self.inner.verified.insert(user, &password, Instant::now());
            Ok(())
        } else {
            self.inner.limiter.record_failure(address, Instant::now());
            tracing::warn!(user, %address, "failed login");
            Err(Refusal::unauthorized(
                "invalid user name or password",
                Some(AuthFailure::Credentials),
            ))
        }
    }

    /// Answers a token request: Basic credentials (or none, for an anonymous token), and the
    /// repositories asked for in `scopes` that the caller may pull.
    pub(crate) async fn issue_token<'a>(
        &self,
        headers: &http::HeaderMap,
        client: Option<ClientInfo>,
        scopes: impl Iterator<Item = &'a str>,
    ) -> Result<TokenGrant, Refusal> {
        let user = match read_header(headers, client)? {
            Presented::None => None,
            Presented::Basic { user, password } => {
                self.check_password(&user, password, client).await?;
                Some(user)
            }
            Presented::Bearer(_) => {
                return Err(Refusal::unauthorized(
                    "the token endpoint takes Basic credentials",
                    Some(AuthFailure::Malformed),
                ));
            }
        };
        let policy = self.policy();
        let who = user.as_deref().map_or(Who::Anonymous, Who::User);
        let repositories = token::requested_repositories(scopes)
            .into_iter()
            .filter(|path| policy.rules.may_pull_path_somewhere(who, path))
            .collect();
        let issued_at = unix_now();
        let lifetime = self.inner.token_lifetime.as_secs().max(1);
        let claims = Claims {
            user,
            issued_at,
            expires_at: issued_at + lifetime,
            repositories,
        };
        Ok(TokenGrant {
            token: token::issue(&self.inner.key, &claims),
            expires_in: lifetime,
            issued_at,
        })
    }
}

/// A token issued by [`Auth::issue_token`].
#[derive(Debug)]
pub(crate) struct TokenGrant {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: u64,
}

fn read_header(
    headers: &http::HeaderMap,
    client: Option<ClientInfo>,
) -> Result<Presented, Refusal> {
    header::parse(headers).map_err(|error: HeaderError| {
        tracing::info!(client = ?client.map(|c| c.addr), %error, "malformed Authorization header");
        Refusal::unauthorized(
            format!("malformed Authorization header: {error}"),
            Some(AuthFailure::Malformed),
        )
    })
}

impl Caller {
    fn who(&self) -> Option<Who<'_>> {
        match &self.identity {
            Identity::Host => None,
            Identity::Anonymous => Some(Who::Anonymous),
            Identity::User(user) => Some(Who::User(user)),
        }
    }

    /// `/v2/`, the version check: any valid identity, an anonymous token included, but not
    /// no credentials at all. `docker login` takes a `200` here for success, so without this
    /// it would accept any password.
    pub(crate) fn check_version(&self) -> Result<(), Refusal> {
        match (&self.identity, &self.token_scope) {
            (Identity::Anonymous, None) => {
                Err(Refusal::unauthorized("authentication required", None))
            }
            _ => Ok(()),
        }
    }

    /// `/v2/_catalog`: any identity, or anonymous when the rules grant anonymous clients
    /// something; the listing is then filtered with [`Caller::may_pull`].
    pub(crate) fn check_catalog(&self) -> Result<(), Refusal> {
        match self.identity {
            Identity::Anonymous if !self.policy.rules.grants_anonymous() => {
                Err(Refusal::unauthorized("authentication required", None))
            }
            _ => Ok(()),
        }
    }

    /// Whether the caller may pull `repo` by the rules, ignoring any token's scope.
    pub(crate) fn may_pull(&self, repo: &RepoName) -> bool {
        match self.who() {
            None => true,
            Some(who) => self
                .policy
                .rules
                .may_pull(who, repo, &self.default_namespace),
        }
    }

    /// A request addressing `repo`: decided before anything about it is looked up.
    pub(crate) fn check_repository(&self, repo: &RepoName) -> Result<(), Refusal> {
        if !self.may_pull(repo) {
            return Err(match self.identity {
                Identity::Anonymous => Refusal::unauthorized("authentication required", None),
                _ => Refusal::Denied,
            });
        }
        match &self.token_scope {
            Some(scope) if !scope.iter().any(|path| path == repo.path()) => {
                Err(Refusal::Unauthorized {
                    message: "the token does not grant this repository".into(),
                    failure: None,
                    insufficient_scope: true,
                })
            }
            _ => Ok(()),
        }
    }
}
