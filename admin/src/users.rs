//! Users, their password hashes, and the check of a password: the one
//! directory every front end authenticates against (RESP `AUTH`/`HELLO`,
//! the flatbuffers `Hello`, the admin API's HTTP basic auth).
//!
//! # What is stored
//! A user is a name, an Argon2id hash of its password (a PHC string:
//! algorithm, parameters, salt and hash; never the password itself), the
//! tenant its connections act for and its [`Access`] there (read, write,
//! admin), whether it is enabled, and whether it administers the cluster
//! (`cluster_admin`: the admin API, snapshots, `ACL SETUSER`).
//! Users come from the config file (`[[auth.users]]`, hashes made with
//! `tinkerdb --hash-password`) and from `<data_dir>/users.json`, which
//! records what changed at runtime: users made or changed (they override
//! the config's, as `tenants.json` does for tenants) and the names of
//! config users deleted (they stay deleted after a restart). A config user
//! never changed at runtime follows the config file (a rotated hash there
//! takes effect at the next start).
//!
//! # In a cluster
//! The runtime changes are the cluster's, not the node's: each node keeps
//! its config file's users, and the changes made at runtime on any node
//! (users made, changed, deleted) are agreed on in the cluster metadata
//! group and applied by every node over its own config users
//! ([`UserOverlay`], [`Users::apply_agreed`]). The node sets a
//! [`Replicator`] at start ([`Users::set_replicator`]); a change then
//! computes the new list as on a standalone node, checks it, and hands
//! what differs ([`UserOp`]s) to the replicator, which returns once the
//! cluster agreed and this node applied it. `users.json` then holds the
//! cluster's overlay as this node last applied it, so a restarted node
//! starts with it before its metadata replica catches up.
//!
//! # Checking a password
//! [`Users::verify`] costs one Argon2id verification (about 37 ms of CPU
//! here with the default parameters: m = 19 MiB, t = 2, p = 1, the only
//! ones accepted), so front ends never run it themselves: they queue it
//! with [`Users::check`] on the node's [`PASSWORD_CHECK_THREADS`] checking
//! threads, which run at nice [`PASSWORD_CHECK_NICE`] (the cores and the
//! admin plane always win the CPU), behind a queue of at most
//! [`MAX_QUEUED_PASSWORD_CHECKS`]. A full queue answers
//! [`ChecksBusy`] at once: a flood of logins costs a bounded amount of CPU
//! and memory (19 MiB per check running), never the data path. An unknown
//! or disabled user is checked against a dummy hash of the same
//! parameters, so every failure costs the same and answers the same: a
//! client cannot tell "no such user" from "wrong password" by the answer
//! or by its time. The hash comparison itself is constant-time (the
//! `argon2` crate).
//!
//! # Changes and open connections
//! A change ([`Users::change`]) writes the new list durably (temporary
//! file, fsync, rename, directory fsync; mode 0600) before anyone sees it,
//! then swaps it in and raises [`Users::generation`]. A session remembers
//! the generation it last checked its user at; when it differs, the
//! session looks its user up again ([`Users::get`]) before its next
//! request and is cut off if the user was deleted or changed in any way
//! (disabled, a new password, another tenant, rights taken away). Reading
//! the generation is one atomic load: the data path takes no lock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordVerifier, SaltString};
use argon2::{Argon2, Params, PasswordHasher};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Name of the file in the data directory holding users made at runtime.
pub const USERS_FILE: &str = "users.json";

/// Longest user name, in bytes.
pub const MAX_USER_NAME_BYTES: usize = 64;

/// Longest password accepted, in bytes (Argon2 takes any length; a bound
/// keeps a hostile client from making the node hash megabytes).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// The answer to every failed authentication, byte for byte Redis's:
/// unknown user, wrong password and disabled user are not told apart.
pub const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Redis's answer to a command sent before authenticating.
pub const NOAUTH: &str = "NOAUTH Authentication required.";

