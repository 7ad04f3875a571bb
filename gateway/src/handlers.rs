//! The request handler: decode, ask the [`ContentSource`], answer like a registry.

use axum::body::Body;
use axum::extract::{Extension, Query, State};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use shoal_protocol::reference::DEFAULT_NAMESPACE;
use shoal_protocol::{Descriptor, Digest, ParsedManifest, RepoName, TagOrDigest, media_type};

use crate::accept::Accepted;
use crate::auth::token::{self, TOKEN_PATH};
use crate::auth::{Auth, Caller, Refusal};
use crate::error::GatewayError;
use crate::events::PullKind;
use crate::path::{PathError, Route};
use crate::range::{self, RangeRequest};
use crate::serve::ClientInfo;
use crate::source::{ContentSource, Manifest};
use crate::zone::Zone;

const API_VERSION: &str = "registry/2.0";
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";

/// Platform served to a client that asked by tag for a manifest list it cannot read, as the
/// distribution registry does.
const DEFAULT_PLATFORM: (&str, &str) = ("linux", "amd64");

#[derive(Debug, Clone)]
struct Gateway<S> {
    source: S,
    default_namespace: String,
    auth: Option<Auth>,
}

/// The `/v2/` API over `source`, open to every client. Requests without `?ns=` address
/// `default_namespace` (normally `docker.io`).
pub fn router<S: ContentSource>(source: S, default_namespace: Option<String>) -> Router {
    router_with_auth(source, default_namespace, None)
}

/// The `/v2/` API over `source`; with `auth`, requests need credentials and pass its access
/// rules, and `/token` issues tokens (see [`crate::auth`]).
pub fn router_with_auth<S: ContentSource>(
    source: S,
    default_namespace: Option<String>,
    auth: Option<Auth>,
) -> Router {
    let state = Gateway {
        source,
        default_namespace: default_namespace.unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned()),
        auth,
    };
    Router::new().fallback(handle::<S>).with_state(state)
}

async fn handle<S: ContentSource>(
    State(gateway): State<Gateway<S>>,
    client: Option<Extension<ClientInfo>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let client = client.map(|Extension(client)| client);
    let mut response = match serve(&gateway, &method, &uri, &headers, client).await {
        Ok(response) => response,
        Err(error) => {
            tracing::debug!(%method, %uri, %error, "request refused");
            error.into_response()
        }
    };
    response.headers_mut().insert(
        "docker-distribution-api-version",
        HeaderValue::from_static(API_VERSION),
    );
    response
}

struct Params(Vec<(String, String)>);

impl Params {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Turns an authentication refusal into the answer, recording it for the node.
fn refuse<S: ContentSource>(
    gateway: &Gateway<S>,
    refusal: Refusal,
    headers: &HeaderMap,
    client: Option<ClientInfo>,
    repository: Option<&str>,
) -> GatewayError {
    if let Some(failure) = refusal.failure() {
        gateway.source.auth_failed(failure);
    }
    let host = headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok());
    let realm = token::realm(host, client.is_some_and(|client| client.tls));
    refusal.into_error(&realm, repository)
}

