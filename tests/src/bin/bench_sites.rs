//! One copy per site, measured: two sites in network namespaces joined by a link shaped with
//! `tc tbf` (50 Mbit/s by default), three hosts in site B pulling an image that lives in site A.
//!
//! - Shoal: three `shoal node --site a` in A (the image imported on the first), three
//!   `shoal node --site b` in B; every B node runs `shoal pull` at once.
//! - Reference: a docker-registry in A holding the same image; three skopeo copies in B at once.
//!
//! Printed for both: bytes over the link (from B's interface counter) against the image size,
//! and the time until the last B host is done against the time one copy takes over the link.
//! Goal: Shoal at most 1.1 copies and within 1.3 × the one-copy time.
//!
//! Run: `cargo run --release -p shoal-tests --bin bench_sites -- [--rounds N] [--size-mb M]
//! [--mbit R]` (as root: it creates namespaces).

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_tests::bench::median;
use shoal_tests::clients::{Skopeo, wait_until};
use shoal_tests::image::{GeneratedImage, GzipLevel, ImageSpec};
use shoal_tests::node::{ShoalNode, shoal};
use shoal_tests::registry::{DockerRegistry, RegistryConfig, push_oci_layout};
use shoal_tests::sites::{SITE_A_IP, Site, TwoSites};

const HOSTS_IN_B: usize = 3;
const REFERENCE: &str = "fleet/app:1";
const EVENT_TIMEOUT: Duration = Duration::from_secs(600);

struct Options {
    rounds: usize,
    size_mb: u64,
    mbit: u32,
}

