//! The bearer-token auth front ([`TokenAuthProxy`]) in front of a real `docker-registry`: skopeo
//! goes through the Docker Hub style challenge flow with the right credentials and gets exact
//! digests, is refused with wrong ones, the raw `401` carries the challenge, and tokens stop
//! working when their lifetime has passed.
//!
//! Each test starts its own registry and proxy on fresh ports, so they run in parallel. A missing
//! tool fails the test (skips it only with `SHOAL_SKIP_MISSING_CLIENTS=1`, see
//! `clients::skip_or_fail`).

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::{Value, json};
use shoal_tests::clients::{Credentials, Skopeo, require_tools, sha256_digest, wait_until};
use shoal_tests::http;
use shoal_tests::image::{GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::registry::{DockerRegistry, push_oci_layout};
use shoal_tests::token_auth::{SERVICE, TokenAuthOptions, TokenAuthProxy, basic_authorization};
use tempfile::TempDir;

const TOOLS: &[&str] = &["skopeo", "docker-registry"];

const REPO: &str = "token/app";
const REPO_TAG: &str = "token/app:v1";

/// Long enough that no test sees a token expire unless it asks for it.
const LONG_LIFETIME: Duration = Duration::from_secs(300);

/// Bound on waiting for a 1 s token to be refused.
const EXPIRY_WAIT_MAX: Duration = Duration::from_secs(10);

/// A registry holding one generated image.
struct Upstream {
    registry: DockerRegistry,
    image: GeneratedImage,
    _layout: TempDir,
}

/// Starts an anonymous registry and pushes a two-layer image (one layer of 3 MiB stored
/// uncompressed, so relaying it takes many reads) as `token/app:v1`.
fn upstream_with_image() -> Result<Upstream> {
    let registry = DockerRegistry::start()?;
    let layout = TempDir::with_prefix("shoal-token-layout-")?;
    let image = ImageSpec::new(77)
        .layer(3 << 20)
        .layer(10_000)
        .gzip(GzipLevel::Store)
        .write_oci_layout(&layout.path().join("oci"), None)?;
    let pushed = push_oci_layout(&image.path, &registry, REPO_TAG)?;
    ensure!(
        pushed == image.manifest_digest,
        "pushed {pushed}, generated {}",
        image.manifest_digest
    );
    Ok(Upstream {
        registry,
        image,
        _layout: layout,
    })
}

fn alice() -> Credentials {
    Credentials::new("alice", "correct horse")
}

fn proxy_with(upstream: &Upstream, lifetime: Duration) -> Result<TokenAuthProxy> {
    TokenAuthProxy::start(
        &upstream.registry,
        TokenAuthOptions {
            credentials: Some(alice()),
            token_lifetime: lifetime,
            ..TokenAuthOptions::default()
        },
    )
}

#[test]
fn skopeo_pulls_through_the_token_flow_with_the_right_credentials() -> Result<()> {
    if !require_tools(TOOLS)? {
        return Ok(());
    }
    let upstream = upstream_with_image()?;
    let proxy = proxy_with(&upstream, LONG_LIFETIME)?;
    let reference = proxy.reference(REPO_TAG);
    let skopeo = Skopeo::new().with_credentials(alice());

    assert_eq!(
        skopeo.inspect_digest(&reference)?,
        upstream.image.manifest_digest
    );
    let pulled = TempDir::new()?;
    let dest = pulled.path().join("oci");
    assert_eq!(
        skopeo.copy_to_oci(&reference, &dest, false)?,
        upstream.image.manifest_digest
    );
    for blob in &upstream.image.blobs {
        let bytes = fs::read(dest.join("blobs/sha256").join(blob.hex()))
            .with_context(|| format!("{} not pulled", blob.digest))?;
        assert_eq!(sha256_digest(&bytes), blob.digest);
        assert_eq!(bytes.len() as u64, blob.size);
    }

    // The flow itself: challenged first, then a token asked for the repository's pull scope.
    assert!(proxy.tokens_issued() >= 1, "no token issued");
    assert!(proxy.unauthorized_responses() >= 1, "never challenged");
    let scopes = proxy.scopes_requested();
    assert!(
        scopes.contains(&format!("repository:{REPO}:pull")),
        "{scopes:?}"
    );
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|(method, path, valid)| method == "GET" && path == "/token" && !valid),
        "{requests:?}"
    );
    // Every blob reached the registry, and only with a valid token.
    let counts = upstream.registry.blob_get_counts()?;
    for layer in &upstream.image.platforms[0].layers {
        let digest = &layer.blob.digest;
        assert_eq!(counts.get(digest), Some(&1), "{digest} in {counts:?}");
        let path = format!("/v2/{REPO}/blobs/{digest}");
        let through_proxy: Vec<bool> = requests
            .iter()
            .filter(|(method, p, _)| method == "GET" && *p == path)
            .map(|(_, _, valid)| *valid)
            .collect();
        assert_eq!(through_proxy, vec![true], "{path}: {requests:?}");
    }
    Ok(())
}

