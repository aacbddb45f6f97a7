//! The service's configuration: read from the environment, checked once at
//! start-up, then immutable.
//!
//! Zero configuration works: the embedded SQLite database, a development JWT
//! secret and master key generated into the data directory (mode 0600, with a
//! warning), and `127.0.0.1:8080`. `TOOLHUB_ENV=production` turns every one
//! of those conveniences into a refusal to start, with one line that says
//! what is missing.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toolhub_engine::egress::EgressPolicy;
use toolhub_engine::EngineConfig;
use toolhub_eventstore::MasterKey;
use zeroize::Zeroizing;

/// The shortest HS256 secret accepted in production, in bytes.
pub const MIN_JWT_SECRET_LEN: usize = 32;

/// The name of the generated JWT secret file in the data directory.
pub const JWT_SECRET_FILE: &str = "jwt-secret";

/// The name of the generated master key file in the data directory.
pub const MASTER_KEY_FILE: &str = "master.key";

/// Why the configuration is unusable. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A variable has a value that cannot be used.
    #[error("{name}: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it (never its value when it is a secret).
        reason: String,
    },
    /// Production mode and something is missing or too weak.
    #[error("TOOLHUB_ENV=production: {0}")]
    Production(String),
    /// A key file could not be read or written.
    #[error("{path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// Development (the default) or production.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    /// Generated keys are allowed, with a warning.
    Development,
    /// Every key must be given; nothing is generated.
    Production,
}

/// How tokens are verified.
#[derive(Clone)]
pub enum JwtKey {
    /// HS256 with a shared secret.
    Hs256(Zeroizing<Vec<u8>>),
    /// RS256 with a PEM public key.
    Rs256Pem(Vec<u8>),
    /// ES256 with a PEM public key.
    Es256Pem(Vec<u8>),
}

impl std::fmt::Debug for JwtKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key material.
        f.write_str(match self {
            Self::Hs256(_) => "JwtKey::Hs256(..)",
            Self::Rs256Pem(_) => "JwtKey::Rs256Pem(..)",
            Self::Es256Pem(_) => "JwtKey::Es256Pem(..)",
        })
    }
}

/// The JWT settings.
#[derive(Debug, Clone)]
pub struct JwtConfig {
    /// The verification key.
    pub key: JwtKey,
    /// The `iss` every token must carry, when set.
    pub issuer: Option<String>,
    /// The `aud` every token must carry, when set (a token's `aud` may be
    /// one string or an array that contains it).
    pub audience: Option<String>,
    /// How far the clocks of the token's issuer and this server may
    /// disagree: `exp` and `nbf` are checked with this much tolerance.
    pub leeway: Duration,
}

/// The default [`JwtConfig::leeway`].
pub const DEFAULT_JWT_LEEWAY: Duration = Duration::from_secs(30);

/// Limits that protect the service from expensive requests.
#[derive(Debug, Clone)]
pub struct Limits {
    /// The largest request body, in bytes.
    pub body_bytes: usize,
    /// The deepest GraphQL selection: 16, so that the introspection query
    /// GraphiQL and graphql-js clients send (14 fields deep, then a leaf)
    /// passes.
    pub depth: usize,
    /// The most expensive GraphQL query (async-graphql's complexity).
    pub complexity: usize,
    /// How long a query's `consistency` or a mutation's payload waits for the
    /// read models to reach a position.
    pub consistency_wait: Duration,
    /// The most projector lag `/health/ready` tolerates, in events.
    pub ready_max_lag_events: u64,
    /// The oldest unapplied event `/health/ready` tolerates.
    pub ready_max_lag: Duration,
    /// How long a subscription socket may stay open without completing
    /// `connection_init`; then it is closed with code 4408.
    pub ws_init_timeout: Duration,
    /// The largest WebSocket message a client may send, in bytes; a larger
    /// one closes the socket with 1009.
    pub ws_max_message_bytes: usize,
    /// How many messages a client may send before its `connection_init` is
    /// acknowledged; one more closes the socket with 4400.
    pub ws_init_buffer: usize,
    /// How often the server sends a graphql-transport-ws `ping` on an idle
    /// socket (proxies keep it open; a dead peer is noticed).
    pub ws_keepalive: Duration,
    /// How many subscriptions one socket may run at once.
    pub ws_subscriptions_per_socket: usize,
    /// How many subscriptions one caller (tenant and `sub`) may run at once
    /// on this replica, over all their sockets.
    pub ws_subscriptions_per_caller: usize,
    /// The longest a `POST /graphql` request may take; then it is answered
    /// with `TIMEOUT`.
    pub request_timeout: Duration,
    /// How many `POST /graphql` requests this replica serves at once; one
    /// more is answered at once with `OVERLOADED`.
    pub max_concurrent_requests: usize,
    /// Whether the schema answers introspection (`__schema`, `__type`).
    pub introspection: bool,
    /// Request rates per caller and per client address.
    pub rate: RateLimits,
    /// The largest body a webhook delivery may carry, in bytes (at most
    /// `body_bytes`, which bounds every request).
    pub webhook_body_bytes: usize,
    /// Deliveries per webhook; `None` turns the limit off.
    pub webhook_rate: Option<Rate>,
}

