//! One write operation type for both modes: how a shard write
//! ([`ShardRequest`]'s write variants) travels through a Raft log and how
//! its answer comes back.
//!
//! A standalone core applies a write with [`Shard::execute`] at its own
//! instant. In cluster mode the same request is encoded as a [`WriteOp`],
//! proposed as one `Command::Ops` entry together with the writes that
//! follow it in the same pipeline (one entry per pipeline and shard), and
//! every replica turns it back into the same `ShardRequest` and runs the
//! same [`Shard::execute`] at the *proposer's* instant. The answer is
//! computed there, at apply, from the operation and that instant alone, so
//! it is the same on every replica and in every replay: INCR's new value,
//! SET ... GET's old value, a compare-and-set's verdict. Adding a write
//! command therefore means adding a `ShardRequest` write (and its
//! [`WriteOp`] twin here); replication comes with it.
//!
//! Encoding: postcard of `Vec<WriteOp>` (the `payload` of `Command::Ops`)
//! and of `Vec<OpAnswer>` (`Response::Ops`). Tenants travel by name inside
//! the command (ids are per node); keys carry no slot (each replica hashes
//! the key itself, with the same function).
//!
//! [`Shard::execute`]: crate::shard::Shard::execute

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tinkerdb_storage::{
    hash_slot, Expiry, SetOptions, StoreError, TenantId, WriteCondition, WriteOutcome,
};

use crate::shard::{
    ExpireCondition, MoveKind, ShardReply, ShardRequest, SlotKey, Update, UpdateError,
    UpdateOutcome,
};

/// A write's condition, as it travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum Condition {
    Always,
    IfAbsent,
    IfPresent,
    IfVersion(u64),
}

/// A write's expiry, as it travels (absolute: fixed by the proposer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum ExpiryAt {
    Never,
    AtMs(u64),
    Keep,
}

/// Condition and expiry of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Options {
    condition: Condition,
    expiry: ExpiryAt,
}

impl From<SetOptions> for Options {
    fn from(options: SetOptions) -> Options {
        Options {
            condition: match options.condition {
                WriteCondition::Always => Condition::Always,
                WriteCondition::IfAbsent => Condition::IfAbsent,
                WriteCondition::IfPresent => Condition::IfPresent,
                WriteCondition::IfVersion(version) => Condition::IfVersion(version),
            },
            expiry: match options.expiry {
                Expiry::Never => ExpiryAt::Never,
                Expiry::AtMs(at) => ExpiryAt::AtMs(at),
                Expiry::Keep => ExpiryAt::Keep,
            },
        }
    }
}

impl From<Options> for SetOptions {
    fn from(options: Options) -> SetOptions {
        SetOptions {
            condition: match options.condition {
                Condition::Always => WriteCondition::Always,
                Condition::IfAbsent => WriteCondition::IfAbsent,
                Condition::IfPresent => WriteCondition::IfPresent,
                Condition::IfVersion(version) => WriteCondition::IfVersion(version),
            },
            expiry: match options.expiry {
                ExpiryAt::Never => Expiry::Never,
                ExpiryAt::AtMs(at) => Expiry::AtMs(at),
                ExpiryAt::Keep => Expiry::Keep,
            },
        }
    }
}

