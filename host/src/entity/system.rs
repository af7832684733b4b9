//! [`EntitySystem`]: routes each command to its entity's actor, spawning the actor on the first
//! message and retiring it when it stops.
//!
//! At most one actor per persistence id runs in a host: a message that finds an actor stopping
//! (its mailbox closed) waits until that actor has finished its last write before a new one is
//! spawned, so two actors of one entity never race on the journal.
//!
//! Every actor runs on the system's task tracker. [`EntitySystem::stop`] (the node's stop) asks
//! every active entity to passivate — each answers what is queued, snapshots where due and hands
//! its lease back — waits until all have stopped, and from then on starts no entity.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::task::TaskTracker;
use ulid::Ulid;

use super::actor::{Actor, Message};
use super::budget::{ResidentBudget, ResidentUsage};
use super::error::EntityError;
use super::idempotency::CommandOptions;
use super::listing::{EntityPage, list_entities};
use super::notifications::Notifications;
use super::replicated::ReplicatedActor;
use super::tenure::{Seat, Tenure};
use super::types::{
    EntityType, EntityTypeConfig, ReplicationConfig, persistence_id, replica_stream, validate_name,
};
use crate::clock::NodeClock;
use crate::journal::{EventEnvelope, Journal};
use crate::lease::Lease;
use crate::plugin::{PluginRegistry, World};
use crate::replication::{Peers, ReplicationMessage};

/// A command's outcome.
#[derive(Debug, Clone)]
pub struct CommandReply {
    /// The plugin's reply (MessagePack).
    pub reply: Vec<u8>,
    /// The entity's sequence number after the command.
    pub seq_nr: u64,
    /// The plugin version that handled it.
    pub plugin: String,
    /// The reply of an earlier command with the same idempotency key, returned again: this
    /// command was not applied.
    pub replayed: bool,
}

/// An entity's current state.
#[derive(Debug, Clone)]
pub struct EntityState {
    pub state: Vec<u8>,
    pub seq_nr: u64,
    pub plugin: String,
    /// For a replica of a replicated entity: how it folds, and what it could not fold.
    pub replica: Option<ReplicaStatus>,
}

/// How a replica folds: shown with its state, so a reader knows which resolver decided it and
/// which events it is missing because they could not be folded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ReplicaStatus {
    /// The replica that answered.
    pub replica: String,
    /// The resolver: `last-writer-wins`, `first-writer-wins`, or a resolver plugin's id
    /// (`name@version`).
    pub resolver: String,
    /// Events of other replicas whose fold failed, set aside until the plugin or resolver
    /// changes: the state lacks them and everything causally after them.
    pub parked: Vec<ParkedEvent>,
}

/// An event a replica could not fold (its entity plugin or resolver trapped or ran past its
/// bound), with the plugin's error.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ParkedEvent {
    /// The replica's stream: `<type>|<id>|<replica>`.
    pub stream: String,
    pub origin_replica: String,
    pub origin_seq_nr: u64,
    /// The error's stable code (`plugin_trapped`, `plugin_cpu_bound_exceeded`, ...).
    pub code: String,
    pub error: String,
}

/// Host-wide settings of the entity system.
#[derive(Debug, Clone)]
pub struct SystemSettings {
    /// Stamped on every event and snapshot this host writes.
    pub writer_id: Ulid,
    /// This node's replica name, passed to plugins in their context.
    pub replica: String,
    /// Part of a cluster, which sends an entity's commands to its owner: a single-writer entity
    /// whose lease another node holds waits for it (up to the lease's time to live) instead of
    /// refusing at once — the other node is handing the entity off, or crashed and its lease has
    /// yet to expire.
    pub clustered: bool,
    /// Part of a cluster as an actor node whose journal is its own (SQLite, in memory): a placed
    /// entity's events would stay behind when its owner changes and the new owner would start it
    /// from nothing, so only replicated types (each replica keeps its own stream) are bound.
    pub per_node_journal: bool,
}

