//! Cluster mode: each range's shard is a Raft group replicated on every
//! node of the cluster (`tinkerdb --node-id N --peers ...`).
//!
//! Placement: every node holds every range (Raft group `r` owns range
//! `r`'s slots, the same on every node: nodes have the same number of
//! ranges). A node places range `r` on its home core at first
//! (`SlotMap::core_of`); with the same layout on every node a group's
//! Raft traffic stays between the same cores, one peer connection per
//! core per peer node (`tinkerdb_replication::transport`). A range moved
//! to another core (`cluster::moves`), or a peer of another core count,
//! gets a connection of its own to the core that hosts it there. The first
//! leader of group `r` is nudged to node `r % nodes + 1` (an election it
//! triggers at start) so that leaders spread over the nodes; after a
//! failover they stay where the election put them.
//!
//! Request path: a request reaches its key's core on whatever node the
//! client is connected to (the same routing as a standalone node), then
//! [`execute_replicated`] takes over instead of the local shard:
//! - a write becomes a [`Command`], proposed through the group (forwarded to
//!   the leader's core if this replica is a follower), and is answered once
//!   a quorum has it on disk and it is applied here or at the leader;
//! - a read waits for the read-index barrier (linearizable on any replica),
//!   then reads the local store.
//!
//! Durability: the group's Raft log (in the core's `core-N/raft-log/`) is the only
//! durable copy. The shard's own journal is off and its store is rebuilt
//! at start by re-applying the committed log.
//!
//! Conditional writes (NX, XX, compare-and-set) and read-modify-writes
//! (INCR, SET ... GET, EXPIRE) are judged when applied, at the proposer's
//! instant, so every replica decides the same. Opted-in stale reads
//! (`ShardRequest::Stale`) skip the read index and read this replica as it
//! is.
//!
//! Snapshots: the group's state machine streams this core's shard through
//! the storage crate's fork-less cut (`Shard::begin_snapshot_at`), and a
//! snapshot received from the leader replaces the store
//! (`ShardApplier::restore`).
//!
//! Every write is one [`WriteOp`] (see `write_op`): the proposer encodes
//! the shard request, every replica applies it with the same
//! `Shard::execute` at the proposer's instant and computes the answer
//! there. A pipeline's consecutive writes for one shard travel as one
//! entry. Not replicated: on-demand snapshots (Raft takes its own).

use std::rc::Rc;

use bytes::Bytes;
use tinkerdb_replication::group::{self, CoreGroups, GroupError, GroupRaft, ReadRefused};
use tinkerdb_replication::health::HealthTable;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::state_machine::Applier;
use tinkerdb_replication::{Command, Response};
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::log_op::LoggedOp;
use tinkerdb_storage::snapshot;
use tinkerdb_storage::{hash_slot, Expiry, SetOptions, TenantId, WriteCondition};

use crate::coord::context::{now_ms, CoreContext};
use crate::error::ProtocolError;
use crate::shard::write_op::{self, OpAnswer, WriteOp};
use crate::shard::{ShardReply, ShardRequest, SlotKey};
use crate::slots::RangeId;

/// This core's share of the cluster, set once at start
/// (`cluster::start_replicas`): what serves its groups' peer calls and
/// what starting a range's group here needs (a range moving in,
/// `cluster::moves`).
pub struct CoreReplication {
    /// This node's id.
    pub node_id: u64,
    /// The node's data directory (its placement file).
    pub data_dir: std::path::PathBuf,
    /// The groups this core runs, by id (served by its peer connections).
    pub groups: Rc<CoreGroups<ShardApplier>>,
    /// This core's clients of its peers (shared by its ranges).
    pub peers: Rc<Peers>,
    /// This core's health probes of its peers (shared by its ranges).
    pub health: Rc<HealthTable>,
    /// The core's shared Raft log (every range on the core).
    pub log: tinkerdb_replication::CoreLog,
    /// Snapshot policy of every group.
    pub snapshot_every_entries: u64,
    /// Entries kept below a snapshot.
    pub logs_kept_after_snapshot: u64,
    /// The node's range moves under way (shared by its cores).
    pub move_claims: std::sync::Arc<crate::slots::MoveClaims>,
    /// Sends this core's requests for ranges other nodes replicate.
    pub forward: crate::coord::forward::Forwarder,
    /// Whether every node replicates every range (a full layout:
    /// `cluster::layout`); adding or removing a node is only possible then.
    pub full_layout: bool,
}

