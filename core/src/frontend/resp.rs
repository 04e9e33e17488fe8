//! The Redis protocol (RESP2 and RESP3) listener, so existing Redis clients,
//! `redis-cli` and `redis-benchmark` work unmodified.
//!
//! A RESP connection goes through exactly the same shard path as the
//! flatbuffers protocol: single-key commands become `ShardRequest`s (batched
//! per shard over a pipeline, see `coord::batches::Pipeline`),
//! multi-key commands reuse `coord::multi::execute_multi`. Only parsing and
//! reply encoding differ. Differences from Redis are listed in
//! `docs/redis-compatibility.md`.
//!
//! Tenants: a connection starts in tenant `default` (Redis DB 0).
//! `SELECT n` selects database n of the connection's tenant (0 to
//! `databases - 1`, 16 by default: `crate::tenants`).
//!
//! Authentication (`[auth] enabled`, docs/security.md) speaks Redis's ACL
//! dialect: `AUTH password` (the user `default`), `AUTH user password`,
//! `HELLO 3 AUTH user password`; every command but those, QUIT and RESET
//! is answered `-NOAUTH Authentication required.` until one succeeds, and
//! every failure gets the same `-WRONGPASS ...`. A user acts for its
//! tenant. Before authenticating, a connection's commands are held to
//! [`UNAUTHENTICATED_MAX_ARGS`] arguments of [`UNAUTHENTICATED_MAX_BULK_BYTES`]
//! (an inline command to 64 KiB), and a connection not authenticated within
//! `AUTHENTICATION_TIMEOUT` of connecting is closed.
//! A connection whose user is deleted, disabled or given a new password is
//! answered NOAUTH and closed at its next command. `ACL WHOAMI`, `ACL
//! USERS`, `ACL LIST`, `ACL SETUSER`, `ACL DELUSER` (the last three for
//! `cluster_admin` users) read and change the node's users.
//!
//! With authentication off (the default), `AUTH tenant [password]` and
//! `HELLO 3 AUTH tenant password` switch to a tenant without checking any
//! password, as before; AUTH binds the database it names (`acme` is
//! database 0, `acme/3` database 3).

use std::rc::Rc;

use crate::net::tls::ClientStream;
use bytes::Bytes;
use futures_lite::AsyncWriteExt;
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::{
    database_of, hash_slot, quota_owner, Expiry, SetOptions, TenantId, WriteCondition, SLOT_COUNT,
};

use crate::config::DEFAULT_TENANT;
use crate::coord::batches::{Pipeline, Ticket};
use crate::coord::context::{now_ms, CoreContext};
use crate::coord::multi::{execute_multi, one_shard_request, quota_error};
use crate::coord::request::{Command, Reply};
use crate::coord::session::{authenticate, Admission, Session, AUTHENTICATION_TIMEOUT};
use crate::error::ProtocolError;
use crate::net::stream::{close_lingering, Filled, ReadBuffer};
use crate::shard::{
    ExpireCondition, MoveKind, ShardReply, ShardRequest, SlotKey, Update, UpdateError,
    UpdateOutcome, ValueRead,
};
use crate::shutdown::{ConnectionDrain, StopSignal};
use tinkerdb_admin::users::{Access, NOAUTH, WRONGPASS};

/// Longest inline command (a line without the `*` array header), as Redis.
pub const RESP_MAX_INLINE_BYTES: usize = 64 << 10;

/// Every command this listener implements, sorted (a test keeps it equal
/// to the dispatch's arms). A trace names its pipeline by one of these,
/// or `UNKNOWN`: never by bytes a client made up.
pub const RESP_COMMANDS: [&str; 56] = [
    "ACL",
    "APPEND",
    "AUTH",
    "BGSAVE",
    "CLIENT",
    "COMMAND",
    "COPY",
    "DBSIZE",
    "DECR",
    "DECRBY",
    "DEL",
    "ECHO",
    "EXISTS",
    "EXPIRE",
    "EXPIREAT",
    "EXPIRETIME",
    "FLUSHALL",
    "FLUSHDB",
    "GET",
    "GETDEL",
    "GETEX",
    "GETRANGE",
    "GETSET",
    "HELLO",
    "INCR",
    "INCRBY",
    "INCRBYFLOAT",
    "INFO",
    "KEYS",
    "MGET",
    "MSET",
    "MSETNX",
    "PERSIST",
    "PEXPIRE",
    "PEXPIREAT",
    "PEXPIRETIME",
    "PING",
    "PSETEX",
    "PTTL",
    "QUIT",
    "RANDOMKEY",
    "READONLY",
    "READWRITE",
    "RENAME",
    "RENAMENX",
    "SAVE",
    "SCAN",
    "SELECT",
    "SET",
    "SETEX",
    "SETNX",
    "SETRANGE",
    "STRLEN",
    "TIME",
    "TTL",
    "UNLINK",
];

/// The name a span gives command `name` (uppercase already).
fn traced_command_name(name: &str) -> &'static str {
    RESP_COMMANDS
        .binary_search(&name)
        .map_or("UNKNOWN", |index| RESP_COMMANDS[index])
}

/// Most commands read from one connection before answering them.
pub const RESP_MAX_PIPELINED_COMMANDS: usize = 1024;

/// Most arguments of a command from a connection that has not
/// authenticated (authentication on): `HELLO 3 AUTH user pass SETNAME n`
/// fits; a stranger cannot make the node buffer a huge command.
pub const UNAUTHENTICATED_MAX_ARGS: usize = 8;

/// Most commands a connection that has not authenticated (authentication
/// on) may pipeline before its answers: a client authenticates with one;
/// a stranger gets no more than a few NOAUTH answers per round trip (its
/// pipeline waits in the socket, bounded by the kernel's buffer).
pub const UNAUTHENTICATED_MAX_PIPELINED: usize = 8;

/// Longest argument of a command from a connection that has not
/// authenticated (authentication on): above the longest password.
pub const UNAUTHENTICATED_MAX_BULK_BYTES: usize = 2 * tinkerdb_admin::users::MAX_PASSWORD_BYTES;

/// A RESP value to send.
#[derive(Debug, Clone, PartialEq)]
pub enum RespValue {
    /// `+text`.
    Simple(&'static str),
    /// `-text` (text includes the code, e.g. "ERR ...").
    Error(String),
    /// `:n`.
    Integer(i64),
    /// `$n` bulk string.
    Bulk(Bytes),
    /// `$-1` in RESP2, `_` in RESP3.
    Null,
    /// `*n` array.
    Array(Vec<RespValue>),
    /// `%n` map in RESP3, a flat array in RESP2.
    Map(Vec<(RespValue, RespValue)>),
    /// `=n txt:` verbatim string in RESP3, bulk in RESP2.
    Verbatim(String),
}

impl RespValue {
    fn bulk(text: impl Into<Bytes>) -> RespValue {
        RespValue::Bulk(text.into())
    }

    fn error(text: impl Into<String>) -> RespValue {
        RespValue::Error(text.into())
    }

    /// Appends the encoding of `self` in protocol `version` (2 or 3).
    pub fn encode(&self, version: u8, out: &mut Vec<u8>) {
        use std::io::Write;
        match self {
            RespValue::Simple(text) => {
                out.push(b'+');
                out.extend_from_slice(text.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            RespValue::Error(text) => {
                out.push(b'-');
                // A reply line must not break: newlines become spaces.
                out.extend(
                    text.bytes()
                        .map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }),
                );
                out.extend_from_slice(b"\r\n");
            }
            RespValue::Integer(n) => write!(out, ":{n}\r\n").expect("write to a Vec"),
            RespValue::Bulk(bytes) => {
                write!(out, "${}\r\n", bytes.len()).expect("write to a Vec");
                out.extend_from_slice(bytes);
                out.extend_from_slice(b"\r\n");
            }
            RespValue::Null if version >= 3 => out.extend_from_slice(b"_\r\n"),
            RespValue::Null => out.extend_from_slice(b"$-1\r\n"),
            RespValue::Array(items) => {
                write!(out, "*{}\r\n", items.len()).expect("write to a Vec");
                for item in items {
                    item.encode(version, out);
                }
            }
            RespValue::Map(pairs) => {
                if version >= 3 {
                    write!(out, "%{}\r\n", pairs.len()).expect("write to a Vec");
                } else {
                    write!(out, "*{}\r\n", pairs.len() * 2).expect("write to a Vec");
                }
                for (key, value) in pairs {
                    key.encode(version, out);
                    value.encode(version, out);
                }
            }
            RespValue::Verbatim(text) if version >= 3 => {
                write!(out, "={}\r\ntxt:{text}\r\n", text.len() + 4).expect("write to a Vec");
            }
            RespValue::Verbatim(text) => RespValue::bulk(text.clone()).encode(version, out),
        }
    }
}

/// What the parser found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Parsed {
    /// A whole command (its arguments) and the bytes it took.
    Command(Vec<Bytes>, usize),
    /// An empty inline line to skip.
    Skip(usize),
    /// More bytes are needed.
    Incomplete,
    /// The stream is broken: send this error and close (as Redis does).
    Broken(String),
}

