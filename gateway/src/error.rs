//! Every gateway failure, rendered once as OCI error JSON with the right status.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};

use crate::source::SourceError;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid repository name: {0}")]
    NameInvalid(String),
    #[error("repository name not known to registry")]
    NameUnknown,
    #[error("manifest unknown")]
    ManifestUnknown,
    #[error("manifest unknown: {0}")]
    ManifestNotAcceptable(String),
    #[error("blob unknown to registry")]
    BlobUnknown,
    #[error("invalid digest: {0}")]
    DigestInvalid(String),
    #[error("requested range not satisfiable")]
    RangeInvalid { size: u64 },
    #[error("invalid number of results requested")]
    PaginationNumberInvalid,
    #[error("this registry is read-only")]
    Unsupported,
    #[error("not found")]
    NotFound,
    /// No valid credentials; `challenge` is the `WWW-Authenticate` value.
    #[error("{message}")]
    Unauthorized { message: String, challenge: String },
    /// Authenticated, but not allowed this repository.
    #[error("requested access to the resource is denied")]
    Denied,
    #[error("too many failed logins from this address; try again later")]
    TooManyRequests,
    #[error(transparent)]
    Source(#[from] SourceError),
}

impl GatewayError {
    fn code(&self) -> &'static str {
        match self {
            GatewayError::NameInvalid(_) => "NAME_INVALID",
            GatewayError::NameUnknown => "NAME_UNKNOWN",
            GatewayError::ManifestUnknown | GatewayError::ManifestNotAcceptable(_) => {
                "MANIFEST_UNKNOWN"
            }
            GatewayError::BlobUnknown => "BLOB_UNKNOWN",
            GatewayError::DigestInvalid(_) => "DIGEST_INVALID",
            GatewayError::RangeInvalid { .. } => "RANGE_INVALID",
            GatewayError::PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            GatewayError::Unsupported => "UNSUPPORTED",
            GatewayError::NotFound => "NOT_FOUND",
            GatewayError::Unauthorized { .. } => "UNAUTHORIZED",
            GatewayError::Denied => "DENIED",
            GatewayError::TooManyRequests => "TOOMANYREQUESTS",
            GatewayError::Source(SourceError::Unavailable(_)) => "UNAVAILABLE",
            GatewayError::Source(SourceError::Internal(_)) => "UNKNOWN",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            GatewayError::NameInvalid(_)
            | GatewayError::DigestInvalid(_)
            | GatewayError::PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            GatewayError::NameUnknown
            | GatewayError::ManifestUnknown
            | GatewayError::ManifestNotAcceptable(_)
            | GatewayError::BlobUnknown
            | GatewayError::NotFound => StatusCode::NOT_FOUND,
            GatewayError::RangeInvalid { .. } => StatusCode::RANGE_NOT_SATISFIABLE,
            GatewayError::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::Unauthorized { .. } => StatusCode::UNAUTHORIZED,
            GatewayError::Denied => StatusCode::FORBIDDEN,
            GatewayError::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Source(SourceError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::Source(SourceError::Internal(_)) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message the client sees: internal failures are summarised, never detailed; an
    /// unavailable source says why (an unreachable upstream, say), which the client can act on.
    fn public_message(&self) -> String {
        match self {
            GatewayError::Source(SourceError::Internal(_)) => "internal error".to_owned(),
            GatewayError::Source(SourceError::Unavailable(reason)) => {
                format!("content is temporarily unavailable: {reason}")
            }
            other => other.to_string(),
        }
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, source = ?std::error::Error::source(&self), "request failed");
        }
        let body = serde_json::json!({
            "errors": [{ "code": self.code(), "message": self.public_message() }]
        });
        let mut response = (status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        if let GatewayError::RangeInvalid { size } = self
            && let Ok(value) = HeaderValue::from_str(&format!("bytes */{size}"))
        {
            headers.insert(header::CONTENT_RANGE, value);
        }
        if let GatewayError::Unauthorized { challenge, .. } = &self
            && let Ok(value) = HeaderValue::from_str(challenge)
        {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        if status == StatusCode::METHOD_NOT_ALLOWED {
            headers.insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}