/// One user, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    /// Name: 1-64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Argon2id hash of the password, as a PHC string (`$argon2id$...`).
    pub password_hash: String,
    /// The tenant the user's connections act for.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// A disabled user cannot authenticate (its open connections are cut
    /// off at their next request).
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// May use the admin API and change users (`ACL SETUSER`).
    #[serde(default)]
    pub cluster_admin: bool,
    /// What the user may do in its tenant (default `write`).
    #[serde(default)]
    pub access: Access,
}

/// What a user may do in its tenant: a role on one tenant, as etcd's roles
/// are on key ranges. Each level includes the one before.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    /// Reads only (GET, MGET, EXISTS, SCAN, KEYS, DBSIZE, TTL...).
    Read,
    /// Reads and writes of keys.
    #[default]
    Write,
    /// Also the commands that empty the tenant's keyspace (FLUSHDB,
    /// FLUSHALL).
    Admin,
}

impl Access {
    /// Its name, as written in the config and `ACL LIST`.
    pub fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Admin => "admin",
        }
    }
}

fn default_tenant() -> String {
    "default".into()
}

fn enabled_by_default() -> bool {
    true
}

/// Why a user change or a password could not be taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// A bad name, password or hash; the message says which.
    Invalid(String),
    /// No such user.
    Unknown(String),
    /// The user exists already.
    Exists(String),
    /// The users file could not be written (nothing changed).
    Storage(String),
    /// Cluster mode: the cluster could not agree on the change (no quorum
    /// in the metadata group before the deadline): it may or may not
    /// apply later, as a write whose answer was lost.
    Unavailable(String),
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::Invalid(why) | UserError::Storage(why) | UserError::Unavailable(why) => {
                f.write_str(why)
            }
            UserError::Unknown(name) => write!(f, "user {name:?} does not exist"),
            UserError::Exists(name) => write!(f, "user {name:?} already exists"),
        }
    }
}

impl std::error::Error for UserError {}

/// Whether `name` is an acceptable user name (the rule of tenant names).
pub fn valid_user_name(name: &str) -> bool {
    crate::tenants_file::valid_name(name, MAX_USER_NAME_BYTES)
}

/// Hashes `password` with Argon2id (default parameters, a fresh random
/// salt). Blocking: about as long as a verification.
pub fn hash_password(password: &[u8]) -> Result<String, UserError> {
    if password.is_empty() || password.len() > MAX_PASSWORD_BYTES {
        return Err(UserError::Invalid(format!(
            "a password is 1-{MAX_PASSWORD_BYTES} bytes"
        )));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password, &salt)
        .map(|hash| hash.to_string())
        .map_err(|error| UserError::Invalid(format!("cannot hash the password: {error}")))
}

/// Checks that `hash` is an Argon2id PHC string with the default
/// parameters (those of [`hash_password`] and of the dummy hash: a user
/// whose hash took longer to check than an unknown name's would tell an
/// attacker that the user exists).
pub fn check_hash(hash: &str) -> Result<(), UserError> {
    let parsed = PasswordHash::new(hash)
        .map_err(|error| UserError::Invalid(format!("not a PHC password hash: {error}")))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(UserError::Invalid(format!(
            "password hashes must be argon2id, not {}",
            parsed.algorithm
        )));
    }
    let params = Params::try_from(&parsed)
        .map_err(|error| UserError::Invalid(format!("bad argon2id parameters: {error}")))?;
    let default = Params::default();
    if (params.m_cost(), params.t_cost(), params.p_cost())
        != (default.m_cost(), default.t_cost(), default.p_cost())
    {
        return Err(UserError::Invalid(format!(
            "password hashes must use argon2id's default parameters (m={}, t={}, p={}): \
             make them with `tinkerdb --hash-password`",
            default.m_cost(),
            default.t_cost(),
            default.p_cost()
        )));
    }
    Ok(())
}

/// Checks a user as given by the config file or an API call.
pub fn check_user(user: &UserSpec) -> Result<(), UserError> {
    if !valid_user_name(&user.name) {
        return Err(UserError::Invalid(format!(
            "user name {:?} must be 1-{MAX_USER_NAME_BYTES} bytes of [A-Za-z0-9_.-]",
            user.name
        )));
    }
    check_hash(&user.password_hash)
}

