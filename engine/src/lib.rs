//! Toolhub's execution engine: it runs executions of workflow definitions,
//! node by node (MCP tool calls, HTTP requests, conditions, transforms,
//! delays), with retries, timeouts, cancellation, breakpoints, triggers and
//! secret injection, recording every step as execution events.
//!
//! The engine is the only place a secret value is ever unsealed, and only at
//! the moment of use. It never writes read models and never speaks GraphQL.
//!
//! # Modules
//!
//! - [`failure`]: [`StepFailure`](failure::StepFailure), how every node
//!   executor reports a failed step and whether retrying may help.
//! - [`egress`]: the egress policy against server-side request forgery, and
//!   the one `reqwest::Client` that enforces it for `http` nodes and
//!   Streamable-HTTP MCP servers.
//! - [`http`]: the `http` node executor.
//! - [`template`]: resolving `{{…}}` templates in node parameters at run
//!   time, and which secrets a step used.
//! - [`mask`]: what is hidden from step inputs, outputs and error messages
//!   before they are recorded (secret values, and personal data by path and
//!   by detector).
//! - [`expr`]: the `condition` node's expression language (CEL).
//! - [`replay`]: the engine's decisions re-taken over a recorded
//!   execution, without side effects, and where they differ.
//! - [`mcp`]: the MCP client: a pool of connections to MCP servers (stdio
//!   child processes and Streamable HTTP), tool listing, calls with
//!   cancellation on the wire, and health pings.
//!
//! See `docs/engine.md` for the rules these modules implement.

pub mod config;
pub mod egress;
pub mod expr;
pub mod failure;
pub mod http;
pub mod mask;
pub mod mcp;
pub mod replay;
pub mod run;
pub mod template;

pub use config::{Clock, EngineConfig, ManualClock};
pub use run::{
    Engine, EngineError, EngineHandle, EngineStats, Fire, ForkRequest, Scheduler, StartRequest,
    Started,
};
