//! The cron scheduler: one leader across replicas starts the executions
//! that workflows' cron triggers call for.
//!
//! The leader folds the workflows' trigger events from the log (once in
//! full when it takes the lead, then what is new at each tick) and keeps,
//! per workflow, a durable cursor (`cron_cursors`): how far its schedules
//! were checked. At each tick it asks the domain which fire of each
//! schedule is due between the cursor and now ([`CronSchedule::due`]),
//! starts one execution per due fire with the idempotency key
//! `cron:<workflow>:<instant>`, and only then moves the cursor. A fire is
//! therefore never started twice — two schedulers racing, or a leader that
//! dies between the start and the cursor, meet the same key — and never
//! lost: the cursor moves only past fires that were started or skipped as
//! missed. Time comes from the configured [`Clock`](crate::config::Clock).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use toolhub_domain::schedule::CronSchedule;
use toolhub_domain::workflow::{Trigger, WorkflowEvent};
use toolhub_domain::{TenantId, WorkflowId};
use toolhub_eventstore::work::{advance_cron_cursor, cron_cursors};
use toolhub_eventstore::{CommandContext, Leadership, Position, StoreError};

use super::engine::{Engine, EngineError, StartRequest};

/// The actor of scheduled executions' events.
pub const SCHEDULER_ACTOR: &str = "scheduler";

/// How many log events one catch-up read takes.
const READ_BATCH: u32 = 2_000;

/// A workflow's cron triggers as the scheduler knows them.
#[derive(Debug, Clone)]
struct Scheduled {
    /// The owner.
    tenant: TenantId,
    /// Its triggers (cron and others).
    triggers: Vec<Trigger>,
    /// Archived workflows do not fire.
    archived: bool,
    /// When the triggers were last set, or the workflow restored: no fire
    /// before this instant is due.
    since: DateTime<Utc>,
}

/// One fire started (or found already started) by a tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fire {
    /// The workflow.
    pub workflow_id: String,
    /// The scheduled instant.
    pub at: DateTime<Utc>,
    /// The execution.
    pub execution_id: String,
    /// True when another scheduler (or an earlier tick) had started it.
    pub existing: bool,
}

/// The scheduler's state: the workflows' triggers folded from the log.
pub struct Scheduler {
    /// The engine that starts executions.
    engine: Engine,
    /// How far the log was folded.
    after: Position,
    /// Workflows by id.
    workflows: BTreeMap<String, Scheduled>,
}

impl Scheduler {
    /// A scheduler that has folded nothing yet.
    pub fn new(engine: Engine) -> Self {
        Self {
            engine,
            after: Position::ZERO,
            workflows: BTreeMap::new(),
        }
    }

    /// Folds the workflow events committed since the last call.
    async fn catch_up(&mut self) -> Result<(), StoreError> {
        let store = self.engine.inner.store.clone();
        loop {
            let events = store.read_after(self.after, READ_BATCH).await?;
            let Some(last) = events.last() else {
                return Ok(());
            };
            self.after = last.position;
            for event in &events {
                if event.aggregate_type != "workflow" {
                    continue;
                }
                // An undecodable event changes no trigger the scheduler
                // knows of; the projectors report it.
                let Ok(payload) = WorkflowEvent::deserialize(&event.payload) else {
                    continue;
                };
                self.apply(&event.aggregate_id, payload, event.recorded_at);
            }
            if events.len() < READ_BATCH as usize {
                return Ok(());
            }
        }
    }

    /// Applies one workflow event.
    fn apply(&mut self, id: &str, event: WorkflowEvent, at: DateTime<Utc>) {
        match event {
            WorkflowEvent::WorkflowCreated { tenant, .. } => {
                self.workflows.insert(
                    id.to_string(),
                    Scheduled {
                        tenant,
                        triggers: Vec::new(),
                        archived: false,
                        since: at,
                    },
                );
            }
            WorkflowEvent::WorkflowTriggersSet { triggers } => {
                if let Some(w) = self.workflows.get_mut(id) {
                    w.triggers = triggers;
                    w.since = at;
                }
            }
            WorkflowEvent::WorkflowArchived => {
                if let Some(w) = self.workflows.get_mut(id) {
                    w.archived = true;
                }
            }
            WorkflowEvent::WorkflowRestored => {
                if let Some(w) = self.workflows.get_mut(id) {
                    w.archived = false;
                    w.since = at;
                }
            }
            _ => {}
        }
    }

