//! Who may use the admin API, and its user routes (`/v1/users`).
//!
//! With authentication off (the node's `[auth] enabled = false`, the
//! default) every route is open, as before. With it on, every route but
//! the liveness probes (`/health`, `/ready`) needs HTTP basic auth of an
//! enabled `cluster_admin` user, or a bearer token one was given
//! ([`crate::tokens`], `/v1/tokens`): a request without valid credentials gets
//! 401 `unauthenticated` (with `WWW-Authenticate`, so a browser opening the
//! dashboard asks for them), a valid user who is not a cluster admin 403
//! `permission_denied`. `/metrics` is behind it too: Prometheus scrapes
//! with `basic_auth` (docs/security.md says why: the metrics name tenants).
//!
//! A password check costs one Argon2id verification (tens of ms of CPU): it
//! runs on the node's bounded password-checking threads like every front
//! end's (`users::Users::check`; 503 `busy` when too many are queued). The
//! dashboard polls several routes a second, so a successful check is
//! remembered: keyed by a SHA-256 of (a random key of this process, user,
//! password), never the password itself, and forgotten whenever the user
//! list changes. At most [`MAX_REMEMBERED_CREDENTIALS`] are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use crate::api::AppState;
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::users::{hash_password, Access, ChecksBusy, UserError, UserSpec, Users};

/// Successful credential checks remembered (see the module docs).
pub const MAX_REMEMBERED_CREDENTIALS: usize = 64;

/// Routes open without credentials even with authentication on (probes of
/// an orchestrator, which carry none).
const OPEN_ROUTES: [&str; 2] = ["/health", "/ready"];

/// Credentials that passed, by keyed digest, with the user list's
/// generation they passed at.
pub struct RememberedCredentials {
    key: [u8; 32],
    passed: Mutex<HashMap<[u8; 32], (u64, UserSpec)>>,
}

impl Default for RememberedCredentials {
    fn default() -> Self {
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        RememberedCredentials {
            key,
            passed: Mutex::default(),
        }
    }
}

impl RememberedCredentials {
    fn digest(&self, user: &[u8], password: &[u8]) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.key);
        hasher.update((user.len() as u64).to_le_bytes());
        hasher.update(user);
        hasher.update(password);
        hasher.finalize().into()
    }

    fn lookup(&self, digest: &[u8; 32], generation: u64) -> Option<UserSpec> {
        let passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed
            .get(digest)
            .filter(|(at, _)| *at == generation)
            .map(|(_, user)| user.clone())
    }

    fn remember(&self, digest: [u8; 32], generation: u64, user: UserSpec) {
        let mut passed = self.passed.lock().unwrap_or_else(|p| p.into_inner());
        passed.retain(|_, (at, _)| *at == generation);
        if passed.len() >= MAX_REMEMBERED_CREDENTIALS {
            passed.clear();
        }
        passed.insert(digest, (generation, user));
    }
}

fn unauthenticated() -> Response {
    let mut response = ApiError::new(
        ErrorCode::Unauthenticated,
        "authentication required: HTTP basic auth of an enabled user, or a bearer token",
    )
    .into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"tinkerdb\", charset=\"UTF-8\""),
    );
    response
}

/// The user an `Authorization: Basic ...` header names, if its password
/// is right (checked on the node's password-checking threads, bounded:
/// [`ChecksBusy`] when too many are queued).
async fn authenticated_user(
    state: &AppState,
    authorization: Option<String>,
) -> Result<Option<UserSpec>, ChecksBusy> {
    let Some((user, password)) = authorization.as_deref().and_then(basic_credentials) else {
        return Ok(None);
    };
    let users = state.node.users().clone();
    let generation = users.generation();
    let digest = state.credentials.digest(&user, &password);
    if let Some(known) = state.credentials.lookup(&digest, generation) {
        return Ok(Some(known));
    }
    let verified = match users.check(&user, &password) {
        Ok(answered) => answered.await.ok().flatten(),
        Err(busy) => return Err(busy),
    };
    if let Some(verified) = &verified {
        state
            .credentials
            .remember(digest, generation, verified.clone());
    }
    Ok(verified)
}

