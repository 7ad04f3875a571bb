//! Real clients pulling through a Shoal gateway: a node imports generated images and skopeo,
//! containerd (`ctr`), podman and dockerd pull them from `http://127.0.0.1:PORT` exactly as
//! users do. Every client must record the very digest that was imported, and the runtimes must
//! run the image and print what its layers hold.
//!
//! The images: `team/app:1`, four layers holding 2 MB of incompressible data and, in the first,
//! a 2 MB static busybox; and two linux/amd64 + linux/arm64 indexes with two smaller layers per
//! platform, one with OCI media types and one with Docker schema 2 media types (a manifest
//! list). Each test generates its own (with its own seeds) in well under a second.
//!
//! What the container prints is known in advance: every layer's README and the sha256 of its
//! first data file, read from the generated layer blobs. So a run proves that every layer
//! arrived intact and was applied in order.
//!
//! The mirror tests run the node, the client and its daemon in a network namespace with only
//! loopback: a miss at the mirror makes containerd, dockerd and podman fall back to the real
//! Docker Hub, which must fail there instead of leaving the machine or passing by accident.
//!
//! Each test starts its own node, daemons and temp dirs on fresh ports, so they run in
//! parallel. A missing tool fails the test (skips it only with
//! `SHOAL_SKIP_MISSING_CLIENTS=1`, see `clients::skip_or_fail`).

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::{Value, json};

use shoal_tests::clients::{
    Containerd, ContainerdConfig, CtrPullOptions, Dockerd, DockerdConfig, NetNs, Podman,
    PodmanConfig, Skopeo, require_tools, run_command, sha256_digest, write_containerd_hosts_toml,
    write_registries_conf,
};
use shoal_tests::image::{GeneratedImage, ImageSpec, MediaTypes};
use shoal_tests::node::ShoalNode;
use shoal_tests::run_check::RunCheck;
use tempfile::TempDir;

const CONTAINERD_TOOLS: &[&str] = &["containerd", "ctr", "runc"];
const DOCKER_TOOLS: &[&str] = &["dockerd", "docker", "containerd", "runc"];
const PODMAN_TOOLS: &[&str] = &["podman", "conmon", "runc"];
const NETNS_TOOLS: &[&str] = &["ip", "nsenter"];

/// Where the image generator finds the busybox it puts in the first layer.
const IMAGE_TOOLS: &[&str] = &["busybox"];

/// The repository and tag of the single-platform image in the node.
const APP: &str = "team/app:1";
/// The multi-platform images: an OCI index and a Docker manifest list.
const OCI_INDEX: &str = "multi/oci:1";
const DOCKER_LIST: &str = "multi/docker:1";

/// Payload bytes of the app's layers; busybox (about 2 MB) comes on top in the first.
const APP_LAYERS: [u64; 4] = [900_000, 700_000, 400_000, 3_000];
const INDEX_LAYERS: [u64; 2] = [500_000, 200_000];

fn app_spec(seed: u64) -> ImageSpec {
    APP_LAYERS
        .iter()
        .fold(ImageSpec::new(seed), |spec, &bytes| spec.layer(bytes))
        .with_busybox(true)
}

fn index_spec(seed: u64, media_types: MediaTypes) -> ImageSpec {
    INDEX_LAYERS
        .iter()
        .fold(ImageSpec::new(seed), |spec, &bytes| spec.layer(bytes))
        .with_busybox(true)
        .platform("linux", "amd64")
        .platform("linux", "arm64")
        .media_types(media_types)
}

/// A node and the images imported into it, in one temp dir.
struct Fixture {
    node: ShoalNode,
    dir: TempDir,
}

impl Fixture {
    /// A node on the host network.
    fn start() -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-real-clients-")?;
        let node = ShoalNode::start(&dir.path().join("data"), &[])?;
        Ok(Self { node, dir })
    }

    /// A node whose gateway listens inside `netns`.
    fn start_in(netns: &NetNs) -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-real-clients-")?;
        let node = ShoalNode::start_in(netns, &dir.path().join("data"), &[])?;
        Ok(Self { node, dir })
    }

    /// Writes `spec` as an OCI layout and imports it as `name` (`repo:tag`).
    fn import(&self, spec: &ImageSpec, name: &str) -> Result<GeneratedImage> {
        let layout = self.dir.path().join(name.replace(['/', ':', '.'], "-"));
        let image = spec.write_oci_layout(&layout, None)?;
        self.node.import_ok(&image.path, Some(name))?;
        Ok(image)
    }

    /// `127.0.0.1:PORT/<name>`: how a client names an image in this node's gateway.
    fn reference(&self, name: &str) -> String {
        format!("{}/{name}", self.node.gateway())
    }

    /// `http://127.0.0.1:PORT`, for mirror configurations.
    fn url(&self) -> String {
        format!("http://{}", self.node.gateway())
    }

    /// Adds the node's log to a failure, since the gateway's side is usually the interesting one.
    fn explain<T>(&self, result: Result<T>) -> Result<T> {
        result.with_context(|| format!("shoal node log:\n{}", tail_lines(&self.node.logs(), 40)))
    }
}

