//! Peer zones end to end: real nodes on one LAN of network namespaces, mDNS on, and an upstream
//! registry behind credentials (a docker-registry with basic auth, in the namespace of the node
//! that holds the credentials).
//!
//! Node A pulls an image from the credentialed upstream and holds a public one; B is in A's
//! zone (`--serve-peer`), O is an outsider that trusts A (so it tries to connect). In the
//! default mode O is refused at the connection, gets nothing and makes A download nothing,
//! while B swarms the credentialed image from A. With `--serve-peers any` on A, O connects and
//! gets the public image, but neither the credentialed one nor an upstream download.

use std::path::Path;
use std::process::Output;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use shoal_tests::clients::{Credentials, require_tools, wait_until};
use shoal_tests::image::{GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::lan::Lan;
use shoal_tests::node::{MDNS, ShoalNode, counter, peer_id_of, shoal};
use shoal_tests::registry::{DockerRegistry, RegistryConfig, push_oci_layout};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(90);
/// A pull that cannot succeed must still end within this.
const PULL_TIMEOUT: Duration = Duration::from_secs(120);
/// The credentialed upstream's namespace.
const PRIVATE: &str = "private.example";
/// Each host's node listens here on its LAN address (each namespace has its own ports).
const PEER_PORT: u16 = 4050;

fn image(dir: &Path, name: &str, seed: u64, layers: &[u64]) -> GeneratedImage {
    let mut spec = ImageSpec::new(seed).gzip(GzipLevel::Store);
    for layer in layers {
        spec = spec.layer(*layer);
    }
    spec.write_oci_layout(&dir.join(name), None).unwrap()
}

/// `shoal pull`, killed if it runs past [`PULL_TIMEOUT`].
fn pull(node: &ShoalNode, reference: &str) -> Output {
    let mut child = shoal(node.data(), "pull")
        .unwrap()
        .arg(reference)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > PULL_TIMEOUT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

fn pull_ok(node: &ShoalNode, reference: &str) {
    let output = pull(node, reference);
    assert!(
        output.status.success(),
        "shoal pull {reference} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.logs()
    );
}

fn pull_fails(node: &ShoalNode, reference: &str) {
    let output = pull(node, reference);
    assert!(
        !output.status.success(),
        "shoal pull {reference} succeeded on an outsider:\n{}",
        String::from_utf8_lossy(&output.stdout)
    );
}

/// Requests the credentialed registry has answered so far (every method and path).
fn upstream_requests(registry: &DockerRegistry) -> usize {
    registry.access_log().unwrap().len()
}

fn status(node: &ShoalNode) -> Value {
    node.status().unwrap()
}

/// Node `index` of the LAN, listening on its LAN address with mDNS on.
fn start(lan: &Lan, index: usize, data: &Path, extra: &[&str]) -> ShoalNode {
    let listen = format!("/ip4/{}/tcp/{PEER_PORT}", Lan::address(index));
    let mut args = vec![MDNS, "--listen", &listen];
    args.extend_from_slice(extra);
    ShoalNode::start_in(lan.host(index), data, &args).unwrap()
}

/// The rank `fetcher_rank` in the node's transfers gives `peer` for `digest`: the connected
/// node (or itself) with the highest rank is asked to download from the upstream.
fn fetcher_rank(peer: &str, digest: &str) -> [u8; 32] {
    let peer = libp2p_identity::PeerId::from_str(peer).unwrap();
    let digest = hex::decode(digest.trim_start_matches("sha256:")).unwrap();
    let mut hasher = blake3::Hasher::new();
    hasher.update(&peer.to_bytes());
    hasher.update(&digest);
    *hasher.finalize().as_bytes()
}

#[test]
fn outsiders_get_nothing_strangers_get_public_content_and_the_zone_swarms_credentialed_images()
-> anyhow::Result<()> {
    if !require_tools(&["skopeo", "docker-registry", "ip", "nsenter"])? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let lan = Lan::create(3)?;
    let credentials = Credentials::new("zone-user", "zone-S3cret-pw");
    // In A's namespace, on its 127.0.0.1: only A reaches it.
    let registry = DockerRegistry::start_with(RegistryConfig {
        basic_auth: Some(credentials.clone()),
        netns: Some(lan.host(0).clone()),
        ..RegistryConfig::default()
    })?;
    let private = image(dir.path(), "private", 61, &[2 << 20, 256 << 10]);
    push_oci_layout(&private.path, &registry, "team/app:1")?;
    let public = image(dir.path(), "public", 62, &[1 << 20]);

    let data = ["a", "b", "o"].map(|name| dir.path().join(name));
    let [id_a, id_b, id_o] = [&data[0], &data[1], &data[2]].map(|d| peer_id_of(d).unwrap());
    // An image in the private registry that A never pulls, whose manifest O would ask A to
    // download (A ranks above O as its fetcher).
    let (unpulled, _) = (63..)
        .map(|seed| {
            let generated = image(dir.path(), &format!("unpulled-{seed}"), seed, &[4096]);
            let rank = |peer: &str| fetcher_rank(peer, &generated.manifest_digest);
            let a_first = rank(&id_a) > rank(&id_o);
            (generated, a_first)
        })
        .find(|(_, a_first)| *a_first)
        .context("no image ranks A first")?;
    push_oci_layout(&unpulled.path, &registry, "team/unpulled:1")?;

    let config = dir.path().join("a.toml");
    std::fs::write(
        &config,
        format!(
            "upstream = [\"{PRIVATE}={}\"]\n[credentials.\"{PRIVATE}\"]\nusername = \"{}\"\npassword = \"{}\"\n",
            registry.url(),
            credentials.user,
            credentials.password
        ),
    )?;
    let config = config.to_string_lossy().into_owned();
    let a_args = ["--config", &config, "--serve-peer", &id_b];
    let mut a = start(&lan, 0, &data[0], &a_args);
    let b = start(
        &lan,
        1,
        &data[1],
        &["--serve-peers", "zone", "--trust", &id_a],
    );
    // O trusts A, so it dials A when mDNS finds it; its own upstream for the namespace goes
    // nowhere (nothing listens in O's namespace), so that O would ask A to download.
    let o_args = [
        "--serve-peers",
        "zone",
        "--trust",
        &id_a,
        "--upstream",
        &format!("{PRIVATE}=http://127.0.0.1:9"),
    ];
    let o = start(&lan, 2, &data[2], &o_args);
    assert_eq!(o.peer_id(), id_o);

    a.import_ok(&public.path, Some("team/public:1"))?;
    let private_ref = format!("{PRIVATE}/team/app");
    pull_ok(&a, &format!("{private_ref}:1"));
    let pulled_requests = upstream_requests(&registry);

    // The zone member finds A by mDNS and swarms the credentialed image from it.
    wait_until("B to connect to A", EVENT_TIMEOUT, || b.is_connected_to(&a))?;
    wait_until("B to learn the tag", EVENT_TIMEOUT, || {
        b.knows_tag(&private_ref, "1")
    })
    .with_context(|| format!("{}\n{}", a.logs(), b.logs()))?;
    pull_ok(&b, &format!("{private_ref}:1"));
    let verified = shoal(b.data(), "verify")?.output()?;
    assert!(verified.status.success(), "{verified:?}");
    let b_status = status(&b);
    assert_eq!(
        b_status["store"]["blobs"],
        private.blobs.len(),
        "{b_status}"
    );
    assert!(
        counter(&b_status, "bytes_received_from_peers") >= 2 << 20,
        "{b_status}"
    );

    // The outsider is refused at the connection: it learns nothing and gets nothing.
    wait_until("A to refuse O", EVENT_TIMEOUT, || {
        Ok(counter(&status(&a), "peers_refused") > 0)
    })
    .with_context(|| format!("{}\n{}", a.logs(), o.logs()))?;
    // O, the dialer, sees each refused connection open for a moment before A closes it (and
    // dials again): not connected is what it settles on.
    wait_until(
        "O's refused connection to A to close",
        EVENT_TIMEOUT,
        || Ok(!o.is_connected_to(&a)?),
    )?;
    assert!(!o.knows_tag(&private_ref, "1")?);
    pull_fails(&o, &format!("{private_ref}@{}", private.manifest_digest));
    pull_fails(&o, &format!("team/public@{}", public.manifest_digest));
    pull_fails(
        &o,
        &format!("{PRIVATE}/team/unpulled@{}", unpulled.manifest_digest),
    );
    assert_eq!(upstream_requests(&registry), pulled_requests);

    // A open to any peer: O connects and gets public content, not the credentialed image.
    a.stop()?;
    let a_any = [&a_args[..], &["--serve-peers", "any"]].concat();
    a = start(&lan, 0, &data[0], &a_any);
    wait_until("O to connect to A", EVENT_TIMEOUT, || o.is_connected_to(&a))
        .with_context(|| format!("{}\n{}", a.logs(), o.logs()))?;
    wait_until("O to learn the public tag", EVENT_TIMEOUT, || {
        o.knows_tag("docker.io/team/public", "1")
    })?;
    pull_ok(&o, &format!("team/public@{}", public.manifest_digest));
    assert!(!o.knows_tag(&private_ref, "1")?);
    pull_fails(&o, &format!("{private_ref}@{}", private.manifest_digest));
    assert!(counter(&status(&a), "peer_requests_denied") > 0);
    // Nor does A download for O: it answers O's delegation `Denied`.
    pull_fails(
        &o,
        &format!("{PRIVATE}/team/unpulled@{}", unpulled.manifest_digest),
    );
    assert!(
        o.logs()
            .contains("does not fetch from the upstream for this node"),
        "{}",
        o.logs()
    );
    assert_eq!(upstream_requests(&registry), pulled_requests);
    assert_eq!(status(&o)["store"]["blobs"], public.blobs.len());
    Ok(())
}
