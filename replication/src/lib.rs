//! Raft replication for TinkerDB: openraft 0.10 running on glommio, one
//! Raft group's log kept in a core's write-ahead log.
//!
//! Where it sits: `storage` (the store, the WAL) <- `replication` <- `core`.
//! A core owns its Raft groups the way it owns its shards: the `Raft`
//! handle, the log store and the state machine of a group live on one core
//! and are `!Send` (openraft's `single-threaded` feature). Other threads
//! (the tokio admin plane) reach a group only through `Send` messages to its
//! core.
//!
//! # Layout
//! - [`runtime`]: [`GlommioRuntime`], openraft's `AsyncRuntime` on glommio
//!   (no tokio linked).
//! - [`command`]: [`Command`], what a log entry asks the state machine to do,
//!   and [`Response`], what applying it answers; their byte encoding.
//! - [`log_store`]: [`CoreLog`], one WAL per core for the Raft logs of
//!   every range on it (one group commit for all of them), and
//!   [`log_store::RangeLogStore`], openraft's `RaftLogStorage` for one range.
//! - `codec` (private): bounds-checked little-endian decoding helpers.
//! - [`state_machine`]: [`state_machine::StateMachine`], applying committed
//!   commands through the node's [`state_machine::Applier`].
//! - [`snapshot_store`]: a group's snapshots on disk (durable before the log
//!   they replace is purged).
//! - [`transport`]: node-to-node calls over TCP (flatbuffers `PeerFrame`),
//!   one connection per peer per core, with a fault switch for partitions.
//! - [`peer_tls`]: mutual TLS on peer connections, after the hello.
//! - [`network`]: openraft's `RaftNetworkV2` over the transport.
//! - [`group`]: starting one Raft group on a core (config, log store, state
//!   machine, network), serving its peers' calls, writes, reads, membership
//!   changes and status.
//! - [`health`]: each core pings its peers and reports them up or down.
//! - [`hibernate`]: quiet groups stop their timers (no heartbeats, no
//!   election timers) and wake on the first request or a dead leader.
//!
//! # Invariants
//! - A group's Raft state is touched only by the core that owns it; the WAL's
//!   durability callbacks run on that core too.
//! - An entry is acknowledged durable ([`openraft::storage::IOFlushed`]) only
//!   after the WAL flush covering it returned from `fdatasync`; the vote is
//!   durable before `save_vote` returns.
//! - After any write to disk fails, the log store refuses every later write:
//!   the WAL is poisoned and nothing is retried.
//! - The log never has holes: entries in memory and on disk are dense in
//!   Raft index, from the last purged entry + 1 to the last entry.
//! - Commands are deterministic: a Put carries an absolute expiry, so every
//!   replica and every replay applies the same change.

pub mod command;
pub mod group;
pub mod health;
pub mod hibernate;
pub mod log_store;
pub mod network;
pub mod peer_tls;
pub mod runtime;
pub mod snapshot_store;
pub mod state_machine;
pub mod transport;

mod codec;

pub use codec::DecodeError;
pub use command::{Command, PutCondition, Response, TraceParent};
pub use log_store::{CoreLog, RangeId};
pub use runtime::GlommioRuntime;

/// A node's id in a Raft group (the node id TinkerDB gives each process).
pub type NodeId = u64;

/// What a group knows of a member: its Raft address (`host:port`).
pub type Node = openraft::BasicNode;

openraft::declare_raft_types!(
    /// openraft's types for TinkerDB's Raft groups.
    pub TypeConfig:
        D = Command,
        R = Response,
        NodeId = NodeId,
        Node = Node,
        AsyncRuntime = GlommioRuntime,
);

/// A Raft log entry.
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// A log entry's id: the leader that proposed it (term, node) and its index.
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote: the term, the node voted for, and whether a quorum granted it.
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A group's membership (voters, learners and their addresses).
pub type Membership = openraft::Membership<NodeId, Node>;
