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

fn failure(event: AdminEvent) -> anyhow::Error {
    match event {
        AdminEvent::Failed { message } => anyhow::anyhow!(message),
        other => anyhow::anyhow!("unexpected answer from the node: {other:?}"),
    }
}

fn print_status(report: &StatusReport) {
    println!("peer id   {}", report.peer_id);
    println!("data      {}", report.data_dir.display());
    println!("gateway   http://{}", report.gateway);
    println!("listening {}", report.listen_addresses.join(" "));
    println!("peers     {} connected", report.connected_peers.len());
    for peer in &report.connected_peers {
        println!("  {peer}");
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
