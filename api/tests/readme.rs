//! The README's examples, each run as written against a fresh `toolhub
//! serve` on the embedded database (the harness is `examples/mod.rs`): if an
//! example drifts from the API, its test fails.

mod examples;

/// Runs the README's example `name`; see [`examples::run_doc_example`].
fn run_example(name: &str) -> String {
    examples::run_doc_example("README.md", name)
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
