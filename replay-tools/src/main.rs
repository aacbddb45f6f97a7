//! The `toolhub-replay` binary: tools that work on the event log offline.
//!
//! `toolhub-replay rebuild [--projection NAME] [--batch-size N]` rebuilds one
//! read model, or all of them in one pass over the log, from position zero:
//! they are replayed into shadow tables and swapped in atomically (see
//! `toolhub_projections::rebuild`), so a running service keeps serving and
//! writing meanwhile. A progress bar on standard error shows the events
//! replayed, the rate and the time left (it hides itself when standard error
//! is not a terminal); standard output gets one summary line per read model
//! and a total.
//!
//! `toolhub-replay event --position N` prints the event at global position
//! `N` exactly as stored (every column as text, nothing decoded), so that an
//! event a projector cannot decode can still be looked at.
//! `toolhub-replay stalls` lists the projections stopped at such an event,
//! with the position and the error (see the runbook).
//!
//! `toolhub-replay at TYPE ID (--position P | --time T | --version N)`
//! prints a workflow, secret (metadata only) or MCP server as its events up
//! to that point made it, as the read models show it, in JSON.
//! `toolhub-replay diff workflow ID FROM TO` prints what changed between two
//! definition versions of a workflow (an RFC 6902 patch, nodes and edges).
//! `toolhub-replay timeline EXECUTION_ID` prints a run's events as a table:
//! when, what, which node and attempt, and why a step failed.
//! These see every tenant: they are operators' and auditors' tools.
//!
//! `toolhub-replay verify [--expect POSITION=HASH] [--skip-read-models |
//! --read-models-only] [--max-mismatches N]` checks the log and what was
//! made of it. First it recomputes the log's hash chain from the events and
//! compares it with the recorded one: it prints the head (position and
//! hash) an auditor can record elsewhere, and exits with status 1 naming the
//! first position that does not match (an event altered, removed, inserted
//! or moved). With `--expect`, a head recorded earlier must still be in the
//! chain with the same hash. Then it rebuilds every read model from the log
//! into scratch tables of its own (`toolhub_projections::shadow`: temporary
//! tables, never the live ones) and compares them with the live tables row
//! by row: each row that differs, is missing or is extra is named by table,
//! key and column, the first `--max-mismatches` of each table shown and all
//! counted, and the status is 3 when any does.
//!
//! `toolhub-replay export [--from T|P] [--to T|P] [--tenant T] [--actor A]
//! [--aggregate-type K] [--format jsonl|csv]` streams the audit log (the
//! audit read model: payloads redacted as the API shows them) to standard
//! output, oldest first, a page at a time: each page's rows are formatted
//! as the database sends them (the payload as the JSON text it stores,
//! never decoded) and written by a second thread while the next page is
//! read, so memory stays flat however large the export. `--from` is inclusive, `--to` exclusive; each is a
//! time (RFC 3339) or a position.
//!
//! `DATABASE_URL` selects the database; without it, the embedded SQLite file
//! `TOOLHUB_DATA_DIR/toolhub.db` (default `./toolhub-data`) is used. Pending
//! migrations are applied first.
//!
//! Errors are reported as one line on standard error with a non-zero exit
//! status: 2 for a malformed command line, 1 otherwise (`verify` adds 3);
//! the binary never panics on bad input or an unreachable database.
//! It never appends to the log: replaying is reading.

mod audit_lines;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressState, ProgressStyle};
use toolhub_domain::secret::Secret;
use toolhub_domain::workflow::Workflow;
use toolhub_eventstore::store::redact_url;
use toolhub_eventstore::{EventStore, StoreOptions};
use toolhub_projections::rebuild::{log_length, rebuild_many};
use toolhub_projections::Projection;

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Secret => "secret",
            Self::McpServer => "MCP server",
            Self::Execution => "execution",
        }
    }
}

