//! A decoded, validated client request ([`Command`]) and its answer
//! ([`Reply`]) before encoding: the front-end-neutral form that the
//! flatbuffers codec produces and the admin API builds.

use bytes::Bytes;
use tinkerdb_storage::{WriteCondition, WriteOutcome};

use crate::error::ProtocolError;
use crate::shard::{ExpireCondition, MoveKind, ValueRead};

/// A decoded, validated client request.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Handshake.
    Hello {
        /// Protocol version the client speaks.
        protocol_version: u32,
        /// Tenant name (empty: default).
        tenant: String,
        /// Client's self-description.
        client_name: String,
        /// Reads may answer from local state in cluster mode (opt-in).
        stale_reads: bool,
        /// The user to authenticate as (empty: none).
        user: String,
        /// Its password (`Debug` never shows it).
        password: Password,
    },
    /// No-op round trip.
    Ping,
    /// Read one key.
    Get {
        /// Key.
        key: Bytes,
    },
    /// Write one key (SET and CompareAndSet).
    Set {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// Time to live, 0 = none.
        ttl_ms: u64,
        /// When to apply.
        condition: WriteCondition,
    },
    /// Delete keys.
    Delete {
        /// Keys.
        keys: Vec<Bytes>,
    },
    /// Count existing keys.
    Exists {
        /// Keys.
        keys: Vec<Bytes>,
    },
    /// Read keys.
    MGet {
        /// Keys.
        keys: Vec<Bytes>,
    },
    /// Write keys.
    MSet {
        /// Keys and values.
        entries: Vec<(Bytes, Bytes)>,
    },
    /// Keys matching a glob.
    Keys {
        /// Glob pattern (empty: all).
        pattern: Bytes,
    },
    /// One scan step.
    Scan {
        /// Slot to resume at (0: start).
        cursor: u32,
        /// Key prefix filter.
        prefix: Bytes,
        /// Glob filter.
        pattern: Bytes,
        /// Keys wanted (already clamped to the limits).
        count: usize,
    },
    /// The tenant's key count.
    Count,
    /// Snapshot every core now.
    Snapshot,
    /// Add to a key's integer value (INCRBY).
    IncrBy {
        /// Key.
        key: Bytes,
        /// The increment.
        by: i64,
    },
    /// Set or clear a key's expiry (EXPIREAT with its options, PERSIST).
    Expire {
        /// Key.
        key: Bytes,
        /// The new expiry, `None` to clear it.
        at_ms: Option<u64>,
        /// When it applies.
        condition: ExpireCondition,
    },
    /// Rename or copy a key (RENAME, RENAMENX, COPY).
    Rename {
        /// Source key.
        from: Bytes,
        /// Destination key.
        to: Bytes,
        /// What to do.
        how: MoveKind,
    },
    /// Write keys only if none exists, atomically (MSETNX).
    MSetIfAbsent {
        /// Keys and values.
        entries: Vec<(Bytes, Bytes)>,
    },
}

impl Command {
    /// The keys the command names (none for Hello, Ping, Keys, Scan,
    /// Count and Snapshot).
    pub fn keys(&self) -> Vec<&Bytes> {
        match self {
            Command::Get { key }
            | Command::Set { key, .. }
            | Command::IncrBy { key, .. }
            | Command::Expire { key, .. } => vec![key],
            Command::Delete { keys } | Command::Exists { keys } | Command::MGet { keys } => {
                keys.iter().collect()
            }
            Command::MSet { entries } | Command::MSetIfAbsent { entries } => {
                entries.iter().map(|(key, _)| key).collect()
            }
            Command::Rename { from, to, .. } => vec![from, to],
            Command::Hello { .. }
            | Command::Ping
            | Command::Keys { .. }
            | Command::Scan { .. }
            | Command::Count
            | Command::Snapshot => Vec::new(),
        }
    }
}

/// An answer to one request, before encoding.
#[derive(Debug, PartialEq)]
pub enum Reply {
    /// The request failed.
    Error(ProtocolError),
    /// Handshake accepted.
    HelloOk {
        /// Bound tenant.
        tenant: String,
        /// Cores of the node.
        cores: u32,
        /// This node's id (0 on a standalone node).
        node_id: u64,
        /// Cluster mode: every registered member's client address.
        nodes: std::sync::Arc<Vec<(u64, String)>>,
    },
    /// Answer to Ping.
    Pong,
    /// Answer to Get.
    Value(Option<ValueRead>),
    /// Answer to Set and CompareAndSet.
    Written(WriteOutcome),
    /// Answer to Delete, Exists, Count, Expire, Rename, MSetIfAbsent.
    Count(u64),
    /// Answer to IncrBy: the new value.
    Integer(i64),
    /// Answer to MGet.
    Values(Vec<Option<ValueRead>>),
    /// Answer to MSet.
    Versions(Vec<u64>),
    /// Answer to Keys.
    Keys(Vec<Bytes>),
    /// Answer to Scan.
    Scanned {
        /// Next cursor, 0 when done.
        cursor: u64,
        /// Keys found.
        keys: Vec<Bytes>,
    },
    /// Answer to Snapshot.
    Snapshotted {
        /// Entries written.
        keys: u64,
        /// Bytes written.
        bytes: u64,
    },
}

impl From<ProtocolError> for Reply {
    fn from(error: ProtocolError) -> Reply {
        Reply::Error(error)
    }
}

/// A password as it travels inside a request: `Debug` never shows it, so
/// no log line or panic message of a request can carry one.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Password(pub String);

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}
