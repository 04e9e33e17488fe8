//! A client's session: who it is (with authentication on), the tenant its
//! requests act for, and how it reads. [`Session::open`] (authentication
//! off) and [`Session::for_user`] (on) are the places a session is made,
//! for every front end (flatbuffers Hello, RESP's start, AUTH and SELECT).
//!
//! Authentication (`tinkerdb_admin::users`): a front end checks a password
//! with [`authenticate`], which queues the Argon2id verification on the
//! node's password-checking threads (never on a core), then opens the
//! session for the user. Before each request it asks [`Session::admission`]:
//! one atomic load while the user list is unchanged; after a change the
//! session's user is looked up again, and a user deleted or changed in any
//! way (disabled, a new password, another tenant, rights taken away) is
//! cut off.

use std::sync::Arc;

use tinkerdb_admin::users::{Access, ChecksBusy, UserSpec, Users};

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
    /// The user this session authenticated as; `None` before it has (with
    /// authentication off, sessions need none).
    pub(crate) user: Option<SessionUser>,
}

/// The user of an authenticated session.
#[derive(Clone)]
pub struct SessionUser {
    /// The user as it was when the session authenticated: any change of it
    /// since (a new password, another tenant, rights taken away, disabled)
    /// cuts the session off.
    spec: Arc<UserSpec>,
    /// The user list's generation it was last found unchanged at.
    checked_at: std::cell::Cell<u64>,
}

/// How long a connection to a node with authentication on may take to
/// authenticate, counted from its accept (not from its last byte: a
/// stranger dripping a byte now and then is closed all the same), before
/// the node closes it: strangers cannot hold `max_connections_per_core`.
pub const AUTHENTICATION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether a session may run its next request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Yes (authenticated, or authentication is off).
    Admitted,
    /// Authentication is on and the session has not authenticated.
    NotAuthenticated,
    /// Its user was deleted, disabled or given a new password: the front
    /// end cuts the connection off.
    Revoked,
}

/// The user `name` if `password` is its password (`Ok(None)`: no such
/// user, disabled, or wrong: every failure alike, after the same work).
/// The Argon2id verification runs on the node's password-checking threads
/// (`tinkerdb_admin::users`), never on this core; `Err` when too many
/// checks are queued (nothing was checked: retry later).
pub async fn authenticate(
    users: &Arc<Users>,
    name: &[u8],
    password: &[u8],
) -> Result<Option<UserSpec>, ChecksBusy> {
    let answered = users.check(name, password)?;
    Ok(answered.await.ok().flatten())
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
            user: None,
        })
    }

    /// The session of `user`, authenticated while the user list was at
    /// `generation` (read before the password was checked, so a change
    /// made meanwhile is seen at the first request): acts for the user's
    /// tenant. `UnknownTenant` when this node does not define it.
    pub fn for_user(
        tenants: &CoreTenants,
        user: &UserSpec,
        generation: u64,
        stale_reads: bool,
    ) -> Result<Session, ProtocolError> {
        let mut session = Session::open(tenants, &user.tenant, stale_reads)?;
        session.user = Some(SessionUser {
            spec: Arc::new(user.clone()),
            checked_at: std::cell::Cell::new(generation),
        });
        Ok(session)
    }

    /// Whether this session may run a request now (see the module docs).
    pub fn admission(&self, users: &Users) -> Admission {
        if !users.enabled() {
            return Admission::Admitted;
        }
        let Some(user) = &self.user else {
            return Admission::NotAuthenticated;
        };
        let generation = users.generation();
        if user.checked_at.get() == generation {
            return Admission::Admitted;
        }
        let unchanged = users
            .get(&user.spec.name)
            .is_some_and(|now| now.enabled && now == *user.spec);
        if unchanged {
            user.checked_at.set(generation);
            Admission::Admitted
        } else {
            Admission::Revoked
        }
    }

    /// Whether this session may administer the node (snapshots, users):
    /// a `cluster_admin` user (as of the last [`Session::admission`], which
    /// runs before every request), or anyone with authentication off.
    pub fn may_administer(&self, users: &Users) -> bool {
        !users.enabled()
            || self
                .user
                .as_ref()
                .is_some_and(|user| user.spec.cluster_admin)
    }

    /// Whether this session may run `request` (a shard request, before it
    /// is routed): with authentication on, a write needs the user's
    /// `write` access to its tenant, emptying a keyspace (`Flush`) its
    /// `admin` access, a snapshot a `cluster_admin` user. Checked by the
    /// coordinator for every front end (`Pipeline::submit`,
    /// `execute_multi`'s fan-outs and one-shard calls, RESP's flushes).
    pub fn may_run(&self, request: &ShardRequest) -> Result<(), ProtocolError> {
        let needed = match request {
            ShardRequest::Snapshot => {
                return match &self.user {
                    Some(user) if !user.spec.cluster_admin => Err(ProtocolError::new(
                        ErrorCode::PermissionDenied,
                        format!(
                            "user {} is not a cluster admin: a snapshot needs cluster_admin",
                            user.spec.name
                        ),
                    )),
                    _ => Ok(()),
                }
            }
            ShardRequest::Flush { .. } => Access::Admin,
            ShardRequest::Batch(requests) => {
                return requests
                    .iter()
                    .try_for_each(|request| self.may_run(request))
            }
            ShardRequest::Stale(request) => return self.may_run(request),
            request if request.is_write() => Access::Write,
            _ => Access::Read,
        };
        self.requires(needed)
    }

    /// Whether this session's user has at least `needed` access to its
    /// tenant (always, with authentication off: strangers are stopped by
    /// [`Session::admission`] before any request).
    pub fn requires(&self, needed: Access) -> Result<(), ProtocolError> {
        let Some(user) = &self.user else {
            return Ok(());
        };
        if user.spec.access >= needed {
            return Ok(());
        }
        Err(ProtocolError::new(
            ErrorCode::PermissionDenied,
            format!(
                "user {} has {} access to tenant {}: this needs {}",
                user.spec.name,
                user.spec.access.name(),
                user.spec.tenant,
                needed.name()
            ),
        ))
    }

    /// The name `ACL WHOAMI` answers: the user, or `default`.
    pub fn user_name(&self) -> &str {
        self.user.as_ref().map_or("default", |user| &user.spec.name)
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
