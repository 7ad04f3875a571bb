//! What the gateway's handler tests share: an in-memory [`ContentSource`], a fixture of
//! repositories covering every manifest kind, and helpers that send one request through
//! `tower::ServiceExt::oneshot` and keep the whole response.
// Each test binary that includes this module uses a different part of it.
#![allow(dead_code)]

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shoal_gateway::{BlobStream, ContentSource, Manifest, OpenBlob, SourceError};
use shoal_protocol::media_type::{
    DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX, OCI_LAYER_GZIP,
    OCI_MANIFEST,
};
use shoal_protocol::{Descriptor, Digest, ParsedManifest, RepoName, Tag, TagOrDigest};
use tower::ServiceExt;

/// Blob streams are cut into chunks this small so every response is many frames.
pub const CHUNK: usize = 7;
/// What a source failure says internally; it must never reach a client.
pub const SECRET: &str = "disk /srv/shoal/secret-volume exploded";

// ---------------------------------------------------------------------------------------------
// An in-memory content source.
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
pub struct Repo {
    tags: HashMap<Tag, Digest>,
    manifests: HashMap<Digest, Manifest>,
    blobs: HashMap<Digest, Bytes>,
}

#[derive(Clone, Copy)]
pub enum Failure {
    Internal,
    Unavailable,
}

#[derive(Default)]
pub struct State {
    repos: HashMap<RepoName, Repo>,
    failure: Option<Failure>,
    /// Blobs whose stream fails after its first chunk.
    broken: HashSet<Digest>,
}

/// A `HashMap`-backed store; clones share it. Every blob read is logged.
#[derive(Clone, Default)]
pub struct TestStore {
    pub state: Arc<Mutex<State>>,
    pub reads: ReadLog,
}

/// Every `(digest, range)` a blob reader was asked for, in order.
pub type ReadLog = Arc<Mutex<Vec<(Digest, Range<u64>)>>>;

pub fn repo(namespace: &str, path: &str) -> RepoName {
    RepoName::new(namespace, path).expect("valid test repository name")
}

impl TestStore {
    pub fn add_blob(&self, repo: &RepoName, bytes: impl Into<Bytes>) -> Digest {
        let bytes = bytes.into();
        let digest = Digest::of(&bytes);
        let mut state = self.state.lock().unwrap();
        state
            .repos
            .entry(repo.clone())
            .or_default()
            .blobs
            .insert(digest, bytes);
        digest
    }

    /// Stores `document` as pretty JSON with a trailing newline, so that serving anything but
    /// the exact stored bytes shows.
    pub fn add_manifest(
        &self,
        repo: &RepoName,
        media_type: &str,
        document: &Value,
        tag: Option<&str>,
    ) -> Manifest {
        let mut bytes = serde_json::to_vec_pretty(document).unwrap();
        bytes.push(b'\n');
        let manifest = Manifest {
            digest: Digest::of(&bytes),
            media_type: media_type.to_owned(),
            bytes: Bytes::from(bytes),
        };
        let mut state = self.state.lock().unwrap();
        let entry = state.repos.entry(repo.clone()).or_default();
        entry.manifests.insert(manifest.digest, manifest.clone());
        if let Some(tag) = tag {
            entry.tags.insert(tag.parse().unwrap(), manifest.digest);
        }
        manifest
    }

    pub fn tag(&self, repo: &RepoName, tag: &str, digest: Digest) {
        let mut state = self.state.lock().unwrap();
        state
            .repos
            .entry(repo.clone())
            .or_default()
            .tags
            .insert(tag.parse().unwrap(), digest);
    }

    pub fn fail_with(&self, failure: Failure) {
        self.state.lock().unwrap().failure = Some(failure);
    }

    pub fn break_blob(&self, digest: Digest) {
        self.state.lock().unwrap().broken.insert(digest);
    }

    pub fn reads(&self) -> Vec<(Digest, Range<u64>)> {
        self.reads.lock().unwrap().clone()
    }

    pub fn check(&self) -> Result<(), SourceError> {
        match self.state.lock().unwrap().failure {
            None => Ok(()),
            Some(Failure::Internal) => Err(SourceError::Internal(SECRET.into())),
            Some(Failure::Unavailable) => Err(SourceError::Unavailable(SECRET.to_owned())),
        }
    }
}

