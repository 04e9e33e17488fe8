//! One client connection: read frames, execute them, write answers.
//!
//! A connection is served by the core that accepted it (the kernel spreads
//! connections over cores with `SO_REUSEPORT`). Each turn of the loop takes
//! every whole frame already read (up to `max_pipelined_requests`), starts
//! them all in order (single-key requests for another core are sent without
//! waiting, so a pipeline costs one round trip between cores, not one per
//! request), then waits for the answers in order and writes them with one
//! system call. Answers carry the request's id; they happen to come in
//! request order, but clients must match by id (docs/protocol.md).
//!
//! What can go wrong and what the client sees:
//! - a frame that does not verify: `MalformedFrame` (request id 0), and the
//!   connection stays, as the length prefix kept the stream in step;
//! - a length prefix over `max_frame_bytes`: `FrameTooLarge`, then the
//!   connection is closed, because the stream can no longer be followed;
//! - everything else: a typed error for that request only;
//! - the node shutting down (`crate::shutdown`): every request already read,
//!   or arriving within `shutdown::DRAIN_READ_GRACE`, is answered; then one
//!   `ShuttingDown` error with request id 0 says why the connection is about
//!   to close, and it closes.

use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use tinkerdb_schemas::frame::peek_frame;
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_schemas::{FRAME_HEADER_BYTES, PROTOCOL_VERSION};
use tinkerdb_storage::{
    hash_slot, Expiry, SetOptions, StoreError, TenantId, WriteCondition, SLOT_COUNT,
};

use crate::config::DEFAULT_TENANT;
use crate::error::ProtocolError;
use crate::protocol::{decode_command, encode_reply, Command, Reply};
use crate::router::{now_ms, CoreContext, Dispatched};
use crate::shutdown::{ConnectionDrain, StopSignal};

use crate::shard::{KeyFilter, ShardReply, ShardRequest, SlotKey};
use crate::slots::CoreId;

/// How long a connection closed by a shutdown keeps reading (and dropping)
/// what the client still sends, after its last answer went out.
pub const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_millis(250);

/// Closes a connection the node ends while the client may still be
/// sending: half-closes it (the client reads every answer, then end of
/// stream), then reads and drops what arrives until the client closes too
/// or [`CLOSE_LINGER`] passes. Closing at once would make the kernel answer
/// the client's unread bytes with a reset, which can destroy answers the
/// client has not read yet.
pub(crate) async fn close_lingering(stream: &mut TcpStream) -> std::io::Result<()> {
    stream.shutdown(std::net::Shutdown::Write).await?;
    let discard = async {
        let mut sink = [0u8; 4096];
        while matches!(stream.read(&mut sink).await, Ok(read) if read > 0) {}
    };
    futures_lite::future::or(discard, glommio::timer::sleep(CLOSE_LINGER)).await;
    Ok(())
}

/// What [`ReadBuffer::fill_unless_draining`] turned up.
pub(crate) enum Filled {
    /// Bytes read (0: end of stream).
    Bytes(usize),
    /// The node is shutting down: stop reading.
    Draining,
}

/// Bytes a connection's read buffer starts with (it grows for large frames
/// and shrinks back once they are consumed).
pub const READ_BUFFER_INITIAL_BYTES: usize = 8 << 10;

/// The tenant a connection is bound to after Hello.
#[derive(Clone)]
pub(crate) struct Session {
    pub(crate) tenant: TenantId,
    pub(crate) tenant_name: Arc<str>,
    /// Reads may skip the read index in cluster mode (Hello's
    /// `read_consistency = Stale`).
    pub(crate) stale_reads: bool,
}

impl Session {
    /// `request` as this session reads: marked [`ShardRequest::Stale`] when
    /// it is a read and the session opted in to stale reads.
    pub(crate) fn reading(&self, request: ShardRequest) -> ShardRequest {
        if self.stale_reads && request.is_read() {
            ShardRequest::Stale(Box::new(request))
        } else {
            request
        }
    }
}

