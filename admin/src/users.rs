//! Users, their password hashes, and the check of a password: the one
//! directory every front end authenticates against (RESP `AUTH`/`HELLO`,
//! the flatbuffers `Hello`, the admin API's HTTP basic auth).
//!
//! # What is stored
//! A user is a name, an Argon2id hash of its password (a PHC string:
//! algorithm, parameters, salt and hash; never the password itself), the
//! tenant its connections act for, whether it is enabled, and whether it
//! administers the cluster (`cluster_admin`: the admin API, `ACL SETUSER`).
//! Users come from the config file (`[[auth.users]]`, hashes made with
//! `tinker hash-password`) and from `<data_dir>/users.json` (users created
//! or changed at runtime, which override the config's, as `tenants.json`
//! does for tenants). Like tenants they are kept **per node** until the
//! cluster metadata of the issue "Scale-out" exists: a user made on one
//! node is not known to the others (docs/security.md).
//!
//! # Checking a password
//! [`Users::verify`] costs one Argon2id verification (about 37 ms of CPU
//! here with the default parameters: m = 19 MiB, t = 2, p = 1), so it runs
//! on a blocking thread, never on a shard core (glommio's one blocking
//! thread per core bounds them: a flood of `AUTH`s queues there instead of
//! taking the cores). An unknown or disabled user is checked against a
//! dummy hash of the same parameters, so every failure costs the same and
//! answers the same: a client cannot tell "no such user" from "wrong
//! password" by the answer or by its time. The hash comparison itself is
//! constant-time (the `argon2` crate).
//!
//! # Changes and open connections
//! A change ([`Users::change`]) writes the new list durably (temporary
//! file, fsync, rename, directory fsync; mode 0600) before anyone sees it,
//! then swaps it in and raises [`Users::generation`]. A session remembers
//! the generation it last checked its user at; when it differs, the
//! session looks its user up again before its next request and is cut off
//! if the user was deleted, disabled or given a new password
//! ([`Users::still_valid`]). Reading the generation is one atomic load: the
//! data path takes no lock.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use argon2::password_hash::{rand_core::OsRng, PasswordHash, PasswordVerifier, SaltString};
use argon2::{Argon2, PasswordHasher};
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
}

impl std::fmt::Display for UserError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserError::Invalid(why) | UserError::Storage(why) => f.write_str(why),
            UserError::Unknown(name) => write!(f, "user {name:?} does not exist"),
            UserError::Exists(name) => write!(f, "user {name:?} already exists"),
        }
    }
}

impl std::error::Error for UserError {}

/// Whether `name` is an acceptable user name.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_USER_NAME_BYTES
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
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

/// Checks that `hash` is an Argon2id PHC string this node can verify.
pub fn check_hash(hash: &str) -> Result<(), UserError> {
    let parsed = PasswordHash::new(hash)
        .map_err(|error| UserError::Invalid(format!("not a PHC password hash: {error}")))?;
    if parsed.algorithm.as_str() != "argon2id" {
        return Err(UserError::Invalid(format!(
            "password hashes must be argon2id, not {}",
            parsed.algorithm
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

/// The node's users (see the module docs).
pub struct Users {
    enabled: bool,
    data_dir: Option<PathBuf>,
    list: RwLock<Arc<Vec<UserSpec>>>,
    generation: AtomicU64,
    /// Held by a change from reading the list to publishing it.
    writer: Mutex<()>,
    /// What an unknown or disabled user's password is checked against.
    dummy_hash: String,
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
            None => Vec::new(),
        };
        let mut list = config;
        for user in saved {
            match list.iter_mut().find(|known| known.name == user.name) {
                Some(known) => *known = user,
                None => list.push(user),
            }
        }
        for user in &list {
            check_user(user).map_err(|error| anyhow::anyhow!("user {:?}: {error}", user.name))?;
        }
        if enabled && !list.iter().any(|user| user.enabled && user.cluster_admin) {
            anyhow::bail!(
                "authentication is on but no enabled user has cluster_admin = true: add one to \
                 the config file ([[auth.users]] with a password_hash from `tinker hash-password`)"
            );
        }
        let dummy_hash = hash_password(b"no user has this password: it is random")?;
        Ok(Users {
            enabled,
            data_dir: data_dir.map(Path::to_owned),
            list: RwLock::new(Arc::new(list)),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
            dummy_hash,
        })
    }

    /// No authentication (a node whose config says so, and tests): every
    /// client is let in as today, and no file is read or written.
    pub fn disabled() -> Users {
        Users {
            enabled: false,
            data_dir: None,
            list: RwLock::new(Arc::new(Vec::new())),
            generation: AtomicU64::new(0),
            writer: Mutex::new(()),
            dummy_hash: String::new(),
        }
    }

    /// Whether clients must authenticate.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Raised by every change; a session whose user was checked at an older
    /// generation checks again ([`Users::still_valid`]).
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

    /// Whether `name`, authenticated with the hash `password_hash`, may
    /// still act: it exists, is enabled, and its password is unchanged.
    pub fn still_valid(&self, name: &str, password_hash: &str) -> bool {
        self.list()
            .iter()
            .any(|user| user.name == name && user.enabled && user.password_hash == password_hash)
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
        let _one_writer = self
            .writer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut list = self.list().as_ref().clone();
        let answer = change(&mut list)?;
        for user in &list {
            check_user(user)?;
        }
        if self.enabled && !list.iter().any(|user| user.enabled && user.cluster_admin) {
            return Err(UserError::Invalid(
                "the change would leave no enabled cluster_admin user".into(),
            ));
        }
        if let Some(dir) = &self.data_dir {
            save(dir, &list).map_err(|error| {
                UserError::Storage(format!("cannot save the user list: {error}"))
            })?;
        }
        *self
            .list
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(list);
        self.generation.fetch_add(1, Ordering::AcqRel);
        Ok(answer)
    }
}

/// The users saved in `data_dir` (none if the file does not exist).
pub fn load(data_dir: &Path) -> anyhow::Result<Vec<UserSpec>> {
    let path = data_dir.join(USERS_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces the saved users with `users`, durably, readable by the node's
/// own user only (the hashes are not passwords, but they would let an
/// attacker guess offline).
pub fn save(data_dir: &Path, users: &[UserSpec]) -> std::io::Result<()> {
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

    fn user(name: &str, password: &str, admin: bool) -> UserSpec {
        UserSpec {
            name: name.into(),
            password_hash: hash_password(password.as_bytes()).unwrap(),
            tenant: "default".into(),
            enabled: true,
            cluster_admin: admin,
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
        let users = Users::open(true, vec![user("admin", "pw-one", true)], Some(&dir)).unwrap();
        users
            .change(|list| {
                list.push(user("carol", "pw-two", false));
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
        let again = Users::open(true, vec![user("admin", "pw-one", true)], Some(&dir)).unwrap();
        assert_eq!(again.verify(b"carol", b"pw-two").unwrap().name, "carol");
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
    }
}
