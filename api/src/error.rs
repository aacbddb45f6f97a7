//! The one error type of the API, and how every error below it maps onto the
//! GraphQL error codes.
//!
//! Clients see `extensions.code` — `UNAUTHENTICATED` (with a `reason` when a
//! token was refused, such as `TOKEN_EXPIRED`), `FORBIDDEN`, `NOT_FOUND`,
//! `CONFLICT`, `VALIDATION` (with `field` and `reason`), `RATE_LIMITED`
//! (with `reason`, and `retryAfter` in seconds when waiting helps),
//! `TIMEOUT`, `OVERLOADED`, `UNAVAILABLE` (the database cannot be used
//! just now: retry shortly) or `INTERNAL` — and a message written for them.
//! An internal fault is logged here, with the request id of the span it
//! happens in, and the client gets nothing of it but the request id.

use async_graphql::ErrorExtensions;
use toolhub_domain::definition::DefinitionError;
use toolhub_domain::execution::ExecutionError;
use toolhub_domain::mcp_server::McpServerError;
use toolhub_domain::secret::SecretError;
use toolhub_domain::text::InvalidText;
use toolhub_domain::workflow::WorkflowError;
use toolhub_eventstore::{CommandError, ConflictKind, KeyError, SecretCommandError, StoreError};

use crate::read::{ReadError, WaitError};

/// An error as the API shows it.
///
/// It deliberately does not implement `Display`: async-graphql converts any
/// `Display` type into an error without extensions, and every error of this
/// API must carry its code, so the conversion goes through [`ApiError::to_graphql`].
#[derive(Debug, Clone)]
pub enum ApiError {
    /// No valid token.
    Unauthenticated(&'static str),
    /// A token was presented and refused.
    TokenRejected {
        /// A machine-readable reason (`TOKEN_EXPIRED`, `TOKEN_NOT_YET_VALID`,
        /// `INVALID_AUDIENCE`, …).
        reason: &'static str,
        /// For people.
        message: &'static str,
    },
    /// Too many operations: a rate limit, or a limit on how many
    /// subscriptions may run at once.
    RateLimited {
        /// Which limit (`SUBJECT_RATE`, `ADDRESS_RATE`,
        /// `SUBSCRIPTIONS_PER_SOCKET`, `SUBSCRIPTIONS_PER_CALLER`,
        /// `SESSIONS_PER_CALLER`).
        reason: &'static str,
        /// How long to wait before trying again, in whole seconds, when
        /// waiting is what helps.
        retry_after: Option<u64>,
    },
    /// The request took longer than the server allows.
    Timeout,
    /// The server is serving as many requests as it allows.
    Overloaded,
    /// The database cannot be used just now: it is down or restarting, the
    /// connection was lost, or no pooled connection came free in time.
    /// Retrying shortly is what helps.
    Unavailable {
        /// What failed, for the log only.
        detail: String,
    },
    /// A valid token without the role the operation needs.
    Forbidden {
        /// The least role that would do.
        required: &'static str,
    },
    /// The entity does not exist, or belongs to another tenant.
    NotFound,
    /// The entity changed, or is in a state that does not allow the change.
    Conflict {
        /// A machine-readable reason (`EXPECTED_VERSION`, `ARCHIVED`, …).
        reason: &'static str,
        /// For people.
        message: String,
    },
    /// An input is unusable.
    Validation {
        /// The input field, as named in the schema (`input.definition`).
        field: String,
        /// Why.
        reason: String,
    },
    /// A fault of the service. The detail is logged, never shown.
    Internal {
        /// What went wrong, for the log only.
        detail: String,
    },
}

impl ApiError {
    /// A validation error on `field`.
    pub fn validation(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Validation {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// A conflict with a reason code.
    pub fn conflict(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Conflict {
            reason,
            message: message.into(),
        }
    }

    /// An internal fault; `detail` goes to the log only.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Self::Internal {
            detail: detail.to_string(),
        }
    }

