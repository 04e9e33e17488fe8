//! A connection's pipeline on its way to the shards: [`Pipeline`] takes
//! each one-shard request (from any front end), runs it inline or gathers
//! it into its destination shard's batch ([`RemoteBatches`]: one message
//! per shard per pipeline), waits once for the durability of the local
//! writes, and hands the replies back in request order.

use crate::coord::context::CoreContext;
use crate::coord::dispatch::Dispatched;
use crate::coord::multi::{storage_failed, unexpected};
use crate::coord::session::Session;
use crate::error::ProtocolError;
use crate::shard::{ShardReply, ShardRequest};
use crate::slots::RangeId;

/// Single-key requests for other ranges, gathered while a pipeline is read
/// and sent as one `ShardRequest::Batch` message per range: one cross-core
/// hop per range per pipeline instead of one per request.
///
/// Order: a batch is sent (`flush`) before any multi-key request starts and
/// at the end of the pipeline, so requests still reach each range in the
/// order the client sent them.
#[derive(Default)]
struct RemoteBatches {
    /// Requests gathered per range, not yet sent (index = range).
    gathering: Vec<(Vec<ShardRequest>, Option<usize>)>,
    /// Batches sent: the reply to await, then the replies once received.
    sent: Vec<SentBatch>,
}

enum SentBatch {
    InFlight(Dispatched),
    Answered(Vec<Option<ShardReply>>),
    Failed(ProtocolError),
}

impl SentBatch {
    fn of_reply(reply: Result<ShardReply, ProtocolError>) -> SentBatch {
        match reply {
            Ok(ShardReply::Batch(replies)) => {
                SentBatch::Answered(replies.into_iter().map(Some).collect())
            }
            Ok(other) => SentBatch::Failed(unexpected(&other)),
            Err(error) => SentBatch::Failed(error),
        }
    }
}

impl RemoteBatches {
    /// Queues `request` for `range`; returns (batch id, index in it).
    fn push(&mut self, ranges: usize, range: RangeId, request: ShardRequest) -> (usize, usize) {
        if self.gathering.is_empty() {
            self.gathering.resize_with(ranges, Default::default);
        }
        let (requests, batch_id) = &mut self.gathering[range];
        let batch = *batch_id.get_or_insert_with(|| {
            self.sent.push(SentBatch::Answered(Vec::new()));
            self.sent.len() - 1
        });
        requests.push(request);
        (batch, requests.len() - 1)
    }

    /// Sends every gathered batch.
    async fn flush(&mut self, context: &CoreContext) {
        for (range, (requests, batch_id)) in self.gathering.iter_mut().enumerate() {
            let Some(batch) = batch_id.take() else {
                continue;
            };
            let requests = std::mem::take(requests);
            self.sent[batch] = match context.dispatch(range, ShardRequest::Batch(requests)).await {
                Ok(dispatched) => SentBatch::InFlight(dispatched),
                Err(error) => SentBatch::Failed(error),
            };
        }
    }

    /// Sends every gathered batch and, in cluster mode, waits for their
    /// replies: what the caller runs next (a multi-key request, FLUSHDB)
    /// must not overtake them. A standalone node keeps the order without
    /// waiting: its cross-core channels are FIFO and its own core runs
    /// inline, while in cluster mode each batch is a task of its own.
    async fn flush_ordered(&mut self, context: &CoreContext) {
        self.flush(context).await;
        if context.dispatch_keeps_order() {
            return;
        }
        for slot in &mut self.sent {
            if let SentBatch::InFlight(_) = slot {
                let SentBatch::InFlight(dispatched) =
                    std::mem::replace(slot, SentBatch::Answered(Vec::new()))
                else {
                    unreachable!()
                };
                *slot = SentBatch::of_reply(dispatched.reply().await);
            }
        }
    }

    /// The reply to request `index` of batch `batch`.
    async fn take(&mut self, batch: usize, index: usize) -> Result<ShardReply, ProtocolError> {
        let slot = &mut self.sent[batch];
        if let SentBatch::InFlight(_) = slot {
            let SentBatch::InFlight(dispatched) =
                std::mem::replace(slot, SentBatch::Answered(Vec::new()))
            else {
                unreachable!()
            };
            *slot = SentBatch::of_reply(dispatched.reply().await);
        }
        match slot {
            SentBatch::Answered(replies) => replies
                .get_mut(index)
                .and_then(Option::take)
                .map(Ok)
                .expect("a batch answers each of its requests once"),
            SentBatch::Failed(error) => Err(error.clone()),
            SentBatch::InFlight(_) => unreachable!("awaited above"),
        }
    }

