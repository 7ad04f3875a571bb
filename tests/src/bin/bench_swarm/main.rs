//! bench-swarm: how fast Shoal nodes move an image between themselves, against docker-registry
//! serving the same bytes to curl, and against the Kumar–Ross lower bound for a rate-limited
//! fan-out. Every process runs on 127.0.0.1.
//!
//! Modes:
//!
//! - `transfer` — one big blob (a single-layer image, 1 GiB by default, incompressible),
//!   imported on nodes A, B and C, and pushed with skopeo into a docker-registry. Each round
//!   (`--rounds`, the order rotating so that none is always first) times five fetches of the
//!   blob, each once unpinned and once pinned (the sending side — the registry, or the nodes
//!   sending — on core 0 with `taskset`, the receiving host — curl, or the receiving node and
//!   its client — on core 1, so that the two ends do not fight for a core; the order of the
//!   two alternates by round):
//!   - docker-registry → `curl -s -o /dev/null` (the reference);
//!   - a minimal sendfile(2) HTTP server → curl, serving the layout's own blob file (the
//!     loopback ceiling of a plain copy; unpinned only, it is a thread of this program);
//!   - node A → a fresh node B → curl through B's gateway: B does not have the blob, fetches
//!     it from A and streams it to curl as chunks are verified (what a Docker host sees);
//!   - a fresh node bootstrapped to A only → `shoal pull` (one peer);
//!   - a fresh node bootstrapped to A, B and C → `shoal pull` (three peers at once).
//!
//!   A pull is timed from the start of `shoal pull` to its end: manifest, config and the
//!   blob, every chunk checked with BLAKE3 and the whole blob with sha256 before it enters the
//!   store. A gateway fetch is timed over curl alone (B's sha256 may still run after curl has
//!   every byte, when a trusted publisher signed the blob's index root). The receiver's peak
//!   RSS (`VmHWM`) is read right after; then the blob is read back through its gateway and its
//!   sha256 compared with the digest (untimed). curl runs are checked by status and length;
//!   the servers' bytes are checked once by sha256 before the rounds. CPU seconds of the
//!   sending side, the receiving node and the client of every fetch are read from /proc and
//!   printed per GB moved.
//!
//!   With `--sender-egress-mib A,B,C` the seeds send at most A, B and C MiB/s, as peers behind
//!   links of those speeds, and the summary sets each node fetch against the sum of its
//!   senders' limits: whether a transfer gets every peer's uplink.
//!
//!   The summary also gives the CPU ceiling of one core, measured in this process: SHA-256
//!   (sha2, as the node uses it), BLAKE3 (single thread), and the AES-128-GCM sealing and
//!   opening of 256 KiB records with aws-lc-rs, which is what a lane runs (chunks travel on
//!   lanes, `node/src/network/lane/`); ChaCha20-Poly1305 over Noise-sized frames with ring,
//!   which libp2p-noise runs (snow's ring resolver), is printed beside it for chunk links on
//!   libp2p streams. Each byte moved between two nodes is encrypted once by the sender, decrypted
//!   once by the receiver, BLAKE3-hashed once (chunk check) and SHA-256-hashed once (blob
//!   check), so one core doing all of it moves at most
//!   `1 / (1/sha256 + 1/blake3 + 1/encrypt + 1/decrypt)` bytes per second. Copies, syscalls,
//!   framing and disk writes come on top, so real transfers stay below it; with the two
//!   ends on two cores the bound is at most twice that.
//!
//! - `fanout` — one seed and `--nodes` nodes (15), every one limited to `--rate-mib` MiB/s
//!   (10) up and down with `--max-egress`/`--max-ingress`. Each node bootstraps to the seed and
//!   to `--extra-peers` (2) nodes started before it, picked at random (`--seed`), trusts the
//!   seed and prefetches `bench/*:*`. Once every node is connected to the peers it named and
//!   the swarm is idle (its nodes under 0.1 cores for a second: a fleet's hosts are up and
//!   meshed long before an image is announced, and the nodes' dials of the peers they learn
//!   of took up to 5.7 CPU-seconds of 33 nodes), a multi-layer image (`--size-mib`, 200) is
//!   imported on the seed; t0 is the end of the import, whose announcement starts every
//!   prefetch. Each node's completion time is when the last of the image's blob files exists
//!   in its store (polled every 20 ms; a blob file appears only after its sha256 check),
//!   confirmed afterwards by `store.blobs` in `shoal status`; all blobs are then read back
//!   through every node's gateway and checked. A sampler reads every node's counters and CPU
//!   time every couple of seconds for the timeline, which prints, per interval, the cores the
//!   nodes kept busy, their CPU per GB received in it, and the `Busy` answers and have-feed
//!   pushes per MiB received in it (a fan-out's first seconds can cost per byte many times
//!   what its middle does); every node's CPU time from t0 to the end shows how much of the
//!   machine the swarm took.
//!
//!   With F the image bytes, N nodes, u = d = the rate, the lower bound is
//!   `T_min = max(F/u_seed, N·F/(u_seed + Σu_i), F/d_min)`; a plain registry needs
//!   `N·F/u_seed`. The summary gives the last node's time against T_min (goal ≤ 1.3) and the
//!   seed's upload against F (goal ≤ 1.2). `--ingress-mib` sets another download limit (0: none,
//!   and the F/d_min term drops), to tell upload-bound from download-bound behaviour.
//!
//!   Reading the fan-out table: "received/F" counts only chunks a node kept, "sent/F" every
//!   chunk it sent, so the timeline's "sent-kept" is bytes that crossed an uplink for nothing
//!   (duplicates, endgame copies) plus bytes in flight.
//!
//! - `cpu` — only the CPU ceiling above.
//!
//! - `carry` — what carrying a fan-out's traffic costs between as many processes without
//!   Shoal (`carry.rs`): for each setting, once with the chunks alone and once with
//!   `--messages` small messages per MiB beside them, the CPU of every process per GB
//!   delivered and what each small message adds. `fanout --settings` runs it after each
//!   fan-out at that fan-out's own message count, and sets the fan-out's CPU against the
//!   result plus the hashing and sealing every byte needs (the floor).
//!
//! Benchmarks print, they do not assert timings: the program fails only when a transfer
//! returned wrong bytes or did not finish. Absolute times on a shared 2-core machine are noise;
//! read the ratios, which compare runs made in the same minutes on the same machine. The load
//! average is printed at the start and the end to show how busy the machine was.
//!
//! Run it with `--release`, so that the release `shoal` binary is measured (the test kit builds
//! it with the program's own profile before the first node starts; `$SHOAL_BIN` overrides it):
//!   cargo run --release -p shoal-tests --bin bench_swarm -- transfer --rounds 3
//!   cargo run --release -p shoal-tests --bin bench_swarm -- fanout
//! `RUST_LOG` is passed to the nodes; `--keep` keeps their data directories and logs.
//! See docs/benchmarks.md for recorded results and how to read them.

use std::collections::BTreeSet;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use shoal_protocol::rng::SplitMix64;
use shoal_tests::bench::{children_cpu_seconds, cpu_seconds, median, minor_faults};
use shoal_tests::clients::wait_until;
use shoal_tests::http;
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal, shoal_binary};
use tempfile::TempDir;

mod carry;
mod floor;
mod simulated;
mod transfer;
use transfer::TransferBench;

const USAGE: &str = "\
usage: bench_swarm MODE [--size-mib N] [--rounds N] [--nodes N] [--rate-mib N]
                        [--ingress-mib N] [--extra-peers N] [--seed N] [--keep]
                        [--only SOURCES] [--sender-egress-mib A,B,C]
                        [--settings NxR,...] [--messages N]

