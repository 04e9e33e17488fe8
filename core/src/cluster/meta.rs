//! The cluster's metadata as its own Raft group (TiKV's PD, FoundationDB's
//! system keyspace): what every node must agree on about the cluster
//! itself, as opposed to the data in the ranges.
//!
//! What it holds today:
//! - the **node registry**, each member's id, Raft address, client,
//!   Redis-protocol and admin addresses, core count and version
//!   ([`NodeRecord`]). Each node registers itself when it starts (and again
//!   whenever its record differs: a new address, a new version), so any
//!   node can tell a client or an operator where every other node serves;
//! - the **users** made, changed or deleted at runtime, through any node's
//!   admin API or `ACL SETUSER`/`DELUSER` (a [`UserOverlay`] that every
//!   node applies over its config file's users, `Users::apply_agreed`);
//! - the **range table**: each range's voters, learners, leader, term and
//!   epoch ([`RangeRecord`]) as its leader last reported them. Each core
//!   publishes the ranges it leads ([`publish_led_ranges`]) and core 0
//!   proposes the records that differ from the table ([`reconcile`]), so
//!   any node (one that holds few ranges too) can show every range and
//!   find its leader. A deposed leader's late report loses to a newer
//!   term's.
//!
//! The moves in flight and the tenants are to follow
//! (issue "Scale-out"); [`MetaState::FORMAT`] versions the snapshot.
//!
//! How it runs:
//! - one group, id [`META_GROUP`], hosted by core 0 of every node, its log
//!   in core 0's shared Raft log like any range's, its snapshots in
//!   `core-0/meta-snapshots` ([`SNAPSHOT_DIR`]), its peer connections its
//!   own (their hello names [`META_GROUP`], which core 0's router keeps);
//! - its members follow the ranges' members: the metadata leader compares
//!   its voters with those of core 0's first range every
//!   [`RECONCILE_INTERVAL`] and adds or removes the difference, then
//!   forgets the registry records of nodes that left ([`reconcile`]). So a
//!   node added or removed through the admin API (or an older cluster whose
//!   nodes joined before this group existed) ends up in it without a step
//!   of its own;
//! - every change is a [`Command::Meta`] entry whose payload is a
//!   [`MetaChange`] in JSON, applied by [`MetaApplier`] into the node's
//!   [`MetaState`] (core 0 reads it for `/v1/cluster`); changes are
//!   idempotent (a replay or a retry applies the same state).
//!
//! Invariant: nothing but this group's state machine writes [`MetaState`];
//! what a node shows of it is its own replica's applied state (it may lag
//! the leader by the entries in flight).

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tinkerdb_replication::group::{self, CoreGroups, GroupRaft, GroupSpec, MemberChange};
use tinkerdb_replication::network::Peers;
use tinkerdb_replication::state_machine::{Applier, WholeCopy};
use tinkerdb_replication::{Command, CoreLog, Node, NodeId, Response};

use tinkerdb_admin::report::RangeRecord;
use tinkerdb_admin::users::{check_user, UserError, UserOp, UserOverlay, Users};

use crate::coord::context::NodeDirectory;

/// The metadata group's id. Range ids are small (`0..ranges`), so the top
/// of the id space never meets one; records in the shared log carry it
/// like a range id.
pub const META_GROUP: u64 = u64::MAX;

/// The metadata group's snapshot directory, under core 0's directory.
pub const SNAPSHOT_DIR: &str = "meta-snapshots";

/// How often the metadata leader brings its members in line with the
/// ranges' members, and how often a node checks that its own record is
/// current.
pub const RECONCILE_INTERVAL: Duration = Duration::from_secs(1);

/// Snapshot the metadata group after this many entries (a few per node
/// start and membership change: it rarely snapshots, and its snapshot is
/// a few KB).
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 1_000;

/// Longest address text a node record may carry (a host name and a port).
pub const MAX_ADDRESS_BYTES: usize = 300;

/// Most user changes one metadata entry may carry (one change on one node
/// touches a user or a few).
pub const MAX_USER_OPS: usize = 1_000;

/// User changes queued for core 0 to propose at once (each waits on a
/// blocking thread of its own); one more is refused as `unavailable`.
pub const MAX_QUEUED_USER_CHANGES: usize = 64;

