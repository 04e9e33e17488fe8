//! Cluster membership: starting a core's replicas of its ranges' Raft
//! groups (its share of the node's one peer listener, the groups on the
//! core's shared log, the first-leader nudge), joining a running cluster,
//! and adding or removing a member. The request path through a replica is
//! `coord::replica`. [`meta`] is the cluster metadata group (the node
//! registry, on core 0). [`placement`] is the planner that decides which nodes
//! hold each range's replicas and which moves rebalance them (pure code,
//! checked by its simulator; the scheduler that executes its operations is
//! the issue "Scale-out").

pub mod layout;
pub mod meta;
pub mod moves;
pub mod placement;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::rc::Rc;

use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use tinkerdb_replication::group::{self, CoreGroups, GroupError, GroupSpec, MemberChange};
use tinkerdb_replication::health::{self, HealthTable};
use tinkerdb_replication::hibernate;
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::transport::{self, PeerAddr, PeerRouter};
use tinkerdb_replication::{CoreLog, Node};
use tinkerdb_schemas::wire::ErrorCode;

use crate::config::ClusterConfig;
use crate::coord::context::CoreContext;
use crate::coord::replica::{CoreReplication, Replica, ShardApplier};
use crate::slots::RangeId;

/// Connections a core hands to another (core 0 accepts every peer
/// connection of the node and passes each to the core hosting the range
/// its hello names) queued before the sender waits.
pub const PEER_HANDOFF_QUEUE: usize = 64;

/// A core's end of the peer-connection hand-off, as made before the cores
/// start (see [`handoff_channels`]).
pub enum PeerSocketEnds {
    /// Core 0: accepts on the node's Raft address; a sender to every
    /// other core (`None` at its own index).
    Accepts(Vec<Option<SharedSender<OwnedFd>>>),
    /// Another core: the connections core 0 hands it.
    Receives(SharedReceiver<OwnedFd>),
}

/// The hand-off channels of a node with `cores` cores, by core.
pub fn handoff_channels(cores: usize) -> Vec<PeerSocketEnds> {
    let mut senders = vec![None];
    let mut ends = vec![];
    for _ in 1..cores {
        let (sender, receiver) = shared_channel::new_bounded(PEER_HANDOFF_QUEUE);
        senders.push(Some(sender));
        ends.push(PeerSocketEnds::Receives(receiver));
    }
    ends.insert(0, PeerSocketEnds::Accepts(senders));
    ends
}

/// What the cores of a node share in cluster mode, made before they
/// start.
pub struct NodeCluster {
    /// The node's range moves between its cores under way.
    pub move_claims: std::sync::Arc<crate::slots::MoveClaims>,
    /// Which nodes replicate each range.
    pub layout: std::sync::Arc<layout::RangeLayout>,
    /// Where the ranges this node does not replicate are.
    pub remote_ranges: std::sync::Arc<crate::coord::forward::RangeReplicas>,
}

