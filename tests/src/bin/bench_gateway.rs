//! bench-gateway: how fast the Shoal gateway serves a cached image, against docker-registry
//! serving the same image to the same clients, and against the loopback ceiling.
//!
//! Method: one ~200 MB multi-layer image (incompressible, `--size-mib`) is written as an OCI
//! layout, imported into a `shoal node` and pushed with skopeo into a `docker-registry`, so both
//! serve identical blobs and manifest. Two minimal file servers serve the layout's blob files as
//! references: one with sendfile(2), one with read(2)/write(2) through a 1 MiB buffer. After a
//! warm-up that checks every blob's sha256 from every server (and fills the page cache), each
//! round runs two clients against each server in turn, the order rotating from round to round
//! so that none is always first:
//!
//! - curl: one `curl` process fetching every blob (config and layers) of the image once, in
//!   order, over one keep-alive connection, to /dev/null; wall time of the process;
//! - skopeo: `skopeo copy docker://... dir:...` of the whole image into a fresh directory (the
//!   registries only: the file servers are no registries); wall time of the process.
//!
//! Over TLS, a second `shoal node` serves the same image with a certificate from a throwaway
//! CA (`--gateway-tls-cert`), and a second `docker-registry` with the same certificate
//! (`http.tls` in its config.yml); curl trusts the CA (`--cacert`) and is measured against both
//! with its default negotiation (HTTP/2 by ALPN, as both servers offer it) and with
//! `--http1.1` (skopeo is not run against them). The summary adds the TLS ratios: Shoal over
//! TLS against docker-registry over TLS, and against Shoal over plain HTTP.
//!
//! The summary gives per-server medians and their ratios. Benchmarks print, they do not assert
//! timings; the program fails only when a server returned wrong bytes.
//!
//! `--compare NAME=PATH` adds another `shoal` binary (say, the build before a change) serving the
//! same image in the same rounds, so an optimisation gets its before/after figures from one run.
//!
//! Run it with `--release` so that the release `shoal` binary is measured:
//!   cargo run --release -p shoal-tests --bin bench_gateway -- --rounds 5
//! See docs/benchmarks.md for recorded results and how to read them.

use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sha2::{Digest as _, Sha256};
use shoal_tests::bench::{
    children_cpu_seconds, cpu_seconds, first_line_of, machine_description, median, sizes_mb,
};
use shoal_tests::clients::find_tool;
use shoal_tests::http;
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::ShoalNode;
use shoal_tests::registry::RegistryConfig;
use shoal_tests::registry::{DockerRegistry, push_oci_layout};
use shoal_tests::sendfile_server::{SendfileServer, Transfer};
use shoal_tests::tls::{TestCa, Validity};

const USAGE: &str = "\
usage: bench_gateway [--rounds N] [--size-mib N] [--seed N] [--copy-buffer-kib N]
                     [--compare NAME=PATH]...

Serves the same image from the Shoal gateway and docker-registry, and its blobs from two minimal
file servers (sendfile(2), and read(2)/write(2) through a buffer), all on 127.0.0.1, and prints
what curl and skopeo pull from each, with medians and ratios.

  --rounds N            measured rounds, each pulling from every server in turn (default 5)
  --size-mib N          approximate image size in MiB, in layers of 20-60 MiB (default 200)
  --seed N              seed of the generated image (default 7)
  --copy-buffer-kib N   buffer of the read/write server, in KiB (default 1024)
  --compare NAME=PATH   also serve the image from the shoal binary at PATH, reported as NAME
                        (repeatable): before/after figures of a change from one run

Run with --release: the shoal binary measured is built with the benchmark's own profile
($SHOAL_BIN overrides it).";

const REPO: &str = "bench/gateway";
const TAG: &str = "v1";
/// Goals from the performance brief: at least docker-registry's speed with every client, and
/// 1.5x it with curl.
const GOAL_RATIO: f64 = 1.0;
const CURL_AIM_RATIO: f64 = 1.5;
/// The goal over TLS (issue 14): Shoal's TLS gateway at 1.2x docker-registry's TLS.
const TLS_GOAL_RATIO: f64 = 1.2;
/// How long a compared shoal node may take to print its `ready` line.
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);
const MB: f64 = 1e6;

#[derive(Debug, Clone)]
struct Options {
    rounds: usize,
    size_mib: u64,
    seed: u64,
    copy_buffer_kib: u64,
    /// Other shoal binaries to serve the image too: (name, path).
    compare: Vec<(String, PathBuf)>,
}

