//! `transfer`: one big blob, from a node that holds it to a host that does not, against
//! docker-registry serving the same bytes to curl. See the program's doc for the method.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use shoal_tests::bench::{children_cpu_seconds, cpu_seconds, median, minor_faults, peak_rss_bytes};
use shoal_tests::clients::{find_tool, wait_until};
use shoal_tests::image::{Blob, GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::ShoalNode;
use shoal_tests::registry::{DockerRegistry, push_oci_layout};
use shoal_tests::sendfile_server::SendfileServer;

use super::floor::{Floor, KernelCosts};
use super::{
    CpuCeiling, EVENT_TIMEOUT, MIB, Options, blob_matches, bootstrap_args, counter,
    finish_work_dir, mb_per_s, node_pid, pull, start_node, store_blobs, verdict, wait_connected,
    wait_knows_tag, work_dir,
};

const TRANSFER_REPOSITORY: &str = "bench/transfer";
const TRANSFER_TAG: &str = "v1";
const TRANSFER_SIZE_MIB: u64 = 1024;
/// Goals of the line-rate issue on a 2-core machine, as ratios to docker-registry -> curl in
/// the same placement: through B's gateway with the two ends pinned apart, and `shoal pull`
/// unpinned from one and from three peers.
const GATEWAY_PINNED_GOAL: f64 = 0.5;
const ONE_PEER_GOAL: f64 = 0.5;
const THREE_PEERS_GOAL: f64 = 0.7;
/// CPU-seconds per GB moved: the receiving node and the sending node(s).
const RECEIVER_CPU_GOAL: f64 = 1.5;
const SENDER_CPU_GOAL: f64 = 0.6;
/// Goal for the receiver's peak RSS while it moves the blob.
const PEAK_RSS_GOAL_MIB: f64 = 200.0;
/// Pinned runs put the sending side on the first core and the receiving host on the second.
const SENDING_CORE: usize = 0;
const RECEIVING_CORE: usize = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Registry,
    Loopback,
    Gateway,
    OnePeer,
    ThreePeers,
}

impl Source {
    const ALL: [Source; 5] = [
        Source::Registry,
        Source::Loopback,
        Source::Gateway,
        Source::OnePeer,
        Source::ThreePeers,
    ];

    /// The name `--only` knows it by.
    fn key(self) -> &'static str {
        match self {
            Source::Registry => "registry",
            Source::Loopback => "loopback",
            Source::Gateway => "gateway",
            Source::OnePeer => "one-peer",
            Source::ThreePeers => "three-peers",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Source::Registry => "docker-registry -> curl",
            Source::Loopback => "sendfile server -> curl",
            Source::Gateway => "node A -> node B -> curl",
            Source::OnePeer => "1 peer -> shoal pull",
            Source::ThreePeers => "3 peers -> shoal pull",
        }
    }

    /// How many of the seeds send in a node fetch: A alone, or A, B and C.
    fn senders(self) -> usize {
        match self {
            Source::ThreePeers => 3,
            _ => 1,
        }
    }

    /// The sendfile server is a thread of this program, which cannot be pinned apart from it.
    fn pinnable(self) -> bool {
        self != Source::Loopback
    }
}

/// One timed fetch of the blob.
#[derive(Debug, Clone)]
struct Fetch {
    source: Source,
    pinned: bool,
    seconds: f64,
    /// CPU seconds of the sending side: the registry, the server thread, or every node sending.
    cpu_sender: f64,
    /// CPU seconds of the receiving node (none for a plain curl).
    cpu_receiver: f64,
    /// CPU seconds of the client: curl, or `shoal pull`.
    cpu_client: f64,
    /// The receiving node's peak RSS.
    peak_rss: Option<u64>,
    /// The receiving node's minor page faults during the fetch: fresh pages, each a zero-fill
    /// (and on this VM often a fault in the host too, docs/benchmarks.md).
    page_faults: Option<u64>,
    /// Bytes each sending node sent during the fetch.
    sent_per_peer: Vec<u64>,
    bytes_good: bool,
}