    /// The message clients see.
    pub fn message(&self) -> String {
        match self {
            Self::Unauthenticated(why) => (*why).to_string(),
            Self::TokenRejected { message, .. } => (*message).to_string(),
            Self::RateLimited {
                reason,
                retry_after,
            } => match (*reason, retry_after) {
                ("SUBSCRIPTIONS_PER_SOCKET", _) => {
                    "this socket runs as many subscriptions as it may; complete one first"
                        .to_string()
                }
                ("SUBSCRIPTIONS_PER_CALLER", _) => {
                    "you run as many subscriptions as you may; complete one first".to_string()
                }
                ("SESSIONS_PER_CALLER", _) => {
                    "you hold as many MCP sessions as you may; close one (DELETE /mcp) first"
                        .to_string()
                }
                (_, Some(seconds)) => format!("too many requests; retry in {seconds} s"),
                (_, None) => "too many requests".to_string(),
            },
            Self::Timeout => "the request took longer than the server allows".to_string(),
            Self::Overloaded => "the server is busy; retry shortly".to_string(),
            Self::Unavailable { .. } => "the database is unavailable; retry shortly".to_string(),
            Self::Forbidden { required } => format!("this operation needs the {required} role"),
            Self::NotFound => "not found".to_string(),
            Self::Conflict { message, .. } => message.clone(),
            Self::Validation { field, reason } => format!("invalid {field}: {reason}"),
            Self::Internal { .. } => "internal error".to_string(),
        }
    }

    /// The GraphQL error code.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) | Self::TokenRejected { .. } => "UNAUTHENTICATED",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::Timeout => "TIMEOUT",
            Self::Overloaded => "OVERLOADED",
            Self::Unavailable { .. } => "UNAVAILABLE",
            Self::Forbidden { .. } => "FORBIDDEN",
            Self::NotFound => "NOT_FOUND",
            Self::Conflict { .. } => "CONFLICT",
            Self::Validation { .. } => "VALIDATION",
            Self::Internal { .. } => "INTERNAL",
        }
    }

    /// The error as GraphQL shows it. Internal details are logged here.
    pub fn to_graphql(&self) -> async_graphql::Error {
        match self {
            Self::Internal { detail } => tracing::error!(%detail, "internal error"),
            Self::Unavailable { detail } => tracing::warn!(%detail, "the database is unavailable"),
            _ => {}
        }
        let error = async_graphql::Error::new(self.message());
        error.extend_with(|_, ext| {
            for (key, value) in self.extensions() {
                ext.set(key, value);
            }
        })
    }

    /// The error's `extensions`: its code and what goes with it.
    pub fn extensions(&self) -> Vec<(&'static str, async_graphql::Value)> {
        use async_graphql::Value;
        let mut out = vec![("code", Value::from(self.code()))];
        match self {
            Self::Validation { field, reason } => {
                out.push(("field", Value::from(field.as_str())));
                out.push(("reason", Value::from(reason.as_str())));
            }
            Self::Conflict { reason, .. } | Self::TokenRejected { reason, .. } => {
                out.push(("reason", Value::from(*reason)))
            }
            Self::RateLimited {
                reason,
                retry_after,
            } => {
                out.push(("reason", Value::from(*reason)));
                if let Some(seconds) = retry_after {
                    out.push(("retryAfter", Value::from(*seconds)));
                }
            }
            Self::Forbidden { required } => out.push(("requiredRole", Value::from(*required))),
            _ => {}
        }
        out
    }

    /// The error as one GraphQL error object (`message`, `extensions`), for
    /// answers written outside the executor.
    pub fn to_json(&self) -> serde_json::Value {
        let shown = self.to_graphql();
        let extensions: serde_json::Map<String, serde_json::Value> = self
            .extensions()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_json().unwrap_or_default()))
            .collect();
        serde_json::json!({ "message": shown.message, "extensions": extensions })
    }
}

impl From<ApiError> for async_graphql::Error {
    fn from(value: ApiError) -> Self {
        value.to_graphql()
    }
}

