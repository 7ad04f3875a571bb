//! The node's configuration: embedded defaults, overridden by a TOML file, overridden by flags.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::Context;
use libp2p::pnet::PreSharedKey;
use libp2p::{Multiaddr, PeerId};

use crate::network::LaneListen;
use crate::values::{Budget, ByteRate, ByteSize};
use crate::zone::{PeerZone, ServePeers, Share};

pub const DEFAULT_DATA_DIR: &str = "./shoal-data";
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:5050";
pub const DEFAULT_LOG_LEVEL: &str = "info";
/// How long a tag resolved from an upstream is trusted before asking again.
pub const DEFAULT_TAG_FRESHNESS: Duration = Duration::from_secs(300);
/// Peers listen on all interfaces, on a fixed port so firewalls can be opened for it.
pub const DEFAULT_LISTEN: [&str; 2] = ["/ip4/0.0.0.0/tcp/4050", "/ip4/0.0.0.0/udp/4050/quic-v1"];

/// `shoal node` flags. Each is optional so that an absent flag falls back to the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML file with any of the options below (flags win over the file).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its blobs, metadata, identity and admin socket [default: ./shoal-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address of the read-only /v2/ registry API; port 0 picks a free port [default: 127.0.0.1:5050].
    /// Loopback only, unless with --gateway-tls-cert or --gateway-insecure.
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<SocketAddr>,
    // Gateway TLS (gateway/src/tls.rs, node/src/gateway_tls.rs).
    /// Serve the gateway over HTTPS (HTTP/2 or HTTP/1.1) with this PEM certificate chain, the
    /// server's certificate first; needs --gateway-tls-key. Both files are read again on SIGHUP
    /// and when they change on disk; a bad replacement is logged and the old one kept.
    #[arg(long, value_name = "FILE", requires = "gateway_tls_key")]
    pub gateway_tls_cert: Option<PathBuf>,
    /// The PEM private key (PKCS#8, RSA or SEC1) of --gateway-tls-cert.
    #[arg(long, value_name = "FILE", requires = "gateway_tls_cert")]
    pub gateway_tls_key: Option<PathBuf>,
    /// Allow --gateway on a non-loopback address without TLS: anyone on the path can read and
    /// alter what clients pull (tags and manifests are not signed on the way to the client).
    #[arg(long)]
    pub gateway_insecure: bool,
    /// Registry namespace of requests without `?ns=` [default: docker.io]
    #[arg(long, value_name = "HOST")]
    pub default_namespace: Option<String>,
    /// Log filter when RUST_LOG is unset, such as `debug` or `shoal_node=debug` [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
    /// Where to listen for peers (repeatable; port 0 picks a free port)
    /// [default: /ip4/0.0.0.0/tcp/4050 and /ip4/0.0.0.0/udp/4050/quic-v1]
    #[arg(long, value_name = "MULTIADDR")]
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to (repeatable), such as /ip4/10.0.0.5/tcp/4050/p2p/12D3KooW..., or a
    /// DNS name that stands for many nodes, such as /dns4/shoal-peers.shoal.svc/tcp/4050 (a
    /// headless Service): the peer id is optional, and names are looked up again while the node
    /// has few peers
    #[arg(long, value_name = "MULTIADDR")]
    pub bootstrap: Vec<Multiaddr>,
    /// Do not discover peers on the local network with mDNS.
    #[arg(long)]
    pub no_mdns: bool,
    /// Trust this publisher's announcements (repeatable; the peer id `shoal id` prints).
    /// The node's own key is always trusted.
    #[arg(long, value_name = "PEER_ID")]
    pub trust: Vec<PeerId>,
    /// Pre-shared key file (libp2p `/key/swarm/psk/1.0.0/` format): only nodes with the same
    /// key can connect. Peers then speak TCP only.
    #[arg(long, value_name = "FILE")]
    pub psk: Option<PathBuf>,
    /// Most bytes per second sent to peers, such as 20MiB/s [default: unlimited]
    #[arg(long, value_name = "RATE")]
    pub max_egress: Option<ByteRate>,
    /// Most bytes per second received from peers, such as 20MiB/s [default: unlimited]
    #[arg(long, value_name = "RATE")]
    pub max_ingress: Option<ByteRate>,
    /// This node's site (a LAN behind one link), such as `shop-12`: peers of the same site are
    /// preferred, and each chunk crosses the site's link about once.
    #[arg(long, value_name = "NAME")]
    pub site: Option<String>,
    /// Most bytes per second sent to peers outside this node's site [default: unlimited]
    #[arg(long, value_name = "RATE")]
    pub max_site_egress: Option<ByteRate>,
    /// Most bytes per second received from outside this node's site, peers and upstream
    /// registries alike [default: unlimited]
    #[arg(long, value_name = "RATE")]
    pub max_site_ingress: Option<ByteRate>,
    /// Registry to fetch from when no peer has the content, as NAMESPACE=URL (repeatable),
    /// such as docker.io=https://registry-1.docker.io or ghcr.io=https://ghcr.io.
    /// Credentials go in the config file's [credentials."NAMESPACE"] table.
    #[arg(long, value_name = "NS=URL")]
    pub upstream: Vec<UpstreamSpec>,
    /// How long a tag resolved from an upstream is used before asking the upstream again,
    /// such as 30s, 5m or 1h [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub tag_freshness: Option<Freshness>,
    /// Fetch images as soon as they are announced when `repository:tag` matches this glob
    /// (repeatable), such as `docker.io/library/*:*` or `team/app:1`.
    #[arg(long, value_name = "PATTERN")]
    pub prefetch: Vec<String>,
    /// Serve Prometheus metrics at /metrics, a status page at / and /status.json on this
    /// address, such as 127.0.0.1:9050 [default: off]. Loopback only, unless --metrics-public.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<SocketAddr>,
    /// Allow --metrics on a non-loopback address: whoever reaches it sees this node's peers,
    /// addresses and images.
    #[arg(long)]
    pub metrics_public: bool,
    /// Most bytes of blobs the store keeps, such as 10GiB; past it the least recently used
    /// are evicted (never a pinned image's, nor one in use) [default: unlimited]
    #[arg(long, value_name = "SIZE")]
    pub cache_max: Option<ByteSize>,
    /// Eviction brings the store down to this percentage of --cache-max [default: 90]
    #[arg(long, value_name = "PERCENT")]
    pub cache_low_watermark: Option<u8>,
    /// Users who may pull through the gateway: an htpasswd file of bcrypt lines (`htpasswd -B`,
    /// `shoal user add`). With it (or --gateway-access), clients other than this host need
    /// credentials; re-read on SIGHUP [default: off]
    #[arg(long, value_name = "FILE")]
    pub gateway_htpasswd: Option<PathBuf>,
    /// Which users may pull which repositories through the gateway (TOML; see
    /// deploy/gateway-access.toml); re-read on SIGHUP [default: every user, everything]
    #[arg(long, value_name = "FILE")]
    pub gateway_access: Option<PathBuf>,
    /// Require credentials from loopback clients too (by default this host's own runtime pulls
    /// everything without them).
    #[arg(long)]
    pub gateway_auth_loopback: bool,
    /// How long a gateway token lasts, such as 5m or 1h [default: 5m]
    #[arg(long, value_name = "DURATION")]
    pub gateway_token_lifetime: Option<Freshness>,
    // Peer zones (`zone.rs`, README "Who may fetch from a node").
    /// Which peers this node serves: `zone` (only the peers named by --trust and
    /// --serve-peer, and every peer of a --psk network; others cannot connect) or `any` (every
    /// peer that reaches it gets public content, as on an open LAN; never upstream delegation,
    /// nor content of a namespace with credentials) [default: zone]
    #[arg(long, value_name = "zone|any")]
    pub serve_peers: Option<ServePeers>,
    /// Serve this peer (repeatable; the peer id `shoal id` prints): it may connect, fetch
    /// content and ask this node to download from its upstreams, like a --trust publisher.
    #[arg(long, value_name = "PEER_ID")]
    pub serve_peer: Vec<PeerId>,
    /// Where peers connect to fetch chunks on lanes, TCP connections of their own beside the
    /// libp2p connection (keyed through it), such as 0.0.0.0:4051, or `off` (peers then fetch
    /// over libp2p streams) [default: the first --listen address's IP, its port + 1 (port 0
    /// stays 0)]
    #[arg(long, value_name = "ADDR|off")]
    pub lane_listen: Option<LaneListenArg>,
    /// Fault injection for tests: corrupt every chunk sent to peers.
    #[arg(long, hide = true)]
    pub hostile_corrupt_chunks: bool,
    /// Fault injection for tests: sign announcements with the wrong key.
    #[arg(long, hide = true)]
    pub hostile_forge_announcements: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data: Option<PathBuf>,
    gateway: Option<SocketAddr>,
    // Gateway TLS.
    gateway_tls_cert: Option<PathBuf>,
    gateway_tls_key: Option<PathBuf>,
    gateway_insecure: Option<bool>,
    default_namespace: Option<String>,
    log_level: Option<String>,
    listen: Option<Vec<Multiaddr>>,
    bootstrap: Option<Vec<Multiaddr>>,
    mdns: Option<bool>,
    trust: Option<Vec<String>>,
    psk: Option<PathBuf>,
    max_egress: Option<String>,
    max_ingress: Option<String>,
    site: Option<String>,
    max_site_egress: Option<String>,
    max_site_ingress: Option<String>,
    prefetch: Option<Vec<String>>,
    upstream: Option<Vec<UpstreamSpec>>,
    tag_freshness: Option<Freshness>,
    metrics: Option<SocketAddr>,
    metrics_public: Option<bool>,
    cache_max: Option<ByteSize>,
    cache_low_watermark: Option<u8>,
    gateway_htpasswd: Option<PathBuf>,
    gateway_access: Option<PathBuf>,
    gateway_auth_loopback: Option<bool>,
    gateway_token_lifetime: Option<Freshness>,
    #[serde(default)]
    credentials: BTreeMap<String, Credentials>,
    // Peer zones.
    serve_peers: Option<ServePeers>,
    serve_peer: Option<Vec<String>>,
    lane_listen: Option<LaneListenArg>,
}

