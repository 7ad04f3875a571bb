//! `shoal configure containerd|docker|podman`: the runtime configuration that makes a container
//! runtime pull through this host's node.
//!
//! The node's own configuration is resolved exactly as `shoal node` resolves it (flags, then the
//! TOML file, then defaults), so the gateway address and the registries printed here are the ones
//! the node serves. From it come the registries to cover (the node's default namespace plus every
//! `--upstream` namespace, each with the registry that really serves it) and the mirror endpoint
//! (`http://GATEWAY`, with an unspecified listen address replaced by loopback). Each runtime then
//! gets its own file format. Docker's `daemon.json` is shared with other settings, so it is merged:
//! every other key stays. Without `--write` the files are printed; with it they are replaced
//! atomically.
//!
//! A machine that runs no node (a developer's laptop, a CI runner) points at a site node's
//! gateway: `--gateway HOST:PORT --gateway-ca FILE` says the gateway speaks TLS with a
//! certificate that CA signed. The mirror is then `https://HOST:PORT`, the CA is written where
//! each runtime looks for a registry's CA (containerd's `ca` in hosts.toml, Docker's and
//! podman's `certs.d/HOST:PORT/ca.crt`), and `--gateway-credentials FILE` (one `user:password`
//! line) gives containerd a Basic `Authorization` header in hosts.toml, written readable by its
//! owner only. Docker and podman keep credentials in their own stores (`docker login`,
//! `podman login`), so for them the guide says what to run.
//!
//! This is not a runtime manager: it restarts nothing and edits no runtime's main configuration
//! file. What the runtime still needs (containerd's `config_path`, a reload) is printed as notes.

use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::ser::SerializeMap;
use shoal_protocol::reference::DEFAULT_NAMESPACE;

use crate::config::{NodeArgs, NodeConfig, UpstreamSpec};

pub const CONTAINERD_HOSTS_DIR: &str = "/etc/containerd/certs.d";
pub const DOCKER_DAEMON_JSON: &str = "/etc/docker/daemon.json";
pub const PODMAN_DROP_IN: &str = "/etc/containers/registries.conf.d/shoal.conf";
pub const DOCKER_CERTS_DIR: &str = "/etc/docker/certs.d";
pub const PODMAN_CERTS_DIR: &str = "/etc/containers/certs.d";
/// The file name of the gateway's CA in each runtime's per-registry directory.
const CA_FILE: &str = "ca.crt";
/// Where Docker Hub (`docker.io`) really serves the registry API.
const DOCKER_HUB_REGISTRY: &str = "https://registry-1.docker.io";

/// The container runtime to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Runtime {
    /// One hosts.toml per registry (Kubernetes CRI, ctr, nerdctl)
    Containerd,
    /// `registry-mirrors` in daemon.json (Docker Hub images only)
    Docker,
    /// A registries.conf drop-in (podman, CRI-O, skopeo, buildah)
    Podman,
}

impl Runtime {
    fn default_path(self) -> &'static str {
        match self {
            Runtime::Containerd => CONTAINERD_HOSTS_DIR,
            Runtime::Docker => DOCKER_DAEMON_JSON,
            Runtime::Podman => PODMAN_DROP_IN,
        }
    }

    /// Where the runtime looks for `certs.d/HOST:PORT/ca.crt`; containerd's CA goes into its
    /// hosts directory instead.
    fn default_certs_dir(self) -> Option<&'static str> {
        match self {
            Runtime::Containerd => None,
            Runtime::Docker => Some(DOCKER_CERTS_DIR),
            Runtime::Podman => Some(PODMAN_CERTS_DIR),
        }
    }
}

/// `shoal configure` flags. The node options mean what they mean to `shoal node`, so give the
/// same `--config` (and flags) the node runs with.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigureArgs {
    #[arg(value_enum)]
    pub runtime: Runtime,
    /// Write the files (atomically, creating directories) instead of printing them.
    #[arg(long)]
    pub write: bool,
    /// The node's TOML config file, as given to `shoal node --config`.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The node's gateway address [default: from --config, else 127.0.0.1:5050]
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<SocketAddr>,
    /// The node's upstream registries, as NAMESPACE=URL (repeatable) [default: from --config]
    #[arg(long, value_name = "NS=URL")]
    pub upstream: Vec<UpstreamSpec>,
    /// The node's namespace for requests without `?ns=` [default: from --config, else docker.io]
    #[arg(long, value_name = "HOST")]
    pub default_namespace: Option<String>,
    /// containerd's hosts directory, Docker's daemon.json or podman's drop-in file
    /// [default: /etc/containerd/certs.d, /etc/docker/daemon.json,
    /// /etc/containers/registries.conf.d/shoal.conf]
    #[arg(long, value_name = "PATH")]
    pub path: Option<PathBuf>,
    /// The gateway speaks TLS with a certificate this CA (PEM) signed: the mirror is https and
    /// the CA is installed for the runtime. For machines that pull from another host's node.
    #[arg(long, value_name = "FILE")]
    pub gateway_ca: Option<PathBuf>,
    /// A file holding `user:password` for the gateway: containerd sends it as a Basic
    /// Authorization header (hosts.toml, written mode 0600). Needs --gateway-ca.
    #[arg(long, value_name = "FILE", requires = "gateway_ca")]
    pub gateway_credentials: Option<PathBuf>,
    /// Docker's or podman's certs.d directory, for the CA
    /// [default: /etc/docker/certs.d, /etc/containers/certs.d]
    #[arg(long, value_name = "DIR")]
    pub certs_dir: Option<PathBuf>,
}

