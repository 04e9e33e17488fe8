//! One Raft group on a core: how it starts, how its peers' calls reach it,
//! and how a write or a linearizable read goes through it.
//!
//! A group is a shard's replica set. The core that owns the shard owns the
//! group's `Raft` handle, its log store (its part of the core's shared log, [`CoreLog`]) and its
//! state machine; every node places group `g` on the same core, so the
//! group's Raft traffic stays on one connection per peer per core.
//!
//! Writes: [`write`] proposes on this node; if this node is not the leader
//! it forwards the command to the leader's same core ([`PeerCallKind::ForwardWrite`]),
//! and a leader that refuses just after its election (its lease not yet
//! confirmed), or an election in progress, is retried until the deadline,
//! never reported as a failure.
//!
//! Reads: [`read_barrier`] is the read-index protocol: the leader confirms
//! with a quorum that it is still leader and waits until its state machine
//! has applied everything committed when the read arrived; a read after it
//! sees every write acknowledged before the read began. A follower asks the
//! leader for that index and waits until it has applied it itself, so every
//! replica serves linearizable reads. Read index rather
//! than leader lease: a lease is only safe with bounded clock drift and
//! pauses, and a stalled process (a GC-free Rust process can still be
//! SIGSTOPped or starved on a 2-core machine) must never serve a stale read.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ChangeMembershipError, ClientWriteError, LinearizableReadError, RaftError};
use openraft::{ChangeMembers, Config, ReadPolicy, SnapshotPolicy};
use tinkerdb_schemas::wire::PeerCallKind;
use tinkerdb_storage::wal::WalStats;

use crate::network::{decode, encode, serve_raft_call, NetworkFactory, Peers};
use crate::state_machine::{Applier, StateMachine};
use crate::transport::{CallHandler, PeerCall, PeerClient};
use crate::{Command, CoreLog, Node, NodeId, Response, TypeConfig};

/// Heartbeat period of a leader.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_millis(100);
/// A follower that hears nothing for a random time in this range starts an
/// election (several heartbeats, so one lost heartbeat never does).
pub const ELECTION_TIMEOUT_MIN: Duration = Duration::from_millis(400);
/// Upper end of the election timeout range.
pub const ELECTION_TIMEOUT_MAX: Duration = Duration::from_millis(800);
/// How long a write or read keeps retrying through elections.
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Pause between retries while no leader is known.
pub const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// How long a membership change keeps trying: adding a node waits for it
/// to catch up as a learner (by log or snapshot) before it becomes a voter.
pub const MEMBERSHIP_DEADLINE: Duration = Duration::from_secs(60);
/// A replica snapshots its state machine after this many log entries since
/// its last snapshot (then purges the log before it, see
/// [`LOGS_KEPT_AFTER_SNAPSHOT`]). Building one copies the shard in one
/// step, so this trades log memory and restart replay against pauses.
pub const SNAPSHOT_EVERY_ENTRIES: u64 = 50_000;
/// Entries kept in the log below the last snapshot, so a follower a little
/// behind catches up by log rather than by a whole snapshot.
pub const LOGS_KEPT_AFTER_SNAPSHOT: u64 = 5_000;

/// Slots of each of openraft's two inner channels per group (client API
/// and notifications); see [`raft_config`].
pub const RAFT_CHANNEL_SLOTS: u64 = 1024;

/// A group's `Raft` handle.
pub type GroupRaft<A> = openraft::Raft<TypeConfig, StateMachine<A>>;

/// What starting a group needs.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group (shard) id.
    pub group: u64,
    /// This node.
    pub node_id: NodeId,
    /// The initial voters (used only for a group never started before).
    pub members: BTreeMap<NodeId, Node>,
    /// The core's shared Raft log, which keeps this group's log too.
    pub log: CoreLog,
    /// Where the group's snapshots live on this node.
    pub snapshot_dir: PathBuf,
    /// Snapshot after this many entries ([`SNAPSHOT_EVERY_ENTRIES`]).
    pub snapshot_every_entries: u64,
    /// Entries kept below a snapshot ([`LOGS_KEPT_AFTER_SNAPSHOT`]).
    pub logs_kept_after_snapshot: u64,
    /// Initialise the group with `members` if it never started. False for
    /// a node joining a running cluster: it waits to be added.
    pub initialize: bool,
}

