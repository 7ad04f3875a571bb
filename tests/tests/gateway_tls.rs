//! A real node's gateway over TLS, with certificates from a throwaway CA
//! (`shoal_tests::tls`): verifying clients (curl with `--cacert`) pull over HTTP/2 and
//! HTTP/1.1; a certificate replaced on disk or followed by SIGHUP is served to the next
//! connection without a restart, a broken replacement is not; expired and wrong-host
//! certificates are served as given and rejected by the client; a non-loopback gateway without
//! TLS does not start. The gateway's own TLS behaviour (handshake timeout, plain HTTP on the TLS
//! port): gateway/tests/tls.rs.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use shoal_tests::image::{GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal};
use shoal_tests::tls::{IssuedCert, TestCa, Validity, served_certificate_subject};

/// Long enough for a loaded 2-core machine; the reload check runs once a second.
const BOUND: Duration = Duration::from_secs(20);

/// curl verifying against `ca`: `(exit code, stdout)`.
fn curl(ca: &TestCa, args: &[&str]) -> (i32, Vec<u8>) {
    let output = Command::new("curl")
        .args(["--silent", "--max-time", "30", "--cacert"])
        .arg(ca.cert_pem_path())
        .args(args)
        .output()
        .expect("curl must be installed for the gateway's TLS tests");
    (output.status.code().unwrap_or(-1), output.stdout)
}

/// The node's gateway serves `cert`, whose files are copied to the paths the node was given.
fn install(cert: &IssuedCert, served: &IssuedCert) {
    // The key first: a check between the two writes sees a mismatch and keeps the old pair.
    std::fs::copy(&cert.key_pem_path, &served.key_pem_path).unwrap();
    std::fs::copy(&cert.cert_pem_path, &served.cert_pem_path).unwrap();
}

/// Files at fixed paths for the node, holding a copy of `cert`.
fn served_files(dir: &Path, cert: &IssuedCert) -> IssuedCert {
    let served = IssuedCert {
        cert_pem_path: dir.join("gateway.crt"),
        key_pem_path: dir.join("gateway.key"),
        ..cert.clone()
    };
    install(cert, &served);
    served
}

fn start_tls(dir: &Path, served: &IssuedCert) -> ShoalNode {
    ShoalNode::start(
        &dir.join("data"),
        &[
            "--gateway-tls-cert",
            served.cert_pem_path.to_str().unwrap(),
            "--gateway-tls-key",
            served.key_pem_path.to_str().unwrap(),
        ],
    )
    .unwrap()
}

fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < BOUND,
            "{what} did not happen within {BOUND:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_verifying_client_pulls_a_manifest_and_a_blob_over_http2_and_http11() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let cert = ca
        .issue(&["127.0.0.1", "gateway.test"], Validity::Current)
        .unwrap();
    let node = start_tls(dir.path(), &cert);
    let image = ImageSpec::new(14)
        .layer(3 << 20)
        .gzip(GzipLevel::Store)
        .write_oci_layout(&dir.path().join("layout"), None)
        .unwrap();
    node.import_ok(&image.path, Some("tls/app:1")).unwrap();
    let gateway = node.gateway();
    let layer = &image.platforms[0].layers[0].blob;

    for (flag, version) in [("--http2", "2"), ("--http1.1", "1.1")] {
        // By IP address, and by DNS name (a SAN of its own).
        for base in [
            format!("https://{gateway}"),
            format!("https://gateway.test:{}", gateway.port()),
        ] {
            let resolve = format!("gateway.test:{}:127.0.0.1", gateway.port());
            let blob_file = dir.path().join("blob");
            let (code, out) = curl(
                &ca,
                &[
                    flag,
                    "--resolve",
                    &resolve,
                    "--output",
                    blob_file.to_str().unwrap(),
                    "--write-out",
                    "%{http_code} %{http_version}",
                    &format!("{base}/v2/tls/app/blobs/{}", layer.digest),
                ],
            );
            assert_eq!(code, 0, "curl {flag} {base}");
            assert_eq!(String::from_utf8(out).unwrap(), format!("200 {version}"));
            let bytes = std::fs::read(&blob_file).unwrap();
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
            assert_eq!(
                (digest.as_str(), bytes.len() as u64),
                (layer.digest.as_str(), layer.size)
            );

            let (code, manifest) = curl(
                &ca,
                &[
                    flag,
                    "--resolve",
                    &resolve,
                    "-H",
                    &format!("Accept: {}", image.manifest_media_type),
                    &format!("{base}/v2/tls/app/manifests/1"),
                ],
            );
            assert_eq!(code, 0, "curl {flag} {base}");
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
            assert_eq!(digest, image.manifest_digest);
        }
    }

    // The server picks AES-128-GCM although curl (OpenSSL) lists AES-256-GCM first.
    let verbose = Command::new("curl")
        .args(["--silent", "--verbose", "--output", "/dev/null", "--cacert"])
        .arg(ca.cert_pem_path())
        .arg(format!("https://{gateway}/v2/"))
        .output()
        .unwrap();
    let handshake = String::from_utf8_lossy(&verbose.stderr);
    assert!(
        handshake.contains("TLSv1.3 / TLS_AES_128_GCM_SHA256"),
        "{handshake}"
    );

    // Plain HTTP on the TLS port is told what to do.
    let (code, out) = curl(
        &ca,
        &[
            "--write-out",
            " %{http_code}",
            &format!("http://{gateway}/v2/"),
        ],
    );
    assert_eq!(code, 0);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "this port speaks TLS: use https:// 400".replace("https:// ", "https://\n ")
    );

    // The node says it serves HTTPS.
    let status = node.status().unwrap();
    assert_eq!(status["gateway_scheme"], "https", "{status}");
}

