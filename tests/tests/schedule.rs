//! Cron triggers through the service, with a controllable clock: fires on
//! time with the trigger's input, time zones and daylight saving, missed
//! fires, two schedulers racing, a leader killed between fires, archived
//! workflows, `setWorkflowTriggers` validation and `nextRuns`.

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::{json, Value};
use toolhub_domain::Role;
use toolhub_engine::{Clock, ManualClock, Scheduler};
use toolhub_tests::{token, TestEnv, TestServer};

fn editor() -> String {
    token("ed", "acme", Role::Editor)
}

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

/// A configuration whose scheduler reads `clock`, ticks every 20 ms, and
/// counts a fire more than a minute old as missed.
///
/// The triggers a test sets are recorded at the wall-clock time, before
/// any instant the test clock shows: to the scheduler they have been in
/// place, unfired, since then.
fn config(env: &TestEnv, clock: &Clock) -> toolhub_api::config::Config {
    let mut config = env.config();
    config.engine.clock = clock.clone();
    config.engine.schedule_tick = Duration::from_millis(20);
    config.engine.schedule_late_after = Duration::from_secs(60);
    config
}

/// A workflow of one transform that returns its input.
async fn workflow(server: &TestServer) -> String {
    server
        .create_workflow(
            &editor(),
            "scheduled",
            json!({
                "nodes": [{"id": "echo", "type": "transform", "params": {"template": {"got": "{{input}}"}}}],
                "edges": []
            }),
        )
        .await
}

const SET_TRIGGERS: &str = "mutation ($input: SetWorkflowTriggersInput!) { \
    setWorkflowTriggers(input: $input) { id version workflow { triggers nextRuns(count: 3) } } }";

async fn set_triggers(server: &TestServer, id: &str, triggers: Value) -> Value {
    server
        .ok(
            &editor(),
            SET_TRIGGERS,
            json!({"input": {"id": id, "triggers": triggers}}),
        )
        .await["setWorkflowTriggers"]
        .clone()
}

/// The workflow's executions, oldest first.
async fn executions(server: &TestServer, workflow_id: &str) -> Vec<Value> {
    let data = server
        .ok(
            &editor(),
            "query ($w: ID!) { executions(first: 100, filter: {workflowId: $w}) { \
               edges { node { id trigger input status } } } }",
            json!({ "w": workflow_id }),
        )
        .await;
    let mut list: Vec<Value> = data["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"].clone())
        .collect();
    list.reverse();
    list
}

