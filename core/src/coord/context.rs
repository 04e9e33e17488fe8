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
    /// The sender's trace, when the request is traced
    /// (`crate::telemetry`).
    pub trace: Option<tinkerdb_replication::TraceParent>,
}

/// Distinct Redis error prefixes counted one by one per core (the server
/// answers a dozen kinds; a bound all the same).
pub const MAX_RESP_ERROR_PREFIXES: usize = 32;

/// Counters of one core, reported to the admin plane on request (the
/// admin adapter, `frontend::admin`, turns them into its `CoreReport`). Plain cells: only this core
/// writes or reads them.
#[derive(Debug)]
pub struct CoreStats {
    /// Requests answered, errors included.
    pub requests_total: Cell<u64>,
    /// Requests answered with an error, by `ErrorCode` value (one counter
    /// per code the schema defines).
    pub errors_total: [Cell<u64>; ErrorCode::ENUM_MAX as usize + 1],
    /// Client connections accepted.
    pub connections_total: Cell<u64>,
    /// Client connections open now.
    pub connections_open: Cell<u64>,
    /// Requests received from other cores.
    pub peer_requests_total: Cell<u64>,
    /// Requests (a batch counts once) forwarded to another node, for ranges
    /// this node does not replicate.
    pub forwarded_requests_total: Cell<u64>,
    /// Client requests answered with an error (any code, both protocols).
    pub errors_sum: Cell<u64>,
    /// Redis-protocol errors by their prefix (`ERR`, `WRONGTYPE`,
    /// `NOAUTH`...), at most [`MAX_RESP_ERROR_PREFIXES`] distinct ones
    /// (later ones count as `OTHER`).
    pub resp_errors: RefCell<Vec<(String, u64)>>,
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
            forwarded_requests_total: Cell::default(),
            errors_sum: Cell::default(),
            resp_errors: RefCell::default(),
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

    /// Counts one Redis-protocol error answered with `prefix` (its first
    /// word). No allocation once the prefix was seen.
    pub fn count_resp_error(&self, prefix: &str) {
        self.errors_sum.set(self.errors_sum.get() + 1);
        let mut counts = self.resp_errors.borrow_mut();
        let prefix = match counts.len() < MAX_RESP_ERROR_PREFIXES {
            true => prefix,
            false => "OTHER",
        };
        match counts.iter_mut().find(|(seen, _)| seen == prefix) {
            Some((_, count)) => *count += 1,
            None => counts.push((prefix.to_owned(), 1)),
        }
    }

    /// Counts one error answered with `code`.
    pub fn count_error(&self, code: ErrorCode) {
        let index = usize::from(code.0).min(self.errors_total.len() - 1);
        let counter = &self.errors_total[index];
        counter.set(counter.get() + 1);
        self.errors_sum.set(self.errors_sum.get() + 1);
    }
}

/// Where the cluster's members serve clients, as the cluster metadata's
/// node registry holds it on this node (cluster mode): written whole by
/// core 0's metadata state machine (`cluster::meta`), read by every core's
/// handshake (`HelloOk.nodes`). One per node, shared by its cores; the lock
/// is taken once per handshake and per registry change, never on a
/// request's path.
#[derive(Debug, Default)]
pub struct NodeDirectory {
    /// This node's id (0 on a standalone node).
    pub node_id: u64,
    clients: std::sync::RwLock<Arc<Vec<(u64, String)>>>,
    /// The cluster metadata's range table, as this node applied it.
    ranges: std::sync::RwLock<Arc<RangeTable>>,
    /// The ranges this node leads now, as their cores last saw them: what
    /// core 0 reports to the range table (`cluster::meta::reconcile`).
    led: std::sync::Mutex<RangeTable>,
}

/// Range records by range id (`tinkerdb_admin::report::RangeRecord`).
pub type RangeTable = std::collections::BTreeMap<u64, tinkerdb_admin::report::RangeRecord>;

impl NodeDirectory {
    /// The directory of node `node_id`, empty until published.
    pub fn new(node_id: u64) -> NodeDirectory {
        NodeDirectory {
            node_id,
            clients: Default::default(),
            ranges: Default::default(),
            led: Default::default(),
        }
    }

