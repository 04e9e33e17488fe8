//! Each core's side of the admin plane: a task that serves the core's admin
//! channel (`tinkerdb_admin::link`), answering from this core's state or
//! routing key operations like any client request.
//!
//! Invariants:
//! - the core never waits on the admin plane: it answers through a oneshot
//!   (a send that cannot block), and a request whose asker has given up is
//!   simply dropped;
//! - each admin request is bounded work: a report copies counters and two
//!   small histograms, a scan page is at most `MAX_SCAN_PAGE_KEYS` keys and
//!   a bounded step per core (`SCAN_STEP_MAX_ENTRIES_VISITED`);
//! - requests that wait (a snapshot, a routed write waiting for the WAL) run
//!   in their own task so they never hold up reports (the dashboard's
//!   once-a-second sample).

use std::rc::Rc;

use bytes::Bytes;
use tinkerdb_admin::link::{
    CoreRequest, CoreResponse, Envelope, KeyOp, StoredValue, Usage, MAX_SCAN_PAGE_KEYS,
};
use tinkerdb_admin::report::{CoreReport, SnapshotInfo};
use tinkerdb_admin::tenants_file::TenantSpec;
use tinkerdb_admin::{ApiError, CoreInbox, ErrorCode as ApiCode};
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::{Quota, WriteCondition};

use crate::cluster::moves;
use crate::coord::context::CoreContext;
use crate::coord::multi::execute_multi;
use crate::coord::quotas::install_tenants;
use crate::coord::request::{Command, Reply};
use crate::coord::session::Session;
use crate::error::ProtocolError;

/// Serves this core's admin channel until the admin plane closes it.
pub async fn serve_admin(context: Rc<CoreContext>, mut inbox: CoreInbox) {
    while let Some(Envelope { request, reply }) = inbox.recv().await {
        match request {
            CoreRequest::Report => {
                let _ = reply.send(CoreResponse::Report(Box::new(report(&context))));
            }
            CoreRequest::TenantUsage => {
                let _ = reply.send(CoreResponse::Usage(tenant_usage(&context)));
            }
            CoreRequest::InstallTenants(specs) => {
                install_tenants(&context, tenant_quotas(&specs));
                let _ = reply.send(CoreResponse::Done);
            }
            CoreRequest::FlushTenant { tenant } => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(flush_tenant(&context, &tenant).await);
                })
                .detach();
            }
            CoreRequest::Snapshot => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let answer = match run_command(&context, None, Command::Snapshot).await {
                        Ok(Reply::Snapshotted { keys, bytes }) => CoreResponse::Snapshotted {
                            entries: keys,
                            bytes,
                        },
                        Ok(other) => unexpected(other),
                        Err(error) => CoreResponse::Failed(api_error(error)),
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            CoreRequest::AddMember { id, raft } => {
                change_member(&context, id, Some(raft), reply);
            }
            CoreRequest::RemoveMember { id } => change_member(&context, id, None, reply),
            CoreRequest::LocateRange { range } => {
                let answer = if context.replication.get().is_none() {
                    CoreResponse::Failed(standalone())
                } else if range >= context.slot_map.ranges() {
                    CoreResponse::Failed(ApiError::new(
                        ApiCode::InvalidArgument,
                        format!(
                            "range {range} does not exist: this node has ranges 0..{}",
                            context.slot_map.ranges()
                        ),
                    ))
                } else {
                    CoreResponse::RangeAt {
                        core: context.slot_map.core_of(range),
                    }
                };
                let _ = reply.send(answer);
            }
            CoreRequest::ExportRange { range, to_core } => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let answer = match moves::export(&context, range, to_core).await {
                        Ok(moves::Exported { log, snapshots }) => {
                            CoreResponse::RangeExported { log, snapshots }
                        }
                        Err(reason) => CoreResponse::Failed(move_refused(reason)),
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            CoreRequest::ImportRange {
                range,
                log,
                snapshots,
            } => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let exported = moves::Exported { log, snapshots };
                    let answer = match moves::import(&context, range, exported).await {
                        Ok(()) => CoreResponse::Done,
                        Err(reason) => CoreResponse::Failed(move_refused(reason)),
                    };
                    let _ = reply.send(answer);
                })
                .detach();
            }
            CoreRequest::SettleRangeMove { range } => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let moved = moves::settle(&context, range).await;
                    let _ = reply.send(CoreResponse::RangeSettled { moved });
                })
                .detach();
            }
            CoreRequest::Key { tenant, op } => {
                let context = context.clone();
                glommio::spawn_local(async move {
                    let _ = reply.send(key_op(&context, &tenant, op).await);
                })
                .detach();
            }
        }
    }
}

