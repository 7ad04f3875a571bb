//! soak: a swarm left running for minutes under churn. One publisher node imports a new image
//! every 15 s and one steady peer stays up throughout; around them, nodes join, leave
//! (SIGTERM), crash (SIGKILL, often right after a pull started) and come back on the same data
//! directory, while images are pulled through `shoal pull` and through the gateways, by
//! digest, from whichever nodes are up. At the end:
//!
//! - every surviving node has every image: each tag is pulled through each node's gateway and
//!   every manifest and blob checked against its digest;
//! - nothing in any store is corrupted: after the nodes stop, every blob file of every data
//!   directory (crashed ones included) is re-hashed against its name;
//! - no node's memory grew without bound: RSS is sampled throughout and printed per 30 s for
//!   every node that lived a minute or more; a long-lived node whose RSS in its last window is
//!   more than 1.5× (and 32 MiB over) its RSS a minute in fails the run;
//! - every pull on a node that was not stopped or killed meanwhile succeeded.
//!
//!   cargo run --release -p shoal-tests --bin soak -- --minutes 5 [--nodes 6] [--seed 1]
//!
//! It prints a summary (docs/soak.md has one) and exits non-zero if any check failed;
//! `SOAK_VERBOSE=1` also prints every pull as it ends. Choices come from a seeded generator,
//! so a seed repeats the same schedule (timing still varies).

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shoal_protocol::rng::SplitMix64;
use shoal_tests::bench::rss_bytes;
use shoal_tests::clients::wait_until;
use shoal_tests::http;
use shoal_tests::image::{GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal};

const USAGE: &str = "usage: soak [--minutes M] [--nodes N] [--seed S]
  --minutes M   how long the churn lasts (default 5; fractions allowed)
  --nodes N     node slots, the publisher included (default 6, at least 3)
  --seed S      seed of the schedule (default 1)";

/// Time between two scheduled events.
const TICK: Duration = Duration::from_millis(1500);
/// A new image is published about this often.
const PUBLISH_EVERY: Duration = Duration::from_secs(15);
/// Pulls running at once, at most.
const PULLS_IN_FLIGHT_MAX: usize = 6;
/// RSS figures are grouped in windows this long.
const RSS_WINDOW: Duration = Duration::from_secs(30);
/// Bound on the final catch-up of a node (announcements, then pulls).
const FINAL_TIMEOUT: Duration = Duration::from_secs(120);
const REPOSITORY: &str = "soak/app";
const MIB: f64 = (1 << 20) as f64;

#[derive(Debug)]
struct Options {
    minutes: f64,
    nodes: usize,
    seed: u64,
}

fn parse_args() -> Result<Option<Options>> {
    let mut options = Options {
        minutes: 5.0,
        nodes: 6,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--minutes" => options.minutes = value()?.parse()?,
            "--nodes" => options.nodes = value()?.parse()?,
            "--seed" => options.seed = value()?.parse()?,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(None);
            }
            other => bail!("unknown argument {other:?}\n{USAGE}"),
        }
    }
    if options.nodes < 3 {
        bail!("--nodes must be at least 3\n{USAGE}");
    }
    Ok(Some(options))
}

/// One data directory and the node running on it, if any. `epoch` changes whenever the node
/// is stopped or killed, so a pull can tell whether its node was disturbed while it ran.
struct Slot {
    name: String,
    data: PathBuf,
    node: Option<ShoalNode>,
    epoch: u64,
    /// Pulls running against the node.
    pulls: usize,
    /// Digests of the images pulled whole into this data directory.
    has: HashSet<String>,
    /// RSS samples of the current incarnation: (seconds since it started, bytes).
    samples: Vec<(f64, u64)>,
    started: Instant,
}

/// The RSS history of one incarnation of a node.
struct Incarnation {
    label: String,
    samples: Vec<(f64, u64)>,
}

struct Published {
    tag: String,
    digest: String,
}

#[derive(Default)]
struct Tally {
    kills: usize,
    kills_mid_pull: usize,
    stops: usize,
    starts: usize,
    joins: usize,
    pulls_cli: usize,
    pulls_gateway: usize,
    pulls_ok: usize,
    pulls_interrupted: usize,
    failures: Vec<String>,
}

enum PullKind {
    Cli,
    Gateway,
}

