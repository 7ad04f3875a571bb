//! The client side of `shoal import` and `shoal status`: send a request over the admin
//! socket and present the answer, with a progress bar on a terminal and plain lines otherwise.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};

use crate::admin::{self, AdminEvent, AdminRequest, StatusReport};
use crate::store::Layout;

pub async fn import(data: &Path, path: &Path, tag: Option<String>) -> anyhow::Result<()> {
    // The node resolves the path from its own working directory, so send an absolute one.
    let path =
        std::path::absolute(path).with_context(|| format!("invalid path {}", path.display()))?;
    anyhow::ensure!(path.exists(), "{} does not exist", path.display());
    let request = AdminRequest::Import {
        path: path.clone(),
        tag,
    };
    let label = format!("importing {}", path.display());
    match call_with_progress(data, &request, &label).await? {
        AdminEvent::Imported(report) => {
            for image in &report.images {
                println!("imported {} {}", image.reference, image.digest);
            }
            println!(
                "stored {} new blobs ({}), {} already present",
                report.stored.blobs_added,
                human_bytes(report.stored.bytes_added),
                report.blobs_already_stored
            );
            Ok(())
        }
        other => Err(failure(other)),
    }
}

pub async fn pull(data: &Path, reference: &str) -> anyhow::Result<()> {
    let request = AdminRequest::Pull {
        reference: reference.to_owned(),
    };
    match call_with_progress(data, &request, &format!("pulling {reference}")).await? {
        AdminEvent::Pulled { reference, digest } => {
            println!("pulled {reference} {digest}");
            Ok(())
        }
        other => Err(failure(other)),
    }
}

/// Sends `request` and shows its progress events until the final answer.
async fn call_with_progress(
    data: &Path,
    request: &AdminRequest,
    label: &str,
) -> anyhow::Result<AdminEvent> {
    let mut progress = Progress::new(label);
    let answer = admin::call(&Layout::new(data).socket(), request, |event| {
        if let AdminEvent::Progress { done, total } = event {
            progress.update(*done, *total);
        }
    })
    .await;
    progress.finish();
    answer
}

