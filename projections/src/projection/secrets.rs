//! The `secrets` read model (`rm_secrets`): secrets' metadata, never a
//! value, sealed or not — the table has no column that could hold one.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use toolhub_domain::secret::SecretEvent;
use toolhub_eventstore::sql::Conn;
use toolhub_eventstore::{RecordedEvent, StoreError};

use super::fold::{entity, fold, of_type, table_row};
use super::{Projection, Tables};

table_row! {
    /// A row of `rm_secrets`.
    pub(crate) struct SecretRow {
        /// The secret's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The sequence of the last event applied.
        seq: i64 = int,
        /// The name templates refer to.
        name: String = text,
        /// What it is for.
        description: String = text,
        /// How many times the value was rotated.
        rotation_count: i64 = int,
        /// Whether it was deleted (its key destroyed).
        deleted: bool = bool,
        /// Who created it.
        created_by: String = text,
        /// When.
        created_at: DateTime<Utc> = time,
        /// When it last changed.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(SecretRow);

/// Secrets' metadata: never a value, sealed or not.
pub struct SecretsProjection;

#[async_trait]
impl Projection for SecretsProjection {
    fn name(&self) -> &'static str {
        "secrets"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["rm_secrets"]
    }

    async fn apply(
        &self,
        conn: &mut Conn<'_>,
        tables: &Tables,
        events: &[RecordedEvent],
    ) -> Result<(), StoreError> {
        let events = of_type(events, "secret");
        if events.is_empty() {
            return Ok(());
        }
        fold(
            conn,
            &tables.name("rm_secrets"),
            &events,
            |event, payload: SecretEvent, row: Option<&mut SecretRow>| {
                let at = event.recorded_at;
                let row = match (payload, row) {
                    (
                        SecretEvent::SecretCreated {
                            tenant,
                            name,
                            description,
                            ..
                        },
                        _,
                    ) => {
                        return Ok(Some(SecretRow {
                            id: event.aggregate_id.clone(),
                            tenant: tenant.to_string(),
                            seq: 0,
                            name,
                            description,
                            rotation_count: 0,
                            deleted: false,
                            created_by: event.metadata.actor.clone(),
                            created_at: at,
                            updated_at: at,
                        }))
                    }
                    (_, None) => return Ok(None),
                    (payload, Some(row)) => {
                        match payload {
                            SecretEvent::SecretCreated { .. } => {}
                            SecretEvent::SecretRotated { rotation, .. } => {
                                row.rotation_count = i64::from(rotation);
                            }
                            SecretEvent::SecretDescribed { description } => {
                                row.description = description
                            }
                            SecretEvent::SecretDeleted => row.deleted = true,
                        }
                        row
                    }
                };
                row.updated_at = at;
                Ok(None)
            },
        )
        .await
    }
}
