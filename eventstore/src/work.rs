//! The engine's work queue (`engine_work`) and the write-side lookups it
//! needs: who holds a unique name, and `startExecution`'s idempotency keys.
//!
//! A row per execution that is not over. A worker claims due rows with a
//! lease and extends it while it drives them; a lease that runs out (a
//! worker that died) makes the row claimable again. On PostgreSQL claims use
//! `FOR UPDATE SKIP LOCKED`, so replicas never wait on each other's rows; on
//! SQLite, which has one writer, the claim is one `UPDATE … RETURNING`.
//! Times come from the caller, so that tests can control the clock and both
//! backends compare the same values.

use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::sql::{exec, fetch, Arg};
use crate::store::Db;
use crate::Companion;

/// One claimed execution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The execution's id.
    pub execution_id: String,
    /// Its tenant.
    pub tenant: String,
}

/// The engine's work queue. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkQueue {
    /// The database holding `engine_work`.
    db: Db,
}

impl WorkQueue {
    /// The queue in `db`.
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    /// The work row of a new execution, as a write that commits with its
    /// `ExecutionStarted` ([`CommandBus::execute_with`](crate::CommandBus::execute_with)):
    /// an execution is started exactly when it has a row to be driven by.
    /// Leased to `owner` until `lease_until`, or free for any worker.
    pub fn enqueue_with_start(
        execution_id: &str,
        tenant: &str,
        owner: Option<&str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Companion {
        Companion {
            sql: "INSERT INTO engine_work (execution_id, tenant, due_at, owner, lease_until, created_at) \
                  VALUES ($1, $2, $3, $4, $5, $3)"
                .into(),
            args: vec![
                execution_id.into(),
                tenant.into(),
                now.into(),
                owner.map(str::to_string).into(),
                owner.map(|_| lease_until).into(),
            ],
        }
    }

    /// Adds an execution, due now, leased to `owner` until `lease_until`
    /// when given (the worker that started it drives it at once). An
    /// execution already queued keeps its row, and is taken over only if
    /// unleased or its lease ran out. Returns whether `owner` (when given)
    /// holds the lease afterwards.
    pub async fn enqueue(
        &self,
        execution_id: &str,
        tenant: &str,
        owner: Option<&str>,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let rows = fetch(
            &self.db,
            "INSERT INTO engine_work (execution_id, tenant, due_at, owner, lease_until, created_at) \
             VALUES ($1, $2, $3, $4, $5, $3) \
             ON CONFLICT (execution_id) DO UPDATE \
               SET owner = excluded.owner, lease_until = excluded.lease_until, due_at = excluded.due_at \
             WHERE engine_work.owner IS NULL OR engine_work.lease_until < $3 \
             RETURNING owner",
            &[
                execution_id.into(),
                tenant.into(),
                now.into(),
                owner.map(str::to_string).into(),
                owner.map(|_| lease_until).into(),
            ],
        )
        .await?;
        Ok(owner.is_some() && !rows.is_empty())
    }

    /// Claims up to `limit` due executions for `owner` until `lease_until`.
    pub async fn claim(
        &self,
        owner: &str,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
        limit: u32,
    ) -> Result<Vec<Claimed>, StoreError> {
        // The one difference: PostgreSQL replicas skip each other's rows.
        let lock = match self.db {
            Db::Postgres(_) => "FOR UPDATE SKIP LOCKED",
            Db::Sqlite(_) => "",
        };
        let sql = format!(
            "UPDATE engine_work SET owner = $1, lease_until = $2 \
              WHERE execution_id IN ( \
                SELECT execution_id FROM engine_work \
                 WHERE due_at <= $3 AND (owner IS NULL OR lease_until < $3) \
                 ORDER BY due_at LIMIT $4 {lock}) \
             RETURNING execution_id, tenant"
        );
        let rows = fetch(
            &self.db,
            &sql,
            &[
                owner.into(),
                lease_until.into(),
                now.into(),
                i64::from(limit.max(1)).into(),
            ],
        )
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Claimed {
                    execution_id: r.text("execution_id")?,
                    tenant: r.text("tenant")?,
                })
            })
            .collect()
    }

    /// Extends `owner`'s leases on `ids`; returns those of `ids` that
    /// `owner` no longer holds: rows that another worker took over (its
    /// lease ran out) or that were given back. An id without a row is not
    /// among them: its run either ended (the row is removed) or has not
    /// committed its start yet — a worker registers a run's driver before
    /// the start commits, and a heartbeat in between must not take it for
    /// lost.
    pub async fn heartbeat(
        &self,
        owner: &str,
        ids: &[String],
        lease_until: DateTime<Utc>,
    ) -> Result<Vec<String>, StoreError> {
        let mut lost = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!(
                "UPDATE engine_work SET lease_until = $1 WHERE owner = $2 AND execution_id IN ({}) \
                 RETURNING execution_id",
                crate::sql::placeholders(3, chunk.len())
            );
            let mut args = vec![Arg::from(lease_until), Arg::from(owner)];
            args.extend(chunk.iter().map(|id| Arg::from(id.as_str())));
            let held = fetch(&self.db, &sql, &args).await?;
            if held.len() == chunk.len() {
                continue;
            }
            // Some were not extended: which of them belong to someone else?
            let sql = format!(
                "SELECT execution_id FROM engine_work \
                 WHERE (owner IS NULL OR owner <> $1) AND execution_id IN ({})",
                crate::sql::placeholders(2, chunk.len())
            );
            let mut args = vec![Arg::from(owner)];
            args.extend(chunk.iter().map(|id| Arg::from(id.as_str())));
            for row in fetch(&self.db, &sql, &args).await? {
                lost.push(row.text("execution_id")?);
            }
        }
        Ok(lost)
    }

    /// Gives an execution back: due again at `due_at` (never, while it
    /// waits for a command, when `None`). Only `owner` can.
    pub async fn release(
        &self,
        execution_id: &str,
        owner: &str,
        due_at: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        exec(
            &self.db,
            "UPDATE engine_work SET owner = NULL, lease_until = NULL, due_at = $3 \
             WHERE execution_id = $1 AND owner = $2",
            &[execution_id.into(), owner.into(), due_at.into()],
        )
        .await?;
        Ok(())
    }

    /// Makes an execution due now (a command arrived: resume, stop, new
    /// breakpoints), keeping any lease.
    pub async fn wake(&self, execution_id: &str, now: DateTime<Utc>) -> Result<(), StoreError> {
        exec(
            &self.db,
            "UPDATE engine_work SET due_at = $2 WHERE execution_id = $1",
            &[execution_id.into(), now.into()],
        )
        .await?;
        Ok(())
    }

    /// Removes an execution that ended.
    pub async fn finish(&self, execution_id: &str) -> Result<(), StoreError> {
        exec(
            &self.db,
            "DELETE FROM engine_work WHERE execution_id = $1",
            &[execution_id.into()],
        )
        .await?;
        Ok(())
    }

    /// When the next unleased row falls due, if any: how long a worker may
    /// sleep when nothing wakes it.
    pub async fn next_due(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let rows = fetch(
            &self.db,
            "SELECT min(due_at) AS due FROM engine_work WHERE owner IS NULL",
            &[],
        )
        .await?;
        match rows.first() {
            Some(row) => row.opt_time("due"),
            None => Ok(None),
        }
    }

    /// Whether an execution is queued.
    pub async fn contains(&self, execution_id: &str) -> Result<bool, StoreError> {
        Ok(!fetch(
            &self.db,
            "SELECT 1 AS one FROM engine_work WHERE execution_id = $1",
            &[execution_id.into()],
        )
        .await?
        .is_empty())
    }
}

