//! A running node: everything `weft serve` starts, wired together from a [`Config`].
//!
//! Start-up: data directory, writer id, journal, lease backend, plugin runtime (with its compile
//! cache), entity types, the cluster, then the HTTP API — bound before any plugin is compiled, so
//! `/health` answers at once. Loading then runs in the background, in order: the plugins found in
//! the plugins directory, then what was loaded and bound over the API before the last stop
//! (`deployments`), each load logged with its place and time. [`Readiness`] tracks it for
//! `GET /ready`; commands for entity types not loaded yet answer `503 plugins_loading` meanwhile.
//! The plugins directory keeps being watched: a new or changed `.wasm` file is hot-loaded.
//!
//! Every background task of the node runs on one [`TaskTracker`] and stops through one tree of
//! [`CancellationToken`]s, so nothing outlives the node. A graceful stop ([`Node::shutdown`],
//! SIGTERM or SIGINT under [`Node::wait`]) goes in order: stop taking requests and answer those in
//! flight; passivate every active entity, which hands its single-writer lease back; leave the
//! cluster through SWIM; stop the cluster's tasks and write the durable DistributedData. Past
//! `shutdown_timeout_ms`, or on a second signal, the node stops at once.

use anyhow::Context as _;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{self, AppState, Authenticator, BodyLimits};
use crate::clock::NodeClock;
use crate::cluster::{
    Cluster, ClusterConfig, ClusterPeers, ClusterTls, Deployer, Faults, NodeInbound, NodeRole,
    Router, Transport, hand_off_moved_entities, packet_channel,
};
use crate::config::{Config, JournalBackend, LeaseBackend};
use crate::ddata::{DdataConfig, DistributedData, message_channel};
use crate::deployments::Deployments;
use crate::entity::{EntitySystem, SystemSettings};
use crate::journal::{
    InMemoryJournal, Journal, PostgresJournal, PostgresJournalOptions, SqliteJournal,
};
use crate::lease::{InMemoryLease, Lease, PostgresLease, RedisLease};
use crate::plugin::{LoadReport, PluginRegistry, PluginRuntime, World};
use crate::readiness::{Readiness, StartupStep};

/// Most PostgreSQL connections the lease backend opens: lease calls are short single statements.
const LEASE_CONNECTIONS_MAX: usize = 4;

/// How often the plugins directory is scanned for new or changed files.
const PLUGIN_SCAN_INTERVAL: Duration = Duration::from_secs(1);

/// A started node. Dropping it does not stop it: call [`Node::shutdown`].
pub struct Node {
    pub addr: SocketAddr,
    pub entities: EntitySystem,
    pub plugins: Arc<PluginRegistry>,
    /// Whether start-up loading is done (see [`Node::ready`]).
    pub readiness: Readiness,
    /// The cluster this node is a member of, if any.
    cluster: Option<Cluster>,
    /// Every background task of the node.
    tasks: TaskTracker,
    /// The root of the node's tokens: cancelled, everything stops at once.
    stop: CancellationToken,
    /// Cancelled first: the API stops taking requests, start-up loading and the plugins
    /// directory's watch end.
    serving: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    shutdown_timeout: Duration,
}

