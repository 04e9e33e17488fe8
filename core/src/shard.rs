//! A core's share of the keyspace and the requests it executes.
//!
//! A [`Shard`] owns one [`Store`]. Requests reach it as [`ShardRequest`]
//! values, either called directly by a connection on the same core or carried
//! over a cross-core channel (see `router`); both paths run the same
//! [`Shard::execute`], synchronously, so a request is atomic on its shard and
//! requests from one sender run in the order they were sent.
//!
//! Requests and replies are plain Rust values (`Send`, with `Bytes` that
//! share the connection's frame buffer): inside one process there is nothing
//! to gain from serialising them. Between nodes (replication) they will be
//! flatbuffers.

use std::sync::Arc;

use bytes::Bytes;
use tinkerdb_storage::glob::glob_match;
use tinkerdb_storage::{
    Quota, SetOptions, Slot, Store, StoreError, TenantId, TenantUsage, WriteOutcome, SLOT_COUNT,
};

use crate::slots::{CoreId, SlotMap};

/// A key with its slot (computed once, by the core that decoded it).
#[derive(Debug, Clone)]
pub struct SlotKey {
    /// The key's hash slot.
    pub slot: Slot,
    /// The key.
    pub key: Bytes,
}

/// Which keys a scan returns.
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Keys must start with this (empty: any).
    pub prefix: Bytes,
    /// Keys must match this glob (empty: any).
    pub pattern: Bytes,
}

impl KeyFilter {
    /// Does `key` pass?
    pub fn accepts(&self, key: &[u8]) -> bool {
        key.starts_with(&self.prefix) && (self.pattern.is_empty() || glob_match(&self.pattern, key))
    }
}

/// A value read from a shard, copied out of the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueRead {
    /// The value.
    pub value: Bytes,
    /// Its version.
    pub version: u64,
    /// Unix ms when it expires, if it does.
    pub expires_at_ms: Option<u64>,
}

/// Work for the shard that owns the keys named in it.
#[derive(Debug)]
pub enum ShardRequest {
    /// Read one key.
    Get {
        /// Tenant.
        tenant: TenantId,
        /// Key.
        key: SlotKey,
    },
    /// Write one key (plain, conditional or compare-and-set).
    Set {
        /// Tenant.
        tenant: TenantId,
        /// Key.
        key: SlotKey,
        /// Value.
        value: Bytes,
        /// Condition and expiry.
        options: SetOptions,
    },
    /// Read several keys of this shard.
    GetMany {
        /// Tenant.
        tenant: TenantId,
        /// Keys, answered in this order.
        keys: Vec<SlotKey>,
        /// Stop and answer `TooLarge` once the values exceed this many bytes.
        max_bytes: usize,
    },
    /// Write several keys of this shard; stops at the first refused write.
    SetMany {
        /// Tenant.
        tenant: TenantId,
        /// Keys and values.
        entries: Vec<(SlotKey, Bytes)>,
    },
    /// Delete keys; answers how many existed.
    Delete {
        /// Tenant.
        tenant: TenantId,
        /// Keys.
        keys: Vec<SlotKey>,
    },
    /// Count how many of the keys exist.
    Exists {
        /// Tenant.
        tenant: TenantId,
        /// Keys.
        keys: Vec<SlotKey>,
    },
    /// One step of a cursor scan over this shard's slots.
    Scan {
        /// Tenant.
        tenant: TenantId,
        /// First slot to look at (must be owned by this shard).
        start_slot: u32,
        /// Which keys to return.
        filter: Arc<KeyFilter>,
        /// Stop once this many keys are gathered (a whole slot at a time).
        max_keys: usize,
    },
    /// The tenant's usage on this shard.
    Usage {
        /// Tenant.
        tenant: TenantId,
    },
    /// Read-modify-write of one key, atomic on its shard (RESP's INCR,
    /// APPEND, GETDEL, SET ... GET, EXPIRE, PERSIST).
    Update {
        /// Tenant.
        tenant: TenantId,
        /// Key.
        key: SlotKey,
        /// What to do.
        update: Update,
    },
    /// Remove every key of the tenant on this shard.
    Flush {
        /// Tenant.
        tenant: TenantId,
    },
    /// Several single-key requests (`Get`, `Set`) from one connection's
    /// pipeline, sent as one message to amortise the cross-core hop.
    /// Executed in order; answered by `ShardReply::Batch` in the same order.
    Batch(Vec<ShardRequest>),
    /// Set the tenant's quota share on this shard.
    SetQuota {
        /// Tenant.
        tenant: TenantId,
        /// The share.
        quota: Quota,
    },
}

/// A read-modify-write of one key.
#[derive(Debug, Clone)]
pub enum Update {
    /// Add to the key's value read as a decimal i64 (absent: 0); keeps TTL.
    IncrBy(i64),
    /// Append bytes to the value (absent: empty); keeps TTL.
    Append(Bytes),
    /// Read the value and delete the key.
    GetDelete,
    /// Write like `Set` and also return the old value.
    SetAndGet {
        /// New value.
        value: Bytes,
        /// Condition and expiry.
        options: SetOptions,
    },
    /// Set the expiry (Unix ms), or clear it with `None`; a past time deletes.
    Expire(Option<u64>),
}

