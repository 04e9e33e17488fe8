//! A core's share of the keyspace and the requests it executes.
//!
//! A [`Shard`] owns one [`Store`]. Requests reach it as [`ShardRequest`]
//! values, either called directly by a connection on the same core or carried
//! over a cross-core channel (see `coord::dispatch`); both paths run the same
//! [`Shard::execute`], synchronously, so a request is atomic on its shard and
//! requests from one sender run in the order they were sent.
//!
//! Requests and replies are plain Rust values (`Send`, with `Bytes` that
//! share the connection's frame buffer): inside one process there is nothing
//! to gain from serialising them. Between nodes (replication) they will be
//! flatbuffers.

pub mod recovery;
pub mod remote;
pub mod write_op;

use std::rc::Rc;
use std::sync::Arc;

use bytes::Bytes;
use tinkerdb_storage::glob::glob_match;
use tinkerdb_storage::{
    Quota, SetOptions, Slot, Store, StoreError, TenantId, TenantUsage, WriteOutcome, SLOT_COUNT,
};

use crate::error::ProtocolError;
use crate::slots::{RangeId, SlotMap};
use crate::tenants::CoreTenants;
use tinkerdb_storage::log_op::{LoggedOp, RECORD_KIND_KV};
use tinkerdb_storage::snapshot::SnapshotCut;
use tinkerdb_storage::wal::Wal;

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
    /// Write every entry only if none of the keys exists, atomically on
    /// this shard (MSETNX); answers `Count(1)` if written, `Count(0)` if a
    /// key existed, or the quota error with nothing written.
    SetManyIfAbsent {
        /// Tenant.
        tenant: TenantId,
        /// Keys and values (every key on this shard).
        entries: Vec<(SlotKey, Bytes)>,
    },
    /// Rename or copy one key to another of this shard, value and expiry
    /// (RENAME, RENAMENX, COPY); answers `Updated(Existed(applied))`.
    Move {
        /// Tenant.
        tenant: TenantId,
        /// The source key.
        from: SlotKey,
        /// The destination key (on the same shard).
        to: SlotKey,
        /// Rename or copy, and what an existing destination does.
        how: MoveKind,
    },
    /// Remove every key of the tenant on this shard.
    Flush {
        /// Tenant.
        tenant: TenantId,
    },
    /// Several one-shard requests (any but `Batch` itself) from one
    /// connection's pipeline, sent as one message to amortise the cross-core
    /// hop (`coord::batches::Pipeline`).
    /// Executed in order; answered by `ShardReply::Batch` in the same order.
    Batch(Vec<ShardRequest>),
    /// A read that may answer from this replica's state without the read
    /// index (cluster mode, a session that opted in to stale reads). On a
    /// standalone shard it is the read itself: one copy is never stale.
    Stale(Box<ShardRequest>),
    /// Take a snapshot of this core (handled by the core's context, not by
    /// `Shard::execute`: it runs as a background task); answers `Snapshotted`.
    Snapshot,
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
    /// Set the expiry (Unix ms), or clear it with `None`, when `condition`
    /// holds; a past time deletes (EXPIRE family, PERSIST).
    Expire {
        /// The new expiry, `None` for none.
        at_ms: Option<u64>,
        /// When it applies.
        condition: ExpireCondition,
    },
    /// Read the value and set or clear its expiry (GETEX with an option).
    GetAndExpire(Option<u64>),
    /// Overwrite the value from byte `offset` on, padding with zero bytes
    /// (SETRANGE); the caller bounds `offset + bytes.len()`.
    SetRange {
        /// Where the bytes go.
        offset: u64,
        /// The bytes.
        bytes: Bytes,
    },
    /// Add to the key's value read as a decimal float (absent: 0); keeps
    /// TTL (INCRBYFLOAT).
    IncrByFloat(f64),
}

/// What a [`ShardRequest::Move`] does. It travels in Raft entries as it
/// is (`write_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MoveKind {
    /// RENAME: the destination is overwritten; a missing source is
    /// `UpdateError::NoSuchKey`.
    Rename,
    /// RENAMENX: nothing happens (answer false) if the destination exists;
    /// a missing source is `UpdateError::NoSuchKey`.
    RenameIfAbsent,
    /// COPY: the source stays; an existing destination is overwritten only
    /// with `replace` (else answer false); a missing source answers false;
    /// the same key as source and destination is `UpdateError::SameObject`.
    Copy {
        /// COPY ... REPLACE.
        replace: bool,
    },
}

/// When an [`Update::Expire`] applies (Redis 7's EXPIRE options). It
/// travels in Raft entries as it is (`write_op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum ExpireCondition {
    /// Always.
    Always,
    /// NX: the key has no expiry.
    IfNone,
    /// XX: the key has an expiry.
    IfSome,
    /// GT: the new expiry is later (no expiry counts as infinitely late).
    IfLater,
    /// LT: the new expiry is earlier (no expiry counts as infinitely late).
    IfEarlier,
    /// XX LT: the key has an expiry and the new one is earlier.
    IfSomeAndEarlier,
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
    /// The new value (IncrByFloat).
    Value(Bytes),
}

/// Why an [`Update`] was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdateError {
    /// IncrBy on a value that is not a decimal i64.
    NotAnInteger,
    /// IncrBy would overflow i64.
    Overflow,
    /// IncrByFloat on a value that is not a decimal float.
    NotAFloat,
    /// IncrByFloat would give NaN or an infinity.
    NotFinite,
    /// The tenant's quota.
    Quota(StoreError),
    /// RENAME or RENAMENX of a key that does not exist.
    NoSuchKey,
    /// COPY of a key onto itself.
    SameObject,
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
    /// A write refused because the core's storage failed (the WAL is
    /// poisoned); nothing was changed.
    Refused(String),
    /// Answer to `Batch`, one reply per request, in order.
    Batch(Vec<ShardReply>),
    /// Answer to `SetQuota`.
    Done,
    /// Answer to `Snapshot`: entries and bytes written, or why it failed.
    Snapshotted(Result<(u64, u64), String>),
    /// Refused with this error: a key of another shard (`WrongShard`, both
    /// modes), an out-of-range scan slot, and in cluster mode no leader or a
    /// refusal by the replicated state machine.
    Error(ProtocolError),
}

