//! The error every front end turns into its own wire form: a stable code
//! (`tinkerdb_schemas::wire::ErrorCode`, the flatbuffers protocol's
//! numbers) and a message. It lives below every module of the data path
//! (shards answer with it, front ends encode it), so none of them imports
//! another for it.

use tinkerdb_schemas::wire::ErrorCode;

use crate::slots::CoreId;

/// A request that cannot be executed, with the code the client sees.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Stable error code.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// With `WrongShard` and `StaleRoute`: where the key's shard is now.
    pub owner: Option<ShardOwner>,
}

/// Where a key's shard lives (sent with `ErrorCode::WrongShard`, encoded
/// in the flatbuffers `Error.owner` and RESP's `MOVED`-like text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardOwner {
    /// The key's hash slot.
    pub slot: u16,
    /// The core that owns the slot on `node`.
    pub core: CoreId,
    /// The owning node's id in a cluster; 0 for the node that answered.
    pub node: u64,
    /// The owning node's client address; empty for the node that answered.
    pub address: String,
    /// The range that owns the slot.
    pub range: usize,
    /// That range's epoch on this node.
    pub epoch: u64,
}

impl ShardOwner {
    /// Slot `slot` in range `range` (at `epoch`), on `core` of the node
    /// that answers.
    fn here(slot: u16, range: usize, core: CoreId, epoch: u64) -> ShardOwner {
        ShardOwner {
            slot,
            core,
            node: 0,
            address: String::new(),
            range,
            epoch,
        }
    }
}

impl ProtocolError {
    /// An error with `code` and `message`.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
            owner: None,
        }
    }

    /// `WrongShard`: slot `slot` reached a range that does not own it;
    /// range `range`, hosted by `core` of this node, does. Nothing was
    /// applied.
    pub fn wrong_shard(slot: u16, range: usize, core: CoreId, epoch: u64) -> ProtocolError {
        ProtocolError {
            code: ErrorCode::WrongShard,
            message: format!(
                "slot {slot} is owned by range {range} on core {core} of this node, not the range that got it"
            ),
            owner: Some(ShardOwner::here(slot, range, core, epoch)),
        }
    }

    /// `StaleRoute`: the request's route is not current; `owner` gives the
    /// current route of `slot` (range `range` at `epoch`, on `core`).
    /// Nothing was applied.
    pub fn stale_route(
        why: String,
        slot: u16,
        range: usize,
        core: CoreId,
        epoch: u64,
    ) -> ProtocolError {
        ProtocolError {
            code: ErrorCode::StaleRoute,
            message: format!("{why}; slot {slot} is in range {range} at epoch {epoch} now"),
            owner: Some(ShardOwner::here(slot, range, core, epoch)),
        }
    }
}