impl ApiError {
    /// A fault of the storage layer: `UNAVAILABLE` when the database could
    /// not be used just now, `TIMEOUT` when it cancelled a statement that
    /// ran or waited too long, `INTERNAL` otherwise.
    pub fn store(error: StoreError) -> Self {
        if error.is_unavailable() {
            Self::Unavailable {
                detail: error.to_string(),
            }
        } else if error.is_timeout() {
            tracing::warn!(%error, "the database cancelled a statement");
            Self::Timeout
        } else {
            Self::internal(error)
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(value: StoreError) -> Self {
        Self::store(value)
    }
}

impl From<ReadError> for ApiError {
    fn from(value: ReadError) -> Self {
        match value {
            ReadError::InvalidCursor => Self::validation("after", "not a cursor of this list"),
            ReadError::Store(error) => Self::store(error),
        }
    }
}

impl From<WaitError> for ApiError {
    fn from(value: WaitError) -> Self {
        match value {
            WaitError::Timeout { .. } => Self::conflict(
                "NOT_CAUGHT_UP",
                "the read models have not reached the requested position yet; retry shortly",
            ),
            WaitError::Store(error) => Self::store(error),
        }
    }
}

/// A string no text may hold, on the input field the domain names (the
/// domain's paths are the API's input names below `input`).
fn invalid_text(e: &InvalidText) -> ApiError {
    ApiError::validation(format!("input.{}", e.field), e.reason.clone())
}

/// How a domain rejection maps onto the API.
pub trait DomainErrorCode: std::error::Error {
    /// The API error for this rejection.
    fn to_api(&self) -> ApiError;
}

fn conflict_of(kind: ConflictKind) -> ApiError {
    match kind {
        ConflictKind::ExpectedVersion { expected, actual } => ApiError::conflict(
            "EXPECTED_VERSION",
            format!("expected version {expected}, but the entity is at version {actual}"),
        ),
        ConflictKind::LostRace => ApiError::conflict(
            "CONCURRENT_CHANGE",
            "a concurrent change won; reload and try again",
        ),
        ConflictKind::NameTaken => ApiError::conflict(
            "NAME_TAKEN",
            "the name is already in use in this organisation; choose another",
        ),
    }
}

impl<E: DomainErrorCode> From<CommandError<E>> for ApiError {
    fn from(value: CommandError<E>) -> Self {
        match value {
            CommandError::Domain(e) => e.to_api(),
            CommandError::NotFound => Self::NotFound,
            CommandError::Conflict(kind) => conflict_of(kind),
            CommandError::Store(e) => Self::store(e),
        }
    }
}

impl From<SecretCommandError> for ApiError {
    fn from(value: SecretCommandError) -> Self {
        match value {
            SecretCommandError::Command(e) => e.into(),
            SecretCommandError::Key(KeyError::NoKey | KeyError::WrongTenant) => Self::NotFound,
            SecretCommandError::Key(KeyError::Store(e)) => Self::store(e),
            SecretCommandError::Key(e) => Self::internal(e),
        }
    }
}

impl From<toolhub_engine::EngineError> for ApiError {
    fn from(value: toolhub_engine::EngineError) -> Self {
        use toolhub_engine::EngineError as E;
        match value {
            E::NotFound => Self::NotFound,
            E::Archived => Self::conflict(
                "ARCHIVED",
                "the workflow is archived: restore it before running it",
            ),
            E::Validation { field, reason } => Self::validation(field, reason),
            E::Execution(e) => e.into(),
            E::McpServer(e) => e.into(),
            // The server's own failure, already stripped of secrets.
            E::Mcp(e) => Self::conflict("MCP_UNAVAILABLE", e.to_string()),
            E::Store(e) => Self::store(e),
        }
    }
}

impl DomainErrorCode for WorkflowError {
    fn to_api(&self) -> ApiError {
        let reason = self.to_string();
        match self {
            Self::NotFound => ApiError::NotFound,
            Self::AlreadyExists => ApiError::conflict("ALREADY_EXISTS", reason),
            Self::Archived => ApiError::conflict("ARCHIVED", reason),
            Self::NotArchived => ApiError::conflict("NOT_ARCHIVED", reason),
            Self::AlreadyArchived => ApiError::conflict("ALREADY_ARCHIVED", reason),
            Self::UnknownVersion { .. } => ApiError::validation("input.toVersion", reason),
            Self::InvalidName { reason } => ApiError::validation("input.name", reason.clone()),
            Self::Unchanged => ApiError::validation("input.name", reason),
            Self::InvalidDescription => ApiError::validation("input.description", reason),
            Self::InvalidComment => ApiError::validation("input.comment", reason),
            Self::InvalidTrigger { field, reason } => {
                ApiError::validation(format!("input.{field}"), reason.clone())
            }
            Self::InvalidDefinition(DefinitionError::InvalidText(e)) | Self::InvalidText(e) => {
                invalid_text(e)
            }
            Self::InvalidDefinition(e) => ApiError::validation("input.definition", e.to_string()),
            Self::WebhookNotFound => ApiError::NotFound,
            Self::WebhookExists => ApiError::conflict("ALREADY_EXISTS", reason),
            Self::TooManyWebhooks => ApiError::conflict("TOO_MANY_WEBHOOKS", reason),
            Self::InvalidWebhookDescription => ApiError::validation("input.description", reason),
            Self::StaleGeneration => conflict_of(ConflictKind::LostRace),
            Self::InvalidGrace => ApiError::validation("input.gracePeriodSeconds", reason),
        }
    }
}

impl DomainErrorCode for SecretError {
    fn to_api(&self) -> ApiError {
        let reason = self.to_string();
        match self {
            // A deleted secret is gone as far as clients are concerned.
            Self::NotFound | Self::Deleted => ApiError::NotFound,
            Self::AlreadyExists => ApiError::conflict("ALREADY_EXISTS", reason),
            Self::InvalidName => ApiError::validation("input.name", reason),
            Self::InvalidDescription => ApiError::validation("input.description", reason),
            Self::InvalidText(e) => invalid_text(e),
        }
    }
}

impl DomainErrorCode for toolhub_domain::api_key::ApiKeyError {
    fn to_api(&self) -> ApiError {
        use toolhub_domain::api_key::ApiKeyError as E;
        let reason = self.to_string();
        match self {
            E::NotFound => ApiError::NotFound,
            E::AlreadyExists => ApiError::conflict("ALREADY_EXISTS", reason),
            E::AlreadyRevoked => ApiError::conflict("ALREADY_REVOKED", reason),
            E::InvalidName => ApiError::validation("input.name", reason),
            E::ExpiryInThePast => ApiError::validation("input.expiresAt", reason),
            E::InvalidText(e) => invalid_text(e),
        }
    }
}

impl DomainErrorCode for McpServerError {
    fn to_api(&self) -> ApiError {
        let reason = self.to_string();
        match self {
            // A deregistered server is gone for good.
            Self::NotFound | Self::Deregistered => ApiError::NotFound,
            Self::AlreadyExists => ApiError::conflict("ALREADY_EXISTS", reason),
            Self::AlreadyEnabled => ApiError::conflict("ALREADY_ENABLED", reason),
            Self::AlreadyDisabled => ApiError::conflict("ALREADY_DISABLED", reason),
            Self::InvalidName => ApiError::validation("input.name", reason),
            Self::InvalidTransport { reason } => {
                ApiError::validation("input.transport", reason.clone())
            }
            Self::InvalidText(e) => invalid_text(e),
            Self::DuplicateTool { .. } | Self::InvalidTool { .. } => {
                ApiError::validation("input.tools", reason)
            }
        }
    }
}

impl DomainErrorCode for ExecutionError {
    fn to_api(&self) -> ApiError {
        let reason = self.to_string();
        match self {
            Self::NotFound => ApiError::NotFound,
            Self::AlreadyStarted => ApiError::conflict("ALREADY_EXISTS", reason),
            Self::InvalidTrigger { .. } => ApiError::validation("input.trigger", reason),
            Self::InvalidWorkflowVersion => ApiError::validation("input.workflowVersion", reason),
            Self::NotABreakpoint { .. } => ApiError::validation("input.nodeId", reason),
            Self::InvalidText(e) => invalid_text(e),
            // Everything else is about the execution's current state.
            _ => ApiError::conflict("STATE", reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn another_tenants_aggregate_is_not_found() {
        let err: ApiError = CommandError::<WorkflowError>::NotFound.into();
        assert_eq!(err.code(), "NOT_FOUND");
    }

    #[test]
    fn a_stale_expected_version_is_a_conflict() {
        let err: ApiError = CommandError::<SecretError>::Conflict(ConflictKind::ExpectedVersion {
            expected: 1,
            actual: 2,
        })
        .into();
        assert_eq!(err.code(), "CONFLICT");
    }

    #[test]
    fn internal_errors_show_nothing_internal() {
        let err = ApiError::internal("connection refused to db.internal:5432");
        let shown = err.to_graphql();
        assert_eq!(shown.message, "internal error");
    }

    #[test]
    fn a_bad_definition_is_a_validation_error_on_the_definition() {
        let err = WorkflowError::InvalidDefinition(
            toolhub_domain::definition::DefinitionError::NoEntryNode,
        )
        .to_api();
        assert!(
            matches!(&err, ApiError::Validation { field, .. } if field == "input.definition"),
            "{err:?}"
        );
    }
}
