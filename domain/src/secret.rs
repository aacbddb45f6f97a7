//! The secret aggregate: a named, tenant-owned value that workflows and MCP
//! server configurations reference as `{{secrets.NAME}}`.
//!
//! The domain never sees a plaintext value. Values arrive already sealed
//! (AES-256-GCM under a per-secret data key, done by the event store's key
//! store), so no event can leak one. Deleting a secret records
//! [`SecretEvent::SecretDeleted`]; the key store reacts by destroying the data
//! key, which makes every recorded ciphertext unrecoverable while the log
//! itself stays immutable (crypto-shredding).
//!
//! Secret names are unique per tenant, but uniqueness spans aggregates, so it
//! is enforced by the layer that maps names to [`crate::SecretId`]s, not here.

use crate::common::{template_expressions, TemplateReference};
use crate::common::{AggregateRoot, CommandTraits, NameChange, Role, TenantId};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use std::fmt;

/// The longest secret name, in characters: a leading letter and up to 63 more.
pub const MAX_SECRET_NAME_LEN: usize = 64;

/// The longest secret description, in characters.
pub const MAX_SECRET_DESCRIPTION_LEN: usize = 2_000;

/// True when `name` matches `^[A-Z][A-Z0-9_]{0,63}$`.
///
/// This is the one rule for secret names: the secret aggregate applies it on
/// creation and workflow definitions and MCP server configurations apply it to
/// every `{{secrets.NAME}}` they contain, so a reference can always name a
/// secret that could exist.
pub fn is_valid_secret_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    match bytes.first() {
        Some(first) if first.is_ascii_uppercase() => {
            bytes.len() <= MAX_SECRET_NAME_LEN
                && bytes[1..]
                    .iter()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_')
        }
        _ => false,
    }
}

/// The names of every `{{secrets.NAME}}` in `text`, valid or not, in order.
///
/// Callers check each with [`is_valid_secret_name`]; returning invalid ones
/// too lets them report exactly what was written.
pub fn secret_references_in(text: &str) -> impl Iterator<Item = &str> + '_ {
    template_expressions(text).filter_map(|template| match template.reference() {
        TemplateReference::Secret { name } => Some(name),
        _ => None,
    })
}

/// A secret value sealed by the key store: a base64 nonce and a base64
/// AES-256-GCM ciphertext.
///
/// The fields are private and `Debug` prints nothing of them, so that a
/// sealed value logged by accident reveals not even its length.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    /// The base64 GCM nonce, unique per sealing so that a rotation to the
    /// same plaintext still yields a different ciphertext.
    nonce: String,
    /// The base64 ciphertext with its authentication tag.
    ciphertext: String,
}

impl SealedValue {
    /// Wraps a nonce and ciphertext produced by the key store.
    pub fn new(nonce: impl Into<String>, ciphertext: impl Into<String>) -> Self {
        Self {
            nonce: nonce.into(),
            ciphertext: ciphertext.into(),
        }
    }

    /// The base64 nonce.
    pub fn nonce(&self) -> &str {
        &self.nonce
    }

    /// The base64 ciphertext.
    pub fn ciphertext(&self) -> &str {
        &self.ciphertext
    }
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealedValue(..)")
    }
}

/// The state of one secret, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Secret {
    /// The owner; `None` until [`SecretEvent::SecretCreated`] is applied.
    tenant: Option<TenantId>,
    /// The name used in `{{secrets.NAME}}`. It never changes, because
    /// definitions refer to it.
    name: String,
    /// A human description, for people choosing which secret to use.
    description: String,
    /// The current sealed value, kept so the engine can unseal it at the
    /// moment of use without reading the whole history.
    value: Option<SealedValue>,
    /// How many times the value was rotated; 0 right after creation.
    rotation: u32,
    /// True once deleted: the data key is gone and nothing may change.
    deleted: bool,
}

impl Secret {
    /// True once the secret has been created.
    pub fn exists(&self) -> bool {
        self.tenant.is_some()
    }

    /// The secret's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The secret's description.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The current sealed value, if the secret exists and is not deleted.
    pub fn value(&self) -> Option<&SealedValue> {
        if self.deleted {
            None
        } else {
            self.value.as_ref()
        }
    }

    /// How many times the value was rotated.
    pub fn rotation(&self) -> u32 {
        self.rotation
    }

