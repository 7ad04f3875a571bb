//! A real CNCF distribution registry (`docker-registry`, Debian's 2.8) as the upstream that
//! Shoal nodes fall back to, and as the speed reference for benchmarks.
//!
//! What it is for: starting a private registry on 127.0.0.1 (or inside a [`NetNs`]) with
//! filesystem storage in a temp dir, pushing OCI layouts into it with skopeo, and reading its
//! access log to check which blobs were fetched from it and how often ("every blob crossed the
//! uplink exactly once").
//! What it is not for: TLS or token auth; only optional HTTP basic auth (htpasswd, bcrypt).
//!
//! Data flow: [`DockerRegistry::start`] writes `config.yml`, spawns
//! `docker-registry serve config.yml` with stdout (the combined-format access log) and stderr
//! (its own logrus log) redirected to files in the temp dir, and waits until the log says it is
//! listening on the chosen port and `GET /v2/` answers. Dropping it kills the process by its
//! PID, reaps it and removes the temp dir.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use tempfile::TempDir;

use crate::clients::{
    ChildGuard, Credentials, NetNs, Skopeo, command_in, free_port, path_str, quoted, tail,
    wait_until,
};

/// Bound on the wait for a started registry to answer; it takes about 0.1 s here.
pub const REGISTRY_START_TIMEOUT: Duration = Duration::from_secs(20);

/// Ports tried before giving up: a port found free can be taken by a parallel test before the
/// registry binds it, and each attempt picks a new one.
const START_ATTEMPTS: usize = 8;

/// The access log is written after each response completes, a moment after the client has
/// read the last byte; it is read once it has not grown for this long.
const ACCESS_LOG_IDLE: Duration = Duration::from_millis(100);

/// Upper bound of that wait, for a registry still serving some other client.
const ACCESS_LOG_SETTLE_MAX: Duration = Duration::from_secs(5);

/// bcrypt cost for the htpasswd file: the minimum, since these are throw-away credentials and
/// the registry checks the hash on every request.
const HTPASSWD_BCRYPT_COST: u32 = 4;

/// Options for [`DockerRegistry::start_with`].
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Require HTTP basic auth with these credentials (htpasswd with a bcrypt hash).
    pub basic_auth: Option<Credentials>,
    /// Serve inside this network namespace instead of on the host's loopback.
    pub netns: Option<NetNs>,
    /// Listen on this address instead of 127.0.0.1: with `netns`, an address of one of the
    /// namespace's links, so that other namespaces can reach it (a registry in one site).
    pub listen_ip: Option<Ipv4Addr>,
    /// Run as a pull-through cache of the registry at this URL (distribution's proxy mode):
    /// what it lacks it fetches from there while streaming it to the client, and keeps.
    pub proxy_of: Option<String>,
    /// Serve HTTPS with this PEM certificate chain and key (`http.tls` in config.yml).
    pub tls: Option<(PathBuf, PathBuf)>,
}

/// A running `docker-registry` on `127.0.0.1:<port>` with its storage in a temp dir.
#[derive(Debug)]
pub struct DockerRegistry {
    // Declared before `dir`: fields drop in order, so the process is killed and reaped before
    // its storage and logs are removed.
    child: ChildGuard,
    dir: TempDir,
    port: u16,
    config: RegistryConfig,
}

/// How one start attempt ended when it did not succeed.
enum StartFailure {
    /// Someone else bound the port first: try another.
    PortTaken,
    /// Anything else: give up, with the registry's stderr in the error.
    Fatal(anyhow::Error),
}

impl DockerRegistry {
    /// An anonymous registry on the host's 127.0.0.1.
    pub fn start() -> Result<Self> {
        Self::start_with(RegistryConfig::default())
    }

