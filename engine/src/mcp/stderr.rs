//! Drains a stdio server's stderr so that the child never blocks on a full
//! pipe, logs each line at debug level (redacted and truncated), and keeps the
//! last few lines to explain a server that fails to start.

use super::redact::{truncate, Redactor};
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::process::ChildStderr;
use tokio::sync::watch;

/// The longest stderr line kept, in bytes; the rest of the line is read and
/// dropped, so a server that writes megabytes without a newline costs nothing.
const MAX_LINE_LEN: usize = 1_024;

/// How many of the latest lines are kept for error messages.
const TAIL_LINES: usize = 5;

/// The latest lines a server wrote to stderr.
pub(crate) struct StderrTail {
    /// The last [`TAIL_LINES`] lines, already redacted and truncated.
    lines: Mutex<VecDeque<String>>,
    /// Becomes true when stderr reaches its end (the server closed it or
    /// exited), so that a failed start can wait for the final lines.
    closed: watch::Receiver<bool>,
}

impl StderrTail {
    /// Starts draining `stderr` on a task of its own.
    ///
    /// `label` names the server in log lines (tenant and server id, never a
    /// value from its configuration).
    pub(crate) fn drain(stderr: ChildStderr, label: String, redactor: Arc<Redactor>) -> Arc<Self> {
        let (closed_tx, closed_rx) = watch::channel(false);
        let tail = Arc::new(Self {
            lines: Mutex::new(VecDeque::with_capacity(TAIL_LINES)),
            closed: closed_rx,
        });
        let writer = Arc::clone(&tail);
        tokio::spawn(async move {
            writer.read_all(stderr, &label, &redactor).await;
            let _ = closed_tx.send(true);
        });
        tail
    }

    /// Reads until the end of the stream, a line at a time.
    async fn read_all(&self, mut stderr: ChildStderr, label: &str, redactor: &Redactor) {
        let mut chunk = [0u8; 4_096];
        let mut line: Vec<u8> = Vec::with_capacity(256);
        let mut overflowed = false;
        loop {
            let read = match stderr.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(read) => read,
            };
            for &byte in &chunk[..read] {
                if byte == b'\n' {
                    self.finish_line(&line, overflowed, label, redactor);
                    line.clear();
                    overflowed = false;
                } else if line.len() < MAX_LINE_LEN {
                    line.push(byte);
                } else {
                    overflowed = true;
                }
            }
        }
        if !line.is_empty() {
            self.finish_line(&line, overflowed, label, redactor);
        }
    }

    /// Logs a complete line and keeps it in the tail.
    fn finish_line(&self, raw: &[u8], overflowed: bool, label: &str, redactor: &Redactor) {
        let text = String::from_utf8_lossy(raw);
        let text = text.trim_end_matches('\r');
        if text.trim().is_empty() {
            return;
        }
        let mut text = truncate(redactor.redact(text), MAX_LINE_LEN);
        if overflowed && !text.ends_with('…') {
            text.push('…');
        }
        tracing::debug!(server = %label, line = %text, "MCP server stderr");
        let mut lines = self.lines.lock();
        if lines.len() == TAIL_LINES {
            lines.pop_front();
        }
        lines.push_back(text);
    }

    /// Waits up to `limit` for stderr to reach its end, so that the lines of a
    /// server that has just exited are all in.
    pub(crate) async fn settle(&self, limit: Duration) {
        let mut closed = self.closed.clone();
        let _ = tokio::time::timeout(limit, closed.wait_for(|closed| *closed)).await;
    }

    /// The kept lines joined with ` | `, or `None` when there are none.
    pub(crate) fn summary(&self) -> Option<String> {
        let lines = self.lines.lock();
        if lines.is_empty() {
            None
        } else {
            Some(lines.iter().cloned().collect::<Vec<_>>().join(" | "))
        }
    }
}