/// This core's replica of one range's group.
pub struct Replica {
    /// The group id (= the range id).
    pub group: u64,
    /// The group's Raft handle.
    pub raft: GroupRaft<ShardApplier>,
    /// This core's clients of its peers (shared by its ranges).
    pub peers: Rc<Peers>,
    /// This core's health probes of its peers (shared by its ranges).
    pub health: Rc<HealthTable>,
    /// The core's shared Raft log WAL counters (reported as its WAL).
    pub wal_stats: Rc<tinkerdb_storage::wal::WalStats>,
    /// Requests running through this replica now.
    pub in_flight: Rc<std::cell::Cell<usize>>,
}

/// Counts a request in [`Replica::in_flight`] while it lives.
pub struct InFlight(Rc<std::cell::Cell<usize>>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}

impl Replica {
    /// Counts one request running through this replica until the guard
    /// drops (a range moving away waits for them: `cluster::moves`).
    pub fn count_in_flight(&self) -> InFlight {
        self.in_flight.set(self.in_flight.get() + 1);
        InFlight(self.in_flight.clone())
    }

    /// The range this replica's group replicates.
    pub fn range(&self) -> RangeId {
        self.group as RangeId
    }
}

/// Applies committed commands to one range's shard.
pub struct ShardApplier {
    context: Rc<CoreContext>,
    range: RangeId,
}

impl ShardApplier {
    /// The applier of the shard of `range`, hosted by `context`'s core.
    pub fn new(context: Rc<CoreContext>, range: RangeId) -> ShardApplier {
        ShardApplier { context, range }
    }
}

fn refused(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Refused {
        code: code.0,
        message: message.into(),
    }
}

impl Applier for ShardApplier {
    fn apply(&mut self, command: &Command) -> Response {
        // A traced write's entry joins its trace here, on every replica.
        if let Command::Ops {
            trace: Some(trace), ..
        } = command
        {
            if crate::telemetry::is_on() {
                let span = tracing::info_span!(
                    parent: None,
                    "raft.apply",
                    range = self.range,
                    core = self.context.core
                );
                return crate::telemetry::child_of(span, trace)
                    .in_scope(|| self.apply_now(command));
            }
        }
        self.apply_now(command)
    }

    fn begin_snapshot(&mut self, last_index: u64) -> Result<(), String> {
        self.context
            .shard(self.range)
            .borrow_mut()
            .begin_snapshot_at(last_index, now_ms())
    }

    fn snapshot_step(&mut self) -> (Vec<u8>, bool) {
        self.context.shard(self.range).borrow_mut().snapshot_step()
    }

    fn finish_snapshot(&mut self) -> Vec<u8> {
        self.context
            .shard(self.range)
            .borrow_mut()
            .finish_snapshot()
            .0
    }

    fn abort_snapshot(&mut self) {
        self.context.shard(self.range).borrow_mut().abort_snapshot();
    }

    fn membership_applied(&mut self, log_index: u64) {
        self.context.slot_map.raise_epoch(self.range, log_index);
    }

    fn restore(&mut self, data_file: &std::path::Path) -> Result<(), String> {
        let context = &self.context;
        let registry = context.tenants.get();
        let mut store = tinkerdb_storage::Store::new();
        let mut tenants = crate::shard::recovery::ReplayTenants::new(&registry);
        let info = snapshot::load(data_file, |op| match op {
            LoggedOp::Put { .. } => crate::shard::recovery::apply(&mut store, &mut tenants, op),
            other => Err(format!("a snapshot holds only puts, not {other:?}")),
        })
        .map_err(|error| error.to_string())?;
        // Versions continue from the cut's counter on every replica alike.
        store.raise_last_version(info.last_version);
        let shard = context.shard(self.range);
        let mut shard = shard.borrow_mut();
        // A snapshot of this shard still being written keeps describing
        // its cut: copy what it has not reached before the data goes.
        shard.snapshot_cover_all();
        *shard.store_mut() = store;
        drop(shard);
        // The fresh store has no quotas yet: set every range's share again.
        crate::coord::quotas::apply_quotas(context, &context.tenants.get());
        Ok(())
    }
}