/// Counters exported as metrics.
#[derive(Debug, Default)]
pub struct EntityMetrics {
    pub commands_ok: AtomicU64,
    pub commands_failed: AtomicU64,
    pub events_persisted: AtomicU64,
    pub activations: AtomicU64,
    pub passivations: AtomicU64,
    /// Single-writer leases handed back as their entities passivated (or the node stopped).
    pub leases_released: AtomicU64,
    /// Events of other replicas folded into this node's replicas.
    pub replicated_events_folded: AtomicU64,
    /// Events of other replicas whose fold failed (the plugin or the resolver trapped or ran
    /// past its bound); they are offered again by the next pull.
    pub replicated_folds_failed: AtomicU64,
    /// Pulls of other replicas this node's replicas answered.
    pub replication_pulls_answered: AtomicU64,
    /// Events of other replicas set aside after their fold failed (each parked once).
    pub replicated_events_parked: AtomicU64,
    /// Events folded into replicas' compacted base states.
    pub replicated_events_compacted: AtomicU64,
}

struct ActorHandle {
    mailbox: mpsc::Sender<Message>,
    generation: u64,
    /// The entity's share of the resident-state budget.
    usage: Arc<ResidentUsage>,
    /// Becomes true once the actor has stopped for good.
    stopped: watch::Receiver<bool>,
}

pub(super) struct Shared {
    pub journal: Arc<dyn Journal>,
    /// Where single-writer entities take their leases.
    pub lease: Arc<dyn Lease>,
    pub notifications: Notifications,
    pub plugins: Arc<PluginRegistry>,
    pub settings: SystemSettings,
    pub clock: NodeClock,
    pub metrics: EntityMetrics,
    /// Where replicated entities send the other replicas their events; unset outside a
    /// cluster (a lone replica keeps its events to itself).
    pub peers: OnceLock<Arc<dyn Peers>>,
    /// The events this node's active replicas have parked, by replica stream.
    pub parked: Mutex<BTreeMap<String, Vec<ParkedEvent>>>,
    /// What the active entities' states hold in the plugins, against `resident_state_bytes_max`.
    pub budget: ResidentBudget,
    types: RwLock<BTreeMap<String, Arc<EntityTypeConfig>>>,
    /// The active entities; `None` once the system stopped (it starts no entity any more).
    active: Mutex<Option<HashMap<String, ActorHandle>>>,
    /// Every actor's task, and the tasks carrying passivation requests to full mailboxes.
    actors: TaskTracker,
    generations: AtomicU64,
}

impl Shared {
    /// The tenure steps of an entity of this host (single-writer types).
    pub fn seat<'a>(&'a self, entity_type: &'a str, entity_id: &'a str, pid: &'a str) -> Seat<'a> {
        Seat {
            entity_type,
            entity_id,
            persistence_id: pid,
            notifications: &self.notifications,
            clustered: self.settings.clustered,
        }
    }

    /// Records an entity's state size; over the budget, asks the least recently used entities
    /// to passivate.
    pub fn charge(&self, usage: &ResidentUsage, state_bytes: u64) {
        if !self.budget.set_state_bytes(usage, state_bytes) {
            return;
        }
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        let Some(active) = active.as_ref() else {
            return;
        };
        let victims = self.budget.victims(
            active
                .iter()
                .map(|(pid, handle)| (pid.clone(), handle.usage.as_ref())),
        );
        for pid in victims {
            tracing::debug!(entity = %pid, "passivating: resident state over its budget");
            self.ask_to_passivate(&active[&pid].mailbox);
        }
    }

