//! The swarm end to end: several real `shoal node` processes on 127.0.0.1, images imported on
//! one and pulled through another, with real clients, hostile peers, kills and private keys.

use std::path::Path;
use std::time::Duration;

use shoal_tests::clients::{Containerd, Skopeo, require_tools, wait_until};
use shoal_tests::http;
use shoal_tests::image::{GeneratedImage, ImageSpec};
use shoal_tests::node::{ShoalNode, counter, shoal};

/// Generous bound on events in a loaded 2-core machine; waits end as soon as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);

fn start(dir: &Path, name: &str, extra: &[&str]) -> ShoalNode {
    ShoalNode::start(&dir.join(name), extra).unwrap()
}

/// A node bootstrapped to `seeds` and trusting their announcements.
fn start_joined(dir: &Path, name: &str, seeds: &[&ShoalNode], extra: &[&str]) -> ShoalNode {
    ShoalNode::start_joined(&dir.join(name), seeds, extra).unwrap()
}

fn connected(node: &ShoalNode, other: &ShoalNode) -> bool {
    node.is_connected_to(other).unwrap()
}

fn knows_tag(node: &ShoalNode, repository: &str, tag: &str) -> bool {
    node.knows_tag(repository, tag).unwrap()
}

fn image(dir: &Path, name: &str, seed: u64, layers: &[u64]) -> GeneratedImage {
    let spec = ImageSpec::with_layers(seed, layers);
    spec.write_oci_layout(&dir.join(name), None).unwrap()
}

fn pull_ok(node: &ShoalNode, reference: &str) -> String {
    let output = shoal(node.data(), "pull")
        .unwrap()
        .arg(reference)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "shoal pull {reference} failed: {}\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.logs()
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn an_image_imported_on_one_node_is_pulled_through_another_by_skopeo_and_ctr() {
    if !require_tools(&["skopeo", "containerd", "ctr"]).unwrap() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &[]);
    let edge = start_joined(dir.path(), "edge", &[&seed], &[]);
    let generated = image(dir.path(), "image", 1, &[3 << 20, 1 << 20, 4096]);
    seed.import_ok(&generated.path, Some("team/app:1")).unwrap();
    wait_until("the announcement to reach the edge", EVENT_TIMEOUT, || {
        Ok(knows_tag(&edge, "docker.io/team/app", "1"))
    })
    .unwrap();

    let reference = format!("{}/team/app:1", edge.gateway());
    assert_eq!(
        Skopeo::new().inspect_digest(&reference).unwrap(),
        generated.manifest_digest
    );
    let pulled = dir.path().join("pulled");
    assert_eq!(
        Skopeo::new()
            .copy_to_oci(&reference, &pulled, false)
            .unwrap(),
        generated.manifest_digest
    );
    let containerd = Containerd::start().unwrap();
    containerd.pull(&reference).unwrap();
    assert_eq!(
        containerd.image_digest(&reference).unwrap(),
        generated.manifest_digest
    );

    let edge_status = edge.status().unwrap();
    let seed_status = seed.status().unwrap();
    let image_bytes: u64 = generated.blobs.iter().map(|blob| blob.size).sum();
    let config_and_layers = image_bytes - generated.manifest_size;
    assert!(
        counter(&edge_status, "bytes_received_from_peers") >= config_and_layers,
        "{edge_status}"
    );
    assert!(
        counter(&seed_status, "bytes_sent_to_peers") >= config_and_layers,
        "{seed_status}"
    );
    assert!(
        counter(&edge_status, "bytes_served_by_gateway") >= 2 * config_and_layers,
        "{edge_status}"
    );
    assert_eq!(
        counter(&seed_status, "bytes_received_from_peers"),
        0,
        "{seed_status}"
    );
    assert_eq!(
        edge_status["store"]["blobs"],
        generated.blobs.len(),
        "{edge_status}"
    );
    // The seed records itself in the DHT for every blob it imported; the edge, with one
    // peer connected, for every blob it fetched, once.
    let blobs = generated.blobs.len() as u64;
    assert_eq!(
        counter(&seed_status, "provider_records"),
        blobs,
        "{seed_status}"
    );
    assert_eq!(
        counter(&edge_status, "provider_records"),
        blobs,
        "{edge_status}"
    );
}

