//! The only way the admin plane reaches the cores: one bounded channel per
//! core carrying `Send` messages, each with a oneshot for its answer.
//!
//! Invariants:
//! - the admin side never waits for room in a core's queue: a full queue
//!   answers `busy` at once (`try_send`), so a burst of admin requests cannot
//!   pile up behind the cores, and the cores never wait on the admin plane
//!   (their answer is a oneshot send, which never blocks);
//! - every call has a deadline ([`CORE_CALL_TIMEOUT`]): a stuck core shows as
//!   an `unavailable` error, never as a hung HTTP request;
//! - nothing here is shared with a core but the channel itself: shard maps,
//!   stores and (later) Raft handles are `!Send` and stay on their cores.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::error::{ApiError, ErrorCode};
use crate::report::CoreReport;
use crate::tenants_file::TenantSpec;

/// Admin messages one core's queue holds before `busy` is answered.
pub const ADMIN_QUEUE_CAPACITY: usize = 64;

/// Longest an admin call waits for a core's answer. Above the 5 s a
/// replicated read or write keeps retrying through elections
/// (`tinkerdb_replication::group::REQUEST_DEADLINE`), so that the group's
/// own `unavailable` answer, with its reason, arrives first.
pub const CORE_CALL_TIMEOUT: Duration = Duration::from_secs(6);

/// Most keys one HTTP scan page returns.
pub const MAX_SCAN_PAGE_KEYS: usize = 1000;

/// What the admin plane asks of a core.
#[derive(Debug)]
pub enum CoreRequest {
    /// A key operation of `tenant`. The receiving core routes it to the
    /// key's owner like any client request.
    Key {
        /// Tenant name.
        tenant: String,
        /// The operation.
        op: KeyOp,
    },
    /// This core's counters and histograms.
    Report,
    /// Snapshot every core now (the receiving core fans out).
    Snapshot,
    /// Usage of every tenant on this core, in tenant-id order.
    TenantUsage,
    /// Replace this core's tenant list (ids are list positions; the list
    /// only ever grows, so ids held by open connections stay valid).
    InstallTenants(Arc<Vec<TenantSpec>>),
    /// Remove every key of every database of tenant `tenant` (deleted or
    /// not), on every range (the receiving core fans out); answered with
    /// `Flushed`.
    FlushTenant {
        /// Tenant name.
        tenant: String,
    },
    /// Cluster mode: make node `id` a voter of this core's group, reached
    /// at its Raft address `raft`.
    AddMember {
        /// The node.
        id: u64,
        /// Its Raft address, `HOST:PORT` (an IP or a host name, as its
        /// peers are to dial it).
        raft: String,
    },
    /// Cluster mode: remove node `id` from this core's group.
    RemoveMember {
        /// The node.
        id: u64,
    },
    /// Which core hosts range `range` now (any core answers).
    LocateRange {
        /// The range.
        range: usize,
    },
    /// Cluster mode, step 1 of a range move, on the core hosting it: stop
    /// the range's replica and export its log for core `to_core`.
    ExportRange {
        /// The range.
        range: usize,
        /// The core it moves to.
        to_core: usize,
    },
    /// Step 2, on the target core: take the range in and start it.
    ImportRange {
        /// The range.
        range: usize,
        /// Its log, as the source exported it.
        log: Vec<u8>,
        /// Its snapshot directory on the source core.
        snapshots: PathBuf,
    },
    /// Step 3, on the source core: end the move (drop the old copy if the
    /// range moved, start it again here if not).
    SettleRangeMove {
        /// The range.
        range: usize,
    },
}

/// A key operation.
#[derive(Debug)]
pub enum KeyOp {
    /// Read.
    Get {
        /// Key.
        key: Bytes,
        /// Cluster mode: answer from this node's replica without the read
        /// index.
        stale: bool,
    },
    /// Write, with an optional time to live (0: none).
    Put {
        /// Key.
        key: Bytes,
        /// Value.
        value: Bytes,
        /// Time to live in milliseconds, 0 for none.
        ttl_ms: u64,
    },
    /// Delete.
    Delete {
        /// Key.
        key: Bytes,
    },
    /// One page of a cursor scan.
    Scan {
        /// Only keys starting with this.
        prefix: Bytes,
        /// Where to resume (0: start).
        cursor: u32,
        /// Keys wanted (at most [`MAX_SCAN_PAGE_KEYS`]).
        limit: usize,
    },
}

