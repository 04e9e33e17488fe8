//! The HTTP API under `/v1`, `/health`, `/ready` and `/metrics`, and the
//! OpenAPI document generated from these handlers (`/v1/openapi.json`).
//!
//! Every handler reaches the node through [`NodeHandle`] messages; none
//! touches core state. Every error is JSON `{"error": {"code", "message"}}`
//! with a stable code ([`ErrorCode`]).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use base64::Engine;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::link::{
    now_unix_ms, CoreRequest, CoreResponse, KeyOp, NodeHandle, StoredValue, Usage,
    MAX_SCAN_PAGE_KEYS,
};
use crate::live::{LiveSeries, Sample};
use crate::metrics::{render, Scrape};
use crate::report::CoreReport;
use crate::tenants_file::{save, valid_tenant_name, TenantSpec};

/// How long `/ready` and status calls wait for the cores.
pub const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

/// Default keys per scan page.
pub const DEFAULT_SCAN_PAGE_KEYS: usize = 100;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The node.
    pub node: NodeHandle,
    /// The dashboard's live series.
    pub live: Arc<Mutex<LiveSeries>>,
    /// The admin address actually bound.
    pub admin_addr: std::net::SocketAddr,
    /// Held by a range move for its whole run: one move at a time per
    /// node (each records the node's placement file).
    pub moves: Arc<tokio::sync::Mutex<()>>,
    /// Basic-auth credentials that passed lately (`access`).
    pub credentials: Arc<crate::access::RememberedCredentials>,
    /// The node's TLS, when it has any (`POST /v1/tls/reload`).
    pub tls: Option<Arc<dyn crate::tls::ServerTls>>,
    /// Bearer tokens issued (`/v1/tokens`).
    pub tokens: Arc<crate::tokens::Tokens>,
}

type ApiResult<T> = Result<T, ApiError>;

fn unexpected(response: CoreResponse) -> ApiError {
    ApiError::new(
        ErrorCode::Internal,
        format!("unexpected answer from a core: {response:?}"),
    )
}

// ---------------------------------------------------------------- health

/// Liveness and readiness answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthBody {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// Why not ready, if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Liveness: the admin plane answers.
#[utoipa::path(get, path = "/health", tag = "node",
    responses((status = 200, description = "The process is alive", body = HealthBody)))]
async fn health() -> Json<HealthBody> {
    Json(HealthBody {
        status: "ok".into(),
        reason: None,
    })
}

/// Readiness: every core answers within two seconds.
#[utoipa::path(get, path = "/ready", tag = "node",
    responses(
        (status = 200, description = "Every core is serving", body = HealthBody),
        (status = 503, description = "A core does not answer", body = HealthBody)))]
async fn ready(State(state): State<AppState>) -> Response {
    match state
        .node
        .call_all(|| CoreRequest::Report, STATUS_TIMEOUT)
        .await
    {
        Ok(_) => Json(HealthBody {
            status: "ready".into(),
            reason: None,
        })
        .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(HealthBody {
                status: "not_ready".into(),
                reason: Some(error.message),
            }),
        )
            .into_response(),
    }
}

// ---------------------------------------------------------------- node

/// An inclusive slot range.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
pub struct SlotRange {
    /// First slot.
    pub start: u32,
    /// Last slot (inclusive).
    pub end: u32,
}

/// The last snapshot of a core.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotStatus {
    /// When it was installed, Unix milliseconds.
    pub unix_ms: u64,
    /// Entries.
    pub entries: u64,
    /// Size in bytes.
    pub bytes: u64,
}

/// One core.
#[derive(Debug, Serialize, ToSchema)]
pub struct CoreStatus {
    /// Core number.
    pub core: usize,
    /// The slots of its home ranges (where the node placed its ranges at
    /// start; in cluster mode a range may have moved since: see `ranges`).
    pub slots: SlotRange,
    /// Cluster mode: the ranges it hosts now (their slots are in
    /// `/v1/cluster`); standalone: its one range, its core number.
    pub ranges: Vec<u64>,
    /// Live keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub memory_bytes: u64,
    /// Bytes written to its WAL since start.
    pub wal_bytes: u64,
    /// WAL flushes (write + fdatasync) since start.
    pub wal_fsyncs: u64,
    /// True once its WAL refuses writes (after an I/O error).
    pub wal_poisoned: bool,
    /// Client connections open.
    pub connections_open: u64,
    /// Client requests answered since start.
    pub requests_total: u64,
    /// The last snapshot installed since start.
    pub last_snapshot: Option<SnapshotStatus>,
}

/// Listening addresses.
#[derive(Debug, Serialize, ToSchema)]
pub struct ListenAddrs {
    /// Client (flatbuffers) protocol.
    pub clients: String,
    /// Redis protocol, if served.
    pub resp: Option<String>,
    /// This admin plane.
    pub admin: String,
}

/// The node's status.
#[derive(Debug, Serialize, ToSchema)]
pub struct NodeStatus {
    /// Software version.
    pub version: String,
    /// Seconds since start.
    pub uptime_seconds: f64,
    /// Cores serving.
    pub cores: usize,
    /// Durability mode.
    pub durability: String,
    /// Data directory.
    pub data_dir: String,
    /// Addresses.
    pub listen: ListenAddrs,
    /// Live keys, all cores.
    pub keys: u64,
    /// Bytes of keys and values, all cores.
    pub memory_bytes: u64,
    /// Resident memory of the process.
    pub resident_memory_bytes: u64,
    /// Bytes written to the WALs since start.
    pub wal_bytes: u64,
    /// Client connections open.
    pub connections: u64,
    /// Each core.
    pub per_core: Vec<CoreStatus>,
}

async fn reports(node: &NodeHandle) -> ApiResult<Vec<CoreReport>> {
    node.call_all(|| CoreRequest::Report, STATUS_TIMEOUT)
        .await?
        .into_iter()
        .map(|answer| match answer {
            CoreResponse::Report(report) => Ok(*report),
            other => Err(unexpected(other)),
        })
        .collect()
}

/// Node status: cores, slots, keys, WAL, snapshots, uptime, version.
#[utoipa::path(get, path = "/v1/node", tag = "node",
    responses((status = 200, body = NodeStatus), (status = 503, body = ErrorBody)))]
