//! The engine's MCP client: calling the tools of the MCP servers tenants have
//! registered, over stdio (a child process) or Streamable HTTP, through
//! [`rmcp`].
//!
//! A map of the module:
//!
//! - [`pool`]: [`McpPool`], the entry point. It keeps one initialized session
//!   per (tenant, server, configuration digest), reuses it across calls,
//!   restarts it when it dies, closes it when idle, and caps how many exist.
//! - `connection`: one session; spawning a stdio server with a minimal
//!   environment, opening a Streamable HTTP session with the caller's
//!   `reqwest::Client`, and the requests themselves (timeouts, cancellation on
//!   the wire).
//! - [`transport`]: [`ResolvedTransport`], the domain's transport with secrets
//!   substituted, whose `Debug` shows no value.
//! - [`output`]: [`ToolOutput`], the JSON a step records, and [`McpTool`], a
//!   tool with its behaviour hints.
//! - [`error`]: [`McpCallError`], and which failures are worth retrying.
//! - `ended`: a transport wrapper that notices at once when a session ends.
//! - `redact` and `stderr`: keeping configuration values out of messages and
//!   logs; draining a child's stderr.
//!
//! What this module must never do: see a secret template or unseal a secret
//! (the caller substitutes them), pass Toolhub's own environment to a server,
//! run a command through a shell, or put an environment value, header value
//! or URL into an error or a log line.

mod connection;
mod ended;
pub mod error;
pub mod output;
pub mod pool;
mod redact;
mod stderr;
pub mod transport;

pub use error::McpCallError;
pub use output::{McpTool, ToolOutput};
pub use pool::{McpConnectionInfo, McpPool, McpPoolConfig, McpPoolStats, McpTarget};
pub use transport::ResolvedTransport;

/// The environment variables a stdio server inherits from Toolhub's process;
/// everything else it gets comes from its own configuration.
pub const INHERITED_ENV: [&str; 3] = connection::INHERITED_ENV;
