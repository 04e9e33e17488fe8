//! A core's context: everything one core's tasks share (the shards of the
//! ranges it hosts, its WAL, its snapshot state, its Raft replicas in
//! cluster mode, its counters, the channels to the other cores). Plain
//! data and the synchronous steps on it; how requests travel is
//! `coord::dispatch`.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tinkerdb_storage::latency::{latency_histogram, record_micros};
use tinkerdb_storage::TenantId;

use futures_channel::oneshot;
use glommio::channels::shared_channel::ConnectedSender;
use tinkerdb_schemas::wire::ErrorCode;

use crate::config::Limits;
use crate::coord::snapshots::SnapshotState;
use crate::shard::{Shard, ShardReply, ShardRequest};
use crate::slots::{CoreId, RangeId, SlotMap};
use crate::tenants::CoreTenants;
use std::path::PathBuf;
use tinkerdb_storage::wal::Wal;

/// A request sent to another core, with where to send its reply.
pub struct CoreMessage {
    /// The range (hosted by the receiving core) it is for.
    pub range: RangeId,
    /// The work.
    pub request: ShardRequest,
    /// Where the owning core puts the answer.
    pub reply_to: oneshot::Sender<ShardReply>,
}

/// Counters of one core, reported to the admin plane on request (the
/// admin adapter, `frontend::admin`, turns them into its `CoreReport`). Plain cells: only this core
/// writes or reads them.
#[derive(Debug)]
pub struct CoreStats {
    /// Requests answered, errors included.
    pub requests_total: Cell<u64>,
    /// Requests answered with an error, by `ErrorCode` value.
    pub errors_total: [Cell<u64>; 22],
    /// Client connections accepted.
    pub connections_total: Cell<u64>,
    /// Client connections open now.
    pub connections_open: Cell<u64>,
    /// Requests received from other cores.
    pub peer_requests_total: Cell<u64>,
    /// Client requests answered with an error (any code, both protocols).
    pub errors_sum: Cell<u64>,
    /// Server-side latency of client requests, microseconds: from the read
    /// that completed a request to the write of its answer.
    pub request_latency: RefCell<Histogram<u64>>,
    /// Client requests answered, by tenant id.
    pub tenant_requests: RefCell<Vec<u64>>,
}

impl Default for CoreStats {
    fn default() -> Self {
        CoreStats {
            requests_total: Cell::default(),
            errors_total: Default::default(),
            connections_total: Cell::default(),
            connections_open: Cell::default(),
            peer_requests_total: Cell::default(),
            errors_sum: Cell::default(),
            request_latency: RefCell::new(latency_histogram()),
            tenant_requests: RefCell::new(Vec::new()),
        }
    }
}

impl CoreStats {
    /// Records `count` requests of `tenant` (a keyspace) answered together, read at
    /// `started` (one clock read per batch, not per request).
    pub fn record_answers(&self, tenant: TenantId, count: u64, started: Instant) {
        if count == 0 {
            return;
        }
        self.requests_total.set(self.requests_total.get() + count);
        let micros = started.elapsed().as_micros() as u64;
        record_micros(&mut self.request_latency.borrow_mut(), micros, count);
        let mut by_tenant = self.tenant_requests.borrow_mut();
        // By tenant, all its databases together.
        let index = tinkerdb_storage::quota_owner(tenant) as usize;
        if by_tenant.len() <= index {
            by_tenant.resize(index + 1, 0);
        }
        by_tenant[index] += count;
    }

    /// Counts one error answered with `code`.
    pub fn count_error(&self, code: ErrorCode) {
        let index = usize::from(code.0).min(self.errors_total.len() - 1);
        let counter = &self.errors_total[index];
        counter.set(counter.get() + 1);
        self.errors_sum.set(self.errors_sum.get() + 1);
    }
}

/// Everything one core's tasks share. Lives in an `Rc` on its core.
pub struct CoreContext {
    /// This core.
    pub core: CoreId,
    /// Slot ownership (read-only).
    pub slot_map: Arc<SlotMap>,
    /// Tenants (replaced whole by the admin plane).
    pub tenants: Rc<CoreTenants>,
    /// Request limits.
    pub limits: Limits,
    /// The shards of the ranges this core hosts, in range order (see
    /// [`Self::shard`]). Each is borrowed only inside synchronous code,
    /// never across an `.await`, so a borrow can never be held by a
    /// suspended task.
    shards: Vec<RefCell<Shard>>,
    /// This core's WAL (none with durability `none`).
    pub wal: Option<Wal>,
    /// Snapshot bookkeeping of this core.
    pub snapshots: RefCell<SnapshotState>,
    /// Where this core's snapshots go.
    pub core_dir: PathBuf,
    /// Channel to each other core (`None` at this core's own index).
    pub(super) peers: Vec<Option<ConnectedSender<CoreMessage>>>,
    /// Counters.
    pub stats: CoreStats,
    /// Cluster mode: this core's replicas of its ranges' Raft groups, in
    /// range order like the shards (set once at start). When set, every
    /// request goes through its range's replica
    /// (`coord::replica::execute_replicated`), never straight to the shard.
    pub replicas: std::cell::OnceCell<Vec<crate::coord::replica::Replica>>,
    /// This context's own `Rc` (weak: no cycle), so a request for this core
    /// can run as a task of its own (cluster mode, see [`Self::dispatch`]).
    pub(super) this: Weak<CoreContext>,
}

