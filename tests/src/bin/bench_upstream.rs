//! bench-upstream: pulling an image through Shoal from an upstream registry, cold (the node has
//! nothing yet) and warm (the node has it), against pulling it straight from that registry
//! with the same client, and against the same pulls through docker-registry's own pull-through
//! cache (its proxy mode), the reference a user would otherwise deploy.
//!
//! Method: one ~200 MB multi-layer image (incompressible, `--size-mb`) is pushed with skopeo
//! into a `docker-registry` as `library/bench:1`. Before any timing, curl and skopeo each pull
//! it once straight from the registry (checking every digest, and filling the page cache, so
//! that the registry reads cached files in every measured pull, through Shoal or not). Each
//! round then runs, for each client, five pulls in an order that rotates from round to round:
//!
//! - direct: the client pulls from the registry;
//! - cold: the client pulls from the gateway of a fresh `shoal node` (empty data directory,
//!   `--upstream docker.io=<registry>`, no peers), which fetches everything from the registry
//!   while it streams it to the client; afterwards the benchmark waits (untimed) until the node
//!   has stored the whole image;
//! - warm: the client pulls again from that node, which serves it from its store;
//! - proxy-cold and proxy-warm: the same two pulls through a fresh `docker-registry` whose
//!   config has `proxy: remoteurl: <registry>` (it streams what it lacks to the client while
//!   storing it, and serves it from its storage afterwards).
//!
//! The direct pull, the node's pair and the proxy's pair each run first, second and last over
//! three rounds. The node and the proxy are then stopped and their data removed; the next
//! client gets fresh ones.
//!
//! Clients: curl, one process fetching the manifest by tag and then every blob (config and
//! layers) in order over one keep-alive connection, into files; `skopeo copy
//! docker://... dir:...`; and containerd, `ctr content fetch` into a fresh containerd's content
//! store (what a runtime's pull downloads, before unpacking; three layers at a time). Wall
//! time of the client process; for curl also the sum over its
//! requests of the time to the first byte, where a node's wait before it goes to the upstream
//! shows. Every pull's manifest and blobs are hashed afterwards (untimed) and must match the
//! image's digests; the registry's access log must show every blob fetched by a cold pull and
//! none by a warm one. CPU seconds of the client (with containerd's daemon), the registry and
//! the cache (node or proxy) come from `/proc`, and the cache's peak RSS (`VmHWM`) is read after
//! its warm pull.
//!
//! Benchmarks print, they do not assert timings; the program fails only on wrong bytes.
//!
//! Run it with `--release` so that the release `shoal` binary is measured:
//!   cargo run --release -p shoal-tests --bin bench_upstream -- --rounds 3
//! See docs/benchmarks.md for recorded results and how to read them.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest as _, Sha256};
use shoal_tests::bench::{
    children_cpu_seconds, cpu_seconds, first_line_of, machine_description, median, peak_rss_bytes,
    sizes_mb,
};
use shoal_tests::clients::{Containerd, find_tool, wait_until};
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal_binary};
use shoal_tests::registry::{DockerRegistry, RegistryConfig, push_oci_layout};

const USAGE: &str = "\
usage: bench_upstream [--rounds N] [--size-mb N] [--seed N] [--clients LIST] [--keep]

Pushes an image into docker-registry and pulls it with curl, skopeo and containerd's ctr
straight from the registry (direct), through a fresh Shoal node whose upstream is that registry
(cold), and again from that node (warm), and the same two through a fresh docker-registry in
proxy mode (proxy-cold, proxy-warm), alternating in every round, all on 127.0.0.1; prints
medians and ratios.

  --rounds N    measured rounds, each with the five pulls per client
                (default 5)
  --size-mb N   approximate image size in MB (10^6 bytes), in layers of 20-60 MiB (default 200)
  --seed N      seed of the generated image (default 7)
  --clients L   comma-separated clients to run: curl, skopeo, ctr (default all three)
  --keep        keep the scratch directory (node data and logs) and print its path

Run with --release: the shoal binary measured is built with the benchmark's own profile
($SHOAL_BIN overrides it). RUST_LOG is passed to the nodes (default info).";

