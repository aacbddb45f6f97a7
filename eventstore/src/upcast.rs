//! Upcasting: old event versions are translated on load, never rewritten.

use cqrs_es::persist::{EventUpcaster, SerializedEvent};
use serde_json::Value;

/// A payload translation from one version of an event to the next.
pub type UpcastFn = dyn Fn(Value) -> Value + Send + Sync;

/// Translates one event type from one exact `event_version` to the next.
///
/// Versions are compared as the exact strings the catalogue lists
/// (`docs/events.md`), never parsed or normalised, so the version a reader
/// sees is the one the catalogue names. Chains (1.0 → 1.1 → 2.0) are one
/// `Upcast` per step, registered in order.
pub struct Upcast {
    /// The event type it applies to.
    event_type: String,
    /// The exact version it reads.
    from: String,
    /// The version it produces.
    to: String,
    /// Turns a payload of `from` into one of `to`.
    translate: Box<UpcastFn>,
}

impl Upcast {
    /// An upcast of `event_type` from version `from` to version `to`.
    pub fn new(event_type: &str, from: &str, to: &str, translate: Box<UpcastFn>) -> Self {
        Self {
            event_type: event_type.to_string(),
            from: from.to_string(),
            to: to.to_string(),
            translate,
        }
    }
}

impl EventUpcaster for Upcast {
    fn can_upcast(&self, event_type: &str, event_version: &str) -> bool {
        event_type == self.event_type && event_version == self.from
    }

    fn upcast(&self, event: SerializedEvent) -> SerializedEvent {
        SerializedEvent {
            payload: (self.translate)(event.payload),
            event_version: self.to.clone(),
            ..event
        }
    }
}