async fn node_status(State(state): State<AppState>) -> ApiResult<Json<NodeStatus>> {
    let facts = state.node.facts();
    let reports = reports(&state.node).await?;
    // A cluster node reports its replicas (at least one range somewhere).
    let cluster_mode = reports.iter().any(|report| !report.ranges.is_empty());
    let per_core: Vec<CoreStatus> = reports
        .iter()
        .map(|report| {
            let (start, end) = facts.core_slots[report.core];
            let ranges = if !cluster_mode {
                vec![report.core as u64]
            } else {
                report.ranges.iter().map(|raft| raft.group).collect()
            };
            CoreStatus {
                core: report.core,
                slots: SlotRange { start, end },
                ranges,
                keys: report.keys,
                memory_bytes: report.data_bytes,
                wal_bytes: report.wal_bytes_written,
                wal_fsyncs: report.wal_fsyncs,
                wal_poisoned: report.wal_poisoned,
                connections_open: report.connections_open,
                requests_total: report.requests_total,
                last_snapshot: report.last_snapshot.map(|s| SnapshotStatus {
                    unix_ms: s.unix_ms,
                    entries: s.entries,
                    bytes: s.bytes,
                }),
            }
        })
        .collect();
    Ok(Json(NodeStatus {
        version: facts.version.clone(),
        uptime_seconds: now_unix_ms().saturating_sub(facts.started_unix_ms) as f64 / 1e3,
        cores: facts.cores,
        durability: facts.durability.clone(),
        data_dir: facts.data_dir.display().to_string(),
        listen: ListenAddrs {
            clients: facts.client_addr.to_string(),
            resp: facts.resp_addr.map(|addr| addr.to_string()),
            admin: state.admin_addr.to_string(),
        },
        keys: per_core.iter().map(|c| c.keys).sum(),
        memory_bytes: per_core.iter().map(|c| c.memory_bytes).sum(),
        resident_memory_bytes: crate::metrics::resident_memory_bytes().unwrap_or(0),
        wal_bytes: per_core.iter().map(|c| c.wal_bytes).sum(),
        connections: per_core.iter().map(|c| c.connections_open).sum(),
        per_core,
    }))
}

/// A node of the cluster.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterNode {
    /// Node id.
    pub id: u64,
    /// Client address (standalone), or the node's Raft address (cluster).
    pub address: String,
    /// Health as this node's probes see it: `up` (answered within 2 s on
    /// every core), `down` (silent or failing on some core), `unknown`
    /// (not probed yet). Always `up` for the node answering.
    pub state: String,
    /// Whether this is the node answering.
    pub is_self: bool,
    /// `voter`, or `learner` while it is being added.
    pub role: String,
    /// Milliseconds since it last answered a probe (peers only).
    pub last_seen_ms: Option<u64>,
    /// Round trip of its last probe answer, microseconds (peers only; the
    /// slowest core's).
    pub rtt_us: Option<u64>,
    /// Why its last probe failed, if it did.
    pub last_error: Option<String>,
    /// Where it serves, as it registered itself in the cluster metadata
    /// (cluster mode; absent until its registration is applied here).
    pub registered: Option<RegisteredAddresses>,
}

/// A node's addresses and make-up, from its record in the cluster
/// metadata.
#[derive(Debug, Serialize, ToSchema)]
pub struct RegisteredAddresses {
    /// Client (flatbuffers) address.
    pub client: String,
    /// Redis-protocol address, if it serves one.
    pub resp: Option<String>,
    /// Admin API address, if it serves one.
    pub admin: Option<String>,
    /// Its cores.
    pub cores: u32,
    /// The TinkerDB version it runs.
    pub version: String,
}

/// The cluster metadata group (cluster mode) as this node's replica sees
/// it: a Raft group of its own on core 0 of every node, holding the node
/// registry.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterMetadata {
    /// This node's role in the group.
    pub role: String,
    /// The group's leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners (nodes being added).
    pub learners: Vec<u64>,
    /// Last index this replica applied.
    pub applied_index: Option<u64>,
    /// Nodes registered, in id order (the members' own view of where they
    /// serve).
    pub registered_nodes: Vec<u64>,
    /// The range table: each range's replicas and leader as its leader
    /// last reported them, in range order (every range, also those this
    /// node does not hold).
    pub ranges: Vec<crate::report::RangeRecord>,
}

/// A member's progress as the shard's leader sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShardFollower {
    /// Node id.
    pub node: u64,
    /// Last log index it is known to hold.
    pub matched_index: Option<u64>,
    /// Entries it lacks behind the leader's log.
    pub lag: u64,
    /// Milliseconds since it last acknowledged the leader.
    pub last_ack_ms: Option<u64>,
}

/// A shard: a slot range replicated as one group.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterShard {
    /// This node's role in the group: `Leader`, `Follower`, `Candidate`,
    /// `Learner` (`Leader` on a standalone node).
    pub role: String,
    /// Last log index on this node's replica.
    pub last_log_index: Option<u64>,
    /// Last index this replica knows committed.
    pub committed_index: Option<u64>,
    /// Last index applied by this replica.
    pub applied_index: Option<u64>,
    /// Shard id (the range id).
    pub id: u64,
    /// The core of this node that hosts it.
    pub core: usize,
    /// Its slots.
    pub slots: SlotRange,
    /// Node id of the leader.
    pub leader: Option<u64>,
    /// Current term (0 without replication).
    pub term: u64,
    /// Node ids holding a replica (voters).
    pub replicas: Vec<u64>,
    /// Nodes being added (learners catching up).
    pub learners: Vec<u64>,
    /// Last log index covered by this node's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index purged from this node's log.
    pub purged_index: Option<u64>,
    /// Whether the group sleeps on this node: idle, its Raft timers
    /// parked (no heartbeats: a leader's `last_ack_ms` then grows while
    /// all is well); the first request wakes it.
    pub asleep: bool,
    /// The range's configuration epoch: the log index of the membership
    /// this node's replica uses, raised by every change of the replicas
    /// (0 on a standalone node). Requests will carry it once ranges move.
    pub epoch: u64,
    /// When this node leads the shard: each other member's progress.
    pub followers: Vec<ShardFollower>,
}

/// Cluster topology.
#[derive(Debug, Serialize, ToSchema)]
pub struct ClusterStatus {
    /// `standalone` (one node, each core one shard) or `raft` (each core's
    /// shard a Raft group over every node).
    pub mode: String,
    /// Nodes.
    pub nodes: Vec<ClusterNode>,
    /// Shards.
    pub shards: Vec<ClusterShard>,
    /// The cluster metadata group (cluster mode only).
    pub metadata: Option<ClusterMetadata>,
}

/// Cluster topology: nodes, shards, leaders, terms.
#[utoipa::path(get, path = "/v1/cluster", tag = "node",
    responses((status = 200, body = ClusterStatus), (status = 503, body = ErrorBody)))]
