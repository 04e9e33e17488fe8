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
//! Encoding: postcard, like the Raft entries. Control requests that only
//! mean something on their own node (an on-demand snapshot, a quota share)
//! are never forwarded: [`RemoteOp::of_request`] refuses them.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::{hash_slot, Quota, TenantId, TenantUsage};

use crate::error::ProtocolError;
use crate::shard::write_op::{OpAnswer, WriteOp};
use crate::shard::{KeyFilter, ShardReply, ShardRequest, SlotKey, ValueRead};

/// A forwarded request (the twin of a [`ShardRequest`] that can travel).
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
    },
    /// `ShardRequest::GetMany`.
    GetMany {
        /// The tenant's name.
        tenant: String,
        /// Keys.
        keys: Vec<Vec<u8>>,
        /// Byte budget of the values.
        max_bytes: u64,
    },
    /// `ShardRequest::Exists`.
    Exists {
        /// The tenant's name.
        tenant: String,
        /// Keys.
        keys: Vec<Vec<u8>>,
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
    },
    /// `ShardRequest::Usage`.
    Usage {
        /// The tenant's name.
        tenant: String,
    },
    /// `ShardRequest::Batch`: run in order.
    Batch(Vec<RemoteOp>),
    /// `ShardRequest::Stale`.
    Stale(Box<RemoteOp>),
}

/// A value read, as it travels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueOnWire {
    value: Vec<u8>,
    version: u64,
    expires_at_ms: Option<u64>,
}

/// A forwarded request's answer (the twin of a [`ShardReply`]).
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
    /// `ShardReply::Batch`.
    Batch(Vec<RemoteAnswer>),
    /// `ShardReply::Error` (the owner hint does not travel: the routing
    /// answer is the forwarding node's to give).
    Error {
        /// `ErrorCode` value.
        code: u16,
        /// Detail.
        message: String,
    },
}

/// What the receiving node answers a forwarded request with: the answer,
/// and the leader of the range as that node knows it (the sender's next
/// request goes there first).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RemoteReply {
    /// The answer.
    pub answer: RemoteAnswer,
    /// The range's leader, if the node knows it.
    pub leader: Option<u64>,
}

fn not_forwarded(what: &str) -> ProtocolError {
    ProtocolError::new(
        ErrorCode::Internal,
        format!("{what} is not forwarded to another node"),
    )
}

impl RemoteOp {
    /// The wire form of `request`, naming tenants with `name_of`. Control
    /// requests (snapshot, quota share) are refused: they are this node's.
    pub fn of_request(
        request: &ShardRequest,
        name_of: &impl Fn(TenantId) -> Arc<str>,
    ) -> Result<RemoteOp, ProtocolError> {
        if let Some((tenant, op)) = WriteOp::of_request(request) {
            return Ok(RemoteOp::Write {
                tenant: name_of(tenant).to_string(),
                op,
            });
        }
        let keys = |keys: &[SlotKey]| keys.iter().map(|key| key.key.to_vec()).collect();
        Ok(match request {
            ShardRequest::Get { tenant, key } => RemoteOp::Get {
                tenant: name_of(*tenant).to_string(),
                key: key.key.to_vec(),
            },
            ShardRequest::GetMany {
                tenant,
                keys: many,
                max_bytes,
            } => RemoteOp::GetMany {
                tenant: name_of(*tenant).to_string(),
                keys: keys(many),
                max_bytes: *max_bytes as u64,
            },
            ShardRequest::Exists { tenant, keys: many } => RemoteOp::Exists {
                tenant: name_of(*tenant).to_string(),
                keys: keys(many),
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
            },
            ShardRequest::Usage { tenant } => RemoteOp::Usage {
                tenant: name_of(*tenant).to_string(),
            },
            ShardRequest::Batch(requests) => RemoteOp::Batch(
                requests
                    .iter()
                    .map(|request| RemoteOp::of_request(request, name_of))
                    .collect::<Result<_, _>>()?,
            ),
            ShardRequest::Stale(read) => {
                RemoteOp::Stale(Box::new(RemoteOp::of_request(read, name_of)?))
            }
            ShardRequest::Snapshot => return Err(not_forwarded("a snapshot")),
            ShardRequest::SetQuota { .. } => return Err(not_forwarded("a quota share")),
            other => return Err(not_forwarded(&format!("{other:?}"))),
        })
    }

