//! Toolhub's event log.
//!
//! Every change in Toolhub is a command that appends immutable events here.
//! This crate owns the log on both backends — PostgreSQL through postgres-es
//! and the embedded SQLite through sqlite-es — and everything that touches it
//! directly:
//!
//! - [`open`]: connect and migrate (`postgres://…` or `sqlite://…`);
//! - [`CommandBus`]: load an aggregate (cache, snapshot, tail), let it decide,
//!   append its events with their metadata in one statement, with a typed
//!   conflict and a bounded retry for retry-safe commands;
//! - [`EventStore::read_after`]: the global log in commit-safe order, which
//!   never skips an event that commits late;
//! - [`EventStore::subscribe`]: "the log grew" notifications (PostgreSQL
//!   `LISTEN/NOTIFY`, an in-process channel on SQLite);
//! - [`KeyStore`] and [`SecretVault`]: envelope encryption of secret values
//!   and crypto-shredding on delete; [`Webhooks`]: webhooks' signing secrets,
//!   sealed outside the log, and the commands around them.
//!
//! This crate never decides whether a command is allowed by a domain rule
//! (that is the aggregates' job in `toolhub-domain`), never builds read
//! models, and never sees a secret's plaintext outside [`KeyStore`].

pub mod api_keys;
pub mod bus;
pub mod error;
pub mod history;
pub mod keys;
pub mod leader;
pub mod metadata;
pub mod position;
pub mod secrets;
pub mod sql;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod upcast;
pub mod webhooks;
pub mod work;

pub use api_keys::{ApiKeyRecord, ApiKeys, NewApiKey};
pub use bus::{BusOptions, CommandBus, Committed, Companion};
pub use error::{CommandError, ConflictKind, StoreError};
pub use history::Until;
pub use keys::{KeyError, KeyStore, MasterKey};
pub use leader::Leadership;
pub use metadata::{CommandContext, EventMetadata};
pub use position::Position;
pub use secrets::{SecretCommandError, SecretVault};
pub use store::{
    embedded_url, migrate, open, open_with, Db, EventStore, Notifications, PgSessionSettings,
    RawEvent, RecordedEvent, StoreOptions,
};
pub use upcast::Upcast;
pub use webhooks::{DeliveryKeys, WebhookCommandError, Webhooks};
pub use work::{Claimed, KeyReservation, WorkQueue};