#[derive(Debug)]
pub struct TransferBench {
    dir: PathBuf,
    blob: Blob,
    /// A, B and C: A alone serves the one-peer and gateway fetches, all three the three-peer
    /// ones.
    seeds: Vec<ShoalNode>,
    registry: DockerRegistry,
    registry_pid: u32,
    loopback: SendfileServer,
    ceiling: CpuCeiling,
    kernel: KernelCosts,
    receivers_started: usize,
    /// Whether the machine has the two cores that pinned runs need.
    can_pin: bool,
    /// `--sender-egress-mib`: each seed's uplink in MiB/s (0: none); empty when not given.
    sender_egress_mib: Vec<u64>,
}

impl TransferBench {
    pub fn run(options: &Options) -> Result<bool> {
        let (tempdir, dir) = work_dir(options)?;
        let mut bench = TransferBench::set_up(options, dir)?;
        if !bench.can_pin {
            println!("fewer than two cores: pinned runs are skipped");
        }
        for only in &options.only {
            ensure!(
                Source::ALL.iter().any(|source| source.key() == only),
                "--only: no source {only}"
            );
        }
        let chosen = |source: &Source| {
            options.only.is_empty() || options.only.iter().any(|only| only == source.key())
        };
        let sources: Vec<Source> = Source::ALL.into_iter().filter(chosen).collect();
        let mut fetches = Vec::new();
        for round in 0..options.rounds {
            for offset in 0..sources.len() {
                let source = sources[(round + offset) % sources.len()];
                let mut placements = vec![false];
                if source.pinnable() && bench.can_pin {
                    placements.insert(round % 2, true);
                }
                for pinned in placements {
                    let fetch = bench.fetch(source, pinned)?;
                    print_fetch(round + 1, &fetch, bench.blob.size);
                    fetches.push(fetch);
                }
            }
        }
        bench.print_summary(&fetches)?;
        drop(bench);
        finish_work_dir(tempdir, options.keep);
        Ok(fetches.iter().all(|fetch| fetch.bytes_good))
    }