/// Starts this core's replicas, one per range it hosts: its share of the
/// peer listener, the groups (initialised on first start with the range's
/// replicas: every node in a full layout), the leader nudge, health
/// probes, hibernation, the range reports and (partial layouts) leader
/// balancing.
/// `config` is the node's (in cluster mode: its `cluster` table is set);
/// `me` is this node's record for the cluster metadata.
pub async fn start_replicas(
    context: &Rc<CoreContext>,
    config: &crate::config::NodeConfig,
    node: &NodeCluster,
    peer_sockets: PeerSocketEnds,
    peer_tls: Option<tinkerdb_replication::peer_tls::PeerTls>,
    me: meta::NodeRecord,
) -> anyhow::Result<()> {
    let core = context.core;
    let layout = &node.layout;
    let cluster: &ClusterConfig = config
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("core {core}: replicas need a cluster configuration"))?;
    let tuning = &config.raft;
    let data_dir = &config.data_dir;
    // Placement (`SlotMap::core_of`): every node places range r on the
    // same core at first, so this core's peer connections reach the core
    // of the peers that hosts the same ranges; a hello names the first of
    // this core's home ranges. A range placed otherwise on a peer (moved)
    // gets a connection of its own (`transport::PeerClient`).
    let hosted = context.hosted_ranges();
    // This core's clients of the seed nodes, for connections whose hello
    // names `hello` (`None`: for each peer, the first range of this core
    // that the peer replicates too, else the first it replicates at all:
    // a node of a partial layout refuses a hello naming a range it does
    // not hold).
    let default_hello = hosted
        .first()
        .copied()
        .unwrap_or(context.slot_map.home_ranges(core).start) as u64;
    let peers_for = |hello: Option<u64>| {
        let others = cluster
            .nodes
            .iter()
            .filter(|node| node.id != cluster.node_id);
        let others = others.map(|node| {
            let shared = || {
                let mut ranges = hosted.iter().copied().chain(0..context.slot_map.ranges());
                ranges.find(|&range| layout.replicates(node.id, range))
            };
            let hello = hello.unwrap_or_else(|| shared().unwrap_or(default_hello as usize) as u64);
            (node.id, node.raft.clone(), hello)
        });
        Rc::new(Peers::with_hellos(
            hello.unwrap_or(default_hello),
            others,
            peer_tls.clone(),
        ))
    };
    let peers = peers_for(None);
    let groups: Rc<CoreGroups<ShardApplier>> = Rc::new(CoreGroups::default());
    let ranges_handler = groups.call_handler(peers.clone());
    // Every range of the core on its one shared Raft log (core 0's holds
    // the metadata group's log too).
    let log = open_core_log(&context.core_dir)?;
    let members: BTreeMap<u64, Node> = cluster
        .nodes
        .iter()
        .map(|node| (node.id, Node::new(node.raft.to_string())))
        .collect();
    // Core 0 hosts the metadata group, on connections of its own (their
    // hello names `meta::META_GROUP`, which core 0's router keeps here).
    let meta = match core {
        0 => {
            let meta_peers = peers_for(Some(meta::META_GROUP));
            let initial_members = cluster.join.is_none().then(|| members.clone());
            let replica = meta::start(
                cluster.node_id,
                &context.core_dir,
                context.directory.clone(),
                context.users.clone(),
                log.clone(),
                meta_peers,
                initial_members,
            )
            .await?;
            Some(replica)
        }
        _ => None,
    };
    let groups_handler: transport::CallHandler = match &meta {
        Some(meta) => {
            let meta_handler = meta.groups.call_handler(meta.peers.clone());
            Rc::new(move |call: transport::PeerCall| match call.group {
                meta::META_GROUP => meta_handler(call),
                _ => ranges_handler(call),
            })
        }
        None => ranges_handler,
    };
    let forward = crate::coord::forward::Forwarder::new(node.remote_ranges.clone());
    // Requests other nodes forward here (for ranges they do not hold) run
    // as this node's own; everything else is Raft's.
    let handler: transport::CallHandler = {
        let context = context.clone();
        Rc::new(move |call: transport::PeerCall| match call.kind {
            tinkerdb_schemas::wire::PeerCallKind::Execute => {
                let context = context.clone();
                Box::pin(async move {
                    crate::coord::forward::serve_forwarded(&context, call.group, &call.payload)
                        .await
                })
            }
            _ => groups_handler(call),
        })
    };
    // A hand-off channel's two ends wait for each other while connecting:
    // both are connected here, and no core waits on another's replicas
    // before it reaches this point, so they meet.
    match peer_sockets {
        PeerSocketEnds::Accepts(senders) => {
            // Bound where told (`raft_listen`, resolved by `node::run`
            // before the cores start); peers dial the node's entry in
            // `nodes`.
            let listen = cluster.raft_listen.ok_or_else(|| {
                anyhow::anyhow!("core {core}: the Raft bind address is not resolved")
            })?;
            let listener =
                crate::net::listener::bind(listen, crate::net::listener::PortSharing::Exclusive)
                    .map_err(|error| {
                        anyhow::anyhow!("cannot listen for Raft on {listen}: {error}")
                    })?;
            let mut connected = Vec::with_capacity(senders.len());
            for sender in senders {
                connected.push(match sender {
                    Some(sender) => Some(sender.connect().await),
                    None => None,
                });
            }
            let router = peer_router(core, context.slot_map.clone(), Rc::new(connected));
            glommio::spawn_local(transport::serve_node_peers(
                listener, handler, router, peer_tls,
            ))
            .detach();
        }
        PeerSocketEnds::Receives(receiver) => {
            let receiver = receiver.connect().await;
            glommio::spawn_local(async move {
                while let Some(socket) = receiver.recv().await {
                    let served =
                        transport::serve_connection(socket, handler.clone(), peer_tls.clone());
                    glommio::spawn_local(served).detach();
                }
            })
            .detach();
        }
    }
    let health = Rc::new(HealthTable::default());
    let replication = CoreReplication {
        node_id: cluster.node_id,
        data_dir: data_dir.to_owned(),
        groups: groups.clone(),
        peers: peers.clone(),
        health: health.clone(),
        log: log.clone(),
        snapshot_every_entries: tuning.snapshot_every_entries,
        logs_kept_after_snapshot: tuning.logs_kept_after_snapshot,
        move_claims: node.move_claims.clone(),
        forward,
        full_layout: layout.is_full(),
    };
    if context.replication.set(replication).is_err() {
        anyhow::bail!("core {core} started its replicas twice");
    }
    // What a move left behind: a range the log (or a snapshot directory)
    // holds but the placement gives another core (a move that stopped
    // before or after its switch).
    for range in log.range_ids() {
        if range == meta::META_GROUP && core == 0 {
            continue;
        }
        if usize::try_from(range).is_ok_and(|range| range >= context.slot_map.ranges()) {
            anyhow::bail!(
                "core {core}: its Raft log holds range {range}, but this node has ranges 0..{} \
                 (a data directory of another configuration?)",
                context.slot_map.ranges()
            );
        }
    }
    for range in 0..context.slot_map.ranges() {
        let left_over = log.holds_range(range as u64) || snapshot_dir(context, range).exists();
        if left_over && !hosted.contains(&range) {
            tracing::info!(core, range, "dropping the copy of a range hosted elsewhere");
            moves::forget_range(context, range)
                .await
                .map_err(|error| anyhow::anyhow!("core {core}, range {range}: {error}"))?;
        }
    }
    for &range in &hosted {
        // A node that joins a running cluster waits to be added; in a
        // partial layout a range starts on its replicas only.
        let initial_members = cluster
            .join
            .is_none()
            .then(|| match layout.replicas_of(range) {
                None => members.clone(),
                Some(replicas) => members
                    .iter()
                    .filter(|(id, _)| replicas.contains(id))
                    .map(|(id, node)| (*id, node.clone()))
                    .collect(),
            });
        let replica = start_range(context, range, initial_members).await?;
        // Spread first leaders: the layout's first replica, or, in a full
        // layout, node (r mod n) + 1 for range r.
        let preferred = match layout.replicas_of(range) {
            Some(replicas) => replicas[0],
            None => cluster.nodes[range % cluster.nodes.len()].id,
        };
        if preferred == cluster.node_id && replica.raft.current_leader().await.is_none() {
            let _ = replica.raft.trigger().elect(false).await;
        }
        context.set_replica(replica);
    }
    // In a partial layout, leaders go back to the replica the layout
    // planned for them (spread evenly) once it is up and caught up.
    if !layout.is_full() {
        glommio::spawn_local(balance_leaders(
            Rc::downgrade(context),
            layout.clone(),
            cluster.node_id,
        ))
        .detach();
    }
    // The ranges this core leads, for the metadata's range table.
    glommio::spawn_local(meta::publish_led_ranges(
        Rc::downgrade(context),
        cluster.node_id,
    ))
    .detach();
    glommio::spawn_local(group::release_pinned_segments(
        groups.clone(),
        log.clone(),
        group::MAX_SEGMENTS_PINNED,
        group::PINNED_CHECK_INTERVAL,
    ))
    .detach();
    if let Some(meta) = &meta {
        // The metadata group shares core 0's log: it too is asked to
        // snapshot when it holds segments back.
        glommio::spawn_local(group::release_pinned_segments(
            meta.groups.clone(),
            log,
            group::MAX_SEGMENTS_PINNED,
            group::PINNED_CHECK_INTERVAL,
        ))
        .detach();
        let directory = context.directory.clone();
        let context = Rc::downgrade(context);
        let full_layout = layout.is_full();
        let meta_replica = meta.clone();
        // The cluster's nodes: in a full layout, the voters of this core's
        // first range (every node holds it, and joins and removals change
        // every range); in a partial one, the metadata group's own members
        // (fixed until the scheduler moves replicas).
        let range_members = move || match full_layout {
            true => {
                let context = context.upgrade()?;
                let first = context.replicas().into_iter().next()?;
                let status = group::status(&first.raft, first.group);
                Some((status.voters, status.learners))
            }
            false => {
                let status = group::status(&meta_replica.raft, meta::META_GROUP);
                Some((status.voters, status.learners))
            }
        };
        glommio::spawn_local(meta::reconcile(
            meta.clone(),
            directory,
            me.clone(),
            range_members,
        ))
        .detach();
    }
    // One set of probes per core: the other members of its ranges (all
    // the same in a full layout, a mix in a partial one).
    let full_layout_members = layout.is_full();
    let members = {
        let context = Rc::downgrade(context);
        move || {
            let Some(context) = context.upgrade() else {
                return Vec::new();
            };
            let mut members = BTreeMap::new();
            for replica in context.replicas() {
                let status = group::status(&replica.raft, replica.group);
                members.extend(status.other_members());
                if full_layout_members {
                    break; // every range has the same members
                }
            }
            members.into_iter().collect()
        }
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
        if let Some(meta) = &meta {
            glommio::spawn_local(hibernate::run(
                meta.groups.clone(),
                health.clone(),
                cluster.node_id,
                std::time::Duration::from_millis(tuning.hibernate_after_ms),
            ))
            .detach();
        }
    }
    Ok(())
}