const REPO: &str = "library/bench";
const TAG: &str = "1";
/// Goals from the issue: a cold pull through Shoal takes at most 10 % longer than a direct
/// pull, and a warm pull is faster than a direct one.
const COLD_GOAL: f64 = 1.10;
const WARM_GOAL: f64 = 1.0;
/// Bound on the wait for a node to store the whole image after a cold pull (it syncs each
/// blob to disk after the client has read it).
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const MB: f64 = 1e6;
const MIB: f64 = 1024.0 * 1024.0;

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    size_mb: u64,
    seed: u64,
    clients: Vec<Client>,
    keep: bool,
}

fn parse_options() -> Result<Option<Options>> {
    let mut options = Options {
        rounds: 5,
        size_mb: 200,
        seed: 7,
        clients: Client::ALL.to_vec(),
        keep: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        match flag.as_str() {
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            "--keep" => {
                options.keep = true;
                continue;
            }
            _ => {}
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        if flag == "--clients" {
            options.clients = value
                .split(',')
                .map(|name| {
                    Client::ALL
                        .into_iter()
                        .find(|client| client.name() == name)
                        .with_context(|| format!("unknown client {name}\n{USAGE}"))
                })
                .collect::<Result<_>>()?;
            continue;
        }
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--rounds" => options.rounds = usize::try_from(number)?,
            "--size-mb" => options.size_mb = number,
            "--seed" => options.seed = number,
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        }
    }
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(
        !options.clients.is_empty(),
        "--clients needs at least one client"
    );
    ensure!(options.size_mb > 0, "--size-mb must be at least 1");
    Ok(Some(options))
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("bench_upstream: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let Some(options) = parse_options()? else {
        return Ok(());
    };
    for tool in ["curl", "skopeo", "containerd", "ctr", "docker-registry"] {
        ensure!(
            find_tool(tool).is_some(),
            "{tool} is not installed (see docs/real-clients.md)"
        );
    }
    let mut bench = Bench::set_up(options)?;
    bench.print_facts()?;
    bench.warm_up()?;
    let runs = bench.measure()?;
    bench.print_summary(&runs);
    if bench.options.keep {
        println!("kept {}", bench.scratch.keep().display());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Clients and modes

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Curl,
    Skopeo,
    Ctr,
}

impl Client {
    const ALL: [Client; 3] = [Self::Curl, Self::Skopeo, Self::Ctr];

    fn name(self) -> &'static str {
        match self {
            Self::Curl => "curl",
            Self::Skopeo => "skopeo",
            Self::Ctr => "ctr",
        }
    }
}

/// Where a pull puts the image; made before the clock starts.
enum Pulled {
    /// Files named as skopeo's `dir:` names them: `manifest.json` and each blob's hex digest.
    Dir(tempfile::TempDir),
    /// A containerd's content store.
    Containerd(Containerd),
}

impl Pulled {
    /// A fresh destination for `client`: a directory, or for ctr a fresh containerd.
    fn fresh(client: Client, scratch: &Path) -> Result<Pulled> {
        Ok(match client {
            Client::Curl | Client::Skopeo => {
                Self::Dir(tempfile::TempDir::with_prefix_in("pulled-", scratch)?)
            }
            Client::Ctr => Self::Containerd(Containerd::start()?),
        })
    }

    /// The daemon whose CPU counts as the client's: containerd does ctr's writing.
    fn daemon_pid(&self) -> Option<u32> {
        match self {
            Self::Dir(_) => None,
            Self::Containerd(containerd) => Some(containerd.pid()),
        }
    }

    fn manifest(&self, digest: &str) -> PathBuf {
        match self {
            Self::Dir(dir) => dir.path().join("manifest.json"),
            Self::Containerd(containerd) => {
                containerd.content_blob(digest.trim_start_matches("sha256:"))
            }
        }
    }

