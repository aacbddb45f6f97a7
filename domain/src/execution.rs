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
//! The event store records when each event was appended, and that is the
//! step's clock. The times that matter for what happens next — when a
//! waiting step wakes, when a retry may start, when the whole run times out —
//! are in the events themselves, decided by the engine, so that a restart
//! resumes from the log alone. Inputs and outputs arrive with secret values
//! already masked by the engine.
//!
//! What a caller sends (the input, a cancellation's reason) is checked with
//! [`crate::text`]. What the engine reports from the outside world (step
//! inputs, outputs and errors) is recorded as received, whatever characters
//! it holds: refusing it would lose the fact, and the read side stores any
//! text escaped where its database cannot hold it.
//!
//! A fork is a new execution of the same pinned version that records,
//! right after its start, the execution it was forked from
//! ([`ExecutionCommand::RecordFork`]) and then copies steps of the original
//! ([`ExecutionCommand::CopyStep`]) before any step of its own: a copied
//! step counts as succeeded (or skipped), so the planner and the engine
//! treat it as done and the run goes on live from there.
//!
//! The state keeps what the engine needs to decide the next move (every
//! step's status, the outputs so far, the input, the breakpoints) — the same
//! state a debugger shows at any point of the history. [`plan`] reads it
//! against the workflow's definition.

use crate::common::{AggregateRoot, CommandTraits, ExecutionId, Role, TenantId, WorkflowId};
use crate::definition::NodeId;
use chrono::{DateTime, Utc};
use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

pub mod plan;

pub use plan::{branch_taken, final_output, is_idempotent, plan, NodeState, Plan};

/// The triggers an execution may be started by.
pub const EXECUTION_TRIGGERS: [&str; 4] = ["manual", "cron", "webhook", "mcp"];

/// The most commands one [`ExecutionCommand::Batch`] may hold.
pub const MAX_BATCH: usize = 1_000;

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

