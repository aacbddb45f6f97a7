//! Replay: the engine's decisions re-taken over a recorded execution, with
//! no side effect — no tool call, no HTTP request, no secret unsealed — to
//! tell whether the same steps, in the same order, with the same inputs,
//! would be taken today. The workflow version is pinned by the execution,
//! so a divergence means the engine changed (the determinism check
//! Temporal users run with their replayer).
//!
//! [`replay`] walks the recorded events, folding them into an
//! [`Execution`] with the domain's own `apply`. Before each event it asks
//! what the engine would decide at that state, with the code the engine
//! decides with: the domain's planner ([`plan`]) for which nodes are ready
//! or skipped and in which order, and [`resolve_step`] (the part of the
//! engine's step preparation that does no I/O) for each step's input and
//! for the results of the steps without side effects (conditions,
//! transforms). The outputs of steps with side effects (`http`,
//! `mcp_tool`, `delay`) are taken from the record. Every secret a node
//! names resolves to the mask (`***`), which is what the engine records in
//! its place, so a masked recorded input compares equal.
//!
//! What is checked, event by event (each a [`DivergenceKind`]):
//!
//! - `StepScheduled`: the node is ready in the plan (else `SKIP` when the
//!   plan skips it, `UNEXPECTED_STEP` otherwise); no node ready as early
//!   and earlier in the engine's order is still waiting (`ORDER`); its
//!   input is the one recomputed (`INPUT`). A step the engine could not
//!   prepare at the time (a secret or an MCP server missing then) is
//!   recorded with a `null` input and fails at once: for a step with side
//!   effects that is the world at that moment, not a decision, and it is
//!   accepted.
//! - `StepSucceeded` / `StepFailed` of a condition or a transform: the
//!   result recomputed (`OUTPUT`).
//! - `StepRetried`: only after a retryable failure, within the node's
//!   retry policy, or after a step interrupted with its worker (`RETRY`).
//! - `StepSkipped`: the plan skips the node (`SKIP`).
//! - `ExecutionPaused`: the node is ready (`PAUSE`).
//! - `ExecutionCompleted`: every node is done or skipped (`MISSING_STEP`
//!   for each that is not) and the output is the one recomputed (`END`).
//! - `ExecutionFailed` on a node's failure: the failure left no retry the
//!   policy allows (`RETRY`).
//!
//! What people do (breakpoints set, resumes, stops, cancellations), what
//! the world does (a deadline, an outcome) and the steps a fork copied
//! from its original are taken as recorded. After a
//! divergence, replay goes on with the recorded event, so that one change
//! is reported once, at the node where it happens, and not again at every
//! node after it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{json, Value};
use toolhub_domain::definition::{NodeId, NodeKind, WorkflowDefinition};
use toolhub_domain::execution::{
    final_output, plan, Execution, ExecutionEvent, NodeState, Plan, StepStatus,
};
use zeroize::Zeroizing;

use crate::expr::Conditions;
use crate::failure::StepFailure;
use crate::mask::MASK;
use crate::run::steps::{node_secret_names, resolve_step};
use crate::template::Secrets;

/// One recorded event of the execution, where it is in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayEvent {
    /// The event's sequence in the execution, from 1.
    pub sequence: u64,
    /// The event's position in the global log, as the API shows it.
    pub position: String,
    /// The event.
    pub event: ExecutionEvent,
}

/// What kind of decision differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum DivergenceKind {
    /// A step was recorded that the engine would not schedule now.
    UnexpectedStep,
    /// The run completed without a step the engine would run.
    MissingStep,
    /// A step was scheduled before one the engine would schedule first.
    Order,
    /// A step's recorded input is not the one the engine computes.
    Input,
    /// A condition's or a transform's recorded result is not the one the
    /// engine computes.
    Output,
    /// A node was skipped that the engine would not skip, or scheduled
    /// where the engine would skip it.
    Skip,
    /// A retry the retry policy does not allow, or one it asks for that
    /// was not made.
    Retry,
    /// A pause before a node that was not ready.
    Pause,
    /// The run's recorded end differs (its output).
    End,
}

