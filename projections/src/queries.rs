//! The read queries the API serves. Every query takes the caller's tenant
//! as a required argument, so a query that forgets it does not compile, and
//! every statement filters on it.

use std::collections::HashMap;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use toolhub_domain::TenantId;
use toolhub_eventstore::{Db, EventStore, Position, StoreError};

use crate::sql::{fetch, placeholders, Arg, Row};
use crate::views::*;

/// Why a read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The `after` cursor was not produced by this list.
    #[error("invalid cursor")]
    InvalidCursor,
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why waiting for a position ended without it.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    /// The read models did not reach the position in time.
    #[error("the read models have not reached position {position} yet")]
    Timeout {
        /// The position waited for.
        position: Position,
    },
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// How far a projector is behind the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectorLag {
    /// The projection's name.
    pub projection: String,
    /// Its checkpoint.
    pub checkpoint: Position,
    /// How many committed events it has not applied yet.
    pub behind: u64,
    /// How long ago the oldest of them was recorded, in milliseconds.
    pub oldest_unapplied_ms: Option<u64>,
}

/// The read queries. Cheap to clone.
#[derive(Clone)]
pub struct ReadModels {
    store: EventStore,
}

const DEFAULT_PAGE: u32 = 20;

fn limit(page: &PageRequest) -> i64 {
    i64::from(match page.first {
        0 => DEFAULT_PAGE,
        n => n.min(MAX_PAGE),
    })
}

fn cursor(kind: &str, value: &str) -> Cursor {
    Cursor(B64.encode(format!("{kind}:{value}")))
}

fn decode_cursor(kind: &str, cursor: &Cursor) -> Result<String, ReadError> {
    let bytes = B64
        .decode(&cursor.0)
        .map_err(|_| ReadError::InvalidCursor)?;
    let text = String::from_utf8(bytes).map_err(|_| ReadError::InvalidCursor)?;
    text.strip_prefix(kind)
        .and_then(|rest| rest.strip_prefix(':'))
        .map(str::to_string)
        .ok_or(ReadError::InvalidCursor)
}

fn u64_of(v: i64) -> u64 {
    v.max(0) as u64
}

fn workflow_view(r: &Row) -> Result<WorkflowView, StoreError> {
    Ok(WorkflowView {
        id: r.text("id")?,
        tenant: r.text("tenant")?,
        name: r.text("name")?,
        description: r.text("description")?,
        definition: r.json("definition")?,
        version: u64_of(r.int("version")?),
        aggregate_version: u64_of(r.int("seq")?),
        archived: r.bool("archived")?,
        triggers: r.json("triggers")?,
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        updated_by: r.text("updated_by")?,
        updated_at: r.time("updated_at")?,
    })
}

fn version_view(r: &Row) -> Result<WorkflowVersionView, StoreError> {
    Ok(WorkflowVersionView {
        workflow_id: r.text("workflow_id")?,
        version: u64_of(r.int("version")?),
        definition: r.json("definition")?,
        comment: r.opt_text("comment")?,
        reverted_from: r.opt_int("reverted_from")?.map(u64_of),
        actor: r.text("actor")?,
        recorded_at: r.time("recorded_at")?,
    })
}

