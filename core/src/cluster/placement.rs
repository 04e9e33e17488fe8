//! Replica placement planner: decides on which nodes each range's Raft
//! replicas live, and which steps take the cluster from the layout it has to
//! a balanced one.
//!
//! This module is pure: it reads a [`Layout`] (nodes, ranges, where each
//! range's replicas and leader are) and returns a list of [`Operation`]s.
//! It does no I/O and keeps no state between calls. A scheduler (the
//! equivalent of TiKV's PD or CockroachDB's allocator/replicate queue)
//! executes the operations against the real cluster, then calls [`plan`]
//! again on the layout it observes. [`apply`] describes what executing one
//! operation does to a layout; the simulator in the tests uses it to check
//! the planner without sockets.
//!
//! # Vocabulary
//! - A *range* is a slice of the key space replicated by one Raft group.
//!   Each member of the group is a *replica*, stored on a distinct node.
//! - The *replication factor* (RF) is the number of replicas per range. It
//!   must be odd: a group of `2f + 1` members survives `f` failures, and a
//!   group of `2f + 2` members still survives only `f` (its majority is
//!   `f + 2`), so the extra member costs a copy of the data and buys nothing.
//! - The *leader* of a range serves its reads and orders its writes, so it
//!   carries more CPU and network load than a follower.
//! - A *zone* is a failure domain (a rack, a data center): nodes that may
//!   fail together. A range whose replicas sit in distinct zones survives the
//!   loss of a whole zone.
//!
//! # The algorithm
//! [`plan`] works in three phases, on a private copy of the layout that
//! every emitted operation updates (so each phase sees the effect of the
//! previous ones, and the planner checks every operation it emits with the
//! same rules as [`apply`]):
//!
//! 1. **Repair.** A range with more replicas than RF sheds the extra ones
//!    (down nodes first). A range with fewer gets new replicas on Up nodes.
//!    A replica on a Draining or Down node moves to an Up node. A leader on a
//!    node that is not Up moves with its replica, or, when the replica cannot
//!    move (no free Up node), is handed to a replica on an Up node.
//! 2. **Replica balance** (like PD's balance-region scheduler). Each Up node
//!    is scored by its replica *count*. While the most and least loaded Up
//!    nodes differ by more than the tolerance, move one replica from the most
//!    loaded node to the least loaded node that may take it. The range to move
//!    is chosen deterministically: the one whose size (`keys`) is closest to
//!    the size that keeps *keys moved* equal to *replicas moved x mean range
//!    size* (so keys moved track replicas moved even when ranges differ in
//!    size). No replica is copied twice: when the replica to move is one the
//!    plan is already copying (a repair, or an earlier balance move), the
//!    earlier operation is re-targeted instead, and when no single move is
//!    free that way, a chain of re-targets through a third node is tried
//!    before paying for a new copy.
//! 3. **Leader balance** (like PD's balance-leader scheduler). While the
//!    leader counts of Up nodes differ by more than the tolerance, hand a
//!    leadership from the node with the most leaders to one with fewer, along
//!    a chain of ranges if no range links the two directly.
//!
//! ## Why count-based, with a tolerance
//! Counting replicas is cheap, needs no load statistics and converges: every
//! move lowers the sum of squared counts, so the loop cannot cycle. Ranges
//! are split at a bounded size, so counts are a fair proxy for data; the key
//! figure is tracked separately. The tolerance stops the planner from chasing
//! a difference that cannot be removed (3 ranges of 3 replicas on 4 nodes:
//! someone has one more) and from moving data back and forth when a count
//! wobbles by one: a move happens only between nodes that differ by more than
//! the tolerance, which is [`DEFAULT_TOLERANCE`] (1) by default; 0 acts as 1,
//! because a difference of 1 can only be swapped, never removed.
//!
//! ## Why the most loaded node gives to the least loaded one
//! Every replica moved is a snapshot copied over the network. When a node
//! joins a cluster of N, a balanced result has every node holding 1/(N+1) of
//! all replicas, so at least 1/(N+1) of the data must reach the new node, and
//! a planner that moves only from over-loaded to under-loaded nodes moves
//! exactly that much: each move fixes one replica of surplus and one of
//! deficit, none is wasted on a shuffle between nodes that were already fine.
//! With the greedy stopping at `max - min <= 1`, adding one node to a
//! balanced cluster moves `floor(RF x G / (N + 1))` replicas, at or below the
//! ideal. When a node drains, the ideal is its own replicas: repair sends
//! each to the least loaded node that may take it, and re-targeting fixes
//! what that water-filling leaves uneven, so nothing else moves. That needs
//! a node's ranges to share their other replicas with many nodes, which is
//! why placement breaks ties between equally loaded nodes in a per-range
//! pseudo-random order instead of by id (by id, node 1's ranges would all
//! live on nodes 1, 2 and 3, and nodes 2 and 3 could take none of them).
//!
//! ## Why leaders are balanced separately
//! Moving leadership moves no data: a follower already has the log, a Raft
//! leadership transfer takes a round trip. So leaders are balanced last, by
//! [`Operation::TransferLeader`] among a range's existing replicas, after the
//! expensive replica moves have settled where the replicas are.
//!
//! ## Zones
//! A node's failure domain is its zone, or the node itself when it has no
//! zone. Placement and repair put a new replica in the zone holding the
//! fewest of the range's replicas, so a range's replicas sit in distinct
//! zones whenever there are at least RF zones, and are spread as evenly as
//! the zones allow otherwise (RF 3 over 2 zones: 2 + 1). Balancing never
//! makes that spread worse: a replica may change zone only towards a zone
//! holding fewer of the range's replicas than the zone it leaves. Zones take
//! priority over counts: with zones of unequal size, the counts are balanced
//! only as far as the zones allow (a zone with one node in a 3-zone, RF 3
//! cluster holds a replica of every range).
//!
//! # Invariants
//! Every operation [`plan`] emits is valid when applied in order (the planner
//! asserts it with the rules of [`apply`]), and:
//! - no range ever has two replicas on one node;
//! - no replica or leader is placed on a node that is not Up;
//! - no balance move makes a range's zone spread worse;
//! - a [`Operation::MoveReplica`] of the leader's replica carries the
//!   leadership to the new replica (as CockroachDB gives the lease to the
//!   incoming voter), so no separate transfer precedes it; leader balance
//!   evens the leaders out afterwards;
//! - a range that has lost its quorum (a majority of its replicas on Down
//!   nodes) is left alone: a membership change needs a quorum to commit, so
//!   it needs an operator (TiKV's "unsafe recovery"), not the planner;
//! - the result is deterministic: the same layout gives the same plan,
//!   whatever the order of the `nodes` and `ranges` vectors (everything is
//!   visited in id order);
//! - planning the layout the plan leads to returns no operation: each phase
//!   stops at a fixed point that the next call finds again.
//!
//! # What the scheduler does with each operation
//! The steps are those of TiKV (PD operators) and CockroachDB. Each is
//! idempotent: the scheduler looks at the range's current membership before
//! each step and skips the steps already done, so re-running an operation
//! after a crash continues it instead of repeating it.
//! - [`Operation::MoveReplica`]: add a learner (a non-voting member, so a
//!   slow catch-up cannot stall the range's writes) on `to`; catch it up by
//!   sending a snapshot, then the log; promote it through joint consensus
//!   (`to` enters as a voter and `from` leaves as one in the same joint
//!   configuration, where decisions need a majority of both the old and the
//!   new member sets, so a crash mid-way cannot produce two majorities); if
//!   `from` leads the range, hand leadership to `to` before leaving the joint
//!   configuration; leave it; raise the range's epoch (its configuration
//!   version) so requests routed with the old membership are rejected; the
//!   removed replica deletes its data. A `from` on a Down node works the same
//!   way: removing a member is a configuration change committed by the live
//!   majority, the dead node need not take part (if it was the leader, the
//!   live replicas have elected another one, which drives the change and
//!   hands leadership to `to`).
//! - [`Operation::AddReplica`]: the first three steps of a move, then raise
//!   the epoch; for a range with fewer replicas than RF (a dead member was
//!   already removed).
//! - [`Operation::RemoveReplica`]: a configuration change removing a
//!   non-leader member, then raise the epoch; for a range with more replicas
//!   than RF.
//! - [`Operation::TransferLeader`]: a Raft leadership transfer (the leader
//!   brings `to` up to date, then tells it to campaign at once); no data
//!   moves. If `from` is Down, the live replicas have already elected a
//!   leader; the scheduler makes `to` the leader.
//!
//! # Termination
//! Each balancing step lowers the sum of squared counts of the Up nodes by at
//! least 2 (it moves one unit from a node to one holding at least 2 fewer),
//! so each phase runs at most (initial sum of squares) / 2 rounds; the loops
//! assert that cap. A chain (of re-targets or leader transfers) counts as one
//! step: its intermediate nodes each lose one and gain one. Repair visits
//! each range once.
//!
//! # Cost
//! The planner keeps per-node counts, per-node ranges indexed by size, and
//! the leader handoff graph up to date as it emits operations, so a step
//! costs a few logarithmic look-ups plus a scan of the Up nodes, not a pass
//! over all ranges.

use std::cmp::Reverse;
use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::ops::Bound;

/// Identifies a node (a TinkerDB server) in the cluster.
pub type NodeId = u64;

/// Identifies a range (one Raft group).
pub type RangeId = u64;

/// The default difference of replica (and leader) counts between the most
/// and the least loaded Up node that the planner accepts without moving
/// anything: 1, the smallest difference that cannot always be removed.
pub const DEFAULT_TOLERANCE: usize = 1;

/// Whether a node can hold replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeState {
    /// Running and accepting replicas and leaders.
    Up,
    /// Running but being decommissioned: its replicas and leaders must move
    /// away, it gets none. It still counts towards a range's quorum.
    Draining,
    /// Not running: its replicas must be replaced, it gets none, and it does
    /// not count towards a range's quorum.
    Down,
}

/// A node as the planner sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    /// The node's id, unique in the layout.
    pub id: NodeId,
    /// The node's failure domain; `None` makes the node its own domain.
    pub zone: Option<String>,
    /// Whether the node can hold replicas.
    pub state: NodeState,
}

impl NodeInfo {
    /// An Up node without a zone.
    pub fn up(id: NodeId) -> Self {
        NodeInfo {
            id,
            zone: None,
            state: NodeState::Up,
        }
    }

    /// An Up node in `zone`.
    pub fn up_in_zone(id: NodeId, zone: &str) -> Self {
        NodeInfo {
            id,
            zone: Some(zone.to_string()),
            state: NodeState::Up,
        }
    }
}

/// A range: its replicas and its leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RangeInfo {
    /// The range's id, unique in the layout.
    pub id: RangeId,
    /// The nodes holding a replica, distinct; their order carries no meaning.
    /// A node id missing from the layout's nodes is treated as a Down node
    /// (the node was removed from the cluster).
    pub replicas: Vec<NodeId>,
    /// The replica that leads the range, if one is known. A range without a
    /// leader is left to Raft's election; leader balancing skips it.
    pub leader: Option<NodeId>,
    /// The range's size in keys: the weight of moving one of its replicas.
    pub keys: u64,
}

