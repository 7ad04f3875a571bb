//! `shoal status` tells the truth about images: an image whose every blob is stored is listed
//! under "images" with its tag (and counted in the store's tags), whichever way it arrived —
//! imported, pulled with `shoal pull`, prefetched, or pulled through the gateway by a registry
//! client — and one that is only announced is listed under "announced, not stored". Two real
//! nodes each time: a seed that imports, an edge that gets the image from it.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;
use shoal_tests::clients::wait_until;
use shoal_tests::http;
use shoal_tests::image::{GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const REPOSITORY: &str = "docker.io/team/app";

/// What `shoal status` prints about images: `repository:tag` under each heading.
#[derive(Debug, Default, PartialEq, Eq)]
struct Listed {
    stored: Vec<String>,
    announced: Vec<String>,
}

fn listed(node: &ShoalNode) -> Listed {
    let output = shoal(node.data(), "status").unwrap().output().unwrap();
    assert!(output.status.success(), "shoal status failed");
    let text = String::from_utf8(output.stdout).unwrap();
    let mut listed = Listed::default();
    let mut section = None;
    for line in text.lines() {
        match line {
            "images" => section = Some(&mut listed.stored),
            "announced, not stored" => section = Some(&mut listed.announced),
            _ if line.starts_with("  ") => {
                if let Some(section) = section.as_mut() {
                    section.push(line.split_whitespace().next().unwrap().to_owned());
                }
            }
            _ => section = None,
        }
    }
    listed
}

/// Whether `shoal status --json` lists `tag` as a stored image pointing at `digest`.
fn stored_with_tag(status: &Value, tag: &str, digest: &str) -> bool {
    status["images"].as_array().unwrap().iter().any(|image| {
        image["repository"] == REPOSITORY && image["tag"] == tag && image["digest"] == digest
    })
}

/// Checks, on `node`, that the image is stored whole with its tag, in the JSON report and in
/// what `shoal status` prints.
fn assert_stored(node: &ShoalNode, generated: &GeneratedImage, tag: &str) {
    let status = node.status().unwrap();
    assert!(
        stored_with_tag(&status, tag, &generated.manifest_digest),
        "not stored: {status:#}\n{}",
        node.logs()
    );
    assert_eq!(status["store"]["tags"], 1, "{status:#}");
    assert_eq!(
        status["store"]["blobs"],
        generated.blobs.len() as u64,
        "{status:#}"
    );
    assert_eq!(
        listed(node),
        Listed {
            stored: vec![format!("{REPOSITORY}:{tag}")],
            announced: vec![],
        }
    );
}

/// Waits for the image to arrive in the background, then [`assert_stored`].
fn wait_stored(node: &ShoalNode, generated: &GeneratedImage, tag: &str) {
    wait_until("the image to be listed as stored", EVENT_TIMEOUT, || {
        Ok(stored_with_tag(
            &node.status()?,
            tag,
            &generated.manifest_digest,
        ))
    })
    .unwrap();
    assert_stored(node, generated, tag);
}

fn image(dir: &Path, spec: ImageSpec) -> GeneratedImage {
    spec.gzip(GzipLevel::Store)
        .write_oci_layout(&dir.join("image"), None)
        .unwrap()
}

/// A seed holding `generated` as `team/app:TAG`, and an edge that knows of it, with `extra`.
fn seed_and_edge(
    dir: &Path,
    generated: &GeneratedImage,
    tag: &str,
    extra: &[&str],
) -> (ShoalNode, ShoalNode) {
    let seed = ShoalNode::start(&dir.join("seed"), &[]).unwrap();
    let edge = ShoalNode::start_joined(&dir.join("edge"), &[&seed], extra).unwrap();
    seed.import_ok(&generated.path, Some(&format!("team/app:{tag}")))
        .unwrap();
    assert_stored(&seed, generated, tag);
    wait_until("the announcement to reach the edge", EVENT_TIMEOUT, || {
        edge.knows_tag(REPOSITORY, tag)
    })
    .unwrap();
    (seed, edge)
}

#[test]
fn an_image_pulled_from_a_peer_is_listed_as_stored_with_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    // Two platforms, so the index and both manifests must be there too.
    let spec = ImageSpec::new(21)
        .platform("linux", "amd64")
        .platform("linux", "arm64")
        .layer(1 << 20)
        .layer(4096);
    let generated = image(dir.path(), spec);
    let (_seed, edge) = seed_and_edge(dir.path(), &generated, "1", &[]);
    assert_eq!(
        listed(&edge),
        Listed {
            stored: vec![],
            announced: vec![format!("{REPOSITORY}:1")],
        },
        "known but not stored yet"
    );

    let output = shoal(edge.data(), "pull")
        .unwrap()
        .arg("team/app:1")
        .output()
        .unwrap();
    assert!(output.status.success(), "shoal pull failed: {output:?}");
    assert_stored(&edge, &generated, "1");
}

#[test]
fn a_prefetched_image_is_listed_as_stored_with_its_tag() {
    let dir = tempfile::tempdir().unwrap();
    let generated = image(dir.path(), ImageSpec::new(22).layer(1 << 20).layer(4096));
    let (_seed, edge) = seed_and_edge(dir.path(), &generated, "2", &["--prefetch", "team/*:*"]);
    wait_stored(&edge, &generated, "2");
}

#[test]
fn an_image_pulled_through_the_gateway_is_listed_once_every_blob_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let generated = image(dir.path(), ImageSpec::new(23).layer(1 << 20).layer(4096));
    let (_seed, edge) = seed_and_edge(dir.path(), &generated, "3", &[]);
    let gateway = edge.gateway();
    let manifest = http::get(
        &format!("http://{gateway}/v2/team/app/manifests/3"),
        &[("Accept", generated.manifest_media_type.as_str())],
    )
    .unwrap();
    assert_eq!(manifest.status, 200);

    let platform = &generated.platforms[0];
    let mut blobs: Vec<_> = std::iter::once(&platform.config)
        .chain(platform.layers.iter().map(|layer| &layer.blob))
        .collect();
    let last = blobs.pop().unwrap();
    let get = |digest: &str| {
        let url = format!("http://{gateway}/v2/team/app/blobs/{digest}");
        let (status, got, _) = http::get_digest(&url).unwrap();
        assert_eq!((status, got.as_str()), (200, digest));
    };
    for blob in &blobs {
        get(&blob.digest);
    }
    // Wait until the blobs fetched so far are stored: the image still lacks its last layer.
    let stored_so_far = 1 + blobs.len() as u64;
    wait_until(
        "the blobs fetched so far to be stored",
        EVENT_TIMEOUT,
        || Ok(edge.status()?["store"]["blobs"].as_u64() == Some(stored_so_far)),
    )
    .unwrap();
    assert_eq!(
        listed(&edge),
        Listed {
            stored: vec![],
            announced: vec![format!("{REPOSITORY}:3")],
        },
        "a layer is missing: not stored"
    );

    get(&last.digest);
    wait_stored(&edge, &generated, "3");
}
