//! How the engine runs: leases, concurrency, timeouts and the egress
//! policy. The service reads these from its environment; tests set them.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;

use crate::egress::{EgressPolicy, HttpLimits};
use crate::mcp::McpPoolConfig;

/// The engine's settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Names this worker in the leases it holds; unique per process.
    pub worker_id: String,
    /// How long a claim on an execution lasts without a heartbeat. A worker
    /// that dies loses its executions to another after at most this long.
    pub lease: Duration,
    /// How often an idle worker looks for due work when no notification
    /// woke it (the fallback for lost notifications).
    pub poll_interval: Duration,
    /// The most executions one process drives at once.
    pub max_executions: usize,
    /// The most steps of one execution that run at once.
    pub max_parallel_steps: usize,
    /// How long a whole execution may run before it fails.
    pub execution_timeout: Duration,
    /// How long an MCP tool call may run when its node names no timeout.
    pub mcp_call_timeout: Duration,
    /// Limits of `http` nodes (and their default timeout).
    pub http: HttpLimits,
    /// Which internal addresses `http` nodes and Streamable HTTP MCP servers
    /// may reach.
    pub egress: EgressPolicy,
    /// The MCP connection pool.
    pub mcp_pool: McpPoolConfig,
    /// How often the leader pings every enabled MCP server.
    pub health_interval: Duration,
    /// How long a health ping may take.
    pub health_timeout: Duration,
    /// A wait (a delay, a retry's backoff) up to this long keeps the
    /// execution in memory; a longer one gives it back to the queue, due at
    /// the wait's end, so that nothing depends on a sleeping task.
    pub hold_timers_up_to: Duration,
    /// How long `startExecution`'s idempotency keys last.
    pub idempotency_window: Duration,
    /// How often the cron scheduler looks for due fires (it also wakes
    /// when a workflow changes).
    pub schedule_tick: Duration,
    /// How late a cron fire may start and still count as on time (a
    /// scheduler taking over from one that died); an older fire was missed
    /// and follows its trigger's missed-fire policy.
    pub schedule_late_after: Duration,
    /// The scheduler's clock (the wall clock; tests move a manual one).
    pub clock: Clock,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            worker_id: format!(
                "worker-{}-{}",
                std::process::id(),
                uuid::Uuid::new_v4().simple()
            ),
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_secs(1),
            max_executions: 256,
            max_parallel_steps: 8,
            execution_timeout: Duration::from_secs(3600),
            mcp_call_timeout: Duration::from_secs(30),
            http: HttpLimits::default(),
            egress: EgressPolicy::default(),
            mcp_pool: McpPoolConfig::default(),
            health_interval: Duration::from_secs(60),
            health_timeout: Duration::from_secs(10),
            hold_timers_up_to: Duration::from_secs(2),
            idempotency_window: Duration::from_secs(24 * 3600),
            schedule_tick: Duration::from_secs(1),
            schedule_late_after: Duration::from_secs(300),
            clock: Clock::system(),
        }
    }
}

/// Where the scheduler reads the time: the system clock, or a manual one
/// that tests move.
#[derive(Clone)]
pub struct Clock(Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>);

impl Clock {
    /// The system's wall clock.
    pub fn system() -> Self {
        Self(Arc::new(Utc::now))
    }

    /// A clock that stands at `start` until [`ManualClock::set`] moves it.
    pub fn manual(start: DateTime<Utc>) -> (Self, ManualClock) {
        let now = Arc::new(Mutex::new(start));
        let read = now.clone();
        (Self(Arc::new(move || *read.lock())), ManualClock(now))
    }

    /// The time now.
    pub fn now(&self) -> DateTime<Utc> {
        (self.0)()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Clock({})", self.now())
    }
}

/// Moves a [`Clock::manual`].
#[derive(Clone, Debug)]
pub struct ManualClock(Arc<Mutex<DateTime<Utc>>>);

impl ManualClock {
    /// Sets the time.
    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock() = now;
    }
}