async fn cluster_status(State(state): State<AppState>) -> ApiResult<Json<ClusterStatus>> {
    let facts = state.node.facts();
    let reports = reports(&state.node).await?;
    if let Some(first) = reports.iter().find_map(|report| report.ranges.first()) {
        // Cluster mode: one Raft group per range, as this node's replicas
        // see them.
        let me = first.node_id;
        let nodes = cluster_nodes(me, &reports);
        let mut shards: Vec<ClusterShard> = reports
            .iter()
            .enumerate()
            .flat_map(|(core, report)| report.ranges.iter().map(move |raft| (core, raft)))
            .map(|(core, raft)| {
                let (start, end) = raft.slots;
                ClusterShard {
                    id: raft.group,
                    core,
                    slots: SlotRange { start, end },
                    leader: raft.leader,
                    term: raft.term,
                    replicas: raft.voters.iter().map(|(id, _)| *id).collect(),
                    learners: raft.learners.iter().map(|(id, _)| *id).collect(),
                    snapshot_index: raft.snapshot_index,
                    purged_index: raft.purged_index,
                    asleep: raft.asleep,
                    epoch: raft.epoch,
                    followers: raft
                        .followers
                        .iter()
                        .map(|f| ShardFollower {
                            node: f.node_id,
                            matched_index: f.matched_index,
                            lag: f.lag,
                            last_ack_ms: f.last_ack_ms,
                        })
                        .collect(),
                    role: raft.state.clone(),
                    last_log_index: raft.last_log_index,
                    committed_index: raft.committed_index,
                    applied_index: raft.applied_index,
                }
            })
            .collect();
        // In range order, whichever core hosts each (ranges move).
        shards.sort_by_key(|shard| shard.id);
        let metadata = reports
            .iter()
            .find_map(|report| report.metadata.as_ref())
            .map(|meta| ClusterMetadata {
                role: meta.state.clone(),
                leader: meta.leader,
                term: meta.term,
                voters: meta.voters.clone(),
                learners: meta.learners.clone(),
                applied_index: meta.applied_index,
                registered_nodes: meta.nodes.iter().map(|node| node.id).collect(),
                ranges: meta.ranges.clone(),
            });
        return Ok(Json(ClusterStatus {
            mode: "raft".into(),
            nodes,
            shards,
            metadata,
        }));
    }
    // A standalone node: each core's slot range is one shard that this node
    // leads.
    Ok(Json(ClusterStatus {
        mode: "standalone".into(),
        nodes: vec![ClusterNode {
            id: 1,
            address: facts.advertised_client.clone(),
            state: "up".into(),
            is_self: true,
            role: "voter".into(),
            last_seen_ms: None,
            rtt_us: None,
            last_error: None,
            registered: None,
        }],
        metadata: None,
        shards: facts
            .core_slots
            .iter()
            .enumerate()
            .map(|(core, &(start, end))| ClusterShard {
                id: core as u64,
                core,
                slots: SlotRange { start, end },
                leader: Some(1),
                term: 0,
                replicas: vec![1],
                learners: Vec::new(),
                snapshot_index: None,
                purged_index: None,
                asleep: false,
                epoch: 0,
                followers: Vec::new(),
                role: "Leader".into(),
                last_log_index: None,
                committed_index: None,
                applied_index: None,
            })
            .collect(),
    }))
}

/// The cluster's nodes as this node sees them: members from range 0's group
/// (every group has the same members once changes settle), health merged
/// over every core's probes (the worst state, the oldest answer).
fn cluster_nodes(me: u64, reports: &[CoreReport]) -> Vec<ClusterNode> {
    let mut nodes: BTreeMap<u64, ClusterNode> = BTreeMap::new();
    for raft in reports.iter().flat_map(|report| &report.ranges) {
        let members = raft
            .voters
            .iter()
            .map(|member| (member, "voter"))
            .chain(raft.learners.iter().map(|member| (member, "learner")));
        for ((id, addr), role) in members {
            nodes.entry(*id).or_insert_with(|| ClusterNode {
                id: *id,
                address: addr.clone(),
                state: if *id == me { "up" } else { "unknown" }.into(),
                is_self: *id == me,
                role: role.into(),
                last_seen_ms: None,
                rtt_us: None,
                last_error: None,
                registered: None,
            });
        }
    }
    let registry = reports.iter().find_map(|report| report.metadata.as_ref());
    for record in registry.map_or(&[][..], |meta| &meta.nodes[..]) {
        if let Some(node) = nodes.get_mut(&record.id) {
            node.registered = Some(RegisteredAddresses {
                client: record.client.clone(),
                resp: record.resp.clone(),
                admin: record.admin.clone(),
                cores: record.cores,
                version: record.version.clone(),
            });
        }
    }
    let rank = |state: &str| match state {
        "up" => 0,
        "unknown" => 1,
        _ => 2,
    };
    for (core, report) in reports.iter().enumerate() {
        // A core's probes are shared by its ranges: its first one has them.
        let Some(raft) = report.ranges.first() else {
            continue;
        };
        for peer in &raft.peers {
            let Some(node) = nodes.get_mut(&peer.node_id) else {
                continue;
            };
            if core == 0 || rank(&peer.state) > rank(&node.state) {
                node.state = peer.state.clone();
            }
            node.last_seen_ms = node.last_seen_ms.max(peer.last_seen_ms);
            node.rtt_us = node.rtt_us.max(peer.rtt_us);
            if peer.last_error.is_some() {
                node.last_error = peer.last_error.clone();
            }
        }
    }
    nodes.into_values().collect()
}

/// A node to add to the cluster.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddNodeBody {
    /// Its node id (unique, at least 1).
    #[schema(minimum = 1)]
    pub id: u64,
    /// Its Raft address (`HOST:PORT`): one port, whatever its core count.
    pub raft: String,
    /// Its number of cores. Times its ranges per core, it must give this
    /// node's number of ranges (every node holds every range, with the
    /// same slots); the core count itself may differ.
    #[schema(minimum = 1)]
    pub cores: usize,
    /// Its databases per tenant: must equal this node's (the Raft log
    /// names databases as `tenant/n`). Absent: 16, the default.
    #[serde(default = "default_databases")]
    #[schema(minimum = 1, maximum = 256)]
    pub databases: u16,
    /// Its ranges per core (see `cores`). Absent: 1, the default.
    #[serde(default = "default_ranges_per_core")]
    #[schema(minimum = 1, maximum = 256)]
    pub ranges_per_core: usize,
}

fn default_ranges_per_core() -> usize {
    1
}

fn default_databases() -> u16 {
    16
}

/// Every shard's voters after a membership change.
#[derive(Debug, Serialize, ToSchema)]
pub struct MembershipBody {
    /// The node added or removed.
    pub node: u64,
    /// Per shard (range order): its voters once the change committed.
    pub voters: Vec<Vec<u64>>,
}

/// Adds a node to every shard's group: it joins as a learner, catches up
/// (by log, or by snapshot when the log was purged), then becomes a voter
/// through joint consensus. Idempotent: a voter already is one. What
/// `tinkerdb --join` calls.
#[utoipa::path(post, path = "/v1/cluster/nodes", tag = "node", request_body = AddNodeBody,
    responses((status = 200, body = MembershipBody), (status = 400, body = ErrorBody),
              (status = 409, description = "A standalone node", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn add_node(
    State(state): State<AppState>,
    body: Result<Json<AddNodeBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<MembershipBody>> {
    let Json(body) = body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let cores = state.node.cores();
    if body.id == 0 {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "node ids start at 1",
        ));
    }
    // Every node holds every range (the same slots each: the same number
    // of ranges), wherever its cores put them; the Raft log names
    // databases. A node that differs in either cannot join.
    let facts = state.node.facts();
    for (theirs, ours, what) in [
        (
            body.cores.saturating_mul(body.ranges_per_core),
            cores * facts.ranges_per_core,
            "ranges (cores x ranges per core)",
        ),
        (
            usize::from(body.databases),
            usize::from(facts.databases),
            "databases per tenant",
        ),
    ] {
        if theirs != ours {
            return Err(ApiError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "node {} has {theirs} {what}; this cluster's nodes have {ours} (every node holds every range, and the Raft log names databases)",
                    body.id
                ),
            ));
        }
    }
    // HOST:PORT: an IP or a host name (resolved by the members whenever
    // they connect, so it may name a container that changes IP).
    body.raft
        .rsplit_once(':')
        .filter(|(host, _)| !host.is_empty())
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .filter(|&port| port != 0)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("raft: {:?} is not a HOST:PORT address", body.raft),
            )
        })?;
    let raft = body.raft.trim().to_owned();
    change_membership(&state, body.id, || CoreRequest::AddMember {
        id: body.id,
        raft: raft.clone(),
    })
    .await
}

