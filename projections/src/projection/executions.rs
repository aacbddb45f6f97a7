//! The `executions` read model: executions as they stand (`rm_executions`)
//! and every attempt of every step (`rm_execution_steps`).

use std::collections::{BTreeMap, BTreeSet};

use async_trait::async_trait;
use chrono::{DateTime, SubsecRound, Utc};
use serde_json::Value;
use toolhub_domain::execution::{ExecutionEvent, ExecutionStatus};
use toolhub_eventstore::sql::{insert_rows, upsert_tail, Conn};
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::{decode, entity, fold, ids_of, load_rows, of_type, table_row};
use super::{Projection, Tables};

table_row! {
    /// An execution as it stands now: a row of `rm_executions`.
    pub struct ExecutionView {
        /// The execution's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The aggregate's version.
        aggregate_version: u64 = uint as "seq",
        /// The workflow it runs.
        workflow_id: String = text,
        /// The workflow version it is pinned to.
        workflow_version: u64 = uint,
        /// `running`, `paused`, `stopping`, `cancelled`, `completed` or `failed`.
        status: String = text,
        /// `manual`, `cron` or `webhook`.
        trigger: String = text,
        /// The input it was started with.
        input: Value = json [document],
        /// The output, once completed.
        output: Option<Value> = opt_json [document],
        /// The error, once failed or cancelled.
        error: Option<String> = opt_text,
        /// Who started it.
        started_by: String = text,
        /// When it started.
        started_at: DateTime<Utc> = time,
        /// When it reached a terminal status.
        finished_at: Option<DateTime<Utc>> = opt_time,
        /// When it last changed.
        updated_at: DateTime<Utc> = time,
        /// The node it is paused before, while paused.
        paused_at: Option<String> = opt_text,
        /// The nodes it pauses before (a JSON array of node ids).
        breakpoints: Value = json,
        /// When the whole run times out, if ever.
        deadline: Option<DateTime<Utc>> = opt_time,
        /// For a fork: the execution it was forked from.
        forked_from: Option<String> = opt_text,
        /// For a fork: the node it ran live from.
        forked_from_node: Option<String> = opt_text,
    }
}
entity!(ExecutionView, aggregate_version);

table_row! {
    /// One attempt of one node of an execution: a row of
    /// `rm_execution_steps`.
    pub struct ExecutionStepView {
        /// The execution's id.
        execution_id: String = text,
        /// The node's id in the definition.
        node_id: String = text,
        /// The attempt, from 1.
        attempt: u32 = small,
        /// The owning tenant.
        tenant: String = text,
        /// `scheduled`, `running`, `succeeded`, `failed`, or `skipped` (a
        /// node on a branch not taken, shown as attempt 0).
        status: String = text,
        /// The node's input (secret values masked by the engine).
        input: Value = json [document],
        /// The node's output, once succeeded.
        output: Option<Value> = opt_json [document],
        /// The error, once failed.
        error: Option<String> = opt_text,
        /// When it was scheduled.
        scheduled_at: DateTime<Utc> = time,
        /// When it started.
        started_at: Option<DateTime<Utc>> = opt_time,
        /// When it finished.
        finished_at: Option<DateTime<Utc>> = opt_time,
        /// For a step a fork copied: the position of the original's event
        /// it was copied from.
        copied_from: Option<String> = opt_text,
    }
}

/// A step's key: execution, node, attempt.
type StepKey = (String, String, u32);

/// A step's key.
fn step_key(step: &ExecutionStepView) -> StepKey {
    (
        step.execution_id.clone(),
        step.node_id.clone(),
        step.attempt,
    )
}

/// A newly scheduled attempt.
fn new_step(key: StepKey, input: Value, tenant: &str, at: DateTime<Utc>) -> ExecutionStepView {
    ExecutionStepView {
        execution_id: key.0,
        node_id: key.1,
        attempt: key.2,
        tenant: tenant.to_string(),
        status: "scheduled".into(),
        input,
        output: None,
        error: None,
        scheduled_at: at,
        started_at: None,
        finished_at: None,
        copied_from: None,
    }
}

/// Executions and their steps.
pub struct ExecutionsProjection;