MODE is one of:
  transfer   one big blob from 1 and from 3 Shoal peers, against docker-registry -> curl
  fanout     one seed to N rate-limited nodes, against the Kumar-Ross lower bound
  cpu        the per-core CPU ceiling of hashing and Noise encryption only
  carry      a fan-out's chunks and small messages carried between as many processes
             without Shoal: the CPU per GB and per message of the arrangement itself

  --size-mib N      blob size (transfer, default 1024) or image size (fanout, default 200)
  --rounds N        transfer rounds, each timing every source once (default 3)
  --nodes N         fanout nodes besides the seed (default 15)
  --rate-mib N      fanout per-node --max-egress and --max-ingress in MiB/s (default 10)
  --ingress-mib N   fanout per-node --max-ingress instead, in MiB/s; 0: no ingress limit
  --extra-peers N   fanout: other nodes each node bootstraps to, besides the seed (default 2)
  --seed N          seed of the generated image and of the peer choice (default 11)
  --only SOURCES    transfer: only these sources, comma-separated, of registry, loopback,
                    gateway, one-peer, three-peers (the figures then lack their references;
                    for profiling one path)
  --sender-egress-mib A,B,C  transfer: seeds A, B and C send at most A, B and C MiB/s
                    (`--max-egress`; 0: no limit); the summary sets each node fetch against
                    the sum of its senders' limits, the most it can get
  --settings NxR,.. fanout: one fan-out per setting, N nodes at R MiB/s each, then a table
                    of them all, such as 15x10,24x6,32x4,1x10,1x6,1x4 (the first 1-node
                    setting is the reference: one node pulling from one peer, the median of
                    its runs when it is given more than once, as in 1x10,32x4,1x10; each
                    fan-out is also set against the 1-node setting at its own rate, and
                    against its floor, what `carry` measures at its messages plus the
                    hashing and sealing); carry: the settings to carry
  --messages N      carry: small messages per MiB delivered (default 46, what a 32 x 4
                    fan-out sends: pushes, chunk requests and Busy answers)
  --keep            keep the temp dir with the nodes' data and logs, and print its path

Run with --release: the shoal binary measured is built with the benchmark's own profile
($SHOAL_BIN overrides it). RUST_LOG is passed to the nodes.";

/// Bound on waits for events (a node connecting, an announcement arriving); they end as soon
/// as the event happens.
const EVENT_TIMEOUT: Duration = Duration::from_secs(60);
const MIB: f64 = 1024.0 * 1024.0;
const MB: f64 = 1e6;

// ---------------------------------------------------------------------------------------------
// Options

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Transfer,
    Fanout,
    Cpu,
    Carry,
}

#[derive(Debug, Clone)]
struct Options {
    mode: Mode,
    /// Per-mode default when not given.
    size_mib: Option<u64>,
    rounds: usize,
    nodes: usize,
    rate_mib: u64,
    /// `--max-ingress` of the fan-out nodes when it differs from `rate_mib`; 0 means none.
    ingress_mib: Option<u64>,
    extra_peers: usize,
    seed: u64,
    keep: bool,
    /// `--only`: the transfer sources to run; all when empty.
    only: Vec<String>,
    /// `--sender-egress-mib`: the `--max-egress` of seeds A, B and C in MiB/s (0: none); empty
    /// when not given.
    sender_egress_mib: Vec<u64>,
    /// `--messages`: carry's small messages per MiB delivered.
    messages: u64,
    /// `--settings`: fan-outs to run one after the other, (nodes, MiB/s); when empty, the one
    /// `--nodes` and `--rate-mib` give.
    settings: Vec<(usize, u64)>,
}

fn parse_options() -> Result<Option<Options>> {
    let mut args = std::env::args().skip(1);
    let mode = match args.next().as_deref() {
        Some("transfer") => Mode::Transfer,
        Some("fanout") => Mode::Fanout,
        Some("cpu") => Mode::Cpu,
        Some("carry") => Mode::Carry,
        Some("--help" | "-h") => {
            println!("{USAGE}");
            return Ok(None);
        }
        other => bail!("expected a mode, got {other:?}\n{USAGE}"),
    };
    let mut options = Options {
        mode,
        size_mib: None,
        rounds: 3,
        nodes: 15,
        rate_mib: 10,
        ingress_mib: None,
        extra_peers: 2,
        seed: 11,
        keep: false,
        only: Vec::new(),
        sender_egress_mib: Vec::new(),
        messages: 46,
        settings: Vec::new(),
    };
    while let Some(flag) = args.next() {
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
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value\n{USAGE}"))?;
        if flag == "--only" {
            options.only = value.split(',').map(str::to_owned).collect();
            continue;
        }
        if flag == "--sender-egress-mib" {
            options.sender_egress_mib = parse_sender_egress(&value)?;
            continue;
        }
        if flag == "--settings" {
            options.settings = parse_settings(&value)?;
            continue;
        }
        let number: u64 = value
            .parse()
            .with_context(|| format!("{flag} {value}: not a number"))?;
        match flag.as_str() {
            "--size-mib" => options.size_mib = Some(number),
            "--rounds" => options.rounds = usize::try_from(number)?,
            "--nodes" => options.nodes = usize::try_from(number)?,
            "--rate-mib" => options.rate_mib = number,
            "--ingress-mib" => options.ingress_mib = Some(number),
            "--extra-peers" => options.extra_peers = usize::try_from(number)?,
            "--seed" => options.seed = number,
            "--messages" => options.messages = number,
            _ => bail!("unknown argument {flag}\n{USAGE}"),
        }
    }
    ensure!(options.rounds > 0, "--rounds must be at least 1");
    ensure!(options.nodes > 0, "--nodes must be at least 1");
    ensure!(options.rate_mib > 0, "--rate-mib must be at least 1");
    ensure!(options.size_mib != Some(0), "--size-mib must be at least 1");
    Ok(Some(options))
}

/// `100,200,400`: the uplinks of seeds A, B and C in MiB/s, 0 for none.
fn parse_sender_egress(value: &str) -> Result<Vec<u64>> {
    let rates = value
        .split(',')
        .map(|rate| {
            rate.parse()
                .with_context(|| format!("--sender-egress-mib {value}: {rate} is not a number"))
        })
        .collect::<Result<Vec<u64>>>()?;
    ensure!(
        rates.len() == 3,
        "--sender-egress-mib takes three rates, for seeds A, B and C"
    );
    Ok(rates)
}

