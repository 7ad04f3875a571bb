//! Real container clients (skopeo, containerd + ctr, dockerd + docker, podman, umoci) and the
//! process plumbing they share, for end-to-end tests that pull through a Shoal gateway or a
//! real `docker-registry` exactly as users do.
//!
//! What it is for: starting each client in its own temp dirs, pulling an image by reference,
//! reading back the manifest digest the client recorded, and running a container from it.
//! What it is not for: pushing to Shoal (the gateway is read-only) or anything that leaves this
//! machine: every registry these helpers talk to is on 127.0.0.1, either on the host or inside
//! a network namespace created by [`NetNs`].
//!
//! Ownership and clean-up: every daemon is a [`ChildGuard`] that is stopped by the PID it was
//! spawned with (SIGTERM, a grace period, then SIGKILL, then `wait`), after which anything still
//! mounted under its temp dir is unmounted and the dir removed. Nothing is ever killed by name.
//! One-shot commands run through [`run_command`], which bounds their run time and reports the
//! command and its stderr on failure.
//!
//! Missing tools: tests call [`require_tool`] / [`require_tools`] first. A missing tool fails
//! the test, naming the tool and the script that installs it (`scripts/install-test-deps`),
//! unless the person running the suite asked to skip such tests with the one switch
//! [`SKIP_SWITCH`]` = 1` (never honoured under `CI=true`); a skipping test then says so and
//! appends a line to the file named by [`SKIPPED_FILE`], which `scripts/test` counts and lists
//! at the end of the run.
//!
//! The flags used here and why they are needed on this kind of machine are in
//! `docs/real-clients.md`.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sha2::{Digest, Sha256};
use tempfile::TempDir;

/// Upper bound for one client command (a pull, a run, an inspect). Generous because later tests
/// pull images of hundreds of MB into vfs storage on a 2-core machine; a hung client still
/// fails the test instead of hanging CI.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(300);

/// How long a daemon (containerd, dockerd) may take to answer on its socket. They start in
/// 20-200 ms here; the rest is headroom for a loaded CI machine.
pub const DAEMON_START_TIMEOUT: Duration = Duration::from_secs(30);

/// Grace between SIGTERM and SIGKILL for daemons that unmount and clean up on SIGTERM.
/// dockerd needs about 2 s here to stop its own containerd.
const DAEMON_STOP_GRACE: Duration = Duration::from_secs(20);

/// Bound for the best-effort clean-up commands run from `Drop`.
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(20);

/// Counter that makes names (namespaces, container ids) unique within this process; the PID
/// makes them unique across the test binaries that cargo runs at the same time.
static UNIQUE_COUNTER: AtomicU64 = AtomicU64::new(0);

/// A name that no other live test process uses: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    let n = UNIQUE_COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

// ---------------------------------------------------------------------------------------------
// Tools

/// Looks `name` up in `PATH` as a shell would, without running it.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// True when the environment variable `CI` is exactly `true`, as in our CI runs.
pub fn is_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| value == "true")
}

/// The one switch that lets a test whose real client (or privilege) is missing skip instead
/// of fail: `SHOAL_SKIP_MISSING_CLIENTS=1` (README, docs/testing.md).
pub const SKIP_SWITCH: &str = "SHOAL_SKIP_MISSING_CLIENTS";

/// The file a skipping test appends its line to (`scripts/test` sets it and prints the
/// count and the lines when the run ends).
pub const SKIPPED_FILE: &str = "SHOAL_SKIPPED_FILE";

/// `Ok(())` when the current test may skip because `missing` (what it lacks, for the
/// message): the skip switch is set and this is not CI. The skip is printed and recorded in
/// [`SKIPPED_FILE`]. Otherwise an error that names what is missing and how to get it.
pub fn skip_or_fail(missing: &str) -> Result<()> {
    let switch_set = std::env::var(SKIP_SWITCH).is_ok_and(|value| value == "1");
    if !switch_set || is_ci() {
        let refused = if switch_set {
            format!(" ({SKIP_SWITCH}=1 is not honoured under CI=true)")
        } else {
            format!("; to skip the tests that need it instead, run with {SKIP_SWITCH}=1")
        };
        bail!(
            "{missing}: install what the tests use with scripts/install-test-deps \
             (docs/real-clients.md lists the Debian packages){refused}"
        );
    }
    let line = format!("{}: {missing}", current_test());
    eprintln!("SKIPPED: {line}");
    if let Some(path) = std::env::var_os(SKIPPED_FILE) {
        use std::io::Write;
        let mut file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot record the skip in {}", Path::new(&path).display()))?;
        // One write per line: tests in parallel binaries append to the same file.
        file.write_all(format!("{line}\n").as_bytes())?;
    }
    Ok(())
}

/// `<test binary>::<test name>` for the skip list. libtest names each test's thread after the
/// test; the binary's file name loses cargo's `-<hash>` suffix.
fn current_test() -> String {
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| {
            exe.file_stem()
                .map(|stem| stem.to_string_lossy().into_owned())
        })
        .map(|stem| match stem.rsplit_once('-') {
            Some((name, hash)) if hash.chars().all(|c| c.is_ascii_hexdigit()) => name.to_owned(),
            _ => stem,
        })
        .unwrap_or_else(|| "?".to_owned());
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("?");
    format!("{binary}::{test}")
}

/// `Ok(true)` when `name` is installed. When it is not: an error naming it, or, when the
/// person running the tests asked for skips ([`skip_or_fail`]), `Ok(false)` and the caller
/// returns early.
pub fn require_tool(name: &str) -> Result<bool> {
    require_tools(&[name])
}

/// [`require_tool`] for several tools at once; the message names every missing one.
pub fn require_tools(names: &[&str]) -> Result<bool> {
    let missing: Vec<&str> = names
        .iter()
        .copied()
        .filter(|name| find_tool(name).is_none())
        .collect();
    if missing.is_empty() {
        return Ok(true);
    }
    skip_or_fail(&format!("{} not installed", missing.join(", ")))?;
    Ok(false)
}

// ---------------------------------------------------------------------------------------------
// One-shot commands

/// What a successful command printed.
#[derive(Debug, Clone)]
pub struct CommandOutput {
    /// Raw standard output (kept as bytes: `skopeo inspect --raw` must hash exactly).
    pub stdout: Vec<u8>,
    /// Standard error, lossily decoded.
    pub stderr: String,
}

impl CommandOutput {
    /// Standard output as UTF-8 text.
    pub fn stdout_text(&self) -> Result<&str> {
        std::str::from_utf8(&self.stdout).context("command output is not UTF-8")
    }
}