fn standalone() -> ApiError {
    ApiError::new(
        ApiCode::Unsupported,
        "this node is standalone: its ranges stay on their cores",
    )
}

/// The admin plane's error for a move step that did not happen.
fn move_refused(error: moves::MoveError) -> ApiError {
    let code = match error {
        moves::MoveError::Standalone => ApiCode::Unsupported,
        moves::MoveError::Refused(_) => ApiCode::InvalidArgument,
        moves::MoveError::Failed(_) => ApiCode::Unavailable,
    };
    ApiError::new(code, error.to_string())
}

/// Runs a membership change of this core's group in its own task.
fn change_member(
    context: &Rc<CoreContext>,
    id: u64,
    raft: Option<String>,
    reply: tinkerdb_admin::link::ReplySlot,
) {
    let context = context.clone();
    glommio::spawn_local(async move {
        let Some(replication) = context.replication.get() else {
            let _ = reply.send(CoreResponse::Failed(ApiError::new(
                ApiCode::Unsupported,
                "this node is standalone: there is no cluster to change",
            )));
            return;
        };
        if !replication.full_layout {
            // Each node holds only some ranges: a node comes or goes by
            // moving replicas, range by range, which the scheduler will
            // do (cluster::layout); adding it to this node's ranges only
            // would leave the others unbalanced and the layout untrue.
            let _ = reply.send(CoreResponse::Failed(ApiError::new(
                ApiCode::Unsupported,
                "this cluster places each range on some of its nodes (more nodes than \
                 replication_factor): adding or removing a node needs moving replicas \
                 between nodes, which is not built yet (docs/placement.md)",
            )));
            return;
        }
        // Each range of the core in turn (a change is idempotent: asked
        // again after a failure, the ranges done answer at once).
        let replicas = context.replicas();
        let mut voters = Vec::with_capacity(replicas.len());
        for replica in replicas {
            match crate::cluster::change_member(&replica, id, raft.as_deref()).await {
                Ok(range_voters) => voters.push(range_voters),
                Err((code, message)) => {
                    let error = api_error(ProtocolError::new(code, message));
                    let _ = reply.send(CoreResponse::Failed(error));
                    return;
                }
            }
        }
        let _ = reply.send(CoreResponse::Members(voters));
    })
    .detach();
}

fn unexpected(reply: Reply) -> CoreResponse {
    CoreResponse::Failed(ApiError::new(
        ApiCode::Internal,
        format!("unexpected reply {reply:?}"),
    ))
}

/// The admin plane's code for a client protocol error.
fn api_error(error: ProtocolError) -> ApiError {
    let code = match error.code {
        // Keys reach their owners through the node's own routing: a wrong
        // shard here is the node's bug, not the caller's.
        ErrorCode::WrongShard => ApiCode::Internal,
        ErrorCode::UnknownTenant => ApiCode::UnknownTenant,
        ErrorCode::KeyTooLarge => ApiCode::KeyTooLarge,
        ErrorCode::ValueTooLarge => ApiCode::ValueTooLarge,
        ErrorCode::QuotaExceeded => ApiCode::QuotaExceeded,
        ErrorCode::Busy => ApiCode::Busy,
        ErrorCode::StorageFailed => ApiCode::StorageFailed,
        ErrorCode::ShuttingDown | ErrorCode::Unavailable => ApiCode::Unavailable,
        ErrorCode::InvalidArgument | ErrorCode::TooManyKeys | ErrorCode::ResultTooLarge => {
            ApiCode::InvalidArgument
        }
        _ => ApiCode::Internal,
    };
    ApiError::new(code, error.message)
}

/// Runs `command` as a client of `session`'s tenant would (None: a
/// node-wide command such as Snapshot, run as the default tenant).
async fn run_command(
    context: &CoreContext,
    session: Option<&Session>,
    command: Command,
) -> Result<Reply, ProtocolError> {
    let session = match session {
        Some(session) => session.clone(),
        None => Session::open(&context.tenants, crate::config::DEFAULT_TENANT, false)
            .expect("the default tenant always exists"),
    };
    let reply = execute_multi(context, &session, command).await?;
    match reply {
        Reply::Error(error) => Err(error),
        reply => Ok(reply),
    }
}

/// Empties every database of tenant `name`, deleted or not (deleting a
/// tenant: its tombstone is installed first, so no session adds keys
/// after this runs).
async fn flush_tenant(context: &CoreContext, name: &str) -> CoreResponse {
    let registry = context.tenants.get();
    let Some(tenant) = registry.id_of_any(name) else {
        return CoreResponse::Failed(tinkerdb_admin::api::unknown_tenant(name));
    };
    let keyspaces: Vec<_> = (0..registry.databases())
        .map(|database| tinkerdb_storage::keyspace(tenant, database as u8))
        .collect();
    match crate::coord::multi::flush_keyspaces(context, &keyspaces).await {
        Ok(removed) => CoreResponse::Flushed(removed),
        Err(error) => CoreResponse::Failed(api_error(error)),
    }
}