/// Incoming webhooks.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// The service's address as senders reach it (`https://hooks.example.com`),
    /// from which webhook URLs are made; `None` uses the listening address.
    pub public_url: Option<String>,
    /// How long a rotated-out secret stays valid when `rotateWebhookSecret`
    /// is not told.
    pub grace: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            public_url: None,
            grace: Duration::from_secs(24 * 3600),
        }
    }
}

/// A rate: so many operations per period, with bursts up to the same
/// number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// How many operations.
    pub count: u32,
    /// In how long.
    pub per: Duration,
}

impl Rate {
    /// `count` operations per minute.
    pub const fn per_minute(count: u32) -> Self {
        Self {
            count,
            per: Duration::from_secs(60),
        }
    }

    /// Parses `600/min`, `10/s`, `1000/h` or `50/30s`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = || format!("{text:?} is not a rate such as 600/min, 10/s or 1000/h");
        let (count, per) = text.trim().split_once('/').ok_or_else(invalid)?;
        let count: u32 = count.trim().parse().map_err(|_| invalid())?;
        let per = match per.trim() {
            "s" | "sec" | "second" => Duration::from_secs(1),
            "m" | "min" | "minute" => Duration::from_secs(60),
            "h" | "hour" => Duration::from_secs(3600),
            other => humantime::parse_duration(other).map_err(|_| invalid())?,
        };
        if count == 0 || per.is_zero() {
            return Err(invalid());
        }
        Ok(Self { count, per })
    }
}

/// Rates for each kind of operation, one set per caller and one per client
/// address. `None` turns a limit off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OperationRates {
    /// GraphQL queries (`POST /graphql`).
    pub queries: Option<Rate>,
    /// GraphQL mutations.
    pub mutations: Option<Rate>,
    /// Subscriptions started (and, per address, WebSocket connections).
    pub subscriptions: Option<Rate>,
}

impl OperationRates {
    /// Parses `queries=1200/min,mutations=300/min,subscriptions=60/min`;
    /// a kind left out keeps `defaults`' rate, `off` turns every limit of
    /// the set off, and `kind=off` one of them.
    pub fn parse(text: &str, defaults: &Self) -> Result<Self, String> {
        let text = text.trim();
        if text == "off" {
            return Ok(Self::default());
        }
        let mut rates = defaults.clone();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (kind, rate) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not kind=rate, such as queries=600/min"))?;
            let rate = match rate.trim() {
                "off" => None,
                rate => Some(Rate::parse(rate)?),
            };
            match kind.trim() {
                "queries" => rates.queries = rate,
                "mutations" => rates.mutations = rate,
                "subscriptions" => rates.subscriptions = rate,
                other => {
                    return Err(format!(
                        "{other:?} is not queries, mutations or subscriptions"
                    ))
                }
            }
        }
        Ok(rates)
    }
}

/// The rate limits. Each replica counts on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Per caller (tenant and `sub`).
    pub per_subject: OperationRates,
    /// Per client address.
    pub per_address: OperationRates,
    /// A header that carries the client's address when the service is
    /// behind a proxy (`x-forwarded-for`: its first address is taken); the
    /// proxy must set it, never pass on the client's own. Unset: the
    /// address of the TCP peer.
    pub client_address_header: Option<String>,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            per_subject: OperationRates {
                queries: Some(Rate::per_minute(3_000)),
                mutations: Some(Rate::per_minute(600)),
                subscriptions: Some(Rate::per_minute(300)),
            },
            per_address: OperationRates {
                queries: Some(Rate::per_minute(6_000)),
                mutations: Some(Rate::per_minute(1_200)),
                subscriptions: Some(Rate::per_minute(600)),
            },
            client_address_header: None,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            body_bytes: 1024 * 1024,
            depth: 16,
            complexity: 10_000,
            consistency_wait: Duration::from_secs(5),
            ready_max_lag_events: 10_000,
            ready_max_lag: Duration::from_secs(60),
            ws_init_timeout: Duration::from_secs(10),
            ws_max_message_bytes: 64 * 1024,
            ws_init_buffer: 16,
            ws_keepalive: Duration::from_secs(15),
            ws_subscriptions_per_socket: 50,
            ws_subscriptions_per_caller: 200,
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            introspection: true,
            rate: RateLimits::default(),
            webhook_body_bytes: 256 * 1024,
            webhook_rate: Some(Rate::per_minute(600)),
        }
    }
}

