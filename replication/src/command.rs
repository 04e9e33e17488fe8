//! What a Raft log entry asks the state machine to do ([`Command`], the
//! application data `D` of [`crate::TypeConfig`]) and what applying it
//! answers ([`Response`], `R`).
//!
//! A command is the *request* made deterministic: everything that depends
//! on the proposer's clock or state is resolved before it is proposed, so
//! every replica, and every replay after a restart, applies the same change.
//! That is why a Put carries an absolute expiry (Unix ms), not a TTL
//! relative to whenever a replica happens to apply it.
//!
//! Encoding (little-endian), used inside log entries (see
//! [`crate::log_store`]):
//!
//! | field | size |
//! |---|---|
//! | kind: 1 Put, 2 Delete, 3 PutIf | 1 |
//! | tenant name length | 1 |
//! | tenant name (UTF-8) | n |
//! | key length | 4 |
//! | key | n |
//! | Put, PutIf: expiry, Unix ms (`u64::MAX` = never) | 8 |
//! | PutIf: condition: 1 if absent, 2 if present, 3 if version | 1 |
//! | PutIf: the expected version (0 unless "if version") | 8 |
//! | PutIf: the time the condition is judged at, Unix ms | 8 |
//! | Put, PutIf: value length, value | 4 + n |
//!
//! Kind 4, `Ops`, is the node's one write operation type (a batch of shard
//! writes, encoded by the node, opaque here), laid out as kind, tenant name
//! length and name as above, then:
//!
//! | field | size |
//! |---|---|
//! | kind 5 only: the trace context, [`TraceParent`] | 25 |
//! | the proposer's instant, Unix ms | 8 |
//! | payload length, payload | 4 + n |
//!
//! Kind 6, `Meta`, is a change of the cluster's metadata (the metadata
//! group's only command; its payload is the node's encoding, opaque here),
//! laid out as kind, a tenant name length of 0, then the proposer's instant
//! (Unix ms, 8) and the payload (4 + n).
//!
//! Kind 5 is an `Ops` whose request was traced: the W3C trace context's
//! fields (trace id 16 bytes, parent span id 8, flags 1) travel with the
//! entry, so every replica's apply joins the proposer's trace
//! (docs/observability.md). Untraced entries stay kind 4, byte for byte.
//!
//! A conditional write is judged when it is *applied*, identically on every
//! replica: "does the key exist" depends on expiry, so the command carries
//! the instant to judge it at (the proposer's clock, fixed once), never the
//! applying replica's clock.

use std::fmt;

use tinkerdb_storage::WriteCondition;

use crate::codec::{put_bytes_u32, put_u64, DecodeError, Reader};

/// Longest tenant name the encoding can carry (a one-byte length). The node
/// enforces its own, shorter limit on names when tenants are created.
pub const MAX_TENANT_NAME_BYTES: usize = u8::MAX as usize;

/// Largest encoded command: a proposal over it is refused before it reaches
/// the log (it must fit one log entry, [`crate::log_store::MAX_ENTRY_BYTES`]).
pub const MAX_COMMAND_BYTES: usize = 4 << 20;

const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
const KIND_PUT_IF: u8 = 3;
const KIND_OPS: u8 = 4;
const KIND_OPS_TRACED: u8 = 5;
const KIND_META: u8 = 6;
/// `expires_at_unix_ms` of `None` on disk.
const NEVER_EXPIRES: u64 = u64::MAX;

/// A replicated write.
#[derive(Clone, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value` in `tenant`.
    Put {
        /// The tenant's name (names, not per-run ids, are stable across nodes).
        tenant: String,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// When the key expires, Unix milliseconds; `None` never. Absolute,
        /// fixed by the proposer: the TTL a client gave, resolved once.
        expires_at_unix_ms: Option<u64>,
    },
    /// Remove `key` from `tenant`.
    Delete {
        /// The tenant's name.
        tenant: String,
        /// The key.
        key: Vec<u8>,
    },
    /// Set `key` to `value` only if `condition` holds when applied (NX, XX,
    /// compare-and-set on the version).
    PutIf {
        /// The tenant's name.
        tenant: String,
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// When the key expires, Unix milliseconds; `None` never.
        expires_at_unix_ms: Option<u64>,
        /// What must hold.
        condition: PutCondition,
        /// The instant the condition is judged at (expired keys do not
        /// exist), Unix milliseconds, fixed by the proposer.
        at_unix_ms: u64,
    },
    /// Writes of one shard, in order, as one entry: the node's write
    /// operations (every write command, of either protocol), encoded by the
    /// node and applied by its state machine at `at_unix_ms`, so every
    /// replica computes the same answers.
    Ops {
        /// The tenant's name.
        tenant: String,
        /// The proposer's instant, Unix milliseconds: what the operations
        /// are judged at (expiry, conditions, relative times).
        at_unix_ms: u64,
        /// The operations, in the node's encoding.
        payload: Vec<u8>,
        /// The trace the proposing request belongs to, if it was sampled.
        trace: Option<TraceParent>,
    },
    /// A change of the cluster's metadata (nodes, later the range table,
    /// tenants and users), the metadata group's command: encoded by the
    /// node, applied by its metadata state machine at `at_unix_ms`.
    Meta {
        /// The proposer's instant, Unix milliseconds.
        at_unix_ms: u64,
        /// The change, in the node's encoding.
        payload: Vec<u8>,
    },
}

