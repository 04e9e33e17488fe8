//! The tenants a node knows: name <-> local id, and each tenant's quota.
//!
//! Tenant ids are local to a node (the index in the config's list); slot
//! hashing uses the name, so ids never leave the node. The registry is built
//! at start-up from the config and `tenants.json` (tenants created through
//! the admin API). A tenant created or changed at runtime reaches each core
//! as a message carrying the whole new list; each core swaps its own
//! [`CoreTenants`] (never shared mutation across cores). The list only
//! grows, so the id a connection bound to stays valid: a deleted tenant
//! stays in it as a tombstone (`TenantSpec::deleted`), its id kept, its
//! name unknown to new sessions; sessions bound to it are refused
//! ([`CoreTenants::is_live`]), and at recovery the records that name it
//! are skipped ([`TenantRegistry::is_deleted`]): its keys were flushed
//! before it was deleted.
//!
//! Databases: each tenant has `databases` keyspaces (Redis's SELECT 0 to
//! `databases - 1`, 16 by default). Database 0 is the tenant itself; the
//! others are named `tenant/n` (a `/` cannot appear in a tenant name, so
//! the name is unambiguous) and carry the database number in their id
//! (`tinkerdb_storage::keyspace`). The names travel as they are in WAL
//! records, snapshots and Raft entries, so databases needed no change of
//! format; the quota is the tenant's, over all its databases.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use tinkerdb_storage::{
    database_of, keyspace, quota_owner, Quota, TenantId, MAX_TENANTS, SLOT_COUNT,
};

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

/// Databases per tenant unless configured (Redis's default).
pub const DEFAULT_DATABASES: u16 = 16;

/// All tenants of the node.
#[derive(Debug, Clone)]
pub struct TenantRegistry {
    tenants: Vec<Tenant>,
    id_by_name: HashMap<Arc<str>, TenantId>,
    databases: u16,
    /// Tombstones, by id (database 0's): deleted tenants.
    deleted: Vec<bool>,
}

