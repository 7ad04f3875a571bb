//! A throwaway certificate authority for TLS tests: a CA made fresh for each test, and server
//! certificates it issues for chosen names and validity, written as PEM files into the CA's
//! temporary directory (removed when the [`TestCa`] is dropped).
//!
//! Clients are made to trust the CA with its [`TestCa::cert_pem_path`] (curl `--cacert`,
//! containerd's `ca` in hosts.toml) or with [`TestCa::cert_dir`], a directory holding only
//! `ca.crt` (skopeo and podman `--cert-dir`, docker's `certs.d/HOST:PORT/`); the gateway is
//! given an [`IssuedCert`]'s two files, written to another directory. Each certificate's subject common name is unique
//! ([`IssuedCert::common_name`]), so a test can tell which certificate a server presented
//! ([`served_certificate_subject`]).
//!
//! Not for: anything but tests; the keys are ECDSA P-256 and never protected.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, bail};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SerialNumber,
};

/// When an issued certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Validity {
    /// From 2024 to 2099: valid for any test run.
    Current,
    /// During 2020 only: every verifying client rejects it as expired.
    Expired,
}

/// A server certificate and its key, as PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    /// The certificate followed by the CA's (a full chain, as servers are usually given).
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
    /// The subject's common name, unique per certificate issued by this CA.
    pub common_name: String,
    pub serial: u64,
}

/// A certificate authority that lives as long as the value.
pub struct TestCa {
    dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
    cert_pem_path: PathBuf,
    next_serial: AtomicU64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_pem_path", &self.cert_pem_path)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    pub fn new() -> anyhow::Result<TestCa> {
        let dir = tempfile::TempDir::with_prefix("shoal-test-ca-")?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "Shoal test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = rcgen::date_time_ymd(2019, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key)?;
        std::fs::create_dir(dir.path().join("ca"))?;
        std::fs::create_dir(dir.path().join("issued"))?;
        let cert_pem_path = dir.path().join("ca").join("ca.crt");
        std::fs::write(&cert_pem_path, cert.pem())?;
        Ok(TestCa {
            dir,
            cert,
            key,
            cert_pem_path,
            next_serial: AtomicU64::new(1),
        })
    }

    /// The CA certificate, PEM: what a client must trust.
    pub fn cert_pem_path(&self) -> &Path {
        &self.cert_pem_path
    }

    /// A directory holding the CA certificate as `ca.crt` and nothing else: what skopeo,
    /// podman and docker take as a directory of certificates to trust.
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("ca")
    }

    /// Issues a server certificate for `names` (each an IP address or a DNS name), written to
    /// `server-N.crt` and `server-N.key` in a directory of their own.
    pub fn issue(&self, names: &[&str], validity: Validity) -> anyhow::Result<IssuedCert> {
        let serial = self.next_serial.fetch_add(1, Ordering::Relaxed);
        let common_name = format!("shoal test server {serial}");
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(
            names
                .iter()
                .map(|name| (*name).to_owned())
                .collect::<Vec<_>>(),
        )
        .with_context(|| format!("invalid subject alternative names {names:?}"))?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name.clone());
        params.serial_number = Some(SerialNumber::from(serial));
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        (params.not_before, params.not_after) = match validity {
            Validity::Current => (
                rcgen::date_time_ymd(2024, 1, 1),
                rcgen::date_time_ymd(2099, 12, 31),
            ),
            Validity::Expired => (
                rcgen::date_time_ymd(2020, 1, 1),
                rcgen::date_time_ymd(2020, 12, 31),
            ),
        };
        let cert = params.signed_by(&key, &self.cert, &self.key)?;
        let issued = self.dir.path().join("issued");
        let cert_pem_path = issued.join(format!("server-{serial}.crt"));
        let key_pem_path = issued.join(format!("server-{serial}.key"));
        std::fs::write(&cert_pem_path, cert.pem() + &self.cert.pem())?;
        std::fs::write(&key_pem_path, key.serialize_pem())?;
        Ok(IssuedCert {
            cert_pem_path,
            key_pem_path,
            common_name,
            serial,
        })
    }
}

/// The subject of the certificate a TLS server at `address` presents, as openssl prints it
/// (`subject=CN = shoal test server 3`), without verifying it.
pub fn served_certificate_subject(address: SocketAddr) -> anyhow::Result<String> {
    let connect = Command::new("openssl")
        .args(["s_client", "-connect", &address.to_string()])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run openssl s_client")?;
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-subject"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run openssl x509")?;
    {
        use std::io::Write;
        let mut stdin = x509.stdin.take().context("no stdin")?;
        stdin.write_all(&connect.stdout)?;
    }
    let output = x509.wait_with_output()?;
    if !output.status.success() {
        bail!(
            "no certificate from {address}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}
