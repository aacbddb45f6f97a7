//! The read models: one [`Projection`] per group of tables, each folding a
//! batch of events into its rows with a handful of multi-row statements.
//! One module per read model (its tables' rows and its fold); [`fold`]
//! holds what they share.
//!
//! Every entity row records `seq`, the sequence of the last event applied to
//! it, and an event at or below it is skipped: applying a batch twice changes
//! nothing. Child rows (versions, steps, tools) are written only for events
//! that were not skipped, and the audit log is keyed by global position.

use async_trait::async_trait;
use toolhub_eventstore::sql::Conn;
use toolhub_eventstore::{RecordedEvent, StoreError};

mod audit;
mod executions;
pub(crate) mod fold;
mod mcp_servers;
mod secrets;
mod workflows;

pub use audit::AuditProjection;
pub(crate) use audit::AuditRow;
pub use executions::ExecutionsProjection;
pub use executions::{fold_execution, ExecutionStepView, ExecutionView};
pub use mcp_servers::McpServersProjection;
pub use mcp_servers::{McpServerView, McpToolView};
pub use secrets::SecretView;
pub use secrets::SecretsProjection;
pub use workflows::WorkflowsProjection;
pub use workflows::{WebhookView, WorkflowVersionView, WorkflowView};

/// The table names a projection writes to: the live tables, the shadow
/// tables of a rebuild, or the scratch tables of a verification.
#[derive(Debug, Clone, Default)]
pub struct Tables {
    /// Put before every table name: a schema and a dot for the scratch
    /// tables, which live in a connection's temporary schema; empty
    /// otherwise.
    prefix: String,
    /// Appended to every table name: empty for the live tables.
    suffix: String,
    /// Whether the tables have been given every event before the batch at
    /// hand once, and none after it (see [`Tables::replay`]).
    replay: bool,
}

/// The suffix of a rebuild's shadow tables.
pub const SHADOW_SUFFIX: &str = "__rebuild";

/// The suffix of a verification's scratch tables (see `crate::shadow`).
pub const SCRATCH_SUFFIX: &str = "__verify";

impl Tables {
    /// The live tables.
    pub fn live() -> Self {
        Self::default()
    }

    /// The shadow tables of a rebuild.
    pub fn shadow() -> Self {
        Self {
            prefix: String::new(),
            suffix: SHADOW_SUFFIX.to_string(),
            replay: false,
        }
    }

    /// The scratch tables of a verification: temporary tables of one
    /// connection, in `schema` (`pg_temp` on PostgreSQL, `temp` on
    /// SQLite), named apart from the live tables so that no statement can
    /// mistake one for the other, and filled as a replay fills its tables.
    pub fn scratch(schema: &str) -> Self {
        Self {
            prefix: format!("{schema}."),
            suffix: SCRATCH_SUFFIX.to_string(),
            replay: true,
        }
    }

    /// The shadow tables as a rebuild fills them: created empty, then given
    /// every event of the log exactly once, in order. No row keyed by an
    /// event (an audit entry) can exist before its event is applied, so
    /// such rows are loaded with `COPY` on PostgreSQL, without the
    /// `ON CONFLICT` that makes re-applying a batch harmless elsewhere.
    pub fn replay() -> Self {
        Self {
            replay: true,
            ..Self::shadow()
        }
    }

    /// Whether these are [`Tables::replay`].
    pub fn is_replay(&self) -> bool {
        self.replay
    }

    /// The name to use for the table `base`.
    pub fn name(&self, base: &str) -> String {
        format!("{}{base}{}", self.prefix, self.suffix)
    }
}

/// A read model: a group of tables kept up to date from the log.
#[async_trait]
pub trait Projection: Send + Sync {
    /// The projection's stable name (its checkpoint's key).
    fn name(&self) -> &'static str;

    /// The tables it owns, which a rebuild shadows and swaps.
    fn tables(&self) -> &'static [&'static str];

    /// Applies a batch of events, in log order, inside the caller's
    /// transaction. Must be idempotent.
    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError>;
}

/// The names of every projection, as [`all`] returns them. Read-your-writes
/// and lag consult these checkpoints on every poll, without building the
/// projections.
pub const NAMES: [&str; 5] = ["workflows", "executions", "secrets", "mcp_servers", "audit"];

/// Every projection, in the order they are run.
pub fn all() -> Vec<std::sync::Arc<dyn Projection>> {
    vec![
        std::sync::Arc::new(WorkflowsProjection),
        std::sync::Arc::new(ExecutionsProjection),
        std::sync::Arc::new(SecretsProjection),
        std::sync::Arc::new(McpServersProjection),
        std::sync::Arc::new(AuditProjection),
    ]
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_names_are_those_of_every_projection_in_order() {
        let names: Vec<&str> = super::all().iter().map(|p| p.name()).collect();
        assert_eq!(names, super::NAMES);
    }
}