/// One attempt of one step, as the state keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepState {
    /// Where the attempt is.
    pub status: StepStatus,
    /// For a retry: the attempt may not start before then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_before: Option<DateTime<Utc>>,
    /// For a waiting step (a delay): when it is due to finish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wake_at: Option<DateTime<Utc>>,
    /// Why it failed, once failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StepState {
    fn new(status: StepStatus) -> Self {
        Self {
            status,
            not_before: None,
            wake_at: None,
            error: None,
        }
    }
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
    /// What the run was started with: templates read it as `{{input…}}`.
    #[serde(default)]
    input: Value,
    /// What started it.
    #[serde(default)]
    trigger: String,
    /// When the whole run times out, if ever.
    #[serde(default)]
    deadline: Option<DateTime<Utc>>,
    /// The nodes to pause before.
    breakpoints: BTreeSet<NodeId>,
    /// Breakpoints already paused at and resumed past: resuming moves past a
    /// breakpoint, it does not land on it again.
    #[serde(default)]
    passed: BTreeSet<NodeId>,
    /// The breakpoint the execution is paused at, while paused.
    paused_at: Option<NodeId>,
    /// While stepping (resumed with `step`): whether a step finished since,
    /// after which the run pauses again before the next ready node.
    #[serde(default)]
    stepping: Option<bool>,
    /// Every attempt of every step.
    steps: BTreeMap<NodeId, BTreeMap<u32, StepState>>,
    /// The output of each node's succeeded attempt, secrets masked: what
    /// later templates read as `{{nodes.ID…}}`.
    #[serde(default)]
    outputs: BTreeMap<NodeId, Value>,
    /// Nodes on a branch not taken, recorded as skipped.
    #[serde(default)]
    skipped: BTreeSet<NodeId>,
    /// For a fork: the execution it was forked from, and the node it runs
    /// live from.
    #[serde(default)]
    forked_from: Option<(ExecutionId, NodeId)>,
    /// For a fork: true until its first step of its own (scheduled, retried
    /// or skipped); steps are copied only while it is.
    #[serde(default)]
    copying: bool,
    /// The nodes whose step was copied from the original.
    #[serde(default)]
    copied: BTreeSet<NodeId>,
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

    /// The input the run was started with.
    pub fn input(&self) -> &Value {
        &self.input
    }

    /// What started the run.
    pub fn trigger(&self) -> &str {
        &self.trigger
    }

    /// When the whole run times out, if ever.
    pub fn deadline(&self) -> Option<DateTime<Utc>> {
        self.deadline
    }

    /// The nodes to pause before.
    pub fn breakpoints(&self) -> &BTreeSet<NodeId> {
        &self.breakpoints
    }

    /// Whether the run pauses before `node` when it becomes ready: a
    /// breakpoint not yet paused at, or any node once a step finished while
    /// stepping.
    pub fn pauses_before(&self, node: &str) -> bool {
        (self.breakpoints.contains(node) && !self.passed.contains(node))
            || self.stepping == Some(true)
    }

    /// Whether the run was resumed with `step` and no step finished since:
    /// the ready nodes run, breakpoints or not.
    pub fn is_stepping_into(&self) -> bool {
        self.stepping == Some(false)
    }

    /// The breakpoint the execution is paused at, while paused.
    pub fn paused_at(&self) -> Option<&NodeId> {
        self.paused_at.as_ref()
    }

    /// The status of one attempt of one step.
    pub fn step(&self, node_id: &str, attempt: u32) -> Option<StepStatus> {
        Some(self.steps.get(node_id)?.get(&attempt)?.status)
    }

    /// The latest attempt of a step and its status.
    pub fn latest_attempt(&self, node_id: &str) -> Option<(u32, StepStatus)> {
        let (attempt, step) = self.steps.get(node_id)?.last_key_value()?;
        Some((*attempt, step.status))
    }

    /// The latest attempt of a step, with when it may start or wakes.
    pub fn latest_step(&self, node_id: &str) -> Option<(u32, &StepState)> {
        let (attempt, step) = self.steps.get(node_id)?.last_key_value()?;
        Some((*attempt, step))
    }

    /// The nodes that have at least one attempt, in id order.
    pub fn step_ids(&self) -> impl Iterator<Item = &NodeId> {
        self.steps.keys()
    }

    /// The output of a node's succeeded attempt.
    pub fn output(&self, node_id: &str) -> Option<&Value> {
        self.outputs.get(node_id)
    }

    /// Every succeeded node's output.
    pub fn outputs(&self) -> &BTreeMap<NodeId, Value> {
        &self.outputs
    }

    /// Whether the node was skipped (a branch not taken).
    pub fn is_skipped(&self, node_id: &str) -> bool {
        self.skipped.contains(node_id)
    }

    /// The nodes skipped so far.
    pub fn skipped(&self) -> &BTreeSet<NodeId> {
        &self.skipped
    }

    /// For a fork: the execution it was forked from and the node it runs
    /// live from.
    pub fn forked_from(&self) -> Option<(&ExecutionId, &NodeId)> {
        self.forked_from.as_ref().map(|(id, node)| (id, node))
    }

    /// Whether the node's step was copied from the original (a fork).
    pub fn is_copied(&self, node_id: &str) -> bool {
        self.copied.contains(node_id)
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
        /// What started it: `manual`, `cron`, `webhook` or `mcp`.
        trigger: String,
        /// Which one of its kind started it, when there are several: the
        /// webhook's id for `webhook`, the tool's name for `mcp`.
        source: Option<String>,
        /// The nodes to pause at, for debugging.
        breakpoints: Vec<NodeId>,
        /// When the whole run times out, if ever.
        deadline: Option<DateTime<Utc>>,
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
        /// For a step that waits (a delay): when it is due to finish.
        wake_at: Option<DateTime<Utc>>,
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
        /// The attempt may not start before then (the retry's backoff).
        not_before: Option<DateTime<Utc>>,
    },
    /// Records that a node will not run: every way into it is a branch not
    /// taken.
    SkipStep {
        /// The node.
        node_id: NodeId,
    },
    /// Records that the execution is a fork of another: right after its
    /// start, before any step.
    RecordFork {
        /// The execution it was forked from.
        forked_from: ExecutionId,
        /// The node it runs live from.
        from_node: NodeId,
    },
    /// Copies a step of the original into a fork, before any step of the
    /// fork's own: it counts as succeeded with `output`, or as skipped.
    CopyStep {
        /// The node.
        node_id: NodeId,
        /// The original's succeeded attempt (0 for a skipped node).
        attempt: u32,
        /// The original's recorded input (secrets masked).
        input: Value,
        /// The output, the original's or its override; `Value::Null` for a
        /// skipped node.
        output: Value,
        /// The node was skipped in the original.
        skipped: bool,
        /// The sequence of the original's event copied (its success or its
        /// skip).
        original_sequence: u64,
        /// That event's position in the log.
        original_position: String,
    },
    /// Replaces the breakpoints.
    SetBreakpoints {
        /// The nodes to pause before.
        breakpoints: Vec<NodeId>,
    },
    /// Halts at a breakpoint.
    PauseAtBreakpoint {
        /// The breakpoint node.
        node_id: NodeId,
    },
    /// Continues after a breakpoint; with `step`, runs the nodes that are
    /// ready and pauses again before the next ones.
    Resume {
        /// Step over instead of continuing.
        step: bool,
    },
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
    /// Several commands decided in order, each against the state the
    /// previous ones leave, and appended together or not at all: how the
    /// engine records a whole move (steps scheduled and started, results,
    /// skips, the end) in one write.
    Batch(Vec<ExecutionCommand>),
}