struct PullDone {
    slot: usize,
    epoch: u64,
    what: String,
    digest: String,
    result: Result<()>,
}

fn main() -> ExitCode {
    match parse_args().and_then(|options| options.map(run).transpose()) {
        Ok(Some(true) | None) => ExitCode::SUCCESS,
        Ok(Some(false)) => ExitCode::FAILURE,
        Err(error) => {
            eprintln!("soak: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs the soak; `Ok(false)` when a check failed.
fn run(options: Options) -> Result<bool> {
    let scratch = tempfile::tempdir()?;
    let dir = scratch.path();
    let mut rng = SplitMix64::new(options.seed);
    let mut tally = Tally::default();
    let mut incarnations = Vec::new();
    let mut published: Vec<Published> = Vec::new();

    let publisher_data = dir.join("publisher");
    let publisher = ShoalNode::start(&publisher_data, &[])?;
    let mut slots = vec![Slot {
        name: "publisher".into(),
        data: publisher_data,
        node: Some(publisher),
        epoch: 0,
        pulls: 0,
        has: HashSet::new(),
        samples: Vec::new(),
        started: Instant::now(),
    }];
    publish(dir, &mut slots[0], &mut published, &mut rng)?;
    // Half the other slots start at once; the rest join during the run.
    for i in 1..=(options.nodes - 1) / 2 {
        let slot = new_slot(dir, i, &slots[0])?;
        slots.push(slot);
        tally.joins += 1;
    }

    let churn = Duration::from_secs_f64(options.minutes * 60.0);
    let started = Instant::now();
    let mut last_publish = Instant::now();
    let (done_sender, done) = mpsc::channel::<PullDone>();
    let mut in_flight = 0usize;
    println!(
        "soak: {:.1} min of churn over {} node slots, seed {}",
        options.minutes, options.nodes, options.seed
    );
    while started.elapsed() < churn {
        std::thread::sleep(TICK);
        sample_rss(&mut slots);
        while let Ok(finished) = done.try_recv() {
            in_flight -= 1;
            settle(&mut slots, finished, &mut tally);
        }
        if last_publish.elapsed() >= PUBLISH_EVERY {
            publish(dir, &mut slots[0], &mut published, &mut rng)?;
            last_publish = Instant::now();
            continue;
        }
        let up: Vec<usize> = (1..slots.len())
            .filter(|&i| slots[i].node.is_some())
            .collect();
        let down: Vec<usize> = (1..slots.len())
            .filter(|&i| slots[i].node.is_none())
            .collect();
        // Slot 1 is a steady peer, never stopped, so that memory is watched on a node that
        // pulls all along, besides the publisher.
        let churnable: Vec<usize> = up.iter().copied().filter(|&i| i != 1).collect();
        match rng.below(12) {
            // A pull by digest of a random image, through the CLI or a gateway.
            0..=6 if in_flight < PULLS_IN_FLIGHT_MAX => {
                let kind = if rng.below(2) == 0 {
                    PullKind::Cli
                } else {
                    PullKind::Gateway
                };
                let candidates: Vec<usize> = match kind {
                    PullKind::Cli => up.clone(),
                    PullKind::Gateway => (0..slots.len())
                        .filter(|&i| slots[i].node.is_some())
                        .collect(),
                };
                if candidates.is_empty() {
                    continue;
                }
                let slot = candidates[rng.below(candidates.len())];
                // Mostly an image the node does not have yet, so that the pull moves bytes.
                let missing: Vec<&Published> = published
                    .iter()
                    .filter(|image| !slots[slot].has.contains(&image.digest))
                    .collect();
                let image = if !missing.is_empty() && rng.below(4) != 0 {
                    missing[rng.below(missing.len())]
                } else {
                    &published[rng.below(published.len())]
                };
                match kind {
                    PullKind::Cli => tally.pulls_cli += 1,
                    PullKind::Gateway => tally.pulls_gateway += 1,
                }
                spawn_pull(&slots[slot], slot, kind, &image.digest, done_sender.clone())?;
                slots[slot].pulls += 1;
                in_flight += 1;
                // Now and then the node crashes in the middle of it.
                if slot > 1 && churnable.len() > 1 && rng.below(4) == 0 {
                    std::thread::sleep(Duration::from_millis(rng.below(150) as u64));
                    let slot = &mut slots[slot];
                    if let Some(mut node) = slot.node.take() {
                        node.kill();
                    }
                    retire(slot, &mut incarnations, "killed");
                    tally.kills += 1;
                    tally.kills_mid_pull += 1;
                }
            }
            // A crash, half the time of a node in the middle of a pull.
            7 | 8 if churnable.len() > 1 => {
                let pulling: Vec<usize> = churnable
                    .iter()
                    .copied()
                    .filter(|&i| slots[i].pulls > 0)
                    .collect();
                let victims = if !pulling.is_empty() && rng.below(2) == 0 {
                    &pulling
                } else {
                    &churnable
                };
                let slot = &mut slots[victims[rng.below(victims.len())]];
                if let Some(mut node) = slot.node.take() {
                    node.kill();
                }
                retire(slot, &mut incarnations, "killed");
                tally.kills += 1;
            }
            // A clean leave.
            9 if churnable.len() > 1 => {
                let slot = &mut slots[churnable[rng.below(churnable.len())]];
                stop(slot, &mut tally)?;
                retire(slot, &mut incarnations, "stopped");
                tally.stops += 1;
            }
            // A node comes back on its data directory, or a new one joins.
            _ => {
                if slots.len() < options.nodes && (down.is_empty() || rng.below(2) == 0) {
                    let slot = new_slot(dir, slots.len(), &slots[0])?;
                    slots.push(slot);
                    tally.joins += 1;
                } else if !down.is_empty() {
                    let index = down[rng.below(down.len())];
                    let node = ShoalNode::start_joined(
                        &slots[index].data,
                        &[slots[0].node.as_ref().context("publisher down")?],
                        &[],
                    )?;
                    let slot = &mut slots[index];
                    slot.node = Some(node);
                    slot.started = Instant::now();
                    slot.samples.clear();
                    tally.starts += 1;
                }
            }
        }
    }
    while in_flight > 0 {
        let finished = done.recv()?;
        in_flight -= 1;
        settle(&mut slots, finished, &mut tally);
    }
    let churn_elapsed = started.elapsed();

    // Every surviving node must end with every image, by tag, through its own gateway.
    let survivors: Vec<usize> = (0..slots.len())
        .filter(|&i| slots[i].node.is_some())
        .collect();
    let mut final_pulls = 0;
    let mut final_bytes = 0;
    for &index in &survivors {
        let slot = &slots[index];
        let node = slot.node.as_ref().context("a survivor")?;
        for image in &published {
            let known = wait_until("the tag to reach the node", FINAL_TIMEOUT, || {
                node.knows_tag(&format!("docker.io/{REPOSITORY}"), &image.tag)
            });
            let pulled = known.and_then(|()| {
                http::pull_image(&node.gateway().to_string(), REPOSITORY, &image.tag)
            });
            match pulled {
                Ok(pulled) if pulled.digest == image.digest => {
                    final_pulls += 1;
                    final_bytes += pulled.bytes;
                }
                Ok(pulled) => tally.failures.push(format!(
                    "{}: tag {} is {}, published as {}",
                    slot.name, image.tag, pulled.digest, image.digest
                )),
                Err(error) => tally.failures.push(format!(
                    "{}: final pull of {}: {error:#}",
                    slot.name, image.tag
                )),
            }
        }
    }
    sample_rss(&mut slots);

    // Stop everyone cleanly, then re-hash every store, the crashed nodes' included.
    for slot in &mut slots {
        stop(slot, &mut tally)?;
        retire(slot, &mut incarnations, "end");
    }
    let mut blob_files = 0;
    let mut blob_bytes = 0;
    for slot in &slots {
        let (files, bytes, corrupt) = rehash_store(&slot.data)?;
        blob_files += files;
        blob_bytes += bytes;
        for path in corrupt {
            tally.failures.push(format!(
                "{}: corrupt blob file {}",
                slot.name,
                path.display()
            ));
        }
    }

    let rss_failures = report_rss(&incarnations);
    tally.failures.extend(rss_failures);
    println!(
        "churn: {:.1} min; {} images published; {} crashes (SIGKILL; {} right after a pull started), {} clean leaves, {} restarts \
         on the same data, {} nodes joined",
        churn_elapsed.as_secs_f64() / 60.0,
        published.len(),
        tally.kills,
        tally.kills_mid_pull,
        tally.stops,
        tally.starts,
        tally.joins,
    );
    println!(
        "pulls during churn: {} (shoal pull {}, gateway {}): {} ok, {} cut short by their node \
         leaving or crashing, {} failed",
        tally.pulls_cli + tally.pulls_gateway,
        tally.pulls_cli,
        tally.pulls_gateway,
        tally.pulls_ok,
        tally.pulls_interrupted,
        tally.failures.len(),
    );
    println!(
        "final: {} surviving nodes × {} images = {final_pulls} pulls by tag through each \
         gateway, {:.0} MiB, every digest checked",
        survivors.len(),
        published.len(),
        final_bytes as f64 / MIB,
    );
    println!(
        "stores: {} data directories, {blob_files} blob files ({:.0} MiB) re-hashed against \
         their names",
        slots.len(),
        blob_bytes as f64 / MIB,
    );
    if tally.failures.is_empty() {
        println!("soak: ok");
        Ok(true)
    } else {
        for failure in &tally.failures {
            println!("FAILED: {failure}");
        }
        Ok(false)
    }
}

fn new_slot(dir: &Path, index: usize, publisher: &Slot) -> Result<Slot> {
    let name = format!("node-{index}");
    let data = dir.join(&name);
    let node = ShoalNode::start_joined(
        &data,
        &[publisher.node.as_ref().context("publisher down")?],
        &[],
    )?;
    Ok(Slot {
        name,
        data,
        node: Some(node),
        epoch: 0,
        pulls: 0,
        has: HashSet::new(),
        samples: Vec::new(),
        started: Instant::now(),
    })
}

/// Imports a new image on the publisher: two or three layers of 64 KiB to 16 MiB.
fn publish(
    dir: &Path,
    publisher: &mut Slot,
    published: &mut Vec<Published>,
    rng: &mut SplitMix64,
) -> Result<()> {
    let number = published.len() + 1;
    let mut spec = ImageSpec::new(1000 + number as u64).gzip(GzipLevel::Store);
    for _ in 0..2 + rng.below(2) {
        spec = spec.layer(64 * 1024 + rng.below(16 << 20) as u64);
    }
    let layout = dir.join(format!("image-{number}"));
    let generated = spec.write_oci_layout(&layout, None)?;
    let tag = format!("v{number}");
    publisher
        .node
        .as_ref()
        .context("publisher down")?
        .import_ok(&generated.path, Some(&format!("{REPOSITORY}:{tag}")))?;
    std::fs::remove_dir_all(&layout)?;
    published.push(Published {
        tag,
        digest: generated.manifest_digest,
    });
    Ok(())
}

fn spawn_pull(
    slot: &Slot,
    index: usize,
    kind: PullKind,
    digest: &str,
    done: mpsc::Sender<PullDone>,
) -> Result<()> {
    let node = slot.node.as_ref().context("pull on a stopped node")?;
    let (data, gateway, epoch) = (slot.data.clone(), node.gateway().to_string(), slot.epoch);
    let digest = digest.to_owned();
    let what = match kind {
        PullKind::Cli => format!("shoal pull on {}", slot.name),
        PullKind::Gateway => format!("gateway pull from {}", slot.name),
    };
    std::thread::spawn(move || {
        let result = match kind {
            PullKind::Cli => shoal_pull(&data, &format!("{REPOSITORY}@{digest}")),
            PullKind::Gateway => http::pull_image(&gateway, REPOSITORY, &digest).and_then(|p| {
                anyhow::ensure!(p.digest == digest, "got {}", p.digest);
                Ok(())
            }),
        };
        let _ = done.send(PullDone {
            slot: index,
            epoch,
            what,
            digest,
            result,
        });
    });
    Ok(())
}

fn shoal_pull(data: &Path, reference: &str) -> Result<()> {
    let output = shoal(data, "pull")?.arg(reference).output()?;
    anyhow::ensure!(
        output.status.success(),
        "shoal pull {reference}: {}",
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

/// Counts a finished pull: a failure only matters if its node stayed up throughout.
fn settle(slots: &mut [Slot], finished: PullDone, tally: &mut Tally) {
    slots[finished.slot].pulls -= 1;
    if std::env::var_os("SOAK_VERBOSE").is_some() {
        let outcome = match &finished.result {
            Ok(()) => "ok".to_owned(),
            Err(error) => format!("{error:#}"),
        };
        eprintln!(
            "{} of {} (epoch {} → {}): {outcome}",
            finished.what, finished.digest, finished.epoch, slots[finished.slot].epoch
        );
    }
    match finished.result {
        Ok(()) => {
            tally.pulls_ok += 1;
            slots[finished.slot].has.insert(finished.digest);
        }
        Err(_) if slots[finished.slot].epoch != finished.epoch => tally.pulls_interrupted += 1,
        Err(error) => tally.failures.push(format!("{}: {error:#}", finished.what)),
    }
}

fn sample_rss(slots: &mut [Slot]) {
    for slot in slots {
        let Some(pid) = slot.node.as_ref().and_then(ShoalNode::pid) else {
            continue;
        };
        if let Ok(rss) = rss_bytes(pid) {
            let at = slot.started.elapsed().as_secs_f64();
            slot.samples.push((at, rss));
        }
    }
}

/// Stops the slot's node with SIGTERM, if it runs; anything but a clean exit is a failure.
fn stop(slot: &mut Slot, tally: &mut Tally) -> Result<()> {
    if let Some(mut node) = slot.node.take() {
        let status = node.stop()?;
        if !status.success() {
            tally
                .failures
                .push(format!("{} exited with {status} on SIGTERM", slot.name));
        }
    }
    Ok(())
}

/// Ends the slot's current incarnation: keeps its RSS history, bumps its epoch.
fn retire(slot: &mut Slot, incarnations: &mut Vec<Incarnation>, how: &str) {
    slot.epoch += 1;
    if !slot.samples.is_empty() {
        incarnations.push(Incarnation {
            label: format!("{} ({how})", slot.name),
            samples: std::mem::take(&mut slot.samples),
        });
    }
}

/// Prints RSS per window for every incarnation that lived a minute or more; returns a failure
/// for each long-lived one whose last window is far above its RSS a minute in.
fn report_rss(incarnations: &[Incarnation]) -> Vec<String> {
    let mut failures = Vec::new();
    println!(
        "RSS in MiB, largest sample per {} s window, of every node that ran a minute or more:",
        RSS_WINDOW.as_secs()
    );
    for incarnation in incarnations {
        let lived = incarnation.samples.last().map_or(0.0, |(at, _)| *at);
        if lived < 60.0 {
            continue;
        }
        let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
        for (at, rss) in &incarnation.samples {
            let window = (*at / RSS_WINDOW.as_secs_f64()) as u64;
            let largest = windows.entry(window).or_default();
            *largest = (*largest).max(*rss);
        }
        let figures: Vec<String> = windows
            .values()
            .map(|rss| format!("{:.0}", *rss as f64 / MIB))
            .collect();
        println!(
            "  {:<24} {:>4.0} s: {}",
            incarnation.label,
            lived,
            figures.join(" ")
        );
        let (Some(warm), Some(last)) =
            (windows.get(&2).or(windows.get(&1)), windows.values().last())
        else {
            continue;
        };
        if lived >= 120.0 && *last as f64 > *warm as f64 * 1.5 && last - warm > 32 << 20 {
            failures.push(format!(
                "{}: RSS grew from {:.0} MiB to {:.0} MiB",
                incarnation.label,
                *warm as f64 / MIB,
                *last as f64 / MIB
            ));
        }
    }
    failures
}

/// Re-hashes every blob file under `data` against its name: (files, bytes, corrupt paths).
fn rehash_store(data: &Path) -> Result<(usize, u64, Vec<PathBuf>)> {
    let root = data.join("blobs").join("sha256");
    let (mut files, mut bytes, mut corrupt) = (0, 0, Vec::new());
    let Ok(prefixes) = std::fs::read_dir(&root) else {
        return Ok((0, 0, corrupt));
    };
    for prefix in prefixes {
        for entry in std::fs::read_dir(prefix?.path())? {
            let path = entry?.path();
            let mut file = std::fs::File::open(&path)
                .with_context(|| format!("opening {}", path.display()))?;
            let (digest, size) = http::sha256_of(&mut file)?;
            files += 1;
            bytes += size;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if digest.strip_prefix("sha256:") != Some(name) {
                corrupt.push(path);
            }
        }
    }
    Ok((files, bytes, corrupt))
}
