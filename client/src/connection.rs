//! One pipelined connection to a node.
//!
//! Callers encode their request, register a reply slot under a fresh request
//! id, and hand the frame to the writer task, which writes every frame queued
//! at that moment with one system call. The reader task decodes answers and
//! completes the slot with the same id. Many requests are thus in flight on
//! one connection at once (pipelining), bounded by [`MAX_QUEUED_FRAMES`].
//!
//! When the stream breaks, every request in flight fails with the same error
//! and the connection reports itself broken so the pool replaces it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use flatbuffers::FlatBufferBuilder;
use tinkerdb_schemas::FRAME_HEADER_BYTES;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::codec::{decode, encode_routed_request, Request, Response};
use crate::error::ClientError;
use crate::error::Route;

/// Frames a connection queues for its writer before callers wait.
pub const MAX_QUEUED_FRAMES: usize = 4096;

/// Largest response frame accepted (a KEYS answer can be big).
pub const MAX_RESPONSE_FRAME_BYTES: usize = 256 << 20;

/// Bytes the writer gathers into one write at most.
const WRITE_BATCH_BYTES: usize = 256 << 10;

type ReplySlot = oneshot::Sender<Result<Response, ClientError>>;

#[derive(Default)]
struct InFlight {
    slots: HashMap<u64, ReplySlot>,
    /// Set once the connection broke: new requests fail with it at once.
    broken_by: Option<ClientError>,
}

/// What the node said in its HelloOk.
#[derive(Debug, Clone)]
pub struct HelloInfo {
    /// Tenant bound.
    pub tenant: String,
    /// Node's cores.
    pub cores: u32,
    /// The node's id (0: standalone).
    pub node_id: u64,
    /// Cluster mode: every registered member's id and client address.
    pub nodes: Vec<(u64, String)>,
}

