//! The API key aggregate: a credential for machines, which call the API
//! with `Authorization: Bearer thk_…` where people use a JWT.
//!
//! The domain never sees a key. The event store makes it, shows it once to
//! its creator and keeps only its SHA-256 hash, outside the log, written in
//! the commit of [`ApiKeyEvent::ApiKeyCreated`]. The log records what an
//! auditor needs: who made which key, for which role, until when, and who
//! revoked it.

use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::common::{AggregateRoot, CommandTraits, Role, TenantId};

/// The longest key name, in characters.
pub const MAX_API_KEY_NAME_LEN: usize = 100;

/// The state of one API key, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApiKey {
    /// The owner; `None` until [`ApiKeyEvent::ApiKeyCreated`] is applied.
    tenant: Option<TenantId>,
    /// What the key is for, as its creator named it.
    name: String,
    /// What a caller holding the key may do.
    role: Option<Role>,
    /// When the key stops being accepted, if ever.
    expires_at: Option<DateTime<Utc>>,
    /// True once revoked: the key is refused from then on.
    revoked: bool,
}

impl ApiKey {
    /// True once the key has been created.
    pub fn exists(&self) -> bool {
        self.tenant.is_some()
    }

    /// The key's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The key's role.
    pub fn role(&self) -> Option<Role> {
        self.role
    }

    /// When the key expires, if ever.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }

    /// True once revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked
    }
}

/// What a caller may ask of an API key. Every command needs the Admin role.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiKeyCommand {
    /// Records a new key.
    Create {
        /// The owner.
        tenant: TenantId,
        /// What the key is for: 1 to 100 characters, one line.
        name: String,
        /// What a caller holding it may do.
        role: Role,
        /// When it stops being accepted; must be later than `now`.
        expires_at: Option<DateTime<Utc>>,
        /// The time the command is handled at, to check `expires_at`.
        now: DateTime<Utc>,
    },
    /// Revokes the key: it is refused from now on.
    Revoke,
}

impl CommandTraits for ApiKeyCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Create { .. })
    }

    fn is_retry_safe(&self) -> bool {
        false
    }

    fn required_role(&self) -> Role {
        Role::Admin
    }
}

/// What happened to an API key. No event holds the key or its hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ApiKeyEvent {
    /// The key was created (emitted by [`ApiKeyCommand::Create`]).
    ApiKeyCreated {
        /// The owner.
        tenant: TenantId,
        /// What the key is for.
        name: String,
        /// What a caller holding it may do.
        role: Role,
        /// When it stops being accepted, if ever.
        expires_at: Option<DateTime<Utc>>,
    },
    /// The key was revoked (emitted by [`ApiKeyCommand::Revoke`]).
    ApiKeyRevoked,
}

