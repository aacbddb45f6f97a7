//! The domain of Toolhub: the aggregates (workflows, executions, secrets,
//! MCP servers and API keys), their commands, events and errors, and the validation of
//! workflow definitions.
//!
//! This crate is pure. It must never perform I/O, and it must never depend on
//! sqlx, axum, async-graphql, tokio-postgres or any other infrastructure crate:
//! everything here is a function of the events already recorded and the
//! command being handled. Infrastructure concerns (storage, sealing secret
//! values, HTTP) live in the crates above it.

pub mod api_key;
pub mod common;
pub mod credentials;
pub mod definition;
pub mod execution;
pub mod mcp_server;
pub mod schedule;
pub mod secret;
pub mod text;
pub mod workflow;

pub use common::{
    AggregateRoot, ApiKeyId, CommandTraits, ExecutionId, McpServerId, NameChange, Role, SecretId,
    TenantId, WebhookId, WorkflowId,
};