/// Most entries one scan step looks at (live or not, matching or not)
/// before it returns, so a scan over a huge keyspace or a selective pattern
/// never holds the core for long. The step still ends on a slot boundary.
pub const SCAN_STEP_MAX_ENTRIES_VISITED: usize = 20_000;

/// Key bytes after which a scan step stops (at the end of the slot).
pub const SCAN_STEP_MAX_KEY_BYTES: usize = 4 << 20;

/// Most (possibly empty) slots one scan step looks at.
pub const SCAN_STEP_MAX_SLOTS_VISITED: usize = 4096;

/// One range's keys, and the journal that makes their changes durable.
/// (A core hosts one or more ranges: see `slots`.)
pub struct Shard {
    range: RangeId,
    slot_map: Arc<SlotMap>,
    store: Store,
    journal: Journal,
}

/// What makes a shard's writes durable: the WAL every applied write is
/// logged to, and the snapshot in progress that must see each slot as it was
/// at its cut. Without a WAL (durability `none`) it does nothing.
///
/// It also keeps reads from showing what a crash can take back (sync
/// durability): a write is applied to the store before its WAL record is on
/// disk, so a request that observes a slot with a record still in flight
/// (a read, or a write whose outcome depends on the slot's state) gets that
/// record's index as its acknowledgement point and is answered only once the
/// record is durable. A slot with nothing in flight costs one comparison.
pub struct Journal {
    wal: Option<Wal>,
    tenants: Rc<CoreTenants>,
    snapshot: Option<SnapshotCut>,
    /// The WAL index the current request's acknowledgement must wait for.
    ack_point: Option<u64>,
    log_buffer: Vec<u8>,
    /// While a multi-key write runs ([`Journal::begin_group`]): the slots
    /// its logged ops changed (`None`: every slot); the ops themselves
    /// gather in `log_buffer` and become one record at `end_group`.
    group: Option<Vec<Option<Slot>>>,
    /// Sync durability only (empty otherwise): for every slot, the WAL index
    /// of the last record that changed it. A request observing the slot
    /// waits for that index when it is not durable yet.
    last_index_by_slot: Vec<u64>,
    /// The WAL index of the last record that changed every slot at once
    /// (`Flush`), observed by every request like a slot's own index.
    last_index_all_slots: u64,
}

/// Test hook: `TINKERDB_FAILPOINT_READS_SKIP_DURABLE_WAIT=1` answers reads
/// without waiting for the records they observed to be durable: the
/// negative control of the durable-reads crash test, which must catch it.
/// Read once, when a core starts.
pub const FAILPOINT_READS_SKIP_DURABLE_WAIT: &str = "TINKERDB_FAILPOINT_READS_SKIP_DURABLE_WAIT";

impl Journal {
    /// A journal writing to `wal` (none: memory only).
    pub fn new(wal: Option<Wal>, tenants: Rc<CoreTenants>) -> Journal {
        let reads_wait = wal.as_ref().is_some_and(|wal| wal.ack_point(0).is_some())
            && std::env::var_os(FAILPOINT_READS_SKIP_DURABLE_WAIT).is_none();
        Journal {
            wal,
            tenants,
            snapshot: None,
            ack_point: None,
            log_buffer: Vec::new(),
            group: None,
            last_index_by_slot: match reads_wait {
                true => vec![0; SLOT_COUNT],
                false => Vec::new(),
            },
            last_index_all_slots: 0,
        }
    }

    /// Raises the acknowledgement point to `index`.
    fn wait_for(&mut self, index: u64) {
        self.ack_point = Some(self.ack_point.map_or(index, |point| point.max(index)));
    }

    /// The current request observed `slot`: its answer must not go out
    /// before the slot's last record is durable.
    fn observe(&mut self, slot: Slot) {
        let Some(&slot_index) = self.last_index_by_slot.get(slot as usize) else {
            return; // Not sync durability: reads never wait.
        };
        let index = slot_index.max(self.last_index_all_slots);
        let wal = self
            .wal
            .as_ref()
            .expect("slot indexes are kept only with a WAL");
        if index > wal.durable_index() {
            self.wait_for(index);
        }
    }

    /// The current request observed every slot (tenant usage): it waits for
    /// every record appended so far.
    fn observe_all(&mut self) {
        if self.last_index_by_slot.is_empty() {
            return;
        }
        let wal = self
            .wal
            .as_ref()
            .expect("slot indexes are kept only with a WAL");
        if wal.last_index() > wal.durable_index() {
            self.wait_for(wal.last_index());
        }
    }