/// Everything `toolhub serve` needs, resolved.
#[derive(Debug, Clone)]
pub struct Config {
    /// Development or production.
    pub environment: Environment,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub listen: SocketAddr,
    /// The database URL (`postgres://…` or `sqlite://…`).
    pub database_url: String,
    /// Token verification.
    pub jwt: JwtConfig,
    /// Wraps the secrets' data keys.
    pub master_key: MasterKey,
    /// Origins allowed by CORS; empty allows none (same-origin only), `*`
    /// allows any.
    pub cors_origins: Vec<String>,
    /// Request limits.
    pub limits: Limits,
    /// Whether to run the projectors in this process.
    pub run_projectors: bool,
    /// Whether to run the engine's workers in this process (`toolhub
    /// serve` does by default; `toolhub worker` runs only them).
    pub run_engine: bool,
    /// The engine's settings.
    pub engine: EngineConfig,
    /// The database pool and the PostgreSQL session settings of its
    /// connections (statement and idle-in-transaction timeouts, dead-peer
    /// detection).
    pub database: toolhub_eventstore::StoreOptions,
    /// Incoming webhooks.
    pub webhooks: WebhookConfig,
}

impl Config {
    /// A configuration for tests and embedding: the given database and HS256
    /// secret, a fresh master key, a free loopback port, default limits.
    pub fn for_tests(database_url: impl Into<String>, jwt_secret: &[u8]) -> Self {
        Self {
            environment: Environment::Development,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            database_url: database_url.into(),
            jwt: JwtConfig {
                key: JwtKey::Hs256(Zeroizing::new(jwt_secret.to_vec())),
                issuer: None,
                audience: None,
                leeway: DEFAULT_JWT_LEEWAY,
            },
            master_key: MasterKey::generate(),
            cors_origins: Vec::new(),
            limits: Limits::default(),
            run_projectors: true,
            run_engine: true,
            engine: EngineConfig {
                // Tests see a dead worker's executions taken over quickly,
                // and reach servers they run on loopback.
                lease: Duration::from_secs(3),
                health_interval: Duration::from_secs(3600),
                ..EngineConfig::default()
            },
            database: toolhub_eventstore::StoreOptions::default(),
            webhooks: WebhookConfig::default(),
        }
    }

    /// Reads the configuration from the process environment, generating
    /// development keys into the data directory when allowed.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(env_var)
    }

    /// Reads only the JWT settings from the environment (for `toolhub
    /// token`), generating the development secret when allowed.
    pub fn jwt_from_env() -> Result<JwtConfig, ConfigError> {
        Self::jwt_from_lookup(&env_var)
    }

    /// The JWT settings, read through `var`.
    fn jwt_from_lookup(var: &impl Fn(&str) -> Option<String>) -> Result<JwtConfig, ConfigError> {
        let environment = Environment::from_lookup(var)?;
        Ok(JwtConfig {
            key: jwt_key(var, environment, &data_dir(var))?,
            issuer: var("TOOLHUB_JWT_ISSUER"),
            audience: var("TOOLHUB_JWT_AUDIENCE"),
            leeway: match var("TOOLHUB_JWT_LEEWAY") {
                // Zero is a valid leeway (clocks in sync).
                Some(text) if text.trim() == "0" => Duration::ZERO,
                _ => duration_var(var, "TOOLHUB_JWT_LEEWAY", DEFAULT_JWT_LEEWAY)?,
            },
        })
    }

    /// Reads the configuration through `var` (the environment, or a map in
    /// tests).
    pub fn from_lookup(var: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let environment = Environment::from_lookup(&var)?;
        let production = environment == Environment::Production;
        let data_dir = data_dir(&var);
        let listen = match var("TOOLHUB_LISTEN") {
            None => SocketAddr::from(([127, 0, 0, 1], 8080)),
            Some(v) => v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "TOOLHUB_LISTEN",
                reason: format!("{v:?} is not an address such as 127.0.0.1:8080"),
            })?,
        };
        let database_url =
            var("DATABASE_URL").unwrap_or_else(|| toolhub_eventstore::embedded_url(&data_dir));
        let jwt = Self::jwt_from_lookup(&var)?;
        let master_key = match var("TOOLHUB_MASTER_KEY") {
            Some(encoded) => MasterKey::from_base64(&encoded).map_err(|e| ConfigError::Invalid {
                name: "TOOLHUB_MASTER_KEY",
                reason: e.to_string(),
            })?,
            None if production => {
                return Err(ConfigError::Production(
                    "TOOLHUB_MASTER_KEY is missing (32 random bytes, base64); refusing to generate a development master key".into(),
                ))
            }
            None => development_master_key(&data_dir)?,
        };
        let cors_origins = var("TOOLHUB_CORS_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().to_string())
                    .filter(|o| !o.is_empty())
                    .collect()
            })
            .unwrap_or_default();
        let limits = limits_from_lookup(&var, environment)?;
        let engine = engine_config(&var)?;
        let run_engine = match var("TOOLHUB_RUN_ENGINE").as_deref().map(str::trim) {
            None | Some("true") | Some("1") | Some("yes") => true,
            Some("false") | Some("0") | Some("no") => false,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "TOOLHUB_RUN_ENGINE",
                    reason: format!("{other:?} is neither true nor false"),
                })
            }
        };
        let database = database_options(&var)?;
        let webhooks = WebhookConfig {
            public_url: match var("TOOLHUB_PUBLIC_URL") {
                None => None,
                Some(text) => {
                    let text = text.trim().trim_end_matches('/').to_string();
                    match url::Url::parse(&text) {
                        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {
                            Some(text)
                        }
                        _ => {
                            return Err(ConfigError::Invalid {
                                name: "TOOLHUB_PUBLIC_URL",
                                reason: format!("{text:?} is not an http(s) URL"),
                            })
                        }
                    }
                }
            },
            grace: duration_var(
                &var,
                "TOOLHUB_WEBHOOK_GRACE",
                WebhookConfig::default().grace,
            )?,
        };
        Ok(Self {
            webhooks,
            database,
            environment,
            listen,
            database_url,
            jwt,
            master_key,
            cors_origins,
            limits,
            run_projectors: true,
            run_engine,
            engine,
        })
    }
}

