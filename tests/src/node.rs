//! Shoal nodes as real processes: the `shoal` binary started on a temp data directory with an
//! ephemeral gateway port, driven through its CLI, stopped or killed by PID.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::clients::{NetNs, wait_until};

/// Not a `shoal node` flag: in a test's `extra`, starts the node with mDNS on (the harness
/// passes `--no-mdns` otherwise).
pub const MDNS: &str = "+mdns";
/// Flags that set who a node serves: with one of them (or `--serve-peer`) in `extra` the
/// harness leaves the zone to the test; otherwise it passes `--serve-peers any`.
const ZONE_FLAGS: &[&str] = &["--psk"];

/// How long a node may take to print its `ready` line.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on two nodes connecting after one is started with the other as its bootstrap peer.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

/// The `shoal` binary: `$SHOAL_BIN` when set, otherwise built once per test process with the
/// same profile as the running test, so the tests never run a stale binary.
pub fn shoal_binary() -> anyhow::Result<PathBuf> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| build_binary().map_err(|error| format!("{error:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

fn build_binary() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("SHOAL_BIN") {
        return Ok(PathBuf::from(path));
    }
    // Tests live in target/<profile>/deps/, benchmark programs in target/<profile>/; the
    // shoal binary is in target/<profile>/.
    let exe = std::env::current_exe()?;
    let parent = exe
        .parent()
        .context("cannot locate the target directory from the executable")?;
    let profile_dir = if parent.file_name().is_some_and(|name| name == "deps") {
        parent
            .parent()
            .context("cannot locate the target directory from the executable")?
    } else {
        parent
    };
    let release = profile_dir
        .file_name()
        .is_some_and(|name| name == "release");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "--quiet", "-p", "shoal-node", "--bin", "shoal"]);
    if release {
        build.arg("--release");
    }
    if let Some(target_dir) = profile_dir.parent() {
        build.env("CARGO_TARGET_DIR", target_dir);
    }
    let status = build
        .status()
        .context("cannot run cargo to build the shoal binary")?;
    anyhow::ensure!(status.success(), "building the shoal binary failed");
    Ok(profile_dir.join("shoal"))
}

/// A `shoal` command on `data`, for the subcommands that talk to a running node.
pub fn shoal(data: &Path, subcommand: &str) -> anyhow::Result<Command> {
    let mut command = Command::new(shoal_binary()?);
    command.arg(subcommand).arg("--data").arg(data);
    Ok(command)
}