fn options() -> Result<Options> {
    let mut options = Options {
        rounds: 3,
        size_mb: 32,
        mbit: 50,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--rounds" => options.rounds = value()?.parse()?,
            "--size-mb" => options.size_mb = value()?.parse()?,
            "--mbit" => options.mbit = value()?.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    Ok(options)
}

/// What one pull of the whole of site B measured.
struct Outcome {
    link_bytes: u64,
    last_done: Duration,
}

fn shoal_round(dir: &Path, sites: &TwoSites, image: &GeneratedImage) -> Result<Outcome> {
    let a1 = sites.start_node(Site::A, &dir.join("a1"), &[], &["--site", "a"])?;
    let _a2 = sites.start_node(Site::A, &dir.join("a2"), &[&a1], &["--site", "a"])?;
    let _a3 = sites.start_node(Site::A, &dir.join("a3"), &[&a1], &["--site", "a"])?;
    a1.import_ok(&image.path, Some(REFERENCE))?;
    let mut b: Vec<ShoalNode> = Vec::new();
    for i in 0..HOSTS_IN_B {
        let seeds: Vec<&ShoalNode> = std::iter::once(&a1).chain(b.iter()).collect();
        let node = sites.start_node(
            Site::B,
            &dir.join(format!("b{i}")),
            &seeds,
            &["--site", "b"],
        )?;
        b.push(node);
    }
    for node in &b {
        wait_until(
            "site B to know the tag and its mates",
            EVENT_TIMEOUT,
            || {
                let status = node.status()?;
                let mates = status["peers"].as_array().map_or(0, |peers| {
                    peers
                        .iter()
                        .filter(|peer| peer["same_site"] == true)
                        .count()
                });
                let known = status["known_images"]
                    .as_array()
                    .is_some_and(|images| !images.is_empty());
                Ok(known && mates == HOSTS_IN_B - 1)
            },
        )?;
    }
    let before = sites.bytes_into_b()?;
    let last_done = last_of(&b, |node| {
        let output = shoal(node.data(), "pull")?.arg(REFERENCE).output()?;
        ensure!(
            output.status.success(),
            "shoal pull failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    })?;
    for node in &b {
        ensure!(
            node.status()?["store"]["blobs"] == image.blobs.len(),
            "a B node lacks blobs after its pull"
        );
    }
    Ok(Outcome {
        link_bytes: sites.bytes_into_b()? - before,
        last_done,
    })
}

fn registry_round(dir: &Path, sites: &TwoSites, image: &GeneratedImage) -> Result<Outcome> {
    let registry = DockerRegistry::start_with(RegistryConfig {
        netns: Some(sites.a.clone()),
        listen_ip: Some(SITE_A_IP.parse::<Ipv4Addr>()?),
        ..RegistryConfig::default()
    })?;
    let pushed = push_oci_layout(&image.path, &registry, REFERENCE)?;
    ensure!(pushed == image.manifest_digest, "pushed {pushed}");
    let before = sites.bytes_into_b()?;
    let source = registry.reference(REFERENCE);
    let hosts: Vec<usize> = (0..HOSTS_IN_B).collect();
    let last_done = last_of(&hosts, |i| {
        let dest = dir.join(format!("copy{i}"));
        let digest = Skopeo::new()
            .in_netns(&sites.b)
            .copy_to_oci(&source, &dest, false)?;
        ensure!(digest == image.manifest_digest, "skopeo got {digest}");
        Ok(())
    })?;
    Ok(Outcome {
        link_bytes: sites.bytes_into_b()? - before,
        last_done,
    })
}

/// Runs `pull` for every host at once; returns when the last one is done.
fn last_of<T: Sync>(hosts: &[T], pull: impl Fn(&T) -> Result<()> + Sync) -> Result<Duration> {
    let started = Instant::now();
    std::thread::scope(|scope| {
        let pulls: Vec<_> = hosts
            .iter()
            .map(|host| {
                let pull = &pull;
                scope.spawn(move || pull(host).map(|()| started.elapsed()))
            })
            .collect();
        let mut last = Duration::ZERO;
        for done in pulls {
            last = last.max(
                done.join()
                    .map_err(|_| anyhow::anyhow!("a pull panicked"))??,
            );
        }
        Ok(last)
    })
}

fn main() -> Result<()> {
    let options = options()?;
    let dir = tempfile::TempDir::with_prefix("shoal-bench-sites-")?;
    let image = ImageSpec::sized(70, options.size_mb << 20)
        .gzip(GzipLevel::Store)
        .write_oci_layout(&dir.path().join("image"), None)?;
    let image_bytes: u64 = image.blobs.iter().map(|blob| blob.size).sum();
    let one_copy = image_bytes as f64 * 8.0 / (f64::from(options.mbit) * 1e6);
    println!(
        "image {:.1} MB; link {} Mbit/s each way; one copy over the link takes {one_copy:.2} s; \
         {HOSTS_IN_B} hosts in site B",
        image_bytes as f64 / 1e6,
        options.mbit
    );
    let (mut shoal_runs, mut registry_runs) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        // Alternate which goes first, so drift on a shared machine hits both alike.
        for shoal_turn in [round % 2 == 0, round % 2 == 1] {
            let sites = TwoSites::create(options.mbit)?;
            let work = tempfile::TempDir::with_prefix("round-")?;
            let (name, outcome) = if shoal_turn {
                ("shoal", shoal_round(work.path(), &sites, &image)?)
            } else {
                (
                    "docker-registry",
                    registry_round(work.path(), &sites, &image)?,
                )
            };
            println!(
                "round {round} {name:<16} {:.2} copies over the link, last host done after {:.2} s",
                outcome.link_bytes as f64 / image_bytes as f64,
                outcome.last_done.as_secs_f64()
            );
            if shoal_turn {
                shoal_runs.push(outcome);
            } else {
                registry_runs.push(outcome);
            }
        }
    }
    println!("\nmedians of {} rounds", options.rounds);
    println!("system            copies   last done s   / one copy");
    for (name, runs) in [("shoal", &shoal_runs), ("docker-registry", &registry_runs)] {
        let copies = median(
            runs.iter()
                .map(|o| o.link_bytes as f64 / image_bytes as f64),
        )
        .unwrap_or(f64::NAN);
        let last = median(runs.iter().map(|o| o.last_done.as_secs_f64())).unwrap_or(f64::NAN);
        println!(
            "{name:<16} {copies:>7.2}   {last:>11.2}   {:>9.2}x",
            last / one_copy
        );
        if name == "shoal" {
            println!(
                "goal: at most 1.10 copies ({}), within 1.30x of one copy ({})",
                if copies <= 1.10 { "met" } else { "NOT met" },
                if last / one_copy <= 1.30 {
                    "met"
                } else {
                    "NOT met"
                }
            );
        }
    }
    Ok(())
}