async fn key_op(context: &CoreContext, tenant: &str, op: KeyOp) -> CoreResponse {
    let stale_reads = matches!(op, KeyOp::Get { stale: true, .. });
    // The admin API names its tenant in the path: an empty one is not
    // `default` there.
    let session = match Session::open(&context.tenants, tenant, stale_reads) {
        Ok(session) if !tenant.is_empty() => session,
        _ => return CoreResponse::Failed(tinkerdb_admin::api::unknown_tenant(tenant)),
    };
    let command = match op {
        KeyOp::Get { key, .. } => Command::Get { key },
        KeyOp::Put { key, value, ttl_ms } => Command::Set {
            key,
            value,
            ttl_ms,
            condition: WriteCondition::Always,
        },
        KeyOp::Delete { key } => Command::Delete { keys: vec![key] },
        KeyOp::Scan {
            prefix,
            cursor,
            limit,
        } => {
            if cursor as usize >= tinkerdb_storage::SLOT_COUNT {
                return CoreResponse::Failed(ApiError::new(
                    ApiCode::InvalidArgument,
                    "cursor is not one this API returned",
                ));
            }
            Command::Scan {
                cursor,
                prefix,
                pattern: Bytes::new(),
                count: limit.clamp(1, MAX_SCAN_PAGE_KEYS),
            }
        }
    };
    if let Command::Scan {
        cursor,
        prefix,
        count,
        ..
    } = command
    {
        return scan_page(context, &session, cursor, prefix, count).await;
    }
    match run_command(context, Some(&session), command).await {
        Ok(Reply::Value(value)) => CoreResponse::Value(value.map(|read| StoredValue {
            value: read.value,
            version: read.version,
            expires_at_ms: read.expires_at_ms,
        })),
        Ok(Reply::Written(outcome)) => CoreResponse::Written {
            version: outcome.version,
        },
        Ok(Reply::Count(count)) => CoreResponse::Deleted(count > 0),
        Ok(other) => unexpected(other),
        Err(error) => CoreResponse::Failed(api_error(error)),
    }
}

/// Most bounded scan steps one HTTP scan page takes. A step visits at most
/// `SCAN_STEP_MAX_SLOTS_VISITED` slots, so 8 steps cover the whole slot
/// space of a sparse tenant: a page is rarely empty unless the scan is done.
pub const MAX_SCAN_STEPS_PER_PAGE: usize = 8;

async fn scan_page(
    context: &CoreContext,
    session: &Session,
    mut cursor: u32,
    prefix: Bytes,
    count: usize,
) -> CoreResponse {
    let mut keys = Vec::new();
    for _ in 0..MAX_SCAN_STEPS_PER_PAGE {
        let step = Command::Scan {
            cursor,
            prefix: prefix.clone(),
            pattern: Bytes::new(),
            count: count - keys.len(),
        };
        match run_command(context, Some(session), step).await {
            Ok(Reply::Scanned {
                cursor: next,
                keys: found,
            }) => {
                keys.extend(found);
                if next == 0 {
                    return CoreResponse::Scanned {
                        keys,
                        next_cursor: None,
                    };
                }
                cursor = next as u32;
            }
            Ok(other) => return unexpected(other),
            Err(error) => return CoreResponse::Failed(api_error(error)),
        }
        if keys.len() >= count {
            break;
        }
    }
    CoreResponse::Scanned {
        keys,
        next_cursor: Some(cursor),
    }
}