/// The resolved configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data: PathBuf,
    pub gateway: SocketAddr,
    // Gateway TLS.
    /// Serve the gateway over TLS with these files.
    pub gateway_tls: Option<shoal_gateway::TlsFiles>,
    /// Serve the gateway without TLS even on a non-loopback address.
    pub gateway_insecure: bool,
    pub default_namespace: String,
    pub log_level: String,
    pub listen: Vec<Multiaddr>,
    pub bootstrap: Vec<Multiaddr>,
    pub mdns: bool,
    pub trust: Vec<PeerId>,
    pub psk: Option<PreSharedKey>,
    pub max_egress: Option<ByteRate>,
    pub max_ingress: Option<ByteRate>,
    pub site: Option<String>,
    pub max_site_egress: Option<ByteRate>,
    pub max_site_ingress: Option<ByteRate>,
    pub prefetch: Vec<String>,
    pub upstreams: Vec<Upstream>,
    pub tag_freshness: Duration,
    pub metrics: Option<SocketAddr>,
    pub metrics_public: bool,
    pub budget: Option<Budget>,
    /// Credentials and access rules for the gateway; `None` serves everyone.
    pub gateway_auth: Option<GatewayAuthFiles>,
    // Peer zones.
    pub serve_peers: ServePeers,
    pub serve_peer: Vec<PeerId>,
    /// Where the lane listener binds; `None`: off.
    pub lane_listen: Option<LaneListen>,
    pub hostile_corrupt_chunks: bool,
    pub hostile_forge_announcements: bool,
}

