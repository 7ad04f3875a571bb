//! Clients and would-be peers that misbehave against a real `shoal node`: TCP connections to
//! the peer port that never complete a handshake, and request heads over the gateway's limit.
//! The gateway's other limits (silent and half-sent heads, readers that stop, handlers that
//! hang, too many connections) are tested with short bounds in `gateway/tests/serve_limits.rs`.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::{Duration, Instant};

use shoal_tests::http;
use shoal_tests::node::ShoalNode;

/// More silent connections than the node lets handshake at once (`PENDING_INCOMING_MAX`).
const SILENT_CONNECTIONS: usize = 140;
/// The node's handshake timeout (the 10 s connection timeout libp2p's `SwarmBuilder` wraps the
/// transport in) plus slack for a loaded machine.
const HANDSHAKE_BOUND: Duration = Duration::from_secs(10 + 20);

/// Reads until the other side closes (end of stream or reset); false if `bound` passed first.
fn closed_within(stream: &mut TcpStream, bound: Duration, since: Instant) -> bool {
    let mut buffer = [0u8; 4096];
    loop {
        let left = bound.saturating_sub(since.elapsed());
        if left.is_zero() {
            return false;
        }
        stream.set_read_timeout(Some(left)).unwrap();
        match stream.read(&mut buffer) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(error) if error.kind() == ErrorKind::ConnectionReset => return true,
            Err(error) if matches!(error.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return false;
            }
            Err(error) => panic!("reading from the node: {error}"),
        }
    }
}

#[test]
fn connections_that_never_handshake_are_dropped_and_peers_still_join() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("node"), &[]).unwrap();
    let address = node.peer_address().unwrap();
    let port: u16 = address
        .split('/')
        .skip_while(|part| *part != "tcp")
        .nth(1)
        .and_then(|port| port.parse().ok())
        .unwrap_or_else(|| panic!("no TCP port in {address}"));
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..SILENT_CONNECTIONS)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    // Half a multistream-select header on one of them, then nothing.
    silent[0].write_all(b"\x13/multistream/").unwrap();
    for (i, stream) in silent.iter_mut().enumerate() {
        assert!(
            closed_within(stream, HANDSHAKE_BOUND, started),
            "silent connection {i} still open after {:?}\nnode log:\n{}",
            started.elapsed(),
            node.logs()
        );
    }
    println!(
        "{SILENT_CONNECTIONS} silent connections closed within {:?}",
        started.elapsed()
    );
    // The node still takes real peers.
    let peer = ShoalNode::start_joined(&dir.path().join("peer"), &[&node], &[]).unwrap();
    assert!(peer.is_connected_to(&node).unwrap());
}

#[test]
fn a_request_head_over_64_kib_is_refused_by_the_gateway() {
    let dir = tempfile::tempdir().unwrap();
    let node = ShoalNode::start(&dir.path().join("node"), &[]).unwrap();
    let gateway = node.gateway();
    // 100 KiB: over the gateway's 64 KiB, under hyper's ~400 KiB default, so this checks the
    // node serves with its own limits.
    for padding in [100 << 10, 1 << 20] {
        let mut stream = TcpStream::connect(gateway).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut head = b"GET /v2/ HTTP/1.1\r\nHost: gateway\r\nX-Padding: ".to_vec();
        head.resize(head.len() + padding, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let mut writer = stream.try_clone().unwrap();
        let sender = std::thread::spawn(move || {
            let sent = writer.write_all(&head).is_ok();
            let _ = writer.shutdown(Shutdown::Write);
            sent
        });
        let mut answer = Vec::new();
        let read = stream.read_to_end(&mut answer);
        let sent_whole_head = sender.join().unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 431 ")
                || (answer.is_empty() && (read.is_err() || !sent_whole_head)),
            "{padding}-byte header: {answer:?} {read:?}"
        );
    }
    let probe = http::get(&format!("http://{gateway}/v2/"), &[]).unwrap();
    assert_eq!(probe.status, 200);
}