fn report(context: &CoreContext) -> CoreReport {
    let stats = &context.stats;
    let (mut keys, mut data_bytes) = (0, 0);
    let registry = context.tenants.get();
    for shard in context.shards() {
        let shard = shard.borrow();
        let store = shard.store();
        keys += store.key_count();
        data_bytes += registry
            .iter()
            .map(|tenant| store.owner_usage(tenant.id).bytes)
            .sum::<u64>();
    }
    let snapshots = context.snapshots.borrow();
    // Cluster mode: this core's replicas as their groups see them now.
    let replicas = context.replicas();
    let raft_statuses: Vec<_> = replicas
        .iter()
        .map(|replica| {
            (
                replica,
                tinkerdb_replication::group::status(&replica.raft, replica.group),
            )
        })
        .collect();
    let (wal_bytes_written, wal_fsyncs, wal_fsync_latency, wal_poisoned) = match &context.wal {
        Some(wal) => (
            wal.stats().bytes_written.get(),
            wal.stats().flushes.get(),
            wal.stats().flush_micros.borrow().clone(),
            wal.poisoned().is_some(),
        ),
        // Cluster mode: the core's WAL is its ranges' shared Raft log.
        None => match raft_statuses.first() {
            Some((replica, _)) => (
                replica.wal_stats.bytes_written.get(),
                replica.wal_stats.flushes.get(),
                replica.wal_stats.flush_micros.borrow().clone(),
                raft_statuses
                    .iter()
                    .any(|(_, status)| status.fatal.is_some()),
            ),
            None => (0, 0, tinkerdb_storage::latency::latency_histogram(), false),
        },
    };
    CoreReport {
        metadata: crate::cluster::meta::on_this_core().map(|meta| meta.report()),
        core: context.core,
        requests_total: stats.requests_total.get(),
        errors_total: stats.errors_sum.get(),
        errors_by_code: stats
            .errors_total
            .iter()
            .enumerate()
            .filter(|(_, count)| count.get() > 0)
            .map(|(code, count)| {
                let name = ErrorCode(code as u16).variant_name().unwrap_or("Unknown");
                (name.to_owned(), count.get())
            })
            .chain(stats.resp_errors.borrow().iter().cloned())
            .collect(),
        peer_requests_total: stats.peer_requests_total.get(),
        forwarded_requests_total: stats.forwarded_requests_total.get(),
        connections_total: stats.connections_total.get(),
        connections_open: stats.connections_open.get(),
        keys,
        data_bytes,
        wal_bytes_written,
        wal_fsyncs,
        wal_poisoned,
        wal_fsync_latency,
        request_latency: stats.request_latency.borrow().clone(),
        tenant_requests: stats.tenant_requests.borrow().clone(),
        ranges: raft_statuses
            .into_iter()
            .map(|(replica, status)| {
                let peers = replica
                    .health
                    .report(&replica.peers, &status.other_members());
                let slots = context.slot_map.slot_range(replica.range());
                tinkerdb_admin::report::RaftReport {
                    group: status.group,
                    slots: (slots.start as u32, slots.end as u32 - 1),
                    node_id: status.node_id,
                    state: status.state,
                    leader: status.leader,
                    term: status.term,
                    last_log_index: status.last_log_index,
                    committed_index: status.committed_index,
                    applied_index: status.applied_index,
                    voters: status.voters,
                    learners: status.learners,
                    snapshot_index: status.snapshot_index,
                    purged_index: status.purged_index,
                    asleep: status.asleep,
                    // The routing epoch (`SlotMap::epoch`): the one a
                    // routed request is checked against.
                    epoch: context.slot_map.epoch(replica.range()),
                    followers: status
                        .followers
                        .into_iter()
                        .map(|f| tinkerdb_admin::report::FollowerReport {
                            node_id: f.node_id,
                            matched_index: f.matched_index,
                            lag: f.lag,
                            last_ack_ms: f.last_ack_ms,
                        })
                        .collect(),
                    peers: peers
                        .into_iter()
                        .map(|p| tinkerdb_admin::report::PeerReport {
                            node_id: p.node_id,
                            addr: p.addr,
                            state: p.state.to_string(),
                            last_seen_ms: p.last_seen_ms,
                            rtt_us: p.rtt_us,
                            last_error: p.last_error,
                        })
                        .collect(),
                }
            })
            .collect(),
        last_snapshot: snapshots.last.map(|last| SnapshotInfo {
            unix_ms: last.unix_ms,
            entries: last.entries,
            bytes: last.bytes,
            cut_index: snapshots.last_cut,
        }),
    }
}

fn tenant_usage(context: &CoreContext) -> Vec<Usage> {
    context
        .tenants
        .get()
        .iter()
        .map(|tenant| {
            // Every database of the tenant, on every range of the core.
            let mut usage = Usage { keys: 0, bytes: 0 };
            for shard in context.shards() {
                let owned = shard.borrow().store().owner_usage(tenant.id);
                usage.keys += owned.keys;
                usage.bytes += owned.bytes;
            }
            usage
        })
        .collect()
}

/// The (name, node-wide quota) pairs of the admin plane's tenant specs:
/// what the core's tenant registry is built from.
pub fn tenant_quotas(specs: &[TenantSpec]) -> impl Iterator<Item = (&str, Quota, bool)> {
    specs.iter().map(|spec| {
        let quota = Quota {
            max_keys: spec.max_keys,
            max_bytes: spec.max_bytes,
        };
        (spec.name.as_str(), quota, spec.deleted)
    })
}
