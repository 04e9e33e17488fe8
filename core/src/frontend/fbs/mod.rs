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

pub mod codec;

use std::rc::Rc;
use std::time::Instant;

use crate::net::tls::ClientStream;
use bytes::Bytes;
use flatbuffers::FlatBufferBuilder;
use futures_lite::AsyncWriteExt;
use tinkerdb_schemas::frame::peek_frame;
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_schemas::{FRAME_HEADER_BYTES, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};

use crate::coord::batches::{Pipeline, Ticket};
use crate::coord::context::{now_ms, CoreContext};
use crate::coord::multi::{execute_multi, one_shard_request, single_key_reply};
use crate::coord::request::{Command, Reply};
use crate::coord::routes;
use crate::coord::session::{authenticate, Admission, Session, AUTHENTICATION_TIMEOUT};
use crate::error::ProtocolError;
use crate::net::stream::{close_lingering, Filled, ReadBuffer, READ_BUFFER_INITIAL_BYTES};
use crate::shutdown::{ConnectionDrain, StopSignal};
use codec::{decode_routed_command, encode_reply};

/// An answer being produced.
enum Pending {
    Ready(Reply),
    /// A one-shard request handed to the pipeline; its reply is the
    /// session's (a quota error names the session's tenant).
    Shard {
        ticket: Ticket,
        session: Session,
    },
}

/// Largest frame a connection may send before its `Hello` succeeded, on a
/// node that requires authentication: room for a `Hello` with the longest
/// password and names, and no more (a stranger cannot make the node
/// buffer `max_frame_bytes`).
pub const UNAUTHENTICATED_MAX_FRAME_BYTES: usize = 8 << 10;

/// Serves one client until it disconnects, the stream breaks or `drain` is
/// tripped (graceful shutdown).
pub async fn serve_connection(context: Rc<CoreContext>, stream: ClientStream, drain: StopSignal) {
    let peer = stream.peer_addr().ok();
    let mut connection = Connection {
        context,
        stream,
        input: ReadBuffer::new(),
        output: Vec::with_capacity(READ_BUFFER_INITIAL_BYTES),
        builder: FlatBufferBuilder::new(),
        session: None,
        pipeline: Pipeline::default(),
        drain: ConnectionDrain::new(drain),
        connected_at: Instant::now(),
    };
    if let Err(error) = connection.run().await {
        tracing::debug!(?peer, %error, "connection ended with an I/O error");
    }
}

struct Connection {
    context: Rc<CoreContext>,
    stream: ClientStream,
    input: ReadBuffer,
    output: Vec<u8>,
    builder: FlatBufferBuilder<'static>,
    session: Option<Session>,
    pipeline: Pipeline,
    /// Tripped when the node begins a graceful shutdown.
    drain: ConnectionDrain,
    /// When the connection was accepted (it must authenticate within
    /// [`AUTHENTICATION_TIMEOUT`] of it, when authentication is on).
    connected_at: Instant,
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
            // A sampled pipeline's root span (`crate::telemetry`).
            let mut trace: Option<tracing::Span> = None;
            loop {
                // Before its Hello, a connection to a node that requires
                // authentication gets a small frame limit (a Hello fits)
                // and a short pipeline.
                let (max_frame_bytes, max_pipelined) = match self.is_stranger() {
                    true => (
                        UNAUTHENTICATED_MAX_FRAME_BYTES,
                        crate::frontend::resp::UNAUTHENTICATED_MAX_PIPELINED,
                    ),
                    false => (limits.max_frame_bytes, limits.max_pipelined_requests),
                };
                if batch.len() >= max_pipelined {
                    break;
                }
                match peek_frame(self.input.unread(), max_frame_bytes) {
                    Ok(Some(body_len)) => {
                        let unread = self.input.unread();
                        let frame = Bytes::copy_from_slice(
                            &unread[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + body_len],
                        );
                        self.input.consume(FRAME_HEADER_BYTES + body_len);
                        if batch.is_empty() && crate::telemetry::start_trace() {
                            trace = Some(tracing::info_span!(
                                parent: None,
                                "fbs.pipeline",
                                requests = tracing::field::Empty
                            ));
                        }
                        let answer =
                            crate::telemetry::within(trace.as_ref(), self.start(frame)).await;
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
                if let Some(trace) = &trace {
                    trace.record("requests", batch.len());
                }
                crate::telemetry::within(trace.as_ref(), self.pipeline.settle(&self.context)).await;
                crate::telemetry::within(trace.as_ref(), self.answer(&mut batch, started)).await?;
                self.pipeline.clear();
                if close_after_answers {
                    return Ok(());
                }
                continue;
            }
            // A connection without a session on a node that requires
            // authentication may not idle for long (as RESP's).
            let idle_limit = self
                .is_stranger()
                .then(|| AUTHENTICATION_TIMEOUT.saturating_sub(self.connected_at.elapsed()));
            match self
                .input
                .fill_within(&mut self.stream, bytes_wanted, &mut self.drain, idle_limit)
                .await?
            {
                Filled::Bytes(0) => return Ok(()),
                Filled::Bytes(_) => {}
                Filled::Draining => return self.say_shutting_down().await,
                Filled::Idle => return Ok(()),
            }
        }
    }