/// A connected, handshaken connection.
pub struct Connection {
    next_request_id: AtomicU64,
    in_flight: Arc<Mutex<InFlight>>,
    outbox: mpsc::Sender<Vec<u8>>,
    broken: Arc<AtomicBool>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Connection {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl Connection {
    /// Connects to `addr` (over TLS when `tls` is given) and binds the
    /// connection to `tenant`, or to the user of `credentials` (user,
    /// password) on a node with authentication on.
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        addr: &str,
        tenant: &str,
        client_name: &str,
        stale_reads: bool,
        credentials: Option<(&str, &str)>,
        tls: Option<&crate::tls::ClientTls>,
        connect_timeout: Duration,
        request_timeout: Duration,
    ) -> Result<(Connection, HelloInfo), ClientError> {
        let failed = |message: String| ClientError::Connection {
            addr: addr.to_owned(),
            message,
        };
        let stream = tokio::time::timeout(connect_timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| failed(format!("no connection within {connect_timeout:?}")))?
            .map_err(|error| failed(error.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|error| failed(error.to_string()))?;
        let (reader, writer): (FrameReader, FrameWriter) = match tls {
            None => {
                let (reader, writer) = stream.into_split();
                (Box::new(reader), Box::new(writer))
            }
            Some(tls) => {
                let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
                let handshake = tls.connect(host, stream);
                let stream = tokio::time::timeout(connect_timeout, handshake)
                    .await
                    .map_err(|_| failed(format!("no TLS handshake within {connect_timeout:?}")))?
                    .map_err(|error| failed(format!("TLS: {error}")))?;
                let (reader, writer) = tokio::io::split(stream);
                (Box::new(reader), Box::new(writer))
            }
        };
        let in_flight = Arc::new(Mutex::new(InFlight::default()));
        let broken = Arc::new(AtomicBool::new(false));
        let (outbox, frames) = mpsc::channel(MAX_QUEUED_FRAMES);
        let breaker = Breaker {
            addr: addr.to_owned(),
            in_flight: in_flight.clone(),
            broken: broken.clone(),
        };
        let tasks = [
            tokio::spawn(write_frames(writer, frames, breaker.clone())),
            tokio::spawn(read_frames(reader, breaker)),
        ];
        let connection = Connection {
            next_request_id: AtomicU64::new(1),
            in_flight,
            outbox,
            broken,
            tasks,
        };
        let (user, password) = credentials.unwrap_or_default();
        let hello = Request::Hello {
            tenant,
            client_name,
            stale_reads,
            user,
            password,
        };
        match connection.call(&hello, request_timeout).await? {
            Response::HelloOk {
                tenant,
                cores,
                node_id,
                nodes,
                ..
            } => Ok((
                connection,
                HelloInfo {
                    tenant,
                    cores,
                    node_id,
                    nodes,
                },
            )),
            Response::Error {
                code,
                message,
                owner,
            } => Err(ClientError::from_server(code, message, owner)),
            other => Err(ClientError::Protocol(format!(
                "expected HelloOk, got {other:?}"
            ))),
        }
    }

    /// True once the stream broke; the pool then opens a new connection.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Sends `request` and waits up to `timeout` for its answer.
    pub async fn call(
        &self,
        request: &Request<'_>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        self.call_routed(request, None, timeout).await
    }

    /// [`Self::call`] with the route the request's keys are believed to
    /// have (the node checks it).
    pub async fn call_routed(
        &self,
        request: &Request<'_>,
        route: Option<Route>,
        timeout: Duration,
    ) -> Result<Response, ClientError> {
        let request_id = self.next_request_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::new();
        encode_routed_request(
            &mut FlatBufferBuilder::new(),
            request_id,
            request,
            route,
            &mut frame,
        );
        let (slot, answer) = oneshot::channel();
        {
            let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
            if let Some(error) = &in_flight.broken_by {
                return Err(error.clone());
            }
            in_flight.slots.insert(request_id, slot);
        }
        let outcome = tokio::time::timeout(timeout, async {
            if self.outbox.send(frame).await.is_err() {
                return Err(ClientError::Protocol("connection writer stopped".into()));
            }
            answer
                .await
                .map_err(|_| ClientError::Protocol("answer slot dropped".into()))?
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                self.in_flight
                    .lock()
                    .expect("in-flight map poisoned")
                    .slots
                    .remove(&request_id);
                Err(ClientError::Timeout(timeout))
            }
        }
    }
}

/// Marks the connection broken and fails everything in flight, once.
#[derive(Clone)]
struct Breaker {
    addr: String,
    in_flight: Arc<Mutex<InFlight>>,
    broken: Arc<AtomicBool>,
}

impl Breaker {
    fn break_with(&self, error: ClientError) {
        self.broken.store(true, Ordering::Release);
        let mut in_flight = self.in_flight.lock().expect("in-flight map poisoned");
        if in_flight.broken_by.is_none() {
            in_flight.broken_by = Some(error.clone());
        }
        for (_, slot) in in_flight.slots.drain() {
            let _ = slot.send(Err(error.clone()));
        }
    }

    fn connection_error(&self, message: String) -> ClientError {
        ClientError::Connection {
            addr: self.addr.clone(),
            message,
        }
    }
}

/// The write half of a connection, plain or TLS.
type FrameWriter = Box<dyn tokio::io::AsyncWrite + Send + Unpin>;
/// The read half of a connection, plain or TLS.
type FrameReader = Box<dyn tokio::io::AsyncRead + Send + Unpin>;

async fn write_frames(
    mut writer: FrameWriter,
    mut frames: mpsc::Receiver<Vec<u8>>,
    breaker: Breaker,
) {
    let mut batch = Vec::new();
    while let Some(frame) = frames.recv().await {
        batch.clear();
        batch.extend_from_slice(&frame);
        while batch.len() < WRITE_BATCH_BYTES {
            match frames.try_recv() {
                Ok(frame) => batch.extend_from_slice(&frame),
                Err(_) => break,
            }
        }
        if let Err(error) = writer.write_all(&batch).await {
            breaker.break_with(breaker.connection_error(format!("write failed: {error}")));
            return;
        }
    }
}

async fn read_frames(reader: FrameReader, breaker: Breaker) {
    let mut reader = BufReader::with_capacity(64 << 10, reader);
    let mut body = Vec::new();
    let error = loop {
        let mut header = [0u8; FRAME_HEADER_BYTES];
        if let Err(error) = reader.read_exact(&mut header).await {
            break breaker.connection_error(format!("closed by the node ({error})"));
        }
        let length = u32::from_le_bytes(header) as usize;
        if length > MAX_RESPONSE_FRAME_BYTES {
            break ClientError::Protocol(format!(
                "response frame of {length} bytes is over the client's limit"
            ));
        }
        body.resize(length, 0);
        if let Err(error) = reader.read_exact(&mut body).await {
            break breaker.connection_error(format!("closed mid-frame ({error})"));
        }
        let (request_id, response) = match decode(&body) {
            Ok(decoded) => decoded,
            Err(error) => break error,
        };
        if request_id == 0 {
            // An error about the connection itself (e.g. Busy): it ends it.
            if let Response::Error {
                code,
                message,
                owner,
            } = response
            {
                break ClientError::from_server(code, message, owner);
            }
            continue;
        }
        let slot = breaker
            .in_flight
            .lock()
            .expect("in-flight map poisoned")
            .slots
            .remove(&request_id);
        // No slot: the caller timed out and went away.
        if let Some(slot) = slot {
            let _ = slot.send(Ok(response));
        }
    };
    breaker.break_with(error);
}