/// A shard write as it travels through the Raft log: the twin of a
/// [`ShardRequest`] write variant, without tenant id or slots. (`PartialEq`
/// only: INCRBYFLOAT's increment is an `f64`.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WriteOp {
    /// `ShardRequest::Set`.
    Set {
        /// Key.
        key: Vec<u8>,
        /// Value.
        value: Vec<u8>,
        /// Condition and expiry.
        options: OptionsOnWire,
    },
    /// `ShardRequest::SetMany`.
    SetMany {
        /// Keys and values.
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `ShardRequest::Delete`.
    Delete {
        /// Keys.
        keys: Vec<Vec<u8>>,
    },
    /// `ShardRequest::Update` with `Update::IncrBy`.
    IncrBy {
        /// Key.
        key: Vec<u8>,
        /// The increment.
        by: i64,
    },
    /// `ShardRequest::Update` with `Update::Append`.
    Append {
        /// Key.
        key: Vec<u8>,
        /// The bytes appended.
        suffix: Vec<u8>,
    },
    /// `ShardRequest::Update` with `Update::GetDelete`.
    GetDelete {
        /// Key.
        key: Vec<u8>,
    },
    /// `ShardRequest::Update` with `Update::SetAndGet`.
    SetAndGet {
        /// Key.
        key: Vec<u8>,
        /// New value.
        value: Vec<u8>,
        /// Condition and expiry.
        options: OptionsOnWire,
    },
    /// `ShardRequest::Update` with `Update::Expire`.
    Expire {
        /// Key.
        key: Vec<u8>,
        /// New expiry (Unix ms), `None` to clear it.
        at_ms: Option<u64>,
        /// When it applies.
        condition: ExpireCondition,
    },
    /// `ShardRequest::Update` with `Update::GetAndExpire`.
    GetAndExpire {
        /// Key.
        key: Vec<u8>,
        /// New expiry (Unix ms), `None` to clear it.
        at_ms: Option<u64>,
    },
    /// `ShardRequest::Update` with `Update::SetRange`.
    SetRange {
        /// Key.
        key: Vec<u8>,
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        bytes: Vec<u8>,
    },
    /// `ShardRequest::Update` with `Update::IncrByFloat`.
    IncrByFloat {
        /// Key.
        key: Vec<u8>,
        /// The increment.
        by: f64,
    },
    /// `ShardRequest::Flush`.
    Flush,
    /// `ShardRequest::SetManyIfAbsent`.
    SetManyIfAbsent {
        /// Keys and values.
        entries: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// `ShardRequest::Move`.
    Move {
        /// The source key.
        from: Vec<u8>,
        /// The destination key.
        to: Vec<u8>,
        /// Rename or copy.
        how: MoveKind,
    },
}

/// Condition and expiry of a [`WriteOp`] (opaque outside this module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct OptionsOnWire(Options);

impl WriteOp {
    /// The operation of a write request, with its tenant; `None` for a
    /// request that is not a write of one shard (a read, a batch, control).
    pub fn of_request(request: &ShardRequest) -> Option<(TenantId, WriteOp)> {
        let key = |key: &SlotKey| key.key.to_vec();
        let op = match request {
            ShardRequest::Set {
                tenant,
                key: slot_key,
                value,
                options,
            } => (
                *tenant,
                WriteOp::Set {
                    key: key(slot_key),
                    value: value.to_vec(),
                    options: OptionsOnWire((*options).into()),
                },
            ),
            ShardRequest::SetMany { tenant, entries } => (
                *tenant,
                WriteOp::SetMany {
                    entries: entries
                        .iter()
                        .map(|(slot_key, value)| (key(slot_key), value.to_vec()))
                        .collect(),
                },
            ),
            ShardRequest::Delete { tenant, keys } => (
                *tenant,
                WriteOp::Delete {
                    keys: keys.iter().map(key).collect(),
                },
            ),
            ShardRequest::Update {
                tenant,
                key: slot_key,
                update,
            } => {
                let key = key(slot_key);
                let op = match update {
                    Update::IncrBy(by) => WriteOp::IncrBy { key, by: *by },
                    Update::Append(suffix) => WriteOp::Append {
                        key,
                        suffix: suffix.to_vec(),
                    },
                    Update::GetDelete => WriteOp::GetDelete { key },
                    Update::SetAndGet { value, options } => WriteOp::SetAndGet {
                        key,
                        value: value.to_vec(),
                        options: OptionsOnWire((*options).into()),
                    },
                    Update::Expire { at_ms, condition } => WriteOp::Expire {
                        key,
                        at_ms: *at_ms,
                        condition: *condition,
                    },
                    Update::GetAndExpire(at_ms) => WriteOp::GetAndExpire { key, at_ms: *at_ms },
                    Update::SetRange { offset, bytes } => WriteOp::SetRange {
                        key,
                        offset: *offset,
                        bytes: bytes.to_vec(),
                    },
                    Update::IncrByFloat(by) => WriteOp::IncrByFloat { key, by: *by },
                };
                (*tenant, op)
            }
            ShardRequest::Flush { tenant } => (*tenant, WriteOp::Flush),
            ShardRequest::SetManyIfAbsent { tenant, entries } => (
                *tenant,
                WriteOp::SetManyIfAbsent {
                    entries: entries
                        .iter()
                        .map(|(slot_key, value)| (key(slot_key), value.to_vec()))
                        .collect(),
                },
            ),
            ShardRequest::Move {
                tenant,
                from,
                to,
                how,
            } => (
                *tenant,
                WriteOp::Move {
                    from: key(from),
                    to: key(to),
                    how: *how,
                },
            ),
            _ => return None,
        };
        Some(op)
    }

    /// The keys the operation writes (none for `Flush`).
    pub fn keys(&self) -> Vec<&[u8]> {
        match self {
            WriteOp::Set { key, .. }
            | WriteOp::IncrBy { key, .. }
            | WriteOp::Append { key, .. }
            | WriteOp::GetDelete { key }
            | WriteOp::SetAndGet { key, .. }
            | WriteOp::Expire { key, .. }
            | WriteOp::GetAndExpire { key, .. }
            | WriteOp::SetRange { key, .. }
            | WriteOp::IncrByFloat { key, .. } => vec![key],
            WriteOp::SetMany { entries } | WriteOp::SetManyIfAbsent { entries } => {
                entries.iter().map(|(key, _)| &key[..]).collect()
            }
            WriteOp::Move { from, to, .. } => vec![from, to],
            WriteOp::Delete { keys } => keys.iter().map(|key| &key[..]).collect(),
            WriteOp::Flush => Vec::new(),
        }
    }

    /// The request this operation stands for, for `tenant` (its id on this
    /// node and its name, which the slots hash with).
    pub fn into_request(self, tenant: TenantId, tenant_name: &str) -> ShardRequest {
        let slot_key = |key: Vec<u8>| {
            let key = Bytes::from(key);
            SlotKey {
                slot: hash_slot(tenant_name, &key),
                key,
            }
        };
        let update = |key: Vec<u8>, update: Update| ShardRequest::Update {
            tenant,
            key: slot_key(key),
            update,
        };
        match self {
            WriteOp::Set {
                key,
                value,
                options,
            } => ShardRequest::Set {
                tenant,
                key: slot_key(key),
                value: Bytes::from(value),
                options: options.0.into(),
            },
            WriteOp::SetMany { entries } => ShardRequest::SetMany {
                tenant,
                entries: entries
                    .into_iter()
                    .map(|(key, value)| (slot_key(key), Bytes::from(value)))
                    .collect(),
            },
            WriteOp::Delete { keys } => ShardRequest::Delete {
                tenant,
                keys: keys.into_iter().map(slot_key).collect(),
            },
            WriteOp::IncrBy { key, by } => update(key, Update::IncrBy(by)),
            WriteOp::Append { key, suffix } => update(key, Update::Append(Bytes::from(suffix))),
            WriteOp::GetDelete { key } => update(key, Update::GetDelete),
            WriteOp::SetAndGet {
                key,
                value,
                options,
            } => update(
                key,
                Update::SetAndGet {
                    value: Bytes::from(value),
                    options: options.0.into(),
                },
            ),
            WriteOp::Expire {
                key,
                at_ms,
                condition,
            } => update(key, Update::Expire { at_ms, condition }),
            WriteOp::GetAndExpire { key, at_ms } => update(key, Update::GetAndExpire(at_ms)),
            WriteOp::SetRange { key, offset, bytes } => update(
                key,
                Update::SetRange {
                    offset,
                    bytes: Bytes::from(bytes),
                },
            ),
            WriteOp::IncrByFloat { key, by } => update(key, Update::IncrByFloat(by)),
            WriteOp::Flush => ShardRequest::Flush { tenant },
            WriteOp::SetManyIfAbsent { entries } => ShardRequest::SetManyIfAbsent {
                tenant,
                entries: entries
                    .into_iter()
                    .map(|(key, value)| (slot_key(key), Bytes::from(value)))
                    .collect(),
            },
            WriteOp::Move { from, to, how } => ShardRequest::Move {
                tenant,
                from: slot_key(from),
                to: slot_key(to),
                how,
            },
        }
    }
}

/// Encodes the operations of one `Command::Ops` entry.
pub fn encode_ops(ops: &[WriteOp]) -> Vec<u8> {
    postcard::to_allocvec(ops).expect("a vector of operations always serialises")
}

/// Decodes the operations of one `Command::Ops` entry.
pub fn decode_ops(payload: &[u8]) -> Result<Vec<WriteOp>, String> {
    postcard::from_bytes(payload).map_err(|error| format!("undecodable operations: {error}"))
}

/// A quota refusal, as it travels (the tenant id is the receiver's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
enum QuotaRefusal {
    Keys(u64),
    Bytes(u64),
}

impl QuotaRefusal {
    fn of(error: &StoreError) -> QuotaRefusal {
        match error {
            StoreError::KeyQuotaExceeded { max_keys, .. } => QuotaRefusal::Keys(*max_keys),
            StoreError::ByteQuotaExceeded { max_bytes, .. } => QuotaRefusal::Bytes(*max_bytes),
        }
    }

    fn error(self, tenant: TenantId) -> StoreError {
        match self {
            QuotaRefusal::Keys(max_keys) => StoreError::KeyQuotaExceeded { tenant, max_keys },
            QuotaRefusal::Bytes(max_bytes) => StoreError::ByteQuotaExceeded { tenant, max_bytes },
        }
    }
}

/// The answer to one [`WriteOp`], computed at apply: the twin of the
/// [`ShardReply`] the shard gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpAnswer {
    /// `ShardReply::Written(Ok(..))`.
    Written {
        /// Whether the condition held.
        applied: bool,
        /// The new version, or the current one.
        version: u64,
    },
    /// `ShardReply::Written(Err(..))`.
    WriteRefused(QuotaRefusalOnWire),
    /// `ShardReply::WrittenMany`.
    WrittenMany {
        /// Versions of the writes done.
        versions: Vec<u64>,
        /// The refusal that stopped the rest.
        refused: Option<QuotaRefusalOnWire>,
    },
    /// `ShardReply::Count`.
    Count(u64),
    /// `UpdateOutcome::Integer`.
    Integer(i64),
    /// `UpdateOutcome::Length`.
    Length(u64),
    /// `UpdateOutcome::Previous`.
    Previous(Option<Vec<u8>>, bool),
    /// `UpdateOutcome::Existed`.
    Existed(bool),
    /// `UpdateOutcome::Value`.
    Value(Vec<u8>),
    /// `UpdateError::NotAnInteger`.
    NotAnInteger,
    /// `UpdateError::Overflow`.
    Overflow,
    /// `UpdateError::NotAFloat`.
    NotAFloat,
    /// `UpdateError::NotFinite`.
    NotFinite,
    /// `UpdateError::Quota`.
    UpdateRefused(QuotaRefusalOnWire),
    /// `UpdateError::NoSuchKey`.
    NoSuchKey,
    /// `UpdateError::SameObject`.
    SameObject,
}

