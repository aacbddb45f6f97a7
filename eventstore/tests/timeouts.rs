//! Bounded waits on the database: a statement past `statement_timeout`, a
//! session idle in a transaction past `idle_in_transaction_session_timeout`,
//! and a full pool each end in an error, never a hang.

use std::time::Duration;

use toolhub_eventstore::sql::{exec, Pooled, Tx};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{open_with, StoreError, StoreOptions};

/// The error's SQLSTATE, if the database gave one.
fn sqlstate(error: &StoreError) -> Option<String> {
    match error {
        StoreError::Database(sqlx::Error::Database(e)) => e.code().map(|c| c.into_owned()),
        _ => None,
    }
}

#[tokio::test]
async fn a_statement_past_the_statement_timeout_fails_with_a_timeout_on_postgres() {
    let db = TestDb::postgres().await;
    let store = open_with(
        db.url(),
        StoreOptions {
            statement_timeout: Some(Duration::from_millis(200)),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open");
    // The outer bound only keeps a broken build from hanging the suite.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        exec(store.db(), "SELECT pg_sleep(10)", &[]),
    )
    .await
    .expect("the statement is cancelled by the server, not waited for");
    let error = result.expect_err("a statement past the timeout fails");
    // 57014: query_canceled, what statement_timeout raises.
    assert_eq!(sqlstate(&error).as_deref(), Some("57014"), "{error}");
    // The pool's connections keep working.
    exec(store.db(), "SELECT 1", &[])
        .await
        .expect("still usable");
}

#[tokio::test]
async fn a_session_idle_in_a_transaction_is_ended_by_the_server_on_postgres() {
    let db = TestDb::postgres().await;
    let store = open_with(
        db.url(),
        StoreOptions {
            idle_in_transaction_timeout: Some(Duration::from_millis(200)),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open");
    let mut tx = Tx::begin(store.db()).await.expect("begin");
    tx.conn()
        .exec("SELECT 1", &[])
        .await
        .expect("a first statement");
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let error = tx
        .conn()
        .exec("SELECT 1", &[])
        .await
        .expect_err("the server ended the idle transaction and its session");
    assert!(
        matches!(
            error,
            StoreError::Database(
                sqlx::Error::Io(_) | sqlx::Error::Database(_) | sqlx::Error::Protocol(_)
            )
        ),
        "{error}"
    );
}

async fn a_full_pool_fails_with_an_acquire_timeout(db: TestDb) {
    let store = open_with(
        db.url(),
        StoreOptions {
            max_connections: 1,
            acquire_timeout: Duration::from_millis(200),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open");
    let held = Pooled::acquire(store.db())
        .await
        .expect("the only connection");
    let result = tokio::time::timeout(Duration::from_secs(30), Pooled::acquire(store.db()))
        .await
        .expect("the pool gives up by itself");
    let Err(error) = result else {
        panic!("a second connection from a pool of one");
    };
    assert!(
        matches!(error, StoreError::Database(sqlx::Error::PoolTimedOut)),
        "{error}"
    );
    drop(held);
    Pooled::acquire(store.db())
        .await
        .expect("a connection once one is free");
}

#[tokio::test]
async fn a_full_pool_fails_with_an_acquire_timeout_on_postgres() {
    a_full_pool_fails_with_an_acquire_timeout(TestDb::postgres().await).await;
}

#[tokio::test]
async fn a_full_pool_fails_with_an_acquire_timeout_on_sqlite() {
    a_full_pool_fails_with_an_acquire_timeout(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn connections_carry_the_session_settings_on_postgres() {
    let db = TestDb::postgres().await;
    let store = open_with(
        db.url(),
        StoreOptions {
            statement_timeout: Some(Duration::from_secs(7)),
            idle_in_transaction_timeout: Some(Duration::from_secs(11)),
            dead_peer_timeout: Some(Duration::from_secs(30)),
            ..StoreOptions::default()
        },
    )
    .await
    .expect("open");
    let rows = toolhub_eventstore::sql::fetch(
        store.db(),
        "SELECT current_setting('statement_timeout') AS st, \
                current_setting('idle_in_transaction_session_timeout') AS idle, \
                current_setting('tcp_user_timeout') AS tcp, \
                current_setting('tcp_keepalives_count') AS probes",
        &[],
    )
    .await
    .expect("settings");
    let row = &rows[0];
    assert_eq!(row.text("st").unwrap(), "7s");
    assert_eq!(row.text("idle").unwrap(), "11s");
    // Shown in milliseconds, without a unit.
    assert_eq!(row.text("tcp").unwrap(), "30000");
    assert_eq!(row.text("probes").unwrap(), "3");
}