/// Waits until the workflow has `n` executions; fails the test after 15 s.
async fn wait_for_executions(server: &TestServer, workflow_id: &str, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let list = executions(server, workflow_id).await;
        if list.len() >= n {
            assert_eq!(list.len(), n, "more executions than fires: {list:#?}");
            return list;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{n} executions did not appear: {list:#?}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

/// Lets the scheduler tick many times, then checks the count is still `n`.
async fn still(server: &TestServer, workflow_id: &str, n: usize) {
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(executions(server, workflow_id).await.len(), n);
}

async fn fires_on_time_with_its_input(env: TestEnv) {
    // A Monday, 08:59:30 in Paris (UTC+1 in January).
    let (clock, hand) = Clock::manual(utc(2027, 1, 4, 7, 59, 30));
    let server = env.server_with(config(&env, &clock)).await;
    let id = workflow(&server).await;
    let set = set_triggers(
        &server,
        &id,
        json!([{"cron": {"schedule": "0 9 * * MON-FRI", "timezone": "Europe/Paris",
                         "input": {"report": "daily"}}}]),
    )
    .await;
    assert_eq!(
        set["workflow"]["triggers"],
        json!([{"kind": "cron", "schedule": "0 9 * * MON-FRI", "timezone": "Europe/Paris",
                "input": {"report": "daily"}}])
    );
    still(&server, &id, 0).await;

    hand.set(utc(2027, 1, 4, 8, 0, 1));
    let list = wait_for_executions(&server, &id, 1).await;
    assert_eq!(list[0]["trigger"], "cron");
    assert_eq!(list[0]["input"], json!({"report": "daily"}));
    let done = server
        .wait_finished(
            &editor(),
            list[0]["id"].as_str().unwrap(),
            Duration::from_secs(15),
        )
        .await;
    assert_eq!(done["status"], "COMPLETED");
    assert_eq!(done["output"]["echo"]["got"], json!({"report": "daily"}));
    still(&server, &id, 1).await;

    // Tuesday's fire, and not Saturday's.
    hand.set(utc(2027, 1, 5, 8, 0, 2));
    wait_for_executions(&server, &id, 2).await;
    hand.set(utc(2027, 1, 9, 8, 0, 2));
    still(&server, &id, 2).await;
}

#[tokio::test]
async fn a_cron_trigger_fires_on_time_with_its_input_on_sqlite() {
    fires_on_time_with_its_input(TestEnv::sqlite().await).await;
}

#[tokio::test]
async fn a_cron_trigger_fires_on_time_with_its_input_on_postgres() {
    fires_on_time_with_its_input(TestEnv::postgres().await).await;
}

#[tokio::test]
async fn daylight_saving_follows_the_zone_a_skipped_time_fires_after_the_gap() {
    let env = TestEnv::sqlite().await;
    // Paris springs forward at 02:00 CET (01:00 UTC) on 2027-03-28.
    let (clock, hand) = Clock::manual(utc(2027, 3, 28, 0, 50, 0));
    let server = env.server_with(config(&env, &clock)).await;
    let id = workflow(&server).await;
    set_triggers(
        &server,
        &id,
        json!([{"cron": {"schedule": "30 2 * * *", "timezone": "Europe/Paris"}}]),
    )
    .await;
    hand.set(utc(2027, 3, 28, 0, 59, 59));
    still(&server, &id, 0).await;
    // 02:30 does not exist that day: it fires at 03:00 CEST (01:00 UTC).
    hand.set(utc(2027, 3, 28, 1, 0, 1));
    wait_for_executions(&server, &id, 1).await;
    // Paris falls back from 03:00 CEST to 02:00 CET on 2027-10-31: 02:30
    // happens twice (00:30 and 01:30 UTC) and fires once.
    hand.set(utc(2027, 10, 31, 0, 0, 0));
    still(&server, &id, 1).await;
    hand.set(utc(2027, 10, 31, 0, 30, 1));
    wait_for_executions(&server, &id, 2).await;
    hand.set(utc(2027, 10, 31, 1, 30, 1));
    still(&server, &id, 2).await;
}

#[tokio::test]
async fn missed_fires_are_skipped_by_default_or_run_once_never_a_burst() {
    let env = TestEnv::postgres().await;
    // The triggers were set (at the wall-clock time) long before 10:02 on
    // the test clock: every fire since was missed.
    let (clock, hand) = Clock::manual(utc(2027, 2, 1, 10, 2, 0));
    let server = env.server_with(config(&env, &clock)).await;
    let skip = workflow(&server).await;
    let once = workflow(&server).await;
    set_triggers(
        &server,
        &skip,
        json!([{"cron": {"schedule": "*/5 * * * *"}}]),
    )
    .await;
    set_triggers(
        &server,
        &once,
        json!([{"cron": {"schedule": "*/5 * * * *", "missed": "RUN_ONCE"}}]),
    )
    .await;
    // Thousands of missed fires: none for one, a single run for the other.
    wait_for_executions(&server, &once, 1).await;
    still(&server, &once, 1).await;
    still(&server, &skip, 0).await;
    // On time again, both fire.
    hand.set(utc(2027, 2, 1, 10, 5, 30));
    wait_for_executions(&server, &skip, 1).await;
    wait_for_executions(&server, &once, 2).await;
    // Down for a day: the last fire, 12:00, is three minutes old.
    hand.set(utc(2027, 2, 2, 12, 3, 0));
    wait_for_executions(&server, &once, 3).await;
    still(&server, &once, 3).await;
    still(&server, &skip, 1).await;
}

#[tokio::test]
async fn two_schedulers_at_the_same_instant_start_one_execution_and_a_fire_whose_cursor_was_lost_is_not_repeated(
) {
    let env = TestEnv::postgres().await;
    // The servers' own schedulers stand still at a time before anything.
    let (clock, _hand) = Clock::manual(utc(2020, 1, 1, 0, 0, 0));
    let a = env.server_with(config(&env, &clock)).await;
    let b = env.server_with(config(&env, &clock)).await;
    let id = workflow(&a).await;
    set_triggers(&a, &id, json!([{"cron": {"schedule": "0 * * * *"}}])).await;
    let engine_a = a.running.as_ref().unwrap().engine().unwrap().clone();
    let engine_b = b.running.as_ref().unwrap().engine().unwrap().clone();
    let mut first = Scheduler::new(engine_a.clone());
    let mut second = Scheduler::new(engine_b);
    // Both see the trigger, then both tick at 14:00:05 at once.
    first.tick(utc(2027, 1, 1, 13, 59, 0)).await.unwrap();
    second.tick(utc(2027, 1, 1, 13, 59, 0)).await.unwrap();
    let at = utc(2027, 1, 1, 14, 0, 5);
    let (x, y) = tokio::join!(first.tick(at), second.tick(at));
    // The later of the two either finds the cursor moved (nothing due) or
    // meets the fire's key (the same execution): never a second start.
    let fires: Vec<_> = x.unwrap().into_iter().chain(y.unwrap()).collect();
    assert!(!fires.is_empty());
    assert!(fires
        .iter()
        .all(|f| f.execution_id == fires[0].execution_id));
    assert!(fires.iter().all(|f| f.at == utc(2027, 1, 1, 14, 0, 0)));
    assert_eq!(fires.iter().filter(|f| !f.existing).count(), 1, "{fires:?}");
    wait_for_executions(&a, &id, 1).await;

    // A leader that started the fire and died before moving its cursor:
    // its successor finds the fire by its key and starts nothing new.
    let pool = sqlx::PgPool::connect(env.db.url()).await.unwrap();
    sqlx::query("DELETE FROM cron_cursors")
        .execute(&pool)
        .await
        .unwrap();
    let mut successor = Scheduler::new(engine_a);
    let again = successor.tick(utc(2027, 1, 1, 14, 0, 40)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert!(again[0].existing);
    assert_eq!(again[0].execution_id, fires[0].execution_id);
    still(&a, &id, 1).await;
}

/// Waits until one of the servers leads the scheduler; returns its index.
async fn leader(servers: &[&TestServer]) -> usize {
    for _ in 0..500 {
        for (i, server) in servers.iter().enumerate() {
            let engine = server.running.as_ref().and_then(|r| r.engine());
            if engine.is_some_and(|e| {
                e.stats()
                    .scheduling
                    .load(std::sync::atomic::Ordering::SeqCst)
            }) {
                return i;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no server leads the scheduler");
}

#[tokio::test]
async fn when_the_leader_is_killed_the_other_replica_takes_over_without_a_double_or_a_missed_fire()
{
    let env = TestEnv::postgres().await;
    let (clock, hand): (Clock, ManualClock) = Clock::manual(utc(2027, 3, 1, 10, 2, 0));
    let mut servers = vec![
        env.server_with(config(&env, &clock)).await,
        env.server_with(config(&env, &clock)).await,
    ];
    let id = workflow(&servers[0]).await;
    set_triggers(
        &servers[0],
        &id,
        json!([{"cron": {"schedule": "*/5 * * * *", "input": {"n": 1}}}]),
    )
    .await;
    let first = leader(&[&servers[0], &servers[1]]).await;
    hand.set(utc(2027, 3, 1, 10, 5, 1));
    wait_for_executions(&servers[1 - first], &id, 1).await;

    // Killed as a crash would: its leadership connection goes with it.
    servers.remove(first).running.take().unwrap().abort();
    let survivor = &servers[0];
    assert_eq!(leader(&[survivor]).await, 0);
    hand.set(utc(2027, 3, 1, 10, 10, 1));
    let list = wait_for_executions(survivor, &id, 2).await;
    assert!(list.iter().all(|e| e["trigger"] == "cron"));
    still(survivor, &id, 2).await;
}

#[tokio::test]
async fn archived_workflows_do_not_fire_and_a_restore_resumes_with_the_next_fire() {
    let env = TestEnv::sqlite().await;
    let (clock, hand) = Clock::manual(utc(2027, 4, 1, 10, 2, 0));
    let server = env.server_with(config(&env, &clock)).await;
    let id = workflow(&server).await;
    set_triggers(&server, &id, json!([{"cron": {"schedule": "*/5 * * * *"}}])).await;
    still(&server, &id, 0).await;
    let archive = "mutation ($id: ID!) { archiveWorkflow(input: {id: $id}) { id } }";
    server.ok(&editor(), archive, json!({"id": id})).await;
    let archived = server
        .ok(
            &editor(),
            "query ($id: ID!) { workflow(id: $id) { nextRuns(count: 2) } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(archived["workflow"]["nextRuns"], json!([]));
    hand.set(utc(2027, 4, 1, 10, 5, 1));
    still(&server, &id, 0).await;
    let restore = "mutation ($id: ID!) { restoreWorkflow(input: {id: $id}) { id } }";
    server.ok(&editor(), restore, json!({"id": id})).await;
    hand.set(utc(2027, 4, 1, 10, 6, 0));
    still(&server, &id, 0).await;
    hand.set(utc(2027, 4, 1, 10, 10, 1));
    wait_for_executions(&server, &id, 1).await;
}

#[tokio::test]
async fn invalid_triggers_are_validation_errors_naming_the_field_and_next_runs_are_merged() {
    let env = TestEnv::sqlite().await;
    let server = env.server().await;
    let id = workflow(&server).await;
    let set = |triggers: Value| json!({"input": {"id": id, "triggers": triggers}});
    for (triggers, field) in [
        (
            json!([{"cron": {"schedule": "0 9 * * *", "timezone": "Europe/Atlantis"}}]),
            "input.triggers[0].timezone",
        ),
        (
            json!([{"cron": {"schedule": "0 9 * * *"}}, {"cron": {"schedule": "0 25 * * *"}}]),
            "input.triggers[1].schedule",
        ),
        (
            json!([{"cron": {"schedule": "0 9 * * *", "input": [1]}}]),
            "input.triggers[0].input",
        ),
        // Long strings within the request body limit, a NUL in a zone;
        // a megabyte is refused at the door, as the request's body.
        (
            json!([{"cron": {"schedule": "1".repeat(100_000)}}]),
            "input.triggers[0].schedule",
        ),
        (
            json!([{"cron": {"schedule": "0 9 * * *", "input": {"a": "x".repeat(100_000)}}}]),
            "input.triggers[0].input",
        ),
        (json!([{"cron": {"schedule": "1".repeat(1 << 20)}}]), "body"),
        (
            json!([{"cron": {"schedule": "0 9 * * *", "timezone": "Europe/Paris\u{0}"}}]),
            "input.triggers[0].timezone",
        ),
    ] {
        let (_, body) = server
            .post(Some(&editor()), SET_TRIGGERS, set(triggers))
            .await;
        assert_eq!(
            body["errors"][0]["extensions"]["code"], "VALIDATION",
            "{body:#}"
        );
        assert_eq!(body["errors"][0]["extensions"]["field"], field, "{body:#}");
    }
    // A viewer may not.
    let viewer = token("v", "acme", Role::Viewer);
    let code = server
        .error_code(Some(&viewer), SET_TRIGGERS, set(json!([])))
        .await;
    assert_eq!(code, "FORBIDDEN");
    // Another tenant's workflow is not found.
    let other = token("o", "globex", Role::Editor);
    let code = server
        .error_code(Some(&other), SET_TRIGGERS, set(json!([])))
        .await;
    assert_eq!(code, "NOT_FOUND");

    let set = set_triggers(
        &server,
        &id,
        json!([{"cron": {"schedule": "0 12 * * *"}}, {"cron": {"schedule": "0 */6 * * *"}}]),
    )
    .await;
    let runs: Vec<DateTime<Utc>> =
        serde_json::from_value(set["workflow"]["nextRuns"].clone()).unwrap();
    assert_eq!(runs.len(), 3);
    assert!(runs.windows(2).all(|w| w[0] < w[1]), "{runs:?}");
    assert!(runs[0] > Utc::now() && runs[0] <= Utc::now() + chrono::Duration::hours(6));
    assert!(runs
        .iter()
        .all(|t| t.format("%M:%S").to_string() == "00:00"));
}