/// A stored value as read.
#[derive(Debug, Clone)]
pub struct StoredValue {
    /// The bytes.
    pub value: Bytes,
    /// Version of the write that stored it.
    pub version: u64,
    /// Unix milliseconds at which it expires, if it does.
    pub expires_at_ms: Option<u64>,
}

/// A tenant's usage on one core.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// Live keys.
    pub keys: u64,
    /// Bytes of keys and values.
    pub bytes: u64,
}

/// What a core answers.
#[derive(Debug)]
pub enum CoreResponse {
    /// Answer to `Get`.
    Value(Option<StoredValue>),
    /// Answer to `Put`.
    Written {
        /// Version of the write.
        version: u64,
    },
    /// Answer to `Delete`: whether the key existed.
    Deleted(bool),
    /// Answer to `FlushTenant`: keys removed.
    Flushed(u64),
    /// Answer to `Scan`.
    Scanned {
        /// Keys found.
        keys: Vec<Bytes>,
        /// Where to resume, `None` when the scan is complete.
        next_cursor: Option<u32>,
    },
    /// Answer to `Snapshot`.
    Snapshotted {
        /// Entries written, all cores.
        entries: u64,
        /// Bytes written, all cores.
        bytes: u64,
    },
    /// Answer to `Report`.
    Report(Box<CoreReport>),
    /// Answer to `TenantUsage`.
    Usage(Vec<Usage>),
    /// Answer to `InstallTenants`.
    Done,
    /// Answer to `AddMember` and `RemoveMember`: the group's voters once
    /// the change is committed.
    Members(Vec<Vec<u64>>),
    /// Answer to `LocateRange`.
    RangeAt {
        /// The core hosting the range.
        core: usize,
    },
    /// Answer to `ExportRange`.
    RangeExported {
        /// The range's log (`tinkerdb_replication`'s range export).
        log: Vec<u8>,
        /// Its snapshot directory on the source core.
        snapshots: PathBuf,
    },
    /// Answer to `SettleRangeMove`: whether the range left the core.
    RangeSettled {
        /// True: it moved; false: it stays (started again).
        moved: bool,
    },
    /// The request failed.
    Failed(ApiError),
}

/// A request with its reply slot.
#[derive(Debug)]
pub struct Envelope {
    /// The request.
    pub request: CoreRequest,
    /// Where the core answers.
    pub reply: ReplySlot,
}

/// Where a core sends its answer to one request.
pub type ReplySlot = oneshot::Sender<CoreResponse>;

/// The receiving end a core serves.
pub type CoreInbox = mpsc::Receiver<Envelope>;

/// Creates one core's admin channel.
pub fn core_channel() -> (mpsc::Sender<Envelope>, CoreInbox) {
    mpsc::channel(ADMIN_QUEUE_CAPACITY)
}

/// Facts about the node that do not change while it runs.
#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// Software version.
    pub version: String,
    /// Cores serving.
    pub cores: usize,
    /// Durability mode (`sync`, `interval`, `none`).
    pub durability: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Client protocol address (bound).
    pub client_addr: SocketAddr,
    /// The client address others are told (`--advertise-listen`, or the
    /// bound one).
    pub advertised_client: String,
    /// Redis protocol address, if served.
    pub resp_addr: Option<SocketAddr>,
    /// Inclusive slot range of each core.
    pub core_slots: Vec<(u32, u32)>,
    /// Unix milliseconds at start.
    pub started_unix_ms: u64,
    /// Longest key accepted (`limits.max_key_bytes`).
    pub max_key_bytes: usize,
    /// Longest value accepted (`limits.max_value_bytes`).
    pub max_value_bytes: usize,
    /// Databases per tenant (`databases`): every node of a cluster must
    /// have the same count.
    pub databases: u16,
    /// Ranges each core hosts (`ranges_per_core`): every node of a cluster
    /// must have the same count.
    pub ranges_per_core: usize,
    /// Whether the node is a cluster member (Raft), not standalone.
    pub cluster: bool,
}

/// The admin plane's handle on the node: the cores' channels and the
/// authoritative tenant list. Cheap to clone, `Send + Sync`.
#[derive(Clone)]
pub struct NodeHandle {
    inner: Arc<HandleInner>,
}