/// Parses one command. `max_args` bounds a multibulk's length and
/// `max_bulk_bytes` each argument: a hostile length costs nothing.
pub fn parse_command(buffer: &[u8], max_args: usize, max_bulk_bytes: usize) -> Parsed {
    if buffer.is_empty() {
        return Parsed::Incomplete;
    }
    if buffer[0] != b'*' {
        return parse_inline(buffer);
    }
    let Some((count, mut at)) = read_line_number(buffer, 1) else {
        return incomplete_or(buffer, 1, "invalid multibulk length");
    };
    let Ok(count) = count else {
        return Parsed::Broken("ERR Protocol error: invalid multibulk length".into());
    };
    if count > max_args as i64 {
        return Parsed::Broken(format!(
            "ERR Protocol error: invalid multibulk length (over the limit of {max_args} arguments)"
        ));
    }
    if count <= 0 {
        return Parsed::Skip(at);
    }
    let mut ranges = Vec::with_capacity(count as usize);
    for _ in 0..count {
        match buffer.get(at) {
            None => return Parsed::Incomplete,
            Some(b'$') => {}
            Some(&other) => {
                return Parsed::Broken(format!(
                    "ERR Protocol error: expected '$', got '{}'",
                    other as char
                ));
            }
        }
        let Some((length, data_at)) = read_line_number(buffer, at + 1) else {
            return incomplete_or(buffer, at + 1, "invalid bulk length");
        };
        let length = match length {
            Ok(length) if (0..=max_bulk_bytes as i64).contains(&length) => length as usize,
            Ok(length) if length > max_bulk_bytes as i64 => {
                return Parsed::Broken(format!(
                    "ERR Protocol error: invalid bulk length (over the limit of {max_bulk_bytes} bytes)"
                ));
            }
            _ => return Parsed::Broken("ERR Protocol error: invalid bulk length".into()),
        };
        if buffer.len() < data_at + length + 2 {
            return Parsed::Incomplete;
        }
        if &buffer[data_at + length..data_at + length + 2] != b"\r\n" {
            return Parsed::Broken("ERR Protocol error: bulk string not terminated by CRLF".into());
        }
        ranges.push(data_at..data_at + length);
        at = data_at + length + 2;
    }
    let command = Bytes::copy_from_slice(&buffer[..at]);
    Parsed::Command(
        ranges
            .into_iter()
            .map(|range| command.slice(range))
            .collect(),
        at,
    )
}

/// `Incomplete` if no CRLF is there yet (and the line is short), else broken.
fn incomplete_or(buffer: &[u8], from: usize, what: &str) -> Parsed {
    let rest = &buffer[from.min(buffer.len())..];
    if rest.len() > 32 || rest.contains(&b'\n') {
        Parsed::Broken(format!("ERR Protocol error: {what}"))
    } else {
        Parsed::Incomplete
    }
}

/// Reads a decimal number ended by CRLF at `from`. `None`: no CRLF yet.
/// `Some((Err, _))`: not a number.
fn read_line_number(buffer: &[u8], from: usize) -> Option<(Result<i64, ()>, usize)> {
    let rest = buffer.get(from..)?;
    let end = rest.iter().take(32).position(|&b| b == b'\r')?;
    if rest.get(end + 1) != Some(&b'\n') {
        return if rest.len() > end + 1 {
            Some((Err(()), from + end + 2))
        } else {
            None
        };
    }
    let number = std::str::from_utf8(&rest[..end])
        .ok()
        .and_then(|text| text.parse::<i64>().ok())
        .ok_or(());
    Some((number, from + end + 2))
}

fn parse_inline(buffer: &[u8]) -> Parsed {
    let Some(end) = buffer.iter().position(|&b| b == b'\n') else {
        if buffer.len() > RESP_MAX_INLINE_BYTES {
            return Parsed::Broken("ERR Protocol error: too big inline request".into());
        }
        return Parsed::Incomplete;
    };
    if end > RESP_MAX_INLINE_BYTES {
        return Parsed::Broken("ERR Protocol error: too big inline request".into());
    }
    let line = &buffer[..end];
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(text) = std::str::from_utf8(line) else {
        return Parsed::Broken("ERR Protocol error: inline request is not UTF-8".into());
    };
    let Some(words) = shlex::split(text) else {
        return Parsed::Broken("ERR Protocol error: unbalanced quotes in request".into());
    };
    if words.is_empty() {
        return Parsed::Skip(end + 1);
    }
    Parsed::Command(words.into_iter().map(Bytes::from).collect(), end + 1)
}

/// How a remote single-key reply becomes a RESP value.
#[derive(Debug, Clone, Copy)]
enum Finish {
    /// GET.
    Value,
    /// SET without GET: OK or null.
    SetOk,
    /// SETNX: 1 or 0.
    SetNx,
    /// A count (MSETNX: 1 or 0).
    Count,
    /// An `Update`.
    Update(UpdateKind),
    /// TTL (seconds) or PTTL (ms).
    Ttl { millis: bool },
    /// STRLEN.
    Length,
    /// EXPIRETIME (seconds) or PEXPIRETIME (ms).
    ExpireTime { millis: bool },
    /// GETRANGE: the bytes from `start` to `end`, both inclusive, negative
    /// counting from the end.
    Range { start: i64, end: i64 },
}

#[derive(Debug, Clone, Copy)]
enum UpdateKind {
    Integer,
    Length,
    Previous,
    /// SET ... GET: the old value, or an error if a condition failed is not
    /// distinguished by Redis (it returns the old value either way).
    SetGet,
    Existed,
    /// RENAME: OK once done.
    Ok,
}

enum Pending {
    Ready(RespValue),
    /// A one-shard request handed to the pipeline, answered as `finish`
    /// says for the session it ran in.
    Shard {
        ticket: Ticket,
        finish: Finish,
        session: Session,
    },
}

/// Serves one RESP client until it disconnects or sends QUIT.
pub async fn serve_resp_connection(
    context: Rc<CoreContext>,
    stream: ClientStream,
    connection_id: u64,
    drain: StopSignal,
) {
    let peer = stream.peer_addr().ok();
    let session = Session::open(&context.tenants, DEFAULT_TENANT, false)
        .expect("the default tenant always exists");
    let mut connection = RespConnection {
        context,
        stream,
        input: ReadBuffer::new(),
        output: Vec::new(),
        session,
        protocol: 2,
        client_name: None,
        pipeline: Pipeline::default(),
        connection_id,
        connected_at: std::time::Instant::now(),
        peer: peer.map(|p| p.to_string()).unwrap_or_default(),
        drain: ConnectionDrain::new(drain),
    };
    if let Err(error) = connection.run().await {
        tracing::debug!(?peer, %error, "RESP connection ended with an I/O error");
    }
}

struct RespConnection {
    /// Tripped when the node begins a graceful shutdown: the connection
    /// answers what it has read, then closes (RESP2 has no way to say why).
    drain: ConnectionDrain,
    context: Rc<CoreContext>,
    stream: ClientStream,
    input: ReadBuffer,
    output: Vec<u8>,
    session: Session,
    protocol: u8,
    client_name: Option<String>,
    pipeline: Pipeline,
    connection_id: u64,
    /// When the connection was accepted (it must authenticate within
    /// [`AUTHENTICATION_TIMEOUT`] of it, when authentication is on).
    connected_at: std::time::Instant,
    peer: String,
}

/// What a command asks of the connection besides its answer.
enum After {
    Continue,
    Close,
}