/// A W3C trace context (`traceparent`, version 00) in binary: the trace
/// id, the id of the span that is the parent of what the receiver does,
/// and the trace flags (bit 0: sampled). Carried by traced `Ops` entries
/// and by messages between cores; never holds anything but ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    /// The trace id (all zero: invalid).
    pub trace_id: [u8; 16],
    /// The parent span's id (all zero: invalid).
    pub span_id: [u8; 8],
    /// Trace flags.
    pub flags: u8,
}

impl TraceParent {
    /// Bytes of the encoding.
    pub const ENCODED_BYTES: usize = 16 + 8 + 1;

    /// Whether both ids are non-zero, as W3C requires (an invalid one is
    /// ignored by whoever receives it).
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// The `traceparent` header's text: `00-<trace id>-<span id>-<flags>`.
    pub fn to_w3c(&self) -> String {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        format!(
            "00-{}-{}-{:02x}",
            hex(&self.trace_id),
            hex(&self.span_id),
            self.flags
        )
    }

    /// Parses a `traceparent` header (version 00, lowercase hex); `None`
    /// for anything malformed or invalid.
    pub fn parse_w3c(text: &str) -> Option<TraceParent> {
        let mut parts = text.split('-');
        let (version, trace, span, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() || version != "00" {
            return None;
        }
        fn hex<const N: usize>(text: &str) -> Option<[u8; N]> {
            if text.len() != 2 * N || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return None;
            }
            let mut out = [0u8; N];
            for (i, byte) in out.iter_mut().enumerate() {
                *byte = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
            }
            Some(out)
        }
        let parent = TraceParent {
            trace_id: hex::<16>(trace)?,
            span_id: hex::<8>(span)?,
            flags: hex::<1>(flags)?[0],
        };
        parent.is_valid().then_some(parent)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.trace_id);
        out.extend_from_slice(&self.span_id);
        out.push(self.flags);
    }

    fn decode(reader: &mut Reader<'_>) -> Result<TraceParent, DecodeError> {
        let bytes = reader.take(Self::ENCODED_BYTES)?;
        Ok(TraceParent {
            trace_id: bytes[..16].try_into().expect("16 bytes"),
            span_id: bytes[16..24].try_into().expect("8 bytes"),
            flags: bytes[24],
        })
    }
}

/// The condition of a [`Command::PutIf`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PutCondition {
    /// The key does not exist (Redis NX).
    IfAbsent,
    /// The key exists (Redis XX).
    IfPresent,
    /// The key's version is this one; 0: the key does not exist.
    IfVersion(u64),
}

impl PutCondition {
    /// The condition of a store write, `None` for an unconditional one
    /// (proposed as a plain [`Command::Put`]).
    pub fn of_write(condition: WriteCondition) -> Option<PutCondition> {
        match condition {
            WriteCondition::Always => None,
            WriteCondition::IfAbsent => Some(PutCondition::IfAbsent),
            WriteCondition::IfPresent => Some(PutCondition::IfPresent),
            WriteCondition::IfVersion(version) => Some(PutCondition::IfVersion(version)),
        }
    }
}

impl From<PutCondition> for WriteCondition {
    fn from(condition: PutCondition) -> WriteCondition {
        match condition {
            PutCondition::IfAbsent => WriteCondition::IfAbsent,
            PutCondition::IfPresent => WriteCondition::IfPresent,
            PutCondition::IfVersion(version) => WriteCondition::IfVersion(version),
        }
    }
}