    /// Gives a passivating entity's lease back, so another host need not wait for it to
    /// expire, and counts it if this host held it.
    pub async fn release_lease(&self, tenure: Tenure) {
        if tenure.release().await {
            self.metrics.leases_released.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Sends an entity the request to passivate, behind what is queued.
    fn ask_to_passivate(&self, mailbox: &mpsc::Sender<Message>) {
        match mailbox.try_send(Message::Passivate) {
            // A closed mailbox is stopping already.
            Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
            // A full one takes the request behind its backlog: the entity must not keep its
            // lease until it goes idle while its new owner waits for it.
            Err(mpsc::error::TrySendError::Full(request)) => {
                let mailbox = mailbox.clone();
                self.actors.spawn(async move {
                    // Closed meanwhile: it stopped, which is what was asked.
                    let _ = mailbox.send(request).await;
                });
            }
        }
    }
}

/// What [`EntitySystem::stop`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopReport {
    /// Entities that were active when the stop began, all stopped since.
    pub passivated: usize,
    /// Single-writer leases they handed back.
    pub leases_released: u64,
}

/// The entities of this host. Cheap to clone.
#[derive(Clone)]
pub struct EntitySystem {
    shared: Arc<Shared>,
}

/// How often a message retries when it keeps finding its actor stopping.
const SEND_ATTEMPTS_MAX: usize = 8;

impl EntitySystem {
    pub fn new(
        journal: Arc<dyn Journal>,
        lease: Arc<dyn Lease>,
        plugins: Arc<PluginRegistry>,
        settings: SystemSettings,
        clock: NodeClock,
    ) -> Self {
        let budget = ResidentBudget::new(plugins.runtime().limits().resident_state_bytes_max);
        EntitySystem {
            shared: Arc::new(Shared {
                journal,
                lease,
                notifications: Notifications::default(),
                plugins,
                settings,
                clock,
                metrics: EntityMetrics::default(),
                peers: OnceLock::new(),
                parked: Mutex::new(BTreeMap::new()),
                types: RwLock::new(BTreeMap::new()),
                budget,
                active: Mutex::new(Some(HashMap::new())),
                actors: TaskTracker::new(),
                generations: AtomicU64::new(0),
            }),
        }
    }

    /// A system of one host on its own: a fresh writer id, leases in memory, no cluster.
    pub fn single_host(journal: Arc<dyn Journal>, plugins: Arc<PluginRegistry>) -> Self {
        let settings = SystemSettings {
            writer_id: Ulid::new(),
            replica: "local".to_owned(),
            clustered: false,
            per_node_journal: false,
        };
        let lease = Arc::new(crate::lease::InMemoryLease::new());
        EntitySystem::new(journal, lease, plugins, settings, NodeClock::default())
    }

    /// Connects replicated entities to the other replicas (once, when the cluster runs).
    pub fn set_peers(&self, peers: Arc<dyn Peers>) {
        if self.shared.peers.set(peers).is_err() {
            tracing::warn!("the replication peers were set already; keeping the first");
        }
    }

    pub fn settings(&self) -> &SystemSettings {
        &self.shared.settings
    }

    pub fn metrics(&self) -> &EntityMetrics {
        &self.shared.metrics
    }

    pub fn journal(&self) -> &Arc<dyn Journal> {
        &self.shared.journal
    }

    pub fn lease(&self) -> &Arc<dyn Lease> {
        &self.shared.lease
    }

    /// Lease changes of single-writer entities on this host, as they happen.
    pub fn notifications(&self) -> &Notifications {
        &self.shared.notifications
    }

    /// Binds (or rebinds) an entity type. Active entities pick the new binding up on their
    /// next activation.
    pub fn bind_type(&self, name: &str, config: EntityTypeConfig) -> Result<(), EntityError> {
        validate_name("entity type", name).map_err(EntityError::InvalidName)?;
        config.validate(name).map_err(EntityError::InvalidName)?;
        if self.shared.settings.per_node_journal && config.replication.is_none() {
            return Err(EntityError::InvalidName(format!(
                "entity type `{name}` would be placed across the cluster, but this node's journal \
                 is its own: when the type's entities move to another node their events would \
                 stay here and they would start again from nothing. Use a journal the cluster \
                 shares ([journal] backend = \"postgres\"), or replicate the type \
                 (replication = {{ replicas = [...] }}, docs/replication.md)"
            )));
        }
        self.shared
            .plugins
            .set_type_output_limits(name, config.output_limits.clone());
        self.shared
            .types
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Arc::new(config));
        Ok(())
    }