/// Removes a node from every shard's group (through joint consensus); a
/// node that is not a member is not changed. Removing the leader moves
/// leadership to another voter. The removed node can then be stopped.
#[utoipa::path(delete, path = "/v1/cluster/nodes/{id}", tag = "node",
    params(("id" = u64, Path, description = "Node id")),
    responses((status = 200, body = MembershipBody), (status = 400, body = ErrorBody),
              (status = 409, description = "A standalone node", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn remove_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<MembershipBody>> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("{id:?} is not a node id"),
        )
    })?;
    change_membership(&state, id, || CoreRequest::RemoveMember { id }).await
}

async fn change_membership(
    state: &AppState,
    node: u64,
    request: impl Fn() -> CoreRequest,
) -> ApiResult<Json<MembershipBody>> {
    let answers = state
        .node
        .call_all(request, crate::link::MEMBERSHIP_CALL_TIMEOUT)
        .await?;
    let voters = answers
        .into_iter()
        .map(|answer| match answer {
            CoreResponse::Members(voters) => Ok(voters),
            other => Err(ApiError::new(
                ErrorCode::Internal,
                format!("unexpected core answer {other:?}"),
            )),
        })
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .flatten()
        .collect();
    Ok(Json(MembershipBody { node, voters }))
}

/// Where a range should move.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RangeMoveRequest {
    /// The core of this node to host the range.
    pub core: usize,
}

/// A range move that happened.
#[derive(Debug, Serialize, ToSchema)]
pub struct RangeMoveBody {
    /// The range.
    pub range: usize,
    /// The core that hosted it.
    pub from_core: usize,
    /// The core that hosts it now.
    pub to_core: usize,
    /// Bytes of Raft log handed over (the entries since its snapshot).
    pub log_bytes: usize,
    /// How long the move took, stop to start.
    pub elapsed_ms: u64,
    /// Set when the range moved but its group did not start there (its
    /// requests are refused until the node restarts), or the target's
    /// answer was lost: what happened.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Moves a range's replica on this node to another of its cores, without
/// a restart (cluster mode). The replica stops on its core (handing its
/// leadership to another node first), its log and snapshots go to the
/// target core, and it starts there; its requests wait meanwhile and are
/// then served there. The node records the placement, so a restart keeps
/// it. Nothing travels over the network: the other nodes see this
/// replica pause. One move at a time per node.
#[utoipa::path(post, path = "/v1/ranges/{range}/move", tag = "node", request_body = RangeMoveRequest,
    params(("range" = usize, Path, description = "Range id")),
    responses((status = 200, body = RangeMoveBody), (status = 400, body = ErrorBody),
              (status = 409, description = "A standalone node", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn move_range(
    State(state): State<AppState>,
    Path(range): Path<String>,
    body: Result<Json<RangeMoveRequest>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<RangeMoveBody>> {
    let Json(body) = body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let range: usize = range.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidArgument,
            format!("{range:?} is not a range id"),
        )
    })?;
    let cores = state.node.cores();
    if body.core >= cores {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "core {} does not exist: this node has cores 0..{cores}",
                body.core
            ),
        ));
    }
    // In a task of its own: a caller that hangs up does not cut a move
    // between its steps (nor release the one-move lock while they run).
    let task_state = state.clone();
    let to_core = body.core;
    tokio::spawn(async move { run_move(&task_state, range, to_core).await })
        .await
        .map_err(|error| {
            ApiError::new(
                ErrorCode::Internal,
                format!("the move task failed: {error}"),
            )
        })?
}

/// The steps of a range move (see [`move_range`]), one move at a time.
async fn run_move(
    state: &AppState,
    range: usize,
    to_core: usize,
) -> ApiResult<Json<RangeMoveBody>> {
    let body = RangeMoveRequest { core: to_core };
    let _one_at_a_time = state.moves.lock().await;
    let started = std::time::Instant::now();
    let timeout = crate::link::RANGE_MOVE_CALL_TIMEOUT;
    let from_core = match state
        .node
        .call_within(0, CoreRequest::LocateRange { range }, timeout)
        .await?
    {
        CoreResponse::RangeAt { core } => core,
        other => return Err(unexpected(other)),
    };
    if from_core == body.core {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("range {range} is on core {from_core} already"),
        ));
    }
    let export = CoreRequest::ExportRange {
        range,
        to_core: body.core,
    };
    let (log, snapshots) = match state.node.call_within(from_core, export, timeout).await? {
        CoreResponse::RangeExported { log, snapshots } => (log, snapshots),
        other => return Err(unexpected(other)),
    };
    let log_bytes = log.len();
    let import = CoreRequest::ImportRange {
        range,
        log,
        snapshots,
    };
    let imported = state.node.call_within(body.core, import, timeout).await;
    // Whatever the import did, the source ends the move: it drops its copy
    // if the range moved, or starts it again.
    let settled = state
        .node
        .call_within(from_core, CoreRequest::SettleRangeMove { range }, timeout)
        .await;
    let moved = match settled {
        Ok(CoreResponse::RangeSettled { moved }) => moved,
        Ok(other) => return Err(unexpected(other)),
        Err(error) => return Err(error),
    };
    let done = |note: Option<String>| {
        Json(RangeMoveBody {
            range,
            from_core,
            to_core: body.core,
            log_bytes,
            elapsed_ms: started.elapsed().as_millis() as u64,
            note,
        })
    };
    match imported {
        Ok(CoreResponse::Done) if moved => Ok(done(None)),
        // The source saw the route switch: the range is on the target,
        // whatever the target answered (its group did not start, or the
        // answer was lost).
        Err(error) if moved => Ok(done(Some(error.to_string()))),
        Ok(CoreResponse::Done) => Err(ApiError::new(
            ErrorCode::Unavailable,
            format!(
                "range {range}: the source core gave the move up; it stays on core {from_core}"
            ),
        )),
        Ok(other) => Err(unexpected(other)),
        Err(error) => Err(error),
    }
}

// ---------------------------------------------------------------- tenants

/// A tenant's quota (null: unlimited).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Most keys.
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// Most key + value bytes.
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

/// A tenant's usage.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageBody {
    /// Live keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
    /// Client requests answered since the node started.
    pub requests_total: u64,
}

/// A tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantStatus {
    /// Name.
    pub name: String,
    /// Quota.
    pub quota: QuotaBody,
    /// Usage now.
    pub usage: UsageBody,
}

/// Every tenant.
#[derive(Debug, Serialize, ToSchema)]
pub struct TenantList {
    /// Tenants, in creation order.
    pub tenants: Vec<TenantStatus>,
}