#[test]
fn wrong_or_missing_credentials_get_no_token_and_reach_nothing() -> Result<()> {
    if !require_tools(TOOLS)? {
        return Ok(());
    }
    let upstream = upstream_with_image()?;
    let proxy = proxy_with(&upstream, LONG_LIFETIME)?;
    let reference = proxy.reference(REPO_TAG);
    let forwarded_before = upstream.registry.access_log()?.len();

    let wrong = Skopeo::new().with_credentials(Credentials::new("alice", "wrong"));
    let error = match wrong.inspect_raw(&reference) {
        Ok(_) => bail!("inspect with a wrong password succeeded"),
        Err(error) => format!("{error:#}"),
    };
    assert!(
        error.to_lowercase().contains("unauthorized") || error.contains("401"),
        "{error}"
    );
    let pulled = TempDir::new()?;
    assert!(
        wrong
            .copy_to_oci(&reference, &pulled.path().join("oci"), false)
            .is_err(),
        "copy with a wrong password succeeded"
    );
    assert!(
        Skopeo::new().inspect_raw(&reference).is_err(),
        "anonymous inspect succeeded"
    );

    assert_eq!(proxy.tokens_issued(), 0);
    let requests = proxy.requests();
    let token_attempts = requests.iter().filter(|(_, path, _)| path == "/token");
    assert!(token_attempts.count() >= 2, "{requests:?}");
    assert!(requests.iter().all(|(_, _, valid)| !valid), "{requests:?}");
    // Each refused token request and each challenge is a 401.
    assert!(
        proxy.unauthorized_responses() >= requests.len() as u64,
        "{} 401s for {requests:?}",
        proxy.unauthorized_responses()
    );
    assert_eq!(
        upstream.registry.access_log()?.len(),
        forwarded_before,
        "a request reached the registry"
    );
    Ok(())
}

/// A response read off a raw socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// Sends `request` on `stream` and reads one `Content-Length` framed response (no body for a
/// `HEAD`), leaving the connection open for the next request.
fn exchange(
    stream: &mut TcpStream,
    reader: &mut BufReader<TcpStream>,
    request: &str,
) -> Result<RawResponse> {
    stream.write_all(request.as_bytes())?;
    let mut status_line = String::new();
    reader.read_line(&mut status_line)?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').context("bad header")?;
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if !request.starts_with("HEAD ") {
        let length: usize = response
            .header("content-length")
            .context("no Content-Length")?
            .parse()?;
        response.body = vec![0; length];
        reader.read_exact(&mut response.body)?;
    }
    Ok(response)
}

