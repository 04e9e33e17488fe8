//! Errors of the HTTP API: a stable machine-readable code, a message for
//! people, and the HTTP status that goes with the code.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// Stable error codes (the JSON `error.code`). Never renamed: clients match
/// on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The tenant is not defined on this node.
    UnknownTenant,
    /// The tenant already exists.
    TenantExists,
    /// The key does not exist (or has expired).
    KeyNotFound,
    /// A parameter or body is not acceptable.
    InvalidArgument,
    /// The key is longer than `max_key_bytes`.
    KeyTooLarge,
    /// The value is longer than `max_value_bytes`.
    ValueTooLarge,
    /// The tenant's quota refuses the write.
    QuotaExceeded,
    /// A queue is full; retry later.
    Busy,
    /// The node's storage failed; writes are refused.
    StorageFailed,
    /// A core did not answer or has stopped.
    Unavailable,
    /// The node's configuration does not allow this (a snapshot with
    /// durability `none`).
    Unsupported,
    /// No such route.
    NotFound,
    /// A bug or an unexpected state.
    Internal,
    /// Authentication is on and the request carries no valid credentials
    /// (HTTP basic auth of an enabled user); every kind of failure gets
    /// this same answer.
    Unauthenticated,
    /// The user may not do this (the admin API needs a `cluster_admin`).
    PermissionDenied,
    /// The user does not exist.
    UnknownUser,
    /// The user already exists.
    UserExists,
    /// The tenant holds keys (deleting it needs `force`).
    TenantNotEmpty,
    /// The tenant is what users act for (change or delete them first).
    TenantInUse,
}

impl ErrorCode {
    /// The HTTP status of an error with this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::UnknownTenant
            | ErrorCode::KeyNotFound
            | ErrorCode::NotFound
            | ErrorCode::UnknownUser => StatusCode::NOT_FOUND,
            ErrorCode::TenantExists
            | ErrorCode::Unsupported
            | ErrorCode::UserExists
            | ErrorCode::TenantNotEmpty
            | ErrorCode::TenantInUse => StatusCode::CONFLICT,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
            ErrorCode::InvalidArgument => StatusCode::BAD_REQUEST,
            ErrorCode::KeyTooLarge | ErrorCode::ValueTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            // As gRPC's RESOURCE_EXHAUSTED maps to HTTP (the client's own
            // limit, not a server fault); `busy` is the server's.
            ErrorCode::QuotaExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::Busy | ErrorCode::StorageFailed | ErrorCode::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

/// An error answered to an HTTP client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ApiError {
    /// Stable code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}: {}", self.code, self.message)
    }
}

/// The JSON body of every error: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ApiError,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.code.status(), axum::Json(ErrorBody { error: self })).into_response()
    }
}