fn parse_options() -> Result<Option<Options>> {
    let mut options = Options {
        rounds: 5,
        size_mib: 200,
        seed: 7,
        copy_buffer_kib: 1024,
        compare: Vec::new(),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") && flag != "--compare" => {
                (flag.to_owned(), Some(value.to_owned()))
            }
            _ => (arg.clone(), None),
        };
        if flag == "--help" || flag == "-h" {
            println!("{USAGE}");
            return Ok(None);
        }
        let value = match inline {
            Some(value) => value,
            None => args
                .next()
                .with_context(|| format!("{flag} needs a value\n{USAGE}"))?,
        };
        if flag == "--compare" {
            let (name, path) = value
                .split_once('=')
                .with_context(|| format!("--compare {value}: expected NAME=PATH"))?;
            ensure!(
                !name.is_empty() && !["shoal", "docker-registry"].contains(&name),
                "--compare {value}: pick another name"
            );
            options.compare.push((name.to_owned(), PathBuf::from(path)));
            continue;
        }
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--rounds" => options.rounds = usize::try_from(number)?,
            "--size-mib" => options.size_mib = number,
            "--seed" => options.seed = number,
            "--copy-buffer-kib" => options.copy_buffer_kib = number,
            _ => bail!("unknown argument {arg}\n{USAGE}"),
        }
    }
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.size_mib > 0, "--size-mib must be at least 1");
    ensure!(
        options.copy_buffer_kib > 0,
        "--copy-buffer-kib must be at least 1"
    );
    Ok(Some(options))
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bench_gateway: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let Some(options) = parse_options()? else {
        return Ok(ExitCode::SUCCESS);
    };
    for tool in ["curl", "skopeo", "docker-registry"] {
        ensure!(
            find_tool(tool).is_some(),
            "{tool} is not installed (see docs/real-clients.md)"
        );
    }
    let bench = Bench::set_up(options)?;
    bench.print_facts()?;
    bench.warm_up()?;
    let runs = bench.measure()?;
    bench.print_summary(&runs);
    Ok(ExitCode::SUCCESS)
}

// ---------------------------------------------------------------------------------------------
// Servers and clients

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The shoal binary under test.
    Shoal,
    Registry,
    Sendfile,
    ReadWrite,
    /// A `--compare` shoal binary.
    Compared,
    /// The shoal binary under test, its gateway over TLS.
    ShoalTls,
    /// docker-registry over TLS.
    RegistryTls,
}

#[derive(Debug)]
struct Server {
    name: String,
    role: Role,
    /// `127.0.0.1:<port>`.
    host: String,
    /// The process whose CPU time is charged to this server.
    pid: u32,
}

impl Server {
    fn is_registry(&self) -> bool {
        matches!(
            self.role,
            Role::Shoal | Role::Registry | Role::Compared | Role::ShoalTls | Role::RegistryTls
        )
    }

    fn is_tls(&self) -> bool {
        matches!(self.role, Role::ShoalTls | Role::RegistryTls)
    }

    fn blob_url(&self, digest: &str) -> String {
        format!("{}/v2/{REPO}/blobs/{digest}", self.base_url())
    }

    fn base_url(&self) -> String {
        let scheme = if self.is_tls() { "https" } else { "http" };
        format!("{scheme}://{}", self.host)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    Curl,
    /// curl with `--http1.1`, against the TLS servers only (plain HTTP is HTTP/1.1 anyway).
    CurlHttp11,
    Skopeo,
}

impl Client {
    const ALL: [Client; 3] = [Self::Curl, Self::CurlHttp11, Self::Skopeo];

    fn name(self) -> &'static str {
        match self {
            Self::Curl => "curl",
            Self::CurlHttp11 => "curl-h1",
            Self::Skopeo => "skopeo",
        }
    }

    fn pulls_from(self, server: &Server) -> bool {
        match self {
            Self::Curl => true,
            Self::CurlHttp11 => server.is_tls(),
            Self::Skopeo => server.is_registry() && !server.is_tls(),
        }
    }
}

/// Another `shoal` binary running a node on its own data directory, killed by PID on drop.
#[derive(Debug)]
struct ComparedNode {
    child: Child,
    gateway: SocketAddr,
}

