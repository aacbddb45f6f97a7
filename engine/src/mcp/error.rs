//! Why an MCP operation failed, and whether trying again may help.
//!
//! Every message is composed here from facts (a status, a duration, a
//! redacted detail) and never contains an environment value, a header value
//! or the server's URL.

use super::output::ToolOutput;
use std::time::Duration;

/// Why connecting to an MCP server or one of its operations failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum McpCallError {
    /// The configuration cannot be used as it is (an unsubstituted secret, a
    /// header the transport reserves, a value that is not a valid header).
    #[error("the MCP server configuration is unusable: {reason}")]
    InvalidConfig {
        /// What is wrong, naming fields but not their values.
        reason: String,
    },
    /// The stdio command does not exist.
    #[error("the MCP server command `{command}` was not found; check the command and the PATH")]
    CommandNotFound {
        /// The program that was looked for.
        command: String,
    },
    /// The stdio command exists but could not be started.
    #[error("the MCP server command `{command}` could not be started: {reason}")]
    SpawnFailed {
        /// The program that failed to start.
        command: String,
        /// The operating system's reason, such as a permission error.
        reason: String,
    },
    /// The server went away before answering `initialize`: a stdio process
    /// that exited or closed its output.
    #[error("the MCP server stopped before completing initialization{}", detail_suffix(.detail))]
    ExitedDuringInitialize {
        /// The last lines of its stderr, redacted, when there were any.
        detail: Option<String>,
    },
    /// The server did not complete `initialize` in time: it may be slow to
    /// start, stuck, or writing something other than JSON-RPC on stdout.
    #[error("the MCP server did not complete initialization within {}{}", seconds(*.timeout), detail_suffix(.detail))]
    InitializeTimeout {
        /// The bound that was reached.
        timeout: Duration,
        /// The last lines of its stderr, redacted, when there were any.
        detail: Option<String>,
    },
    /// The server answered `initialize` with a refusal or something that is
    /// not an MCP answer, or refused the credentials.
    #[error("the MCP server refused initialization: {detail}")]
    InitializeFailed {
        /// What it answered, redacted.
        detail: String,
    },
    /// A Streamable HTTP server could not be reached or answered with a status
    /// that says "later" (429, 5xx).
    #[error("the MCP server could not be reached: {detail}")]
    Unreachable {
        /// What went wrong, redacted.
        detail: String,
    },
    /// Every connection under the pool's cap is in use; none could be closed
    /// without cutting off a caller.
    #[error("all {cap} MCP connections are in use; try again when one is free")]
    PoolExhausted {
        /// The cap that was reached.
        cap: usize,
    },
    /// The connection ended while a request was in flight; the server may or
    /// may not have acted on it.
    #[error("the connection to the MCP server was lost: {detail}")]
    ConnectionLost {
        /// What ended the connection, redacted.
        detail: String,
    },
    /// The server did not answer in time; the request was cancelled on the wire.
    #[error("the MCP server did not answer within {}", seconds(*.timeout))]
    Timeout {
        /// The bound that was reached.
        timeout: Duration,
    },
    /// The caller cancelled the call; the request was cancelled on the wire.
    #[error("the call was cancelled")]
    Cancelled,
    /// The server answered with a JSON-RPC error.
    #[error("the MCP server rejected the request (JSON-RPC error {code}): {message}")]
    Rejected {
        /// The JSON-RPC error code.
        code: i32,
        /// The server's message, redacted.
        message: String,
    },
    /// The tool ran and reported failure (`isError: true`).
    #[error("the tool reported an error: {text}")]
    ToolFailed {
        /// The text items of its result, joined; this is tool output, so the
        /// engine masks it like any other output.
        text: String,
        /// The whole result, for the step's record.
        output: Box<ToolOutput>,
    },
    /// The server answered with something that is not what MCP prescribes.
    #[error("the MCP server answered with something unexpected: {detail}")]
    Protocol {
        /// What was wrong, redacted.
        detail: String,
    },
}

impl McpCallError {
    /// True when the same operation, tried again later, may succeed.
    ///
    /// This says nothing about side effects: a timed-out or lost `tools/call`
    /// may have run. Whether to retry a call is the engine's decision, made
    /// with the tool's hints ([`super::McpTool::is_safe_to_retry`]).
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::InitializeTimeout { .. }
            | Self::Unreachable { .. }
            | Self::PoolExhausted { .. }
            | Self::ConnectionLost { .. }
            | Self::Timeout { .. } => true,
            Self::InvalidConfig { .. }
            | Self::CommandNotFound { .. }
            | Self::SpawnFailed { .. }
            | Self::ExitedDuringInitialize { .. }
            | Self::InitializeFailed { .. }
            | Self::Cancelled
            | Self::Rejected { .. }
            | Self::ToolFailed { .. }
            | Self::Protocol { .. } => false,
        }
    }
}

/// `1.5 s`, `250 ms`.
fn seconds(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{} ms", duration.as_millis())
    } else {
        let text = format!("{:.1}", duration.as_secs_f64());
        format!("{} s", text.trim_end_matches(".0"))
    }
}

/// `; its stderr ended with: …`, or nothing.
fn detail_suffix(detail: &Option<String>) -> String {
    match detail {
        Some(detail) => format!("; its stderr ended with: {detail}"),
        None => String::new(),
    }
}

/// Every message in an error's chain, joined with `: `, skipping a message
/// that the previous one already contains (many errors repeat their source).
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(current) = source {
        let message = current.to_string();
        if !message.is_empty() && !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = current.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_millis(250)), "250 ms");
        assert_eq!(seconds(Duration::from_secs(30)), "30 s");
        assert_eq!(seconds(Duration::from_millis(1_500)), "1.5 s");
    }

    #[test]
    fn a_missing_command_is_not_retryable_and_says_what_was_missing() {
        let error = McpCallError::CommandNotFound {
            command: "no-such-server".into(),
        };
        assert!(!error.is_retryable());
        assert!(error.to_string().contains("`no-such-server` was not found"));
    }

    #[test]
    fn a_lost_connection_is_retryable() {
        let error = McpCallError::ConnectionLost {
            detail: "the connection closed".into(),
        };
        assert!(error.is_retryable());
    }
}
