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
    let mut reader = response.body_mut().as_reader();
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
    Ok((
        status,
        format!("sha256:{}", hex::encode(hasher.finalize())),
        total,
    ))
}
