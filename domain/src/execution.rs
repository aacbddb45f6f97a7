//! The execution aggregate: one run of one version of a workflow.
//!
//! The engine drives an execution by issuing commands as it walks the graph:
//! each step (a node, at an attempt number) is scheduled, started, and then
//! succeeds or fails; a failed step may be retried as a new attempt. A user
//! may pause at debug breakpoints, resume, ask to stop, or cancel.
//!
//! ```text
//! Start ─▶ Running ──PauseAtBreakpoint─▶ Paused ──Resume─▶ Running
//! Running or Paused ──RequestStop─▶ Stopping
//! Running or Stopping ──Complete─▶ Completed
//! any non-terminal ──Cancel─▶ Cancelled, ──Fail─▶ Failed
//! ```
//!
//! Completed, Cancelled and Failed are terminal: no event follows them.
//!
//! Timings are deliberately absent: the event store records when each event
//! was appended, and that is the step's clock. Inputs and outputs arrive with
//! secret values already masked by the engine.

use crate::common::{AggregateRoot, CommandTraits, Role, TenantId, WorkflowId};
use crate::definition::NodeId;
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// The triggers an execution may be started by.
pub const EXECUTION_TRIGGERS: [&str; 3] = ["manual", "cron", "webhook"];

/// Where an execution is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecutionStatus {
    /// Steps are being scheduled and run.
    Running,
    /// Halted at a breakpoint until resumed.
    Paused,
    /// A stop was requested; steps in flight may still finish, nothing new
    /// starts, and the engine will cancel the execution.
    Stopping,
    /// Stopped before the end. Terminal.
    Cancelled,
    /// Ran to the end. Terminal.
    Completed,
    /// Gave up on an error. Terminal.
    Failed,
}

impl ExecutionStatus {
    /// True for the statuses after which nothing may happen.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Cancelled | Self::Completed | Self::Failed)
    }

    /// The status in lowercase, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Stopping => "stopping",
            Self::Cancelled => "cancelled",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }
}

impl fmt::Display for ExecutionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one attempt of one step is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    /// Scheduled with its input, not yet started.
    Scheduled,
    /// Started, not yet finished.
    Running,
    /// Finished with an output.
    Succeeded,
    /// Finished with an error.
    Failed {
        /// Whether the executor judged that trying again may help.
        retryable: bool,
    },
}

/// The state of one execution, folded from its events.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Execution {
    /// The owner; `None` until [`ExecutionEvent::ExecutionStarted`].
    tenant: Option<TenantId>,
    /// The workflow being run.
    workflow_id: Option<WorkflowId>,
    /// The workflow version being run, pinned at start so that later edits
    /// do not change a run in progress.
    workflow_version: u64,
    /// `None` before start.
    status: Option<ExecutionStatus>,
    /// The nodes to pause at.
    breakpoints: BTreeSet<NodeId>,
    /// The breakpoint the execution is paused at, while paused.
    paused_at: Option<NodeId>,
    /// Every attempt of every step. Inputs and outputs are not kept here:
    /// no rule needs them, and they live in the events.
    steps: BTreeMap<NodeId, BTreeMap<u32, StepStatus>>,
}

impl Execution {
    /// The status, or `None` before start.
    pub fn status(&self) -> Option<ExecutionStatus> {
        self.status
    }

    /// The workflow being run, once started.
    pub fn workflow_id(&self) -> Option<WorkflowId> {
        self.workflow_id
    }

    /// The pinned workflow version; 0 before start.
    pub fn workflow_version(&self) -> u64 {
        self.workflow_version
    }

    /// The nodes to pause at.
    pub fn breakpoints(&self) -> &BTreeSet<NodeId> {
        &self.breakpoints
    }

    /// The breakpoint the execution is paused at, while paused.
    pub fn paused_at(&self) -> Option<&NodeId> {
        self.paused_at.as_ref()
    }

    /// The status of one attempt of one step.
    pub fn step(&self, node_id: &str, attempt: u32) -> Option<StepStatus> {
        self.steps.get(node_id)?.get(&attempt).copied()
    }

