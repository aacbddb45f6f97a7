//! The `condition` node's expression language: CEL. The language lives in
//! the domain (`toolhub_domain::definition::condition`), so that validating
//! a definition and evaluating its conditions use one parser; this module
//! only says how a condition's error fails a step.

pub use toolhub_domain::definition::condition::*;

use crate::failure::StepFailure;

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