/// One decision that differs between the record and the engine now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Divergence {
    /// The sequence of the recorded event where it shows.
    pub sequence: u64,
    /// That event's position in the log.
    pub position: String,
    /// The node concerned; `None` for the run as a whole.
    pub node_id: Option<NodeId>,
    /// What differs.
    pub kind: DivergenceKind,
    /// What the engine decides now.
    pub expected: Value,
    /// What was recorded.
    pub recorded: Value,
    /// Why they differ, in words.
    pub reason: String,
}

/// What a replay found.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReplayReport {
    /// The pinned workflow version replayed against.
    pub workflow_version: u64,
    /// How many step decisions were compared: every attempt scheduled,
    /// retried or skipped.
    pub steps_checked: u32,
    /// Every decision that differs, in the order of the record.
    pub divergences: Vec<Divergence>,
}

impl ReplayReport {
    /// Whether the engine would take every recorded decision again.
    pub fn deterministic(&self) -> bool {
        self.divergences.is_empty()
    }
}

/// Replays `events` (one execution's, in order) against `definition` (its
/// pinned version), evaluating conditions with `conditions`
/// ([`crate::expr::Cel`] is the engine's own). Pure: no I/O.
pub fn replay(
    definition: &WorkflowDefinition,
    events: &[ReplayEvent],
    conditions: &dyn Conditions,
) -> ReplayReport {
    let mut replayer = Replayer {
        definition,
        conditions,
        state: Execution::default(),
        ready_since: BTreeMap::new(),
        results: BTreeMap::new(),
        report: ReplayReport {
            workflow_version: 0,
            steps_checked: 0,
            divergences: Vec::new(),
        },
    };
    for (index, recorded) in events.iter().enumerate() {
        replayer.check(recorded);
        use cqrs_es::Aggregate;
        replayer.state.apply(recorded.event.clone());
        replayer.track_ready(index);
    }
    replayer.report.workflow_version = replayer.state.workflow_version();
    replayer.report
}

/// A replay in progress.
struct Replayer<'a> {
    /// The pinned definition.
    definition: &'a WorkflowDefinition,
    /// The condition evaluator.
    conditions: &'a dyn Conditions,
    /// The execution folded up to the event being checked.
    state: Execution,
    /// When each node now ready became ready (the index of the event after
    /// which it was): the engine schedules the nodes of one plan in its
    /// order, so a node ready no later than another and before it in that
    /// order is scheduled first.
    ready_since: BTreeMap<NodeId, usize>,
    /// The recomputed result of each started attempt of an instant step.
    results: BTreeMap<(NodeId, u32), Result<Value, StepFailure>>,
    /// What was found so far.
    report: ReplayReport,
}