#[test]
fn a_fetch_from_several_providers_spreads_across_them() {
    let dir = tempfile::tempdir().unwrap();
    let first = start(dir.path(), "first", &[]);
    let generated = image(dir.path(), "image", 2, &[24 << 20]);
    first
        .import_ok(&generated.path, Some("spread/app:1"))
        .unwrap();
    let second = start_joined(dir.path(), "second", &[&first], &[]);
    let third = start_joined(dir.path(), "third", &[&first], &[]);
    // The second and third nodes import the same image themselves: three full providers.
    second
        .import_ok(&generated.path, Some("spread/app:1"))
        .unwrap();
    third
        .import_ok(&generated.path, Some("spread/app:1"))
        .unwrap();

    let fetcher = start_joined(dir.path(), "fetcher", &[&first, &second, &third], &[]);
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&fetcher, "docker.io/spread/app", "1"))
    })
    .unwrap();
    pull_ok(&fetcher, "spread/app:1");

    for provider in [&first, &second, &third] {
        let sent = counter(&provider.status().unwrap(), "bytes_sent_to_peers");
        assert!(
            sent >= 1 << 20,
            "a provider sent only {sent} bytes: the fetch did not spread"
        );
    }
    let received = counter(&fetcher.status().unwrap(), "bytes_received_from_peers");
    assert!(received >= 24 << 20, "{received}");
}

#[test]
fn a_hostile_peer_serving_corrupt_chunks_is_banned_and_the_pull_completes() {
    let dir = tempfile::tempdir().unwrap();
    // The honest peer is slow enough (16 MiB at 8 MiB/s) that the victim surely asks the
    // hostile one for chunks it still needs: unlimited, the honest peer could deliver the
    // whole blob before the hostile peer's only chunk arrived, a duplicate nobody checks.
    let honest = start(dir.path(), "honest", &["--max-egress", "8MiB/s"]);
    let hostile = start_joined(
        dir.path(),
        "hostile",
        &[&honest],
        &["--hostile-corrupt-chunks"],
    );
    let generated = image(dir.path(), "image", 3, &[16 << 20]);
    honest
        .import_ok(&generated.path, Some("target/app:1"))
        .unwrap();
    hostile
        .import_ok(&generated.path, Some("target/app:1"))
        .unwrap();

    let victim = start_joined(dir.path(), "victim", &[&honest, &hostile], &[]);
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&victim, "docker.io/target/app", "1"))
    })
    .unwrap();
    let layer = &generated.platforms[0].layers[0].blob;
    let url = format!(
        "http://{}/v2/target/app/blobs/{}",
        victim.gateway(),
        layer.digest
    );
    let (status, digest, size) = http::get_digest(&url).unwrap();
    assert_eq!(
        (status, digest.as_str(), size),
        (200, layer.digest.as_str(), layer.size)
    );

    let status = victim.status().unwrap();
    assert!(counter(&status, "chunks_rejected") >= 1, "{status}");
    assert!(counter(&status, "peers_banned") >= 1, "{status}");
    wait_until("the hostile peer to be disconnected", EVENT_TIMEOUT, || {
        Ok(!connected(&victim, &hostile))
    })
    .unwrap();
}