fn non_empty<T>(values: Vec<T>) -> Option<Vec<T>> {
    if values.is_empty() {
        None
    } else {
        Some(values)
    }
}

fn rate(flag: Option<ByteRate>, file: Option<String>) -> anyhow::Result<Option<ByteRate>> {
    match (flag, file) {
        (Some(rate), _) => Ok(Some(rate)),
        (None, Some(text)) => Ok(Some(text.parse()?)),
        (None, None) => Ok(None),
    }
}

/// `--gateway-tls-cert` and `--gateway-tls-key`: both or neither.
fn gateway_tls(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> anyhow::Result<Option<shoal_gateway::TlsFiles>> {
    match (cert, key) {
        (Some(cert), Some(key)) => Ok(Some(shoal_gateway::TlsFiles { cert, key })),
        (None, None) => Ok(None),
        (Some(_), None) => anyhow::bail!("gateway-tls-cert is set without gateway-tls-key"),
        (None, Some(_)) => anyhow::bail!("gateway-tls-key is set without gateway-tls-cert"),
    }
}

fn read_psk(path: &Path) -> anyhow::Result<PreSharedKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read pre-shared key {}", path.display()))?;
    text.parse()
        .map_err(|error| anyhow::anyhow!("invalid pre-shared key {}: {error}", path.display()))
}

