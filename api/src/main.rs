//! The `toolhub` binary.
//!
//! `toolhub migrate` applies the database migrations to `DATABASE_URL`, or to
//! the embedded SQLite database in `TOOLHUB_DATA_DIR` (default
//! `./toolhub-data`) when `DATABASE_URL` is unset.
//!
//! Errors are reported as one line on standard error with a non-zero exit
//! status; the binary never panics on bad input or an unreachable database.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Toolhub: the event-sourced backend of a workflow-automation platform built
/// around the Model Context Protocol.
#[derive(Parser)]
#[command(name = "toolhub", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOOLHUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
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
