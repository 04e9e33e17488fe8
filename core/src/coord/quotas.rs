//! A core's tenants and its share of their quotas.

use std::sync::Arc;

use tinkerdb_storage::Quota;

use crate::coord::context::{now_ms, CoreContext};
use crate::shard::{ShardReply, ShardRequest};
use crate::tenants::{quota_share, TenantRegistry};

/// Installs a new tenant list on this core and sets this core's share of
/// every quota.
pub fn install_tenants<'a>(
    context: &CoreContext,
    tenants: impl IntoIterator<Item = (&'a str, Quota)>,
) {
    let databases = context.tenants.get().databases();
    let registry = Arc::new(TenantRegistry::with_databases(tenants, databases));
    context.tenants.install(registry.clone());
    apply_quotas(context, &registry);
}

/// Sets this core's share of every tenant's quota.
pub fn apply_quotas(context: &CoreContext, registry: &TenantRegistry) {
    let slots = context.slot_map.slot_range(context.core);
    let mut shard = context.shard.borrow_mut();
    for tenant in registry.iter() {
        let quota = quota_share(tenant.quota, slots.clone());
        let reply = shard.execute(
            ShardRequest::SetQuota {
                tenant: tenant.id,
                quota,
            },
            now_ms(),
        );
        debug_assert!(matches!(reply, ShardReply::Done));
    }
}
