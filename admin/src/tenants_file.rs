//! Tenants created or changed through the admin API, kept in
//! `<data_dir>/tenants.json` so they survive a restart.
//!
//! At start the node takes the tenants of its config file, then applies this
//! file in order: a tenant it names that the config lacks is appended, and
//! its quota replaces the config's (an API change is newer than the config).
//! The file is replaced atomically (write a temporary file, fsync, rename,
//! fsync the directory) before a change reaches any core, so a change a
//! client saw acknowledged is never lost, and a crash leaves the old or the
//! new file, never a torn one.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// Name of the file in the data directory.
pub const TENANTS_FILE: &str = "tenants.json";

/// Longest tenant name.
pub const MAX_TENANT_NAME_BYTES: usize = 64;

/// A tenant and its node-wide quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TenantSpec {
    /// Name: 1-64 bytes of `[A-Za-z0-9_.-]`.
    pub name: String,
    /// Most keys (null: unlimited).
    pub max_keys: Option<u64>,
    /// Most key + value bytes (null: unlimited).
    pub max_bytes: Option<u64>,
    /// Deleted at runtime: kept as a tombstone (its local id stays taken;
    /// recovery skips records that name it). Never shown by the API.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    #[schema(ignore)]
    pub deleted: bool,
}

/// Whether `name` is an acceptable tenant name.
pub fn valid_tenant_name(name: &str) -> bool {
    valid_name(name, MAX_TENANT_NAME_BYTES)
}

/// Whether `name` is 1 to `max_bytes` bytes of `[A-Za-z0-9_.-]`: the names
/// of tenants and users (safe in paths, logs and URLs unescaped).
pub fn valid_name(name: &str, max_bytes: usize) -> bool {
    !name.is_empty()
        && name.len() <= max_bytes
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn file_path(data_dir: &Path) -> PathBuf {
    data_dir.join(TENANTS_FILE)
}

/// The tenants saved in `data_dir` (none if the file does not exist).
pub fn load(data_dir: &Path) -> anyhow::Result<Vec<TenantSpec>> {
    let path = file_path(data_dir);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|error| anyhow::anyhow!("{} is damaged: {error}", path.display())),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(anyhow::anyhow!("cannot read {}: {error}", path.display())),
    }
}

/// Replaces the saved tenants with `tenants`, durably.
pub fn save(data_dir: &Path, tenants: &[TenantSpec]) -> std::io::Result<()> {
    let path = file_path(data_dir);
    let temp = data_dir.join(format!("{TENANTS_FILE}.tmp"));
    let mut file = std::fs::File::create(&temp)?;
    file.write_all(&serde_json::to_vec_pretty(tenants).map_err(std::io::Error::other)?)?;
    file.sync_all()?;
    std::fs::rename(&temp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

/// The config's tenants with the saved changes applied (see the module
/// docs for the rule).
pub fn merge(config: Vec<TenantSpec>, saved: Vec<TenantSpec>) -> Vec<TenantSpec> {
    let mut merged = config;
    for spec in saved {
        match merged.iter_mut().find(|known| known.name == spec.name) {
            Some(known) => *known = spec,
            None => merged.push(spec),
        }
    }
    merged
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, max_keys: Option<u64>) -> TenantSpec {
        TenantSpec {
            name: name.into(),
            max_keys,
            max_bytes: None,
            deleted: false,
        }
    }

    #[test]
    fn saved_changes_override_and_append_in_order() {
        let merged = merge(
            vec![spec("default", None), spec("a", Some(5))],
            vec![spec("b", None), spec("a", Some(9))],
        );
        assert_eq!(
            merged,
            vec![spec("default", None), spec("a", Some(9)), spec("b", None)]
        );
    }

    #[test]
    fn round_trips_through_the_file() {
        let dir = std::env::temp_dir().join(format!("tinkerdb-tenants-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(load(&dir).unwrap().is_empty());
        let tenants = vec![spec("x", Some(1)), spec("y", None)];
        save(&dir, &tenants).unwrap();
        assert_eq!(load(&dir).unwrap(), tenants);
        std::fs::write(dir.join(TENANTS_FILE), b"{not json").unwrap();
        assert!(load(&dir).unwrap_err().to_string().contains("damaged"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_tenant_name("team-a.prod_1"));
        assert!(!valid_tenant_name(""));
        assert!(!valid_tenant_name("has space"));
        assert!(!valid_tenant_name(&"x".repeat(65)));
    }
}
