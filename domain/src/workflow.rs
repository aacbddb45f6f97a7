//! The workflow aggregate: a named, versioned workflow definition with its
//! triggers.
//!
//! Every change to the definition is a new version: creation is version 1,
//! each [`WorkflowCommand::UpdateDefinition`] and each
//! [`WorkflowCommand::Revert`] adds one. Nothing is ever overwritten, so the
//! state keeps every version (a revert copies an earlier one) and an
//! execution can pin the version it runs. Definitions are validated by
//! [`WorkflowDefinition::parse`] on every change.
//!
//! Archiving hides a workflow and freezes it; restoring undoes that. A
//! workflow is never deleted, because executions and the audit log refer to
//! it.
//!
//! A workflow also owns its webhooks: the URLs that start it when a signed
//! request arrives. The log records that a webhook exists, its description,
//! and which generations of its signing secret are valid until when; the
//! secrets themselves are sealed outside the log, by the key store.

use std::collections::BTreeMap;

use crate::common::{AggregateRoot, CommandTraits, NameChange, Role, TenantId, WebhookId};
use crate::definition::{DefinitionError, WorkflowDefinition};
use crate::schedule::{parse_timezone, MissedFires};
use crate::text::{self, InvalidText};
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The longest workflow name, in characters.
pub const MAX_WORKFLOW_NAME_LEN: usize = 200;

/// The longest workflow description, in characters.
pub const MAX_WORKFLOW_DESCRIPTION_LEN: usize = 2_000;

/// The longest version comment, in characters.
pub const MAX_VERSION_COMMENT_LEN: usize = 2_000;

/// The most triggers a workflow may have.
pub const MAX_TRIGGERS: usize = 20;

/// The most webhooks a workflow may have at once.
pub const MAX_WEBHOOKS: usize = 20;

/// The longest webhook description, in characters.
pub const MAX_WEBHOOK_DESCRIPTION_LEN: usize = 500;

/// The longest webhook key, in characters.
pub const MAX_WEBHOOK_KEY_LEN: usize = 128;

/// The longest MCP tool name, in characters (the limit MCP clients such as
/// model providers put on tool names).
pub const MAX_TOOL_NAME_LEN: usize = 64;

/// The longest MCP tool description, in characters.
pub const MAX_TOOL_DESCRIPTION_LEN: usize = 2_000;

/// The largest MCP tool input schema, serialized.
pub const MAX_TOOL_SCHEMA_BYTES: usize = 64 * 1024;

/// What starts an execution of a workflow without a person pressing "run".
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trigger {
    /// Runs on a schedule.
    Cron {
        /// A five-field cron expression (minute, hour, day of month, month,
        /// day of week), read in `timezone`.
        schedule: String,
        /// The IANA time zone the schedule reads in (`Europe/Paris`); UTC
        /// when absent, as in triggers recorded before zones existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        timezone: Option<String>,
        /// The input each scheduled execution starts with (`{}` when
        /// absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        input: Option<Value>,
        /// What to do with fires missed while no scheduler ran.
        #[serde(default, skip_serializing_if = "MissedFires::is_skip")]
        missed: MissedFires,
    },
    /// A webhook key, as triggers recorded before webhooks were made by
    /// `CreateWebhook` held them. Such triggers still read (and are shown
    /// as recorded), but start nothing, and no new one is accepted: a
    /// webhook is made by [`WorkflowCommand::CreateWebhook`], which gives it
    /// an unguessable URL and a signing secret.
    Webhook {
        /// The URL path segment it named, `[A-Za-z0-9_-]{1,128}`.
        key: String,
    },
    /// Runs when an MCP client calls the tool it is exposed as, on
    /// Toolhub's own MCP endpoint (`/mcp`). A workflow is at most one tool,
    /// and a tool name belongs to at most one workflow of a tenant: the
    /// name is claimed when the trigger is set (see
    /// [`Workflow`]'s [`AggregateRoot::name_change`]).
    McpTool {
        /// The tool's name, `[A-Za-z0-9_-]{1,64}`.
        name: String,
        /// What the tool does, for the model that decides to call it.
        #[serde(default)]
        description: String,
        /// The JSON Schema the arguments must match: an object schema,
        /// self-contained (no remote `$ref`), at most 64 KiB.
        input_schema: Value,
    },
}

/// The largest input a cron trigger may carry, serialized.
pub const MAX_TRIGGER_INPUT_BYTES: usize = 64 * 1024;

impl Trigger {
    /// Checks the trigger, returning the faulty field (`schedule`,
    /// `timezone`, `input`, `key`, `name`, `description`, `input_schema`)
    /// and why it is unusable.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        match self {
            Self::Cron {
                schedule,
                timezone,
                input,
                ..
            } => {
                check_cron(schedule).map_err(|reason| ("schedule", reason))?;
                if let Some(zone) = timezone {
                    parse_timezone(zone).map_err(|reason| ("timezone", reason))?;
                }
                if let Some(input) = input {
                    if !input.is_object() {
                        return Err(("input", "a trigger's input is a JSON object".into()));
                    }
                    if serde_json::to_vec(input).map_or(true, |b| b.len() > MAX_TRIGGER_INPUT_BYTES)
                    {
                        return Err((
                            "input",
                            format!("a trigger's input is at most {MAX_TRIGGER_INPUT_BYTES} bytes"),
                        ));
                    }
                }
                Ok(())
            }
            Self::Webhook { key } => {
                let valid = !key.is_empty()
                    && key.len() <= MAX_WEBHOOK_KEY_LEN
                    && key
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if valid {
                    Ok(())
                } else {
                    Err((
                        "key",
                        format!(
                            "a webhook key is 1 to {MAX_WEBHOOK_KEY_LEN} letters, digits, '_' or '-'"
                        ),
                    ))
                }
            }
            Self::McpTool {
                name,
                description,
                input_schema,
            } => {
                check_tool_name(name).map_err(|reason| ("name", reason))?;
                if description.chars().count() > MAX_TOOL_DESCRIPTION_LEN {
                    return Err((
                        "description",
                        format!(
                            "a tool description is at most {MAX_TOOL_DESCRIPTION_LEN} characters"
                        ),
                    ));
                }
                check_tool_schema(input_schema).map_err(|reason| ("input_schema", reason))
            }
        }
    }

    /// The tool name, for an MCP tool trigger.
    pub fn tool_name(&self) -> Option<&str> {
        match self {
            Self::McpTool { name, .. } => Some(name),
            _ => None,
        }
    }
}

/// Checks an MCP tool name: 1 to 64 ASCII letters, digits, `_` or `-`.
fn check_tool_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_TOOL_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "a tool name is 1 to {MAX_TOOL_NAME_LEN} letters, digits, '_' or '-'"
        ))
    }
}

/// Checks an MCP tool's input schema: a JSON object of bounded size whose
/// `type` is `"object"` (MCP requires tool arguments to be an object, and
/// clients refuse a tool list that says otherwise), which compiles as a JSON
/// Schema. The crate that compiles it here is the one that validates the
/// arguments of every call, so what is accepted here is what calls are held
/// to. It is compiled without fetching anything: a `$ref` to another
/// document does not resolve and is refused.
pub fn check_tool_schema(schema: &Value) -> Result<(), String> {
    let Some(object) = schema.as_object() else {
        return Err("an input schema is a JSON object".into());
    };
    if serde_json::to_vec(schema).map_or(true, |b| b.len() > MAX_TOOL_SCHEMA_BYTES) {
        return Err(format!(
            "an input schema is at most {MAX_TOOL_SCHEMA_BYTES} bytes"
        ));
    }
    if object.get("type").and_then(Value::as_str) != Some("object") {
        return Err(
            "an input schema describes the arguments object: its `type` is \"object\"".into(),
        );
    }
    compile_tool_schema(schema).map(|_| ())
}

/// Compiles an MCP tool's input schema into a validator, as calls use it.
pub fn compile_tool_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    jsonschema::validator_for(schema).map_err(|e| format!("not a valid JSON Schema: {e}"))
}

