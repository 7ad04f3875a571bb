//! Pull-through from an upstream registry: a real `docker-registry` stands in for Docker Hub
//! (anonymous, with basic auth, and behind a bearer-token endpoint), Shoal nodes on 127.0.0.1
//! are configured with `--upstream docker.io=<it>`, and real clients pull through them.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use shoal_tests::clients::{Credentials, Skopeo, require_tools, wait_until};
use shoal_tests::http;
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, serving};
use shoal_tests::registry::{DockerRegistry, RegistryConfig, push_oci_layout};
use shoal_tests::token_auth::{TokenAuthOptions, TokenAuthProxy, basic_authorization};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

fn counter(status: &Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

fn image(dir: &Path, name: &str, seed: u64, layers: &[u64]) -> GeneratedImage {
    let mut spec = ImageSpec::new(seed).gzip(GzipLevel::Store);
    for layer in layers {
        spec = spec.layer(*layer);
    }
    spec.write_oci_layout(&dir.join(name), None).unwrap()
}

/// The image's configs and layers: what a registry serves from its blobs endpoint.
fn layers_and_configs(generated: &GeneratedImage) -> impl Iterator<Item = &Blob> {
    generated
        .blobs
        .iter()
        .filter(|blob| !blob.media_type.contains("manifest") && !blob.media_type.contains("index"))
}

fn blob_bytes(generated: &GeneratedImage) -> u64 {
    layers_and_configs(generated).map(|blob| blob.size).sum()
}

/// A node whose docker.io upstream is `registry`.
fn upstream_node(dir: &Path, name: &str, upstream: &str, extra: &[&str]) -> ShoalNode {
    let mut args = vec!["--upstream".to_owned(), format!("docker.io={upstream}")];
    args.extend(extra.iter().map(|arg| arg.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ShoalNode::start(&dir.join(name), &args).unwrap()
}

/// Asserts the upstream served every blob of `generated` exactly once.
fn each_blob_fetched_once(registry: &DockerRegistry, generated: &GeneratedImage) {
    let counts = registry.blob_get_counts().unwrap();
    for blob in layers_and_configs(generated) {
        assert_eq!(
            counts.get(&blob.digest).copied(),
            Some(1),
            "blob {} was fetched from the upstream {:?} times: {counts:?}",
            blob.digest,
            counts.get(&blob.digest)
        );
    }
}

#[test]
fn skopeo_pulls_through_the_node_and_the_upstream_serves_each_blob_once() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let generated = image(dir.path(), "image", 40, &[6 << 20, 3 << 20, 4096]);
    push_oci_layout(&generated.path, &registry, "library/app:1").unwrap();
    let node = upstream_node(dir.path(), "node", &registry.url(), &[]);

    let reference = format!("{}/library/app:1", node.gateway());
    let first = dir.path().join("first");
    assert_eq!(
        Skopeo::new()
            .copy_to_oci(&reference, &first, false)
            .unwrap(),
        generated.manifest_digest
    );
    let second = dir.path().join("second");
    assert_eq!(
        Skopeo::new()
            .copy_to_oci(
                &format!(
                    "{}/library/app@{}",
                    node.gateway(),
                    generated.manifest_digest
                ),
                &second,
                false
            )
            .unwrap(),
        generated.manifest_digest
    );
    assert_eq!(
        Skopeo::new().inspect_digest(&reference).unwrap(),
        generated.manifest_digest
    );
    each_blob_fetched_once(&registry, &generated);
    // Within --tag-freshness the tag was asked of the upstream once, for three requests.
    assert_eq!(tag_checks(&registry, "1"), 1);
    let status = node.status().unwrap();
    assert!(
        counter(&status, "bytes_from_upstream") >= blob_bytes(&generated),
        "{status}"
    );
    assert!(
        counter(&status, "bytes_from_upstream") < 2 * blob_bytes(&generated),
        "{status}"
    );
    assert_eq!(status["store"]["blobs"], generated.blobs.len(), "{status}");
}

#[test]
fn a_missing_image_with_the_upstream_down_fails_fast_and_clearly() {
    if !require_tools(&["skopeo"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // A port nothing listens on: connections are refused at once.
    let port = shoal_tests::clients::free_port().unwrap();
    let node = upstream_node(dir.path(), "node", &format!("http://127.0.0.1:{port}"), &[]);
    let started = Instant::now();
    let error = Skopeo::new()
        .inspect_digest(&format!("{}/library/nobody:1", node.gateway()))
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "{error:#}");
    assert!(format!("{error:#}").contains("503"), "{error:#}");
    let answer = http::get(
        &format!("http://{}/v2/library/nobody/manifests/1", node.gateway()),
        &[],
    )
    .unwrap();
    assert_eq!(answer.status, 503);
    let message = String::from_utf8_lossy(&answer.body);
    assert!(
        message.contains("cannot be reached") && message.contains("library/nobody:1"),
        "{message}"
    );
}

/// Pulls `repo:tag` from `gateway` the way a registry client does, over plain HTTP: the
/// manifest by tag, then its config and layers, each checked against its digest. Returns the
/// manifest's digest.
fn pull_over_http(gateway: &str, repo: &str, tag: &str) -> String {
    let accept = "application/vnd.oci.image.manifest.v1+json, \
                  application/vnd.docker.distribution.manifest.v2+json";
    let manifest = http::get(
        &format!("http://{gateway}/v2/{repo}/manifests/{tag}"),
        &[("Accept", accept)],
    )
    .unwrap();
    assert_eq!(
        manifest.status,
        200,
        "{}",
        String::from_utf8_lossy(&manifest.body)
    );
    let parsed = manifest.json().unwrap();
    let blobs = std::iter::once(&parsed["config"]).chain(parsed["layers"].as_array().unwrap());
    for blob in blobs {
        let digest = blob["digest"].as_str().unwrap();
        let (status, actual, size) =
            http::get_digest(&format!("http://{gateway}/v2/{repo}/blobs/{digest}")).unwrap();
        assert_eq!((status, actual.as_str()), (200, digest));
        assert_eq!(Some(size), blob["size"].as_u64());
    }
    shoal_tests::clients::sha256_digest(&manifest.body)
}

#[test]
fn twenty_concurrent_pulls_through_three_nodes_take_each_blob_from_the_upstream_once() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let generated = image(dir.path(), "image", 41, &[12 << 20, 6 << 20, 1 << 20, 4096]);
    push_oci_layout(&generated.path, &registry, "library/rush:1").unwrap();
    // The nodes ask each other to download from the upstream: they serve each other.
    let data = ["first", "second", "third"].map(|name| dir.path().join(name));
    let serving = serving(&data.each_ref().map(|path| path.as_path())).unwrap();
    let mut upstream = vec![
        "--upstream".to_owned(),
        format!("docker.io={}", registry.url()),
    ];
    upstream.extend(serving.iter().cloned());
    let upstream: Vec<&str> = upstream.iter().map(String::as_str).collect();
    let serving: Vec<&str> = serving.iter().map(String::as_str).collect();
    let first = upstream_node(dir.path(), "first", &registry.url(), &serving);
    let second = ShoalNode::start_joined(&data[1], &[&first], &upstream).unwrap();
    let third = ShoalNode::start_joined(&data[2], &[&first, &second], &upstream).unwrap();
    let nodes = [&first, &second, &third];

    let gateways: Vec<String> = nodes
        .iter()
        .map(|node| node.gateway().to_string())
        .collect();
    std::thread::scope(|scope| {
        let pulls: Vec<_> = (0..20)
            .map(|client| {
                let gateway = &gateways[client % gateways.len()];
                scope.spawn(move || pull_over_http(gateway, "library/rush", "1"))
            })
            .collect();
        for pull in pulls {
            assert_eq!(pull.join().unwrap(), generated.manifest_digest);
        }
    });

    each_blob_fetched_once(&registry, &generated);
    let from_upstream: u64 = nodes
        .iter()
        .map(|node| counter(&node.status().unwrap(), "bytes_from_upstream"))
        .sum();
    // Each node reads the manifest itself (it resolves the tag); blobs cross once in all.
    let manifests = 3 * generated.manifest_size;
    assert!(
        from_upstream >= blob_bytes(&generated)
            && from_upstream <= blob_bytes(&generated) + manifests,
        "{from_upstream} bytes came from the upstream for {} bytes of blobs",
        blob_bytes(&generated)
    );
    let from_peers: u64 = nodes
        .iter()
        .map(|node| counter(&node.status().unwrap(), "bytes_received_from_peers"))
        .sum();
    assert!(
        from_peers >= 2 * blob_bytes(&generated),
        "the other nodes took only {from_peers} bytes from the one that downloaded"
    );
}

#[test]
fn with_the_upstream_down_cached_and_peer_held_images_still_pull_by_tag_and_digest() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let generated = image(dir.path(), "image", 42, &[3 << 20, 4096]);
    push_oci_layout(&generated.path, &registry, "library/keep:1").unwrap();
    // Freshness 0: every tag request asks the upstream, so the outage is really met.
    // The nodes ask each other to download from the upstream: they serve each other.
    let serving = serving(&[&dir.path().join("cache"), &dir.path().join("peer")]).unwrap();
    let serving: Vec<&str> = serving.iter().map(String::as_str).collect();
    let fresh_never = [&["--tag-freshness", "0s"][..], &serving].concat();
    let cache = upstream_node(dir.path(), "cache", &registry.url(), &fresh_never);
    let upstream = format!("docker.io={}", registry.url());
    let peer = ShoalNode::start_joined(
        &dir.path().join("peer"),
        &[&cache],
        &[&["--upstream", &upstream][..], &fresh_never].concat(),
    )
    .unwrap();
    let by_tag = |node: &ShoalNode| format!("{}/library/keep:1", node.gateway());
    let by_digest = |node: &ShoalNode| {
        format!(
            "{}/library/keep@{}",
            node.gateway(),
            generated.manifest_digest
        )
    };
    assert_eq!(
        Skopeo::new()
            .copy_to_oci(&by_tag(&cache), &dir.path().join("warm"), false)
            .unwrap(),
        generated.manifest_digest
    );
    // The cache announced what the tag pointed to; the peer trusts it.
    wait_until("the peer to learn the tag", EVENT_TIMEOUT, || {
        let status = peer.status()?;
        Ok(status["known_images"].as_array().is_some_and(|images| {
            images
                .iter()
                .any(|image| image["repository"] == "docker.io/library/keep")
        }))
    })
    .unwrap_or_else(|error| panic!("{error:#}\n{}\n{}", cache.logs(), peer.logs()));
    // The peer may have fetched blobs from the upstream for the cache (it is the chosen
    // fetcher of some): what matters is that nothing more comes from there.
    let upstream_before = counter(&peer.status().unwrap(), "bytes_from_upstream");
    drop(registry);

    for (name, node) in [("cache", &cache), ("peer", &peer)] {
        for (kind, reference) in [("tag", by_tag(node)), ("digest", by_digest(node))] {
            let pulled = dir.path().join(format!("{name}-{kind}"));
            let digest = Skopeo::new()
                .copy_to_oci(&reference, &pulled, false)
                .unwrap_or_else(|error| panic!("{name} by {kind}: {error:#}\n{}", node.logs()));
            assert_eq!(digest, generated.manifest_digest, "{name} by {kind}");
        }
    }
    let status = peer.status().unwrap();
    assert_eq!(
        counter(&status, "bytes_from_upstream"),
        upstream_before,
        "{status}"
    );
    assert_eq!(status["store"]["blobs"], generated.blobs.len(), "{status}");
}

/// A node whose docker.io upstream is `upstream`, with `credentials` in its config file.
fn node_with_credentials(
    dir: &Path,
    name: &str,
    upstream: &str,
    credentials: Option<&Credentials>,
) -> ShoalNode {
    let mut config = format!("upstream = [\"docker.io={upstream}\"]\n");
    if let Some(credentials) = credentials {
        config.push_str(&format!(
            "\n[credentials.\"docker.io\"]\nusername = \"{}\"\npassword = \"{}\"\n",
            credentials.user, credentials.password
        ));
    }
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, config).unwrap();
    ShoalNode::start(&dir.join(name), &["--config", path.to_str().unwrap()]).unwrap()
}