    fn blob(&self, blob: &Blob) -> PathBuf {
        match self {
            Self::Dir(dir) => dir.path().join(blob.hex()),
            Self::Containerd(containerd) => containerd.content_blob(blob.hex()),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From the registry itself.
    Direct,
    /// From a fresh node that fetches everything from the registry.
    Cold,
    /// From the node of the cold pull, which has the image.
    Warm,
    /// The reference cache: from a fresh docker-registry in proxy mode in front of the registry.
    ProxyCold,
    /// From the proxy of the proxy-cold pull, which has the image.
    ProxyWarm,
}

/// What served a pull besides the registry: nothing, a Shoal node, or docker-registry's proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cache {
    None,
    Node,
    Proxy,
}

impl Mode {
    const ALL: [Mode; 5] = [
        Self::Direct,
        Self::Cold,
        Self::Warm,
        Self::ProxyCold,
        Self::ProxyWarm,
    ];
    /// Orders of one round's pulls, used in turn so that the direct pull, the node's pair and
    /// the proxy's pair each run first, second and last (warm always right after its cold).
    const ORDERS: [[Mode; 5]; 3] = [
        [
            Self::Direct,
            Self::Cold,
            Self::Warm,
            Self::ProxyCold,
            Self::ProxyWarm,
        ],
        [
            Self::ProxyCold,
            Self::ProxyWarm,
            Self::Direct,
            Self::Cold,
            Self::Warm,
        ],
        [
            Self::Cold,
            Self::Warm,
            Self::ProxyCold,
            Self::ProxyWarm,
            Self::Direct,
        ],
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::Cold => "cold",
            Self::Warm => "warm",
            Self::ProxyCold => "proxy-cold",
            Self::ProxyWarm => "proxy-warm",
        }
    }

    fn cache(self) -> Cache {
        match self {
            Self::Direct => Cache::None,
            Self::Cold | Self::Warm => Cache::Node,
            Self::ProxyCold | Self::ProxyWarm => Cache::Proxy,
        }
    }

    /// A pull from a cache that has nothing yet (the first of its pair).
    fn is_cold(self) -> bool {
        matches!(self, Self::Cold | Self::ProxyCold)
    }
}

impl Cache {
    fn name(self) -> &'static str {
        match self {
            Self::None => "-",
            Self::Node => "node",
            Self::Proxy => "proxy",
        }
    }
}

/// One timed pull.
#[derive(Debug, Clone)]
struct Run {
    round: usize,
    client: Client,
    mode: Mode,
    bytes: u64,
    seconds: f64,
    /// curl only: the sum over its requests of the wait from request to first byte, which
    /// is where a node's delay before it goes to the upstream shows.
    first_bytes: Option<f64>,
    client_cpu: f64,
    registry_cpu: f64,
    /// CPU of the cache (node or proxy) the pull went through: from the start of the pull
    /// until a node had stored the image, so a cold pull's syncing and indexing after the
    /// client is done count too.
    cache_cpu: Option<f64>,
    /// After a cold pull: how long the node took, once the client was done, to store the image.
    settle_seconds: Option<f64>,
    /// Cold pulls: blob GETs the registry answered during the pull; one per blob of the image
    /// is one upstream copy.
    upstream_gets: Option<usize>,
    /// The cache's peak RSS (`VmHWM`) after its warm pull, which covers its cold one too.
    cache_peak_rss: Option<u64>,
}