#[test]
fn a_node_killed_mid_fetch_resumes_without_downloading_verified_chunks_again() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &[]);
    let size: u64 = 48 << 20;
    let generated = image(dir.path(), "image", 4, &[size]);
    seed.import_ok(&generated.path, Some("resume/app:1"))
        .unwrap();
    let layer = generated.platforms[0].layers[0].blob.clone();
    let slow = ["--max-ingress", "12MiB/s"];
    let mut fetcher = start_joined(dir.path(), "fetcher", &[&seed], &slow);
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&fetcher, "docker.io/resume/app", "1"))
    })
    .unwrap();
    let mut pull = shoal(fetcher.data(), "pull")
        .unwrap()
        .arg("resume/app:1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let chunks_had = |node: &ShoalNode| -> u64 {
        node.status().unwrap()["transfers"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["blob"] == layer.digest.as_str())
            .map(|t| t["chunks_have"].as_u64().unwrap())
            .sum()
    };
    wait_until("a third of the layer to arrive", EVENT_TIMEOUT, || {
        Ok(chunks_had(&fetcher) >= 16)
    })
    .unwrap();
    let had_before_kill = chunks_had(&fetcher);
    fetcher.kill();
    let _ = pull.wait();

    let data = fetcher.data().to_owned();
    drop(fetcher);
    let mut args = vec![
        "--bootstrap".to_owned(),
        seed.peer_address().unwrap(),
        "--trust".into(),
        seed.peer_id().into(),
    ];
    args.extend(slow.iter().map(|a| a.to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let fetcher = ShoalNode::start(&data, &args).unwrap();
    wait_until("the nodes to reconnect", EVENT_TIMEOUT, || {
        Ok(connected(&fetcher, &seed))
    })
    .unwrap();
    pull_ok(&fetcher, "resume/app:1");
    let received = counter(&fetcher.status().unwrap(), "bytes_received_from_peers");
    // Chunks are 1 MiB but the layer's last one is shorter and may be among those had.
    let chunk: u64 = 1 << 20;
    let still_missing = generated.total_bytes - (had_before_kill - 1) * chunk;
    assert!(
        received <= still_missing,
        "after the restart the node received {received} bytes, but only {still_missing} were missing"
    );
    let (status, digest, _) = http::get_digest(&format!(
        "http://{}/v2/resume/app/blobs/{}",
        fetcher.gateway(),
        layer.digest
    ))
    .unwrap();
    assert_eq!((status, digest), (200, layer.digest.clone()));
}

#[test]
fn untrusted_or_badly_signed_announcements_never_change_what_a_tag_resolves_to() {
    let dir = tempfile::tempdir().unwrap();
    let publisher = start(dir.path(), "publisher", &[]);
    let stranger = start(dir.path(), "stranger", &[]);
    let forger = start(dir.path(), "forger", &["--hostile-forge-announcements"]);
    // The observer trusts the publisher and the forger (whose signatures are broken), not the
    // stranger.
    let observer = start(
        dir.path(),
        "observer",
        &[
            "--bootstrap",
            &publisher.peer_address().unwrap(),
            "--bootstrap",
            &stranger.peer_address().unwrap(),
            "--bootstrap",
            &forger.peer_address().unwrap(),
            "--trust",
            publisher.peer_id(),
            "--trust",
            forger.peer_id(),
        ],
    );
    for other in [&publisher, &stranger, &forger] {
        wait_until("the nodes to connect", EVENT_TIMEOUT, || {
            Ok(connected(&observer, other))
        })
        .unwrap();
    }
    let genuine = image(dir.path(), "genuine", 5, &[4096]);
    publisher
        .import_ok(&genuine.path, Some("contested/app:1"))
        .unwrap();
    wait_until("the genuine announcement", EVENT_TIMEOUT, || {
        Ok(knows_tag(&observer, "docker.io/contested/app", "1"))
    })
    .unwrap();
    let impostor = image(dir.path(), "impostor", 6, &[4096]);
    stranger
        .import_ok(&impostor.path, Some("contested/app:1"))
        .unwrap();
    forger
        .import_ok(&impostor.path, Some("contested/app:1"))
        .unwrap();
    forger
        .import_ok(&impostor.path, Some("contested/app:2"))
        .unwrap();
    wait_until(
        "the bad announcements to arrive and be dropped",
        EVENT_TIMEOUT,
        || Ok(counter(&observer.status().unwrap(), "announcements_dropped") >= 3),
    )
    .unwrap();

    let manifest = http::get(
        &format!("http://{}/v2/contested/app/manifests/1", observer.gateway()),
        &[("Accept", "application/vnd.oci.image.manifest.v1+json")],
    )
    .unwrap();
    assert_eq!(
        manifest.header("docker-content-digest"),
        Some(genuine.manifest_digest.as_str())
    );
    let forged_tag = http::get(
        &format!("http://{}/v2/contested/app/manifests/2", observer.gateway()),
        &[],
    )
    .unwrap();
    assert_eq!(forged_tag.status, 404);
    assert!(!knows_tag(&observer, "docker.io/contested/app", "2"));
}

#[test]
fn a_node_without_the_pre_shared_key_cannot_connect_and_members_exchange_on_lanes() {
    let dir = tempfile::tempdir().unwrap();
    let key = |name: &str, byte: &str| {
        let path = dir.path().join(name);
        std::fs::write(
            &path,
            format!("/key/swarm/psk/1.0.0/\n/base16/\n{}\n", byte.repeat(32)),
        )
        .unwrap();
        path.to_string_lossy().into_owned()
    };
    let (member_key, other_key) = (key("member.key", "ab"), key("other.key", "cd"));
    let member = start(dir.path(), "member", &["--psk", &member_key]);
    let insider = start_joined(dir.path(), "insider", &[&member], &["--psk", &member_key]);
    assert!(connected(&insider, &member));
    let bootstrap = member.peer_address().unwrap();
    let outsider = start(dir.path(), "outsider", &["--bootstrap", &bootstrap]);
    let wrong_key = start(
        dir.path(),
        "wrong-key",
        &["--bootstrap", &bootstrap, "--psk", &other_key],
    );
    // Give the dials time to fail; a connection would show within milliseconds on loopback.
    std::thread::sleep(Duration::from_secs(3));
    for stranger in [&outsider, &wrong_key] {
        assert!(
            !connected(stranger, &member),
            "a node without the key connected"
        );
        assert!(
            !connected(&member, stranger),
            "a node without the key connected"
        );
    }
    // Inside the key's network, chunks go on lanes keyed through the protected connection.
    let generated = image(dir.path(), "image", 11, &[3 << 20]);
    member
        .import_ok(&generated.path, Some("psk/app:1"))
        .unwrap();
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&insider, "docker.io/psk/app", "1"))
    })
    .unwrap();
    let output = pull_ok(&insider, "psk/app:1");
    assert!(output.contains(&generated.manifest_digest), "{output}");
    let status = insider.status().unwrap();
    assert!(counter(&status, "chunk_links_lane") > 0, "{status}");
}