    fn tenant_name(&self) -> impl Fn(TenantId) -> String + '_ {
        |tenant| self.tenants.name_of(tenant).to_string()
    }

    /// Copy-on-write for a snapshot in progress: call before changing `slot`.
    fn before_write(&mut self, store: &Store, slot: Slot) {
        if let Some(mut snapshot) = self.snapshot.take() {
            snapshot.before_write(store, slot, &self.tenant_name());
            self.snapshot = Some(snapshot);
        }
    }

    /// Why writes are refused, if they are (the WAL failed).
    fn refusal(&self) -> Option<String> {
        self.wal
            .as_ref()
            .and_then(Wal::poisoned)
            .map(|error| error.to_string())
    }

    /// Logs `op`, which changed `slot` (`None`: every slot): as a record of
    /// its own, or into the group of the multi-key write running.
    fn append(&mut self, op: LoggedOp<'_>, slot: Option<Slot>) {
        if self.wal.is_none() {
            return;
        }
        let Some(mut slots) = self.group.take() else {
            self.log_buffer.clear();
            op.encode(&mut self.log_buffer);
            let payload = std::mem::take(&mut self.log_buffer);
            self.append_record(&payload, &[slot]);
            self.log_buffer = payload;
            return;
        };
        let before = self.log_buffer.len();
        op.encode(&mut self.log_buffer);
        if self.log_buffer.len() > MAX_GROUP_RECORD_BYTES && before > 0 {
            // Too large for one record: the ops so far go as one, and the
            // group goes on from this op (a write this large, many big
            // values, is atomic per record only).
            let tail = self.log_buffer.split_off(before);
            let head = std::mem::replace(&mut self.log_buffer, tail);
            self.append_record(&head, &slots);
            slots.clear();
        }
        slots.push(slot);
        self.group = Some(slots);
    }

    /// Starts a multi-key write whose logged ops must survive a crash
    /// together (MSETNX, RENAME, COPY, a core's part of MSET and DEL): they
    /// become one WAL record, which a torn write keeps whole or not at all.
    fn begin_group(&mut self) {
        assert!(self.group.is_none(), "groups do not nest");
        if self.wal.is_some() {
            self.log_buffer.clear();
            self.group = Some(Vec::new());
        }
    }

    /// Ends the multi-key write: appends its ops as one record (none if it
    /// changed nothing).
    fn end_group(&mut self) {
        let Some(slots) = self.group.take() else {
            return;
        };
        if slots.is_empty() {
            return;
        }
        let payload = std::mem::take(&mut self.log_buffer);
        self.append_record(&payload, &slots);
        self.log_buffer = payload;
    }

    /// Appends one record of key-value ops that changed `slots`.
    fn append_record(&mut self, payload: &[u8], slots: &[Option<Slot>]) {
        let wal = self.wal.as_ref().expect("only called with a WAL");
        // The WAL can only fail inside its flusher task, never between the
        // refusal check at the start of `execute` and here.
        let index = wal
            .append(RECORD_KIND_KV, payload)
            .expect("WAL poisoned in the middle of a synchronous request");
        if let Some(point) = wal.ack_point(index) {
            self.wait_for(point);
        }
        if !self.last_index_by_slot.is_empty() {
            for slot in slots {
                match slot {
                    Some(slot) => self.last_index_by_slot[*slot as usize] = index,
                    None => self.last_index_all_slots = index,
                }
            }
        }
    }

    /// Logs the key's state after a write: its entry, or its absence.
    fn log_state(&mut self, store: &Store, tenant: TenantId, key: &SlotKey) {
        if self.wal.is_none() {
            return;
        }
        let name = self.tenants.name_of(tenant);
        // Time 0: log the entry even if its TTL has already passed.
        let op = match store.get(tenant, key.slot, &key.key, 0) {
            Some(view) => LoggedOp::Put {
                tenant: &name,
                slot: key.slot,
                key: &key.key,
                value: view.value,
                version: view.version,
                expires_at_ms: view.expires_at_ms,
            },
            None => LoggedOp::Delete {
                tenant: &name,
                slot: key.slot,
                key: &key.key,
            },
        };
        self.append(op, Some(key.slot));
    }
}

impl ShardRequest {
    /// The first slot this request names that `owned` rejects (a batch's
    /// requests are checked one by one when executed).
    pub fn foreign_slot(&self, owned: impl Fn(Slot) -> bool) -> Option<Slot> {
        let foreign = |slot: Slot| (!owned(slot)).then_some(slot);
        match self {
            ShardRequest::Get { key, .. }
            | ShardRequest::Set { key, .. }
            | ShardRequest::Update { key, .. } => foreign(key.slot),
            ShardRequest::GetMany { keys, .. }
            | ShardRequest::Delete { keys, .. }
            | ShardRequest::Exists { keys, .. } => keys.iter().find_map(|key| foreign(key.slot)),
            ShardRequest::SetMany { entries, .. }
            | ShardRequest::SetManyIfAbsent { entries, .. } => {
                entries.iter().find_map(|(key, _)| foreign(key.slot))
            }
            ShardRequest::Move { from, to, .. } => foreign(from.slot).or_else(|| foreign(to.slot)),
            ShardRequest::Scan { start_slot, .. } => {
                let slot = Slot::try_from(*start_slot).unwrap_or(Slot::MAX);
                if usize::from(slot) >= SLOT_COUNT {
                    return Some(slot);
                }
                foreign(slot)
            }
            ShardRequest::Stale(request) => request.foreign_slot(owned),
            ShardRequest::Usage { .. }
            | ShardRequest::Flush { .. }
            | ShardRequest::Batch(_)
            | ShardRequest::Snapshot
            | ShardRequest::SetQuota { .. } => None,
        }
    }

    /// The one key a single-key request reads or writes: (keyspace, slot,
    /// key). What a batch warms before it runs (`Store::warm`).
    pub fn single_key(&self) -> Option<(TenantId, Slot, &[u8])> {
        match self {
            ShardRequest::Get { tenant, key }
            | ShardRequest::Set { tenant, key, .. }
            | ShardRequest::Update { tenant, key, .. } => Some((*tenant, key.slot, &key.key[..])),
            ShardRequest::Stale(request) => request.single_key(),
            _ => None,
        }
    }

    /// The tenant a write (other than a flush) changes.
    fn written_tenant(&self) -> Option<TenantId> {
        match self {
            ShardRequest::Set { tenant, .. }
            | ShardRequest::SetMany { tenant, .. }
            | ShardRequest::Delete { tenant, .. }
            | ShardRequest::Update { tenant, .. }
            | ShardRequest::SetManyIfAbsent { tenant, .. }
            | ShardRequest::Move { tenant, .. } => Some(*tenant),
            _ => None,
        }
    }

    /// Does this request only read the store?
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            ShardRequest::Get { .. }
                | ShardRequest::GetMany { .. }
                | ShardRequest::Exists { .. }
                | ShardRequest::Scan { .. }
                | ShardRequest::Usage { .. }
        )
    }

    /// Does this request change the store?
    pub fn is_write(&self) -> bool {
        self.written_tenant().is_some() || matches!(self, ShardRequest::Flush { .. })
    }
}

/// Most payload bytes of one record of grouped ops (a multi-key write):
/// room for a WAL batch's and a record's headers below `MAX_BATCH_BYTES`.
pub const MAX_GROUP_RECORD_BYTES: usize = tinkerdb_storage::wal_format::MAX_BATCH_BYTES - 4096;

/// How many slots a snapshot step serialises before yielding the core.
pub const SNAPSHOT_SLOTS_PER_STEP: usize = 64;

impl Shard {
    /// The shard of `range` over a (recovered) store.
    pub fn new(range: RangeId, slot_map: Arc<SlotMap>, store: Store, journal: Journal) -> Shard {
        Shard {
            range,
            slot_map,
            store,
            journal,
        }
    }

