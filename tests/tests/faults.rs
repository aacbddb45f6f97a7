//! Faults of the database under the service, end to end: PostgreSQL
//! stopped and started again in the middle of a write load, a full pool and
//! a held lock.
//!
//! The restart test owns its PostgreSQL: a cluster made with `initdb` in a
//! temporary directory, listening on a free loopback port, started and
//! stopped with `pg_ctl` (as the `postgres` OS user when the test runs as
//! root, since PostgreSQL refuses to run as root). A missing PostgreSQL
//! installation fails the test with a message; the cluster is stopped and
//! its directory removed on every exit path, a panic included.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use toolhub_api::config::{Config, RateLimits};
use toolhub_domain::Role;
use toolhub_tests::{token, TestEnv, TestServer, SECRET};

// ------------------------------------------------------------ the cluster

/// A PostgreSQL cluster of the test's own, stopped (immediately) and
/// removed when dropped.
struct Cluster {
    /// `initdb`, `pg_ctl`: the installation's binaries.
    bin: PathBuf,
    /// Holds `data/`, the log and the unix socket; removed on drop.
    dir: tempfile::TempDir,
    /// The loopback port it listens on.
    port: u16,
}

impl Cluster {
    /// Creates and starts a cluster in a new temporary directory.
    fn start() -> Self {
        let bin = postgres_bin();
        let dir = tempfile::Builder::new()
            .prefix("toolhub-faults-")
            .tempdir()
            .expect("a temporary directory");
        if is_root() {
            let chown = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(
                chown.success(),
                "could not give {} to the postgres user (does the `postgres` OS user exist?)",
                dir.path().display()
            );
        }
        let port = free_port();
        let cluster = Self { bin, dir, port };
        cluster.run(
            "initdb",
            &[
                "-D",
                &cluster.data(),
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        cluster.pg_ctl_start();
        cluster
    }

    fn data(&self) -> String {
        self.dir.path().join("data").display().to_string()
    }

    /// The URL the service connects to.
    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Runs one of the installation's programs, as `postgres` when root.
    fn run(&self, program: &str, args: &[&str]) {
        let path = self.bin.join(program);
        let mut command = if is_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&path);
            c
        } else {
            Command::new(&path)
        };
        let output = command
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{} could not run: {e}", path.display()));
        assert!(
            output.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
        );
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={}",
            self.port,
            self.dir.path().display()
        );
        let log = self.dir.path().join("log").display().to_string();
        self.run(
            "pg_ctl",
            &[
                "start",
                "-D",
                &self.data(),
                "-l",
                &log,
                "-w",
                "-t",
                "60",
                "-o",
                &options,
            ],
        );
    }

    /// A clean, fast stop: sessions are ended, open transactions rolled
    /// back, and the server is down when this returns.
    fn stop_fast(&self) {
        self.run("pg_ctl", &["stop", "-D", &self.data(), "-m", "fast", "-w"]);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Whatever state it is in; a stopped cluster makes this fail,
        // which is fine. The directory goes with `TempDir`.
        let path = self.bin.join("pg_ctl");
        let data = self.data();
        let args = ["stop", "-D", data.as_str(), "-m", "immediate", "-w"];
        let _ = if is_root() {
            Command::new("runuser")
                .args(["-u", "postgres", "--"])
                .arg(&path)
                .args(args)
                .output()
        } else {
            Command::new(&path).args(args).output()
        };
    }
}

/// The newest PostgreSQL installation's `bin` directory, or a failure that
/// says how to get one.
fn postgres_bin() -> PathBuf {
    let root = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir(root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/<version>/bin: \
             install them, for example with `apt-get install postgresql`"
        )
    })
}

/// Whether this process runs as root (PostgreSQL then runs as `postgres`).
fn is_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

// ------------------------------------------------------------ the load

const CREATE: &str =
    "mutation ($input: CreateWorkflowInput!) { createWorkflow(input: $input) { id position } }";

fn definition() -> Value {
    json!({"nodes": [{"id": "wait", "type": "delay", "params": {"milliseconds": 1}}], "edges": []})
}

/// One request of the load, as the client saw it.
#[derive(Debug, Clone)]
struct Outcome {
    /// When it was sent, from the start of the load.
    sent: Duration,
    /// How long the answer took.
    took: Duration,
    /// The acknowledged workflow id and position, or the error code.
    result: Result<(String, String), String>,
}