/// A quota refusal inside an [`OpAnswer`] (opaque outside this module).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRefusalOnWire(QuotaRefusal);

impl OpAnswer {
    /// The answer of a write the shard executed. Only write replies reach
    /// here: anything else is a bug.
    pub fn of_reply(reply: ShardReply) -> OpAnswer {
        let refusal = |error: &StoreError| QuotaRefusalOnWire(QuotaRefusal::of(error));
        match reply {
            ShardReply::Written(Ok(outcome)) => OpAnswer::Written {
                applied: outcome.applied,
                version: outcome.version,
            },
            ShardReply::Written(Err(error)) => OpAnswer::WriteRefused(refusal(&error)),
            ShardReply::WrittenMany(versions, error) => OpAnswer::WrittenMany {
                versions,
                refused: error.as_ref().map(refusal),
            },
            ShardReply::Count(count) => OpAnswer::Count(count),
            ShardReply::Updated(Ok(outcome)) => match outcome {
                UpdateOutcome::Integer(value) => OpAnswer::Integer(value),
                UpdateOutcome::Length(length) => OpAnswer::Length(length),
                UpdateOutcome::Previous(value, applied) => {
                    OpAnswer::Previous(value.map(|value| value.to_vec()), applied)
                }
                UpdateOutcome::Existed(existed) => OpAnswer::Existed(existed),
                UpdateOutcome::Value(value) => OpAnswer::Value(value.to_vec()),
            },
            ShardReply::Updated(Err(error)) => match error {
                UpdateError::NotAnInteger => OpAnswer::NotAnInteger,
                UpdateError::Overflow => OpAnswer::Overflow,
                UpdateError::NotAFloat => OpAnswer::NotAFloat,
                UpdateError::NotFinite => OpAnswer::NotFinite,
                UpdateError::Quota(error) => OpAnswer::UpdateRefused(refusal(&error)),
                UpdateError::NoSuchKey => OpAnswer::NoSuchKey,
                UpdateError::SameObject => OpAnswer::SameObject,
            },
            // A replica's shard keeps no journal (the Raft log is its
            // durability), so it never refuses for storage.
            other => unreachable!("a write executed on a replica answered {other:?}"),
        }
    }

