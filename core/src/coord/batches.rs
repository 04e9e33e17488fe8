//! Per-destination batches: a pipeline's single-key requests for each
//! shard, sent as one message per shard and answered in request order.

use crate::coord::context::CoreContext;
use crate::coord::dispatch::Dispatched;
use crate::coord::multi::unexpected;
use crate::error::ProtocolError;
use crate::shard::{ShardReply, ShardRequest};
use crate::slots::CoreId;

/// Single-key requests for other cores, gathered while a pipeline is read
/// and sent as one `ShardRequest::Batch` message per core: one cross-core
/// hop per core per pipeline instead of one per request.
///
/// Order: a batch is sent (`flush`) before any multi-key request starts and
/// at the end of the pipeline, so requests still reach each core in the
/// order the client sent them.
#[derive(Default)]
pub(crate) struct RemoteBatches {
    /// Requests gathered per core, not yet sent (index = core).
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
    /// Queues `request` for `core`; returns (batch id, index in it).
    pub(crate) fn push(
        &mut self,
        cores: usize,
        core: CoreId,
        request: ShardRequest,
    ) -> (usize, usize) {
        if self.gathering.is_empty() {
            self.gathering.resize_with(cores, Default::default);
        }
        let (requests, batch_id) = &mut self.gathering[core];
        let batch = *batch_id.get_or_insert_with(|| {
            self.sent.push(SentBatch::Answered(Vec::new()));
            self.sent.len() - 1
        });
        requests.push(request);
        (batch, requests.len() - 1)
    }

    /// Sends every gathered batch.
    pub(crate) async fn flush(&mut self, context: &CoreContext) {
        for (core, (requests, batch_id)) in self.gathering.iter_mut().enumerate() {
            let Some(batch) = batch_id.take() else {
                continue;
            };
            let requests = std::mem::take(requests);
            self.sent[batch] = match context.dispatch(core, ShardRequest::Batch(requests)).await {
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
    pub(crate) async fn flush_ordered(&mut self, context: &CoreContext) {
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
    pub(crate) async fn take(
        &mut self,
        batch: usize,
        index: usize,
    ) -> Result<ShardReply, ProtocolError> {
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

    pub(crate) fn clear(&mut self) {
        assert!(self
            .gathering
            .iter()
            .all(|(requests, batch)| requests.is_empty() && batch.is_none()));
        self.sent.clear();
    }
}