/// Asserts that neither the node's log nor its status shows the password, in clear or as
/// the basic-auth header value.
fn keeps_secret(node: &ShoalNode, credentials: &Credentials) {
    let header = basic_authorization(credentials);
    let encoded = header.trim_start_matches("Basic ");
    let status = node.status().unwrap().to_string();
    let logs = node.logs();
    assert!(!logs.is_empty());
    for (what, text) in [("log", &logs), ("status", &status)] {
        assert!(
            !text.contains(&credentials.password) && !text.contains(encoded),
            "the node's {what} shows the credentials:\n{text}"
        );
    }
}

#[test]
fn a_basic_auth_upstream_is_pulled_with_credentials_that_never_reach_the_logs() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let credentials = Credentials::new("shoal-user", "basic-S3cret-pw");
    let registry = DockerRegistry::start_with(RegistryConfig {
        basic_auth: Some(credentials.clone()),
        ..RegistryConfig::default()
    })
    .unwrap();
    let generated = image(dir.path(), "image", 43, &[2 << 20, 4096]);
    push_oci_layout(&generated.path, &registry, "library/private:1").unwrap();

    let node = node_with_credentials(dir.path(), "node", &registry.url(), Some(&credentials));
    let reference = format!("{}/library/private:1", node.gateway());
    assert_eq!(
        Skopeo::new()
            .copy_to_oci(&reference, &dir.path().join("pulled"), false)
            .unwrap(),
        generated.manifest_digest
    );
    each_blob_fetched_once(&registry, &generated);
    keeps_secret(&node, &credentials);

    // Wrong credentials: a clear refusal, and the wrong password is not shown either.
    let wrong = Credentials::new("shoal-user", "wrong-S3cret-pw");
    let refused = node_with_credentials(dir.path(), "refused", &registry.url(), Some(&wrong));
    let answer = http::get(
        &format!(
            "http://{}/v2/library/private/manifests/1",
            refused.gateway()
        ),
        &[],
    )
    .unwrap();
    assert_eq!(answer.status, 503);
    let message = String::from_utf8_lossy(&answer.body);
    assert!(
        message.contains("refused access") && message.contains("credentials"),
        "{message}"
    );
    keeps_secret(&refused, &wrong);
}

