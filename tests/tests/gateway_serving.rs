//! The gateway under many concurrent clients: every client gets exact bytes, and the node's
//! memory stays far below the size of what it serves (blobs stream, never buffered whole).

use shoal_tests::http;
use shoal_tests::image::{GzipLevel, ImageSpec};
use shoal_tests::node::ShoalNode;

const CLIENTS: usize = 32;
/// Peak resident memory allowed while 32 clients read a 128 MiB blob at once (4 GiB served).
const PEAK_RSS_BYTES_MAX: u64 = 160 << 20;

fn peak_rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|line| line.starts_with("VmHWM:"))
        .unwrap();
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

#[test]
fn many_concurrent_clients_get_exact_bytes_with_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("data"), &[]).unwrap();
    let image = ImageSpec::new(50)
        .layer(128 << 20)
        .gzip(GzipLevel::Store)
        .write_oci_layout(&dir.path().join("layout"), None)
        .unwrap();
    node.import_ok(&image.path, Some("big/blob:1")).unwrap();
    let layer = image.platforms[0].layers[0].blob.clone();
    let url = format!(
        "http://{}/v2/big/blob/blobs/{}",
        node.gateway(),
        layer.digest
    );

    let results: Vec<_> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|_| scope.spawn(|| http::get_digest(&url).unwrap()))
            .collect();
        handles
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect()
    });
    for (status, digest, size) in results {
        assert_eq!(
            (status, digest.as_str(), size),
            (200, layer.digest.as_str(), layer.size)
        );
    }
    let peak = peak_rss_bytes(node.pid().unwrap());
    eprintln!("node peak RSS: {} MiB", peak >> 20);
    assert!(
        peak < PEAK_RSS_BYTES_MAX,
        "node peak RSS {} MiB while serving",
        peak >> 20
    );
}
