//! `shoal node`: the daemon. It owns the data directory (by an exclusive lock), opens and
//! repairs the store, wires the services together, serves the gateway and the admin socket
//! (`admin/`), reloads the gateway's TLS certificate on SIGHUP, and shuts down gracefully on
//! SIGINT or SIGTERM: stop accepting, let requests in flight finish (bounded), flush, exit.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use std::future::Future;

use anyhow::Context;
use shoal_gateway::{Auth, GatewayTls};
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminContext, StatusBase, StatusReport};
use crate::announce::Announcements;
use crate::budget::Evictor;
use crate::config::{GatewayAuthFiles, NodeConfig};
use crate::exchange::fetch::{self, FetchContext};
use crate::exchange::pace::NodePace;
use crate::exchange::provenance::ContentProvenance;
use crate::exchange::rate::RateLimiter;
use crate::exchange::serve::PeerService;
use crate::gateway_auth;
use crate::gateway_tls;
use crate::images::gateway_source::NodeSource;
use crate::images::pull::Puller;
use crate::images::{prefetch, tagger};
use crate::locality::Locality;
use crate::metrics_server;
use crate::network::{self, NetworkConfig};
use crate::observe::{self, Counters};
use crate::store::{Layout, Store};
use crate::upstream::Upstreams;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

pub async fn run(config: NodeConfig) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data)
        .with_context(|| format!("cannot create data directory {}", config.data.display()))?;
    let layout = Layout::new(&config.data);
    let _lock = lock_data_dir(&layout.lock(), &config.data)?;
    let identity = crate::identity::load_or_create(&layout.identity())?;
    let peer_id = identity.public().to_peer_id().to_string();
    let data = config.data.clone();
    let (store, recovery) = tokio::task::spawn_blocking(move || Store::open(&data))
        .await?
        .with_context(|| format!("cannot open the store in {}", config.data.display()))?;
    tracing::info!(?recovery, "store opened");

    gateway_tls::check_exposure(
        config.gateway,
        config.gateway_tls.is_some(),
        config.gateway_insecure,
    )?;
    let gateway_tls = gateway_tls::load(config.gateway_tls.clone())?;
    let gateway_listener = TcpListener::bind(config.gateway)
        .await
        .with_context(|| format!("cannot listen on gateway address {}", config.gateway))?;
    let gateway_addr = gateway_listener.local_addr()?;
    let metrics_listener = match config.metrics {
        Some(address) => Some(metrics_server::bind(address, config.metrics_public).await?),
        None => None,
    };
    let admin_listener = admin::bind(&layout.socket())?;

    let shutdown = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let counters = Arc::new(Counters::default());
    let registry = observe::SharedRegistry::default();
    let zone = Arc::new(config.peer_zone()?);
    let announcements = Arc::new(
        Announcements::load(
            store.clone(),
            identity.clone(),
            &config.trust,
            counters.clone(),
            config.hostile_forge_announcements,
        )?
        .with_zone(zone.clone()),
    );
    let locality = Arc::new(Locality::new(config.site.clone()));
    let limiter =
        |rate: Option<crate::values::ByteRate>| rate.map(|rate| Arc::new(RateLimiter::new(rate)));
    let network_config = NetworkConfig {
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        psk: config.psk,
        locality: locality.clone(),
        registry: registry.clone(),
        zone: zone.clone(),
        counters: counters.clone(),
        lane_listen: config.lane_listen,
    };
    let (network, network_events, network_task) =
        network::start(identity, network_config, shutdown.clone()).await?;
    tasks.spawn(async move { network_task.await.context("network task failed") });
    let evictor = Evictor {
        store: store.clone(),
        network: network.clone(),
        counters: counters.clone(),
        budget: config.budget,
    };
    let budget_task = evictor.clone().run(shutdown.clone());
    tasks.spawn(async move {
        budget_task.await;
        Ok(())
    });
    let upstreams = Upstreams::new(&config.upstreams, counters.clone())?;
    let pace = Arc::new(NodePace::default());
    let (fetch, fetch_task) = fetch::start(
        FetchContext {
            store: store.clone(),
            network: network.clone(),
            counters: counters.clone(),
            announcements: announcements.clone(),
            ingress: limiter(config.max_ingress),
            site_ingress: limiter(config.max_site_ingress),
            locality: locality.clone(),
            upstreams: upstreams.clone(),
            chunk_requests: Arc::default(),
            uplink_refusals: Arc::default(),
            pace: pace.clone(),
        },
        shutdown.clone(),
    );
    tasks.spawn(async move { fetch_task.await.context("fetch task failed") });
    let puller = Puller {
        store: store.clone(),
        fetch: fetch.clone(),
        announcements: announcements.clone(),
        network: network.clone(),
        upstreams: upstreams.clone(),
        tag_freshness: config.tag_freshness,
        checked_tags: Arc::default(),
    };

    let (prefetch_queue, prefetch_receiver) =
        tokio::sync::mpsc::channel(prefetch::PREFETCH_QUEUE_LEN);
    if !config.prefetch.is_empty() {
        let (puller, patterns, shutdown) =
            (puller.clone(), config.prefetch.clone(), shutdown.clone());
        tasks.spawn(async move {
            prefetch::run(puller, patterns, prefetch_receiver, shutdown).await;
            Ok(())
        });
    }
    let peers = PeerService {
        store: store.clone(),
        network: network.clone(),
        fetch: fetch.clone(),
        announcements: announcements.clone(),
        counters: counters.clone(),
        egress: limiter(config.max_egress),
        site_egress: limiter(config.max_site_egress),
        locality: locality.clone(),
        on_announcement: Arc::new(move |announcement| {
            if prefetch_queue.try_send(announcement).is_err() {
                tracing::debug!("prefetch queue full or off; announcement not prefetched");
            }
        }),
        seeding: Arc::default(),
        upstreams,
        provenance: Arc::new(ContentProvenance::new(zone)),
        pace,
        corrupt_chunks: config.hostile_corrupt_chunks,
    };
    let peers_shutdown = shutdown.clone();
    tasks.spawn(async move {
        peers.run(network_events, peers_shutdown).await;
        Ok(())
    });

    let (tagger, tagger_actor) = tagger::start(store.clone());
    let tagger_shutdown = shutdown.clone();
    tasks.spawn(async move {
        tagger_actor.run(tagger_shutdown).await;
        Ok(())
    });
    let source = NodeSource::new(puller.clone(), counters.clone(), tagger);
    let auth = match &config.gateway_auth {
        Some(files) => Some((gateway_auth::start(files)?, files.clone())),
        None => None,
    };
    counters.gateway.register(
        &mut registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    let router = shoal_gateway::router_with_auth(
        source,
        Some(config.default_namespace.clone()),
        auth.as_ref().map(|(auth, _)| auth.clone()),
    );
    let gateway_shutdown = shutdown.clone();
    let gateway_scheme = if gateway_tls.is_some() {
        "https"
    } else {
        "http"
    };
    tasks.spawn(reload_on_hangup(
        gateway_tls.clone(),
        auth,
        shutdown.clone(),
    )?);
    tasks.spawn(async move {
        // Connection, header and stall limits: gateway/src/serve.rs.
        shoal_gateway::serve(
            gateway_listener,
            router,
            shoal_gateway::ServeLimits::default(),
            gateway_tls,
            gateway_shutdown.cancelled_owned(),
        )
        .await
        .context("gateway failed")
    });
    let context = AdminContext {
        store: store.clone(),
        shutdown: shutdown.clone(),
        network,
        fetch,
        puller,
        announcements,
        counters,
        evictor,
        locality,
        status: Arc::new(StatusBase {
            peer_id: peer_id.clone(),
            data_dir: std::path::absolute(&config.data)?,
            gateway: gateway_addr.to_string(),
            gateway_scheme,
            site: config.site.clone(),
        }),
    };
    let mut metrics_field = String::new();
    if let Some(listener) = metrics_listener {
        metrics_field = format!(" metrics={}", listener.local_addr()?);
        let (source, counters) = (context.clone(), context.counters.clone());
        tasks.spawn(metrics_server::serve(
            listener,
            source,
            counters,
            registry,
            shutdown.clone(),
        ));
    }
    tasks.spawn(admin::serve(admin_listener, context));

    tracing::info!(%gateway_addr, %peer_id, data = %config.data.display(), "node started");
    println!(
        "ready gateway={gateway_addr} admin={} peer_id={peer_id}{metrics_field} \
         gateway_url={gateway_scheme}://{gateway_addr}",
        layout.socket().display()
    );

    let result = tokio::select! {
        signal = wait_for_signal() => signal.map(|name| tracing::info!(signal = name, "shutting down")),
        Some(finished) = tasks.join_next() => Err(finished.map_err(anyhow::Error::from).and_then(|r| r).err()
            .unwrap_or_else(|| anyhow::anyhow!("a node task stopped unexpectedly"))),
    };
    shutdown.cancel();
    if tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping them");
        tasks.shutdown().await;
    }
    let _ = std::fs::remove_file(layout.socket());
    tokio::task::spawn_blocking(move || store.flush()).await??;
    result
}

