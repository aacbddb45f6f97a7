//! The read queries the API serves. Every query takes the caller's tenant
//! as a required argument, so a query that forgets it does not compile, and
//! every statement filters on it.

use std::collections::HashMap;

use toolhub_domain::TenantId;
use toolhub_eventstore::sql::{fetch, fetch_each, placeholders, Arg, Row};
use toolhub_eventstore::{Db, EventStore, Position, StoreError};

use crate::cursor::{cursor, decode_cursor, limit};
use crate::projection::fold::TableRow;
use crate::projection::AuditRow;
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

/// The read queries. Cheap to clone.
#[derive(Clone)]
pub struct ReadModels {
    /// The store whose database holds the read models; its announcements
    /// wake read-your-writes waiters.
    pub(crate) store: EventStore,
}

/// A `LIKE … ESCAPE '\\'` pattern that matches text containing `part`,
/// whatever its case (compared with `lower(…)`), its wildcards escaped.
fn contains_pattern(part: &str) -> String {
    let escaped = part
        .to_lowercase()
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%{escaped}%")
}

/// Reads a row of a read-model table as the view the API shows.
fn view<R: TableRow + Into<V>, V>(row: &Row) -> Result<V, StoreError> {
    R::from_row(row).map(Into::into)
}

/// What a list reads: the columns of `select` of `table`, each row read
/// with `map`; its cursors are of `kind`.
struct Listing<T> {
    /// The cursors' kind.
    kind: &'static str,
    /// The table.
    table: &'static str,
    /// The select list.
    select: &'static str,
    /// Reads a row selected with `select`.
    map: fn(&Row) -> Result<T, StoreError>,
}

