//! Requests for ranges this node does not replicate: sent whole to a node
//! that does, answered as if run here (cluster mode, partial layouts:
//! `cluster::layout`).
//!
//! Any node accepts any request, so clients that know nothing of ranges
//! (RESP clients, the HTTP API, a client given one address) keep working
//! when each node holds only a share of the data. A request reaches the
//! core it is routed to as always; for a range marked remote in the
//! [`SlotMap`](crate::slots::SlotMap), [`Forwarder::forward`] encodes it
//! ([`crate::shard::remote`]) and sends it as a
//! `PeerCallKind::Execute` call over this core's peer connections (one per
//! node, the Raft transport), and the receiving node runs it through its
//! own replica of the range ([`serve_forwarded`]): linearizable reads,
//! writes through Raft, the same as a request it got from a client.
//!
//! Which node: the range's leader when known (each answer names the leader
//! as the receiving replica knows it, kept per range in the node-wide
//! [`RangeReplicas`]), then the other replicas in turn. A replica that does
//! not answer is skipped only when the request could not have run there:
//! the connection could not be opened, or the node answered that it does
//! not host the range. Once a request that writes has been sent, it is
//! never sent again elsewhere (it may have been applied: an INCR must not
//! count twice); its caller gets `Unavailable` ("outcome unknown") instead,
//! as it would from a leader that failed mid-write. A read is tried on the
//! next replica.
//!
//! Limits: [`FORWARD_TIMEOUT`] per attempt (the receiving replica itself
//! retries through elections for up to the Raft request deadline), one
//! attempt per replica. A forwarded request is never forwarded again: a
//! node that does not host the range refuses it, so stale views cannot
//! make a loop.

use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tinkerdb_replication::group;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::transport::{self, PeerCall, TransportError};
use tinkerdb_replication::NodeId;
use tinkerdb_schemas::wire::{ErrorCode, PeerCallKind};

use crate::coord::context::{CoreContext, RangeTable};
use crate::error::ProtocolError;
use crate::shard::remote::{self, RemoteReply, RemoteRequest};
use crate::shard::{ShardReply, ShardRequest};
use crate::slots::RangeId;

/// How long one forwarded request may take on the node it was sent to:
/// the Raft request deadline there, plus room for the trip.
pub const FORWARD_TIMEOUT: Duration =
    Duration::from_millis(group::REQUEST_DEADLINE.as_millis() as u64 + 2_000);

/// Which nodes replicate each range this node does not: one for the node,
/// shared by its cores. Fixed at start (from the
/// cluster's layout); only the leader hints change (one atomic per range).
#[derive(Debug)]
pub struct RangeReplicas {
    /// By range: the nodes replicating it (empty for a range hosted here).
    replicas: Vec<Vec<NodeId>>,
    /// By range: the leader last heard of (0: none known).
    leaders: Box<[AtomicU64]>,
}

impl RangeReplicas {
    /// From each range's replicas (first: its preferred leader; empty for
    /// a range hosted here).
    pub fn new(replicas: Vec<Vec<NodeId>>) -> RangeReplicas {
        let leaders = replicas.iter().map(|_| AtomicU64::new(0)).collect();
        RangeReplicas { replicas, leaders }
    }

    /// The nodes to try for `range`, in order: its leader hint (the last
    /// answer's, else the range table's), then the other replicas.
    fn candidates(&self, range: RangeId, table: &RangeTable) -> Vec<NodeId> {
        let Some(replicas) = self.replicas.get(range) else {
            return Vec::new();
        };
        let record = table.get(&(range as u64));
        let hint = match self.leaders[range].load(Ordering::Relaxed) {
            0 => record.map_or(0, |record| record.leader),
            hint => hint,
        };
        let mut order: Vec<NodeId> = Vec::with_capacity(replicas.len());
        if replicas.contains(&hint) {
            order.push(hint);
        }
        order.extend(replicas.iter().copied().filter(|&node| node != hint));
        order
    }

    fn note_leader(&self, range: RangeId, leader: NodeId) {
        if let Some(slot) = self.leaders.get(range) {
            slot.store(leader, Ordering::Relaxed);
        }
    }
}

/// Why one attempt did not give an answer.
enum Attempt {
    /// Nothing ran there: try the next replica.
    NotRun(String),
    /// It may have run: a write must not be sent again.
    Unknown(String),
}

