//! The connection pool: one initialized session per (tenant, server,
//! configuration), reused across calls, restarted when it dies, closed when
//! idle, and capped in number.
//!
//! Each key has a slot. A caller takes a lease on the slot for the whole of its
//! operation; a slot with a lease is never closed, neither by the idle reaper
//! nor to make room under the cap. Connecting happens under the slot's own
//! async lock, so that callers arriving together share one process.

use super::connection::{Connection, RequestFailure};
use super::error::McpCallError;
use super::output::{McpTool, ToolOutput};
use super::transport::{ConfigDigest, ResolvedTransport};
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use toolhub_domain::mcp_server::Transport;
use toolhub_domain::{McpServerId, TenantId};

/// How the pool behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpPoolConfig {
    /// The most connections (child processes and HTTP sessions) kept at once.
    /// When a new one is needed at the cap, the least recently used idle one
    /// is closed; when none is idle, the caller gets
    /// [`McpCallError::PoolExhausted`].
    pub max_connections: usize,
    /// A connection unused for this long is closed, so that servers nobody
    /// calls do not hold processes and memory.
    pub idle_timeout: Duration,
    /// The bound on connecting and completing `initialize`; a server that
    /// takes longer is reported as [`McpCallError::InitializeTimeout`].
    pub initialize_timeout: Duration,
}

impl Default for McpPoolConfig {
    fn default() -> Self {
        Self {
            max_connections: 64,
            idle_timeout: Duration::from_secs(300),
            initialize_timeout: Duration::from_secs(30),
        }
    }
}

/// The server an operation is for.
#[derive(Debug, Clone)]
pub struct McpTarget {
    /// The tenant that owns the server; part of the pool key so that tenants
    /// never share a connection.
    pub tenant: TenantId,
    /// The server aggregate.
    pub server: McpServerId,
    /// How to reach it, secrets substituted.
    pub transport: ResolvedTransport,
}

/// Counters and gauges that describe the pool, for metrics and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct McpPoolStats {
    /// Connections currently open and alive.
    pub open: usize,
    /// Slots currently leased by callers (an operation in flight or a
    /// connection being made).
    pub in_use: usize,
    /// Stdio child processes started since the pool was created.
    pub spawned: u64,
    /// Connections established since the pool was created (stdio and HTTP).
    pub connected: u64,
    /// Dead connections replaced by a fresh one.
    pub restarted: u64,
    /// Connections closed because they were idle for too long.
    pub closed_idle: u64,
    /// Connections closed to make room under the cap.
    pub evicted: u64,
    /// Connections closed because their server's configuration changed.
    pub replaced: u64,
}

/// What the pool holds for one key, as shown to operators and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpConnectionInfo {
    /// The owning tenant.
    pub tenant: TenantId,
    /// The server.
    pub server: McpServerId,
    /// The child's process id, for a stdio server with an open connection.
    pub pid: Option<u32>,
    /// True when the connection is open and alive.
    pub alive: bool,
    /// How many callers hold it right now.
    pub leases: usize,
    /// How long since it was last used.
    pub idle_for: Duration,
}

/// Pooled MCP connections for the engine. Cloning is cheap and shares the pool.
#[derive(Clone)]
pub struct McpPool {
    /// Shared state; the idle reaper holds only a weak reference, so the pool
    /// and its connections go away when the last clone is dropped.
    inner: Arc<Inner>,
}

impl std::fmt::Debug for McpPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpPool")
            .field("config", &self.inner.config)
            .field("stats", &self.stats())
            .finish()
    }
}

/// Identifies a connection: a configuration change gives a new key, hence a
/// fresh connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct PoolKey {
    /// Keeps tenants apart even if two ever referred to the same server id.
    tenant: TenantId,
    /// The server aggregate.
    server: McpServerId,
    /// The resolved configuration, values included: a rotated secret or a new
    /// argument must not reuse a session made with the old ones.
    config: ConfigDigest,
}

/// The pool's shared state.
struct Inner {
    /// Cap, idle timeout and initialize bound.
    config: McpPoolConfig,
    /// The egress-checked client every Streamable HTTP session uses.
    http: reqwest::Client,
    /// One slot per key. A plain mutex: it is held only for map operations,
    /// never across an await.
    slots: Mutex<HashMap<PoolKey, Arc<Slot>>>,
    /// Starts the idle reaper once, on first use.
    reaper: std::sync::Once,
    /// Counter behind [`McpPoolStats::spawned`].
    spawned: AtomicU64,
    /// Counter behind [`McpPoolStats::connected`].
    connected: AtomicU64,
    /// Counter behind [`McpPoolStats::restarted`].
    restarted: AtomicU64,
    /// Counter behind [`McpPoolStats::closed_idle`].
    closed_idle: AtomicU64,
    /// Counter behind [`McpPoolStats::evicted`].
    evicted: AtomicU64,
    /// Counter behind [`McpPoolStats::replaced`].
    replaced: AtomicU64,
}