impl CommandTraits for ExecutionCommand {
    fn is_creation(&self) -> bool {
        match self {
            Self::Start { .. } => true,
            // A start with the run's first move.
            Self::Batch(commands) => matches!(commands.first(), Some(Self::Start { .. })),
            _ => false,
        }
    }

    fn is_retry_safe(&self) -> bool {
        // Stopping and cancelling mean the same thing whatever the engine
        // did meanwhile. Step commands must not be replayed blindly: a
        // conflict there means two workers drive one execution.
        matches!(
            self,
            Self::RequestStop | Self::Cancel { .. } | Self::SetBreakpoints { .. }
        )
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
        /// `manual`, `cron`, `webhook` or `mcp`.
        trigger: String,
        /// Which one of its kind started it: the webhook's id for
        /// `webhook`, the tool's name for `mcp`; absent otherwise, and in
        /// events recorded before it existed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        source: Option<String>,
        /// The nodes to pause at.
        breakpoints: Vec<NodeId>,
        /// When the whole run times out; absent in events recorded before
        /// runs had one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline: Option<DateTime<Utc>>,
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
        /// For a waiting step: when it is due to finish.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wake_at: Option<DateTime<Utc>>,
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
        /// The attempt may not start before then.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        not_before: Option<DateTime<Utc>>,
    },
    /// A node will not run: every way into it is a branch not taken
    /// (emitted by [`ExecutionCommand::SkipStep`]).
    StepSkipped {
        /// The node.
        node_id: NodeId,
    },
    /// The execution is a fork of another (emitted by
    /// [`ExecutionCommand::RecordFork`]).
    ExecutionForked {
        /// The execution it was forked from.
        forked_from: ExecutionId,
        /// The node it runs live from.
        from_node: NodeId,
    },
    /// A step of the original was copied into this fork (emitted by
    /// [`ExecutionCommand::CopyStep`]).
    StepCopied {
        /// The node.
        node_id: NodeId,
        /// The original's succeeded attempt (0 for a skipped node).
        attempt: u32,
        /// The original's recorded input (secrets masked).
        input: Value,
        /// The output the fork goes on with; null for a skipped node.
        output: Value,
        /// The node was skipped in the original.
        skipped: bool,
        /// The sequence of the original's event copied.
        original_sequence: u64,
        /// That event's position in the log.
        original_position: String,
    },
    /// The breakpoints were replaced (emitted by
    /// [`ExecutionCommand::SetBreakpoints`]).
    BreakpointsSet {
        /// The nodes to pause before.
        breakpoints: Vec<NodeId>,
    },
    /// Halted at a breakpoint (emitted by
    /// [`ExecutionCommand::PauseAtBreakpoint`]).
    ExecutionPaused {
        /// The breakpoint node.
        node_id: NodeId,
    },
    /// Continued after a breakpoint (emitted by [`ExecutionCommand::Resume`]).
    ExecutionResumed {
        /// Stepping over: pause again once the ready nodes ran. Absent in
        /// events recorded before stepping existed.
        #[serde(default)]
        step: bool,
    },
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
            Self::StepSkipped { .. } => "StepSkipped",
            Self::ExecutionForked { .. } => "ExecutionForked",
            Self::StepCopied { .. } => "StepCopied",
            Self::BreakpointsSet { .. } => "BreakpointsSet",
            Self::ExecutionPaused { .. } => "ExecutionPaused",
            Self::ExecutionResumed { .. } => "ExecutionResumed",
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
    /// The trigger is not `manual`, `cron`, `webhook` or `mcp`.
    #[error("`{trigger}` is not a trigger (manual, cron, webhook or mcp)")]
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
    /// Skip a node that has run (or is running) or was skipped already.
    #[error("`{node_id}` cannot be skipped: it has run or was skipped already")]
    CannotSkip {
        /// The node.
        node_id: NodeId,
    },
    /// A fork recorded twice, or after a step.
    #[error("a fork is recorded once, right after the start, before any step")]
    ForkNotFirst,
    /// A step copied into an execution that is not a fork, or after a step
    /// of the fork's own.
    #[error("steps are copied into a fork only, before any step of its own")]
    NotCopying,
    /// A batch that is empty, too long, or holds a start or another batch.
    #[error(
        "a batch holds 1 to {MAX_BATCH} commands, none of them a batch, and a start only first"
    )]
    InvalidBatch,
    /// A text field of a caller's input (the execution's input, a
    /// cancellation's reason) holds a character no text may hold (see
    /// [`crate::text`]); the error names the field.
    #[error(transparent)]
    InvalidText(#[from] crate::text::InvalidText),
}

