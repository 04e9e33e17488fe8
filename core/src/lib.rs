//! The TinkerDB node: thread-per-core, shared-nothing.
//!
//! Each core runs one glommio executor and owns the hash slots the
//! [`slots::SlotMap`] gives it, with their keys in its own
//! [`shard::Shard`]. Any core accepts client connections; a request for a
//! key another core owns travels to that core as a message ([`router`]) and
//! the answer comes back. There is no lock and no shared mutable state on the
//! data path: what cores share (slot map, tenants, config) is read-only.
//!
//! # Layout
//! - [`config`]: the node's configuration and its named limits.
//! - [`node`]: start-up: executors, channels, listeners.
//! - [`listener`]: listening sockets (`SO_REUSEADDR`, so a crashed node
//!   restarts on its ports at once).
//! - [`connection`]: one client connection: frames in, answers out.
//! - [`error`]: the error every front end encodes (code, message, owner).
//! - [`protocol`]: wire frames <-> [`protocol::Command`] / [`protocol::Reply`].
//! - [`resp`]: the Redis-protocol listener's parser, commands and replies.
//! - [`router`]: the per-core context and cross-core messaging.
//! - [`shutdown`]: graceful shutdown in two phases (drain, exit).
//! - [`shard`]: the requests a core executes on its store, and its journal.
//! - [`recovery`]: rebuilding a core's store from its snapshot and WAL.
//! - [`snapshots`]: the per-core snapshot driver and file installation.
//! - [`slots`]: slot -> core ownership.
//! - [`tenants`]: tenant names, ids and quota shares.
//! - [`admin_service`]: each core's side of the admin plane (reports,
//!   routed key operations, tenant installs).
//!
//! The binary `tinkerdb` (src/bin/tinkerdb.rs) is a thin wrapper over
//! [`node::run`]. See `docs/ARCHITECTURE.md` for a request's whole journey.

pub mod admin_service;
pub mod cluster;
pub mod config;
pub mod connection;
pub mod error;
pub mod listener;
pub mod node;
pub mod platform;
pub mod protocol;
pub mod recovery;
pub mod resp;
pub mod router;
pub mod shard;
pub mod shutdown;
pub mod slots;
pub mod snapshots;
pub mod tenants;
pub mod write_op;