/// One file of runtime configuration, ready to print or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    pub path: PathBuf,
    pub content: String,
    /// Holds a credential: written readable by its owner only, and never printed.
    pub secret: bool,
}

impl RenderedFile {
    fn new(path: PathBuf, content: String) -> RenderedFile {
        RenderedFile {
            path,
            content,
            secret: false,
        }
    }
}

/// How clients reach the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    pub address: SocketAddr,
    /// The CA (PEM) that signed the gateway's certificate, when the gateway speaks TLS.
    pub ca_pem: Option<String>,
    /// `user:password` for the gateway, for runtimes that keep it in their configuration.
    pub credentials: Option<String>,
    /// Docker's or podman's certs.d directory.
    pub certs_dir: Option<PathBuf>,
}

impl Mirror {
    fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://{}", self.address),
            None => format!("http://{}", self.address),
        }
    }

    /// `certs.d/HOST:PORT/ca.crt` with the CA, when the gateway speaks TLS.
    fn ca_file(&self) -> Option<RenderedFile> {
        let (ca, dir) = (self.ca_pem.as_ref()?, self.certs_dir.as_ref()?);
        Some(RenderedFile::new(
            dir.join(self.address.to_string()).join(CA_FILE),
            ca.clone(),
        ))
    }
}

/// Everything `shoal configure` produces for one runtime.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    /// What the runtime needs besides the files (printed as comments before them, or as notes
    /// when writing).
    pub guide: Vec<String>,
    /// Caveats of this runtime with this node's configuration, always on stderr.
    pub notes: Vec<String>,
}

/// A registry namespace the runtime should pull through the node, and the registry that really
/// serves it (used when the node cannot answer).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Registry {
    /// Normalised by `normalize_namespace`: `[a-z0-9.:\[\]-]` and never starting with `.`, so it is
    /// safe as one path component.
    namespace: String,
    /// `http://` or `https://`, no trailing slash.
    server: String,
}

/// Runs `shoal configure`: prints or writes the files, notes on stderr.
pub fn run(args: ConfigureArgs) -> anyhow::Result<()> {
    execute(args, &mut io::stdout().lock(), &mut io::stderr().lock())
}