/// A tenant to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// Name: 1-64 bytes of `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{1,64}$")]
    pub name: String,
    /// Most keys (absent or null: unlimited).
    #[serde(default)]
    pub max_keys: Option<u64>,
    /// Most key + value bytes (absent or null: unlimited).
    #[serde(default)]
    pub max_bytes: Option<u64>,
}

async fn usage_by_tenant(node: &NodeHandle) -> ApiResult<Vec<Usage>> {
    let mut total: Vec<Usage> = Vec::new();
    for answer in node
        .call_all(|| CoreRequest::TenantUsage, STATUS_TIMEOUT)
        .await?
    {
        let CoreResponse::Usage(usage) = answer else {
            return Err(unexpected(answer));
        };
        if total.len() < usage.len() {
            total.resize(usage.len(), Usage::default());
        }
        for (sum, core) in total.iter_mut().zip(usage) {
            sum.keys += core.keys;
            sum.bytes += core.bytes;
        }
    }
    Ok(total)
}

fn tenant_status(spec: &TenantSpec, usage: Usage, requests_total: u64) -> TenantStatus {
    TenantStatus {
        name: spec.name.clone(),
        quota: QuotaBody {
            max_keys: spec.max_keys,
            max_bytes: spec.max_bytes,
        },
        usage: UsageBody {
            keys: usage.keys,
            bytes: usage.bytes,
            requests_total,
        },
    }
}

/// Lists tenants with their quotas and usage.
#[utoipa::path(get, path = "/v1/tenants", tag = "tenants",
    responses((status = 200, body = TenantList), (status = 503, body = ErrorBody)))]
async fn list_tenants(State(state): State<AppState>) -> ApiResult<Json<TenantList>> {
    let tenants = state.node.tenants().lock().await.clone();
    let usage = usage_by_tenant(&state.node).await?;
    let reports = reports(&state.node).await?;
    let requests = |id: usize| -> u64 {
        reports
            .iter()
            .map(|report| report.tenant_requests.get(id).copied().unwrap_or(0))
            .sum()
    };
    Ok(Json(TenantList {
        tenants: tenants
            .iter()
            .enumerate()
            .filter(|(_, spec)| !spec.deleted)
            .map(|(id, spec)| {
                tenant_status(
                    spec,
                    usage.get(id).copied().unwrap_or_default(),
                    requests(id),
                )
            })
            .collect(),
    }))
}

/// Saves `tenants` durably, then installs them on every core.
async fn publish_tenants(node: &NodeHandle, tenants: &[TenantSpec]) -> ApiResult<()> {
    let data_dir = node.facts().data_dir.clone();
    let to_save = tenants.to_vec();
    tokio::task::spawn_blocking(move || save(&data_dir, &to_save))
        .await
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?
        .map_err(|error| {
            ApiError::new(
                ErrorCode::StorageFailed,
                format!("cannot save the tenant list: {error}"),
            )
        })?;
    let shared = Arc::new(tenants.to_vec());
    node.call_all(
        || CoreRequest::InstallTenants(shared.clone()),
        STATUS_TIMEOUT,
    )
    .await?;
    Ok(())
}

/// Creates a tenant (saved in the data directory; survives restarts).
#[utoipa::path(post, path = "/v1/tenants", tag = "tenants", request_body = NewTenant,
    responses(
        (status = 201, body = TenantStatus),
        (status = 400, body = ErrorBody),
        (status = 503, body = ErrorBody),
        (status = 409, description = "The tenant exists, or the node is in a cluster (tenants come from every node's config there)", body = ErrorBody)))]
async fn create_tenant(
    State(state): State<AppState>,
    body: Result<Json<NewTenant>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<(StatusCode, Json<TenantStatus>)> {
    let Json(new) = body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    refuse_tenant_change_in_cluster(&state, "created")?;
    if !valid_tenant_name(&new.name) {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!(
                "tenant name {:?} must be 1-64 bytes of [A-Za-z0-9_.-]",
                new.name
            ),
        ));
    }
    let mut tenants = state.node.tenants().lock().await;
    if tenants
        .iter()
        .any(|spec| spec.name == new.name && !spec.deleted)
    {
        return Err(ApiError::new(
            ErrorCode::TenantExists,
            format!("tenant {:?} already exists", new.name),
        ));
    }
    let spec = TenantSpec {
        name: new.name,
        max_keys: new.max_keys,
        max_bytes: new.max_bytes,
        deleted: false,
    };
    let mut changed = tenants.clone();
    // A deleted tenant of that name comes back at its old id, flushed once
    // more first: whatever its deletion left (a crash before its flush, a
    // flush that failed), the log then holds a flush after every record of
    // the old tenant, so neither now nor after a restart does it show.
    match changed.iter_mut().find(|known| known.name == spec.name) {
        Some(tombstone) => {
            flush_tenant(&state, &spec.name).await?;
            *tombstone = spec.clone();
        }
        None => changed.push(spec.clone()),
    }
    publish_tenants(&state.node, &changed).await?;
    *tenants = changed;
    Ok((
        StatusCode::CREATED,
        Json(tenant_status(&spec, Usage::default(), 0)),
    ))
}

/// `DELETE /v1/tenants/{tenant}` options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct DeleteTenantQuery {
    /// Delete it even if it holds keys (they are removed).
    #[serde(default)]
    pub force: bool,
}

/// What deleting a tenant did.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedTenant {
    /// The tenant.
    pub deleted: String,
    /// Keys removed with it (every database).
    pub keys_removed: u64,
}

/// Longest the removal of a deleted tenant's keys may take.
pub const TENANT_FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// Removes every key of tenant `name` (deleted or not) on every range.
async fn flush_tenant(state: &AppState, name: &str) -> ApiResult<u64> {
    let core = state.node.any_core();
    let request = CoreRequest::FlushTenant {
        tenant: name.to_owned(),
    };
    match state
        .node
        .call_within(core, request, TENANT_FLUSH_TIMEOUT)
        .await?
    {
        CoreResponse::Flushed(removed) => Ok(removed),
        CoreResponse::Failed(error) => Err(error),
        other => Err(unexpected(other)),
    }
}