impl TenantRegistry {
    /// Builds the registry from validated (name, node-wide quota) pairs
    /// (ids are list positions), with the default number of databases.
    pub fn new<'a>(tenants: impl IntoIterator<Item = (&'a str, Quota)>) -> TenantRegistry {
        TenantRegistry::with_databases(tenants, DEFAULT_DATABASES)
    }

    /// Builds the registry from validated (name, node-wide quota) pairs,
    /// each tenant with `databases` databases (1 to 256).
    pub fn with_databases<'a>(
        tenants: impl IntoIterator<Item = (&'a str, Quota)>,
        databases: u16,
    ) -> TenantRegistry {
        TenantRegistry::with_tombstones(
            tenants
                .into_iter()
                .map(|(name, quota)| (name, quota, false)),
            databases,
        )
    }

    /// Builds the registry from validated (name, node-wide quota, deleted)
    /// triples: a deleted tenant keeps its id (its list position) and is
    /// known by name only to [`TenantRegistry::is_deleted`].
    pub fn with_tombstones<'a>(
        tenants: impl IntoIterator<Item = (&'a str, Quota, bool)>,
        databases: u16,
    ) -> TenantRegistry {
        let (live, deleted): (Vec<(&str, Quota)>, Vec<bool>) = tenants
            .into_iter()
            .map(|(name, quota, deleted)| ((name, quota), deleted))
            .unzip();
        let mut registry = TenantRegistry::build(live, databases);
        for (tenant, &deleted) in registry.tenants.iter().zip(&deleted) {
            if deleted {
                registry.id_by_name.remove(&tenant.name);
            }
        }
        registry.deleted = deleted;
        registry
    }

    fn build<'a>(
        tenants: impl IntoIterator<Item = (&'a str, Quota)>,
        databases: u16,
    ) -> TenantRegistry {
        assert!(
            (1..=256).contains(&databases),
            "a tenant has database 0 and at most 256 (8 bits)"
        );
        let tenants: Vec<Tenant> = tenants
            .into_iter()
            .enumerate()
            .map(|(index, (name, quota))| Tenant {
                id: TenantId::try_from(index)
                    .ok()
                    .filter(|&id| id < MAX_TENANTS)
                    .expect("fewer tenants than MAX_TENANTS"),
                name: Arc::from(name),
                quota,
            })
            .collect();
        let id_by_name = tenants.iter().map(|t| (t.name.clone(), t.id)).collect();
        let deleted = vec![false; tenants.len()];
        TenantRegistry {
            tenants,
            id_by_name,
            databases,
            deleted,
        }
    }

    /// Whether keyspace `name` (`tenant` or `tenant/n`) belongs to a
    /// deleted tenant (recovery skips what such records say).
    pub fn is_deleted(&self, name: &str) -> bool {
        let owner = match self.id_by_name.get(name) {
            Some(_) => return false,
            None => name.rsplit_once('/').map_or(name, |(tenant, _)| tenant),
        };
        self.tenants
            .iter()
            .zip(&self.deleted)
            .any(|(tenant, &deleted)| deleted && *tenant.name == *owner)
    }

    /// The id of tenant `name` (database 0), deleted or not.
    pub fn id_of_any(&self, name: &str) -> Option<TenantId> {
        self.tenants
            .iter()
            .find(|tenant| *tenant.name == *name)
            .map(|tenant| tenant.id)
    }

    /// Whether keyspace `id` belongs to a tenant that is not deleted.
    pub fn is_live(&self, id: TenantId) -> bool {
        !self
            .deleted
            .get(quota_owner(id) as usize)
            .copied()
            .unwrap_or(true)
    }

    /// Databases per tenant.
    pub fn databases(&self) -> u16 {
        self.databases
    }

    /// The keyspace called `name`: a tenant (its database 0) or
    /// `tenant/n`, its database n.
    pub fn by_name(&self, name: &str) -> Option<Tenant> {
        if let Some(&id) = self.id_by_name.get(name) {
            return Some(self.tenants[id as usize].clone());
        }
        let (tenant, database) = name.rsplit_once('/')?;
        let database: u8 = database.parse().ok()?;
        // One spelling per database: "acme/1", never "acme/01" or "acme/0".
        if database == 0
            || u16::from(database) >= self.databases
            || database.to_string() != name[tenant.len() + 1..]
        {
            return None;
        }
        self.database(self.id_by_name.get(tenant).copied()?, database)
    }

    /// Database `database` of tenant `tenant` (`None` past the count).
    pub fn database(&self, tenant: TenantId, database: u8) -> Option<Tenant> {
        let owner = self.tenants.get(tenant as usize)?;
        if u16::from(database) >= self.databases {
            return None;
        }
        if database == 0 {
            return Some(owner.clone());
        }
        Some(Tenant {
            id: keyspace(owner.id, database),
            name: Arc::from(format!("{}/{database}", owner.name)),
            quota: owner.quota,
        })
    }

    /// The tenant (database 0) with local id `id`.
    pub fn by_id(&self, id: TenantId) -> &Tenant {
        &self.tenants[id as usize]
    }

    /// The name of keyspace `id` (`tenant` or `tenant/n`).
    pub fn name_of(&self, id: TenantId) -> Arc<str> {
        let owner = self.by_id(quota_owner(id));
        match database_of(id) {
            0 => owner.name.clone(),
            database => Arc::from(format!("{}/{database}", owner.name)),
        }
    }

    /// Every tenant (database 0 of each).
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

    /// The keyspace called `name` (`tenant` or `tenant/n`), now.
    pub fn by_name(&self, name: &str) -> Option<Tenant> {
        self.current.borrow().by_name(name)
    }

    /// Whether keyspace `id`'s tenant still exists (a session bound to a
    /// deleted one is refused at its next request).
    pub fn is_live(&self, id: TenantId) -> bool {
        self.current.borrow().is_live(id)
    }

    /// The name of keyspace `id`.
    pub fn name_of(&self, id: TenantId) -> Arc<str> {
        self.current.borrow().name_of(id)
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

    #[test]
    fn databases_are_named_tenant_slash_n_and_carry_the_number_in_their_id() {
        let acme_quota = Quota {
            max_keys: Some(9),
            max_bytes: None,
        };
        let registry = TenantRegistry::with_databases(
            [("default", Quota::default()), ("acme", acme_quota)],
            4,
        );
        let acme3 = registry.by_name("acme/3").expect("database 3");
        assert_eq!(acme3.id, keyspace(1, 3));
        assert_eq!(&*acme3.name, "acme/3");
        assert_eq!(acme3.quota.max_keys, Some(9));
        assert_eq!(&*registry.name_of(acme3.id), "acme/3");
        assert_eq!(registry.by_name("acme").unwrap().id, 1);
        assert_eq!(registry.database(1, 0).unwrap().id, 1);
        // One spelling per database, within the count, of a known tenant.
        for name in [
            "acme/0", "acme/03", "acme/4", "acme/", "ghost/1", "acme/1/1", "acme/-1",
        ] {
            assert!(registry.by_name(name).is_none(), "{name}");
        }
        assert!(registry.database(1, 4).is_none());
        assert_eq!(registry.iter().count(), 2, "databases are not tenants");
    }
}