/// Parses a five-field cron expression (minute, hour, day of month, month,
/// day of week; months and days may be three-letter English names) with
/// `croner`, the parser the scheduler fires with, so that what validation
/// accepts and what fires can never disagree. Seconds, years and `@daily`
/// style nicknames are refused: a schedule reads the same in every cron.
pub fn parse_cron(schedule: &str) -> Result<croner::Cron, String> {
    if schedule.split_whitespace().count() != 5 || schedule.trim_start().starts_with('@') {
        return Err(
            "a cron schedule has five fields: minute, hour, day of month, month, day of week"
                .into(),
        );
    }
    // croner reads `1,,2` as `1,2`; an empty item is almost always a typo.
    if schedule
        .split_whitespace()
        .any(|field| field.split(',').any(str::is_empty))
    {
        return Err(format!(
            "`{schedule}` is not a valid cron schedule: a list has an empty item"
        ));
    }
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Disallowed)
        .year(croner::parser::Year::Disallowed)
        .build()
        .parse(&vixie_steps(schedule))
        .map_err(|e| format!("`{schedule}` is not a valid cron schedule: {e}"))
}

/// Rewrites Vixie cron's `N/STEP` (from N to the field's end, every STEP),
/// which croner refuses as ambiguous, into the explicit `N-END/STEP`, so
/// that schedules written for classic cron keep their meaning.
fn vixie_steps(schedule: &str) -> String {
    const ENDS: [u32; 5] = [59, 23, 31, 12, 6];
    schedule
        .split_whitespace()
        .zip(ENDS)
        .map(|(field, end)| {
            field
                .split(',')
                .map(|item| match item.split_once('/') {
                    Some((start, step)) if start.parse::<u32>().is_ok() => {
                        format!("{start}-{end}/{step}")
                    }
                    _ => item.to_string(),
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Checks a cron schedule; see [`parse_cron`].
fn check_cron(schedule: &str) -> Result<(), String> {
    parse_cron(schedule).map(|_| ())
}

/// The state of one workflow, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workflow {
    /// The owner; `None` until [`WorkflowEvent::WorkflowCreated`] is applied.
    tenant: Option<TenantId>,
    /// The display name.
    name: String,
    /// What the workflow is for.
    description: String,
    /// Every version's definition: version `n` is at index `n - 1`. Kept
    /// whole because a revert copies an earlier version.
    versions: Vec<WorkflowDefinition>,
    /// True while archived: hidden, frozen, not triggered.
    archived: bool,
    /// What starts executions automatically.
    triggers: Vec<Trigger>,
    /// The webhooks that exist now (a deleted one is removed). Absent from
    /// snapshots taken before webhooks existed.
    #[serde(default)]
    webhooks: BTreeMap<WebhookId, Webhook>,
}

/// A webhook of a workflow, as the log records it: no secret, only which
/// generations of its secret are valid until when.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Webhook {
    /// What it is for.
    pub description: String,
    /// The newest generation of its secret, from 1.
    pub generation: u32,
    /// The generations that may still be valid, oldest first: the newest has
    /// no end; an older one is valid until the end its rotation gave it.
    pub secrets: Vec<SecretGeneration>,
}

/// One generation of a webhook's signing secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretGeneration {
    /// The generation, from 1.
    pub generation: u32,
    /// Until when a signature made with it is accepted; `None` for the
    /// newest.
    pub valid_until: Option<DateTime<Utc>>,
}

impl Webhook {
    /// The generations whose signatures are accepted at `now`.
    pub fn valid_generations(&self, now: DateTime<Utc>) -> Vec<u32> {
        self.secrets
            .iter()
            .filter(|s| s.valid_until.is_none_or(|until| until > now))
            .map(|s| s.generation)
            .collect()
    }
}

impl Workflow {
    /// True once the workflow has been created.
    pub fn exists(&self) -> bool {
        self.tenant.is_some()
    }

    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// What the workflow is for.
    pub fn description(&self) -> &str {
        &self.description
    }

    /// The latest version number; 0 before creation.
    pub fn current_version(&self) -> u64 {
        self.versions.len() as u64
    }

    /// The definition of a version, if it exists.
    pub fn definition(&self, version: u64) -> Option<&WorkflowDefinition> {
        let index = usize::try_from(version.checked_sub(1)?).ok()?;
        self.versions.get(index)
    }

    /// The latest definition, once created.
    pub fn current_definition(&self) -> Option<&WorkflowDefinition> {
        self.versions.last()
    }

    /// True while archived.
    pub fn is_archived(&self) -> bool {
        self.archived
    }

    /// What starts executions automatically.
    pub fn triggers(&self) -> &[Trigger] {
        &self.triggers
    }

    /// A webhook of the workflow, unless it never existed or was deleted.
    pub fn webhook(&self, id: WebhookId) -> Option<&Webhook> {
        self.webhooks.get(&id)
    }

    /// The webhooks that exist now.
    pub fn webhooks(&self) -> &BTreeMap<WebhookId, Webhook> {
        &self.webhooks
    }
}

/// What a caller may ask of a workflow. Every command needs the Editor role.
#[derive(Debug, Clone, PartialEq)]
pub enum WorkflowCommand {
    /// Creates the workflow with its first definition (version 1).
    Create {
        /// The owner.
        tenant: TenantId,
        /// The display name, 1 to 200 characters once trimmed.
        name: String,
        /// What the workflow is for, at most 2,000 characters.
        description: String,
        /// The definition as the user sent it; validated here.
        definition: Value,
    },
    /// Records a new version of the definition.
    UpdateDefinition {
        /// The definition as the user sent it; validated here.
        definition: Value,
        /// Why it changed, shown in the version history.
        comment: Option<String>,
    },
    /// Changes the display name.
    Rename {
        /// The new name, 1 to 200 characters once trimmed.
        name: String,
    },
    /// Replaces the triggers (an empty list removes them all).
    SetTriggers {
        /// The new triggers, without duplicates.
        triggers: Vec<Trigger>,
    },
    /// Hides and freezes the workflow.
    Archive,
    /// Undoes [`WorkflowCommand::Archive`].
    Restore,
    /// Records a new version that copies an earlier one.
    Revert {
        /// The version to copy.
        to_version: u64,
        /// Why, shown in the version history.
        comment: Option<String>,
    },
    /// Adds a webhook; its first secret (generation 1) is sealed by the
    /// caller under the id before the command runs.
    CreateWebhook {
        /// The new webhook's id ([`WebhookId::random`]).
        webhook_id: WebhookId,
        /// What it is for, at most 500 characters.
        description: String,
    },
    /// Starts a new generation of a webhook's secret; the ones before stay
    /// valid until `previous_valid_until` (at the latest).
    RotateWebhookSecret {
        /// The webhook.
        webhook_id: WebhookId,
        /// The new generation, whose secret the caller sealed: the current
        /// one plus one.
        generation: u32,
        /// When the rotation happens.
        at: DateTime<Utc>,
        /// Until when the older generations stay valid (`at` revokes them
        /// at once).
        previous_valid_until: DateTime<Utc>,
    },
    /// Removes a webhook: requests to it are refused from now on.
    DeleteWebhook {
        /// The webhook.
        webhook_id: WebhookId,
    },
}

impl CommandTraits for WorkflowCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Create { .. })
    }

    fn is_retry_safe(&self) -> bool {
        // A revert chose its target while looking at a particular history; on
        // top of a concurrent change it may no longer be what the caller
        // meant. The other commands set a value outright.
        !matches!(self, Self::Create { .. } | Self::Revert { .. })
    }

    fn required_role(&self) -> Role {
        Role::Editor
    }
}