    /// Whether the connection has no session yet on a node that requires
    /// authentication (small frames, the authentication deadline).
    fn is_stranger(&self) -> bool {
        self.session.is_none() && self.context.users.enabled()
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
        let now = now_ms();
        for (request_id, pending) in batch.drain(..) {
            let reply = match pending {
                Pending::Ready(reply) => reply,
                Pending::Shard { ticket, session } => match self.pipeline.reply(ticket).await {
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
        let (request_id, command, route) = match decode_routed_command(&frame, &self.context.limits)
        {
            Ok(decoded) => decoded,
            Err((request_id, error)) => return (request_id, Pending::Ready(Reply::Error(error))),
        };
        // A session whose user was deleted, disabled or given a new
        // password ends here (`Session::admission`).
        if let Some(session) = &self.session {
            if session.admission(&self.context.users) == Admission::Revoked {
                tracing::info!(
                    user = session.user_name(),
                    "ending a session whose user was deleted, disabled or given a new password"
                );
                self.session = None;
                let error = ProtocolError::new(
                    ErrorCode::Unauthenticated,
                    "this session's user was deleted, disabled or given a new password: send Hello again",
                );
                return (request_id, Pending::Ready(Reply::Error(error)));
            }
        }
        // A session bound to a tenant deleted since: refused (a Hello
        // binds another).
        if let (Some(session), false) = (&self.session, matches!(command, Command::Hello { .. })) {
            if !self.context.tenants.is_live(session.tenant) {
                let error = ProtocolError::new(
                    ErrorCode::UnknownTenant,
                    format!("tenant {} was deleted", session.tenant_name),
                );
                return (request_id, Pending::Ready(Reply::Error(error)));
            }
        }
        // A route that is not current gets the typed answer; nothing runs.
        if let (Some(route), Some(session)) = (route, &self.session) {
            if !matches!(command, Command::Hello { .. }) {
                if let Err(error) = routes::check(&self.context, session, &command, route) {
                    return (request_id, Pending::Ready(Reply::Error(error)));
                }
            }
        }
        let pending = match (command, self.session.clone()) {
            (
                Command::Hello {
                    protocol_version,
                    tenant,
                    stale_reads,
                    user,
                    password,
                    ..
                },
                _,
            ) => Pending::Ready(
                self.hello(protocol_version, &tenant, stale_reads, &user, &password.0)
                    .await,
            ),
            (_, None) => Pending::Ready(Reply::Error(ProtocolError::new(
                ErrorCode::HandshakeRequired,
                "send Hello before any other request",
            ))),
            (Command::Ping, Some(_)) => Pending::Ready(Reply::Pong),
            // A snapshot is of the whole node, every tenant's keys.
            (Command::Snapshot, Some(session)) if !session.may_administer(&self.context.users) => {
                Pending::Ready(Reply::Error(ProtocolError::new(
                    ErrorCode::PermissionDenied,
                    "a snapshot covers every tenant: it needs a cluster_admin user",
                )))
            }
            (command, Some(session)) => {
                match one_shard_request(&self.context, &session, command) {
                    Ok(Ok((slot, request))) => {
                        let ticket = self.pipeline.submit(&self.context, &session, slot, request);
                        Pending::Shard { ticket, session }
                    }
                    Ok(Err(error)) => Pending::Ready(Reply::Error(error)),
                    Err(command) => {
                        // Requests gathered so far must reach their cores first.
                        self.pipeline.send(&self.context).await;
                        let reply = match execute_multi(&self.context, &session, command).await {
                            Ok(reply) => reply,
                            Err(error) => Reply::Error(error),
                        };
                        Pending::Ready(reply)
                    }
                }
            }
        };
        (request_id, pending)
    }

    /// Binds the connection to a session: the tenant's (authentication
    /// off) or the user's (on; the password checked off the core).
    async fn hello(
        &mut self,
        protocol_version: u32,
        tenant: &str,
        stale_reads: bool,
        user: &str,
        password: &str,
    ) -> Reply {
        if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
            return Reply::Error(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!("protocol version {protocol_version} is not supported; this node speaks {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}"),
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
        let users = &self.context.users;
        let opened = if users.enabled() {
            let generation = users.generation();
            match authenticate(users, user.as_bytes(), password.as_bytes()).await {
                Err(busy) => return Reply::Error(ProtocolError::new(ErrorCode::Busy, busy.to_string())),
                Ok(None) => {
                    return Reply::Error(ProtocolError::new(
                        ErrorCode::Unauthenticated,
                        "this node requires authentication: the Hello's user and password \
                         (protocol version 2) are missing or wrong, or the user is disabled",
                    ))
                }
                Ok(Some(user)) if !tenant.is_empty() && tenant != user.tenant => {
                    return Reply::Error(ProtocolError::new(
                        ErrorCode::InvalidArgument,
                        format!(
                            "user {:?} acts for tenant {:?}, not {tenant:?}: leave the Hello's tenant empty",
                            user.name, user.tenant
                        ),
                    ))
                }
                Ok(Some(user)) => {
                    Session::for_user(&self.context.tenants, &user, generation, stale_reads)
                }
            }
        } else {
            Session::open(&self.context.tenants, tenant, stale_reads)
        };
        let session = match opened {
            Ok(session) => session,
            Err(error) => return Reply::Error(error),
        };
        let tenant = session.tenant_name.to_string();
        self.session = Some(session);
        Reply::HelloOk {
            tenant,
            cores: self.context.slot_map.cores() as u32,
            node_id: self.context.directory.node_id,
            nodes: self.context.directory.clients(),
        }
    }
}