    /// The shard reply this answer stands for, for `tenant` (its id on
    /// this node).
    pub fn into_reply(self, tenant: TenantId) -> ShardReply {
        match self {
            OpAnswer::Written { applied, version } => {
                ShardReply::Written(Ok(WriteOutcome { applied, version }))
            }
            OpAnswer::WriteRefused(refusal) => ShardReply::Written(Err(refusal.0.error(tenant))),
            OpAnswer::WrittenMany { versions, refused } => {
                ShardReply::WrittenMany(versions, refused.map(|refusal| refusal.0.error(tenant)))
            }
            OpAnswer::Count(count) => ShardReply::Count(count),
            OpAnswer::Integer(value) => ShardReply::Updated(Ok(UpdateOutcome::Integer(value))),
            OpAnswer::Length(length) => ShardReply::Updated(Ok(UpdateOutcome::Length(length))),
            OpAnswer::Previous(value, applied) => {
                ShardReply::Updated(Ok(UpdateOutcome::Previous(value.map(Bytes::from), applied)))
            }
            OpAnswer::Existed(existed) => ShardReply::Updated(Ok(UpdateOutcome::Existed(existed))),
            OpAnswer::NotAnInteger => ShardReply::Updated(Err(UpdateError::NotAnInteger)),
            OpAnswer::Overflow => ShardReply::Updated(Err(UpdateError::Overflow)),
            OpAnswer::Value(value) => {
                ShardReply::Updated(Ok(UpdateOutcome::Value(Bytes::from(value))))
            }
            OpAnswer::NotAFloat => ShardReply::Updated(Err(UpdateError::NotAFloat)),
            OpAnswer::NotFinite => ShardReply::Updated(Err(UpdateError::NotFinite)),
            OpAnswer::UpdateRefused(refusal) => {
                ShardReply::Updated(Err(UpdateError::Quota(refusal.0.error(tenant))))
            }
            OpAnswer::NoSuchKey => ShardReply::Updated(Err(UpdateError::NoSuchKey)),
            OpAnswer::SameObject => ShardReply::Updated(Err(UpdateError::SameObject)),
        }
    }
}