/// An answer being produced.
enum Pending {
    Ready(Reply),
    /// A local write's reply, to send only once WAL index `index` is durable.
    Durable {
        reply: Reply,
        index: u64,
    },
    /// A single-key request for another core, the `index`-th of the batch
    /// `batch` (see [`RemoteBatches`]).
    Remote {
        batch: usize,
        index: usize,
        session: Session,
    },
}

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
        if context.replica.get().is_none() {
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
                .ok_or_else(|| ProtocolError::new(ErrorCode::Internal, "batch reply missing")),
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

/// Serves one client until it disconnects, the stream breaks or `drain` is
/// tripped (graceful shutdown).
pub async fn serve_connection(context: Rc<CoreContext>, stream: TcpStream, drain: StopSignal) {
    let peer = stream.peer_addr().ok();
    let mut connection = Connection {
        context,
        stream,
        input: ReadBuffer::new(),
        output: Vec::with_capacity(READ_BUFFER_INITIAL_BYTES),
        builder: FlatBufferBuilder::new(),
        session: None,
        remote: RemoteBatches::default(),
        drain: ConnectionDrain::new(drain),
    };
    if let Err(error) = connection.run().await {
        tracing::debug!(?peer, %error, "connection ended with an I/O error");
    }
}

struct Connection {
    context: Rc<CoreContext>,
    stream: TcpStream,
    input: ReadBuffer,
    output: Vec<u8>,
    builder: FlatBufferBuilder<'static>,
    session: Option<Session>,
    remote: RemoteBatches,
    /// Tripped when the node begins a graceful shutdown.
    drain: ConnectionDrain,
}

impl Connection {
    async fn run(&mut self) -> std::io::Result<()> {
        let limits = self.context.limits.clone();
        let mut batch: Vec<(u64, Pending)> = Vec::new();
        loop {
            // Latency is measured from here: the read that completed these
            // requests (one clock read per batch).
            let started = Instant::now();
            let mut close_after_answers = false;
            let mut bytes_wanted = FRAME_HEADER_BYTES;
            while batch.len() < limits.max_pipelined_requests {
                match peek_frame(self.input.unread(), limits.max_frame_bytes) {
                    Ok(Some(body_len)) => {
                        let unread = self.input.unread();
                        let frame = Bytes::copy_from_slice(
                            &unread[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len],
                        );
                        self.input.consume(FRAME_HEADER_BYTES + body_len);
                        let answer = self.start(frame).await;
                        batch.push(answer);
                    }
                    Ok(None) => {
                        if let Some(header) =
                            self.input.unread().first_chunk::<FRAME_HEADER_BYTES>()
                        {
                            bytes_wanted =
                                FRAME_HEADER_BYTES + u32::from_le_bytes(*header) as usize;
                        }
                        break;
                    }
                    Err(error) => {
                        let error = ProtocolError::new(ErrorCode::FrameTooLarge, error.to_string());
                        batch.push((0, Pending::Ready(Reply::Error(error))));
                        close_after_answers = true;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                self.remote.flush(&self.context).await;
                self.answer(&mut batch, started).await?;
                self.remote.clear();
                if close_after_answers {
                    return Ok(());
                }
                continue;
            }
            match self
                .input
                .fill_unless_draining(&mut self.stream, bytes_wanted, &mut self.drain)
                .await?
            {
                Filled::Bytes(0) => return Ok(()),
                Filled::Bytes(_) => {}
                Filled::Draining => return self.say_shutting_down().await,
            }
        }
    }

    /// Tells the client the node is shutting down (request id 0: about the
    /// connection, not a request), then closes.
    async fn say_shutting_down(&mut self) -> std::io::Result<()> {
        let notice = ProtocolError::new(
            ErrorCode::ShuttingDown,
            "the node is shutting down; reconnect (elsewhere in a cluster)",
        );
        self.output.clear();
        encode_reply(
            &mut self.builder,
            0,
            &Reply::Error(notice),
            &self.context.limits,
            now_ms(),
            &mut self.output,
        );
        self.stream.write_all(&self.output).await?;
        close_lingering(&mut self.stream).await
    }

    /// Waits for every answer of the batch in order, encodes, writes.
    async fn answer(
        &mut self,
        batch: &mut Vec<(u64, Pending)>,
        started: Instant,
    ) -> std::io::Result<()> {
        let answered = batch.len() as u64;
        // One wait covers every local write of the pipeline (group commit).
        let durable =
            durable_through(&self.context, batch.iter().map(|(_, pending)| pending)).await;
        let now = now_ms();
        for (request_id, pending) in batch.drain(..) {
            let reply = match pending {
                Pending::Ready(reply) => reply,
                Pending::Durable { reply, .. } => match &durable {
                    Ok(()) => reply,
                    Err(error) => Reply::Error(error.clone()),
                },
                Pending::Remote {
                    batch,
                    index,
                    session,
                } => match self.remote.take(batch, index).await {
                    Ok(reply) => single_key_reply(reply, &session),
                    Err(error) => Reply::Error(error),
                },
            };
            if let Reply::Error(error) = &reply {
                self.context.stats.count_error(error.code);
            }
            encode_reply(
                &mut self.builder,
                request_id,
                &reply,
                &self.context.limits,
                now,
                &mut self.output,
            );
            if self.builder.finished_data().len() > 4 * READ_BUFFER_INITIAL_BYTES {
                // A big answer grew the builder: give the memory back.
                self.builder = FlatBufferBuilder::new();
            }
        }
        self.stream.write_all(&self.output).await?;
        let tenant = self.session.as_ref().map_or(0, |session| session.tenant);
        self.context.stats.record_answers(tenant, answered, started);
        self.output.clear();
        if self.output.capacity() > 4 * READ_BUFFER_INITIAL_BYTES {
            self.output = Vec::with_capacity(READ_BUFFER_INITIAL_BYTES);
        }
        Ok(())
    }

    /// Decodes one frame and starts its execution.
    async fn start(&mut self, frame: Bytes) -> (u64, Pending) {
        let (request_id, command) = match decode_command(&frame, &self.context.limits) {
            Ok(decoded) => decoded,
            Err((request_id, error)) => return (request_id, Pending::Ready(Reply::Error(error))),
        };
        let pending = match (command, self.session.clone()) {
            (
                Command::Hello {
                    protocol_version,
                    tenant,
                    stale_reads,
                    ..
                },
                _,
            ) => Pending::Ready(self.hello(protocol_version, &tenant, stale_reads)),
            (_, None) => Pending::Ready(Reply::Error(ProtocolError::new(
                ErrorCode::HandshakeRequired,
                "send Hello before any other request",
            ))),
            (Command::Ping, Some(_)) => Pending::Ready(Reply::Pong),
            (Command::Get { key }, Some(session)) => {
                let slot = hash_slot(&session.tenant_name, &key);
                let request = ShardRequest::Get {
                    tenant: session.tenant,
                    key: SlotKey { slot, key },
                };
                self.start_single(slot, request, session).await
            }
            (
                Command::Set {
                    key,
                    value,
                    ttl_ms,
                    condition,
                },
                Some(session),
            ) => {
                let slot = hash_slot(&session.tenant_name, &key);
                let request = ShardRequest::Set {
                    tenant: session.tenant,
                    key: SlotKey { slot, key },
                    value,
                    options: set_options(condition, ttl_ms),
                };
                self.start_single(slot, request, session).await
            }
            (command, Some(session)) => {
                // Requests gathered so far must reach their cores first.
                self.remote.flush_ordered(&self.context).await;
                let reply = match execute_multi(&self.context, &session, command).await {
                    Ok(reply) => reply,
                    Err(error) => Reply::Error(error),
                };
                Pending::Ready(reply)
            }
        };
        (request_id, pending)
    }

    async fn start_single(
        &mut self,
        slot: u16,
        request: ShardRequest,
        session: Session,
    ) -> Pending {
        let owner = self.context.slot_map.owner(slot);
        let request = session.reading(request);
        // Standalone: this core's keys are served inline. In cluster mode
        // every request joins its shard's batch, this core's too: a
        // pipeline's writes for one shard become one Raft entry.
        if owner == self.context.core && self.context.replica.get().is_none() {
            let (reply, ack_point) = self.context.execute_here(request);
            let reply = single_key_reply(reply, &session);
            return match ack_point {
                Some(index) => Pending::Durable { reply, index },
                None => Pending::Ready(reply),
            };
        }
        let (batch, index) = self
            .remote
            .push(self.context.slot_map.cores(), owner, request);
        Pending::Remote {
            batch,
            index,
            session,
        }
    }

    fn hello(&mut self, protocol_version: u32, tenant: &str, stale_reads: bool) -> Reply {
        if protocol_version != PROTOCOL_VERSION {
            return Reply::Error(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {protocol_version} is not supported; this node speaks {PROTOCOL_VERSION}"),
            ));
        }
        if let Some(session) = &self.session {
            return Reply::Error(ProtocolError::new(
                ErrorCode::InvalidArgument,
                format!(
                    "this connection is already bound to tenant {:?}",
                    &*session.tenant_name
                ),
            ));
        }
        let name = if tenant.is_empty() {
            DEFAULT_TENANT
        } else {
            tenant
        };
        let Some(tenant) = self.context.tenants.by_name(name) else {
            return Reply::Error(ProtocolError::new(
                ErrorCode::UnknownTenant,
                format!("tenant {name:?} is not defined on this node"),
            ));
        };
        self.session = Some(Session {
            tenant: tenant.id,
            tenant_name: tenant.name.clone(),
            stale_reads,
        });
        Reply::HelloOk {
            tenant: tenant.name.to_string(),
            cores: self.context.slot_map.cores() as u32,
        }
    }
}

pub(crate) fn set_options(condition: WriteCondition, ttl_ms: u64) -> SetOptions {
    SetOptions {
        condition,
        expiry: match ttl_ms {
            0 => Expiry::Never,
            ttl_ms => Expiry::AtMs(now_ms().saturating_add(ttl_ms)),
        },
    }
}

/// Waits until the highest WAL index among `pending` local writes is
/// durable. The error, if the WAL failed, is what those writes answer.
async fn durable_through<'a>(
    context: &CoreContext,
    pending: impl Iterator<Item = &'a Pending>,
) -> Result<(), ProtocolError> {
    let highest = pending
        .filter_map(|pending| match pending {
            Pending::Durable { index, .. } => Some(*index),
            _ => None,
        })
        .max();
    context
        .wait_durable(highest)
        .await
        .map_err(|reason| storage_failed(&reason))
}

/// The error of a write refused because the core's storage failed.
pub(crate) fn storage_failed(reason: &str) -> ProtocolError {
    ProtocolError::new(ErrorCode::StorageFailed, reason.to_owned())
}

/// Turns a shard's answer to Get or Set into the client's reply.
pub(crate) fn single_key_reply(reply: ShardReply, session: &Session) -> Reply {
    match reply {
        ShardReply::Value(value) => Reply::Value(value),
        ShardReply::Written(Ok(outcome)) => Reply::Written(outcome),
        ShardReply::Written(Err(error)) => Reply::Error(quota_error(&error, session)),
        ShardReply::Refused(reason) => Reply::Error(storage_failed(&reason)),
        ShardReply::Error(error) => Reply::Error(error),
        other => unreachable!("single-key request answered with {other:?}"),
    }
}

pub(crate) fn quota_error(error: &StoreError, session: &Session) -> ProtocolError {
    let name = &*session.tenant_name;
    let message = match error {
        StoreError::KeyQuotaExceeded { max_keys, .. } => {
            format!("tenant {name:?} reached its key quota (this core's share: {max_keys} keys)")
        }
        StoreError::ByteQuotaExceeded { max_bytes, .. } => {
            format!("tenant {name:?} reached its byte quota (this core's share: {max_bytes} bytes)")
        }
    };
    ProtocolError::new(ErrorCode::QuotaExceeded, message)
}

pub(crate) fn unexpected(reply: &ShardReply) -> ProtocolError {
    if let ShardReply::Error(error) = reply {
        return error.clone();
    }
    ProtocolError::new(
        ErrorCode::Internal,
        format!("unexpected shard reply {reply:?}"),
    )
}

/// Groups keys by owning core, remembering each key's position.
fn group_by_core(
    context: &CoreContext,
    session: &Session,
    keys: Vec<Bytes>,
) -> Vec<(CoreId, Vec<usize>, Vec<SlotKey>)> {
    let mut groups: Vec<(Vec<usize>, Vec<SlotKey>)> =
        vec![(Vec::new(), Vec::new()); context.slot_map.cores()];
    for (index, key) in keys.into_iter().enumerate() {
        let slot = hash_slot(&session.tenant_name, &key);
        let (indexes, slot_keys) = &mut groups[context.slot_map.owner(slot)];
        indexes.push(index);
        slot_keys.push(SlotKey { slot, key });
    }
    groups
        .into_iter()
        .enumerate()
        .filter(|(_, (indexes, _))| !indexes.is_empty())
        .map(|(core, (indexes, keys))| (core, indexes, keys))
        .collect()
}

/// Sends one request per core, then waits for all (so cores work at once).
async fn fan_out(
    context: &CoreContext,
    session: &Session,
    requests: Vec<(CoreId, ShardRequest)>,
) -> Result<Vec<ShardReply>, ProtocolError> {
    let mut dispatched = Vec::with_capacity(requests.len());
    for (core, request) in requests {
        dispatched.push(context.dispatch(core, session.reading(request)).await?);
    }
    let mut replies = Vec::with_capacity(dispatched.len());
    let mut refused = None;
    for pending in dispatched {
        match pending.reply().await? {
            ShardReply::Refused(reason) => refused = Some(storage_failed(&reason)),
            ShardReply::Error(error) => refused = Some(error),
            reply => replies.push(reply),
        }
    }
    match refused {
        Some(error) => Err(error),
        None => Ok(replies),
    }
}

/// Requests that may touch several cores: run to completion.
pub(crate) async fn execute_multi(
    context: &CoreContext,
    session: &Session,
    command: Command,
) -> Result<Reply, ProtocolError> {
    let tenant = session.tenant;
    match command {
        Command::Delete { keys } => {
            let requests = group_by_core(context, session, keys)
                .into_iter()
                .map(|(core, _, keys)| (core, ShardRequest::Delete { tenant, keys }))
                .collect();
            sum_counts(fan_out(context, session, requests).await?)
        }
        Command::Exists { keys } => {
            let requests = group_by_core(context, session, keys)
                .into_iter()
                .map(|(core, _, keys)| (core, ShardRequest::Exists { tenant, keys }))
                .collect();
            sum_counts(fan_out(context, session, requests).await?)
        }
        Command::Count => {
            let requests = (0..context.slot_map.cores())
                .map(|core| (core, ShardRequest::Usage { tenant }))
                .collect();
            let mut total = 0;
            for reply in fan_out(context, session, requests).await? {
                match reply {
                    ShardReply::Usage(usage) => total += usage.keys,
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(Reply::Count(total))
        }
        Command::MGet { keys } => {
            let key_count = keys.len();
            let groups = group_by_core(context, session, keys);
            let (positions, requests): (Vec<_>, Vec<_>) = groups
                .into_iter()
                .map(|(core, indexes, keys)| {
                    let max_bytes = context.limits.max_response_bytes;
                    let request = ShardRequest::GetMany {
                        tenant,
                        keys,
                        max_bytes,
                    };
                    (indexes, (core, request))
                })
                .unzip();
            let mut values = vec![None; key_count];
            let mut bytes = 0;
            for (indexes, reply) in positions
                .into_iter()
                .zip(fan_out(context, session, requests).await?)
            {
                let found = match reply {
                    ShardReply::Values(found) => found,
                    ShardReply::TooLarge(partial) => {
                        bytes += partial;
                        continue;
                    }
                    other => return Err(unexpected(&other)),
                };
                bytes += found.iter().flatten().map(|v| v.value.len()).sum::<usize>();
                for (index, value) in indexes.into_iter().zip(found) {
                    values[index] = value;
                }
            }
            let limit = context.limits.max_response_bytes;
            if bytes > limit {
                return Err(ProtocolError::new(
                    ErrorCode::ResultTooLarge,
                    format!("the values exceed max_response_bytes ({limit}): ask for fewer keys"),
                ));
            }
            Ok(Reply::Values(values))
        }
        Command::MSet { entries } => {
            let key_count = entries.len();
            let (keys, mut values): (Vec<Bytes>, Vec<Bytes>) = entries.into_iter().unzip();
            let groups = group_by_core(context, session, keys);
            let (positions, requests): (Vec<_>, Vec<_>) = groups
                .into_iter()
                .map(|(core, indexes, keys)| {
                    let entries = indexes
                        .iter()
                        .zip(keys)
                        .map(|(&index, key)| (key, std::mem::take(&mut values[index])))
                        .collect();
                    (indexes, (core, ShardRequest::SetMany { tenant, entries }))
                })
                .unzip();
            let mut versions = vec![0; key_count];
            let mut written = 0;
            let mut refused = None;
            for (indexes, reply) in positions
                .into_iter()
                .zip(fan_out(context, session, requests).await?)
            {
                let ShardReply::WrittenMany(done, error) = reply else {
                    return Err(unexpected(&reply));
                };
                written += done.len();
                for (index, version) in indexes.into_iter().zip(done) {
                    versions[index] = version;
                }
                refused = refused.or(error);
            }
            match refused {
                None => Ok(Reply::Versions(versions)),
                Some(error) => {
                    let mut error = quota_error(&error, session);
                    error.message = format!(
                        "{}; {written} of {key_count} keys were written",
                        error.message
                    );
                    Err(error)
                }
            }
        }
        Command::Scan {
            cursor,
            prefix,
            pattern,
            count,
        } => {
            let filter = Arc::new(KeyFilter { prefix, pattern });
            let (keys, next) = scan(context, session, cursor, filter, count).await?;
            Ok(Reply::Scanned {
                cursor: if next as usize >= SLOT_COUNT {
                    0
                } else {
                    u64::from(next)
                },
                keys,
            })
        }
        Command::Keys { pattern } => {
            let filter = Arc::new(KeyFilter {
                prefix: Bytes::new(),
                pattern,
            });
            let limit = context.limits.max_keys_result;
            let mut keys = Vec::new();
            let mut key_bytes = 0;
            let mut cursor = 0;
            while (cursor as usize) < SLOT_COUNT {
                let (found, next) = scan(
                    context,
                    session,
                    cursor,
                    filter.clone(),
                    limit + 1 - keys.len(),
                )
                .await?;
                key_bytes += found.iter().map(Bytes::len).sum::<usize>();
                keys.extend(found);
                if key_bytes > context.limits.max_response_bytes {
                    return Err(ProtocolError::new(
                        ErrorCode::ResultTooLarge,
                        format!(
                            "the keys exceed max_response_bytes ({}): use SCAN",
                            context.limits.max_response_bytes
                        ),
                    ));
                }
                if keys.len() > limit {
                    return Err(ProtocolError::new(
                        ErrorCode::ResultTooLarge,
                        format!("more than max_keys_result ({limit}) keys match: use SCAN"),
                    ));
                }
                cursor = next;
                // Between steps, let the core serve others: KEYS never stalls it.
                glommio::yield_if_needed().await;
            }
            Ok(Reply::Keys(keys))
        }
        Command::Snapshot => {
            let requests = (0..context.slot_map.cores())
                .map(|core| (core, ShardRequest::Snapshot))
                .collect();
            let (mut keys, mut bytes) = (0, 0);
            for reply in fan_out(context, session, requests).await? {
                match reply {
                    ShardReply::Snapshotted(Ok((entries, size))) => {
                        keys += entries;
                        bytes += size;
                    }
                    ShardReply::Snapshotted(Err(reason)) => {
                        return Err(ProtocolError::new(
                            ErrorCode::StorageFailed,
                            format!("snapshot failed: {reason}"),
                        ))
                    }
                    other => return Err(unexpected(&other)),
                }
            }
            Ok(Reply::Snapshotted { keys, bytes })
        }
        other @ (Command::Hello { .. }
        | Command::Ping
        | Command::Get { .. }
        | Command::Set { .. }) => {
            unreachable!("single requests are handled by the caller: {other:?}")
        }
    }
}

/// Scans from slot `cursor` until `count` keys are found or every core
/// that owns the following slots has taken one bounded step.
async fn scan(
    context: &CoreContext,
    session: &Session,
    mut cursor: u32,
    filter: Arc<KeyFilter>,
    count: usize,
) -> Result<(Vec<Bytes>, u32), ProtocolError> {
    let mut keys = Vec::new();
    let mut steps = 0;
    while (cursor as usize) < SLOT_COUNT && keys.len() < count && steps < context.slot_map.cores() {
        let owner = context.slot_map.owner(cursor as u16);
        let request = ShardRequest::Scan {
            tenant: session.tenant,
            start_slot: cursor,
            filter: filter.clone(),
            max_keys: count - keys.len(),
        };
        match context.call(owner, session.reading(request)).await? {
            ShardReply::Scanned {
                keys: found,
                next_slot,
            } => {
                assert!(next_slot > cursor, "a scan step always advances");
                keys.extend(found);
                cursor = next_slot;
            }
            other => return Err(unexpected(&other)),
        }
        steps += 1;
    }
    Ok((keys, cursor))
}

fn sum_counts(replies: Vec<ShardReply>) -> Result<Reply, ProtocolError> {
    let mut total = 0;
    for reply in replies {
        match reply {
            ShardReply::Count(count) => total += count,
            other => return Err(unexpected(&other)),
        }
    }
    Ok(Reply::Count(total))
}

/// A read buffer that never zero-fills on the hot path: one allocation,
/// reused, compacted when the unread bytes reach its end.
pub(crate) struct ReadBuffer {
    data: Vec<u8>,
    start: usize,
    end: usize,
}

impl ReadBuffer {
    pub(crate) fn new() -> ReadBuffer {
        ReadBuffer {
            data: vec![0; READ_BUFFER_INITIAL_BYTES],
            start: 0,
            end: 0,
        }
    }

    pub(crate) fn unread(&self) -> &[u8] {
        &self.data[self.start..self.end]
    }

    pub(crate) fn consume(&mut self, bytes: usize) {
        assert!(self.start + bytes <= self.end);
        self.start += bytes;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.data.len() > 4 * READ_BUFFER_INITIAL_BYTES {
                // A large frame has gone: give its memory back.
                self.data = vec![0; READ_BUFFER_INITIAL_BYTES];
            }
        }
    }

    /// Reads once from `stream`. `bytes_wanted` is how many unread bytes the
    /// caller needs in all (the frame being assembled); the buffer grows
    /// towards it only by doubling as bytes arrive, so a hostile length
    /// prefix costs nothing until its bytes are actually sent. A full buffer
    /// also doubles (a RESP command's size is not announced up front).
    /// Returns bytes read (0: end of stream).
    pub(crate) async fn fill_unless_draining(
        &mut self,
        stream: &mut TcpStream,
        bytes_wanted: usize,
        drain: &mut ConnectionDrain,
    ) -> std::io::Result<Filled> {
        // The drain first: a connection with bytes still arriving must not
        // keep a shutdown waiting past its grace.
        futures_lite::future::or(
            async {
                drain.must_stop_reading().await;
                Ok(Filled::Draining)
            },
            async { self.fill(stream, bytes_wanted).await.map(Filled::Bytes) },
        )
        .await
    }

    /// [`ReadBuffer::fill_unless_draining`] without a drain signal.
    async fn fill(
        &mut self,
        stream: &mut TcpStream,
        bytes_wanted: usize,
    ) -> std::io::Result<usize> {
        if self.start > 0
            && (self.end == self.data.len() || self.data.len() - self.start < bytes_wanted)
        {
            self.data.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.data.len() {
            let grown = (self.data.len() * 2).max(READ_BUFFER_INITIAL_BYTES);
            self.data.resize(grown, 0);
        }
        let read = stream.read(&mut self.data[self.end..]).await?;
        self.end += read;
        Ok(read)
    }
}
