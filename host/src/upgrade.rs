//! Verified upgrades and rollbacks of an entity plugin.
//!
//! [`upgrade`] compiles and checks a new build as a load does, without making it current, then
//! replays the journal of the entities it would serve through the current build and the new one
//! side by side, comparing their states after every event. Only a build that folds every
//! replayed event to the same state (or an upgrade forced past the findings) is made current,
//! through the registry's swap and recorded in the deployments, as an upload is.
//!
//! What is replayed: every stream of the entity types bound to the plugin (or a deterministic
//! sample of them), from the initial state and event 1 — snapshots hold what the current build
//! folded, so both builds start from `init`. A replicated type's replica streams are each
//! replayed on their own, in their own order: the check is of `apply` over the same events in
//! the same order, not of the merged state a replica holds.
//!
//! [`rollback`] makes the previous build in the name's deployment history current again, also
//! recorded as a load, so a restart keeps it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::cluster::Deployer;
use crate::deployments::Deployments;
use crate::entity::{EntitySystem, EntityTypeConfig};
use crate::journal::{EventEnvelope, Journal, JournalError};
use crate::plugin::{
    Context, Envelope, LoadReport, PluginError, PluginRegistry, PluginVersion, Role, Session,
    Superseded, World,
};

/// Events read per journal query during a replay.
const REPLAY_PAGE: usize = 8_192;

/// How an upgrade is checked.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpgradeOptions {
    /// Replay only this many streams, chosen by a hash of their names (the same ones every
    /// time); `None`: every stream.
    pub sample: Option<usize>,
    /// Activate the build even when the replay found a divergence or a failure.
    pub force: bool,
}

/// What the replay concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Both builds folded every replayed event to the same state.
    Compatible,
    /// The builds' states differ after some event: see [`UpgradeReport::divergence`].
    Diverged,
    /// A build failed (trapped, exceeded a limit) during the replay: see
    /// [`UpgradeReport::replay_failure`].
    ReplayFailed,
}

impl Verdict {
    /// The API error code a refusal with this verdict is answered with.
    pub fn refusal_code(self) -> &'static str {
        match self {
            Verdict::Compatible => "upgrade_refused",
            Verdict::Diverged => "upgrade_diverged",
            Verdict::ReplayFailed => "upgrade_replay_failed",
        }
    }
}

/// Which of the two builds a finding is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Build {
    Current,
    New,
}

/// The first event after which the two builds' states differ, both states shown.
#[derive(Debug, Clone, Serialize)]
pub struct Divergence {
    /// The journal stream replayed: `<type>|<id>`, or `<type>|<id>|<replica>`.
    pub stream: String,
    pub entity_type: String,
    pub entity_id: String,
    /// The event after which the states differ.
    pub seq_nr: u64,
    /// That event's payload.
    pub event: Value,
    pub current_state: Value,
    pub new_state: Value,
}

/// A build that could not fold the journal.
#[derive(Debug, Clone, Serialize)]
pub struct ReplayFailure {
    pub stream: String,
    pub entity_type: String,
    pub entity_id: String,
    /// The event being applied; 0 for the initial state.
    pub seq_nr: u64,
    pub build: Build,
    /// The plugin error code, e.g. `plugin_trapped`.
    pub code: &'static str,
    pub message: String,
}

/// The answer to an upgrade.
#[derive(Debug, Clone, Serialize)]
pub struct UpgradeReport {
    pub name: String,
    /// The version that was current when the check began.
    pub from: String,
    /// The version checked.
    pub to: String,
    pub entity_types: Vec<String>,
    /// Streams in the journal of those types.
    pub streams_total: usize,
    /// Streams replayed (up to and including the one with a finding).
    pub entities_checked: usize,
    /// Events folded by each build.
    pub events_replayed: u64,
    pub replay_ms: f64,
    pub verdict: Verdict,
    pub forced: bool,
    pub divergence: Option<Divergence>,
    pub replay_failure: Option<ReplayFailure>,
    /// Whether the build is now current.
    pub activated: bool,
    /// The load that made it current.
    pub load: Option<LoadReport>,
    /// Whether the load was recorded to survive a restart.
    pub durable: Option<bool>,
}