pub async fn status(data: &Path, json: bool) -> anyhow::Result<()> {
    match admin::call(&Layout::new(data).socket(), &AdminRequest::Status, |_| {}).await? {
        AdminEvent::Status(report) if json => {
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        AdminEvent::Status(report) => {
            print_status(&report);
            Ok(())
        }
        other => Err(failure(other)),
    }
}

/// `shoal pin`: pulls the image first (with progress), then pins it.
pub async fn pin(data: &Path, reference: &str) -> anyhow::Result<()> {
    let pull = AdminRequest::Pull {
        reference: reference.to_owned(),
    };
    match call_with_progress(data, &pull, &format!("pulling {reference}")).await? {
        AdminEvent::Pulled { .. } => {}
        other => return Err(failure(other)),
    }
    let request = AdminRequest::Pin {
        reference: reference.to_owned(),
    };
    match ask(data, &request).await? {
        AdminEvent::Pinned { reference, digest } => {
            println!("pinned {reference} {digest}");
            Ok(())
        }
        other => Err(failure(other)),
    }
}

pub async fn unpin(data: &Path, reference: &str) -> anyhow::Result<()> {
    let request = AdminRequest::Unpin {
        reference: reference.to_owned(),
    };
    match ask(data, &request).await? {
        AdminEvent::Unpinned { reference, digest } => {
            println!("unpinned {reference} {digest}");
            Ok(())
        }
        other => Err(failure(other)),
    }
}

pub async fn gc(data: &Path) -> anyhow::Result<()> {
    let (max_bytes, report) = match ask(data, &AdminRequest::Gc).await? {
        AdminEvent::Collected { max_bytes, report } => (max_bytes, report),
        other => return Err(failure(other)),
    };
    let Some(max_bytes) = max_bytes else {
        println!(
            "no --cache-max is set, so nothing is evicted; the store holds {}",
            human_bytes(report.stored_bytes)
        );
        return Ok(());
    };
    for digest in &report.evicted {
        println!("evicted {digest}");
    }
    println!(
        "freed {} in {} blobs; the store holds {} (budget {}, low watermark {})",
        human_bytes(report.bytes_freed),
        report.evicted.len(),
        human_bytes(report.stored_bytes),
        human_bytes(max_bytes),
        human_bytes(report.target_bytes)
    );
    if report.stored_bytes > report.target_bytes {
        println!("the rest is pinned or in use");
    }
    Ok(())
}

pub async fn verify(data: &Path) -> anyhow::Result<()> {
    let report = match ask(data, &AdminRequest::Verify).await? {
        AdminEvent::Verified(report) => report,
        other => return Err(failure(other)),
    };
    for digest in &report.corrupt {
        println!("corrupt {digest}: removed");
    }
    for digest in &report.missing {
        println!("missing {digest}: forgotten");
    }
    for digest in &report.dependents_removed {
        println!("removed {digest}: a manifest that referenced removed content");
    }
    let damaged = report.corrupt.len() + report.missing.len();
    println!(
        "checked {} blobs ({}): {}",
        report.blobs_checked,
        human_bytes(report.bytes_checked),
        if damaged == 0 {
            "all intact".to_owned()
        } else {
            format!("{damaged} damaged, removed; a later pull fetches them again")
        }
    );
    Ok(())
}

/// Sends a request that has no progress to show.
async fn ask(data: &Path, request: &AdminRequest) -> anyhow::Result<AdminEvent> {
    admin::call(&Layout::new(data).socket(), request, |_| {}).await
}

fn print_cache(cache: &crate::budget::CacheStatus) {
    let budget = match (cache.max_bytes, cache.low_watermark_bytes) {
        (Some(max), Some(low)) => format!(
            "{} of {} (evicting down to {})",
            human_bytes(cache.stored_bytes),
            human_bytes(max),
            human_bytes(low)
        ),
        _ => format!("{}, no --cache-max", human_bytes(cache.stored_bytes)),
    };
    println!(
        "cache     {budget}, {} blobs in use, {} pinned",
        cache.blobs_in_use,
        cache.pinned.len()
    );
    for pin in &cache.pinned {
        println!("  pinned {} {}", pin.reference, pin.digest);
    }
}

fn failure(event: AdminEvent) -> anyhow::Error {
    match event {
        AdminEvent::Failed { message } => anyhow::anyhow!(message),
        other => anyhow::anyhow!("unexpected answer from the node: {other:?}"),
    }
}

fn print_status(report: &StatusReport) {
    println!("peer id   {}", report.peer_id);
    println!("data      {}", report.data_dir.display());
    println!("gateway   {}://{}", report.gateway_scheme, report.gateway);
    println!("listening {}", report.listen_addresses.join(" "));
    if let Some(site) = &report.site {
        println!("site      {site}");
    }
    println!("peers     {} connected", report.peers.len());
    for peer in &report.peers {
        let record = &peer.record;
        println!(
            "  {}  site {}{}  rtt {}  {}  sent {}  received {}",
            peer.peer_id,
            record.site.as_deref().unwrap_or("-"),
            if peer.same_site { " (same)" } else { "" },
            record
                .rtt_ms
                .map_or("-".to_owned(), |rtt| format!("{rtt:.1} ms")),
            record
                .throughput_bytes_per_s
                .map_or("-".to_owned(), |rate| {
                    format!("{}/s", human_bytes(rate as u64))
                }),
            human_bytes(record.bytes_sent),
            human_bytes(record.bytes_received),
        );
    }
    let counters = &report.counters;
    println!(
        "traffic   {} to peers, {} from peers, {} from upstream, {} served by the gateway",
        human_bytes(counters.bytes_sent_to_peers),
        human_bytes(counters.bytes_received_from_peers),
        human_bytes(counters.bytes_from_upstream),
        human_bytes(counters.bytes_served_by_gateway)
    );
    if counters.peers_banned > 0 || counters.chunks_rejected > 0 {
        println!(
            "rejected  {} bad chunks, {} peers banned",
            counters.chunks_rejected, counters.peers_banned
        );
    }
    if counters.peers_refused > 0 || counters.peer_requests_denied > 0 {
        println!(
            "zone      {} connections refused, {} requests denied",
            counters.peers_refused, counters.peer_requests_denied
        );
    }
    for transfer in &report.transfers {
        let size = transfer
            .size
            .map_or_else(|| "size unknown".to_owned(), human_bytes);
        println!(
            "fetching  {} ({size}): {}/{} chunks from {} peers",
            transfer.blob, transfer.chunks_have, transfer.chunks_total, transfer.peers
        );
    }
    let store = &report.store;
    println!(
        "store     {} blobs, {}, {} manifests, {} repositories",
        store.blobs,
        human_bytes(store.bytes),
        store.manifests,
        store.repositories
    );
    print_cache(&report.cache);
    let stored: Vec<(String, String)> = report
        .images
        .iter()
        .map(|image| {
            (
                format!("{}:{}", image.repository, image.tag),
                image.digest.to_string(),
            )
        })
        .collect();
    let announced: Vec<(String, String)> = report
        .known_images
        .iter()
        .map(|known| {
            (
                format!("{}:{}", known.repository, known.tag),
                known.digest.to_string(),
            )
        })
        .filter(|known| !stored.contains(known))
        .collect();
    print_images("images", &stored);
    print_images("announced, not stored", &announced);
}

fn print_images(heading: &str, images: &[(String, String)]) {
    if images.is_empty() {
        return;
    }
    println!("{heading}");
    let width = images.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    for (name, digest) in images {
        println!("  {name:width$}  {digest}");
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A bar on a terminal; otherwise a line at every tenth of the way.
enum Progress {
    Bar(ProgressBar),
    Lines { label: String, last_tenth: u64 },
}

impl Progress {
    fn new(label: &str) -> Progress {
        if std::io::stderr().is_terminal() {
            let bar = ProgressBar::new(0);
            let style = ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(label.to_owned());
            Progress::Bar(bar)
        } else {
            Progress::Lines {
                label: label.to_owned(),
                last_tenth: 0,
            }
        }
    }

    fn update(&mut self, done: u64, total: u64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total);
                bar.set_position(done);
            }
            Progress::Lines { label, last_tenth } => {
                let tenth = (done * 10).checked_div(total).unwrap_or(10);
                if tenth > *last_tenth {
                    *last_tenth = tenth;
                    eprintln!(
                        "{label}: {}% ({} of {})",
                        tenth * 10,
                        human_bytes(done),
                        human_bytes(total)
                    );
                }
            }
        }
    }

    fn finish(&self) {
        if let Progress::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn byte_counts_read_naturally() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(200 * 1024 * 1024), "200.0 MiB");
    }
}