/// How often a core of a node in a partial layout looks for ranges it leads
/// whose preferred replica (the layout's first) is another node.
pub const LEADER_BALANCE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(5);

/// Hands each range this core leads to the replica the layout planned as
/// its leader, once that replica is a voter, awake, heard from and caught
/// up (`group::transfer_leadership_to`). The layout spreads leaders
/// evenly (`placement::place_initial`: within one per node); elections
/// after a start or a failure do not, so without this the nodes started
/// first, or those that survived a failure, keep most leaderships and
/// their CPU. The preferred replica never hands its leadership on, so
/// leaderships cannot bounce. (TiKV's balance-leader scheduler and
/// CockroachDB's lease preferences do this cluster-wide; here the layout
/// is fixed, so each leader can decide alone.)
async fn balance_leaders(
    context: std::rc::Weak<CoreContext>,
    layout: std::sync::Arc<layout::RangeLayout>,
    node_id: u64,
) {
    loop {
        glommio::timer::sleep(LEADER_BALANCE_INTERVAL).await;
        let Some(context) = context.upgrade() else {
            return;
        };
        for replica in context.replicas() {
            let range = replica.range();
            let Some(&preferred) = layout.replicas_of(range).and_then(|nodes| nodes.first()) else {
                continue;
            };
            if preferred == node_id || group::leader(&replica.raft) != Some(node_id) {
                continue;
            }
            let timeout = group::ELECTION_TIMEOUT_MAX;
            if group::transfer_leadership_to(&replica.raft, replica.group, preferred, timeout).await
            {
                tracing::info!(
                    range,
                    to = preferred,
                    "leadership handed to the planned leader"
                );
            }
        }
    }
}