/// The user and password of an `Authorization: Basic ...` header.
fn basic_credentials(authorization: &str) -> Option<(Vec<u8>, Vec<u8>)> {
    let encoded = authorization.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let colon = decoded.iter().position(|&byte| byte == b':')?;
    Some((decoded[..colon].to_vec(), decoded[colon + 1..].to_vec()))
}

/// Who a request came from, as the gate found (a request extension; absent
/// with authentication off).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The user.
    pub user: UserSpec,
    /// Whether it showed a bearer token (else its password).
    pub by_token: bool,
}

/// The admin API's gate (see the module docs).
pub async fn require_cluster_admin(
    State(state): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if !state.node.users().enabled() || OPEN_ROUTES.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned);
    let token = authorization
        .as_deref()
        .and_then(|value| value.strip_prefix("Bearer "))
        .map(str::trim);
    let found = match token {
        Some(token) => Ok(state
            .tokens
            .resolve(token, state.node.users())
            .map(|user| (user, true))),
        None => authenticated_user(&state, authorization)
            .await
            .map(|user| user.map(|user| (user, false))),
    };
    match found {
        Err(busy) => ApiError::new(ErrorCode::Busy, busy.to_string()).into_response(),
        Ok(None) => unauthenticated(),
        Ok(Some((user, _))) if !user.cluster_admin => ApiError::new(
            ErrorCode::PermissionDenied,
            format!(
                "user {:?} is not a cluster_admin: the admin API is theirs",
                user.name
            ),
        )
        .into_response(),
        Ok(Some((user, by_token))) => {
            request.extensions_mut().insert(Caller { user, by_token });
            next.run(request).await
        }
    }
}

/// What to ask of a new token.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// Its life in seconds (default 3600, at most 30 days).
    pub ttl_seconds: Option<u64>,
}

/// A token just issued: shown once, never again.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct IssuedToken {
    /// Send it as `Authorization: Bearer <token>`.
    pub token: String,
    /// The user it speaks for.
    pub user: String,
    /// When it stops working, Unix milliseconds.
    pub expires_unix_ms: u64,
}

/// How many tokens were revoked.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RevokedTokens {
    /// Tokens of the caller's user that no longer work.
    pub revoked: usize,
}

fn no_tokens_without_authentication() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "authentication is off on this node: there is nothing a token would prove",
    )
}

/// Issues a bearer token for the caller's user (basic auth only: a token
/// cannot mint another).
#[utoipa::path(post, path = "/v1/tokens", tag = "users", request_body = NewToken,
    responses((status = 201, body = IssuedToken),
              (status = 400, description = "The body is not a NewToken", body = ErrorBody),
              (status = 403, description = "Asked with a token", body = ErrorBody),
              (status = 409, description = "Authentication is off", body = ErrorBody),
              (status = 503, description = "Too many live tokens", body = ErrorBody)))]
pub async fn create_token(
    State(state): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    // An empty body asks for the defaults.
    let new: NewToken = match body.is_empty() {
        true => NewToken::default(),
        false => serde_json::from_slice(&body).map_err(|error| {
            ApiError::new(
                ErrorCode::InvalidArgument,
                format!("the body is not a NewToken: {error}"),
            )
        })?,
    };
    let Some(axum::Extension(caller)) = caller else {
        return Err(no_tokens_without_authentication());
    };
    if caller.by_token {
        return Err(ApiError::new(
            ErrorCode::PermissionDenied,
            "a token cannot issue tokens: authenticate with the password (basic auth)",
        ));
    }
    let ttl = new.ttl_seconds.map_or(
        crate::tokens::DEFAULT_TOKEN_TTL,
        std::time::Duration::from_secs,
    );
    let (token, expires_unix_ms) = state
        .tokens
        .issue(&caller.user, ttl)
        .map_err(|full| ApiError::new(ErrorCode::Busy, full.to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            token,
            user: caller.user.name,
            expires_unix_ms,
        }),
    ))
}