    /// A registry with basic auth and/or inside a network namespace.
    pub fn start_with(config: RegistryConfig) -> Result<Self> {
        let dir = TempDir::with_prefix("shoal-registry-")?;
        if let Some(credentials) = &config.basic_auth {
            write_htpasswd(&dir.path().join("htpasswd"), credentials)?;
        }
        for _ in 0..START_ATTEMPTS {
            let port = free_port()?;
            match start_on_port(dir.path(), port, &config) {
                Ok(child) => {
                    return Ok(Self {
                        child,
                        dir,
                        port,
                        config,
                    });
                }
                Err(StartFailure::PortTaken) => continue,
                Err(StartFailure::Fatal(error)) => return Err(error),
            }
        }
        bail!("docker-registry found no free port in {START_ATTEMPTS} attempts")
    }

    /// `127.0.0.1:<port>` (inside the namespace, if the registry runs in one), or the
    /// configured `listen_ip`.
    pub fn addr(&self) -> SocketAddr {
        let ip = self.config.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        SocketAddr::from((ip, self.port))
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        self.addr().to_string()
    }

    /// `http://127.0.0.1:<port>` (`https://` with TLS), e.g. for `--upstream NS=URL` or a
    /// mirror entry.
    pub fn url(&self) -> String {
        let scheme = if self.config.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// `127.0.0.1:<port>/<repo_and_tag>`.
    pub fn reference(&self, repo_and_tag: &str) -> String {
        format!("{}/{repo_and_tag}", self.host())
    }

    /// The basic-auth credentials, when the registry requires them.
    pub fn credentials(&self) -> Option<&Credentials> {
        self.config.basic_auth.as_ref()
    }

    /// The network namespace the registry serves in, if any.
    pub fn netns(&self) -> Option<&NetNs> {
        self.config.netns.as_ref()
    }

    /// The filesystem storage root (`docker/registry/v2/...` below it).
    pub fn storage_dir(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// skopeo set up to reach this registry: its namespace and credentials.
    pub fn skopeo(&self) -> Skopeo {
        let mut skopeo = Skopeo::new();
        if let Some(netns) = self.netns() {
            skopeo = skopeo.in_netns(netns);
        }
        if let Some(credentials) = self.credentials() {
            skopeo = skopeo.with_credentials(credentials.clone());
        }
        skopeo
    }

    /// The registry's own log (stderr) so far.
    pub fn log(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.path().join("registry.log"))?)
    }

    /// The registry process (for its CPU time and memory).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Every request so far, from the access log, once the log has been quiet for a moment
    /// (each line is written just after its response completes).
    pub fn access_log(&self) -> Result<Vec<AccessLogEntry>> {
        let path = self.dir.path().join("access.log");
        wait_until_file_idle(&path)?;
        Ok(parse_access_log(&fs::read_to_string(&path)?))
    }

    /// How many times each blob was requested with `GET /v2/<name>/blobs/<digest>` (any
    /// status, any repository), keyed by digest. `HEAD` requests are not counted.
    pub fn blob_get_counts(&self) -> Result<BTreeMap<String, usize>> {
        Ok(count_blob_gets(&self.access_log()?))
    }

    /// Fails unless the registry process is still running.
    pub fn ensure_running(&mut self) -> Result<()> {
        self.child.ensure_running()
    }
}

/// Writes config.yml for `port`, spawns the registry and waits until it is ready.
fn start_on_port(
    dir: &Path,
    port: u16,
    config: &RegistryConfig,
) -> Result<ChildGuard, StartFailure> {
    let fatal = StartFailure::Fatal;
    let access_log = dir.join("access.log");
    let registry_log = dir.join("registry.log");
    for log in [&access_log, &registry_log] {
        fs::write(log, b"").map_err(|e| fatal(e.into()))?;
    }
    let config_path = dir.join("config.yml");
    let ip = config.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST);
    let yaml = registry_config_yaml(dir, ip, port, config).map_err(fatal)?;
    fs::write(&config_path, yaml).map_err(|e| fatal(e.into()))?;
    let mut cmd = command_in(config.netns.as_ref(), "docker-registry");
    cmd.arg("serve").arg(&config_path);
    // No grace: the registry has nothing to flush, and SIGKILL is immediate.
    let mut child = ChildGuard::spawn_logged(
        &mut cmd,
        "docker-registry",
        &access_log,
        &registry_log,
        Duration::ZERO,
    )
    .map_err(fatal)?;
    wait_listening(&mut child, &registry_log, ip, port)?;
    if config.netns.is_none() {
        probe_v2(port, config).map_err(|error| {
            let log = fs::read_to_string(&registry_log).unwrap_or_default();
            fatal(error.context(format!("docker-registry log:\n{}", tail(&log))))
        })?;
    }
    Ok(child)
}

