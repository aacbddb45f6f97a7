//! The `toolhub` binary's command line, run as a user would run it.

use std::process::Command;

fn toolhub() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_toolhub"));
    cmd.env_remove("DATABASE_URL").env("TOOLHUB_LOG", "error");
    cmd
}

fn admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

#[test]
fn migrate_creates_the_embedded_database_when_no_url_is_given() {
    let dir = std::env::temp_dir().join(format!("toolhub-cli-{}", uuid::Uuid::new_v4().simple()));
    let out = toolhub()
        .args(["migrate"])
        .env("TOOLHUB_DATA_DIR", &dir)
        .output()
        .expect("run toolhub");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("sqlite backend"), "{stdout}");
    assert!(dir.join("toolhub.db").exists());
    // Running it again is a no-op, not an error.
    let again = toolhub()
        .args(["migrate"])
        .env("TOOLHUB_DATA_DIR", &dir)
        .output()
        .expect("run toolhub");
    assert!(again.status.success());
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn migrate_applies_to_postgres() {
    let name = format!("toolhub_cli_{}", uuid::Uuid::new_v4().simple());
    let admin = admin_url();
    let psql = |sql: &str| {
        // The test database is created and dropped with psql, which comes
        // with the PostgreSQL server the tests need anyway.
        Command::new("psql")
            .args([admin.as_str(), "-v", "ON_ERROR_STOP=1", "-qc", sql])
            .output()
            .expect("psql is installed with PostgreSQL")
    };
    let created = psql(&format!("CREATE DATABASE {name}"));
    assert!(
        created.status.success(),
        "cannot create a test database at {admin}: {}. Start PostgreSQL or set DATABASE_URL.",
        String::from_utf8_lossy(&created.stderr)
    );
    let url = format!(
        "{}/{name}",
        admin.rsplit_once('/').expect("a database path").0
    );
    let out = toolhub()
        .args(["migrate", "--database-url", &url])
        .output()
        .expect("run");
    let _ = psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("postgres backend"), "{stdout}");
}

#[test]
fn a_bad_url_gets_one_clear_line_and_a_failure_status() {
    let out = toolhub()
        .args(["migrate", "--database-url", "mysql://nope"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("unsupported database URL"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn an_unreachable_database_gets_one_clear_line_without_its_password() {
    let out = toolhub()
        .args([
            "migrate",
            "--database-url",
            "postgres://app:hunter2@127.0.0.1:1/toolhub",
        ])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("cannot migrate"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}