#[async_trait]
impl Projection for ExecutionsProjection {
    fn name(&self) -> &'static str {
        "executions"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_executions", "rm_execution_steps"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "execution");
        if events.is_empty() {
            return Ok(());
        }
        let steps_table = tables.name("rm_execution_steps");
        let mut steps: BTreeMap<StepKey, ExecutionStepView> = BTreeMap::new();
        for r in load_rows(conn, &steps_table, "execution_id", &ids_of(&events)).await? {
            let step = ExecutionStepView::from_row(&r)?;
            steps.insert(step_key(&step), step);
        }
        let mut dirty_steps = BTreeSet::new();
        fold(
            conn,
            &tables.name("rm_executions"),
            &events,
            |event, payload: ExecutionEvent, row: Option<&mut ExecutionView>| {
                apply_event(event, payload, row, &mut steps, &mut dirty_steps)
            },
        )
        .await?;
        let step_upserts = dirty_steps
            .iter()
            .filter_map(|key| steps.remove(key))
            .map(ExecutionStepView::into_args)
            .collect();
        insert_rows(
            conn,
            &steps_table,
            ExecutionStepView::COLUMNS,
            step_upserts,
            &upsert_tail(
                &["execution_id", "node_id", "attempt"],
                ExecutionStepView::COLUMNS,
            ),
        )
        .await?;
        Ok(())
    }
}

/// What one execution event does to the execution's row and to its steps:
/// the read model's fold, shared by the projection and by as-of reads
/// ([`fold_execution`]). Returns the new row for `ExecutionStarted`, and
/// `None` otherwise: the row, if there is one, is changed in place (an
/// event before the first changes nothing). Every step it changes is added
/// to `dirty_steps`.
fn apply_event(
    event: &RecordedEvent,
    payload: ExecutionEvent,
    row: Option<&mut ExecutionView>,
    steps: &mut BTreeMap<StepKey, ExecutionStepView>,
    dirty_steps: &mut BTreeSet<StepKey>,
) -> Result<Option<ExecutionView>, StoreError> {
    let id = &event.aggregate_id;
    let at = event.recorded_at;
    let row = match (payload, row) {
        (
            ExecutionEvent::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                input,
                trigger,
                breakpoints,
                deadline,
                ..
            },
            _,
        ) => {
            return Ok(Some(ExecutionView {
                id: id.clone(),
                tenant: tenant.to_string(),
                aggregate_version: 0,
                workflow_id: workflow_id.to_string(),
                workflow_version,
                status: ExecutionStatus::Running.as_str().into(),
                trigger,
                input,
                output: None,
                error: None,
                started_by: event.metadata.actor.clone(),
                started_at: at,
                finished_at: None,
                updated_at: at,
                paused_at: None,
                breakpoints: serde_json::to_value(&breakpoints)?,
                deadline,
                forked_from: None,
                forked_from_node: None,
            }))
        }
        (_, None) => return Ok(None),
        (payload, Some(row)) => (payload, row),
    };
    let (payload, row) = row;
    let key = |node: &str, attempt: u32| -> StepKey { (id.clone(), node.to_string(), attempt) };
    let finish = |row: &mut ExecutionView, status: ExecutionStatus| {
        row.status = status.as_str().into();
        row.finished_at = Some(at);
    };
    match payload {
        ExecutionEvent::ExecutionStarted { .. } => {}
        ExecutionEvent::StepScheduled {
            node_id,
            attempt,
            input,
        } => {
            let step = new_step(key(node_id.as_str(), attempt), input, &row.tenant, at);
            dirty_steps.insert(step_key(&step));
            steps.insert(step_key(&step), step);
        }
        ExecutionEvent::StepRetried {
            node_id, attempt, ..
        } => {
            // A retry runs with the failed attempt's input.
            let input = steps
                .range(key(node_id.as_str(), 0)..key(node_id.as_str(), attempt))
                .next_back()
                .map(|(_, s)| s.input.clone())
                .unwrap_or(Value::Null);
            let step = new_step(key(node_id.as_str(), attempt), input, &row.tenant, at);
            dirty_steps.insert(step_key(&step));
            steps.insert(step_key(&step), step);
        }
        ExecutionEvent::StepStarted {
            node_id, attempt, ..
        } => {
            let key = key(node_id.as_str(), attempt);
            if let Some(s) = steps.get_mut(&key) {
                s.status = "running".into();
                s.started_at = Some(at);
                dirty_steps.insert(key);
            }
        }
        ExecutionEvent::StepSucceeded {
            node_id,
            attempt,
            output,
        } => {
            let key = key(node_id.as_str(), attempt);
            if let Some(s) = steps.get_mut(&key) {
                s.status = "succeeded".into();
                s.output = Some(output);
                s.finished_at = Some(at);
                dirty_steps.insert(key);
            }
        }
        ExecutionEvent::StepFailed {
            node_id,
            attempt,
            error,
            ..
        } => {
            let key = key(node_id.as_str(), attempt);
            if let Some(s) = steps.get_mut(&key) {
                s.status = "failed".into();
                s.error = Some(error);
                s.finished_at = Some(at);
                dirty_steps.insert(key);
            }
        }
        ExecutionEvent::StepSkipped { node_id } => {
            // A skipped node has no attempt: it shows as attempt 0.
            let mut step = new_step(key(node_id.as_str(), 0), Value::Null, &row.tenant, at);
            step.status = "skipped".into();
            step.finished_at = Some(at);
            dirty_steps.insert(step_key(&step));
            steps.insert(step_key(&step), step);
        }
        ExecutionEvent::ExecutionForked {
            forked_from,
            from_node,
        } => {
            row.forked_from = Some(forked_from.to_string());
            row.forked_from_node = Some(from_node.to_string());
        }
        ExecutionEvent::StepCopied {
            node_id,
            attempt,
            input,
            output,
            skipped,
            original_position,
            ..
        } => {
            let mut step = new_step(key(node_id.as_str(), attempt), input, &row.tenant, at);
            if skipped {
                step.status = "skipped".into();
            } else {
                step.status = "succeeded".into();
                step.output = Some(output);
                step.started_at = Some(at);
            }
            step.finished_at = Some(at);
            step.copied_from = Some(original_position);
            dirty_steps.insert(step_key(&step));
            steps.insert(step_key(&step), step);
        }
        ExecutionEvent::BreakpointsSet { breakpoints } => {
            row.breakpoints = serde_json::to_value(&breakpoints)?;
        }
        ExecutionEvent::ExecutionPaused { node_id } => {
            row.status = ExecutionStatus::Paused.as_str().into();
            row.paused_at = Some(node_id.to_string());
        }
        ExecutionEvent::ExecutionResumed { .. } => {
            row.status = ExecutionStatus::Running.as_str().into();
            row.paused_at = None;
        }
        ExecutionEvent::ExecutionStopRequested => {
            row.status = ExecutionStatus::Stopping.as_str().into();
            row.paused_at = None;
        }
        ExecutionEvent::ExecutionCancelled { reason } => {
            row.paused_at = None;
            row.error = Some(reason);
            finish(row, ExecutionStatus::Cancelled);
        }
        ExecutionEvent::ExecutionCompleted { output } => {
            row.output = Some(output);
            finish(row, ExecutionStatus::Completed);
        }
        ExecutionEvent::ExecutionFailed { error } => {
            row.paused_at = None;
            row.error = Some(error);
            finish(row, ExecutionStatus::Failed);
        }
    }
    row.updated_at = at;
    Ok(None)
}

