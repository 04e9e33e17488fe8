//! The TinkerDB node: thread-per-core, shared-nothing.
//!
//! Each core runs one glommio executor and owns the hash slots the
//! [`slots::SlotMap`] gives it, with their keys in its own
//! [`shard::Shard`]. Any core accepts client connections; a request for a
//! key another core owns travels to that core as a message
//! ([`coord::context`]) and the answer comes back. There is no lock and no
//! shared mutable state on the data path: what cores share (slot map,
//! tenants, config) is read-only.
//!
//! # Layout: from the socket to the store
//! A request's path reads top to bottom; each module imports only those
//! below it (no import cycle between them).
//! - [`node`]: start-up: executors, channels, listeners, the admin plane.
//! - [`frontend`]: the wire forms: [`frontend::fbs`] (flatbuffers, with its
//!   codec), [`frontend::resp`] (Redis), [`frontend::admin`] (each core's
//!   side of the admin plane).
//! - [`cluster`]: membership: a core's replica started, joins, member
//!   changes.
//! - [`coord`]: the coordinator: sessions, cross-core dispatch, batches per
//!   destination, fan-out, the Raft path ([`coord::replica`]), snapshots.
//! - [`shard`]: a core's store and the requests it executes, its journal
//!   (the WAL), the one write-operation encoding for Raft
//!   ([`shard::write_op`]) and recovery.
//! - [`net`]: listening sockets and connection streams.
//! - [`telemetry`]: OpenTelemetry spans of sampled requests, across cores
//!   and nodes.
//! - Foundations: [`error`] (the error every front end encodes),
//!   [`config`] (configuration and named limits), [`slots`] (slot -> core),
//!   [`tenants`] (names, ids, quota shares), [`shutdown`], [`platform`].
//!
//! The binary `tinkerdb` (src/bin/tinkerdb.rs) is a thin wrapper over
//! [`node::run`]. See `docs/ARCHITECTURE.md` for a request's whole journey.

pub mod cluster;
pub mod config;
pub mod coord;
pub mod error;
pub mod frontend;
pub mod net;
pub mod node;
pub mod platform;
pub mod shard;
pub mod shutdown;
pub mod slots;
pub mod telemetry;
pub mod tenants;
