//! The disk budget end to end: `--cache-max` eviction (pinned images and blobs being served
//! stay, evicted images come back from peers), a full disk during an import, a pull and an
//! upstream download, and `shoal verify` finding corruption made behind the node's back.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::Value;
use shoal_tests::clients::{require_tools, skip_or_fail, wait_until};
use shoal_tests::http;
use shoal_tests::image::{Blob, GeneratedImage, ImageSpec, corrupt_file};
use shoal_tests::node::{ShoalNode, counter, shoal};
use shoal_tests::registry::{DockerRegistry, push_oci_layout};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;

fn image(dir: &Path, name: &str, seed: u64, layers: &[u64]) -> GeneratedImage {
    let spec = ImageSpec::with_layers(seed, layers);
    spec.write_oci_layout(&dir.join(name), None).unwrap()
}

fn stored_bytes(node: &ShoalNode) -> u64 {
    node.status().unwrap()["store"]["bytes"].as_u64().unwrap()
}

/// Runs `shoal SUBCOMMAND --data DATA ARGS...`.
fn run(node: &ShoalNode, subcommand: &str, args: &[&str]) -> Output {
    shoal(node.data(), subcommand)
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// [`run`], failing unless it succeeded; returns its standard output.
fn run_ok(node: &ShoalNode, subcommand: &str, args: &[&str]) -> String {
    let output = run(node, subcommand, args);
    assert!(
        output.status.success(),
        "shoal {subcommand} {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.logs()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn blob_file(node: &ShoalNode, blob: &Blob) -> PathBuf {
    let hex = blob.hex();
    node.data().join("blobs/sha256").join(&hex[..2]).join(hex)
}

fn is_stored(node: &ShoalNode, blob: &Blob) -> bool {
    blob_file(node, blob).exists()
}

fn layer(image: &GeneratedImage) -> Blob {
    image.platforms[0].layers[0].blob.clone()
}

fn blob_url(node: &ShoalNode, repository: &str, blob: &Blob) -> String {
    format!(
        "http://{}/v2/{repository}/blobs/{}",
        node.gateway(),
        blob.digest
    )
}

#[test]
fn eviction_keeps_the_budget_spares_pinned_and_served_images_and_refetches_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let seed = ShoalNode::start(&dir.path().join("seed"), &[]).unwrap();
    // B's layer is larger than what the loopback socket buffers hold, so a client that stops
    // reading keeps its stream, and the blob's lease, open.
    let a = image(dir.path(), "a", 21, &[4 * MIB]);
    let b = image(dir.path(), "b", 22, &[48 * MIB]);
    let c = image(dir.path(), "c", 23, &[4 * MIB]);
    for (generated, name) in [(&a, "budget/a:1"), (&b, "budget/b:1"), (&c, "budget/c:1")] {
        seed.import_ok(&generated.path, Some(name)).unwrap();
    }
    // A and B fit (about 52 MiB); adding C (about 56) does not.
    let budget = 54 * MIB;
    let edge = ShoalNode::start_joined(
        &dir.path().join("edge"),
        &[&seed],
        &["--cache-max", "54MiB"],
    )
    .unwrap();
    for name in ["a", "b", "c"] {
        let repository = format!("docker.io/budget/{name}");
        wait_until("the tags to reach the edge", EVENT_TIMEOUT, || {
            edge.knows_tag(&repository, "1")
        })
        .unwrap();
    }

    let pinned = run_ok(&edge, "pin", &["budget/a:1"]);
    assert!(pinned.contains("pinned docker.io/budget/a:1"), "{pinned}");
    run_ok(&edge, "pull", &["budget/b:1"]);
    assert!(
        a.blobs
            .iter()
            .chain(&b.blobs)
            .all(|blob| is_stored(&edge, blob))
    );
    let status = edge.status().unwrap();
    assert_eq!(
        status["cache"]["pinned"][0]["reference"], "docker.io/budget/a:1",
        "{status}"
    );
    assert_eq!(status["cache"]["max_bytes"], budget, "{status}");

    // A client starts reading B's layer and stops after the first MiB.
    let b_layer = layer(&b);
    let mut response = ureq::get(&blob_url(&edge, "budget/b", &b_layer))
        .call()
        .unwrap();
    let mut reader = response.body_mut().as_reader();
    let mut first = vec![0u8; MIB as usize];
    reader.read_exact(&mut first).unwrap();
    assert!(edge.status().unwrap()["cache"]["blobs_in_use"].as_u64() >= Some(1));

    // Pulling C goes over the budget; gc runs while B's layer is still being read.
    run_ok(&edge, "pull", &["budget/c:1"]);
    let collected = run_ok(&edge, "gc", &[]);
    assert!(collected.contains("the store holds"), "{collected}");
    let status = edge.status().unwrap();
    let stored = status["store"]["bytes"].as_u64().unwrap();
    assert!(
        stored <= budget,
        "{stored} bytes stored over a {budget}-byte budget: {status}"
    );
    assert!(counter(&status, "evictions") >= 1, "{status}");
    assert!(
        a.blobs.iter().all(|blob| is_stored(&edge, blob)),
        "a blob of the pinned image was evicted"
    );
    assert!(
        is_stored(&edge, &b_layer),
        "a blob being served was evicted"
    );
    assert!(!is_stored(&edge, &layer(&c)), "{status}");

    // The client that paused gets every byte of B's layer, exactly.
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    first.extend(rest);
    assert_eq!(shoal_tests::clients::sha256_digest(&first), b_layer.digest);
    drop(response);

    // C comes back from the seed; B's layer, no longer in use and least recently used, makes
    // room for it.
    let received = counter(&edge.status().unwrap(), "bytes_received_from_peers");
    run_ok(&edge, "pull", &["budget/c:1"]);
    assert!(c.blobs.iter().all(|blob| is_stored(&edge, blob)));
    let refetched = counter(&edge.status().unwrap(), "bytes_received_from_peers") - received;
    assert!(
        refetched >= layer(&c).size,
        "only {refetched} bytes came from the peer"
    );
    wait_until("B's layer to make room", EVENT_TIMEOUT, || {
        Ok(!is_stored(&edge, &b_layer))
    })
    .unwrap();
    assert!(stored_bytes(&edge) <= budget);
    assert!(a.blobs.iter().all(|blob| is_stored(&edge, blob)));
    let (status, digest, _) = http::get_digest(&blob_url(&edge, "budget/c", &layer(&c))).unwrap();
    assert_eq!((status, digest), (200, layer(&c).digest));

    let unpinned = run_ok(&edge, "unpin", &["docker.io/budget/a:1"]);
    assert!(
        unpinned.contains("unpinned docker.io/budget/a:1"),
        "{unpinned}"
    );
    assert_eq!(
        edge.status().unwrap()["cache"]["pinned"],
        serde_json::json!([])
    );
    assert!(!run(&edge, "unpin", &["budget/a:1"]).status.success());
}

/// A tmpfs mounted for the test, unmounted when dropped (lazily if still busy).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> anyhow::Result<Tmpfs> {
        std::fs::create_dir_all(dir)?;
        let output = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()?;
        anyhow::ensure!(
            output.status.success(),
            "mount -t tmpfs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(Tmpfs {
            dir: dir.to_owned(),
        })
    }
}