impl RespConnection {
    async fn run(&mut self) -> std::io::Result<()> {
        let limits = self.context.limits.clone();
        let max_args = 2 * limits.max_keys_per_request + 16;
        let max_bulk_bytes = limits.max_frame_bytes;
        let max_command_bytes = limits.max_frame_bytes + RESP_MAX_INLINE_BYTES;
        let mut batch: Vec<Pending> = Vec::new();
        loop {
            // Latency is measured from the read that completed the batch.
            let started = std::time::Instant::now();
            let mut after = After::Continue;
            // A sampled pipeline's root span (`crate::telemetry`): named
            // by its first command; arguments never enter a span.
            let mut trace: Option<tracing::Span> = None;
            loop {
                let (max_args, max_bulk_bytes, max_pipelined) = match self.is_stranger() {
                    true => (
                        UNAUTHENTICATED_MAX_ARGS,
                        UNAUTHENTICATED_MAX_BULK_BYTES,
                        UNAUTHENTICATED_MAX_PIPELINED,
                    ),
                    false => (max_args, max_bulk_bytes, RESP_MAX_PIPELINED_COMMANDS),
                };
                if batch.len() >= max_pipelined {
                    break;
                }
                match parse_command(self.input.unread(), max_args, max_bulk_bytes) {
                    Parsed::Command(args, used) => {
                        self.input.consume(used);
                        if batch.is_empty() && crate::telemetry::start_trace() {
                            let name = args.first().map_or(String::new(), |name| {
                                String::from_utf8_lossy(&name[..name.len().min(32)])
                                    .to_ascii_uppercase()
                            });
                            trace = Some(tracing::info_span!(
                                parent: None,
                                "resp.pipeline",
                                command = traced_command_name(&name),
                                commands = tracing::field::Empty,
                                connection = self.connection_id
                            ));
                        }
                        let (pending, then) =
                            crate::telemetry::within(trace.as_ref(), self.plan(args)).await;
                        batch.push(pending);
                        if let After::Close = then {
                            after = After::Close;
                            break;
                        }
                    }
                    Parsed::Skip(used) => self.input.consume(used),
                    Parsed::Incomplete => break,
                    Parsed::Broken(message) => {
                        batch.push(Pending::Ready(RespValue::Error(message)));
                        after = After::Close;
                        break;
                    }
                }
            }
            if !batch.is_empty() {
                crate::telemetry::within(trace.as_ref(), self.pipeline.settle(&self.context)).await;
                let answered = batch.len() as u64;
                if let Some(trace) = &trace {
                    trace.record("commands", answered);
                }
                for pending in batch.drain(..) {
                    let value = match pending {
                        Pending::Ready(value) => value,
                        Pending::Shard {
                            ticket,
                            finish,
                            session,
                        } => match crate::telemetry::within(
                            trace.as_ref(),
                            self.pipeline.reply(ticket),
                        )
                        .await
                        {
                            Ok(reply) => finish_reply(finish, reply, &session),
                            Err(error) => protocol_error(&error),
                        },
                    };
                    if let RespValue::Error(text) = &value {
                        // By its Redis error prefix (ERR, WRONGTYPE, NOAUTH...),
                        // as Redis's INFO errorstats counts them.
                        let prefix = text.split(' ').next().unwrap_or_default();
                        self.context.stats.count_resp_error(prefix);
                    }
                    value.encode(self.protocol, &mut self.output);
                }
                self.pipeline.clear();
                self.stream.write_all(&self.output).await?;
                self.context
                    .stats
                    .record_answers(self.session.tenant, answered, started);
                self.output.clear();
                if let After::Close = after {
                    return Ok(());
                }
                continue;
            }
            // The parser bounds every length it reads, so a command can only
            // grow this large by actually sending its bytes.
            if self.input.unread().len() > max_command_bytes {
                let error = RespValue::error(format!(
                    "ERR Protocol error: command over {max_command_bytes} bytes"
                ));
                error.encode(self.protocol, &mut self.output);
                self.stream.write_all(&self.output).await?;
                return Ok(());
            }
            let idle_limit = self
                .is_stranger()
                .then(|| AUTHENTICATION_TIMEOUT.saturating_sub(self.connected_at.elapsed()));
            match self
                .input
                .fill_within(&mut self.stream, 1, &mut self.drain, idle_limit)
                .await?
            {
                Filled::Bytes(0) => return Ok(()),
                Filled::Bytes(_) => {}
                Filled::Draining => return close_lingering(&mut self.stream).await,
                // Not authenticated in time: closed without a word (as
                // Redis's `timeout`).
                Filled::Idle => return Ok(()),
            }
        }
    }

    fn single(
        &mut self,
        key: Bytes,
        request: impl FnOnce(SlotKey) -> ShardRequest,
        finish: Finish,
    ) -> Pending {
        if let Some(error) = self.key_error(&key) {
            return Pending::Ready(error);
        }
        let slot = hash_slot(&self.session.tenant_name, &key);
        let request = request(SlotKey { slot, key });
        self.send_to_shard(slot, request, finish)
    }

    /// Sends `request`, whose keys all live on the shard of `slot`, on its
    /// way: answered inline or joined to that shard's batch.
    fn send_to_shard(&mut self, slot: u16, request: ShardRequest, finish: Finish) -> Pending {
        let ticket = self
            .pipeline
            .submit(&self.context, &self.session, slot, request);
        Pending::Shard {
            ticket,
            finish,
            session: self.session.clone(),
        }
    }

    fn key_error(&self, key: &Bytes) -> Option<RespValue> {
        (key.len() > self.context.limits.max_key_bytes).then(|| {
            RespValue::error(format!(
                "ERR key of {} bytes exceeds max_key_bytes {}",
                key.len(),
                self.context.limits.max_key_bytes
            ))
        })
    }

    /// A command whose keys must share one shard (MSETNX, RENAME, COPY),
    /// built into its shard request by the coordinator (as for the
    /// flatbuffers front end): Redis Cluster's CROSSSLOT error when the keys
    /// span shards (cross-shard atomicity needs transactions).
    fn one_shard(&mut self, keys: &[&Bytes], command: Command, finish: Finish) -> Pending {
        if let Some(error) = keys.iter().find_map(|key| self.key_error(key)) {
            return Pending::Ready(error);
        }
        match one_shard_request(&self.context, &self.session, command) {
            Ok(Ok((slot, request))) => self.send_to_shard(slot, request, finish),
            Ok(Err(error)) => Pending::Ready(protocol_error(&error)),
            Err(command) => unreachable!("{command:?} runs on one shard"),
        }
    }

    /// MSET's and MSETNX's `key value ...` arguments, checked against the
    /// limits.
    fn key_value_pairs(&self, flat: Vec<Bytes>) -> Result<Vec<(Bytes, Bytes)>, RespValue> {
        if let Some(error) = flat
            .iter()
            .skip(1)
            .step_by(2)
            .find_map(|v| self.value_ok(v))
        {
            return Err(error);
        }
        let max_keys = self.context.limits.max_keys_per_request;
        if flat.len() / 2 > max_keys {
            return Err(too_many_keys(flat.len() / 2, max_keys));
        }
        Ok(flat
            .chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect())
    }

    /// A read of one key, answered as `finish` says (GET, STRLEN, TTL...).
    fn read(&mut self, key: Bytes, finish: Finish) -> (Pending, After) {
        let tenant = self.session.tenant;
        let request = |key| ShardRequest::Get { tenant, key };
        (self.single(key, request, finish), After::Continue)
    }

    /// A read-modify-write command on one key.
    fn update(&mut self, key: Bytes, update: Update, kind: UpdateKind) -> (Pending, After) {
        let tenant = self.session.tenant;
        let request = |key| ShardRequest::Update {
            tenant,
            key,
            update,
        };
        (
            self.single(key, request, Finish::Update(kind)),
            After::Continue,
        )
    }

    fn value_ok(&self, value: &Bytes) -> Option<RespValue> {
        (value.len() > self.context.limits.max_value_bytes).then(|| {
            RespValue::error(format!(
                "ERR value of {} bytes exceeds max_value_bytes {}",
                value.len(),
                self.context.limits.max_value_bytes
            ))
        })
    }

    async fn multi(&mut self, command: Command) -> RespValue {
        self.pipeline.send(&self.context).await;
        match execute_multi(&self.context, &self.session, command).await {
            Ok(reply) => multi_reply(reply),
            Err(error) => protocol_error(&error),
        }
    }

