//! The README's engine example, run as written against a fresh `toolhub
//! serve` on the embedded database: if the example drifts from the API,
//! this fails.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The shell block between `<!-- example:engine -->` and its end marker.
fn example() -> String {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("the README");
    let start = readme
        .find("<!-- example:engine -->")
        .expect("the README marks its engine example");
    let end = readme[start..]
        .find("<!-- /example:engine -->")
        .expect("the example's end marker")
        + start;
    let block = &readme[start..end];
    let open = block.find("```sh\n").expect("a sh block") + "```sh\n".len();
    let close = block[open..].find("```").expect("the block ends") + open;
    block[open..close].to_string()
}

#[tokio::test]
async fn the_readme_engine_example_runs_as_written() {
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
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let script = format!("set -euo pipefail\n{}", example());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        .env("TOOLHUB", toolhub)
        .env("TOOLHUB_DATA_DIR", &data)
        .env("API", format!("http://127.0.0.1:{port}/graphql"))
        .output()
        .expect("bash runs the example");
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = std::fs::remove_dir_all(&data);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the example failed:\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("\"get-sum\""),
        "the tools were listed: {stdout}"
    );
    assert!(stdout.contains("\"status\":\"COMPLETED\""), "{stdout}");
    assert!(stdout.contains("The sum of 40 and 2 is 42."), "{stdout}");
    assert!(stdout.contains("Echo: Ada"), "{stdout}");
}