fn execution_view(r: &Row) -> Result<ExecutionView, StoreError> {
    Ok(ExecutionView {
        id: r.text("id")?,
        tenant: r.text("tenant")?,
        workflow_id: r.text("workflow_id")?,
        workflow_version: u64_of(r.int("workflow_version")?),
        status: r.text("status")?,
        trigger: r.text("trigger")?,
        input: r.json("input")?,
        output: r.opt_json("output")?,
        error: r.opt_text("error")?,
        aggregate_version: u64_of(r.int("seq")?),
        started_by: r.text("started_by")?,
        started_at: r.time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn step_view(r: &Row) -> Result<ExecutionStepView, StoreError> {
    Ok(ExecutionStepView {
        execution_id: r.text("execution_id")?,
        node_id: r.text("node_id")?,
        attempt: u32::try_from(r.int("attempt")?).unwrap_or(u32::MAX),
        status: r.text("status")?,
        input: r.json("input")?,
        output: r.opt_json("output")?,
        error: r.opt_text("error")?,
        scheduled_at: r.time("scheduled_at")?,
        started_at: r.opt_time("started_at")?,
        finished_at: r.opt_time("finished_at")?,
    })
}

fn secret_view(r: &Row) -> Result<SecretView, StoreError> {
    Ok(SecretView {
        id: r.text("id")?,
        tenant: r.text("tenant")?,
        name: r.text("name")?,
        description: r.text("description")?,
        rotation_count: u32::try_from(r.int("rotation_count")?).unwrap_or(u32::MAX),
        aggregate_version: u64_of(r.int("seq")?),
        created_by: r.text("created_by")?,
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn mcp_server_view(r: &Row) -> Result<McpServerView, StoreError> {
    Ok(McpServerView {
        id: r.text("id")?,
        tenant: r.text("tenant")?,
        name: r.text("name")?,
        transport: r.json("transport")?,
        enabled: r.bool("enabled")?,
        healthy: r.opt_bool("healthy")?,
        latency_ms: r.opt_int("latency_ms")?.map(u64_of),
        health_detail: r.opt_text("health_detail")?,
        checked_at: r.opt_time("checked_at")?,
        aggregate_version: u64_of(r.int("seq")?),
        created_at: r.time("created_at")?,
        updated_at: r.time("updated_at")?,
    })
}

fn tool_view(r: &Row) -> Result<McpToolView, StoreError> {
    Ok(McpToolView {
        server_id: r.text("server_id")?,
        name: r.text("name")?,
        description: r.opt_text("description")?,
        input_schema: r.json("input_schema")?,
    })
}

fn audit_entry(r: &Row) -> Result<AuditEntry, StoreError> {
    Ok(AuditEntry {
        position: Position::new(u64_of(r.int("transaction_id")?), r.int("global_position")?),
        tenant: r.text("tenant")?,
        aggregate_type: r.text("aggregate_type")?,
        aggregate_id: r.text("aggregate_id")?,
        sequence: u64_of(r.int("sequence")?),
        event_type: r.text("event_type")?,
        event_version: r.text("event_version")?,
        actor: r.text("actor")?,
        correlation_id: r.text("correlation_id")?,
        causation_id: r.text("causation_id")?,
        request_id: r.text("request_id")?,
        recorded_at: r.time("recorded_at")?,
        payload: r.json("payload")?,
    })
}

/// A keyset page over an id-ordered (newest first) table.
async fn id_page<T>(
    db: &Db,
    kind: &str,
    table: &str,
    tenant: &TenantId,
    conditions: &[(&str, Arg)],
    page: &PageRequest,
    map: fn(&Row) -> Result<T, StoreError>,
) -> Result<Page<T>, ReadError> {
    let mut sql = format!("SELECT * FROM {table} WHERE tenant = $1");
    let mut args = vec![Arg::from(tenant.as_str())];
    for (condition, arg) in conditions {
        args.push(arg.clone());
        sql.push_str(&format!(
            " AND {}",
            condition.replace("$?", &format!("${}", args.len()))
        ));
    }
    if let Some(after) = &page.after {
        args.push(Arg::from(decode_cursor(kind, after)?));
        sql.push_str(&format!(" AND id < ${}", args.len()));
    }
    let n = limit(page);
    args.push(Arg::from(n + 1));
    sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", args.len()));
    let rows = fetch(db, &sql, &args).await?;
    let has_next_page = rows.len() as i64 > n;
    let items = rows
        .iter()
        .take(n as usize)
        .map(|r| Ok((cursor(kind, &r.text("id")?), map(r)?)))
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(Page {
        items,
        has_next_page,
    })
}

async fn one<T>(
    db: &Db,
    table: &str,
    extra: &str,
    tenant: &TenantId,
    id: &str,
    map: fn(&Row) -> Result<T, StoreError>,
) -> Result<Option<T>, ReadError> {
    let sql = format!("SELECT * FROM {table} WHERE tenant = $1 AND id = $2 {extra}");
    let rows = fetch(db, &sql, &[tenant.as_str().into(), id.into()]).await?;
    Ok(rows.first().map(map).transpose()?)
}

impl ReadModels {
    /// The read queries over `store`'s database.
    pub fn new(store: &EventStore) -> Self {
        Self {
            store: store.clone(),
        }
    }

    fn db(&self) -> &Db {
        self.store.db()
    }

    /// One workflow.
    pub async fn workflow(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<WorkflowView>, ReadError> {
        one(self.db(), "rm_workflows", "", tenant, id, workflow_view).await
    }

    /// Workflows, newest first.
    pub async fn workflows(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &WorkflowFilter,
    ) -> Result<Page<WorkflowView>, ReadError> {
        let mut conditions = Vec::new();
        if let Some(part) = &filter.name_contains {
            let escaped = part
                .to_lowercase()
                .replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_");
            conditions.push((
                "lower(name) LIKE $? ESCAPE '\\'",
                Arg::from(format!("%{escaped}%")),
            ));
        }
        if let Some(archived) = filter.archived {
            conditions.push(("archived = $?", Arg::from(archived)));
        }
        id_page(
            self.db(),
            "workflow",
            "rm_workflows",
            tenant,
            &conditions,
            page,
            workflow_view,
        )
        .await
    }

    /// A page of a workflow's versions, newest first.
    pub async fn workflow_versions(
        &self,
        tenant: &TenantId,
        workflow_id: &str,
        page: &PageRequest,
    ) -> Result<Page<WorkflowVersionView>, ReadError> {
        let mut pages = self
            .workflow_versions_of(tenant, &[workflow_id.to_string()], page)
            .await?;
        Ok(pages.remove(workflow_id).unwrap_or(Page {
            items: Vec::new(),
            has_next_page: false,
        }))
    }

    /// The same page of the versions of several workflows at once (for a
    /// DataLoader): one query, whatever the number of workflows. Workflows
    /// without versions on that page are absent from the map.
    pub async fn workflow_versions_of(
        &self,
        tenant: &TenantId,
        workflow_ids: &[String],
        page: &PageRequest,
    ) -> Result<HashMap<String, Page<WorkflowVersionView>>, ReadError> {
        let n = limit(page);
        let before = match &page.after {
            Some(after) => Some(
                decode_cursor("version", after)?
                    .parse::<i64>()
                    .map_err(|_| ReadError::InvalidCursor)?,
            ),
            None => None,
        };
        let mut out: HashMap<String, Page<WorkflowVersionView>> = HashMap::new();
        for chunk in workflow_ids.chunks(500) {
            let mut args = vec![Arg::from(tenant.as_str())];
            args.extend(chunk.iter().map(|id| Arg::from(id.as_str())));
            let ids = placeholders(2, chunk.len());
            let mut filter = String::new();
            if let Some(before) = before {
                args.push(before.into());
                filter = format!(" AND version < ${}", args.len());
            }
            // `n + 1` per workflow tells whether a next page follows.
            args.push((n + 1).into());
            let sql = format!(
                "SELECT * FROM ( \
                   SELECT v.*, row_number() OVER (PARTITION BY workflow_id ORDER BY version DESC) AS rn \
                     FROM rm_workflow_versions v \
                    WHERE tenant = $1 AND workflow_id IN ({ids}){filter} \
                 ) ranked WHERE rn <= ${} ORDER BY workflow_id, version DESC",
                args.len()
            );
            for row in fetch(self.db(), &sql, &args).await? {
                let view = version_view(&row)?;
                let page = out.entry(view.workflow_id.clone()).or_insert(Page {
                    items: Vec::new(),
                    has_next_page: false,
                });
                if page.items.len() as i64 == n {
                    page.has_next_page = true;
                } else {
                    page.items
                        .push((cursor("version", &view.version.to_string()), view));
                }
            }
        }
        Ok(out)
    }

    async fn batched<T>(
        &self,
        head: &str,
        tail: &str,
        tenant: &TenantId,
        ids: &[String],
        map: fn(&Row) -> Result<T, StoreError>,
    ) -> Result<Vec<T>, ReadError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(500) {
            let sql = format!("{head} ({}) {tail}", placeholders(2, chunk.len()));
            let mut args = vec![Arg::from(tenant.as_str())];
            args.extend(chunk.iter().map(|id| Arg::from(id.as_str())));
            for row in fetch(self.db(), &sql, &args).await? {
                out.push(map(&row)?);
            }
        }
        Ok(out)
    }

    /// One execution.
    pub async fn execution(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<ExecutionView>, ReadError> {
        one(self.db(), "rm_executions", "", tenant, id, execution_view).await
    }

    /// Executions, newest first.
    pub async fn executions(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &ExecutionFilter,
    ) -> Result<Page<ExecutionView>, ReadError> {
        let mut conditions = Vec::new();
        if let Some(workflow_id) = &filter.workflow_id {
            conditions.push(("workflow_id = $?", Arg::from(workflow_id.as_str())));
        }
        if let Some(status) = &filter.status {
            conditions.push(("status = $?", Arg::from(status.as_str())));
        }
        id_page(
            self.db(),
            "execution",
            "rm_executions",
            tenant,
            &conditions,
            page,
            execution_view,
        )
        .await
    }

    /// The steps of several executions (for a DataLoader), in node and
    /// attempt order.
    pub async fn execution_steps(
        &self,
        tenant: &TenantId,
        execution_ids: &[String],
    ) -> Result<Vec<ExecutionStepView>, ReadError> {
        self.batched(
            "SELECT * FROM rm_execution_steps WHERE tenant = $1 AND execution_id IN",
            "ORDER BY execution_id, scheduled_at, node_id, attempt",
            tenant,
            execution_ids,
            step_view,
        )
        .await
    }

    /// One secret's metadata (not deleted).
    pub async fn secret(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<SecretView>, ReadError> {
        one(
            self.db(),
            "rm_secrets",
            "AND deleted = false",
            tenant,
            id,
            secret_view,
        )
        .await
    }

    /// Secrets' metadata, newest first (not deleted).
    pub async fn secrets(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<SecretView>, ReadError> {
        let conditions = [("deleted = $?", Arg::from(false))];
        id_page(
            self.db(),
            "secret",
            "rm_secrets",
            tenant,
            &conditions,
            page,
            secret_view,
        )
        .await
    }

    /// One MCP server (not deregistered).
    pub async fn mcp_server(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<McpServerView>, ReadError> {
        one(
            self.db(),
            "rm_mcp_servers",
            "AND deregistered = false",
            tenant,
            id,
            mcp_server_view,
        )
        .await
    }

    /// MCP servers, newest first (not deregistered).
    pub async fn mcp_servers(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
    ) -> Result<Page<McpServerView>, ReadError> {
        let conditions = [("deregistered = $?", Arg::from(false))];
        id_page(
            self.db(),
            "mcp_server",
            "rm_mcp_servers",
            tenant,
            &conditions,
            page,
            mcp_server_view,
        )
        .await
    }

    /// The tools of several MCP servers (for a DataLoader), by name.
    pub async fn mcp_tools(
        &self,
        tenant: &TenantId,
        server_ids: &[String],
    ) -> Result<Vec<McpToolView>, ReadError> {
        self.batched(
            "SELECT * FROM rm_mcp_tools WHERE tenant = $1 AND server_id IN",
            "ORDER BY server_id, name",
            tenant,
            server_ids,
            tool_view,
        )
        .await
    }

    fn audit_conditions(filter: &AuditFilter, args: &mut Vec<Arg>) -> String {
        let mut sql = String::new();
        let mut push = |condition: &str, arg: Arg| {
            args.push(arg);
            sql.push_str(&format!(" AND {condition} ${}", args.len()));
        };
        if let Some(t) = &filter.aggregate_type {
            push("aggregate_type =", t.as_str().into());
        }
        if let Some(id) = &filter.aggregate_id {
            push("aggregate_id =", id.as_str().into());
        }
        if let Some(actor) = &filter.actor {
            push("actor =", actor.as_str().into());
        }
        if let Some(from) = filter.from {
            push("recorded_at >=", from.into());
        }
        if let Some(to) = filter.to {
            push("recorded_at <", to.into());
        }
        sql
    }

    /// The audit log, oldest first.
    pub async fn audit_log(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &AuditFilter,
    ) -> Result<Page<AuditEntry>, ReadError> {
        let after = match &page.after {
            Some(c) => decode_cursor("audit", c)?
                .parse::<Position>()
                .map_err(|_| ReadError::InvalidCursor)?,
            None => Position::ZERO,
        };
        let n = limit(page);
        let entries = self
            .audit_after(tenant, after, filter, (n + 1) as u32)
            .await?;
        let has_next_page = entries.len() as i64 > n;
        let items = entries
            .into_iter()
            .take(n as usize)
            .map(|e| (cursor("audit", &e.position.to_string()), e))
            .collect();
        Ok(Page {
            items,
            has_next_page,
        })
    }

    /// Audit entries after `after`, oldest first: what the `events`
    /// subscription streams.
    pub async fn audit_after(
        &self,
        tenant: &TenantId,
        after: Position,
        filter: &AuditFilter,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        let mut args = vec![
            Arg::from(tenant.as_str()),
            Arg::from(after.transaction.min(i64::MAX as u64) as i64),
            Arg::from(after.global),
        ];
        let conditions = Self::audit_conditions(filter, &mut args);
        args.push(Arg::from(i64::from(limit.clamp(1, 1_000))));
        let sql = format!(
            "SELECT * FROM rm_audit WHERE tenant = $1 AND (transaction_id, global_position) > ($2, $3){conditions} \
             ORDER BY transaction_id, global_position LIMIT ${}",
            args.len()
        );
        let rows = fetch(self.db(), &sql, &args).await?;
        Ok(rows.iter().map(audit_entry).collect::<Result<_, _>>()?)
    }

    /// Every event of one aggregate, in sequence order.
    pub async fn history(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEntry>, ReadError> {
        let rows = fetch(
            self.db(),
            "SELECT * FROM rm_audit WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY sequence",
            &[tenant.as_str().into(), aggregate_type.into(), aggregate_id.into()],
        )
        .await?;
        Ok(rows.iter().map(audit_entry).collect::<Result<_, _>>()?)
    }

    /// The lowest checkpoint among the projections.
    pub async fn applied(&self) -> Result<Position, StoreError> {
        let names = crate::projection::NAMES;
        let sql = format!(
            "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection IN ({})",
            placeholders(1, names.len())
        );
        let args: Vec<Arg> = names.iter().map(|n| Arg::from(*n)).collect();
        let rows = fetch(self.db(), &sql, &args).await?;
        if rows.len() < names.len() {
            return Ok(Position::ZERO);
        }
        let mut min: Option<Position> = None;
        for row in &rows {
            let p = Position::new(
                u64_of(row.int("transaction_id")?),
                row.int("global_position")?,
            );
            min = Some(min.map_or(p, |m| m.min(p)));
        }
        Ok(min.unwrap_or(Position::ZERO))
    }

    /// Returns once every projection has applied `position`, or
    /// [`WaitError::Timeout`] after `timeout`.
    pub async fn wait_for(&self, position: Position, timeout: Duration) -> Result<(), WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        // Subscribe before the first read, so that a batch committed
        // between the read and the wait still wakes it.
        let mut moved = self.store.projected();
        let mut pause = Duration::from_millis(5);
        loop {
            if self.applied().await? >= position {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(WaitError::Timeout { position });
            }
            // Woken by the projectors' announcements; the growing pause is
            // the fallback for a lost one.
            tokio::select! {
                _ = moved.changed() => {}
                _ = tokio::time::sleep_until((now + pause).min(deadline)) => {}
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
    }

    /// How far each projection is behind the log.
    pub async fn lag(&self) -> Result<Vec<ProjectorLag>, ReadError> {
        let mut out = Vec::new();
        for name in crate::projection::NAMES {
            let rows = fetch(
                self.db(),
                "SELECT transaction_id, global_position FROM projector_checkpoints WHERE projection = $1",
                &[name.into()],
            )
            .await?;
            let checkpoint = match rows.first() {
                Some(r) => {
                    Position::new(u64_of(r.int("transaction_id")?), r.int("global_position")?)
                }
                None => Position::ZERO,
            };
            let (behind, oldest) = match self.db() {
                Db::Postgres(pool) => {
                    let row: (i64, Option<f64>) = sqlx::query_as(
                        "SELECT count(*), (extract(epoch FROM (clock_timestamp() - min(recorded_at))) * 1000)::float8 \
                           FROM events WHERE (transaction_id, global_position) > ($1::text::xid8, $2)",
                    )
                    .bind(checkpoint.transaction.to_string())
                    .bind(checkpoint.global)
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from)?;
                    row
                }
                Db::Sqlite(pool) => {
                    let row: (i64, Option<f64>) = sqlx::query_as(
                        "SELECT count(*), (julianday('now') - julianday(min(recorded_at))) * 86400000.0 \
                           FROM events WHERE global_position > ?1",
                    )
                    .bind(checkpoint.global)
                    .fetch_one(pool)
                    .await
                    .map_err(StoreError::from)?;
                    row
                }
            };
            out.push(ProjectorLag {
                projection: name.to_string(),
                checkpoint,
                behind: u64_of(behind),
                oldest_unapplied_ms: oldest.map(|ms| ms.max(0.0) as u64),
            });
        }
        Ok(out)
    }
}
