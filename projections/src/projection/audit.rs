//! The `audit` read model (`rm_audit`): one row per event, keyed by its
//! position, with its metadata and its redacted payload.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use toolhub_eventstore::sql::{insert_rows, Conn, CopyRows};
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::table_row;
use super::{Projection, Tables};
use crate::redact::redact_payload;

table_row! {
    /// A row of `rm_audit`.
    pub(crate) struct AuditRow {
        /// The event's global position (the key).
        global_position: i64 = int,
        /// The writing transaction (0 on SQLite).
        transaction_id: i64 = int,
        /// The owning tenant.
        tenant: String = text,
        /// The aggregate's type.
        aggregate_type: String = text,
        /// The aggregate's id.
        aggregate_id: String = text,
        /// The event's sequence in its aggregate.
        sequence: i64 = int,
        /// The stable event type.
        event_type: String = text,
        /// The event version.
        event_version: String = text,
        /// Who caused it.
        actor: String = text,
        /// The user action it belongs to.
        correlation_id: String = text,
        /// What caused it.
        causation_id: String = text,
        /// The request that carried it.
        request_id: String = text,
        /// When it was recorded.
        recorded_at: DateTime<Utc> = time,
        /// The payload, redacted.
        payload: Value = json [document],
    }
}

impl AuditRow {
    /// The row of one event.
    fn of(e: &RecordedEvent) -> Self {
        Self {
            global_position: e.position.global,
            transaction_id: transaction_column(e),
            tenant: e.metadata.tenant.clone(),
            aggregate_type: e.aggregate_type.clone(),
            aggregate_id: e.aggregate_id.clone(),
            sequence: e.sequence as i64,
            event_type: e.event_type.clone(),
            event_version: e.event_version.clone(),
            actor: e.metadata.actor.clone(),
            correlation_id: e.metadata.correlation_id.clone(),
            causation_id: e.metadata.causation_id.clone(),
            request_id: e.metadata.request_id.clone(),
            recorded_at: e.recorded_at,
            payload: redact_payload(&e.aggregate_type, &e.payload).into_owned(),
        }
    }
}

/// The transaction id as the `bigint` column holds it.
fn transaction_column(e: &RecordedEvent) -> i64 {
    e.position.transaction.min(i64::MAX as u64) as i64
}

/// One row per event, with its metadata and its redacted payload.
pub struct AuditProjection;

#[async_trait]
impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_audit"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let table = tables.name("rm_audit");
        if let (Conn::Pg(c), true) = (&mut *conn, tables.is_replay()) {
            // Straight from the events, without an owned copy of each.
            let mut rows = CopyRows::new(AuditRow::COLUMNS.len());
            for e in events {
                rows.row();
                rows.int(Some(e.position.global));
                rows.int(Some(transaction_column(e)));
                rows.text(Some(&e.metadata.tenant))?;
                rows.text(Some(&e.aggregate_type))?;
                rows.text(Some(&e.aggregate_id))?;
                rows.int(Some(e.sequence as i64));
                rows.text(Some(&e.event_type))?;
                rows.text(Some(&e.event_version))?;
                rows.text(Some(&e.metadata.actor))?;
                rows.text(Some(&e.metadata.correlation_id))?;
                rows.text(Some(&e.metadata.causation_id))?;
                rows.text(Some(&e.metadata.request_id))?;
                rows.time(Some(&e.recorded_at))?;
                rows.json(Some(&redact_payload(&e.aggregate_type, &e.payload)))?;
            }
            return rows.copy_into(c, &table, AuditRow::COLUMNS).await;
        }
        let rows = events.iter().map(|e| AuditRow::of(e).into_args()).collect();
        insert_rows(
            conn,
            &table,
            AuditRow::COLUMNS,
            rows,
            "ON CONFLICT (global_position) DO NOTHING",
        )
        .await?;
        Ok(())
    }
}