/// Creates workflows until `stop`, recording every outcome.
async fn writer(
    server: Arc<TestServer>,
    token: String,
    n: usize,
    start: Instant,
    stop: Arc<AtomicBool>,
    outcomes: Arc<Mutex<Vec<Outcome>>>,
) {
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let sent = start.elapsed();
        let variables = json!({"input": {"name": format!("w{n}-{i}"), "definition": definition()}});
        let (status, body) = server.post(Some(&token), CREATE, variables).await;
        let took = start.elapsed() - sent;
        let result = match body["data"]["createWorkflow"].as_object() {
            Some(created) if status == 200 => Ok((
                created["id"].as_str().expect("an id").to_string(),
                created["position"]
                    .as_str()
                    .expect("a position")
                    .to_string(),
            )),
            _ => Err(body["errors"][0]["extensions"]["code"]
                .as_str()
                .map_or_else(|| format!("no code: {status} {body}"), str::to_string)),
        };
        outcomes
            .lock()
            .unwrap()
            .push(Outcome { sent, took, result });
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn readiness(server: &TestServer) -> (u16, Value) {
    let (status, body) = server.get("/health/ready").await;
    (status, serde_json::from_str(&body).expect("JSON"))
}

/// The ids of the workflows in the log, read straight from the database.
async fn workflows_in_the_log(url: &str) -> Vec<String> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the cluster");
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE aggregate_type = 'workflow' AND sequence = 1",
    )
    .fetch_all(&pool)
    .await
    .expect("read the log");
    pool.close().await;
    ids
}

/// How long PostgreSQL stays down.
const OUTAGE: Duration = Duration::from_secs(7);

