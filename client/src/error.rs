//! The client's error type.

use std::time::Duration;

use tinkerdb_schemas::wire::ErrorCode;

/// Why a request did not get a successful answer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The node answered with an error.
    #[error("server error {code:?}: {message}")]
    Server {
        /// Stable code (see docs/protocol.md).
        code: ErrorCode,
        /// The node's explanation.
        message: String,
    },
    /// No answer within the configured request timeout. The request may or
    /// may not have been executed.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting failed or the connection broke. Requests in flight on it
    /// may or may not have been executed.
    #[error("connection to {addr} failed: {message}")]
    Connection {
        /// The node's address.
        addr: String,
        /// What happened.
        message: String,
    },
    /// The node sent something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The request was refused before sending (e.g. over the node's limits).
    #[error("invalid request: {0}")]
    InvalidRequest(String),
}

impl ClientError {
    /// The server's error code, if the node answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            _ => None,
        }
    }
}