async fn serve<S: ContentSource>(
    gateway: &Gateway<S>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    client: Option<ClientInfo>,
) -> Result<Response, GatewayError> {
    // The registry is read-only: every write under /v2 is refused before the path is judged.
    let is_api = uri.path() == "/v2" || uri.path().starts_with("/v2/") || uri.path() == TOKEN_PATH;
    if is_api && method != Method::GET && method != Method::HEAD {
        return Err(GatewayError::Unsupported);
    }
    let params = Params(
        Query::try_from_uri(uri)
            .map(|Query(pairs)| pairs)
            .unwrap_or_default(),
    );
    let parsed = Route::parse(uri.path());
    let caller = match &gateway.auth {
        None => None,
        Some(auth) if uri.path() == TOKEN_PATH => {
            return token_endpoint(gateway, auth, headers, client, &params).await;
        }
        Some(auth) => {
            // The challenge names the repository, so the client asks for a token for it.
            let name = match &parsed {
                Ok(route) => route.name(),
                Err(PathError::Reference { name, .. }) => Some(name.as_str()),
                Err(_) => None,
            };
            Some(
                auth.authenticate(headers, client, &gateway.default_namespace)
                    .await
                    .map_err(|refusal| refuse(gateway, refusal, headers, client, name))?,
            )
        }
    };
    let namespace = params
        .get("ns")
        .unwrap_or(&gateway.default_namespace)
        .to_owned();
    // A repository is checked against the caller's access before anything about it is looked
    // up, so the answer is the same whether it exists or not.
    let repo = |name: &str| {
        let repo = RepoName::new(&namespace, name)
            .map_err(|error| GatewayError::NameInvalid(error.to_string()))?;
        if let Some(caller) = &caller {
            caller
                .check_repository(&repo)
                .map_err(|refusal| refuse(gateway, refusal, headers, client, Some(repo.path())))?;
        }
        Ok::<_, GatewayError>(repo)
    };
    let check = |check: fn(&Caller) -> Result<(), Refusal>| match &caller {
        Some(caller) => {
            check(caller).map_err(|refusal| refuse(gateway, refusal, headers, client, None))
        }
        None => Ok(()),
    };
    let route = match parsed {
        Ok(route) => route,
        Err(PathError::NotFound) => return Err(GatewayError::NotFound),
        Err(PathError::Digest(digest)) => {
            return Err(GatewayError::DigestInvalid(digest.to_string()));
        }
        // A name that is not even valid is still NAME_INVALID; otherwise this is a manifest
        // that cannot exist.
        Err(PathError::Reference { name, .. }) => {
            let repo = repo(&name)?;
            return Err(repo_unknown_or(gateway, &repo, GatewayError::ManifestUnknown).await);
        }
    };
    let head = method == Method::HEAD;
    let pulled = |kind: PullKind| {
        if let (false, Some(client)) = (head, client) {
            gateway.source.pulled(kind, Zone::of(client.addr.ip()));
        }
    };
    match route {
        Route::Base => {
            check(Caller::check_version)?;
            Ok(Json(serde_json::json!({})).into_response())
        }
        Route::Upload { .. } => Err(GatewayError::Unsupported),
        Route::Manifest { name, reference } => {
            let response = manifest(gateway, &repo(&name)?, &reference, headers, head).await?;
            pulled(PullKind::Manifest);
            Ok(response)
        }
        Route::Blob { name, digest } => {
            let response = blob(gateway, &repo(&name)?, &digest, headers, head).await?;
            pulled(PullKind::Blob);
            Ok(response)
        }
        Route::Tags { name } => tags(gateway, &repo(&name)?, &params, head).await,
        Route::Catalog => {
            check(Caller::check_catalog)?;
            catalog(gateway, caller.as_ref(), &namespace, &params, head).await
        }
        Route::Referrers { name, digest } => {
            referrers(gateway, &repo(&name)?, &digest, &params, head).await
        }
    }
}

/// `GET /token`: Basic credentials (or none) in, a token for the requested scope out, as a
/// registry token server answers (`token` and `access_token` both, as clients read either).
async fn token_endpoint<S: ContentSource>(
    gateway: &Gateway<S>,
    auth: &Auth,
    headers: &HeaderMap,
    client: Option<ClientInfo>,
    params: &Params,
) -> Result<Response, GatewayError> {
    let scopes = params
        .0
        .iter()
        .filter(|(key, _)| key == "scope")
        .map(|(_, value)| value.as_str());
    match auth.issue_token(headers, client, scopes).await {
        Ok(grant) => Ok(Json(serde_json::json!({
            "token": grant.token,
            "access_token": grant.token,
            "expires_in": grant.expires_in,
            "issued_at": token::rfc3339(grant.issued_at),
        }))
        .into_response()),
        Err(refusal) => {
            if let Some(failure) = refusal.failure() {
                gateway.source.auth_failed(failure);
            }
            Err(match refusal {
                Refusal::Unauthorized { message, .. } => GatewayError::Unauthorized {
                    message,
                    challenge: format!("Basic realm=\"{}\"", token::SERVICE),
                },
                Refusal::Denied => GatewayError::Denied,
                Refusal::TooManyRequests => GatewayError::TooManyRequests,
            })
        }
    }
}

async fn repo_unknown_or<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    otherwise: GatewayError,
) -> GatewayError {
    match gateway.source.tags(repo).await {
        Ok(None) => GatewayError::NameUnknown,
        Ok(Some(_)) => otherwise,
        Err(error) => error.into(),
    }
}