fn execute(args: ConfigureArgs, out: &mut dyn Write, err: &mut dyn Write) -> anyhow::Result<()> {
    let config = NodeConfig::resolve(NodeArgs {
        config: args.config,
        gateway: args.gateway,
        upstream: args.upstream,
        default_namespace: args.default_namespace,
        ..NodeArgs::default()
    })?;
    let path = args
        .path
        .unwrap_or_else(|| PathBuf::from(args.runtime.default_path()));
    let read = |path: &PathBuf| {
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
    };
    let ca_pem = args.gateway_ca.as_ref().map(read).transpose()?;
    if let Some(ca) = &ca_pem {
        anyhow::ensure!(
            ca.contains("-----BEGIN CERTIFICATE-----"),
            "--gateway-ca {} holds no PEM certificate",
            args.gateway_ca
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string())
        );
    }
    let credentials = args
        .gateway_credentials
        .as_ref()
        .map(read)
        .transpose()?
        .map(|text| text.trim_end_matches(['\n', '\r']).to_owned());
    if let Some(credentials) = &credentials {
        anyhow::ensure!(
            credentials.contains(':') && !credentials.contains('\n'),
            "--gateway-credentials must hold one line, user:password"
        );
    }
    let mirror = Mirror {
        address: client_gateway(config.gateway)?,
        ca_pem,
        credentials,
        certs_dir: args
            .certs_dir
            .or_else(|| args.runtime.default_certs_dir().map(PathBuf::from)),
    };
    let rendered = render(args.runtime, &config, &mirror, &path)?;
    for note in &rendered.notes {
        writeln!(err, "note: {note}")?;
    }
    if args.write {
        for file in &rendered.files {
            write_atomically(&file.path, file.content.as_bytes(), file.secret)?;
            writeln!(out, "wrote {}", file.path.display())?;
        }
        if !rendered.guide.is_empty() {
            writeln!(err, "note: {}", rendered.guide.join("\n  "))?;
        }
    } else {
        for line in &rendered.guide {
            writeln!(out, "# {line}")?;
        }
        for (i, file) in rendered.files.iter().enumerate() {
            if i > 0 || !rendered.guide.is_empty() {
                writeln!(out)?;
            }
            writeln!(out, "# file: {}", file.path.display())?;
            if file.secret {
                writeln!(
                    out,
                    "# (holds the gateway credentials: not printed; run with --write)"
                )?;
            } else {
                out.write_all(file.content.as_bytes())?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// The configuration of `runtime` for a node configured as `config` and reached at `mirror`,
/// placed at `path`. Docker's is merged into the `daemon.json` already at `path`.
pub fn render(
    runtime: Runtime,
    config: &NodeConfig,
    mirror: &Mirror,
    path: &Path,
) -> anyhow::Result<Rendered> {
    let registries = registries(config);
    let mut rendered = match runtime {
        Runtime::Containerd => containerd(path, mirror, &registries),
        Runtime::Docker => docker(path, mirror, &registries, &config.default_namespace)?,
        Runtime::Podman => podman(path, mirror, &registries, &config.default_namespace),
    };
    rendered.files.extend(mirror.ca_file());
    Ok(rendered)
}

/// The address clients dial: a node listening on every interface is reached over loopback.
fn client_gateway(gateway: SocketAddr) -> anyhow::Result<SocketAddr> {
    anyhow::ensure!(
        gateway.port() != 0,
        "the gateway port is 0, which the node picks only when it starts: give it a fixed port"
    );
    let ip = match gateway.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    Ok(SocketAddr::new(ip, gateway.port()))
}

/// The default namespace first (the node serves it even without an upstream), then every
/// upstream's namespace in the order configured.
fn registries(config: &NodeConfig) -> Vec<Registry> {
    let namespaces = std::iter::once(&config.default_namespace)
        .chain(config.upstreams.iter().map(|upstream| &upstream.namespace));
    let mut registries: Vec<Registry> = Vec::new();
    for namespace in namespaces {
        if registries.iter().any(|r| &r.namespace == namespace) {
            continue;
        }
        let server = match config.upstreams.iter().find(|u| &u.namespace == namespace) {
            Some(upstream) => upstream.url.clone(),
            None if namespace == DEFAULT_NAMESPACE => DOCKER_HUB_REGISTRY.to_owned(),
            None => format!("https://{namespace}"),
        };
        registries.push(Registry {
            namespace: namespace.clone(),
            server,
        });
    }
    registries
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_owned()).to_string()
}

/// The namespaces of `registries` other than `namespace`, for notes about what a runtime's
/// mirror cannot carry.
fn namespaces_other_than<'a>(registries: &'a [Registry], namespace: &str) -> Vec<&'a str> {
    registries
        .iter()
        .map(|r| r.namespace.as_str())
        .filter(|ns| *ns != namespace)
        .collect()
}

fn containerd(dir: &Path, mirror: &Mirror, registries: &[Registry]) -> Rendered {
    let gateway = mirror.address;
    let url = mirror.url();
    let mut files = Vec::new();
    for registry in registries {
        let registry_dir = dir.join(&registry.namespace);
        let mut content = format!(
            "# Written by `shoal configure containerd`: pull {namespace} images through the \
                 Shoal node at\n\
                 # {gateway} (containerd adds ?ns={namespace} to mirror requests), and from the \
                 server below\n\
                 # when the node cannot answer. containerd's CRI plugin reads this file only when \
                 its\n\
                 # registry config_path names the directory that holds {namespace}/.\n\
                 server = {server_toml}\n\
                 \n\
                 [host.{mirror_toml}]\n  \
                 capabilities = [\"pull\", \"resolve\"]\n",
            namespace = registry.namespace,
            server_toml = toml_string(&registry.server),
            mirror_toml = toml_string(&url),
        );
        if let Some(ca) = &mirror.ca_pem {
            let ca_path = registry_dir.join(CA_FILE);
            content.push_str(&format!(
                "  ca = {}\n",
                toml_string(&ca_path.display().to_string())
            ));
            files.push(RenderedFile::new(ca_path, ca.clone()));
        }
        let mut hosts = RenderedFile::new(registry_dir.join("hosts.toml"), String::new());
        if let Some(credentials) = &mirror.credentials {
            use base64::Engine as _;
            let basic = base64::engine::general_purpose::STANDARD.encode(credentials);
            content.push_str(&format!(
                "\n[host.{}.header]\n  authorization = {}\n",
                toml_string(&url),
                toml_string(&format!("Basic {basic}"))
            ));
            hosts.secret = true;
        }
        hosts.content = content;
        files.push(hosts);
    }
    let dir_toml = toml_string(&dir.display().to_string());
    Rendered {
        files,
        guide: vec![
            "containerd's CRI plugin reads these files only when its registry config_path names"
                .to_owned(),
            format!(
                "{}. In /etc/containerd/config.toml, containerd 1.x:",
                dir.display()
            ),
            "  [plugins.\"io.containerd.grpc.v1.cri\".registry]".to_owned(),
            format!("    config_path = {dir_toml}"),
            "containerd 2.x:".to_owned(),
            "  [plugins.\"io.containerd.cri.v1.images\".registry]".to_owned(),
            format!("    config_path = {dir_toml}"),
            "Then restart containerd once; later changes to these files apply from the next pull."
                .to_owned(),
            "ctr takes the directory as --hosts-dir.".to_owned(),
        ],
        notes: Vec::new(),
    }
}

