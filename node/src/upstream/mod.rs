//! The registries a node falls back to when no peer has what a client asks for
//! (`--upstream docker.io=https://registry-1.docker.io`), one [`UpstreamClient`] per namespace.
//!
//! A client speaks the distribution pull API: manifests by tag (a `HEAD` for the digest, so a
//! tag check costs no manifest download when the node has it) and by digest, blobs by digest
//! (streamed; redirects to blob storage followed, credentials dropped on the way by reqwest).
//! Authentication follows the registry's challenges ([`auth`]). What comes back is checked:
//! a manifest against its digest here, a blob by the exchange's download that stores it
//! (`exchange::fetch::upstream`). Only the registry client lives here: running a download as a
//! transfer is the fetch side's job.

mod auth;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode, header};
use shoal_protocol::manifest::MANIFEST_BYTES_MAX;
use shoal_protocol::media_type::MANIFEST_TYPES;
use shoal_protocol::{Digest, RepoName, Tag};

use crate::config::{Credentials, Upstream};
use crate::observe::Counters;
use auth::{AuthState, Authorization, Challenge, TOKEN_RESPONSE_BYTES_MAX, Token, with_basic};

/// A registry that does not answer a connection attempt within this long is down.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A response that sends nothing for this long has stalled.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Manifest and token requests must finish within this long.
const SMALL_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("upstream {namespace} cannot be reached: {reason}")]
    Unreachable { namespace: String, reason: String },
    #[error("upstream {namespace} refused access to {what} ({status}); check its credentials")]
    Denied {
        namespace: String,
        what: String,
        status: StatusCode,
    },
    #[error("upstream {namespace} answered {status} for {what}")]
    Status {
        namespace: String,
        what: String,
        status: StatusCode,
    },
    #[error("upstream {namespace} sent invalid {what}: {reason}")]
    Invalid {
        namespace: String,
        what: String,
        reason: String,
    },
}

/// The configured upstreams, by namespace.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    clients: HashMap<String, Arc<UpstreamClient>>,
}

impl Upstreams {
    /// Clients for `configs`; each failed request counts in `counters.upstream_errors`.
    pub fn new(configs: &[Upstream], counters: Arc<Counters>) -> anyhow::Result<Upstreams> {
        let mut clients = HashMap::new();
        for config in configs {
            clients.insert(
                config.namespace.clone(),
                Arc::new(UpstreamClient::new(config, counters.clone())?),
            );
        }
        Ok(Upstreams { clients })
    }

    /// The upstream that holds `repo`'s namespace, if one is configured.
    pub fn for_repo(&self, repo: &RepoName) -> Option<Arc<UpstreamClient>> {
        self.clients.get(repo.namespace()).cloned()
    }
}

/// A manifest read from an upstream, checked against its digest.
#[derive(Debug, Clone)]
pub struct UpstreamManifest {
    pub digest: Digest,
    pub bytes: Vec<u8>,
}

/// One upstream registry.
#[derive(Debug)]
pub struct UpstreamClient {
    namespace: String,
    base: String,
    http: reqwest::Client,
    credentials: Option<Credentials>,
    auth: AuthState,
    counters: Arc<Counters>,
}

