//! Start-up recovery of one core: newest snapshot, then WAL replay.
//!
//! Files of core `n` live in `<data_dir>/core-<n>/`: `snapshot-*.snap` and
//! `wal/*.wal`. The snapshot gives the store as of its cut index; the WAL's
//! records after the cut are replayed on top. A torn WAL tail (a flush cut
//! short by a crash, never acknowledged) is removed; any other damage stops
//! the node with the file and offset, never skipped.

use std::path::Path;

use anyhow::Context;
use tinkerdb_storage::log_op::{LoggedOp, RECORD_KIND_KV};
use tinkerdb_storage::wal::{self, DurabilityMode, Recovered};
use tinkerdb_storage::{snapshot, Store, TenantId};

use crate::tenants::TenantRegistry;

/// A core's state after recovery.
pub struct RecoveredCore {
    /// The store, as of the last durable write.
    pub store: Store,
    /// The WAL, ready to append (absent with durability `none`).
    pub wal: Option<Recovered>,
    /// Cut index of the snapshot loaded (0: none).
    pub snapshot_cut: u64,
    /// Entries loaded from it.
    pub snapshot_entries: u64,
}

impl RecoveredCore {
    /// Nothing recovered: an empty store and no WAL (cluster mode, where the
    /// Raft log rebuilds the store).
    pub fn empty() -> RecoveredCore {
        RecoveredCore {
            store: Store::new(),
            wal: None,
            snapshot_cut: 0,
            snapshot_entries: 0,
        }
    }
}

/// The tenants a replay's records name, resolved through the registry and
/// remembered one at a time: a log's records mostly name the same tenant,
/// and resolving a name costs a hash of it and a copy of the tenant (about
/// 3% of a restart's CPU before this cache).
pub(crate) struct ReplayTenants<'a> {
    registry: &'a TenantRegistry,
    /// The last name resolved, and its keyspace (`None`: a deleted tenant).
    last: Option<(Box<str>, Option<TenantId>)>,
}

impl<'a> ReplayTenants<'a> {
    pub(crate) fn new(registry: &'a TenantRegistry) -> ReplayTenants<'a> {
        ReplayTenants {
            registry,
            last: None,
        }
    }

    /// The keyspace `name` names (`None`: a deleted tenant, whose records
    /// are void), or why the record cannot be replayed.
    fn resolve(&mut self, name: &str) -> Result<Option<TenantId>, String> {
        if let Some((last, id)) = &self.last {
            if **last == *name {
                return Ok(*id);
            }
        }
        let tenants = self.registry;
        let id = match tenants.by_name(name) {
            Some(tenant) => Some(tenant.id),
            // A deleted tenant's records are void (its keys were flushed
            // before it was deleted; the flush may lie in a later segment).
            None if tenants.is_deleted(name) => None,
            None => {
                return Err(match name.rsplit_once('/') {
                    Some((tenant, database)) => format!(
                        "it names database {database} of tenant {tenant:?}, which the configuration no longer defines (its tenants and their `databases` count, {})",
                        tenants.databases()
                    ),
                    None => {
                        format!("it names tenant {name:?}, which the configuration no longer defines")
                    }
                })
            }
        };
        self.last = Some((name.into(), id));
        Ok(id)
    }
}

/// Applies one logged operation to `store` (also how a Raft snapshot's
/// entries are loaded, `coord::replica::ShardApplier::restore`).
pub(crate) fn apply(
    store: &mut Store,
    tenants: &mut ReplayTenants<'_>,
    op: LoggedOp<'_>,
) -> Result<(), String> {
    let name = match &op {
        LoggedOp::Put { tenant, .. }
        | LoggedOp::Delete { tenant, .. }
        | LoggedOp::Expire { tenant, .. }
        | LoggedOp::Flush { tenant } => *tenant,
    };
    let Some(tenant) = tenants.resolve(name)? else {
        return Ok(());
    };
    match op {
        LoggedOp::Put {
            slot,
            key,
            value,
            version,
            expires_at_ms,
            ..
        } => store.restore(tenant, slot, key, value, version, expires_at_ms),
        LoggedOp::Delete { slot, key, .. } => {
            store.delete(tenant, slot, key, 0);
        }
        LoggedOp::Expire {
            slot,
            key,
            expires_at_ms,
            ..
        } => {
            store.set_expiry(tenant, slot, key, expires_at_ms, 0);
        }
        LoggedOp::Flush { .. } => {
            store.flush_tenant(tenant);
        }
    }
    Ok(())
}

/// Rebuilds core state from `core_dir`. `mode` is `None` for durability
/// `none` (memory only: nothing is read or written).
pub fn recover_core(
    core_dir: &Path,
    tenants: &TenantRegistry,
    mode: Option<DurabilityMode>,
) -> anyhow::Result<RecoveredCore> {
    let mut store = Store::new();
    let Some(mode) = mode else {
        return Ok(RecoveredCore {
            store,
            wal: None,
            snapshot_cut: 0,
            snapshot_entries: 0,
        });
    };
    std::fs::create_dir_all(core_dir.join("wal"))
        .with_context(|| format!("cannot create {}", core_dir.display()))?;
    // Make the new directories' entries durable before anything is
    // acknowledged from files inside them.
    for dir in [core_dir, core_dir.parent().unwrap_or(core_dir)] {
        wal::sync_dir(dir).with_context(|| format!("cannot fsync {}", dir.display()))?;
    }
    let mut tenants = ReplayTenants::new(tenants);
    let (snapshot_cut, snapshot_entries) = match snapshot::newest(core_dir)? {
        Some((_, path)) => {
            let info = snapshot::load(&path, |op| apply(&mut store, &mut tenants, op))?;
            store.raise_last_version(info.last_version);
            (info.cut_index, info.entries)
        }
        None => (0, 0),
    };
    let recovered = wal::recover(&core_dir.join("wal"), snapshot_cut, mode, |event| {
        let record = match event {
            wal::Replay::Record(record) => record,
            wal::Replay::TruncatedAfter(index) => {
                return Err(format!(
                    "a truncation after {index}: the key-value log is never truncated"
                ))
            }
        };
        if record.kind != RECORD_KIND_KV {
            return Err(format!("unknown record kind {}", record.kind));
        }
        let mut at = 0;
        while at < record.payload.len() {
            let (op, used) = LoggedOp::decode(&record.payload[at..]).map_err(|e| e.to_string())?;
            apply(&mut store, &mut tenants, op)?;
            at += used;
        }
        Ok(())
    })?;
    Ok(RecoveredCore {
        store,
        wal: Some(recovered),
        snapshot_cut,
        snapshot_entries,
    })
}