#[test]
fn unauthenticated_requests_get_the_bearer_challenge_on_a_kept_connection() -> Result<()> {
    if !require_tools(TOOLS)? {
        return Ok(());
    }
    let upstream = upstream_with_image()?;
    let proxy = proxy_with(&upstream, LONG_LIFETIME)?;
    let host = proxy.host();
    let mut stream = TcpStream::connect(proxy.addr())?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let realm = format!("http://{host}/token");
    let unauthorized = json!({
        "errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": null}]
    });

    let ping = exchange(
        &mut stream,
        &mut reader,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )?;
    assert_eq!(ping.status, 401);
    assert_eq!(
        ping.header("www-authenticate"),
        Some(format!("Bearer realm=\"{realm}\",service=\"{SERVICE}\"").as_str())
    );
    assert_eq!(ping.header("content-type"), Some("application/json"));
    assert_eq!(serde_json::from_slice::<Value>(&ping.body)?, unauthorized);

    // Same connection: the challenge names the repository's pull scope.
    let manifest = exchange(
        &mut stream,
        &mut reader,
        &format!("GET /v2/{REPO}/manifests/v1 HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )?;
    assert_eq!(manifest.status, 401);
    assert_eq!(
        manifest.header("www-authenticate"),
        Some(
            format!(
                "Bearer realm=\"{realm}\",service=\"{SERVICE}\",scope=\"repository:{REPO}:pull\""
            )
            .as_str()
        )
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&manifest.body)?,
        unauthorized
    );

    // A write is refused; its body is read off so the connection stays usable.
    let post = exchange(
        &mut stream,
        &mut reader,
        &format!(
            "POST /v2/{REPO}/blobs/uploads/ HTTP/1.1\r\nHost: {host}\r\nContent-Length: 3\r\n\r\nabc"
        ),
    )?;
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow"), Some("GET, HEAD"));

    let head = exchange(
        &mut stream,
        &mut reader,
        &format!("HEAD /v2/ HTTP/1.1\r\nHost: {host}\r\n\r\n"),
    )?;
    assert_eq!(head.status, 401);
    assert!(head.header("www-authenticate").is_some());

    let bogus = exchange(
        &mut stream,
        &mut reader,
        &format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer not-a-token\r\n\r\n"),
    )?;
    assert_eq!(bogus.status, 401);

    assert_eq!(proxy.unauthorized_responses(), 4);
    assert_eq!(proxy.tokens_issued(), 0);
    let requests = proxy.requests();
    let expected: Vec<(String, String, bool)> = [
        ("GET", "/v2/".to_owned()),
        ("GET", format!("/v2/{REPO}/manifests/v1")),
        ("POST", format!("/v2/{REPO}/blobs/uploads/")),
        ("HEAD", "/v2/".to_owned()),
        ("GET", "/v2/".to_owned()),
    ]
    .into_iter()
    .map(|(method, path)| (method.to_owned(), path, false))
    .collect();
    assert_eq!(requests, expected);
    assert!(
        upstream
            .registry
            .access_log()?
            .iter()
            .all(|entry| entry.method != "GET" || !entry.uri.starts_with("/v2/token/")),
        "an unauthorized request reached the registry"
    );
    Ok(())
}

/// `GET /token` with basic auth, as a client does after a challenge.
fn fetch_token(proxy: &TokenAuthProxy, credentials: Option<&Credentials>) -> Result<http::Fetched> {
    let url = format!(
        "{}?service={SERVICE}&scope=repository%3A{}%3Apull",
        proxy.realm(),
        REPO.replace('/', "%2F")
    );
    let authorization = credentials.map(basic_authorization);
    let headers: Vec<(&str, &str)> = authorization
        .as_deref()
        .map(|value| ("Authorization", value))
        .into_iter()
        .collect();
    http::get(&url, &headers)
}

