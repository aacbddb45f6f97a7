//! API keys: credentials for machines, with the commands that make and
//! revoke them.
//!
//! A key is `thk_` and 32 random bytes in unpadded base64url. It is shown
//! once, to its creator; what is kept is its SHA-256 hash, in `api_keys`,
//! written in the same commit as the key's event (`ApiKeyCreated`,
//! `ApiKeyRevoked`), so the table never says more or less than the log. A
//! presented key is hashed and looked up: the key cannot be recovered from
//! anything stored, and 256 random bits cannot be guessed from the hash.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine;
use chrono::{DateTime, Utc};
use rand::RngCore;
use sha2::{Digest, Sha256};
use toolhub_domain::api_key::{ApiKey, ApiKeyCommand, ApiKeyError};
use toolhub_domain::{ApiKeyId, Role, TenantId};
use zeroize::Zeroizing;

use crate::bus::{CommandBus, Committed, Companion};
use crate::error::{CommandError, StoreError};
use crate::metadata::CommandContext;
use crate::sql::{exec, fetch, Row};
use crate::store::Db;

/// The prefix of every API key: what tells a key from a JWT, and what
/// secret scanners look for.
pub const KEY_PREFIX: &str = "thk_";

/// A new key, shown once to its creator. Wiped from memory when dropped.
pub type NewApiKey = Zeroizing<String>;

/// An API key as the table holds it: everything but the key.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRecord {
    /// The key's id (not secret).
    pub id: ApiKeyId,
    /// The owning tenant.
    pub tenant: TenantId,
    /// What it is for.
    pub name: String,
    /// What a caller holding it may do.
    pub role: Role,
    /// Who created it.
    pub created_by: String,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it stops being accepted, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a request last presented it, to the minute.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ApiKeyRecord {
    /// Whether a request presenting the key at `now` is accepted.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| now < at)
    }

    fn from_row(row: &Row) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("api_keys: {what}"));
        Ok(Self {
            id: row
                .text("id")?
                .parse()
                .map_err(|_| corrupt("an id is not a UUID"))?,
            tenant: TenantId::parse(row.text("tenant")?)
                .map_err(|_| corrupt("a tenant is invalid"))?,
            name: row.text("name")?,
            role: Role::parse(&row.text("role")?).ok_or_else(|| corrupt("a role is unknown"))?,
            created_by: row.text("created_by")?,
            created_at: row.time("created_at")?,
            expires_at: row.opt_time("expires_at")?,
            revoked_at: row.opt_time("revoked_at")?,
            last_used_at: row.opt_time("last_used_at")?,
        })
    }
}

const COLUMNS: &str =
    "id, tenant, name, role, created_by, created_at, expires_at, revoked_at, last_used_at";

/// The SHA-256 of a key's text: what the table is searched by.
pub fn key_hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// True when `token` has the shape of an API key (and so is not a JWT).
pub fn looks_like_key(token: &str) -> bool {
    token.starts_with(KEY_PREFIX)
}

fn generate_key() -> NewApiKey {
    let mut raw = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(raw.as_mut());
    Zeroizing::new(format!("{KEY_PREFIX}{}", B64URL.encode(raw.as_ref())))
}

/// API key commands and lookups. Cheap to share behind an `Arc`.
pub struct ApiKeys {
    /// The key commands.
    bus: CommandBus<ApiKey>,
    /// Where the hashes live (`api_keys`).
    db: Db,
}

impl ApiKeys {
    /// API keys over a command bus and the database it writes to.
    pub fn new(bus: CommandBus<ApiKey>) -> Self {
        let db = bus.store().db().clone();
        Self { bus, db }
    }

