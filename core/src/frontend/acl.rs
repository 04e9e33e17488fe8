//! RESP's `ACL` command over the node's users (`tinkerdb_admin::users`):
//! `WHOAMI`, `USERS`, `LIST`, `SETUSER`, `DELUSER`.
//!
//! TinkerDB's users are simpler than Redis's: a user has a password, a
//! tenant it acts for with an access level there (read, write, admin), an
//! enabled flag and the `cluster_admin` right (no per-command or per-key
//! patterns, and one tenant per user so far). `ACL SETUSER` takes Redis's
//! `on`, `off`, `>password` and `reset`, and TinkerDB's own `tenant=NAME`,
//! `access=read|write|admin`, `cluster-admin` and `no-cluster-admin`; any
//! other rule is refused, so a Redis rule TinkerDB cannot enforce is never
//! silently accepted.
//! `ACL LIST` never shows a password hash.
//!
//! With authentication on, `USERS`, `LIST`, `SETUSER` and `DELUSER` need a
//! `cluster_admin` user (`-NOPERM` otherwise). With it off, `SETUSER` and
//! `DELUSER` are refused: anyone could otherwise make a `cluster_admin`
//! that outlives the switch to authentication (users are then made with
//! the config file or the admin API). Hashing a new password and saving
//! the list run on a thread of their own, never on the core (nor on its
//! blocking thread, which the WAL's renames use).

use std::sync::Arc;

use bytes::Bytes;
use tinkerdb_admin::users::{hash_password, Access, UserError, UserSpec, Users};

use crate::coord::context::CoreContext;
use crate::coord::session::Session;
use crate::frontend::resp::RespValue;

/// One rule of `ACL SETUSER`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rule {
    On,
    Off,
    Password(Vec<u8>),
    Tenant(String),
    Access(Access),
    ClusterAdmin(bool),
    /// Redis's `reset`: off, no password, no rights.
    Reset,
}

fn parse_rule(rule: &[u8]) -> Result<Rule, String> {
    let text = String::from_utf8_lossy(rule);
    let lowered = text.to_ascii_lowercase();
    Ok(match lowered.as_str() {
        "on" => Rule::On,
        "off" => Rule::Off,
        "reset" => Rule::Reset,
        "cluster-admin" => Rule::ClusterAdmin(true),
        "no-cluster-admin" => Rule::ClusterAdmin(false),
        _ if rule.first() == Some(&b'>') => Rule::Password(rule[1..].to_vec()),
        _ if lowered.starts_with("tenant=") => Rule::Tenant(text["tenant=".len()..].to_string()),
        "access=read" => Rule::Access(Access::Read),
        "access=write" => Rule::Access(Access::Write),
        "access=admin" => Rule::Access(Access::Admin),
        _ => {
            return Err(format!(
                "ERR Error in ACL SETUSER modifier '{}': Syntax error (TinkerDB takes on, off, \
                 >password, reset, tenant=NAME, access=read|write|admin, cluster-admin, \
                 no-cluster-admin)",
                text.chars().take(64).collect::<String>()
            ))
        }
    })
}

fn no_permission(session: &Session, subcommand: &str) -> RespValue {
    RespValue::Error(format!(
        "NOPERM User {} has no permissions to run the 'acl|{}' command",
        session.user_name(),
        subcommand.to_ascii_lowercase()
    ))
}

fn user_line(user: &UserSpec) -> RespValue {
    let mut line = format!(
        "user {} {} tenant={} access={}",
        user.name,
        if user.enabled { "on" } else { "off" },
        user.tenant,
        user.access.name()
    );
    if user.cluster_admin {
        line.push_str(" cluster-admin");
    }
    RespValue::Bulk(Bytes::from(line))
}

/// Answers `ACL <args>` for `session`.
pub async fn command(context: &CoreContext, session: &Session, args: Vec<Bytes>) -> RespValue {
    let users = &context.users;
    let Some(sub) = args.first() else {
        return RespValue::Error("ERR wrong number of arguments for 'acl' command".into());
    };
    let sub = String::from_utf8_lossy(sub).to_ascii_uppercase();
    if sub == "WHOAMI" {
        return RespValue::Bulk(Bytes::from(session.user_name().to_owned()));
    }
    if !matches!(sub.as_str(), "USERS" | "LIST" | "SETUSER" | "DELUSER") {
        return RespValue::Error(format!(
            "ERR unknown subcommand '{}'. Try ACL WHOAMI, USERS, LIST, SETUSER, DELUSER.",
            sub.chars().take(64).collect::<String>()
        ));
    }
    if !session.may_administer(users) {
        return no_permission(session, &sub);
    }
    if !users.enabled() && matches!(sub.as_str(), "SETUSER" | "DELUSER") {
        return RespValue::Error(
            "ERR authentication is off on this node: make users in the config file or with \
             the admin API (tinker user ...), then turn [auth] enabled on"
                .into(),
        );
    }
    match sub.as_str() {
        "USERS" => RespValue::Array(
            users
                .list()
                .iter()
                .map(|user| RespValue::Bulk(Bytes::from(user.name.clone())))
                .collect(),
        ),
        "LIST" => RespValue::Array(users.list().iter().map(user_line).collect()),
        "SETUSER" => {
            let Some(name) = args.get(1) else {
                return RespValue::Error(
                    "ERR wrong number of arguments for 'acl|setuser' command".into(),
                );
            };
            let rules = match args[2..]
                .iter()
                .map(|rule| parse_rule(rule))
                .collect::<Result<Vec<_>, _>>()
            {
                Ok(rules) => rules,
                Err(error) => return RespValue::Error(error),
            };
            // A tenant by its name (not one of its databases, `acme/3`).
            let unknown = |tenant: &str| {
                !tinkerdb_admin::tenants_file::valid_tenant_name(tenant)
                    || context.tenants.by_name(tenant).is_none()
            };
            if let Some(Rule::Tenant(tenant)) = rules
                .iter()
                .find(|rule| matches!(rule, Rule::Tenant(tenant) if unknown(tenant)))
            {
                return RespValue::Error(format!(
                    "ERR tenant {tenant:?} is not defined on this node"
                ));
            }
            let name = String::from_utf8_lossy(name).into_owned();
            let users = users.clone();
            let changed = off_core(move || set_user(&users, name, rules)).await;
            match changed {
                Ok(()) => RespValue::Simple("OK"),
                Err(error) => RespValue::Error(format!("ERR {error}")),
            }
        }
        "DELUSER" => {
            if args.len() < 2 {
                return RespValue::Error(
                    "ERR wrong number of arguments for 'acl|deluser' command".into(),
                );
            }
            let names: Vec<String> = args[1..]
                .iter()
                .map(|name| String::from_utf8_lossy(name).into_owned())
                .collect();
            let users = users.clone();
            let deleted = off_core(move || {
                users.change(|list| {
                    let before = list.len();
                    list.retain(|user| !names.contains(&user.name));
                    Ok(before - list.len())
                })
            })
            .await;
            match deleted {
                Ok(count) => RespValue::Integer(count as i64),
                Err(error) => RespValue::Error(format!("ERR {error}")),
            }
        }
        _ => unreachable!("subcommand checked above"),
    }
}

