//! A small client of a node's admin HTTP API (`docs/http-api.md`): blocking
//! for the `tinker cluster` commands, async (tokio) for a node joining a
//! cluster.
//!
//! One request per connection (`Connection: close`), HTTP/1.1, JSON bodies,
//! HTTP basic auth when [`Credentials`] are given (a node with
//! authentication on needs a `cluster_admin` user);
//! TLS when the node has a `[tls]` table ([`ClientTls`]: the CA to trust,
//! a client certificate if the node asks for one);
//! the node's errors (`{"error":{"code","message"}}`) come back as
//! [`AdminError::Api`] with their stable code. Every request has a deadline
//! for connecting, writing and reading.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::Arc;
use std::time::Duration;

use crate::ClientTls;

/// The largest answer read (a cluster status of many shards is well below).
pub const MAX_ADMIN_ANSWER_BYTES: usize = 16 << 20;

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// Could not reach the node, or the connection failed.
    #[error("cannot reach the admin API at {addr}: {source}")]
    Io {
        /// The address.
        addr: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The node answered with an error.
    #[error("{code} (HTTP {status}): {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// Stable error code (`docs/http-api.md`).
        code: String,
        /// Explanation.
        message: String,
    },
    /// The answer is not HTTP/JSON as expected.
    #[error("unexpected answer from {addr}: {detail}")]
    Malformed {
        /// The address.
        addr: String,
        /// What was wrong.
        detail: String,
    },
}

/// A user and password (HTTP basic auth, the flatbuffers `Hello`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user.
    pub user: String,
    /// Its password (`Debug` never shows it).
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// How an admin request proves who sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminAuth {
    /// HTTP basic auth: a user and its password.
    Basic(Credentials),
    /// A bearer token (`POST /v1/tokens`; `Debug` never shows it).
    Bearer(BearerToken),
}

/// A bearer token, redacted in `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(pub String);

impl std::fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Sends `method path` with an optional JSON body to the admin API at
/// `addr` and returns the JSON answer of a 2xx status (blocking: for the
/// `tinker` CLI; a node uses [`request_async`]).
pub fn request(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, AdminError> {
    request_as(addr, method, path, body, timeout, None, None)
}

/// The host part of `host:port` (`[v6]:port` gives `v6`).
fn host_of(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(host, _)| host);
    host.trim_start_matches('[').trim_end_matches(']')
}

/// [`request`] authenticated by `auth` (basic auth or a bearer token),
/// over TLS when `tls` is given.
pub fn request_as(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
    auth: Option<&AdminAuth>,
    tls: Option<&ClientTls>,
) -> Result<serde_json::Value, AdminError> {
    let io = |source| io_error(addr, source);
    let tls_error = |detail: String| malformed(addr, format!("TLS: {detail}"));
    let socket = addr
        .to_socket_addrs()
        .map_err(io)?
        .next()
        .ok_or_else(|| malformed(addr, "the address does not resolve".into()))?;
    let mut stream = TcpStream::connect_timeout(&socket, timeout).map_err(io)?;
    stream.set_read_timeout(Some(timeout)).map_err(io)?;
    stream.set_write_timeout(Some(timeout)).map_err(io)?;
    let request = request_bytes(addr, method, path, body, auth);
    let mut answer = Vec::new();
    let limit = MAX_ADMIN_ANSWER_BYTES as u64 + 1;
    match tls {
        None => {
            stream.write_all(&request).map_err(io)?;
            stream.take(limit).read_to_end(&mut answer).map_err(io)?;
        }
        Some(tls) => {
            let config = Arc::new(tls.config().map_err(tls_error)?);
            let name = tls.expected_name(host_of(addr)).map_err(tls_error)?;
            let connection = rustls::ClientConnection::new(config, name)
                .map_err(|error| tls_error(error.to_string()))?;
            let mut stream = rustls::StreamOwned::new(connection, stream);
            stream.write_all(&request).map_err(io)?;
            match stream.take(limit).read_to_end(&mut answer) {
                Ok(_) => {}
                // The node closes after its answer, maybe without a
                // close_notify; the answer is whole if it parses.
                Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
                Err(error) => return Err(io(error)),
            }
        }
    }
    parse_answer(addr, &answer)
}

/// [`request`] on tokio: the whole exchange (connect, write, read) within
/// `timeout`, without blocking a thread.
pub async fn request_async(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
) -> Result<serde_json::Value, AdminError> {
    request_async_as(addr, method, path, body, timeout, None, None).await
}