async fn manifest<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    reference: &TagOrDigest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, GatewayError> {
    let Some(mut manifest) = gateway.source.manifest(repo, reference).await? else {
        return Err(repo_unknown_or(gateway, repo, GatewayError::ManifestUnknown).await);
    };
    let accepted = Accepted::from_headers(headers);
    if !accepted.accepts(&manifest.media_type) {
        manifest = match (reference, manifest.media_type.as_str()) {
            (TagOrDigest::Tag(_), media_type::DOCKER_MANIFEST_LIST) => {
                default_platform_manifest(gateway, repo, &manifest, &accepted).await?
            }
            _ => {
                return Err(GatewayError::ManifestNotAcceptable(format!(
                    "{} found, but the Accept header does not allow it",
                    manifest.media_type
                )));
            }
        };
    }
    let mut response_headers = HeaderMap::new();
    insert(
        &mut response_headers,
        header::CONTENT_TYPE,
        &manifest.media_type,
    );
    insert(
        &mut response_headers,
        header::CONTENT_LENGTH,
        &manifest.bytes.len().to_string(),
    );
    insert(
        &mut response_headers,
        DOCKER_CONTENT_DIGEST,
        &manifest.digest.to_string(),
    );
    insert(
        &mut response_headers,
        header::ETAG,
        &format!("\"{}\"", manifest.digest),
    );
    let body = if head {
        Body::empty()
    } else {
        Body::from(manifest.bytes)
    };
    Ok((StatusCode::OK, response_headers, body).into_response())
}

async fn default_platform_manifest<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    list: &Manifest,
    accepted: &Accepted,
) -> Result<Manifest, GatewayError> {
    let not_acceptable = || {
        GatewayError::ManifestNotAcceptable(format!(
            "manifest list has no {}/{} manifest the client accepts",
            DEFAULT_PLATFORM.0, DEFAULT_PLATFORM.1
        ))
    };
    let parsed =
        ParsedManifest::parse(&list.bytes, Some(&list.media_type)).map_err(|_| not_acceptable())?;
    let child = parsed
        .manifests
        .iter()
        .find(|child| is_default_platform(child) && accepted.accepts(&child.media_type))
        .ok_or_else(not_acceptable)?;
    gateway
        .source
        .manifest(repo, &TagOrDigest::Digest(child.digest))
        .await?
        .ok_or(GatewayError::ManifestUnknown)
}

fn is_default_platform(descriptor: &Descriptor) -> bool {
    let Some(platform) = &descriptor.platform else {
        return false;
    };
    platform.get("os").and_then(|v| v.as_str()) == Some(DEFAULT_PLATFORM.0)
        && platform.get("architecture").and_then(|v| v.as_str()) == Some(DEFAULT_PLATFORM.1)
}

async fn blob<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    digest: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> Result<Response, GatewayError> {
    let blob = gateway
        .source
        .open_blob(repo, digest)
        .await?
        .ok_or(GatewayError::BlobUnknown)?;
    let size = blob.size;
    let range_header = headers
        .get(header::RANGE)
        .and_then(|value| value.to_str().ok());
    let (status, range) = match range::parse(range_header, size) {
        RangeRequest::Full => (StatusCode::OK, 0..size),
        RangeRequest::Partial(range) => (StatusCode::PARTIAL_CONTENT, range),
        RangeRequest::Unsatisfiable => return Err(GatewayError::RangeInvalid { size }),
    };
    let mut response_headers = HeaderMap::new();
    insert(
        &mut response_headers,
        header::CONTENT_TYPE,
        "application/octet-stream",
    );
    insert(
        &mut response_headers,
        header::CONTENT_LENGTH,
        &(range.end - range.start).to_string(),
    );
    insert(
        &mut response_headers,
        DOCKER_CONTENT_DIGEST,
        &digest.to_string(),
    );
    insert(
        &mut response_headers,
        header::ETAG,
        &format!("\"{digest}\""),
    );
    insert(&mut response_headers, header::ACCEPT_RANGES, "bytes");
    insert(
        &mut response_headers,
        header::CACHE_CONTROL,
        "max-age=31536000",
    );
    if status == StatusCode::PARTIAL_CONTENT {
        let content_range = format!("bytes {}-{}/{size}", range.start, range.end - 1);
        insert(&mut response_headers, header::CONTENT_RANGE, &content_range);
    }
    let body = if head || range.is_empty() {
        Body::empty()
    } else {
        Body::from_stream((blob.read)(range))
    };
    Ok((status, response_headers, body).into_response())
}