#[test]
fn a_token_works_until_its_lifetime_passes() -> Result<()> {
    if !require_tools(TOOLS)? {
        return Ok(());
    }
    let upstream = upstream_with_image()?;
    let lifetime = Duration::from_secs(1);
    let proxy = proxy_with(&upstream, lifetime)?;

    let refused = fetch_token(&proxy, None)?;
    assert_eq!(refused.status, 401);
    assert_eq!(
        refused.header("www-authenticate"),
        Some(format!("Basic realm=\"{SERVICE}\"").as_str())
    );
    assert_eq!(
        fetch_token(&proxy, Some(&Credentials::new("alice", "nope")))?.status,
        401
    );
    assert_eq!(proxy.tokens_issued(), 0);

    let fetched_at = Instant::now();
    let issued = fetch_token(&proxy, Some(&alice()))?;
    assert_eq!(issued.status, 200);
    let body = issued.json()?;
    let token = body["token"].as_str().context("no token")?.to_owned();
    assert_eq!(body["access_token"].as_str(), Some(token.as_str()));
    assert_eq!(token.len(), 64, "{token}");
    assert!(token.bytes().all(|b| b.is_ascii_hexdigit()), "{token}");
    assert_eq!(body["expires_in"].as_u64(), Some(1));
    let issued_at = body["issued_at"].as_str().context("no issued_at")?;
    assert!(
        issued_at.len() == 20 && issued_at.as_bytes()[10] == b'T' && issued_at.ends_with('Z'),
        "{issued_at}"
    );
    assert_eq!(proxy.tokens_issued(), 1);
    assert_eq!(
        proxy.scopes_requested(),
        vec![format!("repository:{REPO}:pull")]
    );
    let second = fetch_token(&proxy, Some(&alice()))?.json()?;
    assert_ne!(second["token"].as_str(), Some(token.as_str()), "reused");

    // With the token: the manifest, its digest header, a HEAD and a ranged blob GET are relayed.
    let bearer = format!("Bearer {token}");
    let base = format!("{}/v2/{REPO}", proxy.url());
    let image = &upstream.image;
    let manifest = http::get(
        &format!("{base}/manifests/v1"),
        &[
            ("Authorization", &bearer),
            ("Accept", &image.manifest_media_type),
        ],
    )?;
    assert_eq!(manifest.status, 200, "{:?}", manifest.json());
    assert_eq!(sha256_digest(&manifest.body), image.manifest_digest);
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(image.manifest_digest.as_str())
    );
    assert_eq!(
        manifest.header("content-type"),
        Some(image.manifest_media_type.as_str())
    );
    let layer = &image.platforms[0].layers[0].blob;
    let blob_url = format!("{base}/blobs/{}", layer.digest);
    let head = http::request("HEAD", &blob_url, &[("Authorization", &bearer)])?;
    assert_eq!(head.status, 200);
    assert_eq!(
        head.header("content-length"),
        Some(layer.size.to_string().as_str())
    );
    assert!(head.body.is_empty());
    let ranged = http::get(
        &blob_url,
        &[("Authorization", &bearer), ("Range", "bytes=0-9")],
    )?;
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body.len(), 10);
    assert_eq!(
        ranged.header("content-range"),
        Some(format!("bytes 0-9/{}", layer.size).as_str())
    );
    let missing = http::get(
        &format!("{base}/blobs/sha256:{}", "0".repeat(64)),
        &[("Authorization", &bearer)],
    )?;
    assert_eq!(missing.status, 404, "the registry's own 404 is relayed");

    // The token keeps working until its lifetime has passed, then is refused with a challenge.
    let ping_url = format!("{}/v2/", proxy.url());
    let mut accepted = 0;
    let mut last_refusal = None;
    wait_until("the token to expire", EXPIRY_WAIT_MAX, || {
        let ping = http::get(&ping_url, &[("Authorization", &bearer)])?;
        match ping.status {
            200 => {
                accepted += 1;
                Ok(false)
            }
            401 => {
                last_refusal = Some(ping);
                Ok(true)
            }
            other => bail!("GET /v2/ answered {other}"),
        }
    })?;
    let refused_after = fetched_at.elapsed();
    assert!(
        refused_after >= lifetime,
        "refused after {refused_after:?}, lifetime {lifetime:?}"
    );
    assert!(accepted >= 1, "the token never worked on /v2/");
    let refusal = last_refusal.context("no refusal kept")?;
    assert!(
        refusal
            .header("www-authenticate")
            .is_some_and(|value| value.starts_with("Bearer realm=")),
        "{:?}",
        refusal.headers
    );
    let expired = http::get(&blob_url, &[("Authorization", &bearer)])?;
    assert_eq!(expired.status, 401, "an expired token stays refused");

    // A fresh token works again.
    let fresh = fetch_token(&proxy, Some(&alice()))?.json()?;
    let fresh = format!("Bearer {}", fresh["token"].as_str().context("no token")?);
    let (status, digest, size) = {
        let blob = http::get(&blob_url, &[("Authorization", &fresh)])?;
        (
            blob.status,
            sha256_digest(&blob.body),
            blob.body.len() as u64,
        )
    };
    assert_eq!(
        (status, digest.as_str(), size),
        (200, layer.digest.as_str(), layer.size)
    );
    Ok(())
}

#[test]
fn anonymous_tokens_are_issued_without_credentials() -> Result<()> {
    if !require_tools(TOOLS)? {
        return Ok(());
    }
    let upstream = upstream_with_image()?;
    let proxy = TokenAuthProxy::start(&upstream.registry, TokenAuthOptions::default())?;
    let issued = fetch_token(&proxy, None)?;
    assert_eq!(issued.status, 200);
    assert_eq!(issued.json()?["expires_in"].as_u64(), Some(300));
    let digest = Skopeo::new().inspect_digest(&proxy.reference(REPO_TAG))?;
    assert_eq!(digest, upstream.image.manifest_digest);
    assert!(proxy.tokens_issued() >= 2, "skopeo fetched no token");
    assert!(
        proxy.unauthorized_responses() >= 1,
        "skopeo was never challenged"
    );
    Ok(())
}