impl ShardApplier {
    /// [`Applier::apply`] itself, inside the apply span when traced.
    fn apply_now(&mut self, command: &Command) -> Response {
        let context = &self.context;
        if matches!(command, Command::Meta { .. }) {
            // Only the metadata group (`cluster::meta`) proposes these.
            return refused(
                ErrorCode::Internal,
                format!("range {}: a metadata command is not a range's", self.range),
            );
        }
        let Some(tenant) = context.tenants.by_name(command.tenant()) else {
            return refused(
                ErrorCode::UnknownTenant,
                format!("tenant {:?} is not defined on this node", command.tenant()),
            );
        };
        let Some(key) = command.key() else {
            let Command::Ops {
                at_unix_ms,
                payload,
                ..
            } = command
            else {
                unreachable!("every command but Ops names its key")
            };
            // The one write path: the same `Shard::execute` as a standalone
            // core, at the proposer's instant, answers computed here.
            let ops = match write_op::decode_ops(payload) {
                Ok(ops) => ops,
                Err(error) => return refused(ErrorCode::Internal, error),
            };
            // Every replica refuses alike an entry with a key of another
            // group (a peer's bug), instead of the shard's ownership panic.
            let foreign = ops
                .iter()
                .flat_map(WriteOp::keys)
                .map(|key| hash_slot(&tenant.name, key))
                .find(|&slot| context.slot_map.owner(slot) != self.range);
            if let Some(slot) = foreign {
                let owner = context.slot_map.owner(slot);
                let error = ProtocolError::wrong_shard(
                    slot,
                    owner,
                    context.slot_map.core_of(owner),
                    context.slot_map.epoch(owner),
                );
                return refused(
                    ErrorCode::WrongShard,
                    format!("group {}: {}", self.range, error.message),
                );
            }
            let shard = context.shard(self.range);
            let mut shard = shard.borrow_mut();
            let answers: Vec<OpAnswer> = ops
                .into_iter()
                .map(|op| {
                    let request = op.into_request(tenant.id, &tenant.name);
                    OpAnswer::of_reply(shard.execute(request, *at_unix_ms))
                })
                .collect();
            return Response::Ops(write_op::encode_answers(&answers));
        };
        // Entries written before `Ops` existed (Put, PutIf, Delete) still
        // replay from existing logs.
        let key = Bytes::copy_from_slice(key);
        let slot = hash_slot(&tenant.name, &key);
        let key = SlotKey { slot, key };
        let shard = context.shard(self.range);
        let mut shard = shard.borrow_mut();
        let (value, expires_at_unix_ms, condition, at_unix_ms) = match command {
            Command::Delete { .. } => {
                let request = ShardRequest::Delete {
                    tenant: tenant.id,
                    keys: vec![key],
                };
                return match shard.execute(request, now_ms()) {
                    ShardReply::Count(count) => Response::Delete { existed: count > 0 },
                    other => refused(ErrorCode::Internal, format!("{other:?}")),
                };
            }
            Command::Put {
                value,
                expires_at_unix_ms,
                ..
            } => (value, expires_at_unix_ms, WriteCondition::Always, now_ms()),
            Command::PutIf {
                value,
                expires_at_unix_ms,
                condition,
                at_unix_ms,
                ..
            } => {
                // Judged at the proposer's instant, the same on every
                // replica (whether the key has expired decides NX and XX).
                (value, expires_at_unix_ms, (*condition).into(), *at_unix_ms)
            }
            Command::Ops { .. } | Command::Meta { .. } => unreachable!("handled above"),
        };
        let request = ShardRequest::Set {
            tenant: tenant.id,
            key,
            value: Bytes::copy_from_slice(value),
            options: SetOptions {
                condition,
                expiry: expires_at_unix_ms.map_or(Expiry::Never, Expiry::AtMs),
            },
        };
        match shard.execute(request, at_unix_ms) {
            ShardReply::Written(Ok(outcome)) if matches!(command, Command::Put { .. }) => {
                Response::Put {
                    version: outcome.version,
                }
            }
            ShardReply::Written(Ok(outcome)) => Response::PutIf {
                applied: outcome.applied,
                version: outcome.version,
            },
            ShardReply::Written(Err(error)) => refused(ErrorCode::QuotaExceeded, error.to_string()),
            other => refused(ErrorCode::Internal, format!("{other:?}")),
        }
    }
}

