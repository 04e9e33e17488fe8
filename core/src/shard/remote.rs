//! A shard request as it travels to another node, and its answer back: the
//! wire form of requests for a range this node does not replicate
//! (`coord::forward` sends them, the receiving node runs them as its own).
//!
//! Writes travel as the same [`WriteOp`] a Raft entry carries and come back
//! as the same [`OpAnswer`], so a forwarded write means exactly what a local
//! one does. Reads have twins here. Tenants travel by name (ids are per
//! node) and keys without their slot: the receiving node hashes each key
//! itself, and its shard refuses a key of another range (`WrongShard`), so
//! a request cannot reach data its keys do not name.
//!
//! Encoding: postcard, like the Raft entries, of flat types: a batch is a
//! list of requests, a stale read a flag, so no input makes the decoder
//! recurse (postcard has no depth limit). Control requests that only mean
//! something on their own node (an on-demand snapshot, a quota share) are
//! never forwarded: [`RemoteRequest::of_request`] refuses them.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::{hash_slot, Quota, TenantId, TenantUsage};

use crate::error::ProtocolError;
use crate::shard::write_op::{OpAnswer, WriteOp};
use crate::shard::{KeyFilter, ShardReply, ShardRequest, SlotKey, ValueRead};

/// A forwarded request: one request, or a pipeline's batch of them (run in
/// order). Flat on purpose: nothing on the wire nests, so no input can make
/// the decoder recurse deeply (postcard has no depth limit).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteRequest {
    /// A `ShardRequest::Batch` (answered by a batch), or a single request
    /// (`ops` holds exactly one).
    pub batch: bool,
    /// The requests.
    pub ops: Vec<RemoteOp>,
}

/// One forwarded request (the twin of a [`ShardRequest`] that can travel).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteOp {
    /// Any write: the op a Raft entry carries.
    Write {
        /// The tenant's name.
        tenant: String,
        /// The write.
        op: WriteOp,
    },
    /// `ShardRequest::Get`.
    Get {
        /// The tenant's name.
        tenant: String,
        /// Key.
        key: Vec<u8>,
        /// A stale read (`ShardRequest::Stale`).
        stale: bool,
    },
    /// `ShardRequest::GetMany`.
    GetMany {
        /// The tenant's name.
        tenant: String,
        /// Keys.
        keys: Vec<Vec<u8>>,
        /// Byte budget of the values.
        max_bytes: u64,
        /// A stale read.
        stale: bool,
    },
    /// `ShardRequest::Exists`.
    Exists {
        /// The tenant's name.
        tenant: String,
        /// Keys.
        keys: Vec<Vec<u8>>,
        /// A stale read.
        stale: bool,
    },
    /// `ShardRequest::Scan`.
    Scan {
        /// The tenant's name.
        tenant: String,
        /// First slot to look at.
        start_slot: u32,
        /// Keys must start with this.
        prefix: Vec<u8>,
        /// Keys must match this glob.
        pattern: Vec<u8>,
        /// Keys to gather before stopping.
        max_keys: u64,
        /// A stale read.
        stale: bool,
    },
    /// `ShardRequest::Usage`.
    Usage {
        /// The tenant's name.
        tenant: String,
        /// A stale read.
        stale: bool,
    },
}

/// A value read, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueOnWire {
    value: Vec<u8>,
    version: u64,
    expires_at_ms: Option<u64>,
}

/// The answer to one [`RemoteOp`] (the twin of a [`ShardReply`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum RemoteAnswer {
    /// A write's answer, as a replica computed it.
    Write(OpAnswer),
    /// `ShardReply::Value`.
    Value(Option<ValueOnWire>),
    /// `ShardReply::Values`.
    Values(Vec<Option<ValueOnWire>>),
    /// `ShardReply::TooLarge`.
    TooLarge(u64),
    /// `ShardReply::Count` (Exists, and the writes that count: DEL, MSETNX,
    /// FLUSHDB).
    Count(u64),
    /// `ShardReply::Scanned`.
    Scanned {
        /// Matching keys.
        keys: Vec<Vec<u8>>,
        /// Where the next step starts.
        next_slot: u32,
    },
    /// `ShardReply::Usage`.
    Usage {
        /// Keys held.
        keys: u64,
        /// Key and value bytes held.
        bytes: u64,
        /// The quota's key limit there.
        max_keys: Option<u64>,
        /// The quota's byte limit there.
        max_bytes: Option<u64>,
    },
    /// `ShardReply::Refused`.
    Refused(String),
    /// `ShardReply::Error` (the owner hint does not travel: the routing
    /// answer is the forwarding node's to give).
    Error {
        /// `ErrorCode` value.
        code: u16,
        /// Detail.
        message: String,
    },
}

