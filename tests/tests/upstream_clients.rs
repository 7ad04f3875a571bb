//! Real runtimes, configured by `shoal configure`, pull `docker.io/library/<image>` through a
//! Shoal node whose docker.io upstream is a real `docker-registry`; the upstream serves each
//! blob once, and later pulls come from the node's store.
//!
//! Every test runs the registry, the node and the runtime in one network namespace with only
//! loopback: the registry stands in for Docker Hub there, and a runtime that fell back from
//! the mirror would reach the registry named in its configuration (containerd, podman) or the
//! real Docker Hub (dockerd, which fails there). The registry's access log tells who asked it
//! for what: after the image was pushed, every request must come from the node (user agent
//! `shoal/...`) and every blob must be fetched exactly once.
//!
//! The image is the runnable one of `real_clients.rs` (busybox plus four layers of
//! incompressible data), and the container must print what its layers hold.
//!
//! A missing tool fails the test (skips it only with `SHOAL_SKIP_MISSING_CLIENTS=1`, see
//! `clients::skip_or_fail`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use shoal_tests::clients::{
    Containerd, ContainerdConfig, CtrPullOptions, Dockerd, DockerdConfig, NetNs, Podman,
    PodmanConfig, require_tools, run_command,
};
use shoal_tests::image::{Blob, GeneratedImage, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal_binary};
use shoal_tests::registry::{AccessLogEntry, DockerRegistry, RegistryConfig, push_oci_layout};
use shoal_tests::run_check::RunCheck;
use tempfile::TempDir;

const CONTAINERD_TOOLS: &[&str] = &["containerd", "ctr", "runc"];
const DOCKER_TOOLS: &[&str] = &["dockerd", "docker", "containerd", "runc"];
const PODMAN_TOOLS: &[&str] = &["podman", "conmon", "runc"];
const NETNS_TOOLS: &[&str] = &["ip", "nsenter"];
/// The registry, skopeo to push to it, and busybox for the generated image.
const UPSTREAM_TOOLS: &[&str] = &["docker-registry", "skopeo", "busybox"];

/// Payload bytes of the image's layers; busybox (about 2 MB) comes on top in the first.
const LAYERS: [u64; 4] = [900_000, 700_000, 400_000, 3_000];

fn image_spec(seed: u64) -> ImageSpec {
    LAYERS
        .iter()
        .fold(ImageSpec::new(seed), |spec, &bytes| spec.layer(bytes))
        .with_busybox(true)
}