    /// Plans one command: answered now, or sent to a core and answered later.
    async fn plan(&mut self, args: Vec<Bytes>) -> (Pending, After) {
        let raw_name = String::from_utf8_lossy(&args[0]).into_owned();
        let name = raw_name.to_ascii_uppercase();
        let tenant = self.session.tenant;
        let argc = args.len();
        let wrong_arity = || {
            RespValue::error(format!(
                "ERR wrong number of arguments for '{}' command",
                name.to_lowercase()
            ))
        };
        let ready = |value: RespValue| (Pending::Ready(value), After::Continue);
        macro_rules! arity {
            ($ok:expr) => {
                if !$ok {
                    return ready(wrong_arity());
                }
            };
        }
        // A session bound to a tenant deleted since may only re-bind
        // (AUTH, HELLO) or leave.
        if !self.context.tenants.is_live(self.session.tenant)
            && !matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT")
        {
            return ready(RespValue::error(format!(
                "ERR tenant {} was deleted",
                self.session.tenant_name
            )));
        }
        match self.session.admission(&self.context.users) {
            Admission::Admitted => {}
            Admission::NotAuthenticated if matches!(name.as_str(), "AUTH" | "HELLO" | "QUIT") => {}
            Admission::NotAuthenticated => return ready(RespValue::error(NOAUTH)),
            Admission::Revoked => {
                tracing::info!(
                    user = self.session.user_name(),
                    connection = self.connection_id,
                    "closing a connection whose user was deleted, disabled or given a new password"
                );
                return (Pending::Ready(RespValue::error(NOAUTH)), After::Close);
            }
        }
        let mut args = args.into_iter().skip(1);
        let pending = match name.as_str() {
            "PING" => {
                arity!(argc <= 2);
                match args.next() {
                    Some(message) => RespValue::Bulk(message),
                    None => RespValue::Simple("PONG"),
                }
            }
            "ECHO" => {
                arity!(argc == 2);
                RespValue::Bulk(args.next().expect("arity"))
            }
            "QUIT" => return (Pending::Ready(RespValue::Simple("OK")), After::Close),
            "HELLO" => self.hello(args.collect()).await,
            "AUTH" => {
                arity!(argc == 2 || argc == 3);
                let first = args.next().expect("arity");
                match (self.context.users.enabled(), args.next()) {
                    (true, Some(password)) => self.authenticate(&first, &password).await,
                    // `AUTH password`: Redis's user `default`.
                    (true, None) => self.authenticate(b"default", &first).await,
                    (false, _) => self.switch_tenant(&String::from_utf8_lossy(&first), true),
                }
            }
            "ACL" => {
                arity!(argc >= 2);
                crate::frontend::acl::command(&self.context, &self.session, args.collect()).await
            }
            "SELECT" => {
                arity!(argc == 2);
                let index = args.next().expect("arity");
                match std::str::from_utf8(&index)
                    .ok()
                    .and_then(|t| t.parse::<i64>().ok())
                {
                    None => RespValue::error("ERR value is not an integer or out of range"),
                    Some(database) => self.select(database),
                }
            }
            "GET" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                return self.read(key, Finish::Value);
            }
            "STRLEN" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                return self.read(key, Finish::Length);
            }
            "TTL" | "PTTL" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                let finish = Finish::Ttl {
                    millis: name == "PTTL",
                };
                return self.read(key, finish);
            }
            "SET" => {
                arity!(argc >= 3);
                let key = args.next().expect("arity");
                let value = args.next().expect("arity");
                if let Some(error) = self.value_ok(&value) {
                    return ready(error);
                }
                match parse_set_options(args.collect()) {
                    Err(error) => error,
                    Ok((options, true)) => {
                        return self.update(
                            key,
                            Update::SetAndGet { value, options },
                            UpdateKind::SetGet,
                        );
                    }
                    Ok((options, false)) => {
                        let request = |key| ShardRequest::Set {
                            tenant,
                            key,
                            value,
                            options,
                        };
                        return (self.single(key, request, Finish::SetOk), After::Continue);
                    }
                }
            }
            "SETNX" => {
                arity!(argc == 3);
                let key = args.next().expect("arity");
                let value = args.next().expect("arity");
                if let Some(error) = self.value_ok(&value) {
                    return ready(error);
                }
                let options = SetOptions {
                    condition: WriteCondition::IfAbsent,
                    expiry: Expiry::Never,
                };
                return (
                    self.single(
                        key,
                        |key| ShardRequest::Set {
                            tenant,
                            key,
                            value,
                            options,
                        },
                        Finish::SetNx,
                    ),
                    After::Continue,
                );
            }
            "GETDEL" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                let update = Update::GetDelete;
                return self.update(key, update, UpdateKind::Previous);
            }
            "INCR" | "DECR" | "INCRBY" | "DECRBY" => {
                let by_argument = name.ends_with("BY");
                arity!(argc == if by_argument { 3 } else { 2 });
                let key = args.next().expect("arity");
                let delta = if by_argument {
                    match args.next().and_then(|d| {
                        std::str::from_utf8(&d)
                            .ok()
                            .and_then(|t| t.parse::<i64>().ok())
                    }) {
                        Some(delta) => delta,
                        None => {
                            return ready(RespValue::error(
                                "ERR value is not an integer or out of range",
                            ))
                        }
                    }
                } else {
                    1
                };
                let delta = if name.starts_with("DECR") {
                    match delta.checked_neg() {
                        Some(delta) => delta,
                        None => return ready(RespValue::error("ERR decrement would overflow")),
                    }
                } else {
                    delta
                };
                let update = Update::IncrBy(delta);
                return self.update(key, update, UpdateKind::Integer);
            }
            "APPEND" => {
                arity!(argc == 3);
                let key = args.next().expect("arity");
                let suffix = args.next().expect("arity");
                if let Some(error) = self.value_ok(&suffix) {
                    return ready(error);
                }
                let update = Update::Append(suffix);
                return self.update(key, update, UpdateKind::Length);
            }
            "PERSIST" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                let update = Update::Expire {
                    at_ms: None,
                    condition: ExpireCondition::Always,
                };
                return self.update(key, update, UpdateKind::Existed);
            }
            "EXPIRE" | "PEXPIRE" | "EXPIREAT" | "PEXPIREAT" => {
                arity!(argc >= 3);
                let key = args.next().expect("arity");
                let amount = args.next().expect("arity");
                let Some(amount) = parse_i64(&amount) else {
                    return ready(RespValue::error(
                        "ERR value is not an integer or out of range",
                    ));
                };
                let condition = match parse_expire_condition(args.collect()) {
                    Ok(condition) => condition,
                    Err(error) => return ready(error),
                };
                let millis = if name.starts_with('P') {
                    Some(amount)
                } else {
                    amount.checked_mul(1000)
                };
                let base = if name.ends_with("AT") {
                    0
                } else {
                    now_ms() as i64
                };
                let Some(at) = millis.and_then(|ms| ms.checked_add(base)) else {
                    return ready(RespValue::error(format!(
                        "ERR invalid expire time in '{}' command",
                        name.to_lowercase()
                    )));
                };
                // A time in the past deletes the key, as in Redis.
                let update = Update::Expire {
                    at_ms: Some(at.max(0) as u64),
                    condition,
                };
                return self.update(key, update, UpdateKind::Existed);
            }
            "EXPIRETIME" | "PEXPIRETIME" => {
                arity!(argc == 2);
                let key = args.next().expect("arity");
                let finish = Finish::ExpireTime {
                    millis: name == "PEXPIRETIME",
                };
                return self.read(key, finish);
            }
            "GETSET" => {
                arity!(argc == 3);
                let key = args.next().expect("arity");
                let value = args.next().expect("arity");
                if let Some(error) = self.value_ok(&value) {
                    return ready(error);
                }
                let update = Update::SetAndGet {
                    value,
                    options: SetOptions::default(),
                };
                return self.update(key, update, UpdateKind::Previous);
            }
            "SETEX" | "PSETEX" => {
                arity!(argc == 4);
                let key = args.next().expect("arity");
                let amount = args.next().expect("arity");
                let value = args.next().expect("arity");
                let Some(amount) = parse_i64(&amount) else {
                    return ready(RespValue::error(
                        "ERR value is not an integer or out of range",
                    ));
                };
                let millis = if name == "SETEX" {
                    amount.checked_mul(1000)
                } else {
                    Some(amount)
                };
                let at = millis
                    .filter(|ms| *ms > 0)
                    .and_then(|ms| ms.checked_add(now_ms() as i64));
                let Some(at) = at else {
                    return ready(RespValue::error(format!(
                        "ERR invalid expire time in '{}' command",
                        name.to_lowercase()
                    )));
                };
                if let Some(error) = self.value_ok(&value) {
                    return ready(error);
                }
                let options = SetOptions {
                    condition: WriteCondition::Always,
                    expiry: Expiry::AtMs(at as u64),
                };
                let request = |key| ShardRequest::Set {
                    tenant,
                    key,
                    value,
                    options,
                };
                return (self.single(key, request, Finish::SetOk), After::Continue);
            }
            "GETEX" => {
                arity!(argc >= 2);
                let key = args.next().expect("arity");
                let rest: Vec<Bytes> = args.collect();
                if rest.is_empty() {
                    return self.read(key, Finish::Value);
                }
                let at_ms = match parse_getex_expiry(rest) {
                    Ok(at_ms) => at_ms,
                    Err(error) => return ready(error),
                };
                return self.update(key, Update::GetAndExpire(at_ms), UpdateKind::Previous);
            }
            "GETRANGE" => {
                arity!(argc == 4);
                let key = args.next().expect("arity");
                let (Some(start), Some(end)) = (
                    parse_i64(&args.next().expect("arity")),
                    parse_i64(&args.next().expect("arity")),
                ) else {
                    return ready(RespValue::error(
                        "ERR value is not an integer or out of range",
                    ));
                };
                let finish = Finish::Range { start, end };
                return self.read(key, finish);
            }
            "SETRANGE" => {
                arity!(argc == 4);
                let key = args.next().expect("arity");
                let Some(offset) = parse_i64(&args.next().expect("arity")) else {
                    return ready(RespValue::error(
                        "ERR value is not an integer or out of range",
                    ));
                };
                let bytes = args.next().expect("arity");
                if offset < 0 {
                    return ready(RespValue::error("ERR offset is out of range"));
                }
                let max = self.context.limits.max_value_bytes as u64;
                if (offset as u64).saturating_add(bytes.len() as u64) > max {
                    return ready(RespValue::error(format!(
                        "ERR string exceeds maximum allowed size (max_value_bytes {max})"
                    )));
                }
                let update = Update::SetRange {
                    offset: offset as u64,
                    bytes,
                };
                return self.update(key, update, UpdateKind::Length);
            }
            "INCRBYFLOAT" => {
                arity!(argc == 3);
                let key = args.next().expect("arity");
                let delta = std::str::from_utf8(&args.next().expect("arity"))
                    .ok()
                    .and_then(|text| text.parse::<f64>().ok())
                    .filter(|delta| delta.is_finite());
                let Some(delta) = delta else {
                    return ready(RespValue::error("ERR value is not a valid float"));
                };
                return self.update(key, Update::IncrByFloat(delta), UpdateKind::Previous);
            }
            "TIME" => {
                arity!(argc == 1);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                RespValue::Array(vec![
                    RespValue::bulk(now.as_secs().to_string()),
                    RespValue::bulk(now.subsec_micros().to_string()),
                ])
            }
            "DEL" | "UNLINK" => {
                arity!(argc >= 2);
                self.multi_keys(args.collect(), |keys| Command::Delete { keys })
                    .await
            }
            "EXISTS" => {
                arity!(argc >= 2);
                self.multi_keys(args.collect(), |keys| Command::Exists { keys })
                    .await
            }
            "MGET" => {
                arity!(argc >= 2);
                self.multi_keys(args.collect(), |keys| Command::MGet { keys })
                    .await
            }
            "MSET" => {
                arity!(argc >= 3 && argc % 2 == 1);
                let entries = match self.key_value_pairs(args.collect()) {
                    Ok(entries) => entries,
                    Err(error) => return ready(error),
                };
                match self.multi(Command::MSet { entries }).await {
                    RespValue::Error(error) => RespValue::Error(error),
                    _ => RespValue::Simple("OK"),
                }
            }
            "MSETNX" => {
                arity!(argc >= 3 && argc % 2 == 1);
                let entries = match self.key_value_pairs(args.collect()) {
                    Ok(entries) => entries,
                    Err(error) => return ready(error),
                };
                let keys: Vec<Bytes> = entries.iter().map(|(key, _)| key.clone()).collect();
                let keys: Vec<&Bytes> = keys.iter().collect();
                let command = Command::MSetIfAbsent { entries };
                return (
                    self.one_shard(&keys, command, Finish::Count),
                    After::Continue,
                );
            }
            "RENAME" | "RENAMENX" => {
                arity!(argc == 3);
                let from = args.next().expect("arity");
                let to = args.next().expect("arity");
                let (how, finish) = if name == "RENAME" {
                    (MoveKind::Rename, Finish::Update(UpdateKind::Ok))
                } else {
                    (
                        MoveKind::RenameIfAbsent,
                        Finish::Update(UpdateKind::Existed),
                    )
                };
                let command = Command::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    how,
                };
                return (
                    self.one_shard(&[&from, &to], command, finish),
                    After::Continue,
                );
            }
            "COPY" => {
                arity!(argc >= 3);
                let from = args.next().expect("arity");
                let to = args.next().expect("arity");
                let mut replace = false;
                while let Some(option) = args.next() {
                    match option.to_ascii_uppercase().as_slice() {
                        b"REPLACE" => replace = true,
                        // Only the connection's own database is reachable.
                        b"DB" => match args.next().as_deref().and_then(parse_i64) {
                            Some(n) if n == i64::from(database_of(tenant)) => {}
                            Some(_) => {
                                return ready(RespValue::error(
                                    "ERR COPY to another database is not supported (its key lives in another slot, docs/redis-compatibility.md)",
                                ))
                            }
                            None => {
                                return ready(RespValue::error(
                                    "ERR value is not an integer or out of range",
                                ))
                            }
                        },
                        _ => return ready(RespValue::error("ERR syntax error")),
                    }
                }
                let command = Command::Rename {
                    from: from.clone(),
                    to: to.clone(),
                    how: MoveKind::Copy { replace },
                };
                let finish = Finish::Update(UpdateKind::Existed);
                return (
                    self.one_shard(&[&from, &to], command, finish),
                    After::Continue,
                );
            }
            "RANDOMKEY" => {
                arity!(argc == 1);
                self.random_key().await
            }
            "KEYS" => {
                arity!(argc == 2);
                self.multi(Command::Keys {
                    pattern: args.next().expect("arity"),
                })
                .await
            }
            "SCAN" => {
                arity!(argc >= 2);
                match self.parse_scan(args.collect()) {
                    Ok(command) => self.multi(command).await,
                    Err(error) => error,
                }
            }
            "DBSIZE" => {
                arity!(argc == 1);
                self.multi(Command::Count).await
            }
            // FLUSHDB empties the selected database; FLUSHALL every database
            // of the connection's tenant, never another tenant's.
            "FLUSHDB" | "FLUSHALL" => {
                arity!(argc <= 2);
                if let Some(mode) = args.next() {
                    if !mode.eq_ignore_ascii_case(b"ASYNC") && !mode.eq_ignore_ascii_case(b"SYNC") {
                        return ready(RespValue::error("ERR syntax error"));
                    }
                }
                if let Err(refused) = self.session.requires(Access::Admin) {
                    return ready(protocol_error(&refused));
                }
                self.pipeline.send(&self.context).await;
                let keyspaces = if name == "FLUSHALL" {
                    self.databases().into_iter().map(|(_, id)| id).collect()
                } else {
                    vec![tenant]
                };
                match crate::coord::multi::flush_keyspaces(&self.context, &keyspaces).await {
                    Ok(_) => RespValue::Simple("OK"),
                    Err(error) => protocol_error(&error),
                }
            }
            "SAVE" | "BGSAVE" => {
                arity!(argc <= 2);
                // A snapshot is of the whole node, every tenant's keys.
                if !self.session.may_administer(&self.context.users) {
                    return ready(RespValue::error(format!(
                        "NOPERM User {} has no permissions to run the '{}' command",
                        self.session.user_name(),
                        name.to_lowercase()
                    )));
                }
                match self.multi(Command::Snapshot).await {
                    RespValue::Error(error) => RespValue::Error(error),
                    _ if name == "BGSAVE" => RespValue::Simple("Background saving started"),
                    _ => RespValue::Simple("OK"),
                }
            }
            "INFO" => RespValue::Verbatim(self.info(args.collect()).await),
            "COMMAND" => match args
                .next()
                .map(|sub| String::from_utf8_lossy(&sub).to_ascii_uppercase())
            {
                Some(sub) if sub == "COUNT" => RespValue::Integer(0),
                // redis-cli asks for command docs to show hints: none here.
                _ => RespValue::Array(Vec::new()),
            },
            "CLIENT" => self.client_command(args.collect()),
            // Redis Cluster's opt-in to reads from a replica: in cluster
            // mode this connection's reads answer from this node's replica
            // without the read index (they may lag the leader), as the
            // flatbuffers Hello's `read_consistency = Stale`. READWRITE
            // returns to linearizable reads. A standalone node has one copy.
            "READONLY" | "READWRITE" => {
                arity!(argc == 1);
                self.session.stale_reads = name == "READONLY";
                RespValue::Simple("OK")
            }
            _ => {
                let mut message = format!(
                    "ERR unknown command '{}', with args beginning with: ",
                    truncate(&raw_name, 128)
                );
                for arg in args {
                    message.push_str(&format!(
                        "'{}' ",
                        truncate(&String::from_utf8_lossy(&arg), 128)
                    ));
                }
                RespValue::Error(message)
            }
        };
        ready(pending)
    }

    async fn multi_keys(
        &mut self,
        keys: Vec<Bytes>,
        command: impl FnOnce(Vec<Bytes>) -> Command,
    ) -> RespValue {
        let limits = &self.context.limits;
        if keys.len() > limits.max_keys_per_request {
            return too_many_keys(keys.len(), limits.max_keys_per_request);
        }
        if let Some(key) = keys.iter().find(|key| key.len() > limits.max_key_bytes) {
            return RespValue::error(format!(
                "ERR key of {} bytes exceeds max_key_bytes {}",
                key.len(),
                limits.max_key_bytes
            ));
        }
        self.multi(command(keys)).await
    }

    fn parse_scan(&self, args: Vec<Bytes>) -> Result<Command, RespValue> {
        let syntax = || RespValue::error("ERR syntax error");
        let cursor = std::str::from_utf8(&args[0])
            .ok()
            .and_then(|text| text.parse::<u64>().ok())
            .filter(|&cursor| cursor < SLOT_COUNT as u64)
            .ok_or_else(|| RespValue::error("ERR invalid cursor"))?;
        let mut pattern = Bytes::new();
        let mut count = self.context.limits.scan_count_default;
        let mut rest = args.into_iter().skip(1);
        while let Some(option) = rest.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"MATCH" => pattern = rest.next().ok_or_else(syntax)?,
                b"COUNT" => {
                    let value = rest.next().ok_or_else(syntax)?;
                    count = std::str::from_utf8(&value)
                        .ok()
                        .and_then(|text| text.parse::<usize>().ok())
                        .ok_or_else(|| {
                            RespValue::error("ERR value is not an integer or out of range")
                        })?;
                    if count == 0 {
                        return Err(syntax());
                    }
                    count = count.min(self.context.limits.scan_count_max);
                }
                // Every value is a string.
                b"TYPE" => {
                    let kind = rest.next().ok_or_else(syntax)?;
                    if !kind.eq_ignore_ascii_case(b"string") {
                        pattern = Bytes::from_static(b"\x00no-key-matches\x00[");
                    }
                }
                _ => return Err(syntax()),
            }
        }
        if pattern.as_ref() == b"*" {
            pattern = Bytes::new();
        }
        Ok(Command::Scan {
            cursor: cursor as u32,
            prefix: Bytes::new(),
            pattern,
            count,
        })
    }

    /// SELECT: database `database` of the connection's tenant.
    fn select(&mut self, database: i64) -> RespValue {
        let owner = quota_owner(self.session.tenant);
        let registry = self.context.tenants.get();
        let found = u8::try_from(database)
            .ok()
            .and_then(|database| registry.database(owner, database));
        match found {
            Some(keyspace) => self.switch_tenant(&keyspace.name, false),
            None => RespValue::error("ERR DB index is out of range"),
        }
    }

    /// Every database of the connection's tenant: (number, keyspace id).
    fn databases(&self) -> Vec<(u8, TenantId)> {
        let owner = quota_owner(self.session.tenant);
        let registry = self.context.tenants.get();
        (0..registry.databases())
            .filter_map(|database| registry.database(owner, u8::try_from(database).ok()?))
            .map(|keyspace| (database_of(keyspace.id), keyspace.id))
            .collect()
    }

    /// Whether the connection has not authenticated on a node that
    /// requires it (small commands, the authentication deadline).
    fn is_stranger(&self) -> bool {
        self.context.users.enabled() && self.session.user.is_none()
    }

    /// Checks `user`'s `password` (authentication on) and binds the
    /// connection to the user on success.
    async fn authenticate(&mut self, user: &[u8], password: &[u8]) -> RespValue {
        let users = &self.context.users;
        let generation = users.generation();
        let user = match authenticate(users, user, password).await {
            Ok(Some(user)) => user,
            Ok(None) => return RespValue::error(WRONGPASS),
            Err(busy) => return RespValue::error(format!("ERR {busy}")),
        };
        match Session::for_user(&self.context.tenants, &user, generation, false) {
            Ok(session) => {
                self.session = session;
                RespValue::Simple("OK")
            }
            Err(error) => RespValue::error(format!(
                "ERR user {:?} acts for tenant {:?}, which this node does not define ({})",
                user.name, user.tenant, error.message
            )),
        }
    }

    fn switch_tenant(&mut self, name: &str, from_auth: bool) -> RespValue {
        match Session::open(&self.context.tenants, name, false) {
            Ok(mut session) => {
                // SELECT keeps the connection's user (AUTH without
                // authentication has none).
                session.user = self.session.user.take();
                session.stale_reads = self.session.stale_reads;
                self.session = session;
                RespValue::Simple("OK")
            }
            Err(_) if from_auth => {
                RespValue::error("WRONGPASS invalid username-password pair or user is disabled.")
            }
            Err(_) => RespValue::error("ERR DB index is out of range"),
        }
    }

    /// HELLO: every option is parsed first, then the AUTH (if any) runs,
    /// and only once it succeeded do the protocol and the name change (as
    /// Redis: a failed HELLO changes nothing).
    async fn hello(&mut self, args: Vec<Bytes>) -> RespValue {
        let mut args = args.into_iter();
        let mut protocol = None;
        if let Some(version) = args.next() {
            match std::str::from_utf8(&version)
                .ok()
                .and_then(|t| t.parse::<u8>().ok())
            {
                Some(version @ (2 | 3)) => protocol = Some(version),
                Some(_) => return RespValue::error("NOPROTO unsupported protocol version"),
                None => {
                    return RespValue::error(
                        "ERR Protocol version is not an integer or out of range",
                    )
                }
            }
        }
        let (mut credentials, mut name) = (None, None);
        while let Some(option) = args.next() {
            match option.to_ascii_uppercase().as_slice() {
                b"AUTH" => {
                    let (Some(user), Some(password)) = (args.next(), args.next()) else {
                        return RespValue::error("ERR Syntax error in HELLO option 'auth'");
                    };
                    credentials = Some((user, password));
                }
                b"SETNAME" => {
                    let Some(given) = args.next() else {
                        return RespValue::error("ERR Syntax error in HELLO option 'setname'");
                    };
                    name = Some(String::from_utf8_lossy(&given).into_owned());
                }
                other => {
                    return RespValue::error(format!(
                        "ERR Syntax error in HELLO option '{}'",
                        String::from_utf8_lossy(other).to_lowercase()
                    ))
                }
            }
        }
        match credentials {
            Some((user, password)) => {
                let reply = match self.context.users.enabled() {
                    true => self.authenticate(&user, &password).await,
                    false => self.switch_tenant(&String::from_utf8_lossy(&user), true),
                };
                if let RespValue::Error(_) = reply {
                    return reply;
                }
            }
            None if self.session.admission(&self.context.users) == Admission::NotAuthenticated => {
                return RespValue::error(
                    "NOAUTH HELLO must be called with the client already authenticated, \
                     otherwise the HELLO <proto> AUTH <user> <pass> option can be used to \
                     authenticate the client and select the RESP protocol version at the same \
                     time",
                );
            }
            None => {}
        }
        if let Some(protocol) = protocol {
            self.protocol = protocol;
        }
        if name.is_some() {
            self.client_name = name;
        }
        RespValue::Map(vec![
            (RespValue::bulk("server"), RespValue::bulk("tinkerdb")),
            (
                RespValue::bulk("version"),
                RespValue::bulk(env!("CARGO_PKG_VERSION")),
            ),
            (
                RespValue::bulk("proto"),
                RespValue::Integer(i64::from(self.protocol)),
            ),
            (
                RespValue::bulk("id"),
                RespValue::Integer(self.connection_id as i64),
            ),
            (RespValue::bulk("mode"), RespValue::bulk("standalone")),
            (RespValue::bulk("role"), RespValue::bulk("master")),
            (RespValue::bulk("modules"), RespValue::Array(Vec::new())),
        ])
    }

    fn client_command(&mut self, args: Vec<Bytes>) -> RespValue {
        let sub = args
            .first()
            .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
        match (sub.as_deref(), args.len()) {
            (Some("SETNAME"), 2) => {
                let name = String::from_utf8_lossy(&args[1]).into_owned();
                if name.contains(' ') || name.contains('\n') {
                    return RespValue::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    );
                }
                self.client_name = (!name.is_empty()).then_some(name);
                RespValue::Simple("OK")
            }
            (Some("GETNAME"), 1) => match &self.client_name {
                Some(name) => RespValue::bulk(name.clone()),
                None => RespValue::Null,
            },
            (Some("ID"), 1) => RespValue::Integer(self.connection_id as i64),
            (Some("INFO"), 1) => RespValue::Verbatim(format!(
                "id={} addr={} name={} tenant={} resp={} core={}\n",
                self.connection_id,
                self.peer,
                self.client_name.as_deref().unwrap_or(""),
                self.session.tenant_name,
                self.protocol,
                self.context.core
            )),
            (Some(sub), _) => RespValue::error(format!(
                "ERR unknown subcommand or wrong number of arguments for '{}'. Try CLIENT HELP.",
                sub.to_lowercase()
            )),
            (None, _) => RespValue::error("ERR wrong number of arguments for 'client' command"),
        }
    }

    /// RANDOMKEY: a random key of a random slot. Scans from a random slot,
    /// wrapping once past the last, and takes a random key of the first
    /// slot step that has any; nil when the tenant has none. (Keys of
    /// crowded slots are likelier than keys of sparse ones, as with
    /// Redis's bucket sampling.)
    async fn random_key(&mut self) -> RespValue {
        self.pipeline.send(&self.context).await;
        let mut seed = random_seed(self.connection_id);
        let start = (splitmix(&mut seed) % SLOT_COUNT as u64) as u32;
        let mut cursor = start;
        let mut wrapped = false;
        loop {
            let command = Command::Scan {
                cursor,
                prefix: Bytes::new(),
                pattern: Bytes::new(),
                count: 1,
            };
            match execute_multi(&self.context, &self.session, command).await {
                Ok(Reply::Scanned { cursor: next, keys }) => {
                    if !keys.is_empty() {
                        let pick = (splitmix(&mut seed) % keys.len() as u64) as usize;
                        return RespValue::Bulk(keys[pick].clone());
                    }
                    // Cursor 0: past the last slot.
                    if next == 0 {
                        if wrapped || start == 0 {
                            return RespValue::Null;
                        }
                        wrapped = true;
                        cursor = 0;
                    } else {
                        cursor = next as u32;
                    }
                    if wrapped && cursor >= start {
                        return RespValue::Null;
                    }
                }
                Ok(other) => return multi_reply(other),
                Err(error) => return protocol_error(&error),
            }
        }
    }

    /// INFO [section ...]: Redis's sections `server`, `clients`, `memory`,
    /// `persistence`, `stats`, `replication`, `cpu` and `keyspace`;
    /// `default` (none given), `all` and `everything` select them all.
    /// Unknown sections are left out, as in Redis. Counters are this
    /// core's (the connection's), as the node's are in `GET /v1/stats`.
    async fn info(&mut self, sections: Vec<Bytes>) -> String {
        let wanted: Vec<String> = sections
            .iter()
            .map(|section| String::from_utf8_lossy(section).to_ascii_lowercase())
            .collect();
        let every = wanted.is_empty()
            || wanted
                .iter()
                .any(|s| matches!(s.as_str(), "default" | "all" | "everything"));
        let want = |section: &str| every || wanted.iter().any(|s| s == section);
        let mut text = String::new();
        let mut section = |name: &str, fields: Vec<(&str, String)>| {
            if !text.is_empty() {
                text.push_str("\r\n");
            }
            text.push_str(&format!("# {name}\r\n"));
            for (field, value) in fields {
                text.push_str(&format!("{field}:{value}\r\n"));
            }
        };
        let context = self.context.clone();
        let stats = &context.stats;
        let cluster = context.replication.get().is_some();
        if want("server") {
            section(
                "Server",
                vec![
                    ("redis_version", "7.0.0".into()),
                    ("tinkerdb_version", env!("CARGO_PKG_VERSION").into()),
                    (
                        "redis_mode",
                        if cluster { "cluster" } else { "standalone" }.into(),
                    ),
                    ("os", std::env::consts::OS.into()),
                    ("arch_bits", "64".into()),
                    ("multiplexing_api", "io_uring".into()),
                    ("process_id", std::process::id().to_string()),
                    (
                        "tcp_port",
                        self.stream
                            .local_addr()
                            .map(|a| a.port())
                            .unwrap_or(0)
                            .to_string(),
                    ),
                    ("core", context.core.to_string()),
                    ("cores", context.slot_map.cores().to_string()),
                ],
            );
        }
        if want("clients") {
            section(
                "Clients",
                vec![(
                    "connected_clients",
                    stats.connections_open.get().to_string(),
                )],
            );
        }
        if want("memory") {
            section(
                "Memory",
                vec![(
                    "used_memory_rss",
                    crate::platform::resident_bytes().to_string(),
                )],
            );
        }
        if want("persistence") {
            let wal = context.wal.as_ref();
            section(
                "Persistence",
                vec![
                    ("loading", "0".into()),
                    (
                        "aof_enabled",
                        u8::from(wal.is_some() || cluster).to_string(),
                    ),
                    (
                        "tinkerdb_wal_durable_index",
                        wal.map_or(0, |wal| wal.durable_index()).to_string(),
                    ),
                    (
                        "tinkerdb_wal_poisoned",
                        u8::from(wal.is_some_and(|wal| wal.poisoned().is_some())).to_string(),
                    ),
                ],
            );
        }
        if want("stats") {
            section(
                "Stats",
                vec![
                    (
                        "total_connections_received",
                        stats.connections_total.get().to_string(),
                    ),
                    (
                        "total_commands_processed",
                        stats.requests_total.get().to_string(),
                    ),
                    ("total_error_replies", stats.errors_sum.get().to_string()),
                ],
            );
        }
        if want("replication") {
            let mut fields = vec![("role", "master".to_string())];
            // This connection's core's first range (a core may host more).
            if let Some(replica) = context.replicas().into_iter().next() {
                let leader = replica.raft.current_leader().await;
                fields.push(("tinkerdb_shard", replica.group.to_string()));
                fields.push((
                    "tinkerdb_shard_leader",
                    leader.map_or_else(|| "none".into(), |id| id.to_string()),
                ));
            }
            section("Replication", fields);
        }
        if want("cpu") {
            let (user, system) = crate::platform::cpu_seconds();
            section(
                "CPU",
                vec![
                    ("used_cpu_user", format!("{user:.6}")),
                    ("used_cpu_sys", format!("{system:.6}")),
                ],
            );
        }
        if want("keyspace") {
            self.pipeline.send(&self.context).await;
            let mut fields = Vec::new();
            for (database, keyspace) in self.databases() {
                let session = Session::open(
                    &self.context.tenants,
                    &self.context.tenants.name_of(keyspace),
                    self.session.stale_reads,
                )
                .expect("a database of the connection's tenant");
                if let Ok(Reply::Count(keys)) =
                    execute_multi(&self.context, &session, Command::Count).await
                {
                    if keys > 0 {
                        fields.push((
                            format!("db{database}"),
                            format!("keys={keys},expires=0,avg_ttl=0"),
                        ));
                    }
                }
            }
            section(
                "Keyspace",
                fields
                    .iter()
                    .map(|(name, value)| (name.as_str(), value.clone()))
                    .collect(),
            );
        }
        text
    }
}

