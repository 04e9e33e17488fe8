//! What the WAL records: the effect of each applied write on a [`Store`],
//! and the snapshot's entry encoding (the same layout as a `Put`).
//!
//! Effects, not requests: a `Put` carries the version and absolute expiry the
//! store assigned, so replaying it reproduces the exact state (versions
//! never go backwards after a restart, TTLs keep their wall-clock deadline).
//! Tenants are named, not numbered, because tenant ids are local to one run.
//!
//! ```text
//! op       = kind u8 | tenant_len u8 | tenant | slot u16 | key_len u32 | key | rest
//! Put      (kind 1): version u64 | expires_at_ms u64 (u64::MAX: never) | value_len u32 | value
//! Delete   (kind 2): -
//! Expire   (kind 3): expires_at_ms u64 (u64::MAX: never)
//! Flush    (kind 4): (slot 0, empty key) every key of the tenant
//! ```

use crate::slot::Slot;

/// WAL record kind of a key-value operation (`Record::kind`).
pub const RECORD_KIND_KV: u32 = 1;

/// A write's effect, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoggedOp<'a> {
    /// The key now holds this value, version and expiry.
    Put {
        /// Tenant name.
        tenant: &'a str,
        /// Slot.
        slot: Slot,
        /// Key.
        key: &'a [u8],
        /// Value.
        value: &'a [u8],
        /// Version assigned.
        version: u64,
        /// Expiry (Unix ms) or `None`.
        expires_at_ms: Option<u64>,
    },
    /// The key was removed.
    Delete {
        /// Tenant name.
        tenant: &'a str,
        /// Slot.
        slot: Slot,
        /// Key.
        key: &'a [u8],
    },
    /// The key's expiry changed (value and version did not).
    Expire {
        /// Tenant name.
        tenant: &'a str,
        /// Slot.
        slot: Slot,
        /// Key.
        key: &'a [u8],
        /// New expiry or `None`.
        expires_at_ms: Option<u64>,
    },
    /// Every key of the tenant was removed.
    Flush {
        /// Tenant name.
        tenant: &'a str,
    },
}

const NEVER: u64 = u64::MAX;

