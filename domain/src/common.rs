//! Value types shared by every aggregate: newtype ids, the tenant, the roles,
//! the two traits the command bus relies on, and the `{{ ... }}` template
//! syntax that workflow definitions and MCP server configurations share.

use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new, time-ordered (UUIDv7) id.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// Wraps an existing UUID.
            pub fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl std::str::FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }
    };
}

uuid_id!(
    /// Identifies a workflow aggregate.
    WorkflowId
);
uuid_id!(
    /// Identifies an API key aggregate. Not a secret: the key itself is
    /// random and stored only as a hash.
    ApiKeyId
);
uuid_id!(
    /// Identifies an execution aggregate.
    ExecutionId
);
uuid_id!(
    /// Identifies a secret aggregate.
    SecretId
);
uuid_id!(
    /// Identifies an MCP server aggregate.
    McpServerId
);
uuid_id!(
    /// Identifies a webhook of a workflow. Webhook ids are the unguessable
    /// part of a webhook's URL, so they are made with
    /// [`WebhookId::random`], never the time-ordered [`WebhookId::new`].
    WebhookId
);

impl WebhookId {
    /// A new id of 122 random bits (UUIDv4): nothing about it, not even
    /// when it was made, can be guessed from other ids.
    pub fn random() -> Self {
        Self(Uuid::new_v4())
    }
}

/// The organisation that owns an aggregate (the JWT `org` claim).
///
/// Every aggregate belongs to exactly one tenant, and the command bus refuses
/// to let one tenant's command touch another tenant's aggregate.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

/// The longest tenant name accepted, in bytes.
pub const MAX_TENANT_LEN: usize = 128;

/// Why a string is not a valid tenant id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a tenant id is 1 to {MAX_TENANT_LEN} characters of letters, digits, '-', '_' or '.'")]
pub struct InvalidTenantId;

impl TenantId {
    /// Parses a tenant id: 1 to 128 ASCII letters, digits, `-`, `_` or `.`.
    pub fn parse(s: impl Into<String>) -> Result<Self, InvalidTenantId> {
        let s = s.into();
        let valid = !s.is_empty()
            && s.len() <= MAX_TENANT_LEN
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(Self(s))
        } else {
            Err(InvalidTenantId)
        }
    }

    /// The tenant id as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for TenantId {
    type Error = InvalidTenantId;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(value)
    }
}

impl From<TenantId> for String {
    fn from(value: TenantId) -> Self {
        value.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a caller may do. Roles are ordered: each includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads workflows, executions and MCP servers.
    Viewer,
    /// Also writes them, runs executions and reads secret metadata.
    Editor,
    /// Also manages secrets and reads the audit log and history.
    Admin,
}

impl Role {
    /// Parses a role name as it appears in a token (`viewer`, `editor`, `admin`).
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "viewer" => Some(Self::Viewer),
            "editor" => Some(Self::Editor),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }

    /// The role's name as it appears in a token.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Editor => "editor",
            Self::Admin => "admin",
        }
    }
}

/// What the command bus needs to know about an aggregate beyond
/// [`cqrs_es::Aggregate`].
pub trait AggregateRoot: cqrs_es::Aggregate {
    /// The version of the state's shape, stored with its snapshots. Raise
    /// it when a change of the state's fields changes what a stored state
    /// means: snapshots of another version are ignored and the aggregate is
    /// folded from its events.
    const STATE_VERSION: u32 = 1;

    /// The tenant that owns this aggregate, or `None` while it does not exist
    /// yet (no creation event has been applied).
    fn tenant(&self) -> Option<&TenantId>;

    /// What `event` does to the aggregate's name, for aggregates whose names
    /// are unique within their tenant (they are referenced by name). The bus
    /// records the claim in the same transaction as the event, so that of
    /// two concurrent creations with one name only one commits.
    fn name_change(_event: &Self::Event) -> Option<NameChange<'_>> {
        None
    }
}

/// What an event does to its aggregate's unique name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameChange<'a> {
    /// The aggregate takes this name; no other aggregate of its kind and
    /// tenant may hold it. The aggregate holds no name yet (a creation).
    Claim(&'a str),
    /// The aggregate takes this name in place of the one it held, if any
    /// (a workflow's MCP tool, renamed or set again); no other aggregate of
    /// its kind and tenant may hold it.
    Move(&'a str),
    /// The aggregate gives its name up (it was deleted, or no longer needs
    /// one); a no-op when it held none.
    Release,
}

/// What the command bus needs to know about a command.
pub trait CommandTraits {
    /// True for a command that creates its aggregate. The bus may then skip
    /// loading the stream and rely on the optimistic insert at sequence 1 to
    /// detect that the aggregate already exists.
    fn is_creation(&self) -> bool;

    /// True when handling the command again, against the state produced by a
    /// concurrent writer, is what the caller meant. Such commands are retried
    /// a bounded number of times after an optimistic-concurrency conflict;
    /// others surface the conflict.
    fn is_retry_safe(&self) -> bool;

    /// The least role allowed to issue this command.
    fn required_role(&self) -> Role;
}

/// Implements cqrs-es's `Aggregate` for a type that decides with an
/// inherent `fn decide(&self, Command) -> Result<Vec<Event>, Error>` and
/// evolves with `fn evolve(&mut self, Event)`. Every aggregate handles a
/// command the same way: it records what `decide` returns, applying each
/// event as it goes, and none needs services.
macro_rules! aggregate {
    ($ty:ty, $name:literal, $command:ty, $event:ty, $error:ty) => {
        impl cqrs_es::Aggregate for $ty {
            const TYPE: &'static str = $name;
            type Command = $command;
            type Event = $event;
            type Error = $error;
            type Services = ();

            async fn handle(
                &mut self,
                command: Self::Command,
                _services: &Self::Services,
                sink: &cqrs_es::event_sink::EventSink<Self>,
            ) -> Result<(), Self::Error> {
                for event in self.decide(command)? {
                    sink.write(event, self).await;
                }
                Ok(())
            }

            fn apply(&mut self, event: Self::Event) {
                self.evolve(event)
            }
        }
    };
}
pub(crate) use aggregate;

/// One `{{ expression }}` found in a string by [`template_expressions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TemplateExpression<'a> {
    /// The byte range of the whole template, braces included, so that the
    /// engine can substitute it in place.
    pub span: (usize, usize),
    /// The text between the braces, with surrounding whitespace trimmed.
    pub expression: &'a str,
}