#[test]
fn a_replaced_certificate_reaches_the_next_connection_and_a_broken_one_is_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let first = ca.issue(&["127.0.0.1"], Validity::Current).unwrap();
    let served = served_files(dir.path(), &first);
    let node = start_tls(dir.path(), &served);
    let gateway = node.gateway();
    let pid = node.pid().unwrap();
    let subject = || served_certificate_subject(gateway).unwrap();
    assert!(subject().contains(&first.common_name), "{}", subject());

    // Replaced on disk: picked up by a later connection, by the same process.
    let second = ca.issue(&["127.0.0.1"], Validity::Current).unwrap();
    install(&second, &served);
    wait_until("the second certificate being served", || {
        subject().contains(&second.common_name)
    });
    let url = format!("https://{gateway}/v2/");
    assert_eq!(curl(&ca, &["-o", "/dev/null", &url]).0, 0);

    // A broken replacement: logged with its path, and the second certificate stays.
    std::fs::write(
        &served.cert_pem_path,
        "-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    wait_until("the broken certificate being reported", || {
        let _ = served_certificate_subject(gateway);
        node.logs().contains("not reloaded")
    });
    let logs = node.logs();
    let line = logs
        .lines()
        .find(|line| line.contains("not reloaded"))
        .unwrap();
    assert!(
        line.contains(served.cert_pem_path.to_str().unwrap()),
        "{line}"
    );
    assert!(subject().contains(&second.common_name), "{}", subject());
    assert_eq!(curl(&ca, &["-o", "/dev/null", &url]).0, 0);

    // SIGHUP reloads too, and does not end the node.
    let third = ca.issue(&["127.0.0.1"], Validity::Current).unwrap();
    install(&third, &served);
    let hangup = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(hangup.success());
    wait_until("the reload on SIGHUP", || {
        node.logs().contains("gateway TLS certificate reloaded")
    });
    assert!(subject().contains(&third.common_name), "{}", subject());
    assert_eq!(node.pid(), Some(pid));
    assert_eq!(curl(&ca, &["-o", "/dev/null", &url]).0, 0);
}

#[test]
fn expired_and_wrong_host_certificates_are_served_as_given_and_rejected_by_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let ca = TestCa::new().unwrap();
    let expired = ca.issue(&["127.0.0.1"], Validity::Expired).unwrap();
    let served = served_files(dir.path(), &expired);
    let node = start_tls(dir.path(), &served);
    let gateway = node.gateway();
    let url = format!("https://{gateway}/v2/");
    // curl's 60: "peer certificate cannot be authenticated with known CA certificates".
    assert_eq!(curl(&ca, &["-o", "/dev/null", &url]).0, 60);
    assert_eq!(curl(&ca, &["--insecure", "-o", "/dev/null", &url]).0, 0);

    let wrong_host = ca
        .issue(&["other.test", "10.80.0.9"], Validity::Current)
        .unwrap();
    install(&wrong_host, &served);
    wait_until("the wrong-host certificate being served", || {
        served_certificate_subject(gateway)
            .unwrap()
            .contains(&wrong_host.common_name)
    });
    assert_eq!(curl(&ca, &["-o", "/dev/null", &url]).0, 60);
    assert_eq!(curl(&ca, &["--insecure", "-o", "/dev/null", &url]).0, 0);
}

/// Runs `shoal node` on `data` with `args`, which must exit by itself: `(success, stderr)`.
fn node_that_must_exit(data: &Path, args: &[&str]) -> (bool, String) {
    let mut child = shoal(data, "node")
        .unwrap()
        .args(["--no-mdns", "--listen", "/ip4/127.0.0.1/tcp/0"])
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > BOUND {
            child.kill().unwrap();
            let output = child.wait_with_output().unwrap();
            panic!(
                "shoal node {args:?} kept running: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = child.wait_with_output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_gateway_off_loopback_without_tls_or_with_bad_files_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Refused before it binds, so nothing listens beyond loopback.
    let (ok, stderr) = node_that_must_exit(&data, &["--gateway", "0.0.0.0:0"]);
    assert!(!ok);
    assert!(stderr.contains("not a loopback address"), "{stderr}");
    assert!(stderr.contains("--gateway-insecure"), "{stderr}");

    let missing = dir.path().join("missing.crt");
    let garbage = dir.path().join("garbage.key");
    std::fs::write(&garbage, "garbage").unwrap();
    let (ok, stderr) = node_that_must_exit(
        &data,
        &[
            "--gateway",
            "127.0.0.1:0",
            "--gateway-tls-cert",
            missing.to_str().unwrap(),
            "--gateway-tls-key",
            garbage.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains(missing.to_str().unwrap()), "{stderr}");

    let ca = TestCa::new().unwrap();
    let cert = ca.issue(&["127.0.0.1"], Validity::Current).unwrap();
    let (ok, stderr) = node_that_must_exit(
        &data,
        &[
            "--gateway",
            "127.0.0.1:0",
            "--gateway-tls-cert",
            cert.cert_pem_path.to_str().unwrap(),
            "--gateway-tls-key",
            garbage.to_str().unwrap(),
        ],
    );
    assert!(!ok);
    assert!(stderr.contains(garbage.to_str().unwrap()), "{stderr}");

    let (ok, stderr) = node_that_must_exit(
        &data,
        &["--gateway-tls-cert", cert.cert_pem_path.to_str().unwrap()],
    );
    assert!(!ok);
    assert!(stderr.contains("--gateway-tls-key"), "{stderr}");
}
