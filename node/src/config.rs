//! The node's configuration: embedded defaults, overridden by a TOML file, overridden by flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context;

pub const DEFAULT_DATA_DIR: &str = "./shoal-data";
pub const DEFAULT_GATEWAY: &str = "127.0.0.1:5050";
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// `shoal node` flags. Each is optional so that an absent flag falls back to the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct NodeArgs {
    /// TOML file with any of the options below (flags win over the file).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the node keeps its blobs, metadata, identity and admin socket [default: ./shoal-data]
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Address of the read-only /v2/ registry API; port 0 picks a free port [default: 127.0.0.1:5050]
    #[arg(long, value_name = "HOST:PORT")]
    pub gateway: Option<SocketAddr>,
    /// Registry namespace of requests without `?ns=` [default: docker.io]
    #[arg(long, value_name = "HOST")]
    pub default_namespace: Option<String>,
    /// Log filter when RUST_LOG is unset, such as `debug` or `shoal_node=debug` [default: info]
    #[arg(long, value_name = "FILTER")]
    pub log_level: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    data: Option<PathBuf>,
    gateway: Option<SocketAddr>,
    default_namespace: Option<String>,
    log_level: Option<String>,
}

/// The resolved configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data: PathBuf,
    pub gateway: SocketAddr,
    pub default_namespace: String,
    pub log_level: String,
}

impl NodeConfig {
    pub fn resolve(args: NodeArgs) -> anyhow::Result<NodeConfig> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let default_gateway: SocketAddr =
            DEFAULT_GATEWAY.parse().context("default gateway address")?;
        let default_namespace = args
            .default_namespace
            .or(file.default_namespace)
            .unwrap_or_else(|| shoal_protocol::reference::DEFAULT_NAMESPACE.to_owned());
        Ok(NodeConfig {
            data: args
                .data
                .or(file.data)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            gateway: args.gateway.or(file.gateway).unwrap_or(default_gateway),
            default_namespace: shoal_protocol::reference::normalize_namespace(&default_namespace)?,
            log_level: args
                .log_level
                .or(file.log_level)
                .unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_owned()),
        })
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(
            &file,
            "data = \"/from/file\"\ngateway = \"127.0.0.1:6000\"\nlog-level = \"debug\"\n",
        )
        .unwrap();
        let config = NodeConfig::resolve(NodeArgs {
            config: Some(file.clone()),
            gateway: Some("127.0.0.1:7000".parse().unwrap()),
            ..NodeArgs::default()
        })
        .unwrap();
        assert_eq!(config.data, PathBuf::from("/from/file"));
        assert_eq!(config.gateway.port(), 7000);
        assert_eq!(config.log_level, "debug");
        assert_eq!(config.default_namespace, "docker.io");

        let defaults = NodeConfig::resolve(NodeArgs::default()).unwrap();
        assert_eq!(defaults.data, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(defaults.gateway.to_string(), DEFAULT_GATEWAY);
    }

    #[test]
    fn unknown_keys_in_the_file_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("shoal.toml");
        std::fs::write(&file, "gatewy = \"127.0.0.1:1\"\n").unwrap();
        let error = NodeConfig::resolve(NodeArgs {
            config: Some(file),
            ..NodeArgs::default()
        })
        .unwrap_err();
        assert!(format!("{error:#}").contains("gatewy"), "{error:#}");
    }
}