fn docker(
    path: &Path,
    mirror: &Mirror,
    registries: &[Registry],
    default_namespace: &str,
) -> anyhow::Result<Rendered> {
    let existing = match std::fs::read_to_string(path) {
        Ok(text) => Some(text),
        Err(error) if error.kind() == io::ErrorKind::NotFound => None,
        Err(error) => {
            return Err(error).with_context(|| format!("cannot read {}", path.display()));
        }
    };
    let content = merge_daemon_json(existing.as_deref(), &mirror.url()).with_context(|| {
        format!(
            "cannot add the mirror to {}, which is left untouched",
            path.display()
        )
    })?;
    let mut notes = Vec::new();
    let others = namespaces_other_than(registries, DEFAULT_NAMESPACE);
    if !others.is_empty() {
        notes.push(format!(
            "Docker sends only Docker Hub (docker.io) pulls to registry mirrors: pulls from {} \
             will not go through the node (use containerd or podman for those)",
            others.join(", ")
        ));
    }
    if default_namespace != DEFAULT_NAMESPACE {
        notes.push(format!(
            "Docker's mirror requests carry no namespace, so the node answers them from its \
             default namespace, {default_namespace}, not docker.io: run it with \
             --default-namespace docker.io to serve Docker Hub pulls"
        ));
    }
    let mut guide = vec![
        "dockerd applies registry-mirrors on a reload (systemctl reload docker) or restart."
            .to_owned(),
    ];
    if mirror.ca_pem.is_some() {
        guide.push(format!(
            "Docker sends no credentials to a mirror: when the gateway asks for them, run \
             `docker login {address}` and pull as {address}/REPOSITORY:TAG",
            address = mirror.address
        ));
    }
    Ok(Rendered {
        files: vec![RenderedFile::new(path.to_owned(), content)],
        guide,
        notes,
    })
}

/// `existing` (a daemon.json, or `None` when there is none) with `mirror` first in
/// `registry-mirrors`. Every other key, and every other mirror, is kept; top-level keys keep
/// their order.
fn merge_daemon_json(existing: Option<&str>, mirror: &str) -> anyhow::Result<String> {
    let text = existing.unwrap_or("").trim();
    let text = if text.is_empty() { "{}" } else { text };
    let value: serde_json::Value = serde_json::from_str(text).context("invalid JSON")?;
    let serde_json::Value::Object(mut object) = value else {
        anyhow::bail!("it is not a JSON object");
    };
    let KeyOrder(mut keys) = serde_json::from_str(text).context("invalid JSON")?;

    let same = |a: &str, b: &str| a.trim_end_matches('/') == b.trim_end_matches('/');
    let mut mirrors = vec![mirror.to_owned()];
    match object.get("registry-mirrors") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::Array(items)) => {
            for item in items {
                let serde_json::Value::String(url) = item else {
                    anyhow::bail!("\"registry-mirrors\" holds {item}, which is not a URL string");
                };
                if !mirrors.iter().any(|m| same(m, url)) {
                    mirrors.push(url.clone());
                }
            }
        }
        Some(other) => anyhow::bail!("\"registry-mirrors\" is {other}, not a list of URLs"),
    }
    if !keys.iter().any(|k| k == "registry-mirrors") {
        keys.push("registry-mirrors".to_owned());
    }
    object.insert("registry-mirrors".to_owned(), mirrors.into());
    let ordered = OrderedObject(
        keys.iter()
            .filter_map(|key| object.get(key).map(|value| (key.as_str(), value)))
            .collect(),
    );
    let mut json = serde_json::to_string_pretty(&ordered).context("cannot encode JSON")?;
    json.push('\n');
    Ok(json)
}

/// The top-level keys of a JSON object in file order. `serde_json::Map` sorts its keys; operators
/// diff daemon.json, so a merge should not reorder theirs.
struct KeyOrder(Vec<String>);

impl<'de> serde::Deserialize<'de> for KeyOrder {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<KeyOrder, D::Error> {
        struct Keys;
        impl<'de> serde::de::Visitor<'de> for Keys {
            type Value = KeyOrder;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<KeyOrder, A::Error> {
                let mut keys: Vec<String> = Vec::new();
                while let Some(key) = map.next_key::<String>()? {
                    map.next_value::<serde::de::IgnoredAny>()?;
                    if !keys.contains(&key) {
                        keys.push(key);
                    }
                }
                Ok(KeyOrder(keys))
            }
        }
        deserializer.deserialize_map(Keys)
    }
}

/// A JSON object written in the order of its entries.
struct OrderedObject<'a>(Vec<(&'a str, &'a serde_json::Value)>);