struct HandleInner {
    facts: NodeFacts,
    cores: Vec<mpsc::Sender<Envelope>>,
    next_core: AtomicUsize,
    /// Changed only under this lock, persisted before it is installed.
    tenants: tokio::sync::Mutex<Vec<TenantSpec>>,
    /// The node's users (shared with the cores).
    users: Arc<crate::users::Users>,
}

impl NodeHandle {
    /// A handle over the cores' senders (index = core), the tenant list
    /// the cores were started with and the node's users.
    pub fn new(
        facts: NodeFacts,
        cores: Vec<mpsc::Sender<Envelope>>,
        tenants: Vec<TenantSpec>,
        users: Arc<crate::users::Users>,
    ) -> NodeHandle {
        assert_eq!(facts.cores, cores.len(), "one channel per core");
        NodeHandle {
            inner: Arc::new(HandleInner {
                facts,
                cores,
                next_core: AtomicUsize::new(0),
                tenants: tokio::sync::Mutex::new(tenants),
                users,
            }),
        }
    }

    /// The node's static facts.
    pub fn facts(&self) -> &NodeFacts {
        &self.inner.facts
    }

    /// Number of cores.
    pub fn cores(&self) -> usize {
        self.inner.cores.len()
    }

    /// A core to send a routed request to (round robin, to spread load).
    pub fn any_core(&self) -> usize {
        self.inner.next_core.fetch_add(1, Ordering::Relaxed) % self.cores()
    }

    /// The tenant list (authoritative copy).
    pub fn tenants(&self) -> &tokio::sync::Mutex<Vec<TenantSpec>> {
        &self.inner.tenants
    }

    /// The node's users.
    pub fn users(&self) -> &Arc<crate::users::Users> {
        &self.inner.users
    }

    /// Sends `request` to `core` and waits (at most [`CORE_CALL_TIMEOUT`])
    /// for the answer. A full queue is `busy` at once.
    pub async fn call(&self, core: usize, request: CoreRequest) -> Result<CoreResponse, ApiError> {
        self.call_within(core, request, CORE_CALL_TIMEOUT).await
    }

    /// [`call`](Self::call) with an explicit deadline.
    pub async fn call_within(
        &self,
        core: usize,
        request: CoreRequest,
        timeout: Duration,
    ) -> Result<CoreResponse, ApiError> {
        let (reply, answer) = oneshot::channel();
        self.inner.cores[core]
            .try_send(Envelope { request, reply })
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => ApiError::new(
                    ErrorCode::Busy,
                    format!("core {core}'s admin queue is full ({ADMIN_QUEUE_CAPACITY} requests); retry"),
                ),
                mpsc::error::TrySendError::Closed(_) => ApiError::new(
                    ErrorCode::Unavailable,
                    format!("core {core} has stopped"),
                ),
            })?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(CoreResponse::Failed(error))) => Err(error),
            Ok(Ok(response)) => Ok(response),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("core {core} dropped the request (stopping)"),
            )),
            Err(_) => Err(ApiError::new(
                ErrorCode::Unavailable,
                format!("core {core} did not answer within {timeout:?}"),
            )),
        }
    }

    /// Asks every core the same thing; answers in core order.
    pub async fn call_all(
        &self,
        request: impl Fn() -> CoreRequest,
        timeout: Duration,
    ) -> Result<Vec<CoreResponse>, ApiError> {
        let calls: Vec<_> = (0..self.cores())
            .map(|core| self.call_within(core, request(), timeout))
            .collect();
        futures::future::join_all(calls).await.into_iter().collect()
    }
}

/// How long a membership change may take on a core: adding a node waits
/// until it has caught up as a learner (the group's `MEMBERSHIP_DEADLINE`
/// is 60 s; this leaves the answer time to arrive).
pub const MEMBERSHIP_CALL_TIMEOUT: Duration = Duration::from_secs(65);

/// How long one step of a range move may take on a core (a stop waits for
/// a leadership hand-off and the requests in flight; a start restores the
/// range's snapshot and applies its log).
pub const RANGE_MOVE_CALL_TIMEOUT: Duration = Duration::from_secs(25);

/// Current wall-clock time in Unix milliseconds.
pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}