/// openraft's configuration for a TinkerDB group.
pub fn raft_config(spec: &GroupSpec) -> Arc<Config> {
    let config = Config {
        cluster_name: "tinkerdb".into(),
        heartbeat_interval: HEARTBEAT_INTERVAL.as_millis() as u64,
        election_timeout_min: ELECTION_TIMEOUT_MIN.as_millis() as u64,
        election_timeout_max: ELECTION_TIMEOUT_MAX.as_millis() as u64,
        snapshot_policy: SnapshotPolicy::LogsSinceLast(spec.snapshot_every_entries),
        max_in_snapshot_log_to_keep: spec.logs_kept_after_snapshot,
        // A peer that does not answer is retried after 200 ms, then less
        // and less often (up to 2 s) instead of every few milliseconds.
        backoff: "200ms 400ms 800ms ..2s".into(),
        // openraft's two inner channels are bounded queues allocated whole
        // up front: at its default 65,536 slots each they cost a group
        // about 30 MiB before it holds anything (measured with
        // `perf raft-groups`), which would make 256 ranges per core
        // impossible. A full channel only makes its sender wait
        // (backpressure), and a group never has this many requests or
        // notifications queued: writes are bounded by the clients' limits.
        api_channel_size: Some(RAFT_CHANNEL_SLOTS),
        notification_channel_size: Some(RAFT_CHANNEL_SLOTS),
        ..Default::default()
    };
    Arc::new(config.validate().expect("valid Raft configuration"))
}

/// Starts (or restarts) a group on the current core. A group never started
/// before is initialised with `spec.members`; every member may do so, with
/// the same membership, and the first leader elected wins.
pub async fn start<A: Applier>(
    spec: &GroupSpec,
    applier: Rc<RefCell<A>>,
    peers: Rc<Peers>,
) -> Result<GroupRaft<A>, String> {
    Ok(start_with_stats(spec, applier, peers).await?.0)
}

/// [`start`], also answering the group's WAL counters (for metrics: the log
/// store itself belongs to openraft once the group runs).
pub async fn start_with_stats<A: Applier>(
    spec: &GroupSpec,
    applier: Rc<RefCell<A>>,
    peers: Rc<Peers>,
) -> Result<(GroupRaft<A>, Rc<WalStats>), String> {
    let log_store = spec.log.open_range(spec.group)?;
    let wal_stats = spec.log.wal_stats();
    let state_machine = StateMachine::open(applier, &spec.snapshot_dir).map_err(|error| {
        format!(
            "group {} cannot open its snapshots in {}: {error}",
            spec.group,
            spec.snapshot_dir.display()
        )
    })?;
    let raft = openraft::Raft::new(
        spec.node_id,
        raft_config(spec),
        NetworkFactory::new(spec.group, peers),
        log_store,
        state_machine,
    )
    .await
    .map_err(|error| format!("group {} cannot start: {error}", spec.group))?;
    if spec.initialize && !raft.is_initialized().await.map_err(|e| e.to_string())? {
        // NotAllowed means another start raced us to it: fine.
        let _ = raft.initialize(spec.members.clone()).await;
    }
    Ok((raft, wal_stats))
}

/// The groups of one core, by id, for serving peer calls.
pub struct CoreGroups<A: Applier> {
    groups: RefCell<HashMap<u64, GroupRaft<A>>>,
    /// Peer calls being served, by group (a group taken out waits for
    /// them before it stops: see [`Self::calls_in_flight`]).
    calls: Rc<RefCell<HashMap<u64, usize>>>,
}

impl<A: Applier> Default for CoreGroups<A> {
    fn default() -> Self {
        CoreGroups {
            groups: RefCell::new(HashMap::new()),
            calls: Rc::default(),
        }
    }
}

/// Counts one peer call of a group while it lives.
struct CallInFlight {
    calls: Rc<RefCell<HashMap<u64, usize>>>,
    group: u64,
}

impl CallInFlight {
    fn new(calls: &Rc<RefCell<HashMap<u64, usize>>>, group: u64) -> CallInFlight {
        *calls.borrow_mut().entry(group).or_default() += 1;
        CallInFlight {
            calls: calls.clone(),
            group,
        }
    }
}

impl Drop for CallInFlight {
    fn drop(&mut self) {
        let mut calls = self.calls.borrow_mut();
        if let Some(count) = calls.get_mut(&self.group) {
            *count -= 1;
            if *count == 0 {
                calls.remove(&self.group);
            }
        }
    }
}

