//! The per-core map: every key of every tenant whose slot this core owns.
//!
//! # Shape
//! Keys live in one small hash table per (tenant, slot), found through an
//! outer map. That costs one extra probe per operation and buys three things:
//! a cursor scan that walks one slot at a time (so it never stalls the core
//! and never misses a key that exists throughout the scan, however the
//! tables grow), scans of one tenant that never touch another tenant's keys,
//! and, later, moving a slot to another shard by handing over its tables.
//!
//! Each entry is one heap allocation holding a 12-byte header (20 with an
//! expiry), the key and the value, plus 16 bytes in the table (see
//! `docs/ARCHITECTURE.md`, "Memory per key").
//!
//! # Expiry
//! An entry whose `expires_at_ms` has passed is invisible at once to every
//! read (lazy expiry), is replaced by the next write to its key, and is
//! removed for good by [`Store::expire_due`], which a background task calls
//! with a bounded budget (active expiry). Until then it still counts in its
//! tenant's usage, as in Redis's DBSIZE.
//!
//! # Quotas
//! A tenant's [`Quota`] here is this store's share of the tenant's node-wide
//! quota (the node divides it among cores). A write that would take usage
//! over the share fails with [`StoreError`] and changes nothing.
//!
//! # Databases
//! A [`TenantId`] names a keyspace: the tenant in its low 24 bits and a
//! database number (Redis's SELECT) in its high 8 bits ([`keyspace`]). A
//! tenant's own id is its database 0. Keys, scans, counts and flushes are
//! per keyspace; the quota belongs to the tenant and covers all its
//! databases ([`quota_owner`]).

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::marker::PhantomData;

use hashbrown::hash_table::Entry as TableEntry;
use hashbrown::{HashMap, HashTable};

use crate::slot::Slot;

/// A tenant's id local to one node (the node maps names to ids); with a
/// database number in its high bits, one of the tenant's keyspaces (see the
/// module docs, "Databases").
pub type TenantId = u32;

/// Where a keyspace's database number starts in a [`TenantId`].
pub const DATABASE_SHIFT: u32 = 24;

/// Most tenants a node can name (ids below this; the bits above hold the
/// database number).
pub const MAX_TENANTS: u32 = 1 << DATABASE_SHIFT;

/// The keyspace of `tenant`'s database `database` (0: the tenant itself).
pub fn keyspace(tenant: TenantId, database: u8) -> TenantId {
    assert!(tenant < MAX_TENANTS, "tenant id {tenant} has database bits");
    tenant | (u32::from(database) << DATABASE_SHIFT)
}

/// The tenant a keyspace belongs to: whose quota it counts against.
pub fn quota_owner(keyspace: TenantId) -> TenantId {
    keyspace & (MAX_TENANTS - 1)
}

/// The database number of a keyspace.
pub fn database_of(keyspace: TenantId) -> u8 {
    (keyspace >> DATABASE_SHIFT) as u8
}

/// Limits on one tenant's usage of one store. `None` means unlimited.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// Most keys the tenant may hold here.
    pub max_keys: Option<u64>,
    /// Most key + value bytes the tenant may hold here.
    pub max_bytes: Option<u64>,
}

/// What a tenant uses of one store, and its quota there.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TenantUsage {
    /// Keys held, including expired keys not yet removed.
    pub keys: u64,
    /// Sum of key and value lengths of those keys.
    pub bytes: u64,
    /// The quota this store enforces for the tenant.
    pub quota: Quota,
}

/// The condition a write must meet to be applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteCondition {
    /// Always write.
    Always,
    /// Write only if the key does not exist (Redis NX).
    IfAbsent,
    /// Write only if the key exists (Redis XX).
    IfPresent,
    /// Write only if the key's version is this one; 0 means "does not exist"
    /// (compare-and-set).
    IfVersion(u64),
}

/// What happens to a key's expiry on write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// The key never expires (any earlier expiry is cleared).
    Never,
    /// The key expires at this Unix time in milliseconds.
    AtMs(u64),
    /// Keep the expiry the key has (Redis KEEPTTL); `Never` for a new key.
    Keep,
}

/// Options of [`Store::set`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SetOptions {
    /// When the write applies.
    pub condition: WriteCondition,
    /// The key's expiry after the write.
    pub expiry: Expiry,
}

impl Default for SetOptions {
    fn default() -> Self {
        SetOptions {
            condition: WriteCondition::Always,
            expiry: Expiry::Never,
        }
    }
}

/// Result of a conditional write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOutcome {
    /// False when the condition was not met; nothing was written.
    pub applied: bool,
    /// The new version if applied, else the current one (0: no such key).
    pub version: u64,
}

/// A live entry as seen by a reader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EntryView<'a> {
    /// The value bytes.
    pub value: &'a [u8],
    /// The version the last write gave it.
    pub version: u64,
    /// When it expires (Unix ms), if ever.
    pub expires_at_ms: Option<u64>,
}

/// Why a write was refused. Nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// One more key would exceed the tenant's key quota.
    #[error("tenant {tenant} is at its quota of {max_keys} keys on this core")]
    KeyQuotaExceeded {
        /// The tenant.
        tenant: TenantId,
        /// The quota that would be exceeded.
        max_keys: u64,
    },
    /// The write would exceed the tenant's byte quota.
    #[error("tenant {tenant} would exceed its quota of {max_bytes} bytes on this core")]
    ByteQuotaExceeded {
        /// The tenant.
        tenant: TenantId,
        /// The quota that would be exceeded.
        max_bytes: u64,
    },
}

/// The highest version a store hands out or accepts from a log or
/// snapshot. Far beyond any real count (at a billion writes a second it is
/// 146 years away) and far below `u64::MAX`, so the counter can never wrap:
/// decoders refuse anything above it as corruption (a crafted or damaged
/// file, or a peer's snapshot), and the store asserts it.
pub const MAX_VERSION: u64 = 1 << 62;

