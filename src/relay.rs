//! Wiring: opens the store, starts target workers and the ingest server, and shuts them down
//! in the order that loses nothing: stop accepting, let in-flight requests finish (they need
//! the store), let in-flight deliveries record their outcome, then flush and close the store.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::admin::metrics::{IngestMetrics, StoreGauges};
use crate::admin::Admin;
use crate::config::Backend;
use crate::config::Config;
use crate::deliver::{TargetRuntime, TargetSpec, Worker};
use crate::ingest::{DiskState, Ingest, Live};
use crate::server::{serve, Limits};
use crate::store::{AnyStore, PgStore, SledStore, Store, StoreError, TargetId};

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot open the store at {path}: {source}")]
    Store {
        path: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot build the HTTP client: {0}")]
    Client(#[from] reqwest::Error),
    #[error("cannot read the listener address: {0}")]
    Listener(#[from] std::io::Error),
    #[error("cannot listen on the admin address {addr}: {source}")]
    AdminListen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the admin token file {path}: {source}")]
    TokenFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the store did not close cleanly: {0}")]
    Close(#[source] StoreError),
    /// The store stopped on a failure it cannot recover from while running (fail-stop): the
    /// process must exit, and the next start replays the log.
    #[error("the store stopped: {0}")]
    StoreFailed(String),
}

/// A running relay. Dropping it without [`Relay::shutdown`] stops nothing gracefully.
pub struct Relay {
    addr: SocketAddr,
    ingest: Arc<Ingest<AnyStore>>,
    /// What a reload may not change, as it was at start.
    fixed: Fixed,
    admin_addr: Option<SocketAddr>,
    admin_server: Option<tokio::task::JoinHandle<()>>,
    /// The config in force, swapped on reload; the admin console's dry run reads it.
    config: Arc<ArcSwap<Config>>,
    store: Arc<AnyStore>,
    targets: Vec<Arc<TargetRuntime>>,
    stop: watch::Sender<bool>,
    server: tokio::task::JoinHandle<()>,
    lanes: JoinSet<()>,
    grace: Duration,
}

impl Relay {
    /// Starts the relay on an already bound listener (tests bind port 0).
    pub async fn start(mut config: Config, listener: TcpListener) -> Result<Relay, RelayError> {
        let addr = listener.local_addr()?;
        for warning in config.warnings() {
            tracing::warn!("{warning}");
        }
        if let (None, Some(path)) = (&config.admin.token, &config.admin.token_file) {
            let token =
                crate::config::ensure_token_file(path).map_err(|source| RelayError::TokenFile {
                    path: path.display().to_string(),
                    source,
                })?;
            tracing::info!(path = %path.display(), "admin API token in this file (created if it was missing)");
            // Kept in the config, so a reload that reads the file sees no change.
            config.admin.token = Some(token);
        }
        let shared_config = Arc::new(ArcSwap::from_pointee(config));
        let config = shared_config.load_full();
        let store_path = match &config.store.backend {
            Backend::Sled => config.store.path.display().to_string(),
            Backend::Postgres(pg) => crate::store::redact_url(&pg.url),
        };
        let store_err = |source| RelayError::Store {
            path: store_path.clone(),
            source,
        };
        let store = Arc::new(match &config.store.backend {
            Backend::Sled => {
                let log = crate::store::LogOptions {
                    segment_bytes: config.store.log_segment_bytes,
                    ..Default::default()
                };
                AnyStore::Sled(
                    SledStore::open_with_log(&config.store.path, log).map_err(store_err)?,
                )
            }
            Backend::Postgres(pg) => {
                AnyStore::Postgres(PgStore::open(pg).await.map_err(store_err)?)
            }
        });
        let names: Vec<String> = config.targets.iter().map(|t| t.name.clone()).collect();
        let ids = store.target_ids(&names).await.map_err(store_err)?;
        let client = crate::targets::Client::new(&config.delivery)?;
        // Paused and suspended targets stay so across restarts.
        let mut targets: Vec<Arc<TargetRuntime>> = Vec::with_capacity(ids.len());
        for (t, id) in config.targets.iter().zip(ids) {
            let state = store.target_state(id).await.map_err(store_err)?;
            let spec = TargetSpec::new(t.clone(), config.templates.clone());
            targets.push(Arc::new(TargetRuntime::new(id, spec, state)));
        }

        if let AnyStore::Postgres(pg) = store.as_ref() {
            // Other instances' new work wakes this instance's lanes.
            let woken = targets.clone();
            pg.set_waker(Box::new(move |id| {
                for t in woken.iter().filter(|t| id.is_none_or(|id| id == t.id)) {
                    t.notify.notify_one();
                }
            }));
        }

        let metrics = Arc::new(IngestMetrics::new(
            config.sources.iter().map(|s| s.name.clone()),
        ));
        let mut admin_server = None;
        let disk = Arc::new(DiskState::default());
        let (stop, stop_rx) = watch::channel(false);
        let mut lanes = JoinSet::new();
        let events = Arc::new(crate::deliver::EventCache::default());
        for t in &targets {
            let worker = Arc::new(Worker {
                store: store.clone(),
                events: events.clone(),
                target: t.clone(),
                client: client.clone(),
            });
            for _ in 0..t.spec().config.concurrency {
                lanes.spawn(worker.clone().run_lane(stop_rx.clone()));
            }
        }

        let ingest = Arc::new(Ingest {
            store: store.clone(),
            live: ArcSwap::from_pointee(Live {
                sources: config.sources.clone(),
                rules: config.rules.clone(),
            }),
            targets: targets.clone(),
            metrics: metrics.clone(),
            max_body_bytes: config.server.max_body_bytes,
            limits: crate::normalize::Limits {
                max_batch_messages: config.server.max_batch_messages,
            },
            body_timeout: config.server.body_timeout,
            dedup_window_ms: config.store.dedup_window.as_millis() as u64,
            disk: disk.clone(),
            write_timeout: config.store.write_timeout,
            events: events.clone(),
        });
        lanes.spawn(housekeeping(
            store.clone(),
            config.store.clone(),
            disk,
            targets.clone(),
            stop_rx.clone(),
        ));
        let admin_addr = match config.admin.listen {
            None => None,
            Some(admin_listen) => {
                let admin_listener = TcpListener::bind(admin_listen).await.map_err(|source| {
                    RelayError::AdminListen {
                        addr: admin_listen,
                        source,
                    }
                })?;
                let addr = admin_listener.local_addr()?;
                let (sized, cache) = (store.clone(), events.clone());
                let admin = Arc::new(Admin {
                    store: store.clone(),
                    targets: targets.clone(),
                    metrics,
                    guard: crate::admin::guard::Guard::new(
                        config.admin.token.clone(),
                        &config.admin.allowed_hosts,
                    ),
                    config: shared_config.clone(),
                    store_gauges: Box::new(move || StoreGauges {
                        size_bytes: sized.size_on_disk(),
                        log_syncs: sized.log_syncs(),
                        cached: cache.held(),
                    }),
                });
                let handler = move |req| {
                    let admin = admin.clone();
                    async move { admin.handle(req).await }
                };
                let limits = Limits {
                    grace: config.server.shutdown_grace,
                    header_timeout: config.server.header_timeout,
                    max_connections: 64,
                    max_connections_per_address: 64,
                };
                admin_server = Some(tokio::spawn(serve(
                    admin_listener,
                    handler,
                    stop_rx.clone(),
                    limits,
                )));
                Some(addr)
            }
        };
        let handler = {
            let ingest = ingest.clone();
            move |req| {
                let ingest = ingest.clone();
                async move { ingest.handle(req).await }
            }
        };
        let limits = Limits {
            grace: config.server.shutdown_grace,
            header_timeout: config.server.header_timeout,
            max_connections: config.server.max_connections,
            max_connections_per_address: config.server.max_connections_per_address,
        };
        let server = tokio::spawn(serve(listener, handler, stop_rx, limits));
        tracing::info!(%addr, sources = config.sources.len(), targets = targets.len(), store = %store_path, "hookrelay listening");
        Ok(Relay {
            addr,
            ingest,
            fixed: Fixed::of(&config),
            admin_addr,
            config: shared_config,
            store,
            targets,
            stop,
            server,
            admin_server,
            lanes,
            grace: config.server.shutdown_grace,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the admin API listens, when it is enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The store, for inspection.
    pub fn store(&self) -> &AnyStore {
        &self.store
    }

    /// Applies a new, already validated config: target settings and templates (for pending
    /// deliveries too), rules, and source paths, tokens and secrets. Listeners, the store,
    /// the admin API, delivery client settings, and which sources and targets exist (and
    /// their lane counts) need a restart: a config that changes them is refused whole.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let wanted = Fixed::of(&config);
        if let Some(what) = self.fixed.difference(&wanted) {
            return Err(format!(
                "{what} changed, which needs a restart; the running config stays"
            ));
        }
        for (t, new) in self.targets.iter().zip(&config.targets) {
            t.replace_spec(TargetSpec::new(new.clone(), config.templates.clone()));
        }
        self.ingest.live.store(Arc::new(Live {
            sources: config.sources.clone(),
            rules: config.rules.clone(),
        }));
        self.config.store(Arc::new(config));
        tracing::info!(targets = self.targets.len(), "config reloaded");
        Ok(())
    }

    pub fn target_id(&self, name: &str) -> Option<TargetId> {
        self.targets.iter().find(|t| t.name == name).map(|t| t.id)
    }

    /// Resolves with the cause once the store has stopped on a failure it cannot recover from
    /// while running; never for PostgreSQL. Whoever runs the relay then exits non-zero
    /// without a graceful stop (nothing more can be acknowledged), and the next start
    /// replays the log.
    pub async fn failed(&self) -> String {
        self.store.failed().await
    }

    pub async fn shutdown(mut self) -> Result<(), StoreError> {
        let _ = self.stop.send(true);
        let _ = self.server.await;
        if let Some(admin) = self.admin_server.take() {
            let _ = admin.await;
        }
        let drained = tokio::time::timeout(self.grace, async {
            while self.lanes.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            // Abandoned attempts were never recorded; their deliveries are due again on restart.
            tracing::warn!("deliveries still in flight after the grace period; abandoning them");
            self.lanes.shutdown().await;
        }
        self.store.close().await?;
        tracing::info!("hookrelay stopped");
        Ok(())
    }
}

/// The parts of a config a running relay cannot change.
#[derive(Debug, PartialEq)]
struct Fixed {
    server: crate::config::ServerConfig,
    store: crate::config::StoreConfig,
    admin: crate::config::AdminConfig,
    delivery: crate::config::DeliveryConfig,
    sources: Vec<String>,
    targets: Vec<(String, usize)>,
}

impl Fixed {
    fn of(c: &Config) -> Fixed {
        Fixed {
            server: c.server.clone(),
            store: c.store.clone(),
            admin: c.admin.clone(),
            delivery: c.delivery.clone(),
            sources: c.sources.iter().map(|s| s.name.clone()).collect(),
            targets: c
                .targets
                .iter()
                .map(|t| (t.name.clone(), t.concurrency))
                .collect(),
        }
    }

    /// The first part that differs, named as in the config.
    fn difference(&self, other: &Fixed) -> Option<&'static str> {
        [
            (self.server != other.server, "[server]"),
            (self.store != other.store, "[store]"),
            (self.admin != other.admin, "[admin]"),
            (
                self.delivery != other.delivery,
                "[delivery] (client settings)",
            ),
            (self.sources != other.sources, "the set of sources"),
            (
                self.targets != other.targets,
                "the set of targets or a target's concurrency",
            ),
        ]
        .into_iter()
        .find_map(|(changed, what)| changed.then_some(what))
    }
}

/// Starts the relay, runs until `shutdown` completes, then stops it gracefully.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RelayError> {
    let relay = Relay::start(config, listener).await?;
    tokio::select! {
        _ = shutdown => {}
        cause = relay.failed() => return Err(RelayError::StoreFailed(cause)),
    }
    tracing::info!("shutting down");
    relay.shutdown().await.map_err(RelayError::Close)
}

/// Retention and the disk budget: prunes on `prune_interval`, checks the store's size every
/// second. Pruning goes in bounded steps so the writer, which ingest waits on, is never held
/// for long.
async fn housekeeping(
    store: Arc<AnyStore>,
    config: crate::config::StoreConfig,
    disk: Arc<DiskState>,
    targets: Vec<Arc<TargetRuntime>>,
    mut stop: watch::Receiver<bool>,
) {
    use std::sync::atomic::Ordering::Relaxed;
    let mut next_prune = tokio::time::Instant::now() + config.prune_interval;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1).min(config.prune_interval)) => {}
            _ = stop.changed() => return,
        }
        if config.disk_budget > 0 {
            let over = store.size_on_disk() > config.disk_budget;
            if over != disk.over_budget.swap(over, Relaxed) {
                tracing::warn!(
                    over_budget = over,
                    budget = config.disk_budget,
                    "store disk budget"
                );
            }
        }
        if store.is_shared() {
            // Another instance may have paused, resumed or suspended a target.
            for t in &targets {
                match store.target_state(t.id).await {
                    Ok(Some(state)) => t.adopt(state),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "cannot read target states"),
                }
            }
        }
        // Only the embedded store's disk is this machine's to watch.
        let local_disk = matches!(config.backend, Backend::Sled);
        if let Some(free) = local_disk.then(|| free_bytes(&config.path)).flatten() {
            let low = free < config.min_free_bytes;
            if low != disk.nearly_full.swap(low, Relaxed) {
                tracing::warn!(
                    nearly_full = low,
                    free,
                    reserve = config.min_free_bytes,
                    "store disk space"
                );
            }
        }
        if tokio::time::Instant::now() < next_prune {
            continue;
        }
        next_prune = tokio::time::Instant::now() + config.prune_interval;
        let now = crate::deliver::now_ms();
        loop {
            let step = crate::store::Prune {
                done_before_ms: now.saturating_sub(config.retain_delivered.as_millis() as u64),
                dead_before_ms: now.saturating_sub(config.retain_dead.as_millis() as u64),
                now_ms: now,
                max_events: 1000,
            };
            match store.prune(step).await {
                Ok(p) => {
                    if p.events + p.dedup_keys > 0 {
                        tracing::info!(events = p.events, dedup_keys = p.dedup_keys, "pruned");
                    }
                    if !p.more || *stop.borrow() {
                        break;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "pruning failed");
                    break;
                }
            }
        }
    }
}

/// Bytes available to this process on the filesystem holding `path`.
#[cfg(unix)]
fn free_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statvfs.
    let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
    (rc == 0).then(|| st.f_bavail as u64 * st.f_frsize as u64)
}

#[cfg(not(unix))]
fn free_bytes(_: &std::path::Path) -> Option<u64> {
    None
}
