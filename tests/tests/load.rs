//! Load: 200 concurrent clients pull one image through one node's gateway while two other
//! nodes pull the same image from that node over the swarm (`shoal pull`). Every pull must
//! complete with the right bytes, the gateway must keep answering a `/v2/` probe promptly, and
//! the node's memory must stay bounded.
//!
//! Bounds are generous (machines here are shared and noisy); the figures are printed so a
//! regression shows long before a bound trips.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use shoal_tests::bench::{peak_rss_bytes, rss_bytes};
use shoal_tests::clients::wait_until;
use shoal_tests::http;
use shoal_tests::image::{GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal};

const CLIENTS: usize = 200;
/// A `/v2/` probe during the load must answer within this.
const PROBE_BOUND: Duration = Duration::from_secs(5);
/// The serving node's resident memory must stay below this throughout: 200 busy connections
/// hold about 1–1.5 MiB each in read buffers (measured peaks 236–262 MiB); a leak or a blob
/// held whole would pass it.
const RSS_BOUND_BYTES: u64 = 400 << 20;
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: f64 = (1 << 20) as f64;

fn pull_with_shoal(node: &ShoalNode, reference: &str) -> anyhow::Result<()> {
    let output = shoal(node.data(), "pull")?.arg(reference).output()?;
    anyhow::ensure!(
        output.status.success(),
        "shoal pull {reference} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// Probes `/v2/` and samples the node's RSS every 100 ms until `stop`; returns the slowest
/// probe and the largest RSS seen.
fn monitor(gateway: String, pid: u32, stop: Arc<AtomicBool>) -> (Duration, u64, usize) {
    let (mut slowest, mut largest, mut probes) = (Duration::ZERO, 0, 0);
    while !stop.load(Ordering::SeqCst) {
        let started = Instant::now();
        let answer = http::get(&format!("http://{gateway}/v2/"), &[]);
        let took = started.elapsed();
        assert!(
            matches!(&answer, Ok(fetched) if fetched.status == 200),
            "the /v2/ probe failed: {answer:?}"
        );
        slowest = slowest.max(took);
        probes += 1;
        if let Ok(rss) = rss_bytes(pid) {
            largest = largest.max(rss);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (slowest, largest, probes)
}

fn start(dir: &Path, name: &str) -> ShoalNode {
    ShoalNode::start(&dir.join(name), &[]).unwrap()
}

#[test]
fn two_hundred_clients_and_two_peers_pull_from_one_node() {
    let dir = tempfile::tempdir().unwrap();
    let seed = start(dir.path(), "seed");
    let generated = ImageSpec::new(200)
        .gzip(GzipLevel::Store)
        .layer(4 << 20)
        .layer(2 << 20)
        .layer(512 << 10)
        .write_oci_layout(&dir.path().join("image"), None)
        .unwrap();
    seed.import_ok(&generated.path, Some("load/app:1")).unwrap();
    let peers: Vec<ShoalNode> = ["peer-a", "peer-b"]
        .iter()
        .map(|name| ShoalNode::start_joined(&dir.path().join(name), &[&seed], &[]).unwrap())
        .collect();
    for peer in &peers {
        wait_until("the announcement to reach the peers", EVENT_TIMEOUT, || {
            peer.knows_tag("docker.io/load/app", "1")
        })
        .unwrap();
    }
    let gateway = seed.gateway().to_string();
    let pid = seed.pid().unwrap();
    let rss_before = rss_bytes(pid).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let monitor = {
        let (gateway, stop) = (gateway.clone(), stop.clone());
        std::thread::spawn(move || monitor(gateway, pid, stop))
    };
    let started = Instant::now();
    let barrier = Arc::new(Barrier::new(CLIENTS + peers.len()));
    let (clients_done, peers_done) = std::thread::scope(|scope| {
        let peer_pulls: Vec<_> = peers
            .iter()
            .map(|peer| {
                let barrier = barrier.clone();
                scope.spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    pull_with_shoal(peer, "load/app:1").map(|()| started.elapsed())
                })
            })
            .collect();
        let clients: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (barrier, gateway) = (barrier.clone(), gateway.clone());
                scope.spawn(move || {
                    barrier.wait();
                    http::pull_image(&gateway, "load/app", "1")
                })
            })
            .collect();
        let clients_done: Vec<_> = clients
            .into_iter()
            .map(|client| client.join().unwrap())
            .collect();
        let peers_done: Vec<_> = peer_pulls
            .into_iter()
            .map(|pull| pull.join().unwrap())
            .collect();
        (clients_done, peers_done)
    });
    let elapsed = started.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (slowest_probe, largest_rss, probes) = monitor.join().unwrap();
    let peak_rss = peak_rss_bytes(pid).unwrap();

    let mut bytes = 0;
    for (i, pulled) in clients_done.iter().enumerate() {
        let pulled = pulled
            .as_ref()
            .unwrap_or_else(|error| panic!("client {i}: {error:#}\nnode log:\n{}", seed.logs()));
        assert_eq!(pulled.digest, generated.manifest_digest, "client {i}");
        bytes += pulled.bytes;
    }
    for (peer, done) in peers.iter().zip(&peers_done) {
        let took = done
            .as_ref()
            .unwrap_or_else(|error| panic!("{error:#}\npeer log:\n{}", peer.logs()));
        println!("peer pull took {took:?}");
        // What the peer stored is the image, byte for byte: served back through its gateway.
        let pulled = http::pull_image(&peer.gateway().to_string(), "load/app", "1").unwrap();
        assert_eq!(pulled.digest, generated.manifest_digest);
    }
    let seed_status = seed.status().unwrap();
    println!(
        "{CLIENTS} clients pulled {:.0} MiB through one gateway in {elapsed:.1?} ({:.0} MiB/s) \
         while 2 peers pulled the image; slowest of {probes} /v2/ probes {slowest_probe:?}; \
         RSS before {:.0} MiB, largest sampled {:.0} MiB, peak {:.0} MiB; bytes sent to peers {}",
        bytes as f64 / MIB,
        bytes as f64 / MIB / elapsed.as_secs_f64(),
        rss_before as f64 / MIB,
        largest_rss as f64 / MIB,
        peak_rss as f64 / MIB,
        seed_status["counters"]["bytes_sent_to_peers"],
    );
    assert!(
        slowest_probe < PROBE_BOUND,
        "a /v2/ probe took {slowest_probe:?}"
    );
    assert!(
        peak_rss < RSS_BOUND_BYTES,
        "the node's RSS peaked at {:.0} MiB",
        peak_rss as f64 / MIB
    );
}