/// Runs `change` (a hash and an fsync: tens of ms) on a thread of its
/// own and awaits its answer without blocking the core. User changes are
/// rare and made by cluster admins only, so a thread each is cheap enough.
async fn off_core<T: Send + 'static>(
    change: impl FnOnce() -> Result<T, UserError> + Send + 'static,
) -> Result<T, UserError> {
    let (answer, answered) = futures_channel::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("tinkerdb-acl".into())
        .spawn(move || {
            let _ = answer.send(change());
        });
    if let Err(error) = spawned {
        return Err(UserError::Storage(format!(
            "cannot start a thread: {error}"
        )));
    }
    answered
        .await
        .unwrap_or_else(|_| Err(UserError::Storage("the change's thread ended".into())))
}

/// Applies `rules` to user `name` (made if new: a new user needs a
/// password). Blocking: hashes and saves.
fn set_user(users: &Arc<Users>, name: String, rules: Vec<Rule>) -> Result<(), UserError> {
    // Hash first, outside the writer's lock (it takes tens of ms).
    let mut hashed = Vec::with_capacity(rules.len());
    for rule in rules {
        hashed.push(match rule {
            Rule::Password(password) => Ok(hash_password(&password)?),
            other => Err(other),
        });
    }
    users.change(|list| {
        let existing = list.iter().position(|user| user.name == name);
        let mut user = match existing {
            Some(index) => list[index].clone(),
            None => UserSpec {
                name: name.clone(),
                password_hash: String::new(),
                tenant: crate::config::DEFAULT_TENANT.into(),
                // Redis makes a new user off unless a rule says on.
                enabled: false,
                cluster_admin: false,
                access: Access::default(),
            },
        };
        for rule in hashed {
            match rule {
                Ok(hash) => user.password_hash = hash,
                Err(Rule::On) => user.enabled = true,
                Err(Rule::Off) => user.enabled = false,
                Err(Rule::Tenant(tenant)) => user.tenant = tenant,
                Err(Rule::Access(access)) => user.access = access,
                Err(Rule::ClusterAdmin(admin)) => user.cluster_admin = admin,
                Err(Rule::Reset) => {
                    user.enabled = false;
                    user.cluster_admin = false;
                    user.access = Access::Read;
                    user.password_hash.clear();
                }
                Err(Rule::Password(_)) => unreachable!("hashed above"),
            }
        }
        if user.password_hash.is_empty() {
            return Err(UserError::Invalid(format!(
                "user {name:?} needs a password (>password): TinkerDB has no passwordless users"
            )));
        }
        match existing {
            Some(index) => list[index] = user,
            None => list.push(user),
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_and_unknown_ones_are_refused() {
        assert_eq!(parse_rule(b"ON"), Ok(Rule::On));
        assert_eq!(parse_rule(b">p w"), Ok(Rule::Password(b"p w".to_vec())));
        assert_eq!(parse_rule(b"tenant=acme"), Ok(Rule::Tenant("acme".into())));
        assert_eq!(parse_rule(b"cluster-admin"), Ok(Rule::ClusterAdmin(true)));
        for refused in [&b"~*"[..], b"+@all", b"nopass", b"allkeys"] {
            assert!(parse_rule(refused).is_err(), "{refused:?}");
        }
    }

    #[test]
    fn set_user_makes_changes_and_refuses_passwordless_users() {
        let users = Arc::new(Users::open(false, Vec::new(), None).unwrap());
        let refused = set_user(&users, "eve".into(), vec![Rule::On]);
        assert!(matches!(refused, Err(UserError::Invalid(_))), "{refused:?}");
        set_user(
            &users,
            "eve".into(),
            vec![Rule::On, Rule::Password(b"pw".to_vec())],
        )
        .unwrap();
        assert_eq!(users.verify(b"eve", b"pw").unwrap().name, "eve");
        set_user(&users, "eve".into(), vec![Rule::Off]).unwrap();
        assert_eq!(users.verify(b"eve", b"pw"), None);
        let reset = set_user(&users, "eve".into(), vec![Rule::Reset]);
        assert!(reset.is_err(), "reset without a new password leaves none");
    }
}
