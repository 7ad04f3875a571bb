//! Smoke tests of the real-client harness against the real `docker-registry`: an image built
//! with umoci is pushed with skopeo, then pulled by skopeo, containerd, dockerd and podman, and
//! each client must record exactly the digest that was pushed and run the image.
//!
//! Each test starts its own registry, daemons and temp dirs on fresh ports (and its own network
//! namespace), so they run in parallel. A missing tool fails the test (skips it only
//! with `SHOAL_SKIP_MISSING_CLIENTS=1`, see `clients::skip_or_fail`).

use std::fs;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, ensure};
use serde_json::{Value, json};
use shoal_tests::clients::{
    Containerd, ContainerdConfig, Credentials, CtrPullOptions, Dockerd, DockerdConfig, NetNs,
    Podman, PodmanConfig, Skopeo, oci_layout_digest, require_tools, sha256_digest,
    skopeo_copy_to_oci, skopeo_inspect_digest, umoci_busybox_layout, write_containerd_hosts_toml,
    write_registries_conf,
};
use shoal_tests::registry::{DockerRegistry, RegistryConfig, push_oci_layout};
use tempfile::TempDir;

/// What every test needs: a registry, an image builder and the pusher.
const BASE_TOOLS: &[&str] = &["docker-registry", "skopeo", "umoci", "busybox"];

/// The image's default command prints this (see `umoci_busybox_layout`).
const IMAGE_GREETING: &str = "hello from shoal";

/// A registry holding one freshly built busybox image.
struct Pushed {
    registry: DockerRegistry,
    /// `127.0.0.1:PORT/smoke/busybox:v1`
    reference: String,
    /// The manifest digest skopeo pushed.
    digest: String,
    /// The layout the image was built in (kept for blob lists).
    layout: TempDir,
}

/// Starts a registry with `config`, builds the busybox image and pushes it as `smoke/busybox:v1`.
fn push_busybox(config: RegistryConfig) -> Result<Pushed> {
    let registry = DockerRegistry::start_with(config)?;
    let layout = TempDir::with_prefix("shoal-layout-")?;
    let built = umoci_busybox_layout(layout.path(), "v1")?;
    let digest = push_oci_layout(layout.path(), &registry, "smoke/busybox:v1")?;
    ensure!(
        digest == built,
        "pushed {digest}, but the layout holds {built}"
    );
    let reference = registry.reference("smoke/busybox:v1");
    Ok(Pushed {
        registry,
        reference,
        digest,
        layout,
    })
}

/// Every blob (config and layers) of the single image in an OCI layout.
fn layout_blobs(layout: &Path) -> Result<Vec<String>> {
    let manifest = read_blob_json(layout, &oci_layout_digest(layout)?)?;
    let mut blobs = vec![string_at(&manifest["config"]["digest"])?];
    for layer in manifest["layers"]
        .as_array()
        .context("manifest without layers")?
    {
        blobs.push(string_at(&layer["digest"])?);
    }
    Ok(blobs)
}

fn read_blob_json(layout: &Path, digest: &str) -> Result<Value> {
    let hex = digest
        .strip_prefix("sha256:")
        .context("not a sha256 digest")?;
    Ok(serde_json::from_slice(&fs::read(
        layout.join("blobs/sha256").join(hex),
    )?)?)
}

fn write_blob(layout: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let digest = sha256_digest(bytes);
    let hex = digest
        .strip_prefix("sha256:")
        .context("not a sha256 digest")?;
    fs::write(layout.join("blobs/sha256").join(hex), bytes)?;
    Ok((digest, bytes.len()))
}

fn string_at(value: &Value) -> Result<String> {
    value
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("expected a string, got {value}"))
}

