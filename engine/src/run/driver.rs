//! One execution's driver: it decides the next move with the domain's
//! planner, records it in one batch, runs the steps with side effects, and
//! waits for them, for a timer, or for news (a stop, a resume).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use rand::Rng;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use toolhub_domain::definition::{NodeId, NodeKind, WorkflowDefinition};
use toolhub_domain::execution::{
    final_output, is_idempotent, plan, Execution, ExecutionCommand, ExecutionStatus, StepStatus,
};
use toolhub_domain::{AggregateRoot, TenantId};
use toolhub_eventstore::{CommandContext, CommandError};

use super::engine::{chrono_duration, Engine};
use super::steps::{prepare_step, Prepared, StepOutcome};
use crate::failure::StepFailure;

/// The actor recorded on the engine's own commands.
pub(crate) const ENGINE_ACTOR: &str = "engine";

/// How many times in a row a move may fail before the driver gives the
/// execution back to the queue for a while.
const MAX_FAILED_MOVES: u32 = 5;

/// A step running here.
struct InFlight {
    /// Cancels the step (a stop, a timeout of the whole run).
    cancel: CancellationToken,
}

/// Drives one execution while this worker holds its lease.
pub(crate) struct Driver {
    /// The engine.
    engine: Engine,
    /// The execution.
    id: String,
    /// Its tenant, from the work queue; checked against the execution.
    tenant: TenantId,
    /// Wakes the driver when something changed.
    notify: Arc<Notify>,
    /// Set when the lease is lost or the process stops.
    cancel: CancellationToken,
    /// The steps running here, by node and attempt.
    in_flight: HashMap<(NodeId, u32), InFlight>,
    /// Their tasks, which return their outcomes.
    tasks: JoinSet<StepOutcome>,
    /// Outcomes taken from `tasks` while waiting, recorded by the next move.
    done: Vec<StepOutcome>,
}

/// What the driver does after a move.
enum Next {
    /// Decide again at once.
    Again,
    /// Wait for a step, news, or until the time given.
    Wait(Option<DateTime<Utc>>),
    /// The execution ended or was given back: stop driving it.
    Done,
}

