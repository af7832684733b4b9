//! Node configuration: `weft.toml`, with defaults for everything, so `weft serve` alone runs a
//! node on the embedded defaults.
//!
//! ```toml
//! [node]
//! listen = "127.0.0.1:7070"
//! data_dir = "./weft-data"
//! plugins_dir = "./plugins"      # watched: a new or changed .wasm is hot-loaded
//! # writer_id = "01J…"           # a fixed ULID instead of a new one per boot (tests, migrations)
//! # compile_cache_dir = "…"      # default <data_dir>/compiled
//! # shutdown_timeout_ms = 30000  # longest a graceful stop (SIGTERM/SIGINT) runs before it is forced
//!
//! [journal]
//! backend = "sqlite"             # or "memory", or "postgres" with a url:
//! # url = "postgres://weft@db.internal:5432/weft"
//! #   over TLS: "…/weft?sslmode=verify-full&sslrootcert=/etc/weft/db-ca.pem" (docs/journal.md)
//!
//! [lease]                        # named leases (`/leases/...`, single-writer entities)
//! # backend = "memory"           # default: "postgres" when the journal is, else "memory"
//! # url = "redis://127.0.0.1:6379/"   # for "redis"; "postgres" defaults to the journal's url
//! #   over TLS: "rediss://cache:6380/?sslrootcert=/etc/weft/cache-ca.pem" (docs/leases.md)
//!
//! [auth]                         # bearer tokens on the HTTP API (docs/security.md)
//! # tokens = [
//! #   { name = "ops", scope = "admin", secret_env = "WEFT_ADMIN_TOKEN" },
//! #   { name = "shop", scope = "client", sha256 = "<hex SHA-256 of the secret>" },
//! # ]
//! # allow_unauthenticated = false # true: serve a non-loopback address with no tokens
//!
//! [limits]                       # plugin calls, the instance pool, compiles (docs/plugins.md)
//! cpu_per_call_ms = 1000
//! memory_per_instance_bytes = 268435456
//! # resident_state_bytes_max = 268435456    # entity state kept in plugins, node-wide
//! # compile_timeout_ms = 60000
//!
//! [limits.output]                # what a guest may hand the host in one call
//! # reply_bytes_max = 1048576
//! # state_bytes_max = 16777216
//!
//! [cluster]                      # optional: several nodes as one system (docs/cluster.md)
//! # name = "node-1"              # stable: what placement hashes
//! # listen = "127.0.0.1:7170"    # the internal transport
//! # role = "actor"               # or "gateway" (HTTP only, hosts no entities)
//! # seeds = [{ name = "node-1", addr = "127.0.0.1:7170" }]
//! # allow_plaintext = false      # a non-loopback `listen` needs [cluster.tls], or this
//!
//! # [cluster.tls]                # mutual TLS between nodes (docs/security.md)
//! # ca = "certs/ca.pem"          # `weft cluster certs --dir certs node-1` makes these
//! # cert = "certs/node-1.pem"
//! # key = "certs/node-1.key"
//!
//! [ddata]                        # DistributedData, on clustered nodes
//! # durable_keys = ["cart-*"]    # kept in <data_dir>/ddata.db across restarts
//!
//! [entities.counter]             # entity type `counter`, served by plugin `counter`
//! plugin = "counter"
//! snapshot_every = 100
//! passivate_after_secs = 120
//! mailbox_capacity = 1024
//! replay_filter = "fail"         # warn | repair-by-discard-old | off
//! # single_writer = true         # one writer per entity across nodes: the lease holder
//! # lease_ttl_ms = 10000
//!
//! [entities.tally]               # replicated on the nodes named a, b, c (docs/replication.md)
//! plugin = "counter"
//! replication = { replicas = ["a", "b", "c"], resolver = "last-writer-wins" }
//!
//! [log]                          # which lines: RUST_LOG (docs/operations.md)
//! # format = "text"              # or "json", one object per line; WEFT_LOG_FORMAT overrides it
//! ```

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::api::TokenConfig;
use crate::cluster::ClusterConfig;
use crate::ddata::DdataConfig;
use crate::entity::EntityTypeConfig;
use crate::lease::ENTITY_LEASE_TTL_DEFAULT;
use crate::observability::LogConfig;
use crate::plugin::RuntimeLimits;
use crate::postgres::SessionBounds;
use crate::settings::check_ranges;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub node: NodeConfig,
    pub journal: JournalConfig,
    pub lease: LeaseConfig,
    /// Who may call the HTTP API.
    pub auth: AuthConfig,
    pub limits: RuntimeLimits,
    /// Several nodes as one system; absent, the node runs alone.
    pub cluster: Option<ClusterConfig>,
    /// DistributedData (clustered nodes).
    pub ddata: DdataConfig,
    /// Entity types by name. A loaded entity plugin with no entry here serves the entity type
    /// of its own name with the defaults.
    pub entities: BTreeMap<String, EntityTypeConfig>,
    /// How log lines are written (`WEFT_LOG_FORMAT` overrides it).
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Watched for `.wasm` files; `None` disables the watch.
    pub plugins_dir: Option<PathBuf>,
    /// Overrides the per-boot writer id (a ULID).
    pub writer_id: Option<ulid::Ulid>,
    /// Where compiled plugins are cached; default `<data_dir>/compiled`. Nodes may share one:
    /// entries are keyed by content hash and engine, and written atomically.
    pub compile_cache_dir: Option<PathBuf>,
    /// Largest command body accepted over HTTP, in bytes.
    pub max_command_bytes: usize,
    /// Largest plugin upload accepted over HTTP, in bytes.
    pub max_plugin_bytes: usize,
    /// How long an HTTP command or state read waits for its answer before 504 `ask_timeout`.
    pub ask_timeout_ms: u64,
    /// Longest a graceful stop runs (answering requests in flight, passivating entities,
    /// releasing leases, leaving the cluster, writing durable data) before the node stops at
    /// once.
    pub shutdown_timeout_ms: u64,
}

