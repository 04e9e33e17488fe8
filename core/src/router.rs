//! Cross-core routing: how a request reaches the core that owns its slot.
//!
//! Every ordered pair of cores (a, b) has one bounded single-producer,
//! single-consumer channel (glommio `shared_channel`, lock-free, with an
//! eventfd wake-up only when b sleeps). A request travels as a
//! [`CoreMessage`] holding the request and a oneshot sender for the reply;
//! the owning core's [`serve_peer`] task executes it on its shard and sends
//! the reply back, which wakes the waiting task on core a.
//!
//! Invariants:
//! - a request for a slot owned by the calling core is executed inline,
//!   without a message (no hop, no allocation for the reply);
//! - messages from one core to another are executed in send order, so two
//!   requests on the same key from one connection keep their order;
//! - the channel bound (`limits.core_channel_capacity`) gives backpressure:
//!   a sender waits, it never drops a request.

use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use tinkerdb_admin::report::{latency_histogram, record_micros};
use tinkerdb_storage::TenantId;

use futures_channel::oneshot;
use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender};
use tinkerdb_schemas::wire::ErrorCode;

use crate::config::Limits;
use crate::error::ProtocolError;
use crate::shard::{Shard, ShardReply, ShardRequest};
use crate::slots::{CoreId, SlotMap};
use crate::snapshots::SnapshotState;
use crate::tenants::CoreTenants;
use std::path::PathBuf;
use tinkerdb_storage::wal::Wal;

/// A request sent to another core, with where to send its reply.
pub struct CoreMessage {
    /// The work.
    pub request: ShardRequest,
    /// Where the owning core puts the answer.
    pub reply_to: oneshot::Sender<ShardReply>,
}

/// Counters of one core, reported to the admin plane on request
/// (`tinkerdb_admin::report::CoreReport`). Plain cells: only this core
/// writes or reads them.
#[derive(Debug)]
pub struct CoreStats {
    /// Requests answered, errors included.
    pub requests_total: Cell<u64>,
    /// Requests answered with an error, by `ErrorCode` value.
    pub errors_total: [Cell<u64>; 19],
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
    /// Records `count` requests of `tenant` answered together, read at
    /// `started` (one clock read per batch, not per request).
    pub fn record_answers(&self, tenant: TenantId, count: u64, started: Instant) {
        if count == 0 {
            return;
        }
        self.requests_total.set(self.requests_total.get() + count);
        let micros = started.elapsed().as_micros() as u64;
        record_micros(&mut self.request_latency.borrow_mut(), micros, count);
        let mut by_tenant = self.tenant_requests.borrow_mut();
        let index = tenant as usize;
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
    /// This core's keys. Borrowed only inside synchronous code, never across
    /// an `.await`, so a borrow can never be held by a suspended task.
    pub shard: RefCell<Shard>,
    /// This core's WAL (none with durability `none`).
    pub wal: Option<Wal>,
    /// Snapshot bookkeeping of this core.
    pub snapshots: RefCell<SnapshotState>,
    /// Where this core's snapshots go.
    pub core_dir: PathBuf,
    /// Channel to each other core (`None` at this core's own index).
    peers: Vec<Option<ConnectedSender<CoreMessage>>>,
    /// Counters.
    pub stats: CoreStats,
    /// Cluster mode: this core's replica of its shard's Raft group (set
    /// once at start). When set, every request goes through it
    /// (`cluster::execute_replicated`), never straight to the shard.
    pub replica: std::cell::OnceCell<crate::cluster::Replica>,
    /// This context's own `Rc` (weak: no cycle), so a request for this core
    /// can run as a task of its own (cluster mode, see [`Self::dispatch`]).
    this: Weak<CoreContext>,
}

/// A request on its way: answered already (local) or awaiting another core.
pub enum Dispatched {
    /// Executed inline.
    Ready(ShardReply),
    /// Sent to another core.
    Pending(oneshot::Receiver<ShardReply>),
}

impl Dispatched {
    /// Waits for the reply.
    pub async fn reply(self) -> Result<ShardReply, ProtocolError> {
        match self {
            Dispatched::Ready(reply) => Ok(reply),
            Dispatched::Pending(receiver) => receiver.await.map_err(|_| shutting_down()),
        }
    }
}

fn shutting_down() -> ProtocolError {
    ProtocolError::new(ErrorCode::ShuttingDown, "a core of the node stopped")
}

/// Current wall-clock time in Unix milliseconds (TTLs are wall-clock so that
/// they mean the same after a restart).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

impl CoreContext {
    /// Builds the context of `core` from its recovered shard and connected
    /// channels.
    #[allow(clippy::too_many_arguments)]
    pub fn new_rc(
        core: CoreId,
        slot_map: Arc<SlotMap>,
        tenants: Rc<CoreTenants>,
        limits: Limits,
        shard: Shard,
        wal: Option<Wal>,
        core_dir: PathBuf,
        peers: Vec<Option<ConnectedSender<CoreMessage>>>,
    ) -> Rc<CoreContext> {
        assert_eq!(peers.len(), slot_map.cores());
        assert!(peers[core].is_none(), "no channel from a core to itself");
        Rc::new_cyclic(|this| CoreContext {
            this: this.clone(),
            core,
            shard: RefCell::new(shard),
            slot_map,
            tenants,
            limits,
            wal,
            snapshots: RefCell::new(SnapshotState::default()),
            core_dir,
            peers,
            stats: CoreStats::default(),
            replica: std::cell::OnceCell::new(),
        })
    }