fn tail_lines(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn report(test: &str, started: Instant) {
    eprintln!("{test}: {:.2} s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------------------------------------
// Layout checks

/// The digests of every blob file in an OCI layout or `dir:` directory.
fn blob_files(layout: &Path) -> Result<BTreeSet<String>> {
    let mut digests = BTreeSet::new();
    for entry in fs::read_dir(layout.join("blobs/sha256"))? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        digests.insert(format!("sha256:{name}"));
    }
    Ok(digests)
}

fn generated_blobs(image: &GeneratedImage) -> BTreeSet<String> {
    image.blobs.iter().map(|blob| blob.digest.clone()).collect()
}

/// `skopeo copy [--all] docker://SRC dir:DEST` (plain HTTP): the `dir:` transport keeps the
/// manifest bytes as served, Docker media types included, in `DEST/manifest.json`; returns
/// the digest of those bytes.
fn skopeo_copy_to_dir(src: &str, dest: &Path, all_platforms: bool) -> Result<String> {
    let mut cmd = Command::new("skopeo");
    cmd.args(["copy", "--quiet", "--src-tls-verify=false"]);
    if all_platforms {
        cmd.arg("--all");
    }
    cmd.arg(format!("docker://{src}"))
        .arg(format!("dir:{}", dest.display()));
    run_command(&mut cmd)?;
    Ok(sha256_digest(&fs::read(dest.join("manifest.json"))?))
}

/// Every file skopeo's `dir:` transport wrote is named after the digest of its content
/// (blobs by hex, platform manifests as `<hex>.manifest.json`); returns those digests after
/// checking each one.
fn dir_transport_digests(dir: &Path) -> Result<BTreeSet<String>> {
    let mut digests = BTreeSet::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let hex = name.strip_suffix(".manifest.json").unwrap_or(&name);
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            continue;
        }
        let digest = format!("sha256:{hex}");
        ensure!(
            sha256_digest(&fs::read(entry.path())?) == digest,
            "{name} does not hash to its name"
        );
        digests.insert(digest);
    }
    Ok(digests)
}

// ---------------------------------------------------------------------------------------------
// skopeo