    /// True once deleted.
    pub fn is_deleted(&self) -> bool {
        self.deleted
    }
}

/// What a caller may ask of a secret. Every command needs the Admin role.
#[derive(Debug, Clone, PartialEq)]
pub enum SecretCommand {
    /// Creates the secret with its first sealed value.
    Create {
        /// The owner.
        tenant: TenantId,
        /// The name, `^[A-Z][A-Z0-9_]{0,63}$`.
        name: String,
        /// A human description, at most 2,000 characters.
        description: String,
        /// The first value, sealed by the key store.
        value: SealedValue,
    },
    /// Replaces the value with a newly sealed one.
    Rotate {
        /// The new value, sealed by the key store.
        value: SealedValue,
    },
    /// Replaces the description.
    Describe {
        /// The new description, at most 2,000 characters.
        description: String,
    },
    /// Deletes the secret; its value becomes unrecoverable.
    Delete,
}

impl CommandTraits for SecretCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Create { .. })
    }

    fn is_retry_safe(&self) -> bool {
        // Setting a description is last-writer-wins. A rotation or a deletion
        // that raced with another change must be looked at by a person.
        matches!(self, Self::Describe { .. })
    }

    fn required_role(&self) -> Role {
        Role::Admin
    }
}

/// What happened to a secret. No event holds a plaintext value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum SecretEvent {
    /// The secret was created (emitted by [`SecretCommand::Create`]).
    SecretCreated {
        /// The owner.
        tenant: TenantId,
        /// The name used in `{{secrets.NAME}}`.
        name: String,
        /// The description.
        description: String,
        /// The first sealed value.
        value: SealedValue,
    },
    /// The value was replaced (emitted by [`SecretCommand::Rotate`]).
    SecretRotated {
        /// The new sealed value.
        value: SealedValue,
        /// The rotation number: 1 for the first rotation, then 2, …
        rotation: u32,
    },
    /// The description changed (emitted by [`SecretCommand::Describe`]).
    SecretDescribed {
        /// The new description.
        description: String,
    },
    /// The secret was deleted (emitted by [`SecretCommand::Delete`]).
    SecretDeleted,
}