    fn set_up(options: &Options, dir: PathBuf) -> Result<TransferBench> {
        for tool in ["curl", "skopeo", "docker-registry", "taskset"] {
            ensure!(find_tool(tool).is_some(), "{tool} is not installed");
        }
        let ceiling = CpuCeiling::measure()?;
        let size = options.size_mib.unwrap_or(TRANSFER_SIZE_MIB) << 20;
        let layout = dir.join("layout");
        let image = ImageSpec::new(options.seed)
            .gzip(GzipLevel::Store)
            .layer(size)
            .write_oci_layout(&layout, None)?;
        let blob = single_layer(&image)?;
        println!(
            "blob: {} ({} bytes, {:.0} MiB)",
            blob.digest,
            blob.size,
            blob.size as f64 / MIB
        );
        let reference = format!("{TRANSFER_REPOSITORY}:{TRANSFER_TAG}");
        let mut seeds = Vec::new();
        for (index, name) in ["seed-a", "seed-b", "seed-c"].into_iter().enumerate() {
            let limit = match options.sender_egress_mib.get(index) {
                Some(&rate) if rate > 0 => Some(format!("{rate}MiB/s")),
                _ => None,
            };
            let args: Vec<&str> = match &limit {
                Some(rate) => vec!["--max-egress", rate],
                None => Vec::new(),
            };
            let node = ShoalNode::start(&dir.join(name), &args)?;
            let started = Instant::now();
            node.import_ok(&image.path, Some(&reference))?;
            println!(
                "imported on {name} in {:.1} s",
                started.elapsed().as_secs_f64()
            );
            seeds.push(node);
        }
        let registry = DockerRegistry::start()?;
        let started = Instant::now();
        push_oci_layout(&image.path, &registry, &reference)?;
        println!(
            "pushed to docker-registry in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        let registry_pid = registry.pid();
        let blobs = image.path.join("blobs").join("sha256");
        let loopback = SendfileServer::start(&blobs)?;
        let hex = blob.digest.trim_start_matches("sha256:");
        let kernel = KernelCosts::measure(&blobs.join(hex))?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let bench = TransferBench {
            dir,
            blob,
            seeds,
            registry,
            registry_pid,
            loopback,
            ceiling,
            kernel,
            receivers_started: 0,
            can_pin: cores > RECEIVING_CORE,
            sender_egress_mib: options.sender_egress_mib.clone(),
        };
        bench.check_servers()?;
        Ok(bench)
    }

    /// Every server returns the right bytes (and the page cache holds them) before any timing.
    fn check_servers(&self) -> Result<()> {
        let mut hosts = vec![self.registry.host(), self.loopback.addr().to_string()];
        hosts.extend(self.seeds.iter().map(|seed| seed.gateway().to_string()));
        for host in hosts {
            ensure!(
                blob_matches(&host, TRANSFER_REPOSITORY, &self.blob)?,
                "{host} serves wrong bytes before the rounds"
            );
        }
        Ok(())
    }

    fn blob_url(&self, host: &str) -> String {
        format!(
            "http://{host}/v2/{TRANSFER_REPOSITORY}/blobs/{}",
            self.blob.digest
        )
    }

    fn fetch(&mut self, source: Source, pinned: bool) -> Result<Fetch> {
        match source {
            Source::Registry | Source::Loopback => self.curl_server(source, pinned),
            Source::Gateway => self.through_gateway(pinned),
            Source::OnePeer | Source::ThreePeers => {
                self.node_pull(source, source.senders(), pinned)
            }
        }
    }

    /// curl reading the blob from docker-registry or the sendfile server.
    fn curl_server(&self, source: Source, pinned: bool) -> Result<Fetch> {
        let (server_pid, host) = match source {
            Source::Registry => (self.registry_pid, self.registry.host()),
            _ => (std::process::id(), self.loopback.addr().to_string()),
        };
        let _placed = Placement::sending(pinned, &[server_pid])?;
        let server_before = cpu_seconds(server_pid)?;
        let (seconds, cpu_client, bytes_good) = self.timed_curl(&host, pinned, source)?;
        Ok(Fetch {
            source,
            pinned,
            seconds,
            cpu_sender: cpu_seconds(server_pid)? - server_before,
            cpu_receiver: 0.0,
            cpu_client,
            peak_rss: None,
            page_faults: None,
            sent_per_peer: Vec::new(),
            bytes_good,
        })
    }

    /// curl reads the blob through a fresh node B's gateway while B fetches it from node A
    /// (every seed measured, as in [`TransferBench::node_pull`]).
    fn through_gateway(&mut self, pinned: bool) -> Result<Fetch> {
        let (data, receiver) = self.start_receiver(1)?;
        let sender_pids = self.seed_pids()?;
        let receiver_pid = node_pid(&receiver)?;
        let _sending = Placement::sending(pinned, &sender_pids)?;
        let _receiving = Placement::receiving(pinned, receiver_pid)?;
        let sent_before = sent_counters(&self.seeds)?;
        let sender_before = cpu_of(&sender_pids)?;
        let receiver_before = cpu_seconds(receiver_pid)?;
        let faults_before = minor_faults(receiver_pid)?;
        let gateway = receiver.gateway().to_string();
        let (seconds, cpu_client, streamed) = self.timed_curl(&gateway, pinned, Source::Gateway)?;
        // B's CPU counts all its work on the blob, the sha256 that may run after curl is done
        // included: read once the blob is in B's store.
        wait_until("the blob to enter B's store", EVENT_TIMEOUT, || {
            Ok(store_blobs(&receiver.status()?)? >= 1)
        })?;
        let fetch = Fetch {
            source: Source::Gateway,
            pinned,
            seconds,
            cpu_sender: cpu_of(&sender_pids)? - sender_before,
            cpu_receiver: cpu_seconds(receiver_pid)? - receiver_before,
            cpu_client,
            peak_rss: Some(peak_rss_bytes(receiver_pid)?),
            page_faults: Some(minor_faults(receiver_pid)? - faults_before),
            sent_per_peer: sent_since(&self.seeds, &sent_before)?,
            bytes_good: streamed,
        };
        self.finish_receiver(data, receiver, fetch)
    }

    /// A fresh node bootstrapped to the first `providers` seeds pulls the image. Every seed
    /// is measured (and pinned with the senders) whatever `providers` is, so that a chunk from
    /// a seed the row does not expect shows in its shares instead of hiding its CPU.
    fn node_pull(&mut self, source: Source, providers: usize, pinned: bool) -> Result<Fetch> {
        let (data, receiver) = self.start_receiver(providers)?;
        let sender_pids = self.seed_pids()?;
        let receiver_pid = node_pid(&receiver)?;
        let _sending = Placement::sending(pinned, &sender_pids)?;
        let _receiving = Placement::receiving(pinned, receiver_pid)?;
        let sent_before = sent_counters(&self.seeds)?;
        let sender_before = cpu_of(&sender_pids)?;
        let receiver_before = cpu_seconds(receiver_pid)?;
        let faults_before = minor_faults(receiver_pid)?;
        let client_before = children_cpu_seconds()?;
        let started = Instant::now();
        pull(
            &receiver,
            &format!("{TRANSFER_REPOSITORY}:{TRANSFER_TAG}"),
            pinned.then_some(RECEIVING_CORE),
        )?;
        let seconds = started.elapsed().as_secs_f64();
        let fetch = Fetch {
            source,
            pinned,
            seconds,
            cpu_sender: cpu_of(&sender_pids)? - sender_before,
            cpu_receiver: cpu_seconds(receiver_pid)? - receiver_before,
            cpu_client: children_cpu_seconds()? - client_before,
            peak_rss: Some(peak_rss_bytes(receiver_pid)?),
            page_faults: Some(minor_faults(receiver_pid)? - faults_before),
            sent_per_peer: sent_since(&self.seeds, &sent_before)?,
            bytes_good: true,
        };
        self.finish_receiver(data, receiver, fetch)
    }

    /// The process ids of every seed: the nodes that may send.
    fn seed_pids(&self) -> Result<Vec<u32>> {
        self.seeds.iter().map(node_pid).collect()
    }

    /// A fresh node bootstrapped to the first `providers` seeds, trusting A, once it is
    /// connected to them and knows the tag.
    fn start_receiver(&mut self, providers: usize) -> Result<(PathBuf, ShoalNode)> {
        let peers: Vec<&ShoalNode> = self.seeds.iter().take(providers).collect();
        self.receivers_started += 1;
        let data = self
            .dir
            .join(format!("receiver-{}", self.receivers_started));
        let mut args = bootstrap_args(&peers)?;
        args.extend(["--trust".to_owned(), self.seeds[0].peer_id().to_owned()]);
        // With one provider, the receiver's zone is A alone: it cannot reach the other seeds
        // (which it would find through the DHT and take chunks from), so a 1-peer row is one
        // peer's.
        if providers == 1 {
            args.extend(["--serve-peers".to_owned(), "zone".to_owned()]);
        }
        let receiver = start_node(&data, &args)?;
        let peer_ids: Vec<&str> = peers.iter().map(|node| node.peer_id()).collect();
        wait_connected(&receiver, &peer_ids)?;
        wait_knows_tag(&receiver, TRANSFER_REPOSITORY, TRANSFER_TAG)?;
        Ok((data, receiver))
    }

    /// Checks the blob the receiver stored (untimed), then stops it and removes its data.
    fn finish_receiver(
        &self,
        data: PathBuf,
        mut receiver: ShoalNode,
        mut fetch: Fetch,
    ) -> Result<Fetch> {
        let gateway = receiver.gateway().to_string();
        fetch.bytes_good &= blob_matches(&gateway, TRANSFER_REPOSITORY, &self.blob)?;
        receiver.stop()?;
        drop(receiver);
        std::fs::remove_dir_all(&data)?;
        Ok(fetch)
    }

    /// Times curl reading the blob from `host` to /dev/null, on the receiving core when
    /// `pinned`; its seconds, CPU seconds, and whether it got every byte with a 200.
    fn timed_curl(&self, host: &str, pinned: bool, source: Source) -> Result<(f64, f64, bool)> {
        let mut command = Command::new("taskset");
        if pinned {
            command.args(["-c", &RECEIVING_CORE.to_string()]);
        } else {
            command.args(["-c", &all_cores()]);
        }
        command.args([
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
        ]);
        command.arg(self.blob_url(host));
        let client_before = children_cpu_seconds()?;
        let started = Instant::now();
        let output = command.output().context("cannot run curl")?;
        let seconds = started.elapsed().as_secs_f64();
        let cpu = children_cpu_seconds()? - client_before;
        let written = String::from_utf8_lossy(&output.stdout).into_owned();
        let good = output.status.success() && written == format!("200 {}", self.blob.size);
        if !good {
            eprintln!("WRONG ANSWER from {}: {written}", source.name());
        }
        Ok((seconds, cpu, good))
    }

    fn print_summary(&self, fetches: &[Fetch]) -> Result<()> {
        let size = self.blob.size;
        let gb = size as f64 / 1e9;
        let of = |source: Source, pinned: bool| {
            fetches
                .iter()
                .filter(move |fetch| fetch.source == source && fetch.pinned == pinned)
        };
        let seconds_of =
            |source: Source, pinned: bool| median(of(source, pinned).map(|fetch| fetch.seconds));
        println!(
            "\nmedians over the rounds ({:.0} MiB blob); CPU in seconds per GB moved:",
            size as f64 / MIB
        );
        println!(
            "  {:<26} {:<9} {:>7} {:>7} {:>10} {:>7} {:>9} {:>7}",
            "source -> client",
            "placement",
            "seconds",
            "MB/s",
            "x registry",
            "sender",
            "receiver",
            "client"
        );
        let mut cpu_per_gb = Vec::new();
        for pinned in [false, true] {
            let registry = seconds_of(Source::Registry, pinned);
            for source in Source::ALL {
                let Some(seconds) = seconds_of(source, pinned) else {
                    continue;
                };
                let cpu = |part: fn(&Fetch) -> f64| {
                    median(of(source, pinned).map(|fetch| part(fetch) / gb)).unwrap_or(0.0)
                };
                let (sender, receiver) = (cpu(|f| f.cpu_sender), cpu(|f| f.cpu_receiver));
                if !matches!(source, Source::Registry | Source::Loopback) {
                    cpu_per_gb.push((source, pinned, sender, receiver));
                }
                println!(
                    "  {:<26} {:<9} {:>7.2} {:>7.0} {:>10} {:>7.2} {:>9.2} {:>7.2}",
                    source.name(),
                    if pinned { "pinned" } else { "unpinned" },
                    seconds,
                    mb_per_s(size, seconds),
                    registry.map_or("-".into(), |r| format!("{:.2}", r / seconds)),
                    sender,
                    receiver,
                    cpu(|f| f.cpu_client),
                );
            }
        }
        self.print_uplink_bound(&seconds_of);
        self.ceiling.print();
        let floor = Floor::of(&self.kernel, &self.ceiling);
        floor.print(&self.kernel);
        println!("  measured over the floor (median CPU per GB / floor):");
        for (source, pinned, sender, receiver) in &cpu_per_gb {
            let receiver_floor = match source {
                Source::Gateway => floor.receiver_gateway,
                _ => floor.receiver,
            };
            // Several senders share the bytes: together they do one sender's work.
            println!(
                "    {:<26} {:<9} sending {:.2}x  receiving {:.2}x",
                source.name(),
                if *pinned { "pinned" } else { "unpinned" },
                sender / floor.sender,
                receiver / receiver_floor
            );
        }
        let peak_rss = fetches
            .iter()
            .filter_map(|fetch| fetch.peak_rss)
            .max()
            .unwrap_or(0) as f64
            / MIB;
        self.print_seed_memory()?;
        if self.sender_egress_mib.is_empty() {
            println!("\ngoals:");
        } else {
            println!("\ngoals (set for seeds without limits; read the ratios above instead):");
        }
        let ratio = |source: Source, pinned: bool| {
            Some(seconds_of(Source::Registry, pinned)? / seconds_of(source, pinned)?)
        };
        let goal = |label: &str, ratio: Option<f64>, goal: f64| {
            let ratio = ratio.unwrap_or(0.0);
            println!(
                "  {label:<44} >= {goal:.1}x: {ratio:.2}x  {}",
                verdict(ratio >= goal)
            );
        };
        goal(
            "pinned, through B's gateway",
            ratio(Source::Gateway, true),
            GATEWAY_PINNED_GOAL,
        );
        goal(
            "unpinned shoal pull, 1 peer",
            ratio(Source::OnePeer, false),
            ONE_PEER_GOAL,
        );
        goal(
            "unpinned shoal pull, 3 peers",
            ratio(Source::ThreePeers, false),
            THREE_PEERS_GOAL,
        );
        let (one, three) = (
            seconds_of(Source::OnePeer, false),
            seconds_of(Source::ThreePeers, false),
        );
        println!(
            "  3 peers faster than 1 (unpinned pull): {:.2} s against {:.2} s  {}",
            three.unwrap_or(f64::NAN),
            one.unwrap_or(f64::NAN),
            verdict(matches!((three, one), (Some(three), Some(one)) if three < one))
        );
        let worst_receiver = cpu_per_gb.iter().map(|c| c.3).fold(0.0, f64::max);
        let worst_sender = cpu_per_gb.iter().map(|c| c.2).fold(0.0, f64::max);
        println!(
            "  receiving node CPU <= {RECEIVER_CPU_GOAL} s/GB: worst median {worst_receiver:.2}  {}",
            verdict(worst_receiver <= RECEIVER_CPU_GOAL)
        );
        println!(
            "  sending node(s) CPU <= {SENDER_CPU_GOAL} s/GB: worst median {worst_sender:.2}  {}",
            verdict(worst_sender <= SENDER_CPU_GOAL)
        );
        println!(
            "  receiver peak RSS < {PEAK_RSS_GOAL_MIB} MiB: {peak_rss:.0} MiB (highest of all \
             runs)  {}",
            verdict(peak_rss < PEAK_RSS_GOAL_MIB)
        );
        Ok(())
    }

    /// With the seeds' uplinks limited (`--sender-egress-mib`), each node fetch against the
    /// most its senders can send: the sum of their limits.
    fn print_uplink_bound(&self, seconds_of: &dyn Fn(Source, bool) -> Option<f64>) {
        if self.sender_egress_mib.is_empty() {
            return;
        }
        let rates: Vec<String> = self
            .sender_egress_mib
            .iter()
            .map(|&rate| {
                if rate == 0 {
                    "none".into()
                } else {
                    format!("{rate}")
                }
            })
            .collect();
        println!(
            "\nthe seeds' uplinks limited to {} MiB/s (A, B, C); each node fetch against the sum \
             of its senders' limits:",
            rates.join(", ")
        );
        for source in [Source::Gateway, Source::OnePeer, Source::ThreePeers] {
            let senders = &self.sender_egress_mib[..source.senders()];
            if senders.contains(&0) {
                continue;
            }
            let bound = senders.iter().sum::<u64>() as f64 * MIB / 1e6;
            for pinned in [false, true] {
                let Some(seconds) = seconds_of(source, pinned) else {
                    continue;
                };
                let rate = mb_per_s(self.blob.size, seconds);
                println!(
                    "  {:<26} {:<9} {rate:>7.0} MB/s of {bound:.0}: {:.2}x",
                    source.name(),
                    if pinned { "pinned" } else { "unpinned" },
                    rate / bound
                );
            }
        }
    }

    fn print_seed_memory(&self) -> Result<()> {
        let mut line = String::from("  seeds' peak RSS over the whole run:");
        for (name, seed) in ["A", "B", "C"].iter().zip(&self.seeds) {
            let rss = peak_rss_bytes(node_pid(seed)?)? as f64 / MIB;
            write!(line, " {name} {rss:.0} MiB")?;
        }
        println!("{line}");
        Ok(())
    }
}

/// The CPU affinity of a fetch's long-lived processes, set for one pinned fetch and given back
/// to every core when dropped.
struct Placement {
    pids: Vec<u32>,
}

impl Placement {
    fn sending(pinned: bool, pids: &[u32]) -> Result<Option<Placement>> {
        Placement::pin(pinned, pids, SENDING_CORE)
    }

