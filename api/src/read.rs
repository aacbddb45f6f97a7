//! The read side as the API uses it: every name taken from
//! `toolhub-projections`, in one place.

pub use toolhub_projections::as_of::{self, AsOf as Moment, Folded};
pub use toolhub_projections::views::{
    AuditEntryView, AuditFilter, Cursor, Documents, ExecutionFilter, ExecutionStepView,
    ExecutionView, McpServerView, McpToolView, Page, PageRequest, SecretView, WebhookView,
    WorkflowFilter, WorkflowVersionView, WorkflowView, MAX_PAGE,
};
pub use toolhub_projections::{
    ProjectorLag, ProjectorRunner, ReadError, ReadModels, RunnerHandle, RunnerOptions, WaitError,
};