/// A 24 MiB tmpfs at `dir`. Mounting needs root; without it the test fails, or skips (`None`)
/// when the person running the suite asked for skips ([`skip_or_fail`]).
fn small_disk(dir: &Path) -> Option<Tmpfs> {
    match Tmpfs::mount(dir, "24m") {
        Ok(tmpfs) => Some(tmpfs),
        Err(error) => {
            if let Err(refused) =
                skip_or_fail(&format!("cannot mount a tmpfs (needs root): {error:#}"))
            {
                panic!("{refused:#}");
            }
            None
        }
    }
}

/// Asserts nothing half-written was left in the data directory at `disk`.
fn no_leftovers(disk: &Path) {
    for leftovers in ["tmp", "partial"] {
        let entries = std::fs::read_dir(disk.join(leftovers)).unwrap().count();
        assert_eq!(entries, 0, "{leftovers}/ holds {entries} entries");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status();
        if !unmounted.is_ok_and(|status| status.success()) {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

#[test]
fn a_full_disk_fails_the_request_that_hit_it_and_the_node_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let Some(_tmpfs) = small_disk(&disk) else {
        return;
    };
    let seed = ShoalNode::start(&dir.path().join("seed"), &[]).unwrap();
    let big = image(dir.path(), "big", 31, &[32 * MIB]);
    seed.import_ok(&big.path, Some("full/big:1")).unwrap();
    // The node's data directory is the whole 24 MiB file system (its log stays outside).
    let node = ShoalNode::start_joined(&disk, &[&seed], &[]).unwrap();
    let small = image(dir.path(), "small", 32, &[2 * MIB]);
    node.import_ok(&small.path, Some("full/small:1")).unwrap();
    let before = node.status().unwrap()["store"].clone();

    let imported = node.import(&big.path, Some("full/big:1")).unwrap();
    let message = String::from_utf8_lossy(&imported.stderr);
    assert!(!imported.status.success());
    assert!(message.contains("disk full"), "{message}");
    // A refused import changes nothing.
    assert_eq!(node.status().unwrap()["store"], before);

    wait_until("the big image's tag to arrive", EVENT_TIMEOUT, || {
        node.knows_tag("docker.io/full/big", "1")
    })
    .unwrap();
    let pulled = run(&node, "pull", &["full/big:1"]);
    let message = String::from_utf8_lossy(&pulled.stderr);
    assert!(!pulled.status.success());
    assert!(message.contains("disk full"), "{message}");

    // Nothing stored was lost and nothing half-written was left (the pull kept the manifest
    // and config it fetched before the layer, as a later pull would), and what the node had is
    // served byte for byte.
    let status = node.status().unwrap();
    assert!(!is_stored(&node, &layer(&big)));
    let small_bytes = |store: &Value| store["bytes"].as_u64().unwrap();
    let kept = small_bytes(&status["store"]) - small_bytes(&before);
    assert!(
        kept < 64 * 1024,
        "{kept} bytes of the big image stayed: {status}"
    );
    no_leftovers(&disk);
    for blob in &small.blobs {
        assert!(is_stored(&node, blob));
    }
    let (code, digest, _) =
        http::get_digest(&blob_url(&node, "full/small", &layer(&small))).unwrap();
    assert_eq!((code, digest), (200, layer(&small).digest));
    let manifest = http::get(
        &format!("http://{}/v2/full/small/manifests/1", node.gateway()),
        &[("Accept", small.manifest_media_type.as_str())],
    )
    .unwrap();
    assert_eq!(
        (manifest.status, manifest.header("docker-content-digest")),
        (200, Some(small.manifest_digest.as_str()))
    );

    // The metadata never met the full disk: new content that fits is taken at once.
    let tiny = image(dir.path(), "tiny", 33, &[64 * 1024]);
    node.import_ok(&tiny.path, Some("full/tiny:1")).unwrap();
}

#[test]
fn verify_removes_a_blob_corrupted_behind_the_nodes_back_and_it_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("node"), &[]).unwrap();
    let generated = image(dir.path(), "image", 41, &[2 * MIB, MIB]);
    node.import_ok(&generated.path, Some("verify/app:1"))
        .unwrap();
    let damaged = layer(&generated);
    let intact = generated.platforms[0].layers[1].blob.clone();
    corrupt_file(&blob_file(&node, &damaged), 1000).unwrap();

    let report = run_ok(&node, "verify", &[]);
    assert!(
        report.contains(&format!("corrupt {}", damaged.digest)),
        "{report}"
    );
    assert!(
        report.contains(&format!("removed {}", generated.manifest_digest)),
        "{report}"
    );
    assert!(report.contains("1 damaged"), "{report}");
    assert!(!is_stored(&node, &damaged));
    // The image is incomplete, so it is no longer listed; its other blobs stay.
    let status = node.status().unwrap();
    assert_eq!(status["images"], serde_json::json!([]), "{status}");
    assert_eq!(
        status["store"]["blobs"].as_u64(),
        Some(generated.blobs.len() as u64 - 2),
        "{status}"
    );

    // No peer has it: the gateway answers 404, and never the corrupted bytes.
    let (code, _, _) = http::get_digest(&blob_url(&node, "verify/app", &damaged)).unwrap();
    assert_eq!(code, 404);
    let (code, digest, _) = http::get_digest(&blob_url(&node, "verify/app", &intact)).unwrap();
    assert_eq!((code, digest), (200, intact.digest));
    let again = run_ok(&node, "verify", &[]);
    assert!(again.contains("all intact"), "{again}");
}

