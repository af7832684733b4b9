//! Deployments across the cluster: [`Deployer::deploy`] loads a build under a name on this node,
//! records it (see [`crate::deployments`]) and announces it to every member, which fetch the
//! bytes, check their hash, load and record them too.
//!
//! Every deployment carries a stamp from this node's hybrid logical clock, above every stamp seen
//! for its name. Of two deployments of one name the one with the greater `(stamp, content hash)`
//! wins, on every node, whatever order the announcements arrive in: concurrent uploads converge.
//!
//! Three paths carry deployments, so a lost announcement only delays them:
//! - an upload is announced at once on [`Topic::Deployments`] to every live member;
//! - every [`ANTI_ENTROPY_INTERVAL`] a node asks one member (in turn) for its current
//!   deployments and adopts those that win;
//! - a node starting asks its seeds before it joins the membership ([`Deployer::catch_up`]), so
//!   by the time placement can give it an entity it has loaded the builds that serve it.
//!
//! Bytes travel in chunks of [`CHUNK_BYTES`] (under the transport's frame limit), at most
//! `max_plugin_bytes` in all, and only builds that are some name's current deployment are served.
//! A build that fails to load here is kept as a [`DeploymentFailure`] and reported (`GET
//! /cluster`, `GET /plugins`); the node keeps serving its previous build of the name.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::routing::{NodeReport, request_deployments};
use super::service::{Cluster, SeedConfig};
use super::transport::{Topic, Transport};
use crate::api::ApiError;
use crate::clock::NodeClock;
use crate::deployments::Deployments;
use crate::entity::EntitySystem;
use crate::plugin::{LoadReport, PluginRegistry, World};

/// How often a node compares its deployments with one other member's.
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(2);

/// Bytes of a build per transport request: well under the transport's frame limit.
pub const CHUNK_BYTES: usize = 1 << 20;

/// How long one request about deployments waits for its answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One name's deployment as nodes compare them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Deployed {
    pub name: String,
    pub content_hash: String,
    /// The hybrid-logical-clock time of the upload.
    pub stamp: u64,
}

impl Deployed {
    /// Whether this deployment wins over `other` of the same name: later stamp, then greater hash.
    pub fn beats(&self, other: &Deployed) -> bool {
        (self.stamp, &self.content_hash) > (other.stamp, &other.content_hash)
    }
}

/// A deployment this node received but could not load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeploymentFailure {
    pub name: String,
    pub content_hash: String,
    pub stamp: u64,
    pub error: String,
}

/// What one node asks another about deployments.
#[derive(Debug, Serialize, Deserialize)]
pub enum DeploymentRequest {
    /// Every current deployment.
    Current,
    /// Up to [`CHUNK_BYTES`] of a current build, from `offset`.
    Chunk { content_hash: String, offset: u64 },
}

/// The answer to a [`DeploymentRequest`].
#[derive(Debug, Serialize, Deserialize)]
pub enum DeploymentAnswer {
    Current(Vec<Deployed>),
    Chunk {
        total: u64,
        #[serde(with = "serde_bytes")]
        bytes: Vec<u8>,
    },
}

/// A load done by [`Deployer::deploy`]: the registry's report, and whether it was recorded to
/// survive a restart.
pub struct Deployment {
    pub report: LoadReport,
    pub durable: bool,
}

/// This node's deployments and their spreading. Cheap to clone.
#[derive(Clone)]
pub struct Deployer {
    inner: Arc<Inner>,
}

struct Inner {
    plugins: Arc<PluginRegistry>,
    entities: EntitySystem,
    records: Arc<Deployments>,
    clock: NodeClock,
    max_plugin_bytes: usize,
    /// Set once the node joined its cluster; never on a node running alone.
    cluster: OnceLock<Cluster>,
    /// The current deployment of each name, and what failed to load.
    state: Mutex<State>,
    /// One deployment at a time on this node: a name is never loaded twice at once, and a build
    /// offered by two peers is fetched once.
    serial: tokio::sync::Mutex<()>,
    /// Which member the next anti-entropy round asks.
    next_peer: AtomicUsize,
}

