//! The route a client may send with a request (the flatbuffers
//! `RequestFrame.route`): the range it believes the request's keys are in
//! and that range's epoch. A client that caches ranges (issue "Scale-out":
//! straight to the leader's node and core) learns from the typed answer
//! when its cache is stale, instead of being silently forwarded forever.
//!
//! The check is lock-free and runs on the core that decoded the request,
//! before anything is dispatched: the slot map (`SlotMap::owner`,
//! `SlotMap::epoch`) is shared read-only by every core, and a range's
//! epoch is raised by the core hosting it as its group applies a
//! membership (`ShardApplier::membership_applied`). A request without a
//! route is not checked: the node routes it by itself, as always.

use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::hash_slot;

use crate::coord::context::CoreContext;
use crate::coord::request::Command;
use crate::coord::session::Session;
use crate::error::ProtocolError;

/// Where a client believes a request's keys are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// The range owning their slots.
    pub range: u32,
    /// The range's epoch as the client knows it.
    pub epoch: u64,
}

/// Whether `route` is current for `command`'s keys: every key's slot is
/// in `route.range`, and that range's epoch here is `route.epoch`.
/// Otherwise `StaleRoute`, with the current route of the first key off it
/// (or of the range's first slot when the epoch alone is stale). A range
/// that does not exist is `InvalidArgument`.
pub fn check(
    context: &CoreContext,
    session: &Session,
    command: &Command,
    route: Route,
) -> Result<(), ProtocolError> {
    let map = &context.slot_map;
    let range = route.range as usize;
    if range >= map.ranges() {
        return Err(ProtocolError::new(
            ErrorCode::InvalidArgument,
            format!(
                "route names range {range}; this node has ranges 0..{}",
                map.ranges()
            ),
        ));
    }
    for key in command.keys() {
        let slot = hash_slot(&session.tenant_name, key);
        let owner = map.owner(slot);
        if owner != range {
            return Err(ProtocolError::stale_route(
                format!("a key of the request is not in range {range}"),
                slot,
                owner,
                map.core_of(owner),
                map.epoch(owner),
            ));
        }
    }
    let epoch = map.epoch(range);
    if epoch != route.epoch {
        let slot = map.slot_range(range).start as u16;
        return Err(ProtocolError::stale_route(
            format!("range {range} is at epoch {epoch}, not {}", route.epoch),
            slot,
            range,
            map.core_of(range),
            epoch,
        ));
    }
    Ok(())
}