/// One member as it registered itself: the admin plane's
/// `RegisteredNode`, so that what the registry holds is what a core
/// reports, with no copy between the two shapes.
pub use tinkerdb_admin::report::RegisteredNode as NodeRecord;

/// Checks a record's limits (a record is proposed by a node and applied
/// by every node alike: a bad one is refused everywhere).
pub fn check_record(record: &NodeRecord) -> Result<(), String> {
    let addresses = [Some(&record.raft), Some(&record.client)]
        .into_iter()
        .chain([record.resp.as_ref(), record.admin.as_ref()])
        .flatten();
    for address in addresses {
        if address.is_empty() || address.len() > MAX_ADDRESS_BYTES {
            return Err(format!(
                "node {}: address {address:?} is empty or over {MAX_ADDRESS_BYTES} bytes",
                record.id
            ));
        }
    }
    if record.id == 0 || record.cores == 0 {
        return Err(format!(
            "node {}: id and cores must be at least 1",
            record.id
        ));
    }
    Ok(())
}

/// Most replicas (voters and learners together) a range's record may list.
pub const MAX_RANGE_MEMBERS: usize = 16;

/// Most range records one [`MetaChange::ReportRanges`] entry may carry.
pub const MAX_RANGE_REPORTS: usize = 1024;

/// How often each core publishes the ranges it leads for core 0 to report
/// ([`publish_led_ranges`]).
pub const RANGE_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Most ranges the range table may hold (range ids are below this).
pub const MAX_RANGES: u64 = tinkerdb_storage::SLOT_COUNT as u64;

/// Refuses a range record no cluster could have: an id past
/// [`MAX_RANGES`], no voters, a repeated node, more than
/// [`MAX_RANGE_MEMBERS`], a leader that is not a voter.
pub fn check_range(record: &RangeRecord) -> Result<(), String> {
    let members: Vec<NodeId> = record
        .voters
        .iter()
        .chain(&record.learners)
        .copied()
        .collect();
    let mut distinct = members.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if record.id >= MAX_RANGES
        || record.voters.is_empty()
        || members.len() > MAX_RANGE_MEMBERS
        || distinct.len() != members.len()
        || !record.voters.contains(&record.leader)
    {
        return Err(format!("range record {record:?} is not a possible range"));
    }
    Ok(())
}

/// A change of the metadata (the payload of a [`Command::Meta`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetaChange {
    /// A node (re)registers: its record replaces any earlier one.
    RegisterNode(NodeRecord),
    /// A node left the cluster: its record goes.
    ForgetNode {
        /// The node.
        id: NodeId,
    },
    /// Users made, changed or deleted (one change on one node, which may
    /// touch several users).
    Users(Vec<UserOp>),
    /// Ranges' leaders report the ranges' replicas (one node's reports of
    /// one round, at most [`MAX_RANGE_REPORTS`]): each record replaces the
    /// table's unless the table's is newer (a higher epoch, or the same
    /// epoch from a later term: a deposed leader's late report is
    /// ignored). All or nothing: one impossible record refuses the entry.
    ReportRanges(Vec<RangeRecord>),
}

impl MetaChange {
    /// The command that proposes this change at `at_unix_ms`.
    pub fn to_command(&self, at_unix_ms: u64) -> Command {
        Command::Meta {
            at_unix_ms,
            payload: serde_json::to_vec(self).expect("metadata changes serialize"),
        }
    }
}

/// The cluster's metadata as this node's replica has applied it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// [`MetaState::FORMAT`] (a snapshot of another format is refused).
    pub format: u32,
    /// Registered nodes, by id.
    pub nodes: BTreeMap<NodeId, NodeRecord>,
    /// The users changed at runtime, over each node's config users.
    #[serde(default)]
    pub users: UserOverlay,
    /// The range table: each range as its leader last reported it.
    #[serde(default)]
    pub ranges: BTreeMap<u64, RangeRecord>,
}

impl MetaState {
    /// The snapshot format this code writes and reads.
    pub const FORMAT: u32 = 1;

    /// An empty state of the current format.
    pub fn new() -> MetaState {
        MetaState {
            format: MetaState::FORMAT,
            ..MetaState::default()
        }
    }

