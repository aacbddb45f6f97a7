//! Errors of the event store: infrastructure faults, kept apart from the
//! domain's own rejections.

use std::fmt;

/// A fault of the storage layer: the database, the serialised form of an
/// event, or the key store. Never a domain rule.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL is neither `postgres://…` nor `sqlite:…`, or is
    /// malformed.
    #[error("unsupported database URL {url:?}: expected postgres://… or sqlite://…")]
    InvalidUrl {
        /// The URL as given, with any password removed.
        url: String,
    },
    /// The database could not be reached or answered with an error.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the migrations failed.
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A stored event or snapshot could not be (de)serialised.
    #[error("serialisation error: {0}")]
    Serialization(#[from] serde_json::Error),
    /// The postgres-es or sqlite-es repository failed.
    #[error("event repository error: {0}")]
    Repository(String),
    /// A stored value is not what the schema promises.
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
}

impl StoreError {
    /// Whether the database could not be used just now, through no fault of
    /// the request: it is down or restarting, refuses connections, dropped
    /// the connection, or no pooled connection came free in time. The same
    /// request may well succeed shortly.
    pub fn is_unavailable(&self) -> bool {
        let Self::Database(error) = self else {
            return false;
        };
        match error {
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => true,
            sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                // Connection exceptions, insufficient resources (too many
                // connections), and the server shutting down, crashing or
                // starting up (57P01, 57P02, 57P03).
                code.starts_with("08")
                    || code.starts_with("53")
                    || matches!(code.as_ref(), "57P01" | "57P02" | "57P03")
            }),
            _ => false,
        }
    }

    /// Whether the database cancelled the statement for running, or
    /// waiting for a lock, longer than allowed (`statement_timeout`,
    /// `lock_timeout`). Nothing of it was committed.
    pub fn is_timeout(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => {
                matches!(db.code().as_deref(), Some("57014" | "55P03"))
            }
            _ => false,
        }
    }
}

impl From<cqrs_es::persist::PersistenceError> for StoreError {
    /// Loads go through postgres-es and sqlite-es, which box the database's
    /// error: it is taken back out, so that an unavailable database or a
    /// cancelled statement is told apart from other failures.
    fn from(value: cqrs_es::persist::PersistenceError) -> Self {
        use cqrs_es::persist::PersistenceError as P;
        match value {
            P::ConnectionError(error) | P::UnknownError(error) => {
                match error.downcast::<sqlx::Error>() {
                    Ok(database) => Self::Database(*database),
                    Err(other) => Self::Repository(other.to_string()),
                }
            }
            other => Self::Repository(other.to_string()),
        }
    }
}

/// The outcome of a command that did not commit.
#[derive(Debug, thiserror::Error)]
pub enum CommandError<E: std::error::Error> {
    /// The aggregate rejected the command.
    #[error(transparent)]
    Domain(E),
    /// The aggregate belongs to another tenant. Callers must present this
    /// exactly like a missing entity.
    #[error("not found")]
    NotFound,
    /// Another writer changed the aggregate first: either the caller's
    /// `expected_version` is stale, or the bounded retry ran out.
    #[error("conflict: {0}")]
    Conflict(ConflictKind),
    /// The storage layer failed; nothing was committed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a command conflicted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConflictKind {
    /// The caller expected one version and the aggregate is at another.
    ExpectedVersion {
        /// The version the caller expected.
        expected: u64,
        /// The version the aggregate is at.
        actual: u64,
    },
    /// A concurrent writer appended at the same sequence, and the command is
    /// not safe to retry (or its retries ran out).
    LostRace,
    /// Another aggregate of the same kind and tenant holds the name the
    /// command would claim.
    NameTaken,
}

impl fmt::Display for ConflictKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ExpectedVersion { expected, actual } => {
                write!(f, "expected version {expected}, found {actual}")
            }
            Self::LostRace => f.write_str("a concurrent command changed the aggregate first"),
            Self::NameTaken => f.write_str("the name is taken"),
        }
    }
}

/// Returns true when `err` is a unique-key violation, which on the events
/// table means another writer took the same sequence number.
pub(crate) fn is_unique_violation(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.is_unique_violation(),
        _ => false,
    }
}