impl Node {
    pub async fn start(config: Config) -> anyhow::Result<Node> {
        config.node.validate().map_err(anyhow::Error::msg)?;
        if let Some(cluster) = &config.cluster {
            cluster.validate().map_err(anyhow::Error::msg)?;
        }
        config.check_api_exposure()?;
        let authenticator = Authenticator::from_config(&config.auth.tokens)?.map(Arc::new);
        let data_dir = &config.node.data_dir;
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create data dir {}", data_dir.display()))?;
        // Not `unwrap_or_default`: the default ULID is nil, and every boot needs a fresh one.
        let writer_id = match config.node.writer_id {
            Some(configured) => configured,
            None => ulid::Ulid::new(),
        };
        let journal: Arc<dyn Journal> = match config.journal.backend {
            JournalBackend::Sqlite => {
                let path = config.journal_path();
                tracing::info!("journal: SQLite at {}", path.display());
                Arc::new(
                    SqliteJournal::open(&path)
                        .await
                        .with_context(|| format!("cannot open the journal {}", path.display()))?,
                )
            }
            JournalBackend::Memory => {
                tracing::warn!("journal: in memory, nothing survives a restart");
                Arc::new(InMemoryJournal::new())
            }
            JournalBackend::Postgres => {
                let url = config.journal.url.as_deref().context(
                    "[journal] backend = \"postgres\" needs the database: [journal] url = \"postgres://…\"",
                )?;
                tracing::info!("journal: PostgreSQL");
                Arc::new(
                    PostgresJournal::open_with_options(url, postgres_journal_options(&config))
                        .await
                        .context("cannot open the PostgreSQL journal")?,
                )
            }
        };
        let lease = open_lease(&config).await?;
        let runtime = PluginRuntime::new(config.limits.clone(), Some(config.compile_cache_dir()))?;
        let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
        let replica = match &config.cluster {
            Some(cluster) => cluster.name.to_string(),
            None => config.node.listen.to_string(),
        };
        let entities = EntitySystem::new(
            journal,
            lease.clone(),
            plugins.clone(),
            SystemSettings {
                writer_id,
                replica,
                clustered: config.cluster.is_some(),
                per_node_journal: config.cluster.as_ref().is_some_and(|cluster| {
                    cluster.role == NodeRole::Actor
                        && config.journal.backend != JournalBackend::Postgres
                }),
            },
            NodeClock::default(),
        );
        for (name, type_config) in &config.entities {
            entities.bind_type(name, type_config.clone())?;
        }
        let tasks = TaskTracker::new();
        let stop = CancellationToken::new();
        let serving = stop.child_token();
        let deployments = Arc::new(Deployments::open(data_dir)?);
        // Begun before the port binds: `/ready` never says ready before start-up loading ran.
        let readiness = Readiness::new();
        let loading = readiness.begin("plugins");
        let watcher = config
            .node
            .plugins_dir
            .clone()
            .map(|dir| PluginDirWatcher::new(dir, plugins.clone(), entities.clone()));
        readiness.expect_plugins(watcher.iter().flat_map(PluginDirWatcher::pending));
        readiness.expect_plugins(
            deployments
                .current_plugins()
                .into_iter()
                .map(|(record, _)| record.name),
        );
        let deployer = Deployer::new(
            plugins.clone(),
            entities.clone(),
            deployments.clone(),
            config.node.max_plugin_bytes,
        );
        let (router, ddata, cluster) =
            match &config.cluster {
                Some(cluster) => {
                    let (cluster, ddata) = join_cluster(
                        cluster.clone(),
                        config.ddata.clone(),
                        data_dir,
                        &entities,
                        &deployer,
                        &readiness,
                        &tasks,
                        &stop,
                    )
                    .await?;
                    entities.set_peers(Arc::new(ClusterPeers::new(cluster.clone())));
                    tasks.spawn(stop.child_token().run_until_cancelled_owned(
                        hand_off_moved_entities(cluster.clone(), entities.clone()),
                    ));
                    (
                        Router::new(entities.clone(), Some(cluster.clone()), readiness.clone()),
                        Some(ddata),
                        Some(cluster),
                    )
                }
                None => (
                    Router::new(entities.clone(), None, readiness.clone()),
                    None,
                    None,
                ),
            };
        let listener = tokio::net::TcpListener::bind(config.node.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.node.listen))?;
        let addr = listener.local_addr()?;
        let state = AppState {
            entities: entities.clone(),
            router,
            ddata,
            plugins: plugins.clone(),
            deployments: deployments.clone(),
            deployer,
            readiness: readiness.clone(),
            lease,
            authenticator,
            limits: BodyLimits {
                command_bytes: config.node.max_command_bytes,
                plugin_bytes: config.node.max_plugin_bytes,
            },
            ask_timeout: std::time::Duration::from_millis(config.node.ask_timeout_ms),
            started: std::time::Instant::now(),
            shutdown: serving.clone(),
        };
        let server = tasks.spawn(api::serve(
            listener,
            state,
            serving.clone().cancelled_owned(),
        ));
        tracing::info!(%writer_id, "weft listening on http://{addr}");
        tasks.spawn(load_at_start(
            watcher,
            deployments,
            plugins.clone(),
            entities.clone(),
            readiness.clone(),
            loading,
            serving.clone(),
        ));
        Ok(Node {
            addr,
            entities,
            plugins,
            readiness,
            cluster,
            tasks,
            stop,
            serving,
            server,
            shutdown_timeout: Duration::from_millis(config.node.shutdown_timeout_ms),
        })
    }

    /// Waits until start-up loading is done (`GET /ready` answers 200).
    pub async fn ready(&self) {
        self.readiness.wait().await
    }

    /// Stops gracefully (see the module docs for the order), within `shutdown_timeout_ms`:
    /// past it, stops at once.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        let stopped = self.stop_within_timeout().await;
        if stopped.is_none() {
            self.stop_at_once();
        }
        stopped.unwrap_or(Ok(()))
    }

    /// Runs until the server stops. For `weft serve`: until SIGINT (Ctrl-C) or SIGTERM (what
    /// systemd, Docker and Kubernetes send), then stops gracefully (see the module docs) within
    /// `shutdown_timeout_ms`; a second signal stops it at once.
    pub async fn wait(mut self) -> anyhow::Result<()> {
        tokio::select! {
            outcome = &mut self.server => return Ok(outcome??),
            signal = stop_signal() => tracing::info!("{signal}: stopping gracefully"),
        }
        let stopped = tokio::select! {
            stopped = self.stop_within_timeout() => stopped,
            signal = stop_signal() => {
                tracing::warn!("{signal} again: stopping at once");
                None
            }
        };
        if stopped.is_none() {
            self.stop_at_once();
        }
        stopped.unwrap_or(Ok(()))?;
        tracing::info!("stopped");
        Ok(())
    }

    /// The graceful stop, or `None` if it did not finish within `shutdown_timeout_ms`.
    async fn stop_within_timeout(&mut self) -> Option<anyhow::Result<()>> {
        let timeout = self.shutdown_timeout;
        let stopped = tokio::time::timeout(timeout, self.stop_in_order()).await;
        if stopped.is_err() {
            tracing::warn!(
                "the stop did not finish within shutdown_timeout_ms ({} ms): stopping at once",
                timeout.as_millis()
            );
        }
        stopped.ok()
    }

    /// Stops taking requests and answers those in flight; passivates every entity (their leases
    /// go back); leaves the cluster; stops the cluster's tasks and writes the durable data.
    async fn stop_in_order(&mut self) -> anyhow::Result<()> {
        self.serving.cancel();
        let served = (&mut self.server).await;
        tracing::info!("stopping: the requests in flight are answered; passivating the entities");
        let stopped = self.entities.stop().await;
        let left = match &self.cluster {
            Some(cluster) if cluster.leave().await => ", left the cluster",
            Some(_) => ", the cluster's membership had ended already",
            None => "",
        };
        tracing::info!(
            "stopping: {} entities passivated, {} leases released{left}",
            stopped.passivated,
            stopped.leases_released
        );
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
        served??;
        Ok(())
    }

    /// Cancels every task of the node and stops the server without waiting.
    fn stop_at_once(&self) {
        self.stop.cancel();
        self.server.abort();
    }
}