/// The answer to a rollback.
#[derive(Debug, Clone, Serialize)]
pub struct RollbackReport {
    pub name: String,
    /// The version current before the rollback.
    pub from: String,
    pub load: LoadReport,
    pub durable: bool,
}

/// Why an upgrade or a rollback changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(
        "`{0}` is a resolver plugin: upgrades are verified against the entities an entity \
         plugin serves. Load a resolver under a new name and change the entities' resolver \
         (docs/replication.md); nothing was changed"
    )]
    NotAnEntityPlugin(String),
    #[error("reading the journal failed: {0}; nothing was changed")]
    Journal(#[from] JournalError),
    /// The replay found a divergence or a failure and the upgrade was not forced.
    #[error("{}", refusal_message(.0))]
    Refused(Box<UpgradeReport>),
    #[error(transparent)]
    Superseded(#[from] Superseded),
    #[error(
        "`{0}` has no previous version to roll back to: its deployment history holds no other \
         build loaded over the API; nothing was changed"
    )]
    NoPreviousVersion(String),
    #[error("the build to roll back to cannot be read from {}: {error}", path.display())]
    MissingBytes { path: PathBuf, error: String },
}

fn refusal_message(report: &UpgradeReport) -> String {
    if let Some(divergence) = &report.divergence {
        return format!(
            "{} folds differently from {}: the state of `{}` differs after seq_nr {} \
             (current {}, new {}); nothing was changed",
            report.to,
            report.from,
            divergence.stream,
            divergence.seq_nr,
            divergence.current_state,
            divergence.new_state
        );
    }
    match &report.replay_failure {
        Some(failure) => format!(
            "the {} build failed replaying `{}` at seq_nr {}: {}; nothing was changed \
             (force=true activates it anyway)",
            match failure.build {
                Build::Current => "current",
                Build::New => "new",
            },
            failure.stream,
            failure.seq_nr,
            failure.message
        ),
        None => "the upgrade was refused; nothing was changed".to_owned(),
    }
}

/// Checks `bytes` as the next build of `name` against the journal and, if it passes (or
/// `force`), makes it current and deploys it (recorded, and spread to the cluster). Blocking: run
/// it off the async workers.
pub fn upgrade(
    entities: &EntitySystem,
    plugins: &PluginRegistry,
    deployer: &Deployer,
    name: &str,
    bytes: &[u8],
    options: UpgradeOptions,
) -> Result<UpgradeReport, UpgradeError> {
    let current = plugins.get(name)?;
    if current.world() != World::Entity {
        return Err(UpgradeError::NotAnEntityPlugin(name.to_owned()));
    }
    let build = plugins.check(name, bytes, Some(World::Entity))?;
    let types: BTreeMap<String, EntityTypeConfig> = entities
        .types()
        .into_iter()
        .filter(|entity_type| entity_type.config.plugin == name)
        .map(|entity_type| (entity_type.name, entity_type.config))
        .collect();
    let handle = tokio::runtime::Handle::current();
    let all_ids = handle.block_on(entities.journal().persistence_ids())?;
    let streams = plan(&types, &all_ids, &entities.settings().replica);
    let streams_total = streams.len();
    let streams = sample(streams, options.sample);
    let started = Instant::now();
    let outcome = replay(
        entities.journal(),
        &handle,
        &current,
        build.version(),
        &streams,
    );
    let mut report = UpgradeReport {
        name: name.to_owned(),
        from: current.id().to_owned(),
        to: build.version().id().to_owned(),
        entity_types: types.into_keys().collect(),
        streams_total,
        entities_checked: outcome.streams_checked,
        events_replayed: outcome.events,
        replay_ms: started.elapsed().as_secs_f64() * 1e3,
        verdict: Verdict::Compatible,
        forced: false,
        divergence: None,
        replay_failure: None,
        activated: false,
        load: None,
        durable: None,
    };
    match outcome.finding {
        Some(Finding::Diverged(divergence)) => {
            report.verdict = Verdict::Diverged;
            report.divergence = Some(divergence);
        }
        Some(Finding::Failed(failure)) => {
            report.verdict = Verdict::ReplayFailed;
            report.replay_failure = Some(failure);
        }
        None => {}
    }
    if report.verdict != Verdict::Compatible {
        if !options.force {
            return Err(UpgradeError::Refused(Box::new(report)));
        }
        report.forced = true;
    }
    let load = plugins.install(build, Some(current.content_hash()))?;
    report.durable = Some(deployer.deploy_installed(&load, bytes));
    report.load = Some(load);
    report.activated = true;
    Ok(report)
}

