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

fn temp_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("toolhub-cli-{}", uuid::Uuid::new_v4().simple()))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a free port")
        .local_addr()
        .expect("an address")
        .port()
}

/// One HTTP/1.1 request over a plain socket; returns the whole response.
fn http(port: u16, request: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn production_mode_refuses_generated_keys_with_one_line() {
    let dir = temp_dir();
    let out = toolhub()
        .args(["serve"])
        .env("TOOLHUB_ENV", "production")
        .env("TOOLHUB_DATA_DIR", &dir)
        .env_remove("TOOLHUB_JWT_SECRET")
        .env_remove("TOOLHUB_MASTER_KEY")
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("TOOLHUB_ENV=production"), "{stderr}");
    assert!(!dir.exists(), "production generated something in {dir:?}");
}

#[test]
fn a_minted_token_is_accepted_by_serve_which_stops_on_sigterm() {
    let dir = temp_dir();
    let port = free_port();
    let token = toolhub()
        .args([
            "token", "--sub", "ada", "--org", "acme", "--role", "editor", "--ttl", "10m",
        ])
        .env("TOOLHUB_DATA_DIR", &dir)
        .env_remove("TOOLHUB_JWT_SECRET")
        .output()
        .expect("run toolhub token");
    assert!(
        token.status.success(),
        "{}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    assert_eq!(token.split('.').count(), 3, "{token}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("jwt-secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let mut child = toolhub()
        .args(["serve"])
        .env("TOOLHUB_DATA_DIR", &dir)
        .env("TOOLHUB_LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("TOOLHUB_JWT_SECRET")
        .env_remove("TOOLHUB_MASTER_KEY")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start toolhub serve");
    let mut ready = None;
    for _ in 0..200 {
        if let Some(response) = http(
            port,
            "GET /health/ready HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ) {
            ready = Some(response);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ready = ready.expect("the server listens within 20s");
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");
    let body = r#"{"query":"{ me { sub org roles } }"}"#;
    let response = http(
        port,
        &format!(
            "POST /graphql HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("an answer");
    assert!(response.contains(r#""sub":"ada""#), "{response}");
    assert!(response.contains(r#""roles":["editor"]"#), "{response}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(killed.success());
    let mut status = None;
    for _ in 0..200 {
        if let Some(s) = child.try_wait().expect("wait") {
            status = Some(s);
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let status = status.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("serve did not stop within 20s of SIGTERM")
    });
    assert!(status.success(), "{status:?}");
    let _ = std::fs::remove_dir_all(dir);
}