/// Runs `cmd` to completion within [`COMMAND_TIMEOUT`]; a non-zero exit is an error that names
/// the command and quotes the end of its stderr.
pub fn run_command(cmd: &mut Command) -> Result<CommandOutput> {
    run_command_timeout(cmd, COMMAND_TIMEOUT)
}

/// [`run_command`] with an explicit bound; the command is killed (by its PID) when it expires.
/// Output goes to unnamed temp files rather than pipes, so a grandchild that keeps a pipe open
/// (conmon, a containerd shim) cannot make us wait forever.
pub fn run_command_timeout(cmd: &mut Command, timeout: Duration) -> Result<CommandOutput> {
    let described = describe(cmd);
    let mut stdout_file = tempfile::tempfile()?;
    let mut stderr_file = tempfile::tempfile()?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(stdout_file.try_clone()?)
        .stderr(stderr_file.try_clone()?)
        .spawn()
        .with_context(|| format!("cannot start {described}"))?;
    let status = wait_with_deadline(&mut child, Instant::now() + timeout)?;
    let stdout = read_back(&mut stdout_file)?;
    let stderr = String::from_utf8_lossy(&read_back(&mut stderr_file)?).into_owned();
    match status {
        None => {
            kill_and_reap(&mut child)?;
            let printed = printed(&stdout, &stderr);
            bail!("{described} did not finish within {timeout:?}; {printed}")
        }
        Some(status) if !status.success() => {
            bail!(
                "{described} failed ({status}); {}",
                printed(&stdout, &stderr)
            )
        }
        Some(_) => Ok(CommandOutput { stdout, stderr }),
    }
}

/// The end of what a failed command printed, for its error message.
fn printed(stdout: &[u8], stderr: &str) -> String {
    let stdout = String::from_utf8_lossy(stdout);
    format!("stderr:\n{}\nstdout:\n{}", tail(stderr), tail(&stdout))
}

fn describe(cmd: &Command) -> String {
    let args: Vec<String> = cmd
        .get_args()
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    format!(
        "`{} {}`",
        cmd.get_program().to_string_lossy(),
        args.join(" ")
    )
}

fn read_back(file: &mut File) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0))?;
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The last few KB of a log, enough to see why something failed without flooding the report.
pub fn tail(text: &str) -> &str {
    const TAIL_BYTES: usize = 4000;
    let mut start = text.len().saturating_sub(TAIL_BYTES);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Polls `child` until it exits or `deadline` passes; `None` means it is still running.
fn wait_with_deadline(child: &mut Child, deadline: Instant) -> Result<Option<ExitStatus>> {
    let mut pause = Duration::from_millis(2);
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

fn kill_and_reap(child: &mut Child) -> Result<()> {
    if child.try_wait()?.is_none() {
        child.kill()?;
    }
    child.wait()?;
    Ok(())
}

/// Polls `ready` until it returns `Ok(true)`, or fails after `timeout` naming `what`.
/// An `Err` from `ready` aborts the wait at once (for example: the daemon exited).
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut ready: impl FnMut() -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(5);
    loop {
        if ready()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// Long-running processes

/// A spawned daemon, stopped by the PID it was spawned with when dropped (SIGTERM, `grace`,
/// then SIGKILL) and always reaped. Because we never reap it before stopping it, the PID cannot
/// have been reused by another process.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    name: String,
    grace: Duration,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout/stderr appended to the given files.
    /// `grace` is how long [`ChildGuard::stop`] waits after SIGTERM; zero means SIGKILL at once.
    pub fn spawn_logged(
        cmd: &mut Command,
        name: &str,
        stdout_log: &Path,
        stderr_log: &Path,
        grace: Duration,
    ) -> Result<Self> {
        let stdout = open_log(stdout_log)?;
        let stderr = open_log(stderr_log)?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("cannot start {name}: {}", describe(cmd)))?;
        Ok(Self {
            child,
            name: name.to_owned(),
            grace,
        })
    }

    /// The PID we spawned (for `nsenter` it is the daemon itself: nsenter execs it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `Some(status)` once the process has exited.
    pub fn exit_status(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// Fails if the process has exited, naming it and its status.
    pub fn ensure_running(&mut self) -> Result<()> {
        match self.exit_status()? {
            None => Ok(()),
            Some(status) => bail!("{} (pid {}) exited: {status}", self.name, self.pid()),
        }
    }

    /// Stops the process: SIGTERM to our PID, up to `grace` to exit, then SIGKILL; then reaps it.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_when(|| false)
    }

    /// [`ChildGuard::stop`], but with SIGKILL as soon as `finished` says the process has done
    /// all the clean-up that matters (dockerd logs "Daemon shutdown complete" about 3 s before
    /// it exits, while it polls its own containerd).
    pub fn stop_when(&mut self, mut finished: impl FnMut() -> bool) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        if !self.grace.is_zero() && send_sigterm(self.pid()).is_ok() {
            let deadline = Instant::now() + self.grace;
            while Instant::now() < deadline && !finished() {
                if self.child.try_wait()?.is_some() {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        kill_and_reap(&mut self.child)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!(
                "warning: stopping {} (pid {}): {error:#}",
                self.name,
                self.pid()
            );
        }
    }
}

fn open_log(path: &Path) -> Result<File> {
    File::options()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("cannot open log {}", path.display()))
}

/// SIGTERM through `kill(1)`: the workspace forbids `unsafe`, so no direct `libc::kill`.
fn send_sigterm(pid: u32) -> Result<()> {
    run_command_timeout(
        Command::new("kill").args(["-TERM", &pid.to_string()]),
        Duration::from_secs(5),
    )
    .map(drop)
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0 and released). Another
/// process may take it before we do, so callers retry on "address already in use".
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind(("127.0.0.1", 0)).context("cannot bind 127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

/// Unmounts, deepest first, every mount point at or below `dir` in this mount namespace (vfs
/// and overlay snapshots, dockerd's bind mount of its data root, podman's shm), so that the
/// temp dir can be removed after a daemon was killed before it cleaned up.
pub fn unmount_all_under(dir: &Path) -> Result<()> {
    let mut mounts = mount_points_under(dir)?;
    mounts.sort_by_key(|mount| std::cmp::Reverse(mount.as_os_str().len()));
    for mount in mounts {
        let plain = run_command_timeout(Command::new("umount").arg(&mount), CLEANUP_TIMEOUT);
        if plain.is_err() {
            run_command_timeout(
                Command::new("umount").arg("-l").arg(&mount),
                CLEANUP_TIMEOUT,
            )
            .with_context(|| format!("cannot unmount {}", mount.display()))?;
        }
    }
    Ok(())
}

fn mount_points_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape_mountinfo(field)))
        .filter(|mount| mount.starts_with(dir))
        .collect())
}