/// Deletes a tenant: refused for `default`, for a tenant users act for,
/// and for one that holds keys unless `force`; refused in cluster mode
/// (tenants are per node there: a flush through Raft would reach the
/// other nodes' live tenant). Its name is unknown from then on (open
/// sessions bound to it are refused at their next request), then its keys
/// are removed; it can be created again, empty. Deleting a deleted tenant
/// runs its flush again (finishing a deletion a crash interrupted).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}", tag = "tenants",
    params(("tenant" = String, Path, description = "Tenant name"), DeleteTenantQuery),
    responses((status = 200, body = DeletedTenant),
              (status = 400, description = "The default tenant", body = ErrorBody),
              (status = 404, body = ErrorBody),
              (status = 409, description = "It holds keys (without force), users act for it, or the node is in a cluster", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn delete_tenant(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    query: Result<Query<DeleteTenantQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<DeletedTenant>> {
    let Query(query) =
        query.map_err(|error| ApiError::new(ErrorCode::InvalidArgument, error.body_text()))?;
    if tenant == "default" {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "the default tenant cannot be deleted",
        ));
    }
    if state.node.facts().cluster {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "tenants cannot be deleted in cluster mode yet: each node keeps its own tenant \
             list, and the flush would reach the other nodes' tenant through Raft",
        ));
    }
    // Held to the end: no create or delete of a tenant runs meanwhile.
    let mut tenants = state.node.tenants().lock().await;
    let Some(index) = tenants.iter().position(|spec| spec.name == tenant) else {
        return Err(unknown_tenant(&tenant));
    };
    if tenants[index].deleted {
        let keys_removed = flush_tenant(&state, &tenant).await?;
        return Ok(Json(DeletedTenant {
            deleted: tenant,
            keys_removed,
        }));
    }
    let users: Vec<String> = state
        .node
        .users()
        .list()
        .iter()
        .filter(|user| user.tenant == tenant)
        .map(|user| user.name.clone())
        .collect();
    if !users.is_empty() {
        return Err(ApiError::new(
            ErrorCode::TenantInUse,
            format!(
                "users act for tenant {tenant:?}: {}; give them another tenant or delete them first",
                users.join(", ")
            ),
        ));
    }
    let keys = usage_by_tenant(&state.node)
        .await?
        .get(index)
        .map_or(0, |usage| usage.keys);
    if keys > 0 && !query.force {
        return Err(ApiError::new(
            ErrorCode::TenantNotEmpty,
            format!(
                "tenant {tenant:?} holds {keys} keys: delete it with force=true to remove them too"
            ),
        ));
    }
    // The tombstone first (no session adds keys after it: the front ends
    // and the shards refuse a deleted tenant's writes), then the keys.
    let mut changed = tenants.clone();
    changed[index].deleted = true;
    publish_tenants(&state.node, &changed).await?;
    *tenants = changed;
    let keys_removed = flush_tenant(&state, &tenant).await?;
    Ok(Json(DeletedTenant {
        deleted: tenant,
        keys_removed,
    }))
}

/// Changes a tenant's quota. Keys over a lowered quota stay; new writes are
/// refused until usage is under it.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/quota", tag = "tenants", request_body = QuotaBody,
    params(("tenant" = String, Path, description = "Tenant name")),
    responses((status = 200, body = QuotaBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The node is in a cluster (quotas come from every node's config there)", body = ErrorBody)))]
async fn set_quota(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    body: Result<Json<QuotaBody>, axum::extract::rejection::JsonRejection>,
) -> ApiResult<Json<QuotaBody>> {
    let Json(quota) = body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    refuse_tenant_change_in_cluster(&state, "given another quota")?;
    let mut tenants = state.node.tenants().lock().await;
    let Some(index) = tenants
        .iter()
        .position(|spec| spec.name == tenant && !spec.deleted)
    else {
        return Err(unknown_tenant(&tenant));
    };
    let mut changed = tenants.clone();
    changed[index].max_keys = quota.max_keys;
    changed[index].max_bytes = quota.max_bytes;
    publish_tenants(&state.node, &changed).await?;
    *tenants = changed;
    Ok(Json(quota))
}

/// Refuses a runtime change of the tenants on a cluster node. Each node
/// keeps its own tenant list and quotas, and every replica judges a
/// replicated write against its own: a tenant made, or a quota changed, on
/// one node only would make the replicas of a range apply the same entry
/// differently (one writes, another refuses) and diverge. Until the cluster
/// metadata group keeps tenants (issue "Scale-out"), a cluster's tenants
/// and quotas come from the same `[[tenants]]` in every node's config.
fn refuse_tenant_change_in_cluster(state: &AppState, what: &str) -> Result<(), ApiError> {
    if state.node.facts().cluster {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            format!(
                "tenants cannot be {what} at runtime in cluster mode yet: every replica \
                 judges a write by its own node's tenants and quotas, so they must be the same \
                 on every node; define them in every node's config file ([[tenants]])"
            ),
        ));
    }
    Ok(())
}

/// The error for a tenant name the node does not know.
pub fn unknown_tenant(tenant: &str) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownTenant,
        format!("tenant {tenant:?} is not defined on this node"),
    )
}

// ---------------------------------------------------------------- keys

/// A value read.
#[derive(Debug, Serialize, ToSchema)]
pub struct ValueBody {
    /// The key.
    pub key: String,
    /// The value: as text if it is UTF-8, else base64.
    pub value: String,
    /// `utf8` or `base64`.
    pub encoding: String,
    /// Version of the write that stored it.
    pub version: u64,
    /// Milliseconds left to live (null: no expiry).
    pub ttl_ms: Option<u64>,
}

/// A write's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct WrittenBody {
    /// Version of the write.
    pub version: u64,
}

/// A delete's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeletedBody {
    /// Whether the key existed.
    pub deleted: bool,
}

/// One page of a scan.
#[derive(Debug, Serialize, ToSchema)]
pub struct ScanPage {
    /// Keys (non-UTF-8 bytes replaced by U+FFFD).
    pub keys: Vec<String>,
    /// Pass back as `cursor` to continue; null when the scan is complete.
    pub cursor: Option<String>,
}

/// How a read sees a replicated shard.
#[derive(Debug, Clone, Copy, Default, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Sees every write acknowledged before the read began (read index).
    #[default]
    Linearizable,
    /// Cluster mode: this node's replica as it is, without asking the
    /// shard's leader; possibly behind, but answers without a quorum.
    Stale,
}

/// Read options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct GetQuery {
    /// `linearizable` (default) or `stale`.
    pub consistency: Option<Consistency>,
}

/// Write options.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PutQuery {
    /// Time to live in milliseconds (absent: no expiry).
    pub ttl_ms: Option<u64>,
}

/// Scan parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ScanQuery {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Cursor from the previous page (absent: start).
    #[param(pattern = "^[0-9]{0,5}$")]
    pub cursor: Option<String>,
    /// Keys wanted, 1-1000 (default 100). A page may hold a few more or
    /// fewer: a step always ends on a slot boundary.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<usize>,
}

async fn key_call(state: &AppState, tenant: String, op: KeyOp) -> ApiResult<CoreResponse> {
    let core = state.node.any_core();
    state.node.call(core, CoreRequest::Key { tenant, op }).await
}

fn check_key(state: &AppState, key: &str) -> ApiResult<()> {
    let max = state.node.facts().max_key_bytes;
    if key.is_empty() {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            "the key is empty",
        ));
    }
    if key.len() > max {
        return Err(ApiError::new(
            ErrorCode::KeyTooLarge,
            format!("key of {} bytes is over max_key_bytes ({max})", key.len()),
        ));
    }
    Ok(())
}

