//! What an admin request may use: the node's services, handed over by the daemon at start-up.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::announce::Announcements;
use crate::budget::Evictor;
use crate::exchange::fetch::FetchHandle;
use crate::images::pull::Puller;
use crate::locality::Locality;
use crate::network::NetworkHandle;
use crate::observe::Counters;
use crate::store::Store;

/// What `shoal status` says about the node itself, fixed at start-up.
pub struct StatusBase {
    pub peer_id: String,
    pub data_dir: std::path::PathBuf,
    pub gateway: String,
    /// `http` or `https`.
    pub gateway_scheme: &'static str,
    pub site: Option<String>,
}

/// The services an admin request may use; cheap to clone.
#[derive(Clone)]
pub struct AdminContext {
    pub store: Store,
    pub shutdown: CancellationToken,
    pub network: NetworkHandle,
    pub fetch: FetchHandle,
    pub puller: Puller,
    pub announcements: Arc<Announcements>,
    pub counters: Arc<Counters>,
    pub evictor: Evictor,
    pub locality: Arc<Locality>,
    pub status: Arc<StatusBase>,
}
