//! Cross-core routing: how a request reaches the range that owns its slot,
//! on the core that hosts the range.
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

use futures_channel::oneshot;
use glommio::channels::shared_channel::ConnectedReceiver;
use tinkerdb_schemas::wire::ErrorCode;

use crate::coord::context::{CoreContext, CoreMessage};
use crate::error::ProtocolError;
use crate::shard::{ShardReply, ShardRequest};
use crate::slots::RangeId;

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

impl CoreContext {
    /// Executes `request` on the shard of `range` (hosted here) and waits
    /// until its writes are as durable as the durability mode promises.
    ///
    /// A request for a range that is leaving this core waits until the
    /// move ends; one for a range that has left (routed here before the
    /// move) is sent on to the range's core.
    pub async fn execute_local(&self, range: RangeId, request: ShardRequest) -> ShardReply {
        if self.any_moving() {
            if let Some(moved) = self.move_of(range) {
                // Ends when the move does (done or abandoned), which is
                // bounded by `cluster::moves::MOVE_TIMEOUT`.
                let _ = moved.await;
            }
        }
        if !self.hosts(range) {
            if self.slot_map.is_remote(range) {
                return self.forward(range, request).await;
            }
            return Box::pin(self.send_on(range, request)).await;
        }
        if self.replicated() {
            let Some(replica) = self.replica(range) else {
                // Hosted, but its group did not start (a move that could
                // not finish): never served from the store without Raft.
                return ShardReply::Error(ProtocolError::new(
                    ErrorCode::Unavailable,
                    format!(
                        "range {range} has no running replica on core {} (a move did not \
                         complete; restarting the node starts it)",
                        self.core
                    ),
                ));
            };
            let reply = {
                let _counted = replica.count_in_flight();
                crate::coord::replica::execute_replicated(self, &replica, request).await
            };
            // A write cut off because its group stopped for a move may
            // still commit through the new leader: its outcome is unknown,
            // not a storage failure.
            if let ShardReply::Error(error) = &reply {
                let moved_meanwhile = self.is_moving(range)
                    || !self
                        .replica(range)
                        .is_some_and(|now| std::rc::Rc::ptr_eq(&now, &replica));
                if error.code == ErrorCode::StorageFailed && moved_meanwhile {
                    return ShardReply::Error(ProtocolError::new(
                        ErrorCode::Unavailable,
                        format!(
                            "range {range} moved while the request ran; a write's outcome is \
                             unknown: {}",
                            error.message
                        ),
                    ));
                }
            }
            return reply;
        }
        let (reply, ack_point) = self.execute_here(range, request);
        match self.wait_durable(ack_point).await {
            Ok(()) => reply,
            Err(reason) => ShardReply::Refused(reason),
        }
    }

    /// Runs a request for `range`, which other nodes replicate, on one of
    /// them (`coord::forward`).
    async fn forward(&self, range: RangeId, request: ShardRequest) -> ShardReply {
        match self.replication.get() {
            Some(replication) => {
                let forwarded = &self.stats.forwarded_requests_total;
                forwarded.set(forwarded.get() + 1);
                let forward = &replication.forward;
                forward
                    .forward(self, &replication.peers, range, request)
                    .await
            }
            None => ShardReply::Error(ProtocolError::new(
                ErrorCode::Internal,
                format!("range {range} is remote on a node without replication"),
            )),
        }
    }

    /// Sends on a request for `range`, which left this core after the
    /// request was routed here.
    async fn send_on(&self, range: RangeId, request: ShardRequest) -> ShardReply {
        let core = self.slot_map.core_of(range);
        if core == self.core {
            // A move switches the route before the old core lets go.
            return ShardReply::Error(ProtocolError::new(
                ErrorCode::Internal,
                format!("range {range} is routed to core {core}, which does not host it"),
            ));
        }
        match self.call(range, request).await {
            Ok(reply) => reply,
            Err(error) => ShardReply::Error(error),
        }
    }

