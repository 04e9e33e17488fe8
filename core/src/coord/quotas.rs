//! A core's tenants and its ranges' shares of their quotas.

use std::sync::Arc;

use tinkerdb_storage::Quota;

use crate::coord::context::{now_ms, CoreContext};
use crate::shard::{Shard, ShardReply, ShardRequest};
use crate::slots::RangeId;
use crate::tenants::{quota_share, TenantRegistry};

/// Installs a new tenant list on this core and sets this core's share of
/// every quota.
pub fn install_tenants<'a>(
    context: &CoreContext,
    tenants: impl IntoIterator<Item = (&'a str, Quota, bool)>,
) {
    let databases = context.tenants.get().databases();
    let registry = Arc::new(TenantRegistry::with_tombstones(tenants, databases));
    context.tenants.install(registry.clone());
    apply_quotas(context, &registry);
}

/// Sets each of this core's ranges' share of every tenant's quota (shares
/// by slot count, so the ranges of all cores add up to the quota).
pub fn apply_quotas(context: &CoreContext, registry: &TenantRegistry) {
    for range in context.hosted_ranges() {
        let shard = context.shard(range);
        set_range_quotas(context, range, &mut shard.borrow_mut(), registry);
    }
}

/// Sets `shard`'s (range `range`'s) share of every tenant's quota.
pub fn set_range_quotas(
    context: &CoreContext,
    range: RangeId,
    shard: &mut Shard,
    registry: &TenantRegistry,
) {
    let slots = context.slot_map.slot_range(range);
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