/// A range to place with [`place_initial`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewRange {
    /// The range's id.
    pub id: RangeId,
    /// The range's size in keys.
    pub keys: u64,
}

/// The cluster as the planner sees it: which node holds which replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The number of replicas each range should have (odd).
    pub replication_factor: usize,
    /// The nodes, in any order.
    pub nodes: Vec<NodeInfo>,
    /// The ranges, in any order.
    pub ranges: Vec<RangeInfo>,
}

impl Layout {
    /// Checks the structure the planner relies on: a valid replication
    /// factor, unique node and range ids, distinct replicas per range, and a
    /// leader that is one of its range's replicas.
    pub fn validate(&self) -> Result<(), PlacementError> {
        check_replication_factor(self.replication_factor)?;
        let mut node_ids = BTreeSet::new();
        for node in &self.nodes {
            if !node_ids.insert(node.id) {
                return Err(PlacementError::DuplicateNode { node: node.id });
            }
        }
        let mut range_ids = BTreeSet::new();
        for range in &self.ranges {
            if !range_ids.insert(range.id) {
                return Err(PlacementError::DuplicateRange { range: range.id });
            }
            let mut holders = BTreeSet::new();
            for &node in &range.replicas {
                if !holders.insert(node) {
                    return Err(PlacementError::DuplicateReplica {
                        range: range.id,
                        node,
                    });
                }
            }
            if let Some(leader) = range.leader {
                if !holders.contains(&leader) {
                    return Err(PlacementError::LeaderNotAReplica {
                        range: range.id,
                        leader,
                    });
                }
            }
        }
        Ok(())
    }

    /// The node with this id, if the layout has it.
    pub fn node(&self, id: NodeId) -> Option<&NodeInfo> {
        self.nodes.iter().find(|node| node.id == id)
    }

    /// The range with this id, if the layout has it.
    pub fn range(&self, id: RangeId) -> Option<&RangeInfo> {
        self.ranges.iter().find(|range| range.id == id)
    }

    /// The state of a node; a node missing from the layout is Down.
    pub fn node_state(&self, id: NodeId) -> NodeState {
        self.node(id).map_or(NodeState::Down, |node| node.state)
    }
}

/// Why a placement cannot be computed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlacementError {
    /// A replication factor of 0 would store nothing.
    ZeroReplicationFactor,
    /// An even replication factor tolerates no more failures than the odd
    /// one below it.
    EvenReplicationFactor {
        /// The rejected replication factor.
        replication_factor: usize,
    },
    /// Each range needs its replicas on distinct Up nodes.
    NotEnoughUpNodes {
        /// How many nodes are Up.
        up_nodes: usize,
        /// How many replicas each range needs.
        replication_factor: usize,
    },
    /// Two nodes share an id.
    DuplicateNode {
        /// The repeated id.
        node: NodeId,
    },
    /// Two ranges share an id.
    DuplicateRange {
        /// The repeated id.
        range: RangeId,
    },
    /// A range lists the same node twice among its replicas.
    DuplicateReplica {
        /// The range.
        range: RangeId,
        /// The node listed twice.
        node: NodeId,
    },
    /// A range's leader is not one of its replicas.
    LeaderNotAReplica {
        /// The range.
        range: RangeId,
        /// The leader that holds no replica.
        leader: NodeId,
    },
}

impl fmt::Display for PlacementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PlacementError::ZeroReplicationFactor => {
                write!(
                    f,
                    "replication factor 0: each range needs at least one replica"
                )
            }
            PlacementError::EvenReplicationFactor { replication_factor } => write!(
                f,
                "replication factor {replication_factor} is even: a Raft group of \
                 {replication_factor} survives no more failures than one of {}, use an odd factor",
                replication_factor - 1
            ),
            PlacementError::NotEnoughUpNodes {
                up_nodes,
                replication_factor,
            } => write!(
                f,
                "{up_nodes} Up node(s) cannot hold {replication_factor} replicas of a range \
                 on distinct nodes"
            ),
            PlacementError::DuplicateNode { node } => write!(f, "node id {node} appears twice"),
            PlacementError::DuplicateRange { range } => {
                write!(f, "range id {range} appears twice")
            }
            PlacementError::DuplicateReplica { range, node } => {
                write!(
                    f,
                    "range {range} lists node {node} twice among its replicas"
                )
            }
            PlacementError::LeaderNotAReplica { range, leader } => write!(
                f,
                "range {range} is led by node {leader}, which holds none of its replicas"
            ),
        }
    }
}

impl std::error::Error for PlacementError {}

fn check_replication_factor(replication_factor: usize) -> Result<(), PlacementError> {
    if replication_factor == 0 {
        Err(PlacementError::ZeroReplicationFactor)
    } else if replication_factor.is_multiple_of(2) {
        Err(PlacementError::EvenReplicationFactor { replication_factor })
    } else {
        Ok(())
    }
}

/// One step for the scheduler (see the module documentation for how each is
/// executed). Applied in the order [`plan`] returns them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Operation {
    /// Replace the replica on `from` by a new one on `to` (learner, catch
    /// up, joint-consensus promotion, removal of `from`). If `from` leads the
    /// range, the leadership goes to `to` as part of the move.
    MoveReplica {
        /// The range.
        range: RangeId,
        /// The node losing its replica.
        from: NodeId,
        /// The Up node receiving the new replica.
        to: NodeId,
    },
    /// Give an under-replicated range a new replica on `to`.
    AddReplica {
        /// The range.
        range: RangeId,
        /// The Up node receiving the new replica.
        to: NodeId,
    },
    /// Remove the (non-leader) replica on `from` from an over-replicated
    /// range.
    RemoveReplica {
        /// The range.
        range: RangeId,
        /// The node losing its replica.
        from: NodeId,
    },
    /// Hand the range's leadership from `from` to the replica on `to`.
    TransferLeader {
        /// The range.
        range: RangeId,
        /// The current leader.
        from: NodeId,
        /// The Up replica becoming the leader.
        to: NodeId,
    },
}

impl Operation {
    /// The range the operation changes.
    pub fn range(&self) -> RangeId {
        match *self {
            Operation::MoveReplica { range, .. }
            | Operation::AddReplica { range, .. }
            | Operation::RemoveReplica { range, .. }
            | Operation::TransferLeader { range, .. } => range,
        }
    }

    /// Whether the operation copies the range's data to a node (a snapshot
    /// sent over the network): true for moves and additions.
    pub fn copies_data(&self) -> bool {
        matches!(
            self,
            Operation::MoveReplica { .. } | Operation::AddReplica { .. }
        )
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Operation::MoveReplica { range, from, to } => {
                write!(
                    f,
                    "move replica of range {range} from node {from} to node {to}"
                )
            }
            Operation::AddReplica { range, to } => {
                write!(f, "add replica of range {range} on node {to}")
            }
            Operation::RemoveReplica { range, from } => {
                write!(f, "remove replica of range {range} from node {from}")
            }
            Operation::TransferLeader { range, from, to } => {
                write!(
                    f,
                    "transfer leadership of range {range} from node {from} to node {to}"
                )
            }
        }
    }
}

/// Applies what executing `operation` does to `layout`.
///
/// # Panics
/// If the operation is not valid on this layout: an unknown range; a move,
/// addition or transfer to a node that is not Up or (for moves and additions)
/// already holds a replica of the range; a move or removal from a node
/// holding no replica; an addition to a range that already has RF replicas
/// or a removal from one that has no more than RF; a removal of the leader;
/// a transfer whose `from` is not the leader or whose `to` is not a replica.
/// It checks membership validity only, not placement policy (zones, load).
pub fn apply(layout: &mut Layout, operation: &Operation) {
    let replication_factor = layout.replication_factor;
    let nodes = &layout.nodes;
    let is_up = |id: NodeId| {
        nodes
            .iter()
            .any(|node| node.id == id && node.state == NodeState::Up)
    };
    let Some(range) = layout
        .ranges
        .iter_mut()
        .find(|range| range.id == operation.range())
    else {
        panic!("{operation}: the layout has no range {}", operation.range());
    };
    apply_to_range(range, operation, replication_factor, is_up);
}

/// The rules of [`apply`] on one range; the planner checks its own
/// operations with them too.
fn apply_to_range(
    range: &mut RangeInfo,
    operation: &Operation,
    replication_factor: usize,
    is_up: impl Fn(NodeId) -> bool,
) {
    assert_eq!(
        range.id,
        operation.range(),
        "{operation}: applied to the wrong range"
    );
    let holds = |range: &RangeInfo, node: NodeId| range.replicas.contains(&node);
    match *operation {
        Operation::MoveReplica { from, to, .. } => {
            assert!(
                from != to,
                "{operation}: source and target are the same node"
            );
            assert!(is_up(to), "{operation}: node {to} is not Up");
            assert!(
                !holds(range, to),
                "{operation}: node {to} already holds a replica"
            );
            let Some(slot) = range.replicas.iter().position(|&node| node == from) else {
                panic!("{operation}: node {from} holds no replica of the range");
            };
            range.replicas[slot] = to;
            if range.leader == Some(from) {
                range.leader = Some(to);
            }
        }
        Operation::AddReplica { to, .. } => {
            assert!(
                range.replicas.len() < replication_factor,
                "{operation}: the range already has {} replicas (replication factor {replication_factor})",
                range.replicas.len()
            );
            assert!(is_up(to), "{operation}: node {to} is not Up");
            assert!(
                !holds(range, to),
                "{operation}: node {to} already holds a replica"
            );
            range.replicas.push(to);
        }
        Operation::RemoveReplica { from, .. } => {
            assert!(
                range.replicas.len() > replication_factor,
                "{operation}: the range has only {} replicas (replication factor {replication_factor})",
                range.replicas.len()
            );
            assert!(
                range.leader != Some(from),
                "{operation}: node {from} leads the range, transfer its leadership first"
            );
            let Some(slot) = range.replicas.iter().position(|&node| node == from) else {
                panic!("{operation}: node {from} holds no replica of the range");
            };
            range.replicas.remove(slot);
        }
        Operation::TransferLeader { from, to, .. } => {
            assert_eq!(
                range.leader,
                Some(from),
                "{operation}: node {from} does not lead the range"
            );
            assert!(
                from != to,
                "{operation}: source and target are the same node"
            );
            assert!(is_up(to), "{operation}: node {to} is not Up");
            assert!(
                holds(range, to),
                "{operation}: node {to} holds no replica of the range"
            );
            range.leader = Some(to);
        }
    }
}