/// What the receiving node answers a forwarded request with: the answers
/// (one, or a batch's, in order), and the leader of the range as that node
/// knows it (the sender's next request goes there first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteReply {
    /// A `ShardReply::Batch`'s answers, or a single answer.
    pub batch: bool,
    /// The answers.
    pub answers: Vec<RemoteAnswer>,
    /// The range's leader, if the node knows it.
    pub leader: Option<u64>,
}

fn not_forwarded(what: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        format!("{what} is not forwarded to another node"),
    )
}

fn malformed(what: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::MalformedFrame,
        format!("a forwarded request {what}"),
    )
}

impl RemoteRequest {
    /// The wire form of `request`, naming tenants with `name_of`. Control
    /// requests (snapshot, quota share) are refused: they are this node's.
    pub fn of_request(
        request: &ShardRequest,
        name_of: &impl Fn(TenantId) -> Arc<str>,
    ) -> Result<RemoteRequest, ProtocolError> {
        Ok(match request {
            ShardRequest::Batch(requests) => RemoteRequest {
                batch: true,
                ops: requests
                    .iter()
                    .map(|request| RemoteOp::of_request(request, name_of))
                    .collect::<Result<_, _>>()?,
            },
            request => RemoteRequest {
                batch: false,
                ops: vec![RemoteOp::of_request(request, name_of)?],
            },
        })
    }

    /// Whether running this may change data (a sender never sends such a
    /// request twice: its first attempt may have been applied).
    pub fn writes(&self) -> bool {
        self.ops
            .iter()
            .any(|op| matches!(op, RemoteOp::Write { .. }))
    }

    /// The request this stands for on the receiving node, its tenants
    /// resolved with `id_of` (an unknown name is `UnknownTenant`).
    pub fn into_request(
        self,
        id_of: &impl Fn(&str) -> Option<TenantId>,
    ) -> Result<ShardRequest, ProtocolError> {
        match self.batch {
            true => Ok(ShardRequest::Batch(
                self.ops
                    .into_iter()
                    .map(|op| op.into_request(id_of))
                    .collect::<Result<_, _>>()?,
            )),
            false => {
                let [op]: [RemoteOp; 1] = self
                    .ops
                    .try_into()
                    .map_err(|_| malformed("that is not a batch holds other than one request"))?;
                op.into_request(id_of)
            }
        }
    }
}

impl RemoteOp {
    /// The wire form of one request (not a batch).
    fn of_request(
        request: &ShardRequest,
        name_of: &impl Fn(TenantId) -> Arc<str>,
    ) -> Result<RemoteOp, ProtocolError> {
        if let Some((tenant, op)) = WriteOp::of_request(request) {
            return Ok(RemoteOp::Write {
                tenant: name_of(tenant).to_string(),
                op,
            });
        }
        let (read, stale) = match request {
            ShardRequest::Stale(read) => (&**read, true),
            read => (read, false),
        };
        let keys = |keys: &[SlotKey]| keys.iter().map(|key| key.key.to_vec()).collect();
        Ok(match read {
            ShardRequest::Get { tenant, key } => RemoteOp::Get {
                tenant: name_of(*tenant).to_string(),
                key: key.key.to_vec(),
                stale,
            },
            ShardRequest::GetMany {
                tenant,
                keys: many,
                max_bytes,
            } => RemoteOp::GetMany {
                tenant: name_of(*tenant).to_string(),
                keys: keys(many),
                max_bytes: *max_bytes as u64,
                stale,
            },
            ShardRequest::Exists { tenant, keys: many } => RemoteOp::Exists {
                tenant: name_of(*tenant).to_string(),
                keys: keys(many),
                stale,
            },
            ShardRequest::Scan {
                tenant,
                start_slot,
                filter,
                max_keys,
            } => RemoteOp::Scan {
                tenant: name_of(*tenant).to_string(),
                start_slot: *start_slot,
                prefix: filter.prefix.to_vec(),
                pattern: filter.pattern.to_vec(),
                max_keys: *max_keys as u64,
                stale,
            },
            ShardRequest::Usage { tenant } => RemoteOp::Usage {
                tenant: name_of(*tenant).to_string(),
                stale,
            },
            ShardRequest::Snapshot => return Err(not_forwarded("a snapshot")),
            ShardRequest::SetQuota { .. } => return Err(not_forwarded("a quota share")),
            other => return Err(not_forwarded(&format!("{other:?}"))),
        })
    }