impl<A: Applier> CoreGroups<A> {
    /// Adds a started group.
    pub fn insert(&self, group: u64, raft: GroupRaft<A>) {
        self.groups.borrow_mut().insert(group, raft);
    }

    /// Every group of the core, with its handle (cloned: handles are
    /// cheap `Rc`s).
    pub fn all(&self) -> Vec<(u64, GroupRaft<A>)> {
        self.groups
            .borrow()
            .iter()
            .map(|(group, raft)| (*group, raft.clone()))
            .collect()
    }

    /// Takes the group out: later peer calls for it are refused as
    /// [`crate::transport::no_group_here`]. The caller waits for the calls
    /// under way ([`Self::calls_in_flight`]), then shuts it down.
    pub fn remove(&self, group: u64) -> Option<GroupRaft<A>> {
        self.groups.borrow_mut().remove(&group)
    }

    /// Peer calls of `group` being served now.
    pub fn calls_in_flight(&self, group: u64) -> usize {
        self.calls.borrow().get(&group).copied().unwrap_or(0)
    }

    /// The group's handle, if this core runs it.
    pub fn get(&self, group: u64) -> Option<GroupRaft<A>> {
        self.groups.borrow().get(&group).cloned()
    }

    /// The handler a core's peer listener runs: Raft RPCs and forwarded
    /// writes, each for the group it names.
    pub fn call_handler(self: &Rc<Self>, peers: Rc<Peers>) -> CallHandler {
        let groups = self.clone();
        Rc::new(move |call: PeerCall| {
            let groups = groups.clone();
            let peers = peers.clone();
            Box::pin(async move {
                if call.kind == PeerCallKind::Ping {
                    return Ok(Vec::new());
                }
                let raft = groups
                    .get(call.group)
                    .ok_or_else(|| crate::transport::no_group_here(call.group))?;
                let _counted = CallInFlight::new(&groups.calls, call.group);
                match call.kind {
                    PeerCallKind::ForwardWrite => {
                        let command: Command = decode(&call.payload)?;
                        // A forwarded write is proposed here only: never
                        // forwarded again (no loops between stale views).
                        let answer = propose_here(&raft, &peers, call.group, command, false).await;
                        Ok(encode(&answer))
                    }
                    PeerCallKind::ChangeMembership => {
                        let change: MemberChange = decode(&call.payload)?;
                        let answer = change_here(&raft, &peers, call.group, &change, false).await;
                        Ok(encode(&answer))
                    }
                    PeerCallKind::ReadIndex => {
                        crate::hibernate::wake(&raft, call.group);
                        let read = raft
                            .ensure_linearizable(ReadPolicy::ReadIndex)
                            .await
                            .map_err(|error| error.to_string())?;
                        Ok(encode(&read.log_id().index))
                    }
                    kind => {
                        if matches!(
                            kind,
                            PeerCallKind::AppendEntries | PeerCallKind::InstallSnapshot
                        ) {
                            // Only a leader sends these: the lease is fresh.
                            crate::hibernate::heard_from_leader(call.group);
                        }
                        serve_raft_call(&raft, kind, &call.payload).await
                    }
                }
            })
        })
    }
}

/// Why a write or read did not complete.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, thiserror::Error)]
pub enum GroupError {
    /// No leader could take it before the deadline (no quorum, partition).
    #[error("no leader for group {group} within {waited_ms} ms: {reason}")]
    Unavailable {
        /// The group.
        group: u64,
        /// How long it tried.
        waited_ms: u64,
        /// The last reason.
        reason: String,
    },
    /// The entry was proposed but a leader change discarded or hid its
    /// outcome: it may or may not be applied.
    #[error("outcome unknown after a leader change in group {group}: {reason}")]
    Indeterminate {
        /// The group.
        group: u64,
        /// Detail.
        reason: String,
    },
    /// The group has stopped (its storage failed).
    #[error("group {group} stopped: {reason}")]
    Stopped {
        /// The group.
        group: u64,
        /// Detail.
        reason: String,
    },
    /// The request cannot be done (a membership change that would leave
    /// no voter, or names an unknown node).
    #[error("group {group} refused: {reason}")]
    Refused {
        /// The group.
        group: u64,
        /// Why.
        reason: String,
    },
    /// A forwarded write reached a replica that no longer leads the group
    /// (it handed leadership off, or lost it): nothing was proposed, and
    /// the forwarding replica tries the current leader. Never reaches a
    /// client. (Added after the first peer protocol: a node of an earlier
    /// version cannot decode it, so such a write fails there instead of
    /// being retried.)
    #[error("node {me} does not lead group {group}; its leader is {leader:?}")]
    NotLeader {
        /// The group.
        group: u64,
        /// The node that answered.
        me: NodeId,
        /// The leader it knows of.
        leader: Option<NodeId>,
    },
}