impl NodeConfig {
    pub fn resolve(args: NodeArgs) -> anyhow::Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let default_gateway: SocketAddr =
            DEFAULT_GATEWAY.parse().context("default gateway address")?;
        let default_namespace = args
            .default_namespace
            .or(file.default_namespace)
            .unwrap_or_else(|| shoal_protocol::reference::DEFAULT_NAMESPACE.to_owned());
        let listen: Vec<Multiaddr> = match non_empty(args.listen).or(file.listen) {
            Some(listen) => listen,
            None => DEFAULT_LISTEN
                .iter()
                .map(|a| a.parse())
                .collect::<Result<_, _>>()?,
        };
        let lane_listen = lane_listen(args.lane_listen.or(file.lane_listen), &listen);
        Ok(NodeConfig {
            data: args
                .data
                .or(file.data)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            gateway: args.gateway.or(file.gateway).unwrap_or(default_gateway),
            // Gateway TLS.
            gateway_tls: gateway_tls(
                args.gateway_tls_cert.or(file.gateway_tls_cert),
                args.gateway_tls_key.or(file.gateway_tls_key),
            )?,
            gateway_insecure: args.gateway_insecure || file.gateway_insecure.unwrap_or(false),
            default_namespace: shoal_protocol::reference::normalize_namespace(&default_namespace)?,
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
            listen,
            bootstrap: non_empty(args.bootstrap)
                .or(file.bootstrap)
                .unwrap_or_default(),
            mdns: !args.no_mdns && file.mdns.unwrap_or(true),
            trust: match non_empty(args.trust) {
                Some(trust) => trust,
                None => peer_ids(file.trust.unwrap_or_default())?,
            },
            psk: args
                .psk
                .or(file.psk)
                .map(|path| read_psk(&path))
                .transpose()?,
            max_egress: rate(args.max_egress, file.max_egress)?,
            max_ingress: rate(args.max_ingress, file.max_ingress)?,
            site: site(args.site.or(file.site))?,
            max_site_egress: rate(args.max_site_egress, file.max_site_egress)?,
            max_site_ingress: rate(args.max_site_ingress, file.max_site_ingress)?,
            prefetch: non_empty(args.prefetch)
                .or(file.prefetch)
                .unwrap_or_default(),
            upstreams: upstreams(
                non_empty(args.upstream)
                    .or(file.upstream)
                    .unwrap_or_default(),
                file.credentials,
            )?,
            tag_freshness: args
                .tag_freshness
                .or(file.tag_freshness)
                .map_or(DEFAULT_TAG_FRESHNESS, |freshness| freshness.0),
            metrics: args.metrics.or(file.metrics),
            metrics_public: args.metrics_public || file.metrics_public.unwrap_or(false),
            budget: Budget::configured(
                args.cache_max.or(file.cache_max),
                args.cache_low_watermark.or(file.cache_low_watermark),
            )?,
            gateway_auth: GatewayAuthFiles::configured(
                args.gateway_htpasswd.or(file.gateway_htpasswd),
                args.gateway_access.or(file.gateway_access),
                args.gateway_auth_loopback || file.gateway_auth_loopback.unwrap_or(false),
                args.gateway_token_lifetime.or(file.gateway_token_lifetime),
            )?,
            serve_peers: args.serve_peers.or(file.serve_peers).unwrap_or_default(),
            serve_peer: match non_empty(args.serve_peer) {
                Some(peers) => peers,
                None => peer_ids(file.serve_peer.unwrap_or_default())?,
            },
            lane_listen,
            hostile_corrupt_chunks: args.hostile_corrupt_chunks,
            hostile_forge_announcements: args.hostile_forge_announcements,
        })
    }
}