/// Threads that check passwords (see the module docs).
pub const PASSWORD_CHECK_THREADS: usize = 2;

/// Password checks waiting for a checking thread before [`Users::check`]
/// answers [`ChecksBusy`].
pub const MAX_QUEUED_PASSWORD_CHECKS: usize = 64;

/// The nice value of the password-checking threads: the lowest priority,
/// so the shard cores and the admin plane always win the CPU and a flood of
/// logins slows other logins, not the data path.
pub const PASSWORD_CHECK_NICE: libc::c_int = 19;

/// Too many password checks are queued: the attempt is refused at once
/// (retry later); nothing was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChecksBusy;

impl std::fmt::Display for ChecksBusy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too many logins in progress ({MAX_QUEUED_PASSWORD_CHECKS} password checks queued): retry later"
        )
    }
}

type CheckJob = Box<dyn FnOnce() + Send>;

/// Starts the checking threads; answers the queue that feeds them.
fn start_checkers() -> std::sync::mpsc::SyncSender<CheckJob> {
    let (sender, receiver) = std::sync::mpsc::sync_channel::<CheckJob>(MAX_QUEUED_PASSWORD_CHECKS);
    let receiver = Arc::new(Mutex::new(receiver));
    for index in 0..PASSWORD_CHECK_THREADS {
        let receiver = receiver.clone();
        let spawned = std::thread::Builder::new()
            .name(format!("tinkerdb-password-{index}"))
            .spawn(move || {
                lower_this_threads_priority();
                loop {
                    // The lock is held only while waiting for a job.
                    let job = receiver
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .recv();
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // the node is going away
                    }
                }
            });
        if let Err(error) = spawned {
            tracing::error!(%error, "cannot start a password-checking thread");
        }
    }
    sender
}

/// Lowers the calling thread (one of ours) to [`PASSWORD_CHECK_NICE`]: on
/// Linux a nice value is per thread, and `setpriority(PRIO_PROCESS, 0)`
/// changes the calling thread only.
fn lower_this_threads_priority() {
    // SAFETY: setpriority reads no memory of ours; a failure leaves the
    // thread at the priority it had.
    #[allow(unsafe_code)]
    let result = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, PASSWORD_CHECK_NICE) };
    if result != 0 {
        tracing::warn!(
            error = %std::io::Error::last_os_error(),
            "cannot lower the password-checking thread's priority"
        );
    }
}

/// One change of one user, as a cluster agrees on it (see the module
/// docs, "In a cluster").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UserOp {
    /// Make or replace the user.
    Put(UserSpec),
    /// Delete the user (a config user included).
    Delete(String),
}

/// The runtime user changes a cluster agreed on, applied by each node over
/// its config's users.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserOverlay {
    /// Users made or changed, by name.
    pub users: std::collections::BTreeMap<String, UserSpec>,
    /// Users deleted, by name (a user is in one of the two at most).
    pub deleted: std::collections::BTreeSet<String>,
}

impl UserOverlay {
    /// Applies one agreed change.
    pub fn apply(&mut self, op: UserOp) {
        match op {
            UserOp::Put(user) => {
                self.deleted.remove(&user.name);
                self.users.insert(user.name.clone(), user);
            }
            UserOp::Delete(name) => {
                self.users.remove(&name);
                self.deleted.insert(name);
            }
        }
    }

    fn as_runtime(&self) -> RuntimeUsers {
        RuntimeUsers {
            users: self.users.values().cloned().collect(),
            deleted: self.deleted.iter().cloned().collect(),
        }
    }
}

/// Cluster mode: proposes user changes to the cluster and returns once
/// they are agreed and applied on this node (or why not). Called from the
/// blocking thread a change runs on, never from a core.
pub type Replicator = Box<dyn Fn(Vec<UserOp>) -> Result<(), UserError> + Send + Sync>;