impl GroupError {
    /// The group stopped: openraft's fatal error (a failed disk).
    fn stopped(group: u64, fatal: &impl std::fmt::Display) -> GroupError {
        GroupError::Stopped {
            group,
            reason: fatal.to_string(),
        }
    }

    /// No leader took the request between `started` and its deadline.
    fn unavailable(group: u64, started: Instant, reason: String) -> GroupError {
        GroupError::Unavailable {
            group,
            waited_ms: started.elapsed().as_millis() as u64,
            reason,
        }
    }
}

/// Proposes `command` and waits until it is applied; forwards to the
/// leader when this node is not it; retries through elections until
/// [`REQUEST_DEADLINE`].
pub async fn write<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    group: u64,
    command: Command,
) -> Result<Response, GroupError> {
    propose_here(raft, peers, group, command, true).await
}

async fn propose_here<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    group: u64,
    command: Command,
    may_forward: bool,
) -> Result<Response, GroupError> {
    let started = Instant::now();
    let me = *raft.node_id();
    let mut last_reason = String::from("no attempt");
    while started.elapsed() < REQUEST_DEADLINE {
        // A group asleep confirms its lease by heartbeats first.
        crate::hibernate::wake(raft, group);
        match raft.client_write(command.clone()).await {
            Ok(written) => return Ok(written.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                last_reason = forward.to_string();
                match forward.leader_id {
                    Some(leader) if leader != me && may_forward => {
                        match forward_write(raft, peers, leader, group, &command).await {
                            // A former leader: ask the current one.
                            Ok(Err(not_leader @ GroupError::NotLeader { .. })) => {
                                last_reason = not_leader.to_string();
                            }
                            Ok(answer) => return answer,
                            Err(reason) => last_reason = reason,
                        }
                    }
                    // A forwarded write at a replica that knows another
                    // leader: nothing is proposed here, and the forwarder
                    // tries again after `RETRY_PAUSE`, by when its own
                    // view names the new leader (openraft answers
                    // ForwardToLeader before it appends anything).
                    Some(leader) if leader != me => {
                        return Err(GroupError::NotLeader {
                            group,
                            me,
                            leader: Some(leader),
                        });
                    }
                    // Unknown leader, an election, or this node elected but
                    // not yet confirmed: wait and retry.
                    _ => {}
                }
            }
            Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(forward))) => {
                return Err(GroupError::Indeterminate {
                    group,
                    reason: forward.to_string(),
                });
            }
            Err(RaftError::Fatal(fatal)) => {
                return Err(GroupError::stopped(group, &fatal));
            }
            Err(RaftError::APIError(other)) => last_reason = other.to_string(),
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
    Err(GroupError::unavailable(group, started, last_reason))
}

/// The client of member `id`: a known peer, or one made from the address
/// the group's membership gives (a node that joined after this one started).
fn member_client<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    id: NodeId,
) -> Result<Rc<PeerClient>, String> {
    if let Some(client) = peers.get(id) {
        return Ok(client);
    }
    use openraft::rt::WatchReceiver;
    let addr = {
        let metrics = raft.metrics();
        let metrics = metrics.borrow_watched();
        metrics
            .membership_config
            .membership()
            .get_node(&id)
            .map(|node| node.addr.clone())
    };
    let addr = addr.ok_or_else(|| format!("node {id} is not a member"))?;
    peers.get_or_add(id, &addr)
}

/// Calls `member`'s replica of `group` and answers the payload it sends
/// back (forwarded writes and membership changes, read index requests).
async fn call_member<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    member: NodeId,
    call: PeerCall,
    deadline: Duration,
) -> Result<Vec<u8>, String> {
    let client = member_client(raft, peers, member)?;
    client
        .call(call, deadline)
        .await
        .map_err(|error| error.to_string())
}