/// Where the gateway's users and access rules are read from (at start and on SIGHUP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayAuthFiles {
    pub htpasswd: Option<PathBuf>,
    /// Without it, every user in the htpasswd file may pull everything.
    pub access: Option<PathBuf>,
    pub loopback: bool,
    pub token_lifetime: Duration,
}

impl GatewayAuthFiles {
    fn configured(
        htpasswd: Option<PathBuf>,
        access: Option<PathBuf>,
        loopback: bool,
        token_lifetime: Option<Freshness>,
    ) -> anyhow::Result<Option<GatewayAuthFiles>> {
        if htpasswd.is_none() && access.is_none() {
            if loopback || token_lifetime.is_some() {
                anyhow::bail!(
                    "--gateway-auth-loopback and --gateway-token-lifetime need \
                     --gateway-htpasswd or --gateway-access"
                );
            }
            return Ok(None);
        }
        let token_lifetime = token_lifetime.map_or(shoal_gateway::auth::TOKEN_LIFETIME, |t| t.0);
        if token_lifetime.is_zero() {
            anyhow::bail!("--gateway-token-lifetime must be at least 1s");
        }
        Ok(Some(GatewayAuthFiles {
            htpasswd,
            access,
            loopback,
            token_lifetime,
        }))
    }
}

/// `--upstream NS=URL` as written.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct UpstreamSpec {
    pub namespace: String,
    pub url: String,
}

impl FromStr for UpstreamSpec {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<UpstreamSpec> {
        let (namespace, url) = text.split_once('=').with_context(|| {
            format!("invalid upstream {text:?}: use NAMESPACE=URL, such as docker.io=https://registry-1.docker.io")
        })?;
        let namespace = shoal_protocol::reference::normalize_namespace(namespace.trim())?;
        let url = url.trim().trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!(
                "invalid upstream URL {url:?} for {namespace}: it must start with http:// or https://"
            );
        }
        Ok(UpstreamSpec { namespace, url })
    }
}

impl TryFrom<String> for UpstreamSpec {
    type Error = anyhow::Error;

    fn try_from(text: String) -> anyhow::Result<UpstreamSpec> {
        text.parse()
    }
}

/// Registry credentials from the config file. Never printed: `Debug` hides the password.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
    /// The peers that may have this namespace's content (`share-with`); absent: the zone's
    /// named and key members (`zone.rs`).
    #[serde(default, rename = "share-with")]
    pub share_with: Option<Vec<String>>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .field("share_with", &self.share_with)
            .finish()
    }
}

/// One configured upstream registry.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub namespace: String,
    pub url: String,
    pub credentials: Option<Credentials>,
}

fn peer_ids(ids: Vec<String>) -> anyhow::Result<Vec<PeerId>> {
    ids.iter()
        .map(|id| {
            id.parse()
                .with_context(|| format!("invalid peer id {id:?}"))
        })
        .collect()
}

impl NodeConfig {
    /// The peers this node serves and what they may ask (`zone.rs`): `--trust` and
    /// `--serve-peer` are named, a `--psk` makes every peer a member, and each upstream with
    /// credentials is shared as its `share-with` says.
    pub fn peer_zone(&self) -> anyhow::Result<PeerZone> {
        let mut credentialed = BTreeMap::new();
        for upstream in &self.upstreams {
            let Some(credentials) = &upstream.credentials else {
                continue;
            };
            let share = match &credentials.share_with {
                None => Share::Zone,
                Some(ids) => Share::With(peer_ids(ids.clone())?.into_iter().collect()),
            };
            credentialed.insert(upstream.namespace.clone(), share);
        }
        let named = self.trust.iter().chain(&self.serve_peer).copied();
        Ok(PeerZone::new(
            self.serve_peers,
            named,
            self.psk.is_some(),
            credentialed,
        ))
    }
}

