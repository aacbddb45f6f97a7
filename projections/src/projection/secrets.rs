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
    /// A secret's metadata: a row of `rm_secrets`. There is no value field,
    /// on purpose.
    pub struct SecretView {
        /// The secret's id.
        id: String = text,
        /// The owning tenant.
        tenant: String = text,
        /// The aggregate's version.
        aggregate_version: u64 = uint as "seq",
        /// The name used in `{{secrets.NAME}}`.
        name: String = text,
        /// The description.
        description: String = text,
        /// How many times the value was rotated.
        rotation_count: u32 = small,
        /// Whether it was deleted (its key destroyed); queries skip these.
        deleted: bool = bool,
        /// Who created it.
        created_by: String = text,
        /// When it was created.
        created_at: DateTime<Utc> = time,
        /// When it last changed.
        updated_at: DateTime<Utc> = time,
    }
}
entity!(SecretView, aggregate_version);

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
            |event, payload: SecretEvent, row: Option<&mut SecretView>| {
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
                        return Ok(Some(SecretView {
                            id: event.aggregate_id.clone(),
                            tenant: tenant.to_string(),
                            aggregate_version: 0,
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
                                row.rotation_count = rotation;
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