/// Current wall-clock time in Unix milliseconds (TTLs are wall-clock so that
/// they mean the same after a restart).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl CoreContext {
    /// Builds the context of `core` from the (recovered) shards of the
    /// ranges it hosts, in range order, and its connected channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new_rc(
        core: CoreId,
        slot_map: Arc<SlotMap>,
        tenants: Rc<CoreTenants>,
        limits: Limits,
        shards: Vec<Shard>,
        wal: Option<Wal>,
        core_dir: PathBuf,
        peers: Vec<Option<ConnectedSender<CoreMessage>>>,
    ) -> Rc<CoreContext> {
        assert_eq!(peers.len(), slot_map.cores());
        assert!(peers[core].is_none(), "no channel from a core to itself");
        assert_eq!(
            shards.len(),
            slot_map.ranges_of(core).len(),
            "one shard per range the core hosts"
        );
        Rc::new_cyclic(|this| CoreContext {
            this: this.clone(),
            core,
            shards: shards.into_iter().map(RefCell::new).collect(),
            slot_map,
            tenants,
            limits,
            wal,
            snapshots: RefCell::new(SnapshotState::default()),
            core_dir,
            peers,
            stats: CoreStats::default(),
            replicas: std::cell::OnceCell::new(),
        })
    }

    /// The ranges this core hosts.
    pub fn hosted_ranges(&self) -> std::ops::Range<RangeId> {
        self.slot_map.ranges_of(self.core)
    }

    /// Position of `range` among this core's (panics if another core
    /// hosts it: routing sends a range's requests to its core only).
    fn local_index(&self, range: RangeId) -> usize {
        let hosted = self.hosted_ranges();
        assert!(
            hosted.contains(&range),
            "range {range} is not hosted by core {}",
            self.core
        );
        range - hosted.start
    }

    /// The shard of `range`, a range this core hosts.
    pub fn shard(&self, range: RangeId) -> &RefCell<Shard> {
        &self.shards[self.local_index(range)]
    }

    /// The shards of every range this core hosts, in range order.
    pub fn shards(&self) -> &[RefCell<Shard>] {
        &self.shards
    }

    /// The shard of a standalone core: a standalone node hosts one range
    /// per core (its WAL and on-demand snapshots are per core).
    pub fn standalone_shard(&self) -> &RefCell<Shard> {
        assert_eq!(self.shards.len(), 1, "a standalone core hosts one range");
        &self.shards[0]
    }

    /// Cluster mode: the replica of `range`, a range this core hosts.
    pub fn replica(&self, range: RangeId) -> Option<&crate::coord::replica::Replica> {
        let index = self.local_index(range);
        self.replicas.get().map(|replicas| &replicas[index])
    }

    /// Executes `request` on the shard of `range` (hosted here) now;
    /// returns the reply and the WAL index it must not be acknowledged
    /// before (if it wrote).
    pub fn execute_here(&self, range: RangeId, request: ShardRequest) -> (ShardReply, Option<u64>) {
        let mut shard = self.shard(range).borrow_mut();
        let reply = shard.execute(request, now_ms());
        (reply, shard.take_ack_point())
    }

    /// Whether this core's ranges are replicated by Raft groups (cluster
    /// mode). The data path asks the mode through the two questions below
    /// and `dispatch::execute_local`, decided once at start (the replicas
    /// are set before any request is served), never by its own tests.
    fn replicated(&self) -> bool {
        self.replicas.get().is_some()
    }

    /// Whether a request for range `owner` runs inline on this core and is
    /// answered at once. Only a local shard's own requests do: no message,
    /// no task, and a write's durability wait joins the pipeline's. A
    /// replicated range's requests always join its batch, so a pipeline's
    /// writes for it become one Raft entry.
    pub fn runs_inline(&self, owner: RangeId) -> bool {
        self.slot_map.core_of(owner) == self.core && !self.replicated()
    }

    /// Whether requests dispatched one after another reach their shard in
    /// that order. True for local shards (FIFO channels, inline execution);
    /// a replicated shard runs each dispatched request (or batch) as a task
    /// of its own, so a caller that needs order waits for each first.
    pub fn dispatch_keeps_order(&self) -> bool {
        !self.replicated()
    }

    /// Waits until WAL index `index` (if any) is durable; the error is the
    /// reason the WAL failed.
    pub async fn wait_durable(&self, index: Option<u64>) -> Result<(), String> {
        match (index, &self.wal) {
            (Some(index), Some(wal)) => wal
                .wait_durable(index)
                .await
                .map_err(|error| error.to_string()),
            _ => Ok(()),
        }
    }
}