/// Takes the data directory's exclusive lock, or explains who holds it.
fn lock_data_dir(path: &Path, data: &Path) -> anyhow::Result<File> {
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .with_context(|| format!("cannot open lock file {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            anyhow::bail!(
                "another shoal node (pid {}) is already running on data directory {}",
                holder.trim(),
                data.display()
            );
        }
        Err(TryLockError::Error(error)) => {
            return Err(error).with_context(|| format!("cannot lock {}", path.display()));
        }
    }
    file.set_len(0)?;
    file.rewind()?;
    write!(file, "{}", std::process::id())?;
    file.sync_all()?;
    Ok(file)
}

async fn wait_for_signal() -> anyhow::Result<&'static str> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    })
}

/// The metrics server shows the admin socket's status report, so the two never disagree. The
/// error becomes one line of text, as the status page shows it.
impl metrics_server::StatusSource for AdminContext {
    async fn status(&self) -> anyhow::Result<StatusReport> {
        admin::status_report(self)
            .await
            .map_err(|error| anyhow::anyhow!("{error:#}"))
    }
}

/// Takes over SIGHUP now (its default action ends the process), and returns the task that, on
/// every one until `shutdown`, re-reads what changes without a restart: the gateway's TLS
/// certificate and its users and access rules. The task runs until `shutdown`, so it can sit
/// among the daemon's tasks, any of which ending stops the node.
fn reload_on_hangup(
    tls: Option<GatewayTls>,
    auth: Option<(Auth, GatewayAuthFiles)>,
    shutdown: CancellationToken,
) -> anyhow::Result<impl Future<Output = anyhow::Result<()>> + Send + 'static> {
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(async move {
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                Some(()) = hangups.recv() => {}
            }
            if tls.is_none() && auth.is_none() {
                tracing::info!(signal = "SIGHUP", "nothing to reload");
            }
            if let Some(tls) = &tls {
                gateway_tls::reload(tls).await?;
            }
            if let Some((auth, files)) = &auth {
                gateway_auth::reload(auth, files).await?;
            }
        }
    })
}