/// The database pool and session settings from the environment
/// (`TOOLHUB_DB_*`); see docs/runbook.md for what each bounds.
fn database_options(
    var: &impl Fn(&str) -> Option<String>,
) -> Result<toolhub_eventstore::StoreOptions, ConfigError> {
    let defaults = toolhub_eventstore::StoreOptions::default();
    let max_connections = match var("TOOLHUB_DB_MAX_CONNECTIONS") {
        None => defaults.max_connections,
        Some(v) => match v.trim().parse::<u32>() {
            Ok(n) if n >= 2 => n,
            _ => {
                return Err(ConfigError::Invalid {
                    name: "TOOLHUB_DB_MAX_CONNECTIONS",
                    reason: format!("{v:?} is not a whole number of at least 2"),
                })
            }
        },
    };
    // A timeout of `0` turns the server-side bound off; the pool's own
    // acquire timeout cannot be turned off.
    let optional = |name: &'static str, default: Option<Duration>| match var(name) {
        Some(v) if v.trim() == "0" => Ok(None),
        _ => duration_var(var, name, default.unwrap_or(Duration::ZERO)).map(|d| {
            if d.is_zero() {
                None
            } else {
                Some(d)
            }
        }),
    };
    Ok(toolhub_eventstore::StoreOptions {
        max_connections,
        acquire_timeout: duration_var(var, "TOOLHUB_DB_ACQUIRE_TIMEOUT", defaults.acquire_timeout)?,
        statement_timeout: optional("TOOLHUB_DB_STATEMENT_TIMEOUT", defaults.statement_timeout)?,
        idle_in_transaction_timeout: optional(
            "TOOLHUB_DB_IDLE_IN_TRANSACTION_TIMEOUT",
            defaults.idle_in_transaction_timeout,
        )?,
        dead_peer_timeout: optional("TOOLHUB_DB_DEAD_PEER_TIMEOUT", defaults.dead_peer_timeout)?,
        migrate: true,
    })
}