/// Everything the pool holds for one key.
struct Slot {
    /// The key, to find the slot again in the map.
    key: PoolKey,
    /// The current connection, if any; dead ones stay until replaced.
    connection: Mutex<Option<Arc<Connection>>>,
    /// Held while connecting, so that one caller connects and the others wait.
    connecting: tokio::sync::Mutex<()>,
    /// Callers holding the slot. Only raised under the pool's map lock, so
    /// that a slot seen idle there cannot be leased while it is being closed.
    leases: AtomicUsize,
    /// When a caller last took or released the slot: the idle clock and the
    /// order of eviction.
    last_used: Mutex<Instant>,
}

impl Slot {
    /// The current connection, alive or not.
    fn current(&self) -> Option<Arc<Connection>> {
        self.connection.lock().clone()
    }
}

/// A caller's hold on a slot; released on drop, even when the caller's future
/// is dropped midway.
struct Lease {
    /// The slot held; it stays valid even if the pool drops it meanwhile.
    slot: Arc<Slot>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        *self.slot.last_used.lock() = Instant::now();
        self.slot.leases.fetch_sub(1, Ordering::AcqRel);
    }
}

impl McpPool {
    /// A pool whose Streamable HTTP sessions all use `http`, the engine's
    /// egress-checked client (its resolver and redirect policy are what keep
    /// servers from reaching internal addresses).
    pub fn new(config: McpPoolConfig, http: reqwest::Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                config,
                http,
                slots: Mutex::new(HashMap::new()),
                reaper: std::sync::Once::new(),
                spawned: AtomicU64::new(0),
                connected: AtomicU64::new(0),
                restarted: AtomicU64::new(0),
                closed_idle: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
                replaced: AtomicU64::new(0),
            }),
        }
    }

    /// Every tool the server advertises (all pages), with their hints.
    ///
    /// Listing has no side effects, so a connection lost midway is replaced
    /// and the listing tried once more.
    pub async fn list_tools(
        &self,
        target: &McpTarget,
        timeout: Duration,
    ) -> Result<Vec<McpTool>, McpCallError> {
        self.run(target, true, None, |connection| async move {
            connection.list_tools(timeout).await
        })
        .await
    }

    /// Calls a tool and returns its output.
    ///
    /// `timeout` bounds the call itself (connecting is bounded by
    /// [`McpPoolConfig::initialize_timeout`]). When `cancel` fires or the
    /// timeout passes, the request is cancelled on the wire
    /// (`notifications/cancelled`) and the call returns at once. A connection
    /// found dead is restarted once; a call is sent again only when it
    /// certainly never reached the server.
    pub async fn call_tool(
        &self,
        target: &McpTarget,
        name: &str,
        arguments: Map<String, Value>,
        timeout: Duration,
        cancel: CancellationToken,
    ) -> Result<ToolOutput, McpCallError> {
        let cancel_ref = &cancel;
        self.run(target, false, Some(cancel_ref), |connection| {
            let arguments = arguments.clone();
            async move {
                connection
                    .call_tool(name, arguments, timeout, cancel_ref)
                    .await
            }
        })
        .await
    }

    /// Measures the server's round-trip time with `ping`, or with `tools/list`
    /// when the server does not support ping.
    pub async fn ping(
        &self,
        target: &McpTarget,
        timeout: Duration,
    ) -> Result<Duration, McpCallError> {
        self.run(target, true, None, |connection| async move {
            connection.ping(timeout).await
        })
        .await
    }

    /// The pool's counters and gauges.
    pub fn stats(&self) -> McpPoolStats {
        let inner = &self.inner;
        let slots: Vec<Arc<Slot>> = inner.slots.lock().values().cloned().collect();
        McpPoolStats {
            open: slots
                .iter()
                .filter(|slot| slot.current().is_some_and(|c| c.is_alive()))
                .count(),
            in_use: slots
                .iter()
                .filter(|slot| slot.leases.load(Ordering::Acquire) > 0)
                .count(),
            spawned: inner.spawned.load(Ordering::Relaxed),
            connected: inner.connected.load(Ordering::Relaxed),
            restarted: inner.restarted.load(Ordering::Relaxed),
            closed_idle: inner.closed_idle.load(Ordering::Relaxed),
            evicted: inner.evicted.load(Ordering::Relaxed),
            replaced: inner.replaced.load(Ordering::Relaxed),
        }
    }

    /// What the pool holds, one entry per key.
    pub fn connections(&self) -> Vec<McpConnectionInfo> {
        let slots: Vec<Arc<Slot>> = self.inner.slots.lock().values().cloned().collect();
        slots
            .iter()
            .map(|slot| {
                let connection = slot.current();
                McpConnectionInfo {
                    tenant: slot.key.tenant.clone(),
                    server: slot.key.server,
                    pid: connection.as_ref().and_then(|c| c.pid()),
                    alive: connection.is_some_and(|c| c.is_alive()),
                    leases: slot.leases.load(Ordering::Acquire),
                    idle_for: slot.last_used.lock().elapsed(),
                }
            })
            .collect()
    }

    /// Closes every connection and waits for them to go, in-use ones too
    /// (their callers get [`McpCallError::ConnectionLost`]). For shutting the
    /// engine down.
    pub async fn shutdown(&self) {
        let slots: Vec<Arc<Slot>> = self.inner.slots.lock().drain().map(|(_, s)| s).collect();
        let mut closing = tokio::task::JoinSet::new();
        for slot in slots {
            if let Some(connection) = slot.connection.lock().take() {
                closing.spawn(async move { connection.close().await });
            }
        }
        while closing.join_next().await.is_some() {}
    }

    /// Runs `operation` on the target's connection, connecting first when
    /// needed. When the request never reached the server (or, with
    /// `retry_when_lost`, when the connection died under a request that has
    /// no side effects), the connection is replaced once and the operation
    /// tried again.
    async fn run<'a, T, F, Fut>(
        &'a self,
        target: &'a McpTarget,
        retry_when_lost: bool,
        cancel: Option<&'a CancellationToken>,
        operation: F,
    ) -> Result<T, McpCallError>
    where
        F: Fn(Arc<Connection>) -> Fut,
        Fut: Future<Output = Result<T, RequestFailure>>,
    {
        self.start_reaper();
        let lease = self.inner.lease(target)?;
        let mut failed: Option<Arc<Connection>> = None;
        loop {
            let connecting = self.inner.connection(&lease.slot, target, failed.as_ref());
            let connected = match cancel {
                Some(cancel) => tokio::select! {
                    connection = connecting => connection,
                    () = cancel.cancelled() => Err(McpCallError::Cancelled),
                },
                None => connecting.await,
            };
            let connection = match connected {
                Ok(connection) => connection,
                Err(error) => {
                    self.inner.forget_if_unused(&lease.slot);
                    return Err(error);
                }
            };
            let retry_allowed = failed.is_none();
            match operation(Arc::clone(&connection)).await {
                Ok(value) => return Ok(value),
                Err(RequestFailure::NotSent(_)) if retry_allowed => {}
                Err(RequestFailure::Lost(_)) if retry_allowed && retry_when_lost => {}
                Err(failure) => return Err(failure.into_error()),
            }
            tracing::debug!(
                tenant = %target.tenant,
                server = %target.server,
                "MCP connection failed under a request; reconnecting once"
            );
            failed = Some(connection);
        }
    }

    /// Starts the idle reaper on first use (it needs a Tokio runtime, which a
    /// constructor cannot count on).
    fn start_reaper(&self) {
        self.inner.reaper.call_once(|| {
            let weak = Arc::downgrade(&self.inner);
            let period = (self.inner.config.idle_timeout / 4)
                .clamp(Duration::from_millis(20), Duration::from_secs(30));
            tokio::spawn(reap_idle(weak, period));
        });
    }
}

