//! `shoal import` end to end: every input format lands in a real node and is served through its
//! gateway with the right digests; hostile input is refused without touching the store; a node
//! killed mid-import restarts consistent.

use std::path::Path;
use std::time::{Duration, Instant};

use shoal_tests::http;
use shoal_tests::image::{
    GeneratedImage, GzipLevel, ImageSpec, MediaTypes, Tamper, corrupt_file, truncate_file,
};
use shoal_tests::node::ShoalNode;

const ACCEPT_ALL: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

fn small_image(seed: u64) -> ImageSpec {
    ImageSpec::new(seed)
        .layer(300_000)
        .layer(50_000)
        .layer(1_000)
}

/// Fetches `reference` of `name` and every blob below it through the gateway, checking each
/// against its digest; returns the manifest digest the gateway reported.
fn pull_through_gateway(node: &ShoalNode, name: &str, reference: &str, query: &str) -> String {
    let base = format!("http://{}/v2/{name}", node.gateway());
    let url = format!("{base}/manifests/{reference}{query}");
    let manifest = http::get(&url, &[("Accept", ACCEPT_ALL)]).unwrap();
    assert_eq!(
        manifest.status,
        200,
        "{url}: {}",
        String::from_utf8_lossy(&manifest.body)
    );
    let digest = manifest.header("docker-content-digest").unwrap().to_owned();
    assert_eq!(
        digest,
        shoal_protocol::Digest::of(&manifest.body).to_string()
    );
    let parsed =
        shoal_protocol::ParsedManifest::parse(&manifest.body, manifest.header("content-type"))
            .unwrap();
    for child in &parsed.manifests {
        pull_through_gateway(node, name, &child.digest.to_string(), query);
    }
    for blob in &parsed.blobs {
        let (status, actual, size) =
            http::get_digest(&format!("{base}/blobs/{}{query}", blob.digest)).unwrap();
        assert_eq!(
            (status, actual, size),
            (200, blob.digest.to_string(), blob.size)
        );
    }
    digest
}

fn store_summary(node: &ShoalNode) -> serde_json::Value {
    node.status().unwrap()["store"].clone()
}

fn assert_tmp_empty(node: &ShoalNode) {
    let leftovers: Vec<_> = std::fs::read_dir(node.data().join("tmp"))
        .unwrap()
        .collect();
    assert!(leftovers.is_empty(), "staging leftovers: {leftovers:?}");
}

#[test]
fn every_input_format_is_served_with_its_digests() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("data"), &[]).unwrap();

    let layout = small_image(1)
        .write_oci_layout(
            &dir.path().join("layout"),
            Some("docker.io/library/alpine:3.20"),
        )
        .unwrap();
    let output = node.import_ok(&layout.path, None).unwrap();
    assert!(
        output.contains("imported docker.io/library/alpine:3.20"),
        "{output}"
    );
    assert_eq!(
        pull_through_gateway(&node, "library/alpine", "3.20", "?ns=docker.io"),
        layout.manifest_digest
    );
    assert_eq!(
        pull_through_gateway(&node, "library/alpine", "3.20", ""),
        layout.manifest_digest
    );

    let archive = small_image(2)
        .write_oci_archive(&dir.path().join("image.tar"), Some("v2"))
        .unwrap();
    node.import_ok(&archive.path, Some("team/app:1")).unwrap();
    assert_eq!(
        pull_through_gateway(&node, "team/app", "1", ""),
        archive.manifest_digest
    );
    assert_eq!(
        pull_through_gateway(&node, "team/app", &archive.manifest_digest, ""),
        archive.manifest_digest
    );

    let docker_oci = small_image(3)
        .write_docker_save_oci(&dir.path().join("docker25.tar"), &["web:2", "web:latest"])
        .unwrap();
    node.import_ok(&docker_oci.path, None).unwrap();
    assert_eq!(
        pull_through_gateway(&node, "library/web", "2", ""),
        docker_oci.manifest_digest
    );
    assert_eq!(
        pull_through_gateway(&node, "library/web", "latest", ""),
        docker_oci.manifest_digest
    );

    let legacy = small_image(4)
        .write_docker_save_legacy(
            &dir.path().join("docker20.tar"),
            &["localhost:5000/legacy:old"],
        )
        .unwrap();
    node.import_ok(&legacy.path, None).unwrap();
    let digest = pull_through_gateway(&node, "legacy", "old", "?ns=localhost:5000");
    check_legacy_manifest(&node, &digest, &legacy);

    let status = node.status().unwrap();
    let images: Vec<String> = status["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| {
            format!(
                "{}:{}",
                image["repository"].as_str().unwrap(),
                image["tag"].as_str().unwrap()
            )
        })
        .collect();
    for expected in [
        "docker.io/library/alpine:3.20",
        "docker.io/team/app:1",
        "docker.io/library/web:2",
        "docker.io/library/web:latest",
        "localhost:5000/legacy:old",
    ] {
        assert!(
            images.contains(&expected.to_owned()),
            "{expected} missing from {images:?}"
        );
    }
    assert_tmp_empty(&node);
}