/// The version a write takes: `given` (a restored entry's own; the counter
/// rises to it), or the counter's next.
fn next_version(counter: &mut u64, given: Option<u64>) -> u64 {
    match given {
        Some(version) => {
            assert!(
                (1..=MAX_VERSION).contains(&version),
                "version {version} out of range"
            );
            *counter = (*counter).max(version);
            version
        }
        None => {
            *counter += 1;
            assert!(*counter <= MAX_VERSION, "version counter past MAX_VERSION");
            *counter
        }
    }
}

/// One stored key: a small header, the key bytes and the value bytes, all
/// in one allocation, so that a table slot is only the 16-byte pointer and
/// length (see `docs/ARCHITECTURE.md`, "Memory per key").
///
/// The header, little-endian:
/// - `key_len: u32`, its top bit ([`HAS_EXPIRY`]) set when the key has an
///   expiry;
/// - `version: u64`;
/// - `expires_at_ms: u64`, only when the key has an expiry (most keys have
///   none and pay nothing for it).
struct Entry {
    bytes: Box<[u8]>,
}

/// `expires_at_ms()` of a key that never expires.
const NO_EXPIRY: u64 = u64::MAX;

/// The flag in an entry's `key_len` word: an expiry follows the version.
const HAS_EXPIRY: u32 = 1 << 31;

/// Header bytes before the key: `key_len` and `version`, and the expiry
/// when there is one.
const fn header_len(has_expiry: bool) -> usize {
    if has_expiry {
        20
    } else {
        12
    }
}

impl Entry {
    fn new(key: &[u8], value: &[u8], expires_at_ms: u64, version: u64) -> Entry {
        let key_len = u32::try_from(key.len()).expect("key length checked by the caller");
        assert!(key_len < HAS_EXPIRY, "key length checked by the caller");
        let has_expiry = expires_at_ms != NO_EXPIRY;
        let mut bytes = Vec::with_capacity(header_len(has_expiry) + key.len() + value.len());
        let flagged = if has_expiry {
            key_len | HAS_EXPIRY
        } else {
            key_len
        };
        bytes.extend_from_slice(&flagged.to_le_bytes());
        bytes.extend_from_slice(&version.to_le_bytes());
        if has_expiry {
            bytes.extend_from_slice(&expires_at_ms.to_le_bytes());
        }
        bytes.extend_from_slice(key);
        bytes.extend_from_slice(value);
        Entry {
            bytes: bytes.into_boxed_slice(),
        }
    }

    fn key_len_word(&self) -> u32 {
        u32::from_le_bytes(self.bytes[..4].try_into().expect("4 bytes"))
    }

    fn has_expiry(&self) -> bool {
        self.key_len_word() & HAS_EXPIRY != 0
    }

    /// Where the key starts and ends.
    fn key_span(&self) -> (usize, usize) {
        let word = self.key_len_word();
        let start = header_len(word & HAS_EXPIRY != 0);
        (start, start + (word & !HAS_EXPIRY) as usize)
    }

    fn key(&self) -> &[u8] {
        let (start, end) = self.key_span();
        &self.bytes[start..end]
    }

    fn value(&self) -> &[u8] {
        &self.bytes[self.key_span().1..]
    }

    fn version(&self) -> u64 {
        u64::from_le_bytes(self.bytes[4..12].try_into().expect("8 bytes"))
    }

    /// Unix ms; `NO_EXPIRY` when the key never expires.
    fn expires_at_ms(&self) -> u64 {
        if self.has_expiry() {
            u64::from_le_bytes(self.bytes[12..20].try_into().expect("8 bytes"))
        } else {
            NO_EXPIRY
        }
    }

    /// Gives the entry a new value, expiry and version: in place when the
    /// layout is unchanged (same value size, expiry kept or not alike), so
    /// an overwrite of the common kind allocates nothing.
    fn rewrite(&mut self, value: &[u8], expires_at_ms: u64, version: u64) {
        let (key_start, key_end) = self.key_span();
        if self.value().len() == value.len() && self.has_expiry() == (expires_at_ms != NO_EXPIRY) {
            self.bytes[4..12].copy_from_slice(&version.to_le_bytes());
            if self.has_expiry() {
                self.bytes[12..20].copy_from_slice(&expires_at_ms.to_le_bytes());
            }
            self.bytes[key_end..].copy_from_slice(value);
        } else {
            *self = Entry::new(
                &self.bytes[key_start..key_end],
                value,
                expires_at_ms,
                version,
            );
        }
    }

    /// Gives the entry a new expiry (`NO_EXPIRY`: none), keeping its value
    /// and version; in place when it had an expiry and keeps one.
    fn set_expiry(&mut self, expires_at_ms: u64) {
        if self.has_expiry() && expires_at_ms != NO_EXPIRY {
            self.bytes[12..20].copy_from_slice(&expires_at_ms.to_le_bytes());
        } else if self.has_expiry() != (expires_at_ms != NO_EXPIRY) {
            *self = Entry::new(self.key(), self.value(), expires_at_ms, self.version());
        }
    }

    /// Bytes charged to the tenant: key and value (the header is ours).
    fn charged_bytes(&self) -> u64 {
        (self.bytes.len() - self.key_span().0) as u64
    }

    fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms() <= now_ms
    }

    fn view(&self) -> EntryView<'_> {
        let expires_at_ms = self.expires_at_ms();
        EntryView {
            value: self.value(),
            version: self.version(),
            expires_at_ms: (expires_at_ms != NO_EXPIRY).then_some(expires_at_ms),
        }
    }
}

/// A key due to expire, queued for the active expiry sweep. It may be stale
/// (the key was rewritten or deleted since); the sweep checks.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct ExpiryItem {
    expires_at_ms: u64,
    tenant: TenantId,
    slot: Slot,
    key: Box<[u8]>,
}