/// Places new ranges on `nodes`: each range gets `replication_factor`
/// replicas on distinct Up nodes, in distinct zones when the nodes carry
/// zones (spread as evenly as possible over the zones when there are fewer
/// zones than the replication factor), and a leader.
///
/// Replica counts per Up node end within 1 of each other, and so do leader
/// counts, unless zones of unequal size make it impossible (zones come
/// first). The result does not depend on the order of `ranges`; the returned
/// layout lists the ranges by id and the nodes as given.
///
/// Each replica goes to the least loaded Up node of the least used zone of
/// the range (ties: a pseudo-random order that differs per range, so that a
/// node's ranges share their other replicas with many nodes), and each leader to the range's replica with
/// the fewest leaders; then the balancing phases of [`plan`] run on the new
/// layout (free here: no data exists yet) to even out what greedy left.
pub fn place_initial(
    nodes: &[NodeInfo],
    ranges: &[NewRange],
    replication_factor: usize,
) -> Result<Layout, PlacementError> {
    let mut ranges_by_id = ranges.to_vec();
    ranges_by_id.sort_by_key(|range| range.id);
    let empty = Layout {
        replication_factor,
        nodes: nodes.to_vec(),
        ranges: ranges_by_id
            .iter()
            .map(|range| RangeInfo {
                id: range.id,
                replicas: Vec::new(),
                leader: None,
                keys: range.keys,
            })
            .collect(),
    };
    empty.validate()?;
    let up_nodes = nodes
        .iter()
        .filter(|node| node.state == NodeState::Up)
        .count();
    if up_nodes < replication_factor {
        return Err(PlacementError::NotEnoughUpNodes {
            up_nodes,
            replication_factor,
        });
    }
    let mut planner = Planner::new(&empty, DEFAULT_TOLERANCE);
    for range in &ranges_by_id {
        planner.add_missing_replicas(range.id);
        planner.elect_least_loaded_leader(range.id);
    }
    planner.balance_replicas();
    planner.balance_leaders();
    Ok(planner.into_layout())
}

/// The operations that take `layout` to a balanced one: repair, then replica
/// balance, then leader balance (see the module documentation). Moves happen
/// only between Up nodes whose counts differ by more than `tolerance`
/// (normally [`DEFAULT_TOLERANCE`]; 0 acts as 1).
///
/// # Panics
/// If `layout` fails [`Layout::validate`]: the layout is the cluster's own
/// metadata, maintained through [`apply`], so a malformed one is a bug to
/// stop on rather than to plan around. Call `validate` first to get the
/// error as a value.
pub fn plan(layout: &Layout, tolerance: usize) -> Vec<Operation> {
    if let Err(error) = layout.validate() {
        panic!("cannot plan an invalid layout: {error}");
    }
    let mut planner = Planner::new(layout, tolerance);
    planner.repair();
    planner.balance_replicas();
    planner.balance_leaders();
    planner.operations
}

/// The number of replicas on each node: every node of the layout (0 if it
/// holds none), plus any unknown node a range still lists.
pub fn replica_counts(layout: &Layout) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> =
        layout.nodes.iter().map(|node| (node.id, 0)).collect();
    for range in &layout.ranges {
        for &node in &range.replicas {
            *counts.entry(node).or_default() += 1;
        }
    }
    counts
}

/// The number of ranges each node leads: every node of the layout (0 if it
/// leads none), plus any unknown node still recorded as a leader.
pub fn leader_counts(layout: &Layout) -> BTreeMap<NodeId, usize> {
    let mut counts: BTreeMap<NodeId, usize> =
        layout.nodes.iter().map(|node| (node.id, 0)).collect();
    for leader in layout.ranges.iter().filter_map(|range| range.leader) {
        *counts.entry(leader).or_default() += 1;
    }
    counts
}

/// The number of replicas the operations copy to a node (moves and
/// additions; removals and leader transfers copy nothing).
pub fn replicas_moved(operations: &[Operation]) -> usize {
    operations.iter().filter(|op| op.copies_data()).count()
}

/// The number of keys the operations copy: the size of the range of each
/// move and addition, sizes taken from `layout_before`.
///
/// # Panics
/// If an operation names a range `layout_before` does not have.
pub fn keys_moved(layout_before: &Layout, operations: &[Operation]) -> u64 {
    let keys_of: BTreeMap<RangeId, u64> = layout_before
        .ranges
        .iter()
        .map(|range| (range.id, range.keys))
        .collect();
    operations
        .iter()
        .filter(|op| op.copies_data())
        .map(|op| match keys_of.get(&op.range()) {
            Some(&keys) => keys,
            None => panic!("{op}: the layout has no range {}", op.range()),
        })
        .sum()
}

/// How much data a plan moves, next to what a perfect plan would move.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MovementFigures {
    /// Replicas copied by the plan ([`replicas_moved`]).
    pub replicas_moved: usize,
    /// The scenario's reference figure, from the caller: when `k` nodes join
    /// a balanced cluster that ends with `U` Up nodes, `k x RF x G / U`
    /// ([`join_ideal_replicas_moved`]: 1/(N+1) of all replicas for one node
    /// joining N); when a node drains, its replica count.
    pub ideal_replicas_moved: f64,
    /// The least number of copies any plan needs to bring the Up nodes'
    /// replica counts within 1 of each other ([`minimum_replicas_moved`]):
    /// the integer bound, at or below the ideal when the ideal is fractional.
    pub minimum_replicas_moved: usize,
    /// Keys copied by the plan ([`keys_moved`]).
    pub keys_moved: u64,
    /// `ideal_replicas_moved` x the mean range size: the keys an ideal plan
    /// copies (for one node joining N: all replicas' keys / (N + 1)).
    pub ideal_keys_moved: f64,
}

impl MovementFigures {
    /// Replicas moved / ideal (1.0 is ideal; 0 when nothing moved).
    pub fn replica_ratio(&self) -> f64 {
        ratio(self.replicas_moved as f64, self.ideal_replicas_moved)
    }

    /// Keys moved / ideal (1.0 is ideal; 0 when nothing moved).
    pub fn keys_ratio(&self) -> f64 {
        ratio(self.keys_moved as f64, self.ideal_keys_moved)
    }
}

fn ratio(actual: f64, ideal: f64) -> f64 {
    if actual == 0.0 {
        0.0
    } else if ideal == 0.0 {
        f64::INFINITY
    } else {
        actual / ideal
    }
}

impl fmt::Display for MovementFigures {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "replicas moved {} (ideal {:.2}, minimum {}, ratio {:.3}), keys moved {} (ideal {:.0}, ratio {:.3})",
            self.replicas_moved,
            self.ideal_replicas_moved,
            self.minimum_replicas_moved,
            self.replica_ratio(),
            self.keys_moved,
            self.ideal_keys_moved,
            self.keys_ratio()
        )
    }
}

/// The figures of a plan (`operations`, computed by [`plan`] on `before`),
/// next to the caller's `ideal_replicas_moved` for the scenario.
pub fn movement_figures(
    before: &Layout,
    operations: &[Operation],
    ideal_replicas_moved: f64,
) -> MovementFigures {
    let total_keys: u128 = before
        .ranges
        .iter()
        .map(|range| u128::from(range.keys))
        .sum();
    let mean_range_keys = if before.ranges.is_empty() {
        0.0
    } else {
        total_keys as f64 / before.ranges.len() as f64
    };
    MovementFigures {
        replicas_moved: replicas_moved(operations),
        ideal_replicas_moved,
        minimum_replicas_moved: minimum_replicas_moved(before),
        keys_moved: keys_moved(before, operations),
        ideal_keys_moved: ideal_replicas_moved * mean_range_keys,
    }
}

/// The share of all replicas that `joined` new, empty nodes should receive
/// in `layout` (which already lists them as Up): `joined x RF x G / U` for
/// `U` Up nodes. For one node joining N: `RF x G / (N + 1)`.
pub fn join_ideal_replicas_moved(layout: &Layout, joined: usize) -> f64 {
    let up_nodes = layout
        .nodes
        .iter()
        .filter(|node| node.state == NodeState::Up)
        .count();
    if up_nodes == 0 {
        return 0.0;
    }
    let replicas = layout.ranges.len() * layout.replication_factor;
    (joined * replicas) as f64 / up_nodes as f64
}

/// The least number of replica copies that brings the Up nodes of `layout`
/// to replica counts within 1 of each other, every range holding RF
/// replicas: each copy raises one Up node by one, so the bound is the sum of
/// the Up nodes' deficits below their balanced targets (`T / U` rounded down
/// or up, rounded up for the nodes that hold the most, which is the cheapest
/// assignment). It ignores which ranges may go where, so a plan can need
/// more.
pub fn minimum_replicas_moved(layout: &Layout) -> usize {
    let counts = replica_counts(layout);
    let mut up_counts: Vec<usize> = layout
        .nodes
        .iter()
        .filter(|node| node.state == NodeState::Up)
        .map(|node| counts.get(&node.id).copied().unwrap_or(0))
        .collect();
    if up_counts.is_empty() {
        return 0;
    }
    up_counts.sort_unstable_by(|a, b| b.cmp(a));
    let target_total = layout.ranges.len() * layout.replication_factor;
    let (floor, remainder) = (
        target_total / up_counts.len(),
        target_total % up_counts.len(),
    );
    up_counts
        .iter()
        .enumerate()
        .map(|(rank, &count)| {
            let target = if rank < remainder { floor + 1 } else { floor };
            target.saturating_sub(count)
        })
        .sum()
}

/// How the sizes of synthetic ranges vary ([`synthetic_ranges`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySizes {
    /// Every range has the mean size.
    Equal,
    /// Sizes spread over [0.5, 1.5) x the mean, from a linear congruential
    /// generator started at `seed` (deterministic).
    Varied {
        /// The generator's starting state.
        seed: u64,
    },
}

/// `count` ranges with ids `1..=count`, for simulations and benchmarks.
pub fn synthetic_ranges(count: usize, mean_keys: u64, sizes: KeySizes) -> Vec<NewRange> {
    let mut state = match sizes {
        KeySizes::Equal => 0,
        KeySizes::Varied { seed } => seed,
    };
    (1..=count as u64)
        .map(|id| {
            let keys = match sizes {
                KeySizes::Equal => mean_keys,
                KeySizes::Varied { .. } => {
                    // Knuth's MMIX constants; the high bits are the random ones.
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    let fraction = u128::from(state >> 32); // in [0, 2^32)
                    let spread = (u128::from(mean_keys) * fraction) >> 32; // in [0, mean)
                    mean_keys / 2 + spread as u64
                }
            };
            NewRange { id, keys }
        })
        .collect()
}

/// The outcome of [`simulate_add_node`].
#[derive(Debug, Clone)]
pub struct AddNodeSimulation {
    /// The placed layout plus the new, empty node.
    pub before: Layout,
    /// The plan for `before`.
    pub operations: Vec<Operation>,
    /// `before` with every operation applied.
    pub after: Layout,
    /// What the plan moved, next to the ideal.
    pub figures: MovementFigures,
}