#[test]
fn a_bearer_token_upstream_is_pulled_with_one_cached_token() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let generated = image(dir.path(), "image", 44, &[2 << 20, 1 << 20, 4096]);
    push_oci_layout(&generated.path, &registry, "library/tokened:1").unwrap();
    let credentials = Credentials::new("token-user", "bearer-S3cret-pw");

    for (name, credentials) in [
        ("anonymous", None),
        ("with-credentials", Some(&credentials)),
    ] {
        let proxy = TokenAuthProxy::start(
            &registry,
            TokenAuthOptions {
                credentials: credentials.cloned(),
                ..TokenAuthOptions::default()
            },
        )
        .unwrap();
        let node = node_with_credentials(dir.path(), name, &proxy.url(), credentials);
        let reference = format!("{}/library/tokened:1", node.gateway());
        assert_eq!(
            Skopeo::new()
                .copy_to_oci(&reference, &dir.path().join(name), false)
                .unwrap(),
            generated.manifest_digest,
            "{name}"
        );
        // One token serves the tag check, the manifest and every blob.
        assert_eq!(proxy.tokens_issued(), 1, "{name}: {:?}", proxy.requests());
        let authorized = proxy
            .requests()
            .iter()
            .filter(|(_, path, valid)| *valid && path.contains("/blobs/"))
            .count();
        assert_eq!(
            authorized,
            layers_and_configs(&generated).count(),
            "{name}: {:?}",
            proxy.requests()
        );
        if let Some(credentials) = credentials {
            keeps_secret(&node, credentials);
        }
    }
}