async fn forward_write<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    leader: NodeId,
    group: u64,
    command: &Command,
) -> Result<Result<Response, GroupError>, String> {
    let call = PeerCall {
        group,
        kind: PeerCallKind::ForwardWrite,
        payload: encode(command),
    };
    let forwarded =
        async { decode(&call_member(raft, peers, leader, call, REQUEST_DEADLINE).await?) };
    // A traced write (its entry carries the trace to the leader): the
    // forward is a span of the trace too.
    match command {
        Command::Ops { trace: Some(_), .. } if !tracing::Span::current().is_disabled() => {
            use tracing::Instrument;
            forwarded
                .instrument(tracing::info_span!("raft.forward", group, leader))
                .await
        }
        _ => forwarded.await,
    }
}

/// Waits until a read of this node's state machine is linearizable (read
/// index, see the module docs). On a follower it asks the leader for the
/// read index ([`PeerCallKind::ReadIndex`]) and waits until it has applied
/// that far itself, so any replica serves linearizable reads.
pub async fn read_barrier<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    group: u64,
) -> Result<(), ReadRefused> {
    let started = Instant::now();
    let me = *raft.node_id();
    let mut last_reason = String::new();
    while started.elapsed() < REQUEST_DEADLINE {
        crate::hibernate::wake(raft, group);
        match raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(forward))) => {
                match forward.leader_id {
                    Some(leader) if leader != me => {
                        match follower_read_index(raft, peers, leader, group).await {
                            Ok(()) => return Ok(()),
                            Err(reason) => last_reason = reason,
                        }
                    }
                    _ => last_reason = forward.to_string(),
                }
            }
            Err(RaftError::Fatal(fatal)) => {
                return Err(ReadRefused::Failed(GroupError::stopped(group, &fatal)))
            }
            Err(RaftError::APIError(other)) => last_reason = other.to_string(),
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
    Err(ReadRefused::Failed(GroupError::unavailable(
        group,
        started,
        last_reason,
    )))
}

/// The follower half of a read: the leader's read index, then this
/// node's state machine caught up to it.
async fn follower_read_index<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    leader: NodeId,
    group: u64,
) -> Result<(), String> {
    let call = PeerCall {
        group,
        kind: PeerCallKind::ReadIndex,
        payload: Vec::new(),
    };
    let index: u64 = decode(&call_member(raft, peers, leader, call, REQUEST_DEADLINE).await?)?;
    raft.wait(Some(REQUEST_DEADLINE))
        .applied_index_at_least(Some(index), "read index")
        .await
        .map(|_| ())
        .map_err(|error| error.to_string())
}

/// A membership change asked of a group.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MemberChange {
    /// Make node `id`, reached at `addr`, a voter: it joins as a learner,
    /// catches up (by log, or by snapshot if the log was purged), then is
    /// promoted through joint consensus. A voter already is: no change.
    Add {
        /// The node.
        id: NodeId,
        /// Its Raft address for this group (`host:port`).
        addr: String,
    },
    /// Remove node `id` from the group (through joint consensus). Not a
    /// member: no change.
    Remove {
        /// The node.
        id: NodeId,
    },
}

/// Applies a membership change on the group's leader (forwarding it there
/// from a follower), retrying through elections and concurrent changes
/// until [`MEMBERSHIP_DEADLINE`]. Answers the voters once the change is
/// committed.
pub async fn change_members<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    group: u64,
    change: &MemberChange,
) -> Result<Vec<NodeId>, GroupError> {
    change_here(raft, peers, group, change, true).await
}