/// Turns the single-manifest layout into a linux/amd64 + linux/arm64 index tagged `v1` (the
/// arm64 image shares the layer; only its config says arm64). Returns (index, amd64 manifest).
fn make_multi_platform(layout: &Path) -> Result<(String, String)> {
    let amd64_digest = oci_layout_digest(layout)?;
    let amd64_manifest = read_blob_json(layout, &amd64_digest)?;
    let amd64_size = fs::read(layout.join("blobs/sha256").join(&amd64_digest[7..]))?.len();
    let mut config = read_blob_json(layout, &string_at(&amd64_manifest["config"]["digest"])?)?;
    config["architecture"] = json!("arm64");
    let (config_digest, config_size) = write_blob(layout, &serde_json::to_vec(&config)?)?;
    let mut arm64_manifest = amd64_manifest.clone();
    arm64_manifest["config"]["digest"] = json!(config_digest);
    arm64_manifest["config"]["size"] = json!(config_size);
    let (arm64_digest, arm64_size) = write_blob(layout, &serde_json::to_vec(&arm64_manifest)?)?;
    let manifest_type = "application/vnd.oci.image.manifest.v1+json";
    let index_type = "application/vnd.oci.image.index.v1+json";
    let index = json!({
        "schemaVersion": 2,
        "mediaType": index_type,
        "manifests": [
            {"mediaType": manifest_type, "digest": amd64_digest, "size": amd64_size,
             "platform": {"architecture": "amd64", "os": "linux"}},
            {"mediaType": manifest_type, "digest": arm64_digest, "size": arm64_size,
             "platform": {"architecture": "arm64", "os": "linux"}},
        ],
    });
    let (index_digest, index_size) = write_blob(layout, &serde_json::to_vec(&index)?)?;
    let layout_index = json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": index_type, "digest": index_digest, "size": index_size,
                       "annotations": {"org.opencontainers.image.ref.name": "v1"}}],
    });
    fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&layout_index)?,
    )?;
    Ok((index_digest, amd64_digest))
}

/// Pushes a linux/amd64 + linux/arm64 busybox index as `multi/busybox:v1`; returns the
/// reference, the index digest and the amd64 manifest digest.
fn push_multi_platform(registry: &DockerRegistry) -> Result<(String, String, String)> {
    let layout = TempDir::new()?;
    umoci_busybox_layout(layout.path(), "v1")?;
    let (index_digest, amd64_digest) = make_multi_platform(layout.path())?;
    let pushed = push_oci_layout(layout.path(), registry, "multi/busybox:v1")?;
    ensure!(
        pushed == index_digest,
        "pushed {pushed}, built {index_digest}"
    );
    let reference = registry.reference("multi/busybox:v1");
    ensure!(
        skopeo_inspect_digest(&reference)? == index_digest,
        "registry changed the index"
    );
    Ok((reference, index_digest, amd64_digest))
}

fn report(test: &str, started: Instant) {
    eprintln!("{test}: {:.2} s", started.elapsed().as_secs_f64());
}

#[test]
fn skopeo_round_trip_fetches_every_blob_once() -> Result<()> {
    if !require_tools(BASE_TOOLS)? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    assert_eq!(skopeo_inspect_digest(&pushed.reference)?, pushed.digest);
    let before = pushed.registry.blob_get_counts()?;
    assert!(
        before.is_empty(),
        "inspect --raw must fetch no blob: {before:?}"
    );

    let pulled = TempDir::new()?;
    let dest = pulled.path().join("oci");
    assert_eq!(
        skopeo_copy_to_oci(&pushed.reference, &dest, false)?,
        pushed.digest
    );

    let blobs = layout_blobs(pushed.layout.path())?;
    assert_eq!(blobs.len(), 2, "config and one layer");
    let counts = pushed.registry.blob_get_counts()?;
    for blob in &blobs {
        assert_eq!(counts.get(blob), Some(&1), "{blob} in {counts:?}");
        assert!(
            dest.join("blobs/sha256").join(&blob[7..]).exists(),
            "{blob} not pulled"
        );
    }
    assert_eq!(counts.len(), blobs.len(), "{counts:?}");
    let agents = pushed.registry.access_log()?;
    assert!(
        agents
            .iter()
            .any(|entry| entry.user_agent.starts_with("skopeo/"))
    );
    report("skopeo_round_trip", started);
    Ok(())
}

