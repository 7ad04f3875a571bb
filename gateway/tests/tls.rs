//! The gateway over TLS, on real sockets: [`shoal_gateway::serve`] with a self-signed
//! certificate on an ephemeral loopback port, driven by curl (ALPN, HTTP/2) and by raw TCP
//! clients (plain HTTP on the TLS port, a client that never starts its handshake).
//! Certificate verification, reloading and the node's flags: tests/tests/gateway_tls.rs.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use axum::Router;
use shoal_gateway::{GatewayTls, ServeLimits, TlsFiles};

/// Slack on every bound, for a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(5);

fn limits(connections_max: usize) -> ServeLimits {
    ServeLimits {
        connections_max,
        header_read_timeout: Duration::from_millis(800),
        ..ServeLimits::default()
    }
}

fn self_signed(dir: &Path) -> TlsFiles {
    let key = rcgen::KeyPair::generate().unwrap();
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()]).unwrap();
    let cert = params.self_signed(&key).unwrap();
    let files = TlsFiles {
        cert: dir.join("gateway.crt"),
        key: dir.join("gateway.key"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

fn start(router: Router, limits: ServeLimits, dir: &Path) -> SocketAddr {
    let tls = GatewayTls::load(self_signed(dir)).unwrap();
    common::serve_in_background(router, limits, Some(tls))
}

/// curl without verification (this file tests the transport; verification is tested with a
/// real CA at the node level): `(exit code, stdout)`.
fn curl(args: &[&str]) -> (i32, Vec<u8>) {
    let output = Command::new("curl")
        .args(["--silent", "--insecure", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl must be installed for the gateway's TLS tests");
    (output.status.code().unwrap_or(-1), output.stdout)
}

#[test]
fn a_manifest_and_a_blob_over_http2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let fixture = common::fixture();
    let address = start(fixture.app.clone(), limits(8), dir.path());
    let blob = format!(
        "https://{address}/v2/library/alpine/blobs/{}",
        fixture.layer_digest
    );
    let manifest = format!("https://{address}/v2/library/alpine/manifests/3.20");
    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        let (code, out) = curl(&[flag, "--write-out", "\n%{http_version}", &blob]);
        assert_eq!(code, 0, "curl {flag} failed");
        let (body, negotiated) = out.split_at(out.len() - version.len() - 1);
        assert_eq!(body, &fixture.layer[..], "{flag}");
        assert_eq!(negotiated, format!("\n{version}").as_bytes(), "{flag}");

        let (code, out) = curl(&[
            flag,
            "-H",
            &format!("Accept: {}", fixture.oci_manifest.media_type),
            &manifest,
        ]);
        assert_eq!(code, 0, "curl {flag} failed");
        assert_eq!(out, &fixture.oci_manifest.bytes[..], "{flag}");
    }
}

#[test]
fn plain_http_to_the_tls_port_gets_a_400_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let address = start(common::fixture().app, limits(8), dir.path());
    let mut stream = TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .write_all(b"GET /v2/ HTTP/1.1\r\nHost: gateway\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer:?}"
    );
    assert!(
        answer.ends_with("\r\n\r\nthis port speaks TLS: use https://\n"),
        "{answer:?}"
    );

    // curl sees the same, with its own request.
    let (code, out) = curl(&[
        "--write-out",
        "\n%{http_code}",
        &format!("http://{address}/v2/"),
    ]);
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8_lossy(&out),
        "this port speaks TLS: use https://\n\n400"
    );
}

#[test]
fn a_client_that_never_starts_its_handshake_frees_the_only_slot() {
    let dir = tempfile::tempdir().unwrap();
    let limits = limits(1);
    let address = start(common::fixture().app, limits.clone(), dir.path());
    let mut silent = TcpStream::connect(address).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let started = Instant::now();
    // Waits in the backlog while the silent client holds the only permit, then is served.
    let (code, out) = curl(&[
        "--write-out",
        "%{http_code}",
        "-o",
        "/dev/null",
        &format!("https://{address}/v2/"),
    ]);
    let elapsed = started.elapsed();
    assert_eq!((code, out), (0, b"200".to_vec()));
    assert!(
        elapsed < limits.header_read_timeout + SLACK,
        "served only after {elapsed:?}"
    );
    // The silent client was closed, with nothing sent to it.
    let mut rest = Vec::new();
    let read = silent.read_to_end(&mut rest);
    assert!(matches!(read, Ok(0)) || read.is_err(), "{read:?}");
    assert!(started.elapsed() >= limits.header_read_timeout - Duration::from_millis(100));
}