fn value_body(key: String, stored: StoredValue) -> ValueBody {
    let (value, encoding) = match std::str::from_utf8(&stored.value) {
        Ok(text) => (text.to_owned(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(&stored.value),
            "base64",
        ),
    };
    ValueBody {
        key,
        value,
        encoding: encoding.into(),
        version: stored.version,
        ttl_ms: stored
            .expires_at_ms
            .map(|at| at.saturating_sub(now_unix_ms())),
    }
}

/// Reads a key.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys/{key}", tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("key" = String, Path, description = "Key (URL-encoded)"), GetQuery),
    responses((status = 200, body = ValueBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn get_key(
    State(state): State<AppState>,
    Path((tenant, key)): Path<(String, String)>,
    query: Result<Query<GetQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ValueBody>> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    check_key(&state, &key)?;
    let op = KeyOp::Get {
        key: Bytes::from(key.clone()),
        stale: query.consistency == Some(Consistency::Stale),
    };
    match key_call(&state, tenant, op).await? {
        CoreResponse::Value(Some(stored)) => Ok(Json(value_body(key, stored))),
        CoreResponse::Value(None) => Err(ApiError::new(
            ErrorCode::KeyNotFound,
            format!("key {key:?} does not exist"),
        )),
        other => Err(unexpected(other)),
    }
}

/// Bytes of an oversized request body read and dropped before the `413`
/// is sent: a client still writing its body then reads the answer instead
/// of a reset connection (hyper closes a connection whose request body was
/// left unread). A body larger still is cut off there.
pub const MAX_DRAINED_BODY_BYTES: usize = 64 << 20;

/// A key's value from a request body: at most `max` bytes kept; a longer
/// body is read on (and dropped) up to [`MAX_DRAINED_BODY_BYTES`], then
/// answered `value_too_large`.
async fn read_value(body: axum::body::Body, max: usize) -> Result<Bytes, ApiError> {
    use futures::StreamExt;
    let mut stream = body.into_data_stream();
    let mut value = bytes::BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("cannot read the body: {error}"),
            )
        })?;
        total = total.saturating_add(chunk.len());
        if total <= max {
            value.extend_from_slice(&chunk);
        } else if total > MAX_DRAINED_BODY_BYTES {
            break;
        }
    }
    if total > max {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!("the value is over max_value_bytes ({max})"),
        ));
    }
    Ok(value.freeze())
}

/// Writes a key; the request body is the value. Answered once the write is
/// as durable as the node's durability mode promises.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/keys/{key}", tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("key" = String, Path, description = "Key (URL-encoded)"), PutQuery),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The value"),
    responses((status = 200, body = WrittenBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 429, description = "Quota exceeded", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn put_key(
    State(state): State<AppState>,
    Path((tenant, key)): Path<(String, String)>,
    query: Result<Query<PutQuery>, axum::extract::rejection::QueryRejection>,
    body: axum::body::Body,
) -> ApiResult<Json<WrittenBody>> {
    let max = state.node.facts().max_value_bytes;
    // Read first, even when the key or query is bad: an answer sent while
    // the client still writes its body reaches it as a reset connection.
    let value = read_value(body, max).await;
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    check_key(&state, &key)?;
    let value = value?;
    if value.len() > max {
        return Err(ApiError::new(
            ErrorCode::ValueTooLarge,
            format!(
                "value of {} bytes is over max_value_bytes ({max})",
                value.len()
            ),
        ));
    }
    let op = KeyOp::Put {
        key: Bytes::from(key),
        value,
        ttl_ms: query.ttl_ms.unwrap_or(0),
    };
    match key_call(&state, tenant, op).await? {
        CoreResponse::Written { version } => Ok(Json(WrittenBody { version })),
        other => Err(unexpected(other)),
    }
}

/// Deletes a key.
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/keys/{key}", tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"),
           ("key" = String, Path, description = "Key (URL-encoded)")),
    responses((status = 200, body = DeletedBody), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
              (status = 413, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_key(
    State(state): State<AppState>,
    Path((tenant, key)): Path<(String, String)>,
) -> ApiResult<Json<DeletedBody>> {
    check_key(&state, &key)?;
    let op = KeyOp::Delete {
        key: Bytes::from(key),
    };
    match key_call(&state, tenant, op).await? {
        CoreResponse::Deleted(deleted) => Ok(Json(DeletedBody { deleted })),
        other => Err(unexpected(other)),
    }
}

/// One page of a cursor scan over a tenant's keys.
#[utoipa::path(get, path = "/v1/tenants/{tenant}/keys", tag = "keys",
    params(("tenant" = String, Path, description = "Tenant name"), ScanQuery),
    responses((status = 200, body = ScanPage), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn scan_keys(
    State(state): State<AppState>,
    Path(tenant): Path<String>,
    query: Result<Query<ScanQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<ScanPage>> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let limit = query.limit.unwrap_or(DEFAULT_SCAN_PAGE_KEYS);
    if !(1..=MAX_SCAN_PAGE_KEYS).contains(&limit) {
        return Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("limit must be 1 to {MAX_SCAN_PAGE_KEYS}"),
        ));
    }
    let cursor = match query.cursor.as_deref() {
        None | Some("") => 0,
        Some(text) => text.parse::<u32>().map_err(|_| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                "cursor is not one this API returned",
            )
        })?,
    };
    let op = KeyOp::Scan {
        prefix: Bytes::from(query.prefix.unwrap_or_default()),
        cursor,
        limit,
    };
    match key_call(&state, tenant, op).await? {
        CoreResponse::Scanned { keys, next_cursor } => Ok(Json(ScanPage {
            keys: keys
                .iter()
                .map(|key| String::from_utf8_lossy(key).into_owned())
                .collect(),
            cursor: next_cursor.map(|cursor| cursor.to_string()),
        })),
        other => Err(unexpected(other)),
    }
}

/// What a TLS reload did.
#[derive(Debug, Serialize, ToSchema)]
pub struct TlsReloadBody {
    /// Always true: new connections on every listener (clients, RESP,
    /// admin, peers) use the certificates just read; open ones keep theirs.
    pub reloaded: bool,
}

/// Reads the node's certificate, key and CA files again (as SIGHUP does).
/// On an error the node keeps serving the certificates it had.
#[utoipa::path(post, path = "/v1/tls/reload", tag = "node",
    responses((status = 200, body = TlsReloadBody),
              (status = 400, description = "A file is missing or wrong; nothing changed", body = ErrorBody),
              (status = 409, description = "The node has no [tls] table", body = ErrorBody)))]
async fn reload_tls(State(state): State<AppState>) -> ApiResult<Json<TlsReloadBody>> {
    let Some(tls) = state.tls.clone() else {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "this node has no [tls] table: nothing to reload",
        ));
    };
    // Reading PEM files blocks: off the admin runtime's worker.
    let outcome = tokio::task::spawn_blocking(move || tls.reload())
        .await
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?;
    match outcome {
        Ok(()) => Ok(Json(TlsReloadBody { reloaded: true })),
        Err(error) => Err(ApiError::new(
            ErrorCode::InvalidArgument,
            format!("certificates not reloaded (the old ones stay): {error}"),
        )),
    }
}

/// A snapshot's outcome.
#[derive(Debug, Serialize, ToSchema)]
pub struct SnapshotBody {
    /// Entries written, all cores.
    pub entries: u64,
    /// Bytes written, all cores.
    pub bytes: u64,
}