/// `15x10,24x6`: (nodes, MiB/s) pairs.
fn parse_settings(value: &str) -> Result<Vec<(usize, u64)>> {
    value
        .split(',')
        .map(|setting| {
            let (nodes, rate) = setting
                .split_once('x')
                .with_context(|| format!("--settings {setting}: not NODESxMIB"))?;
            let (nodes, rate): (usize, u64) = (nodes.parse()?, rate.parse()?);
            ensure!(
                nodes > 0 && rate > 0,
                "--settings {setting}: both at least 1"
            );
            Ok((nodes, rate))
        })
        .collect()
}

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(error) => {
            eprintln!("bench_swarm: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode> {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("carry-member") {
        carry::member(&args[2..])?;
        return Ok(ExitCode::SUCCESS);
    }
    let Some(options) = parse_options()? else {
        return Ok(ExitCode::SUCCESS);
    };
    print_machine(matches!(options.mode, Mode::Transfer | Mode::Fanout))?;
    let all_good = match options.mode {
        Mode::Cpu => {
            CpuCeiling::measure()?.print();
            true
        }
        Mode::Transfer => TransferBench::run(&options)?,
        Mode::Fanout => FanoutBench::run_settings(&options)?,
        Mode::Carry => carry::run(&options)?,
    };
    println!("load average at the end: {}", load_average());
    Ok(if all_good {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Prints the machine, the source tree and, when `with_shoal`, the `shoal` binary under test
/// (built first if needed, so that no build runs during a measurement).
fn print_machine(with_shoal: bool) -> Result<()> {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    println!("machine: {cpus} CPUs, load average {}", load_average());
    println!("source: {}", source_revision());
    if with_shoal {
        println!("shoal binary: {}", shoal_binary()?.display());
    }
    Ok(())
}

/// The workspace's git commit, with `+changes` when the tree differs from it.
fn source_revision() -> String {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(&workspace)
            .args(args)
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    match (
        git(&["rev-parse", "--short", "HEAD"]),
        git(&["status", "--porcelain"]),
    ) {
        (Some(commit), Some(changes)) if changes.is_empty() => commit,
        (Some(commit), Some(_)) => format!("{commit}+changes"),
        _ => "unknown".into(),
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|text| {
            text.split_whitespace()
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|_| "unknown".into())
}

// ---------------------------------------------------------------------------------------------
// Shared helpers: nodes, status fields, temp dirs

/// The benchmark's working directory: removed at the end unless `--keep`.
fn work_dir(options: &Options) -> Result<(TempDir, PathBuf)> {
    let dir = TempDir::with_prefix("shoal-bench-swarm-")?;
    let path = dir.path().to_owned();
    if options.keep {
        println!("keeping the nodes' data and logs in {}", path.display());
    }
    Ok((dir, path))
}

fn finish_work_dir(dir: TempDir, keep: bool) {
    if keep {
        let _ = dir.keep();
    }
}

fn status_array<'a>(status: &'a Value, field: &str) -> Result<&'a Vec<Value>> {
    status[field]
        .as_array()
        .with_context(|| format!("no {field} in status {status}"))
}

fn counter(status: &Value, name: &str) -> Result<u64> {
    status["counters"][name]
        .as_u64()
        .with_context(|| format!("no counter {name} in status {status}"))
}

fn store_blobs(status: &Value) -> Result<u64> {
    status["store"]["blobs"]
        .as_u64()
        .with_context(|| format!("no store.blobs in status {status}"))
}

fn is_connected(node: &ShoalNode, peer_id: &str) -> Result<bool> {
    Ok(status_array(&node.status()?, "connected_peers")?
        .iter()
        .any(|peer| peer == peer_id))
}

fn wait_connected(node: &ShoalNode, peer_ids: &[&str]) -> Result<()> {
    for peer_id in peer_ids {
        wait_until("the nodes to connect", EVENT_TIMEOUT, || {
            is_connected(node, peer_id)
        })?;
    }
    Ok(())
}

fn wait_knows_tag(node: &ShoalNode, repository: &str, tag: &str) -> Result<()> {
    let repository = format!("docker.io/{repository}");
    wait_until("the tag to be announced", EVENT_TIMEOUT, || {
        Ok(status_array(&node.status()?, "known_images")?
            .iter()
            .any(|image| image["repository"] == repository.as_str() && image["tag"] == tag))
    })
}

/// `--bootstrap ADDR` for each of `peers`.
fn bootstrap_args(peers: &[&ShoalNode]) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for peer in peers {
        args.extend(["--bootstrap".to_owned(), peer.peer_address()?]);
    }
    Ok(args)
}

fn start_node(data: &Path, args: &[String]) -> Result<ShoalNode> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ShoalNode::start(data, &args)
}

fn node_pid(node: &ShoalNode) -> Result<u32> {
    node.pid().context("the node is not running")
}

/// Reads `blob` through `gateway` and checks its sha256 and length.
fn blob_matches(gateway: &str, repository: &str, blob: &Blob) -> Result<bool> {
    let url = format!("http://{gateway}/v2/{repository}/blobs/{}", blob.digest);
    let (status, digest, size) = http::get_digest(&url)?;
    let good = status == 200 && digest == blob.digest && size == blob.size;
    if !good {
        eprintln!(
            "WRONG BYTES from {url}: status {status}, {size} bytes, {digest}, expected {} bytes {}",
            blob.size, blob.digest
        );
    }
    Ok(good)
}

/// Runs `shoal pull` to completion (on `core` when given) and fails unless it succeeded.
fn pull(node: &ShoalNode, reference: &str, core: Option<usize>) -> Result<()> {
    let mut command = match core {
        Some(core) => {
            let mut taskset = Command::new("taskset");
            taskset.args(["-c", &core.to_string()]);
            taskset.arg(shoal_binary()?);
            taskset.arg("pull").arg("--data").arg(node.data());
            taskset
        }
        None => shoal(node.data(), "pull")?,
    };
    let output = command.arg(reference).output()?;
    ensure!(
        output.status.success(),
        "shoal pull {reference} failed: {}\nnode log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        node.logs()
    );
    Ok(())
}

fn mb_per_s(bytes: u64, seconds: f64) -> f64 {
    bytes as f64 / MB / seconds
}

fn verdict(met: bool) -> &'static str {
    if met { "MET" } else { "MISSED" }
}

// ---------------------------------------------------------------------------------------------
// CPU ceiling

/// How long each primitive is timed per attempt.
const CPU_ATTEMPT: Duration = Duration::from_millis(400);
/// Attempts per primitive; the best counts (the machine is shared, slow attempts are noise).
const CPU_ATTEMPTS: usize = 3;
/// libp2p-noise frames carry at most 65535 bytes, 16 of them the Poly1305 tag.
const NOISE_PAYLOAD_BYTES: usize = 65_535 - 16;
/// A lane's records carry up to 256 KiB (node/src/network/lane/record.rs).
const LANE_RECORD_BYTES: usize = 256 * 1024;
/// Input of each hashing call: a 1 MiB chunk, as the node hashes chunks.
const HASH_INPUT_BYTES: usize = 1 << 20;

/// Bytes per second of one core for each per-byte operation of a node-to-node transfer.
#[derive(Debug, Clone, Copy)]
struct CpuCeiling {
    sha256: f64,
    blake3: f64,
    /// The lane's AES-128-GCM (aws-lc-rs, 256 KiB records): what chunks are sealed with.
    encrypt: f64,
    decrypt: f64,
    /// Noise's ChaCha20-Poly1305 (ring, 64 KiB frames): what libp2p streams are sealed with.
    noise_encrypt: f64,
    noise_decrypt: f64,
}

impl CpuCeiling {
    fn measure() -> Result<CpuCeiling> {
        Ok(CpuCeiling {
            sha256: sha256_rate(),
            blake3: blake3_rate(),
            encrypt: lane_seal_rate()?,
            decrypt: lane_open_rate()?,
            noise_encrypt: noise_seal_rate()?,
            noise_decrypt: noise_open_rate()?,
        })
    }

    /// One core doing all the per-byte crypto of both ends: sha256 + blake3 on the receiver,
    /// encryption on the sender, decryption on the receiver.
    fn per_core(&self) -> f64 {
        1.0 / (1.0 / self.sha256 + 1.0 / self.blake3 + 1.0 / self.encrypt + 1.0 / self.decrypt)
    }

    /// The CPU seconds that hashing and sealing one GB delivered takes, both ends together.
    fn receiver_and_sender_per_gb(&self) -> f64 {
        1e9 / self.per_core()
    }

    fn print(&self) {
        println!("\nCPU ceiling, one core (best of {CPU_ATTEMPTS}):");
        println!(
            "  SHA-256 (sha2)                       {:>7.0} MB/s",
            self.sha256 / MB
        );
        println!(
            "  BLAKE3 (one thread)                  {:>7.0} MB/s",
            self.blake3 / MB
        );
        println!(
            "  AES-128-GCM seal, lanes (aws-lc-rs)  {:>7.0} MB/s",
            self.encrypt / MB
        );
        println!(
            "  AES-128-GCM open, lanes (aws-lc-rs)  {:>7.0} MB/s",
            self.decrypt / MB
        );
        println!(
            "  ChaCha20-Poly1305 seal, Noise (ring) {:>7.0} MB/s",
            self.noise_encrypt / MB
        );
        println!(
            "  ChaCha20-Poly1305 open, Noise (ring) {:>7.0} MB/s",
            self.noise_decrypt / MB
        );
        println!(
            "  ceiling 1/(1/sha + 1/blake3 + 1/enc + 1/dec) = {:.0} MB/s per core, {:.0} MB/s \
             if the two ends had a core each",
            self.per_core() / MB,
            2.0 * self.per_core() / MB
        );
    }
}

