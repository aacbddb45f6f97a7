//! The README's examples, each run as written against a fresh `toolhub
//! serve` on the embedded database: if an example drifts from the API, its
//! test fails.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The shell block between `<!-- example:NAME -->` and its end marker.
fn example(name: &str) -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README");
    let open_marker = format!("<!-- example:{name} -->");
    let start = readme
        .find(&open_marker)
        .unwrap_or_else(|| panic!("the README marks its {name} example"));
    let end = readme[start..]
        .find(&format!("<!-- /example:{name} -->"))
        .expect("the example's end marker")
        + start;
    let block = &readme[start..end];
    let open = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = block[open..].find("```").expect("the block ends") + open;
    block[open..close].to_string()
}

/// Runs the README's example `name` with bash against a fresh `toolhub
/// serve` (SQLite, its own data directory and port), with `TOOLHUB`, `API`
/// and `BASE` set to reach it. Returns what bash printed; fails the test
/// when the example fails.
fn run_example(name: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap();
    let data =
        std::env::temp_dir().join(format!("toolhub-readme-{}", uuid::Uuid::new_v4().simple()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let toolhub = env!("CARGO_BIN_EXE_toolhub");
    let mut serve = Command::new(toolhub)
        .arg("serve")
        .current_dir(&root)
        .env_remove("DATABASE_URL")
        .env("TOOLHUB_DATA_DIR", &data)
        .env("TOOLHUB_LISTEN", format!("127.0.0.1:{port}"))
        .env("TOOLHUB_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run toolhub serve");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "toolhub serve did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let script = format!("set -euo pipefail\n{}", example(name));
    let out: Output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("TOOLHUB", toolhub)
        .env("TOOLHUB_DATA_DIR", &data)
        .env("BASE", format!("http://127.0.0.1:{port}"))
        .env("API", format!("http://127.0.0.1:{port}/graphql"))
        .output()
        .expect("bash runs the example");
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&data);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the {name} example failed:\n{stdout}\n{stderr}"
    );
    stdout
}

#[test]
fn the_readme_engine_example_runs_as_written() {
    let stdout = run_example("engine");
    assert!(
        stdout.contains("\"get-sum\""),
        "the tools were listed: {stdout}"
    );
    assert!(stdout.contains("\"status\":\"COMPLETED\""), "{stdout}");
    assert!(stdout.contains("The sum of 40 and 2 is 42."), "{stdout}");
    assert!(stdout.contains("Echo: Ada"), "{stdout}");
}

#[test]
fn the_readme_triggers_example_runs_as_written() {
    let stdout = run_example("triggers");
    let runs: Vec<String> = stdout
        .lines()
        .find(|l| l.starts_with('['))
        .and_then(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| panic!("the next runs are listed: {stdout}"));
    assert_eq!(runs.len(), 3, "{stdout}");
    // 9:00 in Paris is 08:00 UTC in winter and 07:00 UTC in summer.
    assert!(
        runs.iter()
            .all(|r| r.ends_with("T08:00:00+00:00") || r.ends_with("T07:00:00+00:00")),
        "{stdout}"
    );
    assert!(stdout.contains("\"trigger\":\"webhook\""), "{stdout}");
    assert!(stdout.contains("\"status\":\"COMPLETED\""), "{stdout}");
    assert!(stdout.contains("Hello, Ada!"), "{stdout}");
}

#[test]
fn the_readme_mcp_example_runs_as_written() {
    let stdout = run_example("mcp");
    assert!(
        stdout.contains(r#"{"name":"toolhub","version":"#),
        "initialize answered: {stdout}"
    );
    assert!(
        stdout.contains(r#""tools":[{"name":"greet","description":"Greets someone by name""#),
        "the tool was listed: {stdout}"
    );
    assert!(
        stdout.contains(r#""method":"notifications/progress""#)
            && stdout.contains("node `greet` succeeded"),
        "progress was notified: {stdout}"
    );
    assert!(
        stdout.contains(
            r#""structuredContent":{"greet":{"greeting":"Hello, Ada!"}},"isError":false"#
        ),
        "the call answered with the output: {stdout}"
    );
    assert!(
        stdout.contains(r#"invalid arguments for `greet`: `/who`: 42 is not of type \"string\""#)
            && stdout.contains(r#""isError":true"#),
        "bad arguments were refused: {stdout}"
    );
}

#[test]
fn the_readme_api_keys_example_runs_as_written() {
    let stdout = run_example("api-keys");
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(r#"{"data":{"me":{"sub":"apikey:"#)
                && l.ends_with(r#"","org":"acme","roles":["editor"]}}}"#)),
        "the key authenticated as itself: {stdout}"
    );
    assert!(
        lines.contains(&r#"{"name":"deploy job","role":"EDITOR","active":true,"used":true}"#),
        "the key was listed with its use: {stdout}"
    );
    assert!(lines.contains(&"false"), "the key was revoked: {stdout}");
    assert!(
        lines.contains(&r#"{"code":"UNAUTHENTICATED","reason":"API_KEY_REVOKED"}"#),
        "the revoked key was refused: {stdout}"
    );
    assert!(
        !stdout.contains("thk_"),
        "the key itself was never printed: {stdout}"
    );
}
