//! A cluster of `weft serve` processes on loopback for tests and benchmark programs: node configs
//! sharing a PostgreSQL journal, their transport on mutual TLS with certificates of one CA made
//! per cluster, and waiting on each node's view of the membership.
//! Benchmark programs include this file (with `node`, `plugins` and `services`) through `#[path]`.

#![allow(dead_code)] // each test binary and benchmark uses a different subset

use serde_json::Value;
use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use super::node::{ServeProcess, plugins_dir};
use super::plugins::shared_compile_cache;
use super::services::Postgres;

/// How long the cluster may take to do anything a caller waits for.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// A free loopback port (bound, then released) for the seed's transport.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("a free port")
}

/// One node of a test cluster: every node announces to `seed` (the node named `seed_name`,
/// whose transport listens on `seed_port`).
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub role: &'a str,
    /// 0 for any free port; the seed's own must be `seed_port`.
    pub transport_port: u16,
    pub seed_name: &'a str,
    pub seed_port: u16,
    pub database: &'a str,
    pub fault_injection: bool,
    /// The counter's single-writer lease, in milliseconds.
    pub lease_ttl_ms: u64,
    /// How long a suspect has to refute before it is declared down, in milliseconds.
    pub suspect_to_down_after_ms: u64,
    /// More `weft.toml`, appended as it is (e.g. a `[ddata]` section).
    pub extra: &'a str,
    /// Mutual TLS on the transport, with a certificate for the node from the CA in
    /// `root/certs` (made by the first node that needs it).
    pub tls: bool,
}

/// The `[cluster.tls]` section for the node `name`: a new certificate for it, signed by the CA
/// in `root/certs` (made there first if missing). A node restarted with a new config has a new
/// certificate, as after a rotation.
pub fn tls_section(root: &Path, name: &str) -> String {
    let certs = root.join("certs");
    let written = weft::cluster::certs::write_certificates(&certs, &[name.to_owned()])
        .expect("certificates for the node");
    let (cert, key) = &written.nodes[0];
    tls_toml(&written.ca, cert, key)
}

/// A `[cluster.tls]` section naming these files.
pub fn tls_toml(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "[cluster.tls]\nca = \"{}\"\ncert = \"{}\"\nkey = \"{}\"\n",
        ca.display(),
        cert.display(),
        key.display()
    )
}