/// Toolhub's replay tools: rebuild read models from the event log.
#[derive(Parser)]
#[command(name = "toolhub-replay", version, about)]
struct Cli {
    /// The database: `postgres://…` or `sqlite://…`. Defaults to the embedded
    /// SQLite file in the data directory.
    #[arg(long, global = true, env = "DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// Where the embedded database lives.
    #[arg(
        long,
        global = true,
        env = "TOOLHUB_DATA_DIR",
        default_value = "./toolhub-data"
    )]
    /// Where the embedded database lives.
    data_dir: PathBuf,
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Rebuilds read models from the log into shadow tables and swaps them in,
    /// while the service keeps running.
    Rebuild {
        /// Only this read model: workflows, executions, secrets, mcp_servers
        /// or audit. Without it, every read model is rebuilt in turn.
        #[arg(long, value_name = "NAME")]
        projection: Option<String>,
        /// How many events are applied per transaction.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
    },
    /// Prints the event at a global position exactly as stored, as JSON.
    Event {
        /// The event's global position (what `/health/ready`, the metrics
        /// and `stalls` name).
        #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
        position: i64,
    },
    /// Lists the projections stopped at an event they cannot decode or
    /// apply.
    Stalls,
    /// Prints an entity as its events up to a point made it, as JSON.
    #[command(group(clap::ArgGroup::new("moment").required(true).args(["position", "time", "version"])))]
    At {
        /// What kind of entity.
        #[arg(value_enum)]
        kind: Kind,
        /// Its id.
        #[arg(value_parser = parse_id)]
        id: String,
        /// The events at or before this position (`TRANSACTION.GLOBAL`, as
        /// the API returns positions).
        #[arg(long, value_parser = parse_position)]
        position: Option<toolhub_eventstore::Position>,
        /// The events recorded at or before this instant (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        time: Option<chrono::DateTime<chrono::Utc>>,
        /// The entity's first N events.
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
        version: Option<u64>,
    },
    /// Recomputes the log's hash chain and compares it with the recorded
    /// one (prints the head to record), then rebuilds the read models apart
    /// and compares them with the live ones row by row. Exit status: 0 when
    /// everything matches, 1 when the log does not match its chain, 3 when
    /// a read model does not match the log.
    Verify {
        /// A head recorded earlier, as `verify` printed it
        /// (`TRANSACTION.GLOBAL=HEX`): it must still be in the chain.
        #[arg(long, value_parser = parse_head, conflicts_with = "read_models_only")]
        expect: Option<(toolhub_eventstore::Position, String)>,
        /// How many events (and rows of each table) are read at a time.
        #[arg(long, default_value_t = 5_000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        batch_size: u32,
        /// Only the hash chain: do not rebuild and compare the read models.
        #[arg(long, conflicts_with = "read_models_only")]
        skip_read_models: bool,
        /// Only the read models: do not check the hash chain.
        #[arg(long)]
        read_models_only: bool,
        /// How many mismatches are shown per table (all are counted).
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        max_mismatches: u32,
    },
    /// Prints a run's events as a table, oldest first.
    Timeline {
        /// The execution's id.
        #[arg(value_parser = parse_id)]
        id: String,
    },
    /// Streams the audit log to standard output, oldest first.
    Export {
        /// From this time (RFC 3339) or position, inclusive.
        #[arg(long, value_parser = parse_bound)]
        from: Option<Bound>,
        /// Up to this time or position, exclusive.
        #[arg(long, value_parser = parse_bound)]
        to: Option<Bound>,
        /// Only this organisation.
        #[arg(long)]
        tenant: Option<String>,
        /// Only events caused by this actor (`apikey:<id>` for an API key).
        #[arg(long)]
        actor: Option<String>,
        /// Only events of this kind of entity.
        #[arg(long, value_enum)]
        aggregate_type: Option<AggregateKind>,
        /// One JSON object per line, or CSV with a header.
        #[arg(long, value_enum, default_value = "jsonl")]
        format: Format,
        /// How many entries one query reads: the text of two such pages is
        /// the most the export holds in memory.
        #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
        batch_size: u32,
    },
    /// Prints what changed between two definition versions of a workflow.
    Diff {
        /// Only workflows have versions to compare.
        #[arg(value_enum)]
        kind: DiffKind,
        /// The workflow's id.
        #[arg(value_parser = parse_id)]
        id: String,
        /// The definition version to compare from.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        from: u64,
        /// The definition version to compare to.
        #[arg(value_parser = clap::value_parser!(u64).range(1..))]
        to: u64,
    },
}