    /// Whether the range table takes `record`: it has none for the range,
    /// or an older or equal one (epoch, then term).
    pub fn takes(&self, record: &RangeRecord) -> bool {
        self.ranges
            .get(&record.id)
            .is_none_or(|held| (record.epoch, record.term) >= (held.epoch, held.term))
    }

    /// Applies one change; refused changes leave the state as it was.
    pub fn apply(&mut self, change: MetaChange) -> Result<(), String> {
        match change {
            MetaChange::RegisterNode(record) => {
                check_record(&record)?;
                self.nodes.insert(record.id, record);
            }
            MetaChange::ForgetNode { id } => {
                self.nodes.remove(&id);
            }
            MetaChange::ReportRanges(records) => {
                if records.len() > MAX_RANGE_REPORTS {
                    return Err(format!(
                        "{} range reports in one entry, over the limit of {MAX_RANGE_REPORTS}",
                        records.len()
                    ));
                }
                for record in &records {
                    check_range(record)?;
                }
                for record in records {
                    if self.takes(&record) {
                        self.ranges.insert(record.id, record);
                    }
                }
            }
            MetaChange::Users(ops) => {
                // Checked whole before any applies: all or nothing.
                if ops.len() > MAX_USER_OPS {
                    return Err(format!(
                        "{} user changes in one entry, over the limit of {MAX_USER_OPS}",
                        ops.len()
                    ));
                }
                for op in &ops {
                    if let UserOp::Put(user) = op {
                        check_user(user)
                            .map_err(|error| format!("user {:?}: {error}", user.name))?;
                    }
                }
                for op in ops {
                    self.users.apply(op);
                }
            }
        }
        Ok(())
    }
}

/// The metadata group's state machine: decodes each [`Command::Meta`] and
/// applies it to the shared [`MetaState`].
pub struct MetaApplier {
    state: Rc<RefCell<MetaState>>,
    snapshot: WholeCopy,
    /// Where the registry's client addresses are published for the
    /// node's cores (their handshakes announce them).
    directory: Arc<NodeDirectory>,
    /// The node's users, which apply the agreed overlay (`None` in unit
    /// tests).
    users: Option<Arc<Users>>,
}

impl MetaApplier {
    /// An applier writing into `state`, publishing the registry's client
    /// addresses to `directory`.
    pub fn new(state: Rc<RefCell<MetaState>>, directory: Arc<NodeDirectory>) -> MetaApplier {
        MetaApplier {
            state,
            snapshot: WholeCopy::default(),
            directory,
            users: None,
        }
    }

    /// The same, also applying the agreed users to `users`.
    pub fn with_users(mut self, users: Arc<Users>) -> MetaApplier {
        self.users = Some(users);
        self
    }

    /// Makes the node's users what the cluster agreed on. Blocking (a file
    /// write and fsyncs, on this core): user changes are rare. A failure
    /// (the disk) leaves the node's users as they were until the next
    /// change or restart, and is logged: the metadata itself is applied.
    fn apply_users(&self) {
        let Some(users) = &self.users else {
            return;
        };
        if let Err(error) = users.apply_agreed(&self.state.borrow().users) {
            tracing::error!(%error, "cannot apply the cluster's users on this node");
        }
    }

    /// Publishes the registry's client addresses and the range table
    /// (after every change).
    fn publish(&self) {
        let state = self.state.borrow();
        let clients = state
            .nodes
            .values()
            .map(|node| (node.id, node.client.clone()))
            .collect();
        self.directory.publish(clients);
        self.directory.publish_ranges(state.ranges.clone());
    }
}

/// A refusal every replica gives alike.
fn refused(message: String) -> Response {
    Response::Refused {
        code: tinkerdb_schemas::wire::ErrorCode::InvalidArgument.0,
        message,
    }
}

impl Applier for MetaApplier {
    fn apply(&mut self, command: &Command) -> Response {
        let Command::Meta { payload, .. } = command else {
            return refused(format!(
                "the metadata group applies metadata changes, not {command}"
            ));
        };
        let change: MetaChange = match serde_json::from_slice(payload) {
            Ok(change) => change,
            Err(error) => return refused(format!("undecodable metadata change: {error}")),
        };
        let touches_users = matches!(change, MetaChange::Users(_));
        let applied = self.state.borrow_mut().apply(change);
        match applied {
            Ok(()) => {
                self.publish();
                if touches_users {
                    self.apply_users();
                }
                Response::Empty
            }
            Err(reason) => refused(reason),
        }
    }