fn unavailable(error: GroupError) -> ShardReply {
    let code = match error {
        GroupError::Stopped { .. } => ErrorCode::StorageFailed,
        _ => ErrorCode::Unavailable,
    };
    ShardReply::Error(ProtocolError::new(code, error.to_string()))
}

fn not_replicated(what: &str) -> ShardReply {
    ShardReply::Error(ProtocolError::new(
        ErrorCode::InvalidArgument,
        format!("{what} is not supported in cluster mode yet (docs/replication.md)"),
    ))
}

/// Runs `request` (a read, or a replica's own configuration) on the shard
/// of `replica`'s range here, if `replica` still serves it; a range that
/// moved away (or was started again) while the request waited is asked
/// again wherever it is now.
async fn read_here(context: &CoreContext, replica: &Replica, request: ShardRequest) -> ShardReply {
    let range = replica.range();
    let current = context
        .replica(range)
        .is_some_and(|now| std::ptr::eq(&*now, replica));
    if current {
        return context.execute_here(range, request).0;
    }
    match Box::pin(context.call(range, request)).await {
        Ok(reply) => reply,
        Err(error) => ShardReply::Error(error),
    }
}

/// Executes `request` through this core's replica (see the module docs).
pub async fn execute_replicated(
    context: &CoreContext,
    replica: &Replica,
    request: ShardRequest,
) -> ShardReply {
    match request {
        ShardRequest::Get { .. }
        | ShardRequest::GetMany { .. }
        | ShardRequest::Exists { .. }
        | ShardRequest::Scan { .. }
        | ShardRequest::Usage { .. } => {
            match group::read_barrier(&replica.raft, &replica.peers, replica.group).await {
                Ok(()) => read_here(context, replica, request).await,
                Err(ReadRefused::Failed(error)) => unavailable(error),
            }
        }
        ShardRequest::Set { .. }
        | ShardRequest::SetMany { .. }
        | ShardRequest::Delete { .. }
        | ShardRequest::Update { .. }
        | ShardRequest::SetManyIfAbsent { .. }
        | ShardRequest::Move { .. }
        | ShardRequest::Flush { .. } => {
            let mut replies = propose_writes(context, replica, vec![request]).await;
            assert_eq!(replies.len(), 1, "one reply per write");
            replies.pop().expect("one reply")
        }
        // Quotas are configuration: each replica sets its own share.
        ShardRequest::SetQuota { .. } => read_here(context, replica, request).await,
        // Opted-in stale read: this replica's state as it is, no leader
        // asked (answers even without a quorum; may lag the leader).
        ShardRequest::Stale(read) if read.is_read() => read_here(context, replica, *read).await,
        ShardRequest::Stale(request) => {
            Box::pin(execute_replicated(context, replica, *request)).await
        }
        // A pipeline's requests for this shard, in order: each run of
        // consecutive writes is proposed together (one log entry, see
        // `propose_writes`); a read waits for the writes before it.
        ShardRequest::Batch(requests) => {
            let mut replies = Vec::with_capacity(requests.len());
            let mut writes = Vec::new();
            for request in requests {
                if request.is_write() {
                    writes.push(request);
                    continue;
                }
                if !writes.is_empty() {
                    let run = std::mem::take(&mut writes);
                    replies.extend(propose_writes(context, replica, run).await);
                }
                replies.push(Box::pin(execute_replicated(context, replica, request)).await);
            }
            if !writes.is_empty() {
                replies.extend(propose_writes(context, replica, writes).await);
            }
            ShardReply::Batch(replies)
        }
        ShardRequest::Snapshot => not_replicated("an on-demand snapshot (Raft snapshots itself)"),
    }
}