/// Starts this core's replica of `range` (hosted here, its log in the
/// core's shared log) and makes it answer peer calls. A group never
/// started before is initialised with `initial_members` when given (a
/// node joining a running cluster, or a range moving in, gives none).
pub async fn start_range(
    context: &Rc<CoreContext>,
    range: RangeId,
    initial_members: Option<BTreeMap<u64, Node>>,
) -> anyhow::Result<Replica> {
    let core = context.core;
    let replication = context
        .replication
        .get()
        .expect("cluster mode: the core's replication is set before its ranges start");
    let spec = GroupSpec {
        group: range as u64,
        node_id: replication.node_id,
        initialize: initial_members.is_some(),
        members: initial_members.unwrap_or_default(),
        log: replication.log.clone(),
        snapshot_dir: snapshot_dir(context, range),
        snapshot_every_entries: replication.snapshot_every_entries,
        logs_kept_after_snapshot: replication.logs_kept_after_snapshot,
    };
    let applier = Rc::new(RefCell::new(ShardApplier::new(context.clone(), range)));
    let (raft, wal_stats) = group::start_with_stats(&spec, applier, replication.peers.clone())
        .await
        .map_err(|error| anyhow::anyhow!("core {core}, range {range}: {error}"))?;
    replication.groups.insert(spec.group, raft.clone());
    Ok(Replica {
        group: spec.group,
        raft,
        peers: replication.peers.clone(),
        health: replication.health.clone(),
        wal_stats,
        in_flight: Rc::default(),
    })
}