impl Driver {
    pub(crate) fn new(
        engine: Engine,
        id: String,
        tenant: TenantId,
        notify: Arc<Notify>,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            engine,
            id,
            tenant,
            notify,
            cancel,
            in_flight: HashMap::new(),
            tasks: JoinSet::new(),
            done: Vec::new(),
        }
    }

    /// The execution it drives.
    pub(crate) fn id(&self) -> &str {
        &self.id
    }

    /// The first move of a run that is not started yet: `prefix` (its
    /// start, and for a fork the steps it copies) and what follows from it
    /// at once — the first steps scheduled and started, instant ones done,
    /// a breakpoint, even the end — decided in memory, for the start to
    /// append in one commit. Returns the commands and the steps with side
    /// effects to launch once they are committed.
    pub(crate) async fn first_move(
        &mut self,
        prefix: &[ExecutionCommand],
        definition: &WorkflowDefinition,
    ) -> Result<(Vec<ExecutionCommand>, Vec<Prepared>), DriveError> {
        let mut state = Execution::default();
        let mut batch = Batch::default();
        for command in prefix {
            batch.push(&mut state, command.clone())?;
        }
        let moved = self
            .advance_all(&mut state, definition, Utc::now(), &mut batch)
            .await?;
        let launches = moved.launches;
        if let Some(error) = moved.failure {
            fail_running(&mut state, &mut batch, "the execution failed")?;
            batch.push(&mut state, ExecutionCommand::Fail { error })?;
        }
        if batch.len() > toolhub_domain::execution::MAX_BATCH {
            return Err(DriveError::Broken("the first move is larger than a batch"));
        }
        Ok((batch.commands, launches))
    }

    /// The context of the engine's own commands on this execution.
    fn context(&self) -> CommandContext {
        CommandContext::new(ENGINE_ACTOR, self.tenant.clone())
    }

    /// Drives until the execution ends, waits long, or the lease is lost.
    /// `fresh_start`: the cached state is this process's own start.
    pub(crate) async fn run(mut self, fresh_start: bool) {
        let inner = self.engine.inner.clone();
        let mut fresh = !fresh_start;
        let mut failed_moves = 0u32;
        loop {
            if self.cancel.is_cancelled() {
                self.abandon().await;
                return;
            }
            let next = match self.step(fresh).await {
                Ok(next) => {
                    failed_moves = 0;
                    fresh = false;
                    next
                }
                Err(error) => {
                    failed_moves += 1;
                    inner.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(execution = %self.id, %error, failed_moves, "a move failed; deciding again from the log");
                    fresh = true;
                    if failed_moves >= MAX_FAILED_MOVES {
                        // Let the queue hand it out again in a while.
                        self.give_back(Some(Utc::now() + chrono::Duration::seconds(5)))
                            .await;
                        return;
                    }
                    let pause = Duration::from_millis(20 * u64::from(failed_moves));
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.cancel.cancelled() => {}
                    }
                    continue;
                }
            };
            match next {
                Next::Again => continue,
                Next::Done => return,
                Next::Wait(until) => {
                    if self.wait(until).await {
                        // News arrived: read the log, not the cache.
                        fresh = true;
                    }
                }
            }
        }
    }

    /// Waits for a step to finish, news, the time given, or cancellation.
    /// Returns true when woken by news.
    async fn wait(&mut self, until: Option<DateTime<Utc>>) -> bool {
        let sleep = until.map(|t| (t - Utc::now()).to_std().unwrap_or(Duration::ZERO));
        let timer = async {
            match sleep {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        if self.tasks.is_empty() {
            tokio::select! {
                _ = self.notify.notified() => true,
                _ = timer => false,
                _ = self.cancel.cancelled() => false,
            }
        } else {
            tokio::select! {
                _ = self.notify.notified() => true,
                _ = timer => false,
                _ = self.cancel.cancelled() => false,
                joined = self.tasks.join_next() => {
                    if let Some(Ok(outcome)) = joined {
                        self.done.push(outcome);
                    }
                    false
                }
            }
        }
    }

    /// One move: read the state, record what follows from it, launch steps.
    async fn step(&mut self, fresh: bool) -> Result<Next, DriveError> {
        let inner = self.engine.inner.clone();
        let (mut state, version) = if fresh {
            inner.executions.refresh(&self.id).await?
        } else {
            inner.executions.current(&self.id).await?
        };
        if version == 0 {
            // A work row for an execution that never started (a crash
            // between the two writes): nothing to drive.
            inner.work.finish(&self.id).await?;
            return Ok(Next::Done);
        }
        if state.tenant() != Some(&self.tenant) {
            tracing::error!(execution = %self.id, "a work row names another tenant than its execution");
            inner.work.finish(&self.id).await?;
            return Ok(Next::Done);
        }
        let Some(status) = state.status() else {
            return Ok(Next::Done);
        };
        if status.is_terminal() {
            self.cancel_in_flight();
            inner.work.finish(&self.id).await?;
            inner.stats.finished.fetch_add(1, Ordering::Relaxed);
            return Ok(Next::Done);
        }
        let workflow_id = state
            .workflow_id()
            .ok_or(DriveError::Broken("no workflow"))?;
        let (workflow, _) = inner.workflows.current(&workflow_id.to_string()).await?;
        let definition = workflow
            .definition(state.workflow_version())
            .cloned()
            .ok_or(DriveError::Broken("the pinned workflow version is missing"))?;

        let mut batch = Batch::default();
        // Results of steps that finished here.
        self.collect(&mut state, &mut batch)?;

        let now = Utc::now();
        let over = match status {
            ExecutionStatus::Stopping => Some(("stop requested".to_string(), true)),
            _ if state.deadline().is_some_and(|d| d <= now) => Some((
                format!(
                    "the execution ran longer than its timeout of {} s",
                    inner.config.execution_timeout.as_secs()
                ),
                false,
            )),
            _ => None,
        };
        if let Some((reason, cancelled)) = over {
            self.cancel_in_flight();
            fail_running(&mut state, &mut batch, &reason)?;
            let end = if cancelled {
                ExecutionCommand::Cancel { reason }
            } else {
                ExecutionCommand::Fail { error: reason }
            };
            batch.push(&mut state, end)?;
            self.record(batch).await?;
            inner.work.finish(&self.id).await?;
            inner.stats.finished.fetch_add(1, Ordering::Relaxed);
            return Ok(Next::Done);
        }
        if status == ExecutionStatus::Paused {
            self.record(batch).await?;
            if self.tasks.is_empty() {
                // Nothing runs until a command wakes it.
                self.give_back(None).await;
                return Ok(Next::Done);
            }
            return Ok(Next::Wait(None));
        }

        // Running: decide, as far as instant steps allow, in memory.
        let Moved {
            launches,
            earliest,
            failure,
        } = self
            .advance_all(&mut state, &definition, now, &mut batch)
            .await?;
        if let Some(error) = failure {
            self.cancel_in_flight();
            fail_running(&mut state, &mut batch, "the execution failed")?;
            batch.push(&mut state, ExecutionCommand::Fail { error })?;
            self.record(batch).await?;
            inner.work.finish(&self.id).await?;
            inner.stats.finished.fetch_add(1, Ordering::Relaxed);
            return Ok(Next::Done);
        }
        let plan_now = plan(&definition, &state);
        let ended = state.status().is_some_and(ExecutionStatus::is_terminal);
        let paused = state.status() == Some(ExecutionStatus::Paused);
        let recorded = !batch.is_empty();
        self.record(batch).await?;
        if ended {
            inner.work.finish(&self.id).await?;
            inner.stats.finished.fetch_add(1, Ordering::Relaxed);
            return Ok(Next::Done);
        }
        // The steps are in the log: now they may touch the world.
        for prepared in launches {
            self.launch(prepared);
        }
        if paused {
            return Ok(if self.tasks.is_empty() {
                self.give_back(None).await;
                Next::Done
            } else {
                Next::Wait(None)
            });
        }
        if recorded {
            return Ok(Next::Again);
        }
        if self.tasks.is_empty() {
            if let Some(due) = earliest {
                let hold = chrono_duration(inner.config.hold_timers_up_to);
                if due - now > hold {
                    // A long wait: give the execution back, due then.
                    self.give_back(Some(due)).await;
                    return Ok(Next::Done);
                }
                return Ok(Next::Wait(Some(due)));
            }
            if !plan_now.finished && plan_now.ready.is_empty() {
                // Nothing runs and nothing can: say so rather than hang.
                let mut state = state;
                let mut batch = Batch::default();
                batch.push(
                    &mut state,
                    ExecutionCommand::Fail {
                        error: "no node can run: the workflow is stuck".into(),
                    },
                )?;
                self.record(batch).await?;
                inner.work.finish(&self.id).await?;
                return Ok(Next::Done);
            }
        }
        Ok(Next::Wait(earliest))
    }

    /// Records the outcomes of steps that finished here.
    fn collect(&mut self, state: &mut Execution, batch: &mut Batch) -> Result<(), DriveError> {
        while let Some(joined) = self.tasks.try_join_next() {
            if let Ok(outcome) = joined {
                self.done.push(outcome);
            }
        }
        for outcome in std::mem::take(&mut self.done) {
            let key = (outcome.node_id.clone(), outcome.attempt);
            if self.in_flight.remove(&key).is_none() {
                continue;
            }
            if state.step(outcome.node_id.as_str(), outcome.attempt) != Some(StepStatus::Running) {
                // Already settled (a stop failed it meanwhile).
                continue;
            }
            let command = match outcome.result {
                Ok(output) => ExecutionCommand::SucceedStep {
                    node_id: outcome.node_id,
                    attempt: outcome.attempt,
                    output,
                },
                Err(failure) => ExecutionCommand::FailStep {
                    node_id: outcome.node_id,
                    attempt: outcome.attempt,
                    error: failure.message,
                    retryable: failure.retryable,
                },
            };
            batch.push(state, command)?;
        }
        Ok(())
    }

    /// Advances `state` as far as it goes now — instant steps done, new
    /// steps started, until nothing more follows or the run stops running —
    /// into `batch`.
    async fn advance_all(
        &mut self,
        state: &mut Execution,
        definition: &WorkflowDefinition,
        now: DateTime<Utc>,
        batch: &mut Batch,
    ) -> Result<Moved, DriveError> {
        let mut moved = Moved::default();
        for _ in 0..=definition.nodes().len() * 2 + 2 {
            let before = batch.len();
            self.advance(
                state,
                definition,
                now,
                batch,
                &mut moved.launches,
                &mut moved.earliest,
                &mut moved.failure,
            )
            .await?;
            if moved.failure.is_some()
                || batch.len() == before
                || state.status() != Some(ExecutionStatus::Running)
            {
                break;
            }
        }
        Ok(moved)
    }

    /// Decides what follows from `state` now, into `batch` (applied to
    /// `state` as it goes): retries, interrupted steps, timers, skips,
    /// breakpoints, new steps (instant ones run here at once), the end.
    #[allow(clippy::too_many_arguments)]
    async fn advance(
        &mut self,
        state: &mut Execution,
        definition: &WorkflowDefinition,
        now: DateTime<Utc>,
        batch: &mut Batch,
        launches: &mut Vec<Prepared>,
        earliest: &mut Option<DateTime<Utc>>,
        failure: &mut Option<String>,
    ) -> Result<(), DriveError> {
        let inner = self.engine.inner.clone();
        let mut soonest = |t: DateTime<Utc>| {
            *earliest = Some(earliest.map_or(t, |e| e.min(t)));
        };
        for node in definition.topological_order() {
            let id = node.id();
            let Some((attempt, step)) = state.latest_step(id.as_str()) else {
                continue;
            };
            let step = step.clone();
            // Running here, or about to (launched once this batch is in).
            if self.in_flight.contains_key(&(id.clone(), attempt))
                || launches
                    .iter()
                    .any(|p| p.node_id == *id && p.attempt == attempt)
            {
                continue;
            }
            match step.status {
                StepStatus::Failed { retryable } => {
                    let retry = node.policy().retry;
                    let max = retry.map_or(1, |r| r.max_attempts);
                    if retryable && attempt < max {
                        let pause = retry.map_or(0, |r| r.backoff_before(attempt + 1));
                        // Full jitter on the upper half: colliding retries spread.
                        let jitter = rand::thread_rng().gen_range(0..=pause / 2);
                        let not_before =
                            now + chrono::Duration::milliseconds((pause / 2 + jitter) as i64);
                        batch.push(
                            state,
                            ExecutionCommand::RetryStep {
                                node_id: id.clone(),
                                attempt: attempt + 1,
                                not_before: (pause > 0).then_some(not_before),
                            },
                        )?;
                    } else {
                        let error = step.error.unwrap_or_default();
                        *failure = Some(format!("node `{id}` failed: {error}"));
                        return Ok(());
                    }
                }
                StepStatus::Scheduled => {
                    // A retry (maybe waiting for its time), or a step whose
                    // start was lost with its worker.
                    if let Some(at) = step.not_before.filter(|at| *at > now) {
                        soonest(at);
                        continue;
                    }
                    match prepare_step(&inner, state, definition, node, attempt).await {
                        Ok(prepared) => {
                            batch.push(
                                state,
                                ExecutionCommand::StartStep {
                                    node_id: id.clone(),
                                    attempt,
                                    wake_at: prepared.wake_at,
                                },
                            )?;
                            self.settle_or_launch(state, batch, launches, prepared)?;
                        }
                        Err(failure) => {
                            batch.push(
                                state,
                                ExecutionCommand::StartStep {
                                    node_id: id.clone(),
                                    attempt,
                                    wake_at: None,
                                },
                            )?;
                            batch.push(state, fail_command(id, attempt, failure))?;
                        }
                    }
                }
                StepStatus::Running => {
                    if let (NodeKind::Delay { milliseconds }, Some(wake_at)) =
                        (node.kind(), step.wake_at)
                    {
                        if wake_at <= now {
                            batch.push(
                                state,
                                ExecutionCommand::SucceedStep {
                                    node_id: id.clone(),
                                    attempt,
                                    output: json!({"waited_ms": milliseconds}),
                                },
                            )?;
                        } else {
                            soonest(wake_at);
                        }
                        continue;
                    }
                    // Started elsewhere and never finished: its worker died.
                    let idempotent = is_idempotent(definition, id.as_str())
                        || super::lookup::tool_is_idempotent(&inner, state, node).await;
                    let error = if idempotent {
                        "interrupted: the worker running it stopped; it is idempotent, so it runs again"
                    } else {
                        "interrupted: the worker running it stopped; it is not idempotent, so it was not run again"
                    };
                    batch.push(
                        state,
                        ExecutionCommand::FailStep {
                            node_id: id.clone(),
                            attempt,
                            error: error.into(),
                            retryable: idempotent,
                        },
                    )?;
                    if idempotent {
                        batch.push(
                            state,
                            ExecutionCommand::RetryStep {
                                node_id: id.clone(),
                                attempt: attempt + 1,
                                not_before: None,
                            },
                        )?;
                    }
                }
                StepStatus::Succeeded => {}
            }
        }
        if failure.is_some() || state.status() != Some(ExecutionStatus::Running) {
            return Ok(());
        }
        let planned = plan(definition, state);
        for node_id in &planned.skip {
            batch.push(
                state,
                ExecutionCommand::SkipStep {
                    node_id: node_id.clone(),
                },
            )?;
        }
        if planned.finished {
            if self.in_flight.is_empty() {
                let output = final_output(definition, state);
                batch.push(state, ExecutionCommand::Complete { output })?;
            }
            return Ok(());
        }
        if !state.is_stepping_into() {
            if let Some(breakpoint) = planned
                .ready
                .iter()
                .find(|n| state.pauses_before(n.as_str()))
            {
                batch.push(
                    state,
                    ExecutionCommand::PauseAtBreakpoint {
                        node_id: breakpoint.clone(),
                    },
                )?;
                return Ok(());
            }
        }
        let room = inner
            .config
            .max_parallel_steps
            .saturating_sub(self.in_flight.len() + launches.len());
        for node_id in planned.ready.into_iter().take(room) {
            let Some(node) = definition.node(node_id.as_str()) else {
                continue;
            };
            match prepare_step(&inner, state, definition, node, 1).await {
                Ok(prepared) => {
                    batch.push(
                        state,
                        ExecutionCommand::ScheduleStep {
                            node_id: node_id.clone(),
                            attempt: 1,
                            input: prepared.recorded_input.clone(),
                        },
                    )?;
                    batch.push(
                        state,
                        ExecutionCommand::StartStep {
                            node_id: node_id.clone(),
                            attempt: 1,
                            wake_at: prepared.wake_at,
                        },
                    )?;
                    self.settle_or_launch(state, batch, launches, prepared)?;
                }
                Err(failure) => {
                    // The step cannot even be prepared (a missing secret, a
                    // disabled server): it fails as it starts.
                    batch.push(
                        state,
                        ExecutionCommand::ScheduleStep {
                            node_id: node_id.clone(),
                            attempt: 1,
                            input: Value::Null,
                        },
                    )?;
                    batch.push(
                        state,
                        ExecutionCommand::StartStep {
                            node_id: node_id.clone(),
                            attempt: 1,
                            wake_at: None,
                        },
                    )?;
                    batch.push(state, fail_command(&node_id, 1, failure))?;
                }
            }
        }
        Ok(())
    }

    /// An instant step's result goes into the batch now; a step with side
    /// effects is launched once the batch is recorded; a delay waits.
    fn settle_or_launch(
        &mut self,
        state: &mut Execution,
        batch: &mut Batch,
        launches: &mut Vec<Prepared>,
        prepared: Prepared,
    ) -> Result<(), DriveError> {
        if let Some(result) = prepared.instant.clone() {
            let command = match result {
                Ok(output) => ExecutionCommand::SucceedStep {
                    node_id: prepared.node_id.clone(),
                    attempt: prepared.attempt,
                    output,
                },
                Err(failure) => fail_command(&prepared.node_id, prepared.attempt, failure),
            };
            batch.push(state, command)?;
        } else if prepared.wake_at.is_none() {
            launches.push(prepared);
        }
        Ok(())
    }

    /// Runs a prepared step with side effects as a task.
    pub(crate) fn launch(&mut self, prepared: Prepared) {
        let cancel = self.cancel.child_token();
        self.in_flight.insert(
            (prepared.node_id.clone(), prepared.attempt),
            InFlight {
                cancel: cancel.clone(),
            },
        );
        self.engine
            .inner
            .stats
            .steps_run
            .fetch_add(1, Ordering::Relaxed);
        let inner = self.engine.inner.clone();
        self.tasks
            .spawn(async move { prepared.run(&inner, cancel).await });
    }

    /// Cancels every step running here: their futures are dropped, which
    /// aborts HTTP requests and sends MCP `notifications/cancelled`.
    fn cancel_in_flight(&mut self) {
        for step in self.in_flight.values() {
            step.cancel.cancel();
        }
        self.tasks.abort_all();
        self.in_flight.clear();
        self.done.clear();
    }

    /// Appends a batch (nothing when empty).
    async fn record(&self, batch: Batch) -> Result<(), DriveError> {
        if batch.commands.is_empty() {
            return Ok(());
        }
        let inner = &self.engine.inner;
        inner
            .executions
            .execute(
                &self.id,
                ExecutionCommand::Batch(batch.commands),
                &self.context(),
            )
            .await?;
        inner.stats.batches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Gives the execution back to the queue, due at `due_at` (never, until
    /// a command wakes it, when `None`).
    async fn give_back(&mut self, due_at: Option<DateTime<Utc>>) {
        let inner = &self.engine.inner;
        if let Err(error) = inner
            .work
            .release(&self.id, &inner.config.worker_id, due_at)
            .await
        {
            tracing::warn!(execution = %self.id, %error, "could not give an execution back to the queue");
        }
    }

    /// The lease was lost or the process stops: cancel the steps here and,
    /// on a graceful stop, give the execution back for another worker.
    async fn abandon(&mut self) {
        self.cancel_in_flight();
        if self.engine.inner.shutdown.is_cancelled() {
            self.give_back(Some(Utc::now())).await;
        }
    }
}

/// A failed step's command, its error already masked.
fn fail_command(node_id: &NodeId, attempt: u32, failure: StepFailure) -> ExecutionCommand {
    ExecutionCommand::FailStep {
        node_id: node_id.clone(),
        attempt,
        error: failure.message,
        retryable: failure.retryable,
    }
}

/// Fails every running step of `state` with `reason` (a stop, a timeout):
/// an execution that ends leaves no step running.
fn fail_running(state: &mut Execution, batch: &mut Batch, reason: &str) -> Result<(), DriveError> {
    for (node_id, attempt) in running_steps(state) {
        batch.push(
            state,
            ExecutionCommand::FailStep {
                node_id,
                attempt,
                error: format!("cancelled: {reason}"),
                retryable: false,
            },
        )?;
    }
    Ok(())
}

/// Every step whose latest attempt is running.
fn running_steps(state: &Execution) -> Vec<(NodeId, u32)> {
    state
        .step_ids()
        .filter_map(|node| {
            let (attempt, status) = state.latest_attempt(node.as_str())?;
            (status == StepStatus::Running).then(|| (node.clone(), attempt))
        })
        .collect()
}

/// What [`Driver::advance_all`] leaves besides the batch.
#[derive(Default)]
struct Moved {
    /// Steps with side effects, to launch once the batch is recorded.
    launches: Vec<Prepared>,
    /// The earliest timer (a delay, a retry's backoff) still to wait for.
    earliest: Option<DateTime<Utc>>,
    /// Why the run fails, when a node failed for good.
    failure: Option<String>,
}

/// Commands decided against a scratch copy of the state, to be appended as
/// one batch.
#[derive(Default)]
struct Batch {
    /// The commands, in order.
    commands: Vec<ExecutionCommand>,
}

impl Batch {
    /// Decides `command` against `state`, applies its events, and keeps it.
    fn push(&mut self, state: &mut Execution, command: ExecutionCommand) -> Result<(), DriveError> {
        use cqrs_es::Aggregate;
        let events = state.decide(command.clone()).map_err(DriveError::Domain)?;
        for event in events {
            state.apply(event);
        }
        self.commands.push(command);
        Ok(())
    }

    fn len(&self) -> usize {
        self.commands.len()
    }

    fn is_empty(&self) -> bool {
        self.commands.is_empty()
    }
}

/// Why a move failed; the driver decides again from the log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DriveError {
    /// The domain refused a command (the state was stale).
    #[error("refused: {0}")]
    Domain(toolhub_domain::execution::ExecutionError),
    /// The command bus failed (a lost race, the database).
    #[error(transparent)]
    Command(#[from] CommandError<toolhub_domain::execution::ExecutionError>),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] toolhub_eventstore::StoreError),
    /// The execution's history makes no sense.
    #[error("{0}")]
    Broken(&'static str),
}