    /// The latest attempt of a step and its status.
    pub fn latest_attempt(&self, node_id: &str) -> Option<(u32, StepStatus)> {
        let (attempt, status) = self.steps.get(node_id)?.last_key_value()?;
        Some((*attempt, *status))
    }
}

/// What the engine or a user may ask of an execution. Every command needs the
/// Editor role.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutionCommand {
    /// Starts the execution, pinned to a workflow version.
    Start {
        /// The owner.
        tenant: TenantId,
        /// The workflow to run.
        workflow_id: WorkflowId,
        /// The version to run, 1 or more.
        workflow_version: u64,
        /// The input, available to templates as `{{input}}`.
        input: Value,
        /// What started it: `manual`, `cron` or `webhook`.
        trigger: String,
        /// The nodes to pause at, for debugging.
        breakpoints: Vec<NodeId>,
    },
    /// Schedules an attempt of a step with its (masked) input.
    ScheduleStep {
        /// The node.
        node_id: NodeId,
        /// The attempt number, from 1.
        attempt: u32,
        /// The resolved input, secrets masked.
        input: Value,
    },
    /// Marks a scheduled attempt as started.
    StartStep {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// Records a started attempt's (masked) output.
    SucceedStep {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
        /// The output, secrets masked.
        output: Value,
    },
    /// Records a started attempt's error.
    FailStep {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
        /// What went wrong, secrets masked.
        error: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// Schedules a new attempt of a failed step, with the same input.
    RetryStep {
        /// The node.
        node_id: NodeId,
        /// The new attempt number, greater than every earlier one.
        attempt: u32,
    },
    /// Halts at a breakpoint.
    PauseAtBreakpoint {
        /// The breakpoint node.
        node_id: NodeId,
    },
    /// Continues after a breakpoint.
    Resume,
    /// Asks the engine to stop; idempotent.
    RequestStop,
    /// Ends the execution before its end.
    Cancel {
        /// Why, for people reading the history.
        reason: String,
    },
    /// Ends the execution successfully.
    Complete {
        /// The workflow's output, secrets masked.
        output: Value,
    },
    /// Ends the execution on an error.
    Fail {
        /// What went wrong, secrets masked.
        error: String,
    },
}

impl CommandTraits for ExecutionCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Start { .. })
    }

    fn is_retry_safe(&self) -> bool {
        // Stopping and cancelling mean the same thing whatever the engine
        // did meanwhile. Step commands must not be replayed blindly: a
        // conflict there means two workers drive one execution.
        matches!(self, Self::RequestStop | Self::Cancel { .. })
    }

    fn required_role(&self) -> Role {
        Role::Editor
    }
}

/// What happened to an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum ExecutionEvent {
    /// The execution started (emitted by [`ExecutionCommand::Start`]).
    ExecutionStarted {
        /// The owner.
        tenant: TenantId,
        /// The workflow being run.
        workflow_id: WorkflowId,
        /// The pinned workflow version.
        workflow_version: u64,
        /// The input.
        input: Value,
        /// `manual`, `cron` or `webhook`.
        trigger: String,
        /// The nodes to pause at.
        breakpoints: Vec<NodeId>,
    },
    /// An attempt of a step was scheduled (emitted by
    /// [`ExecutionCommand::ScheduleStep`]).
    StepScheduled {
        /// The node.
        node_id: NodeId,
        /// The attempt, from 1.
        attempt: u32,
        /// The resolved input, secrets masked.
        input: Value,
    },
    /// An attempt started (emitted by [`ExecutionCommand::StartStep`]).
    StepStarted {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// An attempt succeeded (emitted by [`ExecutionCommand::SucceedStep`]).
    StepSucceeded {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
        /// The output, secrets masked.
        output: Value,
    },
    /// An attempt failed (emitted by [`ExecutionCommand::FailStep`]).
    StepFailed {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
        /// What went wrong, secrets masked.
        error: String,
        /// Whether trying again may help.
        retryable: bool,
    },
    /// A new attempt of a failed step was scheduled, with the failed
    /// attempt's input (emitted by [`ExecutionCommand::RetryStep`]).
    StepRetried {
        /// The node.
        node_id: NodeId,
        /// The new attempt.
        attempt: u32,
    },
    /// Halted at a breakpoint (emitted by
    /// [`ExecutionCommand::PauseAtBreakpoint`]).
    ExecutionPaused {
        /// The breakpoint node.
        node_id: NodeId,
    },
    /// Continued after a breakpoint (emitted by [`ExecutionCommand::Resume`]).
    ExecutionResumed,
    /// A stop was requested (emitted by [`ExecutionCommand::RequestStop`]).
    ExecutionStopRequested,
    /// Ended early (emitted by [`ExecutionCommand::Cancel`]). Terminal.
    ExecutionCancelled {
        /// Why.
        reason: String,
    },
    /// Ended successfully (emitted by [`ExecutionCommand::Complete`]).
    /// Terminal.
    ExecutionCompleted {
        /// The workflow's output, secrets masked.
        output: Value,
    },
    /// Ended on an error (emitted by [`ExecutionCommand::Fail`]). Terminal.
    ExecutionFailed {
        /// What went wrong, secrets masked.
        error: String,
    },
}