/// What happened to a workflow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum WorkflowEvent {
    /// The workflow was created; its definition is version 1 (emitted by
    /// [`WorkflowCommand::Create`]).
    WorkflowCreated {
        /// The owner.
        tenant: TenantId,
        /// The display name, trimmed.
        name: String,
        /// What the workflow is for.
        description: String,
        /// Version 1 of the definition.
        definition: WorkflowDefinition,
    },
    /// A new version of the definition (emitted by
    /// [`WorkflowCommand::UpdateDefinition`]).
    WorkflowDefinitionUpdated {
        /// The new version number: the previous one plus one.
        version: u64,
        /// The new definition.
        definition: WorkflowDefinition,
        /// Why it changed.
        comment: Option<String>,
    },
    /// The display name changed (emitted by [`WorkflowCommand::Rename`]).
    WorkflowRenamed {
        /// The new name, trimmed.
        name: String,
    },
    /// The triggers were replaced (emitted by
    /// [`WorkflowCommand::SetTriggers`]).
    WorkflowTriggersSet {
        /// The complete new list.
        triggers: Vec<Trigger>,
    },
    /// The workflow was archived (emitted by [`WorkflowCommand::Archive`]).
    WorkflowArchived,
    /// The workflow was restored (emitted by [`WorkflowCommand::Restore`]).
    WorkflowRestored,
    /// A new version copying an earlier one (emitted by
    /// [`WorkflowCommand::Revert`]).
    WorkflowReverted {
        /// The new version number: the previous one plus one.
        version: u64,
        /// The version that was copied.
        from_version: u64,
        /// The copied definition, so that the event alone says what the
        /// new version contains.
        definition: WorkflowDefinition,
        /// Why.
        comment: Option<String>,
    },
    /// A webhook was added, with generation 1 of its secret (emitted by
    /// [`WorkflowCommand::CreateWebhook`]). The secret is not in the event.
    WebhookCreated {
        /// The webhook's id: the last segment of its URL.
        webhook_id: WebhookId,
        /// What it is for.
        description: String,
    },
    /// A new generation of a webhook's secret (emitted by
    /// [`WorkflowCommand::RotateWebhookSecret`]).
    WebhookSecretRotated {
        /// The webhook.
        webhook_id: WebhookId,
        /// The new generation.
        generation: u32,
        /// When it was rotated.
        at: DateTime<Utc>,
        /// Until when the older generations stay valid.
        previous_valid_until: DateTime<Utc>,
    },
    /// A webhook was removed (emitted by [`WorkflowCommand::DeleteWebhook`]).
    WebhookDeleted {
        /// The webhook.
        webhook_id: WebhookId,
    },
}

