//! How a node executor says that a step failed, and whether trying again
//! could help.
//!
//! Every executor (`http`, `mcp_tool`, `condition`, `transform`, `delay`)
//! reports its failures as a [`StepFailure`], so that the retry logic reads
//! one flag instead of knowing every executor's error types. A failure's
//! message is recorded in the execution's events after masking; it must
//! never carry request headers or any other credential the executor handled.

use std::fmt;

/// Why a step failed, in words a person can act on, and whether running the
/// step again may succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct StepFailure {
    /// What went wrong. It is masked before it is recorded, but executors
    /// still keep credentials (request headers, secret values) out of it.
    pub message: String,
    /// True when the same step may succeed if it runs again unchanged (a
    /// refused connection, a timeout, a 503), false when it will fail the
    /// same way (a 404, a refused address, a malformed URL), so that retries
    /// are spent only where they can help.
    pub retryable: bool,
}

impl StepFailure {
    /// A failure that may go away on its own: the retry policy may try the
    /// step again.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: true,
        }
    }

    /// A failure that will repeat if the step runs again unchanged.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl fmt::Display for StepFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_constructors_set_the_retry_flag() {
        assert!(StepFailure::retryable("timed out").retryable);
        assert!(!StepFailure::permanent("not found").retryable);
    }

    #[test]
    fn a_failure_displays_as_its_message() {
        assert_eq!(StepFailure::permanent("HTTP 404").to_string(), "HTTP 404");
    }
}
