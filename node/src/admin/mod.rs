//! The admin socket: how `shoal import`, `pull`, `status`, `pin`, `gc` and `verify` talk to the
//! running node. A Unix socket inside the data directory, so only users who can reach the data
//! directory can use it.
//!
//! - `protocol`: the messages and their JSON-lines framing, shared by both sides;
//! - `client`: what the CLI (`cli/commands.rs`) calls;
//! - `server`: the node's accept loop and dispatch, which maps the services' results to
//!   events; `jobs` runs the long requests (import, pull) with progress; `status` gathers the
//!   status report; `context` is the set of services they all use.
//!
//! The admin layer sits above the services: it imports them, they never import it.

mod client;
mod context;
mod jobs;
mod protocol;
mod server;
mod status;

pub use client::call;
pub use context::{AdminContext, StatusBase};
pub use protocol::{AdminEvent, AdminRequest, StatusReport};
pub use server::{bind, serve};
pub use status::status_report;
