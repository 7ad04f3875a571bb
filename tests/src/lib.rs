//! Shoal's end-to-end test kit: image generators, real registries and clients, and node
//! processes, shared by the integration tests under `tests/tests/` and the benchmark programs.
//!
//! Everything here talks only to 127.0.0.1 or to network namespaces it creates, cleans up what
//! it started (by PID, on drop) and fails loudly under `CI=true` when a real tool is missing.

pub mod bench;
pub mod browser;
pub mod clients;
pub mod http;
pub mod image;
pub mod lan;
pub mod node;
pub mod registry;
pub mod run_check;
pub mod sendfile_server;
pub mod sites;
pub mod tls;
pub mod token_auth;