impl DomainEvent for SecretEvent {
    fn event_type(&self) -> String {
        match self {
            Self::SecretCreated { .. } => "SecretCreated",
            Self::SecretRotated { .. } => "SecretRotated",
            Self::SecretDescribed { .. } => "SecretDescribed",
            Self::SecretDeleted => "SecretDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why a secret command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Create on a secret that already exists (even a deleted one).
    #[error("the secret already exists")]
    AlreadyExists,
    /// A command other than Create on a secret that does not exist.
    #[error("the secret does not exist")]
    NotFound,
    /// A command on a deleted secret.
    #[error("the secret has been deleted")]
    Deleted,
    /// The name does not match `^[A-Z][A-Z0-9_]{0,63}$`.
    #[error("a secret name is an uppercase letter followed by up to 63 uppercase letters, digits or underscores")]
    InvalidName,
    /// The description is longer than 2,000 characters.
    #[error("a secret description is at most {MAX_SECRET_DESCRIPTION_LEN} characters")]
    InvalidDescription,
    /// A text field holds a character no text may hold (see
    /// [`crate::text`]); the error names the field.
    #[error(transparent)]
    InvalidText(#[from] crate::text::InvalidText),
}

impl Secret {
    /// Decides which events a command produces, without changing anything.
    fn decide(&self, command: SecretCommand) -> Result<Vec<SecretEvent>, SecretError> {
        if let SecretCommand::Create {
            tenant,
            name,
            description,
            value,
        } = command
        {
            if self.exists() {
                return Err(SecretError::AlreadyExists);
            }
            if !is_valid_secret_name(&name) {
                return Err(SecretError::InvalidName);
            }
            check_description(&description)?;
            return Ok(vec![SecretEvent::SecretCreated {
                tenant,
                name,
                description,
                value,
            }]);
        }
        if !self.exists() {
            return Err(SecretError::NotFound);
        }
        if self.deleted {
            return Err(SecretError::Deleted);
        }
        match command {
            SecretCommand::Create { .. } => Err(SecretError::AlreadyExists),
            SecretCommand::Rotate { value } => Ok(vec![SecretEvent::SecretRotated {
                value,
                rotation: self.rotation.saturating_add(1),
            }]),
            SecretCommand::Describe { description } => {
                check_description(&description)?;
                Ok(vec![SecretEvent::SecretDescribed { description }])
            }
            SecretCommand::Delete => Ok(vec![SecretEvent::SecretDeleted]),
        }
    }
}

fn check_description(description: &str) -> Result<(), SecretError> {
    crate::text::check_free_text("description", description)?;
    if description.chars().count() > MAX_SECRET_DESCRIPTION_LEN {
        Err(SecretError::InvalidDescription)
    } else {
        Ok(())
    }
}

crate::common::aggregate!(Secret, "secret", SecretCommand, SecretEvent, SecretError);

impl Secret {
    /// Applies one recorded event to the state (cqrs-es's `apply`).
    fn evolve(&mut self, event: SecretEvent) {
        match event {
            SecretEvent::SecretCreated {
                tenant,
                name,
                description,
                value,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.description = description;
                self.value = Some(value);
                self.rotation = 0;
            }
            SecretEvent::SecretRotated { value, rotation } => {
                self.value = Some(value);
                self.rotation = rotation;
            }
            SecretEvent::SecretDescribed { description } => self.description = description,
            SecretEvent::SecretDeleted => {
                self.deleted = true;
                self.value = None;
            }
        }
    }
}

impl AggregateRoot for Secret {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// Workflows reference secrets by name: a name is unique per tenant
    /// until its secret is deleted.
    fn name_change(event: &SecretEvent) -> Option<NameChange<'_>> {
        match event {
            SecretEvent::SecretCreated { name, .. } => Some(NameChange::Claim(name)),
            SecretEvent::SecretDeleted => Some(NameChange::Release),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate;

    type SecretTest = TestFramework<Secret>;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("a valid tenant")
    }

    fn sealed(n: u8) -> SealedValue {
        SealedValue::new(format!("nonce{n}"), format!("cipher{n}"))
    }

    fn created() -> SecretEvent {
        SecretEvent::SecretCreated {
            tenant: tenant(),
            name: "API_TOKEN".into(),
            description: "The example.com token".into(),
            value: sealed(0),
        }
    }

    fn create(name: &str, description: &str) -> SecretCommand {
        SecretCommand::Create {
            tenant: tenant(),
            name: name.into(),
            description: description.into(),
            value: sealed(0),
        }
    }

    #[test]
    fn creating_a_secret_records_its_sealed_value() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(create("API_TOKEN", "The example.com token"))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_an_existing_secret_is_rejected() {
        SecretTest::with(())
            .given(vec![created()])
            .when(create("API_TOKEN", ""))
            .then_expect_error(SecretError::AlreadyExists);
    }

    #[test]
    fn creating_a_secret_again_after_deletion_is_rejected() {
        SecretTest::with(())
            .given(vec![created(), SecretEvent::SecretDeleted])
            .when(create("API_TOKEN", ""))
            .then_expect_error(SecretError::AlreadyExists);
    }

    #[test]
    fn creating_a_secret_with_a_lowercase_name_is_rejected() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(create("api_token", ""))
            .then_expect_error(SecretError::InvalidName);
    }

    #[test]
    fn creating_a_secret_with_a_too_long_description_is_rejected() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(create(
                "API_TOKEN",
                &"d".repeat(MAX_SECRET_DESCRIPTION_LEN + 1),
            ))
            .then_expect_error(SecretError::InvalidDescription);
    }

    #[test]
    fn rotating_a_secret_counts_the_rotations() {
        SecretTest::with(())
            .given(vec![
                created(),
                SecretEvent::SecretRotated {
                    value: sealed(1),
                    rotation: 1,
                },
            ])
            .when(SecretCommand::Rotate { value: sealed(2) })
            .then_expect_events(vec![SecretEvent::SecretRotated {
                value: sealed(2),
                rotation: 2,
            }]);
    }

    #[test]
    fn rotating_a_missing_secret_is_rejected() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(SecretCommand::Rotate { value: sealed(1) })
            .then_expect_error(SecretError::NotFound);
    }

    #[test]
    fn rotating_a_deleted_secret_is_rejected() {
        SecretTest::with(())
            .given(vec![created(), SecretEvent::SecretDeleted])
            .when(SecretCommand::Rotate { value: sealed(1) })
            .then_expect_error(SecretError::Deleted);
    }