    /// Sends `request` to range `range` on its core (or runs it here if
    /// this core hosts it).
    ///
    /// In cluster mode a request for this core runs as a task of its own
    /// (a write waits for a quorum), so the caller can send its requests
    /// for other cores meanwhile, as it would to a remote core. Requests
    /// dispatched so are not ordered among themselves: a caller that needs
    /// order waits for one before dispatching the next (see
    /// `RangeBatches::flush_ordered`).
    pub async fn dispatch(
        &self,
        range: RangeId,
        request: ShardRequest,
    ) -> Result<Dispatched, ProtocolError> {
        if self.slot_map.is_remote(range) {
            // Another node's range: forwarded from this core, in a task of
            // its own (no hop to the range's home core first).
            let context = self
                .this
                .upgrade()
                .expect("a core's context outlives the requests it serves");
            let (reply_to, receiver) = oneshot::channel();
            glommio::spawn_local(async move {
                let _ = reply_to.send(context.forward(range, request).await);
            })
            .detach();
            return Ok(Dispatched::Pending(receiver));
        }
        let core = self.slot_map.core_of(range);
        if core == self.core {
            if let ShardRequest::Snapshot = request {
                return Ok(Dispatched::Ready(
                    crate::coord::snapshots::snapshot(self).await,
                ));
            }
            if !self.dispatch_keeps_order() {
                let context = self
                    .this
                    .upgrade()
                    .expect("a core's context outlives the requests it serves");
                let (reply_to, receiver) = oneshot::channel();
                let run = async move {
                    let _ = reply_to.send(context.execute_local(range, request).await);
                };
                // A spawned task starts outside any span: a traced request
                // takes its span along.
                match crate::telemetry::in_trace() {
                    true => {
                        use tracing::Instrument;
                        glommio::spawn_local(run.instrument(tracing::Span::current())).detach();
                    }
                    false => {
                        glommio::spawn_local(run).detach();
                    }
                }
                return Ok(Dispatched::Pending(receiver));
            }
            return Ok(Dispatched::Ready(self.execute_local(range, request).await));
        }
        let (reply_to, receiver) = oneshot::channel();
        let peer = self.peers[core]
            .as_ref()
            .expect("a channel to every other core");
        peer.send(CoreMessage {
            range,
            request,
            reply_to,
            trace: crate::telemetry::current_parent(),
        })
        .await
        .map_err(|_| shutting_down())?;
        Ok(Dispatched::Pending(receiver))
    }

    /// Runs `request` on range `range` and waits for the reply.
    pub async fn call(
        &self,
        range: RangeId,
        request: ShardRequest,
    ) -> Result<ShardReply, ProtocolError> {
        self.dispatch(range, request).await?.reply().await
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
    while let Some(CoreMessage {
        range,
        request,
        reply_to,
        trace,
    }) = inbound.recv().await
    {
        // A traced request's hop to this core (a span of this thread,
        // under the sender's).
        let span = trace.map(|trace| {
            let span = tracing::info_span!(parent: None, "coord.hop", range, core = context.core);
            crate::telemetry::child_of(span, &trace)
        });
        let stats = &context.stats;
        stats
            .peer_requests_total
            .set(stats.peer_requests_total.get() + 1);
        if let ShardRequest::Snapshot = request {
            let context = context.clone();
            glommio::spawn_local(async move {
                let _ = reply_to.send(crate::coord::snapshots::snapshot(&context).await);
            })
            .detach();
            continue;
        }
        if !context.dispatch_keeps_order() {
            // Cluster mode: through Raft, in its own task (a write waits
            // for a quorum); requests that must stay ordered arrive in one
            // Batch, which runs in order.
            let context = context.clone();
            let run = async move {
                let _ = reply_to.send(context.execute_local(range, request).await);
            };
            match span {
                Some(span) => {
                    use tracing::Instrument;
                    glommio::spawn_local(run.instrument(span)).detach();
                }
                None => {
                    glommio::spawn_local(run).detach();
                }
            }
            continue;
        }
        let (reply, ack_point) = match &span {
            Some(span) => span.in_scope(|| context.execute_here(range, request)),
            None => context.execute_here(range, request),
        };
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