/// A legacy archive holds no manifest: the one served must name its config and its
/// uncompressed layers (the config's diff_ids).
fn check_legacy_manifest(node: &ShoalNode, digest: &str, legacy: &GeneratedImage) {
    let url = format!(
        "http://{}/v2/legacy/manifests/{digest}?ns=localhost:5000",
        node.gateway()
    );
    let manifest = http::get(&url, &[]).unwrap().json().unwrap();
    assert_eq!(manifest["config"]["digest"], legacy.config_digest());
    let layers: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(layers, legacy.diff_ids());
}

#[test]
fn a_multi_platform_index_keeps_every_platform_and_shares_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("data"), &[]).unwrap();
    for (media_types, name) in [
        (MediaTypes::Oci, "multi/oci:1"),
        (MediaTypes::Docker, "multi/docker:1"),
    ] {
        let spec = small_image(10)
            .platform("linux", "amd64")
            .platform("linux", "arm64")
            .media_types(media_types);
        let image = spec
            .write_oci_layout(&dir.path().join(name.replace(['/', ':'], "-")), None)
            .unwrap();
        node.import_ok(&image.path, Some(name)).unwrap();
        let repo = name.split(':').next().unwrap();
        assert_eq!(
            pull_through_gateway(&node, repo, "1", ""),
            image.manifest_digest
        );
        assert_eq!(image.platforms.len(), 2);
        for platform in &image.platforms {
            let url = format!(
                "http://{}/v2/{repo}/manifests/{}",
                node.gateway(),
                platform.manifest.digest
            );
            assert_eq!(
                http::get(&url, &[("Accept", ACCEPT_ALL)]).unwrap().status,
                200
            );
        }
    }
    // Both images share nothing with each other's media types, but within one image the
    // first layer is shared by both platforms and stored once.
    let summary = store_summary(&node);
    let oci = small_image(10)
        .platform("linux", "amd64")
        .platform("linux", "arm64");
    let generated = oci
        .write_oci_layout(&dir.path().join("count"), None)
        .unwrap();
    let per_image_blobs = generated.blobs.len() as u64;
    assert!(
        summary["blobs"].as_u64().unwrap() <= 2 * per_image_blobs,
        "{summary}"
    );
    let distinct_layers: std::collections::BTreeSet<_> = generated
        .platforms
        .iter()
        .flat_map(|p| p.layers.iter().map(|l| l.blob.digest.clone()))
        .collect();
    let all_layers: usize = generated.platforms.iter().map(|p| p.layers.len()).sum();
    assert_eq!(
        distinct_layers.len() + 1,
        all_layers,
        "the first layer is shared between platforms"
    );
}

#[test]
fn importing_the_same_image_twice_stores_nothing_new() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("data"), &[]).unwrap();
    let image = small_image(20)
        .write_oci_archive(&dir.path().join("image.tar"), None)
        .unwrap();
    let first = node.import_ok(&image.path, Some("again/app:1")).unwrap();
    let before = store_summary(&node);
    let second = node.import_ok(&image.path, Some("again/app:1")).unwrap();
    assert_eq!(store_summary(&node), before);
    assert!(
        first.contains(&format!("stored {} new blobs", image.blobs.len())),
        "{first}"
    );
    assert!(second.contains("stored 0 new blobs"), "{second}");
    assert!(
        second.contains(&format!("{} already present", image.blobs.len())),
        "{second}"
    );
}

fn assert_refused(node: &ShoalNode, path: &Path, expected_message: &str) {
    let before = store_summary(node);
    let output = node.import(path, Some("hostile/image:1")).unwrap();
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{} was accepted", path.display());
    assert!(
        message.contains(expected_message),
        "expected {expected_message:?} in: {message}"
    );
    assert_eq!(
        store_summary(node),
        before,
        "a refused import changed the store"
    );
    assert_tmp_empty(node);
    let tags = http::get(
        &format!("http://{}/v2/hostile/image/tags/list", node.gateway()),
        &[],
    )
    .unwrap();
    assert_eq!(tags.status, 404);
}