pub fn chunked(bytes: Bytes, broken: bool) -> BlobStream {
    let mut chunks: Vec<std::io::Result<Bytes>> = (0..bytes.len())
        .step_by(CHUNK)
        .map(|i| Ok(bytes.slice(i..(i + CHUNK).min(bytes.len()))))
        .collect();
    if broken {
        chunks.truncate(1);
        chunks.push(Err(std::io::Error::other("read failed")));
    }
    Box::pin(futures_util::stream::iter(chunks))
}

impl ContentSource for TestStore {
    async fn manifest(
        &self,
        repo: &RepoName,
        reference: &TagOrDigest,
    ) -> Result<Option<Manifest>, SourceError> {
        self.check()?;
        let state = self.state.lock().unwrap();
        let Some(repo) = state.repos.get(repo) else {
            return Ok(None);
        };
        let digest = match reference {
            TagOrDigest::Tag(tag) => repo.tags.get(tag).copied(),
            TagOrDigest::Digest(digest) => Some(*digest),
        };
        Ok(digest.and_then(|digest| repo.manifests.get(&digest).cloned()))
    }

    async fn open_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<OpenBlob>, SourceError> {
        self.check()?;
        let state = self.state.lock().unwrap();
        let Some(bytes) = state
            .repos
            .get(repo)
            .and_then(|repo| repo.blobs.get(digest))
            .cloned()
        else {
            return Ok(None);
        };
        let broken = state.broken.contains(digest);
        let reads = Arc::clone(&self.reads);
        let digest = *digest;
        Ok(Some(OpenBlob {
            size: bytes.len() as u64,
            read: Box::new(move |range: Range<u64>| {
                assert!(
                    range.start < range.end && range.end <= bytes.len() as u64,
                    "bad range {range:?}"
                );
                reads.lock().unwrap().push((digest, range.clone()));
                chunked(
                    bytes.slice(range.start as usize..range.end as usize),
                    broken,
                )
            }),
        }))
    }

    async fn tags(&self, repo: &RepoName) -> Result<Option<Vec<Tag>>, SourceError> {
        self.check()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .repos
            .get(repo)
            .map(|repo| repo.tags.keys().cloned().collect()))
    }

    async fn repositories(&self, namespace: &str) -> Result<Vec<String>, SourceError> {
        self.check()?;
        let state = self.state.lock().unwrap();
        Ok(state
            .repos
            .keys()
            .filter(|repo| repo.namespace() == namespace)
            .map(|repo| repo.path().to_owned())
            .collect())
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<Vec<Descriptor>>, SourceError> {
        self.check()?;
        let state = self.state.lock().unwrap();
        let Some(repo) = state.repos.get(repo) else {
            return Ok(None);
        };
        let mut referrers: Vec<Descriptor> = repo
            .manifests
            .values()
            .filter_map(|manifest| {
                let parsed =
                    ParsedManifest::parse(&manifest.bytes, Some(&manifest.media_type)).ok()?;
                (parsed.subject?.digest == *digest).then(|| Descriptor {
                    media_type: manifest.media_type.clone(),
                    digest: manifest.digest,
                    size: manifest.bytes.len() as u64,
                    artifact_type: parsed.artifact_type,
                    platform: None,
                    annotations: parsed.annotations,
                })
            })
            .collect();
        referrers.sort_by_key(|descriptor| descriptor.digest);
        Ok(Some(referrers))
    }
}

// ---------------------------------------------------------------------------------------------
// Fixture: a handful of repositories covering every manifest kind.
// ---------------------------------------------------------------------------------------------

pub const SIG_TYPE: &str = "application/vnd.example.signature.v1";
pub const SBOM_TYPE: &str = "application/spdx+json";

pub fn descriptor(media_type: &str, bytes: &[u8]) -> Value {
    json!({ "mediaType": media_type, "digest": Digest::of(bytes).to_string(), "size": bytes.len() })
}

pub fn manifest_descriptor(manifest: &Manifest, platform: Option<(&str, &str)>) -> Value {
    let mut value = json!({
        "mediaType": manifest.media_type,
        "digest": manifest.digest.to_string(),
        "size": manifest.bytes.len(),
    });
    if let Some((os, architecture)) = platform {
        value["platform"] = json!({ "os": os, "architecture": architecture });
    }
    value
}

