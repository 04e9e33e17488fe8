//! What a core reports about itself: cumulative counters and latency
//! histograms since the node started.
//!
//! The cores record with `hdrhistogram` (a record is a few nanoseconds and
//! never allocates once the histogram exists); the admin plane turns the
//! cumulative histograms into per-second deltas for the dashboard
//! ([`crate::live`]) and into Prometheus histograms ([`crate::metrics`]).

use hdrhistogram::Histogram;

// The histogram's shape is the storage crate's, shared with the cores that
// record into it.
pub use tinkerdb_storage::latency::{
    latency_histogram, record_micros, LATENCY_SIGNIFICANT_DIGITS, MAX_RECORDED_MICROS,
};

/// The last snapshot a core installed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// When it was installed, Unix milliseconds.
    pub unix_ms: u64,
    /// Entries in it.
    pub entries: u64,
    /// Its size in bytes.
    pub bytes: u64,
    /// WAL index it covers.
    pub cut_index: u64,
}

/// A core's replica of one range's Raft group (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftReport {
    /// The group (range) id.
    pub group: u64,
    /// The range's first and last slot (inclusive, as `core_slots`).
    pub slots: (u32, u32),
    /// This node's id.
    pub node_id: u64,
    /// `Leader`, `Follower`, `Candidate`, `Learner`, `Shutdown`.
    pub state: String,
    /// The leader this replica knows of.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Last entry in this replica's log.
    pub last_log_index: Option<u64>,
    /// Last entry known committed.
    pub committed_index: Option<u64>,
    /// Last entry applied here.
    pub applied_index: Option<u64>,
    /// Voters and their Raft addresses.
    pub voters: Vec<(u64, String)>,
    /// Learners (nodes being added) and their Raft addresses.
    pub learners: Vec<(u64, String)>,
    /// Last index covered by this replica's newest snapshot.
    pub snapshot_index: Option<u64>,
    /// Last index purged from this replica's log.
    pub purged_index: Option<u64>,
    /// Whether the group sleeps on this node (no heartbeats while idle).
    pub asleep: bool,
    /// The range's configuration epoch (log index of the membership this
    /// replica uses; raised by every change of the replicas).
    pub epoch: u64,
    /// On the leader: how each other member keeps up.
    pub followers: Vec<FollowerReport>,
    /// This core's health probes of its peers.
    pub peers: Vec<PeerReport>,
}

/// A member's progress as its group's leader sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerReport {
    /// The member.
    pub node_id: u64,
    /// Last index it is known to hold.
    pub matched_index: Option<u64>,
    /// Entries it lacks.
    pub lag: u64,
    /// Milliseconds since it last acknowledged the leader.
    pub last_ack_ms: Option<u64>,
}

/// A peer node's health as one core's probes see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerReport {
    /// The peer.
    pub node_id: u64,
    /// Its Raft address for this core.
    pub addr: String,
    /// `up`, `down` or `unknown`.
    pub state: String,
    /// Milliseconds since it last answered.
    pub last_seen_ms: Option<u64>,
    /// Round trip of its last answer, microseconds.
    pub rtt_us: Option<u64>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
}

/// A node as it registered itself in the cluster metadata (also the
/// record the metadata group replicates, `core::cluster::meta::NodeRecord`:
/// its JSON form is part of the metadata's log entries and snapshots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RegisteredNode {
    /// Node id.
    pub id: u64,
    /// Its Raft address.
    pub raft: String,
    /// Its client (flatbuffers) address.
    pub client: String,
    /// Its Redis-protocol address, if it serves one.
    pub resp: Option<String>,
    /// Its admin API address, if it serves one.
    pub admin: Option<String>,
    /// Its cores.
    pub cores: u32,
    /// The TinkerDB version it runs.
    pub version: String,
}

/// A range as the cluster metadata's range table holds it: what the range's
/// leader last reported (also the record the metadata group replicates,
/// `core::cluster::meta`: its JSON form is part of the metadata's log
/// entries and snapshots).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct RangeRecord {
    /// The range (its Raft group's id).
    pub id: u64,
    /// Voting replicas, by node id.
    pub voters: Vec<u64>,
    /// Replicas catching up (learners), by node id.
    pub learners: Vec<u64>,
    /// The node that reported: the range's leader in `term`.
    pub leader: u64,
    /// The Raft term of that leadership.
    pub term: u64,
    /// The range's epoch (the log index of its membership) when reported.
    pub epoch: u64,
}

/// The cluster metadata group as core 0's replica sees it (cluster mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetadataReport {
    /// `Leader`, `Follower`, `Learner`, ... on this node.
    pub state: String,
    /// The group's leader, if known.
    pub leader: Option<u64>,
    /// Current term.
    pub term: u64,
    /// Voters.
    pub voters: Vec<u64>,
    /// Learners (nodes being added).
    pub learners: Vec<u64>,
    /// Last index applied by this replica.
    pub applied_index: Option<u64>,
    /// The registered nodes, by id, as this replica has applied them.
    pub nodes: Vec<RegisteredNode>,
    /// The range table, by range id, as this replica has applied it.
    pub ranges: Vec<RangeRecord>,
}

/// One core's state, cumulative since start.
#[derive(Debug, Clone)]
pub struct CoreReport {
    /// The core.
    pub core: usize,
    /// Client requests answered (both protocols), errors included.
    pub requests_total: u64,
    /// Client requests answered with an error.
    pub errors_total: u64,
    /// The same by error code: flatbuffers requests by their `ErrorCode`
    /// name (`UnknownTenant`), Redis-protocol commands by their error
    /// prefix (`ERR`, `WRONGTYPE`, `NOAUTH`); codes answered at least once
    /// only.
    pub errors_by_code: Vec<(String, u64)>,
    /// Requests received from other cores.
    pub peer_requests_total: u64,
    /// Requests for ranges this node does not replicate, sent to a node
    /// that does (cluster mode, a partial layout).
    pub forwarded_requests_total: u64,
    /// Client connections accepted.
    pub connections_total: u64,
    /// Client connections open now.
    pub connections_open: u64,
    /// Live keys on this core.
    pub keys: u64,
    /// Bytes of keys and values on this core.
    pub data_bytes: u64,
    /// Bytes written to the WAL (batches with their headers and padding).
    pub wal_bytes_written: u64,
    /// WAL flushes (each one write and one `fdatasync`).
    pub wal_fsyncs: u64,
    /// Whether the WAL refuses writes after a failed write or fsync.
    pub wal_poisoned: bool,
    /// Write-plus-fdatasync latency of WAL flushes, microseconds.
    pub wal_fsync_latency: Histogram<u64>,
    /// Server-side request latency, microseconds: from reading a request to
    /// writing its answer (durability wait included).
    pub request_latency: Histogram<u64>,
    /// Requests answered per tenant, by tenant id.
    pub tenant_requests: Vec<u64>,
    /// The last snapshot installed, if any.
    pub last_snapshot: Option<SnapshotInfo>,
    /// Cluster mode: this core's Raft replicas, one per range it hosts
    /// (empty on a standalone node).
    pub ranges: Vec<RaftReport>,
    /// Cluster mode, core 0: the cluster metadata group.
    pub metadata: Option<MetadataReport>,
}