impl Run {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.seconds
    }

    fn line(&self) -> String {
        let mut line = format!(
            "round {:<2} {:<6} {:<10} {:>6.1} MB in {:>6.3} s {:>5.0} MB/s",
            self.round,
            self.client.name(),
            self.mode.name(),
            self.bytes as f64 / MB,
            self.seconds,
            self.mb_per_s(),
        );
        if let Some(first_bytes) = self.first_bytes {
            let _ = write!(line, "  first bytes {first_bytes:.3} s");
        }
        let _ = write!(
            line,
            "  CPU s: client {:>4.2} registry {:>4.2}",
            self.client_cpu, self.registry_cpu
        );
        if let Some(cache_cpu) = self.cache_cpu {
            let _ = write!(line, " {} {cache_cpu:>4.2}", self.mode.cache().name());
        }
        if let Some(gets) = self.upstream_gets {
            let _ = write!(line, "  upstream blob GETs {gets}");
        }
        if let Some(settle) = self.settle_seconds {
            let _ = write!(line, "  stored {settle:.3} s after");
        }
        if let Some(rss) = self.cache_peak_rss {
            let cache = self.mode.cache().name();
            let _ = write!(line, "  {cache} peak RSS {:.0} MiB", rss as f64 / MIB);
        }
        line
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

#[derive(Debug)]
struct Bench {
    options: Options,
    // Declared before the temp dir holding its data, so it stops first.
    registry: DockerRegistry,
    registry_pid: u32,
    image: GeneratedImage,
    /// The config and every layer: what a pull fetches besides the manifest.
    blobs: Vec<Blob>,
    scratch: tempfile::TempDir,
    /// Numbers the nodes' data directories.
    nodes_started: usize,
}

impl Bench {
    fn set_up(options: Options) -> Result<Bench> {
        let scratch = tempfile::TempDir::with_prefix("shoal-bench-upstream-")?;
        let started = Instant::now();
        let image = ImageSpec::sized(options.seed, options.size_mb * 1_000_000)
            .gzip(GzipLevel::Store)
            .write_oci_layout(&scratch.path().join("layout"), Some(TAG))?;
        let platform = image.platforms.first().context("image without platform")?;
        let mut blobs = vec![platform.config.clone()];
        blobs.extend(platform.layers.iter().map(|layer| layer.blob.clone()));
        eprintln!(
            "generated a {:.1} MB image in {:.1} s",
            image.total_bytes as f64 / MB,
            started.elapsed().as_secs_f64()
        );

        let started = Instant::now();
        let registry = DockerRegistry::start()?;
        let pushed = push_oci_layout(&image.path, &registry, &format!("{REPO}:{TAG}"))?;
        ensure!(
            pushed == image.manifest_digest,
            "docker-registry stored manifest {pushed}, expected {}",
            image.manifest_digest
        );
        let registry_pid = registry.pid();
        eprintln!(
            "pushed to docker-registry in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        // Builds the shoal binary now (a no-op when it is current), not inside a round.
        let started = Instant::now();
        let binary = shoal_binary()?;
        eprintln!(
            "shoal binary {} ready in {:.1} s",
            binary.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(Bench {
            options,
            registry,
            registry_pid,
            image,
            blobs,
            scratch,
            nodes_started: 0,
        })
    }

    /// Config and layers: the bytes a pull moves besides the manifest.
    fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|blob| blob.size).sum()
    }

    /// What every pull moves: the manifest and every blob.
    fn pull_bytes(&self) -> u64 {
        self.blob_bytes() + self.image.manifest_size
    }

    fn print_facts(&self) -> Result<()> {
        let curl = first_line_of(Command::new("curl").arg("--version"))?;
        let curl = curl.split(" (").next().unwrap_or_default();
        println!("bench_upstream: pulls through Shoal from an upstream, against direct pulls");
        println!("machine: {}", machine_description());
        println!(
            "clients: {curl}; {}; {}",
            first_line_of(Command::new("skopeo").arg("--version"))?,
            first_line_of(Command::new("ctr").arg("--version"))?
        );
        println!(
            "upstream: {} at {}; shoal {}",
            first_line_of(Command::new("docker-registry").arg("--version"))?,
            self.registry.url(),
            shoal_binary()?.display()
        );
        println!(
            "image: {REPO}:{TAG}, {:.1} MB in a manifest and {} blobs (config + layers of {} MB)",
            self.pull_bytes() as f64 / MB,
            self.blobs.len(),
            sizes_mb(&self.blobs[1..]),
        );
        println!(
            "{} rounds; per round and client: direct, cold (fresh node), warm (same node), \
             proxy-cold (fresh docker-registry in proxy mode), proxy-warm (same proxy), in \
             rotating order; curl fetches the manifest and every blob over one connection into \
             files, skopeo copies to dir:, ctr content fetch into a fresh containerd",
            self.options.rounds
        );
        println!(
            "MB = 10^6 bytes; CPU = user+system seconds of the client (ctr: with its \
             containerd), the registry and the cache (node or proxy) processes"
        );
        Ok(())
    }

    /// One direct pull with each client, untimed: checks what the registry serves and fills
    /// the page cache with its files.
    fn warm_up(&self) -> Result<()> {
        let started = Instant::now();
        for &client in &self.options.clients {
            self.pull(client, &self.registry.host(), "docker-registry")?;
        }
        eprintln!(
            "warm-up: one checked pull from docker-registry with each client in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Measured rounds

    fn measure(&mut self) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for round in 1..=self.options.rounds {
            for client in self.options.clients.clone() {
                let order = Mode::ORDERS[(round - 1) % Mode::ORDERS.len()];
                runs.extend(self.round(round, client, order)?);
            }
        }
        Ok(runs)
    }

    /// One client's pulls in `order`: direct, and cold then warm through a fresh node and
    /// through a fresh docker-registry proxy.
    fn round(&mut self, round: usize, client: Client, order: [Mode; 5]) -> Result<Vec<Run>> {
        self.nodes_started += 1;
        let data = self
            .scratch
            .path()
            .join(format!("node-{}", self.nodes_started));
        let upstream = format!("docker.io={}", self.registry.url());
        let mut node = ShoalNode::start(&data, &["--upstream", &upstream])?;
        let node_pid = node.pid().context("shoal node not running")?;
        let proxy = DockerRegistry::start_with(RegistryConfig {
            proxy_of: Some(self.registry.url()),
            ..RegistryConfig::default()
        })?;
        let mut runs = Vec::new();
        for mode in order {
            let (host, cache_pid) = match mode.cache() {
                Cache::None => (self.registry.host(), None),
                Cache::Node => (node.gateway().to_string(), Some(node_pid)),
                Cache::Proxy => (proxy.host(), Some(proxy.pid())),
            };
            let pulled = Pulled::fresh(client, self.scratch.path())?;
            let daemon_cpu = || pulled.daemon_pid().map_or(Ok(0.0), cpu_seconds);
            let cache_cpu_now = || cache_pid.map(cpu_seconds).transpose();
            let fetched_before = self.upstream_blob_gets()?;
            let cache_before = cache_cpu_now()?;
            let registry_before = cpu_seconds(self.registry_pid)?;
            let client_before = children_cpu_seconds()? + daemon_cpu()?;
            let started = Instant::now();
            let first_bytes = self.pull_timed(client, &host, &pulled)?;
            let seconds = started.elapsed().as_secs_f64();
            let client_cpu = children_cpu_seconds()? + daemon_cpu()? - client_before;
            let registry_cpu = cpu_seconds(self.registry_pid)? - registry_before;
            let settle_seconds = match mode {
                Mode::Cold => {
                    let settling = Instant::now();
                    self.wait_stored(&node)?;
                    Some(settling.elapsed().as_secs_f64())
                }
                _ => None,
            };
            let cache_cpu = cache_cpu_now()?
                .zip(cache_before)
                .map(|(after, before)| after - before);
            let what = format!("{} {}", client.name(), mode.name());
            self.check_pulled(&pulled, &what)?;
            let fetched: Vec<usize> = (self.upstream_blob_gets()?.iter())
                .zip(&fetched_before)
                .map(|(after, before)| after - before)
                .collect();
            check_fetched(mode, &what, &fetched)?;
            let run = Run {
                round,
                client,
                mode,
                bytes: self.pull_bytes(),
                seconds,
                first_bytes,
                client_cpu,
                registry_cpu,
                cache_cpu,
                settle_seconds,
                upstream_gets: mode.is_cold().then(|| fetched.iter().sum()),
                cache_peak_rss: cache_pid
                    .filter(|_| !mode.is_cold())
                    .map(peak_rss_bytes)
                    .transpose()?,
            };
            println!("{}", run.line());
            runs.push(run);
        }
        node.stop()?;
        if !self.options.keep {
            std::fs::remove_dir_all(&data)?;
        }
        Ok(runs)
    }

    /// How many times each of the image's blobs was fetched from the registry so far.
    fn upstream_blob_gets(&self) -> Result<Vec<usize>> {
        let counts = self.registry.blob_get_counts()?;
        Ok(self
            .blobs
            .iter()
            .map(|blob| counts.get(&blob.digest).copied().unwrap_or(0))
            .collect())
    }

    /// Waits until the node has stored the manifest and every blob and runs no transfer.
    fn wait_stored(&self, node: &ShoalNode) -> Result<()> {
        let blobs = self.image.blobs.len() as u64;
        wait_until("the node to store the image", SETTLE_TIMEOUT, || {
            let status = node.status()?;
            let stored = status["store"]["blobs"].as_u64().unwrap_or(0);
            let transfers = status["transfers"].as_array().map_or(0, Vec::len);
            Ok(stored >= blobs && transfers == 0)
        })
    }

    /// An untimed, checked pull (for the warm-up).
    fn pull(&self, client: Client, host: &str, server: &str) -> Result<()> {
        let pulled = Pulled::fresh(client, self.scratch.path())?;
        self.pull_timed(client, host, &pulled)?;
        self.check_pulled(&pulled, server)
    }

    /// Pulls the image from `host` with `client` into `pulled`; returns curl's total wait for
    /// first bytes.
    fn pull_timed(&self, client: Client, host: &str, pulled: &Pulled) -> Result<Option<f64>> {
        match (client, pulled) {
            (Client::Curl, Pulled::Dir(dest)) => Ok(Some(self.curl_pull(host, dest.path())?)),
            (Client::Skopeo, Pulled::Dir(dest)) => skopeo_copy(host, dest.path()).map(|()| None),
            (Client::Ctr, Pulled::Containerd(containerd)) => {
                ctr_fetch(containerd, host).map(|()| None)
            }
            _ => bail!("{} cannot pull into this destination", client.name()),
        }
    }

    /// One curl process GETs the manifest by tag and then every blob, over one keep-alive
    /// connection, into files named like skopeo's `dir:` output. Checks statuses and sizes;
    /// returns the sum over the requests of the time from sending each to its first byte.
    fn curl_pull(&self, host: &str, dest: &Path) -> Result<f64> {
        let mut command = Command::new("curl");
        command.args(["--silent", "--show-error", "--noproxy", "*"]);
        command.args([
            "--write-out",
            "%{http_code} %{size_download} %{time_starttransfer}\\n",
        ]);
        command.args([
            "--header",
            &format!("Accept: {}", self.image.manifest_media_type),
        ]);
        command.arg("--output").arg(dest.join("manifest.json"));
        command.arg(format!("http://{host}/v2/{REPO}/manifests/{TAG}"));
        for blob in &self.blobs {
            command.arg("--output").arg(dest.join(blob.hex()));
            command.arg(format!("http://{host}/v2/{REPO}/blobs/{}", blob.digest));
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl from {host} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let expected: Vec<String> = std::iter::once(self.image.manifest_size)
            .chain(self.blobs.iter().map(|blob| blob.size))
            .map(|size| format!("200 {size}"))
            .collect();
        let mut got = Vec::new();
        let mut first_bytes = 0.0;
        for line in stdout.lines() {
            let (transfer, seconds) = line.rsplit_once(' ').context("short curl report")?;
            got.push(transfer);
            first_bytes += seconds.parse::<f64>()?;
        }
        ensure!(
            got == expected,
            "curl from {host} reported {got:?}, expected {expected:?}"
        );
        Ok(first_bytes)
    }

    /// Checks that the pull left the image's manifest and every blob, byte for byte.
    fn check_pulled(&self, pulled: &Pulled, what: &str) -> Result<()> {
        let manifest = std::fs::read(pulled.manifest(&self.image.manifest_digest))
            .with_context(|| format!("{what}: no manifest was written"))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        ensure!(
            digest == self.image.manifest_digest,
            "{what}: got manifest {digest}, expected {}",
            self.image.manifest_digest
        );
        for blob in &self.blobs {
            let (digest, size) = file_digest(&pulled.blob(blob))?;
            ensure!(
                (digest.as_str(), size) == (blob.digest.as_str(), blob.size),
                "{what}: got {size} bytes hashing to {digest} for {}, expected {} bytes",
                blob.digest,
                blob.size
            );
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Summary

    fn print_summary(&self, runs: &[Run]) {
        println!();
        println!(
            "summary: medians of {} rounds, {:.1} MB per pull",
            self.options.rounds,
            self.pull_bytes() as f64 / MB
        );
        println!(
            "{:<7} {:<10} {:>8} {:>6} {:>14} {:>13} {:>15} {:>12} {:>17}",
            "client",
            "pull",
            "seconds",
            "MB/s",
            "first bytes s",
            "client CPU s",
            "registry CPU s",
            "cache CPU s",
            "stored after (s)"
        );
        for &client in &self.options.clients {
            for mode in Mode::ALL {
                let selected = select(runs, client, mode);
                let figure = |value: fn(&Run) -> Option<f64>, width: usize, precision: usize| {
                    median(selected.iter().filter_map(|run| value(run))).map_or_else(
                        || format!("{:>width$}", "-"),
                        |value| format!("{value:>width$.precision$}"),
                    )
                };
                println!(
                    "{:<7} {:<10} {} {} {} {} {} {} {}",
                    client.name(),
                    mode.name(),
                    figure(|run| Some(run.seconds), 8, 3),
                    figure(|run| Some(run.mb_per_s()), 6, 0),
                    figure(|run| run.first_bytes, 14, 3),
                    figure(|run| Some(run.client_cpu), 13, 2),
                    figure(|run| Some(run.registry_cpu), 15, 2),
                    figure(|run| run.cache_cpu, 12, 2),
                    figure(|run| run.settle_seconds, 17, 3),
                );
            }
        }
        for cache in [Cache::Node, Cache::Proxy] {
            let peaks: Vec<u64> = (runs.iter())
                .filter(|run| run.mode.cache() == cache)
                .filter_map(|run| run.cache_peak_rss)
                .collect();
            if let (Some(low), Some(high)) = (peaks.iter().min(), peaks.iter().max()) {
                println!(
                    "{} peak RSS (VmHWM after cold + warm): {:.0}-{:.0} MiB over {} runs",
                    cache.name(),
                    *low as f64 / MIB,
                    *high as f64 / MIB,
                    peaks.len()
                );
            }
        }

        println!();
        println!("ratios of median seconds (lower is faster):");
        for &client in &self.options.clients {
            let seconds = |mode| median(select(runs, client, mode).iter().map(|run| run.seconds));
            let ratio = |of: Mode, to: Mode| Some(seconds(of)? / seconds(to)?);
            let name = client.name();
            if let Some(cold) = ratio(Mode::Cold, Mode::Direct) {
                let met = hundredths(cold) <= hundredths(COLD_GOAL);
                let goal = format!("goal <= {COLD_GOAL:.2}x {}", verdict(met));
                print_ratio(name, Mode::Cold, Mode::Direct, cold, &goal);
            }
            if let Some(warm) = ratio(Mode::Warm, Mode::Direct) {
                let met = hundredths(warm) < hundredths(WARM_GOAL);
                let goal = format!("goal <  {WARM_GOAL:.2}x {}", verdict(met));
                print_ratio(name, Mode::Warm, Mode::Direct, warm, &goal);
            }
            let references = [
                (
                    Mode::ProxyCold,
                    Mode::Direct,
                    "docker-registry's pull-through cache",
                ),
                (
                    Mode::ProxyWarm,
                    Mode::Direct,
                    "docker-registry's pull-through cache",
                ),
                (Mode::Cold, Mode::ProxyCold, "Shoal against that cache"),
                (Mode::Warm, Mode::ProxyWarm, "Shoal against that cache"),
            ];
            for (of, to, what) in references {
                if let Some(ratio) = ratio(of, to) {
                    print_ratio(name, of, to, ratio, &format!("({what})"));
                }
            }
        }
    }
}

/// A cold pull must have fetched every blob from the upstream (`fetched`: GETs per blob during
/// the pull), a warm one none.
fn check_fetched(mode: Mode, what: &str, fetched: &[usize]) -> Result<()> {
    if mode.is_cold() {
        ensure!(
            fetched.iter().all(|gets| *gets > 0),
            "{what}: not every blob came from the upstream (GETs per blob {fetched:?})"
        );
    } else if mode.cache() != Cache::None {
        ensure!(
            fetched.iter().all(|gets| *gets == 0),
            "{what}: blobs came from the upstream (GETs per blob {fetched:?})"
        );
    }
    Ok(())
}

/// One line of the ratios: `client`'s median seconds of `of` pulls over those of `to` pulls.
fn print_ratio(client: &str, of: Mode, to: Mode, ratio: f64, note: &str) {
    let pulls = format!("{} / {}", of.name(), to.name());
    println!("{client:<6} {pulls:<22} {ratio:>5.2}x  {note}");
}

fn select(runs: &[Run], client: Client, mode: Mode) -> Vec<&Run> {
    runs.iter()
        .filter(|run| run.client == client && run.mode == mode)
        .collect()
}

/// A ratio in hundredths, as printed: verdicts judge the printed figure, since one that
/// contradicted it would only report noise below the benchmark's resolution.
fn hundredths(ratio: f64) -> i64 {
    (ratio * 100.0).round() as i64
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "NOT met" }
}

/// `skopeo copy` of the image into `dest` (a `dir:` destination); skopeo checks every digest
/// as it copies.
fn skopeo_copy(host: &str, dest: &Path) -> Result<()> {
    run_client(
        Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{host}/{REPO}:{TAG}"))
            .arg(format!("dir:{}", dest.display())),
        &format!("skopeo copy from {host}"),
    )
}

/// `ctr content fetch` of the image into `containerd`'s content store; containerd checks every
/// digest as it writes.
fn ctr_fetch(containerd: &Containerd, host: &str) -> Result<()> {
    run_client(
        containerd
            .ctr()
            .args(["content", "fetch", "--plain-http"])
            .arg(format!("{host}/{REPO}:{TAG}")),
        &format!("ctr content fetch from {host}"),
    )
}

/// Runs a timed client to its end (waiting on it directly, not polling, so that its wall time
/// is exact); an error quotes its stderr.
fn run_client(command: &mut Command, what: &str) -> Result<()> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    ensure!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The `sha256:` digest and length of a file, streamed.
fn file_digest(path: &Path) -> Result<(String, u64)> {
    let mut file =
        std::fs::File::open(path).with_context(|| format!("no file {}", path.display()))?;
    Ok(shoal_tests::http::sha256_of(&mut file)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_pulls_must_fetch_every_blob_and_warm_ones_none() {
        for cold in [Mode::Cold, Mode::ProxyCold] {
            assert!(check_fetched(cold, "cold", &[1, 2, 1]).is_ok());
            let error = check_fetched(cold, "cold", &[1, 0, 1]).unwrap_err();
            assert!(error.to_string().contains("not every blob"), "{error}");
        }
        for warm in [Mode::Warm, Mode::ProxyWarm] {
            assert!(check_fetched(warm, "warm", &[0, 0, 0]).is_ok());
            let error = check_fetched(warm, "warm", &[0, 1, 0]).unwrap_err();
            assert!(
                error.to_string().contains("came from the upstream"),
                "{error}"
            );
        }
        assert!(check_fetched(Mode::Direct, "direct", &[1, 1, 1]).is_ok());
    }

    #[test]
    fn each_group_of_pulls_runs_first_second_and_last_and_warm_follows_cold() {
        for order in Mode::ORDERS {
            for (cold, warm) in [(Mode::Cold, Mode::Warm), (Mode::ProxyCold, Mode::ProxyWarm)] {
                let at = |mode| order.iter().position(|m| *m == mode).unwrap();
                assert_eq!(at(warm), at(cold) + 1, "{order:?}");
            }
        }
        let firsts: Vec<Cache> = Mode::ORDERS.iter().map(|order| order[0].cache()).collect();
        let lasts: Vec<Cache> = Mode::ORDERS.iter().map(|order| order[4].cache()).collect();
        for cache in [Cache::None, Cache::Node, Cache::Proxy] {
            assert_eq!(
                firsts.iter().filter(|c| **c == cache).count(),
                1,
                "{firsts:?}"
            );
            assert_eq!(
                lasts.iter().filter(|c| **c == cache).count(),
                1,
                "{lasts:?}"
            );
        }
    }
}