impl<'a> TemplateExpression<'a> {
    /// What the expression refers to.
    pub fn reference(&self) -> TemplateReference<'a> {
        TemplateReference::classify(self.expression)
    }
}

/// What a template expression refers to.
///
/// The domain validates the first two kinds (secret names and node
/// references); the engine resolves all of them when it runs a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateReference<'a> {
    /// `{{secrets.NAME}}`: the value of the tenant's secret called `name`.
    Secret {
        /// Everything after `secrets.`, which must be a valid secret name.
        name: &'a str,
    },
    /// `{{nodes.ID}}` or `{{nodes.ID.path.to.field}}`: the output of an
    /// earlier node.
    Node {
        /// The referenced node id (everything up to the next `.`).
        node: &'a str,
        /// The rest of the path after the node id, possibly empty.
        path: &'a str,
    },
    /// `{{input}}` or `{{input.path}}`: the execution's input.
    Input {
        /// The path after `input.`, possibly empty.
        path: &'a str,
    },
    /// Anything else. The domain does not interpret it.
    Other {
        /// The expression as written.
        expression: &'a str,
    },
}

impl<'a> TemplateReference<'a> {
    /// Classifies a trimmed template expression.
    pub fn classify(expression: &'a str) -> Self {
        fn rooted<'s>(expression: &'s str, root: &str) -> Option<&'s str> {
            let rest = expression.strip_prefix(root)?;
            if rest.is_empty() {
                Some("")
            } else {
                rest.strip_prefix('.')
            }
        }
        if let Some(name) = rooted(expression, "secrets") {
            Self::Secret { name }
        } else if let Some(rest) = rooted(expression, "nodes") {
            let (node, path) = rest.split_once('.').unwrap_or((rest, ""));
            Self::Node { node, path }
        } else if let Some(path) = rooted(expression, "input") {
            Self::Input { path }
        } else {
            Self::Other { expression }
        }
    }
}

/// Finds every `{{ expression }}` in `text`, left to right.
///
/// A template opens with `{{` and closes at the next `}}`; an opening without
/// a closing is plain text. Templates do not nest. This is the single
/// definition of the syntax, so that what the domain validates is exactly
/// what the engine substitutes.
pub fn template_expressions(text: &str) -> impl Iterator<Item = TemplateExpression<'_>> + '_ {
    let mut position = 0;
    std::iter::from_fn(move || {
        let start = position + text.get(position..)?.find("{{")?;
        let inner_start = start + 2;
        let inner_end = inner_start + text[inner_start..].find("}}")?;
        position = inner_end + 2;
        Some(TemplateExpression {
            span: (start, position),
            expression: text[inner_start..inner_end].trim(),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_expressions_are_found_left_to_right_and_trimmed() {
        let found: Vec<_> = template_expressions("a {{ secrets.X }} b {{nodes.n.out}} {{ open")
            .map(|t| (t.span, t.expression))
            .collect();
        assert_eq!(
            found,
            vec![((2, 17), "secrets.X"), ((20, 35), "nodes.n.out")]
        );
    }

    #[test]
    fn template_references_are_classified_by_their_root() {
        assert_eq!(
            TemplateReference::classify("secrets.API_TOKEN"),
            TemplateReference::Secret { name: "API_TOKEN" }
        );
        assert_eq!(
            TemplateReference::classify("nodes.fetch.output.status"),
            TemplateReference::Node {
                node: "fetch",
                path: "output.status"
            }
        );
        assert_eq!(
            TemplateReference::classify("nodes.fetch"),
            TemplateReference::Node {
                node: "fetch",
                path: ""
            }
        );
        assert_eq!(
            TemplateReference::classify("input.user"),
            TemplateReference::Input { path: "user" }
        );
        assert_eq!(
            TemplateReference::classify("secretsX"),
            TemplateReference::Other {
                expression: "secretsX"
            }
        );
    }

    #[test]
    fn tenant_ids_are_parsed_strictly() {
        assert!(TenantId::parse("acme-corp.eu_1").is_ok());
        assert_eq!(TenantId::parse(""), Err(InvalidTenantId));
        assert_eq!(TenantId::parse("a b"), Err(InvalidTenantId));
        assert_eq!(
            TenantId::parse("x".repeat(MAX_TENANT_LEN + 1)),
            Err(InvalidTenantId)
        );
    }
}
