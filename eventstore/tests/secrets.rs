//! Secret values are sealed before they reach the log, and deleting a secret
//! destroys its key (crypto-shredding) while its events stay.

use base64::Engine;
use toolhub_domain::secret::{Secret, SecretError, SecretEvent};
use toolhub_domain::{SecretId, TenantId};
use toolhub_eventstore::testing::TestDb;
use toolhub_eventstore::{
    open, CommandBus, CommandContext, CommandError, Db, KeyError, KeyStore, MasterKey,
    SecretCommandError, SecretVault,
};
use uuid::Uuid;
use zeroize::Zeroizing;

async fn all_event_text(db: &Db) -> Vec<String> {
    let sql = "SELECT aggregate_id || event_type || payload || metadata FROM events";
    match db {
        Db::Postgres(pool) => sqlx::query_scalar(
            "SELECT aggregate_id || event_type || payload::text || metadata::text FROM events",
        )
        .fetch_all(pool)
        .await
        .expect("select events"),
        Db::Sqlite(pool) => sqlx::query_scalar(sql)
            .fetch_all(pool)
            .await
            .expect("select events"),
    }
}

/// The log from the start up to `until`. On PostgreSQL an event becomes
/// readable only once every older transaction in the cluster has ended
/// (other tests' included), so the reader may need a moment.
async fn read_until(
    store: &toolhub_eventstore::EventStore,
    until: toolhub_eventstore::Position,
) -> Vec<toolhub_eventstore::RecordedEvent> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let events = store
            .read_after(toolhub_eventstore::Position::ZERO, 1000)
            .await
            .expect("read the log");
        if events.last().is_some_and(|e| e.position >= until) {
            return events;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the log never reached {until}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

fn sealed_values(
    events: &[toolhub_eventstore::RecordedEvent],
) -> Vec<toolhub_domain::secret::SealedValue> {
    events
        .iter()
        .filter_map(|e| serde_json::from_value::<SecretEvent>(e.payload.clone()).ok())
        .filter_map(|e| match e {
            SecretEvent::SecretCreated { value, .. } => Some(value),
            SecretEvent::SecretRotated { value, .. } => Some(value),
            _ => None,
        })
        .collect()
}

async fn plaintext_never_reaches_the_log_and_delete_shreds_the_key(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let keys = KeyStore::new(store.db().clone(), MasterKey::generate());
    let vault = SecretVault::new(CommandBus::<Secret>::new(store.clone()), keys.clone());
    let acme = TenantId::parse("acme").expect("tenant");
    let ctx = CommandContext::new("admin-1", acme.clone());
    let id = SecretId::new();
    let first = format!("first-{}", Uuid::new_v4().simple());
    let second = format!("second-{}", Uuid::new_v4().simple());

    vault
        .create(
            &ctx,
            id,
            "API_TOKEN".into(),
            "the upstream token".into(),
            Zeroizing::new(first.clone()),
        )
        .await
        .expect("create");
    let rotated = vault
        .rotate(&ctx, id, Zeroizing::new(second.clone()), None)
        .await
        .expect("rotate");

    let text = all_event_text(store.db()).await.join("\n");
    let b64 = base64::engine::general_purpose::STANDARD;
    for plain in [&first, &second] {
        assert!(
            !text.contains(plain.as_str()),
            "plaintext in the events table"
        );
        assert!(
            !text.contains(&b64.encode(plain)),
            "base64 plaintext in the events table"
        );
    }

    let events = read_until(&store, rotated.position.expect("a position")).await;
    let sealed = sealed_values(&events);
    assert_eq!(sealed.len(), 2);
    let opened = keys
        .unseal(&acme, id, &sealed[0])
        .await
        .expect("unseal the first value");
    assert_eq!(opened.as_slice(), first.as_bytes());
    let opened = keys
        .unseal(&acme, id, &sealed[1])
        .await
        .expect("unseal the second value");
    assert_eq!(opened.as_slice(), second.as_bytes());
    // Another tenant cannot open it, even holding the sealed value.
    let globex = TenantId::parse("globex").expect("tenant");
    assert!(matches!(
        keys.unseal(&globex, id, &sealed[1]).await,
        Err(KeyError::WrongTenant)
    ));
    // A value sealed for one secret does not open as another's.
    let other = SecretId::new();
    vault
        .create(
            &ctx,
            other,
            "OTHER".into(),
            String::new(),
            Zeroizing::new("x".into()),
        )
        .await
        .expect("create another");
    assert!(matches!(
        keys.unseal(&acme, other, &sealed[1]).await,
        Err(KeyError::Crypto)
    ));

    let deleted = vault.delete(&ctx, id, None).await.expect("delete");
    assert!(matches!(
        keys.unseal(&acme, id, &sealed[1]).await,
        Err(KeyError::NoKey)
    ));
    assert!(matches!(
        keys.unseal(&acme, id, &sealed[0]).await,
        Err(KeyError::NoKey)
    ));
    let after = read_until(&store, deleted.position.expect("a position")).await;
    let kinds: Vec<&str> = after
        .iter()
        .filter(|e| e.aggregate_id == id.to_string())
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(
        kinds,
        vec!["SecretCreated", "SecretRotated", "SecretDeleted"]
    );
    assert_eq!(
        sealed_values(&after).len(),
        3,
        "the sealed values stay in the log"
    );

    // A deleted secret cannot be rotated.
    let rotated = vault
        .rotate(&ctx, id, Zeroizing::new("again".into()), None)
        .await;
    assert!(
        matches!(
            rotated,
            Err(SecretCommandError::Command(CommandError::Domain(
                SecretError::Deleted
            )))
        ),
        "{rotated:?}"
    );
    // Another tenant's secret is not found, and creating over it leaves no key.
    let other_ctx = CommandContext::new("admin-2", globex);
    let rotated = vault
        .rotate(&other_ctx, other, Zeroizing::new("x".into()), None)
        .await;
    assert!(
        matches!(
            rotated,
            Err(SecretCommandError::Command(CommandError::NotFound))
        ),
        "{rotated:?}"
    );
    let created = vault
        .create(
            &other_ctx,
            other,
            "OTHER".into(),
            String::new(),
            Zeroizing::new("y".into()),
        )
        .await;
    assert!(
        matches!(
            created,
            Err(SecretCommandError::Command(CommandError::NotFound))
        ),
        "{created:?}"
    );
    // A rejected create leaves no key behind.
    let rejected = SecretId::new();
    let created = vault
        .create(
            &ctx,
            rejected,
            "not a valid name".into(),
            String::new(),
            Zeroizing::new("z".into()),
        )
        .await;
    assert!(
        matches!(
            created,
            Err(SecretCommandError::Command(CommandError::Domain(_)))
        ),
        "{created:?}"
    );
    assert!(
        !keys.destroy(rejected).await.expect("destroy"),
        "a key was left behind"
    );
}

#[tokio::test]
async fn on_postgres_plaintext_never_reaches_the_log_and_delete_shreds_the_key() {
    plaintext_never_reaches_the_log_and_delete_shreds_the_key(TestDb::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_plaintext_never_reaches_the_log_and_delete_shreds_the_key() {
    plaintext_never_reaches_the_log_and_delete_shreds_the_key(TestDb::sqlite().await).await;
}

/// Makes every deletion from `secret_keys` fail, as a dying process or a
/// broken connection would between two writes.
async fn refuse_key_deletions(db: &Db) {
    let statements: &[&str] = match db {
        Db::Postgres(_) => &[
            "CREATE FUNCTION keep_keys() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'keys are kept'; END $$",
            "CREATE TRIGGER keep_keys BEFORE DELETE ON secret_keys \
             FOR EACH ROW EXECUTE FUNCTION keep_keys()",
        ],
        Db::Sqlite(_) => &["CREATE TRIGGER keep_keys BEFORE DELETE ON secret_keys \
             BEGIN SELECT RAISE(ABORT, 'keys are kept'); END"],
    };
    for sql in statements {
        toolhub_eventstore::sql::exec(db, sql, &[])
            .await
            .expect("install the trigger");
    }
}

async fn allow_key_deletions(db: &Db) {
    let sql = match db {
        Db::Postgres(_) => "DROP TRIGGER keep_keys ON secret_keys",
        Db::Sqlite(_) => "DROP TRIGGER keep_keys",
    };
    toolhub_eventstore::sql::exec(db, sql, &[])
        .await
        .expect("drop the trigger");
}

async fn shredding_is_certain(db: TestDb) {
    let store = open(db.url()).await.expect("open the store");
    let keys = KeyStore::new(store.db().clone(), MasterKey::generate());
    let vault = SecretVault::new(CommandBus::<Secret>::new(store.clone()), keys.clone());
    let acme = TenantId::parse("acme").expect("tenant");
    let ctx = CommandContext::new("admin-1", acme.clone());
    let create = |id: SecretId, name: &str| {
        vault.create(
            &ctx,
            id,
            name.into(),
            String::new(),
            Zeroizing::new(format!("value of {name}")),
        )
    };
    let opens = |id: SecretId| {
        let keys = keys.clone();
        let acme = acme.clone();
        async move {
            match keys.seal(&acme, id, b"probe").await {
                Ok(_) => true,
                Err(KeyError::NoKey) => false,
                Err(error) => panic!("unexpected key error: {error}"),
            }
        }
    };

    // A deletion that cannot destroy the key is not recorded either.
    let kept = SecretId::new();
    create(kept, "KEPT").await.expect("create");
    refuse_key_deletions(store.db()).await;
    let deleted = vault.delete(&ctx, kept, None).await;
    assert!(deleted.is_err(), "{deleted:?}");
    allow_key_deletions(store.db()).await;
    let (state, _) = vault.bus().load(&kept.to_string()).await.expect("load");
    assert!(
        !state.is_deleted(),
        "the deletion was recorded without its key's destruction"
    );
    assert!(opens(kept).await, "the secret lives on with its key");
    vault.delete(&ctx, kept, None).await.expect("delete");
    assert!(!opens(kept).await, "the key went with the deletion");

    // A deletion recorded without destroying the key (a log from a process
    // that died between the two): the start's sweep destroys the key.
    let leaked = SecretId::new();
    create(leaked, "LEAKED").await.expect("create");
    vault
        .bus()
        .execute(
            &leaked.to_string(),
            toolhub_domain::secret::SecretCommand::Delete,
            &ctx,
        )
        .await
        .expect("record the deletion alone");
    assert!(opens(leaked).await, "the key outlived its secret");
    // A key without any secret: a creation that never committed.
    let orphan = SecretId::new();
    let new_key = keys.new_key(&acme, orphan).expect("a key");
    toolhub_eventstore::sql::exec(
        store.db(),
        &new_key.companion().sql,
        &new_key.companion().args,
    )
    .await
    .expect("store the key alone");
    let live = SecretId::new();
    create(live, "LIVE").await.expect("create");

    // A young orphan may belong to a creation still under way: kept.
    assert_eq!(
        keys.sweep(std::time::Duration::from_secs(3600))
            .await
            .expect("sweep"),
        1
    );
    assert!(
        !opens(leaked).await,
        "the deleted secret's key was destroyed"
    );
    assert!(opens(orphan).await, "a young orphan is kept");
    assert_eq!(
        keys.sweep(std::time::Duration::ZERO).await.expect("sweep"),
        1
    );
    assert!(!opens(orphan).await, "an old orphan is destroyed");
    assert!(opens(live).await, "a live secret keeps its key");

    // A creation that fails leaves no key; one over an orphan's id replaces
    // the orphan.
    let refused = SecretId::new();
    let created = create(refused, "LIVE").await;
    assert!(created.is_err(), "the name is taken: {created:?}");
    assert!(!opens(refused).await, "a refused creation left a key");
    let reused = SecretId::new();
    let stale = keys.new_key(&acme, reused).expect("a key");
    toolhub_eventstore::sql::exec(store.db(), &stale.companion().sql, &stale.companion().args)
        .await
        .expect("store the key alone");
    create(reused, "REUSED")
        .await
        .expect("create over an orphan key");
    let sealed = match vault
        .bus()
        .load(&reused.to_string())
        .await
        .expect("load")
        .0
        .value()
    {
        Some(value) => value.clone(),
        None => panic!("the secret has a value"),
    };
    assert_eq!(
        keys.unseal(&acme, reused, &sealed)
            .await
            .expect("the value opens with the stored key")
            .as_slice(),
        b"value of REUSED"
    );
}

#[tokio::test]
async fn on_postgres_shredding_is_certain() {
    shredding_is_certain(TestDb::postgres().await).await;
}

#[tokio::test]
async fn on_sqlite_shredding_is_certain() {
    shredding_is_certain(TestDb::sqlite().await).await;
}

#[test]
fn a_master_key_must_be_32_bytes_of_base64() {
    assert!(MasterKey::from_base64("too-short").is_err());
    let key = MasterKey::generate();
    let again = MasterKey::from_base64(&key.to_base64()).expect("round trip");
    assert_eq!(key.fingerprint(), again.fingerprint());
    assert!(!format!("{key:?}").contains(key.to_base64().as_str()));
}
