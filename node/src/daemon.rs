//! `shoal node`: the daemon. It owns the data directory (by an exclusive lock), opens and
//! repairs the store, serves the gateway and the admin socket, and shuts down gracefully on
//! SIGINT or SIGTERM: stop accepting, let requests in flight finish (bounded), flush, exit.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::BufReader;
use tokio::net::{TcpListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminEvent, AdminRequest, KnownImage, StatusReport};
use crate::announce::Announcements;
use crate::budget::Evictor;
use crate::config::NodeConfig;
use crate::fetch::{self, FetchContext, FetchHandle};
use crate::import;
use crate::locality::Locality;
use crate::metrics_server;
use crate::network::{self, NetworkConfig, NetworkHandle};
use crate::observe;
use crate::observe::Counters;
use crate::peers::PeerService;
use crate::prefetch;
use crate::pull::Puller;
use crate::rate::RateLimiter;
use crate::source::NodeSource;
use crate::store::{Layout, Store};
use crate::tagger;
use crate::upstream::Upstreams;

/// How long requests in flight may take to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);
/// Admin connections served at once; more wait in the accept queue.
const ADMIN_CONNECTIONS_MAX: usize = 32;
/// Import progress is reported at most this often.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(200);
/// Progress events buffered for a slow admin client before the import waits for it.
const PROGRESS_QUEUE_LEN: usize = 16;

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
    let announcements = Arc::new(Announcements::load(
        store.clone(),
        identity.clone(),
        &config.trust,
        counters.clone(),
        config.hostile_forge_announcements,
    )?);
    let locality = Arc::new(Locality::new(config.site.clone()));
    let limiter =
        |rate: Option<crate::rate::ByteRate>| rate.map(|rate| Arc::new(RateLimiter::new(rate)));
    let network_config = NetworkConfig {
        listen: config.listen.clone(),
        bootstrap: config.bootstrap.clone(),
        mdns: config.mdns,
        psk: config.psk,
        locality: locality.clone(),
        registry: registry.clone(),
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
    let upstreams = Upstreams::new(&config.upstreams)?;
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
    let router = shoal_gateway::router(source, Some(config.default_namespace.clone()));
    let gateway_shutdown = shutdown.clone();
    tasks.spawn(async move {
        // Connection, header and stall limits: gateway/src/serve.rs.
        shoal_gateway::serve(
            gateway_listener,
            router,
            shoal_gateway::ServeLimits::default(),
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
    tasks.spawn(serve_admin(admin_listener, context));

    tracing::info!(%gateway_addr, %peer_id, data = %config.data.display(), "node started");
    println!(
        "ready gateway={gateway_addr} admin={} peer_id={peer_id}{metrics_field}",
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

struct StatusBase {
    peer_id: String,
    data_dir: std::path::PathBuf,
    gateway: String,
    site: Option<String>,
}

#[derive(Clone)]
struct AdminContext {
    store: Store,
    shutdown: CancellationToken,
    network: NetworkHandle,
    fetch: FetchHandle,
    puller: Puller,
    announcements: Arc<Announcements>,
    counters: Arc<Counters>,
    evictor: Evictor,
    locality: Arc<Locality>,
    status: Arc<StatusBase>,
}

async fn serve_admin(
    listener: tokio::net::UnixListener,
    context: AdminContext,
) -> anyhow::Result<()> {
    let permits = Arc::new(Semaphore::new(ADMIN_CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        let permit = tokio::select! {
            _ = context.shutdown.cancelled() => break,
            permit = permits.clone().acquire_owned() => permit?,
        };
        let (stream, _) = tokio::select! {
            _ = context.shutdown.cancelled() => break,
            accepted = listener.accept() => accepted.context("admin socket accept failed")?,
        };
        let context = context.clone();
        connections.spawn(async move {
            if let Err(error) = serve_admin_connection(stream, context).await {
                tracing::debug!(%error, "admin connection ended with an error");
            }
            drop(permit);
        });
        while connections.try_join_next().is_some() {}
    }
    while connections.join_next().await.is_some() {}
    Ok(())
}

async fn serve_admin_connection(stream: UnixStream, context: AdminContext) -> anyhow::Result<()> {
    let mut reader = BufReader::new(stream);
    let request = admin::read_request(&mut reader).await;
    let mut stream = reader.into_inner();
    let event = match request {
        Err(error) => AdminEvent::Failed {
            message: format!("{error:#}"),
        },
        Ok(AdminRequest::Status) => status(&context).await,
        Ok(AdminRequest::Import { path, tag }) => {
            run_import(&mut stream, &context, path, tag).await?
        }
        Ok(AdminRequest::Pull { reference }) => run_pull(&mut stream, &context, &reference).await,
        Ok(AdminRequest::Pin { reference }) => answer(
            context.evictor.pin(&context.puller, &reference).await,
            |pinned| AdminEvent::Pinned {
                reference: pinned.reference,
                digest: pinned.digest,
            },
        ),
        Ok(AdminRequest::Unpin { reference }) => {
            answer(context.evictor.unpin(&reference).await, |unpinned| {
                AdminEvent::Unpinned {
                    reference: unpinned.reference,
                    digest: unpinned.digest,
                }
            })
        }
        Ok(AdminRequest::Gc) => answer(context.evictor.gc().await, |collected| {
            AdminEvent::Collected {
                max_bytes: collected.max_bytes,
                report: collected.report,
            }
        }),
        Ok(AdminRequest::Verify) => answer(context.evictor.verify().await, AdminEvent::Verified),
    };
    admin::write_event(&mut stream, &event).await
}

/// The final event for a service's result: `done` of what it did, or its error's text.
fn answer<T, E: std::fmt::Display>(
    result: Result<T, E>,
    done: impl FnOnce(T) -> AdminEvent,
) -> AdminEvent {
    match result {
        Ok(value) => done(value),
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    }
}

impl metrics_server::StatusSource for AdminContext {
    async fn status(&self) -> anyhow::Result<StatusReport> {
        match status(self).await {
            AdminEvent::Status(report) => Ok(*report),
            AdminEvent::Failed { message } => Err(anyhow::anyhow!(message)),
            other => Err(anyhow::anyhow!("unexpected status answer {other:?}")),
        }
    }
}

async fn status(context: &AdminContext) -> AdminEvent {
    let store = context.store.clone();
    let base = context.status.clone();
    let network = context.network.status().await.unwrap_or_default();
    let transfers = context.fetch.status().await;
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
    let report = tokio::task::spawn_blocking(move || -> anyhow::Result<StatusReport> {
        Ok(StatusReport {
            peer_id: base.peer_id.clone(),
            data_dir: base.data_dir.clone(),
            gateway: base.gateway.clone(),
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
    .await;
    match report {
        Ok(Ok(report)) => AdminEvent::Status(Box::new(report)),
        Ok(Err(error)) => AdminEvent::Failed {
            message: format!("{error:#}"),
        },
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    }
}

/// Runs an import on the blocking pool, forwarding its progress to the client. A client that
/// goes away, or a node shutting down, cancels it.
async fn run_import(
    stream: &mut UnixStream,
    context: &AdminContext,
    path: std::path::PathBuf,
    tag: Option<String>,
) -> anyhow::Result<AdminEvent> {
    let tag = match tag.as_deref().map(import::parse_tag_name).transpose() {
        Ok(tag) => tag,
        Err(error) => {
            return Ok(AdminEvent::Failed {
                message: error.to_string(),
            });
        }
    };
    let (events, mut received) = tokio::sync::mpsc::channel(PROGRESS_QUEUE_LEN);
    let store = context.store.clone();
    let shutdown = context.shutdown.clone();
    let span = tracing::info_span!("import", path = %path.display());
    let worker = tokio::task::spawn_blocking(move || {
        let _entered = span.enter();
        let mut last_report = Instant::now();
        let mut progress = |done: u64, total: u64| {
            if shutdown.is_cancelled() || events.is_closed() {
                return false;
            }
            if last_report.elapsed() >= PROGRESS_INTERVAL || done == total {
                last_report = Instant::now();
                return events
                    .blocking_send(AdminEvent::Progress { done, total })
                    .is_ok();
            }
            true
        };
        let started = Instant::now();
        let result = import::import(&store, &path, tag.as_ref(), &mut progress);
        match &result {
            Ok(report) => tracing::info!(
                images = ?report.images.iter().map(|i| &i.reference).collect::<Vec<_>>(),
                blobs_added = report.stored.blobs_added,
                bytes_added = report.stored.bytes_added,
                elapsed = ?started.elapsed(),
                "import finished"
            ),
            Err(error) => tracing::warn!(%error, "import refused"),
        }
        result
    });
    while let Some(event) = received.recv().await {
        if admin::write_event(stream, &event).await.is_err() {
            break;
        }
    }
    drop(received);
    Ok(match worker.await? {
        Ok(report) => {
            announce_imported(context, &report).await;
            AdminEvent::Imported(report)
        }
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    })
}

/// Signs and gossips an announcement per imported tag, with the chunk-index roots of every
/// blob, and tells the DHT this node provides them.
async fn announce_imported(context: &AdminContext, report: &import::ImportReport) {
    let store = context.store.clone();
    let digests = report.digests.clone();
    let roots = tokio::task::spawn_blocking(move || {
        digests
            .iter()
            .filter_map(|digest| Some((*digest, store.chunk_index(digest).ok().flatten()?.root())))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for image in &report.images {
        let Ok(reference) = image.reference.parse::<shoal_protocol::ImageRef>() else {
            continue;
        };
        let Some(tag) = &reference.tag else { continue };
        let Some(size) = context.store.blob_size(&image.digest).ok().flatten() else {
            continue;
        };
        let announced = context.announcements.announce(
            &reference.repo,
            tag,
            image.digest,
            &image.media_type,
            size,
            roots.clone(),
        );
        if let Some(data) = announced {
            context.network.publish(data).await;
        }
    }
    for (digest, _) in &roots {
        context.network.provide(*digest).await;
    }
}

/// Fetches a whole image from the network, reporting bytes as blobs complete.
async fn run_pull(stream: &mut UnixStream, context: &AdminContext, reference: &str) -> AdminEvent {
    let reference: shoal_protocol::ImageRef = match reference.parse() {
        Ok(reference) => reference,
        Err(error) => {
            return AdminEvent::Failed {
                message: format!("invalid image reference {reference:?}: {error}"),
            };
        }
    };
    let (events, mut received) = tokio::sync::mpsc::channel(PROGRESS_QUEUE_LEN);
    let puller = context.puller.clone();
    let for_pull = reference.clone();
    let pull = async move {
        puller
            .pull(&for_pull, &mut |progress| {
                let _ = events.try_send(AdminEvent::Progress {
                    done: progress.bytes_done,
                    total: progress.bytes_total,
                });
            })
            .await
    };
    tokio::pin!(pull);
    let result = loop {
        tokio::select! {
            result = &mut pull => break result,
            Some(event) = received.recv() => {
                if admin::write_event(stream, &event).await.is_err() {
                    return AdminEvent::Failed { message: "client went away".into() };
                }
            }
        }
    };
    match result {
        Ok(digest) => AdminEvent::Pulled {
            reference: reference.to_string(),
            digest,
        },
        Err(error) => AdminEvent::Failed {
            message: error.to_string(),
        },
    }
}