    /// The key-value store (read-only).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The store, for the background expiry task.
    pub fn store_mut(&mut self) -> &mut Store {
        &mut self.store
    }

    /// The WAL index the last executed request's acknowledgement must wait
    /// for (sync durability), if it wrote anything. Take it right after
    /// `execute`.
    pub fn take_ack_point(&mut self) -> Option<u64> {
        self.journal.ack_point.take()
    }

    /// Starts a snapshot at the WAL's current end; returns its cut index.
    pub fn begin_snapshot(&mut self, created_ms: u64) -> Result<u64, String> {
        let Some(wal) = &self.journal.wal else {
            return Err("durability is none: there is nothing to snapshot to".into());
        };
        if let Some(snapshot) = &self.journal.snapshot {
            return Ok(snapshot.cut_index);
        }
        let cut = SnapshotCut::new(
            wal.last_index(),
            self.store.last_version(),
            self.slot_map.slot_range(self.range),
            created_ms,
        );
        let cut_index = cut.cut_index;
        self.journal.snapshot = Some(cut);
        Ok(cut_index)
    }

    /// Starts a snapshot of this shard as it is now, labelled `cut_index`
    /// (cluster mode: the Raft index of the last applied entry; there is no
    /// shard WAL). Refused while another snapshot is in progress.
    pub fn begin_snapshot_at(&mut self, cut_index: u64, created_ms: u64) -> Result<(), String> {
        if self.journal.snapshot.is_some() {
            return Err("a snapshot of this shard is already in progress".into());
        }
        self.journal.snapshot = Some(SnapshotCut::new(
            cut_index,
            self.store.last_version(),
            self.slot_map.slot_range(self.range),
            created_ms,
        ));
        Ok(())
    }

    /// Copies every slot the snapshot in progress has not reached yet, as
    /// they are now: call before replacing the whole store, so that the
    /// snapshot still describes the state at its cut.
    pub fn snapshot_cover_all(&mut self) {
        let journal = &mut self.journal;
        if let Some(mut snapshot) = journal.snapshot.take() {
            snapshot.before_write_everywhere(&self.store, &journal.tenant_name());
            journal.snapshot = Some(snapshot);
        }
    }

    /// Serialises the next slots of the snapshot in progress; returns the
    /// bytes ready to write and whether every slot is done.
    pub fn snapshot_step(&mut self) -> (Vec<u8>, bool) {
        let journal = &mut self.journal;
        let mut snapshot = journal.snapshot.take().expect("a snapshot in progress");
        let done = snapshot.advance(&self.store, SNAPSHOT_SLOTS_PER_STEP, &journal.tenant_name());
        let bytes = snapshot.take_ready_bytes();
        journal.snapshot = Some(snapshot);
        (bytes, done)
    }

    /// Drops the snapshot in progress (its file failed).
    pub fn abort_snapshot(&mut self) {
        self.journal.snapshot = None;
    }

    /// Ends the snapshot in progress: its last bytes and entry count.
    pub fn finish_snapshot(&mut self) -> (Vec<u8>, u64) {
        self.journal
            .snapshot
            .take()
            .expect("a snapshot in progress")
            .finish()
    }