/// mountinfo writes space, tab, newline and backslash as `\ooo` octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let mut rest = field;
    while let Some(pos) = rest.find('\\') {
        out.push_str(&rest[..pos]);
        let code = rest
            .get(pos + 1..pos + 4)
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(byte) => {
                out.push(char::from(byte));
                rest = &rest[pos + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[pos + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// [`unmount_all_under`] from a `Drop`, where errors can only be reported. The `TempDir` that
/// is dropped next then removes the emptied tree.
fn unmount_or_warn(dir: &Path) {
    if let Err(error) = unmount_all_under(dir) {
        eprintln!("warning: {error:#}");
    }
}

/// A TOML (and JSON) basic string for a path or name.
pub(crate) fn quoted(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}

pub(crate) fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .ok_or_else(|| anyhow!("path is not UTF-8: {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Network namespaces

/// A network namespace with only a loopback interface (up), deleted when the last clone is
/// dropped. Processes started in it through [`NetNs::command`] see their own 127.0.0.1: a
/// registry on the host's loopback is unreachable from inside, and vice versa.
///
/// Used for dockerd with `registry-mirrors` (a 404 from the mirror makes it fall back to the
/// real Docker Hub, which must fail fast instead of leaving the machine) and for multi-host
/// set-ups.
#[derive(Debug, Clone)]
pub struct NetNs {
    inner: Arc<NetNsInner>,
}

#[derive(Debug)]
struct NetNsInner {
    name: String,
}

impl NetNs {
    /// Creates `shoal-<pid>-<n>` (skipping names left by crashed runs) and brings `lo` up.
    pub fn create() -> Result<Self> {
        for _ in 0..16 {
            let name = unique_name("shoal");
            if Path::new("/run/netns").join(&name).exists() {
                continue;
            }
            run_command(Command::new("ip").args(["netns", "add", &name]))?;
            let netns = Self {
                inner: Arc::new(NetNsInner { name }),
            };
            run_command(Command::new("ip").args(["-n", netns.name(), "link", "set", "lo", "up"]))?;
            return Ok(netns);
        }
        bail!("no free network namespace name in /run/netns")
    }

    /// The name given to `ip netns`.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// `/run/netns/<name>`, the bind mount `nsenter --net=` takes.
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(self.name())
    }

    /// `nsenter --net=/run/netns/<name> <program>`. nsenter execs the program, so a spawned
    /// child's PID is the program's own. (`ip netns exec` is not used: it remounts /sys and
    /// fails on the devices cgroup in this sandbox.)
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net={}", self.path().display()))
            .arg(program);
        cmd
    }
}

impl Drop for NetNsInner {
    fn drop(&mut self) {
        let deleted = run_command_timeout(
            Command::new("ip").args(["netns", "delete", &self.name]),
            CLEANUP_TIMEOUT,
        );
        if let Err(error) = deleted {
            eprintln!("warning: {error:#}");
        }
    }
}

/// `program` on the host network, or inside `netns` when one is given.
pub fn command_in(netns: Option<&NetNs>, program: &str) -> Command {
    match netns {
        Some(netns) => netns.command(program),
        None => Command::new(program),
    }
}

// ---------------------------------------------------------------------------------------------
// Credentials, digests, OCI layouts

/// A registry user name and password (HTTP basic auth).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub user: String,
    /// Password, in clear: these are throw-away test credentials.
    pub password: String,
}

impl Credentials {
    /// Credentials from a user name and password.
    pub fn new(user: &str, password: &str) -> Self {
        Self {
            user: user.to_owned(),
            password: password.to_owned(),
        }
    }

    /// `user:password`, the form skopeo, ctr and podman take.
    pub fn user_colon_password(&self) -> String {
        format!("{}:{}", self.user, self.password)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The digest of the only top-level manifest (or index) in an OCI image layout, after checking
/// that its blob is present and hashes to that digest.
pub fn oci_layout_digest(layout_dir: &Path) -> Result<String> {
    let entries = layout_index_entries(layout_dir)?;
    ensure!(
        entries.len() == 1,
        "{} has {} top-level manifests, expected exactly one",
        layout_dir.display(),
        entries.len()
    );
    checked_layout_digest(layout_dir, &entries[0])
}

/// The digest of the top-level manifest tagged `tag` (annotation
/// `org.opencontainers.image.ref.name`) in an OCI image layout, checked against its blob.
pub fn oci_layout_tag_digest(layout_dir: &Path, tag: &str) -> Result<String> {
    let entries = layout_index_entries(layout_dir)?;
    let entry = entries
        .iter()
        .find(|entry| entry["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .ok_or_else(|| anyhow!("no manifest tagged {tag:?} in {}", layout_dir.display()))?;
    checked_layout_digest(layout_dir, entry)
}

fn layout_index_entries(layout_dir: &Path) -> Result<Vec<serde_json::Value>> {
    let path = layout_dir.join("index.json");
    let text = fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let index: serde_json::Value = serde_json::from_str(&text)?;
    match index["manifests"].as_array() {
        Some(entries) => Ok(entries.clone()),
        None => bail!("{} has no manifests array", path.display()),
    }
}

fn checked_layout_digest(layout_dir: &Path, entry: &serde_json::Value) -> Result<String> {
    let digest = entry["digest"]
        .as_str()
        .ok_or_else(|| anyhow!("index entry without a digest: {entry}"))?;
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or_else(|| anyhow!("unsupported digest {digest}"))?;
    let blob = fs::read(layout_dir.join("blobs/sha256").join(hex))
        .with_context(|| format!("blob {digest} missing from {}", layout_dir.display()))?;
    ensure!(
        sha256_digest(&blob) == digest,
        "blob {digest} in {} is corrupt",
        layout_dir.display()
    );
    Ok(digest.to_owned())
}

/// Busybox applets linked into the test image's `/bin`.
const BUSYBOX_APPLETS: &[&str] = &["sh", "echo", "cat", "ls", "sleep", "true"];

/// Builds a tiny runnable image with umoci, without pulling anything: a rootfs holding the
/// static busybox (Debian `busybox-static`) and a few applet links, `Cmd = ["/bin/sh", "-c",
/// "echo hello from shoal"]`, for linux/amd64. It is added to `layout_dir` (created if absent)
/// under `tag`; returns the manifest digest. Each call yields a new digest (timestamps).
pub fn umoci_busybox_layout(layout_dir: &Path, tag: &str) -> Result<String> {
    let busybox =
        find_tool("busybox").context("busybox (Debian busybox-static) is not installed")?;
    let layout = path_str(layout_dir)?;
    let image = format!("{layout}:{tag}");
    if !layout_dir.join("index.json").exists() {
        // umoci refuses to init an existing path, even an empty dir such as a fresh TempDir.
        if layout_dir.exists() {
            fs::remove_dir(layout_dir).with_context(|| {
                format!(
                    "{} is neither an OCI layout nor empty",
                    layout_dir.display()
                )
            })?;
        }
        umoci(&["init", "--layout", layout])?;
    }
    umoci(&["new", "--image", &image])?;
    let scratch = TempDir::new()?;
    let bundle = scratch.path().join("bundle");
    let bundle_str = path_str(&bundle)?;
    umoci(&["unpack", "--image", &image, bundle_str])?;
    install_busybox(&bundle.join("rootfs"), &busybox)?;
    umoci(&["repack", "--image", &image, bundle_str])?;
    umoci(&[
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/sh",
        "--config.cmd",
        "-c",
        "--config.cmd",
        "echo hello from shoal",
    ])?;
    umoci(&["gc", "--layout", layout])?;
    oci_layout_tag_digest(layout_dir, tag)
}

fn install_busybox(rootfs: &Path, busybox: &Path) -> Result<()> {
    let bin = rootfs.join("bin");
    fs::create_dir_all(&bin)?;
    fs::copy(busybox, bin.join("busybox"))
        .with_context(|| format!("copying {}", busybox.display()))?;
    for applet in BUSYBOX_APPLETS {
        symlink("busybox", bin.join(applet))?;
    }
    Ok(())
}

fn umoci(args: &[&str]) -> Result<()> {
    run_command(Command::new("umoci").args(args)).map(drop)
}

// ---------------------------------------------------------------------------------------------
// skopeo

/// skopeo with optional credentials, network namespace and `registries.conf`. All registry
/// access is plain HTTP (`--tls-verify=false` and friends).
#[derive(Debug, Clone, Default)]
pub struct Skopeo {
    credentials: Option<Credentials>,
    netns: Option<NetNs>,
    registries_conf: Option<PathBuf>,
    cert_dir: Option<PathBuf>,
}

impl Skopeo {
    /// skopeo on the host network, anonymous, with the system `registries.conf`.
    pub fn new() -> Self {
        Self::default()
    }

    /// Authenticate to the registry (source or destination) with these credentials.
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = Some(credentials);
        self
    }

    /// Run skopeo inside `netns`.
    pub fn in_netns(mut self, netns: &NetNs) -> Self {
        self.netns = Some(netns.clone());
        self
    }

    /// Verify the registry's TLS certificate against the CA in `dir` (a `ca.crt`), instead of
    /// speaking plain HTTP or TLS without verification.
    pub fn with_cert_dir(mut self, dir: &Path) -> Self {
        self.cert_dir = Some(dir.to_owned());
        self
    }

    /// The source's TLS flags: verified against [`Skopeo::with_cert_dir`], or off.
    fn src_tls_args(&self) -> Vec<String> {
        match &self.cert_dir {
            Some(dir) => vec![format!("--src-cert-dir={}", dir.display())],
            None => vec!["--src-tls-verify=false".to_owned()],
        }
    }

    /// Use this `registries.conf` (mirrors) through `CONTAINERS_REGISTRIES_CONF`.
    pub fn with_registries_conf(mut self, path: &Path) -> Self {
        self.registries_conf = Some(path.to_owned());
        self
    }

    fn command(&self) -> Command {
        let mut cmd = command_in(self.netns.as_ref(), "skopeo");
        if let Some(conf) = &self.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        cmd
    }

    fn creds_arg(&self, flag: &str) -> Vec<String> {
        match &self.credentials {
            Some(credentials) => vec![format!("{flag}={}", credentials.user_colon_password())],
            None => Vec::new(),
        }
    }

    /// Copies `src` (`127.0.0.1:PORT/repo:tag` or `...@sha256:...`) into a new OCI layout at
    /// `dest_dir` and returns the layout's top-level digest. With `all_platforms` an index is
    /// copied whole (digest = the index's); without it skopeo picks this machine's platform
    /// (digest = that platform's manifest). A Docker schema 2 source is converted to OCI by
    /// skopeo, so its digest changes; OCI sources keep theirs.
    pub fn copy_to_oci(&self, src: &str, dest_dir: &Path, all_platforms: bool) -> Result<String> {
        let mut cmd = self.command();
        cmd.args(["copy", "--quiet"]);
        cmd.args(self.src_tls_args());
        cmd.args(self.creds_arg("--src-creds"));
        if all_platforms {
            cmd.arg("--all");
        }
        cmd.arg(format!("docker://{src}"));
        cmd.arg(format!("oci:{}", path_str(dest_dir)?));
        run_command(&mut cmd)?;
        oci_layout_digest(dest_dir)
    }

    /// Pushes the only image of an OCI layout to `dest` (`127.0.0.1:PORT/repo:tag`), all
    /// platforms of an index, digests preserved; returns the pushed top-level digest.
    pub fn push_oci_layout(&self, layout_dir: &Path, dest: &str) -> Result<String> {
        self.push(&format!("oci:{}", path_str(layout_dir)?), dest)
    }

    /// [`Skopeo::push_oci_layout`] for the image tagged `tag` in a layout holding several.
    pub fn push_oci_layout_tag(&self, layout_dir: &Path, tag: &str, dest: &str) -> Result<String> {
        self.push(&format!("oci:{}:{tag}", path_str(layout_dir)?), dest)
    }

    fn push(&self, src: &str, dest: &str) -> Result<String> {
        let scratch = TempDir::new()?;
        let digest_file = scratch.path().join("digest");
        let mut cmd = self.command();
        cmd.args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            "--all",
            "--preserve-digests",
        ]);
        cmd.args(self.creds_arg("--dest-creds"));
        cmd.arg("--digestfile").arg(&digest_file);
        cmd.arg(src).arg(format!("docker://{dest}"));
        run_command(&mut cmd)?;
        let digest = fs::read_to_string(&digest_file)?;
        Ok(digest.trim().to_owned())
    }

    /// The manifest (or index) bytes exactly as the registry serves them for `reference`.
    /// Fetches no blob (unlike `skopeo inspect` without `--raw`, which also GETs the config).
    pub fn inspect_raw(&self, reference: &str) -> Result<Vec<u8>> {
        let mut cmd = self.command();
        cmd.args(["inspect", "--raw", "--tls-verify=false"]);
        cmd.args(self.creds_arg("--creds"));
        cmd.arg(format!("docker://{reference}"));
        Ok(run_command(&mut cmd)?.stdout)
    }

    /// The digest of the manifest the registry serves for `reference`: sha256 of
    /// [`Skopeo::inspect_raw`], which is what `{{.Digest}}` reports, without the blob fetch.
    pub fn inspect_digest(&self, reference: &str) -> Result<String> {
        let digest = sha256_digest(&self.inspect_raw(reference)?);
        if let Some((_, pinned)) = reference.split_once('@') {
            ensure!(
                pinned == digest,
                "{reference} served a manifest hashing to {digest}"
            );
        }
        Ok(digest)
    }
}

/// [`Skopeo::copy_to_oci`] with default options.
pub fn skopeo_copy_to_oci(src: &str, dest_dir: &Path, all_platforms: bool) -> Result<String> {
    Skopeo::new().copy_to_oci(src, dest_dir, all_platforms)
}

/// [`Skopeo::inspect_digest`] with default options.
pub fn skopeo_inspect_digest(reference: &str) -> Result<String> {
    Skopeo::new().inspect_digest(reference)
}

/// [`Skopeo::inspect_raw`] with default options.
pub fn skopeo_inspect_raw(reference: &str) -> Result<Vec<u8>> {
    Skopeo::new().inspect_raw(reference)
}

/// Splits `host/path/name:tag` or `host/path/name@digest` into the repository and the rest.
fn repository_of(reference: &str) -> &str {
    if let Some((repository, _)) = reference.split_once('@') {
        return repository;
    }
    match reference.rfind(':') {
        Some(colon) if !reference[colon..].contains('/') => &reference[..colon],
        _ => reference,
    }
}

/// Docker shortens `docker.io/library/x` to `x` and `docker.io/o/x` to `o/x` in RepoDigests.
fn familiar_repository(repository: &str) -> &str {
    let short = repository.strip_prefix("docker.io/").unwrap_or(repository);
    short.strip_prefix("library/").unwrap_or(short)
}

// ---------------------------------------------------------------------------------------------
// containerd + ctr

/// Options for [`Containerd::pull_with`].
#[derive(Debug, Clone, Default)]
pub struct CtrPullOptions {
    /// `--hosts-dir DIR`: mirror configuration as `DIR/<registry host>/hosts.toml`
    /// (see [`write_containerd_hosts_toml`]). Requests to a mirror carry `?ns=<registry>`.
    pub hosts_dir: Option<PathBuf>,
    /// `--all-platforms`: fetch every platform of an index, not only this machine's.
    pub all_platforms: bool,
    /// `--user user:password`.
    pub credentials: Option<Credentials>,
    /// Speak HTTPS to registries without a hosts.toml scheme (no `--plain-http`).
    pub https: bool,
}

/// Options for [`Containerd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct ContainerdConfig {
    /// Run containerd and every `ctr` inside this namespace (`ctr` does the registry I/O).
    pub netns: Option<NetNs>,
}

/// A private containerd (root, state, sockets, runc root, all in one temp dir) driven with
/// `ctr -a SOCK -n test`. The CRI plugin is disabled; the overlayfs snapshotter works here.
#[derive(Debug)]
pub struct Containerd {
    child: ChildGuard,
    dir: TempDir,
    socket: PathBuf,
    namespace: String,
    netns: Option<NetNs>,
}

impl Containerd {
    /// Starts containerd on the host network and waits until it answers on its socket.
    pub fn start() -> Result<Self> {
        Self::start_with(ContainerdConfig::default())
    }

    /// Starts containerd with `config` and waits until it answers on its socket.
    pub fn start_with(config: ContainerdConfig) -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-containerd-")?;
        let socket = dir.path().join("containerd.sock");
        let config_path = dir.path().join("config.toml");
        fs::write(&config_path, containerd_config_toml(dir.path())?)?;
        let mut cmd = command_in(config.netns.as_ref(), "containerd");
        cmd.arg("--config").arg(&config_path);
        let child = ChildGuard::spawn_logged(
            &mut cmd,
            "containerd",
            &dir.path().join("stdout.log"),
            &dir.path().join("stderr.log"),
            DAEMON_STOP_GRACE,
        )?;
        let mut containerd = Self {
            child,
            dir,
            socket,
            namespace: "test".to_owned(),
            netns: config.netns,
        };
        containerd.wait_ready().with_context(|| {
            format!(
                "containerd did not start; its log:\n{}",
                containerd.log().unwrap_or_default()
            )
        })?;
        Ok(containerd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        let child = &mut self.child;
        wait_until("containerd's socket", DAEMON_START_TIMEOUT, || {
            child.ensure_running()?;
            Ok(socket.exists())
        })?;
        run_command(self.ctr().arg("version")).map(drop)
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The daemon's process id (for its CPU time).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Where the content store keeps the blob with sha256 `hex`.
    pub fn content_blob(&self, hex: &str) -> PathBuf {
        self.dir()
            .join("root/io.containerd.content.v1.content/blobs/sha256")
            .join(hex)
    }

    /// The gRPC socket (`ctr -a`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The containerd namespace all `ctr` calls use (`test`).
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// containerd's stderr so far.
    pub fn log(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir().join("stderr.log"))?)
    }

    /// `ctr -a SOCK -n test`, in the namespace if there is one; add the subcommand.
    pub fn ctr(&self) -> Command {
        let mut cmd = command_in(self.netns.as_ref(), "ctr");
        cmd.arg("-a")
            .arg(&self.socket)
            .args(["-n", &self.namespace]);
        cmd
    }

    /// `ctr image pull --plain-http REF`: this platform only, unpacked for `run`.
    pub fn pull(&self, reference: &str) -> Result<()> {
        self.pull_with(reference, &CtrPullOptions::default())
    }

    /// `ctr image pull --plain-http` with mirrors, all platforms or credentials.
    pub fn pull_with(&self, reference: &str, options: &CtrPullOptions) -> Result<()> {
        let mut cmd = self.ctr();
        cmd.args(["image", "pull"]);
        if !options.https {
            cmd.arg("--plain-http");
        }
        if let Some(hosts_dir) = &options.hosts_dir {
            cmd.arg("--hosts-dir").arg(hosts_dir);
        }
        if options.all_platforms {
            cmd.arg("--all-platforms");
        }
        if let Some(credentials) = &options.credentials {
            cmd.arg("--user").arg(credentials.user_colon_password());
        }
        run_command(cmd.arg(reference)).map(drop)
    }

    /// The top-level digest containerd recorded for `reference` (`ctr image ls`).
    pub fn image_digest(&self, reference: &str) -> Result<String> {
        let output = run_command(self.ctr().args(["image", "ls"]))?;
        let listing = output.stdout_text()?;
        listing
            .lines()
            .skip(1)
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|columns| columns.first() == Some(&reference))
            .and_then(|columns| columns.get(2).map(|digest| (*digest).to_owned()))
            .ok_or_else(|| {
                anyhow!("containerd has no image {reference}; `ctr image ls`:\n{listing}")
            })
    }

    /// Runs `args` in a fresh container of the pulled `reference` (`ctr run --rm`, its own
    /// network namespace with only loopback) and returns its stdout. runc's state goes under
    /// our temp dir (`--runc-root`), so parallel containerds never share it.
    pub fn run(&self, reference: &str, args: &[&str]) -> Result<String> {
        let id = unique_name("shoal-ctr");
        let mut cmd = self.ctr();
        cmd.args(["run", "--rm", "--runc-root"])
            .arg(self.dir().join("runc"));
        cmd.arg(reference).arg(&id).args(args);
        let output = run_command(&mut cmd)?;
        Ok(output.stdout_text()?.to_owned())
    }

    /// Kills and deletes tasks and containers a failed test may have left, so their shims exit.
    fn remove_leftover_containers(&self) {
        let listed =
            run_command_timeout(self.ctr().args(["container", "ls", "-q"]), CLEANUP_TIMEOUT);
        let Ok(listed) = listed else { return };
        for id in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
            let mut delete_task = self.ctr();
            delete_task.args(["task", "delete", "--force", id]);
            let _ = run_command_timeout(&mut delete_task, CLEANUP_TIMEOUT);
            let _ = run_command_timeout(
                self.ctr().args(["container", "delete", id]),
                CLEANUP_TIMEOUT,
            );
        }
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if self.child.ensure_running().is_ok() {
            self.remove_leftover_containers();
        }
        if let Err(error) = self.child.stop() {
            eprintln!("warning: stopping containerd: {error:#}");
        }
        unmount_or_warn(self.dir.path());
    }
}