    /// What a new build loaded as `plugin` must satisfy for what is bound to that name: the
    /// world it must implement (an entity plugin for the entity types it serves, a resolver for
    /// the replicated types naming it; `None` when nothing is bound to it), or why it is refused.
    /// A new build of the resolver that replicated types fold with, replacing a loaded one, is
    /// refused: each replica would re-decide events already folded with it whenever it folds
    /// again, at a different moment on each replica, and they would diverge. A resolver changes
    /// through a configuration event instead (`change_resolver`).
    pub fn check_new_build(
        &self,
        plugin: &str,
        replaces_a_loaded_build: bool,
    ) -> Result<Option<World>, String> {
        let types = self.shared.types.read().unwrap_or_else(|p| p.into_inner());
        if types.values().any(|config| config.plugin == plugin) {
            return Ok(Some(World::Entity));
        }
        let resolving: Vec<&str> = types
            .iter()
            .filter(|(_, config)| {
                config
                    .replication
                    .as_ref()
                    .is_some_and(|replication| replication.resolver == plugin)
            })
            .map(|(name, _)| name.as_str())
            .collect();
        match (resolving.is_empty(), replaces_a_loaded_build) {
            (true, _) => Ok(None),
            (false, false) => Ok(Some(World::Resolver)),
            (false, true) => Err(format!(
                "`{plugin}` is the resolver of the replicated entity types {}: a new build would \
                 re-decide events already folded, at a different moment on each replica, and the \
                 replicas would diverge. Load the new build under a new name and change each \
                 entity's resolver with PUT /entities/{{type}}/{{id}}/resolver: the change then \
                 takes effect at one point of the history on every replica (docs/replication.md)",
                resolving.join(", ")
            )),
        }
    }

    /// Whether the entity type is single-writer (false for unknown types).
    pub fn is_single_writer(&self, entity_type: &str) -> bool {
        self.type_config(entity_type)
            .is_ok_and(|config| config.single_writer)
    }

    /// How the entity type is replicated, if it is.
    pub fn replication(&self, entity_type: &str) -> Option<ReplicationConfig> {
        self.type_config(entity_type).ok()?.replication.clone()
    }

    /// Takes a message from the replica `from` to this node's replica of an entity, activating
    /// it if need be. A message this node cannot take (not a replica of a replicated type, a
    /// full mailbox) is dropped with a log line: pulls repair it.
    pub async fn replicate(&self, from: &str, message: ReplicationMessage) {
        let ReplicationMessage {
            entity_type,
            entity_id,
            body,
        } = message;
        if self.replication(&entity_type).is_none() {
            tracing::warn!(
                entity_type,
                from,
                "a replication message for a type not replicated here"
            );
            return;
        }
        let message = Message::Replicated {
            from: from.to_owned(),
            body,
        };
        if let Err(error) = self.send(&entity_type, &entity_id, message).await {
            tracing::debug!(
                entity_type,
                entity_id,
                from,
                "replication message dropped: {error}"
            );
        }
    }

    /// Binds `name` to the plugin of the same name with the defaults, unless it is bound.
    /// On a node whose journal is its own in a cluster (see [`SystemSettings::per_node_journal`])
    /// nothing is bound this way: the type would be placed.
    pub fn bind_type_if_unbound(&self, name: &str) {
        if self.shared.settings.per_node_journal {
            return;
        }
        let mut types = self.shared.types.write().unwrap_or_else(|p| p.into_inner());
        if validate_name("entity type", name).is_ok() && !types.contains_key(name) {
            types.insert(
                name.to_owned(),
                Arc::new(EntityTypeConfig::for_plugin(name)),
            );
        }
    }