/// The request limits from the environment.
fn limits_from_lookup(
    var: &impl Fn(&str) -> Option<String>,
    environment: Environment,
) -> Result<Limits, ConfigError> {
    let defaults = Limits::default();
    let rate_defaults = RateLimits::default();
    let rates = |name: &'static str, defaults: &OperationRates| match var(name) {
        None => Ok(defaults.clone()),
        Some(text) => OperationRates::parse(&text, defaults)
            .map_err(|reason| ConfigError::Invalid { name, reason }),
    };
    let introspection = match var("TOOLHUB_GRAPHQL_INTROSPECTION")
        .as_deref()
        .map(str::trim)
    {
        // Off in production unless asked for: the schema is public in
        // docs/schema.graphql, but a production API need not hand it out.
        None => environment == Environment::Development,
        Some(text) => bool_value(text).ok_or_else(|| ConfigError::Invalid {
            name: "TOOLHUB_GRAPHQL_INTROSPECTION",
            reason: format!("{text:?} is neither true nor false"),
        })?,
    };
    Ok(Limits {
        ready_max_lag_events: count_var(
            var,
            "TOOLHUB_READY_MAX_LAG_EVENTS",
            defaults.ready_max_lag_events,
        )?,
        complexity: count_var(var, "TOOLHUB_GRAPHQL_MAX_COMPLEXITY", defaults.complexity)?,
        ws_init_timeout: duration_var(var, "TOOLHUB_WS_INIT_TIMEOUT", defaults.ws_init_timeout)?,
        ws_max_message_bytes: count_var(
            var,
            "TOOLHUB_WS_MAX_MESSAGE_BYTES",
            defaults.ws_max_message_bytes,
        )?,
        ws_keepalive: duration_var(var, "TOOLHUB_WS_KEEPALIVE", defaults.ws_keepalive)?,
        ws_subscriptions_per_socket: count_var(
            var,
            "TOOLHUB_WS_SUBSCRIPTIONS_PER_SOCKET",
            defaults.ws_subscriptions_per_socket,
        )?,
        ws_subscriptions_per_caller: count_var(
            var,
            "TOOLHUB_WS_SUBSCRIPTIONS_PER_CALLER",
            defaults.ws_subscriptions_per_caller,
        )?,
        request_timeout: duration_var(var, "TOOLHUB_REQUEST_TIMEOUT", defaults.request_timeout)?,
        max_concurrent_requests: count_var(
            var,
            "TOOLHUB_MAX_CONCURRENT_REQUESTS",
            defaults.max_concurrent_requests,
        )?,
        introspection,
        rate: RateLimits {
            per_subject: rates("TOOLHUB_RATE_LIMIT_SUBJECT", &rate_defaults.per_subject)?,
            per_address: rates("TOOLHUB_RATE_LIMIT_ADDRESS", &rate_defaults.per_address)?,
            client_address_header: var("TOOLHUB_CLIENT_ADDRESS_HEADER")
                .map(|h| h.trim().to_ascii_lowercase()),
        },
        webhook_body_bytes: match count_var(
            var,
            "TOOLHUB_WEBHOOK_MAX_BODY",
            defaults.webhook_body_bytes,
        )? {
            // Every request is bounded by the body limit first.
            n if n > defaults.body_bytes => {
                return Err(ConfigError::Invalid {
                    name: "TOOLHUB_WEBHOOK_MAX_BODY",
                    reason: format!(
                        "{n} is more than the body limit, {} bytes",
                        defaults.body_bytes
                    ),
                })
            }
            n => n,
        },
        webhook_rate: match var("TOOLHUB_WEBHOOK_RATE_LIMIT").as_deref().map(str::trim) {
            None => defaults.webhook_rate,
            Some("off") => None,
            Some(text) => Some(Rate::parse(text).map_err(|reason| ConfigError::Invalid {
                name: "TOOLHUB_WEBHOOK_RATE_LIMIT",
                reason,
            })?),
        },
        ..defaults
    })
}

/// `true`/`false` and their usual spellings.
fn bool_value(text: &str) -> Option<bool> {
    match text {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// A positive whole-number variable.
fn count_var<T: std::str::FromStr + PartialOrd + Default>(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    let Some(text) = var(name) else {
        return Ok(default);
    };
    match text.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!("{:?} is not a positive whole number", text.trim()),
        }),
    }
}

/// A duration variable (`30s`, `5m`, `1h`, or a number of seconds).
fn duration_var(
    var: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let Some(text) = var(name) else {
        return Ok(default);
    };
    let text = text.trim();
    let parsed = match text.parse::<u64>() {
        Ok(seconds) => Ok(Duration::from_secs(seconds)),
        Err(_) => humantime::parse_duration(text),
    };
    match parsed {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(ConfigError::Invalid {
            name,
            reason: format!("{text:?} is not a positive duration such as 30s, 5m or 1h"),
        }),
    }
}

/// The engine's settings from the environment.
fn engine_config(var: &impl Fn(&str) -> Option<String>) -> Result<EngineConfig, ConfigError> {
    let defaults = EngineConfig::default();
    let egress = match var(toolhub_engine::egress::ALLOW_LIST_ENV) {
        None => EgressPolicy::default(),
        Some(list) => EgressPolicy::parse(&list).map_err(|e| ConfigError::Invalid {
            name: toolhub_engine::egress::ALLOW_LIST_ENV,
            reason: e.to_string(),
        })?,
    };
    Ok(EngineConfig {
        execution_timeout: duration_var(
            var,
            "TOOLHUB_EXECUTION_TIMEOUT",
            defaults.execution_timeout,
        )?,
        mcp_call_timeout: duration_var(var, "TOOLHUB_MCP_CALL_TIMEOUT", defaults.mcp_call_timeout)?,
        health_interval: duration_var(
            var,
            "TOOLHUB_MCP_HEALTH_INTERVAL",
            defaults.health_interval,
        )?,
        lease: duration_var(var, "TOOLHUB_ENGINE_LEASE", defaults.lease)?,
        schedule_late_after: duration_var(
            var,
            "TOOLHUB_CRON_LATE_AFTER",
            defaults.schedule_late_after,
        )?,
        egress,
        ..defaults
    })
}