    #[test]
    fn describing_a_secret_replaces_its_description() {
        SecretTest::with(())
            .given(vec![created()])
            .when(SecretCommand::Describe {
                description: "Rotated monthly".into(),
            })
            .then_expect_events(vec![SecretEvent::SecretDescribed {
                description: "Rotated monthly".into(),
            }]);
    }

    #[test]
    fn describing_a_missing_secret_is_rejected() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(SecretCommand::Describe {
                description: String::new(),
            })
            .then_expect_error(SecretError::NotFound);
    }

    #[test]
    fn describing_a_deleted_secret_is_rejected() {
        SecretTest::with(())
            .given(vec![created(), SecretEvent::SecretDeleted])
            .when(SecretCommand::Describe {
                description: String::new(),
            })
            .then_expect_error(SecretError::Deleted);
    }

    #[test]
    fn describing_a_secret_with_a_too_long_description_is_rejected() {
        SecretTest::with(())
            .given(vec![created()])
            .when(SecretCommand::Describe {
                description: "d".repeat(MAX_SECRET_DESCRIPTION_LEN + 1),
            })
            .then_expect_error(SecretError::InvalidDescription);
    }

    #[test]
    fn deleting_a_secret_records_the_deletion() {
        SecretTest::with(())
            .given(vec![created()])
            .when(SecretCommand::Delete)
            .then_expect_events(vec![SecretEvent::SecretDeleted]);
    }

    #[test]
    fn deleting_a_missing_secret_is_rejected() {
        SecretTest::with(())
            .given_no_previous_events()
            .when(SecretCommand::Delete)
            .then_expect_error(SecretError::NotFound);
    }

    #[test]
    fn deleting_a_secret_twice_is_rejected() {
        SecretTest::with(())
            .given(vec![created(), SecretEvent::SecretDeleted])
            .when(SecretCommand::Delete)
            .then_expect_error(SecretError::Deleted);
    }

    #[test]
    fn a_deleted_secret_no_longer_exposes_its_sealed_value() {
        let mut secret = Secret::default();
        secret.apply(created());
        assert_eq!(secret.value(), Some(&sealed(0)));
        secret.apply(SecretEvent::SecretDeleted);
        assert_eq!(secret.value(), None);
        assert_eq!(secret.tenant(), Some(&tenant()));
    }

    #[test]
    fn secret_names_follow_the_documented_pattern() {
        for valid in ["A", "API_TOKEN", "X9", &format!("A{}", "B".repeat(63))] {
            assert!(is_valid_secret_name(valid), "{valid} should be valid");
        }
        for invalid in [
            "",
            "a",
            "_A",
            "9A",
            "API-TOKEN",
            "API TOKEN",
            "Äpi",
            &"A".repeat(65),
        ] {
            assert!(
                !is_valid_secret_name(invalid),
                "{invalid} should be invalid"
            );
        }
    }

    #[test]
    fn sealed_values_never_print_their_contents() {
        assert_eq!(format!("{:?}", sealed(7)), "SealedValue(..)");
        let event = format!("{:?}", created());
        assert!(!event.contains("cipher0") && !event.contains("nonce0"));
    }

    #[test]
    fn secret_events_serialize_with_a_type_tag_and_round_trip() {
        let json = serde_json::to_value(created()).expect("serializable");
        assert_eq!(json["type"], "SecretCreated");
        assert_eq!(json["value"]["nonce"], "nonce0");
        let back: SecretEvent = serde_json::from_value(json).expect("deserializable");
        assert_eq!(back, created());
        let deleted = serde_json::to_value(SecretEvent::SecretDeleted).expect("serializable");
        assert_eq!(deleted, serde_json::json!({"type": "SecretDeleted"}));
    }

    #[test]
    fn secret_commands_need_the_admin_role() {
        let commands = [
            create("A", ""),
            SecretCommand::Rotate { value: sealed(1) },
            SecretCommand::Describe {
                description: String::new(),
            },
            SecretCommand::Delete,
        ];
        for command in &commands {
            assert_eq!(command.required_role(), Role::Admin);
        }
        let creation: Vec<bool> = commands.iter().map(|c| c.is_creation()).collect();
        assert_eq!(creation, [true, false, false, false]);
        let retry_safe: Vec<bool> = commands.iter().map(|c| c.is_retry_safe()).collect();
        assert_eq!(retry_safe, [false, false, true, false]);
    }
}