    pub fn types(&self) -> Vec<EntityType> {
        let types = self.shared.types.read().unwrap_or_else(|p| p.into_inner());
        types
            .iter()
            .map(|(name, config)| EntityType {
                name: name.clone(),
                config: (**config).clone(),
            })
            .collect()
    }

    pub fn active_entities(&self) -> usize {
        self.shared
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map_or(0, HashMap::len)
    }

    /// The events this node's active replicas could not fold and set aside, with the errors.
    pub fn parked(&self) -> Vec<ParkedEvent> {
        let parked = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
        parked.values().flatten().cloned().collect()
    }

    /// The active entities of this host, as `(entity type, entity id)`.
    pub fn active(&self) -> Vec<(String, String)> {
        let active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
        active
            .iter()
            .flat_map(HashMap::keys)
            .filter_map(|pid| pid.split_once('|'))
            .map(|(entity_type, entity_id)| (entity_type.to_owned(), entity_id.to_owned()))
            .collect()
    }

    /// Asks an active entity to passivate: it handles what is queued, releases its lease (if
    /// single-writer) and stops. Messages sent after it start a new activation. Does nothing if
    /// the entity is not active here.
    pub fn passivate(&self, entity_type: &str, entity_id: &str) {
        let pid = persistence_id(entity_type, entity_id);
        let active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(handle) = active.as_ref().and_then(|active| active.get(&pid)) {
            self.shared.ask_to_passivate(&handle.mailbox);
        }
    }

    /// Stops the system for good: starts no entity from now on (a message for one that is not
    /// active is refused with [`EntityError::NodeStopping`]), asks every active entity to
    /// passivate — it answers what is queued, snapshots where due, hands its lease back — and
    /// waits until every actor has stopped.
    pub async fn stop(&self) -> StopReport {
        let released_before = self.shared.metrics.leases_released.load(Ordering::Relaxed);
        let active = self
            .shared
            .active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_default();
        for handle in active.values() {
            self.shared.ask_to_passivate(&handle.mailbox);
        }
        let passivated = active.len();
        // The handles go: a message that finds its actor stopping waits on its own receiver.
        drop(active);
        self.shared.actors.close();
        self.shared.actors.wait().await;
        StopReport {
            passivated,
            leases_released: self.shared.metrics.leases_released.load(Ordering::Relaxed)
                - released_before,
        }
    }

    /// The resident-state budget: its maximum, what the active entities hold, and how many
    /// were passivated to keep within it.
    pub fn budget(&self) -> &ResidentBudget {
        &self.shared.budget
    }

    /// Sends a command (MessagePack) to an entity and waits for its outcome.
    pub async fn ask(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
    ) -> Result<CommandReply, EntityError> {
        self.ask_with(entity_type, entity_id, command, CommandOptions::default())
            .await
    }