/// An execution and its steps as the read model shows them, folded in
/// memory from the execution's events (in sequence order, from its first)
/// by the projection's own [`apply_event`]: what an as-of read shows. The
/// steps are in the read model's order (scheduled, node, attempt). `None`
/// when no event starts it.
pub fn fold_execution(
    events: &[RecordedEvent],
) -> Result<Option<(ExecutionView, Vec<ExecutionStepView>)>, StoreError> {
    let mut row: Option<ExecutionView> = None;
    let mut steps = BTreeMap::new();
    let mut dirty = BTreeSet::new();
    for event in events {
        let payload = decode::<ExecutionEvent>(event)?;
        if let Some(started) = apply_event(event, payload, row.as_mut(), &mut steps, &mut dirty)? {
            row = Some(started);
        }
        if let Some(row) = row.as_mut() {
            row.aggregate_version = event.sequence;
        }
    }
    let Some(mut row) = row else {
        return Ok(None);
    };
    // As stored: both backends keep times to the microsecond, and a
    // deadline is the one time taken from a payload, not from the log.
    row.deadline = row.deadline.map(|d| d.trunc_subsecs(6));
    let mut steps: Vec<ExecutionStepView> = steps.into_values().collect();
    steps.sort_by(|a, b| {
        (a.scheduled_at, &a.node_id, a.attempt).cmp(&(b.scheduled_at, &b.node_id, b.attempt))
    });
    Ok(Some((row, steps)))
}
