//! What every read model shares: typed rows declared once ([`table_row!`]),
//! and the batch fold of entity tables — load the rows a batch touches with
//! one `IN (…)` query, skip the events a row has applied already (its
//! `seq`), apply the rest in memory, write the changed rows back with one
//! upsert.

use std::collections::{BTreeSet, HashMap};

use serde::de::DeserializeOwned;
use toolhub_eventstore::sql::{insert_rows, placeholders, upsert_tail, Arg, Conn, Row};
use toolhub_eventstore::{RecordedEvent, StoreError};

/// Declares the row type of a read-model table — which is also the view
/// the read queries return: the struct, its column list (each field's name,
/// or the column named after `as`), `from_row` (each field read with the
/// named [`Row`] accessor) and `into_args` (each field as an [`Arg`]).
/// Columns are declared once, so a statement, a row, its arguments and what
/// the API shows cannot disagree.
///
/// A field marked `[document]` holds a large JSON document (a definition,
/// an input, a payload): lists read it only when their query asks for it.
/// `select(Documents::Skipped)` leaves those columns out of the select list,
/// and `from_row_without_documents` leaves their fields at their defaults
/// (`null`, `None`), which the API never shows (see
/// [`crate::views::Documents`]).
macro_rules! table_row {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $( $(#[$field_meta:meta])* $field:ident : $ty:ty = $get:ident $(as $column:literal)? $([$document:ident])?, )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, serde::Serialize)]
        #[serde(rename_all = "camelCase")]
        $vis struct $name {
            $( $(#[$field_meta])* pub $field: $ty, )*
        }

        impl $name {
            /// The table's columns, in the order of the fields.
            pub(crate) const COLUMNS: &'static [&'static str] =
                &[$( $crate::projection::fold::column!($field $(, $column)?) ),*];

            /// Reads a row selected with every column.
            pub(crate) fn from_row(
                r: &toolhub_eventstore::sql::Row,
            ) -> Result<Self, toolhub_eventstore::StoreError> {
                Ok(Self {
                    $( $field: r.$get($crate::projection::fold::column!($field $(, $column)?))?, )*
                })
            }

            /// Which of [`Self::COLUMNS`] hold documents.
            const DOCUMENTS: &'static [bool] =
                &[$( $crate::projection::fold::is_document!($($document)?) ),*];

            /// The select list of a read with or without the documents,
            /// made once per table.
            pub fn select(documents: $crate::views::Documents) -> &'static str {
                static ALL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                static WITHOUT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
                let (cell, skip) = match documents {
                    $crate::views::Documents::Included => (&ALL, false),
                    $crate::views::Documents::Skipped => (&WITHOUT, true),
                };
                cell.get_or_init(|| {
                    Self::COLUMNS
                        .iter()
                        .zip(Self::DOCUMENTS)
                        .filter(|(_, document)| !(skip && **document))
                        .map(|(column, _)| *column)
                        .collect::<Vec<_>>()
                        .join(", ")
                })
            }

            /// Reads a row selected with `select(Documents::Skipped)`: the
            /// documents stay at their defaults.
            pub fn from_row_without_documents(
                r: &toolhub_eventstore::sql::Row,
            ) -> Result<Self, toolhub_eventstore::StoreError> {
                Ok(Self {
                    $( $field: $crate::projection::fold::read_unless_document!(
                        r, $get, $crate::projection::fold::column!($field $(, $column)?) $(, $document)?
                    ), )*
                })
            }

            /// Reads a row selected with `select(documents)`.
            pub fn from_row_with(
                documents: $crate::views::Documents,
            ) -> fn(&toolhub_eventstore::sql::Row) -> Result<Self, toolhub_eventstore::StoreError> {
                match documents {
                    $crate::views::Documents::Included => Self::from_row,
                    $crate::views::Documents::Skipped => Self::from_row_without_documents,
                }
            }

            /// The row's values, in the order of [`Self::COLUMNS`].
            pub(crate) fn into_args(self) -> Vec<toolhub_eventstore::sql::Arg> {
                vec![$( self.$field.into(), )*]
            }
        }

        impl $crate::projection::fold::TableRow for $name {
            fn from_row(
                r: &toolhub_eventstore::sql::Row,
            ) -> Result<Self, toolhub_eventstore::StoreError> {
                $name::from_row(r)
            }
        }
    };
}

/// A field's column: its own name, or the one given.
macro_rules! column {
    ($field:ident) => {
        stringify!($field)
    };
    ($field:ident, $column:literal) => {
        $column
    };
}
/// Whether a field of [`table_row!`] is marked `[document]`.
macro_rules! is_document {
    () => {
        false
    };
    ($document:ident) => {
        true
    };
}

/// A field read from a row, or, for a document, its default.
macro_rules! read_unless_document {
    ($r:ident, $get:ident, $column:expr) => {
        $r.$get($column)?
    };
    ($r:ident, $get:ident, $column:expr, $document:ident) => {
        Default::default()
    };
}
pub(crate) use column;
pub(crate) use is_document;
pub(crate) use read_unless_document;
pub(crate) use table_row;

/// A row type declared with [`table_row!`], for code generic over tables
/// (the read queries map any of them to its view).
pub(crate) trait TableRow: Sized {
    /// Reads a row selected with every column.
    fn from_row(row: &Row) -> Result<Self, StoreError>;
}

/// A row of an entity table: keyed by its aggregate's id, and stamped with
/// the sequence of the last event applied to it.
pub(crate) trait Entity: Sized {
    /// The table's columns.
    const COLUMNS: &'static [&'static str];
    /// Reads a row.
    fn from_row(row: &Row) -> Result<Self, StoreError>;
    /// The row's values.
    fn into_args(self) -> Vec<Arg>;
    /// The aggregate's id.
    fn id(&self) -> &str;
    /// The sequence of the last event applied.
    fn seq(&self) -> i64;
    /// Records that the event at `seq` was applied.
    fn set_seq(&mut self, seq: i64);
}