#[test]
fn skopeo_copies_images_and_indexes_with_their_digests() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, &["skopeo"]].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let fixture = Fixture::start()?;
    let app = fixture.import(&app_spec(101), APP)?;
    let oci = fixture.import(&index_spec(102, MediaTypes::Oci), OCI_INDEX)?;
    let docker = fixture.import(&index_spec(103, MediaTypes::Docker), DOCKER_LIST)?;
    let skopeo = Skopeo::new();
    let out = TempDir::new()?;

    // inspect --raw: the bytes served by tag and by digest hash to the imported digest.
    for (name, image) in [(APP, &app), (OCI_INDEX, &oci), (DOCKER_LIST, &docker)] {
        let reference = fixture.reference(name);
        let by_tag = fixture.explain(skopeo.inspect_digest(&reference))?;
        assert_eq!(by_tag, image.manifest_digest, "inspect --raw {reference}");
        let repository = name.split(':').next().context("no repository")?;
        let pinned = fixture.reference(&format!("{repository}@{}", image.manifest_digest));
        fixture.explain(skopeo.inspect_digest(&pinned))?;
    }

    // Tags list: a second tag on the same image shows up next to the first.
    fixture
        .node
        .import_ok(&app.path, Some(&APP.replace(":1", ":2")))?;
    let mut list_tags = Command::new("skopeo");
    list_tags.args(["list-tags", "--tls-verify=false"]);
    list_tags.arg(format!("docker://{}", fixture.reference("team/app")));
    let listed: Value =
        serde_json::from_slice(&fixture.explain(run_command(&mut list_tags))?.stdout)?;
    assert_eq!(listed["Tags"], json!(["1", "2"]), "{listed}");

    // The config, raw, and another platform's view of the index (which fetches its config).
    let mut config = Command::new("skopeo");
    config.args(["inspect", "--config", "--raw", "--tls-verify=false"]);
    config.arg(format!("docker://{}", fixture.reference(APP)));
    let config = fixture.explain(run_command(&mut config))?;
    assert_eq!(sha256_digest(&config.stdout), app.config_digest());
    let mut arm64 = Command::new("skopeo");
    arm64.args(["--override-arch", "arm64", "inspect", "--tls-verify=false"]);
    arm64.arg(format!("docker://{}", fixture.reference(OCI_INDEX)));
    let arm64: Value = serde_json::from_slice(&fixture.explain(run_command(&mut arm64))?.stdout)?;
    let arm64_image = &oci.platforms[1];
    assert_eq!(arm64["Architecture"], "arm64", "{arm64}");
    // `Digest` is the digest of what the tag names: the index.
    assert_eq!(arm64["Digest"], oci.manifest_digest.as_str());
    let layers: Vec<&str> = arm64_image
        .layers
        .iter()
        .map(|layer| layer.blob.digest.as_str())
        .collect();
    assert_eq!(arm64["Layers"], json!(layers));

    // The single-platform image: the same manifest digest and exactly the imported blobs.
    let app_dir = out.path().join("app");
    let copied = fixture.explain(skopeo.copy_to_oci(&fixture.reference(APP), &app_dir, false))?;
    assert_eq!(copied, app.manifest_digest);
    assert_eq!(blob_files(&app_dir)?, generated_blobs(&app));

    // The OCI index, whole: every platform's manifest, config and layers.
    let all_dir = out.path().join("oci-all");
    let copied =
        fixture.explain(skopeo.copy_to_oci(&fixture.reference(OCI_INDEX), &all_dir, true))?;
    assert_eq!(copied, oci.manifest_digest);
    assert_eq!(blob_files(&all_dir)?, generated_blobs(&oci));

    // Without --all skopeo keeps this machine's platform (amd64) from the index.
    let one_dir = out.path().join("oci-one");
    let copied =
        fixture.explain(skopeo.copy_to_oci(&fixture.reference(OCI_INDEX), &one_dir, false))?;
    assert_eq!(copied, oci.platforms[0].manifest.digest);

    // The Docker manifest list: `oci:` would convert it (new digests), `dir:` keeps it as is.
    let list_dir = out.path().join("docker-all");
    let copied = fixture.explain(skopeo_copy_to_dir(
        &fixture.reference(DOCKER_LIST),
        &list_dir,
        true,
    ))?;
    assert_eq!(copied, docker.manifest_digest);
    let mut expected = generated_blobs(&docker);
    expected.remove(&docker.manifest_digest);
    assert_eq!(dir_transport_digests(&list_dir)?, expected);
    report("skopeo", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// containerd

#[test]
fn containerd_pulls_and_runs_images_and_indexes() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, CONTAINERD_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let fixture = Fixture::start()?;
    let app = fixture.import(&app_spec(201), APP)?;
    let oci = fixture.import(&index_spec(202, MediaTypes::Oci), OCI_INDEX)?;
    let docker = fixture.import(&index_spec(203, MediaTypes::Docker), DOCKER_LIST)?;
    let containerd = Containerd::start()?;

    let reference = fixture.reference(APP);
    fixture.explain(containerd.pull(&reference))?;
    assert_eq!(containerd.image_digest(&reference)?, app.manifest_digest);
    let check = RunCheck::new(&app)?;
    check.check("ctr run", &containerd.run(&reference, &check.args())?)?;

    let all_platforms = CtrPullOptions {
        all_platforms: true,
        ..CtrPullOptions::default()
    };
    for (name, image) in [(OCI_INDEX, &oci), (DOCKER_LIST, &docker)] {
        let reference = fixture.reference(name);
        fixture.explain(containerd.pull_with(&reference, &all_platforms))?;
        assert_eq!(
            containerd.image_digest(&reference)?,
            image.manifest_digest,
            "{name}"
        );
        let check = RunCheck::new(image)?;
        check.check(
            &format!("ctr run {name}"),
            &containerd.run(&reference, &check.args())?,
        )?;
    }
    // One platform's manifest by digest: ctr records the pinned digest.
    let amd64 = &docker.platforms[0].manifest.digest;
    let pinned = fixture.reference(&format!("multi/docker@{amd64}"));
    fixture.explain(containerd.pull(&pinned))?;
    assert_eq!(&containerd.image_digest(&pinned)?, amd64);
    report("containerd", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// podman

#[test]
fn podman_pulls_and_runs_images_and_indexes() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, PODMAN_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let fixture = Fixture::start()?;
    let app = fixture.import(&app_spec(301), APP)?;
    let oci = fixture.import(&index_spec(302, MediaTypes::Oci), OCI_INDEX)?;
    let docker = fixture.import(&index_spec(303, MediaTypes::Docker), DOCKER_LIST)?;
    let podman = Podman::new()?;

    for (name, image) in [(APP, &app), (OCI_INDEX, &oci), (DOCKER_LIST, &docker)] {
        let reference = fixture.reference(name);
        fixture.explain(podman.pull(&reference))?;
        assert_eq!(
            podman.image_digest(&reference)?,
            image.manifest_digest,
            "{name}"
        );
        let check = RunCheck::new(image)?;
        check.check(
            &format!("podman run {name}"),
            &podman.run(&reference, &check.args())?,
        )?;
    }
    report("podman", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// dockerd

#[test]
fn docker_pulls_and_runs_images_and_indexes() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, DOCKER_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let fixture = Fixture::start()?;
    let app = fixture.import(&app_spec(401), APP)?;
    let oci = fixture.import(&index_spec(402, MediaTypes::Oci), OCI_INDEX)?;
    let docker = fixture.import(&index_spec(403, MediaTypes::Docker), DOCKER_LIST)?;
    // On the host network: the gateway is on the host's 127.0.0.1, and these names are
    // 127.0.0.1:PORT/..., never Docker Hub's, so there is nothing to fall back to.
    let dockerd = Dockerd::start()?;

    for (name, image) in [(APP, &app), (OCI_INDEX, &oci), (DOCKER_LIST, &docker)] {
        let reference = fixture.reference(name);
        fixture.explain(dockerd.pull(&reference))?;
        assert_eq!(
            dockerd.image_digest(&reference)?,
            image.manifest_digest,
            "{name}"
        );
        let check = RunCheck::new(image)?;
        check.check(
            &format!("docker run {name}"),
            &dockerd.run(&reference, &check.args())?,
        )?;
    }
    // One platform's manifest by digest: a second RepoDigest of that repository.
    let amd64 = &docker.platforms[0].manifest.digest;
    let pinned = fixture.reference(&format!("multi/docker@{amd64}"));
    fixture.explain(dockerd.pull(&pinned))?;
    assert_eq!(&dockerd.image_digest(&pinned)?, amd64);
    report("docker", started);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The gateway as a Docker Hub mirror

/// The Docker Hub name imported into the node for the mirror tests.
const HUB_NAME: &str = "docker.io/library/shoaltest:1";
/// A multi-platform image under a Docker Hub name.
const HUB_LIST_NAME: &str = "docker.io/library/shoalmulti:1";
/// An image of another registry, mirrored by the same gateway.
const QUAY_NAME: &str = "quay.io/shoal/app:1";

#[test]
fn containerd_uses_the_gateway_as_a_docker_hub_mirror() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, CONTAINERD_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    // Node, containerd and ctr share a namespace with only loopback: a miss at the mirror
    // makes ctr try registry-1.docker.io, which must fail rather than leave the machine.
    let netns = NetNs::create()?;
    let fixture = Fixture::start_in(&netns)?;
    let image = fixture.import(&app_spec(501), HUB_NAME)?;
    let hosts = TempDir::new()?;
    write_containerd_hosts_toml(
        hosts.path(),
        "docker.io",
        "https://registry-1.docker.io",
        &[&fixture.url()],
    )?;
    let containerd = Containerd::start_with(ContainerdConfig {
        netns: Some(netns.clone()),
    })?;
    let options = CtrPullOptions {
        hosts_dir: Some(hosts.path().to_owned()),
        ..CtrPullOptions::default()
    };
    // The mirror gets `/v2/library/shoaltest/...?ns=docker.io`.
    fixture.explain(containerd.pull_with(HUB_NAME, &options))?;
    assert_eq!(containerd.image_digest(HUB_NAME)?, image.manifest_digest);
    let check = RunCheck::new(&image)?;
    check.check(
        "ctr run (mirror)",
        &containerd.run(HUB_NAME, &check.args())?,
    )?;

    // A tag the node does not have: the mirror misses, the Hub is unreachable.
    let absent = "docker.io/library/shoaltest:absent";
    let error = containerd
        .pull_with(absent, &options)
        .err()
        .context("pulled a tag nobody has")?;
    let error = format!("{error:#}");
    assert!(
        error.contains("registry-1.docker.io"),
        "falls back to the Hub: {error}"
    );

    // Another registry mirrored by the same gateway: `?ns=quay.io` selects its images, and a
    // name that exists only under docker.io is not found there.
    let quay = fixture.import(&app_spec(502), QUAY_NAME)?;
    write_containerd_hosts_toml(
        hosts.path(),
        "quay.io",
        "https://quay.io",
        &[&fixture.url()],
    )?;
    fixture.explain(containerd.pull_with(QUAY_NAME, &options))?;
    assert_eq!(containerd.image_digest(QUAY_NAME)?, quay.manifest_digest);
    let other_namespace = "quay.io/library/shoaltest:1";
    let error = containerd
        .pull_with(other_namespace, &options)
        .err()
        .context("a docker.io image was served for quay.io")?;
    assert!(format!("{error:#}").contains("quay.io"), "{error:#}");
    report("containerd_mirror", started);
    Ok(())
}

#[test]
fn docker_uses_the_gateway_as_a_registry_mirror() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, DOCKER_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let netns = NetNs::create()?;
    let fixture = Fixture::start_in(&netns)?;
    let image = fixture.import(&app_spec(601), HUB_NAME)?;
    let dockerd = Dockerd::start_with(DockerdConfig {
        netns: Some(netns.clone()),
        registry_mirrors: vec![fixture.url()],
        ..DockerdConfig::default()
    })?;
    // dockerd asks the mirror for `/v2/library/shoaltest/...` with no `?ns=`: the gateway's
    // default namespace is docker.io.
    fixture.explain(dockerd.pull("shoaltest:1"))?;
    assert_eq!(dockerd.image_digest("shoaltest:1")?, image.manifest_digest);
    let check = RunCheck::new(&image)?;
    check.check(
        "docker run (mirror)",
        &dockerd.run("shoaltest:1", &check.args())?,
    )?;

    let list = fixture.import(&index_spec(602, MediaTypes::Docker), HUB_LIST_NAME)?;
    fixture.explain(dockerd.pull("shoalmulti:1"))?;
    assert_eq!(dockerd.image_digest("shoalmulti:1")?, list.manifest_digest);
    let check = RunCheck::new(&list)?;
    check.check(
        "docker run (mirror, list)",
        &dockerd.run("shoalmulti:1", &check.args())?,
    )?;

    // A miss at the mirror: dockerd falls back to the Hub, which the namespace blocks.
    let error = dockerd
        .pull("shoaltest:absent")
        .err()
        .context("pulled a tag nobody has")?;
    let error = format!("{error:#}");
    assert!(
        error.contains("registry-1.docker.io") && error.contains("network is unreachable"),
        "{error}"
    );
    report("docker_mirror", started);
    Ok(())
}

#[test]
fn podman_uses_the_gateway_as_a_registry_mirror() -> Result<()> {
    if !require_tools(&[IMAGE_TOOLS, PODMAN_TOOLS, NETNS_TOOLS].concat())? {
        return Ok(());
    }
    let started = Instant::now();
    let netns = NetNs::create()?;
    let fixture = Fixture::start_in(&netns)?;
    let image = fixture.import(&app_spec(701), HUB_NAME)?;
    let conf_dir = TempDir::new()?;
    let registries_conf = conf_dir.path().join("registries.conf");
    write_registries_conf(
        &registries_conf,
        "docker.io",
        "registry-1.docker.io",
        &fixture.node.gateway().to_string(),
    )?;
    let podman = Podman::with_config(PodmanConfig {
        netns: Some(netns.clone()),
        registries_conf: Some(registries_conf),
        credentials: None,
    })?;
    // podman sends no `?ns=` either.
    fixture.explain(podman.pull(HUB_NAME))?;
    assert_eq!(podman.image_digest(HUB_NAME)?, image.manifest_digest);
    let check = RunCheck::new(&image)?;
    check.check("podman run (mirror)", &podman.run(HUB_NAME, &check.args())?)?;
    report("podman_mirror", started);
    Ok(())
}