/// Closes idle connections every `period` until the pool is dropped.
async fn reap_idle(pool: Weak<Inner>, period: Duration) {
    loop {
        tokio::time::sleep(period).await;
        let Some(inner) = pool.upgrade() else {
            return;
        };
        let idle_timeout = inner.config.idle_timeout;
        let idle: Vec<Arc<Slot>> = {
            let mut slots = inner.slots.lock();
            let keys: Vec<PoolKey> = slots
                .iter()
                .filter(|(_, slot)| {
                    slot.leases.load(Ordering::Acquire) == 0
                        && slot.last_used.lock().elapsed() >= idle_timeout
                })
                .map(|(key, _)| key.clone())
                .collect();
            keys.iter().filter_map(|key| slots.remove(key)).collect()
        };
        for slot in idle {
            if let Some(connection) = slot.connection.lock().take() {
                if connection.is_alive() {
                    inner.closed_idle.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(
                    tenant = %slot.key.tenant,
                    server = %slot.key.server,
                    "closing an idle MCP connection"
                );
                tokio::spawn(async move { connection.close().await });
            }
        }
    }
}

impl Inner {
    /// Leases the target's slot, creating it (and making room under the cap)
    /// when there is none.
    fn lease(&self, target: &McpTarget) -> Result<Lease, McpCallError> {
        let key = PoolKey {
            tenant: target.tenant.clone(),
            server: target.server,
            config: target.transport.config_digest(),
        };
        let mut closing: Vec<Arc<Slot>> = Vec::new();
        let lease = {
            let mut slots = self.slots.lock();
            if let Some(slot) = slots.get(&key) {
                slot.leases.fetch_add(1, Ordering::AcqRel);
                Lease {
                    slot: Arc::clone(slot),
                }
            } else {
                // The same server under an older configuration: close what
                // nobody uses; the rest closes once idle.
                let stale: Vec<PoolKey> = slots
                    .iter()
                    .filter(|(other, slot)| {
                        other.tenant == key.tenant
                            && other.server == key.server
                            && slot.leases.load(Ordering::Acquire) == 0
                    })
                    .map(|(other, _)| other.clone())
                    .collect();
                for other in stale {
                    if let Some(slot) = slots.remove(&other) {
                        self.replaced.fetch_add(1, Ordering::Relaxed);
                        closing.push(slot);
                    }
                }
                if slots.len() >= self.config.max_connections {
                    let least_recent = slots
                        .iter()
                        .filter(|(_, slot)| slot.leases.load(Ordering::Acquire) == 0)
                        .min_by_key(|(_, slot)| *slot.last_used.lock())
                        .map(|(key, _)| key.clone());
                    match least_recent.and_then(|key| slots.remove(&key)) {
                        Some(slot) => {
                            self.evicted.fetch_add(1, Ordering::Relaxed);
                            closing.push(slot);
                        }
                        None => {
                            drop(slots);
                            close_all(closing);
                            return Err(McpCallError::PoolExhausted {
                                cap: self.config.max_connections,
                            });
                        }
                    }
                }
                let slot = Arc::new(Slot {
                    key: key.clone(),
                    connection: Mutex::new(None),
                    connecting: tokio::sync::Mutex::new(()),
                    leases: AtomicUsize::new(1),
                    last_used: Mutex::new(Instant::now()),
                });
                slots.insert(key, Arc::clone(&slot));
                Lease { slot }
            }
        };
        *lease.slot.last_used.lock() = Instant::now();
        close_all(closing);
        Ok(lease)
    }

    /// Takes a slot that failed to connect out of the pool when no other
    /// caller holds it, so that failed servers do not count against the cap.
    fn forget_if_unused(&self, slot: &Arc<Slot>) {
        let mut slots = self.slots.lock();
        let only_this_caller = slot.leases.load(Ordering::Acquire) == 1;
        let same_slot = slots
            .get(&slot.key)
            .is_some_and(|current| Arc::ptr_eq(current, slot));
        if only_this_caller && same_slot && slot.current().is_none() {
            slots.remove(&slot.key);
        }
    }

    /// The slot's live connection, connecting when there is none, when it
    /// died, or when it is `failed` (the one a request just failed on).
    async fn connection(
        &self,
        slot: &Slot,
        target: &McpTarget,
        failed: Option<&Arc<Connection>>,
    ) -> Result<Arc<Connection>, McpCallError> {
        let usable = |connection: &Arc<Connection>| {
            connection.is_alive() && !failed.is_some_and(|failed| Arc::ptr_eq(failed, connection))
        };
        if let Some(connection) = slot.current().filter(usable) {
            return Ok(connection);
        }
        let _connecting = slot.connecting.lock().await;
        // Another caller may have connected while this one waited.
        if let Some(connection) = slot.current().filter(usable) {
            return Ok(connection);
        }
        if let Some(dead) = slot.connection.lock().take() {
            self.restarted.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(
                tenant = %target.tenant,
                server = %target.server,
                "restarting a dead MCP connection"
            );
            tokio::spawn(async move { dead.close().await });
        }
        let label = format!("{}/{}", target.tenant, target.server);
        if matches!(target.transport.transport(), Transport::Stdio { .. }) {
            self.spawned.fetch_add(1, Ordering::Relaxed);
        }
        let connection = Connection::open(
            &target.transport,
            &self.http,
            self.config.initialize_timeout,
            &label,
        )
        .await
        .inspect_err(|error| {
            tracing::debug!(
                tenant = %target.tenant,
                server = %target.server,
                transport = %target.transport.safe_label(),
                error = %error,
                "could not connect to an MCP server"
            );
        })?;
        let connection = Arc::new(connection);
        self.connected.fetch_add(1, Ordering::Relaxed);
        *slot.connection.lock() = Some(Arc::clone(&connection));
        Ok(connection)
    }
}

/// Closes the connections of slots taken out of the pool, in the background.
fn close_all(slots: Vec<Arc<Slot>>) {
    for slot in slots {
        if let Some(connection) = slot.connection.lock().take() {
            tokio::spawn(async move { connection.close().await });
        }
    }
}
