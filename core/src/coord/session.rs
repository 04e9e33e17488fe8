//! A client's session: who it is (with authentication on), the tenant its
//! requests act for, and how it reads. [`Session::open`] (authentication
//! off) and [`Session::for_user`] (on) are the places a session is made,
//! for every front end (flatbuffers Hello, RESP's start, AUTH and SELECT).
//!
//! Authentication (`tinkerdb_admin::users`): a front end checks a password
//! with [`authenticate`], which runs the Argon2id verification on the
//! core's blocking thread (never on the core itself), then opens the
//! session for the user. Before each request it asks [`Session::admission`]:
//! one atomic load while the user list is unchanged; after a change the
//! session's user is looked up again, and a deleted or disabled user, or
//! one whose password changed, is cut off.

use std::sync::Arc;

use tinkerdb_admin::users::{UserSpec, Users};

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
    /// The user's name.
    pub name: Arc<str>,
    /// The hash its password was checked against (a new password cuts the
    /// session off).
    password_hash: Arc<str>,
    /// May change users (`ACL SETUSER`).
    pub cluster_admin: bool,
    /// The user list's generation it was last found valid at.
    checked_at: std::cell::Cell<u64>,
}

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

/// The user `name` if `password` is its password: one Argon2id
/// verification, on this core's blocking thread (glommio runs one per
/// executor, so verifications of a core queue there and never run on the
/// core itself), at the lowest CPU priority ([`PASSWORD_CHECK_NICE`]).
/// Every kind of failure answers `None`, after the same work.
pub async fn authenticate(users: &Arc<Users>, name: &[u8], password: &[u8]) -> Option<UserSpec> {
    let (users, name, password) = (users.clone(), name.to_vec(), password.to_vec());
    glommio::executor()
        .spawn_blocking(move || {
            lower_this_threads_priority();
            users.verify(&name, &password)
        })
        .await
}

/// The nice value of the threads that check passwords: the lowest
/// priority. A shard core and a password check share the CPUs; at nice 19
/// the scheduler gives the cores the CPU whenever they want it, so a flood
/// of `AUTH`s (37 ms of CPU each) slows other logins, not the data path.
pub const PASSWORD_CHECK_NICE: libc::c_int = 19;

/// Lowers the calling thread's priority to [`PASSWORD_CHECK_NICE`], once
/// per thread (on Linux a nice value is per thread: `setpriority` with
/// `PRIO_PROCESS` and 0 changes the calling thread only).
fn lower_this_threads_priority() {
    thread_local! {
        static LOWERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    LOWERED.with(|lowered| {
        if !lowered.replace(true) {
            // SAFETY: setpriority reads no memory of ours; failure only
            // leaves the thread at the priority it had.
            #[allow(unsafe_code)]
            let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, PASSWORD_CHECK_NICE) };
            if result != 0 {
                tracing::debug!(
                    error = %std::io::Error::last_os_error(),
                    "cannot lower the password-check thread's priority"
                );
            }
        }
    });
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
            name: Arc::from(user.name.as_str()),
            password_hash: Arc::from(user.password_hash.as_str()),
            cluster_admin: user.cluster_admin,
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
        if users.still_valid(&user.name, &user.password_hash) {
            user.checked_at.set(generation);
            Admission::Admitted
        } else {
            Admission::Revoked
        }
    }

    /// Whether this session may administer users: a `cluster_admin` user,
    /// or anyone with authentication off.
    pub fn may_administer(&self, users: &Users) -> bool {
        !users.enabled() || self.user.as_ref().is_some_and(|user| user.cluster_admin)
    }

    /// The name `ACL WHOAMI` answers: the user, or `default`.
    pub fn user_name(&self) -> &str {
        self.user.as_ref().map_or("default", |user| &user.name)
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