#[test]
fn a_node_that_joins_after_the_announcement_resolves_and_pulls_the_image() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &[]);
    let generated = image(dir.path(), "image", 7, &[2 << 20, 4096]);
    seed.import_ok(&generated.path, Some("late/app:1")).unwrap();
    let late = start_joined(dir.path(), "late", &[&seed], &[]);
    wait_until("the late node to learn the tag", EVENT_TIMEOUT, || {
        Ok(knows_tag(&late, "docker.io/late/app", "1"))
    })
    .unwrap();
    let output = pull_ok(&late, "late/app:1");
    assert!(output.contains(&generated.manifest_digest), "{output}");
    assert_eq!(
        late.status().unwrap()["store"]["blobs"],
        generated.blobs.len()
    );
}

#[test]
fn prefetch_fetches_matching_images_as_soon_as_they_are_announced() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &[]);
    let warm = start_joined(dir.path(), "warm", &[&seed], &["--prefetch", "fleet/*:*"]);
    let cold = start_joined(dir.path(), "cold", &[&seed], &["--prefetch", "other/*:*"]);
    let generated = image(dir.path(), "image", 8, &[1 << 20, 4096]);
    seed.import_ok(&generated.path, Some("fleet/app:7"))
        .unwrap();
    let expected = generated.blobs.len() as u64;
    wait_until("the prefetch to complete", EVENT_TIMEOUT, || {
        Ok(warm.status()?["store"]["blobs"].as_u64() == Some(expected))
    })
    .unwrap();
    wait_until("the cold node to learn the tag", EVENT_TIMEOUT, || {
        Ok(knows_tag(&cold, "docker.io/fleet/app", "7"))
    })
    .unwrap();
    assert_eq!(
        cold.status().unwrap()["store"]["blobs"],
        0,
        "a node without a matching pattern prefetched"
    );
}