/// What differs from `old` to `new`, as changes of single users.
fn user_ops(old: &[UserSpec], new: &[UserSpec]) -> Vec<UserOp> {
    let changed = new
        .iter()
        .filter(|user| !old.contains(user))
        .map(|user| UserOp::Put(user.clone()));
    let deleted = old
        .iter()
        .filter(|user| !new.iter().any(|kept| kept.name == user.name))
        .map(|user| UserOp::Delete(user.name.clone()));
    changed.chain(deleted).collect()
}

/// What `users.json` holds: the runtime changes over the config's users.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuntimeUsers {
    /// Users made or changed at runtime (override the config's).
    users: Vec<UserSpec>,
    /// Config users deleted at runtime.
    deleted: Vec<String>,
}

/// The config's users with `runtime` applied.
fn merge(config: &[UserSpec], runtime: &RuntimeUsers) -> Vec<UserSpec> {
    let mut list: Vec<UserSpec> = config
        .iter()
        .filter(|user| !runtime.deleted.contains(&user.name))
        .cloned()
        .collect();
    for user in &runtime.users {
        match list.iter_mut().find(|known| known.name == user.name) {
            Some(known) => *known = user.clone(),
            None => list.push(user.clone()),
        }
    }
    list
}

/// What differs between `list` and the config's users (the inverse of
/// [`merge`]).
fn runtime_changes(config: &[UserSpec], list: &[UserSpec]) -> RuntimeUsers {
    RuntimeUsers {
        users: list
            .iter()
            .filter(|user| !config.contains(user))
            .cloned()
            .collect(),
        deleted: config
            .iter()
            .filter(|user| !list.iter().any(|kept| kept.name == user.name))
            .map(|user| user.name.clone())
            .collect(),
    }
}

/// The node's users (see the module docs).
pub struct Users {
    enabled: bool,
    data_dir: Option<PathBuf>,
    /// The config file's users (`users.json` records changes over them).
    config: Vec<UserSpec>,
    /// The queue of the checking threads, started at the first check.
    checkers: std::sync::OnceLock<std::sync::mpsc::SyncSender<CheckJob>>,
    list: RwLock<Arc<Vec<UserSpec>>>,
    generation: AtomicU64,
    /// Held by a change from reading the list to publishing it.
    writer: Mutex<()>,
    /// What an unknown or disabled user's password is checked against
    /// (empty with authentication off).
    dummy_hash: String,
    /// Cluster mode: where changes go to be agreed on.
    replicator: std::sync::OnceLock<Replicator>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users")
            .field("enabled", &self.enabled)
            .field("users", &self.list().len())
            .finish_non_exhaustive()
    }
}