    /// Whether running this may change data (a sender never sends such a
    /// request twice: its first attempt may have been applied).
    pub fn writes(&self) -> bool {
        match self {
            RemoteOp::Write { .. } => true,
            RemoteOp::Batch(ops) => ops.iter().any(RemoteOp::writes),
            RemoteOp::Stale(op) => op.writes(),
            _ => false,
        }
    }

    /// The request this stands for on the receiving node, its tenants
    /// resolved with `id_of` (an unknown name is `UnknownTenant`).
    pub fn into_request(
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
        Ok(match self {
            RemoteOp::Write { tenant, op } => op.into_request(tenant_id(&tenant)?, &tenant),
            RemoteOp::Get { tenant, key } => ShardRequest::Get {
                tenant: tenant_id(&tenant)?,
                key: slot_key(&tenant, key),
            },
            RemoteOp::GetMany {
                tenant,
                keys,
                max_bytes,
            } => ShardRequest::GetMany {
                tenant: tenant_id(&tenant)?,
                keys: slot_keys(&tenant, keys),
                max_bytes: usize::try_from(max_bytes).unwrap_or(usize::MAX),
            },
            RemoteOp::Exists { tenant, keys } => ShardRequest::Exists {
                tenant: tenant_id(&tenant)?,
                keys: slot_keys(&tenant, keys),
            },
            RemoteOp::Scan {
                tenant,
                start_slot,
                prefix,
                pattern,
                max_keys,
            } => ShardRequest::Scan {
                tenant: tenant_id(&tenant)?,
                start_slot,
                filter: Arc::new(KeyFilter {
                    prefix: Bytes::from(prefix),
                    pattern: Bytes::from(pattern),
                }),
                max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            },
            RemoteOp::Usage { tenant } => ShardRequest::Usage {
                tenant: tenant_id(&tenant)?,
            },
            RemoteOp::Batch(ops) => ShardRequest::Batch(
                ops.into_iter()
                    .map(|op| match op {
                        RemoteOp::Batch(_) => Err(ProtocolError::new(
                            ErrorCode::MalformedFrame,
                            "a forwarded batch inside a batch",
                        )),
                        op => op.into_request(id_of),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            RemoteOp::Stale(op) => match *op {
                RemoteOp::Batch(_) | RemoteOp::Stale(_) => {
                    return Err(ProtocolError::new(
                        ErrorCode::MalformedFrame,
                        "a forwarded stale read of a batch",
                    ))
                }
                op => ShardRequest::Stale(Box::new(op.into_request(id_of)?)),
            },
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

impl RemoteAnswer {
    /// The wire form of the reply the receiving node's shard gave.
    pub fn of_reply(reply: ShardReply) -> RemoteAnswer {
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
            ShardReply::Batch(replies) => {
                RemoteAnswer::Batch(replies.into_iter().map(RemoteAnswer::of_reply).collect())
            }
            ShardReply::Error(error) => RemoteAnswer::error(&error),
            other @ (ShardReply::Done | ShardReply::Snapshotted(_)) => RemoteAnswer::Error {
                code: ErrorCode::Internal.0,
                message: format!("a forwarded request answered {other:?}"),
            },
        }
    }

    /// The wire form of an error.
    pub fn error(error: &ProtocolError) -> RemoteAnswer {
        RemoteAnswer::Error {
            code: error.code.0,
            message: error.message.clone(),
        }
    }

    /// The reply this stands for, to `request` as the sending node made it
    /// (its tenant ids). An answer that does not fit the request (another
    /// version, a bug) becomes an `Internal` error, never a panic.
    pub fn into_reply(self, request: &ShardRequest) -> ShardReply {
        let mismatch = |answer: &RemoteAnswer| {
            ShardReply::Error(ProtocolError::new(
                ErrorCode::Internal,
                format!("a forwarded request got an answer that does not fit it: {answer:?}"),
            ))
        };
        match (self, request) {
            (RemoteAnswer::Error { code, message }, _) => {
                ShardReply::Error(ProtocolError::new(ErrorCode(code), message))
            }
            (RemoteAnswer::Refused(reason), _) => ShardReply::Refused(reason),
            (answer, ShardRequest::Stale(read)) => answer.into_reply(read),
            (RemoteAnswer::Batch(answers), ShardRequest::Batch(requests))
                if answers.len() == requests.len() =>
            {
                ShardReply::Batch(
                    answers
                        .into_iter()
                        .zip(requests)
                        .map(|(answer, request)| answer.into_reply(request))
                        .collect(),
                )
            }
            (RemoteAnswer::Write(answer), request) => match WriteOp::of_request(request) {
                Some((tenant, _)) => answer.into_reply(tenant),
                None => mismatch(&RemoteAnswer::Write(answer)),
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
            (RemoteAnswer::Count(count), request) if !matches!(request, ShardRequest::Batch(_)) => {
                ShardReply::Count(count)
            }
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
            (answer, _) => mismatch(&answer),
        }
    }
}

/// Encodes a forwarded request.
pub fn encode_op(op: &RemoteOp) -> Vec<u8> {
    postcard::to_allocvec(op).expect("a forwarded request serialises")
}

/// Decodes a forwarded request.
pub fn decode_op(bytes: &[u8]) -> Result<RemoteOp, String> {
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
    fn round_trip(request: ShardRequest) -> ShardRequest {
        let op = RemoteOp::of_request(&request, &name_of).unwrap();
        let op = decode_op(&encode_op(&op)).unwrap();
        let back = op.into_request(&id_of).unwrap();
        assert_eq!(format!("{back:?}"), format!("{request:?}"));
        back
    }

    #[test]
    fn every_forwardable_request_survives_the_wire() {
        round_trip(ShardRequest::Get {
            tenant: TENANT,
            key: key("a"),
        });
        round_trip(ShardRequest::Set {
            tenant: TENANT,
            key: key("a"),
            value: Bytes::from_static(b"v"),
            options: SetOptions::default(),
        });
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
        ]));
        round_trip(ShardRequest::Stale(Box::new(ShardRequest::Get {
            tenant: TENANT,
            key: key("a"),
        })));
    }

    #[test]
    fn control_requests_and_unknown_tenants_are_refused_not_forwarded() {
        assert!(RemoteOp::of_request(&ShardRequest::Snapshot, &name_of).is_err());
        let op = RemoteOp::Get {
            tenant: "nobody".into(),
            key: b"a".to_vec(),
        };
        let error = op.into_request(&id_of).unwrap_err();
        assert_eq!(error.code, ErrorCode::UnknownTenant);
        let nested = RemoteOp::Batch(vec![RemoteOp::Batch(vec![])]);
        assert!(nested.into_request(&id_of).is_err());
        assert!(decode_op(b"\xff\xff\xff").is_err());
    }

    #[test]
    fn answers_come_back_as_the_reply_the_request_expects() {
        let get = ShardRequest::Get {
            tenant: TENANT,
            key: key("a"),
        };
        let read = ValueRead {
            value: Bytes::from_static(b"v"),
            version: 9,
            expires_at_ms: Some(5),
        };
        let answer = RemoteAnswer::of_reply(ShardReply::Value(Some(read.clone())));
        let reply = decode_reply(&encode_reply(&RemoteReply {
            answer,
            leader: Some(2),
        }))
        .unwrap();
        assert_eq!(reply.leader, Some(2));
        assert!(matches!(reply.answer.into_reply(&get), ShardReply::Value(Some(r)) if r == read));
        let set = ShardRequest::Set {
            tenant: TENANT,
            key: key("a"),
            value: Bytes::from_static(b"v"),
            options: SetOptions::default(),
        };
        let refused = ShardReply::Written(Err(StoreError::KeyQuotaExceeded {
            tenant: 99,
            max_keys: 4,
        }));
        // A quota refusal names the sender's tenant id, not the receiver's.
        let reply = RemoteAnswer::of_reply(refused).into_reply(&set);
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
        let reply = RemoteAnswer::of_reply(written).into_reply(&set);
        assert!(matches!(reply, ShardReply::Written(Ok(o)) if o.version == 3));
        let delete = ShardRequest::Delete {
            tenant: TENANT,
            keys: vec![key("a")],
        };
        let reply = RemoteAnswer::of_reply(ShardReply::Count(1)).into_reply(&delete);
        assert!(matches!(reply, ShardReply::Count(1)));
        // A reply that does not fit: an error, not a panic.
        let reply = RemoteAnswer::Scanned {
            keys: vec![],
            next_slot: 0,
        }
        .into_reply(&get);
        assert!(matches!(reply, ShardReply::Error(e) if e.code == ErrorCode::Internal));
    }
}