/// Reads of the manifest tagged `tag` the upstream served (pushes not counted).
fn tag_checks(registry: &DockerRegistry, tag: &str) -> usize {
    registry
        .access_log()
        .unwrap()
        .iter()
        .filter(|entry| {
            matches!(entry.method.as_str(), "GET" | "HEAD")
                && entry.manifest_reference() == Some(tag)
        })
        .count()
}

#[test]
fn a_tag_moved_upstream_is_followed_once_its_freshness_lapses() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let old = image(dir.path(), "old", 45, &[4096]);
    let new = image(dir.path(), "new", 46, &[8192]);
    push_oci_layout(&old.path, &registry, "library/moving:1").unwrap();
    let node = upstream_node(
        dir.path(),
        "node",
        &registry.url(),
        &["--tag-freshness", "2s"],
    );
    let reference = format!("{}/library/moving:1", node.gateway());
    assert_eq!(
        Skopeo::new().inspect_digest(&reference).unwrap(),
        old.manifest_digest
    );
    push_oci_layout(&new.path, &registry, "library/moving:1").unwrap();
    let checks = tag_checks(&registry, "1");
    // Still fresh: the node answers without asking.
    assert_eq!(
        Skopeo::new().inspect_digest(&reference).unwrap(),
        old.manifest_digest
    );
    assert_eq!(tag_checks(&registry, "1"), checks);
    wait_until("the node to follow the tag", EVENT_TIMEOUT, || {
        Ok(Skopeo::new().inspect_digest(&reference)? == new.manifest_digest)
    })
    .unwrap();
    assert_eq!(
        pull_over_http(&node.gateway().to_string(), "library/moving", "1"),
        new.manifest_digest
    );
}