/// Takes a snapshot of every core now (answers when all are installed).
#[utoipa::path(post, path = "/v1/snapshot", tag = "node",
    responses((status = 200, body = SnapshotBody), (status = 409, description = "Durability none: no snapshots", body = ErrorBody),
              (status = 503, body = ErrorBody)))]
async fn take_snapshot(State(state): State<AppState>) -> ApiResult<Json<SnapshotBody>> {
    if state.node.facts().durability == "none" {
        return Err(ApiError::new(
            ErrorCode::Unsupported,
            "durability is none: this node keeps no files, so it takes no snapshots",
        ));
    }
    let core = state.node.any_core();
    // Writing every core's keys can take a while on a big node.
    match state
        .node
        .call_within(core, CoreRequest::Snapshot, Duration::from_secs(300))
        .await?
    {
        CoreResponse::Snapshotted { entries, bytes } => Ok(Json(SnapshotBody { entries, bytes })),
        other => Err(unexpected(other)),
    }
}

// ---------------------------------------------------------------- stats

/// Live series parameters.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LiveQuery {
    /// Only samples with a larger `seq` (absent: all kept).
    pub since: Option<u64>,
}

/// The dashboard's live series.
#[derive(Debug, Serialize, ToSchema)]
pub struct LiveBody {
    /// When the node started, Unix milliseconds: sequence numbers restart
    /// with the node, so a client that sees this change starts over.
    pub started_unix_ms: u64,
    /// Milliseconds between samples.
    pub interval_ms: u64,
    /// Samples, oldest first (at most 300).
    pub samples: Vec<Sample>,
}

/// Per-second throughput and latency of the node and each core.
#[utoipa::path(get, path = "/v1/stats/live", tag = "stats", params(LiveQuery),
    responses((status = 200, body = LiveBody), (status = 400, description = "A malformed query", body = ErrorBody)))]
async fn live_stats(
    State(state): State<AppState>,
    query: Result<Query<LiveQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<Json<LiveBody>> {
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let samples = state
        .live
        .lock()
        .expect("live series lock")
        .since(query.since);
    Ok(Json(LiveBody {
        started_unix_ms: state.node.facts().started_unix_ms,
        interval_ms: crate::live::SAMPLE_INTERVAL.as_millis() as u64,
        samples,
    }))
}

/// Prometheus metrics (text format 0.0.4).
#[utoipa::path(get, path = "/metrics", tag = "stats",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain")))]
async fn metrics(State(state): State<AppState>) -> ApiResult<Response> {
    let reports = reports(&state.node).await?;
    let tenants = state.node.tenants().lock().await.clone();
    let usage = usage_by_tenant(&state.node).await?;
    let text = render(&Scrape {
        facts: state.node.facts(),
        reports: &reports,
        tenants: &tenants,
        usage: &usage,
    });
    Ok(([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response())
}

// ---------------------------------------------------------------- router

/// The OpenAPI document of this API.
#[derive(OpenApi)]
#[openapi(
    info(title = "TinkerDB admin API", description = "Node status, tenants, keys, snapshots and metrics of one TinkerDB node. Errors are `{\"error\": {\"code\", \"message\"}}` with a stable code."),
    paths(health, ready, node_status, cluster_status, add_node, remove_node, move_range, list_tenants, create_tenant, delete_tenant, set_quota,
          get_key, put_key, delete_key, scan_keys, take_snapshot, reload_tls, live_stats, metrics,
          crate::access::list_users, crate::access::create_user, crate::access::change_user,
          crate::access::delete_user, crate::access::create_token, crate::access::revoke_tokens),
    components(schemas(ErrorBody, ApiError, ErrorCode, TenantSpec, Consistency)),
    tags((name = "node"), (name = "tenants"), (name = "keys"), (name = "stats"), (name = "users"))
)]
pub struct ApiDoc;

/// The OpenAPI document as pretty JSON (what `/v1/openapi.json` serves;
/// checked in as `docs/openapi.json`, kept current by a test).
pub fn openapi_json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.to_pretty_json()
        .expect("the OpenAPI document serializes")
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], openapi_json()).into_response()
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route; see /v1/openapi.json")
}

/// An admin request slower than this is logged at `info`.
pub const SLOW_ADMIN_REQUEST: Duration = Duration::from_millis(500);

/// One span per admin request (the slow path: the client data path has no
/// per-request span or log line). Server errors are logged at `warn`, slow
/// requests at `info`, the rest at `debug`.
async fn trace_request(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use tracing::Instrument;
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("admin_request", %method, %path);
    let started = std::time::Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed_ms = started.elapsed().as_millis() as u64;
    let status = response.status().as_u16();
    let _entered = span.enter();
    if response.status().is_server_error() {
        tracing::warn!(status, elapsed_ms, "admin request failed");
    } else if started.elapsed() > SLOW_ADMIN_REQUEST {
        tracing::info!(status, elapsed_ms, "slow admin request");
    } else {
        tracing::debug!(status, elapsed_ms, "admin request");
    }
    response
}

/// Every route, the dashboard's included.
pub fn router(state: AppState) -> Router {
    let body_limit = state.node.facts().max_value_bytes + 1;
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/metrics", get(metrics))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/node", get(node_status))
        .route("/v1/cluster", get(cluster_status))
        .route("/v1/cluster/nodes", post(add_node))
        .route("/v1/cluster/nodes/{id}", delete(remove_node))
        .route("/v1/ranges/{range}/move", post(move_range))
        .route("/v1/tenants", get(list_tenants).post(create_tenant))
        .route("/v1/tenants/{tenant}", delete(delete_tenant))
        .route("/v1/tenants/{tenant}/quota", put(set_quota))
        .route("/v1/tenants/{tenant}/keys", get(scan_keys))
        .route(
            "/v1/tenants/{tenant}/keys/{key}",
            get(get_key).put(put_key).delete(delete_key),
        )
        .route("/v1/snapshot", post(take_snapshot))
        .route("/v1/tls/reload", post(reload_tls))
        .route("/v1/stats/live", get(live_stats))
        .route(
            "/v1/users",
            get(crate::access::list_users).post(crate::access::create_user),
        )
        .route(
            "/v1/tokens",
            post(crate::access::create_token).delete(crate::access::revoke_tokens),
        )
        .route(
            "/v1/users/{user}",
            put(crate::access::change_user).delete(crate::access::delete_user),
        )
        .merge(crate::assets::routes())
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::access::require_cluster_admin,
        ))
        .layer(axum::middleware::from_fn(trace_request))
        .layer(DefaultBodyLimit::max(body_limit))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    /// `docs/openapi.json` is what the code generates. To refresh it:
    /// `TINKERDB_BLESS=1 cargo test -p tinkerdb-admin openapi`.
    #[test]
    fn the_checked_in_openapi_document_is_current() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
        let generated = super::openapi_json() + "\n";
        if std::env::var_os("TINKERDB_BLESS").is_some() {
            std::fs::write(path, &generated).unwrap();
        }
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            checked_in == generated,
            "docs/openapi.json is stale: run TINKERDB_BLESS=1 cargo test -p tinkerdb-admin openapi"
        );
    }
}