/// Writes `root/<name>/weft.toml` for `spec`: a PostgreSQL journal, fast failure detection (probe
/// period 200 ms, the spec's suspicion), the counter as a single-writer type with the spec's
/// lease (and the ledger plugin loaded, for `extra` to bind).
pub fn node_config(root: &Path, spec: &NodeSpec) -> std::path::PathBuf {
    let NodeSpec {
        name,
        role,
        transport_port,
        seed_name,
        seed_port,
        database,
        fault_injection,
        lease_ttl_ms,
        suspect_to_down_after_ms,
        extra,
        tls,
    } = *spec;
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let plugins = plugins_dir(&dir, &["counter", "ledger"]);
    let text = format!(
        r#"
[node]
listen = "127.0.0.1:0"
data_dir = "{data}"
plugins_dir = "{plugins}"
compile_cache_dir = "{cache}"

[journal]
backend = "postgres"
url = "{database}"

[cluster]
name = "{name}"
listen = "127.0.0.1:{transport_port}"
role = "{role}"
seeds = [{{ name = "{seed_name}", addr = "127.0.0.1:{seed_port}" }}]
probe_period_ms = 200
suspect_to_down_after_ms = {suspect_to_down_after_ms}
forward_timeout_ms = 3000
fault_injection = {fault_injection}

{tls}
[entities.counter]
plugin = "counter"
single_writer = true
lease_ttl_ms = {lease_ttl_ms}

{extra}
"#,
        data = dir.join("data").display(),
        plugins = plugins.display(),
        cache = shared_compile_cache().display(),
        tls = if tls {
            tls_section(root, name)
        } else {
            String::new()
        },
    );
    let path = dir.join("weft.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// The counter amounts (`by`) in the stream `pid` of `journal`; panics if one was applied twice
/// (every amount a test sends is unique, so a duplicate is a command applied twice).
pub async fn amounts_applied_once(
    journal: &dyn weft::journal::Journal,
    pid: &str,
) -> BTreeSet<i64> {
    let events = journal.read(pid, 1, 100_000).await.unwrap();
    let amounts: Vec<i64> = events
        .iter()
        .map(|event| {
            super::plugins::from_msgpack(&event.payload)["by"]
                .as_i64()
                .unwrap()
        })
        .collect();
    let unique: BTreeSet<i64> = amounts.iter().copied().collect();
    assert_eq!(
        unique.len(),
        amounts.len(),
        "{pid}: an amount applied twice"
    );
    unique
}

/// Injects `fault` (a `POST /cluster/faults` body) into the node at `url`; panics if refused.
pub async fn inject_fault(http: &reqwest::Client, url: &str, fault: Value) {
    let response = http
        .post(format!("{url}/cluster/faults"))
        .json(&fault)
        .send()
        .await
        .expect("the node answers");
    assert_eq!(response.status(), 200, "{fault}");
}

pub async fn cluster_view(http: &reqwest::Client, url: &str) -> Option<Value> {
    let response = http.get(format!("{url}/cluster")).send().await.ok()?;
    response.json().await.ok()
}

/// Waits until the node at `url` sees exactly the members named `names`.
pub async fn wait_for_members(http: &reqwest::Client, url: &str, names: &[&str]) {
    let expected: BTreeSet<String> = names.iter().map(|name| name.to_string()).collect();
    let started = Instant::now();
    loop {
        let seen: BTreeSet<String> = match cluster_view(http, url).await {
            Some(view) => view["members"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|member| member["name"].as_str().map(str::to_owned))
                .collect(),
            None => BTreeSet::new(),
        };
        if seen == expected {
            return;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "{url} sees {seen:?}, not {expected:?}, after {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes of one test cluster: where their files go, their fresh database on a shared
/// server, the seed every node announces to, and what every node's config has in common.
pub struct TestCluster {
    pub root: tempfile::TempDir,
    pub database: String,
    pub seed_name: String,
    /// The seed's transport port, chosen free up front so every node can name it.
    pub seed_port: u16,
    pub fault_injection: bool,
    /// The counter's single-writer lease (default 2 s).
    pub lease_ttl_ms: u64,
    /// The membership's suspicion timeout (default 1 s).
    pub suspect_to_down_after_ms: u64,
    /// More `weft.toml` for every node.
    pub extra: String,
    /// Mutual TLS on the transport (default on: the path every deployment should take).
    pub tls: bool,
}

impl TestCluster {
    /// A cluster seeded by the node named `seed_name`, on a fresh database of `postgres`, with no
    /// fault injection, a 2 s lease, a 1 s suspicion and nothing extra in the configs.
    pub async fn new(postgres: &Postgres, seed_name: &str) -> TestCluster {
        TestCluster {
            root: tempfile::tempdir().expect("a directory for the cluster"),
            database: postgres.fresh_database().await,
            seed_name: seed_name.to_owned(),
            seed_port: free_port(),
            fault_injection: false,
            lease_ttl_ms: 2_000,
            suspect_to_down_after_ms: 1_000,
            extra: String::new(),
            tls: true,
        }
    }

    /// Writes the config of node `name` and starts it. The seed listens on `seed_port`; every
    /// other node on a free port.
    pub fn start(&self, name: &str, role: &str) -> ServeProcess {
        ServeProcess::start_with_config(&self.config(name, role))
    }

    /// Writes the config of node `name` and returns its path.
    pub fn config(&self, name: &str, role: &str) -> std::path::PathBuf {
        let transport_port = if name == self.seed_name {
            self.seed_port
        } else {
            0
        };
        let spec = NodeSpec {
            name,
            role,
            transport_port,
            seed_name: &self.seed_name,
            seed_port: self.seed_port,
            database: &self.database,
            fault_injection: self.fault_injection,
            lease_ttl_ms: self.lease_ttl_ms,
            suspect_to_down_after_ms: self.suspect_to_down_after_ms,
            extra: &self.extra,
            tls: self.tls,
        };
        node_config(self.root.path(), &spec)
    }
}