/// `--lane-listen`: off, or where to listen for lanes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum LaneListenArg {
    Off,
    At(SocketAddr),
}

impl std::str::FromStr for LaneListenArg {
    type Err = String;

    fn from_str(text: &str) -> Result<LaneListenArg, String> {
        if text == "off" {
            return Ok(LaneListenArg::Off);
        }
        text.parse()
            .map(LaneListenArg::At)
            .map_err(|_| format!("{text:?} is neither an address such as 0.0.0.0:4051 nor `off`"))
    }
}

impl TryFrom<String> for LaneListenArg {
    type Error = String;

    fn try_from(text: String) -> Result<LaneListenArg, String> {
        text.parse()
    }
}

/// Where lanes are listened for: as asked, else beside the first `--listen` address with an
/// IP (its port + 1, so the default 4050 gives 4051; port 0 stays 0).
fn lane_listen(arg: Option<LaneListenArg>, listen: &[Multiaddr]) -> Option<LaneListen> {
    match arg {
        Some(LaneListenArg::Off) => None,
        Some(LaneListenArg::At(address)) => Some(LaneListen {
            address,
            explicit: true,
        }),
        None => listen.iter().find_map(beside).map(|address| LaneListen {
            address,
            explicit: false,
        }),
    }
}

/// The socket address beside a `--listen` address: its IP, its port + 1.
fn beside(address: &Multiaddr) -> Option<SocketAddr> {
    use libp2p::multiaddr::Protocol;
    let mut parts = address.iter();
    let ip: std::net::IpAddr = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    let port = match parts.next()? {
        Protocol::Tcp(port) | Protocol::Udp(port) => port,
        _ => return None,
    };
    let port = if port == 0 { 0 } else { port.checked_add(1)? };
    Some(SocketAddr::new(ip, port))
}

fn site(site: Option<String>) -> anyhow::Result<Option<String>> {
    match site {
        Some(site) if !crate::locality::valid_site(&site) => anyhow::bail!(
            "invalid site {site:?}: use letters, digits, '.', '_' and '-', at most {} bytes",
            crate::locality::SITE_BYTES_MAX
        ),
        site => Ok(site),
    }
}

fn upstreams(
    specs: Vec<UpstreamSpec>,
    mut credentials: BTreeMap<String, Credentials>,
) -> anyhow::Result<Vec<Upstream>> {
    let mut upstreams: Vec<Upstream> = Vec::new();
    for spec in specs {
        if upstreams.iter().any(|u| u.namespace == spec.namespace) {
            anyhow::bail!("two upstreams for {}", spec.namespace);
        }
        let credentials = credentials.remove(&spec.namespace);
        if let Some(ids) = credentials.as_ref().and_then(|c| c.share_with.clone()) {
            peer_ids(ids).with_context(|| format!("share-with of {}", spec.namespace))?;
        }
        upstreams.push(Upstream {
            credentials,
            namespace: spec.namespace,
            url: spec.url,
        });
    }
    if let Some(namespace) = credentials.keys().next() {
        anyhow::bail!("credentials for {namespace}, which has no upstream");
    }
    Ok(upstreams)
}

/// A duration written as `30s`, `5m`, `1h` or plain seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Freshness(pub Duration);

impl FromStr for Freshness {
    type Err = anyhow::Error;

    fn from_str(text: &str) -> anyhow::Result<Freshness> {
        let text = text.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let number: u64 = number
            .parse()
            .with_context(|| format!("invalid duration {text:?}: use 30s, 5m or 1h"))?;
        let seconds = match unit {
            "" | "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => anyhow::bail!("invalid duration {text:?}: use 30s, 5m or 1h"),
        };
        Ok(Freshness(Duration::from_secs(number * seconds)))
    }
}