/// A variable of the process environment; blank counts as unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `TOOLHUB_DATA_DIR`, or `./toolhub-data`.
fn data_dir(var: &impl Fn(&str) -> Option<String>) -> PathBuf {
    PathBuf::from(var("TOOLHUB_DATA_DIR").unwrap_or_else(|| "./toolhub-data".into()))
}

impl Environment {
    /// Reads `TOOLHUB_ENV` (unset means development): the one place it is
    /// parsed, so every subcommand agrees on the mode.
    pub fn from_lookup(var: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        match var("TOOLHUB_ENV").as_deref().map(str::trim) {
            None | Some("development") | Some("dev") => Ok(Self::Development),
            Some("production") | Some("prod") => Ok(Self::Production),
            Some(other) => Err(ConfigError::Invalid {
                name: "TOOLHUB_ENV",
                reason: format!("{other:?} is neither `development` nor `production`"),
            }),
        }
    }
}

fn jwt_key(
    var: &impl Fn(&str) -> Option<String>,
    environment: Environment,
    data_dir: &Path,
) -> Result<JwtKey, ConfigError> {
    let production = environment == Environment::Production;
    if let Some(path) = var("TOOLHUB_JWT_PUBLIC_KEY_FILE") {
        let pem = std::fs::read(&path).map_err(|e| ConfigError::KeyFile {
            path: path.clone().into(),
            reason: e.to_string(),
        })?;
        let text = String::from_utf8_lossy(&pem);
        // An EC key is ES256; anything else is treated as RSA, and a key of
        // the wrong kind is refused when it is parsed below.
        let key = if text.contains("BEGIN EC PUBLIC KEY") || is_ec_spki(&pem) {
            jsonwebtoken::DecodingKey::from_ec_pem(&pem).map(|_| JwtKey::Es256Pem(pem.clone()))
        } else {
            jsonwebtoken::DecodingKey::from_rsa_pem(&pem).map(|_| JwtKey::Rs256Pem(pem.clone()))
        };
        return key.map_err(|e| ConfigError::Invalid {
            name: "TOOLHUB_JWT_PUBLIC_KEY_FILE",
            reason: format!("not an RSA or EC public key in PEM form ({e})"),
        });
    }
    match var("TOOLHUB_JWT_SECRET") {
        Some(secret) => {
            let secret = Zeroizing::new(secret.into_bytes());
            if secret.len() < MIN_JWT_SECRET_LEN {
                if production {
                    return Err(ConfigError::Production(format!(
                        "TOOLHUB_JWT_SECRET is shorter than {MIN_JWT_SECRET_LEN} bytes"
                    )));
                }
                tracing::warn!(
                    "TOOLHUB_JWT_SECRET is shorter than {MIN_JWT_SECRET_LEN} bytes; production mode refuses it"
                );
            }
            Ok(JwtKey::Hs256(secret))
        }
        None if production => Err(ConfigError::Production(
            "TOOLHUB_JWT_SECRET (at least 32 bytes) or TOOLHUB_JWT_PUBLIC_KEY_FILE is missing; refusing to generate a development JWT secret".into(),
        )),
        None => Ok(JwtKey::Hs256(development_jwt_secret(data_dir)?)),
    }
}

/// True when a PEM `PUBLIC KEY` holds an EC key (its SPKI names the
/// id-ecPublicKey OID 1.2.840.10045.2.1).
fn is_ec_spki(pem: &[u8]) -> bool {
    use base64::Engine;
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body.trim()) else {
        return false;
    };
    const EC_OID: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    der.windows(EC_OID.len()).any(|w| w == EC_OID)
}

/// Reads the generated development JWT secret, or generates it.
pub fn development_jwt_secret(data_dir: &Path) -> Result<Zeroizing<Vec<u8>>, ConfigError> {
    let path = data_dir.join(JWT_SECRET_FILE);
    let text = read_or_generate(&path, || {
        use base64::Engine;
        let mut bytes = Zeroizing::new([0u8; 48]);
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, bytes.as_mut());
        Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes.as_ref()))
    })?;
    if text.trim().len() < MIN_JWT_SECRET_LEN {
        return Err(ConfigError::KeyFile {
            path,
            reason: format!("the secret is shorter than {MIN_JWT_SECRET_LEN} bytes"),
        });
    }
    Ok(Zeroizing::new(text.trim().as_bytes().to_vec()))
}