/// A seed for RANDOMKEY: the clock's nanoseconds mixed with the connection.
fn random_seed(connection_id: u64) -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    nanos ^ connection_id.rotate_left(32)
}

/// SplitMix64: a small, fast generator (no cryptographic use).
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Redis's SET options: `[NX|XX] [GET] [EX s|PX ms|EXAT s|PXAT ms|KEEPTTL]`.
fn parse_set_options(options: Vec<Bytes>) -> Result<(SetOptions, bool), RespValue> {
    let syntax = || RespValue::error("ERR syntax error");
    let mut condition = WriteCondition::Always;
    let mut expiry = Expiry::Never;
    let mut expiry_given = false;
    let mut with_get = false;
    let mut options = options.into_iter();
    while let Some(option) = options.next() {
        let option = option.to_ascii_uppercase();
        match option.as_slice() {
            b"NX" if condition == WriteCondition::Always => condition = WriteCondition::IfAbsent,
            b"XX" if condition == WriteCondition::Always => condition = WriteCondition::IfPresent,
            b"GET" => with_get = true,
            b"KEEPTTL" if !expiry_given => {
                expiry = Expiry::Keep;
                expiry_given = true;
            }
            b"EX" | b"PX" | b"EXAT" | b"PXAT" if !expiry_given => {
                let value = options.next().ok_or_else(syntax)?;
                let amount = std::str::from_utf8(&value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or_else(|| {
                        RespValue::error("ERR value is not an integer or out of range")
                    })?;
                let invalid = || RespValue::error("ERR invalid expire time in 'set' command");
                if amount <= 0 {
                    return Err(invalid());
                }
                let at_ms = match option.as_slice() {
                    b"EX" => amount
                        .checked_mul(1000)
                        .and_then(|ms| ms.checked_add(now_ms() as i64)),
                    b"PX" => amount.checked_add(now_ms() as i64),
                    b"EXAT" => amount.checked_mul(1000),
                    _ => Some(amount),
                }
                .ok_or_else(invalid)?;
                expiry = Expiry::AtMs(at_ms as u64);
                expiry_given = true;
            }
            _ => return Err(syntax()),
        }
    }
    Ok((SetOptions { condition, expiry }, with_get))
}

fn storage_error(reason: &str) -> RespValue {
    RespValue::error(format!("ERR storage failed, writes are refused: {reason}"))
}

fn finish_reply(finish: Finish, reply: ShardReply, session: &Session) -> RespValue {
    match (finish, reply) {
        (_, ShardReply::Refused(reason)) => storage_error(&reason),
        (_, ShardReply::Error(error)) => protocol_error(&error),
        (Finish::Value, ShardReply::Value(value)) => {
            value.map_or(RespValue::Null, |read| RespValue::Bulk(read.value))
        }
        (Finish::Length, ShardReply::Value(value)) => {
            RespValue::Integer(value.map_or(0, |read| read.value.len() as i64))
        }
        (Finish::Ttl { millis }, ShardReply::Value(value)) => {
            RespValue::Integer(ttl_of(value.as_ref(), millis))
        }
        (Finish::ExpireTime { millis }, ShardReply::Value(value)) => {
            RespValue::Integer(match value {
                None => -2,
                Some(ValueRead {
                    expires_at_ms: None,
                    ..
                }) => -1,
                Some(ValueRead {
                    expires_at_ms: Some(at),
                    ..
                }) if millis => at as i64,
                Some(ValueRead {
                    expires_at_ms: Some(at),
                    ..
                }) => at.div_ceil(1000) as i64,
            })
        }
        (Finish::Range { start, end }, ShardReply::Value(value)) => {
            let value = value.map(|read| read.value).unwrap_or_default();
            RespValue::Bulk(byte_range(&value, start, end))
        }
        (Finish::SetOk, ShardReply::Written(Ok(outcome))) => {
            if outcome.applied {
                RespValue::Simple("OK")
            } else {
                RespValue::Null
            }
        }
        (Finish::SetNx, ShardReply::Written(Ok(outcome))) => {
            RespValue::Integer(i64::from(outcome.applied))
        }
        (Finish::Count, ShardReply::Count(count)) => RespValue::Integer(count as i64),
        (Finish::SetOk | Finish::SetNx | Finish::Count, ShardReply::Written(Err(error))) => {
            RespValue::error(format!("ERR {}", quota_error(&error, session).message))
        }
        (Finish::Update(UpdateKind::Ok), ShardReply::Updated(Ok(UpdateOutcome::Existed(_)))) => {
            RespValue::Simple("OK")
        }
        (Finish::Update(kind), ShardReply::Updated(result)) => match result {
            Ok(UpdateOutcome::Integer(n)) => RespValue::Integer(n),
            Ok(UpdateOutcome::Length(n)) => RespValue::Integer(n as i64),
            Ok(UpdateOutcome::Previous(previous, _)) => {
                previous.map_or(RespValue::Null, RespValue::Bulk)
            }
            Ok(UpdateOutcome::Existed(existed)) => RespValue::Integer(i64::from(existed)),
            Ok(UpdateOutcome::Value(value)) => RespValue::Bulk(value),
            Err(UpdateError::NotAFloat) => RespValue::error("ERR value is not a valid float"),
            Err(UpdateError::NotFinite) => {
                RespValue::error("ERR increment would produce NaN or Infinity")
            }
            Err(UpdateError::NotAnInteger) => {
                RespValue::error("ERR value is not an integer or out of range")
            }
            Err(UpdateError::Overflow) => {
                RespValue::error("ERR increment or decrement would overflow")
            }
            Err(UpdateError::NoSuchKey) => RespValue::error("ERR no such key"),
            Err(UpdateError::SameObject) => {
                RespValue::error("ERR source and destination objects are the same")
            }
            Err(UpdateError::Quota(error)) => {
                let _ = kind;
                RespValue::error(format!("ERR {}", quota_error(&error, session).message))
            }
        },
        (finish, other) => unreachable!("{finish:?} got the shard reply {other:?}"),
    }
}

/// An integer argument.
fn parse_i64(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.parse().ok()
}

/// Redis 7's EXPIRE options: at most one of NX, XX; GT or LT; NX alone.
fn parse_expire_condition(options: Vec<Bytes>) -> Result<ExpireCondition, RespValue> {
    let (mut nx, mut xx, mut gt, mut lt) = (false, false, false, false);
    for option in options {
        match option.to_ascii_uppercase().as_slice() {
            b"NX" => nx = true,
            b"XX" => xx = true,
            b"GT" => gt = true,
            b"LT" => lt = true,
            _ => {
                return Err(RespValue::error(format!(
                    "ERR Unsupported option {}",
                    truncate(&String::from_utf8_lossy(&option), 128)
                )))
            }
        }
    }
    if nx && (xx || gt || lt) {
        return Err(RespValue::error(
            "ERR NX and XX, GT or LT options at the same time are not compatible",
        ));
    }
    if gt && lt {
        return Err(RespValue::error(
            "ERR GT and LT options at the same time are not compatible",
        ));
    }
    // GT already needs an expiry (none counts as infinitely late), so XX
    // adds nothing to it; LT holds for a key without one unless XX is given.
    Ok(match (nx, xx, gt, lt) {
        (true, ..) => ExpireCondition::IfNone,
        (_, _, true, _) => ExpireCondition::IfLater,
        (_, true, _, true) => ExpireCondition::IfSomeAndEarlier,
        (_, _, _, true) => ExpireCondition::IfEarlier,
        (_, true, ..) => ExpireCondition::IfSome,
        _ => ExpireCondition::Always,
    })
}

/// GETEX's option: `EX s|PX ms|EXAT s|PXAT ms|PERSIST`; the new expiry.
fn parse_getex_expiry(options: Vec<Bytes>) -> Result<Option<u64>, RespValue> {
    let syntax = || RespValue::error("ERR syntax error");
    let mut options = options.into_iter();
    let option = options.next().ok_or_else(syntax)?.to_ascii_uppercase();
    if option.as_slice() == b"PERSIST" {
        return match options.next() {
            None => Ok(None),
            Some(_) => Err(syntax()),
        };
    }
    let amount = options.next().ok_or_else(syntax)?;
    if options.next().is_some() {
        return Err(syntax());
    }
    let amount = parse_i64(&amount)
        .ok_or_else(|| RespValue::error("ERR value is not an integer or out of range"))?;
    let invalid = || RespValue::error("ERR invalid expire time in 'getex' command");
    if amount <= 0 {
        return Err(invalid());
    }
    let at_ms = match option.as_slice() {
        b"EX" => amount
            .checked_mul(1000)
            .and_then(|ms| ms.checked_add(now_ms() as i64)),
        b"PX" => amount.checked_add(now_ms() as i64),
        b"EXAT" => amount.checked_mul(1000),
        b"PXAT" => Some(amount),
        _ => return Err(syntax()),
    }
    .ok_or_else(invalid)?;
    Ok(Some(at_ms as u64))
}

/// Redis's GETRANGE: bytes `start..=end`, negative indexes from the end,
/// clamped; empty when the range is empty.
fn byte_range(value: &Bytes, start: i64, end: i64) -> Bytes {
    let len = value.len() as i64;
    if len == 0 {
        return Bytes::new();
    }
    let clamp = |index: i64| {
        if index < 0 {
            (len + index).max(0)
        } else {
            index
        }
    };
    let (start, end) = (clamp(start), clamp(end).min(len - 1));
    if start > end || start >= len {
        return Bytes::new();
    }
    value.slice(start as usize..=end as usize)
}

/// Redis's TTL/PTTL: -2 no key, -1 no expiry, else time left (TTL rounds
/// to the nearest second, as Redis does).
fn ttl_of(value: Option<&ValueRead>, millis: bool) -> i64 {
    match value {
        None => -2,
        Some(ValueRead {
            expires_at_ms: None,
            ..
        }) => -1,
        Some(ValueRead {
            expires_at_ms: Some(at),
            ..
        }) => {
            let left = at.saturating_sub(now_ms()) as i64;
            if millis {
                left
            } else {
                (left + 500) / 1000
            }
        }
    }
}

fn multi_reply(reply: Reply) -> RespValue {
    match reply {
        Reply::Count(count) => RespValue::Integer(count as i64),
        Reply::Values(values) => RespValue::Array(
            values
                .into_iter()
                .map(|value| value.map_or(RespValue::Null, |read| RespValue::Bulk(read.value)))
                .collect(),
        ),
        Reply::Versions(_) => RespValue::Simple("OK"),
        Reply::Keys(keys) => RespValue::Array(keys.into_iter().map(RespValue::Bulk).collect()),
        Reply::Scanned { cursor, keys } => RespValue::Array(vec![
            RespValue::bulk(cursor.to_string()),
            RespValue::Array(keys.into_iter().map(RespValue::Bulk).collect()),
        ]),
        Reply::Error(error) => protocol_error(&error),
        Reply::Snapshotted { .. } => RespValue::Simple("OK"),
        other => unreachable!("a multi-key command answered {other:?}"),
    }
}

/// A node's error as RESP: Redis Cluster's `MOVED slot host:port` when a
/// shard lives on another node, `ERR message` otherwise.
fn protocol_error(error: &ProtocolError) -> RespValue {
    match &error.owner {
        Some(owner) if !owner.address.is_empty() => {
            RespValue::error(format!("MOVED {} {}", owner.slot, owner.address))
        }
        // Redis Cluster's error class for keys of different slots.
        _ if error.code == ErrorCode::StorageFailed => storage_error(&error.message),
        // Redis's error class for a command the user may not run.
        _ if error.code == ErrorCode::PermissionDenied => {
            RespValue::error(format!("NOPERM {}", error.message))
        }
        _ if error.code == ErrorCode::CrossShard => RespValue::error(
            "CROSSSLOT Keys in request don't hash to the same shard (atomic multi-key commands across shards need transactions, not built yet)",
        ),
        _ => RespValue::error(format!("ERR {}", error.message)),
    }
}

fn too_many_keys(count: usize, max: usize) -> RespValue {
    RespValue::error(format!(
        "ERR {count} keys exceed max_keys_per_request {max}"
    ))
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// `RESP_COMMANDS` is sorted and names exactly the dispatch's arms.
    #[test]
    fn the_command_list_is_the_dispatch() {
        assert!(RESP_COMMANDS.windows(2).all(|pair| pair[0] < pair[1]));
        let source = include_str!("resp.rs");
        let dispatch = &source[source
            .find("let pending = match name.as_str() {")
            .expect("the dispatch")..];
        let dispatch = &dispatch[..dispatch.find("            _ => {").expect("its last arm")];
        let mut armed: Vec<&str> = dispatch
            .lines()
            .map(str::trim)
            .filter(|line| line.starts_with('"') && line.contains("=>"))
            .flat_map(|line| line[..line.find("=>").unwrap()].split('|'))
            .map(|name| name.trim().trim_matches('"'))
            .collect();
        armed.sort_unstable();
        armed.dedup();
        assert_eq!(armed, RESP_COMMANDS.to_vec());
        assert_eq!(traced_command_name("SET"), "SET");
        assert_eq!(traced_command_name("MYPASSWORD"), "UNKNOWN");
    }

    fn args(parsed: Parsed) -> Vec<String> {
        match parsed {
            Parsed::Command(args, _) => args
                .iter()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn parses_multibulk_and_inline() {
        let command = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nvalue\r\n";
        assert_eq!(args(parse_command(command, 10, 100)), ["SET", "k", "value"]);
        for cut in 0..command.len() {
            assert_eq!(
                parse_command(&command[..cut], 10, 100),
                Parsed::Incomplete,
                "cut {cut}"
            );
        }
        assert_eq!(
            args(parse_command(b"set k \"two words\"\r\n", 10, 100)),
            ["set", "k", "two words"]
        );
        assert_eq!(parse_command(b"\r\n", 10, 100), Parsed::Skip(2));
    }

    #[test]
    fn hostile_lengths_are_refused() {
        assert!(
            matches!(parse_command(b"*99999999999\r\n", 10, 100), Parsed::Broken(m) if m.contains("multibulk"))
        );
        assert!(
            matches!(parse_command(b"*1\r\n$101\r\n", 10, 100), Parsed::Broken(m) if m.contains("bulk length"))
        );
        assert!(matches!(
            parse_command(b"*1\r\n$-5\r\n", 10, 100),
            Parsed::Broken(_)
        ));
        assert!(
            matches!(parse_command(b"*1\r\nx3\r\n", 10, 100), Parsed::Broken(m) if m.contains("expected '$'"))
        );
        assert!(matches!(
            parse_command(b"*x\r\n", 10, 100),
            Parsed::Broken(_)
        ));
        let long = vec![b'a'; RESP_MAX_INLINE_BYTES + 2];
        assert!(matches!(parse_command(&long, 10, 100), Parsed::Broken(m) if m.contains("inline")));
    }

    #[test]
    fn encodes_resp2_and_resp3() {
        let mut out = Vec::new();
        RespValue::Null.encode(2, &mut out);
        RespValue::Null.encode(3, &mut out);
        RespValue::Map(vec![(RespValue::bulk("a"), RespValue::Integer(1))]).encode(2, &mut out);
        RespValue::Map(vec![(RespValue::bulk("a"), RespValue::Integer(1))]).encode(3, &mut out);
        assert_eq!(
            out,
            b"$-1\r\n_\r\n*2\r\n$1\r\na\r\n:1\r\n%1\r\n$1\r\na\r\n:1\r\n"
        );
    }

    proptest! {
        // The parser sees raw network bytes: never a panic, and a command's
        // length never exceeds the buffer.
        #[test]
        fn parser_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            if let Parsed::Command(_, used) | Parsed::Skip(used) = parse_command(&bytes, 8, 64) {
                prop_assert!(used <= bytes.len());
            }
        }

        #[test]
        fn truncated_valid_commands_are_incomplete(cut in 0usize..40) {
            let command = b"*2\r\n$3\r\nGET\r\n$10\r\n0123456789\r\n";
            let cut = cut.min(command.len() - 1);
            prop_assert_eq!(parse_command(&command[..cut], 8, 64), Parsed::Incomplete);
        }
    }
}