/// Makes the previous build of `name` in its deployment history current again, and deploys that
/// (recorded, and spread to the cluster). Blocking.
pub fn rollback(
    entities: &EntitySystem,
    plugins: &PluginRegistry,
    deployments: &Deployments,
    deployer: &Deployer,
    name: &str,
) -> Result<RollbackReport, UpgradeError> {
    let current = plugins.get(name)?;
    let (previous, path) = deployments
        .previous_version(name)
        .ok_or_else(|| UpgradeError::NoPreviousVersion(name.to_owned()))?;
    let bytes = std::fs::read(&path).map_err(|error| UpgradeError::MissingBytes {
        path: path.clone(),
        error: error.to_string(),
    })?;
    let needed = entities
        .check_new_build(name, true)
        .map_err(|reason| PluginError::Invalid {
            plugin: previous.version.clone(),
            reason,
        })?;
    let build = plugins.check(name, &bytes, needed)?;
    let load = plugins.install(build, Some(current.content_hash()))?;
    let durable = deployer.deploy_installed(&load, &bytes);
    Ok(RollbackReport {
        name: name.to_owned(),
        from: current.id().to_owned(),
        load,
        durable,
    })
}

/// One journal stream to replay, with the context its events are applied in.
#[derive(Debug, Clone)]
struct Stream {
    id: String,
    context: Context,
}

/// The streams of `types` among the journal's persistence ids, in the journal's order: an
/// entity's one stream, or a replicated entity's stream of each replica.
fn plan(
    types: &BTreeMap<String, EntityTypeConfig>,
    persistence_ids: &[String],
    local_replica: &str,
) -> Vec<Stream> {
    persistence_ids
        .iter()
        .filter_map(|id| {
            let (entity_type, rest) = id.split_once('|')?;
            let config = types.get(entity_type)?;
            let (entity_id, replica, all_replicas) =
                match (&config.replication, rest.split_once('|')) {
                    (None, None) => (rest, local_replica, vec![local_replica.to_owned()]),
                    (Some(replication), Some((entity_id, replica)))
                        if replication.hosts(replica) =>
                    {
                        (entity_id, replica, replication.replicas.clone())
                    }
                    _ => return None,
                };
            let role = if config.single_writer {
                Role::Observer
            } else {
                Role::Writer
            };
            Some(Stream {
                id: id.clone(),
                context: Context {
                    entity_type: entity_type.to_owned(),
                    entity_id: entity_id.to_owned(),
                    replica: replica.to_owned(),
                    all_replicas,
                    now: 0,
                    recovery_running: true,
                    role,
                },
            })
        })
        .collect()
}

/// The first `size` streams ordered by the SHA-256 of their ids: the same sample every time for
/// the same journal, spread over the types and ids. `None` keeps them all.
fn sample(mut streams: Vec<Stream>, size: Option<usize>) -> Vec<Stream> {
    if let Some(size) = size.filter(|size| *size < streams.len()) {
        streams.sort_by_cached_key(|stream| Sha256::digest(stream.id.as_bytes()));
        streams.truncate(size);
    }
    streams
}

/// What a replay found first.
enum Finding {
    Diverged(Divergence),
    Failed(ReplayFailure),
}

struct ReplayOutcome {
    streams_checked: usize,
    events: u64,
    /// The finding of the first stream (in plan order) that has one.
    finding: Option<Finding>,
}