impl DomainEvent for ExecutionEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ExecutionStarted { .. } => "ExecutionStarted",
            Self::StepScheduled { .. } => "StepScheduled",
            Self::StepStarted { .. } => "StepStarted",
            Self::StepSucceeded { .. } => "StepSucceeded",
            Self::StepFailed { .. } => "StepFailed",
            Self::StepRetried { .. } => "StepRetried",
            Self::ExecutionPaused { .. } => "ExecutionPaused",
            Self::ExecutionResumed => "ExecutionResumed",
            Self::ExecutionStopRequested => "ExecutionStopRequested",
            Self::ExecutionCancelled { .. } => "ExecutionCancelled",
            Self::ExecutionCompleted { .. } => "ExecutionCompleted",
            Self::ExecutionFailed { .. } => "ExecutionFailed",
        }
        .to_string()
    }

    fn event_version(&self) -> String {
        "1.0".to_string()
    }
}

/// Why an execution command was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionError {
    /// A command other than Start before the execution started.
    #[error("the execution does not exist")]
    NotFound,
    /// Start on an execution that already started.
    #[error("the execution has already started")]
    AlreadyStarted,
    /// The trigger is not `manual`, `cron` or `webhook`.
    #[error("`{trigger}` is not a trigger (manual, cron or webhook)")]
    InvalidTrigger {
        /// The trigger as given.
        trigger: String,
    },
    /// The workflow version is 0.
    #[error("workflow versions start at 1")]
    InvalidWorkflowVersion,
    /// A command after the execution ended.
    #[error("the execution has ended ({status})")]
    Terminated {
        /// How it ended.
        status: ExecutionStatus,
    },
    /// A command that needs a running execution while it is paused.
    #[error("the execution is paused")]
    Paused,
    /// Pause while already paused.
    #[error("the execution is already paused")]
    AlreadyPaused,
    /// Resume while not paused.
    #[error("the execution is not paused")]
    NotPaused,
    /// A command that would start new work after a stop was requested.
    #[error("the execution is stopping")]
    Stopping,
    /// Pause at a node that is not a breakpoint.
    #[error("`{node_id}` is not a breakpoint of this execution")]
    NotABreakpoint {
        /// The node.
        node_id: NodeId,
    },
    /// Attempt 0, or a retry whose attempt is not above every earlier one.
    #[error("attempt {attempt} of `{node_id}` is out of sequence")]
    InvalidAttempt {
        /// The node.
        node_id: NodeId,
        /// The attempt asked for.
        attempt: u32,
    },
    /// This attempt of the step was already scheduled.
    #[error("attempt {attempt} of `{node_id}` is already scheduled")]
    StepAlreadyScheduled {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// This attempt of the step was never scheduled.
    #[error("attempt {attempt} of `{node_id}` was never scheduled")]
    StepNotScheduled {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// This attempt of the step was already started.
    #[error("attempt {attempt} of `{node_id}` has already started")]
    StepAlreadyStarted {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// This attempt of the step is scheduled but not started.
    #[error("attempt {attempt} of `{node_id}` has not started")]
    StepNotStarted {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// This attempt of the step already succeeded or failed.
    #[error("attempt {attempt} of `{node_id}` has already finished")]
    StepAlreadyFinished {
        /// The node.
        node_id: NodeId,
        /// The attempt.
        attempt: u32,
    },
    /// Retry when the step's latest attempt has not failed.
    #[error("attempt {attempt} of `{node_id}`, the latest, has not failed")]
    StepNotFailed {
        /// The node.
        node_id: NodeId,
        /// The latest attempt.
        attempt: u32,
    },
}

impl Execution {
    /// Decides which events a command produces, without changing anything.
    fn decide(&self, command: ExecutionCommand) -> Result<Vec<ExecutionEvent>, ExecutionError> {
        use ExecutionCommand as C;
        use ExecutionError as E;
        use ExecutionEvent as V;
        use ExecutionStatus as S;

        if let C::Start {
            tenant,
            workflow_id,
            workflow_version,
            input,
            trigger,
            breakpoints,
        } = command
        {
            if self.status.is_some() {
                return Err(E::AlreadyStarted);
            }
            if !EXECUTION_TRIGGERS.contains(&trigger.as_str()) {
                return Err(E::InvalidTrigger { trigger });
            }
            if workflow_version == 0 {
                return Err(E::InvalidWorkflowVersion);
            }
            return Ok(vec![V::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                input,
                trigger,
                breakpoints,
            }]);
        }
        let status = self.status.ok_or(E::NotFound)?;
        if status.is_terminal() {
            // Asking a finished execution to stop is already satisfied.
            return match command {
                C::RequestStop => Ok(vec![]),
                _ => Err(E::Terminated { status }),
            };
        }
        // Refuses commands that would start new work unless running (or,
        // where `allow_paused`, paused).
        let must_be_active = |allow_paused: bool| match status {
            S::Stopping => Err(E::Stopping),
            S::Paused if !allow_paused => Err(E::Paused),
            _ => Ok(()),
        };
        let event = match command {
            C::Start { .. } => return Err(E::AlreadyStarted),
            C::ScheduleStep {
                node_id,
                attempt,
                input,
            } => {
                must_be_active(true)?;
                if attempt == 0 {
                    return Err(E::InvalidAttempt { node_id, attempt });
                }
                if self.step(node_id.as_str(), attempt).is_some() {
                    return Err(E::StepAlreadyScheduled { node_id, attempt });
                }
                V::StepScheduled {
                    node_id,
                    attempt,
                    input,
                }
            }
            C::StartStep { node_id, attempt } => {
                must_be_active(false)?;
                match self.step(node_id.as_str(), attempt) {
                    None => return Err(E::StepNotScheduled { node_id, attempt }),
                    Some(StepStatus::Scheduled) => V::StepStarted { node_id, attempt },
                    Some(_) => return Err(E::StepAlreadyStarted { node_id, attempt }),
                }
            }
            C::SucceedStep {
                node_id,
                attempt,
                output,
            } => {
                self.check_running_step(&node_id, attempt)?;
                V::StepSucceeded {
                    node_id,
                    attempt,
                    output,
                }
            }
            C::FailStep {
                node_id,
                attempt,
                error,
                retryable,
            } => {
                self.check_running_step(&node_id, attempt)?;
                V::StepFailed {
                    node_id,
                    attempt,
                    error,
                    retryable,
                }
            }
            C::RetryStep { node_id, attempt } => {
                must_be_active(true)?;
                match self.latest_attempt(node_id.as_str()) {
                    None => return Err(E::StepNotScheduled { node_id, attempt }),
                    Some((latest, status)) if !matches!(status, StepStatus::Failed { .. }) => {
                        return Err(E::StepNotFailed {
                            node_id,
                            attempt: latest,
                        })
                    }
                    Some((latest, _)) if attempt <= latest => {
                        return Err(E::InvalidAttempt { node_id, attempt })
                    }
                    Some(_) => V::StepRetried { node_id, attempt },
                }
            }
            C::PauseAtBreakpoint { node_id } => {
                match status {
                    S::Paused => return Err(E::AlreadyPaused),
                    S::Stopping => return Err(E::Stopping),
                    _ => {}
                }
                if !self.breakpoints.contains(&node_id) {
                    return Err(E::NotABreakpoint { node_id });
                }
                V::ExecutionPaused { node_id }
            }
            C::Resume if status == S::Paused => V::ExecutionResumed,
            C::Resume => return Err(E::NotPaused),
            C::RequestStop if status == S::Stopping => return Ok(vec![]),
            C::RequestStop => V::ExecutionStopRequested,
            C::Cancel { reason } => V::ExecutionCancelled { reason },
            C::Complete { output } => {
                if status == S::Paused {
                    return Err(E::Paused);
                }
                V::ExecutionCompleted { output }
            }
            C::Fail { error } => V::ExecutionFailed { error },
        };
        Ok(vec![event])
    }

    /// A step may succeed or fail only once it has started, and only once.
    /// In-flight steps may finish while paused or stopping.
    fn check_running_step(&self, node_id: &NodeId, attempt: u32) -> Result<(), ExecutionError> {
        let node_id = node_id.clone();
        match self.step(node_id.as_str(), attempt) {
            None => Err(ExecutionError::StepNotScheduled { node_id, attempt }),
            Some(StepStatus::Scheduled) => Err(ExecutionError::StepNotStarted { node_id, attempt }),
            Some(StepStatus::Running) => Ok(()),
            Some(StepStatus::Succeeded | StepStatus::Failed { .. }) => {
                Err(ExecutionError::StepAlreadyFinished { node_id, attempt })
            }
        }
    }

    fn set_step(&mut self, node_id: NodeId, attempt: u32, status: StepStatus) {
        self.steps
            .entry(node_id)
            .or_default()
            .insert(attempt, status);
    }
}

crate::common::aggregate!(
    Execution,
    "execution",
    ExecutionCommand,
    ExecutionEvent,
    ExecutionError
);

impl Execution {
    /// Applies one recorded event to the state (cqrs-es's `apply`).
    fn evolve(&mut self, event: ExecutionEvent) {
        match event {
            ExecutionEvent::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                breakpoints,
                ..
            } => {
                self.tenant = Some(tenant);
                self.workflow_id = Some(workflow_id);
                self.workflow_version = workflow_version;
                self.breakpoints = breakpoints.into_iter().collect();
                self.status = Some(ExecutionStatus::Running);
            }
            ExecutionEvent::StepScheduled {
                node_id, attempt, ..
            }
            | ExecutionEvent::StepRetried { node_id, attempt } => {
                self.set_step(node_id, attempt, StepStatus::Scheduled)
            }
            ExecutionEvent::StepStarted { node_id, attempt } => {
                self.set_step(node_id, attempt, StepStatus::Running)
            }
            ExecutionEvent::StepSucceeded {
                node_id, attempt, ..
            } => self.set_step(node_id, attempt, StepStatus::Succeeded),
            ExecutionEvent::StepFailed {
                node_id,
                attempt,
                retryable,
                ..
            } => self.set_step(node_id, attempt, StepStatus::Failed { retryable }),
            ExecutionEvent::ExecutionPaused { node_id } => {
                self.status = Some(ExecutionStatus::Paused);
                self.paused_at = Some(node_id);
            }
            ExecutionEvent::ExecutionResumed => {
                self.status = Some(ExecutionStatus::Running);
                self.paused_at = None;
            }
            ExecutionEvent::ExecutionStopRequested => {
                self.status = Some(ExecutionStatus::Stopping);
                self.paused_at = None;
            }
            ExecutionEvent::ExecutionCancelled { .. } => {
                self.status = Some(ExecutionStatus::Cancelled);
                self.paused_at = None;
            }
            ExecutionEvent::ExecutionCompleted { .. } => {
                self.status = Some(ExecutionStatus::Completed)
            }
            ExecutionEvent::ExecutionFailed { .. } => {
                self.status = Some(ExecutionStatus::Failed);
                self.paused_at = None;
            }
        }
    }
}

impl AggregateRoot for Execution {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

#[cfg(test)]
mod tests;
