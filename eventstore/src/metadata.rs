//! Who issued a command and why: the metadata stored with every event.

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use toolhub_domain::TenantId;
use uuid::Uuid;

/// Metadata keys, as stored in the `metadata` column.
pub mod keys {
    /// The JWT `sub` of the caller.
    pub const ACTOR: &str = "actor";
    /// The JWT `org` of the caller: the tenant.
    pub const TENANT: &str = "tenant";
    /// Groups every event caused by one user action, across aggregates.
    pub const CORRELATION_ID: &str = "correlation_id";
    /// The event or command that directly caused this one.
    pub const CAUSATION_ID: &str = "causation_id";
    /// The HTTP request that carried the command.
    pub const REQUEST_ID: &str = "request_id";
}

/// The caller's context for one command. Every event the command appends
/// carries it as metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandContext {
    /// Who issued the command (JWT `sub`, or a system actor such as `engine`).
    pub actor: String,
    /// The caller's tenant. The command may only touch this tenant's
    /// aggregates.
    pub tenant: TenantId,
    /// Shared by every command issued for one user action.
    pub correlation_id: Uuid,
    /// What caused this command: a previous event or command, if any.
    pub causation_id: Option<Uuid>,
    /// The request that carried the command, for joining logs and events.
    pub request_id: String,
}

impl CommandContext {
    /// A context for a fresh user action, with new correlation and request ids.
    pub fn new(actor: impl Into<String>, tenant: TenantId) -> Self {
        let correlation_id = Uuid::now_v7();
        Self {
            actor: actor.into(),
            tenant,
            correlation_id,
            causation_id: None,
            request_id: correlation_id.to_string(),
        }
    }

    /// The metadata map stored with each event.
    pub(crate) fn to_metadata(&self) -> HashMap<String, String> {
        let mut map = HashMap::with_capacity(5);
        map.insert(keys::ACTOR.into(), self.actor.clone());
        map.insert(keys::TENANT.into(), self.tenant.to_string());
        map.insert(keys::CORRELATION_ID.into(), self.correlation_id.to_string());
        map.insert(
            keys::CAUSATION_ID.into(),
            self.causation_id.map(|c| c.to_string()).unwrap_or_default(),
        );
        map.insert(keys::REQUEST_ID.into(), self.request_id.clone());
        map
    }
}

/// The metadata of a stored event, as read back from the log.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventMetadata {
    /// Who issued the command.
    #[serde(default)]
    pub actor: String,
    /// The tenant the event belongs to.
    #[serde(default)]
    pub tenant: String,
    /// Groups events of one user action.
    #[serde(default)]
    pub correlation_id: String,
    /// What caused the event; empty when nothing did.
    #[serde(default)]
    pub causation_id: String,
    /// The request that carried the command.
    #[serde(default)]
    pub request_id: String,
}
