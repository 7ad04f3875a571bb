//! What the gateway tells the node about requests, through [`crate::ContentSource`]'s
//! `pulled` and `auth_failed`, for its metrics. Plain values; the gateway keeps no counts.

/// What was pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PullKind {
    Manifest,
    Blob,
}

impl PullKind {
    pub const ALL: [PullKind; 2] = [PullKind::Manifest, PullKind::Blob];

    pub fn as_str(self) -> &'static str {
        match self {
            PullKind::Manifest => "manifest",
            PullKind::Blob => "blob",
        }
    }
}

/// Why a login or request was refused, for the node's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// Wrong password or unknown user.
    Credentials,
    /// An expired, altered or foreign token.
    Token,
    /// An Authorization header that could not be read.
    Malformed,
    /// Refused without checking: too many failures from the address.
    RateLimited,
    /// Authenticated, but the rules do not grant the repository.
    Denied,
}

impl AuthFailure {
    pub const ALL: [AuthFailure; 5] = [
        AuthFailure::Credentials,
        AuthFailure::Token,
        AuthFailure::Malformed,
        AuthFailure::RateLimited,
        AuthFailure::Denied,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuthFailure::Credentials => "credentials",
            AuthFailure::Token => "token",
            AuthFailure::Malformed => "malformed",
            AuthFailure::RateLimited => "rate_limited",
            AuthFailure::Denied => "denied",
        }
    }
}