/// [`request_async`] authenticated by `auth` (basic auth or a bearer
/// token), over TLS when `tls` is given.
pub async fn request_async_as(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    timeout: Duration,
    auth: Option<&AdminAuth>,
    tls: Option<&ClientTls>,
) -> Result<serde_json::Value, AdminError> {
    use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
    let io = |source| io_error(addr, source);
    async fn exchange_on(
        mut stream: impl AsyncRead + AsyncWrite + Unpin,
        request: &[u8],
    ) -> std::io::Result<Vec<u8>> {
        stream.write_all(request).await?;
        let mut answer = Vec::new();
        let read = (&mut stream)
            .take(MAX_ADMIN_ANSWER_BYTES as u64 + 1)
            .read_to_end(&mut answer)
            .await;
        match read {
            Ok(_) => Ok(answer),
            // See `request_as`: a TLS close without close_notify.
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => Ok(answer),
            Err(error) => Err(error),
        }
    }
    let request = request_bytes(addr, method, path, body, auth);
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await.map_err(io)?;
        match tls {
            None => exchange_on(stream, &request).await.map_err(io),
            Some(tls) => {
                let stream = tls
                    .connect(host_of(addr), stream)
                    .await
                    .map_err(|detail| malformed(addr, format!("TLS: {detail}")))?;
                exchange_on(stream, &request).await.map_err(io)
            }
        }
    };
    let answer = tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| {
            io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))
        })??;
    parse_answer(addr, &answer)
}

fn io_error(addr: &str, source: std::io::Error) -> AdminError {
    AdminError::Io {
        addr: addr.to_owned(),
        source,
    }
}

fn malformed(addr: &str, detail: String) -> AdminError {
    AdminError::Malformed {
        addr: addr.to_owned(),
        detail,
    }
}

/// One HTTP/1.1 request, `Connection: close`, with a JSON body.
fn request_bytes(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&serde_json::Value>,
    auth: Option<&AdminAuth>,
) -> Vec<u8> {
    use base64::Engine;
    let body = body.map(|json| json.to_string()).unwrap_or_default();
    let authorization = match auth {
        None => String::new(),
        Some(AdminAuth::Basic(credentials)) => {
            let pair = format!("{}:{}", credentials.user, credentials.password);
            format!(
                "Authorization: Basic {}\r\n",
                base64::engine::general_purpose::STANDARD.encode(pair)
            )
        }
        Some(AdminAuth::Bearer(BearerToken(token))) => {
            format!("Authorization: Bearer {token}\r\n")
        }
    };
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{authorization}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body.as_bytes());
    bytes
}

/// The JSON of a 2xx answer, or the node's error.
fn parse_answer(addr: &str, answer: &[u8]) -> Result<serde_json::Value, AdminError> {
    if answer.len() > MAX_ADMIN_ANSWER_BYTES {
        return Err(malformed(
            addr,
            format!("answer over {MAX_ADMIN_ANSWER_BYTES} bytes"),
        ));
    }
    let split = answer
        .windows(4)
        .position(|window| window == b"\r\n\r\n")
        .ok_or_else(|| malformed(addr, "no end of headers".into()))?;
    let head = String::from_utf8_lossy(&answer[..split]);
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed(addr, format!("bad status line {:?}", head.lines().next())))?;
    let chunked = head.lines().any(|line| {
        line.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let raw = &answer[split + 4..];
    // A TLS answer may end without close_notify (see `request_as`): one cut
    // short is refused, never taken for a whole one.
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    if length.is_some_and(|length| raw.len() < length) {
        return Err(malformed(addr, "the answer was cut short".into()));
    }
    let payload = if chunked {
        dechunk(raw).ok_or_else(|| malformed(addr, "bad chunked body".into()))?
    } else {
        raw.to_vec()
    };
    let json: serde_json::Value = if payload.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_slice(&payload)
            .map_err(|error| malformed(addr, format!("body is not JSON: {error}")))?
    };
    if (200..300).contains(&status) {
        return Ok(json);
    }
    let field = |name: &str| {
        json.pointer(&format!("/error/{name}"))
            .and_then(|value| value.as_str())
            .unwrap_or("")
            .to_owned()
    };
    Err(AdminError::Api {
        status,
        code: field("code"),
        message: field("message"),
    })
}

fn dechunk(mut raw: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&raw[..line_end]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(raw.get(..size)?);
        raw = raw.get(size + 2..)?;
    }
}
