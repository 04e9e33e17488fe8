//! The tenants a node knows: name <-> local id, and each tenant's quota.
//!
//! Tenant ids are local to a node (the index in the config's list); slot
//! hashing uses the name, so ids never leave the node. The registry is built
//! at start-up from the config and `tenants.json` (tenants created through
//! the admin API). A tenant created or changed at runtime reaches each core
//! as a message carrying the whole new list; each core swaps its own
//! [`CoreTenants`] (never shared mutation across cores). The list only
//! grows, so the id a connection bound to stays valid.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use tinkerdb_admin::tenants_file::TenantSpec;

use tinkerdb_storage::{Quota, TenantId, SLOT_COUNT};

/// One known tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    /// Local id.
    pub id: TenantId,
    /// Name, as clients give it.
    pub name: Arc<str>,
    /// Node-wide quota.
    pub quota: Quota,
}

/// All tenants of the node.
#[derive(Debug, Clone)]
pub struct TenantRegistry {
    tenants: Vec<Tenant>,
    id_by_name: HashMap<Arc<str>, TenantId>,
}

impl TenantRegistry {
    /// Builds the registry from validated specs (ids are list positions).
    pub fn new(specs: &[TenantSpec]) -> TenantRegistry {
        let tenants: Vec<Tenant> = specs
            .iter()
            .enumerate()
            .map(|(index, config)| Tenant {
                id: TenantId::try_from(index).expect("fewer than 2^32 tenants"),
                name: Arc::from(config.name.as_str()),
                quota: Quota {
                    max_keys: config.max_keys,
                    max_bytes: config.max_bytes,
                },
            })
            .collect();
        let id_by_name = tenants.iter().map(|t| (t.name.clone(), t.id)).collect();
        TenantRegistry {
            tenants,
            id_by_name,
        }
    }

    /// The tenant called `name`.
    pub fn by_name(&self, name: &str) -> Option<&Tenant> {
        self.id_by_name
            .get(name)
            .map(|&id| &self.tenants[id as usize])
    }

    /// The tenant with local id `id`.
    pub fn by_id(&self, id: TenantId) -> &Tenant {
        &self.tenants[id as usize]
    }

    /// Every tenant.
    pub fn iter(&self) -> impl Iterator<Item = &Tenant> {
        self.tenants.iter()
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether there are none (never, once `default` is added).
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }
}

/// One core's current tenant registry: replaced whole when the admin plane
/// installs a new list. Readers take an `Arc` and never hold a borrow
/// across an `.await`.
#[derive(Debug)]
pub struct CoreTenants {
    current: RefCell<Arc<TenantRegistry>>,
}

impl CoreTenants {
    /// Starts with `registry`.
    pub fn new(registry: Arc<TenantRegistry>) -> CoreTenants {
        CoreTenants {
            current: RefCell::new(registry),
        }
    }

    /// The registry now.
    pub fn get(&self) -> Arc<TenantRegistry> {
        self.current.borrow().clone()
    }

    /// The tenant called `name`, now.
    pub fn by_name(&self, name: &str) -> Option<Tenant> {
        self.current.borrow().by_name(name).cloned()
    }

    /// The name of tenant `id`.
    pub fn name_of(&self, id: TenantId) -> Arc<str> {
        self.current.borrow().by_id(id).name.clone()
    }

    /// Replaces the registry. The new one must extend the old (same names
    /// at the same ids).
    pub fn install(&self, registry: Arc<TenantRegistry>) {
        let mut current = self.current.borrow_mut();
        debug_assert!(current
            .iter()
            .zip(registry.iter())
            .all(|(old, new)| old.name == new.name));
        *current = registry;
    }
}

/// The part of a node-wide quota that the core owning the contiguous slot
/// range `slots` enforces: proportional to its slots, with the rounding
/// arranged so that the shares of all cores add up to exactly the quota.
///
/// Why shares: a shared counter would put cross-core traffic (or an atomic)
/// on every insert, and later, with Raft, each shard must decide alone and
/// deterministically. The cost: with keys hashing unevenly, a tenant can be
/// refused a little before reaching its node-wide quota, never after.
pub fn quota_share(quota: Quota, slots: std::ops::Range<usize>) -> Quota {
    let share = |limit: u64| {
        let cut = |slot: usize| (u128::from(limit) * slot as u128 / SLOT_COUNT as u128) as u64;
        cut(slots.end) - cut(slots.start)
    };
    Quota {
        max_keys: quota.max_keys.map(share),
        max_bytes: quota.max_bytes.map(share),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_to_exactly_the_quota() {
        let quota = Quota {
            max_keys: Some(11),
            max_bytes: Some(1 << 40),
        };
        for cores in [1usize, 2, 3, 7] {
            let map = crate::slots::SlotMap::contiguous(cores);
            let shares: Vec<Quota> = (0..cores)
                .map(|core| quota_share(quota, map.slot_range(core)))
                .collect();
            assert_eq!(shares.iter().map(|q| q.max_keys.unwrap()).sum::<u64>(), 11);
            assert_eq!(
                shares.iter().map(|q| q.max_bytes.unwrap()).sum::<u64>(),
                1 << 40
            );
        }
        assert_eq!(quota_share(Quota::default(), 0..3), Quota::default());
    }
}