    /// Creates a key for `role` in the caller's tenant. Returns its id, the
    /// key (shown once) and the commit.
    pub async fn create(
        &self,
        ctx: &CommandContext,
        name: String,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<(ApiKeyId, NewApiKey, Committed), CommandError<ApiKeyError>> {
        let id = ApiKeyId::new();
        let key = generate_key();
        let now = Utc::now();
        let companion = Companion {
            sql: "INSERT INTO api_keys (id, tenant, hash, name, role, created_by, created_at, \
                  expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
                .into(),
            args: vec![
                id.to_string().into(),
                ctx.tenant.as_str().into(),
                key_hash(&key).into(),
                name.as_str().into(),
                role.as_str().into(),
                ctx.actor.as_str().into(),
                now.into(),
                expires_at.into(),
            ],
        };
        let command = ApiKeyCommand::Create {
            tenant: ctx.tenant.clone(),
            name,
            role,
            expires_at,
            now,
        };
        let committed = self
            .bus
            .execute_with(&id.to_string(), command, ctx, &companion)
            .await?;
        Ok((id, key, committed))
    }

    /// Revokes a key of the caller's tenant: it is refused from the commit
    /// on (by replicas that cache lookups, once their cache entry ends).
    pub async fn revoke(
        &self,
        ctx: &CommandContext,
        id: ApiKeyId,
    ) -> Result<Committed, CommandError<ApiKeyError>> {
        let companion = Companion {
            sql: "UPDATE api_keys SET revoked_at = $2 WHERE id = $1".into(),
            args: vec![id.to_string().into(), Utc::now().into()],
        };
        self.bus
            .execute_with(&id.to_string(), ApiKeyCommand::Revoke, ctx, &companion)
            .await
    }

    /// The key whose text is `key`, valid or not; `None` when no key has
    /// that text.
    pub async fn find(&self, key: &str) -> Result<Option<ApiKeyRecord>, StoreError> {
        let rows = fetch(
            &self.db,
            &format!("SELECT {COLUMNS} FROM api_keys WHERE hash = $1"),
            &[key_hash(key).into()],
        )
        .await?;
        rows.first().map(ApiKeyRecord::from_row).transpose()
    }

    /// One key of `tenant`; `None` for another tenant's or none.
    pub async fn get(
        &self,
        tenant: &TenantId,
        id: ApiKeyId,
    ) -> Result<Option<ApiKeyRecord>, StoreError> {
        let rows = fetch(
            &self.db,
            &format!("SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 AND id = $2"),
            &[tenant.as_str().into(), id.to_string().into()],
        )
        .await?;
        rows.first().map(ApiKeyRecord::from_row).transpose()
    }

    /// A page of `tenant`'s keys, newest first: at most `first`, after the
    /// key `after` when given. Returns the keys and whether more follow.
    pub async fn list(
        &self,
        tenant: &TenantId,
        first: u32,
        after: Option<ApiKeyId>,
    ) -> Result<(Vec<ApiKeyRecord>, bool), StoreError> {
        let limit = i64::from(first) + 1;
        let rows = match after {
            None => {
                fetch(
                    &self.db,
                    &format!(
                        "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 \
                         ORDER BY id DESC LIMIT $2"
                    ),
                    &[tenant.as_str().into(), limit.into()],
                )
                .await?
            }
            Some(after) => {
                fetch(
                    &self.db,
                    &format!(
                        "SELECT {COLUMNS} FROM api_keys WHERE tenant = $1 AND id < $2 \
                         ORDER BY id DESC LIMIT $3"
                    ),
                    &[
                        tenant.as_str().into(),
                        after.to_string().into(),
                        limit.into(),
                    ],
                )
                .await?
            }
        };
        let mut keys = rows
            .iter()
            .map(ApiKeyRecord::from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let more = keys.len() > first as usize;
        keys.truncate(first as usize);
        Ok((keys, more))
    }

    /// Records that a request presented the key at `at`. Not an event: a
    /// use changes nothing, and a busy machine would flood the log.
    pub async fn touch(&self, id: ApiKeyId, at: DateTime<Utc>) -> Result<(), StoreError> {
        exec(
            &self.db,
            "UPDATE api_keys SET last_used_at = $2 WHERE id = $1",
            &[id.to_string().into(), at.into()],
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_prefixed_random_and_hashed() {
        let a = generate_key();
        let b = generate_key();
        assert!(looks_like_key(&a), "{}", a.len());
        assert_eq!(a.len(), KEY_PREFIX.len() + 43);
        assert_ne!(a.as_str(), b.as_str());
        assert_eq!(key_hash(&a), key_hash(&a.clone()));
        assert_ne!(key_hash(&a), key_hash(&b));
        assert!(!looks_like_key("eyJhbGciOiJIUzI1NiJ9.e30.x"));
    }
}