/// The state machine's answer to one applied entry.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Response {
    /// A Put was applied; the key now has this version.
    Put {
        /// The version the store gave the new value.
        version: u64,
    },
    /// A Delete was applied.
    Delete {
        /// Whether the key existed.
        existed: bool,
    },
    /// A PutIf was judged (and applied if its condition held).
    PutIf {
        /// Whether the condition held and the value was written.
        applied: bool,
        /// The new version if applied, else the current one (0: none).
        version: u64,
    },
    /// A blank or membership entry was applied (nothing for a client).
    Empty,
    /// The command was applied and refused by the state machine, the same
    /// way on every replica (a quota, an unknown tenant): nothing changed.
    Refused {
        /// The client protocol's error code (`wire::ErrorCode` value).
        code: u16,
        /// Why.
        message: String,
    },
    /// The answers to an `Ops` command, in the node's encoding (last, so
    /// the serde variant numbers of the others stay as they were).
    Ops(Vec<u8>),
}

/// Why a command cannot be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The tenant name is longer than [`MAX_TENANT_NAME_BYTES`].
    #[error("tenant name of {0} bytes over the limit of {MAX_TENANT_NAME_BYTES}")]
    TenantNameTooLong(usize),
    /// The encoded command is larger than [`MAX_COMMAND_BYTES`].
    #[error("command of {0} bytes over the limit of {MAX_COMMAND_BYTES}")]
    TooLarge(usize),
}

impl Command {
    /// The tenant the command writes to.
    pub fn tenant(&self) -> &str {
        match self {
            Command::Put { tenant, .. }
            | Command::Delete { tenant, .. }
            | Command::PutIf { tenant, .. }
            | Command::Ops { tenant, .. } => tenant,
            Command::Meta { .. } => "",
        }
    }

    /// The key the command writes (`None` for `Ops`, which name their own).
    pub fn key(&self) -> Option<&[u8]> {
        match self {
            Command::Put { key, .. } | Command::Delete { key, .. } | Command::PutIf { key, .. } => {
                Some(key)
            }
            Command::Ops { .. } | Command::Meta { .. } => None,
        }
    }

    /// Bytes of the encoding.
    pub fn encoded_len(&self) -> usize {
        let common = 1 + 1 + self.tenant().len();
        let key = 4 + self.key().map_or(0, <[u8]>::len);
        match self {
            Command::Put { value, .. } => common + key + 8 + 4 + value.len(),
            Command::Delete { .. } => common + key,
            Command::PutIf { value, .. } => common + key + 8 + 1 + 8 + 8 + 4 + value.len(),
            Command::Ops { payload, trace, .. } => {
                let trace = trace.map_or(0, |_| TraceParent::ENCODED_BYTES);
                common + trace + 8 + 4 + payload.len()
            }
            Command::Meta { payload, .. } => common + 8 + 4 + payload.len(),
        }
    }