impl DomainEvent for ApiKeyEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ApiKeyCreated { .. } => "ApiKeyCreated",
            Self::ApiKeyRevoked => "ApiKeyRevoked",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why an API key command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApiKeyError {
    /// Create on a key that already exists.
    #[error("the API key already exists")]
    AlreadyExists,
    /// Revoke on a key that does not exist.
    #[error("the API key does not exist")]
    NotFound,
    /// Revoke on a key that is revoked already.
    #[error("the API key is already revoked")]
    AlreadyRevoked,
    /// The name is empty or longer than 100 characters.
    #[error("an API key name is 1 to {MAX_API_KEY_NAME_LEN} characters")]
    InvalidName,
    /// The expiry is not in the future.
    #[error("an API key must expire in the future")]
    ExpiryInThePast,
    /// A text field holds a character no text may hold (see
    /// [`crate::text`]); the error names the field.
    #[error(transparent)]
    InvalidText(#[from] crate::text::InvalidText),
}

impl ApiKey {
    /// Decides which events a command produces, without changing anything.
    fn decide(&self, command: ApiKeyCommand) -> Result<Vec<ApiKeyEvent>, ApiKeyError> {
        match command {
            ApiKeyCommand::Create {
                tenant,
                name,
                role,
                expires_at,
                now,
            } => {
                if self.exists() {
                    return Err(ApiKeyError::AlreadyExists);
                }
                crate::text::check_name("name", &name)?;
                let length = name.trim().chars().count();
                if length == 0 || name.chars().count() > MAX_API_KEY_NAME_LEN {
                    return Err(ApiKeyError::InvalidName);
                }
                if expires_at.is_some_and(|at| at <= now) {
                    return Err(ApiKeyError::ExpiryInThePast);
                }
                Ok(vec![ApiKeyEvent::ApiKeyCreated {
                    tenant,
                    name,
                    role,
                    expires_at,
                }])
            }
            ApiKeyCommand::Revoke => {
                if !self.exists() {
                    return Err(ApiKeyError::NotFound);
                }
                if self.revoked {
                    return Err(ApiKeyError::AlreadyRevoked);
                }
                Ok(vec![ApiKeyEvent::ApiKeyRevoked])
            }
        }
    }

    /// Applies one recorded event to the state (cqrs-es's `apply`).
    fn evolve(&mut self, event: ApiKeyEvent) {
        match event {
            ApiKeyEvent::ApiKeyCreated {
                tenant,
                name,
                role,
                expires_at,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.role = Some(role);
                self.expires_at = expires_at;
            }
            ApiKeyEvent::ApiKeyRevoked => self.revoked = true,
        }
    }
}

crate::common::aggregate!(ApiKey, "api_key", ApiKeyCommand, ApiKeyEvent, ApiKeyError);

impl AggregateRoot for ApiKey {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;

    type ApiKeyTest = TestFramework<ApiKey>;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("a valid tenant")
    }

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-12-03T08:00:00Z")
            .expect("a time")
            .with_timezone(&Utc)
    }

    fn create(name: &str, expires_at: Option<DateTime<Utc>>) -> ApiKeyCommand {
        ApiKeyCommand::Create {
            tenant: tenant(),
            name: name.into(),
            role: Role::Editor,
            expires_at,
            now: now(),
        }
    }

    fn created() -> ApiKeyEvent {
        ApiKeyEvent::ApiKeyCreated {
            tenant: tenant(),
            name: "deploy bot".into(),
            role: Role::Editor,
            expires_at: None,
        }
    }

    #[test]
    fn a_key_is_created_and_revoked_once() {
        ApiKeyTest::with(())
            .given_no_previous_events()
            .when(create("deploy bot", None))
            .then_expect_events(vec![created()]);
        ApiKeyTest::with(())
            .given(vec![created()])
            .when(create("deploy bot", None))
            .then_expect_error(ApiKeyError::AlreadyExists);
        ApiKeyTest::with(())
            .given(vec![created()])
            .when(ApiKeyCommand::Revoke)
            .then_expect_events(vec![ApiKeyEvent::ApiKeyRevoked]);
        ApiKeyTest::with(())
            .given(vec![created(), ApiKeyEvent::ApiKeyRevoked])
            .when(ApiKeyCommand::Revoke)
            .then_expect_error(ApiKeyError::AlreadyRevoked);
        ApiKeyTest::with(())
            .given_no_previous_events()
            .when(ApiKeyCommand::Revoke)
            .then_expect_error(ApiKeyError::NotFound);
    }

    #[test]
    fn names_and_expiries_are_checked() {
        for name in ["", "   ", &"x".repeat(MAX_API_KEY_NAME_LEN + 1)] {
            ApiKeyTest::with(())
                .given_no_previous_events()
                .when(create(name, None))
                .then_expect_error(ApiKeyError::InvalidName);
        }
        let refused = ApiKey::default().decide(create("a\nb", None));
        assert!(
            matches!(refused, Err(ApiKeyError::InvalidText(_))),
            "{refused:?}"
        );
        ApiKeyTest::with(())
            .given_no_previous_events()
            .when(create("late", Some(now())))
            .then_expect_error(ApiKeyError::ExpiryInThePast);
        let later = now() + chrono::Duration::days(30);
        ApiKeyTest::with(())
            .given_no_previous_events()
            .when(create("deploy bot", Some(later)))
            .then_expect_events(vec![ApiKeyEvent::ApiKeyCreated {
                tenant: tenant(),
                name: "deploy bot".into(),
                role: Role::Editor,
                expires_at: Some(later),
            }]);
    }
}
