//! Toolhub's execution engine: it runs executions of workflow definitions,
//! node by node (MCP tool calls, HTTP requests, conditions, transforms,
//! delays), with retries, timeouts, cancellation, breakpoints, triggers and
//! secret injection, recording every step as execution events.
//!
//! The engine is the only place a secret value is ever unsealed, and only at
//! the moment of use. It never writes read models and never speaks GraphQL.
//! Nothing is implemented here yet: the engine lands with its own issue.

pub mod mcp;