/// Why bytes are not a valid [`LoggedOp`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid logged operation: {0}")]
pub struct LoggedOpError(pub &'static str);

impl LoggedOp<'_> {
    /// Appends the encoding to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (kind, tenant, slot, key) = match *self {
            LoggedOp::Put {
                tenant, slot, key, ..
            } => (1u8, tenant, slot, key),
            LoggedOp::Delete { tenant, slot, key } => (2, tenant, slot, key),
            LoggedOp::Expire {
                tenant, slot, key, ..
            } => (3, tenant, slot, key),
            LoggedOp::Flush { tenant } => (4, tenant, 0, &[][..]),
        };
        let tenant_len = u8::try_from(tenant.len()).expect("tenant names are at most 64 bytes");
        out.push(kind);
        out.push(tenant_len);
        out.extend_from_slice(tenant.as_bytes());
        out.extend_from_slice(&slot.to_le_bytes());
        out.extend_from_slice(&(key.len() as u32).to_le_bytes());
        out.extend_from_slice(key);
        match *self {
            LoggedOp::Put {
                value,
                version,
                expires_at_ms,
                ..
            } => {
                out.extend_from_slice(&version.to_le_bytes());
                out.extend_from_slice(&expires_at_ms.unwrap_or(NEVER).to_le_bytes());
                out.extend_from_slice(&(value.len() as u32).to_le_bytes());
                out.extend_from_slice(value);
            }
            LoggedOp::Expire { expires_at_ms, .. } => {
                out.extend_from_slice(&expires_at_ms.unwrap_or(NEVER).to_le_bytes());
            }
            LoggedOp::Delete { .. } | LoggedOp::Flush { .. } => {}
        }
    }

    /// Decodes one operation from the front of `bytes`; returns it and the
    /// bytes it took.
    pub fn decode(bytes: &[u8]) -> Result<(LoggedOp<'_>, usize), LoggedOpError> {
        let mut reader = Reader { bytes, at: 0 };
        let kind = reader.u8()?;
        let tenant_len = reader.u8()? as usize;
        let tenant = std::str::from_utf8(reader.take(tenant_len)?)
            .map_err(|_| LoggedOpError("tenant is not UTF-8"))?;
        let slot = u16::from_le_bytes(reader.take(2)?.try_into().expect("2 bytes"));
        if usize::from(slot) >= crate::slot::SLOT_COUNT {
            return Err(LoggedOpError("slot out of range"));
        }
        let key_len = reader.u32()? as usize;
        let key = reader.take(key_len)?;
        let expiry = |at: u64| (at != NEVER).then_some(at);
        let op = match kind {
            1 => {
                let version = reader.u64()?;
                if version == 0 || version > crate::store::MAX_VERSION {
                    return Err(LoggedOpError("version out of range"));
                }
                let expires_at_ms = expiry(reader.u64()?);
                let value_len = reader.u32()? as usize;
                let value = reader.take(value_len)?;
                LoggedOp::Put {
                    tenant,
                    slot,
                    key,
                    value,
                    version,
                    expires_at_ms,
                }
            }
            2 => LoggedOp::Delete { tenant, slot, key },
            3 => LoggedOp::Expire {
                tenant,
                slot,
                key,
                expires_at_ms: expiry(reader.u64()?),
            },
            4 => LoggedOp::Flush { tenant },
            _ => return Err(LoggedOpError("unknown operation kind")),
        };
        Ok((op, reader.at))
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LoggedOpError> {
        let slice = self
            .bytes
            .get(
                self.at
                    ..self
                        .at
                        .checked_add(n)
                        .ok_or(LoggedOpError("length overflow"))?,
            )
            .ok_or(LoggedOpError("truncated"))?;
        self.at += n;
        Ok(slice)
    }
    fn u8(&mut self) -> Result<u8, LoggedOpError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, LoggedOpError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, LoggedOpError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
}

#[cfg(test)]
mod tests {
    /// Found by fuzzing: a version at the top of the range let the store's
    /// counter wrap; versions outside `1..=MAX_VERSION` are corruption.
    #[test]
    fn versions_out_of_range_are_refused() {
        for (version, accepted) in [
            (0, false),
            (1, true),
            (crate::store::MAX_VERSION, true),
            (crate::store::MAX_VERSION + 1, false),
            (u64::MAX, false),
        ] {
            let mut bytes = Vec::new();
            super::LoggedOp::Put {
                tenant: "t",
                slot: 1,
                key: b"k",
                value: b"v",
                version,
                expires_at_ms: None,
            }
            .encode(&mut bytes);
            assert_eq!(
                super::LoggedOp::decode(&bytes).is_ok(),
                accepted,
                "version {version}"
            );
        }
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let ops = [
            LoggedOp::Put {
                tenant: "acme",
                slot: 7,
                key: b"k",
                value: b"value",
                version: 9,
                expires_at_ms: Some(5),
            },
            LoggedOp::Put {
                tenant: "default",
                slot: 16383,
                key: b"",
                value: b"",
                version: 1,
                expires_at_ms: None,
            },
            LoggedOp::Delete {
                tenant: "a",
                slot: 1,
                key: b"gone",
            },
            LoggedOp::Expire {
                tenant: "a",
                slot: 1,
                key: b"k",
                expires_at_ms: None,
            },
            LoggedOp::Flush { tenant: "t" },
        ];
        let mut bytes = Vec::new();
        for op in &ops {
            op.encode(&mut bytes);
        }
        let mut at = 0;
        for op in &ops {
            let (decoded, used) = LoggedOp::decode(&bytes[at..]).unwrap();
            assert_eq!(&decoded, op);
            at += used;
        }
        assert_eq!(at, bytes.len());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = LoggedOp::decode(&bytes);
        }
    }
}