    /// Executes one request. Never yields: a request is atomic on its shard.
    /// Every applied write is logged before this returns; the caller must
    /// not acknowledge it before [`Shard::take_ack_point`]'s index is durable.
    pub fn execute(&mut self, request: ShardRequest, now_ms: u64) -> ShardReply {
        // A key of another shard gets a typed answer naming its owner,
        // before anything is read or changed.
        if let Some(slot) = request.foreign_slot(|slot| self.slot_map.owner(slot) == self.range) {
            if usize::from(slot) >= SLOT_COUNT {
                return ShardReply::Error(ProtocolError::new(
                    tinkerdb_schemas::wire::ErrorCode::InvalidArgument,
                    format!("slot {slot} is out of range 0..{SLOT_COUNT}"),
                ));
            }
            let owner = self.slot_map.owner(slot);
            return ShardReply::Error(ProtocolError::wrong_shard(
                slot,
                owner,
                self.slot_map.core_of(owner),
                self.slot_map.epoch(owner),
            ));
        }
        if request.is_write() {
            if let Some(reason) = self.journal.refusal() {
                return ShardReply::Refused(reason);
            }
            // A write that passed its front end's check before its tenant
            // was deleted lands here after the tenant's flush, in order on
            // this core: refused, never written under the tombstone.
            if let Some(tenant) = request.written_tenant() {
                if !self.journal.tenants.is_live(tenant) {
                    return ShardReply::Error(ProtocolError::new(
                        tinkerdb_schemas::wire::ErrorCode::UnknownTenant,
                        format!(
                            "tenant {} was deleted",
                            self.journal.tenants.name_of(tenant)
                        ),
                    ));
                }
            }
        }
        let Shard {
            range,
            slot_map,
            store,
            journal,
        } = self;
        match request {
            ShardRequest::Get { tenant, key } => {
                journal.observe(key.slot);
                ShardReply::Value(read(store, tenant, &key, now_ms))
            }
            ShardRequest::Set {
                tenant,
                key,
                value,
                options,
            } => {
                // A refused condition (NX, XX, version) shows the slot's state.
                journal.observe(key.slot);
                journal.before_write(store, key.slot);
                let result = store.set(tenant, key.slot, &key.key, &value, options, now_ms);
                if matches!(result, Ok(outcome) if outcome.applied) {
                    journal.log_state(store, tenant, &key);
                }
                ShardReply::Written(result)
            }
            ShardRequest::GetMany {
                tenant,
                keys,
                max_bytes,
            } => {
                let mut values = Vec::with_capacity(keys.len());
                let mut bytes = 0;
                for key in &keys {
                    journal.observe(key.slot);
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
                let mut refused = None;
                journal.begin_group();
                for (key, value) in &entries {
                    journal.before_write(store, key.slot);
                    match store.set(
                        tenant,
                        key.slot,
                        &key.key,
                        value,
                        SetOptions::default(),
                        now_ms,
                    ) {
                        Ok(outcome) => {
                            journal.log_state(store, tenant, key);
                            versions.push(outcome.version);
                        }
                        Err(error) => {
                            refused = Some(error);
                            break;
                        }
                    }
                }
                journal.end_group();
                ShardReply::WrittenMany(versions, refused)
            }
            ShardRequest::Delete { tenant, keys } => {
                let mut deleted = 0;
                journal.begin_group();
                for key in &keys {
                    // A key not found shows the slot's state.
                    journal.observe(key.slot);
                    journal.before_write(store, key.slot);
                    if store.delete(tenant, key.slot, &key.key, now_ms) {
                        journal.log_state(store, tenant, key);
                        deleted += 1;
                    }
                }
                journal.end_group();
                ShardReply::Count(deleted)
            }
            ShardRequest::Exists { tenant, keys } => {
                keys.iter().for_each(|key| journal.observe(key.slot));
                ShardReply::Count(
                    keys.iter()
                        .filter(|key| store.exists(tenant, key.slot, &key.key, now_ms))
                        .count() as u64,
                )
            }
            ShardRequest::Scan {
                tenant,
                start_slot,
                filter,
                max_keys,
            } => {
                let reply = scan_step(
                    store, slot_map, *range, tenant, start_slot, &filter, max_keys, now_ms,
                );
                if let ShardReply::Scanned { next_slot, .. } = &reply {
                    (start_slot..*next_slot).for_each(|slot| journal.observe(slot as Slot));
                }
                reply
            }
            ShardRequest::Usage { tenant } => {
                journal.observe_all();
                ShardReply::Usage(store.tenant_usage(tenant))
            }
            ShardRequest::Update {
                tenant,
                key,
                update,
            } => {
                // A refused update (not an integer) shows the slot's state.
                journal.observe(key.slot);
                journal.before_write(store, key.slot);
                let result = apply_update(store, tenant, &key, update, now_ms);
                if result.is_ok() {
                    journal.log_state(store, tenant, &key);
                }
                ShardReply::Updated(result)
            }
            ShardRequest::SetManyIfAbsent { tenant, entries } => {
                entries.iter().for_each(|(key, _)| {
                    journal.observe(key.slot);
                });
                if entries
                    .iter()
                    .any(|(key, _)| store.exists(tenant, key.slot, &key.key, now_ms))
                {
                    return ShardReply::Count(0);
                }
                // None exists: write them all, a repeated key's last value
                // winning (as Redis's MSETNX).
                let options = SetOptions::default();
                for (done, (key, value)) in entries.iter().enumerate() {
                    journal.before_write(store, key.slot);
                    if let Err(error) =
                        store.set(tenant, key.slot, &key.key, value, options, now_ms)
                    {
                        // All or nothing: the keys written so far were
                        // absent, and nothing is logged yet.
                        for (written, _) in &entries[..done] {
                            store.delete(tenant, written.slot, &written.key, now_ms);
                        }
                        return ShardReply::Written(Err(error));
                    }
                }
                journal.begin_group();
                for (key, _) in &entries {
                    journal.log_state(store, tenant, key);
                }
                journal.end_group();
                ShardReply::Count(1)
            }
            ShardRequest::Move {
                tenant,
                from,
                to,
                how,
            } => {
                journal.observe(from.slot);
                journal.observe(to.slot);
                journal.before_write(store, from.slot);
                journal.before_write(store, to.slot);
                let result = apply_move(store, tenant, &from, &to, how, now_ms);
                if matches!(result, Ok(UpdateOutcome::Existed(true))) {
                    // One record for both keys: a crash keeps the rename
                    // whole or not at all.
                    journal.begin_group();
                    journal.log_state(store, tenant, &to);
                    journal.log_state(store, tenant, &from);
                    journal.end_group();
                }
                ShardReply::Updated(result)
            }
            ShardRequest::Flush { tenant } => {
                if let Some(mut snapshot) = journal.snapshot.take() {
                    snapshot.before_write_everywhere(store, &journal.tenant_name());
                    journal.snapshot = Some(snapshot);
                }
                let removed = store.flush_tenant(tenant);
                let name = journal.tenants.name_of(tenant);
                journal.append(LoggedOp::Flush { tenant: &name }, None);
                ShardReply::Count(removed)
            }
            ShardRequest::Stale(read) => self.execute(*read, now_ms),
            ShardRequest::Batch(requests) => {
                if requests.len() > 1 {
                    store.warm(requests.iter().filter_map(ShardRequest::single_key));
                }
                ShardReply::Batch(
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
                )
            }
            ShardRequest::SetQuota { tenant, quota } => {
                store.set_quota(tenant, quota);
                ShardReply::Done
            }
            ShardRequest::Snapshot => unreachable!("snapshots are run by the core's context"),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_step(
    store: &Store,
    slot_map: &SlotMap,
    range: RangeId,
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
    while slot < slot_limit && slot_map.owner(slot as Slot) == range {
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
        Update::Expire { at_ms, condition } => {
            let Some(current) = current else {
                return Ok(UpdateOutcome::Existed(false));
            };
            // No expiry counts as infinitely late (GT and LT as Redis 7).
            let old = current.expires_at_ms.unwrap_or(u64::MAX);
            let new = at_ms.unwrap_or(u64::MAX);
            let holds = match condition {
                ExpireCondition::Always => true,
                ExpireCondition::IfNone => current.expires_at_ms.is_none(),
                ExpireCondition::IfSome => current.expires_at_ms.is_some(),
                ExpireCondition::IfLater => new > old,
                ExpireCondition::IfEarlier => new < old,
                ExpireCondition::IfSomeAndEarlier => current.expires_at_ms.is_some() && new < old,
            };
            // PERSIST answers whether it removed a TTL, as Redis does (0 for
            // a key that has none); EXPIRE whether it set one.
            if !holds || (at_ms.is_none() && current.expires_at_ms.is_none()) {
                return Ok(UpdateOutcome::Existed(false));
            }
            let live = store.set_expiry(tenant, key.slot, &key.key, at_ms, now_ms);
            Ok(UpdateOutcome::Existed(live))
        }
        Update::GetAndExpire(at_ms) => {
            if current.is_some() {
                store.set_expiry(tenant, key.slot, &key.key, at_ms, now_ms);
            }
            Ok(UpdateOutcome::Previous(
                current.map(|read| read.value),
                true,
            ))
        }
        Update::SetRange { offset, bytes } => {
            let mut value = current.map(|read| read.value.to_vec()).unwrap_or_default();
            // Redis: an empty range changes nothing (and creates no key).
            if bytes.is_empty() {
                return Ok(UpdateOutcome::Length(value.len() as u64));
            }
            let offset = usize::try_from(offset).expect("bounded by the caller");
            let end = offset + bytes.len();
            if value.len() < end {
                value.resize(end, 0);
            }
            value[offset..end].copy_from_slice(&bytes);
            store
                .set(tenant, key.slot, &key.key, &value, keep_ttl, now_ms)
                .map_err(UpdateError::Quota)?;
            Ok(UpdateOutcome::Length(value.len() as u64))
        }
        Update::IncrByFloat(delta) => {
            let number = match &current {
                None => 0.0,
                Some(read) => std::str::from_utf8(&read.value)
                    .ok()
                    .and_then(|text| text.trim().parse::<f64>().ok())
                    .filter(|number| number.is_finite())
                    .ok_or(UpdateError::NotAFloat)?,
            };
            let number = number + delta;
            if !number.is_finite() {
                return Err(UpdateError::NotFinite);
            }
            // The shortest text that reads back as the same f64, without an
            // exponent (Redis prints 17 significant digits, trimmed).
            let text = Bytes::from(format!("{number}"));
            store
                .set(tenant, key.slot, &key.key, &text, keep_ttl, now_ms)
                .map_err(UpdateError::Quota)?;
            Ok(UpdateOutcome::Value(text))
        }
    }
}

/// RENAME, RENAMENX and COPY on one shard (see [`MoveKind`]); synchronous,
/// so atomic. Answers whether it moved or copied.
fn apply_move(
    store: &mut Store,
    tenant: TenantId,
    from: &SlotKey,
    to: &SlotKey,
    how: MoveKind,
    now_ms: u64,
) -> Result<UpdateOutcome, UpdateError> {
    let Some(source) = read(store, tenant, from, now_ms) else {
        return match how {
            MoveKind::Copy { .. } => Ok(UpdateOutcome::Existed(false)),
            MoveKind::Rename | MoveKind::RenameIfAbsent => Err(UpdateError::NoSuchKey),
        };
    };
    if from.key == to.key {
        return match how {
            // Redis: RENAME of a key onto itself is OK, RENAMENX answers 0.
            MoveKind::Rename => Ok(UpdateOutcome::Existed(true)),
            MoveKind::RenameIfAbsent => Ok(UpdateOutcome::Existed(false)),
            MoveKind::Copy { .. } => Err(UpdateError::SameObject),
        };
    }
    let overwrite = matches!(how, MoveKind::Rename | MoveKind::Copy { replace: true });
    if !overwrite && store.exists(tenant, to.slot, &to.key, now_ms) {
        return Ok(UpdateOutcome::Existed(false));
    }
    let options = SetOptions {
        condition: tinkerdb_storage::WriteCondition::Always,
        expiry: source.expires_at_ms.map_or(
            tinkerdb_storage::Expiry::Never,
            tinkerdb_storage::Expiry::AtMs,
        ),
    };
    let renaming = !matches!(how, MoveKind::Copy { .. });
    if renaming {
        // Free the source first: a rename never adds a key, so it must not
        // hit the key quota on the way.
        store.delete(tenant, from.slot, &from.key, now_ms);
    }
    if let Err(error) = store.set(tenant, to.slot, &to.key, &source.value, options, now_ms) {
        if renaming {
            // Put the source back exactly as it was (version included),
            // past the quota: a tenant already over a lowered quota must
            // not lose the key, nor fail here.
            store.restore(
                tenant,
                from.slot,
                &from.key,
                &source.value,
                source.version,
                source.expires_at_ms,
            );
        }
        return Err(UpdateError::Quota(error));
    }
    Ok(UpdateOutcome::Existed(true))
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

#[cfg(test)]
mod tests {
    //! The apply step of read-modify-writes: synchronous, time passed in,
    //! so each case is judged at an exact instant, as a replica judges an
    //! entry at its proposer's instant.

    use super::*;
    use tinkerdb_storage::{hash_slot, Expiry, WriteCondition};

    const TENANT: TenantId = 0;

    fn key(text: &str) -> SlotKey {
        let key = Bytes::copy_from_slice(text.as_bytes());
        SlotKey {
            slot: hash_slot("default", &key),
            key,
        }
    }

    fn put(store: &mut Store, name: &str, value: &str, expires_at_ms: Option<u64>, now: u64) {
        let options = SetOptions {
            condition: WriteCondition::Always,
            expiry: expires_at_ms.map_or(Expiry::Never, Expiry::AtMs),
        };
        let key = key(name);
        store
            .set(TENANT, key.slot, &key.key, value.as_bytes(), options, now)
            .unwrap();
    }

    fn apply(store: &mut Store, name: &str, update: Update, now: u64) -> String {
        match apply_update(store, TENANT, &key(name), update, now) {
            Ok(UpdateOutcome::Integer(n)) => format!("int {n}"),
            Ok(UpdateOutcome::Length(n)) => format!("len {n}"),
            Ok(UpdateOutcome::Existed(done)) => format!("{done}"),
            Ok(UpdateOutcome::Value(value)) => format!("value {}", String::from_utf8_lossy(&value)),
            Ok(UpdateOutcome::Previous(value, _)) => format!(
                "previous {}",
                value.map_or("nil".into(), |v| String::from_utf8_lossy(&v).into_owned())
            ),
            Err(error) => format!("{error:?}"),
        }
    }

    fn expire(at_ms: Option<u64>, condition: ExpireCondition) -> Update {
        Update::Expire { at_ms, condition }
    }

    fn ttl(store: &Store, name: &str, now: u64) -> Option<Option<u64>> {
        read(store, TENANT, &key(name), now).map(|read| read.expires_at_ms)
    }

    #[test]
    fn expire_conditions_follow_redis_7() {
        use ExpireCondition::*;
        let mut store = Store::new();
        let now = 1_000;
        put(&mut store, "plain", "v", None, now);
        // No expiry counts as an infinite one.
        assert_eq!(
            apply(&mut store, "plain", expire(Some(5_000), IfSome), now),
            "false"
        );
        assert_eq!(
            apply(&mut store, "plain", expire(Some(5_000), IfLater), now),
            "false"
        );
        let xx_lt = expire(Some(5_000), IfSomeAndEarlier);
        assert_eq!(apply(&mut store, "plain", xx_lt, now), "false");
        assert_eq!(ttl(&store, "plain", now), Some(None));
        assert_eq!(
            apply(&mut store, "plain", expire(Some(5_000), IfEarlier), now),
            "true"
        );
        assert_eq!(ttl(&store, "plain", now), Some(Some(5_000)));
        assert_eq!(
            apply(&mut store, "plain", expire(Some(9_000), IfNone), now),
            "false"
        );
        assert_eq!(
            apply(&mut store, "plain", expire(Some(4_000), IfLater), now),
            "false"
        );
        assert_eq!(
            apply(&mut store, "plain", expire(Some(9_000), IfLater), now),
            "true"
        );
        assert_eq!(
            apply(
                &mut store,
                "plain",
                expire(Some(8_000), IfSomeAndEarlier),
                now
            ),
            "true"
        );
        assert_eq!(ttl(&store, "plain", now), Some(Some(8_000)));
        // PERSIST: 1 only when it removed an expiry.
        assert_eq!(
            apply(&mut store, "plain", expire(None, Always), now),
            "true"
        );
        assert_eq!(
            apply(&mut store, "plain", expire(None, Always), now),
            "false"
        );
        assert_eq!(
            apply(&mut store, "missing", expire(Some(9_000), Always), now),
            "false"
        );
        // A time at or before now deletes the key.
        assert_eq!(
            apply(&mut store, "plain", expire(Some(now), Always), now),
            "true"
        );
        assert_eq!(ttl(&store, "plain", now), None);
    }

    #[test]
    fn updates_are_judged_at_the_instant_given() {
        let mut store = Store::new();
        put(&mut store, "n", "41", Some(2_000), 1_000);
        // Just before the expiry the value counts (and the TTL is kept).
        assert_eq!(apply(&mut store, "n", Update::IncrBy(1), 1_999), "int 42");
        assert_eq!(ttl(&store, "n", 1_999), Some(Some(2_000)));
        // At the expiry the key is gone: INCR starts from 0, GETEX sees nil.
        assert_eq!(
            apply(&mut store, "n", Update::GetAndExpire(None), 2_000),
            "previous nil"
        );
        assert_eq!(apply(&mut store, "n", Update::IncrBy(1), 2_000), "int 1");
        assert_eq!(ttl(&store, "n", 2_000), Some(None));
        let getex = Update::GetAndExpire(Some(3_000));
        assert_eq!(apply(&mut store, "n", getex, 2_000), "previous 1");
        assert_eq!(ttl(&store, "n", 2_000), Some(Some(3_000)));
    }

    #[test]
    fn incr_by_float_and_set_range_as_redis() {
        let mut store = Store::new();
        let now = 1_000;
        assert_eq!(
            apply(&mut store, "f", Update::IncrByFloat(10.5), now),
            "value 10.5"
        );
        assert_eq!(
            apply(&mut store, "f", Update::IncrByFloat(0.1), now),
            "value 10.6"
        );
        assert_eq!(
            apply(&mut store, "f", Update::IncrByFloat(-5.6), now),
            "value 5"
        );
        // The largest finite double prints in full (309 digits, no exponent).
        let huge = apply(&mut store, "f", Update::IncrByFloat(f64::MAX), now);
        assert!(huge.starts_with("value 17976931348623157") && huge.len() == 6 + 309);
        assert_eq!(
            apply(&mut store, "f", Update::IncrByFloat(f64::MAX), now),
            "NotFinite"
        );
        put(&mut store, "text", "abc", None, now);
        assert_eq!(
            apply(&mut store, "text", Update::IncrByFloat(1.0), now),
            "NotAFloat"
        );
        let range = |offset, bytes: &'static [u8]| Update::SetRange {
            offset,
            bytes: Bytes::from_static(bytes),
        };
        assert_eq!(apply(&mut store, "r", range(3, b"xy"), now), "len 5");
        let value = read(&store, TENANT, &key("r"), now).unwrap().value;
        assert_eq!(&value[..], b"\0\0\0xy");
        assert_eq!(apply(&mut store, "r", range(0, b"ab"), now), "len 5");
        assert_eq!(apply(&mut store, "empty", range(9, b""), now), "len 0");
        assert!(read(&store, TENANT, &key("empty"), now).is_none());
    }

    /// A shard of core 0 of a 2-core node, without a WAL.
    fn shard_of_core_0() -> Shard {
        let registry = Arc::new(crate::tenants::TenantRegistry::new([(
            "default",
            Quota {
                max_keys: Some(3),
                max_bytes: None,
            },
        )]));
        let tenants = Rc::new(CoreTenants::new(registry));
        let slot_map = Arc::new(SlotMap::contiguous(2));
        let mut shard = Shard::new(0, slot_map, Store::new(), Journal::new(None, tenants));
        shard.store_mut().set_quota(
            TENANT,
            Quota {
                max_keys: Some(3),
                max_bytes: None,
            },
        );
        shard
    }

    /// `count` keys of range `core`'s slots under a 2-core map (one range
    /// per core), `prefix` + n.
    fn keys_of(core: RangeId, prefix: &str, count: usize) -> Vec<SlotKey> {
        let map = SlotMap::contiguous(2);
        (0..)
            .map(|n| key(&format!("{prefix}{n}")))
            .filter(|key| map.owner(key.slot) == core)
            .take(count)
            .collect()
    }

    #[test]
    fn a_key_of_another_core_gets_wrong_shard_naming_the_owner_and_changes_nothing() {
        let mut shard = shard_of_core_0();
        let mine = keys_of(0, "m", 1).remove(0);
        let theirs = keys_of(1, "t", 1).remove(0);
        let now = 1_000;
        let write = ShardRequest::SetMany {
            tenant: TENANT,
            entries: vec![
                (mine.clone(), Bytes::from_static(b"1")),
                (theirs.clone(), Bytes::from_static(b"2")),
            ],
        };
        match shard.execute(write, now) {
            ShardReply::Error(error) => {
                assert_eq!(error.code, tinkerdb_schemas::wire::ErrorCode::WrongShard);
                let owner = error.owner.expect("names the owner");
                assert_eq!((owner.slot, owner.core), (theirs.slot, 1));
            }
            other => panic!("{other:?}"),
        }
        // Refused whole: the key of this core was not written either.
        assert!(read(shard.store(), TENANT, &mine, now).is_none());
        let scan = ShardRequest::Scan {
            tenant: TENANT,
            start_slot: SLOT_COUNT as u32 - 1,
            filter: Arc::new(KeyFilter::default()),
            max_keys: 10,
        };
        assert!(matches!(shard.execute(scan, now), ShardReply::Error(_)));
    }

    #[test]
    fn set_many_if_absent_is_all_or_nothing_quota_included() {
        let mut shard = shard_of_core_0();
        let keys = keys_of(0, "k", 4);
        let now = 1_000;
        let entries = |keys: &[SlotKey]| {
            keys.iter()
                .map(|key| (key.clone(), Bytes::from_static(b"v")))
                .collect::<Vec<_>>()
        };
        let msetnx = |keys: &[SlotKey]| ShardRequest::SetManyIfAbsent {
            tenant: TENANT,
            entries: entries(keys),
        };
        assert!(matches!(
            shard.execute(msetnx(&keys[..2]), now),
            ShardReply::Count(1)
        ));
        // One key exists: nothing is written.
        assert!(matches!(
            shard.execute(msetnx(&keys[1..3]), now),
            ShardReply::Count(0)
        ));
        assert!(read(shard.store(), TENANT, &keys[2], now).is_none());
        // Two more keys pass the 3-key quota: refused, and the first of them
        // (which fitted) is taken back.
        assert!(matches!(
            shard.execute(msetnx(&keys[2..4]), now),
            ShardReply::Written(Err(_))
        ));
        assert!(read(shard.store(), TENANT, &keys[2], now).is_none());
        assert_eq!(shard.store().tenant_usage(TENANT).keys, 2);
    }

    #[test]
    fn rename_and_copy_follow_redis_and_keep_the_expiry() {
        let mut store = Store::new();
        let now = 1_000;
        let mv = |store: &mut Store, from: &str, to: &str, how: MoveKind| match apply_move(
            store,
            TENANT,
            &key(from),
            &key(to),
            how,
            now,
        ) {
            Ok(UpdateOutcome::Existed(done)) => format!("{done}"),
            other => format!("{other:?}"),
        };
        put(&mut store, "a", "1", Some(9_000), now);
        put(&mut store, "b", "2", None, now);
        assert_eq!(mv(&mut store, "a", "b", MoveKind::RenameIfAbsent), "false");
        assert_eq!(mv(&mut store, "a", "c", MoveKind::Rename), "true");
        assert_eq!(ttl(&store, "c", now), Some(Some(9_000)));
        assert_eq!(ttl(&store, "a", now), None);
        assert_eq!(mv(&mut store, "a", "c", MoveKind::Rename), "Err(NoSuchKey)");
        assert_eq!(
            mv(&mut store, "a", "c", MoveKind::RenameIfAbsent),
            "Err(NoSuchKey)"
        );
        assert_eq!(mv(&mut store, "c", "c", MoveKind::Rename), "true");
        assert_eq!(mv(&mut store, "c", "c", MoveKind::RenameIfAbsent), "false");
        let copy = |replace| MoveKind::Copy { replace };
        assert_eq!(mv(&mut store, "c", "c", copy(false)), "Err(SameObject)");
        assert_eq!(mv(&mut store, "a", "z", copy(false)), "false");
        assert_eq!(mv(&mut store, "c", "b", copy(false)), "false");
        assert_eq!(mv(&mut store, "c", "b", copy(true)), "true");
        assert_eq!(ttl(&store, "b", now), Some(Some(9_000)));
        assert_eq!(ttl(&store, "c", now), Some(Some(9_000)));
        // An expired source is no source.
        assert_eq!(mv(&mut store, "c", "d", MoveKind::Rename), "true");
        assert_eq!(
            match apply_move(
                &mut store,
                TENANT,
                &key("d"),
                &key("e"),
                MoveKind::Rename,
                9_000
            ) {
                Ok(_) => "moved".to_string(),
                Err(error) => format!("{error:?}"),
            },
            "NoSuchKey"
        );
    }

    #[test]
    fn a_rename_over_a_lowered_quota_is_refused_and_keeps_the_source_as_it_was() {
        let mut store = Store::new();
        let now = 1_000;
        put(&mut store, "a", "1", Some(9_000), now);
        put(&mut store, "b", "2", None, now);
        let before = read(&store, TENANT, &key("a"), now).unwrap();
        // Lowered below what the tenant holds: the keys stay, new ones fail.
        store.set_quota(
            TENANT,
            Quota {
                max_keys: Some(1),
                max_bytes: None,
            },
        );
        let result = apply_move(
            &mut store,
            TENANT,
            &key("a"),
            &key("c"),
            MoveKind::Rename,
            now,
        );
        assert!(matches!(result, Err(UpdateError::Quota(_))), "{result:?}");
        let after = read(&store, TENANT, &key("a"), now).expect("the source is back");
        assert_eq!(
            (after.value, after.version, after.expires_at_ms),
            (before.value, before.version, before.expires_at_ms)
        );
        assert!(read(&store, TENANT, &key("c"), now).is_none());
        assert_eq!(store.owner_usage(TENANT).keys, 2);
    }

    #[test]
    fn set_many_if_absent_with_a_repeated_key_keeps_its_last_value_as_redis() {
        let mut shard = shard_of_core_0();
        let k = keys_of(0, "r", 1).remove(0);
        let request = ShardRequest::SetManyIfAbsent {
            tenant: TENANT,
            entries: vec![
                (k.clone(), Bytes::from_static(b"1")),
                (k.clone(), Bytes::from_static(b"2")),
            ],
        };
        assert!(matches!(
            shard.execute(request, 1_000),
            ShardReply::Count(1)
        ));
        assert_eq!(
            &read(shard.store(), TENANT, &k, 1_000).unwrap().value[..],
            b"2"
        );
    }
}
