//! Test support: a fresh database per test, dropped afterwards.
//!
//! Tests connect to `DATABASE_URL` when it is set, and otherwise to
//! `postgres://postgres@127.0.0.1:5432/postgres`. A missing server is a test
//! failure with a message that says how to start one, never a skipped test.

pub mod counter;

use std::path::PathBuf;

use sqlx::Connection;
use uuid::Uuid;

/// The server tests create their databases on.
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database that exists for one test.
pub struct TestDb {
    /// The database's URL.
    url: String,
    /// What to remove when the test ends.
    kind: Kind,
}

enum Kind {
    /// A database on the shared server, dropped through the admin URL.
    Postgres {
        /// The server's URL (its `postgres` database).
        admin: String,
        /// The test database's name.
        name: String,
    },
    /// A file in a directory of its own, removed with it.
    Sqlite {
        /// The directory.
        dir: PathBuf,
    },
}

fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, format!("?{q}")),
        None => (url, String::new()),
    };
    let scheme_end = base.find("://").map_or(0, |i| i + 3);
    let server = match base[scheme_end..].find('/') {
        Some(i) => &base[..scheme_end + i],
        None => base,
    };
    format!("{server}/{name}{query}")
}

impl TestDb {
    /// A new, empty PostgreSQL database.
    pub async fn postgres() -> Self {
        let admin = admin_url();
        let name = format!("toolhub_test_{}", Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(&admin)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "PostgreSQL is not reachable at {} ({e}). Start it (for example \
                 `pg_ctlcluster 15 main start`) or set DATABASE_URL.",
                    crate::store::redact_url(&admin)
                )
            });
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .expect("create the test database");
        let _ = conn.close().await;
        Self {
            url: with_database(&admin, &name),
            kind: Kind::Postgres { admin, name },
        }
    }

    /// A new SQLite database file in its own temporary directory.
    pub async fn sqlite() -> Self {
        let dir = std::env::temp_dir().join(format!("toolhub-test-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        let url = format!("sqlite://{}", dir.join("toolhub.db").display());
        Self {
            url,
            kind: Kind::Sqlite { dir },
        }
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// True for PostgreSQL.
    pub fn is_postgres(&self) -> bool {
        matches!(self.kind, Kind::Postgres { .. })
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        match &self.kind {
            Kind::Sqlite { dir } => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Kind::Postgres { admin, name } => {
                let admin = admin.clone();
                let name = name.clone();
                // Drop may run inside a runtime; a thread of its own can block.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&admin).await.ok()?;
                        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                            .execute(&mut conn)
                            .await
                            .ok()?;
                        conn.close().await.ok()
                    })
                });
                let _ = dropped.join();
            }
        }
    }
}