    /// Checks the limits; a command that passes always encodes.
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.tenant().len() > MAX_TENANT_NAME_BYTES {
            return Err(CommandError::TenantNameTooLong(self.tenant().len()));
        }
        if self.encoded_len() > MAX_COMMAND_BYTES {
            return Err(CommandError::TooLarge(self.encoded_len()));
        }
        Ok(())
    }

    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), CommandError> {
        self.validate()?;
        let start = out.len();
        let kind = match self {
            Command::Put { .. } => KIND_PUT,
            Command::Delete { .. } => KIND_DELETE,
            Command::PutIf { .. } => KIND_PUT_IF,
            Command::Ops { trace: None, .. } => KIND_OPS,
            Command::Ops { trace: Some(_), .. } => KIND_OPS_TRACED,
            Command::Meta { .. } => KIND_META,
        };
        out.push(kind);
        out.push(self.tenant().len() as u8);
        out.extend_from_slice(self.tenant().as_bytes());
        if let Some(key) = self.key() {
            put_bytes_u32(out, key);
        }
        // u64::MAX is "never": a real expiry that far is clamped below it.
        let expiry = |at: &Option<u64>| at.map_or(NEVER_EXPIRES, |at| at.min(NEVER_EXPIRES - 1));
        match self {
            Command::Put {
                value,
                expires_at_unix_ms,
                ..
            } => {
                put_u64(out, expiry(expires_at_unix_ms));
                put_bytes_u32(out, value);
            }
            Command::PutIf {
                value,
                expires_at_unix_ms,
                condition,
                at_unix_ms,
                ..
            } => {
                put_u64(out, expiry(expires_at_unix_ms));
                let (tag, version) = match condition {
                    PutCondition::IfAbsent => (1, 0),
                    PutCondition::IfPresent => (2, 0),
                    PutCondition::IfVersion(version) => (3, *version),
                };
                out.push(tag);
                put_u64(out, version);
                put_u64(out, *at_unix_ms);
                put_bytes_u32(out, value);
            }
            Command::Ops {
                at_unix_ms,
                payload,
                trace,
                ..
            } => {
                if let Some(trace) = trace {
                    trace.encode(out);
                }
                put_u64(out, *at_unix_ms);
                put_bytes_u32(out, payload);
            }
            Command::Meta {
                at_unix_ms,
                payload,
            } => {
                put_u64(out, *at_unix_ms);
                put_bytes_u32(out, payload);
            }
            Command::Delete { .. } => {}
        }
        assert_eq!(
            out.len() - start,
            self.encoded_len(),
            "encoded_len is exact"
        );
        Ok(())
    }

    /// Decodes a whole buffer holding exactly one command.
    pub fn decode(bytes: &[u8]) -> Result<Command, DecodeError> {
        let mut reader = Reader::new(bytes, "command");
        let command = Command::decode_from(&mut reader)?;
        reader.finish()?;
        Ok(command)
    }

    pub(crate) fn decode_from(reader: &mut Reader<'_>) -> Result<Command, DecodeError> {
        let kind = reader.u8()?;
        let tenant_bytes = reader.u8()? as usize;
        let tenant = reader.take(tenant_bytes)?;
        let tenant = reader.utf8(tenant)?;
        if kind == KIND_META {
            if !tenant.is_empty() {
                return Err(reader.error("a metadata command names no tenant"));
            }
            let at_unix_ms = reader.u64()?;
            let payload = reader.bytes_u32()?.to_vec();
            return Ok(Command::Meta {
                at_unix_ms,
                payload,
            });
        }
        if kind == KIND_OPS || kind == KIND_OPS_TRACED {
            let trace = match kind {
                KIND_OPS_TRACED => Some(TraceParent::decode(reader)?),
                _ => None,
            };
            let at_unix_ms = reader.u64()?;
            let payload = reader.bytes_u32()?.to_vec();
            return Ok(Command::Ops {
                tenant,
                at_unix_ms,
                payload,
                trace,
            });
        }
        let key = reader.bytes_u32()?.to_vec();
        match kind {
            KIND_PUT => {
                let expiry = reader.u64()?;
                let value = reader.bytes_u32()?.to_vec();
                Ok(Command::Put {
                    tenant,
                    key,
                    value,
                    expires_at_unix_ms: (expiry != NEVER_EXPIRES).then_some(expiry),
                })
            }
            KIND_DELETE => Ok(Command::Delete { tenant, key }),
            KIND_PUT_IF => {
                let expiry = reader.u64()?;
                let tag = reader.u8()?;
                let version = reader.u64()?;
                let condition = match tag {
                    1 => PutCondition::IfAbsent,
                    2 => PutCondition::IfPresent,
                    3 => PutCondition::IfVersion(version),
                    other => return Err(reader.error(format!("unknown put condition {other}"))),
                };
                let at_unix_ms = reader.u64()?;
                let value = reader.bytes_u32()?.to_vec();
                Ok(Command::PutIf {
                    tenant,
                    key,
                    value,
                    expires_at_unix_ms: (expiry != NEVER_EXPIRES).then_some(expiry),
                    condition,
                    at_unix_ms,
                })
            }
            other => Err(reader.error(format!("unknown command kind {other}"))),
        }
    }
}

/// Shows at most this many bytes of a key in logs and errors.
const SHOWN_KEY_BYTES: usize = 32;

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(key) = self.key() else {
            return match self {
                Command::Meta {
                    at_unix_ms,
                    payload,
                } => write!(f, "meta ({} bytes at {at_unix_ms})", payload.len()),
                Command::Ops {
                    at_unix_ms,
                    payload,
                    ..
                } => write!(
                    f,
                    "ops {} ({} bytes at {at_unix_ms})",
                    self.tenant(),
                    payload.len()
                ),
                _ => unreachable!("only Ops and Meta name no key"),
            };
        };
        let shown = String::from_utf8_lossy(&key[..key.len().min(SHOWN_KEY_BYTES)]);
        let ellipsis = if key.len() > SHOWN_KEY_BYTES {
            "…"
        } else {
            ""
        };
        match self {
            Command::Put {
                value,
                expires_at_unix_ms,
                ..
            } => write!(
                f,
                "put {}/{shown}{ellipsis} ({} bytes, expires {expires_at_unix_ms:?})",
                self.tenant(),
                value.len()
            ),
            Command::Delete { .. } => write!(f, "delete {}/{shown}{ellipsis}", self.tenant()),
            Command::Ops { .. } | Command::Meta { .. } => unreachable!("handled above"),
            Command::PutIf {
                value, condition, ..
            } => write!(
                f,
                "put {}/{shown}{ellipsis} ({} bytes) if {condition:?}",
                self.tenant(),
                value.len()
            ),
        }
    }
}

