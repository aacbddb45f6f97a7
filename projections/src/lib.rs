//! Toolhub's read side: the read models built from the event log, the
//! checkpointed projector runner that maintains them, and the read queries
//! the API serves from them.
//!
//! - [`projection`]: the read models (workflows and their versions,
//!   executions and their steps, secrets' metadata, MCP servers and their
//!   tools, the audit log), each a [`Projection`] that folds a batch of
//!   events into multi-row statements;
//! - [`runner`]: one leader per projection across processes, batches that
//!   commit their writes and their checkpoint together, wake-ups on
//!   notifications with polling as the fallback;
//! - [`queries`]: tenant-scoped reads with keyset pagination, read-your-writes
//!   ([`ReadModels::wait_for`]) and lag;
//! - [`rebuild`]: replay into shadow tables and an atomic swap;
//! - [`shadow`]: the read models compared row by row with a rebuild into
//!   scratch tables (`toolhub-replay verify`);
//! - [`chain`]: the log's hash chain.
//!
//! Every read model can be rebuilt from the log alone. This crate never
//! appends to the log, never decides whether a command is allowed, and never
//! stores a secret value, sealed or not.

pub mod as_of;
pub mod chain;
mod consistency;
mod cursor;
pub mod projection;
pub mod queries;
pub mod rebuild;
pub mod redact;
pub mod runner;
pub mod shadow;
pub mod stall;
pub mod views;

pub use consistency::{ProjectorLag, WaitError};
pub use projection::{Projection, Tables};
pub use queries::{ReadError, ReadModels};
pub use rebuild::{rebuild, rebuild_many, RebuildSummary};
pub use runner::{ProjectorRunner, RunnerHandle, RunnerOptions};
pub use stall::{stalls, Stall};
pub use views::*;
