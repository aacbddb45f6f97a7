//! Where this replica stands, kept in memory for `/health/ready` and
//! `/metrics`: whether the database answered its last check, the head of the
//! log, the position every read model has reached, since when the oldest
//! unapplied position has been waiting, and which projectors are stopped at
//! an event they cannot decode or apply.
//!
//! A background task ([`crate::state::follow_projections`]) keeps it up to
//! date: the head moves with a cheap indexed read of the head each second
//! (and with every mutation of this process as it commits); the applied
//! position with every projector announcement and a read of the
//! checkpoints. A scrape or a probe reads only memory, so a
//! load balancer probing every replica every second costs the database
//! nothing, and a slow or locked log never makes a probe slow.

use std::collections::VecDeque;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use toolhub_eventstore::Position;
use toolhub_projections::Stall;

/// How many distinct unapplied heads are remembered with their time; past
/// that the newest one is moved forward instead, which can only make the
/// oldest unapplied age err on the old side.
const PENDING: usize = 1024;

/// The latest checks, updated by the background task.
#[derive(Default)]
pub struct Standing {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    /// The last database check: whether it answered, and when.
    database: Option<(bool, Instant)>,
    /// The newest position known to be committed.
    head: Position,
    /// The position every read model has applied.
    applied: Position,
    /// When `applied` was last read.
    applied_at: Option<Instant>,
    /// Heads seen above `applied`, with when each was first seen, oldest
    /// first.
    pending: VecDeque<(Position, Instant)>,
    /// The projections stopped at an event they cannot decode or apply, as
    /// last read, and when.
    stalls: Option<(Vec<Stall>, Instant)>,
}

/// A copy of the standing at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// Whether the database answered its last check, and how long ago that
    /// check was.
    pub database: Option<(bool, Duration)>,
    /// The head of the log.
    pub head: Position,
    /// The position every read model has applied.
    pub applied: Position,
    /// How long ago the applied position was read.
    pub applied_age: Option<Duration>,
    /// How many events the slowest read model is behind: exact on SQLite,
    /// an upper bound on PostgreSQL (a rolled-back insert leaves a gap in
    /// the global positions).
    pub behind: u64,
    /// How long the oldest unapplied event has been waiting (since this
    /// replica saw it).
    pub oldest_unapplied: Option<Duration>,
    /// The projections stopped at an event, as last read, and how long ago
    /// they were read (`None`: never read).
    pub stalls: Option<(Vec<Stall>, Duration)>,
}

impl Standing {
    /// Records a database check.
    pub fn saw_database(&self, ok: bool) {
        self.inner.lock().database = Some((ok, Instant::now()));
    }

    /// Records a committed position.
    pub fn saw_head(&self, position: Position) {
        let mut inner = self.inner.lock();
        if position <= inner.head {
            return;
        }
        inner.head = position;
        if position <= inner.applied {
            return;
        }
        if inner.pending.len() < PENDING {
            inner.pending.push_back((position, Instant::now()));
        } else if let Some(newest) = inner.pending.back_mut() {
            newest.0 = position;
        }
    }

    /// Records the position every read model has applied.
    pub fn saw_applied(&self, position: Position) {
        let mut inner = self.inner.lock();
        inner.applied = inner.applied.max(position);
        inner.applied_at = Some(Instant::now());
        let applied = inner.applied;
        while inner.pending.front().is_some_and(|(p, _)| *p <= applied) {
            inner.pending.pop_front();
        }
        if applied > inner.head {
            inner.head = applied;
        }
    }

    /// Records the projections stopped now.
    pub fn saw_stalls(&self, stalls: Vec<Stall>) {
        self.inner.lock().stalls = Some((stalls, Instant::now()));
    }

    /// The standing now.
    pub fn snapshot(&self) -> Snapshot {
        let inner = self.inner.lock();
        let now = Instant::now();
        Snapshot {
            database: inner.database.map(|(ok, at)| (ok, now - at)),
            head: inner.head,
            applied: inner.applied,
            applied_age: inner.applied_at.map(|at| now - at),
            behind: if inner.head > inner.applied {
                inner
                    .head
                    .global
                    .saturating_sub(inner.applied.global)
                    .max(1)
                    .try_into()
                    .unwrap_or(u64::MAX)
            } else {
                0
            },
            oldest_unapplied: inner.pending.front().map(|(_, at)| now - *at),
            stalls: inner
                .stalls
                .as_ref()
                .map(|(stalls, at)| (stalls.clone(), now - *at)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(global: i64) -> Position {
        Position {
            transaction: 0,
            global,
        }
    }

    #[test]
    fn the_lag_follows_the_head_and_the_applied_position() {
        let pause = Duration::from_millis(100);
        let standing = Standing::default();
        standing.saw_applied(at(3));
        standing.saw_head(at(3));
        assert_eq!(standing.snapshot().behind, 0);
        assert_eq!(standing.snapshot().oldest_unapplied, None);

        standing.saw_head(at(5));
        std::thread::sleep(pause);
        standing.saw_head(at(9));
        let snapshot = standing.snapshot();
        assert_eq!(snapshot.behind, 6);
        let waited = snapshot.oldest_unapplied.expect("5 waits");
        assert!(waited >= pause, "{waited:?}");

        // Applying up to 5 leaves 9 waiting, seen later than 5.
        standing.saw_applied(at(5));
        let snapshot = standing.snapshot();
        assert_eq!(snapshot.behind, 4);
        assert!(snapshot.oldest_unapplied.expect("9 waits") < waited);

        standing.saw_applied(at(9));
        assert_eq!(standing.snapshot().behind, 0);
        assert_eq!(standing.snapshot().oldest_unapplied, None);
    }
}