/// The configuration the restart test runs with: short bounds, so that the
/// outage shows quickly; no rate limits, so that the load is not refused.
fn restart_config(url: &str) -> Config {
    let mut config = Config::for_tests(url, SECRET);
    config.database.acquire_timeout = Duration::from_secs(2);
    config.database.statement_timeout = Some(Duration::from_secs(5));
    config.database.dead_peer_timeout = Some(Duration::from_secs(10));
    config.limits.consistency_wait = Duration::from_secs(2);
    config.limits.rate = RateLimits {
        per_subject: Default::default(),
        per_address: Default::default(),
        client_address_header: None,
    };
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_restart_under_write_load_loses_no_acknowledged_write() {
    let cluster = Cluster::start();
    let config = restart_config(&cluster.url());
    // The longest any request may take, whatever the database does: a
    // command that committed just before the stop waits for the read
    // models, then fails to read back; anything else fails sooner.
    let bound = config.database.acquire_timeout + config.limits.consistency_wait * 2;
    let server = Arc::new(TestServer::start(config).await);
    let admin = token("root", "acme", Role::Admin);
    let editor = token("ada", "acme", Role::Editor);

    let deadline = Instant::now() + Duration::from_secs(20);
    while readiness(&server).await.0 != 200 {
        assert!(Instant::now() < deadline, "{:?}", readiness(&server).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A subscription to the whole log, opened before anything is written:
    // it must see every acknowledged write, across the restart.
    let mut ws = server.ws_authenticated(&admin).await;
    ws.subscribe(
        "log",
        "subscription { events { position aggregateId eventType } }",
        json!({}),
    )
    .await;
    // The subscription starts at the head; give it a moment to be running.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let start = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..4)
        .map(|n| {
            tokio::spawn(writer(
                server.clone(),
                editor.clone(),
                n,
                start,
                stop.clone(),
                outcomes.clone(),
            ))
        })
        .collect();

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stopping = start.elapsed();
    let cluster_ref = &cluster;
    tokio::task::block_in_place(|| cluster_ref.stop_fast());
    let stopped = start.elapsed();

    // Readiness turns within a few checks, and stays unready while the
    // database is down.
    let mut unready_since = None;
    let mut probes = Vec::new();
    while start.elapsed() < stopped + OUTAGE {
        let (status, body) = readiness(&server).await;
        if status == 503 {
            assert!(
                body["failed"]
                    .as_array()
                    .is_some_and(|f| f.contains(&json!("database"))),
                "unready while the database is down names it: {body}"
            );
            unready_since.get_or_insert(start.elapsed());
        }
        probes.push((start.elapsed(), status, body));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let unready_since = unready_since.unwrap_or_else(|| {
        panic!("/health/ready never said 503 while the database was down: {probes:#?}")
    });
    assert!(
        unready_since <= stopped + Duration::from_secs(4),
        "readiness took {:?} to notice the database was down",
        unready_since - stopped
    );
    for (at, status, body) in &probes {
        assert!(
            *at < unready_since || *status == 503,
            "/health/ready said {status} at {at:?}, while the database was down: {body}"
        );
    }

    // A command that loads its entity before deciding (an id no bus has
    // cached) fails the same way: the load's error is the database's.
    let (_, body) = server
        .post(
            Some(&editor),
            "mutation ($i: RenameWorkflowInput!) { renameWorkflow(input: $i) { id } }",
            json!({"i": {"id": uuid::Uuid::now_v7().to_string(), "name": "renamed"}}),
        )
        .await;
    assert_eq!(
        toolhub_tests::first_error_code(&body),
        "UNAVAILABLE",
        "a command that loads first, while the database is down: {body}"
    );

    // A webhook delivery is refused with 503 and Retry-After, which
    // senders retry, not a 500.
    let delivery = server
        .http
        .post(format!("{}/hooks/{}", server.url, uuid::Uuid::new_v4()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .expect("the delivery is answered");
    assert_eq!(delivery.status().as_u16(), 503);
    assert_eq!(
        delivery
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok()),
        Some("1")
    );

    tokio::task::block_in_place(|| cluster_ref.pg_ctl_start());
    let restarted = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = readiness(&server).await;
        if status == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "/health/ready did not become ready within 20 s of the restart: {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ready_again = start.elapsed();
    // Some load on the restarted database, then the writers stop.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("a writer finishes");
    }
    let outcomes = outcomes.lock().unwrap().clone();
    eprintln!(
        "stop at {stopping:?}, down at {stopped:?}, unready at {unready_since:?}, \
         started at {restarted:?}, ready at {ready_again:?}; {} requests",
        outcomes.len()
    );

    // Every request answered in bounded time, and every failure with the
    // code that says the database is unavailable.
    for outcome in &outcomes {
        assert!(
            outcome.took <= bound,
            "a request took {:?} (bound {bound:?}): {outcome:?}",
            outcome.took
        );
        if let Err(code) = &outcome.result {
            assert_eq!(code, "UNAVAILABLE", "{outcome:?}");
        }
    }
    let acknowledged: Vec<(String, String)> = outcomes
        .iter()
        .filter_map(|o| o.result.clone().ok())
        .collect();
    let during = |o: &&Outcome| o.sent > stopped && o.sent + o.took < restarted;
    assert!(
        outcomes.iter().filter(during).count() >= 4,
        "the load went on during the outage: {outcomes:#?}"
    );
    assert!(
        outcomes
            .iter()
            .filter(during)
            .all(|o| o.result.as_ref().is_err_and(|code| code == "UNAVAILABLE")),
        "requests during the outage fail with UNAVAILABLE: {outcomes:#?}"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| o.sent < stopping && o.result.is_ok()),
        "writes were acknowledged before the restart"
    );
    assert!(
        outcomes
            .iter()
            .any(|o| o.sent > ready_again && o.result.is_ok()),
        "writes are acknowledged again after the restart: {outcomes:#?}"
    );

    // Every acknowledged write is in the log and in the read model.
    let logged = workflows_in_the_log(&cluster.url()).await;
    for (id, position) in &acknowledged {
        assert!(logged.contains(id), "acknowledged {id} is not in the log");
        let data = server
            .ok(
                &editor,
                "query ($id: ID!, $at: String!) { workflow(id: $id, consistency: {atLeast: $at}) { id } }",
                json!({"id": id, "at": position}),
            )
            .await;
        assert_eq!(data["workflow"]["id"], json!(id), "{data}");
    }

    // The projectors resumed: a new write shows up in the read models.
    let last = server
        .ok(
            &editor,
            CREATE,
            json!({"input": {"name": "after the restart", "definition": definition()}}),
        )
        .await;
    let last_id = last["createWorkflow"]["id"].as_str().unwrap().to_string();
    let last_position = last["createWorkflow"]["position"].as_str().unwrap();
    let data = server
        .ok(
            &editor,
            "query ($id: ID!, $at: String!) { workflow(id: $id, consistency: {atLeast: $at}) { name } }",
            json!({"id": last_id, "at": last_position}),
        )
        .await;
    assert_eq!(data["workflow"]["name"], "after the restart", "{data}");

    // The subscription opened before the restart is still there, and
    // delivers every acknowledged write and the new one, in log order.
    let mut seen = Vec::new();
    let mut previous: Option<toolhub_eventstore::Position> = None;
    loop {
        let message = ws.next_for("log").await;
        assert_eq!(
            message["type"], "next",
            "the subscription opened before the restart ended: {message}"
        );
        let payload = &message["payload"];
        assert!(
            payload.get("errors").is_none(),
            "the subscription opened before the restart failed: {payload}"
        );
        let entry = &payload["data"]["events"];
        let position: toolhub_eventstore::Position =
            entry["position"].as_str().unwrap().parse().unwrap();
        assert!(
            previous.is_none_or(|p| p < position),
            "out of order: {position} after {previous:?}"
        );
        previous = Some(position);
        let id = entry["aggregateId"].as_str().unwrap().to_string();
        let done = id == last_id;
        seen.push(id);
        if done {
            break;
        }
    }
    for (id, _) in &acknowledged {
        assert!(
            seen.contains(id),
            "the subscription missed acknowledged {id}"
        );
    }
    ws.close().await;
    if let Ok(mut server) = Arc::try_unwrap(server) {
        server.stop().await;
    }
}

// ------------------------------------------- a held lock and a full pool

/// Another session that holds a table locked until it is dropped.
async fn lock_table(url: &str, table: &str) -> sqlx::Transaction<'static, sqlx::Postgres> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(url)
        .await
        .expect("connect to the test database");
    let mut lock = pool.begin().await.expect("a transaction");
    sqlx::query(&format!("LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE"))
        .execute(&mut *lock)
        .await
        .expect("the lock");
    lock
}

/// Runs `query` and returns how long it took and its first error code.
async fn timed_error(
    server: &TestServer,
    token: &str,
    query: &str,
    variables: Value,
) -> (Duration, String) {
    let started = Instant::now();
    let (_, body) = server.post(Some(token), query, variables).await;
    let took = started.elapsed();
    let code = body["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_else(|| panic!("expected an error, got {body}"))
        .to_string();
    (took, code)
}

#[tokio::test]
async fn a_statement_blocked_by_a_held_lock_is_answered_timeout() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.database.statement_timeout = Some(Duration::from_millis(1_000));
    let server = env.server_with(config).await;
    let editor = token("ada", "acme", Role::Editor);
    let input = |name: &str| json!({"input": {"name": name, "definition": definition()}});
    server.ok(&editor, CREATE, input("before")).await;

    // A command waits for the lock on the log; a query for the lock on
    // its read model. Each is cancelled by `statement_timeout` and says so.
    let lock = lock_table(env.db.url(), "events").await;
    let (took, code) = timed_error(&server, &editor, CREATE, input("blocked")).await;
    assert_eq!(code, "TIMEOUT");
    assert!(took < Duration::from_secs(4), "{took:?}");
    drop(lock);

    let lock = lock_table(env.db.url(), "rm_workflows").await;
    let (took, code) = timed_error(
        &server,
        &editor,
        "{ workflows(first: 5) { edges { node { id } } } }",
        json!({}),
    )
    .await;
    assert_eq!(code, "TIMEOUT");
    assert!(took < Duration::from_secs(4), "{took:?}");
    drop(lock);

    // Nothing is left stuck: the next command goes through.
    server.ok(&editor, CREATE, input("after")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_that_find_the_pool_full_are_answered_unavailable() {
    let env = TestEnv::postgres().await;
    let mut config = env.config();
    config.database.max_connections = 2;
    config.database.acquire_timeout = Duration::from_millis(500);
    config.database.statement_timeout = Some(Duration::from_secs(3));
    config.limits.rate = RateLimits {
        per_subject: Default::default(),
        per_address: Default::default(),
        client_address_header: None,
    };
    let server = Arc::new(env.server_with(config).await);
    let editor = token("ada", "acme", Role::Editor);
    let input = |name: &str| json!({"input": {"name": name, "definition": definition()}});
    server.ok(&editor, CREATE, input("before")).await;

    // Commands blocked on the locked log hold the pool's two connections;
    // the others find no connection free.
    let lock = lock_table(env.db.url(), "events").await;
    let requests: Vec<_> = (0..6)
        .map(|n| {
            let server = server.clone();
            let editor = editor.clone();
            tokio::spawn(async move {
                timed_error(&server, &editor, CREATE, input(&format!("blocked {n}"))).await
            })
        })
        .collect();
    let mut codes = Vec::new();
    for request in requests {
        let (took, code) = request.await.expect("a request");
        // The statement timeout plus the acquire timeout, and a margin.
        assert!(took < Duration::from_secs(6), "{took:?} {code}");
        codes.push(code);
    }
    drop(lock);
    assert!(
        codes.iter().all(|c| c == "UNAVAILABLE" || c == "TIMEOUT"),
        "{codes:?}"
    );
    assert!(codes.iter().any(|c| c == "UNAVAILABLE"), "{codes:?}");

    // The pool recovers once the lock is gone.
    server.ok(&editor, CREATE, input("after")).await;
}
