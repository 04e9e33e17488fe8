//! One benchmark connection per target protocol, sharing one loop shape:
//! write a batch of `pipeline` requests with one system call, then read the
//! `pipeline` answers. Both drivers are equally lean (a codec on a raw
//! socket, no per-request task or allocation), so the comparison measures
//! the servers, not the clients.

use std::io;

use flatbuffers::FlatBufferBuilder;
use tinkerdb_client::codec::{decode, encode_request, Request, Response};
use tinkerdb_client::SetCondition;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

use crate::workload::{key_name, Op};

/// Which server a connection speaks to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// TinkerDB's flatbuffers protocol, bound to a tenant.
    TinkerDb {
        /// Tenant name.
        tenant: String,
    },
    /// Redis's RESP2.
    Redis,
}

/// One connection of the load generator.
pub struct Connection {
    target: Target,
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    out: Vec<u8>,
    key: Vec<u8>,
    builder: FlatBufferBuilder<'static>,
    body: Vec<u8>,
    line: Vec<u8>,
    next_request_id: u64,
}

/// Outcome of one answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// Success (including "not found").
    Ok,
    /// The server answered with an error.
    Error,
}

impl Connection {
    /// Connects and, for TinkerDB, performs the handshake; with `login`
    /// (user, password) it authenticates first (TinkerDB's Hello, RESP's
    /// `AUTH user password`).
    pub async fn open(
        addr: &str,
        target: Target,
        login: Option<(&str, &str)>,
    ) -> io::Result<Connection> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (reader, writer) = stream.into_split();
        let mut connection = Connection {
            target,
            reader: BufReader::with_capacity(256 << 10, reader),
            writer,
            out: Vec::with_capacity(64 << 10),
            key: Vec::new(),
            builder: FlatBufferBuilder::with_capacity(1024),
            body: Vec::new(),
            line: Vec::new(),
            next_request_id: 1,
        };
        let (user, password) = login.unwrap_or(("", ""));
        if connection.target == Target::Redis && login.is_some() {
            connection.out.extend_from_slice(b"*3\r\n$4\r\nAUTH\r\n");
            for arg in [user, password] {
                connection
                    .out
                    .extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
                connection.out.extend_from_slice(arg.as_bytes());
                connection.out.extend_from_slice(b"\r\n");
            }
            connection.flush().await?;
            if connection.read_answer().await? != Answer::Ok {
                return Err(io::Error::other(format!("AUTH refused for user {user:?}")));
            }
        }
        if let Target::TinkerDb { tenant } = connection.target.clone() {
            let hello = Request::Hello {
                tenant: &tenant,
                client_name: "tinkerdb-bench",
                stale_reads: false,
                user,
                password,
            };
            encode_request(&mut connection.builder, 0, &hello, &mut connection.out);
            connection.flush().await?;
            if connection.read_answer().await? != Answer::Ok {
                return Err(io::Error::other(format!(
                    "handshake refused for tenant {tenant:?}"
                )));
            }
        }
        Ok(connection)
    }

    /// Queues one operation (sent by [`Connection::flush`]).
    pub fn queue(&mut self, op: Op, value: &[u8]) {
        let (n, is_set) = match op {
            Op::Get(n) => (n, false),
            Op::Set(n) => (n, true),
        };
        key_name(n, &mut self.key);
        match &self.target {
            Target::TinkerDb { .. } => {
                let request = if is_set {
                    Request::Set {
                        key: &self.key,
                        value,
                        ttl_ms: 0,
                        condition: SetCondition::Always,
                    }
                } else {
                    Request::Get { key: &self.key }
                };
                self.next_request_id += 1;
                encode_request(
                    &mut self.builder,
                    self.next_request_id,
                    &request,
                    &mut self.out,
                );
            }
            Target::Redis => {
                let parts: &[&[u8]] = if is_set {
                    &[b"SET", &self.key, value]
                } else {
                    &[b"GET", &self.key]
                };
                resp_command(&mut self.out, parts);
            }
        }
    }

    /// Writes everything queued.
    pub async fn flush(&mut self) -> io::Result<()> {
        self.writer.write_all(&self.out).await?;
        self.out.clear();
        Ok(())
    }

    /// Reads one answer.
    pub async fn read_answer(&mut self) -> io::Result<Answer> {
        match self.target {
            Target::TinkerDb { .. } => {
                let mut header = [0u8; 4];
                self.reader.read_exact(&mut header).await?;
                self.body.resize(u32::from_le_bytes(header) as usize, 0);
                self.reader.read_exact(&mut self.body).await?;
                match decode(&self.body) {
                    Ok((_, Response::Error { .. })) => Ok(Answer::Error),
                    Ok(_) => Ok(Answer::Ok),
                    Err(error) => Err(io::Error::other(error.to_string())),
                }
            }
            Target::Redis => {
                self.line.clear();
                self.reader.read_until(b'\n', &mut self.line).await?;
                match self.line.first() {
                    Some(b'+') | Some(b':') => Ok(Answer::Ok),
                    Some(b'-') => Ok(Answer::Error),
                    Some(b'$') => {
                        let text =
                            std::str::from_utf8(&self.line[1..]).map_err(io::Error::other)?;
                        let length: i64 = text.trim().parse().map_err(io::Error::other)?;
                        if length >= 0 {
                            self.body.resize(length as usize + 2, 0);
                            self.reader.read_exact(&mut self.body).await?;
                        }
                        Ok(Answer::Ok)
                    }
                    _ => Err(io::Error::other("unexpected RESP reply")),
                }
            }
        }
    }
}

/// Appends a RESP array of bulk strings.
fn resp_command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    use std::io::Write;
    write!(out, "*{}\r\n", parts.len()).expect("write to a Vec");
    for part in parts {
        write!(out, "${}\r\n", part.len()).expect("write to a Vec");
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}
