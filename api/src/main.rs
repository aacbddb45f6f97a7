//! The `toolhub` binary.
//!
//! `toolhub serve` runs the service (see `toolhub_api::config` for its
//! environment), executions included; `toolhub worker` runs only the
//! engine's workers. `toolhub token` mints a development token that the server
//! accepts. `toolhub migrate` applies the database migrations to `DATABASE_URL`, or to
//! the embedded SQLite database in `TOOLHUB_DATA_DIR` (default
//! `./toolhub-data`) when `DATABASE_URL` is unset.
//!
//! Errors are reported as one line on standard error with a non-zero exit
//! status; the binary never panics on bad input or an unreachable database.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc instead of glibc's allocator: profiles of the GraphQL lists
/// showed a fifth of the process's time in glibc's `malloc`/`free`, and the
/// lists ran about a fifth faster on mimalloc (`docs/benchmarks.md`);
/// glibc's fast-bin consolidation was also the tail of SQLite's as-of reads.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Toolhub: the event-sourced backend of a workflow-automation platform built
/// around the Model Context Protocol.
#[derive(Parser)]
#[command(name = "toolhub", version, about)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serves the GraphQL API, health and metrics, and runs executions,
    /// until SIGINT or SIGTERM.
    Serve,
    /// Runs only the engine's workers (no HTTP), for deployments that scale
    /// workers apart from the API, until SIGINT or SIGTERM.
    Worker,
    /// Prints the GraphQL schema (SDL), as checked into docs/schema.graphql.
    Schema,
    /// Prints a signed token for the configured HS256 secret (the generated
    /// development secret when TOOLHUB_JWT_SECRET is unset).
    Token {
        /// The caller (JWT `sub`), recorded as the actor of their events.
        #[arg(long)]
        sub: String,
        /// The organisation (JWT `org`): the tenant.
        #[arg(long)]
        org: String,
        /// A role: viewer, editor or admin. May be repeated.
        #[arg(long = "role", required = true)]
        roles: Vec<String>,
        /// How long the token is valid: 90s, 30m, 1h, 7d.
        #[arg(long, default_value = "1h")]
        ttl: String,
    },
    /// Applies pending database migrations and exits.
    Migrate {
        /// The database: `postgres://…` or `sqlite://…`. Defaults to the
        /// embedded SQLite file in the data directory.
        #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
        database_url: Option<String>,
        /// Where the embedded database and generated keys live.
        #[arg(long, env = "TOOLHUB_DATA_DIR", default_value = "./toolhub-data")]
        data_dir: PathBuf,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(toolhub_api::telemetry::log_filter_from_env("info"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("toolhub: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve => serve().await,
        Command::Worker => {
            let config = toolhub_api::Config::from_env()?;
            let worker = toolhub_api::spawn_worker(config).await?;
            shutdown_signal().await;
            tracing::info!("shutting down: giving executions back to the queue");
            worker.stop().await;
            Ok(())
        }
        Command::Schema => {
            print!("{}", toolhub_api::graphql::sdl());
            Ok(())
        }
        Command::Token {
            sub,
            org,
            roles,
            ttl,
        } => {
            let org =
                toolhub_domain::TenantId::parse(org).map_err(|e| anyhow::anyhow!("--org: {e}"))?;
            let roles = roles
                .iter()
                .map(|r| {
                    toolhub_domain::Role::parse(r).ok_or_else(|| {
                        anyhow::anyhow!("--role: {r:?} is not viewer, editor or admin")
                    })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let ttl =
                toolhub_api::auth::parse_ttl(&ttl).map_err(|e| anyhow::anyhow!("--ttl: {e}"))?;
            let jwt = toolhub_api::Config::jwt_from_env()?;
            let token = toolhub_api::auth::mint(&jwt, &sub, &org, &roles, ttl)?;
            println!("{token}");
            Ok(())
        }
        Command::Migrate {
            database_url,
            data_dir,
        } => {
            let url = database_url
                .filter(|u| !u.trim().is_empty())
                .unwrap_or_else(|| toolhub_eventstore::embedded_url(&data_dir));
            let shown = toolhub_eventstore::store::redact_url(&url);
            let options = toolhub_eventstore::StoreOptions {
                max_connections: 2,
                acquire_timeout: std::time::Duration::from_secs(5),
                migrate: true,
                // A migration may build an index over a large table.
                statement_timeout: None,
                ..Default::default()
            };
            let store = toolhub_eventstore::open_with(&url, options)
                .await
                .map_err(|e| anyhow::anyhow!("cannot migrate {shown}: {e}"))?;
            let head = store.head().await?;
            println!(
                "migrations applied to {shown} ({} backend, log head {head})",
                store.db().backend()
            );
            Ok(())
        }
    }
}

async fn serve() -> anyhow::Result<()> {
    let config = toolhub_api::Config::from_env()?;
    let running = toolhub_api::spawn(config).await?;
    tracing::info!(
        "serving GraphQL at {url}/graphql (GraphiQL in a browser), subscriptions at ws://{addr}/graphql/ws",
        url = running.url(),
        addr = running.addr
    );
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests, checkpointing projectors");
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
}