#[derive(Default)]
struct State {
    current: BTreeMap<String, Deployed>,
    failures: BTreeMap<String, DeploymentFailure>,
}

impl Deployer {
    /// The deployer of a node whose recorded deployments (`records`) were restored already.
    pub fn new(
        plugins: Arc<PluginRegistry>,
        entities: EntitySystem,
        records: Arc<Deployments>,
        max_plugin_bytes: usize,
    ) -> Deployer {
        let stamps = records.stamps();
        let current = records
            .current_plugins()
            .into_iter()
            .map(|(record, _)| {
                let stamp = stamps.get(&record.name).copied().unwrap_or(0);
                let deployed = Deployed {
                    name: record.name.clone(),
                    content_hash: record.content_hash,
                    stamp,
                };
                (record.name, deployed)
            })
            .collect();
        Deployer {
            inner: Arc::new(Inner {
                plugins,
                entities,
                records,
                clock: NodeClock::default(),
                max_plugin_bytes,
                cluster: OnceLock::new(),
                state: Mutex::new(State {
                    current,
                    failures: BTreeMap::new(),
                }),
                serial: tokio::sync::Mutex::new(()),
                next_peer: AtomicUsize::new(0),
            }),
        }
    }

    /// Deploys `bytes` under `name`: loads it here (refused with nothing changed if it cannot
    /// serve what is bound to the name), records it, and announces it to every live member.
    pub async fn deploy(&self, name: &str, bytes: Vec<u8>) -> Result<Deployment, ApiError> {
        let _serial = self.inner.serial.lock().await;
        let report = self.load(name, bytes.clone()).await?;
        let durable = self.deploy_installed(&report, &bytes);
        Ok(Deployment { report, durable })
    }

    /// Deploys a build already made current here (a verified upgrade or a rollback installs its
    /// build itself): stamps it, records it and announces it, so it spreads as an upload does.
    /// Whether the record will survive a restart.
    pub fn deploy_installed(&self, report: &LoadReport, bytes: &[u8]) -> bool {
        let deployed = {
            let state = self.state();
            let seen = state
                .current
                .get(&report.name)
                .map_or(0, |current| current.stamp);
            Deployed {
                name: report.name.clone(),
                content_hash: report.content_hash.clone(),
                stamp: self.inner.clock.now().max(seen + 1),
            }
        };
        let durable = self.record(report, bytes, &deployed);
        self.announce(&deployed);
        durable
    }

    /// The registry builds are loaded into.
    pub fn plugins(&self) -> &Arc<PluginRegistry> {
        &self.inner.plugins
    }

    /// Every current deployment of this node.
    pub fn current(&self) -> Vec<Deployed> {
        self.state().current.values().cloned().collect()
    }

    /// The deployments this node received but could not load.
    pub fn failures(&self) -> Vec<DeploymentFailure> {
        self.state().failures.values().cloned().collect()
    }

    /// Before joining: asks the seeds (other than this node), in order, for their deployments and
    /// adopts those that win from the first that answers. A seed that does not answer is skipped;
    /// with none answering the node starts with what it has (its anti-entropy catches up).
    pub async fn catch_up(&self, transport: &Transport, own_name: &str, seeds: &[SeedConfig]) {
        for seed in seeds.iter().filter(|seed| seed.name.as_str() != own_name) {
            let (name, addr) = (seed.name.as_str(), seed.addr);
            match request_deployments(
                transport,
                name,
                addr,
                DeploymentRequest::Current,
                REQUEST_TIMEOUT,
            )
            .await
            {
                Ok(DeploymentAnswer::Current(offered)) => {
                    tracing::info!(
                        seed = name,
                        "deployments: catching up on {} before joining",
                        offered.len()
                    );
                    self.adopt(transport, name, addr, offered).await;
                    return;
                }
                Ok(other) => tracing::warn!(seed = name, "deployments: answered {other:?}"),
                Err(error) => tracing::info!(seed = name, "deployments: not asked: {error}"),
            }
        }
    }