fn development_master_key(data_dir: &Path) -> Result<MasterKey, ConfigError> {
    let path = data_dir.join(MASTER_KEY_FILE);
    let text = read_or_generate(&path, || MasterKey::generate().to_base64())?;
    MasterKey::from_base64(&text).map_err(|e| ConfigError::KeyFile {
        path,
        reason: e.to_string(),
    })
}

/// Reads a key file, or writes a new key to it with mode 0600 and warns.
fn read_or_generate(
    path: &Path,
    generate: impl FnOnce() -> Zeroizing<String>,
) -> Result<Zeroizing<String>, ConfigError> {
    let key_error = |e: std::io::Error| ConfigError::KeyFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => return Ok(Zeroizing::new(text)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(key_error(e)),
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(key_error)?;
    }
    let key = generate();
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    match options.open(path) {
        Ok(mut file) => {
            use std::io::Write;
            file.write_all(key.as_bytes()).map_err(key_error)?;
            tracing::warn!(
                path = %path.display(),
                "generated a development key; never use it in production (TOOLHUB_ENV=production refuses it)"
            );
            Ok(key)
        }
        // Another process generated it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => std::fs::read_to_string(path)
            .map(Zeroizing::new)
            .map_err(key_error),
        Err(e) => Err(key_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn lookup(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |name| map.get(name).cloned()
    }

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("toolhub-config-{}", uuid::Uuid::new_v4().simple()))
    }

    #[test]
    fn zero_configuration_generates_private_development_keys() {
        let dir = temp_dir();
        let config = Config::from_lookup(lookup(&[("TOOLHUB_DATA_DIR", dir.to_str().unwrap())]))
            .expect("zero configuration works");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert!(config.database_url.starts_with("sqlite://"));
        for file in [JWT_SECRET_FILE, MASTER_KEY_FILE] {
            let meta = std::fs::metadata(dir.join(file)).expect("the key file exists");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{file}");
            }
            let _ = meta;
        }
        // A second start reuses the same keys.
        let again = Config::from_lookup(lookup(&[("TOOLHUB_DATA_DIR", dir.to_str().unwrap())]))
            .expect("again");
        assert_eq!(
            again.master_key.fingerprint(),
            config.master_key.fingerprint()
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn database_limits_are_read_from_the_environment_and_zero_turns_a_timeout_off() {
        let dir = temp_dir();
        let config = Config::from_lookup(lookup(&[
            ("TOOLHUB_DATA_DIR", dir.to_str().unwrap()),
            ("TOOLHUB_DB_MAX_CONNECTIONS", "40"),
            ("TOOLHUB_DB_ACQUIRE_TIMEOUT", "3s"),
            ("TOOLHUB_DB_STATEMENT_TIMEOUT", "0"),
            ("TOOLHUB_DB_IDLE_IN_TRANSACTION_TIMEOUT", "2m"),
        ]))
        .expect("valid settings");
        assert_eq!(config.database.max_connections, 40);
        assert_eq!(config.database.acquire_timeout, Duration::from_secs(3));
        assert_eq!(config.database.statement_timeout, None);
        assert_eq!(
            config.database.idle_in_transaction_timeout,
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            config.database.dead_peer_timeout,
            toolhub_eventstore::StoreOptions::default().dead_peer_timeout
        );
        let err = Config::from_lookup(lookup(&[
            ("TOOLHUB_DATA_DIR", dir.to_str().unwrap()),
            ("TOOLHUB_DB_ACQUIRE_TIMEOUT", "forever"),
        ]))
        .unwrap_err();
        assert!(
            err.to_string().contains("TOOLHUB_DB_ACQUIRE_TIMEOUT"),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn production_refuses_a_generated_jwt_secret() {
        let dir = temp_dir();
        let key = MasterKey::generate().to_base64();
        let err = Config::from_lookup(lookup(&[
            ("TOOLHUB_ENV", "production"),
            ("TOOLHUB_DATA_DIR", dir.to_str().unwrap()),
            ("TOOLHUB_MASTER_KEY", &key),
        ]))
        .unwrap_err();
        assert!(matches!(err, ConfigError::Production(_)), "{err}");
        assert!(err.to_string().contains("TOOLHUB_JWT_SECRET"), "{err}");
        assert!(!dir.exists(), "nothing was generated");
    }

    #[test]
    fn production_refuses_a_short_jwt_secret() {
        let key = MasterKey::generate().to_base64();
        let err = Config::from_lookup(lookup(&[
            ("TOOLHUB_ENV", "production"),
            ("TOOLHUB_JWT_SECRET", "too-short"),
            ("TOOLHUB_MASTER_KEY", &key),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("shorter than 32 bytes"), "{err}");
        assert!(!err.to_string().contains("too-short"), "{err}");
    }

    #[test]
    fn production_refuses_a_missing_master_key() {
        let err = Config::from_lookup(lookup(&[
            ("TOOLHUB_ENV", "production"),
            ("TOOLHUB_JWT_SECRET", &"s".repeat(40)),
        ]))
        .unwrap_err();
        assert!(err.to_string().contains("TOOLHUB_MASTER_KEY"), "{err}");
    }

    #[test]
    fn production_starts_with_every_key_given() {
        let key = MasterKey::generate().to_base64();
        let config = Config::from_lookup(lookup(&[
            ("TOOLHUB_ENV", "production"),
            ("TOOLHUB_JWT_SECRET", &"s".repeat(40)),
            ("TOOLHUB_MASTER_KEY", &key),
            ("DATABASE_URL", "postgres://db/toolhub"),
            (
                "TOOLHUB_CORS_ORIGINS",
                "https://a.example, https://b.example",
            ),
        ]))
        .expect("valid");
        assert_eq!(config.environment, Environment::Production);
        assert_eq!(config.cors_origins.len(), 2);
    }

    #[test]
    fn introspection_is_off_in_production_unless_asked_for() {
        let key = MasterKey::generate().to_base64();
        let secret = "s".repeat(40);
        let production = [
            ("TOOLHUB_ENV", "production"),
            ("TOOLHUB_JWT_SECRET", secret.as_str()),
            ("TOOLHUB_MASTER_KEY", key.as_str()),
        ];
        let config = Config::from_lookup(lookup(&production)).expect("valid");
        assert!(!config.limits.introspection);
        let mut asked = production.to_vec();
        asked.push(("TOOLHUB_GRAPHQL_INTROSPECTION", "true"));
        let config = Config::from_lookup(lookup(&asked)).expect("valid");
        assert!(config.limits.introspection);
        let dir = temp_dir();
        let development =
            Config::from_lookup(lookup(&[("TOOLHUB_DATA_DIR", dir.to_str().unwrap())]))
                .expect("valid");
        assert!(development.limits.introspection);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn the_limits_are_read_from_the_environment() {
        let dir = temp_dir();
        let config = Config::from_lookup(lookup(&[
            ("TOOLHUB_DATA_DIR", dir.to_str().unwrap()),
            ("TOOLHUB_JWT_LEEWAY", "0"),
            ("TOOLHUB_REQUEST_TIMEOUT", "5s"),
            ("TOOLHUB_MAX_CONCURRENT_REQUESTS", "8"),
            ("TOOLHUB_WS_SUBSCRIPTIONS_PER_SOCKET", "3"),
            ("TOOLHUB_WS_KEEPALIVE", "1m"),
            ("TOOLHUB_RATE_LIMIT_SUBJECT", "mutations=10/s"),
            ("TOOLHUB_RATE_LIMIT_ADDRESS", "off"),
            ("TOOLHUB_CLIENT_ADDRESS_HEADER", "X-Forwarded-For"),
        ]))
        .expect("valid");
        assert_eq!(config.jwt.leeway, Duration::ZERO);
        assert_eq!(config.limits.request_timeout, Duration::from_secs(5));
        assert_eq!(config.limits.max_concurrent_requests, 8);
        assert_eq!(config.limits.ws_subscriptions_per_socket, 3);
        assert_eq!(config.limits.ws_keepalive, Duration::from_secs(60));
        let subject = &config.limits.rate.per_subject;
        assert_eq!(
            subject.mutations,
            Some(Rate {
                count: 10,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(
            subject.queries,
            RateLimits::default().per_subject.queries,
            "a kind left out keeps its default"
        );
        assert_eq!(config.limits.rate.per_address, OperationRates::default());
        assert_eq!(
            config.limits.rate.client_address_header.as_deref(),
            Some("x-forwarded-for")
        );
        for (name, value) in [
            ("TOOLHUB_MAX_CONCURRENT_REQUESTS", "0"),
            ("TOOLHUB_RATE_LIMIT_SUBJECT", "queries=lots"),
            ("TOOLHUB_GRAPHQL_INTROSPECTION", "maybe"),
        ] {
            let err = Config::from_lookup(lookup(&[
                ("TOOLHUB_DATA_DIR", dir.to_str().unwrap()),
                (name, value),
            ]))
            .unwrap_err();
            assert!(err.to_string().starts_with(name), "{err}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
