//! The gateway with credentials and access rules (`shoal_gateway::auth`), driven through
//! `tower::ServiceExt::oneshot` with the client address every request carries in production
//! (`ClientInfo`, inserted by `serve`).

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use common::{TestStore, image, repo};
use http::{HeaderMap, Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_gateway::auth::access::AccessRules;
use shoal_gateway::auth::htpasswd::{self, Htpasswd};
use shoal_gateway::{
    Auth, AuthConfig, AuthFailure, ClientInfo, ContentSource, Manifest, OpenBlob, PullKind,
    SourceError, Zone,
};
use shoal_protocol::media_type::{OCI_CONFIG, OCI_MANIFEST};
use shoal_protocol::{Descriptor, Digest, RepoName, Tag, TagOrDigest};
use tower::ServiceExt;

const RULES: &str = r#"
[groups]
team = ["alice"]

[[rule]]
repositories = ["team/*"]
groups = ["team"]

[[rule]]
repositories = ["library/*"]
anonymous = true
"#;

const REMOTE: &str = "192.0.2.7:40000";
const SITE: &str = "10.1.2.3:40000";
const LOOPBACK: &str = "127.0.0.1:40000";

/// The test store, recording what the gateway reports to the node.
#[derive(Clone, Default)]
struct Recording {
    store: TestStore,
    pulls: Arc<Mutex<Vec<(PullKind, Zone)>>>,
    failures: Arc<Mutex<Vec<AuthFailure>>>,
}

impl ContentSource for Recording {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Manifest>, SourceError> {
        self.store.manifest(repo, reference).await
    }
    async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<OpenBlob>, SourceError> {
        self.store.open_blob(repo, digest).await
    }
    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>, SourceError> {
        self.store.tags(repo).await
    }
    async fn repositories(&self, namespace: &str) -> Result<Vec<String>, SourceError> {
        self.store.repositories(namespace).await
    }
    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, SourceError> {
        self.store.referrers(repo, digest).await
    }
    fn pulled(&self, kind: PullKind, zone: Zone) {
        self.pulls.lock().unwrap().push((kind, zone));
    }
    fn auth_failed(&self, failure: AuthFailure) {
        self.failures.lock().unwrap().push(failure);
    }
}

struct Setup {
    app: Router,
    source: Recording,
    layer: Digest,
}

fn setup(loopback_requires_auth: bool) -> Setup {
    let source = Recording::default();
    let mut layer = Digest::of(b"");
    for path in ["team/app", "team/other", "other/app", "library/alpine"] {
        let r = repo("docker.io", path);
        let bytes = format!("layer of {path}");
        layer = source.store.add_blob(&r, bytes.clone().into_bytes());
        source.store.add_blob(&r, &b"{}"[..]);
        source.store.add_manifest(
            &r,
            OCI_MANIFEST,
            &image(OCI_MANIFEST, OCI_CONFIG, b"{}", bytes.as_bytes(), None),
            Some("1"),
        );
    }
    // Cost 4: the rate-limit test runs bcrypt for every counted failure.
    let text = htpasswd::hash_line("alice", b"wonderland", 4).unwrap()
        + "\n"
        + &htpasswd::hash_line("mallory", b"evil", 4).unwrap();
    let auth = Auth::new(AuthConfig {
        htpasswd: Htpasswd::parse(&text).unwrap(),
        rules: AccessRules::parse(RULES).unwrap(),
        loopback_requires_auth,
        token_lifetime: Duration::from_secs(300),
    })
    .unwrap();
    let app = shoal_gateway::router_with_auth(source.clone(), None, Some(auth));
    Setup { app, source, layer }
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Answer {
    fn challenge(&self) -> &str {
        self.headers
            .get(header::WWW_AUTHENTICATE)
            .map_or("", |v| v.to_str().unwrap())
    }
    fn code(&self) -> &str {
        self.body["errors"][0]["code"].as_str().unwrap_or("")
    }
}

async fn send(app: &Router, uri: &str, from: &str, authorization: Option<&[u8]>) -> Answer {
    let mut request = Request::get(uri).header(header::HOST, "gw.example:5050");
    if let Some(value) = authorization {
        request = request.header(header::AUTHORIZATION, value);
    }
    let mut request = request.body(Body::empty()).unwrap();
    request.extensions_mut().insert(ClientInfo {
        addr: from.parse::<SocketAddr>().unwrap(),
        tls: false,
    });
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        headers,
        body,
    }
}

fn basic(user: &str, password: &str) -> Vec<u8> {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}"))).into_bytes()
}