/// A keyset page over an id-ordered (newest first) table.
async fn id_page<T>(
    db: &Db,
    listing: Listing<T>,
    tenant: &TenantId,
    conditions: &[(&str, Arg)],
    page: &PageRequest,
) -> Result<Page<T>, ReadError> {
    let Listing {
        kind,
        table,
        select,
        map,
    } = listing;
    let mut sql = format!("SELECT {select} FROM {table} WHERE tenant = $1");
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

    pub(crate) fn db(&self) -> &Db {
        self.store.db()
    }

    /// One workflow.
    pub async fn workflow(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<WorkflowView>, ReadError> {
        one(
            self.db(),
            "rm_workflows",
            "",
            tenant,
            id,
            WorkflowView::from_row,
        )
        .await
    }

    /// Workflows, newest first; with `Documents::Skipped`, without their
    /// definitions and triggers.
    pub async fn workflows(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &WorkflowFilter,
        documents: Documents,
    ) -> Result<Page<WorkflowView>, ReadError> {
        let mut conditions = Vec::new();
        if let Some(part) = &filter.name_contains {
            conditions.push((
                "lower(name) LIKE $? ESCAPE '\\'",
                Arg::from(contains_pattern(part)),
            ));
        }
        if let Some(archived) = filter.archived {
            conditions.push(("archived = $?", Arg::from(archived)));
        }
        id_page(
            self.db(),
            Listing {
                kind: "workflow",
                table: "rm_workflows",
                select: WorkflowView::select(documents),
                map: WorkflowView::from_row_with(documents),
            },
            tenant,
            &conditions,
            page,
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
                let view = WorkflowVersionView::from_row(&row)?;
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
        one(
            self.db(),
            "rm_executions",
            "",
            tenant,
            id,
            ExecutionView::from_row,
        )
        .await
    }

    /// Executions, newest first; with `Documents::Skipped`, without their
    /// inputs and outputs.
    pub async fn executions(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &ExecutionFilter,
        documents: Documents,
    ) -> Result<Page<ExecutionView>, ReadError> {
        let mut conditions = Vec::new();
        if let Some(workflow_id) = &filter.workflow_id {
            conditions.push(("workflow_id = $?", Arg::from(workflow_id.as_str())));
        }
        if let Some(status) = &filter.status {
            conditions.push(("status = $?", Arg::from(status.as_str())));
        }
        if let Some(forked_from) = &filter.forked_from {
            conditions.push(("forked_from = $?", Arg::from(forked_from.as_str())));
        }
        id_page(
            self.db(),
            Listing {
                kind: "execution",
                table: "rm_executions",
                select: ExecutionView::select(documents),
                map: ExecutionView::from_row_with(documents),
            },
            tenant,
            &conditions,
            page,
        )
        .await
    }

    /// The steps of several executions (for a DataLoader), in node and
    /// attempt order; with `Documents::Skipped`, without their inputs and
    /// outputs.
    pub async fn execution_steps(
        &self,
        tenant: &TenantId,
        execution_ids: &[String],
        documents: Documents,
    ) -> Result<Vec<ExecutionStepView>, ReadError> {
        self.batched(
            &format!(
                "SELECT {} FROM rm_execution_steps WHERE tenant = $1 AND execution_id IN",
                ExecutionStepView::select(documents)
            ),
            "ORDER BY execution_id, scheduled_at, node_id, attempt",
            tenant,
            execution_ids,
            ExecutionStepView::from_row_with(documents),
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
            SecretView::from_row,
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
            Listing {
                kind: "secret",
                table: "rm_secrets",
                select: SecretView::select(Documents::Included),
                map: SecretView::from_row,
            },
            tenant,
            &conditions,
            page,
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
            McpServerView::from_row,
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
            Listing {
                kind: "mcp_server",
                table: "rm_mcp_servers",
                select: McpServerView::select(Documents::Included),
                map: McpServerView::from_row,
            },
            tenant,
            &conditions,
            page,
        )
        .await
    }

    /// A webhook of the tenant.
    pub async fn webhook(
        &self,
        tenant: &TenantId,
        id: &str,
    ) -> Result<Option<WebhookView>, ReadError> {
        one(
            self.db(),
            "rm_webhooks",
            "",
            tenant,
            id,
            WebhookView::from_row,
        )
        .await
    }

    /// The webhooks of several workflows (for a DataLoader), oldest first.
    pub async fn webhooks_of(
        &self,
        tenant: &TenantId,
        workflow_ids: &[String],
    ) -> Result<Vec<WebhookView>, ReadError> {
        self.batched(
            "SELECT * FROM rm_webhooks WHERE tenant = $1 AND workflow_id IN",
            "ORDER BY workflow_id, created_at, id",
            tenant,
            workflow_ids,
            WebhookView::from_row,
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
            McpToolView::from_row,
        )
        .await
    }

    /// Tool discovery across the tenant: every tool of every enabled MCP
    /// server, whose name or description contains `search` (any case),
    /// ordered by name, with the server it belongs to.
    pub async fn mcp_tool_search(
        &self,
        tenant: &TenantId,
        search: Option<&str>,
        page: &PageRequest,
    ) -> Result<Page<(McpToolView, McpServerView)>, ReadError> {
        let mut args = vec![Arg::from(tenant.as_str())];
        let mut sql = "SELECT t.server_id AS t_server_id, t.name AS t_name, t.tenant AS t_tenant, \
                t.description AS t_description, t.input_schema AS t_input_schema, s.* \
             FROM rm_mcp_tools t JOIN rm_mcp_servers s ON s.id = t.server_id \
             WHERE t.tenant = $1 AND s.tenant = $1 AND s.enabled = $2 AND s.deregistered = $3"
            .to_string();
        args.push(Arg::from(true));
        args.push(Arg::from(false));
        if let Some(search) = search.filter(|s| !s.is_empty()) {
            args.push(Arg::from(contains_pattern(search)));
            let n = args.len();
            sql.push_str(&format!(
                " AND (lower(t.name) LIKE ${n} ESCAPE '\\' \
                   OR lower(coalesce(t.description, '')) LIKE ${n} ESCAPE '\\')"
            ));
        }
        if let Some(after) = &page.after {
            let key = decode_cursor("tool", after)?;
            let (name, server) = key.split_once('\u{1f}').ok_or(ReadError::InvalidCursor)?;
            args.push(Arg::from(name));
            args.push(Arg::from(server));
            sql.push_str(&format!(
                " AND (t.name, t.server_id) > (${}, ${})",
                args.len() - 1,
                args.len()
            ));
        }
        let n = limit(page);
        args.push(Arg::from(n + 1));
        sql.push_str(&format!(
            " ORDER BY t.name, t.server_id LIMIT ${}",
            args.len()
        ));
        let rows = fetch(self.db(), &sql, &args).await?;
        let has_next_page = rows.len() as i64 > n;
        let items = rows
            .iter()
            .take(n as usize)
            .map(|r| {
                let tool = McpToolView {
                    server_id: r.text("t_server_id")?,
                    name: r.text("t_name")?,
                    tenant: r.text("t_tenant")?,
                    description: r.opt_text("t_description")?,
                    input_schema: r.json("t_input_schema")?,
                };
                let server = McpServerView::from_row(r)?;
                let key = format!("{}\u{1f}{}", tool.name, tool.server_id);
                Ok((cursor("tool", &key), (tool, server)))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Page {
            items,
            has_next_page,
        })
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

    /// The audit log, oldest first; with `Documents::Skipped`, without the
    /// payloads.
    pub async fn audit_log(
        &self,
        tenant: &TenantId,
        page: &PageRequest,
        filter: &AuditFilter,
        documents: Documents,
    ) -> Result<Page<AuditEntryView>, ReadError> {
        let after = match &page.after {
            Some(c) => decode_cursor("audit", c)?
                .parse::<Position>()
                .map_err(|_| ReadError::InvalidCursor)?,
            None => Position::ZERO,
        };
        let n = limit(page);
        let entries = self
            .audit_entries(tenant, after, filter, (n + 1) as u32, documents)
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
    ) -> Result<Vec<AuditEntryView>, ReadError> {
        self.audit_entries(tenant, after, filter, limit, Documents::Included)
            .await
    }

    /// [`Self::audit_after`], with or without the payloads.
    pub async fn audit_entries(
        &self,
        tenant: &TenantId,
        after: Position,
        filter: &AuditFilter,
        limit: u32,
        documents: Documents,
    ) -> Result<Vec<AuditEntryView>, ReadError> {
        let mut args = vec![
            Arg::from(tenant.as_str()),
            Arg::from(after.transaction.min(i64::MAX as u64) as i64),
            Arg::from(after.global),
        ];
        let conditions = Self::audit_conditions(filter, &mut args);
        args.push(Arg::from(i64::from(limit.clamp(1, 1_000))));
        let sql = format!(
            "SELECT {} FROM rm_audit WHERE tenant = $1 AND (transaction_id, global_position) > ($2, $3){conditions} \
             ORDER BY transaction_id, global_position LIMIT ${}",
            AuditRow::select(documents),
            args.len()
        );
        let rows = fetch(self.db(), &sql, &args).await?;
        let map = AuditRow::from_row_with(documents);
        Ok(rows
            .iter()
            .map(|row| map(row).map(AuditEntryView::from))
            .collect::<Result<_, _>>()?)
    }

    /// Up to `limit` audit entries after `after` and before `until`, of one
    /// tenant or of all, in commit order, handed to `each` one at a time as
    /// the database sends them: what `toolhub-replay export` streams, a page
    /// at a time. Only the columns written out are read, the payload as
    /// text, and nothing is collected, so memory holds one row whatever the
    /// page size, and the database produces rows while `each` formats the
    /// ones it has (`each` should not wait on a slow reader: see
    /// [`fetch_each`]). Returns the number of entries and the position of
    /// the last (`after` when there was none), where the next page starts.
    pub async fn export_each<E, F>(
        &self,
        tenant: Option<&TenantId>,
        after: Position,
        until: Option<Position>,
        filter: &AuditFilter,
        limit: u32,
        mut each: F,
    ) -> Result<(u64, Position), E>
    where
        E: From<StoreError>,
        F: FnMut(&AuditExportEntry<'_>) -> Result<(), E>,
    {
        let mut args = vec![
            Arg::from(after.transaction.min(i64::MAX as u64) as i64),
            Arg::from(after.global),
        ];
        let mut conditions = Self::audit_conditions(filter, &mut args);
        if let Some(until) = until {
            args.push(Arg::from(until.transaction.min(i64::MAX as u64) as i64));
            args.push(Arg::from(until.global));
            conditions.push_str(&format!(
                " AND (transaction_id, global_position) < (${}, ${})",
                args.len() - 1,
                args.len()
            ));
        }
        if let Some(tenant) = tenant {
            args.push(Arg::from(tenant.as_str()));
            conditions.push_str(&format!(" AND tenant = ${}", args.len()));
        }
        args.push(Arg::from(i64::from(limit.clamp(1, 50_000))));
        // `::text` spells the `jsonb` payload out on the server (SQLite
        // stores text, and its rewrite drops the cast).
        let sql = format!(
            "SELECT transaction_id, global_position, tenant, aggregate_type, aggregate_id, \
             sequence, event_type, event_version, actor, correlation_id, causation_id, \
             request_id, recorded_at, payload::text AS payload \
             FROM rm_audit WHERE (transaction_id, global_position) > ($1, $2){conditions} \
             ORDER BY transaction_id, global_position LIMIT ${}",
            args.len()
        );
        let mut last = after;
        let n = fetch_each(self.db(), &sql, &args, |row| {
            let entry = AuditExportEntry {
                position: row.int_position("transaction_id", "global_position")?,
                tenant: row.text_ref("tenant")?,
                aggregate_type: row.text_ref("aggregate_type")?,
                aggregate_id: row.text_ref("aggregate_id")?,
                sequence: row.uint("sequence")?,
                event_type: row.text_ref("event_type")?,
                event_version: row.text_ref("event_version")?,
                actor: row.text_ref("actor")?,
                correlation_id: row.text_ref("correlation_id")?,
                causation_id: row.text_ref("causation_id")?,
                request_id: row.text_ref("request_id")?,
                recorded_at: row.time("recorded_at")?,
                payload: row.text_ref("payload")?,
            };
            last = entry.position;
            each(&entry)
        })
        .await?;
        Ok((n, last))
    }

    /// Every event of one aggregate, in sequence order.
    pub async fn history(
        &self,
        tenant: &TenantId,
        aggregate_type: &str,
        aggregate_id: &str,
    ) -> Result<Vec<AuditEntryView>, ReadError> {
        let rows = fetch(
            self.db(),
            "SELECT * FROM rm_audit WHERE tenant = $1 AND aggregate_type = $2 AND aggregate_id = $3 ORDER BY sequence",
            &[tenant.as_str().into(), aggregate_type.into(), aggregate_id.into()],
        )
        .await?;
        Ok(rows
            .iter()
            .map(view::<AuditRow, AuditEntryView>)
            .collect::<Result<_, _>>()?)
    }
}
