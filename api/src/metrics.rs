//! Prometheus metrics, served as text at `/metrics`.
//!
//! Each running server has its own registry (tests run several servers in
//! one process). Labels are bounded sets — route templates, operation types,
//! aggregate types, outcomes — never ids or user input.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// The service's metrics.
#[derive(Clone)]
pub struct Metrics {
    /// Every metric below, for the `/metrics` scrape.
    registry: Registry,
    /// HTTP requests by route and status class.
    pub http_requests: IntCounterVec,
    /// GraphQL request latency by operation type.
    pub graphql_latency: HistogramVec,
    /// Commands by aggregate and outcome.
    pub commands: IntCounterVec,
    /// Where a mutation's time goes, by phase: `command` (validate, load,
    /// append), `wait` (until the read models hold the command's events),
    /// `read_back` (the entity the payload shows).
    pub mutation_phases: HistogramVec,
    /// Commands that ended in a conflict, by aggregate.
    pub conflicts: IntCounterVec,
    /// Events appended by this process.
    pub events_appended: IntCounter,
    /// 1 for a projection stopped at an event it cannot decode or apply,
    /// else 0, by projection.
    pub projection_stalled: IntGaugeVec,
    /// The global position a stopped projection is at (0 when running), by
    /// projection.
    pub projection_stalled_position: IntGaugeVec,
    /// Events the slowest read model is behind the log head.
    pub read_model_lag: IntGauge,
    /// How long the oldest unapplied event has waited, in seconds.
    pub read_model_lag_seconds: prometheus::Gauge,
    /// 1 when the database answered its last check.
    pub database_up: IntGauge,
    /// Open GraphQL subscriptions.
    pub active_subscriptions: IntGauge,
    /// The engine's counters in this process (started, finished, steps
    /// run, batches, conflicts), as of the last scrape.
    pub engine: IntGaugeVec,
    /// Each MCP server's latest health-check latency and verdict (1 healthy,
    /// 0 not), by server id.
    pub mcp_health: IntGaugeVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let registry =
            Registry::new_custom(Some("toolhub".into()), None).expect("a valid metric prefix");
        let http_requests = IntCounterVec::new(
            Opts::new("http_requests_total", "HTTP requests by route and status"),
            &["route", "status"],
        )
        .expect("valid metric");
        let graphql_latency = HistogramVec::new(
            HistogramOpts::new(
                "graphql_request_duration_seconds",
                "GraphQL request latency by operation type",
            )
            .buckets(vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["operation"],
        )
        .expect("valid metric");
        let mutation_phases = HistogramVec::new(
            HistogramOpts::new(
                "mutation_phase_duration_seconds",
                "Where a mutation's time goes: command, wait (read-your-writes), read_back",
            )
            .buckets(vec![
                0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256,
                0.512, 1.0, 2.0,
            ]),
            &["phase"],
        )
        .expect("valid metric");
        let commands = IntCounterVec::new(
            Opts::new("commands_total", "Commands by aggregate and outcome"),
            &["aggregate", "outcome"],
        )
        .expect("valid metric");
        let conflicts = IntCounterVec::new(
            Opts::new(
                "command_conflicts_total",
                "Commands that ended in a conflict",
            ),
            &["aggregate"],
        )
        .expect("valid metric");
        let events_appended =
            IntCounter::new("events_appended_total", "Events appended by this process")
                .expect("valid metric");
        let read_model_lag = IntGauge::new(
            "read_model_lag_events",
            "Events the slowest read model is behind the head of the log (an upper bound on PostgreSQL)",
        )
        .expect("valid metric");
        let read_model_lag_seconds = prometheus::Gauge::new(
            "read_model_lag_seconds",
            "How long the oldest event not yet in every read model has waited",
        )
        .expect("valid metric");
        let database_up = IntGauge::new(
            "database_up",
            "1 when the database answered its last check (every second)",
        )
        .expect("valid metric");
        let projection_stalled = IntGaugeVec::new(
            Opts::new(
                "projection_stalled",
                "1 when a projection is stopped at an event it cannot decode or apply",
            ),
            &["projection"],
        )
        .expect("valid metric");
        let projection_stalled_position = IntGaugeVec::new(
            Opts::new(
                "projection_stalled_position",
                "The global position of the event a stopped projection cannot get past (0 when running)",
            ),
            &["projection"],
        )
        .expect("valid metric");
        let active_subscriptions =
            IntGauge::new("active_subscriptions", "Open GraphQL subscriptions")
                .expect("valid metric");
        let engine = IntGaugeVec::new(
            Opts::new(
                "engine_total",
                "The engine's counters in this process: executions started and finished, steps run, batches recorded, moves decided again after a conflict, cron fires started",
            ),
            &["counter"],
        )
        .expect("valid metric");
        let mcp_health = IntGaugeVec::new(
            Opts::new(
                "mcp_server_health",
                "Each MCP server's latest health check: latency in ms, and 1 when healthy",
            ),
            &["server", "measure"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(http_requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(graphql_latency.clone()),
            Box::new(commands.clone()),
            Box::new(mutation_phases.clone()),
            Box::new(conflicts.clone()),
            Box::new(events_appended.clone()),
            Box::new(projection_stalled.clone()),
            Box::new(projection_stalled_position.clone()),
            Box::new(read_model_lag.clone()),
            Box::new(read_model_lag_seconds.clone()),
            Box::new(database_up.clone()),
            Box::new(active_subscriptions.clone()),
            Box::new(engine.clone()),
            Box::new(mcp_health.clone()),
        ] {
            registry
                .register(collector)
                .expect("metric names are unique");
        }
        Self {
            registry,
            http_requests,
            graphql_latency,
            commands,
            mutation_phases,
            conflicts,
            events_appended,
            projection_stalled,
            projection_stalled_position,
            read_model_lag,
            read_model_lag_seconds,
            database_up,
            active_subscriptions,
            engine,
            mcp_health,
        }
    }

    /// Records that a mutation's `phase` took from `started` until now.
    pub fn phase(&self, phase: &str, started: std::time::Instant) {
        self.mutation_phases
            .with_label_values(&[phase])
            .observe(started.elapsed().as_secs_f64());
    }

    /// Copies the engine's counters and health checks into the metrics
    /// (they are kept in memory by the engine; a scrape reads them).
    pub fn observe_engine(&self, stats: &toolhub_engine::EngineStats) {
        use std::sync::atomic::Ordering;
        for (name, value) in [
            ("executions_started", &stats.started),
            ("executions_finished", &stats.finished),
            ("steps_run", &stats.steps_run),
            ("batches", &stats.batches),
            ("conflicts", &stats.conflicts),
            ("cron_fires", &stats.cron_fires),
        ] {
            let value = i64::try_from(value.load(Ordering::Relaxed)).unwrap_or(i64::MAX);
            self.engine.with_label_values(&[name]).set(value);
        }
        for (server, (latency, healthy)) in stats.health.lock().iter() {
            let latency = i64::try_from(*latency).unwrap_or(i64::MAX);
            self.mcp_health
                .with_label_values(&[server.as_str(), "latency_ms"])
                .set(latency);
            self.mcp_health
                .with_label_values(&[server.as_str(), "healthy"])
                .set(i64::from(*healthy));
        }
    }

    /// Sets the stall gauges: every read model at 0, then the stopped ones
    /// at 1 with their positions.
    pub fn observe_stalls(&self, stalls: &[toolhub_projections::Stall]) {
        for name in toolhub_projections::projection::NAMES {
            let stall = stalls.iter().find(|s| s.projection == name);
            self.projection_stalled
                .with_label_values(&[name])
                .set(i64::from(stall.is_some()));
            self.projection_stalled_position
                .with_label_values(&[name])
                .set(stall.map_or(0, |s| s.position.global));
        }
    }

    /// Copies where the database and the read models stand (kept in
    /// memory by a background task) into the gauges.
    pub fn observe_standing(&self, standing: &crate::standing::Snapshot) {
        self.read_model_lag
            .set(i64::try_from(standing.behind).unwrap_or(i64::MAX));
        self.read_model_lag_seconds.set(
            standing
                .oldest_unapplied
                .map_or(0.0, |age| age.as_secs_f64()),
        );
        self.database_up
            .set(i64::from(standing.database.is_some_and(|(ok, _)| ok)));
        if let Some((stalls, _)) = &standing.stalls {
            self.observe_stalls(stalls);
        }
    }

    /// The metrics in Prometheus text format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(error) = encoder.encode(&self.registry.gather(), &mut buffer) {
            tracing::warn!(%error, "could not encode the metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    /// Records a command's outcome.
    pub fn command(&self, aggregate: &str, outcome: &str, events: usize) {
        self.commands.with_label_values(&[aggregate, outcome]).inc();
        if outcome == "conflict" {
            self.conflicts.with_label_values(&[aggregate]).inc();
        }
        self.events_appended.inc_by(events as u64);
    }
}

/// Counts a subscription as active for as long as the guard lives.
pub struct SubscriptionGuard(IntGauge);

impl SubscriptionGuard {
    /// Increments the gauge until dropped.
    pub fn new(gauge: &IntGauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for SubscriptionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