impl serde::Serialize for OrderedObject<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (key, value) in &self.0 {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

fn podman(
    path: &Path,
    mirror: &Mirror,
    registries: &[Registry],
    default_namespace: &str,
) -> Rendered {
    let gateway = mirror.address;
    // With TLS, containers/image verifies the gateway against certs.d/HOST:PORT/ca.crt.
    let mirror_insecure = if mirror.ca_pem.is_some() {
        ""
    } else {
        "insecure = true\n"
    };
    let mut content = format!(
        "# Written by `shoal configure podman`: podman, CRI-O, skopeo and buildah pull these \
         registries'\n\
         # images through the Shoal node at {gateway} first, then from the registry itself.\n\
         # Mirror requests carry no registry name, so the node answers all of them from its \
         default\n\
         # namespace, {default_namespace}.\n"
    );
    for registry in registries {
        let (scheme, location) = registry
            .server
            .split_once("://")
            .unwrap_or(("https", registry.server.as_str()));
        content.push('\n');
        if registry.namespace != default_namespace {
            content.push_str(&format!(
                "# The node answers this mirror from {default_namespace}; what it lacks comes \
                 from {location}.\n"
            ));
        }
        content.push_str(&format!(
            "[[registry]]\nprefix = {}\nlocation = {}\n",
            toml_string(&registry.namespace),
            toml_string(location)
        ));
        if scheme == "http" {
            content.push_str("insecure = true\n");
        }
        content.push_str(&format!(
            "\n[[registry.mirror]]\nlocation = {}\n{mirror_insecure}",
            toml_string(&gateway.to_string())
        ));
    }
    let mut notes = Vec::new();
    let others = namespaces_other_than(registries, default_namespace);
    if !others.is_empty() {
        notes.push(format!(
            "podman and CRI-O send no ?ns= to mirrors, so the node serves only its default \
             namespace ({default_namespace}) correctly through this mirror. Pulls from {} ask \
             the node for the same repository in {default_namespace}: a miss falls back to the \
             real registry, but a repository:tag that {default_namespace} also has on the node \
             would resolve to that image. Pull those by digest, or use containerd, which sends \
             the namespace",
            others.join(", ")
        ));
    }
    let mut guide = vec![
        "podman, skopeo and buildah read registries.conf.d on every command; CRI-O on a \
         reload (systemctl reload crio)."
            .to_owned(),
    ];
    if mirror.ca_pem.is_some() {
        guide.push(format!(
            "When the gateway asks for credentials, run `podman login {gateway}` once: podman, \
             skopeo and buildah then send them to the mirror."
        ));
    }
    Rendered {
        files: vec![RenderedFile::new(path.to_owned(), content)],
        guide,
        notes,
    }
}

/// Replaces `path` with `content` so that readers see the old file or the new one, never a part:
/// a temporary file in the same directory, fsynced, renamed over it, then the directory fsynced.
/// A symlink at `path` is followed, so the file it names is the one replaced; an existing file's
/// permissions are kept.
fn write_atomically(path: &Path, content: &[u8], secret: bool) -> anyhow::Result<()> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = match target.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = target
        .file_name()
        .with_context(|| format!("{} names no file", path.display()))?;
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let temp = dir.join(format!(
        ".{}.shoal-{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| -> io::Result<()> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let mode = if secret { 0o600 } else { 0o644 };
        // A temporary file left by a killed run of this process id is ours to replace.
        let _ = std::fs::remove_file(&temp);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temp)?;
        file.write_all(content)?;
        match std::fs::metadata(&target) {
            Ok(_) if secret => file.set_permissions(std::fs::Permissions::from_mode(mode))?,
            Ok(metadata) => file.set_permissions(metadata.permissions())?,
            Err(_) => {}
        }
        file.sync_all()?;
        drop(file);
        std::fs::rename(&temp, &target)?;
        std::fs::File::open(&dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(runtime: Runtime) -> ConfigureArgs {
        ConfigureArgs {
            runtime,
            write: false,
            config: None,
            gateway: None,
            upstream: Vec::new(),
            default_namespace: None,
            path: None,
            gateway_ca: None,
            gateway_credentials: None,
            certs_dir: None,
        }
    }

    fn upstream(spec: &str) -> UpstreamSpec {
        spec.parse().unwrap()
    }

    /// Runs `shoal configure` and returns its stdout and stderr.
    fn configure(args: ConfigureArgs) -> anyhow::Result<(String, String)> {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        execute(args, &mut out, &mut err)?;
        Ok((
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        ))
    }

    fn render_for(args: ConfigureArgs) -> Rendered {
        let runtime = args.runtime;
        let path = args
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from(runtime.default_path()));
        let config = NodeConfig::resolve(NodeArgs {
            config: args.config,
            gateway: args.gateway,
            upstream: args.upstream,
            default_namespace: args.default_namespace,
            ..NodeArgs::default()
        })
        .unwrap();
        let mirror = Mirror {
            address: client_gateway(config.gateway).unwrap(),
            ca_pem: None,
            credentials: None,
            certs_dir: None,
        };
        render(runtime, &config, &mirror, &path).unwrap()
    }

    #[test]
    fn containerd_gets_one_hosts_toml_per_namespace_with_the_real_registry_as_server() {
        let rendered = render_for(ConfigureArgs {
            upstream: vec![
                upstream("ghcr.io=https://ghcr.io"),
                upstream("localhost:5000=http://127.0.0.1:5000/"),
            ],
            ..args(Runtime::Containerd)
        });
        let paths: Vec<_> = rendered.files.iter().map(|f| f.path.clone()).collect();
        assert_eq!(
            paths,
            [
                "/etc/containerd/certs.d/docker.io/hosts.toml",
                "/etc/containerd/certs.d/ghcr.io/hosts.toml",
                "/etc/containerd/certs.d/localhost:5000/hosts.toml",
            ]
            .map(PathBuf::from)
        );
        let servers = [
            "https://registry-1.docker.io",
            "https://ghcr.io",
            "http://127.0.0.1:5000",
        ];
        for (file, server) in rendered.files.iter().zip(servers) {
            let table: toml::Table = toml::from_str(&file.content).unwrap();
            assert_eq!(table["server"].as_str(), Some(server), "{}", file.content);
            let host = &table["host"]["http://127.0.0.1:5050"];
            assert_eq!(
                host["capabilities"],
                toml::Value::Array(vec!["pull".into(), "resolve".into()])
            );
            assert_eq!(table.len(), 2, "{}", file.content);
        }
        assert!(rendered.guide.concat().contains("config_path"));
        assert!(rendered.notes.is_empty());

        let (out, err) = configure(args(Runtime::Containerd)).unwrap();
        assert!(out.starts_with("# containerd's CRI plugin"), "{out}");
        assert!(
            out.contains("config_path = \"/etc/containerd/certs.d\""),
            "{out}"
        );
        assert!(
            out.contains("# file: /etc/containerd/certs.d/docker.io/hosts.toml\n"),
            "{out}"
        );
        assert!(err.is_empty(), "{err}");
    }

    #[test]
    fn a_default_namespace_without_upstream_is_served_by_its_own_host() {
        let rendered = render_for(ConfigureArgs {
            default_namespace: Some("Registry.Example:5000".to_owned()),
            ..args(Runtime::Containerd)
        });
        assert_eq!(rendered.files.len(), 1);
        assert_eq!(
            rendered.files[0].path,
            PathBuf::from("/etc/containerd/certs.d/registry.example:5000/hosts.toml")
        );
        assert!(
            rendered.files[0]
                .content
                .contains("server = \"https://registry.example:5000\"\n")
        );
    }

    #[test]
    fn an_unspecified_gateway_address_is_reached_over_loopback() {
        for (gateway, mirror) in [
            ("0.0.0.0:6000", "http://127.0.0.1:6000"),
            ("[::]:6000", "http://[::1]:6000"),
            ("10.1.2.3:5050", "http://10.1.2.3:5050"),
        ] {
            let rendered = render_for(ConfigureArgs {
                gateway: Some(gateway.parse().unwrap()),
                ..args(Runtime::Containerd)
            });
            let wanted = format!("[host.\"{mirror}\"]");
            assert!(rendered.files[0].content.contains(&wanted), "{gateway}");
        }
        let error = configure(ConfigureArgs {
            gateway: Some("127.0.0.1:0".parse().unwrap()),
            ..args(Runtime::Docker)
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("port is 0"), "{error:#}");
    }

    #[test]
    fn docker_gets_the_mirror_in_a_new_daemon_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        let (out, err) = configure(ConfigureArgs {
            path: Some(path.clone()),
            ..args(Runtime::Docker)
        })
        .unwrap();
        let wanted = format!(
            "# file: {}\n{{\n  \"registry-mirrors\": [\n    \"http://127.0.0.1:5050\"\n  ]\n}}\n",
            path.display()
        );
        assert!(out.ends_with(&wanted), "{out}");
        assert!(err.is_empty(), "{err}");
        assert!(!path.exists(), "printing must not write");

        let (_, err) = configure(ConfigureArgs {
            path: Some(path),
            upstream: vec![upstream("ghcr.io=https://ghcr.io")],
            ..args(Runtime::Docker)
        })
        .unwrap();
        assert!(
            err.contains("note: Docker sends only Docker Hub") && err.contains("ghcr.io"),
            "{err}"
        );
    }

    #[test]
    fn docker_merge_keeps_other_keys_and_mirrors_in_order_without_duplicates() {
        let existing = r#"{
            "log-driver": "journald",
            "registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:5050/", "https://mirror.gcr.io"],
            "debug": true,
            "log-opts": {"max-size": "10m", "labels": "a"},
            "default-ulimits": {"nofile": {"Name": "nofile", "Hard": 65536, "Soft": 1024}}
        }"#;
        let merged = merge_daemon_json(Some(existing), "http://127.0.0.1:5050").unwrap();
        let value: serde_json::Value = serde_json::from_str(&merged).unwrap();
        assert_eq!(
            value["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:5050", "https://mirror.gcr.io"])
        );
        assert_eq!(value["log-driver"], "journald");
        assert_eq!(value["debug"], true);
        assert_eq!(value["log-opts"]["max-size"], "10m");
        assert_eq!(value["default-ulimits"]["nofile"]["Hard"], 65536);
        assert_eq!(value.as_object().unwrap().len(), 5);
        let order: Vec<usize> = [
            "log-driver",
            "registry-mirrors",
            "debug",
            "log-opts",
            "default-ulimits",
        ]
        .iter()
        .map(|key| merged.find(&format!("\"{key}\"")).unwrap())
        .collect();
        assert!(order.is_sorted(), "{merged}");

        // Merging again changes nothing.
        assert_eq!(
            merge_daemon_json(Some(&merged), "http://127.0.0.1:5050").unwrap(),
            merged
        );
        // Keys come after the existing ones when there were no mirrors; an empty file is `{}`.
        let merged = merge_daemon_json(Some("{\"b\": 1, \"a\": 2}"), "http://x:1").unwrap();
        assert!(
            merged.find("\"b\"") < merged.find("\"a\"")
                && merged.find("\"a\"") < merged.find("\"registry-mirrors\""),
            "{merged}"
        );
        assert_eq!(
            merge_daemon_json(Some(" \n"), "http://x:1").unwrap(),
            merge_daemon_json(None, "http://x:1").unwrap()
        );
    }

    #[test]
    fn an_invalid_daemon_json_is_refused_and_left_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("daemon.json");
        for (text, why) in [
            ("[\"registry-mirrors\"]", "not a JSON object"),
            ("{\"debug\": true,", "invalid JSON"),
            ("{\"registry-mirrors\": \"http://x\"}", "not a list of URLs"),
            ("{\"registry-mirrors\": [1]}", "not a URL string"),
        ] {
            std::fs::write(&path, text).unwrap();
            let error = configure(ConfigureArgs {
                path: Some(path.clone()),
                write: true,
                ..args(Runtime::Docker)
            })
            .unwrap_err();
            let message = format!("{error:#}");
            assert!(
                message.contains(why) && message.contains("left untouched"),
                "{text}: {message}"
            );
            assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
        }
        let entries = std::fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(entries, 1, "no temporary file is left behind");
    }

    #[test]
    fn podman_gets_a_registry_and_mirror_per_namespace() {
        let rendered = render_for(ConfigureArgs {
            upstream: vec![
                upstream("docker.io=https://registry-1.docker.io"),
                upstream("ghcr.io=https://ghcr.io/"),
                upstream("localhost:5000=http://127.0.0.1:5000"),
            ],
            ..args(Runtime::Podman)
        });
        assert_eq!(rendered.files.len(), 1);
        assert_eq!(rendered.files[0].path, PathBuf::from(PODMAN_DROP_IN));
        let table: toml::Table = toml::from_str(&rendered.files[0].content).unwrap();
        let registries = table["registry"].as_array().unwrap();
        let found: Vec<(&str, &str, bool)> = registries
            .iter()
            .map(|r| {
                (
                    r["prefix"].as_str().unwrap(),
                    r["location"].as_str().unwrap(),
                    r.get("insecure").and_then(|v| v.as_bool()).unwrap_or(false),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                ("docker.io", "registry-1.docker.io", false),
                ("ghcr.io", "ghcr.io", false),
                ("localhost:5000", "127.0.0.1:5000", true),
            ]
        );
        for registry in registries {
            let mirror = &registry["mirror"].as_array().unwrap()[0];
            assert_eq!(mirror["location"].as_str(), Some("127.0.0.1:5050"));
            assert_eq!(mirror["insecure"].as_bool(), Some(true));
        }
        assert_eq!(rendered.notes.len(), 1);
        assert!(
            rendered.notes[0].contains("no ?ns=")
                && rendered.notes[0].contains("ghcr.io, localhost:5000"),
            "{}",
            rendered.notes[0]
        );

        // Only the default namespace: nothing to warn about.
        let rendered = render_for(args(Runtime::Podman));
        assert!(rendered.notes.is_empty());
        assert!(
            rendered.files[0]
                .content
                .contains("prefix = \"docker.io\"\nlocation = \"registry-1.docker.io\"\n")
        );
    }

    #[test]
    fn write_creates_directories_and_replaces_files_atomically() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("shoal.toml");
        std::fs::write(
            &config,
            "gateway = \"0.0.0.0:5055\"\nupstream = [\"quay.io=https://quay.io\"]\n",
        )
        .unwrap();
        let certs = dir.path().join("etc/containerd/certs.d");
        let (out, err) = configure(ConfigureArgs {
            write: true,
            config: Some(config.clone()),
            path: Some(certs.clone()),
            ..args(Runtime::Containerd)
        })
        .unwrap();
        let hub = certs.join("docker.io/hosts.toml");
        let quay = certs.join("quay.io/hosts.toml");
        assert_eq!(
            out,
            format!("wrote {}\nwrote {}\n", hub.display(), quay.display())
        );
        assert!(err.starts_with("note: containerd's CRI plugin"), "{err}");
        let written = std::fs::read_to_string(&quay).unwrap();
        assert!(
            written.contains("server = \"https://quay.io\"\n"),
            "{written}"
        );
        assert!(
            written.contains("[host.\"http://127.0.0.1:5055\"]\n"),
            "{written}"
        );

        let podman = dir.path().join("containers/registries.conf.d/shoal.conf");
        configure(ConfigureArgs {
            write: true,
            config: Some(config.clone()),
            path: Some(podman.clone()),
            ..args(Runtime::Podman)
        })
        .unwrap();
        assert!(
            std::fs::read_to_string(&podman)
                .unwrap()
                .contains("location = \"127.0.0.1:5055\"\n")
        );

        let daemon_json = dir.path().join("docker/daemon.json");
        std::fs::create_dir_all(daemon_json.parent().unwrap()).unwrap();
        std::fs::write(&daemon_json, "{\"debug\": true}").unwrap();
        let link = dir.path().join("daemon-link.json");
        std::os::unix::fs::symlink(&daemon_json, &link).unwrap();
        let (out, _) = configure(ConfigureArgs {
            write: true,
            config: Some(config),
            path: Some(link.clone()),
            ..args(Runtime::Docker)
        })
        .unwrap();
        assert_eq!(out, format!("wrote {}\n", link.display()));
        assert!(link.is_symlink(), "the symlink is followed, not replaced");
        assert_eq!(
            std::fs::read_to_string(&daemon_json).unwrap(),
            "{\n  \"debug\": true,\n  \"registry-mirrors\": [\n    \"http://127.0.0.1:5055\"\n  ]\n}\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(daemon_json.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .filter(|name| name.to_string_lossy().ends_with(".tmp"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    const TEST_CA: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";

    /// `shoal configure RUNTIME --write` for a gateway at 10.80.0.1:5443 speaking TLS, with the
    /// CA (and credentials) in files under `dir`.
    fn configure_tls(runtime: Runtime, dir: &Path, credentials: bool) -> (String, String) {
        std::fs::write(dir.join("ca.pem"), TEST_CA).unwrap();
        std::fs::write(dir.join("credentials"), "dev:s3cret\n").unwrap();
        configure(ConfigureArgs {
            write: true,
            gateway: Some("10.80.0.1:5443".parse().unwrap()),
            path: Some(dir.join("out")),
            gateway_ca: Some(dir.join("ca.pem")),
            gateway_credentials: credentials.then(|| dir.join("credentials")),
            certs_dir: Some(dir.join("certs.d")),
            ..args(runtime)
        })
        .unwrap()
    }

    #[test]
    fn containerd_with_tls_gets_the_ca_and_a_basic_header_readable_only_by_its_owner() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        configure_tls(Runtime::Containerd, dir.path(), true);
        let hosts = dir.path().join("out/docker.io/hosts.toml");
        let table: toml::Table = toml::from_str(&std::fs::read_to_string(&hosts).unwrap()).unwrap();
        let host = &table["host"]["https://10.80.0.1:5443"];
        let ca = dir.path().join("out/docker.io/ca.crt");
        assert_eq!(host["ca"].as_str(), Some(ca.to_str().unwrap()));
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), TEST_CA);
        // base64("dev:s3cret")
        assert_eq!(
            host["header"]["authorization"].as_str(),
            Some("Basic ZGV2OnMzY3JldA==")
        );
        let mode = std::fs::metadata(&hosts).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        // Printed, the credentials stay hidden.
        let (out, _) = configure(ConfigureArgs {
            gateway: Some("10.80.0.1:5443".parse().unwrap()),
            gateway_ca: Some(dir.path().join("ca.pem")),
            gateway_credentials: Some(dir.path().join("credentials")),
            ..args(Runtime::Containerd)
        })
        .unwrap();
        assert!(!out.contains("ZGV2OnMzY3JldA"), "{out}");
        assert!(out.contains("not printed"), "{out}");
    }

    #[test]
    fn docker_and_podman_with_tls_get_an_https_mirror_and_the_ca_in_certs_d() {
        let dir = tempfile::tempdir().unwrap();
        let (_, err) = configure_tls(Runtime::Docker, dir.path(), false);
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("out")).unwrap())
                .unwrap();
        assert_eq!(json["registry-mirrors"][0], "https://10.80.0.1:5443");
        let ca = dir.path().join("certs.d/10.80.0.1:5443/ca.crt");
        assert_eq!(std::fs::read_to_string(&ca).unwrap(), TEST_CA);
        assert!(err.contains("docker login 10.80.0.1:5443"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let (_, err) = configure_tls(Runtime::Podman, dir.path(), false);
        let conf = std::fs::read_to_string(dir.path().join("out")).unwrap();
        assert!(
            conf.contains("[[registry.mirror]]\nlocation = \"10.80.0.1:5443\"\n"),
            "{conf}"
        );
        assert!(!conf.contains("insecure"), "{conf}");
        assert!(dir.path().join("certs.d/10.80.0.1:5443/ca.crt").exists());
        assert!(err.contains("podman login 10.80.0.1:5443"), "{err}");
    }

    #[test]
    fn a_gateway_ca_that_is_not_a_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "not a certificate").unwrap();
        let error = configure(ConfigureArgs {
            gateway_ca: Some(dir.path().join("ca.pem")),
            ..args(Runtime::Podman)
        })
        .unwrap_err();
        assert!(
            error.to_string().contains("holds no PEM certificate"),
            "{error}"
        );
    }
}
