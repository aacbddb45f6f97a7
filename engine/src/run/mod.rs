//! The runtime: the [`Engine`] that starts, stops and resumes executions
//! through the command bus, the workers that claim executions from the work
//! queue and drive them step by step, the leader's MCP health checks, and
//! the leader's cron scheduler.
//!
//! Every state change is a command on the `Execution` aggregate; the log is
//! the one source of truth. A driver decides with the domain's planner,
//! records a whole move (steps scheduled and started, instant results,
//! skips, the end) in one batch, and only then runs the steps that have side
//! effects — so a step is claimed in the log before it touches the world,
//! and two drivers racing on one execution cannot both run it.

mod driver;
mod engine;
mod health;
mod lookup;
mod schedule;
pub(crate) mod steps;

pub use engine::{
    Engine, EngineError, EngineHandle, EngineStats, ForkRequest, StartRequest, Started,
};
pub use schedule::{fire_key, Fire, Scheduler, SCHEDULER_ACTOR};