    fn begin_snapshot(&mut self, _last_index: u64) -> Result<(), String> {
        let copy = serde_json::to_vec(&*self.state.borrow()).map_err(|error| error.to_string())?;
        self.snapshot.begin(copy)
    }

    fn snapshot_step(&mut self) -> (Vec<u8>, bool) {
        self.snapshot.step()
    }

    fn finish_snapshot(&mut self) -> Vec<u8> {
        self.snapshot.finish()
    }

    fn abort_snapshot(&mut self) {
        self.snapshot.finish();
    }

    fn restore(&mut self, data_file: &Path) -> Result<(), String> {
        let bytes = std::fs::read(data_file)
            .map_err(|error| format!("cannot read {}: {error}", data_file.display()))?;
        let state: MetaState = serde_json::from_slice(&bytes).map_err(|error| {
            format!(
                "{} is not a metadata snapshot: {error}",
                data_file.display()
            )
        })?;
        if state.format != MetaState::FORMAT {
            return Err(format!(
                "metadata snapshot of format {}, this node reads format {}",
                state.format,
                MetaState::FORMAT
            ));
        }
        let has_users = state.users != UserOverlay::default();
        *self.state.borrow_mut() = state;
        self.publish();
        // A cluster that never changed a user leaves the node's own
        // runtime users (from before it joined) alone.
        if has_users {
            self.apply_users();
        }
        Ok(())
    }
}

/// Core 0's replica of the metadata group.
pub struct MetaReplica {
    /// The group's Raft handle.
    pub raft: GroupRaft<MetaApplier>,
    /// Its peer clients (connections whose hello names [`META_GROUP`]).
    pub peers: Rc<Peers>,
    /// The group, for serving its peer calls.
    pub groups: Rc<CoreGroups<MetaApplier>>,
    /// What this replica has applied.
    pub state: Rc<RefCell<MetaState>>,
}

impl MetaReplica {
    /// What the admin plane shows of the group and its state.
    pub fn report(&self) -> tinkerdb_admin::report::MetadataReport {
        let status = group::status(&self.raft, META_GROUP);
        let ids = |members: &[(NodeId, String)]| members.iter().map(|(id, _)| *id).collect();
        tinkerdb_admin::report::MetadataReport {
            state: status.state.clone(),
            leader: status.leader,
            term: status.term,
            voters: ids(&status.voters),
            learners: ids(&status.learners),
            applied_index: status.applied_index,
            nodes: self.state.borrow().nodes.values().cloned().collect(),
            ranges: self.state.borrow().ranges.values().cloned().collect(),
        }
    }
}

thread_local! {
    /// The metadata replica of the core running on this thread (core 0 in
    /// cluster mode; a glommio executor is one thread). Kept here rather
    /// than in `CoreContext` so that `coord` does not depend on `cluster`.
    static THIS_CORE: RefCell<Option<Rc<MetaReplica>>> = const { RefCell::new(None) };
}

/// The metadata replica of this core, if it hosts one.
pub fn on_this_core() -> Option<Rc<MetaReplica>> {
    THIS_CORE.with(|replica| replica.borrow().clone())
}

/// Starts the metadata group on this core (core 0): initialised with
/// `initial_members` when given (a node of the seed list; a node joining
/// gives none and is added by the metadata leader, [`reconcile`]).
pub async fn start(
    node_id: NodeId,
    core_dir: &Path,
    directory: Arc<NodeDirectory>,
    users: Arc<Users>,
    log: CoreLog,
    peers: Rc<Peers>,
    initial_members: Option<BTreeMap<NodeId, Node>>,
) -> anyhow::Result<Rc<MetaReplica>> {
    let spec = GroupSpec {
        group: META_GROUP,
        node_id,
        initialize: initial_members.is_some(),
        members: initial_members.unwrap_or_default(),
        log,
        snapshot_dir: core_dir.join(SNAPSHOT_DIR),
        snapshot_every_entries: SNAPSHOT_EVERY_ENTRIES,
        logs_kept_after_snapshot: SNAPSHOT_EVERY_ENTRIES / 10,
    };
    let state = Rc::new(RefCell::new(MetaState::new()));
    let applier = MetaApplier::new(state.clone(), directory).with_users(users.clone());
    let applier = Rc::new(RefCell::new(applier));
    let raft = group::start(&spec, applier, peers.clone())
        .await
        .map_err(|error| anyhow::anyhow!("the metadata group: {error}"))?;
    let groups: Rc<CoreGroups<MetaApplier>> = Rc::new(CoreGroups::default());
    groups.insert(META_GROUP, raft.clone());
    let replica = Rc::new(MetaReplica {
        raft,
        peers,
        groups,
        state,
    });
    THIS_CORE.with(|slot| *slot.borrow_mut() = Some(replica.clone()));
    replicate_users(&users, replica.clone());
    Ok(replica)
}

