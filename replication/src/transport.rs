//! Node-to-node calls: the Raft RPCs (and forwarded client writes) of every
//! range on a core, over one TCP connection per peer node.
//!
//! A node has one Raft address (`host:port`), whatever its core count.
//! Every connection opens with a hello ([`PeerCallKind::Hello`]) naming a
//! range (Raft group); the core that accepted it (core 0) asks its
//! [`PeerRouter`] which core hosts that range, answers the core's index
//! and hands the socket to that core ([`PeerRouter::hand_off`]), which
//! serves it from then on ([`serve_connection`]): no frame ever hops
//! between cores. A hello for a range the node does not host, or of
//! another protocol version, is answered with an error and the connection
//! closed.
//!
//! A core keeps one [`PeerClient`] per peer node and every range on the
//! core shares its connection, which is what lets one connection carry the
//! heartbeats of tens of ranges: nodes place range `r` on the same core at
//! first, so the ranges of one core live on one core of each peer too. A
//! range that moved to another core of a peer (or a peer that places
//! ranges otherwise) is refused there with [`no_group_here`]; the client
//! then gives that range a connection of its own, whose hello names it
//! (see [`PeerClient`]).
//!
//! A frame is a flatbuffers `PeerFrame` (schemas/tinkerdb.fbs) behind the
//! usual 4-byte length prefix: a call (group, kind, call id, payload) or the
//! answer to one (same call id). Answers may come back in any order: the
//! server runs each call in its own task.
//!
//! Invariants:
//! - a call always ends: with the answer, with the connection's failure
//!   (every pending call fails when it breaks), or at its deadline;
//! - a broken connection is re-made by the next call, never retried in a
//!   loop here (openraft decides when to retry); so is a silent one (no
//!   frame for [`PEER_STALL_TIMEOUT`] when a call times out);
//! - frames are bounded by [`MAX_PEER_FRAME_BYTES`] both ways, a hello by
//!   [`MAX_HELLO_FRAME_BYTES`] and [`PEER_HELLO_TIMEOUT`]; the acceptor
//!   reads exactly the hello frame, so nothing a peer sent after it is
//!   lost when the socket changes core (a client sends nothing before
//!   the hello's answer anyway);
//! - [`PeerClient::set_blocked`] drops every call to that peer (the fault
//!   layer partition tests use: `tc netem` is absent here);
//! - a peer is named by a [`PeerAddr`], `host:port`: an IP literal is used
//!   as it is, a host name is resolved again on every connection attempt
//!   (a container restarted under the same name may have a new IP). The
//!   lookup is the system resolver (`getaddrinfo`: /etc/hosts, then DNS,
//!   e.g. Docker's embedded one), which blocks, so it runs on a thread of
//!   its own, never on the executor, and is bounded by
//!   [`PEER_RESOLVE_TIMEOUT`].

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::rc::Rc;
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use futures_channel::oneshot;
use futures_lite::future::BoxedLocal;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::net::{TcpListener, TcpStream};
use tinkerdb_schemas::frame::{decode_peer_frame, peek_frame, write_frame};
use tinkerdb_schemas::wire::{PeerCallKind, PeerFrame, PeerFrameArgs};
use tinkerdb_schemas::FRAME_HEADER_BYTES;

use crate::peer_tls::{PeerStream, PeerTls};

/// Largest frame either side accepts (a snapshot travels in one frame).
pub const MAX_PEER_FRAME_BYTES: usize = 256 << 20;

/// Frames queued for one connection's writer before callers wait.
pub const PEER_WRITE_QUEUE: usize = 1024;

/// A connection on which no frame has arrived for this long while a call
/// times out is dropped and replaced (several heartbeats: a loaded peer
/// that answers late is not a dead one).
pub const PEER_STALL_TIMEOUT: Duration = Duration::from_secs(2);

/// How long connecting to a peer may take.
pub const PEER_CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// How long resolving a peer's host name may take before the connection
/// attempt fails (the next attempt resolves again).
pub const PEER_RESOLVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The peer protocol version a hello carries; a node refuses any other
/// (nodes of one cluster run one version, upgrades are rolling restarts).
pub const PEER_PROTOCOL_VERSION: u32 = 1;

/// How long a new connection may take to send its hello (acceptor) or to
/// have it answered (dialer) before it is closed.
pub const PEER_HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest hello frame or hello answer either side reads.
pub const MAX_HELLO_FRAME_BYTES: usize = 4096;

/// A peer's address: `host:port`, where the host is an IP literal or a
/// name resolved when connecting.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PeerAddr {
    host: String,
    port: u16,
    /// The address itself when the host is an IP literal (no lookup).
    literal: Option<SocketAddr>,
}

