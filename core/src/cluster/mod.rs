//! Cluster membership: starting a core's replica of its Raft group (its
//! peer listener, the group, the first-leader nudge), joining a running
//! cluster, and adding or removing a member. The request path through a
//! replica is `coord::replica`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use tinkerdb_replication::group::{self, CoreGroups, GroupError, GroupSpec, MemberChange};
use tinkerdb_replication::health::{self, HealthTable};
use tinkerdb_replication::hibernate;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::transport::PeerAddr;
use tinkerdb_replication::{CoreLog, Node};
use tinkerdb_schemas::wire::ErrorCode;

use crate::config::{ClusterConfig, RaftTuning};
use crate::coord::context::CoreContext;
use crate::coord::replica::{Replica, ShardApplier};

/// Starts this core's replica: its peer listener, its group (initialised
/// with every node on first start), and the leader nudge.
pub async fn start_replica(
    context: &Rc<CoreContext>,
    cluster: &ClusterConfig,
    tuning: &RaftTuning,
) -> anyhow::Result<()> {
    let core = context.core;
    // Core c of every node is at its Raft port + c (validated to fit).
    let port_of = |addr: &PeerAddr| {
        addr.with_port_offset(core)
            .expect("validated: Raft port + cores fits")
    };
    // Bound where told (`raft_listen`, resolved by `node::run` before the
    // cores start); peers are told and dial the node's entry in `nodes`.
    let mut listen = cluster
        .raft_listen
        .ok_or_else(|| anyhow::anyhow!("core {core}: the Raft bind address is not resolved"))?;
    listen.set_port(listen.port() + core as u16);
    let listener = crate::net::listener::bind(listen, crate::net::listener::PortSharing::Exclusive)
        .map_err(|error| {
            anyhow::anyhow!("core {core} cannot listen for Raft on {listen}: {error}")
        })?;
    let peers = Rc::new(Peers::new(
        cluster
            .nodes
            .iter()
            .filter(|node| node.id != cluster.node_id)
            .map(|node| (node.id, port_of(&node.raft))),
    ));
    let groups: Rc<CoreGroups<ShardApplier>> = Rc::new(CoreGroups::default());
    glommio::spawn_local(tinkerdb_replication::transport::serve_peers(
        listener,
        groups.call_handler(peers.clone()),
    ))
    .detach();
    let members: BTreeMap<u64, Node> = cluster
        .nodes
        .iter()
        .map(|node| (node.id, Node::new(port_of(&node.raft).to_string())))
        .collect();
    let spec = GroupSpec {
        group: core as u64,
        node_id: cluster.node_id,
        members,
        log: open_core_log(&context.core_dir)?,
        snapshot_dir: context.core_dir.join("raft-snapshots"),
        snapshot_every_entries: tuning.snapshot_every_entries,
        logs_kept_after_snapshot: tuning.logs_kept_after_snapshot,
        // A node that joins a running cluster waits to be added.
        initialize: cluster.join.is_none(),
    };
    let applier = Rc::new(RefCell::new(ShardApplier::new(context.clone())));
    let (raft, wal_stats) = group::start_with_stats(&spec, applier, peers.clone())
        .await
        .map_err(|error| anyhow::anyhow!("core {core}: {error}"))?;
    groups.insert(spec.group, raft.clone());
    glommio::spawn_local(group::release_pinned_segments(
        groups.clone(),
        spec.log.clone(),
        group::MAX_SEGMENTS_PINNED,
        group::PINNED_CHECK_INTERVAL,
    ))
    .detach();
    // Spread first leaders: group c prefers node (c mod n) + 1.
    let preferred = cluster.nodes[core % cluster.nodes.len()].id;
    if preferred == cluster.node_id && raft.current_leader().await.is_none() {
        let _ = raft.trigger().elect(false).await;
    }
    let health = Rc::new(HealthTable::default());
    let members = {
        let raft = raft.clone();
        move || group::status(&raft, spec.group).other_members()
    };
    glommio::spawn_local(health::probe_peers(peers.clone(), health.clone(), members)).detach();
    if tuning.hibernate_after_ms > 0 {
        glommio::spawn_local(hibernate::run(
            groups.clone(),
            health.clone(),
            cluster.node_id,
            std::time::Duration::from_millis(tuning.hibernate_after_ms),
        ))
        .detach();
    }
    let replica = Replica {
        group: spec.group,
        raft,
        peers,
        health,
        core,
        wal_stats,
    };
    if context.replica.set(replica).is_err() {
        anyhow::bail!("core {core} started its replica twice");
    }
    Ok(())
}

/// The directory of a core's shared Raft log (every range on the core).
pub const CORE_LOG_DIR: &str = "raft-log";

/// Where a core kept its one group's Raft log before the shared log.
const PER_GROUP_LOG_DIR: &str = "raft";