    /// The request this stands for on the receiving node.
    fn into_request(
        self,
        id_of: &impl Fn(&str) -> Option<TenantId>,
    ) -> Result<ShardRequest, ProtocolError> {
        let tenant_id = |name: &str| {
            id_of(name).ok_or_else(|| {
                ProtocolError::new(
                    ErrorCode::UnknownTenant,
                    format!("no tenant {name:?} on the node the request was forwarded to"),
                )
            })
        };
        let slot_key = |tenant: &str, key: Vec<u8>| {
            let key = Bytes::from(key);
            SlotKey {
                slot: hash_slot(tenant, &key),
                key,
            }
        };
        let slot_keys = |tenant: &str, keys: Vec<Vec<u8>>| -> Vec<SlotKey> {
            keys.into_iter().map(|key| slot_key(tenant, key)).collect()
        };
        let (read, stale) = match self {
            RemoteOp::Write { tenant, op } => {
                return Ok(op.into_request(tenant_id(&tenant)?, &tenant))
            }
            RemoteOp::Get { tenant, key, stale } => (
                ShardRequest::Get {
                    tenant: tenant_id(&tenant)?,
                    key: slot_key(&tenant, key),
                },
                stale,
            ),
            RemoteOp::GetMany {
                tenant,
                keys,
                max_bytes,
                stale,
            } => (
                ShardRequest::GetMany {
                    tenant: tenant_id(&tenant)?,
                    keys: slot_keys(&tenant, keys),
                    max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
                },
                stale,
            ),
            RemoteOp::Exists {
                tenant,
                keys,
                stale,
            } => (
                ShardRequest::Exists {
                    tenant: tenant_id(&tenant)?,
                    keys: slot_keys(&tenant, keys),
                },
                stale,
            ),
            RemoteOp::Scan {
                tenant,
                start_slot,
                prefix,
                pattern,
                max_keys,
                stale,
            } => (
                ShardRequest::Scan {
                    tenant: tenant_id(&tenant)?,
                    start_slot,
                    filter: Arc::new(KeyFilter {
                        prefix: Bytes::from(prefix),
                        pattern: Bytes::from(pattern),
                    }),
                    max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
                },
                stale,
            ),
            RemoteOp::Usage { tenant, stale } => (
                ShardRequest::Usage {
                    tenant: tenant_id(&tenant)?,
                },
                stale,
            ),
        };
        Ok(match stale {
            true => ShardRequest::Stale(Box::new(read)),
            false => read,
        })
    }
}

impl ValueOnWire {
    fn of(read: ValueRead) -> ValueOnWire {
        ValueOnWire {
            value: read.value.to_vec(),
            version: read.version,
            expires_at_ms: read.expires_at_ms,
        }
    }

    fn into_read(self) -> ValueRead {
        ValueRead {
            value: Bytes::from(self.value),
            version: self.version,
            expires_at_ms: self.expires_at_ms,
        }
    }
}

impl RemoteReply {
    /// The wire form of the reply the receiving node gave, with the
    /// range's leader as it knows it.
    pub fn of_reply(reply: ShardReply, leader: Option<u64>) -> RemoteReply {
        let (batch, answers) = match reply {
            ShardReply::Batch(replies) => (
                true,
                replies.into_iter().map(RemoteAnswer::of_reply).collect(),
            ),
            reply => (false, vec![RemoteAnswer::of_reply(reply)]),
        };
        RemoteReply {
            batch,
            answers,
            leader,
        }
    }