fn bearer(token: &str) -> Vec<u8> {
    format!("Bearer {token}").into_bytes()
}

async fn token(app: &Router, scope: &str, user: &str, password: &str) -> String {
    let answer = send(
        app,
        &format!("/token?service=shoal&scope={scope}"),
        REMOTE,
        Some(&basic(user, password)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.body["token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn unauthenticated_requests_are_challenged_to_the_token_endpoint() {
    let s = setup(false);
    // Without credentials, /v2/ is challenged even though anonymous clients may pull
    // library/* (docker login takes a 200 here for success).
    let answer = send(&s.app, "/v2/", REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    // The catalog is open to anonymous clients when some rule is, and closed otherwise.
    let s_closed = {
        let auth = Auth::new(AuthConfig {
            htpasswd: Htpasswd::default(),
            rules: AccessRules::default(),
            loopback_requires_auth: false,
            token_lifetime: Duration::from_secs(300),
        })
        .unwrap();
        shoal_gateway::router_with_auth(s.source.clone(), None, Some(auth))
    };
    let answer = send(&s_closed, "/v2/_catalog", REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(&s_closed, "/v2/", REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge(),
        "Bearer realm=\"http://gw.example:5050/token\",service=\"shoal\""
    );
    assert_eq!(answer.code(), "UNAUTHORIZED");
    assert_eq!(
        answer.headers["docker-distribution-api-version"],
        "registry/2.0"
    );
    let answer = send(&s.app, "/v2/team/app/manifests/1", REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        answer.challenge(),
        "Bearer realm=\"http://gw.example:5050/token\",service=\"shoal\",scope=\"repository:team/app:pull\""
    );
    // What anonymous rules grant is served without credentials.
    let answer = send(&s.app, "/v2/library/alpine/manifests/1", REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn basic_credentials_pull_what_the_rules_grant_and_nothing_else() {
    let s = setup(false);
    let alice = basic("alice", "wonderland");
    let answer = send(&s.app, "/v2/", REMOTE, Some(&alice)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = send(&s.app, "/v2/team/app/manifests/1", REMOTE, Some(&alice)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let wrong = basic("alice", "Wonderland");
    let answer = send(&s.app, "/v2/team/app/manifests/1", REMOTE, Some(&wrong)).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(answer.challenge().starts_with("Bearer realm="));
    let answer = send(
        &s.app,
        "/v2/team/app/manifests/1",
        REMOTE,
        Some(&basic("bob", "x")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        *s.source.failures.lock().unwrap(),
        vec![AuthFailure::Credentials, AuthFailure::Credentials]
    );
}

#[tokio::test]
async fn a_denied_repository_answers_the_same_whether_it_exists_or_not() {
    let s = setup(false);
    let alice = basic("alice", "wonderland");
    let mut answers = Vec::new();
    for uri in [
        "/v2/other/app/manifests/1",
        "/v2/other/missing/manifests/1",
        "/v2/other/app/manifests/no-such-tag",
        "/v2/other/app/manifests/@@bad",
        "/v2/other/missing/tags/list",
        "/v2/other/app/tags/list",
        &format!("/v2/other/app/blobs/{}", s.layer),
        &format!("/v2/other/missing/blobs/{}", s.layer),
    ] {
        let answer = send(&s.app, uri, REMOTE, Some(&alice)).await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{uri}");
        assert_eq!(answer.code(), "DENIED", "{uri}");
        answers.push(answer.body);
    }
    assert!(answers.windows(2).all(|pair| pair[0] == pair[1]));
    assert!(s.source.pulls.lock().unwrap().is_empty());
    // Anonymous: a challenge, the same for both.
    let a = send(&s.app, "/v2/other/app/tags/list", REMOTE, None).await;
    let b = send(&s.app, "/v2/other/missing/tags/list", REMOTE, None).await;
    assert_eq!(
        (a.status, b.status),
        (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED)
    );
    assert_eq!(a.body, b.body);
}

#[tokio::test]
async fn the_catalog_shows_only_what_the_caller_may_pull() {
    let s = setup(false);
    let alice = basic("alice", "wonderland");
    let answer = send(&s.app, "/v2/_catalog", REMOTE, Some(&alice)).await;
    assert_eq!(
        answer.body,
        json!({ "repositories": ["library/alpine", "team/app", "team/other"] })
    );
    let answer = send(&s.app, "/v2/_catalog?n=1", REMOTE, Some(&alice)).await;
    assert_eq!(answer.body, json!({ "repositories": ["library/alpine"] }));
    let answer = send(&s.app, "/v2/_catalog", REMOTE, None).await;
    assert_eq!(answer.body, json!({ "repositories": ["library/alpine"] }));
    let answer = send(
        &s.app,
        "/v2/_catalog",
        REMOTE,
        Some(&basic("mallory", "evil")),
    )
    .await;
    assert_eq!(answer.body, json!({ "repositories": ["library/alpine"] }));
    let answer = send(&s.app, "/v2/_catalog", LOOPBACK, None).await;
    assert_eq!(answer.body["repositories"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn tokens_grant_their_scope_until_tampered_with() {
    let s = setup(false);
    let token = token(&s.app, "repository:team/app:pull", "alice", "wonderland").await;
    let answer = send(
        &s.app,
        "/v2/team/app/manifests/1",
        REMOTE,
        Some(&bearer(&token)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    // Another repository alice may pull, but not in this token's scope: challenged again.
    let answer = send(
        &s.app,
        "/v2/team/other/manifests/1",
        REMOTE,
        Some(&bearer(&token)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer
            .challenge()
            .ends_with("scope=\"repository:team/other:pull\",error=\"insufficient_scope\""),
        "{}",
        answer.challenge()
    );
    // A repository the rules deny is not granted, and the request is denied.
    let other = self::token(&s.app, "repository:other/app:pull", "alice", "wonderland").await;
    let answer = send(
        &s.app,
        "/v2/other/app/manifests/1",
        REMOTE,
        Some(&bearer(&other)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    // Altered: one character of the signature changed.
    let mut tampered = token.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let answer = send(
        &s.app,
        "/v2/team/app/manifests/1",
        REMOTE,
        Some(&bearer(&tampered)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert!(
        answer
            .challenge()
            .contains("scope=\"repository:team/app:pull\"")
    );
    assert!(
        s.source
            .failures
            .lock()
            .unwrap()
            .contains(&AuthFailure::Token)
    );
    // Wrong credentials at the token endpoint.
    let answer = send(
        &s.app,
        "/token?service=shoal&scope=repository:team/app:pull",
        REMOTE,
        Some(&basic("alice", "nope")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    assert_eq!(answer.challenge(), "Basic realm=\"shoal\"");
}

#[tokio::test]
async fn docker_login_gets_a_token_as_it_asks_for_one() {
    let s = setup(true);
    // dockerd's login: GET /v2/, then the realm with Basic, account= and offline_token=true.
    let answer = send(&s.app, "/v2/", LOOPBACK, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(
        &s.app,
        "/token?account=alice&client_id=docker&offline_token=true&service=shoal",
        LOOPBACK,
        Some(&basic("alice", "wonderland")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.headers[header::CONTENT_TYPE], "application/json");
    let token = answer.body["token"].as_str().unwrap();
    assert_eq!(answer.body["access_token"], token);
    assert_eq!(answer.body["expires_in"], 300);
    assert!(answer.body["issued_at"].as_str().unwrap().ends_with('Z'));
    let answer = send(&s.app, "/v2/", LOOPBACK, Some(&bearer(token))).await;
    assert_eq!(answer.status, StatusCode::OK);
    // An anonymous token is issued too, carrying only anonymous grants.
    let answer = send(
        &s.app,
        "/token?service=shoal&scope=repository:library/alpine:pull&scope=repository:team/app:pull",
        REMOTE,
        None,
    )
    .await;
    let anonymous = answer.body["token"].as_str().unwrap();
    let ok = send(
        &s.app,
        "/v2/library/alpine/manifests/1",
        REMOTE,
        Some(&bearer(anonymous)),
    )
    .await;
    let no = send(
        &s.app,
        "/v2/team/app/manifests/1",
        REMOTE,
        Some(&bearer(anonymous)),
    )
    .await;
    assert_eq!(
        (ok.status, no.status),
        (StatusCode::OK, StatusCode::UNAUTHORIZED)
    );
}

#[tokio::test]
async fn loopback_is_the_host_s_own_runtime_unless_told_otherwise() {
    let open = setup(false);
    let answer = send(&open.app, "/v2/other/app/manifests/1", LOOPBACK, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let answer = send(&open.app, "/v2/other/app/manifests/1", "[::1]:1", None).await;
    assert_eq!(answer.status, StatusCode::OK);
    let closed = setup(true);
    let answer = send(&closed.app, "/v2/other/app/manifests/1", LOOPBACK, None).await;
    assert_eq!(answer.status, StatusCode::UNAUTHORIZED);
    let answer = send(
        &closed.app,
        "/v2/team/app/manifests/1",
        LOOPBACK,
        Some(&basic("alice", "wonderland")),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK);
}

#[tokio::test]
async fn malformed_authorization_headers_get_a_clean_401() {
    let s = setup(false);
    let oversized = format!("Basic {}", "A".repeat(9000));
    let no_colon = format!("Basic {}", STANDARD.encode("alice"));
    let not_utf8 = [b"Basic ".as_slice(), STANDARD.encode(b"\xff:pw").as_bytes()].concat();
    for value in [
        &b"Digest username=alice"[..],
        b"Basic",
        b"Basic %%%",
        b"Bearer ",
        b"Bearer not-a-token",
        b"Basic \xff\xfe",
        no_colon.as_bytes(),
        &not_utf8,
        oversized.as_bytes(),
    ] {
        let answer = send(&s.app, "/v2/team/app/manifests/1", REMOTE, Some(value)).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{value:?}");
        assert_eq!(answer.code(), "UNAUTHORIZED", "{value:?}");
        assert!(answer.challenge().starts_with("Bearer realm="), "{value:?}");
    }
}

#[tokio::test]
async fn an_address_guessing_passwords_is_limited_and_others_are_served() {
    let s = setup(false);
    let mut limited = 0;
    for attempt in 0..1000 {
        let answer = send(
            &s.app,
            "/v2/team/app/manifests/1",
            REMOTE,
            Some(&basic("alice", &format!("guess{attempt}"))),
        )
        .await;
        match answer.status {
            StatusCode::UNAUTHORIZED => assert_eq!(limited, 0, "attempt {attempt}"),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(answer.code(), "TOOMANYREQUESTS");
                limited += 1;
            }
            other => panic!("attempt {attempt}: {other}"),
        }
    }
    assert_eq!(limited, 1000 - 10);
    // Even the right password is refused from there for the rest of the window...
    let alice = basic("alice", "wonderland");
    let answer = send(&s.app, "/v2/team/app/manifests/1", REMOTE, Some(&alice)).await;
    assert_eq!(answer.status, StatusCode::TOO_MANY_REQUESTS);
    // ...while another address is served.
    let answer = send(&s.app, "/v2/team/app/manifests/1", SITE, Some(&alice)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let failures = s.source.failures.lock().unwrap();
    assert_eq!(
        failures
            .iter()
            .filter(|f| **f == AuthFailure::RateLimited)
            .count(),
        991
    );
}

#[tokio::test]
async fn pulls_are_reported_with_the_client_s_zone() {
    let s = setup(false);
    let alice = basic("alice", "wonderland");
    send(&s.app, "/v2/team/app/manifests/1", LOOPBACK, None).await;
    send(&s.app, "/v2/team/app/manifests/1", SITE, Some(&alice)).await;
    let blob = format!("/v2/library/alpine/blobs/{}", s.layer);
    let answer = send(&s.app, &blob, REMOTE, None).await;
    assert_eq!(answer.status, StatusCode::OK);
    send(&s.app, "/v2/team/app/manifests/nope", SITE, Some(&alice)).await;
    assert_eq!(
        *s.source.pulls.lock().unwrap(),
        vec![
            (PullKind::Manifest, Zone::Loopback),
            (PullKind::Manifest, Zone::Site),
            (PullKind::Blob, Zone::Other),
        ]
    );
}