/// Applies `n` and `last` to a sorted list, returning the page and whether more follow.
fn paginate(mut items: Vec<String>, params: &Params) -> Result<(Vec<String>, bool), GatewayError> {
    items.sort();
    items.dedup();
    if let Some(last) = params.get("last") {
        items.retain(|item| item.as_str() > last);
    }
    let Some(n) = params.get("n") else {
        return Ok((items, false));
    };
    let n: usize = n
        .parse()
        .map_err(|_| GatewayError::PaginationNumberInvalid)?;
    let more = items.len() > n;
    items.truncate(n);
    Ok((items, more))
}

fn paginated_response(
    body: serde_json::Value,
    page: &[String],
    more: bool,
    path: &str,
    params: &Params,
    head: bool,
) -> Response {
    let bytes = Bytes::from(body.to_string());
    let mut response_headers = HeaderMap::new();
    insert(
        &mut response_headers,
        header::CONTENT_TYPE,
        "application/json",
    );
    // Set here, not left to axum: HEAD must announce the length GET would send.
    insert(
        &mut response_headers,
        header::CONTENT_LENGTH,
        &bytes.len().to_string(),
    );
    if let (true, Some(last), Some(n)) = (more, page.last(), params.get("n")) {
        let ns = params
            .get("ns")
            .map(|ns| format!("&ns={ns}"))
            .unwrap_or_default();
        insert(
            &mut response_headers,
            header::LINK,
            &format!("<{path}?n={n}&last={last}{ns}>; rel=\"next\""),
        );
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    (StatusCode::OK, response_headers, body).into_response()
}

async fn tags<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    params: &Params,
    head: bool,
) -> Result<Response, GatewayError> {
    let tags = gateway
        .source
        .tags(repo)
        .await?
        .ok_or(GatewayError::NameUnknown)?;
    let (page, more) = paginate(tags.into_iter().map(String::from).collect(), params)?;
    let body = serde_json::json!({ "name": repo.path(), "tags": page });
    let path = format!("/v2/{}/tags/list", repo.path());
    Ok(paginated_response(body, &page, more, &path, params, head))
}

async fn catalog<S: ContentSource>(
    gateway: &Gateway<S>,
    caller: Option<&Caller>,
    namespace: &str,
    params: &Params,
    head: bool,
) -> Result<Response, GatewayError> {
    let namespace = shoal_protocol::reference::normalize_namespace(namespace)
        .map_err(|error| GatewayError::NameInvalid(error.to_string()))?;
    let mut repositories = gateway.source.repositories(&namespace).await?;
    if let Some(caller) = caller {
        repositories.retain(|path| {
            RepoName::new(&namespace, path).is_ok_and(|repo| caller.may_pull(&repo))
        });
    }
    let (page, more) = paginate(repositories, params)?;
    let body = serde_json::json!({ "repositories": page });
    Ok(paginated_response(
        body,
        &page,
        more,
        "/v2/_catalog",
        params,
        head,
    ))
}

async fn referrers<S: ContentSource>(
    gateway: &Gateway<S>,
    repo: &RepoName,
    digest: &Digest,
    params: &Params,
    head: bool,
) -> Result<Response, GatewayError> {
    let mut referrers = gateway
        .source
        .referrers(repo, digest)
        .await?
        .ok_or(GatewayError::NameUnknown)?;
    let filter = params.get("artifactType");
    if let Some(artifact_type) = filter {
        referrers.retain(|descriptor| descriptor.artifact_type.as_deref() == Some(artifact_type));
    }
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::OCI_INDEX,
        "manifests": referrers,
    });
    let bytes = Bytes::from(index.to_string());
    let mut response_headers = HeaderMap::new();
    insert(
        &mut response_headers,
        header::CONTENT_TYPE,
        media_type::OCI_INDEX,
    );
    insert(
        &mut response_headers,
        header::CONTENT_LENGTH,
        &bytes.len().to_string(),
    );
    if filter.is_some() {
        insert(&mut response_headers, "oci-filters-applied", "artifactType");
    }
    let body = if head {
        Body::empty()
    } else {
        Body::from(bytes)
    };
    Ok((StatusCode::OK, response_headers, body).into_response())
}

fn insert<K: header::IntoHeaderName>(headers: &mut HeaderMap, name: K, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}