#[test]
fn nodes_exchange_images_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let quic = ["--listen", "/ip4/127.0.0.1/udp/0/quic-v1"];
    let seed = start(dir.path(), "seed", &quic);
    assert!(
        seed.peer_address().unwrap().contains("/quic-v1/"),
        "{}",
        seed.peer_address().unwrap()
    );
    let edge = start_joined(dir.path(), "edge", &[&seed], &quic);
    let generated = image(dir.path(), "image", 9, &[2 << 20]);
    seed.import_ok(&generated.path, Some("quic/app:1")).unwrap();
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&edge, "docker.io/quic/app", "1"))
    })
    .unwrap();
    let output = pull_ok(&edge, "quic/app:1");
    assert!(output.contains(&generated.manifest_digest), "{output}");
    let status = edge.status().unwrap();
    assert!(counter(&status, "bytes_received_from_peers") >= 2 << 20);
    // The chunks went on a lane beside the QUIC connection, at the connection's address.
    assert!(counter(&status, "chunk_links_lane") > 0, "{status}");
}

#[test]
fn chunks_travel_on_lanes_and_on_libp2p_streams_from_a_node_that_offers_none() {
    let dir = tempfile::tempdir().unwrap();
    let laned = start(dir.path(), "laned", &[]);
    let laneless = start(dir.path(), "laneless", &["--lane-listen", "off"]);
    let edge = start_joined(dir.path(), "edge", &[&laned, &laneless], &[]);
    let first = image(dir.path(), "first", 21, &[6 << 20]);
    let second = image(dir.path(), "second", 22, &[6 << 20]);
    laned.import_ok(&first.path, Some("lanes/first:1")).unwrap();
    laneless
        .import_ok(&second.path, Some("lanes/second:1"))
        .unwrap();
    wait_until("both tags to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&edge, "docker.io/lanes/first", "1")
            && knows_tag(&edge, "docker.io/lanes/second", "1"))
    })
    .unwrap();

    let output = pull_ok(&edge, "lanes/first:1");
    assert!(output.contains(&first.manifest_digest), "{output}");
    let status = edge.status().unwrap();
    assert!(counter(&status, "chunk_links_lane") > 0, "{status}");

    // Only the node without lanes has the second image: its chunks can only take streams.
    let output = pull_ok(&edge, "lanes/second:1");
    assert!(output.contains(&second.manifest_digest), "{output}");
    let status = edge.status().unwrap();
    assert!(counter(&status, "chunk_links_stream") > 0, "{status}");
    // The lane to the first node stayed open, and the polls of it went on it.
    assert!(counter(&status, "bitfield_polls_on_lanes") > 0, "{status}");
    let sent = counter(&laneless.status().unwrap(), "bytes_sent_to_peers");
    assert!(
        sent >= 6 << 20,
        "the node without lanes sent only {sent} bytes"
    );
    assert!(
        edge.logs().contains("listening for lanes"),
        "{}",
        edge.logs()
    );
    assert!(
        !laneless.logs().contains("listening for lanes"),
        "{}",
        laneless.logs()
    );
}

