//! A small aggregate for exercising the event store without depending on the
//! shape of the domain's aggregates.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use toolhub_domain::{AggregateRoot, CommandTraits, Role, TenantId};

/// A counter that belongs to a tenant.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    /// The owner, once created.
    pub tenant: Option<TenantId>,
    /// The sum of every amount added.
    pub value: i64,
    /// How many additions were applied.
    pub adds: u64,
}

/// What a counter can be asked.
#[derive(Debug, Clone)]
pub enum CounterCommand {
    /// Creates the counter for a tenant.
    Create {
        /// The owner.
        tenant: TenantId,
    },
    /// Adds `amount`; `retry_safe` says whether the bus may retry it.
    Add {
        /// How much.
        amount: i64,
        /// Whether the bus may decide again after losing a race.
        retry_safe: bool,
    },
    /// Appends one event per amount, atomically.
    AddMany {
        /// One event each.
        amounts: Vec<i64>,
    },
    /// Changes nothing.
    Touch,
}

/// What happened to a counter.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CounterEvent {
    /// It was created.
    Created {
        /// The owner.
        tenant: TenantId,
    },
    /// Version 2.0; version 1.0 called the field `n`.
    Added {
        /// How much.
        amount: i64,
    },
}

impl DomainEvent for CounterEvent {
    fn event_type(&self) -> String {
        match self {
            Self::Created { .. } => "CounterCreated".into(),
            Self::Added { .. } => "CounterAdded".into(),
        }
    }

    fn event_version(&self) -> String {
        match self {
            Self::Created { .. } => "1.0".into(),
            Self::Added { .. } => "2.0".into(),
        }
    }
}

/// Why a counter refused a command.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum CounterError {
    /// Create on an existing counter.
    #[error("counter already exists")]
    AlreadyExists,
    /// Anything else before Create.
    #[error("counter not found")]
    NotFound,
}

impl Aggregate for Counter {
    const TYPE: &'static str = "Counter";
    type Command = CounterCommand;
    type Event = CounterEvent;
    type Error = CounterError;
    type Services = ();

    async fn handle(
        &mut self,
        command: Self::Command,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), Self::Error> {
        match command {
            CounterCommand::Create { tenant } => {
                if self.tenant.is_some() {
                    return Err(CounterError::AlreadyExists);
                }
                sink.write(CounterEvent::Created { tenant }, self).await;
            }
            CounterCommand::Add { amount, .. } => {
                if self.tenant.is_none() {
                    return Err(CounterError::NotFound);
                }
                sink.write(CounterEvent::Added { amount }, self).await;
            }
            CounterCommand::AddMany { amounts } => {
                if self.tenant.is_none() {
                    return Err(CounterError::NotFound);
                }
                for amount in amounts {
                    sink.write(CounterEvent::Added { amount }, self).await;
                }
            }
            CounterCommand::Touch => {
                if self.tenant.is_none() {
                    return Err(CounterError::NotFound);
                }
            }
        }
        Ok(())
    }

    fn apply(&mut self, event: Self::Event) {
        match event {
            CounterEvent::Created { tenant } => self.tenant = Some(tenant),
            CounterEvent::Added { amount } => {
                self.value += amount;
                self.adds += 1;
            }
        }
    }
}

impl AggregateRoot for Counter {
    fn tenant(&self) -> Option<&TenantId> {
        self.tenant.as_ref()
    }
}

impl CommandTraits for CounterCommand {
    fn is_creation(&self) -> bool {
        matches!(self, Self::Create { .. })
    }

    fn is_retry_safe(&self) -> bool {
        match self {
            Self::Create { .. } | Self::AddMany { .. } => false,
            Self::Add { retry_safe, .. } => *retry_safe,
            Self::Touch => true,
        }
    }

    fn required_role(&self) -> Role {
        Role::Editor
    }
}

/// A tenant id from a name known to be valid.
pub fn tenant(name: &str) -> TenantId {
    TenantId::parse(name).expect("a valid tenant")
}
