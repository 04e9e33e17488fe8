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
    /// The key's shard is not where the request went
    /// (`ErrorCode::WrongShard`): nothing was applied; `owner` says where
    /// it is now. A node routes every key itself today, so a client sees
    /// this only from a routing bug; once ranges move it is a stale route,
    /// to retry at the owner.
    #[error("wrong shard: {message}")]
    WrongShard {
        /// The node's explanation.
        message: String,
        /// Where the shard is now.
        owner: ShardOwner,
    },
    /// The route the request carried is stale (`ErrorCode::StaleRoute`):
    /// a key is in another range, or the range's epoch changed. Nothing
    /// was applied; `owner` gives the key's range and its epoch now.
    #[error("stale route: {message}")]
    StaleRoute {
        /// The node's explanation.
        message: String,
        /// The current route of the first key off the sent one.
        owner: ShardOwner,
    },
}

/// Where a client believes a request's keys are: the range owning their
/// slots, at the range's epoch (the flatbuffers `Route`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The range.
    pub range: u32,
    /// Its epoch, as the client last learned it.
    pub epoch: u64,
}

/// Where a key's shard lives now (the flatbuffers `ShardOwner`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOwner {
    /// The key's hash slot.
    pub slot: u16,
    /// The core that owns the slot on `node`.
    pub core: u32,
    /// The owning node's id in a cluster; 0 for the node that answered.
    pub node: u64,
    /// The owning node's client address; empty for the node that answered.
    pub address: String,
    /// The range that owns the slot.
    pub range: u32,
    /// That range's epoch on the node that answered.
    pub epoch: u64,
}

impl ShardOwner {
    /// The route to send the key's requests with.
    pub fn route(&self) -> Route {
        Route {
            range: self.range,
            epoch: self.epoch,
        }
    }
}

impl ClientError {
    /// The server's error code, if the node answered with an error.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server { code, .. } => Some(*code),
            ClientError::WrongShard { .. } => Some(ErrorCode::WrongShard),
            ClientError::StaleRoute { .. } => Some(ErrorCode::StaleRoute),
            _ => None,
        }
    }

    /// The error a node's answer `Error { code, message, owner }` stands for.
    pub fn from_server(code: ErrorCode, message: String, owner: Option<ShardOwner>) -> ClientError {
        match owner {
            Some(owner) if code == ErrorCode::WrongShard => {
                ClientError::WrongShard { message, owner }
            }
            Some(owner) if code == ErrorCode::StaleRoute => {
                ClientError::StaleRoute { message, owner }
            }
            _ => ClientError::Server { code, message },
        }
    }
}