/// Encodes the answers of one `Command::Ops` entry.
pub fn encode_answers(answers: &[OpAnswer]) -> Vec<u8> {
    postcard::to_allocvec(answers).expect("a vector of answers always serialises")
}

/// Decodes the answers of one `Command::Ops` entry.
pub fn decode_answers(bytes: &[u8]) -> Result<Vec<OpAnswer>, String> {
    postcard::from_bytes(bytes).map_err(|error| format!("undecodable answers: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(text: &str) -> SlotKey {
        let key = Bytes::copy_from_slice(text.as_bytes());
        SlotKey {
            slot: hash_slot("acme", &key),
            key,
        }
    }

    #[test]
    fn every_write_request_round_trips() {
        let options = SetOptions {
            condition: WriteCondition::IfVersion(7),
            expiry: Expiry::AtMs(1_700_000_000_000),
        };
        let requests = vec![
            ShardRequest::Set {
                tenant: 3,
                key: key("a"),
                value: Bytes::from_static(b"1"),
                options,
            },
            ShardRequest::SetMany {
                tenant: 3,
                entries: vec![(key("a"), Bytes::from_static(b"x"))],
            },
            ShardRequest::Delete {
                tenant: 3,
                keys: vec![key("a"), key("b")],
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::IncrBy(-5),
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::SetAndGet {
                    value: Bytes::from_static(b"v"),
                    options: SetOptions {
                        condition: WriteCondition::IfAbsent,
                        expiry: Expiry::Keep,
                    },
                },
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::Expire {
                    at_ms: None,
                    condition: ExpireCondition::IfLater,
                },
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::GetAndExpire(Some(5)),
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::SetRange {
                    offset: 7,
                    bytes: Bytes::from_static(b"ab"),
                },
            },
            ShardRequest::Update {
                tenant: 3,
                key: key("n"),
                update: Update::IncrByFloat(-0.25),
            },
            ShardRequest::Flush { tenant: 3 },
            ShardRequest::SetManyIfAbsent {
                tenant: 3,
                entries: vec![(key("a"), Bytes::from_static(b"x"))],
            },
            ShardRequest::Move {
                tenant: 3,
                from: key("a"),
                to: key("b"),
                how: MoveKind::Copy { replace: true },
            },
        ];
        let ops: Vec<WriteOp> = requests
            .iter()
            .map(|request| WriteOp::of_request(request).unwrap())
            .map(|(tenant, op)| {
                assert_eq!(tenant, 3);
                op
            })
            .collect();
        let decoded = decode_ops(&encode_ops(&ops)).unwrap();
        assert_eq!(decoded, ops);
        for (op, request) in decoded.into_iter().zip(&requests) {
            let back = op.into_request(3, "acme");
            assert_eq!(format!("{back:?}"), format!("{request:?}"));
        }
        assert!(WriteOp::of_request(&ShardRequest::Get {
            tenant: 3,
            key: key("a")
        })
        .is_none());
        assert!(decode_ops(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn answers_round_trip() {
        let replies = vec![
            ShardReply::Written(Ok(WriteOutcome {
                applied: false,
                version: 9,
            })),
            ShardReply::Written(Err(StoreError::KeyQuotaExceeded {
                tenant: 1,
                max_keys: 10,
            })),
            ShardReply::WrittenMany(
                vec![1, 2],
                Some(StoreError::ByteQuotaExceeded {
                    tenant: 1,
                    max_bytes: 99,
                }),
            ),
            ShardReply::Count(4),
            ShardReply::Updated(Ok(UpdateOutcome::Integer(-3))),
            ShardReply::Updated(Ok(UpdateOutcome::Previous(
                Some(Bytes::from_static(b"old")),
                true,
            ))),
            ShardReply::Updated(Err(UpdateError::NotAnInteger)),
            ShardReply::Updated(Ok(UpdateOutcome::Value(Bytes::from_static(b"1.5")))),
            ShardReply::Updated(Err(UpdateError::NotFinite)),
        ];
        let expected: Vec<String> = replies.iter().map(|reply| format!("{reply:?}")).collect();
        let answers: Vec<OpAnswer> = replies.into_iter().map(OpAnswer::of_reply).collect();
        let decoded = decode_answers(&encode_answers(&answers)).unwrap();
        let back: Vec<String> = decoded
            .into_iter()
            .map(|answer| format!("{:?}", answer.into_reply(1)))
            .collect();
        assert_eq!(back, expected);
    }
}
