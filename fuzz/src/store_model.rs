//! Logged operations applied to a real [`Store`] the way recovery does
//! (`core/src/recovery.rs` `apply`: WAL replay and snapshot loading, at
//! time 0), next to a plain map of what the store must then hold.

use std::collections::{BTreeMap, BTreeSet};

use tinkerdb_storage::log_op::LoggedOp;
use tinkerdb_storage::{Slot, Store, TenantId};

/// Tenant names to ids. Recovery refuses names its configuration does not
/// define; here every name is defined (ids in order of first use), so the
/// store sees as many tenants as the input names.
#[derive(Default)]
pub struct Tenants {
    ids: BTreeMap<String, TenantId>,
    names: Vec<String>,
}

impl Tenants {
    /// The id of `name`, given one if it has none yet.
    pub fn id(&mut self, name: &str) -> TenantId {
        if let Some(&id) = self.ids.get(name) {
            return id;
        }
        let id = self.names.len() as TenantId;
        self.ids.insert(name.to_owned(), id);
        self.names.push(name.to_owned());
        id
    }

    /// The name of `id`.
    pub fn name(&self, id: TenantId) -> String {
        self.names[id as usize].clone()
    }
}

/// What a stored entry must be: value, version, expiry.
pub type ModelEntry = (Vec<u8>, u64, Option<u64>);

/// The store's expected content, by (tenant, slot, key).
pub type Model = BTreeMap<(TenantId, Slot, Vec<u8>), ModelEntry>;

/// Applies `op` to `store` exactly as `recovery::apply` does, and to
/// `model` as the store's documented semantics say (time 0: an entry
/// expiring at 0 is expired; an expiry change on an expired or absent key
/// does nothing; an expiry at or before 0 deletes the key).
pub fn apply(store: &mut Store, tenants: &mut Tenants, model: &mut Model, op: &LoggedOp<'_>) {
    match *op {
        LoggedOp::Put {
            tenant,
            slot,
            key,
            value,
            version,
            expires_at_ms,
        } => {
            let tenant = tenants.id(tenant);
            store.restore(tenant, slot, key, value, version, expires_at_ms);
            model.insert(
                (tenant, slot, key.to_vec()),
                (value.to_vec(), version, expires_at_ms),
            );
        }
        LoggedOp::Delete { tenant, slot, key } => {
            let tenant = tenants.id(tenant);
            store.delete(tenant, slot, key, 0);
            model.remove(&(tenant, slot, key.to_vec()));
        }
        LoggedOp::Expire {
            tenant,
            slot,
            key,
            expires_at_ms,
        } => {
            let tenant = tenants.id(tenant);
            store.set_expiry(tenant, slot, key, expires_at_ms, 0);
            let id = (tenant, slot, key.to_vec());
            let live = model
                .get(&id)
                .is_some_and(|(_, _, expiry)| *expiry != Some(0));
            if live {
                if expires_at_ms == Some(0) {
                    model.remove(&id);
                } else {
                    model.get_mut(&id).expect("live").2 = expires_at_ms;
                }
            }
        }
        LoggedOp::Flush { tenant } => {
            let tenant = tenants.id(tenant);
            store.flush_tenant(tenant);
            model.retain(|(owner, _, _), _| *owner != tenant);
        }
    }
}

/// Everything `store` holds in `slots` (expired entries included), as a model.
pub fn contents(store: &Store, slots: &BTreeSet<Slot>) -> Model {
    let mut found = Model::new();
    for &slot in slots {
        store.for_each_entry_in_slot(slot, |tenant, key, value, version, expiry| {
            let previous = found.insert(
                (tenant, slot, key.to_vec()),
                (value.to_vec(), version, expiry),
            );
            assert!(previous.is_none(), "a key listed twice in slot {slot}");
        });
    }
    found
}

/// Asserts that `store` holds exactly `model`: entries, key count, the
/// per-tenant usage counters, and a version counter at or above every
/// version it holds.
pub fn assert_store_matches(
    store: &Store,
    tenants: &Tenants,
    model: &Model,
    touched: &BTreeSet<Slot>,
) {
    let found = contents(store, touched);
    assert_eq!(&found, model, "the store's entries differ from the model");
    assert_eq!(store.key_count(), model.len() as u64, "key_count");
    for (id, _) in tenants.names.iter().enumerate() {
        let id = id as TenantId;
        let usage = store.tenant_usage(id);
        let keys = model.keys().filter(|(tenant, _, _)| *tenant == id).count() as u64;
        let bytes: u64 = model
            .iter()
            .filter(|((tenant, _, _), _)| *tenant == id)
            .map(|((_, _, key), (value, _, _))| (key.len() + value.len()) as u64)
            .sum();
        assert_eq!(
            (usage.keys, usage.bytes),
            (keys, bytes),
            "usage of tenant {id}"
        );
    }
    let highest = model
        .values()
        .map(|(_, version, _)| *version)
        .max()
        .unwrap_or(0);
    assert!(
        store.last_version() >= highest,
        "version counter {} below a stored version {highest}",
        store.last_version()
    );
}