    fn receiving(pinned: bool, pid: u32) -> Result<Option<Placement>> {
        Placement::pin(pinned, &[pid], RECEIVING_CORE)
    }

    fn pin(pinned: bool, pids: &[u32], core: usize) -> Result<Option<Placement>> {
        if !pinned {
            return Ok(None);
        }
        for pid in pids {
            set_affinity(*pid, &core.to_string())?;
        }
        Ok(Some(Placement {
            pids: pids.to_vec(),
        }))
    }
}

impl Drop for Placement {
    fn drop(&mut self) {
        for pid in &self.pids {
            if let Err(error) = set_affinity(*pid, &all_cores()) {
                eprintln!("cannot unpin process {pid}: {error:#}");
            }
        }
    }
}

/// Every core of the machine, in taskset's list syntax.
fn all_cores() -> String {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    format!("0-{}", cores - 1)
}

/// Moves every thread of process `pid` to `cores`.
fn set_affinity(pid: u32, cores: &str) -> Result<()> {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &pid.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .context("cannot run taskset")?;
    ensure!(status.success(), "taskset {cores} {pid} failed");
    Ok(())
}

fn single_layer(image: &GeneratedImage) -> Result<Blob> {
    let platform = image.platforms.first().context("no platform")?;
    ensure!(platform.layers.len() == 1, "expected one layer");
    Ok(platform.layers[0].blob.clone())
}

fn sent_counters(nodes: &[ShoalNode]) -> Result<Vec<u64>> {
    nodes
        .iter()
        .map(|node| counter(&node.status()?, "bytes_sent_to_peers"))
        .collect()
}

fn sent_since(nodes: &[ShoalNode], before: &[u64]) -> Result<Vec<u64>> {
    Ok(sent_counters(nodes)?
        .iter()
        .zip(before)
        .map(|(after, before)| after - before)
        .collect())
}

fn cpu_of(pids: &[u32]) -> Result<f64> {
    let mut total = 0.0;
    for pid in pids {
        total += cpu_seconds(*pid)?;
    }
    Ok(total)
}

fn print_fetch(round: usize, fetch: &Fetch, size: u64) {
    let mut line = format!(
        "round {round}  {:<26} {:<8} {:>6.2} s {:>6.0} MB/s  CPU sender {:>5.2} s receiver {:>5.2} s \
         client {:>5.2} s",
        fetch.source.name(),
        if fetch.pinned { "pinned" } else { "unpinned" },
        fetch.seconds,
        mb_per_s(size, fetch.seconds),
        fetch.cpu_sender,
        fetch.cpu_receiver,
        fetch.cpu_client,
    );
    if let Some(rss) = fetch.peak_rss {
        let _ = write!(line, "  peak RSS {:.0} MiB", rss as f64 / MIB);
    }
    if let Some(faults) = fetch.page_faults {
        let _ = write!(
            line,
            "  page faults {:.0}/MiB",
            faults as f64 * MIB / size as f64
        );
    }
    if fetch.sent_per_peer.len() > 1 {
        let shares: Vec<String> = fetch
            .sent_per_peer
            .iter()
            .map(|sent| format!("{:.0}%", 100.0 * *sent as f64 / size as f64))
            .collect();
        let _ = write!(line, "  sent by each peer {}", shares.join("/"));
    }
    if !fetch.bytes_good {
        line.push_str("  WRONG BYTES");
    }
    println!("{line}");
}
