//! The gateway's TLS certificate: a PEM certificate chain and private key loaded from two files
//! into a rustls [`ServerConfig`], replaced while the gateway runs.
//!
//! For: a gateway that other machines reach over a network, so that clients can check whom they
//! pull from and nobody on the path reads or changes what they pull. Not for: client
//! certificates or any other access control (that is the gateway's auth), nor obtaining
//! certificates (ACME and the like write the two files; the gateway only reads them).
//!
//! Data flow: [`GatewayTls::load`] reads `cert` and `key` at startup and fails naming the file
//! that is wrong. [`serve()`](crate::serve()) asks [`GatewayTls::acceptor`] for every accepted
//! connection and handshakes with the configuration current at that moment, so connections
//! already open keep the certificate they started with and the next one gets the new one. The
//! configuration changes when:
//! - the owner asks, with [`GatewayTls::reload`] (the node does on SIGHUP), and
//! - the files change on disk: `acceptor` compares both files' modification time and length
//!   with the last ones it saw, at most once per [`CHANGE_CHECK_INTERVAL`].
//!
//! Checking on accept rather than polling from a task of its own: a certificate is only used
//! at a handshake, so a change nobody connects after need not be seen; there is no task to own
//! and stop, and an idle gateway does no work at all. The cost is two `stat` calls on the
//! connection path at most once a second, and the reading of two small files when they change.
//!
//! A reload that fails (a file unreadable or half-written, garbage, a key that is not the
//! certificate's) keeps the configuration in use and logs an error naming the file; the same
//! files are not tried again until they change again, so a certificate renewal that writes the
//! chain and then the key is picked up once both are written.

use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use rustls::ServerConfig;
use rustls::crypto::aws_lc_rs;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// How often, at most, accepting a connection looks at the files for a change. A renewed
/// certificate is usually written days before the old one expires; one second keeps the `stat`
/// calls negligible under a flood of connections and is short enough for a test or an operator
/// to see the new certificate at once.
pub const CHANGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// The ALPN protocols offered, preferred first: HTTP/2 multiplexes a client's blob requests on
/// one connection and one handshake; HTTP/1.1 for every other client.
const ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// Why a certificate and key could not be loaded. Each variant names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read TLS file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{} is not a valid PEM certificate chain", path.display())]
    Certificate {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error("{} holds no PEM private key (PKCS#8, RSA or SEC1)", path.display())]
    Key {
        path: PathBuf,
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    #[error(
        "the private key in {} cannot serve the certificate in {} (not its key, or an unsupported \
         algorithm)",
        key.display(),
        cert.display()
    )]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Where the certificate chain and private key live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificate chain, the server's own certificate first.
    pub cert: PathBuf,
    /// PEM private key of the first certificate: PKCS#8, PKCS#1 (RSA) or SEC1 (EC).
    pub key: PathBuf,
}

/// The gateway's current TLS configuration and the files it comes from. Cheap to clone: clones
/// share the configuration, so a reload through one is seen by all.
#[derive(Debug, Clone)]
pub struct GatewayTls {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    files: TlsFiles,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    config: Arc<ServerConfig>,
    /// The files as last read (successfully or not): a change is a difference from this.
    seen: Stamp,
    checked_at: Instant,
}

/// What tells a changed file from the one read before: modification time and length of both.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp([Option<(SystemTime, u64)>; 2]);

impl Stamp {
    fn of(files: &TlsFiles) -> Stamp {
        let stamp = |path: &Path| {
            std::fs::metadata(path)
                .ok()
                .and_then(|metadata: Metadata| Some((metadata.modified().ok()?, metadata.len())))
        };
        Stamp([stamp(&files.cert), stamp(&files.key)])
    }
}

impl GatewayTls {
    /// Reads `files` into a configuration; fails, naming the file, when either is unusable.
    pub fn load(files: TlsFiles) -> Result<GatewayTls, TlsError> {
        let seen = Stamp::of(&files);
        let config = server_config(&files)?;
        Ok(GatewayTls {
            inner: Arc::new(Inner {
                files,
                state: Mutex::new(State {
                    config,
                    seen,
                    checked_at: Instant::now(),
                }),
            }),
        })
    }

    pub fn files(&self) -> &TlsFiles {
        &self.inner.files
    }

    /// Reads the files again now, whether they changed or not. On failure the configuration in
    /// use stays, the error is logged and returned.
    pub fn reload(&self) -> Result<(), TlsError> {
        let seen = Stamp::of(&self.inner.files);
        let loaded = server_config(&self.inner.files);
        let mut state = self.lock();
        state.seen = seen;
        state.checked_at = Instant::now();
        self.install(&mut state, loaded, "asked")
    }

    /// The acceptor for a connection accepted now, after reloading the files if they changed
    /// since last looked at (at most once per [`CHANGE_CHECK_INTERVAL`]).
    pub fn acceptor(&self) -> TlsAcceptor {
        let mut state = self.lock();
        if state.checked_at.elapsed() >= CHANGE_CHECK_INTERVAL {
            state.checked_at = Instant::now();
            let stamp = Stamp::of(&self.inner.files);
            if stamp != state.seen {
                state.seen = stamp;
                let loaded = server_config(&self.inner.files);
                // Logged by `install`; the old configuration keeps serving.
                let _ = self.install(&mut state, loaded, "files changed");
            }
        }
        TlsAcceptor::from(state.config.clone())
    }