impl Users {
    /// The directory: the config's users with `data_dir`'s saved changes
    /// applied; `enabled` says whether clients must authenticate. With
    /// authentication on, at least one enabled `cluster_admin` user must
    /// exist (else nobody could administer the node). Blocking (one hash
    /// for the dummy user, a file read).
    pub fn open(
        enabled: bool,
        config: Vec<UserSpec>,
        data_dir: Option<&Path>,
    ) -> anyhow::Result<Users> {
        let saved = match data_dir {
            Some(dir) => load(dir)?,
            None => RuntimeUsers::default(),
        };
        for user in &saved.users {
            // Made or changed at runtime, maybe by anyone while
            // authentication was off: the operator should see them.
            tracing::info!(
                user = %user.name,
                tenant = %user.tenant,
                enabled = user.enabled,
                cluster_admin = user.cluster_admin,
                "user from users.json (made or changed at runtime)"
            );
        }
        let list = merge(&config, &saved);
        for user in &list {
            check_user(user).map_err(|error| anyhow::anyhow!("user {:?}: {error}", user.name))?;
        }
        if enabled && !list.iter().any(|user| user.enabled && user.cluster_admin) {
            anyhow::bail!(
                "authentication is on but no enabled user has cluster_admin = true: add one to \
                 the config file ([[auth.users]] with a password_hash from `tinkerdb --hash-password`)"
            );
        }
        // Only a node that checks passwords needs it (a hash costs tens of
        // ms: not paid at every start of a node without authentication).
        // Without it, an unknown user's check fails at once: with
        // authentication off no client's password is ever checked.
        let dummy_hash = match enabled {
            true => hash_password(b"no user has this password: it is random")?,
            false => String::new(),
        };
        Ok(Users {
            enabled,
            data_dir: data_dir.map(Path::to_owned),
            config,
            checkers: std::sync::OnceLock::new(),
            list: RwLock::new(Arc::new(list)),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
            dummy_hash,
            replicator: std::sync::OnceLock::new(),
        })
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Raised by every change; a session whose user was checked at an older
    /// generation looks its user up again ([`Users::get`]).
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The current list (a snapshot: changes after this call are not in it).
    pub fn list(&self) -> Arc<Vec<UserSpec>> {
        self.list
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The user `name`, if it exists.
    pub fn get(&self, name: &str) -> Option<UserSpec> {
        self.list().iter().find(|user| user.name == name).cloned()
    }

    /// Queues a check of `password` for user `name` on the checking
    /// threads; the answer arrives on the returned channel (`None`: no
    /// such user, disabled, or a wrong password; a dropped channel means
    /// the same). [`ChecksBusy`] at once when the queue is full.
    pub fn check(
        self: &Arc<Self>,
        name: &[u8],
        password: &[u8],
    ) -> Result<futures::channel::oneshot::Receiver<Option<UserSpec>>, ChecksBusy> {
        let (answer, answered) = futures::channel::oneshot::channel();
        let (users, name, password) = (self.clone(), name.to_vec(), password.to_vec());
        let job: CheckJob = Box::new(move || {
            let _ = answer.send(users.verify(&name, &password));
        });
        self.checkers
            .get_or_init(start_checkers)
            .try_send(job)
            .map_err(|_| ChecksBusy)?;
        Ok(answered)
    }

    /// The user `name` if `password` is its password and it is enabled.
    /// Blocking (one Argon2id verification, the same cost whatever fails):
    /// run it on a blocking thread.
    pub fn verify(&self, name: &[u8], password: &[u8]) -> Option<UserSpec> {
        let user = std::str::from_utf8(name)
            .ok()
            .and_then(|name| self.get(name))
            .filter(|user| user.enabled);
        let hash = user
            .as_ref()
            .map_or(self.dummy_hash.as_str(), |user| user.password_hash.as_str());
        // An over-long password is checked too (truncated), so that it
        // takes as long as any other failure.
        let checked = &password[..password.len().min(MAX_PASSWORD_BYTES)];
        let matches = PasswordHash::new(hash)
            .is_ok_and(|parsed| Argon2::default().verify_password(checked, &parsed).is_ok());
        (matches && password.len() <= MAX_PASSWORD_BYTES)
            .then_some(user)
            .flatten()
    }

    /// Applies `change` to the list, saves it (when the node has a data
    /// directory) and publishes it; answers what `change` answered.
    /// Nothing changes if `change` or the save fails. Blocking (a file
    /// write and fsyncs): run it on a blocking thread.
    pub fn change<T>(
        &self,
        change: impl FnOnce(&mut Vec<UserSpec>) -> Result<T, UserError>,
    ) -> Result<T, UserError> {
        let one_writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let old = self.list();
        let mut list = old.as_ref().clone();
        let answer = change(&mut list)?;
        for user in &list {
            check_user(user)?;
        }
        if self.enabled && !list.iter().any(|user| user.enabled && user.cluster_admin) {
            return Err(UserError::Invalid(
                "the change would leave no enabled cluster_admin user".into(),
            ));
        }
        if let Some(replicate) = self.replicator.get() {
            // The cluster's turn: what differs goes through the metadata
            // group, whose apply on this node ([`Users::apply_agreed`])
            // takes the writer's lock again.
            drop(one_writer);
            let ops = user_ops(&old, &list);
            if !ops.is_empty() {
                replicate(ops)?;
            }
            return Ok(answer);
        }
        self.save_and_publish(&runtime_changes(&self.config, &list), list)?;
        Ok(answer)
    }

    /// Saves `runtime` (the changes over the config that make `list`) to
    /// `users.json`, then makes `list` the one everyone sees and raises
    /// the generation. The caller holds the writer's lock.
    fn save_and_publish(
        &self,
        runtime: &RuntimeUsers,
        list: Vec<UserSpec>,
    ) -> Result<(), UserError> {
        if let Some(dir) = &self.data_dir {
            save(dir, runtime).map_err(|error| {
                UserError::Storage(format!("cannot save the user list: {error}"))
            })?;
        }
        *self
            .list
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(list);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

impl Users {
    /// Cluster mode: from now on, changes go through `replicator` (set
    /// once, at start; a second call is ignored). [`Users::change`] then
    /// blocks on it: it must never run on a core's thread.
    pub fn set_replicator(&self, replicator: Replicator) {
        let _ = self.replicator.set(replicator);
    }

    /// Cluster mode: the cluster agreed on `overlay` (every runtime change
    /// so far): this node's list becomes its config's users with the
    /// overlay applied, saved to `users.json` before anyone sees it. Users
    /// the overlay would make invalid here (a hash this version does not
    /// accept) are left out, with a warning. Blocking (a file write and
    /// fsyncs).
    pub fn apply_agreed(&self, overlay: &UserOverlay) -> Result<(), UserError> {
        let _one_writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let runtime = overlay.as_runtime();
        let list: Vec<UserSpec> = merge(&self.config, &runtime)
            .into_iter()
            .filter(|user| match check_user(user) {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(user = %user.name, %error, "an agreed user is not valid here");
                    false
                }
            })
            .collect();
        self.save_and_publish(&runtime, list)
    }
}

/// The runtime changes saved in `data_dir` (none if the file does not
/// exist).
fn load(data_dir: &Path) -> anyhow::Result<RuntimeUsers> {
    let path = data_dir.join(USERS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(RuntimeUsers::default()),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces the saved runtime changes with `users`, durably, readable by
/// the node's own user only (the hashes are not passwords, but they would
/// let an attacker guess offline).
fn save(data_dir: &Path, users: &RuntimeUsers) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let temp = data_dir.join(format!("{USERS_FILE}.tmp"));
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(users).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temp, data_dir.join(USERS_FILE))?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_change_becomes_single_user_ops_that_rebuild_it_on_another_node() {
        let config = vec![user("admin", "a", true), user("carol", "c", false)];
        let old = config.clone();
        let mut new = old.clone();
        new.retain(|user| user.name != "carol");
        new.push(user("dave", "d", false));
        new[0].enabled = false;
        let ops = user_ops(&old, &new);
        assert_eq!(ops.len(), 3, "{ops:?}");
        // Another node with the same config users ends with the same list.
        let mut overlay = UserOverlay::default();
        for op in ops {
            overlay.apply(op);
        }
        let rebuilt = merge(&config, &overlay.as_runtime());
        let names = |list: &[UserSpec]| {
            let mut names: Vec<_> = list.iter().map(|u| (u.name.clone(), u.enabled)).collect();
            names.sort();
            names
        };
        assert_eq!(names(&rebuilt), names(&new));
        assert!(user_ops(&new, &new).is_empty());
    }

    fn user(name: &str, password: &str, admin: bool) -> UserSpec {
        UserSpec {
            name: name.into(),
            password_hash: hash_password(password.as_bytes()).unwrap(),
            tenant: "default".into(),
            enabled: true,
            cluster_admin: admin,
            access: Access::Write,
        }
    }

    #[test]
    fn passwords_are_checked_and_every_failure_looks_the_same() {
        let users = Users::open(
            true,
            vec![user("admin", "s3cret", true), user("bob", "hunter2", false)],
            None,
        )
        .unwrap();
        assert_eq!(users.verify(b"admin", b"s3cret").unwrap().name, "admin");
        assert_eq!(users.verify(b"bob", b"hunter2").unwrap().name, "bob");
        for (name, password) in [
            (&b"admin"[..], &b"s3cret!"[..]),
            (b"admin", b""),
            (b"admin", b"hunter2"),
            (b"nobody", b"s3cret"),
            (b"\xff\xfe", b"s3cret"),
        ] {
            assert_eq!(users.verify(name, password), None, "{name:?} {password:?}");
        }
        users
            .change(|list| {
                list[1].enabled = false;
                Ok(())
            })
            .unwrap();
        assert_eq!(users.verify(b"bob", b"hunter2"), None, "disabled");
        assert_eq!(users.generation(), 1);
    }

    #[test]
    fn a_change_is_saved_hashes_only_and_read_back_over_the_config() {
        let dir = std::env::temp_dir().join(format!("tinkerdb-users-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = vec![
            user("admin", "pw-one", true),
            user("dave", "pw-dave", false),
        ];
        let users = Users::open(true, config.clone(), Some(&dir)).unwrap();
        users
            .change(|list| {
                list.push(user("carol", "pw-two", false));
                list.retain(|user| user.name != "dave");
                Ok(())
            })
            .unwrap();
        let text = std::fs::read_to_string(dir.join(USERS_FILE)).unwrap();
        assert!(text.contains("$argon2id$") && !text.contains("pw-two"));
        let mode = std::fs::metadata(dir.join(USERS_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o600
        );
        // A restart keeps the runtime changes: carol made, dave deleted.
        let again = Users::open(true, config.clone(), Some(&dir)).unwrap();
        assert_eq!(again.verify(b"carol", b"pw-two").unwrap().name, "carol");
        assert_eq!(
            again.get("dave"),
            None,
            "a deleted config user stays deleted"
        );
        // A config user never changed at runtime follows the config file.
        let mut rotated = config.clone();
        rotated[0] = user("admin", "pw-rotated", true);
        let after_rotation = Users::open(true, rotated, Some(&dir)).unwrap();
        assert!(after_rotation.verify(b"admin", b"pw-rotated").is_some());
        assert!(after_rotation.verify(b"admin", b"pw-one").is_none());
        // The last cluster admin cannot be removed, and nothing changes.
        let refused = again.change(|list| {
            list.retain(|user| user.name != "admin");
            Ok(())
        });
        assert!(matches!(refused, Err(UserError::Invalid(_))), "{refused:?}");
        assert_eq!(again.list().len(), 2);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn checks_run_on_the_checking_threads_and_a_full_queue_is_refused_at_once() {
        let users = Arc::new(Users::open(true, vec![user("admin", "pw", true)], None).unwrap());
        let good = users.check(b"admin", b"pw").unwrap();
        let bad = users.check(b"admin", b"nope").unwrap();
        assert_eq!(
            futures::executor::block_on(good).unwrap().unwrap().name,
            "admin"
        );
        assert_eq!(futures::executor::block_on(bad).unwrap(), None);
        // Far more checks than the queue holds, sent in microseconds while
        // each takes tens of milliseconds: the overflow is refused at once.
        let attempts: Vec<_> = (0..MAX_QUEUED_PASSWORD_CHECKS + 40)
            .map(|_| users.check(b"nobody", b"x"))
            .collect();
        let refused = attempts.iter().filter(|attempt| attempt.is_err()).count();
        assert!(refused >= 30, "{refused} refused");
        for attempt in attempts.into_iter().flatten() {
            assert_eq!(futures::executor::block_on(attempt).unwrap(), None);
        }
    }

    #[test]
    fn bad_users_are_refused_at_start() {
        let mut bad = user("admin", "pw", true);
        bad.password_hash = "plaintext".into();
        let error = Users::open(true, vec![bad], None).unwrap_err().to_string();
        assert!(error.contains("PHC"), "{error}");
        let error = Users::open(true, vec![user("bob", "pw", false)], None)
            .unwrap_err()
            .to_string();
        assert!(error.contains("cluster_admin"), "{error}");
        assert!(Users::open(false, Vec::new(), None).is_ok());
        assert!(!valid_user_name("has space") && !valid_user_name(""));
        assert!(hash_password(b"").is_err());
        // Other argon2id parameters would make a check take another time.
        let cheap = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            Params::new(8192, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw", &SaltString::generate(&mut OsRng))
        .unwrap()
        .to_string();
        let error = check_hash(&cheap).unwrap_err().to_string();
        assert!(error.contains("default parameters"), "{error}");
    }
}