/// The kinds of entity `at` can show.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// A workflow.
    Workflow,
    /// A secret's metadata.
    Secret,
    /// An MCP server.
    #[value(name = "mcp-server")]
    McpServer,
    /// An execution, with its steps.
    Execution,
}

/// The kinds of entity `diff` compares.
#[derive(Clone, Copy, clap::ValueEnum)]
enum DiffKind {
    /// A workflow's definitions.
    Workflow,
}

/// The kinds of entity in the log.
#[derive(Clone, Copy, clap::ValueEnum)]
enum AggregateKind {
    /// Workflows.
    Workflow,
    /// Executions.
    Execution,
    /// Secrets.
    Secret,
    /// MCP servers.
    #[value(name = "mcp-server")]
    McpServer,
    /// API keys.
    #[value(name = "api-key")]
    ApiKey,
}

impl AggregateKind {
    fn stored(self) -> &'static str {
        match self {
            Self::Workflow => "workflow",
            Self::Execution => "execution",
            Self::Secret => "secret",
            Self::McpServer => "mcp_server",
            Self::ApiKey => "api_key",
        }
    }
}

/// How `export` writes.
#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header line; the payload as JSON text.
    Csv,
}

/// One end of an export.
#[derive(Clone, Copy, Debug)]
enum Bound {
    /// A time.
    Time(chrono::DateTime<chrono::Utc>),
    /// A position.
    Position(toolhub_eventstore::Position),
}

fn parse_bound(text: &str) -> Result<Bound, String> {
    if let Ok(position) = text.parse() {
        return Ok(Bound::Position(position));
    }
    parse_time(text).map(Bound::Time).map_err(|_| {
        format!(
            "{text:?} is neither an RFC 3339 time (2026-12-01T09:00:00Z) nor a position (754.42)"
        )
    })
}

/// An entity's id: a UUID, as every aggregate's id is. A malformed one is
/// an argument error, not an entity that is not there.
fn parse_id(text: &str) -> Result<String, String> {
    text.parse::<toolhub_domain::WorkflowId>()
        .map(|_| text.to_string())
        .map_err(|_| format!("{text:?} is not an id (a UUID such as 0193b5c4-…)"))
}

fn parse_head(text: &str) -> Result<(toolhub_eventstore::Position, String), String> {
    let (position, hash) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not POSITION=HASH as verify prints it"))?;
    let hash = hash.trim().to_ascii_lowercase();
    if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!("{hash:?} is not a SHA-256 in hex (64 digits)"));
    }
    Ok((parse_position(position.trim())?, hash))
}

fn parse_position(text: &str) -> Result<toolhub_eventstore::Position, String> {
    text.parse()
        .map_err(|_| format!("{text:?} is not a position such as 0.42 or 754.42"))
}

fn parse_time(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&chrono::Utc))
        .map_err(|_| format!("{text:?} is not an RFC 3339 time such as 2026-12-01T09:00:00Z"))
}

#[tokio::main]
async fn main() -> ExitCode {
    // Warnings (an event a read model cannot decode, for instance) go to
    // standard error; `TOOLHUB_LOG` turns up the detail.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TOOLHUB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,sqlx=error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("toolhub-replay: {}", one_line(&error));
            match error.downcast_ref::<Exit>() {
                Some(Exit::Usage(_)) => ExitCode::from(2),
                Some(Exit::ReadModels(_)) => ExitCode::from(3),
                None => ExitCode::FAILURE,
            }
        }
    }
}