async fn change_here<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    group: u64,
    change: &MemberChange,
    may_forward: bool,
) -> Result<Vec<NodeId>, GroupError> {
    let started = Instant::now();
    let me = *raft.node_id();
    let mut last_reason = String::from("no attempt");
    while started.elapsed() < MEMBERSHIP_DEADLINE {
        crate::hibernate::wake(raft, group);
        // Done when this node leads and its committed membership is
        // settled (not joint, nothing newer proposed) and says so.
        if raft.current_leader().await == Some(me) {
            let settled = raft
                .with_raft_state(|state| {
                    let committed = state.membership_state.committed();
                    let effective = state.membership_state.effective();
                    let settled = committed.log_id() == effective.log_id()
                        && committed.membership().get_joint_config().len() == 1;
                    settled.then(|| committed.membership().voter_ids().collect::<Vec<_>>())
                })
                .await;
            if let Ok(Some(voters)) = settled {
                let done = match change {
                    MemberChange::Add { id, .. } => voters.contains(id),
                    MemberChange::Remove { id } => !voters.contains(id),
                };
                if done {
                    return Ok(voters);
                }
            }
        }
        let attempt = match change {
            MemberChange::Add { id, addr } => {
                match raft.add_learner(*id, Node::new(addr.clone()), true).await {
                    Ok(_) => {
                        raft.change_membership(ChangeMembers::AddVoterIds([*id].into()), false)
                            .await
                    }
                    Err(error) => Err(error),
                }
            }
            MemberChange::Remove { id } => {
                raft.change_membership(ChangeMembers::RemoveVoters([*id].into()), false)
                    .await
            }
        };
        match attempt {
            // The final (uniform) membership is committed.
            Ok(written) => {
                if let Some(membership) = written.membership {
                    return Ok(membership.voter_ids().collect());
                }
            }
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(forward))) => {
                last_reason = forward.to_string();
                match forward.leader_id {
                    Some(leader) if leader != me && may_forward => {
                        match forward_change(raft, peers, leader, group, change).await {
                            Ok(answer) => return answer,
                            Err(reason) => last_reason = reason,
                        }
                    }
                    _ => {}
                }
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(
                ChangeMembershipError::EmptyMembership(empty),
            ))) => {
                return Err(GroupError::Refused {
                    group,
                    reason: empty.to_string(),
                })
            }
            Err(RaftError::Fatal(fatal)) => return Err(GroupError::stopped(group, &fatal)),
            // A change in progress, an entry lost to an election: retry.
            Err(RaftError::APIError(other)) => last_reason = other.to_string(),
        }
        glommio::timer::sleep(RETRY_PAUSE).await;
    }
    Err(GroupError::unavailable(group, started, last_reason))
}

async fn forward_change<A: Applier>(
    raft: &GroupRaft<A>,
    peers: &Peers,
    leader: NodeId,
    group: u64,
    change: &MemberChange,
) -> Result<Result<Vec<NodeId>, GroupError>, String> {
    let call = PeerCall {
        group,
        kind: PeerCallKind::ChangeMembership,
        payload: encode(change),
    };
    decode(&call_member(raft, peers, leader, call, MEMBERSHIP_DEADLINE).await?)
}

/// Why a linearizable read cannot be served here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadRefused {
    /// No leader confirmed the read before the deadline, or the group
    /// stopped.
    Failed(GroupError),
}

/// What a group looks like from this replica (for status pages and
/// metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupStatus {
    /// The group.
    pub group: u64,
    /// This node.
    pub node_id: NodeId,
    /// `Leader`, `Follower`, `Candidate`, `Learner` or `Shutdown`.
    pub state: String,
    /// The leader this replica knows of.
    pub leader: Option<NodeId>,
    /// Current term.
    pub term: u64,
    /// Index of the last entry in this replica's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry this replica knows committed.
    pub committed_index: Option<u64>,
    /// Index of the last entry applied to this replica's state machine.
    pub applied_index: Option<u64>,
    /// Why the group stopped (its storage failed), if it did: it then
    /// refuses everything.
    pub fatal: Option<String>,
    /// Voters of the current membership, with their Raft addresses.
    pub voters: Vec<(NodeId, String)>,
    /// Learners (nodes being added, catching up), with their addresses.
    pub learners: Vec<(NodeId, String)>,
    /// Last log index covered by this replica's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last log index purged from this replica's log (covered by a snapshot).
    pub purged_index: Option<u64>,
    /// Whether the group sleeps on this node ([`crate::hibernate`]): no
    /// heartbeats, so a leader's `last_ack_ms` grows while all is well.
    pub asleep: bool,
    /// The range's configuration epoch: the log index of the membership
    /// this replica uses. Every change of the replicas raises it (twice:
    /// joint consensus commits two entries), nothing else does; a replica
    /// that has not caught up with a change shows the older one.
    pub epoch: u64,
    /// On the leader: each other member's progress (empty elsewhere).
    pub followers: Vec<FollowerProgress>,
}

impl GroupStatus {
    /// The other members (voters and learners), with their Raft addresses.
    pub fn other_members(&self) -> Vec<(NodeId, String)> {
        self.voters
            .iter()
            .chain(&self.learners)
            .filter(|(id, _)| *id != self.node_id)
            .cloned()
            .collect()
    }
}

