//! `deploy/` as a user runs it: `deploy/image/build` makes Shoal's image from this build's
//! `shoal`, and three podman containers on three "hosts" (network namespaces on one bridge) run
//! it with exactly the Kubernetes DaemonSet's image, command, security settings and ConfigMap.
//! The config's only way to find peers is the headless Service's DNS name (mDNS is off), which
//! here resolves through /etc/hosts to the three hosts' addresses, as the Service's name
//! resolves to the cluster's nodes. Each node must end up connected to the other two.
//!
//! Clean-up, failure or not: the containers go with their `Podman` (removed by name of its own
//! storage), the namespaces and the bridge with the `Lan`, the temp dirs on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::clients::{
    Podman, PodmanConfig, require_tools, run_command, unique_name, wait_until,
};
use shoal_tests::lan::Lan;
use shoal_tests::node::{shoal, shoal_binary};

const HOSTS: usize = 3;
/// Bound on the three nodes finding each other: the first dials happen at start, the
/// bootstrap's re-dials after 1, 2, 4... seconds; the rest is a loaded 2-core machine.
const FIND_TIMEOUT: Duration = Duration::from_secs(90);

fn repository_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// What the test takes from `deploy/kubernetes/shoal-daemonset.yaml`.
#[derive(Debug)]
struct DaemonSet {
    image: String,
    command: Vec<String>,
    /// The ConfigMap's `shoal.toml`, verbatim.
    config: String,
    /// The host name in the config's `/dns4/NAME/tcp/PORT` bootstrap.
    bootstrap_name: String,
}

/// Reads the parts of the manifest the test runs. Block-style YAML as `node/tests/deploy_files.rs`
/// checks it: the shoal container's `image:` and `command:` list, the one block scalar.
fn read_daemonset() -> Result<DaemonSet> {
    let path = repository_root().join("deploy/kubernetes/shoal-daemonset.yaml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("{}", path.display()))?;
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim() == "- name: shoal")
        .context("no shoal container")?;
    let container = &lines[start..];
    let image = container
        .iter()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .context("no image")?
        .to_owned();
    let open = container
        .iter()
        .position(|l| l.trim() == "command:")
        .context("no command")?;
    let command: Vec<String> = container[open + 1..]
        .iter()
        .map_while(|l| l.trim().strip_prefix("- "))
        .map(str::to_owned)
        .collect();
    for setting in [
        "readOnlyRootFilesystem: true",
        "runAsUser: 0",
        "drop: [\"ALL\"]",
        "hostNetwork: true",
    ] {
        ensure!(
            lines.iter().any(|l| l.trim() == setting),
            "the DaemonSet no longer says {setting:?}: update this test's podman flags"
        );
    }

    let scalar = lines
        .iter()
        .position(|l| l.trim() == "shoal.toml: |")
        .context("no shoal.toml in the ConfigMap")?;
    let indent = lines[scalar].len() - lines[scalar].trim_start().len() + 2;
    let config: String = lines[scalar + 1..]
        .iter()
        .take_while(|l| l.trim().is_empty() || l.len() - l.trim_start().len() >= indent)
        .map(|l| format!("{}\n", l.get(indent..).unwrap_or("")))
        .collect();
    let toml: toml::Table = toml::from_str(&config).context("the ConfigMap's shoal.toml")?;
    ensure!(
        toml.get("mdns").and_then(|v| v.as_bool()) == Some(false),
        "mDNS must be off, or the test cannot tell that DNS found the peers"
    );
    let bootstrap = toml
        .get("bootstrap")
        .and_then(|v| v.as_array())
        .context("no bootstrap list")?;
    let [address] = bootstrap.as_slice() else {
        bail!("expected one bootstrap address, found {bootstrap:?}");
    };
    let address = address.as_str().context("bootstrap address")?;
    let bootstrap_name = address
        .strip_prefix("/dns4/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(name, _)| name.to_owned())
        .with_context(|| format!("bootstrap {address} is not /dns4/NAME/..."))?;
    Ok(DaemonSet {
        image,
        command,
        config,
        bootstrap_name,
    })
}

/// Runs `deploy/image/build` on this build's binary; returns the oci-archive.
fn build_image(dir: &Path) -> Result<PathBuf> {
    let archive = dir.join("shoal.tar");
    let output = run_command(
        Command::new(repository_root().join("deploy/image/build"))
            .arg("--binary")
            .arg(shoal_binary()?)
            .arg("--out")
            .arg(dir.join("layout"))
            .arg("--archive")
            .arg(&archive)
            // The debug binary is ~300 MB with debug info, ~50 MB without; vfs copies the image
            // once per container.
            .arg("--strip"),
    )?;
    let printed = output.stdout_text()?;
    ensure!(
        printed.lines().any(|l| l.starts_with("digest sha256:")),
        "{printed}"
    );
    Ok(archive)
}

/// One "host": its podman (storage and commands inside the host's namespace), config and data.
struct Host {
    podman: Podman,
    /// Mounted at /etc/shoal and /var/lib/shoal, as the DaemonSet's ConfigMap and hostPath.
    config: tempfile::TempDir,
    data: tempfile::TempDir,
}

impl Host {
    fn start(&self, daemonset: &DaemonSet, archive: &Path, name: &str) -> Result<()> {
        std::fs::write(self.config.path().join("shoal.toml"), &daemonset.config)?;
        let mut pull = self.podman.podman();
        pull.args(["pull", "--quiet"])
            .arg(format!("oci-archive:{}", archive.display()));
        let id = run_command(&mut pull)?.stdout_text()?.trim().to_owned();
        run_command(self.podman.podman().args(["tag", &id, &daemonset.image]))?;

        let mut run = self.podman.podman();
        // The DaemonSet's pod: host network, read-only root, uid 0, no capabilities, its
        // command replacing the image's entrypoint, and the config and data mounts.
        run.args(["run", "--detach", "--name", name, "--network", "host"])
            .args(["--read-only", "--user", "0", "--cap-drop", "ALL"])
            .arg("--entrypoint")
            .arg(serde_json::to_string(&daemonset.command)?)
            .arg("--volume")
            .arg(format!("{}:/etc/shoal:ro", self.config.path().display()))
            .arg("--volume")
            .arg(format!("{}:/var/lib/shoal", self.data.path().display()));
        // What the headless Service's name resolves to in a cluster: every host's address.
        for index in 0..HOSTS {
            run.arg("--add-host").arg(format!(
                "{}:{}",
                daemonset.bootstrap_name,
                Lan::address(index)
            ));
        }
        run_command(run.arg(&daemonset.image))?;
        Ok(())
    }

    /// `shoal status --json` through the admin socket in the shared data dir; `None` until the
    /// node answers.
    fn status(&self) -> Result<Option<serde_json::Value>> {
        if !self.data.path().join("shoal.sock").exists() {
            return Ok(None);
        }
        let output = shoal(self.data.path(), "status")?.arg("--json").output()?;
        if !output.status.success() {
            return Ok(None);
        }
        Ok(Some(serde_json::from_slice(&output.stdout)?))
    }

    fn logs(&self, name: &str) -> String {
        let mut logs = self.podman.podman();
        logs.args(["logs", name]);
        match run_command(&mut logs) {
            Ok(output) => format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                output.stderr
            ),
            Err(error) => format!("{error:#}"),
        }
    }
}