impl UpstreamClient {
    fn new(config: &Upstream, counters: Arc<Counters>) -> anyhow::Result<UpstreamClient> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            .user_agent(concat!("shoal/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(UpstreamClient {
            namespace: config.namespace.clone(),
            base: config.url.clone(),
            http,
            credentials: config.credentials.clone(),
            auth: AuthState::default(),
            counters,
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Passes `result` through, counting an error.
    fn counted<T>(&self, result: Result<T, UpstreamError>) -> Result<T, UpstreamError> {
        if result.is_err() {
            Counters::add(&self.counters.upstream_errors, 1);
        }
        result
    }

    fn unreachable(&self, error: &reqwest::Error) -> UpstreamError {
        // reqwest's message names the URL, never the credentials (they travel in headers).
        UpstreamError::Unreachable {
            namespace: self.namespace.clone(),
            reason: error_chain(error),
        }
    }

    /// Sends a request for `repo`, answering one authentication challenge if it gets one.
    async fn send(
        &self,
        method: Method,
        repo: &RepoName,
        tail: &str,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Response, UpstreamError> {
        let url = format!("{}/v2/{}/{tail}", self.base, repo.path());
        let scope = format!("repository:{}:pull", repo.path());
        let mut answered_challenge = false;
        loop {
            let mut request = self
                .http
                .request(method.clone(), &url)
                .header(header::ACCEPT, MANIFEST_TYPES.join(", "));
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            request = match self.auth.current(&scope, Instant::now()) {
                Authorization::None => request,
                Authorization::Basic => with_basic(request, self.credentials.as_ref()),
                Authorization::Bearer(token) => request.bearer_auth(token),
            };
            let response = request
                .send()
                .await
                .map_err(|error| self.unreachable(&error))?;
            let status = response.status();
            if status != StatusCode::UNAUTHORIZED || answered_challenge {
                if matches!(status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) {
                    return Err(UpstreamError::Denied {
                        namespace: self.namespace.clone(),
                        what: format!("{repo}/{tail}"),
                        status,
                    });
                }
                return Ok(response);
            }
            answered_challenge = true;
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|value| value.to_str().ok())
                .and_then(Challenge::parse);
            match challenge {
                Some(Challenge::Basic) if self.credentials.is_some() => self.auth.use_basic(),
                Some(Challenge::Bearer {
                    realm,
                    service,
                    scope: challenged,
                }) => {
                    let token = self
                        .token(&realm, service.as_deref(), challenged.as_deref())
                        .await?;
                    self.auth.keep_token(&scope, token);
                }
                _ => {
                    return Err(UpstreamError::Denied {
                        namespace: self.namespace.clone(),
                        what: format!("{repo}/{tail}"),
                        status,
                    });
                }
            }
        }
    }

    /// Asks the token realm for a token, with the configured credentials if any.
    async fn token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<Token, UpstreamError> {
        let mut query = Vec::new();
        if let Some(service) = service {
            query.push(("service", service));
        }
        if let Some(scope) = scope {
            query.push(("scope", scope));
        }
        let url = reqwest::Url::parse_with_params(realm, &query).map_err(|error| {
            UpstreamError::Invalid {
                namespace: self.namespace.clone(),
                what: "token realm".into(),
                reason: error.to_string(),
            }
        })?;
        let request = self.http.get(url).timeout(SMALL_REQUEST_TIMEOUT);
        let response = with_basic(request, self.credentials.as_ref())
            .send()
            .await
            .map_err(|error| self.unreachable(&error))?;
        let status = response.status();
        if !status.is_success() {
            return Err(UpstreamError::Denied {
                namespace: self.namespace.clone(),
                what: "a token".into(),
                status,
            });
        }
        let body = self
            .read_limited(response, TOKEN_RESPONSE_BYTES_MAX, "token response")
            .await?;
        Token::from_response(&body, Instant::now()).ok_or_else(|| UpstreamError::Invalid {
            namespace: self.namespace.clone(),
            what: "token response".into(),
            reason: "no token in it".into(),
        })
    }

    async fn read_limited(
        &self,
        mut response: reqwest::Response,
        limit: usize,
        what: &str,
    ) -> Result<Vec<u8>, UpstreamError> {
        let mut body = Vec::new();
        while let Some(piece) = response
            .chunk()
            .await
            .map_err(|error| self.unreachable(&error))?
        {
            if body.len() + piece.len() > limit {
                return Err(UpstreamError::Invalid {
                    namespace: self.namespace.clone(),
                    what: what.to_owned(),
                    reason: format!("larger than {limit} bytes"),
                });
            }
            body.extend_from_slice(&piece);
        }
        Ok(body)
    }

    fn status_error(&self, what: String, status: StatusCode) -> UpstreamError {
        UpstreamError::Status {
            namespace: self.namespace.clone(),
            what,
            status,
        }
    }

    /// The digest `tag` points to upstream, `None` if the upstream has no such tag.
    pub async fn tag_digest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError> {
        self.counted(self.read_tag_digest(repo, tag).await)
    }

    async fn read_tag_digest(
        &self,
        repo: &RepoName,
        tag: &Tag,
    ) -> Result<Option<Digest>, UpstreamError> {
        let tail = format!("manifests/{tag}");
        let response = self
            .send(Method::HEAD, repo, &tail, Some(SMALL_REQUEST_TIMEOUT))
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if !status.is_success() => {
                return Err(self.status_error(format!("{repo}:{tag}"), status));
            }
            _ => {}
        }
        let header = response
            .headers()
            .get("docker-content-digest")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<Digest>().ok());
        match header {
            Some(digest) => Ok(Some(digest)),
            // Without the header, the digest is the hash of the manifest itself.
            None => Ok(self
                .read_manifest(repo, &tag.to_string())
                .await?
                .map(|manifest| manifest.digest)),
        }
    }

    /// The manifest `reference` (a tag or a digest) names, checked against the digest when it
    /// is one; `None` if the upstream does not have it.
    pub async fn manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> Result<Option<UpstreamManifest>, UpstreamError> {
        self.counted(self.read_manifest(repo, reference).await)
    }

    async fn read_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
    ) -> Result<Option<UpstreamManifest>, UpstreamError> {
        let what = format!("manifest {repo}:{reference}");
        let response = self
            .send(
                Method::GET,
                repo,
                &format!("manifests/{reference}"),
                Some(SMALL_REQUEST_TIMEOUT),
            )
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if !status.is_success() => return Err(self.status_error(what, status)),
            _ => {}
        }
        let bytes = self
            .read_limited(response, MANIFEST_BYTES_MAX, &what)
            .await?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = reference.parse::<Digest>()
            && expected != digest
        {
            return Err(UpstreamError::Invalid {
                namespace: self.namespace.clone(),
                what,
                reason: format!("its bytes hash to {digest}"),
            });
        }
        Ok(Some(UpstreamManifest { digest, bytes }))
    }

    /// Starts reading blob `digest`; `None` if the upstream does not have it.
    pub async fn blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<reqwest::Response>, UpstreamError> {
        let response = self
            .send(Method::GET, repo, &format!("blobs/{digest}"), None)
            .await;
        self.counted(response.and_then(|response| match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if !status.is_success() => {
                Err(self.status_error(format!("blob {repo}@{digest}"), status))
            }
            _ => Ok(Some(response)),
        }))
    }
}

/// An error with its causes, which is where reqwest says what actually failed.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