/// Waits for "listening on IP:PORT" in the registry's log: it is written after the socket is
/// bound, so it proves that this process (and not a parallel test) owns the port.
fn wait_listening(
    child: &mut ChildGuard,
    registry_log: &Path,
    ip: Ipv4Addr,
    port: u16,
) -> Result<(), StartFailure> {
    let listening = format!("listening on {ip}:{port}");
    let mut port_taken = false;
    let waited = wait_until("docker-registry to listen", REGISTRY_START_TIMEOUT, || {
        let log = fs::read_to_string(registry_log)?;
        if log.contains(&listening) {
            return Ok(true);
        }
        if let Some(status) = child.exit_status()? {
            port_taken = log.contains("address already in use");
            bail!("docker-registry exited ({status})");
        }
        Ok(false)
    });
    match waited {
        Ok(()) => Ok(()),
        Err(_) if port_taken => Err(StartFailure::PortTaken),
        Err(error) => {
            let log = fs::read_to_string(registry_log).unwrap_or_default();
            Err(StartFailure::Fatal(
                error.context(format!("docker-registry log:\n{}", tail(&log))),
            ))
        }
    }
}

/// `GET /v2/` must answer 200, or 401 when basic auth is on, or 400 (Go's answer to plain
/// HTTP on its TLS port) with TLS.
fn probe_v2(port: u16, config: &RegistryConfig) -> Result<()> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let deadline = Instant::now() + REGISTRY_START_TIMEOUT;
    let expected = match (&config.tls, &config.basic_auth) {
        (Some(_), _) => 400,
        (None, Some(_)) => 401,
        (None, None) => 200,
    };
    loop {
        match http_get_status(addr, "/v2/") {
            Ok(status) if status == expected => return Ok(()),
            Ok(status) => bail!("GET http://{addr}/v2/ answered {status}, expected {expected}"),
            Err(error) if Instant::now() >= deadline => {
                return Err(error.context(format!("GET http://{addr}/v2/ never answered")));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// The status code of a plain HTTP/1.0 `GET path` to `addr`, with short timeouts.
fn http_get_status(addr: SocketAddr, path: &str) -> Result<u16> {
    let timeout = Duration::from_secs(2);
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut head = [0u8; 12];
    stream.read_exact(&mut head)?;
    let status_line = String::from_utf8_lossy(&head);
    status_line
        .get(9..12)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| anyhow!("not an HTTP response: {status_line:?}"))
}

fn registry_config_yaml(
    dir: &Path,
    ip: Ipv4Addr,
    port: u16,
    config: &RegistryConfig,
) -> Result<String> {
    let storage = quoted(path_str(&dir.join("storage"))?);
    let mut yaml = format!(
        "version: 0.1\n\
         log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
         storage:\n  filesystem:\n    rootdirectory: {storage}\n  delete:\n    enabled: true\n\
         \x20 maintenance:\n    uploadpurging:\n      enabled: false\n\
         http:\n  addr: {ip}:{port}\n  secret: shoal-test-secret\n",
    );
    if let Some((cert, key)) = &config.tls {
        let (cert, key) = (quoted(path_str(cert)?), quoted(path_str(key)?));
        yaml.push_str(&format!(
            "  tls:\n    certificate: {cert}\n    key: {key}\n"
        ));
    }
    if config.basic_auth.is_some() {
        let htpasswd = quoted(path_str(&dir.join("htpasswd"))?);
        yaml.push_str(&format!(
            "auth:\n  htpasswd:\n    realm: shoal-test\n    path: {htpasswd}\n"
        ));
    }
    if let Some(remote) = &config.proxy_of {
        yaml.push_str(&format!("proxy:\n  remoteurl: {}\n", quoted(remote)));
    }
    Ok(yaml)
}

/// One line of `user:bcrypt-hash`; distribution verifies it with Go's bcrypt, which accepts
/// the `$2b$` hashes the bcrypt crate writes.
fn write_htpasswd(path: &Path, credentials: &Credentials) -> Result<()> {
    let hash = bcrypt::hash(&credentials.password, HTPASSWD_BCRYPT_COST)?;
    fs::write(path, format!("{}:{hash}\n", credentials.user))
        .with_context(|| format!("writing {}", path.display()))
}

/// Waits until `path` has not grown for [`ACCESS_LOG_IDLE`], at most [`ACCESS_LOG_SETTLE_MAX`].
fn wait_until_file_idle(path: &Path) -> Result<()> {
    let deadline = Instant::now() + ACCESS_LOG_SETTLE_MAX;
    let mut last_len = fs::metadata(path)?.len();
    loop {
        std::thread::sleep(ACCESS_LOG_IDLE);
        let len = fs::metadata(path)?.len();
        if len == last_len || Instant::now() >= deadline {
            return Ok(());
        }
        last_len = len;
    }
}

/// One request from the registry's access log (Apache combined format).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessLogEntry {
    /// `GET`, `HEAD`, `PUT`, ...
    pub method: String,
    /// The request URI, query included (mirror requests carry `?ns=<registry>`).
    pub uri: String,
    /// The response status.
    pub status: u16,
    /// Response body bytes written (0 when the log says `-`).
    pub bytes: u64,
    /// The client's User-Agent, as logged.
    pub user_agent: String,
}

impl AccessLogEntry {
    /// The URI without its query string.
    pub fn path(&self) -> &str {
        self.uri
            .split_once('?')
            .map_or(self.uri.as_str(), |(path, _)| path)
    }

    /// The digest when this is a request for `/v2/<name>/blobs/<digest>` (not an upload).
    pub fn blob_digest(&self) -> Option<&str> {
        let path = self.path().strip_prefix("/v2/")?;
        let (_, digest) = path.rsplit_once("/blobs/")?;
        (digest.contains(':') && !digest.contains('/')).then_some(digest)
    }

    /// The tag or digest when this is a request for `/v2/<name>/manifests/<reference>`.
    pub fn manifest_reference(&self) -> Option<&str> {
        let path = self.path().strip_prefix("/v2/")?;
        path.rsplit_once("/manifests/")
            .map(|(_, reference)| reference)
    }
}

/// Parses every well-formed line of a combined-format access log; other lines are skipped.
pub fn parse_access_log(text: &str) -> Vec<AccessLogEntry> {
    text.lines().filter_map(parse_access_log_line).collect()
}

/// `127.0.0.1 - - [date] "GET /v2/x/blobs/sha256:.. HTTP/1.1" 200 419 "" "skopeo/1.9.3"`
fn parse_access_log_line(line: &str) -> Option<AccessLogEntry> {
    let (_, rest) = line.split_once('"')?;
    let (request, rest) = rest.split_once('"')?;
    let mut request = request.split_whitespace();
    let method = request.next()?.to_owned();
    let uri = request.next()?.to_owned();
    let mut numbers = rest.split_whitespace();
    let status = numbers.next()?.parse().ok()?;
    let bytes = numbers.next()?.parse().unwrap_or(0);
    // What follows is `"referer" "user agent"`; the agent is between the 3rd and last quote.
    let after_numbers = rest.split_once('"').map_or("", |(_, quoted)| quoted);
    let user_agent = after_numbers
        .split_once("\" \"")
        .map_or("", |(_, agent)| agent.strip_suffix('"').unwrap_or(agent))
        .to_owned();
    Some(AccessLogEntry {
        method,
        uri,
        status,
        bytes,
        user_agent,
    })
}

/// `GET` requests per blob digest.
pub fn count_blob_gets(entries: &[AccessLogEntry]) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for entry in entries.iter().filter(|entry| entry.method == "GET") {
        if let Some(digest) = entry.blob_digest() {
            *counts.entry(digest.to_owned()).or_insert(0) += 1;
        }
    }
    counts
}

