//! `--prefetch PATTERN`: fetch images as soon as a trusted publisher announces them, which is
//! how a fleet is warmed before a rollout. Patterns are globs (`*`, `?`) over
//! `repository:tag`, matched against the qualified name (`docker.io/library/alpine:3.20`) and
//! the name without its namespace (`library/alpine:3.20`).

use shoal_protocol::announce::Announcement;
use shoal_protocol::glob::glob_match;
use shoal_protocol::{ImageRef, RepoName};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::pull::Puller;

/// Announcements waiting to be prefetched; more are dropped (and logged) rather than queued
/// without bound.
pub const PREFETCH_QUEUE_LEN: usize = 256;

pub fn matches(patterns: &[String], repository: &RepoName, tag: &str) -> bool {
    let qualified = format!("{}:{tag}", repository.qualified());
    let short = format!("{}:{tag}", repository.path());
    patterns
        .iter()
        .any(|pattern| glob_match(pattern, &qualified) || glob_match(pattern, &short))
}

/// Pulls every announced image that matches, one at a time, until shutdown.
pub async fn run(
    puller: Puller,
    patterns: Vec<String>,
    mut announced: mpsc::Receiver<Announcement>,
    shutdown: CancellationToken,
) {
    loop {
        let announcement = tokio::select! {
            _ = shutdown.cancelled() => return,
            next = announced.recv() => match next { Some(a) => a, None => return },
        };
        let Some((namespace, path)) = announcement.repository.split_once('/') else {
            continue;
        };
        let Ok(repo) = RepoName::new(namespace, path) else {
            continue;
        };
        if !matches(&patterns, &repo, announcement.tag.as_str()) {
            continue;
        }
        let reference = ImageRef {
            repo,
            tag: Some(announcement.tag.clone()),
            digest: None,
        };
        tracing::info!(image = %reference, "prefetching");
        match puller.pull(&reference, &mut |_| {}).await {
            Ok(digest) => tracing::info!(image = %reference, %digest, "prefetched"),
            Err(error) => tracing::warn!(image = %reference, %error, "prefetch failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_qualified_and_short_names() {
        let repo = RepoName::new("docker.io", "library/alpine").unwrap();
        assert!(matches(&["library/alpine:*".into()], &repo, "3.20"));
        assert!(matches(&["docker.io/library/*:3.20".into()], &repo, "3.20"));
        assert!(!matches(&["ghcr.io/*:*".into()], &repo, "3.20"));
    }
}