/// Most payload bytes of one `Ops` entry: a run of writes larger than this
/// is proposed as several entries (in order). Below the command limit, with
/// room for the entry's own fields.
pub const MAX_OPS_PAYLOAD_BYTES: usize = tinkerdb_replication::command::MAX_COMMAND_BYTES - 1024;

/// Proposes `writes` (writes of this shard, in order) and answers each, in
/// order. Consecutive writes of one tenant travel as one `Ops` entry (up to
/// [`MAX_OPS_PAYLOAD_BYTES`]), so a pipeline costs one Raft round, not one
/// per write; the answers are computed when the entry is applied.
async fn propose_writes(
    context: &CoreContext,
    replica: &Replica,
    writes: Vec<ShardRequest>,
) -> Vec<ShardReply> {
    let count = writes.len();
    let mut replies = Vec::with_capacity(count);
    let mut run: Vec<WriteOp> = Vec::new();
    let mut run_tenant = None;
    let mut run_bytes = 0;
    for request in writes {
        let (tenant, op) = WriteOp::of_request(&request)
            .unwrap_or_else(|| unreachable!("only writes are proposed, not {request:?}"));
        let op_bytes = write_op::encode_ops(std::slice::from_ref(&op)).len();
        if run_tenant.is_some_and(|current| current != tenant)
            || (!run.is_empty() && run_bytes + op_bytes > MAX_OPS_PAYLOAD_BYTES)
        {
            let ops = std::mem::take(&mut run);
            let current = run_tenant.expect("a run has a tenant");
            replies.extend(propose_ops(context, replica, current, ops).await);
            run_bytes = 0;
        }
        run_tenant = Some(tenant);
        run_bytes += op_bytes;
        run.push(op);
    }
    if let Some(tenant) = run_tenant {
        replies.extend(propose_ops(context, replica, tenant, run).await);
    }
    assert_eq!(replies.len(), count, "one reply per write");
    replies
}

/// Proposes one `Ops` entry; every op gets the entry's error if it fails.
async fn propose_ops(
    context: &CoreContext,
    replica: &Replica,
    tenant: TenantId,
    ops: Vec<WriteOp>,
) -> Vec<ShardReply> {
    let count = ops.len();
    // A traced request's proposal: its own span, whose context the entry
    // carries to every replica's apply.
    let span = crate::telemetry::in_trace()
        .then(|| tracing::info_span!("raft.propose", range = replica.group, ops = count));
    let command = Command::Ops {
        tenant: context.tenants.name_of(tenant).to_string(),
        at_unix_ms: now_ms(),
        payload: write_op::encode_ops(&ops),
        trace: span
            .as_ref()
            .and_then(|span| span.in_scope(crate::telemetry::current_parent)),
    };
    let failed = |reply: ShardReply| {
        let ShardReply::Error(error) = reply else {
            unreachable!("a failed proposal answers an error")
        };
        (0..count)
            .map(|_| ShardReply::Error(error.clone()))
            .collect()
    };
    let proposed = match span {
        Some(span) => {
            use tracing::Instrument;
            propose(replica, command).instrument(span).await
        }
        None => propose(replica, command).await,
    };
    match proposed {
        Ok(Response::Ops(bytes)) => {
            let answers = write_op::decode_answers(&bytes)
                .unwrap_or_else(|error| panic!("own state machine's answers: {error}"));
            assert_eq!(answers.len(), count, "one answer per operation");
            answers
                .into_iter()
                .map(|answer| answer.into_reply(tenant))
                .collect()
        }
        Ok(other) => failed(answer_error(other)),
        Err(reply) => failed(reply),
    }
}

async fn propose(replica: &Replica, command: Command) -> Result<Response, ShardReply> {
    group::write(&replica.raft, &replica.peers, replica.group, command)
        .await
        .map_err(unavailable)
}

fn answer_error(response: Response) -> ShardReply {
    match response {
        Response::Refused { code, message } => {
            ShardReply::Error(ProtocolError::new(ErrorCode(code), message))
        }
        other => unreachable!("this node's state machine answered {other:?} to an Ops entry"),
    }
}