/// The best bytes per second of `work` (which processes some bytes and returns how many) over
/// [`CPU_ATTEMPTS`] attempts of [`CPU_ATTEMPT`] each.
fn best_rate(mut work: impl FnMut() -> Result<usize>) -> Result<f64> {
    let mut best: f64 = 0.0;
    for _ in 0..CPU_ATTEMPTS {
        let start = Instant::now();
        let mut bytes = 0usize;
        while start.elapsed() < CPU_ATTEMPT {
            bytes += work()?;
        }
        best = best.max(bytes as f64 / start.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn sha256_rate() -> f64 {
    let input = vec![0x5a_u8; HASH_INPUT_BYTES];
    let mut hasher = Sha256::new();
    let rate = best_rate(|| {
        hasher.update(black_box(&input));
        Ok(input.len())
    });
    black_box(hasher.finalize());
    rate.unwrap_or(0.0)
}

fn blake3_rate() -> f64 {
    let input = vec![0x5a_u8; HASH_INPUT_BYTES];
    best_rate(|| {
        black_box(blake3::hash(black_box(&input)));
        Ok(input.len())
    })
    .unwrap_or(0.0)
}

fn noise_key() -> Result<ring::aead::LessSafeKey> {
    let key = ring::aead::UnboundKey::new(&ring::aead::CHACHA20_POLY1305, &[7u8; 32])
        .map_err(|_| anyhow!("ring refused a ChaCha20-Poly1305 key"))?;
    Ok(ring::aead::LessSafeKey::new(key))
}

/// Noise's nonce: four zero bytes, then the 64-bit message counter, little-endian.
fn noise_nonce(counter: u64) -> ring::aead::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_le_bytes());
    ring::aead::Nonce::assume_unique_for_key(nonce)
}

/// Seals one buffer of `bytes` again and again with `seal` (given the record's number).
fn seal_rate(bytes: usize, mut seal: impl FnMut(u64, &mut [u8]) -> Result<()>) -> Result<f64> {
    let mut record = vec![0x5a_u8; bytes];
    let mut counter = 0u64;
    best_rate(|| {
        counter += 1;
        seal(counter, &mut record)?;
        Ok(black_box(&record).len())
    })
}

/// Opens one sealed record again and again with `open`; each round copies the ciphertext into
/// the work buffer first, as snow copies each frame from its input to its output buffer (the
/// lane's records are opened where they were read, so there the copy stands for the one out).
fn open_rate(sealed: Vec<u8>, mut open: impl FnMut(&mut [u8]) -> Result<usize>) -> Result<f64> {
    let mut work = sealed.clone();
    best_rate(|| {
        work.copy_from_slice(&sealed);
        open(&mut work)
    })
}

fn noise_seal_rate() -> Result<f64> {
    let key = noise_key()?;
    seal_rate(NOISE_PAYLOAD_BYTES, |counter, frame| {
        key.seal_in_place_separate_tag(noise_nonce(counter), ring::aead::Aad::empty(), frame)
            .map(|tag| {
                let _ = black_box(tag);
            })
            .map_err(|_| anyhow!("encryption failed"))
    })
}

fn noise_open_rate() -> Result<f64> {
    let key = noise_key()?;
    let mut sealed = vec![0x5a_u8; NOISE_PAYLOAD_BYTES];
    key.seal_in_place_append_tag(noise_nonce(0), ring::aead::Aad::empty(), &mut sealed)
        .map_err(|_| anyhow!("encryption failed"))?;
    open_rate(sealed, |work| {
        key.open_in_place(noise_nonce(0), ring::aead::Aad::empty(), work)
            .map(|plain| black_box(plain).len())
            .map_err(|_| anyhow!("decryption failed"))
    })
}

fn lane_key() -> Result<aws_lc_rs::aead::LessSafeKey> {
    let key = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_128_GCM, &[7u8; 16])
        .map_err(|_| anyhow!("aws-lc-rs refused an AES-128-GCM key"))?;
    Ok(aws_lc_rs::aead::LessSafeKey::new(key))
}

/// A lane record's nonce: four zero bytes, then the record's number, big-endian.
fn lane_nonce(counter: u64) -> aws_lc_rs::aead::Nonce {
    let mut nonce = [0u8; 12];
    nonce[4..].copy_from_slice(&counter.to_be_bytes());
    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce)
}

fn lane_seal_rate() -> Result<f64> {
    let key = lane_key()?;
    seal_rate(LANE_RECORD_BYTES, |counter, record| {
        key.seal_in_place_separate_tag(lane_nonce(counter), aws_lc_rs::aead::Aad::empty(), record)
            .map(|tag| {
                let _ = black_box(tag);
            })
            .map_err(|_| anyhow!("encryption failed"))
    })
}

fn lane_open_rate() -> Result<f64> {
    let key = lane_key()?;
    let mut sealed = vec![0x5a_u8; LANE_RECORD_BYTES];
    key.seal_in_place_append_tag(lane_nonce(0), aws_lc_rs::aead::Aad::empty(), &mut sealed)
        .map_err(|_| anyhow!("encryption failed"))?;
    open_rate(sealed, |work| {
        key.open_in_place(lane_nonce(0), aws_lc_rs::aead::Aad::empty(), work)
            .map(|plain| black_box(plain).len())
            .map_err(|_| anyhow!("decryption failed"))
    })
}

// ---------------------------------------------------------------------------------------------
// fanout: one seed, N rate-limited nodes

const FANOUT_REPOSITORY: &str = "bench/fanout";
const FANOUT_TAG: &str = "v1";
const FANOUT_PREFETCH: &str = "bench/*:*";
const FANOUT_SIZE_MIB: u64 = 200;
/// Goals from the issue: the last node within 1.3× T_min, the seed uploading at most 1.2× F.
const LAST_NODE_GOAL: f64 = 1.3;
const SEED_UPLOAD_GOAL: f64 = 1.2;
/// How often the store of every node is checked for the image's blob files: a stat per blob,
/// cheap enough not to disturb the nodes, and 0.1% of T_min at the defaults.
const COMPLETION_POLL: Duration = Duration::from_millis(20);
/// How often the sampler reads every node's counters for the timeline.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(2);
/// The window over which the swarm's CPU must stay under [`SETTLED_CORES`] before the image
/// is imported, and the longest the bench waits for that.
const SETTLE_WINDOW: Duration = Duration::from_secs(1);
const SETTLED_CORES: f64 = 0.1;
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A fan-out that takes this many times T_min has failed; the program stops waiting.
const GIVE_UP_FACTOR: f64 = 20.0;

#[derive(Debug)]
struct Member {
    node: ShoalNode,
    /// Indexes of the other members this one bootstrapped to (besides the seed).
    bootstraps: Vec<usize>,
}

/// Every node's counters at one moment.
#[derive(Debug, Clone)]
struct Sample {
    at: Instant,
    seed_sent: u64,
    received_total: u64,
    sent_total: u64,
    /// Chunk requests every node answered `Busy`, and the writes of every node's have feeds.
    busy_total: u64,
    pushes_total: u64,
    /// Every node's CPU seconds so far (`None` where a node's could not be read).
    nodes_cpu: Option<f64>,
}

#[derive(Debug)]
struct FanoutBench {
    image: GeneratedImage,
    seed: ShoalNode,
    members: Vec<Member>,
    /// Every node's upload limit, bytes per second.
    rate: f64,
    /// Every node's download limit, bytes per second; `None` when unlimited.
    ingress: Option<f64>,
    /// `--seed`, for the simulator.
    rng_seed: u64,
}

/// One fan-out's figures, for the table of `--settings`.
#[derive(Debug, Clone, Copy)]
struct FanoutRow {
    nodes: usize,
    rate_mib: u64,
    last_over_t_min: f64,
    seed_copies: f64,
    /// Every node's CPU from t0 to the last completion, per GB the members received.
    cpu_per_gb: f64,
    /// Bitfields every node pushed on its have feeds, per MiB the members received.
    pushes_per_mib: f64,
    /// Chunk requests every node answered `Busy`, per MiB the members received.
    busy_per_mib: f64,
    /// Every node's minor page faults from t0 to the last completion, per MiB the members
    /// received.
    faults_per_mib: f64,
    simulated: Option<simulated::Simulated>,
    /// The floor under `cpu_per_gb` (`--settings` only): this setting's chunks and small
    /// messages carried between as many processes without Shoal (`carry.rs`), plus the hashing
    /// and sealing every byte needs.
    floor_per_gb: Option<f64>,
    all_good: bool,
}