/// Replays `streams` through both builds on as many threads as the node has cores (each build
/// holding one instance per thread, counted outside the plugin's own busy share so the calls it
/// serves meanwhile are not slowed by a lack of instances). Streams after one with a finding are
/// skipped.
fn replay(
    journal: &Arc<dyn Journal>,
    handle: &tokio::runtime::Handle,
    current: &PluginVersion,
    new: &PluginVersion,
    streams: &[Stream],
) -> ReplayOutcome {
    let workers = std::thread::available_parallelism()
        .map_or(1, |cores| cores.get())
        .min(streams.len())
        .max(1);
    let next = AtomicUsize::new(0);
    let events = AtomicU64::new(0);
    // The index of the first stream with a finding, and the finding.
    let first: Mutex<Option<(usize, Finding)>> = Mutex::new(None);
    let current_share = format!("{} (upgrade replay, current)", current.name());
    let new_share = format!("{} (upgrade replay, new)", new.name());
    let first_index = || {
        first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(usize::MAX, |(index, _)| *index)
    };
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| {
                let mut sessions = Sessions {
                    current: current.session_in(&current_share),
                    new: new.session_in(&new_share),
                };
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= streams.len() || index > first_index() {
                        return;
                    }
                    let stream = &streams[index];
                    let (folded, finding) = sessions.replay_stream(journal, handle, stream);
                    events.fetch_add(folded, Ordering::Relaxed);
                    if let Some(finding) = finding {
                        let mut first = first.lock().unwrap_or_else(|p| p.into_inner());
                        if first.as_ref().is_none_or(|(at, _)| index < *at) {
                            *first = Some((index, finding));
                        }
                    }
                }
            });
        }
    });
    let first = first.into_inner().unwrap_or_else(|p| p.into_inner());
    ReplayOutcome {
        streams_checked: first.as_ref().map_or(streams.len(), |(index, _)| index + 1),
        events: events.into_inner(),
        finding: first.map(|(_, finding)| finding),
    }
}

/// One instance of each build, held by a replay thread.
struct Sessions<'v> {
    current: Session<'v>,
    new: Session<'v>,
}

impl Sessions<'_> {
    /// Folds one stream through both builds from `init`, comparing the states after every
    /// event. Returns the events folded and what went wrong first, if anything.
    fn replay_stream(
        &mut self,
        journal: &Arc<dyn Journal>,
        handle: &tokio::runtime::Handle,
        stream: &Stream,
    ) -> (u64, Option<Finding>) {
        let mut ctx = stream.context.clone();
        let failed = |seq_nr: u64, build: Build, error: PluginError| {
            Finding::Failed(ReplayFailure {
                stream: stream.id.clone(),
                entity_type: entity_of(stream).0,
                entity_id: entity_of(stream).1,
                seq_nr,
                build,
                code: error.code(),
                message: error.to_string(),
            })
        };
        let mut current_state = match self.current.init(&ctx) {
            Ok(state) => state,
            Err(error) => return (0, Some(failed(0, Build::Current, error))),
        };
        // The initial states are not compared: only what an entity holds after its events is.
        let mut new_state = match self.new.init(&ctx) {
            Ok(state) => state,
            Err(error) => return (0, Some(failed(0, Build::New, error))),
        };
        let mut folded = 0;
        let mut from = 1;
        loop {
            let page = match handle.block_on(journal.read(&stream.id, from, REPLAY_PAGE)) {
                Ok(page) => page,
                Err(error) => {
                    let error = PluginError::Host(format!("reading the journal failed: {error}"));
                    return (folded, Some(failed(from, Build::Current, error)));
                }
            };
            for event in &page {
                ctx.now = event.timestamp;
                let envelope = Envelope::from(event);
                current_state = match self.current.apply_event(&ctx, &current_state, &envelope) {
                    Ok(state) => state,
                    Err(error) => {
                        return (folded, Some(failed(event.seq_nr, Build::Current, error)));
                    }
                };
                new_state = match self.new.apply_event(&ctx, &new_state, &envelope) {
                    Ok(state) => state,
                    Err(error) => return (folded, Some(failed(event.seq_nr, Build::New, error))),
                };
                folded += 1;
                if !same_state(&current_state, &new_state) {
                    return (
                        folded,
                        Some(diverged(stream, event, &current_state, &new_state)),
                    );
                }
            }
            match page.last() {
                Some(last) if page.len() == REPLAY_PAGE => from = last.seq_nr + 1,
                _ => return (folded, None),
            }
        }
    }
}

/// The entity type and id a stream belongs to.
fn entity_of(stream: &Stream) -> (String, String) {
    (
        stream.context.entity_type.clone(),
        stream.context.entity_id.clone(),
    )
}

