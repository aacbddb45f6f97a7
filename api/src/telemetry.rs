//! Logging: the filter every entry point installs.
//!
//! Whatever level an operator asks for (`TOOLHUB_LOG`), some targets stay
//! silent: the MCP SDK (`rmcp`) traces whole protocol messages — a tool's
//! result, a server's environment echoed back — which may hold secret
//! values the engine masks only in what it records. The engine logs MCP
//! failures itself, with secrets removed.

use tracing_subscriber::EnvFilter;

/// Directives added to every filter, after the operator's, so that they win.
const ALWAYS: &[&str] = &["rmcp=off"];

/// The log filter for `spec` (`EnvFilter` syntax, such as `info` or
/// `toolhub=debug,warn`), with the targets that must stay silent silenced.
pub fn log_filter(spec: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_new(spec).unwrap_or_else(|_| EnvFilter::new("info"));
    for directive in ALWAYS {
        if let Ok(directive) = directive.parse() {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// The log filter from `TOOLHUB_LOG`, or `default` when it is unset.
pub fn log_filter_from_env(default: &str) -> EnvFilter {
    let spec = std::env::var("TOOLHUB_LOG").unwrap_or_else(|_| default.to_string());
    log_filter(&spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mcp_sdk_stays_silent_whatever_the_level_asked() {
        let filter = log_filter("trace,rmcp=trace").to_string();
        assert!(filter.contains("rmcp=off"), "{filter}");
    }
}
