//! A plain HTTP client for tests and benchmarks that talk to a gateway or registry directly.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::Context;
use sha2::{Digest as _, Sha256};

/// A response with its headers (names lower-cased) and whole body.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Fetched {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }

    pub fn json(&self) -> anyhow::Result<serde_json::Value> {
        serde_json::from_slice(&self.body).context("response body is not JSON")
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

/// Sends `method` to `url` and reads the whole answer (for manifests and listings).
pub fn request(method: &str, url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Fetched> {
    let agent = agent();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let mut response = agent
        .run(builder.body(())?)
        .with_context(|| format!("{method} {url}"))?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut body = Vec::new();
    response.body_mut().as_reader().read_to_end(&mut body)?;
    Ok(Fetched {
        status,
        headers,
        body,
    })
}

pub fn get(url: &str, headers: &[(&str, &str)]) -> anyhow::Result<Fetched> {
    request("GET", url, headers)
}

/// Streams a GET of `url`, returning the status, the body's `sha256:` digest and its length,
/// without holding the body in memory.
pub fn get_digest(url: &str) -> anyhow::Result<(u16, String, u64)> {
    let mut response = agent()
        .get(url)
        .call()
        .with_context(|| format!("GET {url}"))?;
    let status = response.status().as_u16();
    let (digest, total) = sha256_of(&mut response.body_mut().as_reader())?;
    Ok((status, digest, total))
}

/// The `sha256:` digest and length of everything `reader` yields, read in 1 MiB pieces.
pub fn sha256_of(reader: &mut impl Read) -> std::io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = reader.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        total += n as u64;
    }
    Ok((format!("sha256:{}", hex::encode(hasher.finalize())), total))
}

/// Every manifest media type a registry client accepts.
pub const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// What [`pull_image`] fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PulledImage {
    /// The top manifest's digest, as the registry reported it and as its bytes hash.
    pub digest: String,
    /// Manifests and blobs fetched.
    pub documents: usize,
    /// Bytes of every manifest and blob.
    pub bytes: u64,
}

/// Pulls `name:reference` from the registry at `registry` (`HOST:PORT`) as a client does: the
/// manifest (and an index's every child), then every config and layer streamed, each checked
/// against its digest and declared size. Fails on the first wrong byte or status.
pub fn pull_image(registry: &str, name: &str, reference: &str) -> anyhow::Result<PulledImage> {
    let mut pulled = PulledImage {
        digest: String::new(),
        documents: 0,
        bytes: 0,
    };
    pulled.digest = pull_manifest(registry, name, reference, &mut pulled)?;
    Ok(pulled)
}

fn pull_manifest(
    registry: &str,
    name: &str,
    reference: &str,
    pulled: &mut PulledImage,
) -> anyhow::Result<String> {
    let base = format!("http://{registry}/v2/{name}");
    let url = format!("{base}/manifests/{reference}");
    let manifest = get(&url, &[("Accept", ACCEPT_MANIFESTS)])?;
    anyhow::ensure!(
        manifest.status == 200,
        "{url}: {} {}",
        manifest.status,
        String::from_utf8_lossy(&manifest.body)
    );
    let digest = shoal_protocol::Digest::of(&manifest.body).to_string();
    anyhow::ensure!(
        manifest.header("docker-content-digest") == Some(digest.as_str()),
        "{url}: the body hashes to {digest}, the registry says {:?}",
        manifest.header("docker-content-digest")
    );
    anyhow::ensure!(
        !reference.starts_with("sha256:") || reference == digest,
        "{url}: asked for {reference}, got {digest}"
    );
    pulled.documents += 1;
    pulled.bytes += manifest.body.len() as u64;
    let parsed =
        shoal_protocol::ParsedManifest::parse(&manifest.body, manifest.header("content-type"))
            .with_context(|| format!("{url}: not a manifest"))?;
    for child in &parsed.manifests {
        pull_manifest(registry, name, &child.digest.to_string(), pulled)?;
    }
    for blob in &parsed.blobs {
        let url = format!("{base}/blobs/{}", blob.digest);
        let (status, actual, size) = get_digest(&url)?;
        anyhow::ensure!(
            (status, actual.as_str(), size) == (200, blob.digest.to_string().as_str(), blob.size),
            "{url}: status {status}, {size} bytes hashing to {actual}; expected {} bytes",
            blob.size
        );
        pulled.documents += 1;
        pulled.bytes += size;
    }
    Ok(digest)
}