fn containerd_config_toml(dir: &Path) -> Result<String> {
    let path = |name: &str| -> Result<String> { Ok(quoted(path_str(&dir.join(name))?)) };
    Ok(format!(
        "version = 2\n\
         root = {root}\n\
         state = {state}\n\
         disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
         \n\
         [grpc]\n  address = {grpc}\n\
         \n\
         [ttrpc]\n  address = {ttrpc}\n\
         \n\
         [plugins.\"io.containerd.internal.v1.opt\"]\n  path = {opt}\n",
        root = path("root")?,
        state = path("state")?,
        grpc = path("containerd.sock")?,
        ttrpc = path("containerd-ttrpc.sock")?,
        opt = path("opt")?,
    ))
}

/// Writes a podman `registries.conf` at `path` under which images named `<prefix>/...` live at
/// `location` and are pulled first from the plain-HTTP `mirror` (`HOST:PORT`).
pub fn write_registries_conf(
    path: &Path,
    prefix: &str,
    location: &str,
    mirror: &str,
) -> Result<()> {
    let conf = format!(
        "unqualified-search-registries = []\n\n\
         [[registry]]\nprefix = \"{prefix}\"\nlocation = \"{location}\"\n\n\
         [[registry.mirror]]\nlocation = \"{mirror}\"\ninsecure = true\n"
    );
    fs::write(path, conf).with_context(|| format!("writing {}", path.display()))
}

/// Writes `hosts_dir/<registry>/hosts.toml` so that containerd resolves and pulls images named
/// `<registry>/...` from `mirrors` in order (e.g. `http://127.0.0.1:5050`), then from `server`
/// (e.g. `http://upstream.invalid`, unreachable on purpose to prove the mirror served it).
pub fn write_containerd_hosts_toml(
    hosts_dir: &Path,
    registry: &str,
    server: &str,
    mirrors: &[&str],
) -> Result<PathBuf> {
    let dir = hosts_dir.join(registry);
    fs::create_dir_all(&dir)?;
    let mut toml = format!("server = {}\n", quoted(server));
    for mirror in mirrors {
        toml.push_str(&format!(
            "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
            quoted(mirror)
        ));
    }
    let path = dir.join("hosts.toml");
    fs::write(&path, toml)?;
    Ok(path)
}

// ---------------------------------------------------------------------------------------------
// dockerd + docker

/// Options for [`Dockerd::start_with`].
#[derive(Debug, Clone, Default)]
pub struct DockerdConfig {
    /// Run dockerd inside this namespace (registries must then be started inside it too).
    pub netns: Option<NetNs>,
    /// `registry-mirrors` in daemon.json, e.g. `http://127.0.0.1:5050`. They apply to Docker
    /// Hub images only, and a 404 from a mirror makes dockerd try the real Hub: use a netns.
    pub registry_mirrors: Vec<String>,
    /// `insecure-registries` (127.0.0.0/8 is already insecure-by-default for dockerd).
    pub insecure_registries: Vec<String>,
    /// A directory that dockerd sees as `/etc/docker` (a bind mount in a mount namespace of its
    /// own, so the host's is untouched): dockerd reads registry CAs only from
    /// `/etc/docker/certs.d/HOST:PORT/ca.crt`.
    pub etc_docker: Option<PathBuf>,
}

/// A private dockerd (vfs storage, no iptables, no bridge; data root, exec root, pidfile,
/// socket and daemon.json in one temp dir) and the `docker` CLI pointed at it with its own
/// `DOCKER_CONFIG`.
#[derive(Debug)]
pub struct Dockerd {
    child: ChildGuard,
    dir: TempDir,
    socket: PathBuf,
    netns: Option<NetNs>,
}

impl Dockerd {
    /// Starts dockerd on the host network (it can pull from the host's 127.0.0.1).
    pub fn start() -> Result<Self> {
        Self::start_with(DockerdConfig::default())
    }

    /// Starts dockerd inside `netns` (it can pull only from registries started in there).
    pub fn start_in(netns: &NetNs) -> Result<Self> {
        Self::start_with(DockerdConfig {
            netns: Some(netns.clone()),
            ..DockerdConfig::default()
        })
    }

    /// Starts dockerd with `config` and waits until `/_ping` answers on its socket.
    pub fn start_with(config: DockerdConfig) -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-dockerd-")?;
        let root = dir.path();
        let socket = root.join("docker.sock");
        let daemon_json = root.join("daemon.json");
        fs::write(&daemon_json, dockerd_daemon_json(&config)?)?;
        fs::create_dir_all(root.join("docker-config"))?;
        let mut cmd = match &config.etc_docker {
            None => command_in(config.netns.as_ref(), "dockerd"),
            // unshare and sh exec in turn, so the PID held is still dockerd's.
            Some(etc_docker) => {
                let mut cmd = command_in(config.netns.as_ref(), "unshare");
                cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg("mount --bind \"$0\" /etc/docker && exec dockerd \"$@\"")
                    .arg(etc_docker);
                cmd
            }
        };
        cmd.arg("--config-file").arg(&daemon_json);
        cmd.args([
            "--storage-driver",
            "vfs",
            "--iptables=false",
            "--ip6tables=false",
        ]);
        cmd.args(["--bridge=none"]);
        cmd.arg("--data-root").arg(root.join("data"));
        cmd.arg("--exec-root").arg(root.join("exec"));
        cmd.arg("--pidfile").arg(root.join("dockerd.pid"));
        cmd.arg("-H").arg(format!("unix://{}", path_str(&socket)?));
        let child = ChildGuard::spawn_logged(
            &mut cmd,
            "dockerd",
            &root.join("stdout.log"),
            &root.join("stderr.log"),
            DAEMON_STOP_GRACE,
        )?;
        let mut dockerd = Self {
            child,
            dir,
            socket,
            netns: config.netns,
        };
        dockerd.wait_ready().with_context(|| {
            format!(
                "dockerd did not start; its log:\n{}",
                tail(&dockerd.log().unwrap_or_default())
            )
        })?;
        Ok(dockerd)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let socket = self.socket.clone();
        let child = &mut self.child;
        wait_until("dockerd's /_ping", DAEMON_START_TIMEOUT, || {
            child.ensure_running()?;
            Ok(ping_docker_socket(&socket))
        })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The API socket (`docker -H unix://...`).
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The namespace dockerd runs in, if any.
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    /// dockerd's stderr so far.
    pub fn log(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir().join("stderr.log"))?)
    }

    /// The `docker` CLI for this daemon; add the subcommand. The CLI only talks to the socket,
    /// so it runs on the host even when dockerd is in a namespace.
    pub fn docker(&self) -> Command {
        let mut cmd = Command::new("docker");
        cmd.env("DOCKER_CONFIG", self.dir().join("docker-config"));
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()));
        cmd
    }

    /// `docker login` to `registry` (`127.0.0.1:PORT`); stored in this daemon's DOCKER_CONFIG.
    pub fn login(&self, registry: &str, credentials: &Credentials) -> Result<()> {
        let mut cmd = self.docker();
        cmd.args([
            "login",
            "-u",
            &credentials.user,
            "-p",
            &credentials.password,
            registry,
        ]);
        run_command(&mut cmd).map(drop)
    }

    /// `docker pull REF`.
    pub fn pull(&self, reference: &str) -> Result<()> {
        run_command(self.docker().args(["pull", "--quiet", reference])).map(drop)
    }

    /// The manifest digest dockerd recorded for `reference` (from `RepoDigests`, the entry of
    /// the same repository): the index digest for a multi-platform image.
    pub fn image_digest(&self, reference: &str) -> Result<String> {
        let mut cmd = self.docker();
        cmd.args([
            "image",
            "inspect",
            "--format",
            "{{json .RepoDigests}}",
            reference,
        ]);
        let output = run_command(&mut cmd)?;
        let repo_digests: Vec<String> = serde_json::from_slice(&output.stdout)?;
        pick_repo_digest(reference, &repo_digests)
    }

    /// `docker run --rm --network none REF CMD...`; returns the container's stdout.
    pub fn run(&self, reference: &str, cmd: &[&str]) -> Result<String> {
        let mut docker = self.docker();
        docker
            .args(["run", "--rm", "--network", "none", reference])
            .args(cmd);
        Ok(run_command(&mut docker)?.stdout_text()?.to_owned())
    }
}

