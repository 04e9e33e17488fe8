//! TinkerDB's per-core storage engine.
//!
//! A node splits its keyspace into [`SLOT_COUNT`] hash slots ([`slot`]); each
//! slot belongs to exactly one core, and each core keeps the keys of its slots
//! in one [`Store`]. This crate is that store and the rules that place a key
//! in a slot. The WAL and snapshots (durability) and the Raft state machine
//! (replication) wrap a `Store`; they never reach around it.
//!
//! # Layout
//! - [`slot`]: the stable hash of (tenant, key) into a slot.
//! - [`store`]: the map itself: values, versions, TTLs, per-tenant usage and
//!   quotas, and slot-by-slot iteration for cursor scans.
//! - [`glob`]: Redis-style glob patterns over bytes (KEYS, SCAN MATCH).
//! - [`wal_format`]: the WAL's byte layout (batches, records), pure functions.
//! - [`log_op`]: what a WAL record holds: the effect of one write.
//! - [`wal`]: the per-core write-ahead log (io_uring O_DIRECT, group commit).
//! - [`snapshot`]: fork-less point-in-time snapshots (copy-on-write by slot).
//!
//! # Invariants
//! - A `Store` is owned by one thread and is `!Sync` by construction (no locks,
//!   no atomics on the data path); callers send work to the owning core.
//! - The store knows nothing of the network, the wire protocol or Raft.
//! - Time is passed in (`now_ms`), never read here: the same calls give the
//!   same results, which replay from a log and tests rely on.
//! - Every successful write takes a fresh version from one counter per store,
//!   so a version is never reused, even after a key is deleted and recreated.

pub mod glob;
pub mod latency;
pub mod log_op;
pub mod slot;
pub mod snapshot;
pub mod store;
pub mod wal;
pub mod wal_format;

pub use slot::{hash_slot, Slot, SLOT_COUNT};
pub use store::{
    database_of, keyspace, quota_owner, EntryView, Expiry, Quota, SetOptions, Store, StoreError,
    TenantId, TenantUsage, WriteCondition, WriteOutcome, DATABASE_SHIFT, MAX_TENANTS,
};