/// Failures with an exit status of their own (anything else exits 1).
#[derive(Debug)]
enum Exit {
    /// An argument clap could not check: status 2, as clap's own.
    Usage(String),
    /// The read models do not match the log: status 3.
    ReadModels(String),
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Usage(text) | Self::ReadModels(text) => f.write_str(text),
        }
    }
}

impl std::error::Error for Exit {}

/// The error and its causes on one line. A cause whose text its parent
/// already shows (errors that print their source as part of themselves) is
/// not repeated.
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.replace(['\n', '\r'], " ")
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let url = cli
        .database_url
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| toolhub_eventstore::embedded_url(&cli.data_dir));
    match cli.command {
        Command::Rebuild {
            projection,
            batch_size,
        } => {
            // Check the name before touching the database, so that a typo
            // is reported as such even when the database is unreachable.
            let projections = select(projection.as_deref())?;
            let store = open(&url).await?;
            rebuild_all(&store, &projections, batch_size).await
        }
        Command::Event { position } => {
            let store = open(&url).await?;
            let event = store
                .raw_event_at(position)
                .await
                .with_context(|| format!("cannot read the event at position {position}"))?
                .ok_or_else(|| anyhow!("no event at position {position}"))?;
            println!("{}", serde_json::to_string_pretty(&event)?);
            Ok(())
        }
        Command::At {
            kind,
            id,
            position,
            time,
            version,
        } => {
            use toolhub_projections::as_of::{self, fold_any_tenant, AsOf};
            let moment = match (position, time, version) {
                (Some(position), _, _) => AsOf::Position(position),
                (_, Some(time), _) => AsOf::Time(time),
                (_, _, Some(version)) => AsOf::Version(version),
                _ => return Err(anyhow!("name the moment: --position, --time or --version")),
            };
            let store = open(&url).await?;
            let missing = || anyhow!("no {} {id} at that point", kind.name());
            let shown = match kind {
                Kind::Workflow => {
                    let folded = fold_any_tenant::<Workflow>(&store, &id, moment)
                        .await?
                        .ok_or_else(missing)?;
                    serde_json::to_value(as_of::workflow_view(&id, &folded)?)?
                }
                Kind::Secret => {
                    let folded = fold_any_tenant::<Secret>(&store, &id, moment)
                        .await?
                        .ok_or_else(missing)?;
                    serde_json::to_value(as_of::secret_view(&id, &folded))?
                }
                Kind::McpServer => serde_json::to_value(
                    as_of::mcp_server(&store, None, &id, moment)
                        .await?
                        .ok_or_else(missing)?,
                )?,
                Kind::Execution => {
                    let then = as_of::execution(&store, None, &id, moment)
                        .await?
                        .ok_or_else(missing)?;
                    let mut shown = serde_json::to_value(&then.view)?;
                    shown["steps"] = serde_json::to_value(&then.steps)?;
                    shown
                }
            };
            println!("{}", serde_json::to_string_pretty(&shown)?);
            Ok(())
        }
        Command::Diff {
            kind: DiffKind::Workflow,
            id,
            from,
            to,
        } => {
            use toolhub_projections::as_of::{fold_any_tenant, workflow_diff, AsOf};
            let store = open(&url).await?;
            let folded = fold_any_tenant::<Workflow>(&store, &id, AsOf::Version(u64::MAX))
                .await?
                .ok_or_else(|| anyhow!("no workflow {id}"))?;
            let latest = folded.state.current_version();
            let diff = workflow_diff(&folded.state, from, to)?
                .ok_or_else(|| anyhow!("workflow {id} has definition versions 1 to {latest}"))?;
            println!("{}", serde_json::to_string_pretty(&diff)?);
            Ok(())
        }
        Command::Timeline { id } => {
            let store = open(&url).await?;
            let events = store
                .stream("execution", &id)
                .await
                .context("cannot read the execution's events")?;
            if events.is_empty() {
                return Err(anyhow!("no execution {id}"));
            }
            println!(
                "{:>4}  {:<27}  {:<22}  {:<20}  {:>7}  detail",
                "seq", "recorded", "event", "node", "attempt"
            );
            for event in events {
                let text = |field: &str| {
                    event.payload[field]
                        .as_str()
                        .map(|s| s.replace(['\n', '\r'], " "))
                        .unwrap_or_default()
                };
                let attempt = event.payload["attempt"]
                    .as_u64()
                    .map(|a| a.to_string())
                    .unwrap_or_default();
                let mut detail = [text("error"), text("reason"), text("status")]
                    .into_iter()
                    .find(|s| !s.is_empty())
                    .unwrap_or_default();
                if detail.chars().count() > 80 {
                    detail = detail.chars().take(79).collect::<String>() + "…";
                }
                println!(
                    "{:>4}  {:<27}  {:<22}  {:<20}  {:>7}  {}",
                    event.sequence,
                    event
                        .recorded_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    event.event_type,
                    text("node_id"),
                    attempt,
                    detail
                );
            }
            Ok(())
        }
        Command::Export {
            from,
            to,
            tenant,
            actor,
            aggregate_type,
            format,
            batch_size,
        } => {
            let tenant = tenant
                .map(|t| {
                    toolhub_domain::TenantId::parse(t.clone())
                        .map_err(|_| Exit::Usage(format!("{t:?} is not an organisation id")))
                })
                .transpose()?;
            let store = open(&url).await?;
            export(
                &store,
                from,
                to,
                tenant,
                actor,
                aggregate_type,
                format,
                batch_size,
            )
            .await
        }
        Command::Verify {
            expect,
            batch_size,
            skip_read_models,
            read_models_only,
            max_mismatches,
        } => {
            let store = open(&url).await?;
            if !read_models_only {
                verify_chain(&store, expect, batch_size).await?;
            }
            if !skip_read_models {
                verify_read_models(&store, batch_size, max_mismatches).await?;
            }
            Ok(())
        }
        Command::Stalls => {
            let store = open(&url).await?;
            let stalls = toolhub_projections::stalls(store.db())
                .await
                .context("cannot read the projectors' checkpoints")?;
            if stalls.is_empty() {
                println!("no projection is stopped");
            }
            for stall in stalls {
                println!(
                    "{}: stopped at position {} ({}) since {}: {}",
                    stall.projection,
                    stall.position.global,
                    stall.position,
                    stall.since.to_rfc3339(),
                    stall.error.replace(['\n', '\r'], " ")
                );
            }
            Ok(())
        }
    }
}