#[test]
fn nodes_fetching_the_same_image_push_their_progress_to_each_other_and_trade() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &["--max-egress", "4MiB/s"]);
    let first = start_joined(dir.path(), "first", &[&seed], &[]);
    let second = start_joined(dir.path(), "second", &[&seed, &first], &[]);
    let generated = image(dir.path(), "image", 31, &[16 << 20]);
    seed.import_ok(&generated.path, Some("feeds/app:1"))
        .unwrap();
    wait_until("the tag to resolve on both", EVENT_TIMEOUT, || {
        Ok(knows_tag(&first, "docker.io/feeds/app", "1")
            && knows_tag(&second, "docker.io/feeds/app", "1"))
    })
    .unwrap();
    // 16 MiB at the seed's 4 MiB/s: both fetch for seconds, each seeing the other part-way.
    std::thread::scope(|scope| {
        let early = scope.spawn(|| pull_ok(&first, "feeds/app:1"));
        std::thread::sleep(Duration::from_secs(1));
        pull_ok(&second, "feeds/app:1");
        early.join().unwrap();
    });
    let (first_status, second_status) = (first.status().unwrap(), second.status().unwrap());
    let pushed = counter(&first_status, "bitfield_pushes_sent")
        + counter(&second_status, "bitfield_pushes_sent");
    let received = counter(&first_status, "bitfield_pushes_received")
        + counter(&second_status, "bitfield_pushes_received");
    assert!(
        pushed > 0 && received > 0,
        "{first_status}\n{second_status}"
    );
    // Each fetcher's feed to the other runs on a lane of its own, not on a libp2p stream.
    let on_lanes =
        counter(&first_status, "have_feeds_lane") + counter(&second_status, "have_feeds_lane");
    let on_streams =
        counter(&first_status, "have_feeds_stream") + counter(&second_status, "have_feeds_stream");
    assert!(
        on_lanes >= 2 && on_streams == 0,
        "{first_status}\n{second_status}"
    );
    // The seed sends each chunk once while both ask (super-seeding): they trade the rest.
    let traded = counter(&first_status, "bytes_sent_to_peers")
        + counter(&second_status, "bytes_sent_to_peers");
    assert!(traded > 0, "{first_status}\n{second_status}");
}

#[test]
fn an_egress_limit_paces_what_a_node_sends() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &["--max-egress", "4MiB/s"]);
    let fetcher = start_joined(dir.path(), "fetcher", &[&seed], &[]);
    let generated = image(dir.path(), "image", 10, &[8 << 20]);
    seed.import_ok(&generated.path, Some("paced/app:1"))
        .unwrap();
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&fetcher, "docker.io/paced/app", "1"))
    })
    .unwrap();
    let started = std::time::Instant::now();
    pull_ok(&fetcher, "paced/app:1");
    // A lower bound only: a slow machine can take longer, never shorter, when the limit holds.
    let floor = Duration::from_secs_f64(8.0 / 4.0 * 0.8);
    assert!(
        started.elapsed() >= floor,
        "8 MiB at 4 MiB/s took only {:?}",
        started.elapsed()
    );
    assert!(counter(&seed.status().unwrap(), "bytes_sent_to_peers") >= 8 << 20);
}

#[test]
fn a_client_gets_verified_bytes_while_the_blob_is_still_arriving_ranges_included() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed", &["--max-egress", "4MiB/s"]);
    let edge = start_joined(dir.path(), "edge", &[&seed], &[]);
    let generated = image(dir.path(), "image", 11, &[16 << 20]);
    seed.import_ok(&generated.path, Some("stream/app:1"))
        .unwrap();
    wait_until("the tag to resolve", EVENT_TIMEOUT, || {
        Ok(knows_tag(&edge, "docker.io/stream/app", "1"))
    })
    .unwrap();
    let layer = generated.platforms[0].layers[0].blob.clone();
    let url = format!(
        "http://{}/v2/stream/app/blobs/{}",
        edge.gateway(),
        layer.digest
    );

    let mut response = ureq::get(&url).call().unwrap();
    let mut reader = response.body_mut().as_reader();
    let mut first = vec![0u8; 1 << 20];
    std::io::Read::read_exact(&mut reader, &mut first).unwrap();
    let transfers = edge.status().unwrap()["transfers"].clone();
    let in_progress = transfers.as_array().unwrap().iter().any(|t| {
        t["blob"] == layer.digest.as_str() && t["chunks_have"].as_u64() < t["chunks_total"].as_u64()
    });
    assert!(
        in_progress,
        "the first MiB arrived only after the whole blob: {transfers}"
    );
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut reader, &mut rest).unwrap();
    first.extend(rest);
    assert_eq!(shoal_protocol::Digest::of(&first).to_string(), layer.digest);

    // A range of a blob fetched from peers is served exactly.
    let start_at = 5 * (1 << 20) + 123;
    let ranged = http::get(&url, &[("Range", &format!("bytes={start_at}-"))]).unwrap();
    assert_eq!(ranged.status, 206);
    assert_eq!(ranged.body, first[start_at..]);
}