/// How a member keeps up with its leader (known on the leader only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerProgress {
    /// The member.
    pub node_id: NodeId,
    /// Last log index the leader knows it holds.
    pub matched_index: Option<u64>,
    /// Entries it lacks: the leader's last index minus `matched_index`.
    pub lag: u64,
    /// Milliseconds since it last acknowledged a heartbeat or append
    /// (`None`: never since this leader was elected). The health check: a
    /// member silent for several election timeouts is down or cut off.
    pub last_ack_ms: Option<u64>,
}

/// The group's leader as this replica knows it now (cheaper than
/// [`status`]: no membership copied).
pub fn leader<A: Applier>(raft: &GroupRaft<A>) -> Option<NodeId> {
    use openraft::rt::WatchReceiver;
    let metrics = raft.metrics();
    let leader = metrics.borrow_watched().current_leader;
    leader
}

/// The group's status as this replica sees it now.
pub fn status<A: Applier>(raft: &GroupRaft<A>, group: u64) -> GroupStatus {
    use openraft::rt::WatchReceiver;
    let metrics = raft.metrics();
    let metrics = metrics.borrow_watched();
    let membership = metrics.membership_config.membership();
    let with_addr = |id: NodeId| {
        let addr = membership
            .get_node(&id)
            .map(|node| node.addr.clone())
            .unwrap_or_default();
        (id, addr)
    };
    let last_index = metrics.last_log_index.unwrap_or(0);
    let followers = metrics
        .replication
        .iter()
        .flatten()
        .filter(|(id, _)| **id != metrics.id)
        .map(|(id, matched)| {
            let matched_index = matched.map(|log_id| log_id.index);
            let last_ack_ms = metrics
                .heartbeat
                .as_ref()
                .and_then(|beats| beats.get(id).cloned().flatten())
                .map(|at| at.elapsed().as_millis() as u64);
            FollowerProgress {
                node_id: *id,
                matched_index,
                lag: last_index.saturating_sub(matched_index.unwrap_or(0)),
                last_ack_ms,
            }
        })
        .collect();
    GroupStatus {
        group,
        node_id: metrics.id,
        state: format!("{:?}", metrics.state),
        leader: metrics.current_leader,
        term: metrics.current_term,
        epoch: metrics
            .membership_config
            .log_id()
            .as_ref()
            .map_or(0, |log_id| log_id.index),
        last_log_index: metrics.last_log_index,
        committed_index: metrics.local_committed.map(|log_id| log_id.index),
        applied_index: metrics.last_applied.map(|log_id| log_id.index),
        fatal: metrics
            .running_state
            .as_ref()
            .err()
            .map(|fatal| fatal.to_string()),
        voters: membership.voter_ids().map(with_addr).collect(),
        learners: membership.learner_ids().map(with_addr).collect(),
        snapshot_index: metrics.snapshot.map(|log_id| log_id.index),
        purged_index: metrics.purged.map(|log_id| log_id.index),
        asleep: crate::hibernate::is_asleep(group),
        followers,
    }
}

/// Pause between looks at the metrics while a leadership hand-off settles.
const HAND_OFF_POLL: Duration = Duration::from_millis(10);

/// Hands this replica's leadership of `group` to another voter, the one
/// with the most of the log (graceful shutdown: the group gets a leader at
/// once instead of after an election timeout). Returns the new leader, or
/// `None` when this replica is not the leader, no other voter exists, or no
/// other leader took over within `timeout` (the caller stops anyway; the
/// others then elect one after their election timeout).
pub async fn hand_off_leadership<A: Applier>(
    raft: &GroupRaft<A>,
    group: u64,
    timeout: Duration,
) -> Option<NodeId> {
    if status(raft, group).leader != Some(*raft.node_id()) {
        return None;
    }
    // A sleeping group has heard nothing from its followers lately: wake
    // it and let one heartbeat round show who answers.
    if crate::hibernate::is_asleep(group) {
        crate::hibernate::wake(raft, group);
        let _ = raft.trigger().heartbeat().await;
        let heard_by = Instant::now() + HEARTBEAT_INTERVAL * 5;
        while Instant::now() < heard_by
            && !status(raft, group)
                .followers
                .iter()
                .any(|follower| follower.last_ack_ms.is_some_and(|ms| ms < 1_000))
        {
            glommio::timer::sleep(HAND_OFF_POLL).await;
        }
    }
    let before = status(raft, group);
    if before.leader != Some(before.node_id) {
        return None;
    }
    let voters: Vec<NodeId> = before.voters.iter().map(|(id, _)| *id).collect();
    // The voter closest to the leader's log (and heard from lately) can
    // win the election the hand-off starts without catching up first.
    let target = before
        .followers
        .iter()
        .filter(|follower| voters.contains(&follower.node_id))
        .filter(|follower| follower.last_ack_ms.is_some_and(|ms| ms < 1_000))
        .max_by_key(|follower| follower.matched_index)
        .map(|follower| follower.node_id)?;
    assert_ne!(
        target, before.node_id,
        "a leader hands off to another voter"
    );
    if raft.trigger().transfer_leader(target).await.is_err() {
        return None;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        let now = status(raft, group);
        match now.leader {
            Some(leader) if leader != before.node_id => return Some(leader),
            _ => glommio::timer::sleep(HAND_OFF_POLL).await,
        }
    }
    None
}