    /// Starts what is due at `now`; returns the fires started (or found
    /// started). A fire whose start fails for a passing reason (the
    /// database) leaves its workflow's cursor where it was, so that the
    /// next tick tries again.
    pub async fn tick(&mut self, now: DateTime<Utc>) -> Result<Vec<Fire>, EngineError> {
        self.catch_up().await?;
        let inner = &self.engine.inner;
        let db = inner.store.db();
        let late_after = chrono::Duration::from_std(inner.config.schedule_late_after)
            .unwrap_or(chrono::Duration::MAX);
        let cursors = cron_cursors(db).await?;
        let mut fired = Vec::new();
        for (id, workflow) in &self.workflows {
            let schedules: Vec<(&Trigger, CronSchedule)> = workflow
                .triggers
                .iter()
                .filter_map(|t| CronSchedule::of(t).map(|s| (t, s)))
                .collect();
            if schedules.is_empty() {
                continue;
            }
            let since = cursors
                .get(id)
                .map_or(workflow.since, |c| (*c).max(workflow.since));
            // One execution per instant, however many triggers share it.
            let mut due: BTreeMap<DateTime<Utc>, &Trigger> = BTreeMap::new();
            for (trigger, schedule) in &schedules {
                if let Some(at) = schedule.due(since, now, late_after) {
                    due.entry(at).or_insert(trigger);
                }
            }
            // The cursor is written only when a fire passes, not at every
            // tick: nothing due leaves the database alone.
            if due.is_empty() {
                continue;
            }
            if workflow.archived {
                // Fires pass unstarted while it is archived: a restore
                // resumes with the next one.
                advance_cron_cursor(db, id, workflow.tenant.as_str(), now).await?;
                continue;
            }
            let mut done = true;
            for (at, trigger) in due {
                match self.fire(id, workflow, trigger, at).await {
                    Ok(fire) => fired.push(fire),
                    // Archived or gone since: nothing to start, ever.
                    Err(EngineError::Archived | EngineError::NotFound) => {}
                    Err(error) => {
                        tracing::warn!(workflow = %id, %at, %error, "a cron fire could not be started; it is retried");
                        done = false;
                    }
                }
            }
            if done {
                advance_cron_cursor(db, id, workflow.tenant.as_str(), now).await?;
            }
        }
        Ok(fired)
    }

    /// Starts one fire.
    async fn fire(
        &self,
        id: &str,
        workflow: &Scheduled,
        trigger: &Trigger,
        at: DateTime<Utc>,
    ) -> Result<Fire, EngineError> {
        let workflow_id = id
            .parse()
            .map(WorkflowId::from_uuid)
            .map_err(|_| EngineError::NotFound)?;
        let input = match trigger {
            Trigger::Cron {
                input: Some(input), ..
            } => input.clone(),
            _ => Value::Object(Default::default()),
        };
        let ctx = CommandContext::new(SCHEDULER_ACTOR, workflow.tenant.clone());
        let started = self
            .engine
            .start(
                &ctx,
                StartRequest {
                    workflow_id,
                    input,
                    breakpoints: Vec::new(),
                    idempotency_key: Some(fire_key(id, at)),
                    trigger: "cron".into(),
                    source: None,
                },
            )
            .await?;
        if !started.existing {
            tracing::info!(workflow = %id, %at, execution = %started.execution_id, "cron fire started");
            self.engine
                .inner
                .stats
                .cron_fires
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(Fire {
            workflow_id: id.to_string(),
            at,
            execution_id: started.execution_id.to_string(),
            existing: started.existing,
        })
    }

    /// The workflows with at least one cron trigger that can fire.
    pub fn scheduled(&self) -> BTreeSet<String> {
        self.workflows
            .iter()
            .filter(|(_, w)| {
                !w.archived && w.triggers.iter().any(|t| CronSchedule::of(t).is_some())
            })
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The idempotency key of a fire: the workflow and the scheduled instant.
pub fn fire_key(workflow_id: &str, at: DateTime<Utc>) -> String {
    format!(
        "cron:{workflow_id}:{}",
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    )
}

/// Runs the scheduler while this process leads it.
pub(crate) async fn run_scheduler(engine: Engine) {
    let inner = engine.inner.clone();
    let tick = inner.config.schedule_tick.max(Duration::from_millis(10));
    loop {
        let leadership = match Leadership::try_take(inner.store.db(), "engine-scheduler").await {
            Ok(leadership) => leadership,
            Err(error) => {
                tracing::warn!(%error, "could not contend for the scheduler's leadership");
                None
            }
        };
        let Some(mut leadership) = leadership else {
            tokio::select! {
                _ = inner.shutdown.cancelled() => return,
                _ = tokio::time::sleep(tick) => continue,
            }
        };
        inner.stats.scheduling.store(true, Ordering::SeqCst);
        let mut scheduler = Scheduler::new(engine.clone());
        loop {
            if !leadership.is_held().await {
                break;
            }
            if let Err(error) = scheduler.tick(inner.config.clock.now()).await {
                tracing::warn!(%error, "a scheduler tick failed; it is retried");
            }
            tokio::select! {
                _ = inner.shutdown.cancelled() => {
                    inner.stats.scheduling.store(false, Ordering::SeqCst);
                    leadership.release().await;
                    return;
                }
                _ = tokio::time::sleep(tick) => {}
            }
        }
        inner.stats.scheduling.store(false, Ordering::SeqCst);
    }
}