    /// An error answering the whole request.
    pub fn error(error: &ProtocolError) -> RemoteReply {
        RemoteReply {
            batch: false,
            answers: vec![RemoteAnswer::error(error)],
            leader: None,
        }
    }

    /// The reply this stands for, to `request` as the sending node made it
    /// (its tenant ids). An answer that does not fit the request (another
    /// version, a bug) becomes an `Internal` error, never a panic.
    pub fn into_reply(self, request: &ShardRequest) -> ShardReply {
        match (self.batch, request) {
            (true, ShardRequest::Batch(requests)) if self.answers.len() == requests.len() => {
                ShardReply::Batch(
                    self.answers
                        .into_iter()
                        .zip(requests)
                        .map(|(answer, request)| answer.into_reply(request))
                        .collect(),
                )
            }
            (false, request) if self.answers.len() == 1 => {
                let answer = self.answers.into_iter().next().expect("one answer");
                match (answer, request) {
                    // An error or refusal answers a whole batch too.
                    (answer @ (RemoteAnswer::Error { .. } | RemoteAnswer::Refused(_)), _) => {
                        answer.into_reply(request)
                    }
                    (_, ShardRequest::Batch(_)) => mismatch("a single answer to a batch"),
                    (answer, request) => answer.into_reply(request),
                }
            }
            _ => mismatch(&format!(
                "{} answers (batch: {})",
                self.answers.len(),
                self.batch
            )),
        }
    }
}

fn mismatch(what: &str) -> ShardReply {
    ShardReply::Error(ProtocolError::new(
        ErrorCode::Internal,
        format!("a forwarded request got an answer that does not fit it: {what}"),
    ))
}

impl RemoteAnswer {
    /// The wire form of one (not a batch's) reply.
    fn of_reply(reply: ShardReply) -> RemoteAnswer {
        match reply {
            reply @ (ShardReply::Written(_)
            | ShardReply::WrittenMany(..)
            | ShardReply::Updated(_)) => RemoteAnswer::Write(OpAnswer::of_reply(reply)),
            ShardReply::Value(read) => RemoteAnswer::Value(read.map(ValueOnWire::of)),
            ShardReply::Values(reads) => RemoteAnswer::Values(
                reads
                    .into_iter()
                    .map(|read| read.map(ValueOnWire::of))
                    .collect(),
            ),
            ShardReply::TooLarge(bytes) => RemoteAnswer::TooLarge(bytes as u64),
            ShardReply::Count(count) => RemoteAnswer::Count(count),
            ShardReply::Scanned { keys, next_slot } => RemoteAnswer::Scanned {
                keys: keys.into_iter().map(|key| key.to_vec()).collect(),
                next_slot,
            },
            ShardReply::Usage(usage) => RemoteAnswer::Usage {
                keys: usage.keys,
                bytes: usage.bytes,
                max_keys: usage.quota.max_keys,
                max_bytes: usage.quota.max_bytes,
            },
            ShardReply::Refused(reason) => RemoteAnswer::Refused(reason),
            ShardReply::Error(error) => RemoteAnswer::error(&error),
            other @ (ShardReply::Done | ShardReply::Snapshotted(_) | ShardReply::Batch(_)) => {
                RemoteAnswer::Error {
                    code: ErrorCode::Internal.0,
                    message: format!("a forwarded request answered {other:?}"),
                }
            }
        }
    }

    fn error(error: &ProtocolError) -> RemoteAnswer {
        RemoteAnswer::Error {
            code: error.code.0,
            message: error.message.clone(),
        }
    }

