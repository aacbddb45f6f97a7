//! The MCP reference server (`@modelcontextprotocol/server-everything`,
//! pinned in `tests/mcp/package.json`, installed with
//! `npm ci --prefix tests/mcp`), for tests that need a real MCP server.
//!
//! Shared by the end-to-end harness and the engine's own tests (which
//! include this file by path), so both run the server the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The reference server's entry point, installed (`npm ci --prefix
/// tests/mcp`, from the pinned lock file) the first time a test needs it,
/// so that `cargo test` alone sets everything up. Test binaries run at the
/// same time take turns through a lock file; a missing `npm` is a failure
/// that says what to install.
pub fn server_everything() -> PathBuf {
    // Both crates that include this file sit one level below the root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let package = root.join("tests/mcp");
    let path = package.join("node_modules/@modelcontextprotocol/server-everything/dist/index.js");
    let lock = package.join(".installing");
    let deadline = Instant::now() + Duration::from_secs(600);
    // Not `path.exists()` alone: files appear while npm still installs.
    while !path.exists() || lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the MCP reference server was not installed within 10 minutes ({} is missing)",
            path.display()
        );
        // A lock left by an installer that died is stale after 10 minutes.
        if let Ok(age) = std::fs::metadata(&lock).and_then(|m| m.modified()) {
            if age.elapsed().is_ok_and(|a| a > Duration::from_secs(600)) {
                let _ = std::fs::remove_file(&lock);
            }
        }
        if path.exists() {
            // Installed, and another binary is (re)installing: wait.
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&lock)
        {
            Ok(_) => {
                let installed = std::process::Command::new("npm")
                    .args(["ci", "--silent", "--no-audit", "--no-fund", "--prefix"])
                    .arg(&package)
                    .status();
                let _ = std::fs::remove_file(&lock);
                match installed {
                    Ok(status) if status.success() => {}
                    Ok(status) => panic!(
                        "`npm ci --prefix tests/mcp` failed ({status}): the MCP reference server \
                         could not be installed"
                    ),
                    Err(error) => panic!(
                        "the MCP reference server needs node and npm to install ({error}); \
                         install Node.js 20 or later, or run `npm ci --prefix tests/mcp`"
                    ),
                }
            }
            // Another test binary is installing it: wait for it.
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    path
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// The reference server in Streamable HTTP mode, on a free loopback port;
/// killed when dropped.
pub struct HttpServer {
    /// The node process.
    child: std::process::Child,
    /// Where it listens.
    pub port: u16,
    /// Holds the preload script.
    _dir: tempfile::TempDir,
}

impl HttpServer {
    /// Starts the server and waits until it listens.
    pub async fn start() -> Self {
        let index = server_everything();
        let dir = tempfile::tempdir().expect("a temporary directory");
        // The server listens on every interface; this preload keeps it on
        // loopback, so that the test exposes nothing to the network.
        let preload = dir.path().join("loopback.mjs");
        std::fs::write(
            &preload,
            r#"import net from "node:net";
const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  const port = args[0];
  if ((typeof port === "number" || /^\d+$/.test(String(port))) && typeof args[1] !== "string") {
    args.splice(1, 0, "127.0.0.1");
  }
  return listen.apply(this, args);
};
"#,
        )
        .expect("write the preload script");
        let port = free_port();
        let child = std::process::Command::new("node")
            .arg("--import")
            .arg(format!("file://{}", preload.display()))
            .arg(&index)
            .arg("streamableHttp")
            .env("PORT", port.to_string())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("node must be installed to run the MCP reference server");
        let server = Self {
            child,
            port,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                Instant::now() < deadline,
                "the reference server did not listen on port {port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        server
    }

    /// Its MCP endpoint.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
