//! Toolhub's service: the GraphQL API over the event log and read models,
//! JWT authentication and roles, health and metrics endpoints, and
//! [`spawn`], which starts all of it (the `toolhub serve` command and the
//! end-to-end tests use it alike).
//!
//! A map of the modules:
//!
//! - [`config`]: the environment, checked once; development keys;
//! - [`auth`]: verifying and minting tokens; the [`auth::Caller`];
//! - [`error`]: the one API error type and the mapping of every domain and
//!   storage error onto the GraphQL error codes;
//! - [`graphql`]: the schema, one module per feature;
//! - [`mcp`]: the MCP server at `/mcp`, which serves workflows as tools;
//! - [`server`]: the router, limits, CORS, request ids, graceful shutdown;
//! - [`ws`]: graphql-transport-ws with its limits (initialisation, message
//!   size, subscriptions per socket and caller, token expiry, keep-alive);
//! - [`throttle`]: rate limits per caller and client address;
//! - [`health`]: liveness, readiness and Prometheus metrics, answered from
//!   [`standing`], what a background task keeps in memory;
//! - [`metrics`]: the metric registry;
//! - [`telemetry`]: the log filter every entry point installs.
//!
//! This crate never writes SQL (the event store and the projections do),
//! never lets a domain type into the schema, never returns or logs a secret
//! value or a token, and never shows an internal error to a client.

pub mod auth;
pub mod config;
pub mod error;
pub mod graphql;
pub mod health;
pub mod hooks;
pub mod mcp;
pub mod metrics;
pub mod read;
pub mod server;
pub mod standing;
pub mod state;
pub mod telemetry;
pub mod throttle;
pub mod ws;

pub use config::Config;
pub use server::{spawn, spawn_worker, Running, StartError, Worker};