    /// The reply to one request (not a batch).
    fn into_reply(self, request: &ShardRequest) -> ShardReply {
        match (self, request) {
            (RemoteAnswer::Error { code, message }, _) => {
                ShardReply::Error(ProtocolError::new(ErrorCode(code), message))
            }
            (RemoteAnswer::Refused(reason), _) => ShardReply::Refused(reason),
            (_, ShardRequest::Batch(_)) => mismatch("an answer inside a batch to a batch"),
            (answer, ShardRequest::Stale(read)) => answer.into_reply(read),
            (RemoteAnswer::Write(answer), request) => match WriteOp::of_request(request) {
                Some((tenant, _)) => answer.into_reply(tenant),
                None => mismatch(&format!("{answer:?}")),
            },
            (RemoteAnswer::Value(read), ShardRequest::Get { .. }) => {
                ShardReply::Value(read.map(ValueOnWire::into_read))
            }
            (RemoteAnswer::Values(reads), ShardRequest::GetMany { .. }) => ShardReply::Values(
                reads
                    .into_iter()
                    .map(|read| read.map(ValueOnWire::into_read))
                    .collect(),
            ),
            (RemoteAnswer::TooLarge(bytes), ShardRequest::GetMany { .. }) => {
                ShardReply::TooLarge(usize::try_from(bytes).unwrap_or(usize::MAX))
            }
            // Exists, and writes that answer a count (DEL, MSETNX, FLUSHDB).
            (RemoteAnswer::Count(count), _) => ShardReply::Count(count),
            (RemoteAnswer::Scanned { keys, next_slot }, ShardRequest::Scan { .. }) => {
                ShardReply::Scanned {
                    keys: keys.into_iter().map(Bytes::from).collect(),
                    next_slot,
                }
            }
            (
                RemoteAnswer::Usage {
                    keys,
                    bytes,
                    max_keys,
                    max_bytes,
                },
                ShardRequest::Usage { .. },
            ) => ShardReply::Usage(TenantUsage {
                keys,
                bytes,
                quota: Quota {
                    max_keys,
                    max_bytes,
                },
            }),
            (answer, _) => mismatch(&format!("{answer:?}")),
        }
    }
}

/// Encodes a forwarded request.
pub fn encode_request(request: &RemoteRequest) -> Vec<u8> {
    postcard::to_allocvec(request).expect("a forwarded request serialises")
}

/// Decodes a forwarded request.
pub fn decode_request(bytes: &[u8]) -> Result<RemoteRequest, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable forwarded request: {error}"))
}

/// Encodes a forwarded request's reply.
pub fn encode_reply(reply: &RemoteReply) -> Vec<u8> {
    postcard::to_allocvec(reply).expect("a forwarded reply serialises")
}