/// Hands this replica's leadership to `target` if `target` is a voter
/// that has acknowledged the leader within the last second and holds
/// every entry the leader has (so it wins the election at once); answers
/// whether `target` leads within `timeout`. Does nothing on a follower, a
/// sleeping group (an idle range's leader matters little; it is balanced
/// once it wakes) or for a target that is behind or silent.
pub async fn transfer_leadership_to<A: Applier>(
    raft: &GroupRaft<A>,
    group: u64,
    target: NodeId,
    timeout: Duration,
) -> bool {
    let before = status(raft, group);
    if before.leader != Some(before.node_id)
        || target == before.node_id
        || crate::hibernate::is_asleep(group)
        || !before.voters.iter().any(|(id, _)| *id == target)
    {
        return false;
    }
    let ready = before.followers.iter().any(|follower| {
        follower.node_id == target
            && follower.lag == 0
            && follower.last_ack_ms.is_some_and(|ms| ms < 1_000)
    });
    if !ready || raft.trigger().transfer_leader(target).await.is_err() {
        return false;
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match status(raft, group).leader {
            Some(leader) if leader == target => return true,
            Some(leader) if leader != before.node_id => return false,
            _ => glommio::timer::sleep(HAND_OFF_POLL).await,
        }
    }
    false
}

/// A range whose oldest live entry keeps more than this many segments of
/// its core's shared log alive (16 MiB each) is made to let go.
pub const MAX_SEGMENTS_PINNED: usize = 8;
/// How often a core looks for ranges that pin its log's segments.
pub const PINNED_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Makes the ranges that hold the core's shared log back let go, forever
/// (a task per core). A range's oldest live entry pins every segment from
/// its own on, whatever the other ranges purged: an idle range keeps the
/// entries since its last snapshot (up to [`LOGS_KEPT_AFTER_SNAPSHOT`])
/// while busy neighbours fill segment after segment. Every `every`, each
/// range that pins more than `max_segments` segments (see
/// [`CoreLog::ranges_pinning`]) is asked to purge its log up to its
/// snapshot (ignoring the entries openraft keeps for followers a little
/// behind: those catch up by snapshot instead), or, when its snapshot
/// covers nothing more to purge, to take a snapshot first (purged at the
/// next look).
pub async fn release_pinned_segments<A: Applier>(
    groups: Rc<CoreGroups<A>>,
    log: CoreLog,
    max_segments: usize,
    every: Duration,
) {
    use openraft::rt::WatchReceiver;
    loop {
        glommio::timer::sleep(every).await;
        let pinning = match log.ranges_pinning(max_segments) {
            Ok(pinning) => pinning,
            Err(error) => {
                tracing::warn!(dir = %log.dir().display(), %error, "cannot list the log's segments");
                continue;
            }
        };
        for range in pinning {
            let Some(raft) = groups.get(range) else {
                continue; // not a group of this core (any more)
            };
            let (snapshot, purged) = {
                let metrics = raft.metrics();
                let metrics = metrics.borrow_watched();
                (
                    metrics.snapshot.map(|id| id.index),
                    metrics.purged.map(|id| id.index),
                )
            };
            let result = match snapshot {
                Some(at) if purged.is_none_or(|purged| purged < at) => {
                    tracing::info!(
                        range,
                        upto = at,
                        "range pins the core's log: purging to its snapshot"
                    );
                    raft.trigger().purge_log(at).await
                }
                _ => {
                    tracing::info!(range, "range pins the core's log: taking a snapshot");
                    raft.trigger().snapshot().await
                }
            };
            if let Err(error) = result {
                tracing::warn!(range, %error, "cannot release the range's log");
            }
        }
    }
}