impl ComparedNode {
    /// Starts `binary node` on `data` and imports the layout at `layout` as `repo_and_tag`.
    fn start(binary: &Path, data: &Path, layout: &Path, repo_and_tag: &str) -> Result<Self> {
        std::fs::create_dir_all(data)?;
        let log = std::fs::File::create(data.with_extension("log"))?;
        let mut child = Command::new(binary)
            .args(["node", "--gateway", "127.0.0.1:0", "--data"])
            .arg(data)
            // The same log level as `ShoalNode::start` gives the node under test.
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {} node", binary.display()))?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (ready, ready_line) = mpsc::channel();
        // Keeps draining stdout after the ready line, so the node never writes to a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = ready.send(line);
                }
            }
        });
        let mut node = ComparedNode {
            child,
            gateway: ([127, 0, 0, 1], 0).into(),
        };
        let line = ready_line
            .recv_timeout(NODE_START_TIMEOUT)
            .with_context(|| format!("{} node did not become ready", binary.display()))?;
        node.gateway = line
            .split_whitespace()
            .find_map(|field| field.strip_prefix("gateway="))
            .context("ready line without gateway=")?
            .parse()?;
        let output = Command::new(binary)
            .arg("import")
            .arg("--data")
            .arg(data)
            .arg(layout)
            .args(["--tag", repo_and_tag])
            .output()?;
        ensure!(
            output.status.success(),
            "{} import failed: {}",
            binary.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(node)
    }
}

impl Drop for ComparedNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// Set-up

#[derive(Debug)]
struct Bench {
    options: Options,
    // Fields drop in declaration order: servers stop before the temp dir holding their data goes.
    _node: ShoalNode,
    _tls_node: ShoalNode,
    _compared: Vec<ComparedNode>,
    _registry: DockerRegistry,
    _tls_registry: DockerRegistry,
    /// The CA the TLS servers' certificate comes from, which curl trusts.
    ca: TestCa,
    _file_servers: Vec<SendfileServer>,
    servers: Vec<Server>,
    image: GeneratedImage,
    /// What curl fetches: the config and every layer.
    blobs: Vec<Blob>,
    scratch: tempfile::TempDir,
}

