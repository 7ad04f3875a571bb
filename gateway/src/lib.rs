//! Shoal's gateway: the read-only OCI distribution-spec v1.1 pull API (`/v2/`).
//!
//! Docker, containerd, Podman and skopeo talk to it exactly as to a registry. It knows nothing
//! of where content comes from: the node hands it a [`ContentSource`], and the gateway turns
//! HTTP requests into calls on it and the answers back into registry responses, streaming blob
//! bytes without holding them in memory. Every write method is refused.
//!
//! Request flow: [`router`] sends every request to one handler, [`path::Route::parse`] decodes
//! the `/v2/<name>/...` path (names contain slashes, so the router's own patterns cannot), the
//! handler asks the source, and [`error::GatewayError`] renders every failure as OCI error JSON.
//! [`serve()`] runs the router on a listener within [`ServeLimits`], so no client can hold a
//! connection or a task for ever, over plain HTTP/1.1 or, with a [`GatewayTls`] certificate
//! ([`tls`]), over TLS with HTTP/2 or HTTP/1.1.
//!
//! With an [`Auth`] ([`router_with_auth`]), requests from other hosts need credentials (HTTP
//! Basic or the registry token flow) and see only the repositories the access rules grant them
//! ([`auth`]); without one, everyone may pull everything.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod accept;
pub mod auth;
pub mod error;
mod events;
mod handlers;
pub mod path;
pub mod range;
pub mod serve;
mod source;
pub mod tls;
pub mod zone;

pub use auth::{Auth, AuthConfig};
pub use error::GatewayError;
pub use events::{AuthFailure, PullKind};
pub use handlers::{router, router_with_auth};
pub use serve::{ClientInfo, ServeLimits, serve};
pub use source::{BlobStream, ContentSource, Manifest, OpenBlob, SourceError};
pub use tls::{GatewayTls, TlsError, TlsFiles};
pub use zone::Zone;