#[test]
fn an_upstream_download_that_meets_a_full_disk_fails_its_client_and_stores_nothing() {
    if !require_tools(&["docker-registry", "skopeo"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let Some(_tmpfs) = small_disk(&disk) else {
        return;
    };
    let registry = DockerRegistry::start().unwrap();
    let big = image(dir.path(), "big", 34, &[32 * MIB]);
    push_oci_layout(&big.path, &registry, "library/big:1").unwrap();
    let upstream = format!("docker.io={}", registry.url());
    let node = ShoalNode::start(&disk, &["--upstream", &upstream]).unwrap();
    let small = image(dir.path(), "small", 35, &[2 * MIB]);
    node.import_ok(&small.path, Some("full/small:1")).unwrap();
    let before = node.status().unwrap()["store"].clone();

    // The client gets the layer's first bytes as they arrive, then an error instead of the
    // rest: never a whole body that is not the blob.
    let fetched = http::get_digest(&blob_url(&node, "library/big", &layer(&big)));
    if let Ok((code, digest, length)) = &fetched {
        assert!(
            *code != 200 || (*digest != layer(&big).digest && *length < layer(&big).size),
            "a full disk still gave the client {fetched:?}"
        );
    }
    wait_until("the download to fail", EVENT_TIMEOUT, || {
        Ok(node.logs().contains("disk full"))
    })
    .unwrap();
    assert!(!is_stored(&node, &layer(&big)));
    assert_eq!(node.status().unwrap()["store"], before);
    no_leftovers(&disk);
    let (code, digest, _) =
        http::get_digest(&blob_url(&node, "full/small", &layer(&small))).unwrap();
    assert_eq!((code, digest), (200, layer(&small).digest));
}
