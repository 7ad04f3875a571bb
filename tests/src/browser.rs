//! Headless Chromium (Debian's `chromium`) for tests of the node's status page: load a URL, let
//! its scripts run for a bounded virtual time, and keep the rendered DOM and a screenshot.
//!
//! Each capture runs a fresh browser with its own profile directory, no network services of its
//! own (no sync, component updates, background fetches or QUIC), and a wall-clock bound after
//! which it is killed by its PID (the `chromium` launcher script execs the browser, so the PID
//! we hold is the browser's).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::clients::run_command_timeout;

/// Wall-clock bound on one capture; a cold start here takes about a second.
const CAPTURE_TIMEOUT: Duration = Duration::from_secs(90);
/// The screenshot's viewport, in CSS pixels.
pub const WINDOW_SIZE: (u32, u32) = (1280, 900);

/// What the browser saw.
#[derive(Debug, Clone)]
pub struct Capture {
    /// The DOM after the scripts ran, serialised as HTML.
    pub dom: String,
    /// A PNG of the viewport.
    pub screenshot: PathBuf,
}

/// Loads `url` in headless Chromium, lets its timers and fetches run for `virtual_time` of
/// virtual time (network fetches pause the virtual clock, so polls complete), then dumps the
/// DOM and writes a screenshot to `dir/name.png`. `dir` also holds the browser's profile.
pub fn capture(
    url: &str,
    dir: &Path,
    name: &str,
    virtual_time: Duration,
) -> anyhow::Result<Capture> {
    let profile = dir.join(format!("{name}-chromium-profile"));
    std::fs::create_dir_all(&profile)?;
    let screenshot = dir.join(format!("{name}.png"));
    let mut command = Command::new("chromium");
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg(format!(
            "--virtual-time-budget={}",
            virtual_time.as_millis()
        ))
        .arg(format!("--window-size={},{}", WINDOW_SIZE.0, WINDOW_SIZE.1))
        .arg(format!("--screenshot={}", screenshot.display()))
        .arg("--dump-dom")
        .arg(url);
    let output = run_command_timeout(&mut command, CAPTURE_TIMEOUT)?;
    let dom =
        String::from_utf8(output.stdout).context("chromium printed a DOM that is not UTF-8")?;
    anyhow::ensure!(
        dom.contains("</html>"),
        "chromium printed no DOM for {url}; stderr:\n{}",
        crate::clients::tail(&output.stderr)
    );
    let png = std::fs::read(&screenshot)
        .with_context(|| format!("chromium wrote no screenshot {}", screenshot.display()))?;
    anyhow::ensure!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "{} is not a PNG",
        screenshot.display()
    );
    Ok(Capture { dom, screenshot })
}