/// What reserving an idempotency key found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyReservation {
    /// The key is now this execution's.
    Reserved,
    /// The key belongs to another execution, reserved within the window.
    Taken {
        /// The execution that holds it.
        execution_id: String,
        /// When it was reserved.
        reserved_at: DateTime<Utc>,
    },
}

/// Reserves `key` in `tenant` for `execution_id`, unless another execution
/// reserved it after `window_start` (a reservation older than that is
/// replaced).
pub async fn reserve_key(
    db: &Db,
    tenant: &str,
    key: &str,
    execution_id: &str,
    now: DateTime<Utc>,
    window_start: DateTime<Utc>,
) -> Result<KeyReservation, StoreError> {
    let rows = fetch(
        db,
        "INSERT INTO execution_keys (tenant, key, execution_id, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (tenant, key) DO UPDATE \
           SET execution_id = excluded.execution_id, created_at = excluded.created_at \
         WHERE execution_keys.created_at < $5 \
         RETURNING execution_id",
        &[
            tenant.into(),
            key.into(),
            execution_id.into(),
            now.into(),
            window_start.into(),
        ],
    )
    .await?;
    if !rows.is_empty() {
        return Ok(KeyReservation::Reserved);
    }
    let rows = fetch(
        db,
        "SELECT execution_id, created_at FROM execution_keys WHERE tenant = $1 AND key = $2",
        &[tenant.into(), key.into()],
    )
    .await?;
    match rows.first() {
        Some(row) => Ok(KeyReservation::Taken {
            execution_id: row.text("execution_id")?,
            reserved_at: row.time("created_at")?,
        }),
        // Replaced between the two statements: try once more.
        None => Err(StoreError::Corrupt("an idempotency key vanished".into())),
    }
}