#[test]
fn hostile_and_damaged_archives_are_refused_and_the_store_is_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("data"), &[]).unwrap();
    // Something already stored, which must survive every refusal untouched.
    let good = small_image(30)
        .write_oci_archive(&dir.path().join("good.tar"), None)
        .unwrap();
    node.import_ok(&good.path, Some("good/image:1")).unwrap();

    let spec = small_image(31);
    let cases = [
        (Tamper::PathTraversal, "points outside the archive"),
        (Tamper::AbsolutePath, "points outside the archive"),
        (
            Tamper::AbsurdSize(1 << 40),
            "is declared as 1099511627776 bytes",
        ),
        (Tamper::MissingBlob, "missing from the archive"),
        (Tamper::WrongDigest, "expected sha256:"),
    ];
    for (tamper, message) in cases {
        let path = dir.path().join(format!("{tamper:?}.tar"));
        spec.write_oci_archive_with(&path, None, tamper).unwrap();
        assert_refused(&node, &path, message);
    }

    let truncated = spec
        .write_oci_archive(&dir.path().join("truncated.tar"), None)
        .unwrap();
    let size = std::fs::metadata(&truncated.path).unwrap().len();
    truncate_file(&truncated.path, size / 2 + 100).unwrap();
    assert_refused(&node, &truncated.path, "truncated or damaged");

    let corrupted = spec
        .write_oci_archive(&dir.path().join("corrupted.tar"), None)
        .unwrap();
    let size = std::fs::metadata(&corrupted.path).unwrap().len();
    corrupt_file(&corrupted.path, size / 2).unwrap();
    assert_refused(&node, &corrupted.path, "expected sha256:");

    let not_an_archive = dir.path().join("notes.txt");
    std::fs::write(&not_an_archive, "just some text").unwrap();
    assert_refused(
        &node,
        &not_an_archive,
        "neither a directory nor a tar archive",
    );

    let empty_dir = dir.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    assert_refused(&node, &empty_dir, "not an image");

    assert_eq!(
        pull_through_gateway(&node, "good/image", "1", ""),
        good.manifest_digest
    );
}

#[test]
fn a_node_killed_mid_import_restarts_consistent_and_the_import_then_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let image = ImageSpec::sized(40, 300 << 20)
        .gzip(GzipLevel::Store)
        .write_oci_archive(&dir.path().join("big.tar"), None)
        .unwrap();
    let mut node = ShoalNode::start(&data, &[]).unwrap();
    let mut import = shoal_tests::node::shoal(&data, "import")
        .unwrap()
        .arg(&image.path)
        .args(["--tag", "big/image:1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait until the node has staged part of the image, then kill it where it stands.
    let deadline = Instant::now() + Duration::from_secs(120);
    while staged_bytes(&data.join("tmp")) < 50 << 20 {
        assert!(Instant::now() < deadline, "the import never got going");
        assert!(
            import.try_wait().unwrap().is_none(),
            "the import finished before it could be interrupted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    node.kill();
    let status = import.wait().unwrap();
    assert!(
        !status.success(),
        "an import whose node died cannot have succeeded"
    );

    let node = ShoalNode::start(&data, &[]).unwrap();
    let summary = store_summary(&node);
    assert_eq!(summary["blobs"], 0, "{summary}");
    assert_eq!(summary["tags"], 0, "{summary}");
    assert_tmp_empty(&node);
    assert!(
        node.logs().contains("temporary_files_removed: 1"),
        "{}",
        node.logs()
    );

    node.import_ok(&image.path, Some("big/image:1")).unwrap();
    assert_eq!(
        pull_through_gateway(&node, "big/image", "1", ""),
        image.manifest_digest
    );
}

fn staged_bytes(tmp: &Path) -> u64 {
    let Ok(stagings) = std::fs::read_dir(tmp) else {
        return 0;
    };
    stagings
        .flatten()
        .flat_map(|staging| {
            std::fs::read_dir(staging.path())
                .into_iter()
                .flatten()
                .flatten()
        })
        .filter_map(|file| file.metadata().ok())
        .map(|metadata| metadata.len())
        .sum()
}