/// Stale items the expiry queue may hold beyond the live keys with a TTL
/// before it is compacted (bounds its memory).
const EXPIRY_QUEUE_SLACK: usize = 1024;

/// One core's keys. See the module docs.
pub struct Store {
    hasher: ahash::RandomState,
    tables: HashMap<(TenantId, Slot), HashTable<Entry>, ahash::RandomState>,
    /// Keys and bytes per keyspace (their `quota` field is unused).
    tenants: HashMap<TenantId, TenantUsage, ahash::RandomState>,
    /// Keys, bytes and quota per tenant, over all its keyspaces: what
    /// quotas are checked against.
    owners: HashMap<TenantId, TenantUsage, ahash::RandomState>,
    expiry_queue: BinaryHeap<Reverse<ExpiryItem>>,
    /// Entries whose `expires_at_ms` is not `NO_EXPIRY`.
    keys_with_expiry: usize,
    last_version: u64,
    /// A store belongs to one thread: keep it `!Sync` and `!Send`.
    _single_thread: PhantomData<*const Cell<()>>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Store {
        Store {
            hasher: ahash::RandomState::new(),
            tables: HashMap::default(),
            tenants: HashMap::default(),
            owners: HashMap::default(),
            expiry_queue: BinaryHeap::new(),
            keys_with_expiry: 0,
            last_version: 0,
            _single_thread: PhantomData,
        }
    }

    /// Sets the quota this store enforces for `tenant` over all its
    /// databases (its share of the node-wide quota). Existing keys over a
    /// lowered quota stay.
    pub fn set_quota(&mut self, tenant: TenantId, quota: Quota) {
        assert_eq!(quota_owner(tenant), tenant, "quotas belong to tenants");
        self.owners.entry(tenant).or_default().quota = quota;
    }

    /// Keys and bytes of keyspace `keyspace` in this store, and its
    /// tenant's quota.
    pub fn tenant_usage(&self, keyspace: TenantId) -> TenantUsage {
        let usage = self.tenants.get(&keyspace).copied().unwrap_or_default();
        TenantUsage {
            quota: self.owner_usage(quota_owner(keyspace)).quota,
            ..usage
        }
    }

    /// Keys, bytes and quota of `tenant` over all its databases.
    pub fn owner_usage(&self, tenant: TenantId) -> TenantUsage {
        self.owners.get(&tenant).copied().unwrap_or_default()
    }

    /// Keys of all tenants held, including expired ones not yet removed.
    pub fn key_count(&self) -> u64 {
        self.tenants.values().map(|usage| usage.keys).sum()
    }

    /// The last version handed out (0 before the first write).
    pub fn last_version(&self) -> u64 {
        self.last_version
    }