/// Decodes a forwarded request's reply.
pub fn decode_reply(bytes: &[u8]) -> Result<RemoteReply, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable forwarded reply: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Update;
    use tinkerdb_storage::{SetOptions, StoreError, WriteOutcome};

    const TENANT: TenantId = 3;

    fn name_of(_: TenantId) -> Arc<str> {
        Arc::from("acme")
    }

    fn id_of(name: &str) -> Option<TenantId> {
        (name == "acme").then_some(TENANT)
    }

    fn key(text: &str) -> SlotKey {
        SlotKey {
            slot: hash_slot("acme", text.as_bytes()),
            key: Bytes::copy_from_slice(text.as_bytes()),
        }
    }

    /// Through the wire and back: the same request's debug form.
    fn round_trip(request: ShardRequest) {
        let wire = RemoteRequest::of_request(&request, &name_of).unwrap();
        let wire = decode_request(&encode_request(&wire)).unwrap();
        let back = wire.into_request(&id_of).unwrap();
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
    }

    fn get(text: &str) -> ShardRequest {
        ShardRequest::Get {
            tenant: TENANT,
            key: key(text),
        }
    }

    fn set(text: &str) -> ShardRequest {
        ShardRequest::Set {
            tenant: TENANT,
            key: key(text),
            value: Bytes::from_static(b"v"),
            options: SetOptions::default(),
        }
    }

    #[test]
    fn every_forwardable_request_survives_the_wire() {
        round_trip(get("a"));
        round_trip(set("a"));
        round_trip(ShardRequest::GetMany {
            tenant: TENANT,
            keys: vec![key("a"), key("b")],
            max_bytes: 1000,
        });
        round_trip(ShardRequest::Exists {
            tenant: TENANT,
            keys: vec![key("a")],
        });
        round_trip(ShardRequest::Scan {
            tenant: TENANT,
            start_slot: 7,
            filter: Arc::new(KeyFilter {
                prefix: Bytes::from_static(b"p"),
                pattern: Bytes::from_static(b"p*"),
            }),
            max_keys: 10,
        });
        round_trip(ShardRequest::Usage { tenant: TENANT });
        round_trip(ShardRequest::Batch(vec![
            ShardRequest::Update {
                tenant: TENANT,
                key: key("n"),
                update: Update::IncrBy(2),
            },
            ShardRequest::Delete {
                tenant: TENANT,
                keys: vec![key("a")],
            },
            ShardRequest::Stale(Box::new(get("b"))),
        ]));
        round_trip(ShardRequest::Stale(Box::new(get("a"))));
    }

    #[test]
    fn control_requests_unknown_tenants_and_malformed_ones_are_refused() {
        assert!(RemoteRequest::of_request(&ShardRequest::Snapshot, &name_of).is_err());
        let unknown = RemoteRequest {
            batch: false,
            ops: vec![RemoteOp::Get {
                tenant: "nobody".into(),
                key: b"a".to_vec(),
                stale: false,
            }],
        };
        assert_eq!(
            unknown.into_request(&id_of).unwrap_err().code,
            ErrorCode::UnknownTenant
        );
        let two_unbatched = RemoteRequest {
            batch: false,
            ops: vec![],
        };
        assert!(two_unbatched.into_request(&id_of).is_err());
        assert!(decode_request(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn answers_come_back_as_the_reply_the_request_expects() {
        let read = ValueRead {
            value: Bytes::from_static(b"v"),
            version: 9,
            expires_at_ms: Some(5),
        };
        let reply = RemoteReply::of_reply(ShardReply::Value(Some(read.clone())), Some(2));
        let reply = decode_reply(&encode_reply(&reply)).unwrap();
        assert_eq!(reply.leader, Some(2));
        assert!(matches!(reply.into_reply(&get("a")), ShardReply::Value(Some(r)) if r == read));
        // A quota refusal names the sender's tenant id, not the receiver's.
        let refused = ShardReply::Written(Err(StoreError::KeyQuotaExceeded {
            tenant: 99,
            max_keys: 4,
        }));
        let reply = RemoteReply::of_reply(refused, None).into_reply(&set("a"));
        assert!(matches!(
            reply,
            ShardReply::Written(Err(StoreError::KeyQuotaExceeded {
                tenant: TENANT,
                max_keys: 4
            }))
        ));
        let written = ShardReply::Written(Ok(WriteOutcome {
            applied: true,
            version: 3,
        }));
        let batch = ShardRequest::Batch(vec![set("a"), get("a")]);
        let reply = RemoteReply::of_reply(
            ShardReply::Batch(vec![written, ShardReply::Value(None)]),
            None,
        );
        assert!(matches!(
            reply.into_reply(&batch),
            ShardReply::Batch(replies) if matches!(replies[..], [ShardReply::Written(Ok(_)), ShardReply::Value(None)])
        ));
        let delete = ShardRequest::Delete {
            tenant: TENANT,
            keys: vec![key("a")],
        };
        let reply = RemoteReply::of_reply(ShardReply::Count(1), None).into_reply(&delete);
        assert!(matches!(reply, ShardReply::Count(1)));
        // An error answers a whole batch.
        let error = ProtocolError::new(ErrorCode::UnknownTenant, "no tenant");
        let reply = RemoteReply::error(&error).into_reply(&batch);
        assert!(matches!(reply, ShardReply::Error(e) if e.code == ErrorCode::UnknownTenant));
        // Answers that do not fit: an error, not a panic.
        let scanned = RemoteReply::of_reply(
            ShardReply::Scanned {
                keys: vec![],
                next_slot: 0,
            },
            None,
        );
        assert!(
            matches!(scanned.clone().into_reply(&get("a")), ShardReply::Error(e) if e.code == ErrorCode::Internal)
        );
        assert!(
            matches!(scanned.into_reply(&batch), ShardReply::Error(e) if e.code == ErrorCode::Internal)
        );
    }
}