/// What every node counted of the exchange's messages and links, summed.
#[derive(Debug, Default)]
struct Messages {
    /// Writes of have feeds: one record each, with the updates of one or more blobs (the
    /// pushes as messages, what the simulator counts as pushes).
    pushes: u64,
    /// Bitfield updates pushed on have feeds, one per blob in a write.
    updates: u64,
    /// Chunk requests answered `Busy`.
    busy: u64,
    /// Of `busy`, those the seed or a member answered for super-seeding (the rest for a full
    /// uplink).
    busy_super_seeding: u64,
    links_on_lanes: u64,
    links_on_streams: u64,
    feeds_on_lanes: u64,
    feeds_on_streams: u64,
    /// DHT lookups of providers the members' transfers started.
    lookups: u64,
    /// Blobs the members recorded themselves in the DHT as providers of.
    records: u64,
}

/// CPU seconds used by every node (the seed first) and by this program's children (the
/// `shoal status` runs of the sampler) between t0 and the end of the fan-out, and the nodes'
/// minor page faults in that time.
#[derive(Debug, Clone)]
struct CpuUse {
    nodes: Vec<f64>,
    status_commands: f64,
    page_faults: u64,
}

impl FanoutBench {
    /// The fan-outs of `--settings` one after the other and a table of them, or the one of
    /// `--nodes` and `--rate-mib`.
    fn run_settings(options: &Options) -> Result<bool> {
        if options.settings.is_empty() {
            return Ok(FanoutBench::run(options)?.all_good);
        }
        let compute_per_gb = CpuCeiling::measure()?.receiver_and_sender_per_gb();
        let mut rows = Vec::new();
        for &(nodes, rate_mib) in &options.settings {
            println!("\n=== fan-out: {nodes} nodes at {rate_mib} MiB/s");
            let setting = Options {
                nodes,
                rate_mib,
                ..options.clone()
            };
            let mut row = FanoutBench::run(&setting)?;
            // Each chunk is asked for once and answered, each refusal is a request and a
            // `Busy`; the pushes come on top.
            let messages_per_mib = row.pushes_per_mib + 1.0 + 2.0 * row.busy_per_mib;
            let carried = carry::Carry {
                nodes,
                rate_mib: rate_mib as f64,
                messages_per_mib,
            }
            .measure()?;
            println!(
                "  floor: carrying the chunks and {messages_per_mib:.1} small messages per MiB \
                 between {} processes without Shoal {:.2} CPU-s/GB, hashing and sealing \
                 {compute_per_gb:.2}",
                nodes + 1,
                carried.cpu_per_gb
            );
            row.floor_per_gb = Some(carried.cpu_per_gb + compute_per_gb);
            rows.push(row);
        }
        print_settings_table(&rows);
        Ok(rows.iter().all(|row| row.all_good))
    }

    fn run(options: &Options) -> Result<FanoutRow> {
        let (tempdir, dir) = work_dir(options)?;
        let size = options.size_mib.unwrap_or(FANOUT_SIZE_MIB) << 20;
        let image = ImageSpec::sized(options.seed, size)
            .gzip(GzipLevel::Store)
            .write_oci_layout(&dir.join("layout"), None)?;
        let ingress = match options.ingress_mib {
            Some(0) => "unlimited".to_owned(),
            Some(mib) => format!("{mib} MiB/s"),
            None => format!("{} MiB/s", options.rate_mib),
        };
        println!(
            "image: {} blobs, {} bytes ({:.1} MiB); {} nodes + seed, each {} MiB/s up, {ingress} \
             down",
            image.blobs.len(),
            image.total_bytes,
            image.total_bytes as f64 / MIB,
            options.nodes,
            options.rate_mib
        );
        let bench = FanoutBench::start_swarm(options, &dir, image)?;
        bench.wait_settled()?;
        let sampler = Sampler::start(&bench);
        bench.seed.import_ok(
            &bench.image.path,
            Some(&format!("{FANOUT_REPOSITORY}:{FANOUT_TAG}")),
        )?;
        let t0 = Instant::now();
        let cpu_at_t0 = bench.cpu_now()?;
        let done = bench.wait_completions(t0);
        let cpu_at_end = bench.cpu_now()?;
        let samples = sampler.stop();
        let cpu = CpuUse {
            nodes: cpu_at_end
                .nodes
                .iter()
                .zip(&cpu_at_t0.nodes)
                .map(|(end, start)| end - start)
                .collect(),
            status_commands: cpu_at_end.status_commands - cpu_at_t0.status_commands,
            page_faults: cpu_at_end.page_faults - cpu_at_t0.page_faults,
        };
        let row = bench.report(t0, &done?, &samples, &cpu)?;
        drop(bench);
        finish_work_dir(tempdir, options.keep);
        Ok(row)
    }

    fn start_swarm(options: &Options, dir: &Path, image: GeneratedImage) -> Result<FanoutBench> {
        let mut limits = vec![
            "--max-egress".to_owned(),
            format!("{}MiB/s", options.rate_mib),
        ];
        let ingress_mib = options.ingress_mib.unwrap_or(options.rate_mib);
        if ingress_mib > 0 {
            limits.extend(["--max-ingress".to_owned(), format!("{ingress_mib}MiB/s")]);
        }
        let seed = start_node(&dir.join("seed"), &limits)?;
        let mut rng = SplitMix64::new(options.seed);
        let mut members: Vec<Member> = Vec::new();
        for index in 0..options.nodes {
            let bootstraps = pick_distinct(&mut rng, index, options.extra_peers);
            let mut peers = vec![&seed];
            peers.extend(bootstraps.iter().map(|&other| &members[other].node));
            let mut args = bootstrap_args(&peers)?;
            args.extend(limits.iter().cloned());
            args.extend([
                "--trust".to_owned(),
                seed.peer_id().to_owned(),
                "--prefetch".to_owned(),
                FANOUT_PREFETCH.to_owned(),
            ]);
            let node = start_node(&dir.join(format!("node-{:02}", index + 1)), &args)?;
            members.push(Member { node, bootstraps });
        }
        for member in &members {
            let mut peer_ids = vec![seed.peer_id()];
            peer_ids.extend(
                member
                    .bootstraps
                    .iter()
                    .map(|&other| members[other].node.peer_id()),
            );
            wait_connected(&member.node, &peer_ids)?;
        }
        println!(
            "all {} nodes connected to the peers they named",
            members.len()
        );
        Ok(FanoutBench {
            image,
            seed,
            members,
            rate: options.rate_mib as f64 * MIB,
            ingress: (ingress_mib > 0).then_some(ingress_mib as f64 * MIB),
            rng_seed: options.seed,
        })
    }

    /// Waits until the swarm is idle before the image comes, as a fleet's hosts are up and
    /// meshed long before an image is announced: once connected to the peers they named,
    /// the nodes still dial the rest they learn of, and libp2p-kad bootstraps again shortly
    /// after new entries of its routing table. Prints how long that took and what it cost.
    fn wait_settled(&self) -> Result<()> {
        let started = Instant::now();
        let total = |cpu: &CpuUse| cpu.nodes.iter().sum::<f64>();
        let first = total(&self.cpu_now()?);
        let mut last = first;
        loop {
            std::thread::sleep(SETTLE_WINDOW);
            let now = total(&self.cpu_now()?);
            let cores = (now - last) / SETTLE_WINDOW.as_secs_f64();
            last = now;
            if cores < SETTLED_CORES || started.elapsed() > SETTLE_TIMEOUT {
                let state = if cores < SETTLED_CORES {
                    "idle"
                } else {
                    "still busy"
                };
                println!(
                    "swarm {state} after {:.1} s ({:.1} CPU-s of all nodes; {cores:.2} cores in \
                     its last {:.1} s)",
                    started.elapsed().as_secs_f64(),
                    now - first,
                    SETTLE_WINDOW.as_secs_f64()
                );
                return Ok(());
            }
        }
    }

    /// The seed, then every member.
    fn nodes(&self) -> impl Iterator<Item = &ShoalNode> {
        std::iter::once(&self.seed).chain(self.members.iter().map(|member| &member.node))
    }

