//! `--prefetch PATTERN`: fetch images as soon as a trusted publisher announces them, which is
//! how a fleet is warmed before a rollout. Patterns are globs (`*`, `?`) over
//! `repository:tag`, matched against the qualified name (`docker.io/library/alpine:3.20`) and
//! the name without its namespace (`library/alpine:3.20`).

use shoal_protocol::announce::Announcement;
use shoal_protocol::glob::glob_match;
use shoal_protocol::{ImageRef, RepoName};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::{Instant, sleep_until};
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

/// Waits before the attempts after a failed one: a prefetch can fail for a passing reason
/// (on a saturated machine, a blob's providers not answering within the transfer's 10 s look;
/// seen once in a 32-node fan-out, where the node then never finished), and nothing else would
/// ever fetch the image again.
const RETRY_AFTER: [Duration; 3] = [
    Duration::from_secs(5),
    Duration::from_secs(30),
    Duration::from_secs(120),
];

/// Pulls every announced image that matches, one at a time, until shutdown; a failed pull is
/// tried again after each of [`RETRY_AFTER`].
pub async fn run(
    puller: Puller,
    patterns: Vec<String>,
    mut announced: mpsc::Receiver<Announcement>,
    shutdown: CancellationToken,
) {
    let mut retries = Retries::default();
    loop {
        let due = retries.next_due();
        let (reference, failures) = tokio::select! {
            _ = shutdown.cancelled() => return,
            () = sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                match retries.take_due(Instant::now()) {
                    Some(retry) => retry,
                    None => continue,
                }
            }
            next = announced.recv() => match next {
                Some(announcement) => match wanted(&patterns, &announcement) {
                    Some(reference) => (reference, 0),
                    None => continue,
                },
                None => return,
            },
        };
        tracing::info!(image = %reference, "prefetching");
        match puller.pull(&reference, &mut |_| {}).await {
            Ok(digest) => tracing::info!(image = %reference, %digest, "prefetched"),
            Err(error) => match RETRY_AFTER.get(failures) {
                Some(wait) => {
                    tracing::warn!(image = %reference, %error, ?wait, "prefetch failed; trying again");
                    retries.push(Instant::now() + *wait, reference, failures + 1);
                }
                None => tracing::warn!(image = %reference, %error, "prefetch failed; giving up"),
            },
        }
    }
}

/// The image an announcement names, when it matches a pattern.
fn wanted(patterns: &[String], announcement: &Announcement) -> Option<ImageRef> {
    let (namespace, path) = announcement.repository.split_once('/')?;
    let repo = RepoName::new(namespace, path).ok()?;
    matches(patterns, &repo, announcement.tag.as_str()).then(|| ImageRef {
        repo,
        tag: Some(announcement.tag.clone()),
        digest: None,
    })
}

/// Failed prefetches waiting for their next attempt: when, what, and how many failed before.
#[derive(Debug, Default)]
struct Retries {
    waiting: Vec<(Instant, ImageRef, usize)>,
}

impl Retries {
    fn push(&mut self, due: Instant, reference: ImageRef, failures: usize) {
        // A newer failure of the same image replaces the older.
        self.waiting.retain(|(_, waiting, _)| *waiting != reference);
        self.waiting.push((due, reference, failures));
    }

    fn next_due(&self) -> Option<Instant> {
        self.waiting.iter().map(|(due, _, _)| *due).min()
    }

    /// The earliest retry due by `now`, with its count of failures.
    fn take_due(&mut self, now: Instant) -> Option<(ImageRef, usize)> {
        let at = (self.waiting.iter().enumerate())
            .filter(|(_, (due, _, _))| *due <= now)
            .min_by_key(|(_, (due, _, _))| *due)
            .map(|(at, _)| at)?;
        let (_, reference, failures) = self.waiting.swap_remove(at);
        Some((reference, failures))
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

    fn image(name: &str) -> ImageRef {
        ImageRef {
            repo: RepoName::new("docker.io", name).unwrap(),
            tag: Some("1".parse().unwrap()),
            digest: None,
        }
    }

    #[test]
    fn failed_prefetches_come_back_when_due_earliest_first_and_once_per_image() {
        let now = Instant::now();
        let mut retries = Retries::default();
        assert_eq!(retries.next_due(), None);
        retries.push(now + Duration::from_secs(30), image("a"), 2);
        retries.push(now + Duration::from_secs(5), image("b"), 1);
        assert_eq!(retries.next_due(), Some(now + Duration::from_secs(5)));
        assert_eq!(retries.take_due(now), None);
        let later = now + Duration::from_secs(60);
        assert_eq!(retries.take_due(later), Some((image("b"), 1)));
        assert_eq!(retries.take_due(later), Some((image("a"), 2)));
        assert_eq!(retries.take_due(later), None);
        retries.push(now + Duration::from_secs(5), image("a"), 1);
        retries.push(now + Duration::from_secs(30), image("a"), 2);
        assert_eq!(retries.waiting.len(), 1);
        assert_eq!(retries.take_due(later), Some((image("a"), 2)));
    }
}