pub fn image(
    media_type: &str,
    config_type: &str,
    config: &[u8],
    layer: &[u8],
    subject: Option<&Manifest>,
) -> Value {
    let mut value = json!({
        "schemaVersion": 2,
        "mediaType": media_type,
        "config": descriptor(config_type, config),
        "layers": [descriptor(OCI_LAYER_GZIP, layer)],
    });
    if let Some(subject) = subject {
        value["subject"] = manifest_descriptor(subject, None);
    }
    value
}

pub fn index(media_type: &str, children: &[(&Manifest, &str, &str)]) -> Value {
    let manifests: Vec<Value> = children
        .iter()
        .map(|(child, os, arch)| manifest_descriptor(child, Some((os, arch))))
        .collect();
    json!({ "schemaVersion": 2, "mediaType": media_type, "manifests": manifests })
}

pub struct Fixture {
    pub store: TestStore,
    pub app: Router,
    pub alpine: RepoName,
    /// 100 bytes, 0..=99, in library/alpine.
    pub layer: Bytes,
    pub layer_digest: Digest,
    pub empty_digest: Digest,
    /// OCI image manifest, tag `3.20`.
    pub oci_manifest: Manifest,
    /// OCI index over two OCI manifests, tag `latest`.
    pub oci_index: Manifest,
    /// Docker schema 2 manifest (the linux/amd64 child of `docker_list`), tag `docker-v2`.
    pub docker_amd64: Manifest,
    /// Docker manifest list with linux/arm64 first and linux/amd64 second, tag `multi`.
    pub docker_list: Manifest,
    /// Docker manifest list with only linux/arm64, tag `arm-only`.
    pub arm_only_list: Manifest,
    /// Referrers of `oci_manifest`.
    pub signature: Manifest,
    pub sbom: Manifest,
}

pub fn fixture() -> Fixture {
    let store = TestStore::default();
    let alpine = repo("docker.io", "library/alpine");

    let layer: Bytes = (0..100u8).collect::<Vec<u8>>().into();
    let layer_digest = store.add_blob(&alpine, layer.clone());
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    store.add_blob(&alpine, &config[..]);
    let arm_config = br#"{"architecture":"arm64","os":"linux"}"#;
    store.add_blob(&alpine, &arm_config[..]);
    let empty_digest = store.add_blob(&alpine, Bytes::new());

    let oci_manifest = store.add_manifest(
        &alpine,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, config, &layer, None),
        Some("3.20"),
    );
    let oci_arm = store.add_manifest(
        &alpine,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, arm_config, &layer, None),
        None,
    );
    let oci_index = store.add_manifest(
        &alpine,
        OCI_INDEX,
        &index(
            OCI_INDEX,
            &[
                (&oci_manifest, "linux", "amd64"),
                (&oci_arm, "linux", "arm64"),
            ],
        ),
        Some("latest"),
    );

    let docker_amd64 = store.add_manifest(
        &alpine,
        DOCKER_MANIFEST,
        &image(DOCKER_MANIFEST, DOCKER_CONFIG, config, &layer, None),
        Some("docker-v2"),
    );
    let docker_arm = store.add_manifest(
        &alpine,
        DOCKER_MANIFEST,
        &image(DOCKER_MANIFEST, DOCKER_CONFIG, arm_config, &layer, None),
        None,
    );
    let docker_list = store.add_manifest(
        &alpine,
        DOCKER_MANIFEST_LIST,
        &index(
            DOCKER_MANIFEST_LIST,
            &[
                (&docker_arm, "linux", "arm64"),
                (&docker_amd64, "linux", "amd64"),
            ],
        ),
        Some("multi"),
    );
    let arm_only_list = store.add_manifest(
        &alpine,
        DOCKER_MANIFEST_LIST,
        &index(DOCKER_MANIFEST_LIST, &[(&docker_arm, "linux", "arm64")]),
        Some("arm-only"),
    );

    let mut signature_doc = image(
        OCI_MANIFEST,
        OCI_CONFIG,
        b"{}",
        b"signature",
        Some(&oci_manifest),
    );
    signature_doc["artifactType"] = json!(SIG_TYPE);
    signature_doc["annotations"] = json!({ "org.example.signed-by": "alice" });
    let signature = store.add_manifest(&alpine, OCI_MANIFEST, &signature_doc, None);
    // No artifactType: the config's media type stands in for it.
    let sbom = store.add_manifest(
        &alpine,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, SBOM_TYPE, b"{}", b"sbom", Some(&oci_manifest)),
        None,
    );

    // Repositories for listings, namespaces and nested names.
    let pag = repo("docker.io", "pag/tags");
    let pag_manifest = store.add_manifest(
        &pag,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, b"{}", b"x", None),
        None,
    );
    for tag in ["e", "a", "c", "b", "d"] {
        store.tag(&pag, tag, pag_manifest.digest);
    }
    for path in ["library/busybox", "team/app"] {
        let r = repo("docker.io", path);
        store.add_manifest(
            &r,
            OCI_MANIFEST,
            &image(OCI_MANIFEST, OCI_CONFIG, b"{}", path.as_bytes(), None),
            Some("1"),
        );
    }
    let nested = repo("docker.io", "a/b/c");
    store.add_blob(&nested, &b"nested blob"[..]);
    store.add_manifest(
        &nested,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, b"{}", b"nested blob", None),
        Some("v1"),
    );
    let tool = repo("ghcr.io", "org/tool");
    store.add_blob(&tool, &b"ghcr blob"[..]);
    store.add_manifest(
        &tool,
        OCI_MANIFEST,
        &image(OCI_MANIFEST, OCI_CONFIG, b"{}", b"ghcr blob", None),
        Some("1.0"),
    );
    store.tag(&tool, "2.0", Digest::of(b"not stored"));

    let app = shoal_gateway::router(store.clone(), None);
    Fixture {
        store,
        app,
        alpine,
        layer,
        layer_digest,
        empty_digest,
        oci_manifest,
        oci_index,
        docker_amd64,
        docker_list,
        arm_only_list,
        signature,
        sbom,
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and responses.
// ---------------------------------------------------------------------------------------------

#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header in {self:?}"))
            .to_str()
            .expect("header is ASCII")
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|error| panic!("body is not JSON ({error}): {self:?}"))
    }

    /// Asserts an OCI error response and returns its message.
    pub fn assert_error(&self, status: StatusCode, code: &str) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("docker-distribution-api-version"),
            "registry/2.0"
        );
        assert_eq!(self.header("content-type"), "application/json");
        let json = self.json();
        let errors = json["errors"]
            .as_array()
            .unwrap_or_else(|| panic!("no errors array: {json}"));
        assert_eq!(errors.len(), 1, "{json}");
        assert_eq!(errors[0]["code"], code, "{json}");
        let message = errors[0]["message"].as_str().expect("message is a string");
        assert!(!message.is_empty(), "{json}");
        message.to_owned()
    }
}

