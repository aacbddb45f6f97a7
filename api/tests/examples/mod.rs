//! Runs the examples a document marks, as written: the bash block between
//! `<!-- example:NAME -->` and `<!-- /example:NAME -->` in a Markdown file
//! of the repository, against a fresh `toolhub serve` on the embedded
//! database. Shared by the tests of the README (`readme.rs`) and of
//! `docs/time-travel.md` (`time_travel_doc.rs`): if an example drifts from
//! what it documents, its test fails.
//!
//! The example gets `TOOLHUB` (this package's `toolhub` binary), `REPLAY`
//! (the `toolhub-replay` binary built beside it), `API`, `BASE` and
//! `TOOLHUB_DATA_DIR` (the service's data directory, which `toolhub token`
//! and `toolhub-replay` read), and runs with `set -euo pipefail`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant, SystemTime};

/// The repository's root.
fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("the repository's root")
}

/// The shell block of `doc` (a path from the repository's root) between
/// `<!-- example:NAME -->` and its end marker: a fenced block of `sh` or
/// `bash`.
pub fn doc_example(doc: &str, name: &str) -> String {
    let text = std::fs::read_to_string(root().join(doc))
        .unwrap_or_else(|e| panic!("cannot read {doc}: {e}"));
    let open_marker = format!("<!-- example:{name} -->");
    let start = text
        .find(&open_marker)
        .unwrap_or_else(|| panic!("{doc} marks no {name} example"));
    let end = text[start..]
        .find(&format!("<!-- /example:{name} -->"))
        .unwrap_or_else(|| panic!("{doc}: the {name} example has no end marker"))
        + start;
    let block = &text[start..end];
    let open = ["```sh\n", "```bash\n"]
        .iter()
        .find_map(|fence| block.find(fence).map(|i| i + fence.len()))
        .unwrap_or_else(|| panic!("{doc}: the {name} example holds no sh block"));
    let close = block[open..]
        .find("```")
        .unwrap_or_else(|| panic!("{doc}: the {name} example's block does not end"))
        + open;
    block[open..close].to_string()
}

/// The `toolhub-replay` binary beside `toolhub`. Cargo builds it with the
/// workspace (`cargo test --workspace`), but not for a run of this
/// package's tests alone: a missing or stale one fails the test, saying how
/// to build it, rather than run an example against old code.
fn replay_binary() -> PathBuf {
    let toolhub = Path::new(env!("CARGO_BIN_EXE_toolhub"));
    let replay = toolhub.with_file_name(format!("toolhub-replay{}", std::env::consts::EXE_SUFFIX));
    let built = std::fs::metadata(&replay)
        .and_then(|m| m.modified())
        .unwrap_or_else(|_| {
            panic!(
                "{} is missing: build it with `cargo build --bin toolhub-replay` \
                 (`cargo test --workspace` builds it)",
                replay.display()
            )
        });
    // What the binary is built from (not the crates' tests and benches).
    let newest = [
        "replay-tools/src",
        "replay-tools/Cargo.toml",
        "projections/src",
        "projections/Cargo.toml",
        "eventstore/src",
        "eventstore/Cargo.toml",
        "domain/src",
        "domain/Cargo.toml",
        "migrations",
    ]
    .iter()
    .map(|path| newest_file(&root().join(path)))
    .max()
    .flatten();
    if let Some((changed, path)) = newest {
        assert!(
            changed <= built,
            "{} is older than {}: build it again with `cargo build --bin toolhub-replay`",
            replay.display(),
            path.display()
        );
    }
    replay
}

/// The newest source file at or under `path` (`.rs`, `.sql`, `Cargo.toml`).
fn newest_file(path: &Path) -> Option<(SystemTime, PathBuf)> {
    if path.is_file() {
        let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok()?;
        return Some((modified, path.to_path_buf()));
    }
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                pending.push(path);
                continue;
            }
            let source = path.extension().is_some_and(|e| e == "rs" || e == "sql")
                || path.file_name().is_some_and(|n| n == "Cargo.toml");
            if let (true, Ok(modified)) = (source, meta.modified()) {
                if newest.as_ref().is_none_or(|(t, _)| modified > *t) {
                    newest = Some((modified, path));
                }
            }
        }
    }
    newest
}

/// Runs the example `name` of `doc` with bash against a fresh `toolhub
/// serve` (SQLite, its own data directory and port). Returns what bash
/// printed on standard output; fails the test when the example fails.
pub fn run_doc_example(doc: &str, name: &str) -> String {
    let root = root();
    let example = doc_example(doc, name);
    // Only an example that uses it needs `toolhub-replay` built.
    let replay = example
        .contains("REPLAY")
        .then(replay_binary)
        .unwrap_or_default();
    let script = format!("set -euo pipefail\n{example}");
    let data =
        std::env::temp_dir().join(format!("toolhub-example-{}", uuid::Uuid::new_v4().simple()));
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port");
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
    let out: Output = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(&root)
        // The example's tools use the service's embedded database.
        .env_remove("DATABASE_URL")
        .env("TOOLHUB", toolhub)
        .env("REPLAY", &replay)
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
        "the {name} example of {doc} failed:\n{stdout}\n{stderr}"
    );
    stdout
}