/// A node's transfer of `blob` in progress: (chunks had, chunks in all).
fn transfer_progress(node: &ShoalNode, blob: &str) -> Option<(u64, u64)> {
    let status = node.status().ok()?;
    let transfer = status["transfers"]
        .as_array()?
        .iter()
        .find(|transfer| transfer["blob"] == blob)?
        .clone();
    Some((
        transfer["chunks_have"].as_u64()?,
        transfer["chunks_total"].as_u64()?,
    ))
}

#[test]
fn a_second_node_streams_a_blob_from_the_node_downloading_it_while_it_arrives() {
    if !require_tools(&["skopeo", "docker-registry"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let registry = DockerRegistry::start().unwrap();
    let generated = image(dir.path(), "image", 47, &[40 << 20]);
    push_oci_layout(&generated.path, &registry, "library/slow:1").unwrap();
    // A far registry: 10 MiB/s, so the 40 MiB layer takes about 4 s to come down.
    let slow = TokenAuthProxy::start(
        &registry,
        TokenAuthOptions {
            body_bytes_per_second: Some(10 << 20),
            ..TokenAuthOptions::default()
        },
    )
    .unwrap();
    let upstream = format!("docker.io={}", slow.url());
    // The nodes ask each other to download from the upstream: they serve each other.
    let serving = serving(&[&dir.path().join("first"), &dir.path().join("second")]).unwrap();
    let serving: Vec<&str> = serving.iter().map(String::as_str).collect();
    let first = upstream_node(dir.path(), "first", &slow.url(), &serving);
    let second = ShoalNode::start_joined(
        &dir.path().join("second"),
        &[&first],
        &[&["--upstream", &upstream][..], &serving].concat(),
    )
    .unwrap();
    let layer = &generated.platforms[0].layers[0].blob.digest;

    std::thread::scope(|scope| {
        let pulls: Vec<_> = [&first, &second]
            .map(|node| node.gateway().to_string())
            .into_iter()
            .map(|gateway| scope.spawn(move || pull_over_http(&gateway, "library/slow", "1")))
            .collect();
        // Both nodes hold part of the layer at once: one downloads it, the other relays it.
        wait_until(
            "both nodes to hold part of the layer",
            EVENT_TIMEOUT,
            || {
                let partial = |node| {
                    transfer_progress(node, layer)
                        .is_some_and(|(have, total)| have > 0 && have < total)
                };
                Ok(partial(&first) && partial(&second))
            },
        )
        .unwrap_or_else(|error| panic!("{error:#}\n{}\n{}", first.logs(), second.logs()));
        for pull in pulls {
            assert_eq!(pull.join().unwrap(), generated.manifest_digest);
        }
    });
    each_blob_fetched_once(&registry, &generated);
}
