//! Leadership across processes: one holder of a named role at a time (the
//! engine's MCP health checker and sweeper; a scheduler).
//!
//! On PostgreSQL the holder takes a session-level advisory lock on a
//! connection of its own, outside the pool: the lock lives and dies with
//! that connection, so a holder that vanishes (a crash, a lost network)
//! releases it when its session ends. On SQLite, which one process uses, an
//! in-process registry plays the lock.

use std::collections::HashSet;
use std::sync::{Mutex, OnceLock};

use sqlx::PgConnection;

use crate::error::StoreError;
use crate::store::Db;

/// Held while leading; dropping it (or [`Leadership::release`]) gives the
/// role up.
pub struct Leadership {
    /// How the role is held.
    held: Held,
}

/// How a role is held on each backend.
enum Held {
    /// The connection whose session holds the advisory lock.
    Pg(PgConnection),
    /// The name in the process's registry, removed on drop.
    Lite {
        /// Held for its `Drop`.
        _name: Registered,
    },
}

/// A name in the process's registry, removed when dropped.
struct Registered(String);

impl Drop for Registered {
    fn drop(&mut self) {
        if let Ok(mut held) = registry().lock() {
            held.remove(&self.0);
        }
    }
}

/// The roles this process holds on SQLite databases, by file and name.
fn registry() -> &'static Mutex<HashSet<String>> {
    static HELD: OnceLock<Mutex<HashSet<String>>> = OnceLock::new();
    HELD.get_or_init(|| Mutex::new(HashSet::new()))
}

/// The advisory-lock key of a role: stable across processes and builds.
pub fn lock_key(role: &str) -> i64 {
    // FNV-1a, so that the key does not depend on Rust's hasher.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in role.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash as i64
}

impl Leadership {
    /// Tries once to take `role`; `None` when another holder has it.
    pub async fn try_take(db: &Db, role: &str) -> Result<Option<Self>, StoreError> {
        match db {
            Db::Postgres(pool) => {
                let mut conn = pool.acquire().await?.detach();
                let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
                    .bind(lock_key(&format!("toolhub-role:{role}")))
                    .fetch_one(&mut conn)
                    .await?;
                if locked {
                    Ok(Some(Self {
                        held: Held::Pg(conn),
                    }))
                } else {
                    let _ = sqlx::Connection::close(conn).await;
                    Ok(None)
                }
            }
            Db::Sqlite(pool) => {
                let name = format!("{}#{role}", pool.connect_options().get_filename().display());
                let mut held = registry()
                    .lock()
                    .map_err(|_| StoreError::Corrupt("poisoned leadership registry".into()))?;
                if held.insert(name.clone()) {
                    Ok(Some(Self {
                        held: Held::Lite {
                            _name: Registered(name),
                        },
                    }))
                } else {
                    Ok(None)
                }
            }
        }
    }

    /// Whether the role is still held: on PostgreSQL, whether the session
    /// that holds the lock still answers.
    pub async fn is_held(&mut self) -> bool {
        match &mut self.held {
            Held::Pg(conn) => sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok(),
            Held::Lite { .. } => true,
        }
    }

    /// Gives the role up.
    pub async fn release(self) {
        let Leadership { held } = self;
        if let Held::Pg(conn) = held {
            // Closing the session releases its advisory lock.
            let _ = sqlx::Connection::close(conn).await;
        }
    }
}