/// Gives back a key reserved for an execution that did not start.
pub async fn release_key(
    db: &Db,
    tenant: &str,
    key: &str,
    execution_id: &str,
) -> Result<(), StoreError> {
    exec(
        db,
        "DELETE FROM execution_keys WHERE tenant = $1 AND key = $2 AND execution_id = $3",
        &[tenant.into(), key.into(), execution_id.into()],
    )
    .await?;
    Ok(())
}

/// The aggregate that holds `name` among `tenant`'s aggregates of
/// `aggregate_type` (a secret's or MCP server's name), if any.
pub async fn name_holder(
    db: &Db,
    tenant: &str,
    aggregate_type: &str,
    name: &str,
) -> Result<Option<String>, StoreError> {
    let rows = fetch(
        db,
        "SELECT aggregate_id FROM name_claims WHERE tenant = $1 AND aggregate_type = $2 AND name = $3",
        &[tenant.into(), aggregate_type.into(), name.into()],
    )
    .await?;
    rows.first().map(|r| r.text("aggregate_id")).transpose()
}

/// The unique names `tenant`'s aggregates of `aggregate_type` hold, with
/// their holders, `(name, aggregate_id)`: in name order, after `after`
/// (exclusive) when given, at most `limit`. (A tenant's MCP tools, a page
/// at a time.)
pub async fn names_in(
    db: &Db,
    tenant: &str,
    aggregate_type: &str,
    after: Option<&str>,
    limit: u32,
) -> Result<Vec<(String, String)>, StoreError> {
    let rows = fetch(
        db,
        "SELECT name, aggregate_id FROM name_claims \
         WHERE tenant = $1 AND aggregate_type = $2 AND name > $3 \
         ORDER BY name LIMIT $4",
        &[
            tenant.into(),
            aggregate_type.into(),
            after.unwrap_or("").into(),
            i64::from(limit).into(),
        ],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.text("name")?, r.text("aggregate_id")?)))
        .collect()
}

/// Every live holder of a unique name of `aggregate_type`, with its tenant:
/// `(tenant, aggregate_id)`. (Every registered MCP server, for the health
/// checker.)
pub async fn named(db: &Db, aggregate_type: &str) -> Result<Vec<(String, String)>, StoreError> {
    let rows = fetch(
        db,
        "SELECT tenant, aggregate_id FROM name_claims WHERE aggregate_type = $1 \
         ORDER BY tenant, aggregate_id",
        &[aggregate_type.into()],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.text("tenant")?, r.text("aggregate_id")?)))
        .collect()
}

/// How far each workflow's cron schedules were checked:
/// `workflow_id → checked_until`. Fires at or before that instant are done
/// (started, or skipped as missed).
pub async fn cron_cursors(
    db: &Db,
) -> Result<std::collections::HashMap<String, DateTime<Utc>>, StoreError> {
    let rows = fetch(
        db,
        "SELECT workflow_id, checked_until FROM cron_cursors",
        &[],
    )
    .await?;
    rows.iter()
        .map(|r| Ok((r.text("workflow_id")?, r.time("checked_until")?)))
        .collect()
}

/// Records that a workflow's schedules were checked up to `until`; a
/// cursor never moves back (a scheduler that lost its leadership mid-tick
/// cannot undo its successor's progress).
pub async fn advance_cron_cursor(
    db: &Db,
    workflow_id: &str,
    tenant: &str,
    until: DateTime<Utc>,
) -> Result<(), StoreError> {
    exec(
        db,
        "INSERT INTO cron_cursors (workflow_id, tenant, checked_until) VALUES ($1, $2, $3) \
         ON CONFLICT (workflow_id) DO UPDATE SET checked_until = excluded.checked_until \
         WHERE cron_cursors.checked_until < excluded.checked_until",
        &[workflow_id.into(), tenant.into(), until.into()],
    )
    .await?;
    Ok(())
}