/// Revokes every token of the caller's user (on this node).
#[utoipa::path(delete, path = "/v1/tokens", tag = "users",
    responses((status = 200, body = RevokedTokens),
              (status = 409, description = "Authentication is off", body = ErrorBody)))]
pub async fn revoke_tokens(
    State(state): State<AppState>,
    caller: Option<axum::Extension<Caller>>,
) -> Result<Json<RevokedTokens>, ApiError> {
    let Some(axum::Extension(caller)) = caller else {
        return Err(no_tokens_without_authentication());
    };
    Ok(Json(RevokedTokens {
        revoked: state.tokens.revoke_user(&caller.user.name),
    }))
}

/// A user as the API shows it: never its password or hash.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UserStatus {
    /// Name.
    pub name: String,
    /// The tenant its connections act for.
    pub tenant: String,
    /// Whether it may authenticate.
    pub enabled: bool,
    /// Whether it may use the admin API and change users.
    pub cluster_admin: bool,
    /// What it may do in its tenant.
    pub access: Access,
}

impl From<&UserSpec> for UserStatus {
    fn from(user: &UserSpec) -> UserStatus {
        UserStatus {
            name: user.name.clone(),
            tenant: user.tenant.clone(),
            enabled: user.enabled,
            cluster_admin: user.cluster_admin,
            access: user.access,
        }
    }
}

/// A user to create.
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// Name: 1-64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Its password (1-1024 bytes); only its Argon2id hash is kept.
    pub password: String,
    /// The tenant its connections act for (default `default`).
    pub tenant: Option<String>,
    /// Whether it may authenticate (default true).
    pub enabled: Option<bool>,
    /// Whether it may use the admin API and change users (default false).
    pub cluster_admin: Option<bool>,
    /// What it may do in its tenant (default `write`).
    pub access: Option<Access>,
}

/// Changes to a user; absent fields stay as they are.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserChange {
    /// A new password (its open connections are cut off).
    pub password: Option<String>,
    /// Another tenant.
    pub tenant: Option<String>,
    /// Enable or disable (a disabled user's connections are cut off).
    pub enabled: Option<bool>,
    /// Grant or revoke cluster administration.
    pub cluster_admin: Option<bool>,
    /// Another access to its tenant (its open connections are cut off).
    pub access: Option<Access>,
}

fn user_error(error: UserError) -> ApiError {
    let code = match error {
        UserError::Invalid(_) => ErrorCode::InvalidArgument,
        UserError::Unknown(_) => ErrorCode::UnknownUser,
        UserError::Exists(_) => ErrorCode::UserExists,
        UserError::Storage(_) => ErrorCode::StorageFailed,
        UserError::Unavailable(_) => ErrorCode::Unavailable,
    };
    ApiError::new(code, error.to_string())
}

/// Runs a change of the user list on a blocking thread (it hashes and
/// fsyncs).
async fn change_users<T: Send + 'static>(
    users: Arc<Users>,
    change: impl FnOnce(&Users) -> Result<T, UserError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || change(&users))
        .await
        .map_err(|error| ApiError::new(ErrorCode::Internal, error.to_string()))?
        .map_err(user_error)
}

/// The node's tenant list, locked, if `tenant` is a live tenant in it:
/// the caller holds the guard until its user change is made, so no
/// deletion of the tenant runs between the check and the change.
async fn check_tenant<'a>(
    state: &'a AppState,
    tenant: &str,
) -> Result<tokio::sync::MutexGuard<'a, Vec<crate::tenants_file::TenantSpec>>, ApiError> {
    let known = state.node.tenants().lock().await;
    if known
        .iter()
        .any(|spec| spec.name == tenant && !spec.deleted)
    {
        Ok(known)
    } else {
        Err(crate::api::unknown_tenant(tenant))
    }
}