impl Execution {
    /// Decides which events a command produces, without changing anything.
    pub fn decide(&self, command: ExecutionCommand) -> Result<Vec<ExecutionEvent>, ExecutionError> {
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
            source,
            breakpoints,
            deadline,
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
            crate::text::check_json("input", &input)?;
            if let Some(source) = &source {
                crate::text::check_name("source", source)?;
            }
            return Ok(vec![V::ExecutionStarted {
                tenant,
                workflow_id,
                workflow_version,
                input,
                trigger,
                source,
                breakpoints,
                deadline,
            }]);
        }
        if let C::Batch(commands) = command {
            return self.decide_batch(commands);
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
            C::StartStep {
                node_id,
                attempt,
                wake_at,
            } => {
                must_be_active(false)?;
                match self.step(node_id.as_str(), attempt) {
                    None => return Err(E::StepNotScheduled { node_id, attempt }),
                    Some(StepStatus::Scheduled) => V::StepStarted {
                        node_id,
                        attempt,
                        wake_at,
                    },
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
            C::RetryStep {
                node_id,
                attempt,
                not_before,
            } => {
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
                    Some(_) => V::StepRetried {
                        node_id,
                        attempt,
                        not_before,
                    },
                }
            }
            C::SkipStep { node_id } => {
                must_be_active(true)?;
                if self.steps.contains_key(&node_id) || self.skipped.contains(&node_id) {
                    return Err(E::CannotSkip { node_id });
                }
                V::StepSkipped { node_id }
            }
            C::RecordFork {
                forked_from,
                from_node,
            } => {
                must_be_active(false)?;
                if self.forked_from.is_some() || !self.steps.is_empty() || !self.skipped.is_empty()
                {
                    return Err(E::ForkNotFirst);
                }
                V::ExecutionForked {
                    forked_from,
                    from_node,
                }
            }
            C::CopyStep {
                node_id,
                attempt,
                input,
                output,
                skipped,
                original_sequence,
                original_position,
            } => {
                must_be_active(false)?;
                if !self.copying {
                    return Err(E::NotCopying);
                }
                if self.steps.contains_key(&node_id) || self.skipped.contains(&node_id) {
                    return Err(E::StepAlreadyScheduled { node_id, attempt });
                }
                if (attempt == 0) != skipped {
                    return Err(E::InvalidAttempt { node_id, attempt });
                }
                V::StepCopied {
                    node_id,
                    attempt,
                    input,
                    output,
                    skipped,
                    original_sequence,
                    original_position,
                }
            }
            C::SetBreakpoints { breakpoints } => V::BreakpointsSet { breakpoints },
            C::PauseAtBreakpoint { node_id } => {
                match status {
                    S::Paused => return Err(E::AlreadyPaused),
                    S::Stopping => return Err(E::Stopping),
                    _ => {}
                }
                if !self.pauses_before(node_id.as_str()) {
                    return Err(E::NotABreakpoint { node_id });
                }
                V::ExecutionPaused { node_id }
            }
            C::Resume { step } if status == S::Paused => V::ExecutionResumed { step },
            C::Resume { .. } => return Err(E::NotPaused),
            C::RequestStop if status == S::Stopping => return Ok(vec![]),
            C::RequestStop => V::ExecutionStopRequested,
            C::Cancel { reason } => {
                crate::text::check_free_text("reason", &reason)?;
                V::ExecutionCancelled { reason }
            }
            C::Complete { output } => {
                if status == S::Paused {
                    return Err(E::Paused);
                }
                V::ExecutionCompleted { output }
            }
            C::Fail { error } => V::ExecutionFailed { error },
            C::Batch(_) => return Err(E::InvalidBatch),
        };
        Ok(vec![event])
    }