/// `verify`'s first half: the hash chain, and the head recorded earlier.
async fn verify_chain(
    store: &EventStore,
    expect: Option<(toolhub_eventstore::Position, String)>,
    batch_size: u32,
) -> anyhow::Result<()> {
    let length = log_length(store)
        .await
        .context("cannot count the events to verify")?;
    let bar = progress_bar("verify", length);
    let found = toolhub_projections::chain::verify(store, batch_size, |done| {
        if done > bar.length().unwrap_or(0) {
            bar.set_length(done);
        }
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let found = found.context("cannot verify the hash chain")?;
    if let Some(fault) = &found.fault {
        return Err(anyhow!(
            "the log does not match its hash chain at {fault} ({} events before it verified)",
            found.verified
        ));
    }
    println!("verified: {} events", found.verified);
    if found.unchained > 0 {
        println!(
            "not chained yet: {} events (the chain pass runs behind the log)",
            found.unchained
        );
    }
    match &found.head {
        Some(head) => println!("head: {}={}", head.position, hex(&head.hash)),
        None => println!("head: none (no event is chained yet)"),
    }
    if let Some((position, hash)) = expect {
        let verified_through = found.head.as_ref().map(|h| h.position);
        let recorded = toolhub_projections::chain::link_at(store, position)
            .await
            .context("cannot read the hash chain")?;
        let matches = recorded
            .as_ref()
            .is_some_and(|link| hex(&link.hash) == hash);
        if !matches || verified_through.is_none_or(|through| through < position) {
            return Err(anyhow!(
                "the recorded head {position}={hash} is not in the verified chain: \
                 the log changed at or before it"
            ));
        }
        println!("expected head {position}: matches");
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `verify`'s second half: every read model rebuilt apart and compared
/// with the live one.
async fn verify_read_models(
    store: &EventStore,
    batch_size: u32,
    max_mismatches: u32,
) -> anyhow::Result<()> {
    use toolhub_projections::shadow::{check_read_models, CheckOptions, Difference, Step};
    let projections = toolhub_projections::projection::all();
    let selected: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
    let length = log_length(store)
        .await
        .context("cannot count the events to replay")?;
    let replay_bar = progress_bar("read models", length);
    let mut compare_bar: Option<ProgressBar> = None;
    let options = CheckOptions {
        batch_size,
        max_reported: max_mismatches as usize,
    };
    let checked = check_read_models(store, &selected, options, |step| match step {
        Step::Replayed(done) => {
            if done > replay_bar.length().unwrap_or(0) {
                replay_bar.set_length(done);
            }
            replay_bar.set_position(done);
        }
        Step::Compared(rows) => {
            let bar = compare_bar.get_or_insert_with(|| {
                replay_bar.finish_and_clear();
                let bar = ProgressBar::new_spinner();
                if let Ok(style) =
                    ProgressStyle::with_template("{prefix:>12} {spinner} {human_pos} rows")
                {
                    bar.set_style(style);
                }
                bar.set_prefix("compare");
                bar
            });
            bar.set_position(rows);
        }
    })
    .await;
    replay_bar.finish_and_clear();
    if let Some(bar) = compare_bar {
        bar.finish_and_clear();
    }
    let checked = checked.context("cannot rebuild the read models to compare them")?;
    for projection in &checked.projections {
        let rows: u64 = projection.tables.iter().map(|t| t.live_rows).sum();
        let state = if projection.tables.iter().all(|t| t.agrees()) {
            "matches the log"
        } else {
            "does not match the log"
        };
        println!(
            "read model {} at {}: {} table(s), {rows} row(s), {state}",
            projection.projection,
            projection.checkpoint,
            projection.tables.len(),
        );
        for table in projection.tables.iter().filter(|t| !t.agrees()) {
            println!(
                "  {}: {} row(s) differ, {} missing, {} extra ({} live, {} rebuilt)",
                table.table,
                table.differing,
                table.missing,
                table.extra,
                table.live_rows,
                table.rebuilt_rows
            );
            for mismatch in &table.first {
                match &mismatch.difference {
                    Difference::Values(columns) => {
                        for column in columns {
                            println!(
                                "    {} {}: {}: live {}, rebuilt {}",
                                table.table,
                                mismatch.key,
                                column.column,
                                shown(column.live.as_deref()),
                                shown(column.rebuilt.as_deref())
                            );
                        }
                    }
                    Difference::Missing => println!(
                        "    {} {}: missing from the live table",
                        table.table, mismatch.key
                    ),
                    Difference::Extra => println!(
                        "    {} {}: extra in the live table (the log does not make it)",
                        table.table, mismatch.key
                    ),
                }
            }
            let hidden = table.mismatches() - table.first.len() as u64;
            if hidden > 0 {
                println!("    … and {hidden} more");
            }
        }
    }
    let wrong: Vec<String> = checked
        .tables()
        .filter(|t| !t.agrees())
        .map(|t| format!("{} ({} row(s))", t.table, t.mismatches()))
        .collect();
    if !wrong.is_empty() {
        return Err(Exit::ReadModels(format!(
            "the read models do not match the log: {}",
            wrong.join(", ")
        ))
        .into());
    }
    Ok(())
}

/// A value as `verify` shows it: quoted, on one line, at most 200
/// characters.
fn shown(value: Option<&str>) -> String {
    let Some(value) = value else {
        return "NULL".into();
    };
    let quoted = serde_json::Value::String(value.to_string()).to_string();
    if quoted.chars().count() > 200 {
        let cut: String = quoted.chars().take(199).collect();
        format!("{cut}…")
    } else {
        quoted
    }
}

/// The read models to rebuild: the named one, or all of them.
fn select(name: Option<&str>) -> anyhow::Result<Vec<Arc<dyn Projection>>> {
    let all = toolhub_projections::projection::all();
    let Some(name) = name else {
        return Ok(all);
    };
    let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
    let known = names.join(", ");
    all.iter()
        .find(|p| p.name() == name)
        .map(|p| vec![p.clone()])
        .ok_or_else(|| {
            Exit::Usage(format!(
                "unknown projection {name:?}: expected one of {known}"
            ))
            .into()
        })
}

async fn open(url: &str) -> anyhow::Result<EventStore> {
    let shown = redact_url(url);
    let options = StoreOptions {
        max_connections: 4,
        acquire_timeout: Duration::from_secs(5),
        migrate: true,
        // A rebuild copies and indexes whole tables; its statements are
        // long by nature. Idle transactions and dead peers stay bounded.
        statement_timeout: None,
        ..Default::default()
    };
    toolhub_eventstore::open_with(url, options)
        .await
        .with_context(|| format!("cannot open {shown}"))
}

async fn rebuild_all(
    store: &EventStore,
    projections: &[Arc<dyn Projection>],
    batch_size: u32,
) -> anyhow::Result<()> {
    let names: Vec<&str> = projections.iter().map(|p| p.name()).collect();
    let label = if names.len() == 1 {
        names[0]
    } else {
        "read models"
    };
    let length = log_length(store)
        .await
        .context("cannot count the events to replay")?;
    let bar = progress_bar(label, length);
    // One pass over the log feeds every selected read model.
    let selected: Vec<&dyn Projection> = projections.iter().map(|p| p.as_ref()).collect();
    let summary = rebuild_many(store, &selected, batch_size, |done| {
        // Writers may append while the rebuild runs, so the log can outgrow
        // the length counted at the start.
        if done > bar.length().unwrap_or(0) {
            bar.set_length(done);
        }
        bar.set_position(done);
    })
    .await;
    bar.finish_and_clear();
    let summary = summary.with_context(|| format!("rebuilding {} failed", names.join(", ")))?;
    for name in &summary.projections {
        println!("{name}: rebuilt, checkpoint {}", summary.checkpoint);
    }
    let elapsed = summary.elapsed.as_secs_f64();
    println!(
        "total: {} read model(s), {} events in {elapsed:.2} s ({} events/s)",
        summary.projections.len(),
        summary.events,
        rate(summary.rate())
    );
    Ok(())
}

fn progress_bar(name: &str, length: u64) -> ProgressBar {
    let bar = ProgressBar::new(length);
    // The template is a constant, so it always parses; a failure would only
    // cost the styling.
    if let Ok(style) = ProgressStyle::with_template(
        "{prefix:>12} [{bar:30}] {human_pos}/{human_len} events, {rate}, {eta} left",
    ) {
        let style = style
            .with_key(
                "rate",
                |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                    let _ = write!(w, "{:.0} events/s", state.per_sec());
                },
            )
            .progress_chars("=> ");
        bar.set_style(style);
    }
    bar.set_prefix(name.to_string());
    bar
}

/// A rate rounded to whole events per second.
fn rate(per_second: f64) -> u64 {
    per_second.round().max(0.0) as u64
}

/// Streams the audit read model to standard output.
#[allow(clippy::too_many_arguments)]
async fn export(
    store: &EventStore,
    from: Option<Bound>,
    to: Option<Bound>,
    tenant: Option<toolhub_domain::TenantId>,
    actor: Option<String>,
    aggregate_type: Option<AggregateKind>,
    format: Format,
    batch_size: u32,
) -> anyhow::Result<()> {
    use std::io::Write;
    use toolhub_eventstore::Position;
    let read = toolhub_projections::ReadModels::new(store);
    let filter = toolhub_projections::AuditFilter {
        aggregate_type: aggregate_type.map(|k| k.stored().to_string()),
        aggregate_id: None,
        actor,
        from: match from {
            Some(Bound::Time(t)) => Some(t),
            _ => None,
        },
        to: match to {
            Some(Bound::Time(t)) => Some(t),
            _ => None,
        },
    };
    // Just before the first position wanted: nothing sits between the
    // two within one transaction.
    let mut after = match from {
        Some(Bound::Position(p)) => Position::new(p.transaction, p.global - 1),
        _ => Position::ZERO,
    };
    let until = match to {
        Some(Bound::Position(p)) => Some(p),
        _ => None,
    };
    // Each page is formatted into a buffer as the database streams it, and
    // the full buffer goes to a writer thread while the next page streams
    // into the other one. No statement is open while standard output
    // blocks (a paused pager, a slow pipe): the page is read to its end into
    // memory whatever the reader downstream does, so a session never sits
    // waiting on it for the server to give up on. Two buffers, reused from
    // page to page, are all there is: memory is bounded by two pages'
    // text, and nothing is allocated on one thread and freed on the other.
    let (full_tx, mut full_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let (empty_tx, mut empty_rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let writer = std::thread::Builder::new()
        .name("export-writer".into())
        .spawn(move || -> std::io::Result<()> {
            let mut out = std::io::stdout().lock();
            while let Some(mut buffer) = full_rx.blocking_recv() {
                out.write_all(&buffer)?;
                buffer.clear();
                if empty_tx.blocking_send(buffer).is_err() {
                    break;
                }
            }
            out.flush()
        })
        .context("cannot start the export's writer")?;
    let mut spare = Some(Vec::new());
    let mut buffer = Vec::new();
    if matches!(format, Format::Csv) {
        let mut header = csv::WriterBuilder::new().from_writer(&mut buffer);
        header.write_record(audit_lines::CSV_HEADER)?;
        header.flush()?;
    }
    let mut scratch = Vec::new();
    let bar = ProgressBar::new_spinner();
    bar.set_prefix("export");
    let mut written = 0u64;
    let mut read_all = false;
    while !read_all {
        let (n, last) = match format {
            Format::Jsonl => {
                read.export_each(
                    tenant.as_ref(),
                    after,
                    until,
                    &filter,
                    batch_size,
                    |entry| -> anyhow::Result<()> {
                        Ok(audit_lines::write_json(&mut buffer, entry)?)
                    },
                )
                .await
            }
            Format::Csv => {
                let mut records = csv::WriterBuilder::new()
                    .has_headers(false)
                    .from_writer(&mut buffer);
                let page = read
                    .export_each(
                        tenant.as_ref(),
                        after,
                        until,
                        &filter,
                        batch_size,
                        |entry| -> anyhow::Result<()> {
                            Ok(audit_lines::write_csv(&mut records, &mut scratch, entry)?)
                        },
                    )
                    .await;
                records.flush()?;
                page
            }
        }
        .context("cannot export the audit log")?;
        written += n;
        after = last;
        read_all = n < u64::from(batch_size);
        bar.set_position(written);
        // A send or a receive fails only when the writer has stopped, on
        // an error that joining it reports.
        if full_tx.send(buffer).await.is_err() {
            break;
        }
        buffer = match spare.take() {
            Some(b) => b,
            None => match empty_rx.recv().await {
                Some(b) => b,
                None => break,
            },
        };
    }
    drop(full_tx);
    match writer.join() {
        Ok(result) => result.context("cannot write the export")?,
        Err(_) => return Err(anyhow!("the export's writer stopped unexpectedly")),
    }
    bar.finish_and_clear();
    eprintln!("exported {written} events");
    Ok(())
}