    /// Sends a command with a deadline and an idempotency key (see [`CommandOptions`]) and
    /// waits for its outcome.
    pub async fn ask_with(
        &self,
        entity_type: &str,
        entity_id: &str,
        command: Vec<u8>,
        options: CommandOptions,
    ) -> Result<CommandReply, EntityError> {
        if options.idempotency_key.is_some() && self.replication(entity_type).is_some() {
            return Err(EntityError::IdempotencyUnsupported(entity_type.to_owned()));
        }
        let outcome = self
            .request(entity_type, entity_id, |reply| Message::Command {
                command: command.clone(),
                options: options.clone(),
                reply,
                span: tracing::Span::current(),
            })
            .await;
        let counter = match outcome {
            Ok(_) => &self.shared.metrics.commands_ok,
            Err(_) => &self.shared.metrics.commands_failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        outcome
    }

    /// Changes the resolver a replicated entity folds with, from this point of its history on:
    /// this node's replica records the change (naming the build loaded here) as an event of its
    /// own stream, and every replica switches at that event's position in the total order.
    pub async fn change_resolver(
        &self,
        entity_type: &str,
        entity_id: &str,
        resolver: &str,
    ) -> Result<CommandReply, EntityError> {
        if self.replication(entity_type).is_none() {
            return Err(EntityError::NotReplicated(persistence_id(
                entity_type,
                entity_id,
            )));
        }
        self.request(entity_type, entity_id, |reply| Message::Configure {
            resolver: resolver.to_owned(),
            reply,
        })
        .await
    }

    /// The entity's current state (recovering it if it is not active).
    pub async fn state(
        &self,
        entity_type: &str,
        entity_id: &str,
    ) -> Result<EntityState, EntityError> {
        self.request(entity_type, entity_id, |reply| Message::GetState { reply })
            .await
    }

    /// Sends the message `make` builds and waits for its answer. A message the actor never
    /// handled — it was queued behind a write that found the stream moved, and the actor stopped
    /// to recover afresh — is sent again, to the next actor.
    async fn request<R>(
        &self,
        entity_type: &str,
        entity_id: &str,
        make: impl Fn(oneshot::Sender<Result<R, EntityError>>) -> Message,
    ) -> Result<R, EntityError> {
        for _ in 0..SEND_ATTEMPTS_MAX {
            let (reply, answer) = oneshot::channel();
            self.send(entity_type, entity_id, make(reply)).await?;
            match answer.await {
                // Dropped unanswered, or drained as the actor stopped: not handled.
                Err(_) | Ok(Err(EntityError::Stopped(_))) => continue,
                Ok(outcome) => return outcome,
            }
        }
        Err(EntityError::Stopped(persistence_id(entity_type, entity_id)))
    }

    /// Events of an entity from `from_seq_nr`, read from the journal: of its one stream, or of
    /// the stream of `replica` for a replicated entity.
    pub async fn events(
        &self,
        entity_type: &str,
        entity_id: &str,
        replica: Option<&str>,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, EntityError> {
        let config = self.type_config(entity_type)?;
        validate_name("entity id", entity_id).map_err(EntityError::InvalidName)?;
        let pid = persistence_id(entity_type, entity_id);
        let stream = match (&config.replication, replica) {
            (None, None) => pid,
            (Some(replication), Some(replica)) if replication.hosts(replica) => {
                replica_stream(&pid, replica)
            }
            (Some(replication), _) => {
                return Err(EntityError::InvalidName(format!(
                    "entity type `{entity_type}` is replicated: name the replica whose events to read, one of {}",
                    replication.replicas.join(", ")
                )));
            }
            (None, Some(_)) => {
                return Err(EntityError::InvalidName(format!(
                    "entity type `{entity_type}` is not replicated: it has no replica streams"
                )));
            }
        };
        Ok(self.shared.journal.read(&stream, from_seq_nr, max).await?)
    }

    /// Up to `limit` entities of `entity_type` after the entity `after`, from the journal: those
    /// with events or a snapshot, active or not (`listing.rs` says in which order).
    pub async fn list_entities(
        &self,
        entity_type: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<EntityPage, EntityError> {
        let config = self.type_config(entity_type)?;
        if let Some(after) = after {
            validate_name("entity id", after).map_err(EntityError::InvalidName)?;
        }
        let replicated = config.replication.is_some();
        Ok(list_entities(
            self.shared.journal.as_ref(),
            entity_type,
            replicated,
            after,
            limit,
        )
        .await?)
    }

    fn type_config(&self, entity_type: &str) -> Result<Arc<EntityTypeConfig>, EntityError> {
        self.shared
            .types
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(entity_type)
            .cloned()
            .ok_or_else(|| EntityError::UnknownEntityType(entity_type.to_owned()))
    }

    async fn send(
        &self,
        entity_type: &str,
        entity_id: &str,
        mut message: Message,
    ) -> Result<(), EntityError> {
        let config = self.type_config(entity_type)?;
        validate_name("entity id", entity_id).map_err(EntityError::InvalidName)?;
        if let Some(replication) = &config.replication
            && !replication.hosts(&self.shared.settings.replica)
        {
            return Err(EntityError::NotAReplica {
                entity_type: entity_type.to_owned(),
                replica: self.shared.settings.replica.clone(),
                replicas: replication.replicas.clone(),
            });
        }
        let pid = persistence_id(entity_type, entity_id);
        for _ in 0..SEND_ATTEMPTS_MAX {
            let Some((mailbox, mut stopped)) =
                self.actor_for(&pid, entity_type, entity_id, &config)
            else {
                return Err(EntityError::NodeStopping(pid));
            };
            match mailbox.try_send(message) {
                Ok(()) => return Ok(()),
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(EntityError::Overloaded {
                        persistence_id: pid,
                        capacity: config.mailbox_capacity,
                    });
                }
                Err(mpsc::error::TrySendError::Closed(returned)) => {
                    // The actor is stopping: wait until its last write is done, then respawn.
                    message = returned;
                    // An error here means the actor is gone already, which is what we wait for.
                    let _ = stopped.wait_for(|stopped| *stopped).await;
                }
            }
        }
        Err(EntityError::Stopped(pid))
    }

    /// The mailbox of the entity's actor, spawning the actor if there is none; `None` once the
    /// system stopped.
    fn actor_for(
        &self,
        pid: &str,
        entity_type: &str,
        entity_id: &str,
        config: &Arc<EntityTypeConfig>,
    ) -> Option<(mpsc::Sender<Message>, watch::Receiver<bool>)> {
        let mut active = self.shared.active.lock().unwrap_or_else(|p| p.into_inner());
        let active = active.as_mut()?;
        if let Some(handle) = active.get(pid)
            && !*handle.stopped.borrow()
        {
            return Some((handle.mailbox.clone(), handle.stopped.clone()));
        }
        let (mailbox, inbox) = mpsc::channel(config.mailbox_capacity);
        let (stopped_tx, stopped) = watch::channel(false);
        let generation = self.shared.generations.fetch_add(1, Ordering::Relaxed);
        let usage = Arc::new(ResidentUsage::default());
        active.insert(
            pid.to_owned(),
            ActorHandle {
                mailbox: mailbox.clone(),
                generation,
                usage: usage.clone(),
                stopped: stopped.clone(),
            },
        );
        self.shared
            .metrics
            .activations
            .fetch_add(1, Ordering::Relaxed);
        let (shared, entity_type, entity_id) = (
            self.shared.clone(),
            entity_type.to_owned(),
            entity_id.to_owned(),
        );
        let config = config.clone();
        let pid = pid.to_owned();
        self.shared.actors.spawn(async move {
            match config.replication.clone() {
                Some(replication) => {
                    ReplicatedActor::new(
                        shared.clone(),
                        entity_type,
                        entity_id,
                        config,
                        replication,
                    )
                    .run(inbox)
                    .await
                }
                None => {
                    Actor::new(
                        shared.clone(),
                        entity_type,
                        entity_id,
                        config,
                        usage.clone(),
                    )
                    .run(inbox)
                    .await
                }
            }
            let mut active = shared.active.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(active) = active.as_mut()
                && active.get(&pid).is_some_and(|h| h.generation == generation)
            {
                active.remove(&pid);
            }
            drop(active);
            shared.budget.release(&usage);
            shared.metrics.passivations.fetch_add(1, Ordering::Relaxed);
            // Nobody may be waiting; that is fine.
            let _ = stopped_tx.send(true);
        });
        Some((mailbox, stopped))
    }
}