// Values can be megabytes: Debug shows sizes, not bytes.
impl fmt::Debug for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

// openraft's messages (AppendEntries carries entries) travel with serde
// (crate::network); a command keeps its one explicit encoding inside them.
impl serde::Serialize for Command {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        self.encode(&mut bytes).map_err(serde::ser::Error::custom)?;
        serializer.serialize_bytes(&bytes)
    }
}

impl<'de> serde::Deserialize<'de> for Command {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Command, D::Error> {
        let bytes: Vec<u8> = serde::Deserialize::deserialize(deserializer)?;
        Command::decode(&bytes).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(expiry: Option<u64>) -> Command {
        Command::Put {
            tenant: "acme".into(),
            key: b"user:1".to_vec(),
            value: vec![9; 300],
            expires_at_unix_ms: expiry,
        }
    }

    #[test]
    fn commands_round_trip() {
        for command in [
            put(None),
            put(Some(1_700_000_000_000)),
            Command::Delete {
                tenant: String::new(),
                key: Vec::new(),
            },
            Command::PutIf {
                tenant: "acme".into(),
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                expires_at_unix_ms: Some(9),
                condition: PutCondition::IfVersion(42),
                at_unix_ms: 1_700_000_000_000,
            },
            Command::PutIf {
                tenant: "acme".into(),
                key: b"k".to_vec(),
                value: Vec::new(),
                expires_at_unix_ms: None,
                condition: PutCondition::IfAbsent,
                at_unix_ms: 0,
            },
            Command::Ops {
                tenant: "acme".into(),
                at_unix_ms: 1_700_000_000_000,
                payload: vec![1, 2, 3],
                trace: None,
            },
            Command::Ops {
                tenant: String::new(),
                at_unix_ms: 0,
                payload: Vec::new(),
                trace: None,
            },
            Command::Meta {
                at_unix_ms: 1_700_000_000_000,
                payload: br#"{"register":1}"#.to_vec(),
            },
            Command::Meta {
                at_unix_ms: 0,
                payload: Vec::new(),
            },
            Command::Ops {
                tenant: "acme".into(),
                at_unix_ms: 7,
                payload: vec![9; 40],
                trace: Some(TraceParent {
                    trace_id: [0xab; 16],
                    span_id: [0xcd; 8],
                    flags: 1,
                }),
            },
        ] {
            let mut bytes = Vec::new();
            command.encode(&mut bytes).unwrap();
            assert_eq!(bytes.len(), command.encoded_len());
            assert_eq!(Command::decode(&bytes).unwrap(), command);
        }
    }

    #[test]
    fn trace_parents_read_w3c_text_and_refuse_anything_malformed() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse_w3c(text).unwrap();
        assert_eq!(parent.to_w3c(), text);
        assert_eq!(parent.flags, 1);
        for malformed in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(TraceParent::parse_w3c(malformed), None, "{malformed:?}");
        }
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let mut bytes = Vec::new();
        put(Some(5)).encode(&mut bytes).unwrap();
        for cut in 0..bytes.len() {
            assert!(Command::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(Command::decode(&longer).is_err());
        bytes[0] = 7;
        assert!(Command::decode(&bytes).is_err());
        // A metadata command naming a tenant is not one this node wrote.
        let mut meta = Vec::new();
        Command::Meta {
            at_unix_ms: 1,
            payload: vec![1],
        }
        .encode(&mut meta)
        .unwrap();
        meta.splice(1..2, [1, b'x']);
        assert!(Command::decode(&meta).is_err());
    }

    #[test]
    fn limits_are_enforced_before_encoding() {
        let long_tenant = Command::Delete {
            tenant: "t".repeat(MAX_TENANT_NAME_BYTES + 1),
            key: Vec::new(),
        };
        assert!(matches!(
            long_tenant.encode(&mut Vec::new()),
            Err(CommandError::TenantNameTooLong(_))
        ));
        let huge = Command::Put {
            tenant: "a".into(),
            key: Vec::new(),
            value: vec![0; MAX_COMMAND_BYTES],
            expires_at_unix_ms: None,
        };
        assert!(matches!(huge.validate(), Err(CommandError::TooLarge(_))));
    }
}