#[test]
fn basic_auth_registry_rejects_anonymous_pulls() -> Result<()> {
    if !require_tools(BASE_TOOLS)? {
        return Ok(());
    }
    let started = Instant::now();
    let credentials = Credentials::new("shoal", "correct horse");
    let config = RegistryConfig {
        basic_auth: Some(credentials.clone()),
        ..RegistryConfig::default()
    };
    let pushed = push_busybox(config)?;
    let authorized = Skopeo::new().with_credentials(credentials);
    assert_eq!(authorized.inspect_digest(&pushed.reference)?, pushed.digest);
    let anonymous = skopeo_inspect_digest(&pushed.reference);
    assert!(anonymous.is_err(), "anonymous inspect succeeded");
    let wrong = Skopeo::new().with_credentials(Credentials::new("shoal", "wrong"));
    assert!(
        wrong.inspect_digest(&pushed.reference).is_err(),
        "wrong password accepted"
    );
    let statuses: Vec<u16> = pushed
        .registry
        .access_log()?
        .iter()
        .map(|e| e.status)
        .collect();
    assert!(statuses.contains(&401), "{statuses:?}");
    report("basic_auth", started);
    Ok(())
}

#[test]
fn multi_platform_index_round_trip() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["containerd", "ctr", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let registry = DockerRegistry::start()?;
    let (reference, index_digest, amd64_digest) = push_multi_platform(&registry)?;

    let pulled = TempDir::new()?;
    let all = skopeo_copy_to_oci(&reference, &pulled.path().join("all"), true)?;
    assert_eq!(all, index_digest);
    let one = skopeo_copy_to_oci(&reference, &pulled.path().join("one"), false)?;
    assert_eq!(
        one, amd64_digest,
        "without --all skopeo keeps this machine's manifest"
    );

    let containerd = Containerd::start()?;
    let options = CtrPullOptions {
        all_platforms: true,
        ..CtrPullOptions::default()
    };
    containerd.pull_with(&reference, &options)?;
    assert_eq!(containerd.image_digest(&reference)?, index_digest);
    report("multi_platform_index", started);
    Ok(())
}

#[test]
fn containerd_pulls_and_runs() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["containerd", "ctr", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    let containerd = Containerd::start()?;
    containerd.pull(&pushed.reference)?;
    assert_eq!(containerd.image_digest(&pushed.reference)?, pushed.digest);
    let log = pushed.registry.access_log()?;
    let first = log
        .iter()
        .find(|e| e.user_agent.starts_with("containerd/"))
        .context("no request")?;
    assert_eq!(
        (first.method.as_str(), first.path()),
        ("HEAD", "/v2/smoke/busybox/manifests/v1")
    );
    let output = containerd.run(
        &pushed.reference,
        &["/bin/sh", "-c", "echo ran in containerd"],
    )?;
    assert_eq!(output.trim(), "ran in containerd");
    report("containerd_pulls_and_runs", started);
    Ok(())
}

#[test]
fn containerd_pulls_through_a_hosts_dir_mirror() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["containerd", "ctr", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    let hosts = TempDir::new()?;
    let mirror = pushed.registry.url();
    write_containerd_hosts_toml(
        hosts.path(),
        "upstream.invalid",
        "http://upstream.invalid",
        &[&mirror],
    )?;
    let containerd = Containerd::start()?;
    let options = CtrPullOptions {
        hosts_dir: Some(hosts.path().to_owned()),
        ..Default::default()
    };
    let reference = "upstream.invalid/smoke/busybox:v1";
    containerd.pull_with(reference, &options)?;
    assert_eq!(containerd.image_digest(reference)?, pushed.digest);
    let log = pushed.registry.access_log()?;
    let mirrored = log
        .iter()
        .filter(|e| e.uri.ends_with("?ns=upstream.invalid"))
        .count();
    assert!(
        mirrored >= 3,
        "manifest + config + layer via the mirror, got {log:#?}"
    );
    report("containerd_hosts_dir_mirror", started);
    Ok(())
}