impl Replayer<'_> {
    fn diverge(
        &mut self,
        at: &ReplayEvent,
        node: Option<&NodeId>,
        kind: DivergenceKind,
        expected: Value,
        recorded: Value,
        reason: String,
    ) {
        self.report.divergences.push(Divergence {
            sequence: at.sequence,
            position: at.position.clone(),
            node_id: node.cloned(),
            kind,
            expected,
            recorded,
            reason,
        });
    }

    /// Compares one recorded event with what the engine would decide at
    /// the state before it.
    fn check(&mut self, at: &ReplayEvent) {
        use DivergenceKind as K;
        match &at.event {
            ExecutionEvent::StepScheduled {
                node_id,
                attempt,
                input,
            } => {
                self.report.steps_checked += 1;
                let planned = plan(self.definition, &self.state);
                if *attempt != 1 {
                    self.diverge(
                        at,
                        Some(node_id),
                        K::UnexpectedStep,
                        json!(1),
                        json!(attempt),
                        "the engine schedules a node's first attempt only; later ones are retries"
                            .into(),
                    );
                }
                if planned.skip.contains(node_id) {
                    self.diverge(
                        at,
                        Some(node_id),
                        K::Skip,
                        json!("skipped"),
                        json!("scheduled"),
                        "every way into the node is a branch not taken: the engine skips it".into(),
                    );
                } else if !planned.ready.contains(node_id) {
                    let state = node_state(&planned, node_id);
                    self.diverge(
                        at,
                        Some(node_id),
                        K::UnexpectedStep,
                        json!(state),
                        json!("scheduled"),
                        format!("the engine would not schedule it now: it is {state}"),
                    );
                } else {
                    let mine = self.ready_since.get(node_id).copied().unwrap_or(usize::MAX);
                    let first = planned
                        .ready
                        .iter()
                        .take_while(|n| *n != node_id)
                        .find(|n| self.ready_since.get(*n).is_some_and(|s| *s <= mine))
                        .cloned();
                    if let Some(first) = first {
                        self.diverge(
                            at,
                            Some(node_id),
                            K::Order,
                            json!(first.as_str()),
                            json!(node_id.as_str()),
                            format!(
                                "`{first}` was ready as early and comes first in the engine's order: \
                                 it is scheduled before `{node_id}`"
                            ),
                        );
                    }
                }
                self.check_input(at, node_id, input);
            }
            ExecutionEvent::StepStarted {
                node_id, attempt, ..
            } => {
                let instant = self.definition.node(node_id.as_str()).is_some_and(|n| {
                    matches!(
                        n.kind(),
                        NodeKind::Condition { .. } | NodeKind::Transform { .. }
                    )
                });
                if instant {
                    if let Some(result) = self.resolve(node_id) {
                        let result = result.and_then(|r| {
                            r.instant.unwrap_or_else(|| {
                                Err(StepFailure::permanent("the step has nothing to run"))
                            })
                        });
                        self.results.insert((node_id.clone(), *attempt), result);
                    }
                }
            }
            ExecutionEvent::StepSucceeded {
                node_id,
                attempt,
                output,
            } => match self.results.remove(&(node_id.clone(), *attempt)) {
                Some(Ok(expected)) if expected == *output => {}
                Some(Ok(expected)) => self.diverge(
                    at,
                    Some(node_id),
                    K::Output,
                    expected,
                    output.clone(),
                    "the engine computes another result for this step".into(),
                ),
                Some(Err(failure)) => self.diverge(
                    at,
                    Some(node_id),
                    K::Output,
                    json!({"error": failure.message}),
                    output.clone(),
                    format!("the engine fails this step: {}", failure.message),
                ),
                None => {}
            },
            ExecutionEvent::StepFailed {
                node_id,
                attempt,
                error,
                ..
            } => match self.results.remove(&(node_id.clone(), *attempt)) {
                Some(Err(failure)) if failure.message == *error => {}
                Some(Err(failure)) => self.diverge(
                    at,
                    Some(node_id),
                    K::Output,
                    json!({"error": failure.message}),
                    json!({"error": error}),
                    "the engine fails this step with another error".into(),
                ),
                Some(Ok(expected)) => self.diverge(
                    at,
                    Some(node_id),
                    K::Output,
                    expected,
                    json!({"error": error}),
                    "the engine would succeed where the record failed".into(),
                ),
                None => {}
            },
            ExecutionEvent::StepRetried {
                node_id, attempt, ..
            } => {
                self.report.steps_checked += 1;
                if let Some(reason) = self.refused_retry(node_id, *attempt) {
                    self.diverge(
                        at,
                        Some(node_id),
                        K::Retry,
                        json!("no retry"),
                        json!({"retry": attempt}),
                        reason,
                    );
                }
            }
            ExecutionEvent::StepSkipped { node_id } => {
                self.report.steps_checked += 1;
                let planned = plan(self.definition, &self.state);
                if !planned.skip.contains(node_id) {
                    let state = node_state(&planned, node_id);
                    self.diverge(
                        at,
                        Some(node_id),
                        K::Skip,
                        json!(state),
                        json!("skipped"),
                        format!("the engine would not skip it: it is {state}"),
                    );
                }
            }
            ExecutionEvent::ExecutionPaused { node_id } => {
                let planned = plan(self.definition, &self.state);
                if !planned.ready.contains(node_id) {
                    let state = node_state(&planned, node_id);
                    self.diverge(
                        at,
                        Some(node_id),
                        K::Pause,
                        json!(state),
                        json!("paused before"),
                        format!("the engine pauses before ready nodes only; it is {state}"),
                    );
                }
            }
            ExecutionEvent::ExecutionCompleted { output } => {
                let planned = plan(self.definition, &self.state);
                for (node, state) in &planned.nodes {
                    if !matches!(state, NodeState::Done | NodeState::Skipped) {
                        self.diverge(
                            at,
                            Some(node),
                            K::MissingStep,
                            json!(state.as_str()),
                            json!("completed without it"),
                            format!(
                                "the run completed while the node is {}: the engine would run it",
                                state.as_str()
                            ),
                        );
                    }
                }
                let expected = final_output(self.definition, &self.state);
                if expected != *output {
                    self.diverge(
                        at,
                        None,
                        K::End,
                        expected,
                        output.clone(),
                        "the engine computes another output for the run".into(),
                    );
                }
            }
            ExecutionEvent::ExecutionFailed { error } => {
                if let Some(node_id) = failed_node(error) {
                    if let Some(node_id) = self
                        .definition
                        .node(node_id)
                        .map(|n| n.id().clone())
                        .filter(|n| self.retry_allowed(n))
                    {
                        let next = self
                            .state
                            .latest_attempt(node_id.as_str())
                            .map_or(1, |(a, _)| a + 1);
                        self.diverge(
                            at,
                            Some(&node_id),
                            K::Retry,
                            json!({"retry": next}),
                            json!("failed"),
                            "the failure is retryable and the retry policy allows another attempt"
                                .into(),
                        );
                    }
                }
            }
            // A fork's copies are the original's record, taken as they are.
            ExecutionEvent::ExecutionStarted { .. }
            | ExecutionEvent::ExecutionForked { .. }
            | ExecutionEvent::StepCopied { .. }
            | ExecutionEvent::BreakpointsSet { .. }
            | ExecutionEvent::ExecutionResumed { .. }
            | ExecutionEvent::ExecutionStopRequested
            | ExecutionEvent::ExecutionCancelled { .. } => {}
        }
    }

    /// Compares a scheduled step's recorded input with the one recomputed.
    fn check_input(&mut self, at: &ReplayEvent, node_id: &NodeId, recorded: &Value) {
        let Some(node) = self.definition.node(node_id.as_str()) else {
            self.diverge(
                at,
                Some(node_id),
                DivergenceKind::UnexpectedStep,
                Value::Null,
                json!("scheduled"),
                format!(
                    "no such node in version {} of the workflow",
                    self.state.workflow_version()
                ),
            );
            return;
        };
        let side_effects = matches!(
            node.kind(),
            NodeKind::Http { .. } | NodeKind::McpTool { .. }
        );
        match self.resolve(node_id) {
            None => {}
            Some(Ok(resolution)) if resolution.recorded_input == *recorded => {}
            // Not prepared at the time: a secret or a server missing then.
            Some(Ok(_)) if side_effects && recorded.is_null() => {}
            Some(Err(_)) if recorded.is_null() => {}
            Some(Ok(resolution)) => self.diverge(
                at,
                Some(node_id),
                DivergenceKind::Input,
                resolution.recorded_input,
                recorded.clone(),
                "the engine computes another input for this step".into(),
            ),
            Some(Err(failure)) => self.diverge(
                at,
                Some(node_id),
                DivergenceKind::Input,
                json!({"error": failure.message}),
                recorded.clone(),
                format!("the engine cannot prepare this step: {}", failure.message),
            ),
        }
    }

    /// The step's resolution at the current state, every secret standing
    /// as the mask; `None` for a node not in the definition.
    fn resolve(
        &self,
        node_id: &NodeId,
    ) -> Option<Result<crate::run::steps::Resolution, StepFailure>> {
        let node = self.definition.node(node_id.as_str())?;
        let secrets: Secrets = node_secret_names(node)
            .into_iter()
            .map(|name| (name, Zeroizing::new(MASK.to_string())))
            .collect();
        Some(resolve_step(
            node,
            self.definition,
            self.state.input(),
            self.state.outputs(),
            &secrets,
            &[],
            self.conditions,
        ))
    }

    /// Why the engine would not retry `node_id` as attempt `attempt` now,
    /// or `None` when it would.
    fn refused_retry(&self, node_id: &NodeId, attempt: u32) -> Option<String> {
        let Some((latest, step)) = self.state.latest_step(node_id.as_str()) else {
            return Some("the node has no attempt to retry".into());
        };
        match step.status {
            StepStatus::Failed { retryable: true } => {}
            StepStatus::Failed { retryable: false } => {
                return Some(format!(
                    "attempt {latest} failed with an error retrying cannot help"
                ))
            }
            _ => return Some(format!("attempt {latest} has not failed")),
        }
        if attempt != latest + 1 {
            return Some(format!(
                "the retry after attempt {latest} is attempt {}",
                latest + 1
            ));
        }
        if self.interrupted(node_id) {
            return None;
        }
        let max = self.max_attempts(node_id);
        (latest >= max).then(|| {
            format!("attempt {latest} is the last the node's retry policy allows ({max} in all)")
        })
    }

    /// Whether the engine would retry the node's failed latest attempt.
    fn retry_allowed(&self, node_id: &NodeId) -> bool {
        match self.state.latest_step(node_id.as_str()) {
            Some((latest, step)) => {
                step.status == StepStatus::Failed { retryable: true }
                    && (latest < self.max_attempts(node_id) || self.interrupted(node_id))
            }
            None => false,
        }
    }

    /// Whether the node's latest attempt failed because its worker stopped
    /// (the engine retries those when idempotent, whatever the policy).
    fn interrupted(&self, node_id: &NodeId) -> bool {
        self.state
            .latest_step(node_id.as_str())
            .and_then(|(_, step)| step.error.as_deref())
            .is_some_and(|e| e.starts_with("interrupted:"))
    }

    /// The attempts the node's retry policy allows in all.
    fn max_attempts(&self, node_id: &NodeId) -> u32 {
        self.definition
            .node(node_id.as_str())
            .and_then(|n| n.policy().retry)
            .map_or(1, |r| r.max_attempts)
    }

    /// Notes when each node became ready, after the event at `index`.
    fn track_ready(&mut self, index: usize) {
        if self.state.status().is_none() {
            return;
        }
        let planned = plan(self.definition, &self.state);
        self.ready_since.retain(|n, _| planned.ready.contains(n));
        for node in planned.ready {
            self.ready_since.entry(node).or_insert(index);
        }
    }
}

/// A node's state in a plan, by name.
fn node_state(planned: &Plan, node_id: &NodeId) -> &'static str {
    planned
        .nodes
        .iter()
        .find(|(n, _)| n == node_id)
        .map_or("not a node of the workflow", |(_, s)| s.as_str())
}

/// The node named by the engine's "node `ID` failed: …" error.
fn failed_node(error: &str) -> Option<&str> {
    let rest = error.strip_prefix("node `")?;
    let end = rest.find("` failed")?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests;