/// A user change waiting for the metadata group, with where its answer
/// goes.
type UserProposal = (
    Vec<UserOp>,
    futures_channel::oneshot::Sender<Result<(), String>>,
);

/// Routes the node's user changes through the metadata group: the
/// blocking thread a change runs on (`Users::change`, from the admin API
/// or `ACL SETUSER` on any core) queues it here and waits; core 0 proposes
/// it and answers once this node applied it.
fn replicate_users(users: &Users, replica: Rc<MetaReplica>) {
    let (proposals, mut incoming) =
        futures_channel::mpsc::channel::<UserProposal>(MAX_QUEUED_USER_CHANGES);
    let proposals = std::sync::Mutex::new(proposals);
    let stopped =
        || UserError::Unavailable("this node's cluster metadata group has stopped".into());
    users.set_replicator(Box::new(move |ops| {
        let (reply, answer) = futures_channel::oneshot::channel();
        let queued = proposals
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .try_send((ops, reply));
        if let Err(refused) = queued {
            return Err(match refused.is_full() {
                true => UserError::Unavailable(format!(
                    "{MAX_QUEUED_USER_CHANGES} user changes are already waiting for the \
                     cluster: retry later"
                )),
                false => stopped(),
            });
        }
        futures_lite::future::block_on(answer)
            .map_err(|_| stopped())?
            .map_err(|why| {
                UserError::Unavailable(format!("the cluster did not take the change: {why}"))
            })
    }));
    glommio::spawn_local(async move {
        use futures_lite::StreamExt;
        while let Some((ops, reply)) = incoming.next().await {
            let replica = replica.clone();
            glommio::spawn_local(async move {
                let _ = reply.send(propose_and_apply(&replica, &MetaChange::Users(ops)).await);
            })
            .detach();
        }
    })
    .detach();
}

/// [`propose`], then waits until this node has applied everything the
/// leader had committed (the change included): what the caller changed,
/// it sees here at once.
pub async fn propose_and_apply(replica: &MetaReplica, change: &MetaChange) -> Result<(), String> {
    propose(replica, change).await?;
    group::read_barrier(&replica.raft, &replica.peers, META_GROUP)
        .await
        .map_err(|group::ReadRefused::Failed(error)| error.to_string())
}

/// Proposes `change` through the metadata leader (forwarded there when
/// this node follows); answers once it is committed and applied here.
pub async fn propose(replica: &MetaReplica, change: &MetaChange) -> Result<(), String> {
    let command = change.to_command(crate::coord::context::now_ms());
    match group::write(&replica.raft, &replica.peers, META_GROUP, command).await {
        Ok(Response::Refused { message, .. }) => Err(message),
        Ok(_) => Ok(()),
        Err(error) => Err(error.to_string()),
    }
}

/// Proposes, in one entry, the records of the ranges this node leads that
/// the range table would take and does not hold yet (at most
/// [`MAX_RANGE_REPORTS`] a round). A failure is retried next round.
async fn report_led_ranges(replica: &MetaReplica, directory: &NodeDirectory) {
    let reports: Vec<RangeRecord> = {
        let state = replica.state.borrow();
        directory
            .led()
            .into_values()
            .filter(|record| state.ranges.get(&record.id) != Some(record) && state.takes(record))
            .take(MAX_RANGE_REPORTS)
            .collect()
    };
    if reports.is_empty() {
        return;
    }
    let count = reports.len();
    if let Err(error) = propose(replica, &MetaChange::ReportRanges(reports)).await {
        tracing::debug!(%error, count, "cannot report the ranges this node leads yet");
    }
}

