//! How the daemon exposes its gateway: which addresses it may serve plain HTTP on, the TLS
//! certificate it loads at startup, and its reload on SIGHUP (`daemon.rs` owns the signal).
//!
//! For: the startup checks and the reload. Not for: TLS itself (the gateway's
//! `tls` module loads, swaps and watches the certificate; `serve` speaks TLS).
//!
//! Plain HTTP is for loopback: a client on this host reaches the gateway without crossing a
//! network. On any other address, whoever is on the path could read and alter what clients
//! pull, so the node refuses to start there without TLS unless the operator says
//! `--gateway-insecure`, as `--metrics` needs `--metrics-public`.

use std::net::SocketAddr;

use shoal_gateway::{GatewayTls, TlsFiles};

/// Checks that the gateway on `address` is either on loopback, over TLS, or allowed to be
/// neither.
pub fn check_exposure(address: SocketAddr, tls: bool, insecure: bool) -> anyhow::Result<()> {
    if tls || insecure || address.ip().is_loopback() {
        return Ok(());
    }
    anyhow::bail!(
        "--gateway {address} is not a loopback address and the gateway has no TLS: anyone on the \
         network path could read and alter the images clients pull; give it a certificate with \
         --gateway-tls-cert FILE --gateway-tls-key FILE, use 127.0.0.1, or add \
         --gateway-insecure to serve plain HTTP to the network anyway"
    )
}

/// Loads the certificate the gateway starts with; the error names the file at fault.
pub fn load(files: Option<TlsFiles>) -> anyhow::Result<Option<GatewayTls>> {
    let Some(files) = files else { return Ok(None) };
    let tls = GatewayTls::load(files).map_err(|error| {
        anyhow::Error::new(error).context("cannot load the gateway's TLS certificate")
    })?;
    Ok(Some(tls))
}

/// Re-reads the certificate (on SIGHUP); a failure is logged by the gateway, which keeps the
/// certificate it has.
pub async fn reload(tls: &GatewayTls) -> anyhow::Result<()> {
    let tls = tls.clone();
    // Reading two small files.
    if tokio::task::spawn_blocking(move || tls.reload())
        .await?
        .is_ok()
    {
        tracing::info!(signal = "SIGHUP", "gateway TLS certificate reloaded");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_on_loopback_unless_insecure() {
        let loopback: SocketAddr = "127.0.0.1:5050".parse().unwrap();
        let loopback6: SocketAddr = "[::1]:5050".parse().unwrap();
        let any: SocketAddr = "0.0.0.0:5050".parse().unwrap();
        let lan: SocketAddr = "10.80.0.1:5050".parse().unwrap();
        assert!(check_exposure(loopback, false, false).is_ok());
        assert!(check_exposure(loopback6, false, false).is_ok());
        for address in [any, lan] {
            let error = check_exposure(address, false, false).unwrap_err();
            assert!(error.to_string().contains("--gateway-insecure"), "{error}");
            assert!(check_exposure(address, true, false).is_ok());
            assert!(check_exposure(address, false, true).is_ok());
        }
    }
}
