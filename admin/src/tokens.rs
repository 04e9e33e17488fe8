//! Bearer tokens for the admin API: what a script or a dashboard holds
//! instead of a password.
//!
//! A `cluster_admin` user asks for one with its password (`POST
//! /v1/tokens`, basic auth: a token cannot mint another, so a stolen token
//! dies at its expiry) and sends it as `Authorization: Bearer tdbt_...`.
//! The token is 32 random bytes (base64url) and only its SHA-256 is kept,
//! in memory: a node's tokens end when it restarts, and a token of one
//! node means nothing to another (users are per node too,
//! docs/security.md). A token speaks for its user as long as the user
//! exists, is enabled, is a `cluster_admin` and keeps the password it had:
//! changing the password, disabling or deleting the user revokes its
//! tokens at their next use. `DELETE /v1/tokens` revokes all of the
//! caller's at once. Checking a token costs one SHA-256 and a map lookup,
//! never an Argon2 verification. At most [`MAX_TOKENS`] live at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use argon2::password_hash::rand_core::{OsRng, RngCore};
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::users::{UserSpec, Users};

/// What every token starts with (so a leaked one is recognisable).
pub const TOKEN_PREFIX: &str = "tdbt_";

/// Tokens alive at once on a node (expired ones are dropped first).
pub const MAX_TOKENS: usize = 1024;

/// A token's life when the request names none.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);

/// The longest life a token may ask for.
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// One issued token.
struct Issued {
    user: String,
    /// The user's password hash when the token was issued: a new password
    /// revokes the token.
    password_hash: String,
    expires: SystemTime,
}

/// The node's live tokens, by SHA-256 of the token.
#[derive(Default)]
pub struct Tokens {
    issued: Mutex<HashMap<[u8; 32], Issued>>,
}

/// Why no token was issued.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{MAX_TOKENS} tokens are alive on this node: revoke some (DELETE /v1/tokens) or wait for them to expire")]
pub struct TokensFull;

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Tokens {
    /// A new token for `user`, alive for `ttl` (at most
    /// [`MAX_TOKEN_TTL`]); the token and its expiry (Unix ms).
    pub fn issue(&self, user: &UserSpec, ttl: Duration) -> Result<(String, u64), TokensFull> {
        let ttl = ttl.min(MAX_TOKEN_TTL);
        let mut secret = [0u8; 32];
        OsRng.fill_bytes(&mut secret);
        let token = format!(
            "{TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
        );
        let expires = SystemTime::now() + ttl;
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        if issued.len() >= MAX_TOKENS {
            let now = SystemTime::now();
            issued.retain(|_, token| token.expires > now);
            if issued.len() >= MAX_TOKENS {
                return Err(TokensFull);
            }
        }
        issued.insert(
            digest(&token),
            Issued {
                user: user.name.clone(),
                password_hash: user.password_hash.clone(),
                expires,
            },
        );
        let expires_unix_ms = expires
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_millis() as u64);
        Ok((token, expires_unix_ms))
    }

    /// The user `token` speaks for, if it is alive and its user still is
    /// as it was (enabled, same password); an expired or revoked token is
    /// forgotten.
    pub fn resolve(&self, token: &str, users: &Users) -> Option<UserSpec> {
        let key = digest(token);
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let found = issued.get(&key)?;
        let user = users
            .get(&found.user)
            .filter(|user| user.enabled && user.password_hash == found.password_hash);
        if found.expires <= SystemTime::now() || user.is_none() {
            issued.remove(&key);
            return None;
        }
        user
    }

    /// Revokes every token of `user`; how many there were.
    pub fn revoke_user(&self, user: &str) -> usize {
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        let before = issued.len();
        issued.retain(|_, token| token.user != user);
        before - issued.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::users::{hash_password, Access};

    fn user(name: &str, password: &str) -> UserSpec {
        UserSpec {
            name: name.into(),
            password_hash: hash_password(password.as_bytes()).unwrap(),
            tenant: "default".into(),
            enabled: true,
            cluster_admin: true,
            access: Access::Write,
        }
    }

    #[test]
    fn a_token_speaks_for_its_user_until_it_expires_or_is_revoked() {
        let root = user("root", "pw-1");
        let users = Users::open(true, vec![root.clone()], None).unwrap();
        let tokens = Tokens::default();
        let (token, expires) = tokens.issue(&root, Duration::from_secs(60)).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX) && token.len() > 40);
        assert!(expires > 0);
        assert_eq!(tokens.resolve(&token, &users).unwrap().name, "root");
        assert_eq!(tokens.resolve("tdbt_forged", &users), None);
        let (short, _) = tokens.issue(&root, Duration::ZERO).unwrap();
        assert_eq!(tokens.resolve(&short, &users), None, "expired");
        assert_eq!(tokens.revoke_user("root"), 1);
        assert_eq!(tokens.resolve(&token, &users), None, "revoked");
    }
}
