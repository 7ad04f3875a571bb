//! `shoal-simulations`: run one scenario file, or every scenario in a directory, and write
//! JSON results, an SVG plot per scenario and a Markdown summary.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Parser;
use shoal_simulations::{Report, Scenario, report, svg};

/// At 10,000 hosts the simulator's heap is over a gigabyte, touched at random: with 4 KiB pages
/// most events also miss the TLB. mimalloc backs its segments with transparent huge pages
/// (where the kernel allows them, `madvise` mode included), glibc's malloc only when told so
/// at start (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`): `extra/datacenter-10k-1mib` took 14-16 %
/// less time either way.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Discrete-event simulations of Shoal's scheduler at fleet scale.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Scenario files to run.
    scenarios: Vec<PathBuf>,
    /// Also run every `*.toml` in this directory.
    #[arg(long)]
    all: Option<PathBuf>,
    /// Where results go: `NAME.json`, `NAME.svg` and `summary.md`.
    #[arg(long, default_value = "simulations/results")]
    out: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut files = cli.scenarios.clone();
    if let Some(dir) = &cli.all {
        let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        found.sort();
        files.extend(found);
    }
    anyhow::ensure!(
        !files.is_empty(),
        "give scenario files, or --all DIR (try: -- --all simulations/scenarios)"
    );
    std::fs::create_dir_all(&cli.out).with_context(|| format!("creating {}", cli.out.display()))?;
    let mut reports = Vec::new();
    for file in &files {
        let report = run_file(file, &cli.out)?;
        reports.push(report);
    }
    let summary = report::summary(&reports);
    print!("\n{summary}");
    if cli.all.is_some() {
        let path = cli.out.join("summary.md");
        std::fs::write(&path, &summary).with_context(|| format!("writing {}", path.display()))?;
        println!("\nwrote {}", path.display());
    }
    Ok(())
}

fn run_file(file: &Path, out: &Path) -> anyhow::Result<Report> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let scenario =
        Scenario::from_toml(&text).with_context(|| format!("parsing {}", file.display()))?;
    eprintln!(
        "running {} (seed {}, {} hosts, {} MiB in {} chunks)...",
        scenario.name,
        scenario.seed,
        scenario.nodes,
        scenario.image_mib,
        scenario.chunk_count()
    );
    let report = shoal_simulations::run(&scenario);
    let s = &report.shoal;
    eprintln!(
        "  {}: {}/{} done, T_min {:.2} s, p50 {:?} p99 {:?} max {:?}, p99/T_min {:?}, origin {:.2} copies, {} events in {:.1} s wall",
        scenario.name,
        s.completion.completed,
        s.completion.hosts,
        report.bound.t_min_s,
        s.completion.p50_s,
        s.completion.p99_s,
        s.completion.max_s,
        s.p99_over_t_min,
        s.origin_copies,
        report.counters.events,
        report.wall_s
    );
    let json = out.join(format!("{}.json", scenario.name));
    std::fs::write(&json, serde_json::to_string_pretty(&report)?)
        .with_context(|| format!("writing {}", json.display()))?;
    let plot = out.join(format!("{}.svg", scenario.name));
    std::fs::write(&plot, svg::cdf_plot(&report))
        .with_context(|| format!("writing {}", plot.display()))?;
    Ok(report)
}