    fn install(
        &self,
        state: &mut State,
        loaded: Result<Arc<ServerConfig>, TlsError>,
        reason: &'static str,
    ) -> Result<(), TlsError> {
        let files = &self.inner.files;
        match loaded {
            Ok(config) => {
                state.config = config;
                tracing::info!(cert = %files.cert.display(), reason, "gateway TLS certificate loaded");
                Ok(())
            }
            Err(error) => {
                tracing::error!(
                    cert = %files.cert.display(),
                    key = %files.key.display(),
                    reason,
                    error = %error_chain(&error),
                    "gateway TLS certificate not reloaded; still serving the previous one"
                );
                Err(error)
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is replaced whole under the lock, so a panic elsewhere cannot leave it torn.
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// An error with its causes, for the log line.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let causes = std::iter::successors(Some(error), |error| error.source());
    causes
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The server configuration for `files`: TLS 1.3 and 1.2 with aws-lc-rs, no client
/// certificates, ALPN h2 and http/1.1.
fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let chain_pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&chain_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Certificate {
            path: files.cert.clone(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: files.cert.clone(),
        });
    }
    let key_pem = read(&files.key)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|source| TlsError::Key {
        path: files.key.clone(),
        source,
    })?;
    let unusable = |source| TlsError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        source,
    };
    let mut config = ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(unusable)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(unusable)?;
    config.alpn_protocols = ALPN.iter().map(|protocol| protocol.to_vec()).collect();
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// aws-lc-rs with the AES-128-GCM suites first, chosen over the client's order. OpenSSL
/// clients (curl, and the runtimes built on it) list AES-256-GCM first; AES-128-GCM is as safe
/// for this purpose, cheaper on both ends, and what Go's servers (docker-registry) pick on
/// hardware with AES instructions: measured with bench_gateway (docs/benchmarks.md).
fn provider() -> rustls::crypto::CryptoProvider {
    let mut provider = aws_lc_rs::default_provider();
    provider
        .cipher_suites
        .sort_by_key(|suite| !is_aes_128_gcm(suite.suite()));
    provider
}

fn is_aes_128_gcm(suite: rustls::CipherSuite) -> bool {
    matches!(
        suite,
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str, sans: &[&str]) -> TlsFiles {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            sans.iter().map(|san| (*san).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let files = TlsFiles {
            cert: dir.join(format!("{name}.crt")),
            key: dir.join(format!("{name}.key")),
        };
        std::fs::write(&files.cert, cert.pem()).unwrap();
        std::fs::write(&files.key, key.serialize_pem()).unwrap();
        files
    }

    #[test]
    fn startup_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good = write_pair(dir.path(), "good", &["gateway.test"]);
        let other = write_pair(dir.path(), "other", &["other.test"]);
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n").unwrap();
        let missing = dir.path().join("missing.pem");

        let error = |files: TlsFiles| GatewayTls::load(files).unwrap_err();
        let text = error_chain(&error(TlsFiles {
            cert: missing.clone(),
            key: good.key.clone(),
        }));
        assert!(text.contains("missing.pem"), "{text}");
        assert!(matches!(
            error(TlsFiles {
                cert: garbage.clone(),
                key: good.key.clone(),
            }),
            TlsError::NoCertificate { path } if path == garbage
        ));
        assert!(matches!(
            error(TlsFiles {
                cert: good.cert.clone(),
                key: garbage.clone(),
            }),
            TlsError::Key { path, .. } if path == garbage
        ));
        // A key is no certificate, and a certificate is no key.
        assert!(matches!(
            error(TlsFiles {
                cert: good.key.clone(),
                key: good.cert.clone(),
            }),
            TlsError::NoCertificate { .. }
        ));
        let mismatch = error(TlsFiles {
            cert: good.cert.clone(),
            key: other.key.clone(),
        });
        assert!(
            matches!(&mismatch, TlsError::Unusable { key, .. } if *key == other.key),
            "{mismatch:?}"
        );
        assert!(GatewayTls::load(good).is_ok());
    }

    #[test]
    fn a_failed_reload_keeps_the_configuration_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let files = write_pair(dir.path(), "served", &["gateway.test"]);
        let tls = GatewayTls::load(files.clone()).unwrap();
        let before = Arc::as_ptr(tls.acceptor().config());
        std::fs::write(&files.key, "garbage").unwrap();
        assert!(tls.reload().is_err());
        assert_eq!(Arc::as_ptr(tls.acceptor().config()), before);
        let replacement = write_pair(dir.path(), "replacement", &["gateway.test"]);
        std::fs::copy(&replacement.key, &files.key).unwrap();
        std::fs::copy(&replacement.cert, &files.cert).unwrap();
        tls.reload().unwrap();
        assert_ne!(Arc::as_ptr(tls.acceptor().config()), before);
    }
}
