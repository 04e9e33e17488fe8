//! A client's session: the tenant its requests act for, and how it reads.
//! [`Session::open`] is the one place a session is made, for every front
//! end (flatbuffers Hello, RESP's start, AUTH and SELECT, the admin API):
//! the issue "Security and tracing" turns it into authentication.

use std::sync::Arc;

use tinkerdb_schemas::wire::ErrorCode;
use tinkerdb_storage::TenantId;

use crate::config::DEFAULT_TENANT;
use crate::error::ProtocolError;
use crate::shard::ShardRequest;
use crate::tenants::CoreTenants;

/// The tenant a connection is bound to after Hello.
#[derive(Clone)]
pub struct Session {
    pub(crate) tenant: TenantId,
    pub(crate) tenant_name: Arc<str>,
    /// Reads may skip the read index in cluster mode (Hello's
    /// `read_consistency = Stale`).
    pub(crate) stale_reads: bool,
}

impl Session {
    /// The session of a client of tenant `name` (empty: `default`): the
    /// one place a session is made. `UnknownTenant` when this node defines
    /// no such tenant.
    pub fn open(
        tenants: &CoreTenants,
        name: &str,
        stale_reads: bool,
    ) -> Result<Session, ProtocolError> {
        let name = if name.is_empty() {
            DEFAULT_TENANT
        } else {
            name
        };
        let Some(tenant) = tenants.by_name(name) else {
            return Err(ProtocolError::new(
                ErrorCode::UnknownTenant,
                format!("tenant {name:?} is not defined on this node"),
            ));
        };
        Ok(Session {
            tenant: tenant.id,
            tenant_name: tenant.name,
            stale_reads,
        })
    }

    /// `request` as this session reads: marked [`ShardRequest::Stale`] when
    /// it is a read and the session opted in to stale reads.
    pub fn reading(&self, request: ShardRequest) -> ShardRequest {
        if self.stale_reads && request.is_read() {
            ShardRequest::Stale(Box::new(request))
        } else {
            request
        }
    }
}