impl TryFrom<String> for Freshness {
    type Error = anyhow::Error;

    fn try_from(text: String) -> anyhow::Result<Freshness> {
        text.parse()
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "data = \"/from/file\"\ngateway = \"127.0.0.1:6000\"\nlog-level = \"debug\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            gateway: Some("127.0.0.1:7000".parse().unwrap()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.data, PathBuf::from("/from/file"));
        assert_eq!(config.gateway.port(), 7000);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.default_namespace, "docker.io");

        let defaults = NodeConfig::resolve(NodeArgs::default()).unwrap();
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(defaults.gateway.to_string(), DEFAULT_GATEWAY);
    }

    // Gateway TLS.
    #[test]
    fn gateway_tls_files_come_in_pairs_from_flags_or_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "gateway-tls-cert = \"/etc/shoal/gw.crt\"\ngateway-tls-key = \"/etc/shoal/gw.key\"\n\
             gateway-insecure = true\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            gateway_tls_cert: Some("/flag/gw.crt".into()),
            ..NodeArgs::default()
        })
        .unwrap();
        let tls = config.gateway_tls.unwrap();
        assert_eq!(tls.cert, PathBuf::from("/flag/gw.crt"));
        assert_eq!(tls.key, PathBuf::from("/etc/shoal/gw.key"));
        assert!(config.gateway_insecure);

        std::fs::write(&file, "gateway-tls-key = \"/etc/shoal/gw.key\"\n").unwrap();
        let error = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("without gateway-tls-cert"),
            "{error}"
        );
        let defaults = NodeConfig::resolve(NodeArgs::default()).unwrap();
        assert!(defaults.gateway_tls.is_none() && !defaults.gateway_insecure);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(&file, "gatewy = \"127.0.0.1:1\"\n").unwrap();
        let error = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("gatewy"), "{error:#}");
    }

    #[test]
    fn upstreams_come_with_their_credentials_which_never_print() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "upstream = [\"ghcr.io=https://ghcr.io/\", \"index.docker.io=http://127.0.0.1:5000\"]\n\
             tag-freshness = \"2m\"\n\
             [credentials.\"ghcr.io\"]\nusername = \"ci\"\npassword = \"hunter2\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.upstreams.len(), 2);
        assert_eq!(config.upstreams[0].url, "https://ghcr.io");
        assert_eq!(config.upstreams[1].namespace, "docker.io");
        assert!(config.upstreams[1].credentials.is_none());
        assert_eq!(config.tag_freshness, Duration::from_secs(120));
        let printed = format!("{config:?}");
        assert!(
            printed.contains("ci") && !printed.contains("hunter2"),
            "{printed}"
        );

        std::fs::write(
            &file,
            "[credentials.\"quay.io\"]\nusername = \"a\"\npassword = \"b\"\n",
        )
        .unwrap();
        let error = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("quay.io"), "{error:#}");
        assert!("docker.io=ftp://x".parse::<UpstreamSpec>().is_err());
        assert!("docker.io".parse::<UpstreamSpec>().is_err());
        assert!("5x".parse::<Freshness>().is_err());
    }

    #[test]
    fn the_disk_budget_comes_from_the_file_or_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(&file, "cache-max = \"10GiB\"\ncache-low-watermark = 80\n").unwrap();
        let from_file = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(from_file.budget, Some(Budget::new(10 << 30, 80).unwrap()));
        let flags = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            cache_max: Some("1GiB".parse().unwrap()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(flags.budget, Some(Budget::new(1 << 30, 80).unwrap()));
        assert_eq!(
            NodeConfig::resolve(NodeArgs::default()).unwrap().budget,
            None
        );
        let no_max = NodeConfig::resolve(NodeArgs {
            cache_low_watermark: Some(50),
            ..NodeArgs::default()
        });
        assert!(no_max.is_err());
    }

    #[test]
    fn gateway_auth_comes_from_the_file_or_the_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "gateway-htpasswd = \"/etc/shoal/htpasswd\"\ngateway-token-lifetime = \"1h\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            gateway_auth_loopback: true,
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(
            config.gateway_auth,
            Some(GatewayAuthFiles {
                htpasswd: Some(PathBuf::from("/etc/shoal/htpasswd")),
                access: None,
                loopback: true,
                token_lifetime: Duration::from_secs(3600),
            })
        );
        assert_eq!(
            NodeConfig::resolve(NodeArgs::default())
                .unwrap()
                .gateway_auth,
            None
        );
        let loopback_alone = NodeConfig::resolve(NodeArgs {
            gateway_auth_loopback: true,
            ..NodeArgs::default()
        });
        assert!(loopback_alone.is_err());
    }

    #[test]
    fn lanes_listen_beside_the_first_listen_address_unless_told_otherwise() {
        let lane = |address: &str, explicit| {
            Some(LaneListen {
                address: address.parse().unwrap(),
                explicit,
            })
        };
        let defaults = NodeConfig::resolve(NodeArgs::default()).unwrap();
        assert_eq!(defaults.lane_listen, lane("0.0.0.0:4051", false));
        let listen = |addresses: &[&str]| NodeArgs {
            listen: addresses.iter().map(|a| a.parse().unwrap()).collect(),
            ..NodeArgs::default()
        };
        let resolved = |args| NodeConfig::resolve(args).unwrap().lane_listen;
        assert_eq!(
            resolved(listen(&["/ip4/127.0.0.1/tcp/0"])),
            lane("127.0.0.1:0", false)
        );
        assert_eq!(
            resolved(listen(&[
                "/ip6/::1/udp/7000/quic-v1",
                "/ip4/10.0.0.1/tcp/9"
            ])),
            lane("[::1]:7001", false)
        );
        assert_eq!(resolved(listen(&["/ip4/10.0.0.1/tcp/65535"])), None);
        let flag = |value: &str| NodeArgs {
            lane_listen: Some(value.parse().unwrap()),
            ..NodeArgs::default()
        };
        assert_eq!(resolved(flag("off")), None);
        assert_eq!(resolved(flag("10.0.0.2:5000")), lane("10.0.0.2:5000", true));
        assert!("somewhere".parse::<LaneListenArg>().is_err());

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(&file, "lane-listen = \"off\"\n").unwrap();
        let from_file = NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        };
        assert_eq!(resolved(from_file), None);
        std::fs::write(&file, "lane-listen = \"nowhere\"\n").unwrap();
        assert!(
            NodeConfig::resolve(NodeArgs {
                config: Some(file),
                ..NodeArgs::default()
            })
            .is_err()
        );
    }

    #[test]
    fn the_zone_comes_from_the_flags_or_the_file_and_defaults_to_zone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        let (a, b) = (PeerId::random(), PeerId::random());
        std::fs::write(
            &file,
            format!(
                "serve-peers = \"any\"\nserve-peer = [\"{a}\"]\n\
                 upstream = [\"ghcr.io=https://ghcr.io\"]\n\
                 [credentials.\"ghcr.io\"]\nusername = \"u\"\npassword = \"p\"\n\
                 share-with = [\"{b}\"]\n"
            ),
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.serve_peers, ServePeers::Any);
        assert_eq!(config.serve_peer, vec![a]);
        let zone = config.peer_zone().unwrap();
        assert!(zone.is_credentialed("ghcr.io") && !zone.gossips_namespace("ghcr.io"));
        let flags = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            serve_peers: Some(ServePeers::Zone),
            serve_peer: vec![b],
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(flags.serve_peers, ServePeers::Zone);
        assert_eq!(flags.serve_peer, vec![b]);
        let defaults = NodeConfig::resolve(NodeArgs::default()).unwrap();
        assert_eq!(defaults.serve_peers, ServePeers::Zone);
        assert!(defaults.peer_zone().unwrap().is_closed());

        std::fs::write(
            &file,
            "upstream = [\"ghcr.io=https://ghcr.io\"]\n\
             [credentials.\"ghcr.io\"]\nusername = \"u\"\npassword = \"p\"\n\
             share-with = [\"not-a-peer\"]\n",
        )
        .unwrap();
        let error = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("not-a-peer"), "{error:#}");
    }
}