    /// Once the node is a member: announcements go to the members, and anti-entropy rounds run
    /// until the cluster service stops.
    pub fn attach(&self, cluster: Cluster) {
        if self.inner.cluster.set(cluster.clone()).is_err() {
            return;
        }
        let deployer = self.clone();
        cluster.clone().spawn(async move {
            let mut rounds = tokio::time::interval(ANTI_ENTROPY_INTERVAL);
            rounds.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut view = cluster.clone();
            loop {
                tokio::select! {
                    _ = rounds.tick() => deployer.anti_entropy_round(&cluster).await,
                    changed = view.changed() => if changed.is_none() { return },
                }
            }
        });
    }

    /// Answers a peer's request.
    pub fn answer(&self, request: DeploymentRequest) -> Result<DeploymentAnswer, String> {
        match request {
            DeploymentRequest::Current => Ok(DeploymentAnswer::Current(self.current())),
            DeploymentRequest::Chunk {
                content_hash,
                offset,
            } => self.chunk(&content_hash, offset),
        }
    }

    /// Takes an announcement from the member named `from`; fetching and loading run on their
    /// own task. An announcement from a node not (yet) in the view is left to anti-entropy.
    pub fn announced(&self, from: &str, payload: &[u8]) {
        let offered: Vec<Deployed> = match rmp_serde::from_slice(payload) {
            Ok(offered) => offered,
            Err(error) => {
                tracing::warn!("a deployment announcement from {from} does not decode: {error}");
                return;
            }
        };
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        let view = cluster.view();
        let Some(member) = view.members.iter().find(|m| m.name().as_str() == from) else {
            return;
        };
        let (deployer, transport, addr) = (self.clone(), cluster.transport().clone(), member.addr);
        let from = from.to_owned();
        cluster.spawn(async move { deployer.adopt(&transport, &from, addr, offered).await });
    }

    async fn anti_entropy_round(&self, cluster: &Cluster) {
        let view = cluster.view();
        let others: Vec<_> = view
            .members
            .iter()
            .filter(|member| member.id != view.local.id)
            .collect();
        if others.is_empty() {
            return;
        }
        let peer = others[self.inner.next_peer.fetch_add(1, Ordering::Relaxed) % others.len()];
        let transport = cluster.transport();
        let name = peer.name().as_str();
        match request_deployments(
            transport,
            name,
            peer.addr,
            DeploymentRequest::Current,
            REQUEST_TIMEOUT,
        )
        .await
        {
            Ok(DeploymentAnswer::Current(offered)) => {
                self.adopt(transport, name, peer.addr, offered).await
            }
            Ok(other) => tracing::debug!(peer = name, "deployments: answered {other:?}"),
            Err(error) => tracing::debug!(peer = name, "deployments: {error}"),
        }
    }