impl NodeConfig {
    /// Refuses numeric settings outside what the node can honour, naming the range.
    pub fn validate(&self) -> Result<(), String> {
        check_ranges(
            "node",
            &[
                (
                    "max_command_bytes",
                    self.max_command_bytes as u64,
                    1..=(256 << 20),
                ),
                (
                    "max_plugin_bytes",
                    self.max_plugin_bytes as u64,
                    8..=(1 << 30),
                ),
                ("ask_timeout_ms", self.ask_timeout_ms, 1..=600_000),
                (
                    "shutdown_timeout_ms",
                    self.shutdown_timeout_ms,
                    1..=3_600_000,
                ),
            ],
        )
    }
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("./weft-data"),
            plugins_dir: Some(PathBuf::from("./plugins")),
            writer_id: None,
            compile_cache_dir: None,
            max_command_bytes: 1 << 20,
            max_plugin_bytes: 64 << 20,
            ask_timeout_ms: 30_000,
            shutdown_timeout_ms: 30_000,
        }
    }
}

/// `[auth]`: the bearer tokens of the HTTP API. With none, the node serves on loopback only
/// unless `allow_unauthenticated` says otherwise.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub tokens: Vec<TokenConfig>,
    /// Serve a non-loopback address with no tokens: anyone who reaches the port may do
    /// anything. Logged as a warning at start.
    pub allow_unauthenticated: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JournalConfig {
    pub backend: JournalBackend,
    /// The database of the `postgres` backend: `postgres://user@host:port/database`.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum JournalBackend {
    /// `<data_dir>/journal.db`, the embedded default.
    #[default]
    Sqlite,
    /// Nothing survives a restart: for tests and experiments.
    Memory,
    /// A PostgreSQL database at `[journal] url`, shared by the nodes of a cluster.
    Postgres,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeaseConfig {
    /// Where leases live; `None` picks PostgreSQL when the journal is there, else memory.
    pub backend: Option<LeaseBackend>,
    /// The server of the `postgres` (default: the journal's url) or `redis` backend.
    pub url: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LeaseBackend {
    /// Leases of this node only: enough for one node, meaningless across several.
    Memory,
    /// The `weft_leases` table of a PostgreSQL database.
    Postgres,
    /// Keys in a Redis server.
    Redis,
}

impl Config {
    /// Refuses to serve the API on a non-loopback address with no tokens unless the config
    /// opts out, and says at start who can reach it.
    pub fn check_api_exposure(&self) -> anyhow::Result<()> {
        let listen = self.node.listen;
        let loopback = listen.ip().is_loopback();
        match (
            self.auth.tokens.is_empty(),
            loopback,
            self.auth.allow_unauthenticated,
        ) {
            (false, _, _) => {
                tracing::info!(
                    tokens = self.auth.tokens.len(),
                    "HTTP API: bearer tokens required"
                );
            }
            (true, true, _) => tracing::info!(
                "HTTP API: no [auth] tokens, so no credentials are asked; serving on loopback                  ({listen}) only"
            ),
            (true, false, true) => tracing::warn!(
                "HTTP API: no [auth] tokens and allow_unauthenticated = true: anyone who reaches                  {listen} can upload plugins, bind entity types and take leases"
            ),
            (true, false, false) => anyhow::bail!(
                "refusing to serve the HTTP API on {listen} without credentials: add tokens under                  [auth] (see docs/security.md), listen on 127.0.0.1, or set                  [auth] allow_unauthenticated = true"
            ),
        }
        Ok(())
    }

    /// Reads a `weft.toml`; unknown keys are errors, so a typo never goes unnoticed.
    pub fn load(path: &Path) -> anyhow::Result<Config> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config {}", path.display()))
    }

    /// Where compiled plugins are cached.
    pub fn compile_cache_dir(&self) -> PathBuf {
        match &self.node.compile_cache_dir {
            Some(dir) => dir.clone(),
            None => self.node.data_dir.join("compiled"),
        }
    }

    pub fn journal_path(&self) -> PathBuf {
        self.node.data_dir.join("journal.db")
    }

    /// The lease backend in effect: the configured one, else PostgreSQL when the journal is there
    /// (a cluster sharing a journal must share its leases too), else memory.
    pub fn lease_backend(&self) -> LeaseBackend {
        match (self.lease.backend, self.journal.backend) {
            (Some(backend), _) => backend,
            (None, JournalBackend::Postgres) => LeaseBackend::Postgres,
            (None, _) => LeaseBackend::Memory,
        }
    }

    /// The time bounds of the PostgreSQL journal's and lease backend's sessions (see
    /// [`SessionBounds::for_lease_ttl`]), for the shortest lease time to live a single-writer entity
    /// type here has — or the default one, which entity types bound later over the API get, when
    /// that is shorter.
    pub fn postgres_session_bounds(&self) -> SessionBounds {
        let shortest = self
            .entities
            .values()
            .filter(|entity_type| entity_type.single_writer)
            .map(EntityTypeConfig::lease_ttl)
            .fold(ENTITY_LEASE_TTL_DEFAULT, Duration::min);
        SessionBounds::for_lease_ttl(shortest)
    }

    /// The server URL of the lease backend in effect: `[lease] url`, else for PostgreSQL the
    /// journal's.
    pub fn lease_url(&self) -> Option<&str> {
        match (&self.lease.url, self.lease_backend()) {
            (Some(url), _) => Some(url),
            (None, LeaseBackend::Postgres) => self.journal.url.as_deref(),
            (None, _) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.node.listen.port(), 7070);
        assert_eq!(config.journal.backend, JournalBackend::Sqlite);
    }

    #[test]
    fn leases_follow_a_postgres_journal_unless_configured() {
        let config: Config = toml::from_str("").unwrap();
        assert_eq!(config.lease_backend(), LeaseBackend::Memory);
        assert_eq!(config.lease_url(), None);

        let shared: Config = toml::from_str(
            "[journal]\nbackend = \"postgres\"\nurl = \"postgres://weft@db/weft\"\n",
        )
        .unwrap();
        assert_eq!(shared.lease_backend(), LeaseBackend::Postgres);
        assert_eq!(shared.lease_url(), Some("postgres://weft@db/weft"));

        let redis: Config = toml::from_str(
            "[journal]\nbackend = \"postgres\"\nurl = \"postgres://weft@db/weft\"\n\
             [lease]\nbackend = \"redis\"\nurl = \"redis://cache:6379/\"\n",
        )
        .unwrap();
        assert_eq!(redis.lease_backend(), LeaseBackend::Redis);
        assert_eq!(redis.lease_url(), Some("redis://cache:6379/"));
    }

    #[test]
    fn postgres_sessions_are_bounded_for_the_shortest_single_writer_lease() {
        let bounds = |toml: &str| {
            toml::from_str::<Config>(toml)
                .unwrap()
                .postgres_session_bounds()
        };
        let default = SessionBounds::for_lease_ttl(ENTITY_LEASE_TTL_DEFAULT);
        assert_eq!(bounds(""), default);
        let short = bounds(
            "[entities.a]\nplugin = \"a\"\nsingle_writer = true\nlease_ttl_ms = 2000\n\
             [entities.b]\nplugin = \"b\"\nsingle_writer = true\nlease_ttl_ms = 4000\n\
             [entities.c]\nplugin = \"c\"\nlease_ttl_ms = 100\n",
        );
        assert_eq!(short.lock_wait, Duration::from_secs(1));
        assert_eq!(short.idle_in_transaction, Duration::from_secs(1));
        assert_eq!(short.statement, Duration::from_secs(5));
        let long =
            bounds("[entities.a]\nplugin = \"a\"\nsingle_writer = true\nlease_ttl_ms = 60000\n");
        assert_eq!(
            long, default,
            "entity types bound later get the default lease"
        );
        assert_eq!(default.lock_wait, Duration::from_secs(5));
        assert_eq!(default.statement, Duration::from_secs(20));
    }

    #[test]
    fn a_public_address_needs_tokens_or_an_explicit_opt_out() {
        let config = |toml: &str| toml::from_str::<Config>(toml).unwrap();
        assert!(config("").check_api_exposure().is_ok());
        let public = config("[node]\nlisten = \"0.0.0.0:7070\"\n");
        let error = public.check_api_exposure().unwrap_err().to_string();
        assert!(error.contains("allow_unauthenticated"), "{error}");
        assert!(
            config("[node]\nlisten = \"0.0.0.0:7070\"\n[auth]\nallow_unauthenticated = true\n")
                .check_api_exposure()
                .is_ok()
        );
        let with_token = config(
            "[node]\nlisten = \"0.0.0.0:7070\"\n[auth]\ntokens = [{ name = \"ops\", scope = \"admin\", \
             sha256 = \"00\" }]\n",
        );
        assert!(with_token.check_api_exposure().is_ok());
    }

    #[test]
    fn a_public_cluster_transport_needs_tls_or_an_explicit_opt_out() {
        let cluster = |toml: &str| {
            toml::from_str::<Config>(&format!("[cluster]\n{toml}"))
                .unwrap()
                .cluster
                .unwrap()
                .validate()
        };
        assert!(cluster("name = \"n1\"\nlisten = \"127.0.0.1:7170\"").is_ok());
        let error = cluster("name = \"n1\"\nlisten = \"0.0.0.0:7170\"").unwrap_err();
        assert!(
            error.contains("[cluster.tls]") && error.contains("allow_plaintext"),
            "{error}"
        );
        assert!(
            cluster("name = \"n1\"\nlisten = \"0.0.0.0:7170\"\nallow_plaintext = true").is_ok()
        );
        let tls = "[cluster.tls]\nca = \"ca.pem\"\ncert = \"n.pem\"\nkey = \"n.key\"";
        assert!(cluster(&format!("name = \"n1\"\nlisten = \"0.0.0.0:7170\"\n{tls}")).is_ok());
        let error = cluster(&format!(
            "name = \"10.0.0.1\"\nlisten = \"0.0.0.0:7170\"\n{tls}"
        ))
        .unwrap_err();
        assert!(error.contains("DNS name"), "{error}");
    }

    #[test]
    fn entity_types_and_typos() {
        let config: Config = toml::from_str(
            "[entities.account]\nplugin = \"bank\"\nsnapshot_every = 10\nreplay_filter = \"warn\"\n",
        )
        .unwrap();
        assert_eq!(config.entities["account"].plugin, "bank");
        assert_eq!(config.entities["account"].snapshot_every, 10);
        let typo = toml::from_str::<Config>("[node]\nlisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert!(typo.to_string().contains("lisen"), "{typo}");
    }
}