    fn cpu_now(&self) -> Result<CpuUse> {
        let (mut nodes, mut page_faults) = (Vec::new(), 0);
        for node in self.nodes() {
            let pid = node_pid(node)?;
            nodes.push(cpu_seconds(pid)?);
            page_faults += minor_faults(pid)?;
        }
        Ok(CpuUse {
            nodes,
            status_commands: children_cpu_seconds()?,
            page_faults,
        })
    }

    /// T_min = max(F/u_seed, N·F/(u_seed + Σu_i), F/d_min), every u being `rate` and every d
    /// `ingress` (no term when downloads are unlimited).
    fn lower_bound(&self) -> (f64, &'static str) {
        let f = self.image.total_bytes as f64;
        let n = self.members.len() as f64;
        let mut terms = vec![
            (f / self.rate, "F/u_seed"),
            (n * f / (self.rate * (n + 1.0)), "N*F/(u_seed+sum u_i)"),
        ];
        if let Some(ingress) = self.ingress {
            terms.push((f / ingress, "F/d_min"));
        }
        terms.into_iter().fold(
            (0.0, ""),
            |best, term| if term.0 > best.0 { term } else { best },
        )
    }

    /// Each member's completion time after `t0`, in seconds; `None` for a member that had not
    /// finished when the program gave up.
    fn wait_completions(&self, t0: Instant) -> Result<Vec<Option<f64>>> {
        let give_up = Duration::from_secs_f64(GIVE_UP_FACTOR * self.lower_bound().0);
        let mut done: Vec<Option<f64>> = vec![None; self.members.len()];
        while done.iter().any(Option::is_none) && t0.elapsed() < give_up {
            for (member, done) in self.members.iter().zip(done.iter_mut()) {
                if done.is_none() && has_every_blob(member.node.data(), &self.image) {
                    *done = Some(t0.elapsed().as_secs_f64());
                }
            }
            std::thread::sleep(COMPLETION_POLL);
        }
        Ok(done)
    }

    fn report(
        &self,
        t0: Instant,
        done: &[Option<f64>],
        samples: &[Sample],
        cpu: &CpuUse,
    ) -> Result<FanoutRow> {
        let f = self.image.total_bytes;
        let mut all_good = self.print_members(done, cpu)?;
        print_timeline(t0, samples, done);
        let (t_min, binding) = self.lower_bound();
        let n = self.members.len() as f64;
        let seed_sent = counter(&self.seed.status()?, "bytes_sent_to_peers")?;
        let finished: Vec<f64> = done.iter().flatten().copied().collect();
        let last = finished.iter().copied().fold(0.0, f64::max);
        let client_server = n * f as f64 / self.rate;
        println!("\nsummary:");
        println!(
            "  T_min = {t_min:.2} s ({binding}); client-server N*F/u_seed = {client_server:.1} s"
        );
        print_cpu_use(cpu, last);
        if let (Some(first), Some(middle)) = (
            finished.iter().copied().reduce(f64::min),
            median(finished.iter().copied()),
        ) {
            println!(
                "  nodes done: first {first:.2} s, median {middle:.2} s, last {last:.2} s \
                 ({} of {} finished)",
                finished.len(),
                done.len()
            );
        }
        let ratio = last / t_min;
        let seed_ratio = seed_sent as f64 / f as f64;
        println!("\ngoals:");
        println!(
            "  last node <= {LAST_NODE_GOAL}x T_min: {ratio:.2}x  {}   (client-server would be \
             {:.1}x T_min)",
            verdict(ratio <= LAST_NODE_GOAL && finished.len() == done.len()),
            client_server / t_min
        );
        println!(
            "  seed upload <= {SEED_UPLOAD_GOAL}x F: {seed_ratio:.2}x ({:.1} MiB of {:.1} MiB)  {}",
            seed_sent as f64 / MIB,
            f as f64 / MIB,
            verdict(seed_ratio <= SEED_UPLOAD_GOAL)
        );
        if finished.len() != done.len() {
            eprintln!("{} nodes did not finish", done.len() - finished.len());
            all_good = false;
        }
        let delivered_gb = n * f as f64 / 1e9;
        let cpu_per_gb = cpu.nodes.iter().sum::<f64>() / delivered_gb;
        let delivered_mib = n * f as f64 / MIB;
        let faults_per_mib = cpu.page_faults as f64 / delivered_mib;
        println!(
            "  swarm CPU per GB delivered: {cpu_per_gb:.2} s (every node's CPU from t0 to the \
             last completion, over {delivered_gb:.2} GB received); page faults {faults_per_mib:.0} \
             per MiB delivered (256 would be a fresh page for every page received)"
        );
        let Messages {
            pushes,
            updates,
            busy,
            busy_super_seeding,
            links_on_lanes,
            links_on_streams,
            feeds_on_lanes,
            feeds_on_streams,
            lookups,
            records,
        } = self.messages()?;
        let (pushes_per_mib, busy_per_mib) =
            (pushes as f64 / delivered_mib, busy as f64 / delivered_mib);
        println!(
            "  messages: {pushes} have-feed pushes ({pushes_per_mib:.1} per MiB delivered; \
             {updates} blobs' updates in them), {busy} Busy answers ({busy_per_mib:.1} per MiB; {busy_super_seeding} of them for \
             super-seeding, the rest for a full uplink); chunk links opened: \
             {links_on_lanes} on lanes, {links_on_streams} on libp2p streams; have feeds opened: \
             {feeds_on_lanes} on lanes, {feeds_on_streams} on libp2p streams; DHT lookups \
             {lookups} ({:.1} per node and blob), provider records {records} ({:.1})",
            lookups as f64 / (n * self.image.blobs.len() as f64),
            records as f64 / (n * self.image.blobs.len() as f64)
        );
        let simulated = simulated::simulate(
            self.members.len(),
            f,
            self.rate,
            self.ingress,
            self.rng_seed,
        );
        let simulated = match simulated {
            Ok(simulated) => {
                println!(
                    "  simulator at the same settings: last node {:.2}x T_min (real {ratio:.2}x, \
                     {:+.0} %), seed upload {:.2} F (real {seed_ratio:.2}), {:.1} pushes and \
                     {:.1} Busy answers per MiB (real {pushes_per_mib:.1} and {busy_per_mib:.1}); \
                     simulated in {:.1} s",
                    simulated.last_over_t_min,
                    100.0 * (simulated.last_over_t_min / ratio - 1.0),
                    simulated.seed_copies,
                    simulated.pushes_per_mib,
                    simulated.busy_per_mib,
                    simulated.wall_s
                );
                Some(simulated)
            }
            Err(error) => {
                println!("  simulator: {error:#}");
                None
            }
        };
        Ok(FanoutRow {
            nodes: self.members.len(),
            rate_mib: (self.rate / MIB).round() as u64,
            last_over_t_min: ratio,
            seed_copies: seed_ratio,
            cpu_per_gb,
            pushes_per_mib,
            busy_per_mib,
            faults_per_mib,
            simulated,
            floor_per_gb: None,
            all_good,
        })
    }

    /// Have-feed pushes sent, chunk requests answered `Busy`, chunk links and have feeds opened, summed
    /// over the seed and every member.
    fn messages(&self) -> Result<Messages> {
        let mut messages = Messages::default();
        for node in self.nodes() {
            let status = node.status()?;
            let updates = counter(&status, "bitfield_pushes_sent")?;
            // A build before `have_feed_writes` wrote every update in a record of its own; so
            // `scripts/alternate` can still set it against a newer one.
            messages.pushes += status["counters"]["have_feed_writes"]
                .as_u64()
                .unwrap_or(updates);
            messages.updates += updates;
            let super_seeding = counter(&status, "busy_answers_super_seeding")?;
            messages.busy += counter(&status, "busy_answers_egress")? + super_seeding;
            messages.busy_super_seeding += super_seeding;
            messages.links_on_lanes += counter(&status, "chunk_links_lane")?;
            messages.links_on_streams += counter(&status, "chunk_links_stream")?;
            messages.feeds_on_lanes += counter(&status, "have_feeds_lane")?;
            messages.feeds_on_streams += counter(&status, "have_feeds_stream")?;
            messages.lookups += counter(&status, "provider_lookups")?;
            messages.records += counter(&status, "provider_records")?;
        }
        Ok(messages)
    }