    fn clear(&mut self) {
        assert!(self
            .gathering
            .iter()
            .all(|(requests, batch)| requests.is_empty() && batch.is_none()));
        self.sent.clear();
    }
}

/// Where one request of a pipeline stands (see [`Pipeline::submit`]).
#[derive(Debug)]
pub enum Ticket {
    /// Executed inline; a local write's reply waits for WAL index
    /// `durable_at` (see [`Pipeline::settle`]).
    Ready {
        /// The shard's answer.
        reply: ShardReply,
        /// The WAL index the answer must not be sent before.
        durable_at: Option<u64>,
    },
    /// Gathered into a shard's batch: request `index` of batch `batch`.
    Batched {
        /// The batch.
        batch: usize,
        /// Its position in the batch.
        index: usize,
    },
}

/// One connection's requests between reading a pipeline and answering it:
/// the coordinator's routing, shared by every front end. A front end
/// submits each one-shard request as it reads it, calls [`Self::send`]
/// before anything that must come after the requests so far and
/// [`Self::settle`] once the pipeline is read, then takes the replies in
/// order with [`Self::reply`].
#[derive(Default)]
pub struct Pipeline {
    batches: RemoteBatches,
    /// The highest WAL index of the inline writes submitted.
    durable_at: Option<u64>,
    /// What waiting for `durable_at` gave (after `settle`).
    durable: Option<Result<(), ProtocolError>>,
}

impl Pipeline {
    /// Routes `request` (all its keys on the shard of `slot`) as `session`
    /// reads: inline when this core runs that shard's requests itself,
    /// otherwise into the shard's batch. A request the session's user may
    /// not run (`Session::may_run`) is answered at once, never routed.
    pub fn submit(
        &mut self,
        context: &CoreContext,
        session: &Session,
        slot: u16,
        request: ShardRequest,
    ) -> Ticket {
        if let Err(refused) = session.may_run(&request) {
            return Ticket::Ready {
                reply: ShardReply::Error(refused),
                durable_at: None,
            };
        }
        let request = session.reading(request);
        let owner = context.slot_map.owner(slot);
        if context.runs_inline(owner) {
            let (reply, durable_at) = context.execute_here(owner, request);
            self.durable_at = self.durable_at.max(durable_at);
            return Ticket::Ready { reply, durable_at };
        }
        let (batch, index) = self.batches.push(context.slot_map.ranges(), owner, request);
        Ticket::Batched { batch, index }
    }

    /// Sends the batches gathered so far and, where dispatched requests
    /// could overtake one another, waits for them: what the caller runs
    /// next (a fan-out, a flush) must come after them.
    pub async fn send(&mut self, context: &CoreContext) {
        self.batches.flush_ordered(context).await;
    }

    /// The pipeline is read: sends what is gathered and waits until the
    /// inline writes are durable (one wait for them all: group commit).
    pub async fn settle(&mut self, context: &CoreContext) {
        self.batches.flush(context).await;
        let durable_at = self.durable_at.take();
        let waited = match durable_at.is_some() && crate::telemetry::in_trace() {
            true => {
                use tracing::Instrument;
                let span = tracing::info_span!("wal.durable", core = context.core);
                context.wait_durable(durable_at).instrument(span).await
            }
            false => context.wait_durable(durable_at).await,
        };
        let durable = waited.map_err(|reason| storage_failed(&reason));
        self.durable = Some(durable);
    }

    /// The reply of `ticket`, once [`Self::settle`]d: a batched request's
    /// from its shard, an inline write's only if it became durable.
    pub async fn reply(&mut self, ticket: Ticket) -> Result<ShardReply, ProtocolError> {
        match ticket {
            Ticket::Ready {
                reply,
                durable_at: None,
            } => Ok(reply),
            Ticket::Ready { reply, .. } => {
                match self.durable.as_ref().expect("settled before replies") {
                    Ok(()) => Ok(reply),
                    Err(error) => Err(error.clone()),
                }
            }
            Ticket::Batched { batch, index } => self.batches.take(batch, index).await,
        }
    }

    /// Ready for the next pipeline.
    pub fn clear(&mut self) {
        self.batches.clear();
        self.durable = None;
        assert!(
            self.durable_at.is_none(),
            "a pipeline settled before it is cleared"
        );
    }
}