/// One core's sender of forwarded requests. It sends them on the core's
/// own peer connections (`CoreReplication::peers`, which reach every seed
/// node with a hello naming a range that node holds); a call for a range
/// the connection's core there does not run is rerouted by the client or
/// hopped on by that node.
pub struct Forwarder {
    ranges: Arc<RangeReplicas>,
}

impl Forwarder {
    /// A core's forwarder over the node's `ranges`.
    pub fn new(ranges: Arc<RangeReplicas>) -> Forwarder {
        Forwarder { ranges }
    }

    /// Runs `request` for `range` (one this node does not replicate) on a
    /// node that does, and answers its reply (see the module docs).
    pub async fn forward(
        &self,
        context: &CoreContext,
        peers: &Peers,
        range: RangeId,
        request: ShardRequest,
    ) -> ShardReply {
        let wire =
            match RemoteRequest::of_request(&request, &|tenant| context.tenants.name_of(tenant)) {
                Ok(wire) => wire,
                Err(error) => return ShardReply::Error(error),
            };
        let writes = wire.writes();
        let payload = remote::encode_request(&wire);
        let candidates = self.ranges.candidates(range, &context.directory.ranges());
        if candidates.is_empty() {
            return ShardReply::Error(ProtocolError::new(
                ErrorCode::Internal,
                format!("range {range} is neither hosted here nor known elsewhere"),
            ));
        }
        let mut failures = Vec::new();
        for node in candidates {
            match attempt(peers, node, range, payload.clone()).await {
                Ok(reply) => {
                    if let Some(leader) = reply.leader {
                        self.ranges.note_leader(range, leader);
                    }
                    return reply.into_reply(&request);
                }
                Err(Attempt::NotRun(why)) => failures.push(format!("node {node}: {why}")),
                Err(Attempt::Unknown(why)) if writes => {
                    return ShardReply::Error(ProtocolError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "range {range}'s replica on node {node} did not answer a forwarded \
                             write; its outcome is unknown: {why}"
                        ),
                    ));
                }
                Err(Attempt::Unknown(why)) => failures.push(format!("node {node}: {why}")),
            }
        }
        ShardReply::Error(ProtocolError::new(
            ErrorCode::Unavailable,
            format!(
                "no replica of range {range} answered ({})",
                failures.join("; ")
            ),
        ))
    }
}

/// One attempt on `node`.
async fn attempt(
    peers: &Peers,
    node: NodeId,
    range: RangeId,
    payload: Vec<u8>,
) -> Result<RemoteReply, Attempt> {
    let client = peers
        .get(node)
        .ok_or_else(|| Attempt::NotRun(format!("no connection to node {node}")))?;
    // Connected first: a failure here means nothing was sent.
    client
        .ensure_connected(range as u64)
        .await
        .map_err(|error| Attempt::NotRun(error.to_string()))?;
    let call = PeerCall {
        group: range as u64,
        kind: PeerCallKind::Execute,
        payload,
    };
    match client.call(call, FORWARD_TIMEOUT).await {
        Ok(bytes) => remote::decode_reply(&bytes).map_err(Attempt::Unknown),
        // Refused: the node did not run it (it does not host the range,
        // or could not read the call).
        Err(error @ (TransportError::Refused(..) | TransportError::Blocked(_))) => {
            Err(Attempt::NotRun(error.to_string()))
        }
        Err(error) => Err(Attempt::Unknown(error.to_string())),
    }
}

/// Serves a forwarded request (a `PeerCallKind::Execute` call) for `range`
/// on the core the call arrived at: runs it as a client's request would
/// run here, and answers the encoded [`RemoteReply`]. A range this node
/// does not host is refused as "no group" (the sender tries another
/// replica, and the request is never forwarded again); an undecodable call
/// is refused with why.
pub async fn serve_forwarded(
    context: &Rc<CoreContext>,
    range: u64,
    payload: &[u8],
) -> Result<Vec<u8>, String> {
    let hosted = usize::try_from(range)
        .ok()
        .filter(|&range| range < context.slot_map.ranges() && !context.slot_map.is_remote(range));
    let Some(range) = hosted else {
        return Err(transport::no_group_here(range));
    };
    let wire = remote::decode_request(payload)?;
    let reply = match wire.into_request(&|name| context.tenants.by_name(name).map(|t| t.id)) {
        Ok(request) => {
            let reply = context.execute_local(range, request).await;
            let leader = context
                .replica(range)
                .and_then(|replica| group::leader(&replica.raft));
            RemoteReply::of_reply(reply, leader)
        }
        Err(error) => RemoteReply::error(&error),
    };
    Ok(remote::encode_reply(&reply))
}