    /// Fetches, checks, loads and records each offered deployment that wins over this node's
    /// (and is not one that already failed here).
    async fn adopt(
        &self,
        transport: &Transport,
        peer: &str,
        addr: SocketAddr,
        offered: Vec<Deployed>,
    ) {
        let _serial = self.inner.serial.lock().await;
        for deployed in offered {
            if !self.wins(&deployed) {
                continue;
            }
            let bytes = match self
                .fetch(transport, peer, addr, &deployed.content_hash)
                .await
            {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::warn!(
                        plugin = deployed.name,
                        peer,
                        "deployments: cannot fetch: {error}"
                    );
                    continue;
                }
            };
            match self.load(&deployed.name, bytes.clone()).await {
                Ok(report) => {
                    tracing::info!(plugin = %report.version, peer, "deployments: loaded from a peer");
                    self.record(&report, &bytes, &deployed);
                }
                Err(error) => {
                    tracing::error!(
                        plugin = deployed.name,
                        hash = deployed.content_hash,
                        "deployments: a build deployed in the cluster does not load here: {}",
                        error.message
                    );
                    self.state().failures.insert(
                        deployed.name.clone(),
                        DeploymentFailure {
                            name: deployed.name,
                            content_hash: deployed.content_hash,
                            stamp: deployed.stamp,
                            error: error.message,
                        },
                    );
                }
            }
        }
    }

    fn wins(&self, offered: &Deployed) -> bool {
        let state = self.state();
        let beats_current = state
            .current
            .get(&offered.name)
            .is_none_or(|current| offered.beats(current));
        let failed_already = state.failures.get(&offered.name).is_some_and(|failure| {
            (failure.stamp, &failure.content_hash) >= (offered.stamp, &offered.content_hash)
        });
        beats_current && !failed_already
    }

    /// The build `content_hash` from `peer`, chunk by chunk, at most `max_plugin_bytes`, checked
    /// against its hash.
    async fn fetch(
        &self,
        transport: &Transport,
        peer: &str,
        addr: SocketAddr,
        content_hash: &str,
    ) -> Result<Vec<u8>, String> {
        let mut bytes = Vec::new();
        loop {
            let request = DeploymentRequest::Chunk {
                content_hash: content_hash.to_owned(),
                offset: bytes.len() as u64,
            };
            let (total, chunk) =
                match request_deployments(transport, peer, addr, request, REQUEST_TIMEOUT).await? {
                    DeploymentAnswer::Chunk { total, bytes } => (total, bytes),
                    other => return Err(format!("answered {other:?}")),
                };
            if total > self.inner.max_plugin_bytes as u64 {
                return Err(format!(
                    "the build is {total} bytes, over max_plugin_bytes ({})",
                    self.inner.max_plugin_bytes
                ));
            }
            if chunk.is_empty() && (bytes.len() as u64) < total {
                return Err("the peer sent an empty chunk before the end".into());
            }
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 >= total {
                break;
            }
        }
        let actual = hex::encode(Sha256::digest(&bytes));
        if actual != content_hash {
            return Err(format!("the bytes hash to {actual}, not {content_hash}"));
        }
        Ok(bytes)
    }

    /// Up to [`CHUNK_BYTES`] of a build that is some name's current deployment.
    fn chunk(&self, content_hash: &str, offset: u64) -> Result<DeploymentAnswer, String> {
        let path = self
            .inner
            .records
            .current_plugins()
            .into_iter()
            .find(|(record, _)| record.content_hash == content_hash)
            .map(|(_, path)| path)
            .ok_or_else(|| format!("no current deployment has the hash {content_hash}"))?;
        let read = || -> std::io::Result<DeploymentAnswer> {
            let mut file = std::fs::File::open(&path)?;
            let total = file.metadata()?.len();
            file.seek(SeekFrom::Start(offset.min(total)))?;
            let mut bytes = Vec::new();
            file.take(CHUNK_BYTES as u64).read_to_end(&mut bytes)?;
            Ok(DeploymentAnswer::Chunk { total, bytes })
        };
        read().map_err(|error| format!("cannot read {}: {error}", path.display()))
    }

    /// Loads `bytes` under `name` off the async workers, as an upload over the API would.
    async fn load(&self, name: &str, bytes: Vec<u8>) -> Result<LoadReport, ApiError> {
        let (plugins, entities) = (self.inner.plugins.clone(), self.inner.entities.clone());
        let needed = entities
            .check_new_build(name, plugins.get(name).is_ok())
            .map_err(|reason| ApiError::new(StatusCode::CONFLICT, "resolver_bound", reason))?;
        let plugin = name.to_owned();
        // The load's lines are written in the caller's span (an upload's request id).
        let span = tracing::Span::current();
        let report = tokio::task::spawn_blocking(move || {
            span.in_scope(|| plugins.load_world(&plugin, &bytes, needed))
        })
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "load_failed",
                e.to_string(),
            )
        })??;
        if report.world == World::Entity {
            entities.bind_type_if_unbound(name);
        }
        Ok(report)
    }

    /// Makes `deployed` this node's current deployment of its name and records it; whether the
    /// record will survive a restart.
    fn record(&self, report: &LoadReport, bytes: &[u8], deployed: &Deployed) -> bool {
        {
            let mut state = self.state();
            state
                .current
                .insert(deployed.name.clone(), deployed.clone());
            state.failures.remove(&deployed.name);
        }
        let durable = self
            .inner
            .records
            .record_plugin(report, bytes, deployed.stamp);
        if let Err(error) = &durable {
            tracing::error!(plugin = %report.version, "the build is loaded but will not survive a restart: {error}");
        }
        durable.is_ok()
    }

    /// Sends `deployed` to every other live member; best effort (anti-entropy repairs losses).
    fn announce(&self, deployed: &Deployed) {
        let Some(cluster) = self.inner.cluster.get() else {
            return;
        };
        let payload = match rmp_serde::to_vec_named(&[deployed]) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!("deployments: cannot encode an announcement: {error}");
                return;
            }
        };
        let view = cluster.view();
        for member in view.members.iter().filter(|m| m.id != view.local.id) {
            let (transport, payload) = (cluster.transport().clone(), payload.clone());
            let (name, addr) = (member.name().to_string(), member.addr);
            cluster.spawn(async move {
                let _ = transport
                    .send(&name, addr, Topic::Deployments, payload)
                    .await;
            });
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether every member answered, none failed to load a deployment, and every plugin is loaded on
/// every member with the same hash.
pub fn converged(reports: &[Result<NodeReport, String>]) -> bool {
    let mut hashes: BTreeMap<&str, std::collections::BTreeSet<&str>> = BTreeMap::new();
    let mut answered = Vec::new();
    for report in reports {
        let Ok(report) = report else { return false };
        if !report.deployment_failures.is_empty() {
            return false;
        }
        answered.push(report);
        for plugin in &report.plugins {
            hashes
                .entry(&plugin.name)
                .or_default()
                .insert(&plugin.content_hash);
        }
    }
    hashes.values().all(|hashes| hashes.len() == 1)
        && answered
            .iter()
            .all(|report| report.plugins.len() == hashes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployed(stamp: u64, hash: &str) -> Deployed {
        Deployed {
            name: "p".into(),
            content_hash: hash.into(),
            stamp,
        }
    }

    #[test]
    fn the_later_stamp_wins_then_the_greater_hash_whatever_the_order() {
        let offers = [
            deployed(5, "bb"),
            deployed(7, "aa"),
            deployed(7, "ab"),
            deployed(6, "ff"),
        ];
        // Every order of arrival ends on the same winner.
        for first in 0..offers.len() {
            let mut order: Vec<&Deployed> = offers.iter().collect();
            order.rotate_left(first);
            let mut winner = order[0].clone();
            for offer in &order[1..] {
                if offer.beats(&winner) {
                    winner = (*offer).clone();
                }
            }
            assert_eq!(winner, deployed(7, "ab"));
        }
        assert!(!deployed(7, "ab").beats(&deployed(7, "ab")));
    }

    fn report(plugins: &[(&str, &str)], failed: bool) -> Result<NodeReport, String> {
        let failure = DeploymentFailure {
            name: "p".into(),
            content_hash: "h".into(),
            stamp: 1,
            error: "does not load".into(),
        };
        Ok(NodeReport {
            plugins: plugins
                .iter()
                .map(|(name, hash)| crate::plugin::PluginInfo {
                    name: (*name).into(),
                    version: format!("{name}@{hash}"),
                    content_hash: (*hash).into(),
                    world: World::Entity,
                    size_bytes: 1,
                    loaded_at_ms: 0,
                })
                .collect(),
            active: Vec::new(),
            deployment_failures: if failed { vec![failure] } else { Vec::new() },
        })
    }

    #[test]
    fn converged_means_every_member_answered_and_runs_the_same_builds() {
        let same = || report(&[("a", "1"), ("b", "2")], false);
        assert!(converged(&[same(), same()]));
        assert!(!converged(&[
            same(),
            report(&[("a", "1"), ("b", "3")], false)
        ]));
        assert!(!converged(&[same(), report(&[("a", "1")], false)]));
        assert!(!converged(&[report(&[("a", "1")], false), same()]));
        assert!(!converged(&[
            same(),
            report(&[("a", "1"), ("b", "2")], true)
        ]));
        assert!(!converged(&[same(), Err("timed out".into())]));
    }
}