fn peers_of(status: &serde_json::Value) -> Vec<String> {
    let mut peers: Vec<String> = status["connected_peers"]
        .as_array()
        .map(|peers| {
            peers
                .iter()
                .filter_map(|p| p.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    peers.sort();
    peers
}

#[test]
fn three_podman_hosts_running_the_daemonset_find_each_other_by_name() -> Result<()> {
    if !require_tools(&["podman", "umoci", "ip", "nsenter", "ldd", "strip"])? {
        return Ok(());
    }
    let daemonset = read_daemonset()?;
    let build_dir = tempfile::TempDir::with_prefix("shoal-image-")?;
    let archive = build_image(build_dir.path())?;

    let lan = Lan::create(HOSTS)?;
    let hosts: Vec<Host> = (0..HOSTS)
        .map(|index| {
            Ok(Host {
                podman: Podman::with_config(PodmanConfig {
                    netns: Some(lan.host(index).clone()),
                    ..PodmanConfig::default()
                })?,
                config: tempfile::TempDir::with_prefix("shoal-config-")?,
                data: tempfile::TempDir::with_prefix("shoal-data-")?,
            })
        })
        .collect::<Result<_>>()?;
    let names: Vec<String> = (0..HOSTS).map(|_| unique_name("shoal")).collect();
    for (host, name) in hosts.iter().zip(&names) {
        host.start(&daemonset, &archive, name)?;
    }

    let found = wait_until("three nodes connected pairwise", FIND_TIMEOUT, || {
        for host in &hosts {
            match host.status()? {
                Some(status) if peers_of(&status).len() == HOSTS - 1 => {}
                _ => return Ok(false),
            }
        }
        Ok(true)
    });
    if let Err(error) = found {
        let mut report = format!("{error:#}");
        for (host, name) in hosts.iter().zip(&names) {
            let status = host.status().ok().flatten();
            report.push_str(&format!(
                "\n--- {name}: status {status:?}\n{}",
                host.logs(name)
            ));
        }
        bail!(report);
    }

    // Each node's peers are exactly the other two nodes.
    let statuses: Vec<serde_json::Value> = hosts
        .iter()
        .map(|host| host.status()?.context("a node stopped answering"))
        .collect::<Result<_>>()?;
    let ids: Vec<String> = statuses
        .iter()
        .map(|s| s["peer_id"].as_str().map(str::to_owned))
        .collect::<Option<_>>()
        .context("a status without peer_id")?;
    for (index, status) in statuses.iter().enumerate() {
        let mut others: Vec<String> = ids
            .iter()
            .enumerate()
            .filter(|(other, _)| *other != index)
            .map(|(_, id)| id.clone())
            .collect();
        others.sort();
        assert_eq!(peers_of(status), others, "node {index}'s peers");
    }
    Ok(())
}