    /// The range table (every range, whichever nodes hold it).
    pub fn ranges(&self) -> Arc<RangeTable> {
        self.ranges
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the range table (the metadata applied a change).
    pub fn publish_ranges(&self, ranges: RangeTable) {
        *self
            .ranges
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(ranges);
    }

    /// Records what `core`'s ranges look like now: `led` are those this
    /// node leads (replacing `core`'s earlier ones: `hosted` lists every
    /// range the core hosts, led or not).
    pub fn note_led(&self, hosted: &[u64], led: Vec<tinkerdb_admin::report::RangeRecord>) {
        let mut board = self
            .led
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for range in hosted {
            board.remove(range);
        }
        for record in led {
            board.insert(record.id, record);
        }
    }

    /// The ranges this node leads, as their cores last saw them.
    pub fn led(&self) -> RangeTable {
        self.led
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every registered member's client address, by node id.
    pub fn clients(&self) -> Arc<Vec<(u64, String)>> {
        self.clients
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces the list (the registry changed).
    pub fn publish(&self, clients: Vec<(u64, String)>) {
        *self
            .clients
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(clients);
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
    /// The node's users (shared by every core and the admin plane; read
    /// per request through one atomic, see `tinkerdb_admin::users`).
    pub users: Arc<tinkerdb_admin::users::Users>,
    /// Request limits.
    pub limits: Limits,
    /// The shards of the ranges this core hosts, by range id (`None`: a
    /// range hosted by another core; see [`Self::shard`]). A shard is
    /// borrowed only inside synchronous code, never across an `.await`, so
    /// a borrow can never be held by a suspended task; the table itself
    /// changes only when a range moves (`cluster::moves`).
    shards: RefCell<Vec<Option<Rc<RefCell<Shard>>>>>,
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
    /// Where the cluster's members serve clients (shared by the node's
    /// cores; empty on a standalone node).
    pub directory: Arc<NodeDirectory>,
    /// Cluster mode: this core's share of the cluster (its groups, peer
    /// clients, shared Raft log), set once at start. When set, every
    /// request goes through its range's replica
    /// (`coord::replica::execute_replicated`), never straight to the shard.
    pub replication: std::cell::OnceCell<crate::coord::replica::CoreReplication>,
    /// Cluster mode: this core's replicas of its ranges' Raft groups, by
    /// range id like the shards.
    replicas: RefCell<Vec<Option<Rc<crate::coord::replica::Replica>>>>,
    /// Ranges leaving this core right now, with the requests parked until
    /// the move ends (then sent on to wherever the range is).
    moving: RefCell<std::collections::HashMap<RangeId, Move>>,
    /// The id of the next move (see [`Self::begin_move`]).
    next_move_id: Cell<u64>,
    /// This context's own `Rc` (weak: no cycle), so a request for this core
    /// can run as a task of its own (cluster mode, see [`Self::dispatch`]).
    pub(super) this: Weak<CoreContext>,
}

/// A range moving on this core (`cluster::moves`).
struct Move {
    /// Which move (unique on this core): a late watchdog of an earlier
    /// move of the range must not end this one.
    id: u64,
    /// Leaving this core (the source), or arriving (the target).
    leaving: bool,
    /// Requests waiting for the move to end.
    parked: Vec<oneshot::Sender<()>>,
    /// Whether a caller is ending it.
    settling: bool,
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
        users: Arc<tinkerdb_admin::users::Users>,
        limits: Limits,
        shards: Vec<Shard>,
        wal: Option<Wal>,
        core_dir: PathBuf,
        peers: Vec<Option<ConnectedSender<CoreMessage>>>,
        directory: Arc<NodeDirectory>,
    ) -> Rc<CoreContext> {
        assert_eq!(peers.len(), slot_map.cores());
        assert!(peers[core].is_none(), "no channel from a core to itself");
        let hosted = slot_map.ranges_of(core);
        assert_eq!(
            shards.len(),
            hosted.len(),
            "one shard per range the core hosts"
        );
        let mut by_range: Vec<Option<Rc<RefCell<Shard>>>> = vec![None; slot_map.ranges()];
        for (range, shard) in hosted.into_iter().zip(shards) {
            by_range[range] = Some(Rc::new(RefCell::new(shard)));
        }
        let ranges = slot_map.ranges();
        Rc::new_cyclic(|this| CoreContext {
            this: this.clone(),
            core,
            shards: RefCell::new(by_range),
            slot_map,
            tenants,
            users,
            limits,
            wal,
            snapshots: RefCell::new(SnapshotState::default()),
            core_dir,
            peers,
            stats: CoreStats::default(),
            directory,
            replication: std::cell::OnceCell::new(),
            replicas: RefCell::new(vec![None; ranges]),
            moving: RefCell::default(),
            next_move_id: Cell::new(1),
        })
    }

    /// The ranges this core hosts, in id order.
    pub fn hosted_ranges(&self) -> Vec<RangeId> {
        let shards = self.shards.borrow();
        (0..shards.len())
            .filter(|&range| shards[range].is_some())
            .collect()
    }

    /// Whether this core hosts `range` now.
    pub fn hosts(&self, range: RangeId) -> bool {
        self.shards.borrow()[range].is_some()
    }

    /// The shard of `range`, a range this core hosts (panics otherwise:
    /// routing sends a range's requests to its core only, and a request
    /// that arrives after its range left is sent on by `execute_local`
    /// before it gets here).
    pub fn shard(&self, range: RangeId) -> Rc<RefCell<Shard>> {
        self.shards.borrow()[range]
            .clone()
            .unwrap_or_else(|| panic!("range {range} is not hosted by core {}", self.core))
    }

    /// The shards of every range this core hosts, in range order.
    pub fn shards(&self) -> Vec<Rc<RefCell<Shard>>> {
        self.shards.borrow().iter().flatten().cloned().collect()
    }

    /// Hosts `shard` (of a range moving in) from now on.
    pub fn add_shard(&self, range: RangeId, shard: Shard) {
        let mut shards = self.shards.borrow_mut();
        assert!(
            shards[range].is_none(),
            "range {range} is already on core {}",
            self.core
        );
        shards[range] = Some(Rc::new(RefCell::new(shard)));
    }

    /// Cluster mode: `range`'s replica stopped (it is moving away).
    pub fn remove_replica(&self, range: RangeId) {
        self.replicas.borrow_mut()[range] = None;
    }

    /// Stops hosting `range` (it moved away); its replica goes too.
    pub fn remove_shard(&self, range: RangeId) {
        self.shards.borrow_mut()[range] = None;
        self.replicas.borrow_mut()[range] = None;
    }

    /// The shard of a standalone core: a standalone node hosts one range
    /// per core (its WAL and on-demand snapshots are per core).
    pub fn standalone_shard(&self) -> Rc<RefCell<Shard>> {
        let shards = self.shards();
        assert_eq!(shards.len(), 1, "a standalone core hosts one range");
        shards[0].clone()
    }

    /// Cluster mode: the replica of `range`, if this core hosts it.
    pub fn replica(&self, range: RangeId) -> Option<Rc<crate::coord::replica::Replica>> {
        self.replicas.borrow()[range].clone()
    }

    /// Cluster mode: every replica of this core, in range order.
    pub fn replicas(&self) -> Vec<Rc<crate::coord::replica::Replica>> {
        self.replicas.borrow().iter().flatten().cloned().collect()
    }

    /// Cluster mode: `replica` serves its range (hosted here) from now on.
    pub fn set_replica(&self, replica: crate::coord::replica::Replica) {
        let range = replica.range();
        assert!(
            self.hosts(range),
            "a replica of range {range}, not hosted by core {}",
            self.core
        );
        self.replicas.borrow_mut()[range] = Some(Rc::new(replica));
    }

    /// Marks `range` as moving, `leaving` this core or arriving before
    /// its group runs: its requests park until [`Self::end_move`]. The
    /// move's id, or `None` if the range is moving already.
    pub fn begin_move(&self, range: RangeId, leaving: bool) -> Option<u64> {
        let mut moving = self.moving.borrow_mut();
        if moving.contains_key(&range) {
            return None;
        }
        let id = self.next_move_id.get();
        self.next_move_id.set(id + 1);
        moving.insert(
            range,
            Move {
                id,
                leaving,
                parked: Vec::new(),
                settling: false,
            },
        );
        Some(id)
    }

    /// Whether `range` is moving.
    pub fn is_moving(&self, range: RangeId) -> bool {
        self.moving.borrow().contains_key(&range)
    }

    /// Whether move `id` of `range`, leaving this core, is still under way.
    pub fn is_leaving(&self, range: RangeId, id: u64) -> bool {
        self.moving
            .borrow()
            .get(&range)
            .is_some_and(|state| state.id == id && state.leaving)
    }

    /// Claims the ending of `range`'s move away from this core for one
    /// caller: false if it is not leaving or another caller ends it.
    pub fn start_settling(&self, range: RangeId) -> bool {
        match self.moving.borrow_mut().get_mut(&range) {
            Some(state) if state.leaving && !state.settling => {
                state.settling = true;
                true
            }
            _ => false,
        }
    }

    /// Ends `range`'s move (done or abandoned): its parked requests go on.
    pub fn end_move(&self, range: RangeId) {
        let parked = self
            .moving
            .borrow_mut()
            .remove(&range)
            .map_or_else(Vec::new, |state| state.parked);
        for waiter in parked {
            let _ = waiter.send(());
        }
    }

    /// If `range` is moving, a wait for the end of its move.
    pub(super) fn move_of(&self, range: RangeId) -> Option<oneshot::Receiver<()>> {
        let mut moving = self.moving.borrow_mut();
        let state = moving.get_mut(&range)?;
        let (sender, receiver) = oneshot::channel();
        state.parked.push(sender);
        Some(receiver)
    }

    /// Whether any range is leaving this core (a cheap test for the
    /// request path).
    pub(super) fn any_moving(&self) -> bool {
        !self.moving.borrow().is_empty()
    }

    /// Executes `request` on the shard of `range` (hosted here) now;
    /// returns the reply and the WAL index it must not be acknowledged
    /// before (if it wrote).
    pub fn execute_here(&self, range: RangeId, request: ShardRequest) -> (ShardReply, Option<u64>) {
        let shard = self.shard(range);
        let mut shard = shard.borrow_mut();
        let reply = shard.execute(request, now_ms());
        (reply, shard.take_ack_point())
    }

    /// Whether this core's ranges are replicated by Raft groups (cluster
    /// mode). The data path asks the mode through the two questions below
    /// and `dispatch::execute_local`, decided once at start (the replicas
    /// are set before any request is served), never by its own tests.
    pub(super) fn replicated(&self) -> bool {
        self.replication.get().is_some()
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