/// Opens the core's shared Raft log, refusing a data directory that still
/// holds the per-group log of an earlier version (it would be ignored, and
/// the node would come back with an empty log and vote again in terms it
/// already voted in).
fn open_core_log(core_dir: &std::path::Path) -> anyhow::Result<CoreLog> {
    let old = core_dir.join(PER_GROUP_LOG_DIR);
    if old.exists() {
        anyhow::bail!(
            "{} holds a Raft log in the per-group format of TinkerDB before the shared log; \
             this version keeps every range of a core in {}: move {} away (the node then \
             catches up from its peers) or run the version that wrote it",
            old.display(),
            core_dir.join(CORE_LOG_DIR).display(),
            core_dir.display()
        );
    }
    let dir = core_dir.join(CORE_LOG_DIR);
    CoreLog::open(&dir).map_err(|error| anyhow::anyhow!("cannot open {}: {error}", dir.display()))
}

/// How long a joining node waits for the cluster to add it (catching up
/// as a learner included).
pub const JOIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(70);

/// Asks the member whose admin API is at `seed` to add this node to every
/// group (`POST /v1/cluster/nodes`); returns once it is a voter of all.
/// Called at start by a node given `--join`, after its cores serve (the
/// leaders must reach its Raft listeners to catch it up). Idempotent: a
/// restarted member asks again and is told it already is one. With its
/// own admin API at `own_admin`, it then waits until its own replicas have
/// applied the membership that makes it a voter, so that "ready" means a
/// member in its own eyes too. Async (tokio): `node::run` drives it on a
/// current-thread runtime of its start-up thread; the cores never wait on
/// it.
pub async fn join(
    seed: &str,
    cluster: &ClusterConfig,
    cores: usize,
    databases: u16,
    own_admin: Option<std::net::SocketAddr>,
) -> anyhow::Result<()> {
    use tinkerdb_client::admin::request_async;
    // The advertised Raft address: what the members will dial.
    let me = cluster.me();
    let body = serde_json::json!({
        "id": cluster.node_id,
        "raft": me.raft.to_string(),
        "cores": cores,
        "databases": databases,
    });
    tracing::info!(%seed, node_id = cluster.node_id, "asking to join the cluster");
    let answer = request_async(seed, "POST", "/v1/cluster/nodes", Some(&body), JOIN_TIMEOUT)
        .await
        .map_err(|error| anyhow::anyhow!("cannot join the cluster through {seed}: {error}"))?;
    tracing::info!(voters = %answer["voters"], "joined the cluster");
    let Some(own_admin) = own_admin else {
        return Ok(());
    };
    let own_admin = own_admin.to_string();
    let me = serde_json::json!(cluster.node_id);
    let learned = async {
        loop {
            let status =
                request_async(&own_admin, "GET", "/v1/cluster", None, JOIN_TIMEOUT).await?;
            let voter_everywhere = status["shards"].as_array().is_some_and(|shards| {
                shards.iter().all(|shard| {
                    shard["replicas"]
                        .as_array()
                        .is_some_and(|replicas| replicas.contains(&me))
                })
            });
            if voter_everywhere {
                return anyhow::Ok(());
            }
            tokio::time::sleep(JOIN_POLL_INTERVAL).await;
        }
    };
    tokio::time::timeout(JOIN_TIMEOUT, learned)
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "added through {seed}, but this node's replicas did not learn it within {JOIN_TIMEOUT:?}"
            )
        })?
}

/// How often a joining node asks its own admin API whether its replicas
/// have learned that it is a voter.
pub const JOIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Adds (`Some(raft_base)`, `HOST:PORT` of its core 0) or removes node
/// `id` in this core's group, on the group's leader; answers the voters
/// once committed.
pub async fn change_member(
    replica: &Replica,
    id: u64,
    raft_base: Option<&str>,
) -> Result<Vec<u64>, (ErrorCode, String)> {
    let change = match raft_base {
        Some(base) => {
            let addr = PeerAddr::parse(base)
                .ok()
                .and_then(|base| base.with_port_offset(replica.core))
                .ok_or_else(|| {
                    (
                        ErrorCode::InvalidArgument,
                        format!("raft: {base:?} is not HOST:PORT with room for every core's port"),
                    )
                })?;
            MemberChange::Add {
                id,
                addr: addr.to_string(),
            }
        }
        None => MemberChange::Remove { id },
    };
    group::change_members(&replica.raft, &replica.peers, replica.group, &change)
        .await
        .map_err(|error| {
            let code = match error {
                GroupError::Refused { .. } => ErrorCode::InvalidArgument,
                GroupError::Stopped { .. } => ErrorCode::StorageFailed,
                _ => ErrorCode::Unavailable,
            };
            (code, error.to_string())
        })
}