/// Implements [`Entity`] for a [`table_row!`] type with an `id` field and
/// the named field for the `seq` column.
macro_rules! entity {
    ($name:ident, $seq:ident) => {
        impl $crate::projection::fold::Entity for $name {
            const COLUMNS: &'static [&'static str] = $name::COLUMNS;
            fn from_row(
                row: &toolhub_eventstore::sql::Row,
            ) -> Result<Self, toolhub_eventstore::StoreError> {
                $name::from_row(row)
            }
            fn into_args(self) -> Vec<toolhub_eventstore::sql::Arg> {
                $name::into_args(self)
            }
            fn id(&self) -> &str {
                &self.id
            }
            fn seq(&self) -> i64 {
                self.$seq.min(i64::MAX as u64) as i64
            }
            fn set_seq(&mut self, seq: i64) {
                self.$seq = seq.max(0) as u64;
            }
        }
    };
}
pub(crate) use entity;

/// Decodes an event's payload into the aggregate's event type. An event the
/// read model cannot decode is an error naming its position and type: the
/// projector stops at it (see `crate::stall`) rather than skip it.
pub(crate) fn decode<E: DeserializeOwned>(event: &RecordedEvent) -> Result<E, StoreError> {
    // Deserialise from a borrowed value: no copy of the payload.
    E::deserialize(&event.payload).map_err(|error| {
        StoreError::Corrupt(format!(
            "the {} event {} {} of {} at position {} does not decode: {error}",
            event.aggregate_type,
            event.event_type,
            event.event_version,
            event.aggregate_id,
            event.position
        ))
    })
}

/// Every row of `table` whose `key` is one of `ids`, read 500 ids at a time.
pub(crate) async fn load_rows(
    conn: &mut Conn<'_>,
    table: &str,
    key: &str,
    ids: &[String],
) -> Result<Vec<Row>, StoreError> {
    let mut rows = Vec::new();
    for chunk in ids.chunks(500) {
        let sql = format!(
            "SELECT * FROM {table} WHERE {key} IN ({})",
            placeholders(1, chunk.len())
        );
        let args: Vec<Arg> = chunk.iter().map(|id| Arg::from(id.as_str())).collect();
        rows.extend(conn.fetch(&sql, &args).await?);
    }
    Ok(rows)
}

/// The distinct aggregate ids of `events`, sorted.
pub(crate) fn ids_of(events: &[&RecordedEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.aggregate_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// The events of one aggregate type, in log order.
pub(crate) fn of_type<'a>(
    events: &'a [RecordedEvent],
    aggregate_type: &str,
) -> Vec<&'a RecordedEvent> {
    events
        .iter()
        .filter(|e| e.aggregate_type == aggregate_type)
        .collect()
}

/// Folds `events` (all of one aggregate type) into the entity rows of
/// `table` and writes back the rows that changed.
///
/// `apply` gets each event that the row has not applied yet, decoded, with
/// the row as it stands (`None` before the aggregate's first event). It
/// returns a new row for a creating event, or `None` after changing the row
/// in place. An event for a row that does not exist and that creates
/// nothing is logged and skipped. The fold stamps each changed row with the
/// event's sequence.
pub(crate) async fn fold<R, E>(
    conn: &mut Conn<'_>,
    table: &str,
    events: &[&RecordedEvent],
    mut apply: impl FnMut(&RecordedEvent, E, Option<&mut R>) -> Result<Option<R>, StoreError>,
) -> Result<(), StoreError>
where
    R: Entity,
    E: DeserializeOwned,
{
    let mut rows: HashMap<String, R> = HashMap::new();
    for r in load_rows(conn, table, "id", &ids_of(events)).await? {
        let row = R::from_row(&r)?;
        rows.insert(row.id().to_string(), row);
    }
    let mut dirty = BTreeSet::new();
    for event in events {
        let seq = event.sequence as i64;
        let id = &event.aggregate_id;
        let current = rows.get_mut(id);
        if current.as_ref().is_some_and(|r| r.seq() >= seq) {
            continue;
        }
        let payload = decode::<E>(event)?;
        let existed = current.is_some();
        match apply(event, payload, current)? {
            Some(mut created) => {
                created.set_seq(seq);
                rows.insert(id.clone(), created);
            }
            None if existed => {
                if let Some(row) = rows.get_mut(id) {
                    row.set_seq(seq);
                }
            }
            None => {
                tracing::error!(
                    position = %event.position,
                    event_type = %event.event_type,
                    "an event before its aggregate's first event"
                );
                continue;
            }
        }
        dirty.insert(id.clone());
    }
    let upserts: Vec<Vec<Arg>> = dirty
        .iter()
        .filter_map(|id| rows.remove(id))
        .map(R::into_args)
        .collect();
    insert_rows(
        conn,
        table,
        R::COLUMNS,
        upserts,
        &upsert_tail(&["id"], R::COLUMNS),
    )
    .await?;
    Ok(())
}
