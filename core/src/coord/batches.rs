//! A connection's pipeline on its way to the shards: [`Pipeline`] takes
//! each one-shard request (from any front end) and gathers it into its
//! destination range's batch ([`RangeBatches`]: one message per range per
//! pipeline for ranges on other cores, one inline run for this core's),
//! waits once for the durability of the local writes, and hands the
//! replies back in request order.
//!
//! This core's requests are gathered too, not run as they are read: a
//! batch warms its keys' memory before it runs (`Store::warm`), so the
//! cache misses of a pipeline's lookups overlap instead of queueing one
//! behind another (docs/PERFORMANCE.md).

use crate::coord::context::CoreContext;
use crate::coord::dispatch::Dispatched;
use crate::coord::multi::{storage_failed, unexpected};
use crate::coord::session::Session;
use crate::error::ProtocolError;
use crate::shard::{ShardReply, ShardRequest};
use crate::slots::RangeId;

/// Single-key requests gathered per range while a pipeline is read, each
/// range's run as one `ShardRequest::Batch`: inline for a range this core
/// runs, otherwise one message (one cross-core hop per range per pipeline
/// instead of one per request).
///
/// Order: the batches are run or sent (`flush`) before any multi-key
/// request starts and at the end of the pipeline, so requests still reach
/// each range in the order the client sent them.
#[derive(Default)]
struct RangeBatches {
    /// Requests gathered per range, not yet sent (index = range).
    gathering: Vec<(Vec<ShardRequest>, Option<usize>)>,
    /// Batches sent: the reply to await, then the replies once received.
    sent: Vec<SentBatch>,
    /// The highest WAL index of the writes run inline: their replies wait
    /// until it is durable (`Pipeline::settle`).
    ran_here_durable_at: Option<u64>,
}

enum SentBatch {
    InFlight(Dispatched),
    Answered(Vec<Option<ShardReply>>),
    /// Run inline on this core: its writes' replies wait for the WAL
    /// index the pipeline settles on (`Pipeline::settle`).
    RanHere(Vec<Option<ShardReply>>),
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

impl RangeBatches {
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

    /// Runs every gathered batch of a range this core runs (raising
    /// `ran_here_durable_at` to its writes' WAL index) and sends the others.
    async fn flush(&mut self, context: &CoreContext) {
        for (range, (requests, batch_id)) in self.gathering.iter_mut().enumerate() {
            let Some(batch) = batch_id.take() else {
                continue;
            };
            let requests = ShardRequest::Batch(std::mem::take(requests));
            // Asked again here, not when gathered: a front end may have
            // awaited since (a standalone node's ranges never move, but
            // this costs one comparison).
            if context.runs_inline(range) {
                let (reply, ack_point) = context.execute_here(range, requests);
                self.ran_here_durable_at = self.ran_here_durable_at.max(ack_point);
                self.sent[batch] = match SentBatch::of_reply(Ok(reply)) {
                    SentBatch::Answered(replies) => SentBatch::RanHere(replies),
                    other => other,
                };
                continue;
            }
            self.sent[batch] = match context.dispatch(range, requests).await {
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

    /// The reply to request `index` of batch `batch`, and whether it ran
    /// inline (a write's reply then waits for the pipeline's durability).
    async fn take(
        &mut self,
        batch: usize,
        index: usize,
    ) -> Result<(ShardReply, bool), ProtocolError> {
        let slot = &mut self.sent[batch];
        if let SentBatch::InFlight(_) = slot {
            let SentBatch::InFlight(dispatched) =
                std::mem::replace(slot, SentBatch::Answered(Vec::new()))
            else {
                unreachable!()
            };
            *slot = SentBatch::of_reply(dispatched.reply().await);
        }
        let ran_here = matches!(slot, SentBatch::RanHere(_));
        match slot {
            SentBatch::Answered(replies) | SentBatch::RanHere(replies) => replies
                .get_mut(index)
                .and_then(Option::take)
                .map(|reply| Ok((reply, ran_here)))
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
        assert!(
            self.ran_here_durable_at.is_none(),
            "a pipeline settled before it is cleared"
        );
        self.sent.clear();
    }
}

/// Where one request of a pipeline stands (see [`Pipeline::submit`]).
#[derive(Debug)]
pub enum Ticket {
    /// Answered at once (refused before it was routed).
    Ready(ShardReply),
    /// Gathered into a range's batch: request `index` of batch `batch`.
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
    batches: RangeBatches,
    /// What waiting for the inline writes' durability gave (after
    /// `settle`).
    durable: Option<Result<(), ProtocolError>>,
}

impl Pipeline {
    /// Routes `request` (all its keys on the shard of `slot`) as `session`
    /// reads into its range's batch, which runs inline (if this core runs
    /// the range) or is sent at the next [`Self::send`] or
    /// [`Self::settle`]. A request the session's user may not run
    /// (`Session::may_run`) is answered at once, never routed.
    pub fn submit(
        &mut self,
        context: &CoreContext,
        session: &Session,
        slot: u16,
        request: ShardRequest,
    ) -> Ticket {
        if let Err(refused) = session.may_run(&request) {
            return Ticket::Ready(ShardReply::Error(refused));
        }
        let request = session.reading(request);
        let owner = context.slot_map.owner(slot);
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
        let durable_at = self.batches.ran_here_durable_at.take();
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
    /// from its shard; an inline write's only if it became durable.
    pub async fn reply(&mut self, ticket: Ticket) -> Result<ShardReply, ProtocolError> {
        let (reply, waits_for_durability) = match ticket {
            Ticket::Ready(reply) => (reply, false),
            Ticket::Batched { batch, index } => self.batches.take(batch, index).await?,
        };
        if !waits_for_durability {
            return Ok(reply);
        }
        match self.durable.as_ref().expect("settled before replies") {
            Ok(()) => Ok(reply),
            Err(error) => Err(error.clone()),
        }
    }

    /// Ready for the next pipeline.
    pub fn clear(&mut self) {
        self.batches.clear();
        self.durable = None;
    }
}