/// Lists the node's users (names and rights; never passwords or hashes).
#[utoipa::path(get, path = "/v1/users", tag = "users",
    responses((status = 200, body = Vec<UserStatus>), (status = 401, body = ErrorBody)))]
pub async fn list_users(State(state): State<AppState>) -> Json<Vec<UserStatus>> {
    Json(
        state
            .node
            .users()
            .list()
            .iter()
            .map(UserStatus::from)
            .collect(),
    )
}

/// Creates a user on this node (kept in its data directory; users are per
/// node until cluster metadata exists).
#[utoipa::path(post, path = "/v1/users", tag = "users", request_body = NewUser,
    responses((status = 201, body = UserStatus), (status = 400, body = ErrorBody),
        (status = 404, description = "No such tenant", body = ErrorBody),
        (status = 409, description = "The user exists", body = ErrorBody)))]
pub async fn create_user(
    State(state): State<AppState>,
    body: Result<Json<NewUser>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<UserStatus>), ApiError> {
    let Json(new) = body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let tenant = new.tenant.unwrap_or_else(|| "default".into());
    let _tenants = check_tenant(&state, &tenant).await?;
    let created = change_users(state.node.users().clone(), move |users| {
        let user = UserSpec {
            password_hash: hash_password(new.password.as_bytes())?,
            name: new.name,
            tenant,
            enabled: new.enabled.unwrap_or(true),
            cluster_admin: new.cluster_admin.unwrap_or(false),
            access: new.access.unwrap_or_default(),
        };
        users.change(|list| {
            if list.iter().any(|known| known.name == user.name) {
                return Err(UserError::Exists(user.name.clone()));
            }
            list.push(user.clone());
            Ok(UserStatus::from(&user))
        })
    })
    .await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Changes a user: password, tenant, enabled, cluster_admin, access.
#[utoipa::path(put, path = "/v1/users/{user}", tag = "users", request_body = UserChange,
    params(("user" = String, Path, description = "User name")),
    responses((status = 200, body = UserStatus), (status = 400, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn change_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Result<Json<UserChange>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<UserStatus>, ApiError> {
    let Json(change) =
        body.map_err(|e| ApiError::new(ErrorCode::InvalidArgument, e.body_text()))?;
    let _tenants = match &change.tenant {
        Some(tenant) => Some(check_tenant(&state, tenant).await?),
        None => None,
    };
    let changed = change_users(state.node.users().clone(), move |users| {
        let new_hash = match &change.password {
            Some(password) => Some(hash_password(password.as_bytes())?),
            None => None,
        };
        users.change(|list| {
            let Some(user) = list.iter_mut().find(|user| user.name == name) else {
                return Err(UserError::Unknown(name.clone()));
            };
            if let Some(hash) = new_hash {
                user.password_hash = hash;
            }
            if let Some(tenant) = change.tenant {
                user.tenant = tenant;
            }
            if let Some(enabled) = change.enabled {
                user.enabled = enabled;
            }
            if let Some(admin) = change.cluster_admin {
                user.cluster_admin = admin;
            }
            if let Some(access) = change.access {
                user.access = access;
            }
            Ok(UserStatus::from(&*user))
        })
    })
    .await?;
    Ok(Json(changed))
}

/// Deletes a user; its open connections are cut off at their next request.
#[utoipa::path(delete, path = "/v1/users/{user}", tag = "users",
    params(("user" = String, Path, description = "User name")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_user(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    change_users(state.node.users().clone(), move |users| {
        users.change(|list| {
            let before = list.len();
            list.retain(|user| user.name != name);
            if list.len() == before {
                return Err(UserError::Unknown(name.clone()));
            }
            Ok(())
        })
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}