/// Publishes, every [`RANGE_REPORT_INTERVAL`], the ranges this core leads
/// to the node's directory, where core 0 picks them up for the range table
/// ([`report_led_ranges`]). Runs on every core for the node's life.
pub async fn publish_led_ranges(
    context: std::rc::Weak<crate::coord::context::CoreContext>,
    node_id: NodeId,
) {
    loop {
        glommio::timer::sleep(RANGE_REPORT_INTERVAL).await;
        let Some(context) = context.upgrade() else {
            return;
        };
        let replicas = context.replicas();
        let hosted: Vec<u64> = replicas.iter().map(|replica| replica.group).collect();
        let ids = |members: &[(NodeId, String)]| members.iter().map(|(id, _)| *id).collect();
        let led = replicas
            .iter()
            .filter(|replica| group::leader(&replica.raft) == Some(node_id))
            .map(|replica| group::status(&replica.raft, replica.group))
            .filter(|status| status.leader == Some(node_id) && status.fatal.is_none())
            .map(|status| RangeRecord {
                id: status.group,
                voters: ids(&status.voters),
                learners: ids(&status.learners),
                leader: node_id,
                term: status.term,
                epoch: status.epoch,
            })
            .collect();
        context.directory.note_led(&hosted, led);
    }
}

/// Keeps this node's record current, and (on the metadata leader) the
/// group's members in line with the ranges': runs on core 0 for the
/// node's life. `me` is this node's record; `range_members` answers the
/// voters and learners of core 0's first range (with their Raft
/// addresses), the membership every range shares today.
pub async fn reconcile(
    replica: Rc<MetaReplica>,
    directory: Arc<NodeDirectory>,
    me: NodeRecord,
    range_members: impl Fn() -> Option<(Vec<(NodeId, String)>, Vec<(NodeId, String)>)>,
) {
    loop {
        glommio::timer::sleep(RECONCILE_INTERVAL).await;
        let Some((voters, learners)) = range_members() else {
            continue;
        };
        let status = group::status(&replica.raft, META_GROUP);
        if status.fatal.is_some() {
            return; // its storage failed: it refuses everything from now on
        }
        let member_of_ranges = voters.iter().chain(&learners).any(|(id, _)| *id == me.id);
        // Register (again) when this node's record is missing or stale,
        // once the metadata group can hear it (it is a member; a node
        // removed from the cluster stops registering).
        let registered = replica.state.borrow().nodes.get(&me.id) == Some(&me);
        if !registered && member_of_ranges && status.leader.is_some() {
            match propose(&replica, &MetaChange::RegisterNode(me.clone())).await {
                Ok(()) => tracing::info!(node = me.id, "registered in the cluster metadata"),
                Err(error) => tracing::debug!(%error, "cannot register in the metadata yet"),
            }
        }
        if status.leader.is_some() {
            report_led_ranges(&replica, &directory).await;
        }
        if status.leader != Some(me.id) {
            continue;
        }
        // The leader: members follow the ranges' voters (learners are
        // ranges still catching a node up: it is added once it votes).
        let meta_members: BTreeSet<NodeId> = status
            .voters
            .iter()
            .chain(&status.learners)
            .map(|(id, _)| *id)
            .collect();
        let wanted: BTreeSet<NodeId> = voters.iter().map(|(id, _)| *id).collect();
        let mut change = None;
        if let Some((id, addr)) = voters.iter().find(|(id, _)| !meta_members.contains(id)) {
            change = Some(MemberChange::Add {
                id: *id,
                addr: addr.clone(),
            });
        } else if let Some(&id) = meta_members.iter().find(|id| !wanted.contains(id)) {
            if id != me.id {
                change = Some(MemberChange::Remove { id });
            }
        }
        if let Some(change) = change {
            match group::change_members(&replica.raft, &replica.peers, META_GROUP, &change).await {
                Ok(voters) => tracing::info!(?change, ?voters, "metadata group members changed"),
                Err(error) => {
                    tracing::warn!(?change, %error, "cannot change the metadata group's members")
                }
            }
            continue;
        }
        // Records of nodes that are no longer members go.
        let gone: Vec<NodeId> = replica
            .state
            .borrow()
            .nodes
            .keys()
            .copied()
            .filter(|id| !meta_members.contains(id))
            .collect();
        for id in gone {
            if let Err(error) = propose(&replica, &MetaChange::ForgetNode { id }).await {
                tracing::warn!(node = id, %error, "cannot forget a node that left");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: NodeId) -> NodeRecord {
        NodeRecord {
            id,
            raft: format!("127.0.0.1:{}", 7390 + id),
            client: format!("127.0.0.1:{}", 7370 + id),
            resp: Some(format!("127.0.0.1:{}", 7380 + id)),
            admin: None,
            cores: 2,
            version: "0.1.0".into(),
        }
    }

    fn apply(applier: &mut MetaApplier, change: &MetaChange) -> Response {
        applier.apply(&change.to_command(1))
    }

    #[test]
    fn registering_replaces_and_forgetting_removes() {
        let state = Rc::new(RefCell::new(MetaState::new()));
        let directory = Arc::new(NodeDirectory::new(1));
        let mut applier = MetaApplier::new(state.clone(), directory.clone());
        assert_eq!(
            apply(&mut applier, &MetaChange::RegisterNode(record(1))),
            Response::Empty
        );
        assert_eq!(
            apply(&mut applier, &MetaChange::RegisterNode(record(2))),
            Response::Empty
        );
        let mut moved = record(1);
        moved.client = "10.0.0.1:7371".into();
        apply(&mut applier, &MetaChange::RegisterNode(moved.clone()));
        assert_eq!(state.borrow().nodes.get(&1), Some(&moved));
        // The cores' handshakes announce what was applied.
        assert_eq!(
            *directory.clients(),
            vec![(1, moved.client.clone()), (2, record(2).client)]
        );
        // A retried or replayed change gives the same state.
        apply(&mut applier, &MetaChange::ForgetNode { id: 2 });
        apply(&mut applier, &MetaChange::ForgetNode { id: 2 });
        assert_eq!(
            state.borrow().nodes.keys().copied().collect::<Vec<_>>(),
            vec![1]
        );
        assert_eq!(*directory.clients(), vec![(1, moved.client)]);
    }

    #[test]
    fn user_changes_build_the_overlay_all_or_nothing() {
        let hash = tinkerdb_admin::users::hash_password(b"pw").unwrap();
        let user = |name: &str| tinkerdb_admin::users::UserSpec {
            name: name.into(),
            password_hash: hash.clone(),
            tenant: "default".into(),
            enabled: true,
            cluster_admin: false,
            access: Default::default(),
        };
        let mut state = MetaState::new();
        let change = MetaChange::Users(vec![UserOp::Put(user("alice")), UserOp::Put(user("bob"))]);
        state.apply(change).unwrap();
        state
            .apply(MetaChange::Users(vec![UserOp::Delete("alice".into())]))
            .unwrap();
        assert_eq!(state.users.users.keys().collect::<Vec<_>>(), vec!["bob"]);
        assert!(state.users.deleted.contains("alice"));
        // A bad user anywhere in the entry: nothing of it applies.
        let mut bad = user("carol");
        bad.password_hash = "not a hash".into();
        let before = state.clone();
        let refused = MetaChange::Users(vec![UserOp::Delete("bob".into()), UserOp::Put(bad)]);
        assert!(state.apply(refused).is_err());
        let too_many = (0..=MAX_USER_OPS)
            .map(|i| UserOp::Delete(format!("u{i}")))
            .collect();
        assert!(state.apply(MetaChange::Users(too_many)).is_err());
        assert_eq!(state, before);
    }

    fn range(id: u64, voters: &[NodeId], leader: NodeId, term: u64, epoch: u64) -> RangeRecord {
        RangeRecord {
            id,
            voters: voters.to_vec(),
            learners: Vec::new(),
            leader,
            term,
            epoch,
        }
    }

    #[test]
    fn the_range_table_keeps_the_newest_report_of_each_range() {
        let state = Rc::new(RefCell::new(MetaState::new()));
        let directory = Arc::new(NodeDirectory::new(1));
        let mut applier = MetaApplier::new(state.clone(), directory.clone());
        let report = |records| MetaChange::ReportRanges(records);
        let first = vec![range(0, &[1, 2, 3], 1, 2, 5), range(1, &[2, 3, 4], 4, 2, 5)];
        assert_eq!(apply(&mut applier, &report(first)), Response::Empty);
        // A new leader in a later term replaces; a deposed leader's late
        // report (older term) does not; a newer epoch does, whatever term.
        let later = range(0, &[1, 2, 3], 3, 3, 5);
        apply(&mut applier, &report(vec![later.clone()]));
        apply(&mut applier, &report(vec![range(0, &[1, 2, 3], 1, 2, 5)]));
        assert_eq!(state.borrow().ranges[&0], later);
        let moved = range(0, &[1, 2, 5], 5, 1, 9);
        apply(&mut applier, &report(vec![moved.clone()]));
        assert_eq!(state.borrow().ranges[&0], moved);
        // Published for the node's cores (the forwarders' leader hints).
        assert_eq!(directory.ranges()[&0], moved);
        assert_eq!(directory.ranges()[&1].leader, 4);
        // Impossible records refuse the whole entry.
        for bad in [
            range(2, &[], 1, 1, 1),
            range(2, &[1, 1, 2], 1, 1, 1),
            range(2, &[1, 2, 3], 9, 1, 1),
            range(MAX_RANGES, &[1], 1, 1, 1),
        ] {
            let answer = apply(&mut applier, &report(vec![range(3, &[1], 1, 1, 1), bad]));
            assert!(matches!(answer, Response::Refused { .. }), "{answer:?}");
        }
        let too_many = vec![range(3, &[1], 1, 1, 1); MAX_RANGE_REPORTS + 1];
        assert!(matches!(
            apply(&mut applier, &report(too_many)),
            Response::Refused { .. }
        ));
        assert_eq!(state.borrow().ranges.len(), 2);
    }

    #[test]
    fn bad_changes_are_refused_alike_and_change_nothing() {
        let state = Rc::new(RefCell::new(MetaState::new()));
        let mut applier = MetaApplier::new(state.clone(), Arc::default());
        let mut empty_address = record(3);
        empty_address.client.clear();
        let mut long_address = record(4);
        long_address.admin = Some("a".repeat(MAX_ADDRESS_BYTES + 1));
        let mut no_cores = record(5);
        no_cores.cores = 0;
        for bad in [empty_address, long_address, no_cores] {
            let answer = apply(&mut applier, &MetaChange::RegisterNode(bad));
            assert!(matches!(answer, Response::Refused { .. }), "{answer:?}");
        }
        let garbage = Command::Meta {
            at_unix_ms: 1,
            payload: b"{not json".to_vec(),
        };
        assert!(matches!(applier.apply(&garbage), Response::Refused { .. }));
        let foreign = Command::Ops {
            tenant: "default".into(),
            at_unix_ms: 1,
            payload: Vec::new(),
            trace: None,
        };
        assert!(matches!(applier.apply(&foreign), Response::Refused { .. }));
        assert_eq!(*state.borrow(), MetaState::new());
    }

    #[test]
    fn a_snapshot_restores_the_same_state_and_other_formats_are_refused() {
        let dir = std::env::temp_dir().join(format!("tinkerdb-meta-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let state = Rc::new(RefCell::new(MetaState::new()));
        let mut applier = MetaApplier::new(state.clone(), Arc::default());
        apply(&mut applier, &MetaChange::RegisterNode(record(1)));
        apply(&mut applier, &MetaChange::RegisterNode(record(7)));
        applier.begin_snapshot(2).unwrap();
        let mut bytes = Vec::new();
        loop {
            let (step, last) = applier.snapshot_step();
            bytes.extend(step);
            if last {
                break;
            }
        }
        bytes.extend(applier.finish_snapshot());
        let file = dir.join("data");
        std::fs::write(&file, &bytes).unwrap();
        let restored = Rc::new(RefCell::new(MetaState::new()));
        MetaApplier::new(restored.clone(), Arc::default())
            .restore(&file)
            .unwrap();
        assert_eq!(*restored.borrow(), *state.borrow());

        let mut future = state.borrow().clone();
        future.format = MetaState::FORMAT + 1;
        std::fs::write(&file, serde_json::to_vec(&future).unwrap()).unwrap();
        let error = MetaApplier::new(restored, Arc::default())
            .restore(&file)
            .unwrap_err();
        assert!(error.contains("format"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
