//! The `condition` node's expression language: CEL. The language lives in
//! the domain (`toolhub_domain::definition::condition`), so that validating
//! a definition and evaluating its conditions use one parser; this module
//! only says how a condition's error fails a step, and lets the evaluator
//! be swapped ([`Conditions`]) so that replay can be run against a changed
//! engine.

pub use toolhub_domain::definition::condition::*;

use std::collections::BTreeMap;

use serde_json::Value;
use toolhub_domain::definition::NodeId;

use crate::failure::StepFailure;

/// Evaluates a `condition` node's expression against the execution's input
/// and the outputs so far. The engine runs with [`Cel`]; replay takes any
/// implementation, so that a test can stand in a changed evaluator and see
/// the divergence it causes.
pub trait Conditions: Send + Sync {
    /// The condition's result, or why it has none.
    fn evaluate(
        &self,
        expression: &str,
        input: &Value,
        nodes: &BTreeMap<NodeId, Value>,
    ) -> Result<bool, ConditionError>;
}

/// The engine's evaluator: CEL, as the domain defines it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Cel;

impl Conditions for Cel {
    fn evaluate(
        &self,
        expression: &str,
        input: &Value,
        nodes: &BTreeMap<NodeId, Value>,
    ) -> Result<bool, ConditionError> {
        evaluate_condition(expression, input, nodes)
    }
}

/// A condition that cannot be evaluated fails its step, and evaluating it
/// again on the same data would fail the same way.
impl From<ConditionError> for StepFailure {
    fn from(error: ConditionError) -> Self {
        StepFailure::permanent(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_failure_is_a_permanent_step_failure() {
        let failure = StepFailure::from(ConditionError::NotBoolean { found: "int" });
        assert!(!failure.retryable);
        assert_eq!(
            failure.message,
            "the condition's result is of type int, not bool"
        );
    }
}