/// Pushes the only image of the OCI layout at `layout_dir` to `registry` as `repo_and_tag`
/// (`repo:tag`) with `skopeo copy --all --preserve-digests` (a whole index for multi-platform
/// images); returns the pushed top-level digest.
pub fn push_oci_layout(
    layout_dir: &Path,
    registry: &DockerRegistry,
    repo_and_tag: &str,
) -> Result<String> {
    registry
        .skopeo()
        .push_oci_layout(layout_dir, &registry.reference(repo_and_tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = concat!(
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"GET /v2/ HTTP/1.1\" 200 2 \"\" \"skopeo/1.9.3\"\n",
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"GET /v2/smoke/busybox/blobs/sha256:aa HTTP/1.1\" 200 419 \"\" \"containerd/1.6.20~ds1\"\n",
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"HEAD /v2/smoke/busybox/blobs/sha256:aa HTTP/1.1\" 200 419 \"\" \"x\"\n",
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"GET /v2/a/b/blobs/sha256:aa?ns=docker.io HTTP/1.1\" 206 - \"\" \"docker/20.10 UpstreamClient(Docker-Client/28.2.2 \\\\(linux\\\\))\"\n",
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"PATCH /v2/a/blobs/uploads/1234 HTTP/1.1\" 202 0 \"\" \"skopeo\"\n",
        "time=\"2026-11-29\" level=info msg=\"not an access log line\"\n",
        "127.0.0.1 - - [29/Nov/2026:15:11:32 +0000] \"HEAD /v2/smoke/busybox/manifests/v1?ns=upstream.invalid HTTP/1.1\" 200 349 \"\" \"containerd\"\n",
    );

    #[test]
    fn access_log_lines_are_parsed() {
        let entries = parse_access_log(SAMPLE);
        assert_eq!(entries.len(), 6);
        assert_eq!(entries[1].method, "GET");
        assert_eq!(entries[1].status, 200);
        assert_eq!(entries[1].bytes, 419);
        assert_eq!(entries[1].user_agent, "containerd/1.6.20~ds1");
        assert_eq!(entries[3].bytes, 0);
        assert_eq!(entries[3].path(), "/v2/a/b/blobs/sha256:aa");
        assert_eq!(entries[5].manifest_reference(), Some("v1"));
    }

    #[test]
    fn only_blob_gets_are_counted() {
        let counts = count_blob_gets(&parse_access_log(SAMPLE));
        assert_eq!(counts.len(), 1);
        assert_eq!(counts.get("sha256:aa"), Some(&2));
    }

    #[test]
    fn config_enables_htpasswd_and_proxy_mode_only_when_asked() -> Result<()> {
        let dir = Path::new("/tmp/x");
        let localhost = Ipv4Addr::LOCALHOST;
        let plain = registry_config_yaml(dir, localhost, 5000, &RegistryConfig::default())?;
        assert!(!plain.contains("htpasswd"), "{plain}");
        assert!(!plain.contains("proxy"), "{plain}");
        let config = RegistryConfig {
            basic_auth: Some(Credentials::new("alice", "s3cret")),
            proxy_of: Some("http://127.0.0.1:5001".to_owned()),
            ..RegistryConfig::default()
        };
        let yaml = registry_config_yaml(dir, localhost, 5000, &config)?;
        assert!(yaml.contains("path: \"/tmp/x/htpasswd\""), "{yaml}");
        assert!(yaml.contains("addr: 127.0.0.1:5000"), "{yaml}");
        assert!(
            yaml.contains("proxy:\n  remoteurl: \"http://127.0.0.1:5001\"\n"),
            "{yaml}"
        );
        Ok(())
    }

    #[test]
    fn htpasswd_hash_verifies() -> Result<()> {
        let dir = TempDir::new()?;
        let path = dir.path().join("htpasswd");
        write_htpasswd(&path, &Credentials::new("alice", "s3cret"))?;
        let line = fs::read_to_string(&path)?;
        let (user, hash) = line
            .trim()
            .split_once(':')
            .ok_or_else(|| anyhow!("{line}"))?;
        assert_eq!(user, "alice");
        assert!(bcrypt::verify("s3cret", hash)?);
        Ok(())
    }
}