    /// The live entry of `key`, if any.
    pub fn get(
        &self,
        tenant: TenantId,
        slot: Slot,
        key: &[u8],
        now_ms: u64,
    ) -> Option<EntryView<'_>> {
        let hash = self.hasher.hash_one(key);
        let entry = self
            .tables
            .get(&(tenant, slot))?
            .find(hash, |entry| entry.key() == key)?;
        (!entry.is_expired(now_ms)).then(|| entry.view())
    }

    /// Looks `keys` up and does nothing with what it finds, so that the
    /// memory they sit in (the slot's table, the entry's block) is in the
    /// CPU's cache when they are then read or written one by one. A lookup
    /// waits on three or four dependent cache misses; this loop has no
    /// other work between lookups, so the CPU runs several lookups' misses
    /// at once, where executing a request between lookups would leave them
    /// one after another (docs/thread-per-core.md, section 6.3).
    pub fn warm<'k>(&self, keys: impl IntoIterator<Item = (TenantId, Slot, &'k [u8])>) {
        for (tenant, slot, key) in keys {
            let found = self
                .tables
                .get(&(tenant, slot))
                .and_then(|table| table.find(self.hasher.hash_one(key), |entry| entry.key() == key))
                .map(Entry::version);
            std::hint::black_box(found);
        }
    }

    /// Does `key` exist (and is it unexpired)?
    pub fn exists(&self, tenant: TenantId, slot: Slot, key: &[u8], now_ms: u64) -> bool {
        self.get(tenant, slot, key, now_ms).is_some()
    }

    /// Writes `value` under `key` if `options.condition` holds.
    pub fn set(
        &mut self,
        tenant: TenantId,
        slot: Slot,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
        now_ms: u64,
    ) -> Result<WriteOutcome, StoreError> {
        self.write(tenant, slot, key, value, options, now_ms, None)
    }

    /// [`Store::set`], with the version given (`restore`) or, for `None`,
    /// the next one from the counter. A restore (a version given) is never
    /// refused for quota: it puts back what was once accepted.
    #[allow(clippy::too_many_arguments)]
    fn write(
        &mut self,
        tenant: TenantId,
        slot: Slot,
        key: &[u8],
        value: &[u8],
        options: SetOptions,
        now_ms: u64,
        given_version: Option<u64>,
    ) -> Result<WriteOutcome, StoreError> {
        assert!(
            key.len() <= u32::MAX as usize,
            "key length must be checked by the caller"
        );
        let Store {
            hasher,
            tables,
            tenants,
            owners,
            expiry_queue,
            keys_with_expiry,
            last_version,
            ..
        } = self;
        let restoring = given_version.is_some();
        let hash = hasher.hash_one(key);
        let usage = tenants.entry(tenant).or_default();
        let owner = owners.entry(quota_owner(tenant)).or_default();
        let table = tables.entry((tenant, slot)).or_default();
        let new_bytes = (key.len() + value.len()) as u64;
        let new_expiry_if_new_key = match options.expiry {
            Expiry::Never | Expiry::Keep => NO_EXPIRY,
            Expiry::AtMs(at) => at,
        };
        let (old_expires_at_ms, new_expires_at_ms, version) = match table.entry(
            hash,
            |entry| entry.key() == key,
            |entry| hasher.hash_one(entry.key()),
        ) {
            TableEntry::Occupied(mut occupied) => {
                let entry = occupied.get_mut();
                let live = !entry.is_expired(now_ms);
                let current_version = if live { entry.version() } else { 0 };
                if !condition_holds(options.condition, live.then_some(current_version)) {
                    return Ok(WriteOutcome {
                        applied: false,
                        version: current_version,
                    });
                }
                let old_bytes = entry.charged_bytes();
                let owner_bytes_after = owner.bytes - old_bytes + new_bytes;
                if let Some(max_bytes) = owner.quota.max_bytes.filter(|_| !restoring) {
                    if new_bytes > old_bytes && owner_bytes_after > max_bytes {
                        return Err(StoreError::ByteQuotaExceeded { tenant, max_bytes });
                    }
                }
                let old_expires_at_ms = entry.expires_at_ms();
                let new_expires_at_ms = match options.expiry {
                    Expiry::Never => NO_EXPIRY,
                    Expiry::AtMs(at) => at,
                    // An expired entry is a new key to the writer: no TTL to keep.
                    Expiry::Keep if live => old_expires_at_ms,
                    Expiry::Keep => NO_EXPIRY,
                };
                let version = next_version(last_version, given_version);
                entry.rewrite(value, new_expires_at_ms, version);
                usage.bytes = usage.bytes - old_bytes + new_bytes;
                owner.bytes = owner_bytes_after;
                (old_expires_at_ms, new_expires_at_ms, version)
            }
            TableEntry::Vacant(vacant) => {
                if !condition_holds(options.condition, None) {
                    return Ok(WriteOutcome {
                        applied: false,
                        version: 0,
                    });
                }
                if let Some(max_keys) = owner.quota.max_keys.filter(|_| !restoring) {
                    if owner.keys >= max_keys {
                        return Err(StoreError::KeyQuotaExceeded { tenant, max_keys });
                    }
                }
                if let Some(max_bytes) = owner.quota.max_bytes.filter(|_| !restoring) {
                    if owner.bytes + new_bytes > max_bytes {
                        return Err(StoreError::ByteQuotaExceeded { tenant, max_bytes });
                    }
                }
                let version = next_version(last_version, given_version);
                vacant.insert(Entry::new(key, value, new_expiry_if_new_key, version));
                usage.keys += 1;
                usage.bytes += new_bytes;
                owner.keys += 1;
                owner.bytes += new_bytes;
                (NO_EXPIRY, new_expiry_if_new_key, version)
            }
        };
        match (
            old_expires_at_ms == NO_EXPIRY,
            new_expires_at_ms == NO_EXPIRY,
        ) {
            (true, false) => *keys_with_expiry += 1,
            (false, true) => *keys_with_expiry -= 1,
            _ => {}
        }
        if new_expires_at_ms != NO_EXPIRY && new_expires_at_ms != old_expires_at_ms {
            expiry_queue.push(Reverse(ExpiryItem {
                expires_at_ms: new_expires_at_ms,
                tenant,
                slot,
                key: key.into(),
            }));
        }
        Ok(WriteOutcome {
            applied: true,
            version,
        })
    }

    /// Removes `key`. Returns whether a live (unexpired) key was removed.
    pub fn delete(&mut self, tenant: TenantId, slot: Slot, key: &[u8], now_ms: u64) -> bool {
        let hash = self.hasher.hash_one(key);
        match self.remove_entry(tenant, slot, hash, |entry| entry.key() == key) {
            Some(entry) => !entry.is_expired(now_ms),
            None => false,
        }
    }

    /// Sets or clears the expiry of a live key (Redis EXPIRE / PERSIST),
    /// without a new version: the value did not change. An expiry at or
    /// before `now_ms` deletes the key. Returns whether the key was live.
    pub fn set_expiry(
        &mut self,
        tenant: TenantId,
        slot: Slot,
        key: &[u8],
        expires_at_ms: Option<u64>,
        now_ms: u64,
    ) -> bool {
        let hash = self.hasher.hash_one(key);
        let Some(entry) = self
            .tables
            .get_mut(&(tenant, slot))
            .and_then(|table| table.find_mut(hash, |entry| entry.key() == key))
        else {
            return false;
        };
        if entry.is_expired(now_ms) {
            return false;
        }
        let new_expires_at_ms = expires_at_ms.unwrap_or(NO_EXPIRY);
        if new_expires_at_ms <= now_ms {
            return self.delete(tenant, slot, key, now_ms);
        }
        let old_expires_at_ms = entry.expires_at_ms();
        entry.set_expiry(new_expires_at_ms);
        match (
            old_expires_at_ms == NO_EXPIRY,
            new_expires_at_ms == NO_EXPIRY,
        ) {
            (true, false) => self.keys_with_expiry += 1,
            (false, true) => self.keys_with_expiry -= 1,
            _ => {}
        }
        if new_expires_at_ms != NO_EXPIRY && new_expires_at_ms != old_expires_at_ms {
            self.expiry_queue.push(Reverse(ExpiryItem {
                expires_at_ms: new_expires_at_ms,
                tenant,
                slot,
                key: key.into(),
            }));
        }
        true
    }

    /// Removes every key of `tenant` (Redis FLUSHDB on the tenant's keyspace).
    /// Returns how many entries were removed. Cost is proportional to the
    /// number of the tenant's (tenant, slot) tables on this store.
    pub fn flush_tenant(&mut self, tenant: TenantId) -> u64 {
        let mut removed = 0u64;
        let mut removed_with_expiry = 0usize;
        self.tables.retain(|&(owner, _), table| {
            if owner != tenant {
                return true;
            }
            removed += table.len() as u64;
            removed_with_expiry += table.iter().filter(|e| e.has_expiry()).count();
            false
        });
        self.keys_with_expiry -= removed_with_expiry;
        if let Some(usage) = self.tenants.get_mut(&tenant) {
            assert_eq!(usage.keys, removed, "usage counts every key of the tenant");
            let owner = self
                .owners
                .get_mut(&quota_owner(tenant))
                .expect("a keyspace's tenant has usage");
            assert!(owner.keys >= usage.keys && owner.bytes >= usage.bytes);
            owner.keys -= usage.keys;
            owner.bytes -= usage.bytes;
            usage.keys = 0;
            usage.bytes = 0;
        }
        removed
    }

    /// Calls `visit` with every entry of every tenant in `slot`, expired or
    /// not: (tenant, key, value, version, expiry). For snapshots.
    pub fn for_each_entry_in_slot(
        &self,
        slot: Slot,
        mut visit: impl FnMut(TenantId, &[u8], &[u8], u64, Option<u64>),
    ) {
        for &tenant in self.tenants.keys() {
            if let Some(table) = self.tables.get(&(tenant, slot)) {
                for entry in table.iter() {
                    let view = entry.view();
                    visit(
                        tenant,
                        entry.key(),
                        view.value,
                        view.version,
                        view.expires_at_ms,
                    );
                }
            }
        }
    }

    /// Puts an entry exactly as logged or snapshotted: no condition, no
    /// quota, the given version (the store's version counter moves up to
    /// it). For recovery only.
    pub fn restore(
        &mut self,
        tenant: TenantId,
        slot: Slot,
        key: &[u8],
        value: &[u8],
        version: u64,
        expires_at_ms: Option<u64>,
    ) {
        // The decoders refuse versions out of range (pair assertion).
        assert!(
            (1..=MAX_VERSION).contains(&version),
            "restored version {version} out of range"
        );
        let expiry = expires_at_ms.map_or(Expiry::Never, Expiry::AtMs);
        let options = SetOptions {
            condition: WriteCondition::Always,
            expiry,
        };
        // Time 0: an entry already expired by the wall clock is restored as
        // it was; reads will not see it and the sweep will remove it. The
        // entry takes `version` itself: the counter only rises to it (found
        // by fuzzing: taking a version from the counter first overflowed it
        // when a restored version sat at the top of the range).
        self.write(tenant, slot, key, value, options, 0, Some(version))
            .expect("a restore is never refused for quota");
    }

    /// Moves the version counter up to at least `version` (from a snapshot's
    /// header: versions handed out before it must never be reused).
    pub fn raise_last_version(&mut self, version: u64) {
        assert!(
            version <= MAX_VERSION,
            "version counter {version} out of range"
        );
        self.last_version = self.last_version.max(version);
    }

    /// Calls `visit` with every live key of `tenant` in `slot`; returns how
    /// many entries were looked at (live or not), the measure of work done.
    pub fn for_each_key_in_slot(
        &self,
        tenant: TenantId,
        slot: Slot,
        now_ms: u64,
        mut visit: impl FnMut(&[u8]),
    ) -> usize {
        let Some(table) = self.tables.get(&(tenant, slot)) else {
            return 0;
        };
        for entry in table.iter() {
            if !entry.is_expired(now_ms) {
                visit(entry.key());
            }
        }
        table.len()
    }

    /// Active expiry: removes keys whose time has come, looking at no more
    /// than `max_items` queue items. Returns how many keys were removed.
    pub fn expire_due(&mut self, now_ms: u64, max_items: usize) -> usize {
        let mut removed = 0;
        for _ in 0..max_items {
            match self.expiry_queue.peek() {
                Some(Reverse(item)) if item.expires_at_ms <= now_ms => {}
                _ => break,
            }
            let Reverse(item) = self.expiry_queue.pop().expect("peeked");
            let hash = self.hasher.hash_one(&item.key);
            let due = |entry: &Entry| {
                entry.key() == &*item.key && entry.expires_at_ms() == item.expires_at_ms
            };
            if self
                .remove_entry(item.tenant, item.slot, hash, due)
                .is_some()
            {
                removed += 1;
            }
        }
        if self.expiry_queue.len() > 2 * self.keys_with_expiry + EXPIRY_QUEUE_SLACK {
            self.compact_expiry_queue();
        }
        removed
    }

    /// Drops queue items whose key was since deleted or given another expiry.
    fn compact_expiry_queue(&mut self) {
        let Store {
            hasher,
            tables,
            expiry_queue,
            ..
        } = self;
        expiry_queue.retain(|Reverse(item)| {
            let hash = hasher.hash_one(&item.key);
            tables
                .get(&(item.tenant, item.slot))
                .and_then(|table| table.find(hash, |entry| entry.key() == &*item.key))
                .is_some_and(|entry| entry.expires_at_ms() == item.expires_at_ms)
        });
    }

    fn remove_entry(
        &mut self,
        tenant: TenantId,
        slot: Slot,
        hash: u64,
        matches: impl FnMut(&Entry) -> bool,
    ) -> Option<Entry> {
        let table = self.tables.get_mut(&(tenant, slot))?;
        let (entry, _) = table.find_entry(hash, matches).ok()?.remove();
        if table.is_empty() {
            self.tables.remove(&(tenant, slot));
        }
        let usage = self
            .tenants
            .get_mut(&tenant)
            .expect("a tenant with keys has usage");
        assert!(usage.keys >= 1 && usage.bytes >= entry.charged_bytes());
        usage.keys -= 1;
        usage.bytes -= entry.charged_bytes();
        let owner = self
            .owners
            .get_mut(&quota_owner(tenant))
            .expect("a keyspace's tenant has usage");
        assert!(owner.keys >= 1 && owner.bytes >= entry.charged_bytes());
        owner.keys -= 1;
        owner.bytes -= entry.charged_bytes();
        if entry.has_expiry() {
            self.keys_with_expiry -= 1;
        }
        Some(entry)
    }
}