impl Bench {
    fn set_up(options: Options) -> Result<Bench> {
        let scratch = tempfile::TempDir::with_prefix("shoal-bench-gateway-")?;
        let started = Instant::now();
        let image = ImageSpec::sized(options.seed, options.size_mib << 20)
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
        let repo_and_tag = format!("{REPO}:{TAG}");

        let started = Instant::now();
        let node = ShoalNode::start(&scratch.path().join("node"), &[])?;
        node.import_ok(&image.path, Some(&repo_and_tag))?;
        let mut servers = vec![Server {
            name: "shoal".into(),
            role: Role::Shoal,
            host: node.gateway().to_string(),
            pid: node.pid().context("shoal node not running")?,
        }];
        let mut compared = Vec::new();
        for (index, (name, binary)) in options.compare.iter().enumerate() {
            let data = scratch.path().join(format!("compared-{index}"));
            let other = ComparedNode::start(binary, &data, &image.path, &repo_and_tag)?;
            servers.push(Server {
                name: name.clone(),
                role: Role::Compared,
                host: other.gateway.to_string(),
                pid: other.child.id(),
            });
            compared.push(other);
        }
        eprintln!(
            "imported into {} shoal node(s) in {:.1} s",
            1 + compared.len(),
            started.elapsed().as_secs_f64()
        );

        let started = Instant::now();
        let registry = DockerRegistry::start()?;
        let pushed = push_oci_layout(&image.path, &registry, &repo_and_tag)?;
        ensure!(
            pushed == image.manifest_digest,
            "docker-registry stored manifest {pushed}, expected {}",
            image.manifest_digest
        );
        servers.push(Server {
            name: "docker-registry".into(),
            role: Role::Registry,
            host: registry.host(),
            pid: registry.pid(),
        });
        eprintln!(
            "pushed to docker-registry in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let started = Instant::now();
        let ca = TestCa::new()?;
        let cert = ca.issue(&["127.0.0.1"], Validity::Current)?;
        let (cert_path, key_path) = (cert.cert_pem_path.to_str(), cert.key_pem_path.to_str());
        let tls_node = ShoalNode::start(
            &scratch.path().join("node-tls"),
            &[
                "--gateway-tls-cert",
                cert_path.context("certificate path")?,
                "--gateway-tls-key",
                key_path.context("key path")?,
            ],
        )?;
        tls_node.import_ok(&image.path, Some(&repo_and_tag))?;
        servers.push(Server {
            name: "shoal-tls".into(),
            role: Role::ShoalTls,
            host: tls_node.gateway().to_string(),
            pid: tls_node.pid().context("shoal node not running")?,
        });
        let tls_registry = DockerRegistry::start_with(RegistryConfig {
            tls: Some((cert.cert_pem_path.clone(), cert.key_pem_path.clone())),
            ..RegistryConfig::default()
        })?;
        let pushed = push_oci_layout(&image.path, &tls_registry, &repo_and_tag)?;
        ensure!(
            pushed == image.manifest_digest,
            "docker-registry over TLS stored manifest {pushed}, expected {}",
            image.manifest_digest
        );
        servers.push(Server {
            name: "docker-registry-tls".into(),
            role: Role::RegistryTls,
            host: tls_registry.host(),
            pid: tls_registry.pid(),
        });
        eprintln!(
            "started the TLS node and registry in {:.1} s",
            started.elapsed().as_secs_f64()
        );

        let blob_dir = image.path.join("blobs").join("sha256");
        let copy_buffer = usize::try_from(options.copy_buffer_kib << 10)?;
        let mut file_servers = Vec::new();
        for (name, role, transfer) in [
            ("sendfile", Role::Sendfile, Transfer::Sendfile),
            (
                "read/write",
                Role::ReadWrite,
                Transfer::ReadWrite(copy_buffer),
            ),
        ] {
            let server = SendfileServer::start_with(&blob_dir, transfer)?;
            servers.push(Server {
                name: name.into(),
                role,
                host: server.addr().to_string(),
                // The file servers are threads of this process.
                pid: std::process::id(),
            });
            file_servers.push(server);
        }
        Ok(Bench {
            options,
            _node: node,
            _tls_node: tls_node,
            _compared: compared,
            _registry: registry,
            _tls_registry: tls_registry,
            ca,
            _file_servers: file_servers,
            servers,
            image,
            blobs,
            scratch,
        })
    }

    fn blob_bytes(&self) -> u64 {
        self.blobs.iter().map(|blob| blob.size).sum()
    }

    fn print_facts(&self) -> Result<()> {
        let curl = first_line_of(Command::new("curl").arg("--version"))?;
        let curl = curl.split(" (").next().unwrap_or_default();
        println!("bench_gateway: the Shoal gateway against docker-registry and minimal servers");
        println!("machine: {}", machine_description());
        println!(
            "clients: {curl}; {}",
            first_line_of(Command::new("skopeo").arg("--version"))?
        );
        println!(
            "servers: shoal {}; {}; sendfile(2) and read(2)/write(2) with a {} KiB buffer, \
             one thread per connection",
            std::env::var("SHOAL_BIN").unwrap_or_default(),
            first_line_of(Command::new("docker-registry").arg("--version"))?,
            self.options.copy_buffer_kib
        );
        for (name, path) in &self.options.compare {
            println!("compared: {name} = {}", path.display());
        }
        println!(
            "image: {:.1} MB in {} blobs (config + layers of {} MB)",
            self.blob_bytes() as f64 / MB,
            self.blobs.len(),
            sizes_mb(&self.blobs[1..]),
        );
        println!(
            "{} rounds; curl fetches every blob over one connection; skopeo copies to dir:",
            self.options.rounds
        );
        println!(
            "MB = 10^6 bytes; CPU = user+system seconds of the server process and of the \
             client process (the file servers run inside this benchmark)"
        );
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Warm-up: exact bytes from every server, and a warm page cache

    fn warm_up(&self) -> Result<()> {
        let started = Instant::now();
        for server in &self.servers {
            for blob in &self.blobs {
                let url = server.blob_url(&blob.digest);
                let (status, digest, size) = if server.is_tls() {
                    self.curl_digest(&url, &[])?
                } else {
                    http::get_digest(&url)?
                };
                ensure!(
                    (status, digest.as_str(), size) == (200, blob.digest.as_str(), blob.size),
                    "{} served {url} as status {status}, {size} bytes, {digest}; expected \
                     {} bytes, {}",
                    server.name,
                    blob.size,
                    blob.digest
                );
            }
            if server.is_registry() {
                self.check_manifest(server)?;
            }
            if Client::Skopeo.pulls_from(server) {
                self.skopeo_copy(server)?;
            }
        }
        eprintln!(
            "warm-up: every blob's sha256 checked from every server, one skopeo copy from each \
             registry, in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Ok(())
    }

    fn check_manifest(&self, server: &Server) -> Result<()> {
        let url = format!("{}/v2/{REPO}/manifests/{TAG}", server.base_url());
        let accept = self.image.manifest_media_type.as_str();
        let (status, digest) = if server.is_tls() {
            let accept = format!("Accept: {accept}");
            let (status, digest, _) = self.curl_digest(&url, &["-H", &accept])?;
            (status, digest)
        } else {
            let fetched = http::get(&url, &[("Accept", accept)])?;
            let digest = format!("sha256:{}", hex::encode(Sha256::digest(&fetched.body)));
            (fetched.status, digest)
        };
        ensure!(
            status == 200 && digest == self.image.manifest_digest,
            "{} served manifest {url} as status {status}, {digest}; expected {}",
            server.name,
            self.image.manifest_digest
        );
        Ok(())
    }

    /// GETs `url` with curl trusting the test CA (over TLS, where the plain HTTP client cannot
    /// go): status, sha256 digest and size of the body.
    fn curl_digest(&self, url: &str, args: &[&str]) -> Result<(u16, String, u64)> {
        let body = tempfile::NamedTempFile::new_in(self.scratch.path())?;
        let output = Command::new("curl")
            .args(["--silent", "--show-error", "--noproxy", "*", "--cacert"])
            .arg(self.ca.cert_pem_path())
            .args(args)
            .args(["--write-out", "%{http_code}", "--output"])
            .arg(body.path())
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl {url} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let status = String::from_utf8_lossy(&output.stdout).trim().parse()?;
        let bytes = std::fs::read(body.path())?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
        Ok((status, digest, bytes.len() as u64))
    }

    // -----------------------------------------------------------------------------------------
    // Measured rounds

    fn measure(&self) -> Result<Vec<Run>> {
        let mut runs = Vec::new();
        for round in 1..=self.options.rounds {
            let mut order: Vec<usize> = (0..self.servers.len()).collect();
            order.rotate_left((round - 1) % self.servers.len());
            for client in Client::ALL {
                for &server in &order {
                    if !client.pulls_from(&self.servers[server]) {
                        continue;
                    }
                    let run = self.timed(round, client, server)?;
                    println!("{}", run.line(&self.servers[server].name));
                    runs.push(run);
                }
            }
        }
        Ok(runs)
    }

    fn timed(&self, round: usize, client: Client, server_index: usize) -> Result<Run> {
        let server = &self.servers[server_index];
        let server_before = cpu_seconds(server.pid)?;
        let client_before = children_cpu_seconds()?;
        let started = Instant::now();
        let bytes = match client {
            Client::Curl => self.curl_every_blob(server, &[])?,
            Client::CurlHttp11 => self.curl_every_blob(server, &["--http1.1"])?,
            Client::Skopeo => self.skopeo_copy(server)?,
        };
        let seconds = started.elapsed().as_secs_f64();
        Ok(Run {
            round,
            client,
            server: server_index,
            bytes,
            seconds,
            server_cpu: cpu_seconds(server.pid)? - server_before,
            client_cpu: children_cpu_seconds()? - client_before,
        })
    }

    /// One curl process GETs every blob to /dev/null, in order, over one connection; returns
    /// the bytes received, each blob's checked against its size.
    fn curl_every_blob(&self, server: &Server, args: &[&str]) -> Result<u64> {
        let mut command = Command::new("curl");
        command.args(["--silent", "--show-error", "--noproxy", "*"]);
        if server.is_tls() {
            command.arg("--cacert").arg(self.ca.cert_pem_path());
        }
        command.args(args);
        command.args(["--write-out", "%{http_code} %{size_download}\\n"]);
        for blob in &self.blobs {
            command.args(["--output", "/dev/null"]);
            command.arg(server.blob_url(&blob.digest));
        }
        let output = command
            .stdin(Stdio::null())
            .output()
            .context("cannot run curl")?;
        ensure!(
            output.status.success(),
            "curl from {} failed ({}): {}",
            server.name,
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8_lossy(&output.stdout);
        let lines: Vec<&str> = stdout.lines().collect();
        ensure!(
            lines.len() == self.blobs.len(),
            "curl reported {} transfers for {} blobs: {stdout}",
            lines.len(),
            self.blobs.len()
        );
        for (line, blob) in lines.iter().zip(&self.blobs) {
            let expected = format!("200 {}", blob.size);
            ensure!(
                *line == expected,
                "curl from {} got {line:?} for {}; expected {expected:?}",
                server.name,
                blob.digest
            );
        }
        Ok(self.blob_bytes())
    }

    /// `skopeo copy` of the image into a fresh `dir:` destination, checked and then removed;
    /// returns the bytes of the image.
    fn skopeo_copy(&self, server: &Server) -> Result<u64> {
        let dest = tempfile::TempDir::with_prefix_in("skopeo-", self.scratch.path())?;
        let output = Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/{REPO}:{TAG}", server.host))
            .arg(format!("dir:{}", dest.path().display()))
            .stdin(Stdio::null())
            .output()
            .context("cannot run skopeo")?;
        ensure!(
            output.status.success(),
            "skopeo copy from {} failed: {}",
            server.name,
            String::from_utf8_lossy(&output.stderr)
        );
        self.check_skopeo_dir(server, dest.path())?;
        Ok(self.blob_bytes() + self.image.manifest_size)
    }

    /// skopeo verified every digest while copying; check that it kept the manifest as served
    /// and wrote every blob whole.
    fn check_skopeo_dir(&self, server: &Server, dir: &Path) -> Result<()> {
        let manifest = std::fs::read(dir.join("manifest.json"))?;
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest)));
        ensure!(
            digest == self.image.manifest_digest,
            "skopeo from {} wrote manifest {digest}, expected {}",
            server.name,
            self.image.manifest_digest
        );
        for blob in &self.blobs {
            let path = dir.join(blob.hex());
            let size = std::fs::metadata(&path)
                .with_context(|| format!("skopeo did not write {}", path.display()))?
                .len();
            ensure!(
                size == blob.size,
                "skopeo from {} wrote {size} bytes of {}, expected {}",
                server.name,
                blob.digest,
                blob.size
            );
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Summary

    fn index_of(&self, role: Role) -> Option<usize> {
        self.servers.iter().position(|server| server.role == role)
    }

    fn print_summary(&self, runs: &[Run]) {
        println!();
        println!(
            "summary: medians of {} rounds, {:.1} MB image",
            self.options.rounds,
            self.blob_bytes() as f64 / MB
        );
        println!(
            "{:<7} {:<20} {:>7} {:>8} {:>17} {:>17}",
            "client", "server", "MB/s", "seconds", "server CPU s/GB", "client CPU s/GB"
        );
        for client in Client::ALL {
            for (index, server) in self.servers.iter().enumerate() {
                let Some(median) = Median::of(runs, client, index) else {
                    continue;
                };
                println!(
                    "{:<7} {:<20} {:>7.0} {:>8.3} {:>17.2} {:>17.2}",
                    client.name(),
                    server.name,
                    median.mb_per_s,
                    median.seconds,
                    median.server_cpu_per_gb,
                    median.client_cpu_per_gb
                );
            }
        }

        println!();
        println!("ratios of median MB/s:");
        let ratio = |client, over: Option<usize>, under: Option<usize>| -> Option<f64> {
            let over = Median::of(runs, client, over?)?;
            let under = Median::of(runs, client, under?)?;
            Some(over.mb_per_s / under.mb_per_s)
        };
        let shoal = self.index_of(Role::Shoal);
        let registry = self.index_of(Role::Registry);
        let sendfile = self.index_of(Role::Sendfile);
        let read_write = self.index_of(Role::ReadWrite);
        let mut report = String::new();
        let mut line = |label: &str, value: Option<f64>, note: String| {
            if let Some(value) = value {
                let text = format!("{label:<40} {value:>5.2}x  {note}");
                let _ = writeln!(report, "{}", text.trim_end());
            }
        };
        let curl = ratio(Client::Curl, shoal, registry);
        line(
            "curl   shoal / docker-registry",
            curl,
            curl.map(|curl| {
                format!(
                    "goal >= {GOAL_RATIO:.1}x {}, aim {CURL_AIM_RATIO:.1}x {}",
                    verdict(curl, GOAL_RATIO),
                    verdict(curl, CURL_AIM_RATIO)
                )
            })
            .unwrap_or_default(),
        );
        line(
            "curl   shoal / sendfile",
            ratio(Client::Curl, shoal, sendfile),
            "(the ceiling the brief names)".into(),
        );
        line(
            "curl   shoal / read/write",
            ratio(Client::Curl, shoal, read_write),
            "(a plain user-space copy)".into(),
        );
        line(
            "curl   docker-registry / sendfile",
            ratio(Client::Curl, registry, sendfile),
            String::new(),
        );
        let skopeo = ratio(Client::Skopeo, shoal, registry);
        line(
            "skopeo shoal / docker-registry",
            skopeo,
            skopeo
                .map(|skopeo| format!("goal >= {GOAL_RATIO:.1}x {}", verdict(skopeo, GOAL_RATIO)))
                .unwrap_or_default(),
        );
        let shoal_tls = self.index_of(Role::ShoalTls);
        let registry_tls = self.index_of(Role::RegistryTls);
        for client in [Client::Curl, Client::CurlHttp11] {
            let name = client.name();
            let tls = ratio(client, shoal_tls, registry_tls);
            line(
                &format!("{name:<7} shoal-tls / docker-registry-tls"),
                tls,
                tls.map(|tls| {
                    format!(
                        "goal >= {TLS_GOAL_RATIO:.1}x {}",
                        verdict(tls, TLS_GOAL_RATIO)
                    )
                })
                .unwrap_or_default(),
            );
            // Plain HTTP is HTTP/1.1 in both cases: curl's plain runs are the reference.
            line(
                &format!("{name:<7} shoal-tls / shoal (plain)"),
                (|| {
                    let over = Median::of(runs, client, shoal_tls?)?;
                    let under = Median::of(runs, Client::Curl, shoal?)?;
                    Some(over.mb_per_s / under.mb_per_s)
                })(),
                "(the cost of TLS)".into(),
            );
        }
        for (index, server) in self.servers.iter().enumerate() {
            if server.role != Role::Compared {
                continue;
            }
            for client in Client::ALL {
                line(
                    &format!("{:<6} {} / shoal", client.name(), server.name),
                    ratio(client, Some(index), shoal),
                    String::new(),
                );
            }
        }
        print!("{report}");
    }
}

/// Whether a ratio, as printed (two decimals), reaches a goal: a verdict that contradicted the
/// printed figure would only report noise below the benchmark's resolution.
fn verdict(ratio: f64, goal: f64) -> &'static str {
    if (ratio * 100.0).round() >= (goal * 100.0).round() {
        "met"
    } else {
        "NOT met"
    }
}

/// One timed pull by one client from one server.
#[derive(Debug, Clone)]
struct Run {
    round: usize,
    client: Client,
    /// Index into `Bench::servers`.
    server: usize,
    bytes: u64,
    seconds: f64,
    server_cpu: f64,
    client_cpu: f64,
}

impl Run {
    fn mb_per_s(&self) -> f64 {
        self.bytes as f64 / MB / self.seconds
    }

    fn per_gb(&self, seconds: f64) -> f64 {
        seconds / (self.bytes as f64 / 1e9)
    }

    fn line(&self, server_name: &str) -> String {
        format!(
            "round {:<2} {:<7} {:<20} {:>6.1} MB in {:>6.3} s {:>6.0} MB/s  CPU s: server {:>4.2} \
             client {:>4.2}",
            self.round,
            self.client.name(),
            server_name,
            self.bytes as f64 / MB,
            self.seconds,
            self.mb_per_s(),
            self.server_cpu,
            self.client_cpu
        )
    }
}

/// Medians over the rounds of one client and server.
#[derive(Debug, Clone, Copy)]
struct Median {
    mb_per_s: f64,
    seconds: f64,
    server_cpu_per_gb: f64,
    client_cpu_per_gb: f64,
}

impl Median {
    fn of(runs: &[Run], client: Client, server: usize) -> Option<Median> {
        let selected: Vec<&Run> = runs
            .iter()
            .filter(|run| run.client == client && run.server == server)
            .collect();
        Some(Median {
            mb_per_s: median(selected.iter().map(|run| run.mb_per_s()))?,
            seconds: median(selected.iter().map(|run| run.seconds))?,
            server_cpu_per_gb: median(selected.iter().map(|run| run.per_gb(run.server_cpu)))?,
            client_cpu_per_gb: median(selected.iter().map(|run| run.per_gb(run.client_cpu)))?,
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Processes