fn diverged(
    stream: &Stream,
    event: &EventEnvelope,
    current_state: &[u8],
    new_state: &[u8],
) -> Finding {
    let (entity_type, entity_id) = entity_of(stream);
    Finding::Diverged(Divergence {
        stream: stream.id.clone(),
        entity_type,
        entity_id,
        seq_nr: event.seq_nr,
        event: shown(&event.payload),
        current_state: shown(current_state),
        new_state: shown(new_state),
    })
}

/// Whether two states are the same: the same bytes, or the same MessagePack value (two builds
/// may encode one value differently, e.g. a map's keys in another order).
fn same_state(a: &[u8], b: &[u8]) -> bool {
    a == b || matches!((decoded(a), decoded(b)), (Some(a), Some(b)) if a == b)
}

fn decoded(bytes: &[u8]) -> Option<Value> {
    let json = crate::msgpack::to_json(bytes).ok()?;
    serde_json::from_str(&json).ok()
}

/// A state or event as JSON, or its bytes in hex when it is not MessagePack.
fn shown(bytes: &[u8]) -> Value {
    decoded(bytes).unwrap_or_else(|| serde_json::json!({ "msgpack_hex": hex::encode(bytes) }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::ReplicationConfig;

    fn types() -> BTreeMap<String, EntityTypeConfig> {
        let replicated = EntityTypeConfig {
            replication: Some(ReplicationConfig {
                replicas: vec!["a".into(), "b".into()],
                ..ReplicationConfig::default()
            }),
            ..EntityTypeConfig::for_plugin("counter")
        };
        BTreeMap::from([
            (
                "counter".to_owned(),
                EntityTypeConfig::for_plugin("counter"),
            ),
            ("shared".to_owned(), replicated),
        ])
    }

    #[test]
    fn the_plan_takes_the_bound_types_streams_and_each_replica_stream() {
        let ids: Vec<String> = [
            "counter|c1",
            "counter|c1|a",
            "other|x",
            "shared|s1",
            "shared|s1|a",
            "shared|s1|b",
            "shared|s1|z",
        ]
        .map(str::to_owned)
        .into();
        let plan = plan(&types(), &ids, "local");
        let planned: Vec<(&str, &str, &str)> = plan
            .iter()
            .map(|s| {
                (
                    s.id.as_str(),
                    s.context.entity_id.as_str(),
                    s.context.replica.as_str(),
                )
            })
            .collect();
        assert_eq!(
            planned,
            [
                ("counter|c1", "c1", "local"),
                ("shared|s1|a", "s1", "a"),
                ("shared|s1|b", "s1", "b")
            ]
        );
        assert_eq!(plan[1].context.all_replicas, ["a", "b"]);
    }

    #[test]
    fn a_sample_is_the_same_every_time_and_no_larger_than_asked() {
        let ids: Vec<String> = (0..50).map(|n| format!("counter|c{n}")).collect();
        let streams = plan(&types(), &ids, "local");
        let ids_of = |streams: Vec<Stream>| -> Vec<String> {
            streams.into_iter().map(|stream| stream.id).collect()
        };
        let first = ids_of(sample(streams.clone(), Some(5)));
        let mut shuffled = streams.clone();
        shuffled.reverse();
        assert_eq!(first.len(), 5);
        assert_eq!(first, ids_of(sample(shuffled, Some(5))));
        assert_eq!(ids_of(sample(streams.clone(), Some(500))), ids);
        assert_eq!(ids_of(sample(streams, None)), ids);
    }

    #[test]
    fn states_encoded_differently_with_the_same_value_are_the_same() {
        // {"x": 1, "y": 2}, its keys in two orders.
        let a = [0x82, 0xa1, b'x', 0x01, 0xa1, b'y', 0x02];
        let b = [0x82, 0xa1, b'y', 0x02, 0xa1, b'x', 0x01];
        assert!(same_state(&a, &b));
        let c = [0x82, 0xa1, b'x', 0x01, 0xa1, b'y', 0x03];
        assert!(!same_state(&a, &c));
        assert_eq!(shown(&c), serde_json::json!({"x": 1, "y": 3}));
    }
}