    /// Prints one line per member and checks its store and every blob it serves.
    fn print_members(&self, done: &[Option<f64>], cpu: &CpuUse) -> Result<bool> {
        let f = self.image.total_bytes as f64;
        let expected = self.image.blobs.len() as u64;
        let mut all_good = true;
        println!(
            "\n  {:<8} {:>10} {:>12} {:>10} {:>10} {:>7} {:>7}  bootstrapped to",
            "node", "done (s)", "received/F", "sent/F", "peers now", "blobs", "CPU s"
        );
        let seed_status = self.seed.status()?;
        println!(
            "  {:<8} {:>10} {:>12} {:>10.2} {:>10} {:>7} {:>7.1}",
            "seed",
            "-",
            "-",
            counter(&seed_status, "bytes_sent_to_peers")? as f64 / f,
            status_array(&seed_status, "connected_peers")?.len(),
            store_blobs(&seed_status)?,
            cpu.nodes.first().copied().unwrap_or(0.0),
        );
        for (index, (member, done)) in self.members.iter().zip(done).enumerate() {
            let status = member.node.status()?;
            let blobs = store_blobs(&status)?;
            let good = blobs == expected && self.serves_every_blob(&member.node)?;
            all_good &= good;
            let mut named = vec!["seed".to_owned()];
            named.extend(
                member
                    .bootstraps
                    .iter()
                    .map(|other| format!("node-{:02}", other + 1)),
            );
            println!(
                "  node-{:02} {:>10} {:>12.2} {:>10.2} {:>10} {:>7} {:>7.1}  {}{}",
                index + 1,
                done.map_or("-".to_owned(), |seconds| format!("{seconds:.2}")),
                counter(&status, "bytes_received_from_peers")? as f64 / f,
                counter(&status, "bytes_sent_to_peers")? as f64 / f,
                status_array(&status, "connected_peers")?.len(),
                blobs,
                cpu.nodes.get(index + 1).copied().unwrap_or(0.0),
                named.join(","),
                if good { "" } else { "  WRONG OR MISSING BYTES" }
            );
        }
        Ok(all_good)
    }

    fn serves_every_blob(&self, node: &ShoalNode) -> Result<bool> {
        let gateway = node.gateway().to_string();
        let mut good = true;
        for blob in &self.image.blobs {
            // Manifests are served under /manifests/, and the store checks them on every read.
            if blob.media_type.contains("manifest") || blob.media_type.contains("index") {
                continue;
            }
            good &= blob_matches(&gateway, FANOUT_REPOSITORY, blob)?;
        }
        Ok(good)
    }
}

/// The table of `--settings`: each fan-out's real and simulated figures, and its CPU per GB
/// against the first 1-node setting's (one node pulling from one peer: the reference) and
/// against the 1-node setting at its own rate, when there are such settings; a 1-node setting
/// run more than once counts by its median ([`one_node_median`]). A node's CPU per
/// GB grows as its rate falls (time-driven work spreads over fewer bytes, every chunk comes
/// in a burst that wakes the node afresh), so the second tells the swarm's own cost from its
/// members' low rate. The floor is what the same processes spend carrying the setting's
/// chunks and small messages without Shoal, plus the hashing and sealing every byte needs;
/// the last column sets it against the reference's floor, the ratio the arrangement itself
/// requires.
fn print_settings_table(rows: &[FanoutRow]) {
    let (reference, reference_floor) = one_node_median(rows, None);
    println!(
        "\nfan-outs (last node over T_min, seed upload over F, have-feed pushes and Busy answers \
         per MiB delivered, CPU of every node per GB delivered and its page faults per MiB, \
         the floor under that CPU):"
    );
    println!(
        "  {:>6} {:>6}  {:>9} {:>9} {:>6}  {:>7} {:>7}  {:>8} {:>7}  {:>8} {:>7}  {:>8} {:>11} {:>11} {:>11} {:>10} {:>8} {:>15}",
        "nodes",
        "MiB/s",
        "last real",
        "simulated",
        "diff",
        "seed/F",
        "sim",
        "push/MiB",
        "sim",
        "busy/MiB",
        "sim",
        "CPU s/GB",
        "x reference",
        "x same rate",
        "faults/MiB",
        "floor s/GB",
        "x floor",
        "floor x ref's"
    );
    for row in rows {
        let simulated = row.simulated.map(|simulated| {
            [
                format!("{:.2}", simulated.last_over_t_min),
                format!(
                    "{:+.0}%",
                    100.0 * (simulated.last_over_t_min / row.last_over_t_min - 1.0)
                ),
                format!("{:.2}", simulated.seed_copies),
                format!("{:.1}", simulated.pushes_per_mib),
                format!("{:.1}", simulated.busy_per_mib),
            ]
        });
        let [
            simulated_last,
            difference,
            simulated_seed,
            simulated_pushes,
            simulated_busy,
        ] = simulated.unwrap_or_else(|| std::array::from_fn(|_| "-".to_owned()));
        let against = |one: Option<f64>| {
            one.map_or("-".to_owned(), |one| format!("{:.2}", row.cpu_per_gb / one))
        };
        let floor = row
            .floor_per_gb
            .map_or("-".to_owned(), |floor| format!("{floor:.2}"));
        let floor_against_reference = match (row.floor_per_gb, reference_floor) {
            (Some(floor), Some(reference)) => format!("{:.2}", floor / reference),
            _ => "-".to_owned(),
        };
        println!(
            "  {:>6} {:>6}  {:>9.2} {:>9} {:>6}  {:>7.2} {:>7}  {:>8.1} {:>7}  {:>8.1} {:>7}  {:>8.2} {:>11} {:>11} {:>11.0} {:>10} {:>8} {:>15}{}",
            row.nodes,
            row.rate_mib,
            row.last_over_t_min,
            simulated_last,
            difference,
            row.seed_copies,
            simulated_seed,
            row.pushes_per_mib,
            simulated_pushes,
            row.busy_per_mib,
            simulated_busy,
            row.cpu_per_gb,
            against(reference),
            against(one_node_median(rows, Some(row.rate_mib)).0),
            row.faults_per_mib,
            floor,
            against(row.floor_per_gb),
            floor_against_reference,
            if row.all_good { "" } else { "  FAILED" }
        );
    }
}

/// The median CPU per GB and floor of every run of the 1-node setting at `rate_mib`, or at
/// the first 1-node setting's rate (the reference) when `None`. Why a median: a 1-node
/// setting is two processes for some 20 s, and its CPU per GB moved by a third from one run
/// to the next (docs/benchmarks.md, "A waiting hash keeps what it takes next"), so repeating
/// it in `--settings` steadies every ratio taken against it.
fn one_node_median(rows: &[FanoutRow], rate_mib: Option<u64>) -> (Option<f64>, Option<f64>) {
    let rate = rate_mib.or_else(|| {
        rows.iter()
            .find(|row| row.nodes == 1)
            .map(|row| row.rate_mib)
    });
    let runs = || {
        rows.iter()
            .filter(move |row| row.nodes == 1 && Some(row.rate_mib) == rate)
    };
    (
        median(runs().map(|row| row.cpu_per_gb)),
        median(runs().filter_map(|row| row.floor_per_gb)),
    )
}

/// How much of the machine the fan-out took: every node's CPU time from t0 to the last
/// completion, against what the machine's cores offer in that time.
fn print_cpu_use(cpu: &CpuUse, last: f64) {
    let cores = std::thread::available_parallelism().map_or(1, usize::from) as f64;
    let nodes: f64 = cpu.nodes.iter().sum();
    println!(
        "  CPU from t0 to the last completion: nodes {nodes:.1} s, `shoal status` sampling \
         {:.1} s, of {:.1} s the {cores} cores offer ({:.0}% busy with the swarm)",
        cpu.status_commands,
        cores * last,
        100.0 * (nodes + cpu.status_commands) / (cores * last)
    );
}