/// Where range `range`'s Raft snapshots go on `context`'s core: the first
/// of the core's home ranges keeps `raft-snapshots` (the directory of a
/// one-range core, as before ranges), every other range
/// `raft-snapshots-range-R`.
pub fn snapshot_dir(context: &CoreContext, range: RangeId) -> std::path::PathBuf {
    if range == context.slot_map.home_ranges(context.core).start {
        context.core_dir.join("raft-snapshots")
    } else {
        context
            .core_dir
            .join(format!("raft-snapshots-range-{range}"))
    }
}

/// Core 0's router of the node's peer connections: a range's connection
/// goes to the core that hosts it (the placement of `start_replicas`); a
/// connection for another core travels to it over `to_core`.
fn peer_router(
    here: usize,
    slot_map: std::sync::Arc<crate::slots::SlotMap>,
    to_core: Rc<Vec<Option<ConnectedSender<OwnedFd>>>>,
) -> PeerRouter {
    PeerRouter {
        here,
        locate: Box::new(move |range| match usize::try_from(range) {
            _ if range == meta::META_GROUP => Ok(0),
            Ok(range) if range < slot_map.ranges() && slot_map.is_remote(range) => Err(format!(
                "range {range} is not hosted on this node (other nodes replicate it)"
            )),
            Ok(range) if range < slot_map.ranges() => Ok(slot_map.core_of(range)),
            _ => Err(format!(
                "range {range} is not hosted on this node (it hosts ranges 0..{})",
                slot_map.ranges()
            )),
        }),
        hand_off: Box::new(move |core, socket| {
            let to_core = to_core.clone();
            Box::pin(async move {
                let sender = to_core
                    .get(core)
                    .and_then(Option::as_ref)
                    .ok_or_else(|| format!("no channel to core {core}"))?;
                sender
                    .send(socket)
                    .await
                    .map_err(|_| format!("core {core} stopped"))
            })
        }),
    }
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

/// The TLS a node speaks to admin ports of its cluster (its own and the
/// seed's, when joining): trusting `ca_file`, presenting its own
/// certificate in case the port asks for one.
pub fn admin_client_tls(tls: &crate::config::TlsConfig) -> Option<tinkerdb_client::ClientTls> {
    Some(tinkerdb_client::ClientTls {
        ca_file: tls.ca_file.clone()?,
        server_name: None,
        client_cert: Some((tls.cert_file.clone(), tls.key_file.clone())),
    })
}

/// Asks the member whose admin API is at `seed` to add this node to every
/// group (`POST /v1/cluster/nodes`); returns once it is a voter of all.
/// Called at start by a node given `--join`, after its cores serve (the
/// leaders must reach its Raft listeners to catch it up). Idempotent: a
/// restarted member asks again and is told it already is one. With its
/// own admin API at `own_admin`, it then waits until its own replicas have
/// applied the membership that makes it a voter, so that "ready" means a
/// member in its own eyes too. Async (tokio): `node::run` drives it on a
/// current-thread runtime of its start-up thread; the cores never wait on
/// it. Against members with authentication on, both requests carry the
/// credentials in [`JOIN_USER_ENV`] and [`JOIN_PASSWORD_ENV`] (a
/// `cluster_admin` user).
pub async fn join(
    seed: &str,
    cluster: &ClusterConfig,
    cores: usize,
    databases: u16,
    ranges_per_core: usize,
    own_admin: Option<std::net::SocketAddr>,
    tls: Option<tinkerdb_client::ClientTls>,
) -> anyhow::Result<()> {
    use tinkerdb_client::admin::{request_async_as, AdminAuth, Credentials};
    // This node's own admin port may be bound to an unspecified address:
    // its certificate names the host its peers dial.
    let own_tls = tls.clone().map(|mut tls| {
        tls.server_name = Some(cluster.me().raft.host().to_owned());
        tls
    });
    let credentials = match (
        std::env::var(JOIN_USER_ENV),
        std::env::var(JOIN_PASSWORD_ENV),
    ) {
        (Ok(user), Ok(password)) => Some(AdminAuth::Basic(Credentials { user, password })),
        _ => None,
    };
    let credentials = credentials.as_ref();
    // The advertised Raft address: what the members will dial.
    let me = cluster.me();
    let body = serde_json::json!({
        "id": cluster.node_id,
        "raft": me.raft.to_string(),
        "cores": cores,
        "databases": databases,
        "ranges_per_core": ranges_per_core,
    });
    // This node's own admin API must let the same credentials in (it is
    // asked below whether the join took): checked before the cluster adds
    // a voter that would then stop for want of them.
    if let Some(own_admin) = own_admin {
        request_async_as(
            &own_admin.to_string(),
            "GET",
            "/v1/node",
            None,
            JOIN_TIMEOUT,
            credentials,
            own_tls.as_ref(),
        )
        .await
        .map_err(|error| {
            anyhow::anyhow!(
                "this node's own admin API refuses the join's credentials ({JOIN_USER_ENV}, \
                 {JOIN_PASSWORD_ENV}: a cluster_admin user of this node too): {error}"
            )
        })?;
    }
    tracing::info!(%seed, node_id = cluster.node_id, "asking to join the cluster");
    let answer = request_async_as(
        seed,
        "POST",
        "/v1/cluster/nodes",
        Some(&body),
        JOIN_TIMEOUT,
        credentials,
        tls.as_ref(),
    )
    .await
    .map_err(|error| {
        let hint = match &error {
            tinkerdb_client::admin::AdminError::Api {
                status: 401 | 403, ..
            } => format!(
                " (the members require authentication: set {JOIN_USER_ENV} and \
                 {JOIN_PASSWORD_ENV} to a cluster_admin user)"
            ),
            _ => String::new(),
        };
        anyhow::anyhow!("cannot join the cluster through {seed}: {error}{hint}")
    })?;
    tracing::info!(voters = %answer["voters"], "joined the cluster");
    let Some(own_admin) = own_admin else {
        return Ok(());
    };
    let own_admin = own_admin.to_string();
    let me = serde_json::json!(cluster.node_id);
    let learned = async {
        loop {
            let status = request_async_as(
                &own_admin,
                "GET",
                "/v1/cluster",
                None,
                JOIN_TIMEOUT,
                credentials,
                own_tls.as_ref(),
            )
            .await?;
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

/// The environment variable naming the user a node given `--join` asks
/// the members as (with [`JOIN_PASSWORD_ENV`]; needed when authentication
/// is on: environment, not flags or config, so the password stays out of
/// process listings and files).
pub const JOIN_USER_ENV: &str = "TINKERDB_JOIN_USER";

/// The environment variable holding the password of [`JOIN_USER_ENV`].
pub const JOIN_PASSWORD_ENV: &str = "TINKERDB_JOIN_PASSWORD";

/// How often a joining node asks its own admin API whether its replicas
/// have learned that it is a voter.
pub const JOIN_POLL_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Adds (`Some(raft)`, the node's Raft address `HOST:PORT`) or removes
/// node `id` in this core's group, on the group's leader; answers the
/// voters once committed.
pub async fn change_member(
    replica: &Replica,
    id: u64,
    raft: Option<&str>,
) -> Result<Vec<u64>, (ErrorCode, String)> {
    let change = match raft {
        Some(raft) => {
            let addr = PeerAddr::parse(raft)
                .map_err(|error| (ErrorCode::InvalidArgument, format!("raft: {error}")))?;
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