impl Dockerd {
    /// Force-removes containers a failed test left running: on SIGTERM dockerd would give each
    /// one 10 s to stop (busybox as PID 1 ignores SIGTERM), and `--shutdown-timeout` does not
    /// shorten that.
    fn remove_leftover_containers(&self) {
        let listed = run_command_timeout(self.docker().args(["ps", "-aq"]), CLEANUP_TIMEOUT);
        let Ok(listed) = listed else { return };
        let ids = String::from_utf8_lossy(&listed.stdout).into_owned();
        if ids.trim().is_empty() {
            return;
        }
        let mut remove = self.docker();
        remove.args(["rm", "--force"]).args(ids.split_whitespace());
        if let Err(error) = run_command_timeout(&mut remove, CLEANUP_TIMEOUT) {
            eprintln!("warning: {error:#}");
        }
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if self.child.ensure_running().is_ok() {
            self.remove_leftover_containers();
        }
        // SIGTERM makes dockerd stop its containers and unmount its data root; once it logs
        // that, SIGKILL spares the seconds it spends waiting for its own containerd (which
        // dies with it: dockerd spawns it with a parent-death signal). Mounts left by an
        // earlier SIGKILL are handled by the unmount pass.
        let log = self.dir().join("stderr.log");
        let shut_down =
            || fs::read_to_string(&log).is_ok_and(|text| text.contains("Daemon shutdown complete"));
        if let Err(error) = self.child.stop_when(shut_down) {
            eprintln!("warning: stopping dockerd: {error:#}");
        }
        unmount_or_warn(self.dir.path());
    }
}