impl DomainEvent for WorkflowEvent {
    fn event_type(&self) -> String {
        match self {
            Self::WorkflowCreated { .. } => "WorkflowCreated",
            Self::WorkflowDefinitionUpdated { .. } => "WorkflowDefinitionUpdated",
            Self::WorkflowRenamed { .. } => "WorkflowRenamed",
            Self::WorkflowTriggersSet { .. } => "WorkflowTriggersSet",
            Self::WorkflowArchived => "WorkflowArchived",
            Self::WorkflowRestored => "WorkflowRestored",
            Self::WorkflowReverted { .. } => "WorkflowReverted",
            Self::WebhookCreated { .. } => "WebhookCreated",
            Self::WebhookSecretRotated { .. } => "WebhookSecretRotated",
            Self::WebhookDeleted { .. } => "WebhookDeleted",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why a workflow command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkflowError {
    /// Create on a workflow that already exists.
    #[error("the workflow already exists")]
    AlreadyExists,
    /// A command other than Create on a workflow that does not exist.
    #[error("the workflow does not exist")]
    NotFound,
    /// A change to an archived workflow.
    #[error("the workflow is archived; restore it first")]
    Archived,
    /// Restore on a workflow that is not archived.
    #[error("the workflow is not archived")]
    NotArchived,
    /// Archive on an archived workflow.
    #[error("the workflow is already archived")]
    AlreadyArchived,
    /// Revert to a version that does not exist.
    #[error("the workflow has no version {version}")]
    UnknownVersion {
        /// The requested version.
        version: u64,
    },
    /// The name is blank, too long, or has control characters.
    #[error("invalid name: {reason}")]
    InvalidName {
        /// What is wrong with it.
        reason: String,
    },
    /// The description is longer than 2,000 characters.
    #[error("a description is at most {MAX_WORKFLOW_DESCRIPTION_LEN} characters")]
    InvalidDescription,
    /// The version comment is longer than 2,000 characters.
    #[error("a version comment is at most {MAX_VERSION_COMMENT_LEN} characters")]
    InvalidComment,
    /// A trigger is unusable, or there are too many, or one is repeated.
    #[error("invalid trigger: {reason}")]
    InvalidTrigger {
        /// The faulty field, such as `triggers[0].timezone`.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// The definition broke a rule.
    #[error("invalid definition: {0}")]
    InvalidDefinition(#[from] DefinitionError),
    /// Rename to the current name.
    #[error("the workflow already has that name")]
    Unchanged,
    /// A webhook command names a webhook the workflow does not have (never
    /// had, or deleted).
    #[error("the workflow has no such webhook")]
    WebhookNotFound,
    /// CreateWebhook with an id the workflow already has.
    #[error("the webhook already exists")]
    WebhookExists,
    /// CreateWebhook on a workflow with the most webhooks it may have.
    #[error("a workflow has at most {MAX_WEBHOOKS} webhooks")]
    TooManyWebhooks,
    /// A webhook description longer than 500 characters.
    #[error("a webhook description is at most {MAX_WEBHOOK_DESCRIPTION_LEN} characters")]
    InvalidWebhookDescription,
    /// A rotation that sealed a generation another rotation took first.
    #[error("another rotation of the webhook's secret came first")]
    StaleGeneration,
    /// A rotation whose grace ends before it happens.
    #[error("the old secret cannot stop being valid before the rotation")]
    InvalidGrace,
    /// A text field holds a character no text may hold (see
    /// [`crate::text`]); the error names the field.
    #[error(transparent)]
    InvalidText(#[from] InvalidText),
}

/// Trims and checks a workflow name.
fn check_name(name: &str) -> Result<String, WorkflowError> {
    text::check_name("name", name).map_err(|e| WorkflowError::InvalidName { reason: e.reason })?;
    let name = name.trim();
    let reason = if name.is_empty() {
        "a name must not be blank".to_string()
    } else if name.chars().count() > MAX_WORKFLOW_NAME_LEN {
        format!("a name is at most {MAX_WORKFLOW_NAME_LEN} characters")
    } else {
        return Ok(name.to_string());
    };
    Err(WorkflowError::InvalidName { reason })
}

fn check_comment(comment: &Option<String>) -> Result<(), WorkflowError> {
    if let Some(comment) = comment {
        text::check_free_text("comment", comment)?;
    }
    match comment {
        Some(c) if c.chars().count() > MAX_VERSION_COMMENT_LEN => {
            Err(WorkflowError::InvalidComment)
        }
        _ => Ok(()),
    }
}

fn check_triggers(triggers: &[Trigger]) -> Result<(), WorkflowError> {
    if triggers.len() > MAX_TRIGGERS {
        return Err(WorkflowError::InvalidTrigger {
            field: "triggers".into(),
            reason: format!("a workflow has at most {MAX_TRIGGERS} triggers"),
        });
    }
    for (index, trigger) in triggers.iter().enumerate() {
        match trigger {
            Trigger::Cron {
                schedule,
                timezone,
                input,
                ..
            } => {
                text::check_name(&format!("triggers[{index}].schedule"), schedule)?;
                if let Some(zone) = timezone {
                    text::check_name(&format!("triggers[{index}].timezone"), zone)?;
                }
                if let Some(input) = input {
                    text::check_json(&format!("triggers[{index}].input"), input)?;
                }
            }
            Trigger::Webhook { .. } => {
                return Err(WorkflowError::InvalidTrigger {
                    field: format!("triggers[{index}]"),
                    reason: "a webhook is made by createWebhook, which answers its URL and its \
                             signing secret; a `webhook` trigger starts nothing"
                        .into(),
                })
            }
            Trigger::McpTool {
                name,
                description,
                input_schema,
            } => {
                text::check_name(&format!("triggers[{index}].name"), name)?;
                text::check_free_text(&format!("triggers[{index}].description"), description)?;
                text::check_json(&format!("triggers[{index}].input_schema"), input_schema)?;
            }
        }
        trigger
            .validate()
            .map_err(|(field, reason)| WorkflowError::InvalidTrigger {
                field: format!("triggers[{index}].{field}"),
                reason,
            })?;
        if triggers[..index].contains(trigger) {
            return Err(WorkflowError::InvalidTrigger {
                field: format!("triggers[{index}]"),
                reason: "the same trigger is listed twice".into(),
            });
        }
        // A workflow claims one tool name (the unique-name claims hold one
        // name per aggregate), and one workflow behind two tools would only
        // confuse the model choosing between them.
        if trigger.tool_name().is_some()
            && triggers[..index].iter().any(|t| t.tool_name().is_some())
        {
            return Err(WorkflowError::InvalidTrigger {
                field: format!("triggers[{index}]"),
                reason: "a workflow is exposed as at most one MCP tool".into(),
            });
        }
    }
    Ok(())
}

impl Workflow {
    /// Decides which events a command produces, without changing anything.
    fn decide(&self, command: WorkflowCommand) -> Result<Vec<WorkflowEvent>, WorkflowError> {
        if let WorkflowCommand::Create {
            tenant,
            name,
            description,
            definition,
        } = command
        {
            if self.exists() {
                return Err(WorkflowError::AlreadyExists);
            }
            let name = check_name(&name)?;
            text::check_free_text("description", &description)?;
            if description.chars().count() > MAX_WORKFLOW_DESCRIPTION_LEN {
                return Err(WorkflowError::InvalidDescription);
            }
            let definition = WorkflowDefinition::parse(&definition)?;
            return Ok(vec![WorkflowEvent::WorkflowCreated {
                tenant,
                name,
                description,
                definition,
            }]);
        }
        if !self.exists() {
            return Err(WorkflowError::NotFound);
        }
        let next_version = self.current_version() + 1;
        let event = match command {
            WorkflowCommand::Create { .. } => return Err(WorkflowError::AlreadyExists),
            WorkflowCommand::Archive if self.archived => {
                return Err(WorkflowError::AlreadyArchived)
            }
            WorkflowCommand::Archive => WorkflowEvent::WorkflowArchived,
            WorkflowCommand::Restore if !self.archived => return Err(WorkflowError::NotArchived),
            WorkflowCommand::Restore => WorkflowEvent::WorkflowRestored,
            // Rotating and deleting a webhook stay possible while archived:
            // an operator must be able to revoke a leaked secret.
            WorkflowCommand::RotateWebhookSecret {
                webhook_id,
                generation,
                at,
                previous_valid_until,
            } => {
                let hook = self
                    .webhooks
                    .get(&webhook_id)
                    .ok_or(WorkflowError::WebhookNotFound)?;
                if previous_valid_until < at {
                    return Err(WorkflowError::InvalidGrace);
                }
                if generation != hook.generation + 1 {
                    return Err(WorkflowError::StaleGeneration);
                }
                WorkflowEvent::WebhookSecretRotated {
                    webhook_id,
                    generation,
                    at,
                    previous_valid_until,
                }
            }
            WorkflowCommand::DeleteWebhook { webhook_id } => {
                if !self.webhooks.contains_key(&webhook_id) {
                    return Err(WorkflowError::WebhookNotFound);
                }
                WorkflowEvent::WebhookDeleted { webhook_id }
            }
            _ if self.archived => return Err(WorkflowError::Archived),
            WorkflowCommand::CreateWebhook {
                webhook_id,
                description,
            } => {
                text::check_free_text("description", &description)?;
                if description.chars().count() > MAX_WEBHOOK_DESCRIPTION_LEN {
                    return Err(WorkflowError::InvalidWebhookDescription);
                }
                if self.webhooks.contains_key(&webhook_id) {
                    return Err(WorkflowError::WebhookExists);
                }
                if self.webhooks.len() >= MAX_WEBHOOKS {
                    return Err(WorkflowError::TooManyWebhooks);
                }
                WorkflowEvent::WebhookCreated {
                    webhook_id,
                    description,
                }
            }
            WorkflowCommand::UpdateDefinition {
                definition,
                comment,
            } => {
                check_comment(&comment)?;
                WorkflowEvent::WorkflowDefinitionUpdated {
                    version: next_version,
                    definition: WorkflowDefinition::parse(&definition)?,
                    comment,
                }
            }
            WorkflowCommand::Rename { name } => {
                let name = check_name(&name)?;
                if name == self.name {
                    return Err(WorkflowError::Unchanged);
                }
                WorkflowEvent::WorkflowRenamed { name }
            }
            WorkflowCommand::SetTriggers { triggers } => {
                check_triggers(&triggers)?;
                WorkflowEvent::WorkflowTriggersSet { triggers }
            }
            WorkflowCommand::Revert {
                to_version,
                comment,
            } => {
                let definition =
                    self.definition(to_version)
                        .ok_or(WorkflowError::UnknownVersion {
                            version: to_version,
                        })?;
                check_comment(&comment)?;
                // The old version was valid under the rules of its day; it
                // must also be valid under today's to become current again.
                definition.validate()?;
                WorkflowEvent::WorkflowReverted {
                    version: next_version,
                    from_version: to_version,
                    definition: definition.clone(),
                    comment,
                }
            }
        };
        Ok(vec![event])
    }
}

crate::common::aggregate!(
    Workflow,
    "workflow",
    WorkflowCommand,
    WorkflowEvent,
    WorkflowError
);

impl Workflow {
    /// Applies one recorded event to the state (cqrs-es's `apply`).
    fn evolve(&mut self, event: WorkflowEvent) {
        match event {
            WorkflowEvent::WorkflowCreated {
                tenant,
                name,
                description,
                definition,
            } => {
                self.tenant = Some(tenant);
                self.name = name;
                self.description = description;
                self.versions = vec![definition];
            }
            WorkflowEvent::WorkflowDefinitionUpdated { definition, .. }
            | WorkflowEvent::WorkflowReverted { definition, .. } => {
                // Versions are consecutive by construction, so the new one is
                // simply the next slot.
                self.versions.push(definition);
            }
            WorkflowEvent::WorkflowRenamed { name } => self.name = name,
            WorkflowEvent::WorkflowTriggersSet { triggers } => self.triggers = triggers,
            WorkflowEvent::WorkflowArchived => self.archived = true,
            WorkflowEvent::WorkflowRestored => self.archived = false,
            WorkflowEvent::WebhookCreated {
                webhook_id,
                description,
            } => {
                self.webhooks.insert(
                    webhook_id,
                    Webhook {
                        description,
                        generation: 1,
                        secrets: vec![SecretGeneration {
                            generation: 1,
                            valid_until: None,
                        }],
                    },
                );
            }
            WorkflowEvent::WebhookSecretRotated {
                webhook_id,
                generation,
                at,
                previous_valid_until,
            } => {
                if let Some(hook) = self.webhooks.get_mut(&webhook_id) {
                    for secret in &mut hook.secrets {
                        // A grace never lengthens an earlier one.
                        secret.valid_until =
                            Some(secret.valid_until.map_or(previous_valid_until, |until| {
                                until.min(previous_valid_until)
                            }));
                    }
                    // Generations that had ended when this one began are gone
                    // for good, so the list stays short.
                    hook.secrets
                        .retain(|s| s.valid_until.is_some_and(|until| until > at));
                    hook.secrets.push(SecretGeneration {
                        generation,
                        valid_until: None,
                    });
                    hook.generation = generation;
                }
            }
            WorkflowEvent::WebhookDeleted { webhook_id } => {
                self.webhooks.remove(&webhook_id);
            }
        }
    }
}

impl AggregateRoot for Workflow {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }

    /// A workflow's unique name is the MCP tool it is exposed as: setting
    /// triggers with an `mcp_tool` claims its name (moving the workflow's
    /// claim from any earlier tool name), and setting triggers without one
    /// releases it. Of two workflows of a tenant that ask for one tool
    /// name, the second is refused (`NameTaken`), even when both commit at
    /// once. An archived workflow keeps its tool name (it is not listed,
    /// and gets it back when restored); to reuse the name elsewhere, remove
    /// the trigger first.
    fn name_change(event: &WorkflowEvent) -> Option<NameChange<'_>> {
        match event {
            WorkflowEvent::WorkflowTriggersSet { triggers } => {
                match triggers.iter().find_map(Trigger::tool_name) {
                    Some(name) => Some(NameChange::Move(name)),
                    None => Some(NameChange::Release),
                }
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cqrs_es::test::TestFramework;
    use cqrs_es::Aggregate;
    use serde_json::json;

    type WorkflowTest = TestFramework<Workflow>;

    fn tenant() -> TenantId {
        TenantId::parse("acme").expect("a valid tenant")
    }

    fn definition_json(milliseconds: u64) -> Value {
        json!({"nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": milliseconds}}],
               "edges": []})
    }

    fn definition(milliseconds: u64) -> WorkflowDefinition {
        WorkflowDefinition::parse(&definition_json(milliseconds)).expect("valid")
    }

    fn cyclic_json() -> Value {
        json!({"nodes": [
                {"id": "s", "type": "delay", "params": {"milliseconds": 1}},
                {"id": "a", "type": "delay", "params": {"milliseconds": 1}},
                {"id": "b", "type": "delay", "params": {"milliseconds": 1}}],
               "edges": [{"from": "s", "to": "a"}, {"from": "a", "to": "b"}, {"from": "b", "to": "a"}]})
    }

    fn cycle_error() -> WorkflowError {
        WorkflowError::InvalidDefinition(DefinitionError::Cycle {
            path: vec!["a".into(), "b".into(), "a".into()],
        })
    }

    fn created() -> WorkflowEvent {
        WorkflowEvent::WorkflowCreated {
            tenant: tenant(),
            name: "Hello".into(),
            description: "Greets".into(),
            definition: definition(1),
        }
    }

    fn updated(version: u64, milliseconds: u64) -> WorkflowEvent {
        WorkflowEvent::WorkflowDefinitionUpdated {
            version,
            definition: definition(milliseconds),
            comment: None,
        }
    }

    fn create(name: &str, description: &str, definition: Value) -> WorkflowCommand {
        WorkflowCommand::Create {
            tenant: tenant(),
            name: name.into(),
            description: description.into(),
            definition,
        }
    }

    fn update(milliseconds: u64) -> WorkflowCommand {
        WorkflowCommand::UpdateDefinition {
            definition: definition_json(milliseconds),
            comment: Some("slower".into()),
        }
    }

    fn cron(schedule: &str) -> Trigger {
        Trigger::Cron {
            schedule: schedule.into(),
            timezone: None,
            input: None,
            missed: MissedFires::Skip,
        }
    }

    fn invalid_field(triggers: Vec<Trigger>) -> String {
        match WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers { triggers })
            .inspect_result()
        {
            Err(WorkflowError::InvalidTrigger { field, .. }) => field,
            other => panic!("expected InvalidTrigger, got {other:?}"),
        }
    }

    fn webhook(key: &str) -> Trigger {
        Trigger::Webhook { key: key.into() }
    }

    fn assert_invalid_name(result: Result<Vec<WorkflowEvent>, WorkflowError>) {
        assert!(
            matches!(result, Err(WorkflowError::InvalidName { .. })),
            "expected InvalidName, got {result:?}"
        );
    }

    fn assert_invalid_trigger(result: Result<Vec<WorkflowEvent>, WorkflowError>) {
        assert!(
            matches!(result, Err(WorkflowError::InvalidTrigger { .. })),
            "expected InvalidTrigger, got {result:?}"
        );
    }

    // Create

    #[test]
    fn creating_a_workflow_records_version_one_with_a_trimmed_name() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(create("  Hello ", "Greets", definition_json(1)))
            .then_expect_events(vec![created()]);
    }

    #[test]
    fn creating_an_existing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(create("Hello", "", definition_json(1)))
            .then_expect_error(WorkflowError::AlreadyExists);
    }

    #[test]
    fn creating_a_workflow_with_a_blank_name_is_rejected() {
        let result = WorkflowTest::with(())
            .given_no_previous_events()
            .when(create("   ", "", definition_json(1)))
            .inspect_result();
        assert_invalid_name(result);
    }

    #[test]
    fn creating_a_workflow_with_a_too_long_name_is_rejected() {
        let result = WorkflowTest::with(())
            .given_no_previous_events()
            .when(create(
                &"n".repeat(MAX_WORKFLOW_NAME_LEN + 1),
                "",
                definition_json(1),
            ))
            .inspect_result();
        assert_invalid_name(result);
    }

    #[test]
    fn creating_a_workflow_with_a_too_long_description_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(create(
                "Hello",
                &"d".repeat(MAX_WORKFLOW_DESCRIPTION_LEN + 1),
                definition_json(1),
            ))
            .then_expect_error(WorkflowError::InvalidDescription);
    }