pub async fn send(app: &Router, request: Request<Body>) -> Response {
    let response = app
        .clone()
        .oneshot(request)
        .await
        .expect("the router is infallible");
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .expect("the body streams without error")
        .to_bytes();
    Response {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

pub fn request(method: Method, uri: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder.body(Body::empty()).unwrap()
}

pub async fn get(app: &Router, uri: &str) -> Response {
    send(app, request(Method::GET, uri, &[])).await
}

pub async fn get_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Response {
    send(app, request(Method::GET, uri, headers)).await
}

pub async fn head(app: &Router, uri: &str) -> Response {
    send(app, request(Method::HEAD, uri, &[])).await
}

pub async fn head_with(app: &Router, uri: &str, headers: &[(&str, &str)]) -> Response {
    send(app, request(Method::HEAD, uri, headers)).await
}

pub fn assert_manifest(response: &Response, manifest: &Manifest) {
    assert_eq!(response.status, StatusCode::OK, "{response:?}");
    assert_eq!(response.header("content-type"), manifest.media_type);
    assert_eq!(
        response.header("content-length"),
        manifest.bytes.len().to_string()
    );
    assert_eq!(
        response.header("docker-content-digest"),
        manifest.digest.to_string()
    );
    assert_eq!(
        response.header("docker-distribution-api-version"),
        "registry/2.0"
    );
}

// ---------------------------------------------------------------------------------------------
// A gateway on a real socket.
// ---------------------------------------------------------------------------------------------

/// Serves `router` within `limits` (over TLS with `tls`) on an ephemeral loopback port, on a
/// runtime thread of its own, for the rest of the test process.
pub fn serve_in_background(
    router: Router,
    limits: shoal_gateway::ServeLimits,
    tls: Option<shoal_gateway::GatewayTls>,
) -> std::net::SocketAddr {
    let (address_sender, address) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            address_sender.send(listener.local_addr().unwrap()).unwrap();
            shoal_gateway::serve(listener, router, limits, tls, std::future::pending())
                .await
                .unwrap();
        });
    });
    address.recv().unwrap()
}