fn report(test: &str, started: Instant) {
    eprintln!("{test}: {:.2} s", started.elapsed().as_secs_f64());
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The set-up: an upstream registry holding the image and a node pulling through from it

/// A loopback-only namespace holding a `docker-registry` with `library/<name>:1` pushed to it
/// and a node whose docker.io upstream is that registry. Fields drop in order: the node, then
/// the registry, then the namespace, then the temp dir.
struct Upstream {
    node: ShoalNode,
    registry: DockerRegistry,
    netns: NetNs,
    dir: TempDir,
    image: GeneratedImage,
    /// `docker.io/library/<name>:1`.
    reference: String,
    /// How many access-log entries the push left: the ones after are the pulls'.
    pushed_entries: usize,
}

impl Upstream {
    fn start(name: &str, seed: u64) -> Result<Self> {
        let netns = NetNs::create()?;
        let registry = DockerRegistry::start_with(RegistryConfig {
            netns: Some(netns.clone()),
            ..RegistryConfig::default()
        })?;
        let dir = TempDir::with_prefix("shoal-upstream-clients-")?;
        let image = image_spec(seed).write_oci_layout(&dir.path().join("layout"), None)?;
        let pushed = push_oci_layout(&image.path, &registry, &format!("library/{name}:1"))?;
        ensure!(
            pushed == image.manifest_digest,
            "the registry stored {pushed}, expected {}",
            image.manifest_digest
        );
        let pushed_entries = registry.access_log()?.len();
        let upstream = format!("docker.io={}", registry.url());
        let node =
            ShoalNode::start_in(&netns, &dir.path().join("data"), &["--upstream", &upstream])?;
        Ok(Self {
            node,
            registry,
            netns,
            dir,
            image,
            reference: format!("docker.io/library/{name}:1"),
            pushed_entries,
        })
    }

    /// `http://127.0.0.1:PORT`: the mirror URL `shoal configure` writes for this node.
    fn gateway_url(&self) -> String {
        format!("http://{}", self.node.gateway())
    }

    /// `shoal configure <runtime> --write` for this node, into `path`; returns its stdout.
    fn configure(&self, runtime: &str, path: &Path) -> Result<String> {
        let mut configure = Command::new(shoal_binary()?);
        configure
            .args(["configure", runtime, "--write", "--gateway"])
            .arg(self.node.gateway().to_string())
            .arg("--upstream")
            .arg(format!("docker.io={}", self.registry.url()))
            .arg("--path")
            .arg(path);
        let output = run_command(&mut configure)?;
        Ok(output.stdout_text()?.to_owned())
    }

    /// The upstream's access log since the push.
    fn pull_requests(&self) -> Result<Vec<AccessLogEntry>> {
        let mut entries = self.registry.access_log()?;
        ensure!(
            entries.len() >= self.pushed_entries,
            "the access log shrank"
        );
        Ok(entries.split_off(self.pushed_entries))
    }

    /// Fails unless the upstream served every config and layer exactly once since the push.
    fn each_blob_fetched_once(&self) -> Result<()> {
        let counts = self.registry.blob_get_counts()?;
        for blob in layers_and_configs(&self.image) {
            ensure!(
                counts.get(&blob.digest) == Some(&1),
                "blob {} was fetched from the upstream {:?} times: {counts:?}",
                blob.digest,
                counts.get(&blob.digest)
            );
        }
        Ok(())
    }

    /// Fails unless every request the upstream got since the push came from the node (so the
    /// runtime went through the mirror, never straight to the registry), and there were some.
    fn only_the_node_asked_the_upstream(&self) -> Result<()> {
        let requests = self.pull_requests()?;
        ensure!(!requests.is_empty(), "the upstream got no request at all");
        let others: Vec<&AccessLogEntry> = requests
            .iter()
            .filter(|entry| !entry.user_agent.starts_with("shoal/"))
            .collect();
        ensure!(
            others.is_empty(),
            "the upstream was asked by someone other than the node: {others:#?}"
        );
        Ok(())
    }

    fn counter(&self, name: &str) -> Result<u64> {
        let status = self.node.status()?;
        status["counters"][name]
            .as_u64()
            .with_context(|| format!("no counter {name} in {status}"))
    }

    /// Adds the node's log and the upstream's requests to a failure.
    fn explain<T>(&self, result: Result<T>) -> Result<T> {
        result.with_context(|| {
            let requests = match self.pull_requests() {
                Ok(entries) => entries
                    .iter()
                    .map(|e| format!("{} {} {} {:?}", e.method, e.uri, e.status, e.user_agent))
                    .collect::<Vec<_>>()
                    .join("\n"),
                Err(error) => format!("{error:#}"),
            };
            format!(
                "upstream requests since the push:\n{requests}\nshoal node log:\n{}",
                tail_lines(&self.node.logs(), 40)
            )
        })
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The image's configs and layers: what a registry serves from its blobs endpoint.
fn layers_and_configs(image: &GeneratedImage) -> impl Iterator<Item = &Blob> {
    image
        .blobs
        .iter()
        .filter(|blob| !blob.media_type.contains("manifest") && !blob.media_type.contains("index"))
}

fn blob_bytes(image: &GeneratedImage) -> u64 {
    layers_and_configs(image).map(|blob| blob.size).sum()
}

// ---------------------------------------------------------------------------------------------
// containerd

#[test]
fn containerd_configured_by_shoal_pulls_docker_hub_images_through_the_node() -> Result<()> {
    if !require_tools(&[UPSTREAM_TOOLS, CONTAINERD_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let upstream = Upstream::start("shoalup-ctr", 1101)?;
    let hosts = upstream.path("certs.d");
    let printed = upstream.configure("containerd", &hosts)?;
    let hosts_toml = hosts.join("docker.io/hosts.toml");
    ensure!(
        printed.contains(&format!("wrote {}", hosts_toml.display())),
        "{printed}"
    );
    let written = fs::read_to_string(&hosts_toml)?;
    ensure!(
        written.contains(&format!("server = \"{}\"", upstream.registry.url()))
            && written.contains(&format!("[host.\"{}\"]", upstream.gateway_url())),
        "{written}"
    );

    let options = CtrPullOptions {
        hosts_dir: Some(hosts),
        ..CtrPullOptions::default()
    };
    let reference = upstream.reference.as_str();
    let check = RunCheck::new(&upstream.image)?;
    let containerd = Containerd::start_with(ContainerdConfig {
        netns: Some(upstream.netns.clone()),
    })?;
    upstream.explain(containerd.pull_with(reference, &options))?;
    assert_eq!(
        containerd.image_digest(reference)?,
        upstream.image.manifest_digest
    );
    check.check("ctr run", &containerd.run(reference, &check.args())?)?;
    upstream.explain(upstream.each_blob_fetched_once())?;
    upstream.explain(upstream.only_the_node_asked_the_upstream())?;

    // A fresh containerd pulls the same image again: it comes from the node's store.
    let from_upstream = upstream.counter("bytes_from_upstream")?;
    let served = upstream.counter("bytes_served_by_gateway")?;
    let second = Containerd::start_with(ContainerdConfig {
        netns: Some(upstream.netns.clone()),
    })?;
    upstream.explain(second.pull_with(reference, &options))?;
    assert_eq!(
        second.image_digest(reference)?,
        upstream.image.manifest_digest
    );
    check.check("ctr run (second)", &second.run(reference, &check.args())?)?;
    upstream.explain(upstream.each_blob_fetched_once())?;
    upstream.explain(upstream.only_the_node_asked_the_upstream())?;
    // At most the manifest again (the tag is re-checked when it is no longer fresh).
    let again = upstream.counter("bytes_from_upstream")? - from_upstream;
    assert!(
        again <= upstream.image.manifest_size,
        "{again} more bytes came from the upstream on the second pull"
    );
    let served_again = upstream.counter("bytes_served_by_gateway")? - served;
    assert!(
        served_again >= blob_bytes(&upstream.image),
        "the gateway served only {served_again} bytes on the second pull, for {} bytes of blobs",
        blob_bytes(&upstream.image)
    );
    report("containerd_upstream", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dockerd

#[test]
fn docker_configured_by_shoal_pulls_docker_hub_images_through_the_node() -> Result<()> {
    if !require_tools(&[UPSTREAM_TOOLS, DOCKER_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let upstream = Upstream::start("shoalup-docker", 1201)?;
    // An operator's daemon.json with an unrelated setting, which the merge must keep.
    let daemon_json = upstream.path("daemon.json");
    fs::write(&daemon_json, "{\"log-level\": \"warn\"}\n")?;
    upstream.configure("docker", &daemon_json)?;
    let merged: Value = serde_json::from_str(&fs::read_to_string(&daemon_json)?)?;
    assert_eq!(merged["log-level"], "warn", "{merged}");
    let mirrors: Vec<String> = serde_json::from_value(merged["registry-mirrors"].clone())
        .with_context(|| format!("no registry-mirrors list in {merged}"))?;
    assert_eq!(mirrors, [upstream.gateway_url()], "{merged}");

    let dockerd = Dockerd::start_with(DockerdConfig {
        netns: Some(upstream.netns.clone()),
        registry_mirrors: mirrors,
        ..DockerdConfig::default()
    })?;
    // dockerd sends no `?ns=` to mirrors: the node's default namespace, docker.io, applies.
    let name = "shoalup-docker:1";
    upstream.explain(dockerd.pull(name))?;
    assert_eq!(dockerd.image_digest(name)?, upstream.image.manifest_digest);
    let check = RunCheck::new(&upstream.image)?;
    check.check("docker run", &dockerd.run(name, &check.args())?)?;
    upstream.explain(upstream.each_blob_fetched_once())?;
    upstream.explain(upstream.only_the_node_asked_the_upstream())?;
    report("docker_upstream", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// podman

#[test]
fn podman_configured_by_shoal_pulls_docker_hub_images_through_the_node() -> Result<()> {
    if !require_tools(&[UPSTREAM_TOOLS, PODMAN_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let upstream = Upstream::start("shoalup-podman", 1301)?;
    let registries_conf = upstream.path("registries.conf");
    upstream.configure("podman", &registries_conf)?;
    let written = fs::read_to_string(&registries_conf)?;
    ensure!(
        written.contains(&format!("location = \"{}\"", upstream.node.gateway())),
        "{written}"
    );

    let podman = Podman::with_config(PodmanConfig {
        netns: Some(upstream.netns.clone()),
        registries_conf: Some(registries_conf),
        credentials: None,
    })?;
    let reference = upstream.reference.as_str();
    upstream.explain(podman.pull(reference))?;
    assert_eq!(
        podman.image_digest(reference)?,
        upstream.image.manifest_digest
    );
    let check = RunCheck::new(&upstream.image)?;
    check.check("podman run", &podman.run(reference, &check.args())?)?;
    upstream.explain(upstream.each_blob_fetched_once())?;
    upstream.explain(upstream.only_the_node_asked_the_upstream())?;
    report("podman_upstream", started);
    Ok(())
}