/// The peer id of the node that will run on `data` (`shoal id`, which creates the identity if
/// needed), so that nodes started later can be named before they exist.
pub fn peer_id_of(data: &Path) -> anyhow::Result<String> {
    std::fs::create_dir_all(data)?;
    let output = shoal(data, "id")?.output()?;
    anyhow::ensure!(
        output.status.success(),
        "shoal id failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?.trim().to_owned())
}

/// `shoal user add --password-stdin --htpasswd HTPASSWD USER`: a gateway user with `password`.
pub fn add_gateway_user(htpasswd: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut add = Command::new(shoal_binary()?)
        .args(["user", "add", "--password-stdin", "--htpasswd"])
        .arg(htpasswd)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()?;
    add.stdin
        .take()
        .context("no stdin")?
        .write_all(format!("{password}\n").as_bytes())?;
    anyhow::ensure!(add.wait()?.success(), "shoal user add {user} failed");
    Ok(())
}

/// `--serve-peer` for the nodes that will run on each of `data`: nodes that ask each other to
/// download from their upstream (`Request::Fetch`) must name each other.
pub fn serving(data: &[&Path]) -> anyhow::Result<Vec<String>> {
    let mut args = Vec::new();
    for data in data {
        args.extend(["--serve-peer".to_owned(), peer_id_of(data)?]);
    }
    Ok(args)
}

/// A running `shoal node`. Dropping it kills the process.
#[derive(Debug)]
pub struct ShoalNode {
    child: Option<Child>,
    data: PathBuf,
    gateway: SocketAddr,
    /// The `--metrics` listener, when the node was started with one.
    metrics: Option<SocketAddr>,
    log: PathBuf,
    /// The namespace the node runs in, held so it outlives the process.
    netns: Option<NetNs>,
    peer_id: String,
    /// Peer addresses as the node reports them on stdout.
    listen_lines: Mutex<mpsc::Receiver<String>>,
    peer_address: OnceLock<String>,
}

impl ShoalNode {
    /// Starts a node on `data` with the gateway on an ephemeral loopback port and waits for
    /// it to report ready. `extra` are more `shoal node` flags.
    pub fn start(data: &Path, extra: &[&str]) -> anyhow::Result<ShoalNode> {
        Self::start_with(data, extra, None)
    }

    /// [`ShoalNode::start`] inside `netns`: the gateway listens on the namespace's 127.0.0.1,
    /// reachable only by clients started in there. The CLI still works from the host (it talks
    /// to the node over a Unix socket in `data`).
    pub fn start_in(netns: &NetNs, data: &Path, extra: &[&str]) -> anyhow::Result<ShoalNode> {
        Self::start_with(data, extra, Some(netns))
    }

    /// [`ShoalNode::start`] bootstrapped to `seeds` and trusting their announcements; returns
    /// once it is connected to each of them.
    pub fn start_joined(
        data: &Path,
        seeds: &[&ShoalNode],
        extra: &[&str],
    ) -> anyhow::Result<ShoalNode> {
        Self::start_joined_in(None, data, seeds, extra)
    }

    /// [`ShoalNode::start_joined`], inside `netns` when one is given.
    pub fn start_joined_in(
        netns: Option<&NetNs>,
        data: &Path,
        seeds: &[&ShoalNode],
        extra: &[&str],
    ) -> anyhow::Result<ShoalNode> {
        let mut args: Vec<String> = Vec::new();
        for seed in seeds {
            args.extend([
                "--bootstrap".into(),
                seed.peer_address()?,
                "--trust".into(),
                seed.peer_id().into(),
            ]);
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let node = Self::start_with(data, &args, netns)?;
        for seed in seeds {
            wait_until("the nodes to connect", JOIN_TIMEOUT, || {
                node.is_connected_to(seed)
            })?;
        }
        Ok(node)
    }

    /// Whether `other` is among this node's connected peers.
    pub fn is_connected_to(&self, other: &ShoalNode) -> anyhow::Result<bool> {
        let status = self.status()?;
        let peers = status["connected_peers"]
            .as_array()
            .with_context(|| format!("no connected_peers in {status}"))?;
        Ok(peers.iter().any(|peer| peer == other.peer_id()))
    }

    /// Whether a trusted announcement of `repository:tag` (such as `docker.io/team/app`, `1`)
    /// has reached this node.
    pub fn knows_tag(&self, repository: &str, tag: &str) -> anyhow::Result<bool> {
        let status = self.status()?;
        let known = status["known_images"]
            .as_array()
            .with_context(|| format!("no known_images in {status}"))?;
        Ok(known
            .iter()
            .any(|image| image["repository"] == repository && image["tag"] == tag))
    }

    fn start_with(data: &Path, extra: &[&str], netns: Option<&NetNs>) -> anyhow::Result<ShoalNode> {
        std::fs::create_dir_all(data)?;
        let log = data.with_extension("log");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let binary = shoal_binary()?;
        let mut command = match netns {
            // nsenter execs the binary, so the PID we hold is the node's own.
            Some(netns) => netns.command(&binary),
            None => Command::new(&binary),
        };
        // Loopback only, ephemeral ports, no mDNS: test nodes meet only the peers a test names.
        command.arg("node");
        if !extra.contains(&"--gateway") {
            command.args(["--gateway", "127.0.0.1:0"]);
        }
        if !extra.contains(&MDNS) {
            command.arg("--no-mdns");
        }
        // Test nodes serve every peer they meet, unless the test sets the zone itself: a test
        // names its peers by bootstrap address, and the product's default (serve only the
        // zone) would refuse a node joined to a seed that does not name it.
        if !extra
            .iter()
            .any(|arg| ZONE_FLAGS.contains(arg) || arg.starts_with("--serve-peer"))
        {
            command.args(["--serve-peers", "any"]);
        }
        if !extra.contains(&"--listen") {
            command.args(["--listen", "/ip4/127.0.0.1/tcp/0"]);
        }
        let mut child = command
            .arg("--data")
            .arg(data)
            .args(extra.iter().filter(|arg| **arg != MDNS))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("cannot start shoal node")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (ready, ready_line) = mpsc::channel();
        let (listening, listen_lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("ready ") {
                    let _ = ready.send(line);
                } else if let Some(address) = line.strip_prefix("listening ") {
                    let _ = listening.send(address.to_owned());
                }
            }
        });
        let mut node = ShoalNode {
            child: Some(child),
            data: data.to_owned(),
            gateway: ([127, 0, 0, 1], 0).into(),
            metrics: None,
            log,
            netns: netns.cloned(),
            peer_id: String::new(),
            listen_lines: Mutex::new(listen_lines),
            peer_address: OnceLock::new(),
        };
        let line = match ready_line.recv_timeout(START_TIMEOUT) {
            Ok(line) => line,
            Err(_) => bail!("shoal node did not become ready; its log:\n{}", node.logs()),
        };
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|field| field.strip_prefix(name))
                .with_context(|| format!("ready line without {name}"))
        };
        node.gateway = field("gateway=")?.parse()?;
        node.peer_id = field("peer_id=")?.to_owned();
        node.metrics = field("metrics=").ok().map(str::parse).transpose()?;
        Ok(node)
    }

    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    /// The node's first peer address with its peer id, for other nodes' `--bootstrap`. Waits
    /// (bounded) for the node to report it.
    pub fn peer_address(&self) -> anyhow::Result<String> {
        if let Some(address) = self.peer_address.get() {
            return Ok(address.clone());
        }
        let lines = self.listen_lines.lock().unwrap_or_else(|e| e.into_inner());
        let address = lines
            .recv_timeout(START_TIMEOUT)
            .context("the node reported no listen address")?;
        Ok(self
            .peer_address
            .get_or_init(|| format!("{address}/p2p/{}", self.peer_id))
            .clone())
    }

    pub fn gateway(&self) -> SocketAddr {
        self.gateway
    }

    /// The metrics and status page address (`--metrics`), if the node serves one.
    pub fn metrics(&self) -> Option<SocketAddr> {
        self.metrics
    }

    /// The namespace the node runs in, if any.
    pub fn netns(&self) -> Option<&NetNs> {
        self.netns.as_ref()
    }

    pub fn data(&self) -> &Path {
        &self.data
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the node logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `shoal import`, returning its output whether it succeeded or not.
    pub fn import(&self, path: &Path, tag: Option<&str>) -> anyhow::Result<Output> {
        let mut command = shoal(&self.data, "import")?;
        command.arg(path);
        if let Some(tag) = tag {
            command.args(["--tag", tag]);
        }
        Ok(command.output()?)
    }

    /// Runs `shoal import` and fails unless it succeeded.
    pub fn import_ok(&self, path: &Path, tag: Option<&str>) -> anyhow::Result<String> {
        let output = self.import(path, tag)?;
        anyhow::ensure!(
            output.status.success(),
            "shoal import {} failed: {}\nnode log:\n{}",
            path.display(),
            String::from_utf8_lossy(&output.stderr),
            self.logs()
        );
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// `shoal status --json`, parsed.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        let output = shoal(&self.data, "status")?.arg("--json").output()?;
        anyhow::ensure!(
            output.status.success(),
            "shoal status failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(serde_json::from_slice(&output.stdout)?)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(&mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut child = self.child.take().context("node already stopped")?;
        signal(child.id(), "TERM")?;
        Ok(child.wait()?)
    }

    /// SIGKILL: the process dies wherever it is.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ShoalNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Counter `name` of a `shoal status --json` report; panics if it has none.
pub fn counter(status: &serde_json::Value, name: &str) -> u64 {
    status["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {status}"))
}

fn signal(pid: u32, name: &str) -> anyhow::Result<()> {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()?;
    anyhow::ensure!(status.success(), "kill -{name} {pid} failed");
    Ok(())
}