    #[test]
    fn creating_a_workflow_with_a_cyclic_definition_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(create("Hello", "", cyclic_json()))
            .then_expect_error(cycle_error());
    }

    // UpdateDefinition

    #[test]
    fn updating_the_definition_records_the_next_version() {
        WorkflowTest::with(())
            .given(vec![created(), updated(2, 2)])
            .when(update(3))
            .then_expect_events(vec![WorkflowEvent::WorkflowDefinitionUpdated {
                version: 3,
                definition: definition(3),
                comment: Some("slower".into()),
            }]);
    }

    #[test]
    fn updating_the_definition_of_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(update(2))
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn updating_the_definition_of_an_archived_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(update(2))
            .then_expect_error(WorkflowError::Archived);
    }

    #[test]
    fn updating_the_definition_with_a_cycle_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::UpdateDefinition {
                definition: cyclic_json(),
                comment: None,
            })
            .then_expect_error(cycle_error());
    }

    #[test]
    fn updating_the_definition_with_a_too_long_comment_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::UpdateDefinition {
                definition: definition_json(2),
                comment: Some("c".repeat(MAX_VERSION_COMMENT_LEN + 1)),
            })
            .then_expect_error(WorkflowError::InvalidComment);
    }

    // Rename

    #[test]
    fn renaming_a_workflow_records_the_new_name() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::Rename {
                name: "Goodbye ".into(),
            })
            .then_expect_events(vec![WorkflowEvent::WorkflowRenamed {
                name: "Goodbye".into(),
            }]);
    }

    #[test]
    fn renaming_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(WorkflowCommand::Rename { name: "X".into() })
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn renaming_an_archived_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(WorkflowCommand::Rename { name: "X".into() })
            .then_expect_error(WorkflowError::Archived);
    }

    #[test]
    fn renaming_a_workflow_to_a_name_with_a_newline_is_rejected() {
        let result = WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::Rename {
                name: "Two\nlines".into(),
            })
            .inspect_result();
        assert_invalid_name(result);
    }

    #[test]
    fn renaming_a_workflow_to_its_current_name_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::Rename {
                name: " Hello".into(),
            })
            .then_expect_error(WorkflowError::Unchanged);
    }

    // SetTriggers

    #[test]
    fn setting_triggers_records_the_complete_list() {
        let triggers = vec![cron("*/15 9-17 * * MON-FRI"), tool("hello-hook_1")];
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers {
                triggers: triggers.clone(),
            })
            .then_expect_events(vec![WorkflowEvent::WorkflowTriggersSet { triggers }]);
    }

    #[test]
    fn setting_no_triggers_removes_them_all() {
        WorkflowTest::with(())
            .given(vec![
                created(),
                WorkflowEvent::WorkflowTriggersSet {
                    triggers: vec![webhook("k"), cron("0 * * * *")],
                },
            ])
            .when(WorkflowCommand::SetTriggers { triggers: vec![] })
            .then_expect_events(vec![WorkflowEvent::WorkflowTriggersSet {
                triggers: vec![],
            }]);
    }

    #[test]
    fn setting_triggers_on_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(WorkflowCommand::SetTriggers { triggers: vec![] })
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn setting_triggers_on_an_archived_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(WorkflowCommand::SetTriggers { triggers: vec![] })
            .then_expect_error(WorkflowError::Archived);
    }

    #[test]
    fn setting_a_cron_trigger_with_four_fields_is_rejected() {
        let result = WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers {
                triggers: vec![cron("* * * *")],
            })
            .inspect_result();
        assert_invalid_trigger(result);
    }

    #[test]
    fn a_new_webhook_trigger_is_refused_but_a_recorded_one_still_reads() {
        // A recorded `webhook` trigger reads (and keeps reading when the
        // other triggers are set again without it).
        let recorded: WorkflowEvent = serde_json::from_value(json!({
            "type": "WorkflowTriggersSet",
            "triggers": [{"kind": "webhook", "key": "hello"}]
        }))
        .expect("a recorded webhook trigger reads");
        assert_eq!(
            recorded,
            WorkflowEvent::WorkflowTriggersSet {
                triggers: vec![webhook("hello")]
            }
        );
        for key in ["k", "a/b"] {
            assert_eq!(
                invalid_field(vec![cron("0 * * * *"), webhook(key)]),
                "triggers[1]"
            );
        }
    }

    #[test]
    fn setting_the_same_trigger_twice_is_rejected() {
        let result = WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers {
                triggers: vec![cron("0 * * * *"), cron("0 * * * *")],
            })
            .inspect_result();
        assert_invalid_trigger(result);
    }

    #[test]
    fn setting_too_many_triggers_is_rejected() {
        let triggers = (0..=MAX_TRIGGERS)
            .map(|i| cron(&format!("{} * * * *", i % 60)))
            .collect();
        let result = WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers { triggers })
            .inspect_result();
        assert_invalid_trigger(result);
    }

    #[test]
    fn cron_schedules_get_a_basic_syntax_check() {
        for valid in [
            "* * * * *",
            "0 0 1 1 0",
            "59 23 31 12 7",
            "*/5 * * * *",
            "0 9-17/2 * * mon-fri",
            "0,30 8 1-15 JAN,jul SUN",
            "5/10 * * * *",
        ] {
            assert_eq!(cron(valid).validate(), Ok(()), "{valid} should be valid");
        }
        for invalid in [
            "",
            "@daily",
            "* * * * * *",
            "60 * * * *",
            "* 24 * * *",
            "* * 0 * *",
            "* * * 13 *",
            "* * * * 8",
            "*/0 * * * *",
            "5-1 * * * *",
            "a * * * *",
            "1,,2 * * * *",
            "* * * FOO *",
            "-1 * * * *",
        ] {
            assert!(
                cron(invalid).validate().is_err(),
                "{invalid} should be invalid"
            );
        }
    }

    #[test]
    fn a_cron_trigger_takes_a_time_zone_an_input_and_a_missed_fire_policy() {
        let trigger: Trigger = serde_json::from_value(json!({
            "kind": "cron",
            "schedule": "0 9 * * MON-FRI",
            "timezone": "Europe/Paris",
            "input": {"report": "daily"},
            "missed": "run_once"
        }))
        .unwrap();
        assert_eq!(trigger.validate(), Ok(()));
        let Trigger::Cron {
            timezone, missed, ..
        } = &trigger
        else {
            panic!("a cron trigger")
        };
        assert_eq!(timezone.as_deref(), Some("Europe/Paris"));
        assert_eq!(*missed, MissedFires::RunOnce);
    }

    #[test]
    fn a_cron_trigger_recorded_with_only_its_schedule_still_reads_as_utc_and_skip() {
        let trigger: Trigger =
            serde_json::from_value(json!({"kind": "cron", "schedule": "*/15 * * * *"})).unwrap();
        assert_eq!(trigger, cron("*/15 * * * *"));
        // And is written back the same way.
        assert_eq!(
            serde_json::to_value(&trigger).unwrap(),
            json!({"kind": "cron", "schedule": "*/15 * * * *"})
        );
    }

    #[test]
    fn an_invalid_trigger_names_its_field() {
        let zone = |tz: &str| Trigger::Cron {
            schedule: "0 9 * * *".into(),
            timezone: Some(tz.into()),
            input: None,
            missed: MissedFires::Skip,
        };
        assert_eq!(
            invalid_field(vec![cron("0 * * * *"), zone("Europe/Atlantis")]),
            "triggers[1].timezone"
        );
        assert_eq!(
            invalid_field(vec![cron("61 * * * *")]),
            "triggers[0].schedule"
        );
        assert_eq!(
            invalid_field(vec![Trigger::Cron {
                schedule: "0 9 * * *".into(),
                timezone: None,
                input: Some(json!([1, 2])),
                missed: MissedFires::Skip,
            }]),
            "triggers[0].input"
        );
        assert_eq!(
            invalid_field(vec![cron("0 9 * * *"), cron("0 9 * * *")]),
            "triggers[1]"
        );
    }

    fn tool(name: &str) -> Trigger {
        Trigger::McpTool {
            name: name.into(),
            description: "Greets someone".into(),
            input_schema: json!({"type": "object",
                                 "properties": {"who": {"type": "string"}},
                                 "required": ["who"]}),
        }
    }

    #[test]
    fn an_mcp_tool_trigger_reads_and_writes_with_its_kind_tag() {
        let trigger: Trigger = serde_json::from_value(json!({
            "kind": "mcp_tool",
            "name": "greet",
            "description": "Greets someone",
            "input_schema": {"type": "object",
                             "properties": {"who": {"type": "string"}},
                             "required": ["who"]}
        }))
        .unwrap();
        assert_eq!(trigger, tool("greet"));
        assert_eq!(trigger.validate(), Ok(()));
        assert_eq!(trigger.tool_name(), Some("greet"));
        assert_eq!(
            serde_json::to_value(&trigger).unwrap()["kind"],
            json!("mcp_tool")
        );
    }

    #[test]
    fn setting_an_mcp_tool_trigger_claims_its_name_and_removing_it_releases_it() {
        let set = WorkflowEvent::WorkflowTriggersSet {
            triggers: vec![webhook("k"), tool("greet")],
        };
        assert_eq!(Workflow::name_change(&set), Some(NameChange::Move("greet")));
        let cleared = WorkflowEvent::WorkflowTriggersSet {
            triggers: vec![webhook("k")],
        };
        assert_eq!(Workflow::name_change(&cleared), Some(NameChange::Release));
        assert_eq!(
            Workflow::name_change(&WorkflowEvent::WorkflowArchived),
            None
        );
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::SetTriggers {
                triggers: vec![tool("greet")],
            })
            .then_expect_events(vec![WorkflowEvent::WorkflowTriggersSet {
                triggers: vec![tool("greet")],
            }]);
    }

    #[test]
    fn a_workflow_is_exposed_as_at_most_one_tool() {
        assert_eq!(
            invalid_field(vec![tool("greet"), tool("welcome")]),
            "triggers[1]"
        );
    }

    #[test]
    fn an_invalid_mcp_tool_trigger_names_its_field() {
        let with = |name: &str, description: &str, schema: Value| Trigger::McpTool {
            name: name.into(),
            description: description.into(),
            input_schema: schema,
        };
        let object = json!({"type": "object"});
        for bad in ["", "a b", "a/b", "é", &"n".repeat(MAX_TOOL_NAME_LEN + 1)] {
            assert_eq!(
                invalid_field(vec![with(bad, "", object.clone())]),
                "triggers[0].name",
                "{bad:?}"
            );
        }
        assert_eq!(
            with(&"n".repeat(MAX_TOOL_NAME_LEN), "", object.clone()).validate(),
            Ok(())
        );
        assert_eq!(
            invalid_field(vec![with(
                "t",
                &"d".repeat(MAX_TOOL_DESCRIPTION_LEN + 1),
                object.clone()
            )]),
            "triggers[0].description"
        );
        for schema in [
            json!([1]),
            json!("object"),
            json!({"type": "string"}),
            json!({"properties": {}}),
            json!({"type": "object", "properties": {"n": {"type": "integer", "minimum": "zero"}}}),
            json!({"type": "object", "properties": {"n": {"$ref": "https://example.com/s.json"}}}),
            json!({"type": "object", "description": "x".repeat(MAX_TOOL_SCHEMA_BYTES)}),
        ] {
            assert_eq!(
                invalid_field(vec![with("t", "", schema.clone())]),
                "triggers[0].input_schema",
                "{schema}"
            );
        }
        // A control character in the description or the schema is refused
        // like anywhere else, naming where it is.
        for (trigger, field) in [
            (
                with("t", "two\u{0}words", object.clone()),
                "triggers[0].description",
            ),
            (
                with(
                    "t",
                    "",
                    json!({"type": "object", "properties": {"a\u{1}b": {}}}),
                ),
                "triggers[0].input_schema.properties",
            ),
        ] {
            let result = WorkflowTest::with(())
                .given(vec![created()])
                .when(WorkflowCommand::SetTriggers {
                    triggers: vec![trigger],
                })
                .inspect_result();
            assert!(
                matches!(&result, Err(WorkflowError::InvalidText(e)) if e.field.starts_with(field)),
                "{result:?}"
            );
        }
    }

    // Archive and Restore

    #[test]
    fn archiving_a_workflow_records_it() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::Archive)
            .then_expect_events(vec![WorkflowEvent::WorkflowArchived]);
    }

    #[test]
    fn archiving_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(WorkflowCommand::Archive)
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn archiving_an_archived_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(WorkflowCommand::Archive)
            .then_expect_error(WorkflowError::AlreadyArchived);
    }

    #[test]
    fn restoring_an_archived_workflow_records_it() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(WorkflowCommand::Restore)
            .then_expect_events(vec![WorkflowEvent::WorkflowRestored]);
    }

    #[test]
    fn restoring_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(WorkflowCommand::Restore)
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn restoring_a_workflow_that_is_not_archived_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::Restore)
            .then_expect_error(WorkflowError::NotArchived);
    }

    #[test]
    fn a_restored_workflow_can_be_changed_again() {
        WorkflowTest::with(())
            .given(vec![
                created(),
                WorkflowEvent::WorkflowArchived,
                WorkflowEvent::WorkflowRestored,
            ])
            .when(WorkflowCommand::Rename {
                name: "Back".into(),
            })
            .then_expect_events(vec![WorkflowEvent::WorkflowRenamed {
                name: "Back".into(),
            }]);
    }

    // Revert

    #[test]
    fn reverting_copies_an_earlier_version_into_a_new_one() {
        WorkflowTest::with(())
            .given(vec![created(), updated(2, 2), updated(3, 3)])
            .when(WorkflowCommand::Revert {
                to_version: 1,
                comment: Some("2 and 3 were wrong".into()),
            })
            .then_expect_events(vec![WorkflowEvent::WorkflowReverted {
                version: 4,
                from_version: 1,
                definition: definition(1),
                comment: Some("2 and 3 were wrong".into()),
            }]);
    }

    #[test]
    fn reverting_to_an_unknown_version_is_rejected() {
        for version in [0, 3] {
            WorkflowTest::with(())
                .given(vec![created(), updated(2, 2)])
                .when(WorkflowCommand::Revert {
                    to_version: version,
                    comment: None,
                })
                .then_expect_error(WorkflowError::UnknownVersion { version });
        }
    }

    #[test]
    fn reverting_a_missing_workflow_is_rejected() {
        WorkflowTest::with(())
            .given_no_previous_events()
            .when(WorkflowCommand::Revert {
                to_version: 1,
                comment: None,
            })
            .then_expect_error(WorkflowError::NotFound);
    }

    #[test]
    fn reverting_an_archived_workflow_is_rejected() {
        WorkflowTest::with(())
            .given(vec![
                created(),
                updated(2, 2),
                WorkflowEvent::WorkflowArchived,
            ])
            .when(WorkflowCommand::Revert {
                to_version: 1,
                comment: None,
            })
            .then_expect_error(WorkflowError::Archived);
    }

    #[test]
    fn reverting_with_a_too_long_comment_is_rejected() {
        WorkflowTest::with(())
            .given(vec![created(), updated(2, 2)])
            .when(WorkflowCommand::Revert {
                to_version: 1,
                comment: Some("c".repeat(MAX_VERSION_COMMENT_LEN + 1)),
            })
            .then_expect_error(WorkflowError::InvalidComment);
    }

    #[test]
    fn reverting_to_a_version_that_breaks_todays_rules_is_rejected() {
        // Version 1 was recorded when delays could be longer; deserializing
        // it from the log succeeds, bringing it back does not.
        let old: WorkflowDefinition =
            serde_json::from_value(definition_json(MAX_DELAY_MILLISECONDS_PLUS_ONE))
                .expect("recorded definitions are read without today's rules");
        let result = WorkflowTest::with(())
            .given(vec![
                WorkflowEvent::WorkflowCreated {
                    tenant: tenant(),
                    name: "Old".into(),
                    description: String::new(),
                    definition: old,
                },
                updated(2, 2),
            ])
            .when(WorkflowCommand::Revert {
                to_version: 1,
                comment: None,
            })
            .inspect_result();
        assert!(matches!(
            result,
            Err(WorkflowError::InvalidDefinition(
                DefinitionError::InvalidParameter { .. }
            ))
        ));
    }

    const MAX_DELAY_MILLISECONDS_PLUS_ONE: u64 = crate::definition::MAX_DELAY_MILLISECONDS + 1;

    // State, serde and command traits

    #[test]
    fn the_state_keeps_every_version() {
        let mut workflow = Workflow::default();
        assert_eq!(workflow.current_version(), 0);
        for event in [
            created(),
            updated(2, 2),
            WorkflowEvent::WorkflowReverted {
                version: 3,
                from_version: 1,
                definition: definition(1),
                comment: None,
            },
        ] {
            workflow.apply(event);
        }
        assert_eq!(workflow.current_version(), 3);
        assert_eq!(workflow.definition(2), Some(&definition(2)));
        assert_eq!(workflow.current_definition(), Some(&definition(1)));
        assert_eq!(workflow.definition(0), None);
        assert_eq!(workflow.definition(4), None);
        assert_eq!(workflow.tenant(), Some(&tenant()));
        assert_eq!(workflow.name(), "Hello");
        assert_eq!(workflow.description(), "Greets");
        assert!(!workflow.is_archived());
    }

    #[test]
    fn workflow_events_serialize_with_a_type_tag_and_round_trip() {
        let events = vec![
            created(),
            updated(2, 2),
            WorkflowEvent::WorkflowRenamed { name: "N".into() },
            WorkflowEvent::WorkflowTriggersSet {
                triggers: vec![cron("0 * * * *"), webhook("k")],
            },
            WorkflowEvent::WorkflowArchived,
            WorkflowEvent::WorkflowRestored,
            WorkflowEvent::WorkflowReverted {
                version: 3,
                from_version: 1,
                definition: definition(1),
                comment: Some("c".into()),
            },
        ];
        for event in events {
            let json = serde_json::to_value(&event).expect("serializable");
            assert_eq!(json["type"], event.event_type());
            assert_eq!(event.event_version(), "1.0");
            let back: WorkflowEvent = serde_json::from_value(json).expect("deserializable");
            assert_eq!(back, event);
        }
        let json = serde_json::to_value(created()).expect("serializable");
        assert_eq!(json["definition"]["nodes"][0]["type"], "delay");
        assert_eq!(json["tenant"], "acme");
        let triggers = serde_json::to_value(cron("0 * * * *")).expect("serializable");
        assert_eq!(triggers, json!({"kind": "cron", "schedule": "0 * * * *"}));
    }

    #[test]
    fn the_payload_example_in_the_event_catalogue_is_a_real_event() {
        let catalogue = include_str!("../../docs/events.md");
        let example = catalogue
            .split("```json\n")
            .nth(1)
            .and_then(|rest| rest.split("\n```").next())
            .expect("docs/events.md has a JSON example");
        let event: WorkflowEvent = serde_json::from_str(example).expect("the example parses");
        assert_eq!(event.event_type(), "WorkflowDefinitionUpdated");
        let reserialized = serde_json::to_value(&event).expect("serializable");
        let original: Value = serde_json::from_str(example).expect("the example is JSON");
        assert_eq!(reserialized, original);
    }

    #[test]
    fn the_workflow_state_survives_a_snapshot_round_trip() {
        let mut workflow = Workflow::default();
        workflow.apply(created());
        workflow.apply(updated(2, 2));
        let snapshot = serde_json::to_value(&workflow).expect("serializable");
        let back: Workflow = serde_json::from_value(snapshot).expect("deserializable");
        assert_eq!(back, workflow);
    }

    #[test]
    fn workflow_commands_declare_roles_creation_and_retry_safety() {
        let commands = [
            create("a", "", definition_json(1)),
            update(1),
            WorkflowCommand::Rename { name: "a".into() },
            WorkflowCommand::SetTriggers { triggers: vec![] },
            WorkflowCommand::Archive,
            WorkflowCommand::Restore,
            WorkflowCommand::Revert {
                to_version: 1,
                comment: None,
            },
        ];
        assert!(commands.iter().all(|c| c.required_role() == Role::Editor));
        let creation: Vec<bool> = commands.iter().map(|c| c.is_creation()).collect();
        assert_eq!(creation, [true, false, false, false, false, false, false]);
        let retry_safe: Vec<bool> = commands.iter().map(|c| c.is_retry_safe()).collect();
        assert_eq!(retry_safe, [false, true, true, true, true, true, false]);
    }

    // Webhooks

    fn hook_id(n: u128) -> WebhookId {
        WebhookId::from_uuid(uuid::Uuid::from_u128(n))
    }

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).expect("a time")
    }

    fn hook_created(n: u128) -> WorkflowEvent {
        WorkflowEvent::WebhookCreated {
            webhook_id: hook_id(n),
            description: "from GitHub".into(),
        }
    }

    fn state(events: Vec<WorkflowEvent>) -> Workflow {
        let mut workflow = Workflow::default();
        for event in events {
            workflow.apply(event);
        }
        workflow
    }

    #[test]
    fn creating_a_webhook_records_it_without_a_secret() {
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::CreateWebhook {
                webhook_id: hook_id(1),
                description: "from GitHub".into(),
            })
            .then_expect_events(vec![hook_created(1)]);
        let workflow = state(vec![created(), hook_created(1)]);
        let hook = workflow.webhook(hook_id(1)).expect("the webhook");
        assert_eq!(hook.generation, 1);
        assert_eq!(hook.valid_generations(at(0)), vec![1]);
    }

    #[test]
    fn a_webhook_is_refused_on_an_archived_workflow_and_beyond_the_limit() {
        WorkflowTest::with(())
            .given(vec![created(), WorkflowEvent::WorkflowArchived])
            .when(WorkflowCommand::CreateWebhook {
                webhook_id: hook_id(1),
                description: String::new(),
            })
            .then_expect_error(WorkflowError::Archived);
        let many: Vec<_> = std::iter::once(created())
            .chain((0..MAX_WEBHOOKS as u128).map(hook_created))
            .collect();
        WorkflowTest::with(())
            .given(many)
            .when(WorkflowCommand::CreateWebhook {
                webhook_id: hook_id(999),
                description: String::new(),
            })
            .then_expect_error(WorkflowError::TooManyWebhooks);
        WorkflowTest::with(())
            .given(vec![created(), hook_created(1)])
            .when(WorkflowCommand::CreateWebhook {
                webhook_id: hook_id(1),
                description: String::new(),
            })
            .then_expect_error(WorkflowError::WebhookExists);
        WorkflowTest::with(())
            .given(vec![created()])
            .when(WorkflowCommand::CreateWebhook {
                webhook_id: hook_id(1),
                description: "a\u{0}b".into(),
            })
            .then_expect_error(WorkflowError::InvalidText(
                text::check_free_text("description", "a\u{0}b").expect_err("a NUL is refused"),
            ));
    }

    #[test]
    fn a_rotation_keeps_the_old_secret_valid_for_its_grace_only() {
        let rotated = |generation, at_s, until_s| WorkflowEvent::WebhookSecretRotated {
            webhook_id: hook_id(1),
            generation,
            at: at(at_s),
            previous_valid_until: at(until_s),
        };
        WorkflowTest::with(())
            .given(vec![created(), hook_created(1)])
            .when(WorkflowCommand::RotateWebhookSecret {
                webhook_id: hook_id(1),
                generation: 2,
                at: at(0),
                previous_valid_until: at(100),
            })
            .then_expect_events(vec![rotated(2, 0, 100)]);
        let hook = state(vec![created(), hook_created(1), rotated(2, 0, 100)])
            .webhook(hook_id(1))
            .cloned()
            .expect("the webhook");
        assert_eq!(hook.valid_generations(at(50)), vec![1, 2]);
        assert_eq!(hook.valid_generations(at(100)), vec![2]);
        // A second rotation within the grace: generation 1 keeps its
        // earlier end, generation 2 gets the new, earlier one (80); at the
        // third (at 90) both have ended and are dropped, and generation 3
        // gets its grace.
        let hook = state(vec![
            created(),
            hook_created(1),
            rotated(2, 0, 100),
            rotated(3, 50, 80),
            rotated(4, 90, 200),
        ])
        .webhook(hook_id(1))
        .cloned()
        .expect("the webhook");
        assert_eq!(hook.generation, 4);
        assert_eq!(hook.valid_generations(at(95)), vec![3, 4]);
        assert_eq!(hook.valid_generations(at(200)), vec![4]);
        assert_eq!(
            hook.secrets
                .iter()
                .map(|s| s.generation)
                .collect::<Vec<_>>(),
            vec![3, 4],
            "generations 1 and 2 had ended by the fourth rotation"
        );
        WorkflowTest::with(())
            .given(vec![created(), hook_created(1)])
            .when(WorkflowCommand::RotateWebhookSecret {
                webhook_id: hook_id(1),
                generation: 2,
                at: at(10),
                previous_valid_until: at(5),
            })
            .then_expect_error(WorkflowError::InvalidGrace);
        WorkflowTest::with(())
            .given(vec![created(), hook_created(1), rotated(2, 0, 100)])
            .when(WorkflowCommand::RotateWebhookSecret {
                webhook_id: hook_id(1),
                generation: 2,
                at: at(10),
                previous_valid_until: at(10),
            })
            .then_expect_error(WorkflowError::StaleGeneration);
    }

    #[test]
    fn rotating_and_deleting_work_while_archived_and_need_the_webhook() {
        WorkflowTest::with(())
            .given(vec![
                created(),
                hook_created(1),
                WorkflowEvent::WorkflowArchived,
            ])
            .when(WorkflowCommand::RotateWebhookSecret {
                webhook_id: hook_id(1),
                generation: 2,
                at: at(0),
                previous_valid_until: at(0),
            })
            .then_expect_events(vec![WorkflowEvent::WebhookSecretRotated {
                webhook_id: hook_id(1),
                generation: 2,
                at: at(0),
                previous_valid_until: at(0),
            }]);
        WorkflowTest::with(())
            .given(vec![
                created(),
                hook_created(1),
                WorkflowEvent::WorkflowArchived,
            ])
            .when(WorkflowCommand::DeleteWebhook {
                webhook_id: hook_id(1),
            })
            .then_expect_events(vec![WorkflowEvent::WebhookDeleted {
                webhook_id: hook_id(1),
            }]);
        WorkflowTest::with(())
            .given(vec![
                created(),
                hook_created(1),
                WorkflowEvent::WebhookDeleted {
                    webhook_id: hook_id(1),
                },
            ])
            .when(WorkflowCommand::DeleteWebhook {
                webhook_id: hook_id(1),
            })
            .then_expect_error(WorkflowError::WebhookNotFound);
        assert!(state(vec![
            created(),
            hook_created(1),
            WorkflowEvent::WebhookDeleted {
                webhook_id: hook_id(1)
            }
        ])
        .webhook(hook_id(1))
        .is_none());
    }

    #[test]
    fn a_snapshot_from_before_webhooks_still_reads() {
        let mut snapshot = serde_json::to_value(state(vec![created()])).expect("serializes");
        snapshot
            .as_object_mut()
            .expect("an object")
            .remove("webhooks");
        let workflow: Workflow = serde_json::from_value(snapshot).expect("reads");
        assert!(workflow.webhooks().is_empty());
    }
}