/// The next SIGINT or SIGTERM, by name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut terminate) => tokio::select! {
            _ = tokio::signal::ctrl_c() => "SIGINT",
            _ = terminate.recv() => "SIGTERM",
        },
        Err(error) => {
            tracing::warn!("cannot listen for SIGTERM ({error}); Ctrl-C stops the node");
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

/// Start-up loading, after the port is bound: the plugins directory, then what was loaded and
/// bound over the API before the node stopped; then the node is ready, and the plugins directory
/// is watched from then on.
async fn load_at_start(
    watcher: Option<PluginDirWatcher>,
    deployments: Arc<Deployments>,
    plugins: Arc<PluginRegistry>,
    entities: EntitySystem,
    readiness: Readiness,
    loading: StartupStep,
    serving: CancellationToken,
) {
    let mut watcher = watcher;
    let loaded = serving.run_until_cancelled(async {
        if let Some(watcher) = &mut watcher {
            watcher.scan(Some(&readiness)).await;
        }
        restore_deployments(&deployments, &plugins, &entities, &readiness).await;
    });
    if loaded.await.is_none() {
        return;
    }
    drop(loading);
    if let Some(watcher) = watcher {
        serving.run_until_cancelled_owned(watcher.run()).await;
    }
}

/// Loads again what was loaded and bound over the API before the node stopped: the current
/// version of every uploaded plugin, then the bindings (after the plugins they name). What fails
/// is logged, recorded in `readiness`, and skipped.
async fn restore_deployments(
    deployments: &Deployments,
    plugins: &Arc<PluginRegistry>,
    entities: &EntitySystem,
    readiness: &Readiness,
) {
    let uploads = deployments.current_plugins();
    let total = uploads.len();
    for (index, (record, path)) in uploads.into_iter().enumerate() {
        let place = format!("{}/{total}", index + 1);
        tracing::info!("restoring uploaded plugin {place}: {}", record.version);
        let name = record.name.clone();
        let (plugins, entities) = (plugins.clone(), entities.clone());
        let load = move || {
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let needed = entities.check_new_build(&record.name, false)?;
            let report = plugins
                .load_world(&record.name, &bytes, needed)
                .map_err(|e| e.to_string())?;
            if report.world == World::Entity {
                entities.bind_type_if_unbound(&report.name);
            }
            Ok::<_, String>(report)
        };
        let outcome = tokio::task::spawn_blocking(load)
            .await
            .unwrap_or_else(|crash| Err(format!("the load crashed: {crash}")));
        record_startup_load(readiness, "uploaded plugin", &place, &name, outcome);
    }
    for (entity_type, config) in deployments.bindings() {
        if let Err(error) = entities.bind_type(&entity_type, config) {
            tracing::error!(
                entity_type,
                "cannot restore a binding made over the API: {error}"
            );
        }
    }
}

/// Logs a start-up load with its place (`i/N`) and time, and records it in `readiness`.
fn record_startup_load(
    readiness: &Readiness,
    what: &str,
    place: &str,
    name: &str,
    outcome: Result<LoadReport, String>,
) {
    match outcome {
        Ok(report) => {
            tracing::info!(
                "{what} {place} loaded: {} in {:.1} s{}",
                report.version,
                report.load_ms / 1e3,
                if report.from_cache {
                    " (compile cache)"
                } else {
                    ""
                }
            );
            readiness.plugin_loaded(name);
        }
        Err(error) => {
            tracing::error!("{what} {place} `{name}` not loaded: {error}");
            readiness.plugin_failed(name, error);
        }
    }
}

/// Starts the internal transport, catches up on the deployments the seeds have (loading them
/// before the port binds), then starts the membership service (announcing to the seeds: from then
/// on placement may give this node entities) and DistributedData, all on `tasks` and stopped by
/// `stop`.
#[allow(clippy::too_many_arguments)]
async fn join_cluster(
    config: ClusterConfig,
    ddata_config: DdataConfig,
    data_dir: &Path,
    entities: &EntitySystem,
    deployer: &Deployer,
    readiness: &Readiness,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> anyhow::Result<(Cluster, DistributedData)> {
    let (packets, packets_in) = packet_channel();
    let (ddata_messages, ddata_in) = message_channel();
    let started = Arc::new(std::sync::OnceLock::new());
    let inbound = Arc::new(NodeInbound {
        entities: entities.clone(),
        plugins: deployer.plugins().clone(),
        deployer: deployer.clone(),
        readiness: readiness.clone(),
        packets,
        ddata: ddata_messages,
        cluster: started.clone(),
    });
    let tls = match &config.tls {
        Some(tls) => Some(ClusterTls::load(tls).map_err(anyhow::Error::msg)?),
        None => None,
    };
    let encryption = match (&tls, config.listen.ip().is_loopback()) {
        (Some(_), _) => "mutual TLS",
        (None, true) => "plaintext, on loopback only",
        (None, false) => "plaintext (allow_plaintext): anyone who reaches it can join",
    };
    let transport = Transport::bind(
        config.name.as_str(),
        config.listen,
        inbound,
        Faults::default(),
        tls,
    )
    .await
    .with_context(|| format!("cannot listen for the cluster on {}", config.listen))?;
    tracing::info!(
        node = %config.name, role = %config.role, addr = %transport.local_addr(),
        "cluster transport listening ({encryption}); joining {} seed(s)", config.seeds.len()
    );
    let stop_transport = transport.clone();
    let transport_stop = stop.child_token();
    tasks.spawn(async move {
        transport_stop.cancelled().await;
        stop_transport.shutdown();
    });
    deployer
        .catch_up(&transport, config.name.as_str(), &config.seeds)
        .await;
    let cluster = Cluster::start(config, transport, packets_in, tasks, stop.child_token())?;
    // Set once, here, before anything reads it.
    let _ = started.set(cluster.clone());
    deployer.attach(cluster.clone());
    let ddata = DistributedData::start(
        cluster.clone(),
        ddata_in,
        ddata_config,
        &data_dir.join("ddata.db"),
        tasks,
        stop.child_token(),
    )?;
    Ok((cluster, ddata))
}

/// The PostgreSQL journal's options: its sessions bounded for the config's leases.
fn postgres_journal_options(config: &Config) -> PostgresJournalOptions {
    PostgresJournalOptions {
        session_bounds: config.postgres_session_bounds(),
        ..PostgresJournalOptions::default()
    }
}

/// The lease backend the config asks for (see [`Config::lease_backend`]).
async fn open_lease(config: &Config) -> anyhow::Result<Arc<dyn Lease>> {
    let backend = config.lease_backend();
    let url = || {
        config.lease_url().with_context(|| {
            format!("the {backend:?} lease backend needs a server: [lease] url = \"…\"")
        })
    };
    Ok(match backend {
        LeaseBackend::Memory => {
            tracing::info!("leases: in memory, for this node only");
            Arc::new(InMemoryLease::new())
        }
        LeaseBackend::Postgres => {
            tracing::info!("leases: PostgreSQL");
            Arc::new(
                PostgresLease::connect_bounded(
                    url()?,
                    LEASE_CONNECTIONS_MAX,
                    config.postgres_session_bounds(),
                )
                .await
                .context("cannot open the PostgreSQL lease table")?,
            )
        }
        LeaseBackend::Redis => {
            tracing::info!("leases: Redis");
            Arc::new(
                RedisLease::connect(url()?)
                    .await
                    .context("cannot connect to the Redis lease backend")?,
            )
        }
    })
}

/// Loads `.wasm` files from a directory at start-up and whenever one appears or changes.
struct PluginDirWatcher {
    dir: PathBuf,
    plugins: Arc<PluginRegistry>,
    entities: EntitySystem,
    /// Modification time and size of each file when it was last loaded (or failed to).
    seen: HashMap<PathBuf, (SystemTime, u64)>,
}

impl PluginDirWatcher {
    fn new(dir: PathBuf, plugins: Arc<PluginRegistry>, entities: EntitySystem) -> Self {
        PluginDirWatcher {
            dir,
            plugins,
            entities,
            seen: HashMap::new(),
        }
    }

    /// Scans every [`PLUGIN_SCAN_INTERVAL`], for as long as the caller polls it.
    async fn run(mut self) {
        loop {
            tokio::time::sleep(PLUGIN_SCAN_INTERVAL).await;
            self.scan(None).await;
        }
    }

    /// The plugins the next scan loads (by name), in load order.
    fn pending(&self) -> Vec<String> {
        changed_wasm_files(&self.dir, &self.seen)
            .unwrap_or_default()
            .iter()
            .map(|(path, _)| plugin_name(path))
            .collect()
    }

    /// Loads what is new or changed, one file after the other; start-up's scan records each load
    /// in `startup`.
    async fn scan(&mut self, startup: Option<&Readiness>) {
        let changed = match changed_wasm_files(&self.dir, &self.seen) {
            Ok(changed) => changed,
            Err(error) => {
                tracing::debug!(dir = %self.dir.display(), "plugins directory not readable: {error}");
                return;
            }
        };
        let total = changed.len();
        for (index, (path, stamp)) in changed.into_iter().enumerate() {
            let place = format!("{}/{total}", index + 1);
            tracing::info!("loading plugin {place}: {}", path.display());
            self.seen.insert(path.clone(), stamp);
            let plugins = self.plugins.clone();
            let entities = self.entities.clone();
            let file = path.clone();
            let load = move || {
                let report = plugins
                    .load_file(&file, |name, loaded| entities.check_new_build(name, loaded))
                    .map_err(|error| error.to_string())?;
                if report.world == World::Entity {
                    entities.bind_type_if_unbound(&report.name);
                }
                Ok(report)
            };
            let outcome = tokio::task::spawn_blocking(load)
                .await
                .unwrap_or_else(|crash| Err(format!("the load crashed: {crash}")));
            match startup {
                Some(readiness) => {
                    record_startup_load(readiness, "plugin", &place, &plugin_name(&path), outcome)
                }
                None => {
                    if let Err(error) = outcome {
                        tracing::error!(path = %path.display(), "{error}");
                    }
                }
            }
        }
    }
}

/// The name a plugin file loads under: its file stem.
fn plugin_name(path: &Path) -> String {
    path.file_stem()
        .map(|stem| stem.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// `.wasm` files whose modification time or size differs from what was seen, in name order.
fn changed_wasm_files(
    dir: &Path,
    seen: &HashMap<PathBuf, (SystemTime, u64)>,
) -> std::io::Result<Vec<(PathBuf, (SystemTime, u64))>> {
    let mut changed = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_none_or(|ext| ext != "wasm") {
            continue;
        }
        let metadata = std::fs::metadata(&path)?;
        let stamp = (metadata.modified()?, metadata.len());
        if seen.get(&path) != Some(&stamp) {
            changed.push((path, stamp));
        }
    }
    changed.sort();
    Ok(changed)
}