impl PeerAddr {
    /// Parses `HOST:PORT` (`[v6]:PORT` for an IPv6 literal). No lookup.
    pub fn parse(text: &str) -> Result<PeerAddr, String> {
        let text = text.trim();
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(PeerAddr::from(addr));
        }
        let bad = || format!("{text:?} is not HOST:PORT");
        let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
        let port: u16 = port.parse().map_err(|_| bad())?;
        let valid_host = !host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
        if !valid_host {
            return Err(bad());
        }
        Ok(PeerAddr {
            host: host.to_owned(),
            port,
            literal: None,
        })
    }

    /// The host (name or IP literal, without brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address itself if the host is an IP literal.
    pub fn literal(&self) -> Option<SocketAddr> {
        self.literal
    }

    /// Resolves the address now, blocking (the system resolver); the first
    /// answer wins. An IP literal needs no lookup.
    pub fn resolve_blocking(&self) -> Result<SocketAddr, String> {
        self.resolve_all_blocking().map(|addrs| addrs[0])
    }

    /// Every address the name resolves to (at least one), in the
    /// resolver's order; an IP literal needs no lookup.
    pub fn resolve_all_blocking(&self) -> Result<Vec<SocketAddr>, String> {
        if let Some(addr) = self.literal {
            return Ok(vec![addr]);
        }
        use std::net::ToSocketAddrs;
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|error| format!("cannot resolve {self}: {error}"))?
            .collect();
        if addrs.is_empty() {
            return Err(format!("{self} resolves to no address"));
        }
        Ok(addrs)
    }

    /// Resolves the address from a glommio executor: an IP literal at
    /// once, a name on a short-lived thread, within `timeout`; every
    /// address it names (at least one).
    pub async fn resolve(&self, timeout: Duration) -> Result<Vec<SocketAddr>, String> {
        if let Some(addr) = self.literal {
            return Ok(vec![addr]);
        }
        // On a thread of its own (not glommio's blocking pool, which the
        // storage's file operations use): a resolver stuck on an absent DNS
        // server only keeps that thread, which ends with the lookup.
        let this = self.clone();
        let (answer_to, answer) = oneshot::channel();
        std::thread::Builder::new()
            .name("tinkerdb-resolve".into())
            .spawn(move || {
                let _ = answer_to.send(this.resolve_all_blocking());
            })
            .map_err(|error| format!("cannot resolve {self}: {error}"))?;
        match glommio::timer::timeout(timeout, async { Ok(answer.await) }).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => Err(format!("cannot resolve {self}: the lookup failed")),
            Err(_) => Err(format!("resolving {self} took longer than {timeout:?}")),
        }
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        PeerAddr {
            host: addr.ip().to_string(),
            port: addr.port(),
            literal: Some(addr),
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;
    fn from_str(text: &str) -> Result<PeerAddr, String> {
        PeerAddr::parse(text)
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = String;
    fn try_from(text: String) -> Result<PeerAddr, String> {
        PeerAddr::parse(&text)
    }
}

impl From<PeerAddr> for String {
    fn from(addr: PeerAddr) -> String {
        addr.to_string()
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.literal {
            Some(addr) => write!(f, "{addr}"),
            None => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<PeerAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        PeerAddr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod peer_addr_tests {
    use super::*;

    #[test]
    fn parses_literals_and_names() {
        let v4 = PeerAddr::parse("127.0.0.1:7390").unwrap();
        assert_eq!(v4.literal(), Some("127.0.0.1:7390".parse().unwrap()));
        assert_eq!(v4.to_string(), "127.0.0.1:7390");
        let v6 = PeerAddr::parse("[::1]:7390").unwrap();
        assert_eq!(v6.literal(), Some("[::1]:7390".parse().unwrap()));
        let name = PeerAddr::parse(" node-1.cluster_a:7390 ").unwrap();
        assert_eq!(
            (name.host(), name.port(), name.literal()),
            ("node-1.cluster_a", 7390, None)
        );
        assert_eq!(name.to_string(), "node-1.cluster_a:7390");
        for bad in [
            "",
            "node1",
            "node1:",
            ":7390",
            "node1:70000",
            "no de:1",
            "a:b",
            "::1:7390x",
        ] {
            assert!(PeerAddr::parse(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn resolves_names_and_skips_literals() {
        let localhost = PeerAddr::parse("localhost:7390").unwrap();
        let addr = localhost.resolve_blocking().unwrap();
        assert!(addr.ip().is_loopback() && addr.port() == 7390, "{addr}");
        let unknown = PeerAddr::parse("no-such-host.invalid:1").unwrap();
        assert!(unknown.resolve_blocking().is_err());
        let resolved = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(async move {
                let literal = PeerAddr::parse("127.0.0.1:1").unwrap();
                (
                    literal.resolve(Duration::from_secs(5)).await,
                    localhost.resolve(Duration::from_secs(5)).await,
                )
            });
        assert_eq!(resolved.0, Ok(vec!["127.0.0.1:1".parse().unwrap()]));
        assert!(resolved
            .1
            .unwrap()
            .iter()
            .all(|addr| addr.ip().is_loopback()));
    }

    #[test]
    fn serde_round_trip() {
        let addr = PeerAddr::parse("node1:7390").unwrap();
        let bytes = postcard::to_allocvec(&addr).unwrap();
        assert_eq!(postcard::from_bytes::<PeerAddr>(&bytes).unwrap(), addr);
        let bad = postcard::to_allocvec("node1").unwrap();
        assert!(postcard::from_bytes::<PeerAddr>(&bad).is_err());
    }
}

/// A call to a peer, or the work a server is asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCall {
    /// The Raft group.
    pub group: u64,
    /// What is asked.
    pub kind: PeerCallKind,
    /// The encoded request.
    pub payload: Vec<u8>,
}

/// Why a call failed without an answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    /// The peer could not be reached or the connection broke.
    #[error("peer {0} unreachable: {1}")]
    Unreachable(PeerAddr, String),
    /// No answer before the deadline.
    #[error("peer {0} did not answer within {1:?}")]
    Timeout(PeerAddr, Duration),
    /// The peer answered that it could not run the call.
    #[error("peer {0} refused the call: {1}")]
    Refused(PeerAddr, String),
    /// Calls to this peer are blocked by the fault layer.
    #[error("peer {0} is cut off (fault injection)")]
    Blocked(PeerAddr),
}

/// Encodes one frame, with its length prefix, onto `out`.
pub fn encode_peer_frame(
    builder: &mut FlatBufferBuilder<'_>,
    call_id: u64,
    call: &PeerCall,
    is_answer: bool,
    error: Option<&str>,
    out: &mut Vec<u8>,
) {
    builder.reset();
    let payload = builder.create_vector(&call.payload);
    let error = error.map(|text| builder.create_string(text));
    let frame = PeerFrame::create(
        builder,
        &PeerFrameArgs {
            call_id,
            group: call.group,
            kind: call.kind,
            is_answer,
            error,
            payload: Some(payload),
        },
    );
    builder.finish(frame, None);
    write_frame(out, builder.finished_data());
}

/// A decoded frame, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFrame {
    /// Call id.
    pub call_id: u64,
    /// Whether it answers a call.
    pub is_answer: bool,
    /// Error text of a failed call.
    pub error: Option<String>,
    /// The call (or answer) itself.
    pub call: PeerCall,
}

/// Decodes one frame body (after the length prefix).
pub fn decode_peer(body: &[u8]) -> Result<DecodedFrame, String> {
    let frame = decode_peer_frame(body).map_err(|error| error.to_string())?;
    Ok(DecodedFrame {
        call_id: frame.call_id(),
        is_answer: frame.is_answer(),
        error: frame.error().map(str::to_owned),
        call: PeerCall {
            group: frame.group(),
            kind: frame.kind(),
            payload: frame
                .payload()
                .map(|v| v.bytes().to_vec())
                .unwrap_or_default(),
        },
    })
}

/// Reads frames from `reader` and hands each decoded one to `each`, until
/// the stream ends or breaks.
async fn read_frames(
    mut reader: ReadHalf<PeerStream>,
    mut each: impl FnMut(DecodedFrame),
) -> Result<(), String> {
    let mut buffer: Vec<u8> = Vec::with_capacity(64 << 10);
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        loop {
            match peek_frame(&buffer, MAX_PEER_FRAME_BYTES) {
                Ok(Some(length)) => {
                    let end = FRAME_HEADER_BYTES + length;
                    let frame = decode_peer(&buffer[FRAME_HEADER_BYTES..end])?;
                    buffer.drain(..end);
                    each(frame);
                }
                Ok(None) => break,
                Err(error) => return Err(error.to_string()),
            }
        }
        let read = reader
            .read(&mut chunk)
            .await
            .map_err(|error| error.to_string())?;
        if read == 0 {
            return Ok(());
        }
        buffer.extend_from_slice(&chunk[..read]);
    }
}

/// Writes the frames sent to the returned queue, in order, until the queue
/// or the stream closes.
fn spawn_writer(mut writer: WriteHalf<PeerStream>) -> Rc<LocalSender<Vec<u8>>> {
    let (sender, receiver) = local_channel::new_bounded::<Vec<u8>>(PEER_WRITE_QUEUE);
    glommio::spawn_local(async move {
        while let Some(mut bytes) = receiver.recv().await {
            // Coalesce what is already queued into one write.
            while let Some(Some(more)) = futures_lite::future::poll_once(receiver.recv()).await {
                bytes.extend_from_slice(&more);
            }
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
        let _ = writer.close().await;
    })
    .detach();
    Rc::new(sender)
}

type Pending = Rc<RefCell<HashMap<u64, oneshot::Sender<Result<DecodedFrame, String>>>>>;

struct Link {
    frames: Rc<LocalSender<Vec<u8>>>,
    pending: Pending,
    alive: Rc<Cell<bool>>,
    /// When a frame last arrived on this connection (or it was opened).
    last_heard: Rc<Cell<std::time::Instant>>,
}

/// This core's connection to one peer node: by default to the peer's core
/// that hosts `hello_range`, where the peer's ranges of this core usually
/// are too. A call the peer refuses because its range is not on that core
/// ([`is_no_group_here`]: the range moved to another of the peer's cores,
/// or the peer places ranges differently) is sent again once over a
/// connection whose hello names the call's own range, which the peer hands
/// to the right core; later calls of that range use that connection.
pub struct PeerClient {
    addr: PeerAddr,
    /// TLS after the hello, when the node has it.
    tls: Option<PeerTls>,
    hello_range: u64,
    link: RefCell<Option<Rc<Link>>>,
    /// Ranges whose calls travel on a connection of their own (see above).
    rerouted: RefCell<std::collections::HashSet<u64>>,
    /// Those connections, by range.
    range_links: RefCell<HashMap<u64, Rc<Link>>>,
    next_call_id: Cell<u64>,
    builder: RefCell<FlatBufferBuilder<'static>>,
    blocked: Cell<bool>,
}

/// A refused call is sent again on a rerouted connection only up to this
/// size (it is copied before the first attempt; a larger one, a snapshot,
/// is retried by Raft itself, on the rerouted connection).
pub const MAX_REROUTED_RETRY_BYTES: usize = 1 << 20;

/// The refusal of a call for a group this core does not run.
pub fn no_group_here(group: u64) -> String {
    format!("{NO_GROUP_HERE} {group} on this core")
}

/// Whether a refusal says the call's group is not on the core that got it.
pub fn is_no_group_here(reason: &str) -> bool {
    reason.starts_with(NO_GROUP_HERE)
}

const NO_GROUP_HERE: &str = "no group";

impl PeerClient {
    /// A client for the node whose Raft address is `addr`, reaching the
    /// core that hosts range `hello_range` there (connects lazily; a host
    /// name is resolved on each connection attempt), speaking TLS after
    /// the hello when `tls` is given.
    pub fn new(addr: impl Into<PeerAddr>, hello_range: u64, tls: Option<PeerTls>) -> PeerClient {
        PeerClient {
            addr: addr.into(),
            tls,
            hello_range,
            link: RefCell::new(None),
            rerouted: RefCell::default(),
            range_links: RefCell::default(),
            next_call_id: Cell::new(1),
            builder: RefCell::new(FlatBufferBuilder::new()),
            blocked: Cell::new(false),
        }
    }

    /// The peer's address, as named (a host name stays a name).
    pub fn addr(&self) -> &PeerAddr {
        &self.addr
    }

    /// Cuts (or restores) this peer: while blocked every call fails at once
    /// and the connections are dropped, as if the network were partitioned.
    pub fn set_blocked(&self, blocked: bool) {
        self.blocked.set(blocked);
        if blocked {
            let mut links: Vec<Rc<Link>> = self.link.borrow_mut().take().into_iter().collect();
            links.extend(self.range_links.borrow_mut().drain().map(|(_, link)| link));
            for link in links {
                link.alive.set(false);
                fail_all(&link.pending, "cut off by fault injection");
            }
        }
    }

    /// Whether calls to this peer are blocked.
    pub fn is_blocked(&self) -> bool {
        self.blocked.get()
    }

    /// The connection calls of `range` travel on, made if needed.
    async fn connect(&self, range: u64) -> Result<Rc<Link>, TransportError> {
        if self.rerouted.borrow().contains(&range) {
            let held = self.range_links.borrow().get(&range).cloned();
            if let Some(link) = held.filter(|link| link.alive.get()) {
                return Ok(link);
            }
            let link = self.open_link(range).await?;
            self.range_links.borrow_mut().insert(range, link.clone());
            return Ok(link);
        }
        if let Some(link) = self.link.borrow().as_ref() {
            if link.alive.get() {
                return Ok(link.clone());
            }
        }
        let link = self.open_link(self.hello_range).await?;
        // Another call may have connected meanwhile; either link works.
        *self.link.borrow_mut() = Some(link.clone());
        Ok(link)
    }

    /// Opens a connection whose hello names `hello_range`.
    async fn open_link(&self, hello_range: u64) -> Result<Rc<Link>, TransportError> {
        let unreachable = |error: String| TransportError::Unreachable(self.addr.clone(), error);
        // Resolved afresh on every attempt: the name may point elsewhere now.
        let sockets = self
            .addr
            .resolve(PEER_RESOLVE_TIMEOUT)
            .await
            .map_err(unreachable)?;
        // Each address the name gives in turn (localhost may be ::1 and
        // 127.0.0.1, of which the peer listens on one).
        let mut failure = String::new();
        let mut connected = None;
        for socket in sockets {
            match glommio::timer::timeout(PEER_CONNECT_TIMEOUT, TcpStream::connect(socket)).await {
                Ok(stream) => {
                    connected = Some(stream);
                    break;
                }
                Err(error) => failure = format!("{socket}: {error}"),
            }
        }
        let mut stream = connected.ok_or_else(|| unreachable(failure))?;
        let _ = stream.set_nodelay(true);
        let hello = glommio::timer::timeout(PEER_HELLO_TIMEOUT, async {
            Ok(say_hello(&mut stream, hello_range).await)
        })
        .await
        .unwrap_or_else(|_| {
            Err(HelloFailure::Broken(format!(
                "no answer to the hello within {PEER_HELLO_TIMEOUT:?}"
            )))
        });
        match hello {
            Ok(_core) => {}
            Err(HelloFailure::Broken(error)) => return Err(unreachable(error)),
            Err(HelloFailure::Refused(error)) => {
                return Err(TransportError::Refused(self.addr.clone(), error))
            }
        }
        let stream = match &self.tls {
            None => PeerStream::Plain(stream),
            Some(tls) => tls
                .connect(self.addr.host(), stream, PEER_HELLO_TIMEOUT)
                .await
                .map_err(|error| unreachable(format!("TLS: {error}")))?,
        };
        let (reader, writer) = futures_lite::io::split(stream);
        let pending: Pending = Rc::new(RefCell::new(HashMap::new()));
        let alive = Rc::new(Cell::new(true));
        let last_heard = Rc::new(Cell::new(std::time::Instant::now()));
        let link = Rc::new(Link {
            frames: spawn_writer(writer),
            pending: pending.clone(),
            alive: alive.clone(),
            last_heard: last_heard.clone(),
        });
        glommio::spawn_local(async move {
            let outcome = read_frames(reader, |frame| {
                last_heard.set(std::time::Instant::now());
                if let Some(waiter) = pending.borrow_mut().remove(&frame.call_id) {
                    let _ = waiter.send(Ok(frame));
                }
            })
            .await;
            alive.set(false);
            let reason = match outcome {
                Ok(()) => "connection closed by the peer".to_owned(),
                Err(error) => error,
            };
            fail_all(&pending, &reason);
        })
        .detach();
        Ok(link)
    }

    /// Opens (or checks) the connection a call of `group` would use, and
    /// says why it cannot be had. A caller that must know whether a call
    /// was sent at all (a forwarded write is never sent twice) connects
    /// first: a failure here means nothing was sent.
    pub async fn ensure_connected(&self, group: u64) -> Result<(), TransportError> {
        if self.blocked.get() {
            return Err(TransportError::Blocked(self.addr.clone()));
        }
        self.connect(group).await.map(|_| ())
    }

    /// Sends `call` and waits for its answer's payload (at most `deadline`
    /// per attempt; a call refused as [`is_no_group_here`] is sent once
    /// more, rerouted: see [`PeerClient`]).
    pub async fn call(
        &self,
        call: PeerCall,
        deadline: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        if self.blocked.get() {
            return Err(TransportError::Blocked(self.addr.clone()));
        }
        let link = self.connect(call.group).await?;
        let call_id = self.next_call_id.get();
        self.next_call_id.set(call_id + 1);
        let mut bytes = Vec::with_capacity(call.payload.len() + 64);
        encode_peer_frame(
            &mut self.builder.borrow_mut(),
            call_id,
            &call,
            false,
            None,
            &mut bytes,
        );
        let again = (bytes.len() <= MAX_REROUTED_RETRY_BYTES).then(|| bytes.clone());
        match self.send_and_wait(&link, call_id, bytes, deadline).await {
            Err(TransportError::Refused(addr, reason)) if is_no_group_here(&reason) => {
                // The next call of this range opens its own connection.
                self.rerouted.borrow_mut().insert(call.group);
                self.range_links.borrow_mut().remove(&call.group);
                let Some(bytes) = again else {
                    return Err(TransportError::Refused(addr, reason));
                };
                let link = self.connect(call.group).await?;
                self.send_and_wait(&link, call_id, bytes, deadline).await
            }
            outcome => outcome,
        }
    }

    /// Sends one encoded frame on `link` and waits for its answer.
    async fn send_and_wait(
        &self,
        link: &Rc<Link>,
        call_id: u64,
        bytes: Vec<u8>,
        deadline: Duration,
    ) -> Result<Vec<u8>, TransportError> {
        let (answer_to, answer) = oneshot::channel();
        link.pending.borrow_mut().insert(call_id, answer_to);
        if link.frames.send(bytes).await.is_err() {
            link.pending.borrow_mut().remove(&call_id);
            link.alive.set(false);
            return Err(TransportError::Unreachable(
                self.addr.clone(),
                "connection closed".into(),
            ));
        }
        let outcome = glommio::timer::timeout(deadline, async { Ok(answer.await) }).await;
        match outcome {
            Err(_) => {
                link.pending.borrow_mut().remove(&call_id);
                // A connection that has carried nothing back for a while
                // is given up (a peer that stopped reading it, a half-open
                // connection): the next call connects afresh.
                if link.last_heard.get().elapsed() > PEER_STALL_TIMEOUT {
                    link.alive.set(false);
                    fail_all(&link.pending, "connection silent; replaced");
                    let mut current = self.link.borrow_mut();
                    if current.as_ref().is_some_and(|held| Rc::ptr_eq(held, link)) {
                        *current = None;
                    }
                    self.range_links
                        .borrow_mut()
                        .retain(|_, held| !Rc::ptr_eq(held, link));
                }
                Err(TransportError::Timeout(self.addr.clone(), deadline))
            }
            Ok(Err(_)) => Err(TransportError::Unreachable(
                self.addr.clone(),
                "connection dropped".into(),
            )),
            Ok(Ok(Err(reason))) => Err(TransportError::Unreachable(self.addr.clone(), reason)),
            Ok(Ok(Ok(frame))) => match frame.error {
                Some(error) => Err(TransportError::Refused(self.addr.clone(), error)),
                None => Ok(frame.call.payload),
            },
        }
    }
}

/// Why a hello did not open a connection.
enum HelloFailure {
    /// The connection broke or the peer sent something else.
    Broken(String),
    /// The peer answered with an error (no such range, another version).
    Refused(String),
}

/// Sends the hello for `range` on a new connection and reads its answer:
/// the index of the peer's core that serves the connection from now on.
async fn say_hello(stream: &mut TcpStream, range: u64) -> Result<u32, HelloFailure> {
    let hello = PeerCall {
        group: range,
        kind: PeerCallKind::Hello,
        payload: postcard::to_allocvec(&PEER_PROTOCOL_VERSION).expect("a u32 encodes"),
    };
    let mut bytes = Vec::new();
    encode_peer_frame(
        &mut FlatBufferBuilder::new(),
        0,
        &hello,
        false,
        None,
        &mut bytes,
    );
    stream
        .write_all(&bytes)
        .await
        .map_err(|error| HelloFailure::Broken(error.to_string()))?;
    let body = read_one_frame(stream, MAX_HELLO_FRAME_BYTES)
        .await
        .map_err(HelloFailure::Broken)?;
    let answer = decode_peer(&body).map_err(HelloFailure::Broken)?;
    if !answer.is_answer || answer.call.kind != PeerCallKind::Hello {
        return Err(HelloFailure::Broken(format!(
            "the peer answered the hello with a {:?} frame",
            answer.call.kind
        )));
    }
    if let Some(error) = answer.error {
        return Err(HelloFailure::Refused(error));
    }
    postcard::from_bytes(&answer.call.payload)
        .map_err(|error| HelloFailure::Broken(format!("malformed hello answer: {error}")))
}

/// Reads exactly one frame (no byte past it) and returns its body.
async fn read_one_frame(stream: &mut TcpStream, max_bytes: usize) -> Result<Vec<u8>, String> {
    let mut header = [0u8; FRAME_HEADER_BYTES];
    stream
        .read_exact(&mut header)
        .await
        .map_err(|error| error.to_string())?;
    let length = u32::from_le_bytes(header) as usize;
    if length > max_bytes {
        return Err(format!(
            "a {length}-byte frame where at most {max_bytes} bytes were expected"
        ));
    }
    let mut body = vec![0u8; length];
    stream
        .read_exact(&mut body)
        .await
        .map_err(|error| error.to_string())?;
    Ok(body)
}

fn fail_all(pending: &Pending, reason: &str) {
    for (_, waiter) in pending.borrow_mut().drain() {
        let _ = waiter.send(Err(reason.to_owned()));
    }
}

/// What a server does with one call: the answer's payload, or why it could
/// not run the call.
pub type CallHandler =
    Rc<dyn Fn(PeerCall) -> futures_lite::future::BoxedLocal<Result<Vec<u8>, String>>>;

/// Where the connections a core accepts go: the range a hello names is
/// hosted by one core of this node, which serves the connection.
pub struct PeerRouter {
    /// The accepting core.
    pub here: usize,
    /// The core of this node that hosts a range, or why none does (the
    /// hello is answered with it).
    pub locate: Box<dyn Fn(u64) -> Result<usize, String>>,
    /// Gives an accepted connection's socket to another core of the node,
    /// which serves it with [`serve_connection`]; fails when that core is
    /// gone (the connection is then closed; the peer dials again).
    pub hand_off: HandOff,
}

/// How a [`PeerRouter`] gives a connection's socket to another core.
pub type HandOff = Box<dyn Fn(usize, OwnedFd) -> BoxedLocal<Result<(), String>>>;

impl PeerRouter {
    /// The router of a server that hosts every range itself (one core).
    pub fn all_here() -> PeerRouter {
        PeerRouter {
            here: 0,
            locate: Box::new(|_| Ok(0)),
            hand_off: Box::new(|core, _| {
                Box::pin(async move { Err(format!("this server has no core {core}")) })
            }),
        }
    }
}

/// Accepts the peer connections of a node on its one Raft address until
/// the process ends, serving each on the core `router` names; each call
/// runs in its own task and its answer goes back on the same connection.
pub async fn serve_node_peers(
    listener: TcpListener,
    handler: CallHandler,
    router: PeerRouter,
    tls: Option<PeerTls>,
) {
    let (_never_closed, stop) = async_channel::bounded::<()>(1);
    serve_routed_peers(listener, handler, router, stop, tls).await
}

/// Serves every range here ([`PeerRouter::all_here`]) until `stop` is
/// closed: then the listener and every
/// connection it accepted are closed (calls in flight still finish). A
/// process that exits closes them anyway; this is for a node stopped and
/// restarted inside one process (the cluster tests), whose old listener
/// must not linger on the address the new one binds.
pub async fn serve_peers_until(
    listener: TcpListener,
    handler: CallHandler,
    stop: async_channel::Receiver<()>,
) {
    serve_routed_peers(listener, handler, PeerRouter::all_here(), stop, None).await
}

/// Accepts peer connections on `listener` (the node's one Raft address)
/// until `stop` is closed: reads each one's hello, serves it here or hands
/// it to the core `router` names (see the module docs); with `tls`, the
/// core that serves a connection runs the TLS handshake first.
pub async fn serve_routed_peers(
    listener: TcpListener,
    handler: CallHandler,
    router: PeerRouter,
    stop: async_channel::Receiver<()>,
    tls: Option<PeerTls>,
) {
    let router = Rc::new(router);
    let stopped = {
        let stop = stop.clone();
        move || {
            let stop = stop.clone();
            async move {
                let _ = stop.recv().await;
            }
        }
    };
    // Connections still open: on stop, the server returns once they closed.
    let open = Rc::new(Cell::new(0usize));
    struct Open(Rc<Cell<usize>>);
    impl Drop for Open {
        fn drop(&mut self) {
            self.0.set(self.0.get() - 1);
        }
    }
    loop {
        let accepted = futures_lite::future::or(async { Some(listener.accept().await) }, async {
            stopped().await;
            None
        })
        .await;
        let Some(accepted) = accepted else {
            drop(listener);
            let deadline = std::time::Instant::now() + Duration::from_secs(2);
            while open.get() > 0 && std::time::Instant::now() < deadline {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
            return;
        };
        let mut stream = match accepted {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "peer accept failed");
                glommio::timer::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let handler = handler.clone();
        let router = router.clone();
        let stopped = stopped.clone();
        let tls = tls.clone();
        open.set(open.get() + 1);
        let open = Open(open.clone());
        glommio::spawn_local(async move {
            let _open = open;
            let core = match accept_hello(&mut stream, &router).await {
                Ok(core) => core,
                Err(reason) => {
                    tracing::debug!(%reason, "peer connection refused at its hello");
                    return;
                }
            };
            if core == router.here {
                let served = futures_lite::future::or(
                    async { Some(serve_frames(stream, handler, tls.as_ref()).await) },
                    async {
                        stopped().await;
                        None
                    },
                )
                .await;
                if let Some(Err(error)) = served {
                    tracing::debug!(%error, "peer connection ended");
                }
                return;
            }
            // The socket moves to its core: a duplicate descriptor travels,
            // this one closes with `stream` (the socket stays open).
            let socket = match socket_of(&stream) {
                Ok(socket) => socket,
                Err(error) => {
                    tracing::warn!(%error, "cannot hand a peer connection to core {core}");
                    return;
                }
            };
            drop(stream);
            if let Err(error) = (router.hand_off)(core, socket).await {
                tracing::debug!(%error, core, "peer connection not handed off");
            }
        })
        .detach();
    }
}

/// A descriptor of `stream`'s socket that outlives `stream`.
fn socket_of(stream: &TcpStream) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, BorrowedFd};
    // SAFETY: the descriptor is `stream`'s, open for as long as the borrow
    // (this function), and only duplicated here.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(stream.as_raw_fd()) };
    borrowed.try_clone_to_owned()
}

/// Serves a connection another core accepted and handed to this one (its
/// hello already answered; with `tls`, the handshake runs here) until it
/// closes.
pub async fn serve_connection(socket: OwnedFd, handler: CallHandler, tls: Option<PeerTls>) {
    use std::os::fd::{FromRawFd, IntoRawFd};
    // SAFETY: `socket` is an open TCP socket this function owns; the
    // stream takes it over (and closes it when dropped).
    #[allow(unsafe_code)]
    let stream = unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) };
    if let Err(error) = serve_frames(stream, handler, tls.as_ref()).await {
        tracing::debug!(%error, "peer connection ended");
    }
}

/// Reads a new connection's hello and answers it: the core of this node
/// that serves the connection, or why none does (then the connection is
/// closed: a frame other than a hello first is not answered at all).
async fn accept_hello(stream: &mut TcpStream, router: &PeerRouter) -> Result<usize, String> {
    let body = glommio::timer::timeout(PEER_HELLO_TIMEOUT, async {
        Ok(read_one_frame(stream, MAX_HELLO_FRAME_BYTES).await)
    })
    .await
    .map_err(|_| format!("no hello within {PEER_HELLO_TIMEOUT:?}"))??;
    let hello = decode_peer(&body)?;
    if hello.is_answer || hello.call.kind != PeerCallKind::Hello {
        return Err(format!("a {:?} frame before the hello", hello.call.kind));
    }
    let range = hello.call.group;
    let verdict = match postcard::from_bytes::<u32>(&hello.call.payload) {
        Ok(PEER_PROTOCOL_VERSION) => (router.locate)(range),
        Ok(version) => Err(format!(
            "peer protocol version {version}: this node speaks version {PEER_PROTOCOL_VERSION} (run one TinkerDB version across the cluster)"
        )),
        Err(error) => Err(format!("malformed hello: {error}")),
    };
    let answer = PeerCall {
        group: range,
        kind: PeerCallKind::Hello,
        payload: match &verdict {
            Ok(core) => postcard::to_allocvec(&(*core as u32)).expect("a u32 encodes"),
            Err(_) => Vec::new(),
        },
    };
    let mut bytes = Vec::new();
    encode_peer_frame(
        &mut FlatBufferBuilder::new(),
        hello.call_id,
        &answer,
        true,
        verdict.as_ref().err().map(String::as_str),
        &mut bytes,
    );
    stream
        .write_all(&bytes)
        .await
        .map_err(|error| format!("cannot answer the hello: {error}"))?;
    verdict
}

/// Answers the calls on an open connection (hello done) until it closes,
/// after the TLS handshake when `tls` is given.
async fn serve_frames(
    stream: TcpStream,
    handler: CallHandler,
    tls: Option<&PeerTls>,
) -> Result<(), String> {
    let stream = match tls {
        None => PeerStream::Plain(stream),
        Some(tls) => match tls.accept(stream, PEER_HELLO_TIMEOUT).await {
            Ok(stream) => stream,
            Err(error) => {
                // Worth a warning: a node with a bad certificate, or
                // something that is not a node, knocking on the peer port.
                tracing::warn!(%error, "peer connection refused: TLS handshake failed");
                return Err(format!("TLS: {error}"));
            }
        },
    };
    let (reader, writer) = futures_lite::io::split(stream);
    let answers = spawn_writer(writer);
    let builder = Rc::new(RefCell::new(FlatBufferBuilder::new()));
    read_frames(reader, |frame| {
        if frame.is_answer {
            return;
        }
        let handler = handler.clone();
        let answers = answers.clone();
        let builder = builder.clone();
        glommio::spawn_local(async move {
            let group = frame.call.group;
            let kind = frame.call.kind;
            let result = match kind {
                PeerCallKind::Hello => Err("a hello only opens a connection".to_owned()),
                _ => handler(frame.call).await,
            };
            let (payload, error) = match result {
                Ok(payload) => (payload, None),
                Err(error) => (Vec::new(), Some(error)),
            };
            let answer = PeerCall {
                group,
                kind,
                payload,
            };
            let mut bytes = Vec::with_capacity(answer.payload.len() + 64);
            encode_peer_frame(
                &mut builder.borrow_mut(),
                frame.call_id,
                &answer,
                true,
                error.as_deref(),
                &mut bytes,
            );
            let _ = answers.send(bytes).await;
        })
        .detach();
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run<T: 'static>(future: impl std::future::Future<Output = T> + 'static) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .make()
            .expect("executor")
            .run(future)
    }

    /// Echoes the payload reversed; refuses group 99; group 7 answers late.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handler: CallHandler = Rc::new(|call: PeerCall| {
            Box::pin(async move {
                match call.group {
                    99 => Err("no such group".to_owned()),
                    7 => {
                        glommio::timer::sleep(Duration::from_millis(300)).await;
                        Ok(call.payload)
                    }
                    _ => Ok(call.payload.into_iter().rev().collect()),
                }
            })
        });
        glommio::spawn_local(serve_node_peers(
            listener,
            handler,
            PeerRouter::all_here(),
            None,
        ))
        .detach();
        addr
    }

    fn call(group: u64, payload: &[u8]) -> PeerCall {
        PeerCall {
            group,
            kind: PeerCallKind::AppendEntries,
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn calls_are_answered_matched_and_failures_are_typed() {
        run(async {
            let addr = echo_server();
            let client = Rc::new(PeerClient::new(addr, 1, None));
            // Long enough for any call that must succeed, even on a busy
            // machine (the late answer takes 300 ms; the timeout case below
            // uses its own 50 ms).
            let deadline = Duration::from_secs(30);
            assert_eq!(
                client.call(call(1, b"abc"), deadline).await,
                Ok(b"cba".to_vec())
            );
            // Many calls in flight on one connection, answered out of order.
            let slow = {
                let client = client.clone();
                glommio::spawn_local(async move { client.call(call(7, b"late"), deadline).await })
            };
            let mut fast = Vec::new();
            for i in 0..100u8 {
                let client = client.clone();
                fast.push(glommio::spawn_local(async move {
                    client.call(call(1, &[i, 0]), deadline).await
                }));
            }
            for (i, task) in fast.into_iter().enumerate() {
                assert_eq!(task.await, Ok(vec![0, i as u8]));
            }
            assert_eq!(slow.await, Ok(b"late".to_vec()));
            assert!(matches!(
                client.call(call(99, b"x"), deadline).await,
                Err(TransportError::Refused(_, reason)) if reason == "no such group"
            ));
            assert!(matches!(
                client.call(call(7, b"x"), Duration::from_millis(50)).await,
                Err(TransportError::Timeout(..))
            ));
            client.set_blocked(true);
            assert_eq!(
                client.call(call(1, b"x"), deadline).await,
                Err(TransportError::Blocked(addr.into()))
            );
            client.set_blocked(false);
            assert_eq!(
                client.call(call(1, b"xy"), deadline).await,
                Ok(b"yx".to_vec())
            );
        });
    }

    #[test]
    fn a_dead_peer_fails_fast_and_big_frames_travel() {
        run(async {
            let dead = {
                let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                listener.local_addr().unwrap()
            };
            let client = PeerClient::new(dead, 1, None);
            assert!(matches!(
                client.call(call(1, b"x"), Duration::from_secs(1)).await,
                Err(TransportError::Unreachable(..))
            ));
            let client = PeerClient::new(echo_server(), 1, None);
            let big = vec![5u8; 8 << 20];
            let answer = client
                .call(call(1, &big), Duration::from_secs(60))
                .await
                .unwrap();
            assert_eq!(answer.len(), big.len());
        });
    }

    /// A server of "two cores" in one executor: range 1 is handed off (its
    /// socket travels, as between cores), range 0 served by the acceptor,
    /// any other range refused at the hello. Each handler tags its answers.
    fn routed_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let tagged = |tag: u8| -> CallHandler {
            Rc::new(move |call: PeerCall| {
                Box::pin(async move {
                    // Each "core" runs the group of its own index only.
                    if call.group != u64::from(tag) {
                        return Err(no_group_here(call.group));
                    }
                    let mut payload = call.payload;
                    payload.push(tag);
                    Ok(payload)
                })
            })
        };
        let (to_core_1, handed) = local_channel::new_bounded::<OwnedFd>(4);
        let to_core_1 = Rc::new(to_core_1);
        let router = PeerRouter {
            here: 0,
            locate: Box::new(|range| match range {
                0 | 1 => Ok(range as usize),
                _ => Err(format!("range {range} is not hosted here")),
            }),
            hand_off: Box::new(move |core, socket| {
                assert_eq!(core, 1);
                let to_core_1 = to_core_1.clone();
                Box::pin(async move {
                    to_core_1
                        .send(socket)
                        .await
                        .map_err(|_| "core 1 is gone".to_owned())
                })
            }),
        };
        let core_1 = tagged(1);
        glommio::spawn_local(async move {
            while let Some(socket) = handed.recv().await {
                glommio::spawn_local(serve_connection(socket, core_1.clone(), None)).detach();
            }
        })
        .detach();
        glommio::spawn_local(serve_node_peers(listener, tagged(0), router, None)).detach();
        addr
    }

    #[test]
    fn a_hello_routes_the_connection_to_the_core_of_its_range() {
        run(async {
            let addr = routed_server();
            let deadline = Duration::from_secs(30);
            let here = PeerClient::new(addr, 0, None);
            let handed = PeerClient::new(addr, 1, None);
            for round in 0..3u8 {
                assert_eq!(
                    here.call(call(0, &[round]), deadline).await,
                    Ok(vec![round, 0])
                );
                assert_eq!(
                    handed.call(call(1, &[round]), deadline).await,
                    Ok(vec![round, 1])
                );
            }
            // A big frame right after the hand-off arrives whole.
            let big = PeerClient::new(addr, 1, None);
            let answer = big
                .call(call(1, &vec![7u8; 4 << 20]), deadline)
                .await
                .unwrap();
            assert_eq!((answer.len(), answer.last()), ((4 << 20) + 1, Some(&1)));
            let nowhere = PeerClient::new(addr, 5, None);
            assert!(matches!(
                nowhere.call(call(5, b"x"), deadline).await,
                Err(TransportError::Refused(_, why)) if why == "range 5 is not hosted here"
            ));
        });
    }

    #[test]
    fn a_call_refused_as_not_on_that_core_is_rerouted_by_a_hello_naming_its_range() {
        run(async {
            let addr = routed_server();
            let deadline = Duration::from_secs(30);
            // Connected for range 0 (core 0), asked for range 1, which the
            // peer runs on core 1: refused there, sent again on a
            // connection of its own, then served by it from then on.
            let client = PeerClient::new(addr, 0, None);
            for round in 0..3u8 {
                assert_eq!(
                    client.call(call(1, &[round]), deadline).await,
                    Ok(vec![round, 1])
                );
                assert_eq!(
                    client.call(call(0, &[round]), deadline).await,
                    Ok(vec![round, 0])
                );
            }
            assert!(client.rerouted.borrow().contains(&1));
            assert_eq!(client.range_links.borrow().len(), 1);
            // A range the peer does not host at all: the rerouting hello
            // is refused, with the peer's reason.
            assert!(matches!(
                client.call(call(5, b"x"), deadline).await,
                Err(TransportError::Refused(_, why)) if why == "range 5 is not hosted here"
            ));
        });
    }

    #[test]
    fn a_connection_without_a_good_hello_is_refused_or_closed() {
        run(async {
            let addr = routed_server();
            // Raw frames on a raw connection.
            async fn exchange(
                addr: SocketAddr,
                frame: PeerCall,
                call_id: u64,
            ) -> Option<DecodedFrame> {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let mut bytes = Vec::new();
                encode_peer_frame(
                    &mut FlatBufferBuilder::new(),
                    call_id,
                    &frame,
                    false,
                    None,
                    &mut bytes,
                );
                stream.write_all(&bytes).await.unwrap();
                let body = read_one_frame(&mut stream, MAX_HELLO_FRAME_BYTES)
                    .await
                    .ok()?;
                Some(decode_peer(&body).unwrap())
            }
            // Another protocol version: answered with why, then closed.
            let old = PeerCall {
                group: 0,
                kind: PeerCallKind::Hello,
                payload: postcard::to_allocvec(&(PEER_PROTOCOL_VERSION + 1)).unwrap(),
            };
            let answer = exchange(addr, old, 3).await.expect("an answer");
            assert_eq!((answer.call_id, answer.is_answer), (3, true));
            assert!(answer.error.unwrap().contains("peer protocol version 2"));
            // A call before any hello: closed without an answer.
            assert!(exchange(addr, call(0, b"x"), 4).await.is_none());
            // A hello on an open connection is refused; the connection
            // goes on.
            let client = PeerClient::new(addr, 0, None);
            let hello_again = PeerCall {
                group: 0,
                kind: PeerCallKind::Hello,
                payload: postcard::to_allocvec(&PEER_PROTOCOL_VERSION).unwrap(),
            };
            assert!(matches!(
                client.call(hello_again, Duration::from_secs(30)).await,
                Err(TransportError::Refused(_, why)) if why.contains("only opens a connection")
            ));
            assert_eq!(
                client.call(call(0, b"y"), Duration::from_secs(30)).await,
                Ok(b"y\0".to_vec())
            );
        });
    }

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let mut builder = FlatBufferBuilder::new();
        let mut out = Vec::new();
        let original = PeerCall {
            group: 42,
            kind: PeerCallKind::Vote,
            payload: vec![1, 2, 3],
        };
        encode_peer_frame(&mut builder, 9, &original, true, Some("why"), &mut out);
        let decoded = decode_peer(&out[FRAME_HEADER_BYTES..]).unwrap();
        assert_eq!(decoded.call, original);
        assert_eq!((decoded.call_id, decoded.is_answer), (9, true));
        assert_eq!(decoded.error.as_deref(), Some("why"));
        assert!(decode_peer(&[0xff; 12]).is_err());
    }
}