#[test]
fn dockerd_on_host_network_pulls_and_runs() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["dockerd", "docker", "containerd", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    let dockerd = Dockerd::start()?;
    let ready = Instant::now();
    dockerd.pull(&pushed.reference)?;
    assert_eq!(dockerd.image_digest(&pushed.reference)?, pushed.digest);
    let output = dockerd.run(&pushed.reference, &[])?;
    assert_eq!(output.trim(), IMAGE_GREETING);
    eprintln!("dockerd pull + run: {:.2} s", ready.elapsed().as_secs_f64());
    let counts = pushed.registry.blob_get_counts()?;
    assert!(counts.values().all(|&n| n == 1), "{counts:?}");
    drop(dockerd);
    report("dockerd_host_network", started);
    Ok(())
}

#[test]
fn dockerd_in_a_netns_reaches_only_registries_inside_it() -> Result<()> {
    let tools = [
        BASE_TOOLS,
        &["dockerd", "docker", "containerd", "runc", "ip", "nsenter"],
    ]
    .concat();
    if !require_tools(&tools)? {
        return Ok(());
    }
    let started = Instant::now();
    let netns = NetNs::create()?;
    let inside = push_busybox(RegistryConfig {
        netns: Some(netns.clone()),
        ..RegistryConfig::default()
    })?;
    let outside = push_busybox(RegistryConfig::default())?;
    let dockerd = Dockerd::start_in(&netns)?;
    dockerd.pull(&inside.reference)?;
    assert_eq!(dockerd.image_digest(&inside.reference)?, inside.digest);
    assert_eq!(
        dockerd.run(&inside.reference, &["echo", "netns"])?.trim(),
        "netns"
    );
    let error = dockerd
        .pull(&outside.reference)
        .err()
        .context("the host registry was reachable")?;
    assert!(
        format!("{error:#}").contains("connection refused"),
        "{error:#}"
    );
    let netns_path = netns.path();
    drop(dockerd);
    drop(inside);
    assert!(
        netns_path.exists(),
        "the namespace outlives its users only while a clone is held"
    );
    drop(netns);
    assert!(!netns_path.exists(), "{} not deleted", netns_path.display());
    report("dockerd_netns", started);
    Ok(())
}

#[test]
fn podman_pulls_and_runs() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["podman", "conmon", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    let podman = Podman::new()?;
    podman.pull(&pushed.reference)?;
    assert_eq!(podman.image_digest(&pushed.reference)?, pushed.digest);
    assert_eq!(podman.run(&pushed.reference, &[])?.trim(), IMAGE_GREETING);
    report("podman_pulls_and_runs", started);
    Ok(())
}

