//! Positions in the global log.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A point in the global log, in commit-safe order.
///
/// On PostgreSQL an event's position is its writing transaction's id and its
/// `global_position`; the log is ordered by the pair, and a reader only ever
/// passes transactions that can no longer commit anything new below it. On
/// SQLite there is one writer, so `transaction` is always 0 and the order is
/// `global_position` alone.
///
/// Positions are shown to clients as an opaque string (`"<transaction>.<global>"`):
/// both halves outgrow 2^53 and must not pass through a JSON number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct Position {
    /// The writing transaction's id (PostgreSQL `xid8`), 0 on SQLite.
    pub transaction: u64,
    /// The event's `global_position`.
    pub global: i64,
}

impl Position {
    /// Before the first event.
    pub const ZERO: Self = Self {
        transaction: 0,
        global: 0,
    };

    /// A position from its two halves.
    pub fn new(transaction: u64, global: i64) -> Self {
        Self {
            transaction,
            global,
        }
    }
}

impl fmt::Display for Position {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.transaction, self.global)
    }
}

/// A string that is not a position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid position {0:?}")]
pub struct InvalidPosition(pub String);

impl FromStr for Position {
    type Err = InvalidPosition;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || InvalidPosition(s.chars().take(64).collect());
        let (tx, global) = s.split_once('.').ok_or_else(invalid)?;
        let transaction = tx.parse().map_err(|_| invalid())?;
        let global: i64 = global.parse().map_err(|_| invalid())?;
        if global < 0 {
            return Err(invalid());
        }
        Ok(Self {
            transaction,
            global,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_position_survives_its_string_form() {
        let p = Position::new(u64::MAX - 1, i64::MAX);
        assert_eq!(p.to_string().parse::<Position>(), Ok(p));
    }

    #[test]
    fn positions_order_by_transaction_then_global() {
        assert!(Position::new(1, 99) < Position::new(2, 3));
        assert!(Position::new(2, 3) < Position::new(2, 4));
    }

    #[test]
    fn garbage_is_not_a_position() {
        for s in ["", "1", "a.b", "1.-2", "1.2.3"] {
            assert!(s.parse::<Position>().is_err(), "{s} parsed");
        }
    }
}
