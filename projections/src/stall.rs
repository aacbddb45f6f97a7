//! A projector stopped at an event it cannot decode or apply.
//!
//! A projector never skips an event: when one cannot be read (a row no
//! decoder understands) or applied (a fold that fails on it), the projector
//! stays at the checkpoint before it and keeps retrying with a growing
//! pause. That must not be silent: the leader records the stall in its
//! checkpoint row (`stalled_*` columns, outside the batch transaction, so
//! that every replica's `/health/ready` and `/metrics` see it), logs it at
//! error level once per change, and clears it when a batch succeeds again
//! (after an upgrade that can read the event, an upcaster, or a rebuild).
//!
//! Which event is at fault is found by retrying the failed batch one event
//! at a time: everything before the bad event is applied, and the stall
//! names the exact position of the first one that fails alone.

use chrono::{DateTime, Utc};
use toolhub_eventstore::sql::{exec, fetch, Arg};
use toolhub_eventstore::{Db, EventStore, Position, StoreError};

/// The longest error message kept with a stall.
const MAX_STALL_ERROR_LEN: usize = 2_000;

/// Where a projection is stopped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// The projection's name.
    pub projection: String,
    /// The position of the event it cannot get past.
    pub position: Position,
    /// The error that stopped it, as logged.
    pub error: String,
    /// When it first stopped there.
    pub since: DateTime<Utc>,
}

/// Every projection stopped now, from the checkpoint rows.
pub async fn stalls(db: &Db) -> Result<Vec<Stall>, StoreError> {
    let rows = fetch(
        db,
        "SELECT projection, stalled_transaction_id, stalled_global_position, stalled_error, stalled_since \
           FROM projector_checkpoints WHERE stalled_global_position IS NOT NULL ORDER BY projection",
        &[],
    )
    .await?;
    rows.iter()
        .map(|row| {
            Ok(Stall {
                projection: row.text("projection")?,
                position: row.int_position("stalled_transaction_id", "stalled_global_position")?,
                error: row.opt_text("stalled_error")?.unwrap_or_default(),
                since: row.opt_time("stalled_since")?.unwrap_or_else(Utc::now),
            })
        })
        .collect()
}

/// Failures that say nothing about the event: the database is away, busy or
/// shutting down, or a transaction lost a race. They are retried without
/// declaring a stall.
pub(crate) fn is_transient(error: &StoreError) -> bool {
    match error {
        StoreError::Database(e) => match e {
            sqlx::Error::Io(_)
            | sqlx::Error::PoolClosed
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::Protocol(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Connection exceptions, insufficient resources, operator
                // intervention (shutdown, cancel), system errors, and
                // serialization failures or deadlocks; SQLite's busy and
                // locked.
                ["08", "53", "57", "58", "40"]
                    .iter()
                    .any(|class| code.starts_with(class))
                    || matches!(code.as_ref(), "55P03" | "5" | "6" | "261" | "517")
            }),
            _ => false,
        },
        _ => false,
    }
}

/// The leader's view of its projection's stall: records a change once,
/// clears it once.
pub(crate) struct StallTracker {
    /// The projection.
    name: &'static str,
    /// What was recorded last, if anything.
    recorded: Option<(Position, String)>,
    /// Whether a stall may be recorded in the database (by this leader, or
    /// by an earlier one): the first successful batch clears it.
    maybe_recorded: bool,
}

impl StallTracker {
    /// A tracker for a new leader, which does not know whether an earlier
    /// leader left a stall recorded.
    pub(crate) fn new(name: &'static str) -> Self {
        Self {
            name,
            recorded: None,
            maybe_recorded: true,
        }
    }

    /// The projection cannot get past the next event: records where and
    /// why, and logs it, when that changed.
    pub(crate) async fn stopped(&mut self, store: &EventStore, error: &StoreError) {
        let message: String = error
            .to_string()
            .chars()
            .take(MAX_STALL_ERROR_LEN)
            .collect();
        let position = match next_position(store, self.name).await {
            Ok(Some(position)) => position,
            // The next event could not even be located; name the
            // checkpoint's successor as best known.
            Ok(None) | Err(_) => match checkpoint(store.db(), self.name).await {
                Ok(p) => p,
                Err(_) => Position::ZERO,
            },
        };
        if self.recorded.as_ref() == Some(&(position, message.clone())) {
            return;
        }
        tracing::error!(
            projection = self.name,
            position = %position,
            global_position = position.global,
            error = %message,
            "projector stopped: it cannot decode or apply the event at this position and retries it; \
             see `toolhub-replay event --position {}` and the runbook",
            position.global
        );
        let now = Utc::now();
        let same_place = self.recorded.as_ref().is_some_and(|(p, _)| *p == position);
        let result = exec(
            store.db(),
            "UPDATE projector_checkpoints SET stalled_transaction_id = $2, stalled_global_position = $3, \
                    stalled_error = $4, \
                    stalled_since = CASE WHEN $5 THEN COALESCE(stalled_since, $6) ELSE $6 END \
              WHERE projection = $1",
            &[
                Arg::from(self.name),
                Arg::from(position.transaction.min(i64::MAX as u64) as i64),
                Arg::from(position.global),
                Arg::from(message.clone()),
                Arg::from(same_place),
                Arg::from(now),
            ],
        )
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, projection = self.name, "could not record the projector's stall");
        }
        self.recorded = Some((position, message));
        self.maybe_recorded = true;
    }

    /// A batch succeeded: clears a recorded stall.
    pub(crate) async fn running(&mut self, db: &Db) {
        if !self.maybe_recorded {
            return;
        }
        let result = exec(
            db,
            "UPDATE projector_checkpoints SET stalled_transaction_id = NULL, stalled_global_position = NULL, \
                    stalled_error = NULL, stalled_since = NULL \
              WHERE projection = $1 AND stalled_global_position IS NOT NULL",
            &[Arg::from(self.name)],
        )
        .await;
        match result {
            Ok(_) => {
                if let Some((position, _)) = self.recorded.take() {
                    tracing::info!(
                        projection = self.name,
                        position = %position,
                        "projector resumed: it got past the event it was stopped at"
                    );
                }
                self.maybe_recorded = false;
            }
            Err(error) => {
                tracing::warn!(%error, projection = self.name, "could not clear the projector's stall")
            }
        }
    }
}

/// A projection's checkpoint, read without a lock.
async fn checkpoint(db: &Db, projection: &str) -> Result<Position, StoreError> {
    let rows = fetch(
        db,
        "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection = $1",
        &[Arg::from(projection)],
    )
    .await?;
    match rows.first() {
        Some(row) => row.int_position("transaction_id", "global_position"),
        None => Ok(Position::ZERO),
    }
}

/// The position of the event after a projection's checkpoint.
async fn next_position(
    store: &EventStore,
    projection: &str,
) -> Result<Option<Position>, StoreError> {
    let at = checkpoint(store.db(), projection).await?;
    store.position_after(at).await
}

/// The pause before retrying after `failures` failures in a row: from 100 ms,
/// doubling, at most 30 s.
pub(crate) fn backoff(failures: u32) -> std::time::Duration {
    let exponent = failures.saturating_sub(1).min(9);
    std::time::Duration::from_millis((100u64 << exponent).min(30_000))
}