/// Whether every blob of `image` is in the store at `data`: blob files are renamed into
/// `blobs/sha256/<2 hex>/<hex>` only after their sha256 matched (ARCHITECTURE.md, "A blob is
/// visible only when verified").
fn has_every_blob(data: &Path, image: &GeneratedImage) -> bool {
    image.blobs.iter().all(|blob| {
        let hex = blob.hex();
        data.join("blobs")
            .join("sha256")
            .join(&hex[..2])
            .join(hex)
            .exists()
    })
}

/// The swarm's counters over time, from a thread that runs `shoal status` on every node every
/// [`SAMPLE_INTERVAL`].
#[derive(Debug)]
struct Sampler {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(bench: &FanoutBench) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let seed = bench.seed.data().to_owned();
        let members: Vec<PathBuf> = bench
            .members
            .iter()
            .map(|member| member.node.data().to_owned())
            .collect();
        let pids: Vec<u32> = bench.nodes().filter_map(ShoalNode::pid).collect();
        let thread = {
            let (stop, samples) = (stop.clone(), samples.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let next = Instant::now() + SAMPLE_INTERVAL;
                    if let Ok(sample) = take_sample(&seed, &members, &pids) {
                        samples
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push(sample);
                    }
                    while Instant::now() < next && !stop.load(Ordering::Relaxed) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            })
        };
        Sampler {
            stop,
            samples,
            thread,
        }
    }

    fn stop(self) -> Vec<Sample> {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples.clone()
    }
}

fn take_sample(seed: &Path, members: &[PathBuf], pids: &[u32]) -> Result<Sample> {
    let at = Instant::now();
    let nodes_cpu = pids
        .iter()
        .map(|&pid| cpu_seconds(pid).ok())
        .sum::<Option<f64>>();
    let status = |data: &Path| -> Result<Value> {
        let output = shoal(data, "status")?.arg("--json").output()?;
        ensure!(output.status.success(), "shoal status failed");
        Ok(serde_json::from_slice(&output.stdout)?)
    };
    // The seed first.
    let statuses = std::iter::once(seed)
        .chain(members.iter().map(PathBuf::as_path))
        .map(status)
        .collect::<Result<Vec<_>>>()?;
    let sum = |statuses: &[Value], name: &str| {
        statuses
            .iter()
            .map(|status| counter(status, name))
            .sum::<Result<u64>>()
    };
    Ok(Sample {
        at,
        seed_sent: counter(&statuses[0], "bytes_sent_to_peers")?,
        received_total: sum(&statuses[1..], "bytes_received_from_peers")?,
        sent_total: sum(&statuses, "bytes_sent_to_peers")?,
        busy_total: sum(&statuses, "busy_answers_egress")?
            + sum(&statuses, "busy_answers_super_seeding")?,
        pushes_total: sum(&statuses, "have_feed_writes")?,
        nodes_cpu,
    })
}

/// The swarm's progress between samples: how fast the seed and the whole swarm uploaded, and
/// what the nodes' CPU came to over each interval (cores busy, and CPU-seconds per GB the
/// members received in it), and the `Busy` answers and have-feed pushes per MiB received in
/// it: a fan-out's start and end can cost per byte what its middle does not, which the run's
/// one figure of CPU per GB hides.
fn print_timeline(t0: Instant, samples: &[Sample], done: &[Option<f64>]) {
    println!(
        "\n  timeline (t from the import's end; rates over the preceding interval, MiB/s; the \
         nodes' CPU over it):\n  \
         {:>7} {:>10} {:>10} {:>13} {:>11} {:>11} {:>6} {:>6} {:>9} {:>9} {:>9}",
        "t (s)",
        "seed sent",
        "seed rate",
        "all received",
        "swarm rate",
        "sent-kept",
        "done",
        "cores",
        "CPU s/GB",
        "Busy/MiB",
        "push/MiB"
    );
    // The last sample before t0 starts the first interval: nothing moved before the import.
    let mut previous = samples.iter().rfind(|sample| sample.at < t0);
    for sample in samples.iter().filter(|sample| sample.at >= t0) {
        let t = sample.at.duration_since(t0).as_secs_f64();
        let (seed_rate, swarm_rate) = match previous {
            Some(before) => {
                let seconds = sample.at.duration_since(before.at).as_secs_f64();
                (
                    (sample.seed_sent - before.seed_sent) as f64 / MIB / seconds,
                    (sample.received_total - before.received_total) as f64 / MIB / seconds,
                )
            }
            None => (0.0, 0.0),
        };
        let (cores, cpu_per_gb) = previous
            .and_then(|before| {
                let cpu = sample.nodes_cpu? - before.nodes_cpu?;
                let seconds = sample.at.duration_since(before.at).as_secs_f64();
                let received = sample.received_total.saturating_sub(before.received_total);
                let per_gb = (received > 0).then(|| cpu / (received as f64 / 1e9));
                Some((
                    format!("{:.2}", cpu / seconds),
                    per_gb.map_or("-".into(), |v| format!("{v:.2}")),
                ))
            })
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let (busy_per_mib, pushes_per_mib) = previous
            .and_then(|before| {
                let received = sample.received_total.saturating_sub(before.received_total);
                let per_mib = |now: u64, then: u64| {
                    format!("{:.1}", (now - then) as f64 * MIB / received as f64)
                };
                (received > 0).then(|| {
                    (
                        per_mib(sample.busy_total, before.busy_total),
                        per_mib(sample.pushes_total, before.pushes_total),
                    )
                })
            })
            .unwrap_or_else(|| ("-".into(), "-".into()));
        let finished = done
            .iter()
            .flatten()
            .filter(|seconds| **seconds <= t)
            .count();
        println!(
            "  {t:>7.1} {:>10.1} {:>10.1} {:>13.1} {:>11.1} {:>11.1} {:>6} {cores:>6} {cpu_per_gb:>9} \
             {busy_per_mib:>9} {pushes_per_mib:>9}",
            sample.seed_sent as f64 / MIB,
            seed_rate,
            sample.received_total as f64 / MIB,
            swarm_rate,
            sample.sent_total.saturating_sub(sample.received_total) as f64 / MIB,
            finished
        );
        previous = Some(sample);
    }
}

/// Up to `count` distinct numbers below `below`, in increasing order, drawn from `rng` (the
/// same `--seed`, the same topology).
fn pick_distinct(rng: &mut SplitMix64, below: usize, count: usize) -> Vec<usize> {
    let mut picked = BTreeSet::new();
    while picked.len() < count.min(below) {
        picked.insert(rng.below(below));
    }
    picked.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one_node_row(rate_mib: u64, cpu_per_gb: f64) -> FanoutRow {
        FanoutRow {
            nodes: 1,
            rate_mib,
            last_over_t_min: 1.0,
            seed_copies: 1.0,
            cpu_per_gb,
            pushes_per_mib: 0.0,
            busy_per_mib: 0.0,
            faults_per_mib: 0.0,
            simulated: None,
            floor_per_gb: Some(cpu_per_gb / 2.0),
            all_good: true,
        }
    }

    #[test]
    fn the_reference_is_the_median_of_the_first_one_node_settings_runs() {
        let fan_out = FanoutRow {
            nodes: 32,
            rate_mib: 4,
            ..one_node_row(4, 9.0)
        };
        let rows = [
            fan_out,
            one_node_row(10, 3.0),
            one_node_row(4, 5.0),
            one_node_row(10, 4.0),
            one_node_row(10, 3.4),
        ];
        assert_eq!(one_node_median(&rows, None), (Some(3.4), Some(1.7)));
        assert_eq!(one_node_median(&rows, Some(4)), (Some(5.0), Some(2.5)));
        assert_eq!(one_node_median(&rows, Some(6)), (None, None));
    }

    #[test]
    fn sender_egress_takes_one_rate_per_seed() -> Result<()> {
        assert_eq!(parse_sender_egress("100,0,400")?, vec![100, 0, 400]);
        assert!(
            parse_sender_egress("100,200").is_err(),
            "two rates for three seeds"
        );
        assert!(parse_sender_egress("100,fast,400").is_err(), "not a number");
        Ok(())
    }
}