    /// Executes `request` on this core's shard now; returns the reply and
    /// the WAL index it must not be acknowledged before (if it wrote).
    pub fn execute_here(&self, request: ShardRequest) -> (ShardReply, Option<u64>) {
        let mut shard = self.shard.borrow_mut();
        let reply = shard.execute(request, now_ms());
        (reply, shard.take_ack_point())
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

    /// Executes `request` on this core's shard and waits until its writes
    /// are as durable as the durability mode promises.
    pub async fn execute_local(&self, request: ShardRequest) -> ShardReply {
        if let Some(replica) = self.replica.get() {
            return crate::cluster::execute_replicated(self, replica, request).await;
        }
        let (reply, ack_point) = self.execute_here(request);
        match self.wait_durable(ack_point).await {
            Ok(()) => reply,
            Err(reason) => ShardReply::Refused(reason),
        }
    }

    /// Sends `request` to `core` (or runs it here if `core` is this one).
    ///
    /// In cluster mode a request for this core runs as a task of its own
    /// (a write waits for a quorum), so the caller can send its requests
    /// for other cores meanwhile, as it would to a remote core. Requests
    /// dispatched so are not ordered among themselves: a caller that needs
    /// order waits for one before dispatching the next (see
    /// `RemoteBatches::flush_ordered`).
    pub async fn dispatch(
        &self,
        core: CoreId,
        request: ShardRequest,
    ) -> Result<Dispatched, ProtocolError> {
        if core == self.core {
            if let ShardRequest::Snapshot = request {
                return Ok(Dispatched::Ready(crate::snapshots::snapshot(self).await));
            }
            if self.replica.get().is_some() {
                let context = self
                    .this
                    .upgrade()
                    .expect("a core's context outlives the requests it serves");
                let (reply_to, receiver) = oneshot::channel();
                glommio::spawn_local(async move {
                    let _ = reply_to.send(context.execute_local(request).await);
                })
                .detach();
                return Ok(Dispatched::Pending(receiver));
            }
            return Ok(Dispatched::Ready(self.execute_local(request).await));
        }
        let (reply_to, receiver) = oneshot::channel();
        let peer = self.peers[core]
            .as_ref()
            .expect("a channel to every other core");
        peer.send(CoreMessage { request, reply_to })
            .await
            .map_err(|_| shutting_down())?;
        Ok(Dispatched::Pending(receiver))
    }

    /// Runs `request` on `core` and waits for the reply.
    pub async fn call(
        &self,
        core: CoreId,
        request: ShardRequest,
    ) -> Result<ShardReply, ProtocolError> {
        self.dispatch(core, request).await?.reply().await
    }
}

/// Serves the requests another core sends to this one, in order, until that
/// core closes its end.
///
/// A write's reply is held until its WAL record is durable, without holding
/// up the requests behind it: the WAL runs the reply's callback after the
/// group commit that covers it (so requests from other cores share flushes).
pub async fn serve_peer(
    context: std::rc::Rc<CoreContext>,
    inbound: ConnectedReceiver<CoreMessage>,
) {
    while let Some(CoreMessage { request, reply_to }) = inbound.recv().await {
        let stats = &context.stats;
        stats
            .peer_requests_total
            .set(stats.peer_requests_total.get() + 1);
        if let ShardRequest::Snapshot = request {
            let context = context.clone();
            glommio::spawn_local(async move {
                let _ = reply_to.send(crate::snapshots::snapshot(&context).await);
            })
            .detach();
            continue;
        }
        if context.replica.get().is_some() {
            // Cluster mode: through Raft, in its own task (a write waits
            // for a quorum); requests that must stay ordered arrive in one
            // Batch, which runs in order.
            let context = context.clone();
            glommio::spawn_local(async move {
                let _ = reply_to.send(context.execute_local(request).await);
            })
            .detach();
            continue;
        }
        let (reply, ack_point) = context.execute_here(request);
        // The requester may have gone (connection closed): nothing to do then.
        match (ack_point, &context.wal) {
            (Some(index), Some(wal)) => wal.when_durable(index, move |result| {
                let reply = match result {
                    Ok(()) => reply,
                    Err(error) => ShardReply::Refused(error.to_string()),
                };
                let _ = reply_to.send(reply);
            }),
            _ => {
                let _ = reply_to.send(reply);
            }
        }
        glommio::yield_if_needed().await;
    }
}