fn dockerd_daemon_json(config: &DockerdConfig) -> Result<String> {
    let json = serde_json::json!({
        "registry-mirrors": config.registry_mirrors,
        "insecure-registries": config.insecure_registries,
    });
    Ok(serde_json::to_string_pretty(&json)?)
}

/// True when dockerd answers `GET /_ping` with 200 on `socket`.
fn ping_docker_socket(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let timeout = Some(Duration::from_secs(2));
    if stream.set_read_timeout(timeout).is_err() || stream.set_write_timeout(timeout).is_err() {
        return false;
    }
    let request = b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n";
    if std::io::Write::write_all(&mut stream, request).is_err() {
        return false;
    }
    let mut response = String::new();
    let answered = stream.read_to_string(&mut response).is_ok();
    answered && (response.starts_with("HTTP/1.0 200") || response.starts_with("HTTP/1.1 200"))
}

/// The RepoDigest of `reference`'s repository. A repository pulled by several digests (a tag,
/// then one platform's manifest by digest) has several: a `@digest` reference picks its own.
fn pick_repo_digest(reference: &str, repo_digests: &[String]) -> Result<String> {
    let wanted = familiar_repository(repository_of(reference));
    let pinned = reference.split_once('@').map(|(_, digest)| digest);
    let matching: Vec<&str> = repo_digests
        .iter()
        .filter_map(|entry| entry.split_once('@'))
        .filter(|(repository, _)| familiar_repository(repository) == wanted)
        .map(|(_, digest)| digest)
        .collect();
    match (pinned, matching.as_slice()) {
        (Some(pinned), found) if found.contains(&pinned) => Ok(pinned.to_owned()),
        (None, [digest]) => Ok((*digest).to_owned()),
        _ => bail!("no single RepoDigest for {reference} among {repo_digests:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// podman

/// Options for [`Podman::with_config`].
#[derive(Debug, Clone, Default)]
pub struct PodmanConfig {
    /// Run every podman command inside this namespace.
    pub netns: Option<NetNs>,
    /// A `registries.conf` (mirrors), passed as `CONTAINERS_REGISTRIES_CONF`.
    pub registries_conf: Option<PathBuf>,
    /// `--creds user:password` for pulls.
    pub credentials: Option<Credentials>,
}

/// podman (no daemon) with vfs storage, its run root, tmp dir and `containers.conf` in one
/// temp dir. The `containers.conf` lowers the default rlimits that root podman asks for
/// (nofile 1048576), which runc cannot set here: this sandbox lacks CAP_SYS_RESOURCE.
#[derive(Debug)]
pub struct Podman {
    dir: TempDir,
    config: PodmanConfig,
}

/// `containers.conf` for [`Podman`]. The rlimits must stay at or under the hard limits of
/// conmon here (nofile 20000, nproc 32768); cgroupfs and file events because there is no
/// systemd.
const PODMAN_CONTAINERS_CONF: &str = "\
[containers]
default_ulimits = [\"nofile=1024:1024\", \"nproc=4096:4096\"]

[engine]
cgroup_manager = \"cgroupfs\"
events_logger = \"file\"
";

impl Podman {
    /// podman on the host network with the system `registries.conf`.
    pub fn new() -> Result<Self> {
        Self::with_config(PodmanConfig::default())
    }

    /// podman with `config`.
    pub fn with_config(config: PodmanConfig) -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-podman-")?;
        fs::write(dir.path().join("containers.conf"), PODMAN_CONTAINERS_CONF)?;
        Ok(Self { dir, config })
    }

    fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `podman --root R --runroot R2 --tmpdir T --storage-driver vfs`; add the subcommand.
    pub fn podman(&self) -> Command {
        let dir = self.dir();
        let mut cmd = command_in(self.config.netns.as_ref(), "podman");
        cmd.env("CONTAINERS_CONF", dir.join("containers.conf"));
        if let Some(conf) = &self.config.registries_conf {
            cmd.env("CONTAINERS_REGISTRIES_CONF", conf);
        }
        cmd.arg("--root").arg(dir.join("root"));
        cmd.arg("--runroot").arg(dir.join("runroot"));
        cmd.arg("--tmpdir").arg(dir.join("tmp"));
        cmd.args(["--storage-driver", "vfs"]);
        cmd
    }

    /// `podman pull --tls-verify=false REF`.
    pub fn pull(&self, reference: &str) -> Result<()> {
        let mut cmd = self.podman();
        cmd.args(["pull", "--quiet", "--tls-verify=false"]);
        if let Some(credentials) = &self.config.credentials {
            cmd.arg("--creds").arg(credentials.user_colon_password());
        }
        run_command(cmd.arg(reference)).map(drop)
    }

    /// The manifest digest podman recorded for `reference` (`{{.Digest}}`).
    pub fn image_digest(&self, reference: &str) -> Result<String> {
        let mut cmd = self.podman();
        cmd.args(["image", "inspect", "--format", "{{.Digest}}", reference]);
        Ok(run_command(&mut cmd)?.stdout_text()?.trim().to_owned())
    }

    /// `podman run --rm --network none REF CMD...`; returns the container's stdout.
    pub fn run(&self, reference: &str, cmd: &[&str]) -> Result<String> {
        let mut podman = self.podman();
        podman
            .args(["run", "--rm", "--network", "none", reference])
            .args(cmd);
        Ok(run_command(&mut podman)?.stdout_text()?.to_owned())
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        // Containers a failed test left running keep conmon alive and their shm mounted.
        let mut remove_all = self.podman();
        remove_all.args(["rm", "--all", "--force", "--time", "0"]);
        if let Err(error) = run_command_timeout(&mut remove_all, CLEANUP_TIMEOUT) {
            eprintln!("warning: {error:#}");
        }
        unmount_or_warn(self.dir.path());
        // conmon outlives a removed detached container by a few milliseconds and writes its
        // exit and event files into the tmp dir meanwhile: a single removal can meet a file
        // created behind it (seen: the whole temp dir left behind). Retry while that happens.
        for _ in 0..PODMAN_REMOVE_ATTEMPTS {
            match fs::remove_dir_all(self.dir.path()) {
                Ok(()) => return,
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => return,
                Err(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        eprintln!("warning: cannot remove {}", self.dir.path().display());
    }
}

/// Attempts, 100 ms apart, at removing a podman temp dir (see `Drop for Podman`).
const PODMAN_REMOVE_ATTEMPTS: usize = 20;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mountinfo(r"/tmp/a\040b\134c"), "/tmp/a b\\c");
        assert_eq!(unescape_mountinfo(r"/x\0"), r"/x\0");
    }

    #[test]
    fn repositories_are_split_from_tags_and_digests() {
        assert_eq!(repository_of("127.0.0.1:5000/a/b:v1"), "127.0.0.1:5000/a/b");
        assert_eq!(repository_of("127.0.0.1:5000/a/b"), "127.0.0.1:5000/a/b");
        assert_eq!(
            repository_of("127.0.0.1:5000/a@sha256:00"),
            "127.0.0.1:5000/a"
        );
        assert_eq!(familiar_repository("docker.io/library/busybox"), "busybox");
    }

    #[test]
    fn repo_digest_of_the_same_repository_is_picked() -> Result<()> {
        let digests = vec!["a/x@sha256:1".to_owned(), "busybox@sha256:2".to_owned()];
        assert_eq!(
            pick_repo_digest("docker.io/library/busybox:1", &digests)?,
            "sha256:2"
        );
        assert!(pick_repo_digest("other:1", &digests).is_err());
        let two = vec!["r/x@sha256:1".to_owned(), "r/x@sha256:2".to_owned()];
        assert_eq!(pick_repo_digest("r/x@sha256:2", &two)?, "sha256:2");
        assert!(
            pick_repo_digest("r/x:v1", &two).is_err(),
            "ambiguous by tag"
        );
        Ok(())
    }

    #[test]
    fn hosts_toml_lists_mirrors_in_order() -> Result<()> {
        let dir = TempDir::new()?;
        let path = write_containerd_hosts_toml(
            dir.path(),
            "upstream.invalid",
            "http://upstream.invalid",
            &["http://127.0.0.1:1", "http://127.0.0.1:2"],
        )?;
        let text = fs::read_to_string(path)?;
        let first = text.find("127.0.0.1:1").unwrap_or(usize::MAX);
        let second = text.find("127.0.0.1:2").unwrap_or(0);
        assert!(text.starts_with("server = \"http://upstream.invalid\""));
        assert!(first < second, "{text}");
        Ok(())
    }
}