fn condition_holds(condition: WriteCondition, current_version: Option<u64>) -> bool {
    match condition {
        WriteCondition::Always => true,
        WriteCondition::IfAbsent => current_version.is_none(),
        WriteCondition::IfPresent => current_version.is_some(),
        WriteCondition::IfVersion(0) => current_version.is_none(),
        WriteCondition::IfVersion(expected) => current_version == Some(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    const T: TenantId = 1;

    fn set(store: &mut Store, key: &str, value: &str) -> WriteOutcome {
        store
            .set(
                T,
                0,
                key.as_bytes(),
                value.as_bytes(),
                SetOptions::default(),
                0,
            )
            .unwrap()
    }

    /// Found by fuzzing: `restore` took a version from the counter before
    /// giving the entry its own, so restoring after an entry at
    /// `MAX_VERSION` overflowed the counter's range and panicked.
    #[test]
    fn restore_at_the_top_of_the_version_range_keeps_the_given_versions() {
        let mut store = Store::new();
        store.restore(1, 3, b"top", b"v", MAX_VERSION, None);
        store.restore(1, 3, b"low", b"w", 1, None);
        store.restore(1, 3, b"top", b"x", MAX_VERSION - 1, None);
        assert_eq!(store.get(1, 3, b"top", 0).unwrap().version, MAX_VERSION - 1);
        assert_eq!(store.get(1, 3, b"low", 0).unwrap().version, 1);
        assert_eq!(store.last_version(), MAX_VERSION, "the counter only rises");
        store.restore(1, 4, b"k", b"v", 7, None);
        assert_eq!(store.last_version(), MAX_VERSION);
    }

    /// The compact entry (see `Entry`): a table slot is one fat pointer, and
    /// every change of value size or of having an expiry keeps key, value,
    /// version, expiry and the charged bytes exact.
    #[test]
    fn entries_keep_their_fields_through_every_change_of_layout() {
        assert_eq!(
            std::mem::size_of::<Entry>(),
            16,
            "a table slot is a Box<[u8]>"
        );
        let mut entry = Entry::new(b"key", b"value", NO_EXPIRY, 7);
        assert_eq!(entry.bytes.len(), 12 + 3 + 5);
        let check = |entry: &Entry, value: &[u8], expires: u64, version: u64| {
            assert_eq!(entry.key(), b"key");
            assert_eq!(entry.value(), value);
            assert_eq!(entry.expires_at_ms(), expires);
            assert_eq!(entry.has_expiry(), expires != NO_EXPIRY);
            assert_eq!(entry.version(), version);
            assert_eq!(entry.charged_bytes(), 3 + value.len() as u64);
        };
        check(&entry, b"value", NO_EXPIRY, 7);
        entry.rewrite(b"VALUE", NO_EXPIRY, 8); // in place
        check(&entry, b"VALUE", NO_EXPIRY, 8);
        entry.rewrite(b"VALUE", 1_000, 9); // gains an expiry
        assert_eq!(entry.bytes.len(), 20 + 3 + 5);
        check(&entry, b"VALUE", 1_000, 9);
        entry.set_expiry(2_000); // in place
        check(&entry, b"VALUE", 2_000, 9);
        entry.rewrite(b"", 2_000, 10); // empty value
        check(&entry, b"", 2_000, 10);
        entry.set_expiry(NO_EXPIRY); // loses it
        check(&entry, b"", NO_EXPIRY, 10);
        entry.rewrite(&[b'x'; 300], NO_EXPIRY, 11);
        check(&entry, &[b'x'; 300], NO_EXPIRY, 11);
        let empty_key = Entry::new(b"", b"v", 5, MAX_VERSION);
        assert_eq!(
            (
                empty_key.key(),
                empty_key.value(),
                empty_key.expires_at_ms()
            ),
            (&b""[..], &b"v"[..], 5)
        );
        assert_eq!(empty_key.version(), MAX_VERSION);
    }

    /// A restore puts back what was once accepted, whatever the quota says
    /// now, and leaves the quota as it was for later writes.
    #[test]
    fn restores_ignore_the_quota_and_keep_it() {
        let mut store = Store::new();
        let quota = Quota {
            max_keys: Some(1),
            max_bytes: Some(10),
        };
        store.set_quota(T, quota);
        store.restore(T, 0, b"a", b"0123456789", 1, None);
        store.restore(T, 1, b"b", b"0123456789", 2, Some(5));
        store.restore(T, 1, b"b", b"01234567890123456789", 3, None);
        assert_eq!(store.owner_usage(T).keys, 2);
        assert_eq!(store.owner_usage(T).bytes, 11 + 21);
        assert_eq!(store.owner_usage(T).quota, quota);
        let refused = store.set(T, 2, b"c", b"v", SetOptions::default(), 0);
        assert!(matches!(refused, Err(StoreError::KeyQuotaExceeded { .. })));
    }

    /// Warming looks up, never changes: present, absent and expired keys,
    /// and tables that do not exist, leave every count and entry as it was.
    #[test]
    fn warming_changes_nothing() {
        let mut store = Store::new();
        for n in 0..100u32 {
            let key = n.to_le_bytes();
            let expiry = if n % 10 == 0 {
                Expiry::AtMs(5)
            } else {
                Expiry::Never
            };
            let options = SetOptions {
                condition: WriteCondition::Always,
                expiry,
            };
            store
                .set(T, (n % 7) as Slot, &key, b"v", options, 0)
                .unwrap();
        }
        let versions = |store: &Store| -> Vec<Option<u64>> {
            (0..100u32)
                .map(|n| {
                    store
                        .get(T, (n % 7) as Slot, &n.to_le_bytes(), 0)
                        .map(|v| v.version)
                })
                .collect()
        };
        let before = versions(&store);
        let keys: Vec<[u8; 4]> = (0..200u32).map(u32::to_le_bytes).collect();
        store.warm(
            keys.iter()
                .enumerate()
                .map(|(n, key)| (T, (n % 9) as Slot, &key[..])),
        );
        store.warm([(T + 1, 3, &b"nothing"[..])]);
        assert_eq!(before, versions(&store));
        assert_eq!(store.key_count(), 100);
        assert_eq!(store.tenant_usage(T).bytes, 100 * 5);
    }

    #[test]
    fn versions_grow_and_are_never_reused() {
        let mut store = Store::new();
        let first = set(&mut store, "a", "1");
        assert!(store.delete(T, 0, b"a", 0));
        let second = set(&mut store, "a", "1");
        assert!(second.version > first.version);
    }

    #[test]
    fn conditions() {
        let mut store = Store::new();
        let opts = |condition| SetOptions {
            condition,
            expiry: Expiry::Never,
        };
        let xx = store
            .set(T, 0, b"k", b"v", opts(WriteCondition::IfPresent), 0)
            .unwrap();
        assert_eq!(
            xx,
            WriteOutcome {
                applied: false,
                version: 0
            }
        );
        let nx = store
            .set(T, 0, b"k", b"v", opts(WriteCondition::IfAbsent), 0)
            .unwrap();
        assert!(nx.applied);
        let nx_again = store
            .set(T, 0, b"k", b"w", opts(WriteCondition::IfAbsent), 0)
            .unwrap();
        assert_eq!(
            nx_again,
            WriteOutcome {
                applied: false,
                version: nx.version
            }
        );
        let cas_wrong = store
            .set(
                T,
                0,
                b"k",
                b"w",
                opts(WriteCondition::IfVersion(nx.version + 7)),
                0,
            )
            .unwrap();
        assert!(!cas_wrong.applied);
        let cas = store
            .set(
                T,
                0,
                b"k",
                b"w",
                opts(WriteCondition::IfVersion(nx.version)),
                0,
            )
            .unwrap();
        assert!(cas.applied);
        assert_eq!(store.get(T, 0, b"k", 0).unwrap().value, b"w");
    }

    #[test]
    fn tenants_are_disjoint() {
        let mut store = Store::new();
        store
            .set(1, 5, b"k", b"one", SetOptions::default(), 0)
            .unwrap();
        store
            .set(2, 5, b"k", b"two", SetOptions::default(), 0)
            .unwrap();
        assert_eq!(store.get(1, 5, b"k", 0).unwrap().value, b"one");
        assert_eq!(store.get(2, 5, b"k", 0).unwrap().value, b"two");
        assert!(store.delete(1, 5, b"k", 0));
        assert!(store.exists(2, 5, b"k", 0));
        let mut seen = Vec::new();
        store.for_each_key_in_slot(1, 5, 0, |key| seen.push(key.to_vec()));
        assert!(seen.is_empty());
    }

    #[test]
    fn expiry_is_lazy_then_active() {
        let mut store = Store::new();
        let ttl = SetOptions {
            condition: WriteCondition::Always,
            expiry: Expiry::AtMs(100),
        };
        store.set(T, 0, b"k", b"v", ttl, 0).unwrap();
        assert_eq!(store.get(T, 0, b"k", 99).unwrap().expires_at_ms, Some(100));
        assert!(store.get(T, 0, b"k", 100).is_none(), "invisible once due");
        assert_eq!(store.tenant_usage(T).keys, 1, "not yet removed");
        assert_eq!(store.expire_due(100, 10), 1);
        assert_eq!(store.tenant_usage(T), TenantUsage::default());
    }

    #[test]
    fn keep_ttl_and_rewrite_clear_expiry() {
        let mut store = Store::new();
        let at = |ms| SetOptions {
            condition: WriteCondition::Always,
            expiry: Expiry::AtMs(ms),
        };
        let keep = SetOptions {
            condition: WriteCondition::Always,
            expiry: Expiry::Keep,
        };
        store.set(T, 0, b"k", b"v", at(50), 0).unwrap();
        store.set(T, 0, b"k", b"w", keep, 0).unwrap();
        assert_eq!(store.get(T, 0, b"k", 0).unwrap().expires_at_ms, Some(50));
        store
            .set(T, 0, b"k", b"x", SetOptions::default(), 0)
            .unwrap();
        assert_eq!(store.expire_due(1000, 10), 0, "stale queue item ignored");
        assert_eq!(store.get(T, 0, b"k", 1000).unwrap().value, b"x");
    }

    #[test]
    fn databases_are_apart_and_share_their_tenant_quota() {
        let mut store = Store::new();
        store.set_quota(
            T,
            Quota {
                max_keys: Some(2),
                max_bytes: None,
            },
        );
        let db3 = keyspace(T, 3);
        let set = |store: &mut Store, tenant, key: &[u8]| {
            store.set(tenant, 0, key, b"v", SetOptions::default(), 0)
        };
        set(&mut store, T, b"k").unwrap();
        set(&mut store, db3, b"k").unwrap();
        assert!(
            set(&mut store, db3, b"other").is_err(),
            "the tenant's quota covers db 3"
        );
        assert_eq!(store.get(T, 0, b"k", 0).unwrap().version, 1);
        assert_eq!(store.get(db3, 0, b"k", 0).unwrap().version, 2);
        assert_eq!(store.tenant_usage(db3).keys, 1);
        assert_eq!(store.tenant_usage(db3).quota.max_keys, Some(2));
        assert_eq!(store.owner_usage(T).keys, 2);
        assert_eq!(store.flush_tenant(db3), 1);
        assert_eq!(store.owner_usage(T).keys, 1);
        assert!(
            store.get(T, 0, b"k", 0).is_some(),
            "flushing db 3 keeps db 0"
        );
        set(&mut store, db3, b"other").unwrap();
        assert!(store.delete(db3, 0, b"other", 0));
        assert_eq!(
            store.owner_usage(T),
            TenantUsage {
                keys: 1,
                bytes: 2,
                quota: store.owner_usage(T).quota
            }
        );
        assert_eq!((quota_owner(db3), database_of(db3)), (T, 3));
    }

    #[test]
    fn quotas_refuse_and_change_nothing() {
        let mut store = Store::new();
        store.set_quota(
            T,
            Quota {
                max_keys: Some(2),
                max_bytes: Some(10),
            },
        );
        set(&mut store, "a", "1");
        set(&mut store, "b", "2");
        let third = store.set(T, 0, b"c", b"3", SetOptions::default(), 0);
        assert_eq!(
            third,
            Err(StoreError::KeyQuotaExceeded {
                tenant: T,
                max_keys: 2
            })
        );
        let big = store.set(T, 0, b"a", b"123456789", SetOptions::default(), 0);
        assert_eq!(
            big,
            Err(StoreError::ByteQuotaExceeded {
                tenant: T,
                max_bytes: 10
            })
        );
        assert_eq!(store.get(T, 0, b"a", 0).unwrap().value, b"1");
        assert_eq!(store.tenant_usage(T).bytes, 4);
        // Shrinking is always allowed, overwriting does not count a new key.
        set(&mut store, "a", "");
        assert_eq!(store.tenant_usage(T).bytes, 3);
    }

    #[test]
    fn set_expiry_and_flush_tenant() {
        let mut store = Store::new();
        set(&mut store, "a", "1");
        store
            .set(2, 0, b"a", b"other", SetOptions::default(), 0)
            .unwrap();
        assert!(store.set_expiry(T, 0, b"a", Some(50), 0));
        assert_eq!(store.get(T, 0, b"a", 0).unwrap().expires_at_ms, Some(50));
        assert!(store.set_expiry(T, 0, b"a", None, 0), "persist");
        assert_eq!(store.get(T, 0, b"a", 0).unwrap().expires_at_ms, None);
        assert!(!store.set_expiry(T, 0, b"missing", Some(50), 0));
        assert!(
            store.set_expiry(T, 0, b"a", Some(10), 10),
            "a past expiry deletes"
        );
        assert!(store.get(T, 0, b"a", 10).is_none());
        set(&mut store, "b", "1");
        store
            .set(
                T,
                9,
                b"c",
                b"2",
                SetOptions {
                    condition: WriteCondition::Always,
                    expiry: Expiry::AtMs(99),
                },
                0,
            )
            .unwrap();
        assert_eq!(store.flush_tenant(T), 2);
        assert_eq!(store.tenant_usage(T).keys, 0);
        assert_eq!(store.get(2, 0, b"a", 0).unwrap().value, b"other");
        assert_eq!(store.expire_due(1000, 10), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Set {
            key: u8,
            value: u8,
            ttl: Option<u8>,
            condition: u8,
        },
        Delete {
            key: u8,
        },
        Advance {
            ms: u8,
        },
        Expire,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..8, any::<u8>(), proptest::option::of(1u8..20), 0u8..4).prop_map(
                |(key, value, ttl, condition)| Op::Set {
                    key,
                    value,
                    ttl,
                    condition
                }
            ),
            (0u8..8).prop_map(|key| Op::Delete { key }),
            (0u8..10).prop_map(|ms| Op::Advance { ms }),
            Just(Op::Expire),
        ]
    }

    proptest! {
        // The store behaves like a plain ordered map of (value, version,
        // expiry) under any sequence of writes, deletes and clock moves.
        #[test]
        fn behaves_like_a_model(ops in proptest::collection::vec(op(), 1..200)) {
            let mut store = Store::new();
            let mut model: BTreeMap<u8, (u8, u64, Option<u64>)> = BTreeMap::new();
            let mut now = 0u64;
            for op in ops {
                model.retain(|_, (_, _, at)| at.is_none_or(|at| at > now));
                match op {
                    Op::Set { key, value, ttl, condition } => {
                        let current = model.get(&key).map(|(_, version, _)| *version);
                        let condition = match condition {
                            0 => WriteCondition::Always,
                            1 => WriteCondition::IfAbsent,
                            2 => WriteCondition::IfPresent,
                            _ => WriteCondition::IfVersion(current.unwrap_or(0)),
                        };
                        let expiry = ttl.map_or(Expiry::Never, |ttl| Expiry::AtMs(now + u64::from(ttl)));
                        let outcome = store.set(T, u16::from(key % 3), &[key], &[value], SetOptions { condition, expiry }, now).unwrap();
                        prop_assert_eq!(outcome.applied, condition_holds(condition, current));
                        if outcome.applied {
                            let at = match expiry { Expiry::AtMs(at) => Some(at), _ => None };
                            model.insert(key, (value, outcome.version, at));
                        } else {
                            prop_assert_eq!(outcome.version, current.unwrap_or(0));
                        }
                    }
                    Op::Delete { key } => {
                        prop_assert_eq!(store.delete(T, u16::from(key % 3), &[key], now), model.remove(&key).is_some());
                    }
                    Op::Advance { ms } => now += u64::from(ms),
                    Op::Expire => { store.expire_due(now, 1000); }
                }
                for key in 0u8..8 {
                    let got = store.get(T, u16::from(key % 3), &[key], now).map(|view| (view.value[0], view.version, view.expires_at_ms));
                    let want = model.get(&key).copied().filter(|(_, _, at)| at.is_none_or(|at| at > now));
                    prop_assert_eq!(got, want);
                }
            }
            store.expire_due(now, usize::MAX);
            model.retain(|_, (_, _, at)| at.is_none_or(|at| at > now));
            prop_assert_eq!(store.tenant_usage(T).keys, model.len() as u64);
            prop_assert_eq!(store.tenant_usage(T).bytes, 2 * model.len() as u64);
        }
    }
}