/// The outcome of an [`Update`].
#[derive(Debug)]
pub enum UpdateOutcome {
    /// The new integer (IncrBy).
    Integer(i64),
    /// The new length (Append).
    Length(u64),
    /// The old value (GetDelete, SetAndGet) and, for SetAndGet, whether the
    /// write applied.
    Previous(Option<Bytes>, bool),
    /// Whether the key existed (Expire).
    Existed(bool),
}

/// Why an [`Update`] was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// IncrBy on a value that is not a decimal i64.
    NotAnInteger,
    /// IncrBy would overflow i64.
    Overflow,
    /// The tenant's quota.
    Quota(StoreError),
}

/// A shard's answer, variant by variant matching [`ShardRequest`].
#[derive(Debug)]
pub enum ShardReply {
    /// Answer to `Get`.
    Value(Option<ValueRead>),
    /// Answer to `Set`.
    Written(Result<WriteOutcome, StoreError>),
    /// Answer to `GetMany`.
    Values(Vec<Option<ValueRead>>),
    /// `GetMany` stopped: the values passed its byte budget (bytes so far).
    TooLarge(usize),
    /// Answer to `SetMany`: versions of the writes done, and the error that
    /// stopped the rest, if any.
    WrittenMany(Vec<u64>, Option<StoreError>),
    /// Answer to `Delete` and `Exists`.
    Count(u64),
    /// Answer to `Scan`.
    Scanned {
        /// Matching keys.
        keys: Vec<Bytes>,
        /// Where the next step starts; `SLOT_COUNT` when past the last slot.
        next_slot: u32,
    },
    /// Answer to `Usage`.
    Usage(TenantUsage),
    /// Answer to `Update`.
    Updated(Result<UpdateOutcome, UpdateError>),
    /// Answer to `Batch`, one reply per request, in order.
    Batch(Vec<ShardReply>),
    /// Answer to `SetQuota`.
    Done,
}

/// Most entries one scan step looks at (live or not, matching or not)
/// before it returns, so a scan over a huge keyspace or a selective pattern
/// never holds the core for long. The step still ends on a slot boundary.
pub const SCAN_STEP_MAX_ENTRIES_VISITED: usize = 20_000;

/// Key bytes after which a scan step stops (at the end of the slot).
pub const SCAN_STEP_MAX_KEY_BYTES: usize = 4 << 20;

/// Most (possibly empty) slots one scan step looks at.
pub const SCAN_STEP_MAX_SLOTS_VISITED: usize = 4096;

/// One core's keys.
pub struct Shard {
    core: CoreId,
    slot_map: Arc<SlotMap>,
    store: Store,
}

impl Shard {
    /// An empty shard for `core`.
    pub fn new(core: CoreId, slot_map: Arc<SlotMap>) -> Shard {
        Shard {
            core,
            slot_map,
            store: Store::new(),
        }
    }

