//! The status report: what `shoal status`, `/status.json` and `/metrics` show, gathered from the
//! store, the network, the transfers, the counters and the budget.

use super::context::AdminContext;
use super::protocol::{KnownImage, StatusReport};

/// The report `shoal status` and the metrics server show, gathered from every service. Cancel-safe.
pub async fn status_report(context: &AdminContext) -> anyhow::Result<StatusReport> {
    let store = context.store.clone();
    let base = context.status.clone();
    let network = context.network.status().await.unwrap_or_default();
    let transfers = context.fetch.status();
    let counters = context.counters.snapshot();
    let known_images = context
        .announcements
        .known_images()
        .into_iter()
        .map(|(repository, tag, digest)| KnownImage {
            repository,
            tag,
            digest,
        })
        .collect();
    let evictor = context.evictor.clone();
    let connected: Vec<libp2p::PeerId> = network
        .connected_peers
        .iter()
        .filter_map(|peer| peer.parse().ok())
        .collect();
    let peers = context.locality.status(&connected);
    tokio::task::spawn_blocking(move || -> anyhow::Result<StatusReport> {
        Ok(StatusReport {
            peer_id: base.peer_id.clone(),
            data_dir: base.data_dir.clone(),
            gateway: base.gateway.clone(),
            gateway_scheme: base.gateway_scheme.to_owned(),
            listen_addresses: network.listen_addresses,
            connected_peers: network.connected_peers,
            site: base.site.clone(),
            peers,
            store: store.summary()?,
            images: store.images()?,
            known_images,
            transfers,
            counters,
            cache: evictor.status()?,
        })
    })
    .await?
}