/// Places `ranges` on `node_count` Up nodes (ids `1..=node_count`, no
/// zones), adds one Up node, plans with [`DEFAULT_TOLERANCE`] and applies
/// the plan: the scenario behind the "adding a node moves 1/(N+1) of the
/// data" figures.
pub fn simulate_add_node(
    node_count: usize,
    ranges: &[NewRange],
    replication_factor: usize,
) -> Result<AddNodeSimulation, PlacementError> {
    let nodes: Vec<NodeInfo> = (1..=node_count as u64).map(NodeInfo::up).collect();
    let mut before = place_initial(&nodes, ranges, replication_factor)?;
    before.nodes.push(NodeInfo::up(node_count as u64 + 1));
    let operations = plan(&before, DEFAULT_TOLERANCE);
    let mut after = before.clone();
    for operation in &operations {
        apply(&mut after, operation);
    }
    let figures = movement_figures(&before, &operations, join_ideal_replicas_moved(&before, 1));
    Ok(AddNodeSimulation {
        before,
        operations,
        after,
        figures,
    })
}

/// A deterministic pseudo-random tie-break between equally loaded nodes,
/// different for every range (the SplitMix64 finalizer of the pair).
///
/// Breaking ties by node id would place ranges in a few fixed node groups
/// (`{1,2,3}`, `{4,5,6}`, `{1,2,3}`, ...): every range of node 1 would then
/// have its other replicas on nodes 2 and 3, so when node 1 drains, nodes 2
/// and 3 could take none of its replicas and the others would have to pass
/// some on later. Scattering the groups spreads a node's peers over the whole
/// cluster, so its replicas can be re-created on every node at once.
fn scatter(range: RangeId, node: NodeId) -> u64 {
    let mut mixed = range.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ node;
    mixed = (mixed ^ (mixed >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    mixed ^ (mixed >> 31)
}

/// Who can hand a leadership to whom: `handoffs[u][v]` holds the ranges led
/// by `u` with a replica on `v` (both Up); kept up to date by leader balance.
type Handoffs = BTreeMap<NodeId, BTreeMap<NodeId, BTreeSet<RangeId>>>;

/// A range in a node's size index: `(keys, Reverse(range id))`.
type SizedRange = (u64, Reverse<RangeId>);

/// A node's failure domain: its zone (interned), or the node itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailureDomain {
    Zone(usize),
    Node(NodeId),
}

/// The planner's working copy of a layout, with the per-node indexes kept up
/// to date by every emitted operation (so each step costs the size of one
/// node's ranges, not of the whole layout).
struct Planner {
    replication_factor: usize,
    /// The tolerance in effect (at least 1).
    tolerance: usize,
    /// The nodes as given, to rebuild a layout.
    nodes: Vec<NodeInfo>,
    states: BTreeMap<NodeId, NodeState>,
    domains: BTreeMap<NodeId, FailureDomain>,
    /// Up nodes in id order: the only candidates for replicas and leaders.
    up_nodes: Vec<NodeId>,
    ranges: BTreeMap<RangeId, RangeInfo>,
    replica_count: BTreeMap<NodeId, usize>,
    leader_count: BTreeMap<NodeId, usize>,
    /// For each node, its ranges ordered by size (ids reversed so that, walking
    /// down from a size, equal sizes come lowest id first): finds the range
    /// of a wanted size in logarithmic time.
    ranges_by_size: BTreeMap<NodeId, BTreeSet<SizedRange>>,
    /// Whether any node has a zone (without zones, the zone rule holds
    /// trivially and is not evaluated).
    has_zones: bool,
    total_keys: u128,
    operations: Vec<Operation>,
    /// For each range, the index in `operations` of the last one on it.
    last_operation: BTreeMap<RangeId, usize>,
    /// For each node, the ranges this plan is copying to it and touches no
    /// more after that: the copies that can still be re-targeted.
    pending_copies: BTreeMap<NodeId, BTreeSet<RangeId>>,
}

impl Planner {
    /// Builds the working copy; `layout` must be valid.
    fn new(layout: &Layout, tolerance: usize) -> Self {
        let mut states = BTreeMap::new();
        let mut domains = BTreeMap::new();
        let mut zone_numbers: BTreeMap<&str, usize> = BTreeMap::new();
        let mut replica_count = BTreeMap::new();
        let mut leader_count = BTreeMap::new();
        let mut ranges_by_size: BTreeMap<NodeId, BTreeSet<SizedRange>> = BTreeMap::new();
        for node in &layout.nodes {
            states.insert(node.id, node.state);
            let domain = match &node.zone {
                Some(zone) => {
                    let next_number = zone_numbers.len();
                    FailureDomain::Zone(*zone_numbers.entry(zone.as_str()).or_insert(next_number))
                }
                None => FailureDomain::Node(node.id),
            };
            domains.insert(node.id, domain);
            replica_count.insert(node.id, 0);
            leader_count.insert(node.id, 0);
            ranges_by_size.insert(node.id, BTreeSet::new());
        }
        let up_nodes = states
            .iter()
            .filter(|(_, &state)| state == NodeState::Up)
            .map(|(&id, _)| id)
            .collect();
        let mut ranges = BTreeMap::new();
        let mut total_keys = 0u128;
        for range in &layout.ranges {
            for &node in &range.replicas {
                *replica_count.entry(node).or_default() += 1;
                ranges_by_size
                    .entry(node)
                    .or_default()
                    .insert((range.keys, Reverse(range.id)));
            }
            if let Some(leader) = range.leader {
                *leader_count.entry(leader).or_default() += 1;
            }
            total_keys += u128::from(range.keys);
            ranges.insert(range.id, range.clone());
        }
        Planner {
            replication_factor: layout.replication_factor,
            tolerance: tolerance.max(1),
            nodes: layout.nodes.clone(),
            states,
            domains,
            up_nodes,
            ranges,
            replica_count,
            leader_count,
            ranges_by_size,
            has_zones: layout.nodes.iter().any(|node| node.zone.is_some()),
            total_keys,
            operations: Vec::new(),
            last_operation: BTreeMap::new(),
            pending_copies: BTreeMap::new(),
        }
    }

    fn into_layout(self) -> Layout {
        Layout {
            replication_factor: self.replication_factor,
            nodes: self.nodes,
            ranges: self.ranges.into_values().collect(),
        }
    }

    /// A node missing from the layout is Down (removed from the cluster).
    fn state(&self, node: NodeId) -> NodeState {
        self.states.get(&node).copied().unwrap_or(NodeState::Down)
    }

    fn is_up(&self, node: NodeId) -> bool {
        self.state(node) == NodeState::Up
    }

    fn domain(&self, node: NodeId) -> FailureDomain {
        self.domains
            .get(&node)
            .copied()
            .unwrap_or(FailureDomain::Node(node))
    }

    fn replicas_on(&self, node: NodeId) -> usize {
        self.replica_count.get(&node).copied().unwrap_or(0)
    }

    fn leaders_on(&self, node: NodeId) -> usize {
        self.leader_count.get(&node).copied().unwrap_or(0)
    }

    fn range(&self, id: RangeId) -> &RangeInfo {
        match self.ranges.get(&id) {
            Some(range) => range,
            None => panic!("planner: no range {id}"),
        }
    }

    /// How many of the range's replicas sit in `domain`, not counting the
    /// replica on `leaving` (the one a move is about to remove).
    fn replicas_in_domain(
        &self,
        range: &RangeInfo,
        domain: FailureDomain,
        leaving: Option<NodeId>,
    ) -> usize {
        range
            .replicas
            .iter()
            .filter(|&&node| Some(node) != leaving && self.domain(node) == domain)
            .count()
    }

    /// Whether moving the range's replica from `from` to `to` keeps its zone
    /// spread at least as good: moving one replica from a zone holding `a`
    /// of the range's replicas to one holding `b` makes the spread more even
    /// if `b + 1 < a`, leaves it the same if `b + 1 == a`, and worse if
    /// `b >= a`. Without zones every node is its own domain and the target
    /// holds none, so the move is always allowed.
    fn move_keeps_zone_spread(&self, range: &RangeInfo, from: NodeId, to: NodeId) -> bool {
        if !self.has_zones {
            return !range.replicas.contains(&to);
        }
        let (from_domain, to_domain) = (self.domain(from), self.domain(to));
        from_domain == to_domain
            || self.replicas_in_domain(range, to_domain, None)
                < self.replicas_in_domain(range, from_domain, None)
    }

    fn sum_of_squares(&self, count_on: impl Fn(NodeId) -> usize) -> usize {
        self.up_nodes
            .iter()
            .map(|&node| count_on(node).pow(2))
            .sum()
    }

    /// The least and the largest count among Up nodes.
    fn up_min_max(&self, count_on: impl Fn(NodeId) -> usize) -> (usize, usize) {
        let counts = self.up_nodes.iter().map(|&node| count_on(node));
        let min = counts.clone().min().unwrap_or(0);
        let max = counts.max().unwrap_or(0);
        (min, max)
    }

    /// Checks `operation` with the rules of [`apply`], applies it to the
    /// working copy and its indexes, and records it.
    fn emit(&mut self, operation: Operation) {
        self.change(operation);
        let range = operation.range();
        if let Some(node) = self.pending_copy_target(range) {
            self.pending_copies.entry(node).or_default().remove(&range);
        }
        self.last_operation.insert(range, self.operations.len());
        self.operations.push(operation);
        if let Some(node) = self.pending_copy_target(range) {
            self.pending_copies.entry(node).or_default().insert(range);
        }
    }

    /// The node this plan's last operation on the range copies it to, if
    /// that operation is a copy.
    fn pending_copy_target(&self, id: RangeId) -> Option<NodeId> {
        let &index = self.last_operation.get(&id)?;
        match self.operations.get(index)? {
            Operation::MoveReplica { to, .. } | Operation::AddReplica { to, .. } => Some(*to),
            _ => None,
        }
    }

    /// Checks `operation` with the rules of [`apply`] and applies it to the
    /// working copy and its indexes, without recording it.
    fn change(&mut self, operation: Operation) {
        let states = &self.states;
        let is_up = |node: NodeId| states.get(&node) == Some(&NodeState::Up);
        let Some(range) = self.ranges.get_mut(&operation.range()) else {
            panic!("{operation}: planner has no such range");
        };
        let leader_before = range.leader;
        apply_to_range(range, &operation, self.replication_factor, is_up);
        let leader_after = range.leader;
        match operation {
            Operation::MoveReplica { range, from, to } => {
                self.forget_replica(from, range);
                self.record_replica(to, range);
            }
            Operation::AddReplica { range, to } => self.record_replica(to, range),
            Operation::RemoveReplica { range, from } => self.forget_replica(from, range),
            Operation::TransferLeader { .. } => {}
        }
        if leader_before != leader_after {
            if let Some(old) = leader_before {
                let count = self.leader_count.entry(old).or_default();
                assert!(*count > 0, "leader count of node {old} underflows");
                *count -= 1;
            }
            if let Some(new) = leader_after {
                *self.leader_count.entry(new).or_default() += 1;
            }
        }
    }

    /// If this plan's last operation on the range copied it to `node`, that
    /// operation's index: the copy has not happened yet, so moving the
    /// replica on from `node` can change that operation's target instead of
    /// copying the data twice. `None` also when the earlier operation moved
    /// the replica from `next_home` (re-targeting would undo it).
    fn pending_copy_to(&self, id: RangeId, node: NodeId, next_home: NodeId) -> Option<usize> {
        let &index = self.last_operation.get(&id)?;
        match self.operations.get(index)? {
            Operation::MoveReplica { from, to, .. } if *to == node && *from != next_home => {
                Some(index)
            }
            Operation::AddReplica { to, .. } if *to == node => Some(index),
            _ => None,
        }
    }

    /// Moves the range's replica from `from` to `to` by re-targeting the
    /// pending copy at `index` (see [`Planner::pending_copy_to`]). Valid
    /// because no later operation touches the range: the earlier operation,
    /// with `to` as target, sees the same membership `to` would have seen.
    fn retarget(&mut self, index: usize, from: NodeId, to: NodeId) {
        let earlier = self.operations[index];
        let range = earlier.range();
        assert_eq!(
            self.last_operation.get(&range),
            Some(&index),
            "{earlier}: not the range's last operation"
        );
        self.change(Operation::MoveReplica { range, from, to });
        self.pending_copies.entry(from).or_default().remove(&range);
        self.pending_copies.entry(to).or_default().insert(range);
        self.operations[index] = match earlier {
            Operation::MoveReplica {
                range,
                from: origin,
                ..
            } => Operation::MoveReplica {
                range,
                from: origin,
                to,
            },
            Operation::AddReplica { range, .. } => Operation::AddReplica { range, to },
            other => panic!("{other}: not a pending copy"),
        };
    }

    fn record_replica(&mut self, node: NodeId, range: RangeId) {
        let keys = self.range(range).keys;
        *self.replica_count.entry(node).or_default() += 1;
        let inserted = self
            .ranges_by_size
            .entry(node)
            .or_default()
            .insert((keys, Reverse(range)));
        assert!(inserted, "node {node} already indexed for range {range}");
    }

    fn forget_replica(&mut self, node: NodeId, range: RangeId) {
        let keys = self.range(range).keys;
        let count = self.replica_count.entry(node).or_default();
        assert!(*count > 0, "replica count of node {node} underflows");
        *count -= 1;
        let removed = self
            .ranges_by_size
            .entry(node)
            .or_default()
            .remove(&(keys, Reverse(range)));
        assert!(removed, "node {node} not indexed for range {range}");
    }

    // ----- Phase 1: repair -----

    fn repair(&mut self) {
        let range_ids: Vec<RangeId> = self.ranges.keys().copied().collect();
        for id in range_ids {
            if !self.has_quorum(id) {
                continue; // needs an operator's unsafe recovery, not a plan
            }
            self.shed_excess_replicas(id);
            self.add_missing_replicas(id);
            self.evacuate_unavailable_replicas(id);
        }
    }

    /// Whether a majority of the range's replicas is alive (Up or Draining),
    /// which any membership change needs to commit.
    fn has_quorum(&self, id: RangeId) -> bool {
        let range = self.range(id);
        let alive = range
            .replicas
            .iter()
            .filter(|&&node| self.state(node) != NodeState::Down)
            .count();
        2 * alive > range.replicas.len()
    }

    /// Removes replicas beyond the replication factor: those on nodes that
    /// are not Up first, then those in the range's most crowded zone, then
    /// those on the most loaded nodes. Never the leader.
    fn shed_excess_replicas(&mut self, id: RangeId) {
        while self.range(id).replicas.len() > self.replication_factor {
            let range = self.range(id);
            let victim = range
                .replicas
                .iter()
                .copied()
                .filter(|&node| range.leader != Some(node))
                .min_by_key(|&node| {
                    (
                        self.is_up(node),
                        Reverse(self.replicas_in_domain(range, self.domain(node), None)),
                        Reverse(self.replicas_on(node)),
                        node,
                    )
                });
            let Some(from) = victim else { break };
            self.emit(Operation::RemoveReplica { range: id, from });
        }
    }

    /// Adds replicas until the range has the replication factor, or no Up
    /// node is left to take one.
    fn add_missing_replicas(&mut self, id: RangeId) {
        while self.range(id).replicas.len() < self.replication_factor {
            let Some(to) = self.best_new_home(id, None) else {
                break;
            };
            self.emit(Operation::AddReplica { range: id, to });
        }
    }

    /// Moves the range's replicas off nodes that are not Up; a leader whose
    /// replica cannot move (no free Up node) is handed to an Up replica.
    fn evacuate_unavailable_replicas(&mut self, id: RangeId) {
        let range = self.range(id);
        let mut stranded: Vec<NodeId> = range
            .replicas
            .iter()
            .copied()
            .filter(|&node| !self.is_up(node))
            .collect();
        // Followers first: if the leader's own replica then finds no free Up
        // node, its leadership can still go to a replica moved in just before.
        stranded.sort_by_key(|&node| (range.leader == Some(node), node));
        for from in stranded {
            if let Some(to) = self.best_new_home(id, Some(from)) {
                self.emit(Operation::MoveReplica {
                    range: id,
                    from,
                    to,
                });
            } else if self.range(id).leader == Some(from) {
                if let Some(to) = self.least_loaded_other_replica(id, from) {
                    self.emit(Operation::TransferLeader {
                        range: id,
                        from,
                        to,
                    });
                }
            }
        }
    }

    /// The Up node that should receive a new replica of the range (replacing
    /// the one on `leaving`, if any): in the zone holding the fewest of the
    /// range's replicas, then the least loaded, then the lowest id.
    fn best_new_home(&self, id: RangeId, leaving: Option<NodeId>) -> Option<NodeId> {
        let range = self.range(id);
        self.up_nodes
            .iter()
            .copied()
            .filter(|node| !range.replicas.contains(node))
            .min_by_key(|&node| {
                (
                    self.replicas_in_domain(range, self.domain(node), leaving),
                    self.replicas_on(node),
                    scatter(id, node),
                    node,
                )
            })
    }

    /// The range's Up replica, other than `excluded`, with the fewest leaders.
    fn least_loaded_other_replica(&self, id: RangeId, excluded: NodeId) -> Option<NodeId> {
        self.range(id)
            .replicas
            .iter()
            .copied()
            .filter(|&node| node != excluded && self.is_up(node))
            .min_by_key(|&node| (self.leaders_on(node), node))
    }

    /// Placement only: makes the range's least loaded Up replica its first
    /// leader (the first election, not an operation).
    fn elect_least_loaded_leader(&mut self, id: RangeId) {
        let leader = self
            .range(id)
            .replicas
            .iter()
            .copied()
            .filter(|&node| self.is_up(node))
            .min_by_key(|&node| (self.leaders_on(node), node));
        if let (Some(leader), Some(range)) = (leader, self.ranges.get_mut(&id)) {
            assert!(range.leader.is_none(), "range {id} already has a leader");
            range.leader = Some(leader);
            *self.leader_count.entry(leader).or_default() += 1;
        }
    }

    // ----- Phase 2: replica balance -----

    fn balance_replicas(&mut self) {
        if self.up_nodes.len() < 2 || self.ranges.is_empty() {
            return;
        }
        let round_cap = self.sum_of_squares(|node| self.replicas_on(node)) / 2 + 1;
        let mut moved: i128 = 0;
        let mut keys_moved: i128 = 0;
        for round in 0.. {
            let (min, max) = self.up_min_max(|node| self.replicas_on(node));
            if max - min <= self.tolerance {
                break;
            }
            assert!(
                round < round_cap,
                "replica balance did not converge in {round_cap} rounds"
            );
            // The keys the next move should copy so that keys moved stay at
            // (moves made) x (mean range size), kept scaled by the range
            // count to stay in integers: total x (moved + 1) - keys so far x G.
            let range_count = self.ranges.len() as i128;
            let wanted_keys_scaled =
                (moved + 1) * self.total_keys as i128 - keys_moved * range_count;
            let direct = self.find_replica_move(wanted_keys_scaled);
            let direct_is_free =
                direct.is_some_and(|(id, from, to)| self.pending_copy_to(id, from, to).is_some());
            if !direct_is_free {
                // Before paying for a new copy, try to rebalance by only
                // re-targeting copies this plan already makes.
                if let Some(chain) = self.find_free_chain(min) {
                    for &(id, from, to) in chain.iter().rev() {
                        let Some(index) = self.pending_copy_to(id, from, to) else {
                            panic!("range {id}: chain hop {from} -> {to} is not a pending copy");
                        };
                        self.retarget(index, from, to);
                    }
                    continue;
                }
            }
            let Some((id, from, to)) = direct else {
                break; // every remaining imbalance is pinned by zones or by ranges already on the target
            };
            if let Some(index) = self.pending_copy_to(id, from, to) {
                self.retarget(index, from, to);
            } else {
                keys_moved += i128::from(self.range(id).keys);
                moved += 1;
                self.emit(Operation::MoveReplica {
                    range: id,
                    from,
                    to,
                });
            }
        }
    }

    /// The next balancing move: from the most loaded Up node that has a
    /// movable range to the least loaded Up node that may take it, between
    /// nodes whose counts differ by more than the tolerance.
    fn find_replica_move(&self, wanted_keys_scaled: i128) -> Option<(RangeId, NodeId, NodeId)> {
        let mut sources = self.up_nodes.clone();
        sources.sort_by_key(|&node| (Reverse(self.replicas_on(node)), node));
        let mut targets = self.up_nodes.clone();
        targets.sort_by_key(|&node| (self.replicas_on(node), node));
        for &from in &sources {
            for &to in &targets {
                if self.replicas_on(from) <= self.replicas_on(to) + self.tolerance {
                    break; // targets only get fuller from here
                }
                if let Some(id) = self.best_range_to_move(from, to, wanted_keys_scaled) {
                    return Some((id, from, to));
                }
            }
        }
        None
    }

    /// Among the ranges with a replica on `from`, the one to move to `to`
    /// ([`Planner::may_move`]): first one this plan is already copying to
    /// `from` (re-targeting that copy costs nothing), otherwise the one whose
    /// size is closest to the wanted one (`wanted_keys_scaled / G`), found
    /// by walking the node's size index outwards from that size. Ties go to
    /// the smaller size, and among equal sizes at or below the wanted one,
    /// to the lowest id.
    fn best_range_to_move(
        &self,
        from: NodeId,
        to: NodeId,
        wanted_keys_scaled: i128,
    ) -> Option<RangeId> {
        let range_count = self.ranges.len() as i128;
        let distance = |keys: u64| (i128::from(keys) * range_count - wanted_keys_scaled).abs();
        let mut best_free: Option<(i128, RangeId)> = None;
        for &id in self.pending_copies.get(&from).into_iter().flatten() {
            let range = self.range(id);
            if self.pending_copy_to(id, from, to).is_some() && self.may_move(range, from, to) {
                let cost = (distance(range.keys), id);
                if best_free.is_none_or(|best| cost < best) {
                    best_free = Some(cost);
                }
            }
        }
        if let Some((_, id)) = best_free {
            return Some(id);
        }
        let sizes = self.ranges_by_size.get(&from)?;
        let wanted = u64::try_from((wanted_keys_scaled / range_count).max(0)).unwrap_or(u64::MAX);
        let movable = |entry: &&SizedRange| self.may_move(self.range(entry.1 .0), from, to);
        let at_or_below = sizes.range(..=(wanted, Reverse(0))).rev().find(movable);
        let above = sizes
            .range((Bound::Excluded((wanted, Reverse(0))), Bound::Unbounded))
            .find(movable);
        match (at_or_below, above) {
            (Some(low), Some(high)) if distance(high.0) < distance(low.0) => Some(high.1 .0),
            (Some(low), _) => Some(low.1 .0),
            (None, high) => high.map(|entry| entry.1 .0),
        }
    }

    /// Whether balancing may move the range's replica from `from` to `to`:
    /// `to` holds none, every replica is on an Up node (a range still under
    /// repair is left alone), and the zone spread stays as good.
    fn may_move(&self, range: &RangeInfo, from: NodeId, to: NodeId) -> bool {
        !range.replicas.contains(&to)
            && range.replicas.iter().all(|&node| self.is_up(node))
            && self.move_keeps_zone_spread(range, from, to)
    }

    /// A chain of re-targeted copies `source -> a -> ... -> target` moving
    /// one replica's worth of load from `source` to a node holding more than
    /// the tolerance fewer, without any new copy: each hop takes a range this
    /// plan is copying to one node and sends that copy to the next node
    /// instead. It finds what a single move cannot: after a drain, the node
    /// with a surplus may hold only copies of ranges that the node with the
    /// deficit already has, while a third node can pass one along. Searched
    /// breadth-first from the most loaded node; the target is the reachable
    /// node with the fewest replicas (ties: shortest chain, lowest id).
    fn find_free_chain(&self, min_replicas: usize) -> Option<Vec<(RangeId, NodeId, NodeId)>> {
        // A hop re-targets a copy this plan makes to `node`: only copies not
        // yet made can be re-targeted.
        let hops = |node: NodeId| {
            let mut next_hops = Vec::new();
            for &id in self.pending_copies.get(&node).into_iter().flatten() {
                let range = self.range(id);
                for &next in &self.up_nodes {
                    if self.pending_copy_to(id, node, next).is_some()
                        && self.may_move(range, node, next)
                    {
                        next_hops.push((next, id));
                    }
                }
            }
            next_hops
        };
        self.find_chain(|node| self.replicas_on(node), min_replicas, hops)
    }

    /// The chain search of both balancers: breadth-first from each Up node,
    /// most `load`ed first, along `hops` (a node's possible next hops, each
    /// with the range that carries it), to the reachable node whose load is
    /// the lowest and more than the tolerance below the source's (ties:
    /// shortest chain, lowest id). Sources at or below `min_load` plus the
    /// tolerance are not searched (no node is far enough below them).
    fn find_chain(
        &self,
        load: impl Fn(NodeId) -> usize,
        min_load: usize,
        hops: impl Fn(NodeId) -> Vec<(NodeId, RangeId)>,
    ) -> Option<Vec<(RangeId, NodeId, NodeId)>> {
        let mut sources = self.up_nodes.clone();
        sources.sort_by_key(|&node| (Reverse(load(node)), node));
        for &source in &sources {
            let source_load = load(source);
            if source_load <= min_load + self.tolerance {
                break; // no node is far enough below this one (or any later one)
            }
            // reached_from[v] = (previous node, range of the hop).
            let mut distance: BTreeMap<NodeId, usize> = BTreeMap::from([(source, 0)]);
            let mut reached_from: BTreeMap<NodeId, (NodeId, RangeId)> = BTreeMap::new();
            let mut queue = VecDeque::from([source]);
            let mut best: Option<(usize, usize, NodeId)> = None;
            while let Some(node) = queue.pop_front() {
                let steps = distance.get(&node).copied().unwrap_or(0);
                if node != source && load(node) + self.tolerance < source_load {
                    let candidate = (load(node), steps, node);
                    if best.is_none_or(|current| candidate < current) {
                        best = Some(candidate);
                    }
                }
                for (next, range) in hops(node) {
                    if let Entry::Vacant(unvisited) = distance.entry(next) {
                        unvisited.insert(steps + 1);
                        reached_from.insert(next, (node, range));
                        queue.push_back(next);
                    }
                }
            }
            if let Some((_, _, target)) = best {
                return Some(Self::walk_back(&reached_from, source, target));
            }
        }
        None
    }

    /// The hops `(range, from, to)` from `source` to `target` recorded by a
    /// breadth-first search, in order from `source`.
    fn walk_back(
        reached_from: &BTreeMap<NodeId, (NodeId, RangeId)>,
        source: NodeId,
        target: NodeId,
    ) -> Vec<(RangeId, NodeId, NodeId)> {
        let mut chain = Vec::new();
        let mut node = target;
        while node != source {
            let Some(&(previous, range)) = reached_from.get(&node) else {
                panic!("chain to node {target} is broken at node {node}");
            };
            chain.push((range, previous, node));
            node = previous;
        }
        chain.reverse();
        chain
    }

    // ----- Phase 3: leader balance -----

    fn balance_leaders(&mut self) {
        if self.up_nodes.len() < 2 {
            return;
        }
        let round_cap = self.sum_of_squares(|node| self.leaders_on(node)) / 2 + 1;
        let mut handoffs = Handoffs::new();
        for &id in self.ranges.keys() {
            self.update_handoffs(&mut handoffs, id, true);
        }
        for round in 0.. {
            let (min, max) = self.up_min_max(|node| self.leaders_on(node));
            if max - min <= self.tolerance {
                break;
            }
            assert!(
                round < round_cap,
                "leader balance did not converge in {round_cap} rounds"
            );
            let Some(chain) = self.find_leader_chain(&handoffs, min) else {
                break; // no replica layout lets a leader reach a lighter node
            };
            // Hand over from the far end first, so no node on the chain ever
            // holds more leaders than it started with.
            for &(range, from, to) in chain.iter().rev() {
                self.update_handoffs(&mut handoffs, range, false);
                self.emit(Operation::TransferLeader { range, from, to });
                self.update_handoffs(&mut handoffs, range, true);
            }
        }
    }

    /// Records (`add`) or forgets the handoffs the range offers from its
    /// current leader: one per follower, when both are Up.
    fn update_handoffs(&self, handoffs: &mut Handoffs, id: RangeId, add: bool) {
        let range = self.range(id);
        let Some(leader) = range.leader else { return };
        if !self.is_up(leader) {
            return;
        }
        for &follower in &range.replicas {
            if follower == leader || !self.is_up(follower) {
                continue;
            }
            let by_follower = handoffs.entry(leader).or_default();
            if add {
                by_follower.entry(follower).or_default().insert(id);
            } else if let Some(ranges) = by_follower.get_mut(&follower) {
                ranges.remove(&id);
                if ranges.is_empty() {
                    by_follower.remove(&follower);
                }
            }
        }
    }

    /// A chain of leader transfers `source -> a -> b -> ... -> target` where
    /// each hop is a range led by one node with a replica on the next: the
    /// intermediate nodes each lose one leadership and gain one, so the net
    /// effect moves one leadership from `source` to `target`. The source is
    /// the node with the most leaders that can reach a node holding more than
    /// the tolerance fewer; the target the reachable node with the fewest
    /// leaders (ties: shortest chain, lowest id). A direct transfer is a
    /// chain of one hop.
    fn find_leader_chain(
        &self,
        handoffs: &Handoffs,
        min_leaders: usize,
    ) -> Option<Vec<(RangeId, NodeId, NodeId)>> {
        // A hop hands a range `node` leads to a follower of it.
        let hops = |node: NodeId| {
            handoffs
                .get(&node)
                .into_iter()
                .flatten()
                .filter_map(|(&next, ranges)| ranges.first().map(|&range| (next, range)))
                .collect()
        };
        self.find_chain(|node| self.leaders_on(node), min_leaders, hops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    const NODE_COUNTS: std::ops::RangeInclusive<usize> = 3..=12;
    const RANGE_COUNTS: [usize; 4] = [16, 64, 256, 1024];
    const MEAN_KEYS: u64 = 10_000;
    const KEY_SIZES: [KeySizes; 2] = [KeySizes::Equal, KeySizes::Varied { seed: 42 }];

    fn up_nodes(count: usize) -> Vec<NodeInfo> {
        (1..=count as u64).map(NodeInfo::up).collect()
    }

    fn applied(layout: &Layout, operations: &[Operation]) -> Layout {
        let mut result = layout.clone();
        for operation in operations {
            apply(&mut result, operation);
        }
        result
    }

    fn size_name(sizes: KeySizes) -> &'static str {
        match sizes {
            KeySizes::Equal => "equal",
            KeySizes::Varied { .. } => "varied",
        }
    }

    /// max - min of `counts` over the Up nodes of `layout`.
    fn up_spread(layout: &Layout, counts: &BTreeMap<NodeId, usize>) -> usize {
        let up: Vec<usize> = layout
            .nodes
            .iter()
            .filter(|node| node.state == NodeState::Up)
            .map(|node| counts.get(&node.id).copied().unwrap_or(0))
            .collect();
        up.iter().max().unwrap_or(&0) - up.iter().min().unwrap_or(&0)
    }

    /// Structure, full replication on Up nodes, counts within 1.
    fn assert_healthy_and_balanced(layout: &Layout, context: &str) {
        assert_eq!(layout.validate(), Ok(()), "{context}");
        for range in &layout.ranges {
            assert_eq!(
                range.replicas.len(),
                layout.replication_factor,
                "{context}: range {}",
                range.id
            );
            for &node in &range.replicas {
                assert_eq!(
                    layout.node_state(node),
                    NodeState::Up,
                    "{context}: range {}",
                    range.id
                );
            }
            let leader = range.leader.map(|node| layout.node_state(node));
            assert_eq!(leader, Some(NodeState::Up), "{context}: range {}", range.id);
        }
        assert!(
            up_spread(layout, &replica_counts(layout)) <= 1,
            "{context}: replicas {:?}",
            replica_counts(layout)
        );
        assert!(
            up_spread(layout, &leader_counts(layout)) <= 1,
            "{context}: leaders {:?}",
            leader_counts(layout)
        );
    }

    fn placed(node_count: usize, range_count: usize, sizes: KeySizes) -> Layout {
        let ranges = synthetic_ranges(range_count, MEAN_KEYS, sizes);
        match place_initial(&up_nodes(node_count), &ranges, 3) {
            Ok(layout) => layout,
            Err(error) => panic!("N={node_count} G={range_count}: {error}"),
        }
    }

    #[test]
    fn initial_placement_is_even_over_the_matrix() {
        for sizes in KEY_SIZES {
            for node_count in NODE_COUNTS {
                for range_count in RANGE_COUNTS {
                    let layout = placed(node_count, range_count, sizes);
                    let context = format!("N={node_count} G={range_count} {}", size_name(sizes));
                    // Distinct replicas (validate), RF of them on Up nodes, a
                    // leader each, replica and leader counts within 1.
                    assert_healthy_and_balanced(&layout, &context);
                    assert_eq!(layout.ranges.len(), range_count);
                    assert!(plan(&layout, DEFAULT_TOLERANCE).is_empty(), "{context}");
                }
            }
        }
    }

    #[test]
    fn adding_a_node_moves_one_over_n_plus_one_of_the_data() {
        let started = Instant::now();
        println!("add one node, RF 3: replicas moved vs ideal 3G/(N+1), keys moved vs all replica keys/(N+1)");
        println!(
            "{:>3} {:>5} {:>7} {:>6} {:>8} {:>7} {:>10}",
            "N", "G", "sizes", "moved", "ideal", "ratio", "keys ratio"
        );
        for sizes in KEY_SIZES {
            for node_count in NODE_COUNTS {
                for range_count in RANGE_COUNTS {
                    let ranges = synthetic_ranges(range_count, MEAN_KEYS, sizes);
                    let simulation = match simulate_add_node(node_count, &ranges, 3) {
                        Ok(simulation) => simulation,
                        Err(error) => panic!("N={node_count} G={range_count}: {error}"),
                    };
                    let context = format!("N={node_count} G={range_count} {}", size_name(sizes));
                    let figures = simulation.figures;
                    let ideal = (3 * range_count) as f64 / (node_count + 1) as f64;
                    assert!(
                        (figures.ideal_replicas_moved - ideal).abs() < 1e-9,
                        "{context}"
                    );
                    println!(
                        "{node_count:>3} {range_count:>5} {:>7} {:>6} {:>8.2} {:>7.3} {:>10.3}",
                        size_name(sizes),
                        figures.replicas_moved,
                        ideal,
                        figures.replica_ratio(),
                        figures.keys_ratio()
                    );
                    // The greedy stops as soon as max - min <= 1, which is
                    // when the new node holds floor(3G / (N + 1)): the
                    // integer minimum, at or below the fractional ideal.
                    assert_eq!(
                        figures.replicas_moved, figures.minimum_replicas_moved,
                        "{context}"
                    );
                    assert_eq!(
                        figures.replicas_moved,
                        3 * range_count / (node_count + 1),
                        "{context}"
                    );
                    assert!(figures.replica_ratio() <= 1.1, "{context}: {figures}");
                    assert!(figures.keys_ratio() <= 1.1, "{context}: {figures}");
                    // Only moves and leader transfers: nothing to repair.
                    assert!(simulation.operations.iter().all(|op| matches!(
                        op,
                        Operation::MoveReplica { .. } | Operation::TransferLeader { .. }
                    )));
                    assert_healthy_and_balanced(&simulation.after, &context);
                    assert!(
                        plan(&simulation.after, DEFAULT_TOLERANCE).is_empty(),
                        "{context}"
                    );
                }
            }
        }
        println!("matrix took {:?}", started.elapsed());
    }

    /// Marks `node` as `state`, plans, applies, and checks that the node ends
    /// with no replica and no leader, that the others stay balanced, and that
    /// the plan copied exactly the node's replicas (nothing else moved).
    fn check_node_removal(layout: &Layout, node: NodeId, state: NodeState, context: &str) {
        let mut before = layout.clone();
        for info in &mut before.nodes {
            if info.id == node {
                info.state = state;
            }
        }
        let had = replica_counts(&before)[&node];
        let operations = plan(&before, DEFAULT_TOLERANCE);
        let after = applied(&before, &operations);
        assert_eq!(replica_counts(&after)[&node], 0, "{context}");
        assert_eq!(leader_counts(&after)[&node], 0, "{context}");
        assert_healthy_and_balanced(&after, context);
        assert!(plan(&after, DEFAULT_TOLERANCE).is_empty(), "{context}");
        for operation in &operations {
            match *operation {
                // Every copy takes a replica off the node...
                Operation::MoveReplica { from, .. } => {
                    assert_eq!(from, node, "{context}: {operation}")
                }
                // ...whose leaderships follow their replicas: no separate transfer.
                Operation::TransferLeader { from, .. } => {
                    assert_ne!(from, node, "{context}: {operation}")
                }
                _ => panic!("{context}: unexpected {operation}"),
            }
        }
        assert_eq!(replicas_moved(&operations), had, "{context}");
        let figures = movement_figures(&before, &operations, had as f64);
        assert_eq!(figures.minimum_replicas_moved, had, "{context}");
        let keys_on_node: u64 = before
            .ranges
            .iter()
            .filter(|range| range.replicas.contains(&node))
            .map(|range| range.keys)
            .sum();
        assert_eq!(figures.keys_moved, keys_on_node, "{context}");
    }

    #[test]
    fn draining_a_node_moves_only_its_replicas() {
        for sizes in KEY_SIZES {
            for node_count in 4..=12 {
                for range_count in RANGE_COUNTS {
                    let layout = placed(node_count, range_count, sizes);
                    for node in [1, node_count as u64 / 2 + 1, node_count as u64] {
                        let context = format!(
                            "drain node {node} of N={node_count} G={range_count} {}",
                            size_name(sizes)
                        );
                        check_node_removal(&layout, node, NodeState::Draining, &context);
                    }
                }
            }
        }
    }

    #[test]
    fn a_down_node_is_replaced_by_moves_from_it() {
        for node_count in 4..=12 {
            for range_count in RANGE_COUNTS {
                let layout = placed(node_count, range_count, KeySizes::Varied { seed: 7 });
                for node in [1, node_count as u64] {
                    let context = format!("down node {node} of N={node_count} G={range_count}");
                    check_node_removal(&layout, node, NodeState::Down, &context);
                }
            }
        }
    }

    #[test]
    fn under_replicated_ranges_get_new_replicas() {
        for node_count in 4..=12 {
            for range_count in RANGE_COUNTS {
                let context = format!("under-replicated N={node_count} G={range_count}");
                let mut layout = placed(node_count, range_count, KeySizes::Equal);
                // Node 1 died and an operator already removed its replicas
                // from their groups; the survivors elected new leaders.
                layout.nodes[0].state = NodeState::Down;
                let mut lost = 0;
                for range in &mut layout.ranges {
                    if range.replicas.contains(&1) {
                        lost += 1;
                        range.replicas.retain(|&node| node != 1);
                        if range.leader == Some(1) {
                            range.leader = range.replicas.first().copied();
                        }
                    }
                }
                let operations = plan(&layout, DEFAULT_TOLERANCE);
                assert!(
                    operations.iter().all(|op| matches!(
                        op,
                        Operation::AddReplica { .. } | Operation::TransferLeader { .. }
                    )),
                    "{context}"
                );
                assert_eq!(replicas_moved(&operations), lost, "{context}");
                let after = applied(&layout, &operations);
                assert_healthy_and_balanced(&after, &context);
                assert!(plan(&after, DEFAULT_TOLERANCE).is_empty(), "{context}");
            }
        }
    }

    fn zoned_nodes() -> Vec<NodeInfo> {
        ["a", "a", "b", "b", "c", "c"]
            .iter()
            .enumerate()
            .map(|(index, zone)| NodeInfo::up_in_zone(index as u64 + 1, zone))
            .collect()
    }

    fn assert_one_replica_per_zone(layout: &Layout, context: &str) {
        for range in &layout.ranges {
            let zones: BTreeSet<&str> = range
                .replicas
                .iter()
                .filter_map(|&node| layout.node(node).and_then(|info| info.zone.as_deref()))
                .collect();
            assert_eq!(
                zones.len(),
                3,
                "{context}: range {} on {:?}",
                range.id,
                range.replicas
            );
        }
    }

    #[test]
    fn zones_keep_one_replica_per_zone() {
        for range_count in RANGE_COUNTS {
            let context = format!("zones G={range_count}");
            let ranges = synthetic_ranges(range_count, MEAN_KEYS, KeySizes::Varied { seed: 3 });
            let layout = match place_initial(&zoned_nodes(), &ranges, 3) {
                Ok(layout) => layout,
                Err(error) => panic!("{context}: {error}"),
            };
            assert_one_replica_per_zone(&layout, &context);
            assert_healthy_and_balanced(&layout, &context);

            // A seventh node joins zone a: only zone a's replicas may move to
            // it, so zone a's three nodes share one replica per range while
            // zones b and c keep theirs on two nodes each.
            let mut grown = layout.clone();
            grown.nodes.push(NodeInfo::up_in_zone(7, "a"));
            let operations = plan(&grown, DEFAULT_TOLERANCE);
            let after = applied(&grown, &operations);
            assert_one_replica_per_zone(&after, &context);
            for operation in &operations {
                if let Operation::MoveReplica { from, to, .. } = *operation {
                    assert_eq!(
                        grown.node(from).map(|n| &n.zone),
                        grown.node(to).map(|n| &n.zone),
                        "{context}: {operation}"
                    );
                }
            }
            let counts = replica_counts(&after);
            let zone_a = [counts[&1], counts[&2], counts[&7]];
            assert_eq!(zone_a.iter().sum::<usize>(), range_count, "{context}");
            assert!(
                zone_a.iter().max().unwrap_or(&0) - zone_a.iter().min().unwrap_or(&0) <= 1,
                "{context}: {zone_a:?}"
            );
            assert!(
                up_spread(&after, &leader_counts(&after)) <= 1,
                "{context}: {:?}",
                leader_counts(&after)
            );
            assert!(plan(&after, DEFAULT_TOLERANCE).is_empty(), "{context}");

            // A node in each zone joins: everything balances again.
            let mut even = after.clone();
            even.nodes.push(NodeInfo::up_in_zone(8, "b"));
            even.nodes.push(NodeInfo::up_in_zone(9, "c"));
            let after_even = applied(&even, &plan(&even, DEFAULT_TOLERANCE));
            assert_one_replica_per_zone(&after_even, &context);
            assert_healthy_and_balanced(&after_even, &context);
        }
    }

    #[test]
    fn fewer_zones_than_replicas_spread_as_much_as_possible() {
        let nodes: Vec<NodeInfo> = ["a", "a", "a", "b", "b", "b"]
            .iter()
            .enumerate()
            .map(|(index, zone)| NodeInfo::up_in_zone(index as u64 + 1, zone))
            .collect();
        let layout =
            match place_initial(&nodes, &synthetic_ranges(60, MEAN_KEYS, KeySizes::Equal), 3) {
                Ok(layout) => layout,
                Err(error) => panic!("{error}"),
            };
        for range in &layout.ranges {
            let in_a = range.replicas.iter().filter(|&&node| node <= 3).count();
            assert!(
                in_a == 1 || in_a == 2,
                "range {} on {:?}",
                range.id,
                range.replicas
            );
        }
        assert_healthy_and_balanced(&layout, "two zones");
    }

    #[test]
    fn rejects_even_replication_factor() {
        let result = place_initial(&up_nodes(5), &synthetic_ranges(4, 1, KeySizes::Equal), 2);
        assert_eq!(
            result,
            Err(PlacementError::EvenReplicationFactor {
                replication_factor: 2
            })
        );
        if let Err(error) = result {
            assert!(error.to_string().contains("even"), "{error}");
        }
    }

    #[test]
    fn rejects_zero_replication_factor() {
        let result = place_initial(&up_nodes(5), &synthetic_ranges(4, 1, KeySizes::Equal), 0);
        assert_eq!(result, Err(PlacementError::ZeroReplicationFactor));
    }

    #[test]
    fn rejects_fewer_up_nodes_than_replicas() {
        let mut nodes = up_nodes(3);
        nodes[2].state = NodeState::Draining;
        let result = place_initial(&nodes, &synthetic_ranges(4, 1, KeySizes::Equal), 3);
        let expected = PlacementError::NotEnoughUpNodes {
            up_nodes: 2,
            replication_factor: 3,
        };
        assert_eq!(result, Err(expected.clone()));
        assert_eq!(
            expected.to_string(),
            "2 Up node(s) cannot hold 3 replicas of a range on distinct nodes"
        );
        let error: Box<dyn std::error::Error> = Box::new(expected);
        assert!(!error.to_string().is_empty());
    }

    #[test]
    fn rejects_duplicate_ids() {
        let mut nodes = up_nodes(3);
        nodes.push(NodeInfo::up(2));
        let result = place_initial(&nodes, &synthetic_ranges(4, 1, KeySizes::Equal), 3);
        assert_eq!(result, Err(PlacementError::DuplicateNode { node: 2 }));
        let ranges = [NewRange { id: 9, keys: 1 }, NewRange { id: 9, keys: 2 }];
        let result = place_initial(&up_nodes(3), &ranges, 3);
        assert_eq!(result, Err(PlacementError::DuplicateRange { range: 9 }));
    }

    #[test]
    fn validate_rejects_malformed_ranges() {
        let mut layout = placed(3, 4, KeySizes::Equal);
        layout.ranges[0].replicas = vec![1, 2, 2];
        layout.ranges[0].leader = Some(1);
        assert_eq!(
            layout.validate(),
            Err(PlacementError::DuplicateReplica { range: 1, node: 2 })
        );
        layout.ranges[0].replicas = vec![1, 2, 3];
        layout.ranges[0].leader = Some(4);
        assert_eq!(
            layout.validate(),
            Err(PlacementError::LeaderNotAReplica {
                range: 1,
                leader: 4
            })
        );
    }

    #[test]
    fn planning_is_deterministic_and_ignores_vector_order() {
        let mut layout = placed(7, 256, KeySizes::Varied { seed: 11 });
        layout.nodes.push(NodeInfo::up(8));
        layout.nodes[2].state = NodeState::Draining;
        let first = plan(&layout, DEFAULT_TOLERANCE);
        assert!(!first.is_empty());
        assert_eq!(first, plan(&layout, DEFAULT_TOLERANCE));
        let mut shuffled = layout.clone();
        shuffled.nodes.reverse();
        shuffled.ranges.reverse();
        for range in &mut shuffled.ranges {
            range.replicas.reverse();
        }
        assert_eq!(first, plan(&shuffled, DEFAULT_TOLERANCE));

        let ranges = synthetic_ranges(100, MEAN_KEYS, KeySizes::Varied { seed: 5 });
        let mut reversed = ranges.clone();
        reversed.reverse();
        assert_eq!(
            place_initial(&up_nodes(5), &ranges, 3),
            place_initial(&up_nodes(5), &reversed, 3)
        );
    }

    #[test]
    fn leaders_leave_a_draining_node_even_when_its_replicas_cannot() {
        // Three nodes, RF 3: every node holds every range, so there is no
        // free node to move node 1's replicas to; only its leaders move.
        let mut layout = placed(3, 30, KeySizes::Equal);
        layout.nodes[0].state = NodeState::Draining;
        let operations = plan(&layout, DEFAULT_TOLERANCE);
        assert!(operations
            .iter()
            .all(|op| matches!(op, Operation::TransferLeader { from: 1, .. })));
        let after = applied(&layout, &operations);
        assert_eq!(leader_counts(&after)[&1], 0);
        assert_eq!(leader_counts(&after)[&2], 15);
        assert_eq!(leader_counts(&after)[&3], 15);
        assert!(plan(&after, DEFAULT_TOLERANCE).is_empty());
    }

    #[test]
    fn ranges_without_quorum_are_left_alone() {
        let mut layout = placed(5, 20, KeySizes::Equal);
        layout.nodes[0].state = NodeState::Down;
        layout.nodes[1].state = NodeState::Down;
        let lost: BTreeSet<RangeId> = layout
            .ranges
            .iter()
            .filter(|range| range.replicas.contains(&1) && range.replicas.contains(&2))
            .map(|range| range.id)
            .collect();
        assert!(!lost.is_empty());
        let operations = plan(&layout, DEFAULT_TOLERANCE);
        assert!(operations.iter().all(|op| !lost.contains(&op.range())));
        let after = applied(&layout, &operations);
        for range in &after.ranges {
            if !lost.contains(&range.id) {
                assert!(
                    range.replicas.iter().all(|&node| node > 2),
                    "range {}",
                    range.id
                );
            }
        }
        assert!(plan(&after, DEFAULT_TOLERANCE).is_empty());
    }

    #[test]
    fn over_replicated_ranges_shed_replicas() {
        // Lowering the replication factor from 5 to 3.
        let mut layout = placed(7, 70, KeySizes::Equal);
        let wide = match place_initial(
            &up_nodes(7),
            &synthetic_ranges(70, MEAN_KEYS, KeySizes::Equal),
            5,
        ) {
            Ok(wide) => wide,
            Err(error) => panic!("{error}"),
        };
        layout.ranges = wide.ranges;
        let operations = plan(&layout, DEFAULT_TOLERANCE);
        let removals = operations
            .iter()
            .filter(|op| matches!(op, Operation::RemoveReplica { .. }))
            .count();
        assert_eq!(removals, 140);
        let after = applied(&layout, &operations);
        assert_healthy_and_balanced(&after, "RF 5 -> 3");
        assert!(plan(&after, DEFAULT_TOLERANCE).is_empty());
    }

    #[test]
    fn replication_factor_one_still_balances() {
        let ranges = synthetic_ranges(40, MEAN_KEYS, KeySizes::Equal);
        let simulation = match simulate_add_node(4, &ranges, 1) {
            Ok(simulation) => simulation,
            Err(error) => panic!("{error}"),
        };
        assert_eq!(simulation.figures.replicas_moved, 8);
        assert_healthy_and_balanced(&simulation.after, "RF 1");
    }

    #[test]
    fn unknown_nodes_count_as_down() {
        let mut layout = placed(5, 50, KeySizes::Equal);
        layout.nodes.retain(|node| node.id != 5); // node 5 was removed from the cluster
        let had = replica_counts(&layout)[&5];
        let operations = plan(&layout, DEFAULT_TOLERANCE);
        let after = applied(&layout, &operations);
        assert_eq!(replica_counts(&after).get(&5).copied().unwrap_or(0), 0);
        assert!(replicas_moved(&operations) >= had);
        assert_healthy_and_balanced(&after, "unknown node");
    }

    #[test]
    fn a_larger_tolerance_moves_less_and_balances_less() {
        let mut layout = placed(6, 512, KeySizes::Equal);
        layout.nodes.push(NodeInfo::up(7));
        let strict = plan(&layout, DEFAULT_TOLERANCE);
        let loose = plan(&layout, 20);
        assert!(replicas_moved(&loose) < replicas_moved(&strict));
        let after = applied(&layout, &loose);
        assert!(up_spread(&after, &replica_counts(&after)) <= 20);
        assert!(plan(&after, 20).is_empty());
        // Tolerance 0 behaves as 1: a difference of 1 cannot be removed.
        assert_eq!(plan(&layout, 0), strict);
    }

    #[test]
    fn keys_and_replicas_moved_are_counted_from_copies() {
        let layout = placed(3, 3, KeySizes::Equal);
        let operations = [
            Operation::TransferLeader {
                range: 1,
                from: 1,
                to: 2,
            },
            Operation::MoveReplica {
                range: 2,
                from: 1,
                to: 4,
            },
            Operation::AddReplica { range: 3, to: 4 },
        ];
        assert_eq!(replicas_moved(&operations), 2);
        assert_eq!(keys_moved(&layout, &operations), 2 * MEAN_KEYS);
    }

    #[test]
    fn moving_a_leader_replica_moves_the_leadership() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        layout.nodes.push(NodeInfo::up(4));
        let leader = layout.ranges[0].leader.unwrap_or(0);
        apply(
            &mut layout,
            &Operation::MoveReplica {
                range: 1,
                from: leader,
                to: 4,
            },
        );
        assert_eq!(layout.ranges[0].leader, Some(4));
        assert!(!layout.ranges[0].replicas.contains(&leader));
    }

    #[test]
    #[should_panic(expected = "already holds a replica")]
    fn apply_refuses_two_replicas_on_one_node() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        apply(
            &mut layout,
            &Operation::MoveReplica {
                range: 1,
                from: 1,
                to: 2,
            },
        );
    }

    #[test]
    #[should_panic(expected = "is not Up")]
    fn apply_refuses_a_target_that_is_not_up() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        layout.nodes.push(NodeInfo {
            id: 4,
            zone: None,
            state: NodeState::Draining,
        });
        apply(
            &mut layout,
            &Operation::MoveReplica {
                range: 1,
                from: 1,
                to: 4,
            },
        );
    }

    #[test]
    #[should_panic(expected = "does not lead the range")]
    fn apply_refuses_a_transfer_from_a_follower() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        let leader = layout.ranges[0].leader.unwrap_or(0);
        let follower = layout.ranges[0]
            .replicas
            .iter()
            .copied()
            .find(|&node| node != leader)
            .unwrap_or(0);
        let other = layout.ranges[0]
            .replicas
            .iter()
            .copied()
            .find(|&node| node != leader && node != follower)
            .unwrap_or(0);
        apply(
            &mut layout,
            &Operation::TransferLeader {
                range: 1,
                from: follower,
                to: other,
            },
        );
    }

    #[test]
    #[should_panic(expected = "already has 3 replicas")]
    fn apply_refuses_to_over_replicate() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        layout.nodes.push(NodeInfo::up(4));
        apply(&mut layout, &Operation::AddReplica { range: 1, to: 4 });
    }

    #[test]
    #[should_panic(expected = "cannot plan an invalid layout")]
    fn plan_refuses_an_invalid_layout() {
        let mut layout = placed(3, 1, KeySizes::Equal);
        layout.replication_factor = 2;
        plan(&layout, DEFAULT_TOLERANCE);
    }
}