    /// The store, for the background expiry task.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// Executes one request. Never yields: a request is atomic on its shard.
    pub fn execute(&mut self, request: ShardRequest, now_ms: u64) -> ShardReply {
        let Shard {
            core,
            slot_map,
            store,
        } = self;
        let assert_owned = |slot: Slot| {
            assert_eq!(
                slot_map.owner(slot),
                *core,
                "slot {slot} routed to a core that does not own it"
            );
        };
        match request {
            ShardRequest::Get { tenant, key } => {
                assert_owned(key.slot);
                ShardReply::Value(read(store, tenant, &key, now_ms))
            }
            ShardRequest::Set {
                tenant,
                key,
                value,
                options,
            } => {
                assert_owned(key.slot);
                ShardReply::Written(store.set(tenant, key.slot, &key.key, &value, options, now_ms))
            }
            ShardRequest::GetMany {
                tenant,
                keys,
                max_bytes,
            } => {
                let mut values = Vec::with_capacity(keys.len());
                let mut bytes = 0;
                for key in &keys {
                    let value = read(store, tenant, key, now_ms);
                    bytes += value.as_ref().map_or(0, |v| v.value.len());
                    if bytes > max_bytes {
                        return ShardReply::TooLarge(bytes);
                    }
                    values.push(value);
                }
                ShardReply::Values(values)
            }
            ShardRequest::SetMany { tenant, entries } => {
                let mut versions = Vec::with_capacity(entries.len());
                for (key, value) in &entries {
                    match store.set(
                        tenant,
                        key.slot,
                        &key.key,
                        value,
                        SetOptions::default(),
                        now_ms,
                    ) {
                        Ok(outcome) => versions.push(outcome.version),
                        Err(error) => return ShardReply::WrittenMany(versions, Some(error)),
                    }
                }
                ShardReply::WrittenMany(versions, None)
            }
            ShardRequest::Delete { tenant, keys } => ShardReply::Count(
                keys.iter()
                    .filter(|key| store.delete(tenant, key.slot, &key.key, now_ms))
                    .count() as u64,
            ),
            ShardRequest::Exists { tenant, keys } => ShardReply::Count(
                keys.iter()
                    .filter(|key| store.exists(tenant, key.slot, &key.key, now_ms))
                    .count() as u64,
            ),
            ShardRequest::Scan {
                tenant,
                start_slot,
                filter,
                max_keys,
            } => scan_step(
                store, slot_map, *core, tenant, start_slot, &filter, max_keys, now_ms,
            ),
            ShardRequest::Usage { tenant } => ShardReply::Usage(store.tenant_usage(tenant)),
            ShardRequest::Update {
                tenant,
                key,
                update,
            } => {
                assert_owned(key.slot);
                ShardReply::Updated(apply_update(store, tenant, &key, update, now_ms))
            }
            ShardRequest::Flush { tenant } => ShardReply::Count(store.flush_tenant(tenant)),
            ShardRequest::Batch(requests) => ShardReply::Batch(
                requests
                    .into_iter()
                    .map(|request| {
                        assert!(
                            !matches!(request, ShardRequest::Batch(_)),
                            "batches do not nest"
                        );
                        self.execute(request, now_ms)
                    })
                    .collect(),
            ),
            ShardRequest::SetQuota { tenant, quota } => {
                store.set_quota(tenant, quota);
                ShardReply::Done
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_step(
    store: &Store,
    slot_map: &SlotMap,
    core: CoreId,
    tenant: TenantId,
    start_slot: u32,
    filter: &KeyFilter,
    max_keys: usize,
    now_ms: u64,
) -> ShardReply {
    let mut keys = Vec::new();
    let mut entries_visited = 0;
    let mut key_bytes = 0;
    let mut slot = start_slot as usize;
    let slot_limit = (slot + SCAN_STEP_MAX_SLOTS_VISITED).min(SLOT_COUNT);
    while slot < slot_limit && slot_map.owner(slot as Slot) == core {
        entries_visited += store.for_each_key_in_slot(tenant, slot as Slot, now_ms, |key| {
            if filter.accepts(key) {
                key_bytes += key.len();
                keys.push(Bytes::copy_from_slice(key));
            }
        });
        slot += 1;
        if keys.len() >= max_keys
            || entries_visited >= SCAN_STEP_MAX_ENTRIES_VISITED
            || key_bytes >= SCAN_STEP_MAX_KEY_BYTES
        {
            break;
        }
    }
    ShardReply::Scanned {
        keys,
        next_slot: slot as u32,
    }
}

/// Runs one read-modify-write synchronously: nothing else runs on this
/// shard in between, so it is atomic.
fn apply_update(
    store: &mut Store,
    tenant: TenantId,
    key: &SlotKey,
    update: Update,
    now_ms: u64,
) -> Result<UpdateOutcome, UpdateError> {
    let keep_ttl = SetOptions {
        condition: tinkerdb_storage::WriteCondition::Always,
        expiry: tinkerdb_storage::Expiry::Keep,
    };
    let current = read(store, tenant, key, now_ms);
    match update {
        Update::IncrBy(delta) => {
            let number = match &current {
                None => 0,
                Some(read) => std::str::from_utf8(&read.value)
                    .ok()
                    .and_then(|text| text.parse::<i64>().ok())
                    .ok_or(UpdateError::NotAnInteger)?,
            };
            let number = number.checked_add(delta).ok_or(UpdateError::Overflow)?;
            store
                .set(
                    tenant,
                    key.slot,
                    &key.key,
                    number.to_string().as_bytes(),
                    keep_ttl,
                    now_ms,
                )
                .map_err(UpdateError::Quota)?;
            Ok(UpdateOutcome::Integer(number))
        }
        Update::Append(suffix) => {
            let mut value = current.map(|read| read.value.to_vec()).unwrap_or_default();
            value.extend_from_slice(&suffix);
            store
                .set(tenant, key.slot, &key.key, &value, keep_ttl, now_ms)
                .map_err(UpdateError::Quota)?;
            Ok(UpdateOutcome::Length(value.len() as u64))
        }
        Update::GetDelete => {
            if current.is_some() {
                store.delete(tenant, key.slot, &key.key, now_ms);
            }
            Ok(UpdateOutcome::Previous(
                current.map(|read| read.value),
                true,
            ))
        }
        Update::SetAndGet { value, options } => {
            let outcome = store
                .set(tenant, key.slot, &key.key, &value, options, now_ms)
                .map_err(UpdateError::Quota)?;
            Ok(UpdateOutcome::Previous(
                current.map(|read| read.value),
                outcome.applied,
            ))
        }
        Update::Expire(expires_at_ms) => Ok(UpdateOutcome::Existed(store.set_expiry(
            tenant,
            key.slot,
            &key.key,
            expires_at_ms,
            now_ms,
        ))),
    }
}

fn read(store: &Store, tenant: TenantId, key: &SlotKey, now_ms: u64) -> Option<ValueRead> {
    store
        .get(tenant, key.slot, &key.key, now_ms)
        .map(|view| ValueRead {
            value: Bytes::copy_from_slice(view.value),
            version: view.version,
            expires_at_ms: view.expires_at_ms,
        })
}