    /// Decides a batch: each command against the state the previous ones
    /// leave, all or nothing. A start may only come first: the start of a
    /// run with its first move, in one commit.
    fn decide_batch(
        &self,
        commands: Vec<ExecutionCommand>,
    ) -> Result<Vec<ExecutionEvent>, ExecutionError> {
        if commands.is_empty()
            || commands.len() > MAX_BATCH
            || commands.iter().enumerate().any(|(i, c)| match c {
                ExecutionCommand::Start { .. } => i > 0,
                ExecutionCommand::Batch(_) => true,
                _ => false,
            })
        {
            return Err(ExecutionError::InvalidBatch);
        }
        let mut scratch = self.clone();
        let mut events = Vec::new();
        for command in commands {
            for event in scratch.decide(command)? {
                scratch.evolve(event.clone());
                events.push(event);
            }
        }
        Ok(events)
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

    fn set_step(&mut self, node_id: NodeId, attempt: u32, status: StepStatus) -> &mut StepState {
        self.steps
            .entry(node_id)
            .or_default()
            .entry(attempt)
            .and_modify(|step| step.status = status)
            .or_insert_with(|| StepState::new(status))
    }

    /// A step finished: while stepping, the next ready node pauses.
    fn step_finished(&mut self) {
        if self.stepping.is_some() {
            self.stepping = Some(true);
        }
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
                input,
                trigger,
                breakpoints,
                deadline,
                ..
            } => {
                self.tenant = Some(tenant);
                self.workflow_id = Some(workflow_id);
                self.workflow_version = workflow_version;
                self.input = input;
                self.trigger = trigger;
                self.deadline = deadline;
                self.breakpoints = breakpoints.into_iter().collect();
                self.status = Some(ExecutionStatus::Running);
            }
            ExecutionEvent::StepScheduled {
                node_id, attempt, ..
            } => {
                self.copying = false;
                self.set_step(node_id, attempt, StepStatus::Scheduled);
            }
            ExecutionEvent::StepRetried {
                node_id,
                attempt,
                not_before,
            } => {
                self.copying = false;
                self.set_step(node_id, attempt, StepStatus::Scheduled)
                    .not_before = not_before;
            }
            ExecutionEvent::ExecutionForked {
                forked_from,
                from_node,
            } => {
                self.forked_from = Some((forked_from, from_node));
                self.copying = true;
            }
            ExecutionEvent::StepCopied {
                node_id,
                attempt,
                output,
                skipped,
                ..
            } => {
                self.copied.insert(node_id.clone());
                if skipped {
                    self.skipped.insert(node_id);
                } else {
                    self.set_step(node_id.clone(), attempt, StepStatus::Succeeded);
                    self.outputs.insert(node_id, output);
                }
            }
            ExecutionEvent::StepStarted {
                node_id,
                attempt,
                wake_at,
            } => {
                self.set_step(node_id, attempt, StepStatus::Running).wake_at = wake_at;
            }
            ExecutionEvent::StepSucceeded {
                node_id,
                attempt,
                output,
            } => {
                self.set_step(node_id.clone(), attempt, StepStatus::Succeeded);
                self.outputs.insert(node_id, output);
                self.step_finished();
            }
            ExecutionEvent::StepFailed {
                node_id,
                attempt,
                retryable,
                error,
            } => {
                self.set_step(node_id.clone(), attempt, StepStatus::Failed { retryable });
                if let Some(step) = self.step_mut(&node_id, attempt) {
                    step.error = Some(error);
                }
                self.step_finished();
            }
            ExecutionEvent::StepSkipped { node_id } => {
                self.copying = false;
                self.skipped.insert(node_id);
            }
            ExecutionEvent::BreakpointsSet { breakpoints } => {
                self.breakpoints = breakpoints.into_iter().collect();
            }
            ExecutionEvent::ExecutionPaused { node_id } => {
                self.status = Some(ExecutionStatus::Paused);
                self.paused_at = Some(node_id);
                self.stepping = None;
            }
            ExecutionEvent::ExecutionResumed { step } => {
                self.status = Some(ExecutionStatus::Running);
                if let Some(node) = self.paused_at.take() {
                    self.passed.insert(node);
                }
                self.stepping = step.then_some(false);
            }
            ExecutionEvent::ExecutionStopRequested => {
                self.status = Some(ExecutionStatus::Stopping);
                self.paused_at = None;
                self.stepping = None;
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

    fn step_mut(&mut self, node_id: &NodeId, attempt: u32) -> Option<&mut StepState> {
        self.steps.get_mut(node_id)?.get_mut(&attempt)
    }
}

impl AggregateRoot for Execution {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

#[cfg(test)]
mod tests;