#[test]
fn podman_pulls_through_a_registries_conf_mirror() -> Result<()> {
    if !require_tools(&[BASE_TOOLS, &["podman", "conmon", "runc"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let pushed = push_busybox(RegistryConfig::default())?;
    let conf_dir = TempDir::new()?;
    let registries_conf = conf_dir.path().join("registries.conf");
    write_registries_conf(
        &registries_conf,
        "upstream.invalid",
        "upstream.invalid",
        &pushed.registry.host(),
    )?;
    let config = PodmanConfig {
        registries_conf: Some(registries_conf),
        ..Default::default()
    };
    let podman = Podman::with_config(config)?;
    let reference = "upstream.invalid/smoke/busybox:v1";
    podman.pull(reference)?;
    assert_eq!(podman.image_digest(reference)?, pushed.digest);
    let counts = pushed.registry.blob_get_counts()?;
    assert_eq!(
        counts.len(),
        2,
        "config and layer came from the mirror: {counts:?}"
    );
    report("podman_registries_conf_mirror", started);
    Ok(())
}

#[test]
fn docker_and_podman_record_the_index_digest_of_a_multi_platform_image() -> Result<()> {
    let tools = [
        BASE_TOOLS,
        &[
            "dockerd",
            "docker",
            "containerd",
            "runc",
            "podman",
            "conmon",
        ],
    ];
    if !require_tools(&tools.concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let registry = DockerRegistry::start()?;
    let (reference, index_digest, amd64_digest) = push_multi_platform(&registry)?;
    let dockerd = Dockerd::start()?;
    dockerd.pull(&reference)?;
    assert_eq!(dockerd.image_digest(&reference)?, index_digest);
    assert_eq!(dockerd.run(&reference, &["echo", "index"])?.trim(), "index");
    let by_digest = registry.reference(&format!("multi/busybox@{amd64_digest}"));
    dockerd.pull(&by_digest)?;
    assert_eq!(dockerd.image_digest(&by_digest)?, amd64_digest);
    let podman = Podman::new()?;
    podman.pull(&reference)?;
    assert_eq!(podman.image_digest(&reference)?, index_digest);
    let blobs_fetched = registry.blob_get_counts()?.len();
    assert_eq!(
        blobs_fetched, 2,
        "only amd64's config and layer are fetched"
    );
    report("docker_podman_multi_platform", started);
    Ok(())
}

#[test]
fn containerd_and_podman_in_a_netns_pull_from_a_registry_inside_it() -> Result<()> {
    let tools = [
        BASE_TOOLS,
        &[
            "containerd",
            "ctr",
            "runc",
            "podman",
            "conmon",
            "ip",
            "nsenter",
        ],
    ];
    if !require_tools(&tools.concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let netns = NetNs::create()?;
    let inside = push_busybox(RegistryConfig {
        netns: Some(netns.clone()),
        ..RegistryConfig::default()
    })?;
    let containerd = Containerd::start_with(ContainerdConfig {
        netns: Some(netns.clone()),
    })?;
    containerd.pull(&inside.reference)?;
    assert_eq!(containerd.image_digest(&inside.reference)?, inside.digest);
    assert_eq!(
        containerd.run(&inside.reference, &["echo", "ctr"])?.trim(),
        "ctr"
    );
    let config = PodmanConfig {
        netns: Some(netns.clone()),
        ..PodmanConfig::default()
    };
    let podman = Podman::with_config(config)?;
    podman.pull(&inside.reference)?;
    assert_eq!(podman.image_digest(&inside.reference)?, inside.digest);
    let counts = inside.registry.blob_get_counts()?;
    assert!(
        counts.len() == 2 && counts.values().all(|&n| n == 2),
        "{counts:?}"
    );
    report("containerd_podman_netns", started);
    Ok(())
}

#[test]
fn dockerd_pulls_docker_hub_names_through_a_registry_mirror() -> Result<()> {
    let tools = [
        BASE_TOOLS,
        &["dockerd", "docker", "containerd", "runc", "ip", "nsenter"],
    ];
    if !require_tools(&tools.concat())? {
        return Ok(());
    }
    let started = Instant::now();
    // In a namespace: a mirror miss would make dockerd fall back to the real Docker Hub.
    let netns = NetNs::create()?;
    let mirror = DockerRegistry::start_with(RegistryConfig {
        netns: Some(netns.clone()),
        ..RegistryConfig::default()
    })?;
    let layout = TempDir::new()?;
    let digest = umoci_busybox_layout(layout.path(), "v1")?;
    push_oci_layout(layout.path(), &mirror, "library/busybox:v1")?;
    let dockerd = Dockerd::start_with(DockerdConfig {
        netns: Some(netns.clone()),
        registry_mirrors: vec![mirror.url()],
        ..DockerdConfig::default()
    })?;
    dockerd.pull("busybox:v1")?;
    assert_eq!(dockerd.image_digest("busybox:v1")?, digest);
    assert_eq!(dockerd.run("busybox:v1", &[])?.trim(), IMAGE_GREETING);
    let missing = dockerd
        .pull("busybox:absent")
        .err()
        .context("pulled a tag nobody has")?;
    let log = mirror.access_log()?;
    let absent = log
        .iter()
        .filter(|e| e.path() == "/v2/library/busybox/manifests/absent");
    assert!(absent.count() >= 1, "the mirror was asked first: {log:#?}");
    let missing = format!("{missing:#}");
    assert!(
        missing.contains("registry-1.docker.io"),
        "falls back to the Hub: {missing}"
    );
    assert!(
        missing.contains("network is unreachable"),
        "which the netns blocks: {missing}"
    );
    report("dockerd_registry_mirror", started);
    Ok(())
}
