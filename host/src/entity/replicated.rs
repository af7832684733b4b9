//! The task of one replica of a replicated entity: the driver of a [`Replica`].
//!
//! Each replica persists the events its own commands decide on to its own journal stream
//! (`<type>|<id>|<replica>`), then pushes them to the other replicas; it folds theirs as they
//! arrive, in any order, into the same state as every other replica (see `crate::replication`).
//! A replica also pulls: on activation and every `pull_interval_ms` it tells the others what it
//! has seen, and each answers with what it lacks — its own events from its journal stream,
//! others' from memory. That repairs lost pushes, partitions and restarts.
//!
//! Activation restores the replica's snapshot (its state, the events that may still be re-folded,
//! what it had seen), then folds every replica's stream from the journal after what the snapshot
//! had seen: with a shared journal that is everything persisted anywhere; with a journal per node
//! it is this replica's own stream, and pulls bring the rest. Events every replica has folded are
//! compacted into the base state.
//!
//! With `single_writer`, the replicas share one lease (`entity:<type>|<id>`), contended for by
//! each replica from its first command on: only the holder's replica handles commands and
//! persists, recording its fencing token on every replica's stream first, so a paused former
//! holder can never append again; the others observe (they fold the holder's pushes) and refuse
//! commands naming it — in a cluster the router forwards such a command to the holder. An
//! observer that gains the lease catches up with every stream before it writes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::actor::{Message, fencing_token, next_change, refuse_queued, run_guest, take_batch};
use super::error::EntityError;
use super::pending::{Pending, answer_after_append};
use super::system::{CommandReply, EntityState, ParkedEvent, ReplicaStatus, Shared};
use super::tenure::{Seat, Tenure, TenureChange};
use super::types::{
    EntityTypeConfig, FIRST_WRITER_WINS, LAST_WRITER_WINS, ReplicationConfig, persistence_id,
    replica_stream,
};
use crate::journal::{EventEnvelope, JournalError, SnapshotEnvelope};
use crate::observability::metrics::observe_journal_append;
use crate::plugin::{Context, LeaseLost, PluginError, PluginVersion, Role, World};
use crate::replication::{
    CONFIG_EVENT, EVENTS_PER_MESSAGE_MAX, FoldConfig, PluginFold, Replica, ReplicaSnapshot,
    ReplicationBody, ReplicationMessage, Resolver, Stamp, order_key,
};

/// Events read per journal query while catching up.
const CATCH_UP_PAGE: usize = 1_000;

/// How long a state read waits for a catching-up replica before it is refused as catching up.
const READ_CATCH_UP_WAIT: Duration = Duration::from_secs(1);

pub(super) struct ReplicatedActor {
    shared: Arc<Shared>,
    entity_type: String,
    entity_id: String,
    pid: String,
    config: Arc<EntityTypeConfig>,
    replication: ReplicationConfig,
    /// This node's replica name.
    name: String,
    /// The stream this replica persists its own events to.
    stream: String,
}

/// A replica while its actor runs.
struct Live {
    replica: Replica,
    plugin: Arc<PluginVersion>,
    resolver: Resolver,
    /// The own stream's highest sequence number.
    persisted: u64,
    /// The own sequence number of the last snapshot written or read.
    snapshot_at: u64,
    /// Per other replica, what it last said it had seen (in its pulls): what may be compacted.
    peers_seen: BTreeMap<String, BTreeMap<String, u64>>,
    /// The other replicas that have sent no events message (a push, or an answer to a pull)
    /// since activation: until they have, a state read is refused as catching up.
    unheard: BTreeSet<String>,
    /// State reads waiting (until their deadline) for the replica to catch up.
    reads: Vec<(StateReply, Instant)>,
    /// Events whose fold failed, by (origin, origin seq nr): not folded again until the entity
    /// plugin changes or the replica is activated again.
    parked: Parked,
    /// The plugin builds loaded when the parked events were last offered: once they change, the
    /// parked events are offered again (the missing build may have been loaded).
    parked_with: Vec<String>,
    tenure: Option<Tenure>,
}

type StateReply = oneshot::Sender<Result<EntityState, EntityError>>;

type Parked = BTreeMap<(String, u64), ParkedEvent>;

impl ReplicatedActor {
    pub fn new(
        shared: Arc<Shared>,
        entity_type: String,
        entity_id: String,
        config: Arc<EntityTypeConfig>,
        replication: ReplicationConfig,
    ) -> Self {
        let pid = persistence_id(&entity_type, &entity_id);
        let name = shared.settings.replica.clone();
        let stream = replica_stream(&pid, &name);
        ReplicatedActor {
            shared,
            entity_type,
            entity_id,
            pid,
            config,
            replication,
            name,
            stream,
        }
    }

    pub async fn run(self, inbox: mpsc::Receiver<Message>) {
        let mut live = match self.activate().await {
            Ok(live) => live,
            Err(error) => {
                tracing::error!(entity = %self.pid, replica = %self.name, "recovery failed: {error}");
                refuse_queued(inbox, error).await;
                return;
            }
        };
        self.pull_from_all(&live);
        self.serve(&mut live, inbox).await;
        let refusal = self.catching_up(&live);
        for (reply, _) in live.reads.drain(..) {
            let _ = reply.send(Err(refusal.clone()));
        }
        // Parked events are offered again to the next activation.
        self.publish_parked(&Parked::new());
        if let Some(tenure) = live.tenure.take() {
            self.shared.release_lease(tenure).await;
        }
    }

    /// Restores the snapshot and folds every replica's stream after it.
    async fn activate(&self) -> Result<Live, EntityError> {
        let plugin = self.shared.plugins.get(&self.config.plugin)?;
        let resolver = self.resolver()?;
        let recovering = self.fold_with(&plugin, &resolver, true, Role::Observer);
        let writer = self.shared.settings.writer_id;
        let (mut replica, snapshot_at) =
            match self.shared.journal.latest_snapshot(&self.stream).await? {
                Some(snapshot) => {
                    let saved: ReplicaSnapshot =
                        rmp_serde::from_slice(&snapshot.payload).map_err(|error| {
                            EntityError::Journal(format!(
                                "the snapshot of {} at seq nr {} does not decode: {error}",
                                self.stream, snapshot.seq_nr
                            ))
                        })?;
                    let replica = run_guest(|| {
                        Replica::restore(&self.name, &self.stream, writer, saved, &recovering)
                    })?;
                    (replica, snapshot.seq_nr)
                }
                None => {
                    let ctx = self.context(self.shared.clock.now(), true, Role::Observer);
                    let initial = run_guest(|| plugin.init(&ctx))?;
                    (Replica::new(&self.name, &self.stream, writer, initial), 0)
                }
            };
        let mut parked = Parked::new();
        self.catch_up(&mut replica, &mut parked, &recovering)
            .await?;
        let persisted = self.shared.journal.highest_seq_nr(&self.stream).await?;
        tracing::debug!(entity = %self.pid, replica = %self.name, seen = ?replica.seen(), "replica recovered");
        Ok(Live {
            replica,
            plugin,
            resolver,
            persisted,
            snapshot_at,
            peers_seen: BTreeMap::new(),
            unheard: if self.shared.peers.get().is_some() {
                self.others().cloned().collect()
            } else {
                // Outside a cluster there is nobody to hear from.
                BTreeSet::new()
            },
            reads: Vec::new(),
            parked_with: self.loaded_builds(),
            parked,
            tenure: None,
        })
    }

    /// Folds what every replica's journal stream holds beyond what `replica` has seen, in the
    /// total order (so nothing waits for its causal past that the journal holds).
    async fn catch_up(
        &self,
        replica: &mut Replica,
        parked: &mut Parked,
        fold: &PluginFold,
    ) -> Result<(), EntityError> {
        let mut events = Vec::new();
        for origin in &self.replication.replicas {
            let stream = replica_stream(&self.pid, origin);
            let mut from = replica.seen().get(origin).copied().unwrap_or(0) + 1;
            loop {
                let page = self
                    .shared
                    .journal
                    .read(&stream, from, CATCH_UP_PAGE)
                    .await?;
                let full = page.len() == CATCH_UP_PAGE;
                if let Some(last) = page.last() {
                    from = last.seq_nr + 1;
                }
                events.extend(page);
                if !full {
                    break;
                }
            }
        }
        events.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        self.fold_received(replica, parked, fold, events);
        Ok(())
    }

    /// Folds events received (pushed, pulled or read from the journal). An event whose fold
    /// fails is parked with the error: it is not folded again (the next pulls offer it again and
    /// again, and a looping resolver would spend its CPU bound on every offer) until the entity
    /// plugin changes or the replica is activated again. The events causally after it wait.
    fn fold_received(
        &self,
        replica: &mut Replica,
        parked: &mut Parked,
        fold: &PluginFold,
        events: Vec<EventEnvelope>,
    ) {
        let metrics = &self.shared.metrics;
        let before = parked.len();
        run_guest(|| {
            for event in events {
                let key = (event.origin_replica.clone(), event.origin_seq_nr);
                if parked.contains_key(&key) {
                    continue;
                }
                match replica.receive(fold, event) {
                    Ok(folded) => {
                        metrics
                            .replicated_events_folded
                            .fetch_add(folded as u64, Ordering::Relaxed);
                    }
                    Err(error) => {
                        metrics
                            .replicated_folds_failed
                            .fetch_add(1, Ordering::Relaxed);
                        metrics
                            .replicated_events_parked
                            .fetch_add(1, Ordering::Relaxed);
                        tracing::error!(
                            entity = %self.pid, replica = %self.name, origin = %key.0, origin_seq_nr = key.1,
                            "a replicated event did not fold and is parked: {error}"
                        );
                        parked.insert(key.clone(), self.parked_event(key, &error));
                    }
                }
            }
        });
        if parked.len() != before {
            self.publish_parked(parked);
        }
    }

    /// The ids of the plugin builds loaded on this node.
    fn loaded_builds(&self) -> Vec<String> {
        let mut builds: Vec<String> = self
            .shared
            .plugins
            .list()
            .into_iter()
            .map(|plugin| plugin.version)
            .collect();
        builds.sort();
        builds
    }

    /// Offers the parked events again (the next pull brings them) once the loaded plugin builds
    /// changed since they were last offered: the build a configuration event names, or a fixed
    /// resolver, may be there now. (A load between activation and the first park costs one
    /// needless retry.)
    fn retry_parked_after_a_load(&self, live: &mut Live) {
        if live.parked.is_empty() {
            return;
        }
        let builds = self.loaded_builds();
        if builds != live.parked_with {
            tracing::info!(entity = %self.pid, replica = %self.name, parked = live.parked.len(), "plugins changed: offering parked events again");
            live.parked.clear();
            live.parked_with = builds;
            self.publish_parked(&live.parked);
        }
    }

    fn parked_event(
        &self,
        (origin_replica, origin_seq_nr): (String, u64),
        error: &PluginError,
    ) -> ParkedEvent {
        ParkedEvent {
            stream: self.stream.clone(),
            origin_replica,
            origin_seq_nr,
            code: error.code().to_owned(),
            error: error.to_string(),
        }
    }

    /// Shows this replica's parked events on the node (`/health`).
    fn publish_parked(&self, parked: &Parked) {
        let mut shown = self.shared.parked.lock().unwrap_or_else(|p| p.into_inner());
        if parked.is_empty() {
            shown.remove(&self.stream);
        } else {
            shown.insert(self.stream.clone(), parked.values().cloned().collect());
        }
    }

    /// Turns until the mailbox closes (passivation, or a failed write).
    async fn serve(&self, live: &mut Live, mut inbox: mpsc::Receiver<Message>) {
        let mut passivating = false;
        let idle = self.config.passivate_after();
        let mut last_call = Instant::now();
        // The first round went out on activation.
        let period = self.replication.pull_interval();
        let mut pull = tokio::time::interval_at(Instant::now() + period, period);
        pull.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let read_deadline = live.reads.iter().map(|(_, deadline)| *deadline).min();
            let first = tokio::select! {
                message = inbox.recv() => message,
                () = tokio::time::sleep_until(read_deadline.unwrap_or(last_call)), if read_deadline.is_some() => {
                    self.answer_reads(live);
                    continue;
                }
                () = tokio::time::sleep_until(last_call + idle), if !passivating => {
                    tracing::debug!(entity = %self.pid, "passivating after {idle:?} idle");
                    inbox.close();
                    passivating = true;
                    continue;
                }
                _ = pull.tick() => {
                    self.retry_parked_after_a_load(live);
                    self.pull_from_all(live);
                    self.compact(live);
                    continue;
                }
                change = next_change(&mut live.tenure) => {
                    if let Err(error) = self.on_tenure_change(live, change).await {
                        tracing::error!(entity = %self.pid, "lease change not handled: {error}");
                    }
                    continue;
                }
            };
            let Some(first) = first else { return };
            let batch = take_batch(first, &mut inbox, &self.config, &mut passivating, &self.pid);
            if batch.iter().any(Message::is_call) {
                last_call = Instant::now();
            }
            let turned = self.turn(live, batch).await;
            self.answer_reads(live);
            if let Err(error) = turned {
                // Events folded in memory did not persist: recover afresh on the next message.
                tracing::warn!(entity = %self.pid, replica = %self.name, "stopping: {error}");
                refuse_queued(inbox, EntityError::Stopped(self.pid.clone())).await;
                return;
            }
        }
    }

    async fn on_tenure_change(
        &self,
        live: &mut Live,
        change: TenureChange,
    ) -> Result<(), EntityError> {
        match change {
            TenureChange::Granted(fencing_token) => self.take_over(live, fencing_token).await,
            TenureChange::Lost(fencing_token) => self.lose(live, fencing_token, false).await,
        }
    }

    /// Becomes the writer with a freshly granted token: records it on every replica's stream
    /// (from then on a former holder's appends fail) and folds what the former holders wrote.
    async fn take_over(&self, live: &mut Live, fencing_token: u64) -> Result<(), EntityError> {
        for origin in &self.replication.replicas {
            self.shared
                .journal
                .record_fence(&replica_stream(&self.pid, origin), fencing_token)
                .await?;
        }
        let fold = self.fold(live);
        self.catch_up(&mut live.replica, &mut live.parked, &fold)
            .await?;
        if let Some(tenure) = live.tenure.as_mut() {
            self.seat().took_over(tenure, fencing_token);
        }
        Ok(())
    }

    async fn lose(
        &self,
        live: &mut Live,
        fencing_token: u64,
        fenced: bool,
    ) -> Result<(), EntityError> {
        let Some(tenure) = live.tenure.as_mut() else {
            return Ok(());
        };
        let (plugin, state) = (&live.plugin, live.replica.state());
        let hook = |lost: &LeaseLost| {
            let ctx = self.context(self.shared.clock.now(), false, Role::Observer);
            Ok(run_guest(|| plugin.on_lease_lost(&ctx, state, lost))?)
        };
        self.seat().lose(tenure, fencing_token, fenced, hook).await
    }

    /// Whether this replica may handle commands now: it has folded its own persisted events, and
    /// (lease mode) holds the lease — claiming it if it is free.
    async fn ready_to_write(&self, live: &mut Live) -> Result<(), EntityError> {
        if self.config.single_writer && live.tenure.is_none() {
            // A replica contends for the lease from its first command on: the writer is where
            // commands arrive, not whichever replica a pull happened to activate first. The
            // owner names the replica, so a refusal tells where to send commands.
            let owner = format!("{}@{}", self.name, self.shared.settings.writer_id);
            live.tenure = Some(Tenure::start(
                self.shared.lease.clone(),
                &self.pid,
                &owner,
                self.config.lease_ttl(),
            )?);
        }
        if let Some(tenure) = live.tenure.as_ref()
            && tenure.fencing_token().is_none()
        {
            let fencing_token = self.seat().claim(tenure).await?;
            self.take_over(live, fencing_token).await?;
        }
        let folded = live.replica.seen().get(&self.name).copied().unwrap_or(0);
        if folded < live.persisted {
            // Pull what our own events wait for, now rather than at the next tick.
            self.pull_from_all(live);
            return Err(self.catching_up(live));
        }
        Ok(())
    }

    /// Whether a state read may answer now: the replica holds everything it knows of (its own
    /// persisted events are folded, nothing waits for its causal past) and has heard from every
    /// other replica since activation. Otherwise its state may be partial, and the read is
    /// refused rather than shown as current.
    fn ready_to_read(&self, live: &Live) -> Result<(), EntityError> {
        let folded = live.replica.seen().get(&self.name).copied().unwrap_or(0);
        // With events parked, what waits is behind them: the state answers, naming them.
        let waits = live.replica.waiting() > 0 && live.parked.is_empty();
        if folded < live.persisted || waits || !live.unheard.is_empty() {
            return Err(self.catching_up(live));
        }
        Ok(())
    }

    /// Answers the waiting state reads once the replica is ready to be read; refuses those
    /// whose deadline passed as catching up.
    fn answer_reads(&self, live: &mut Live) {
        if live.reads.is_empty() {
            return;
        }
        let ready = self.ready_to_read(live);
        let now = Instant::now();
        for (reply, deadline) in std::mem::take(&mut live.reads) {
            match &ready {
                Ok(()) => {
                    let _ = reply.send(Ok(EntityState {
                        state: live.replica.state().to_vec(),
                        seq_nr: live.replica.seen().values().sum(),
                        plugin: live.plugin.id().to_owned(),
                        replica: Some(ReplicaStatus {
                            replica: self.name.clone(),
                            resolver: self.resolver_in_effect(live),
                            parked: live.parked.values().cloned().collect(),
                        }),
                    }));
                }
                Err(refusal) if deadline <= now => {
                    let _ = reply.send(Err(refusal.clone()));
                }
                Err(_) => live.reads.push((reply, deadline)),
            }
        }
    }

    fn catching_up(&self, live: &Live) -> EntityError {
        EntityError::CatchingUp {
            persistence_id: self.stream.clone(),
            waiting: live.replica.waiting(),
            unheard: live.unheard.iter().cloned().collect(),
        }
    }

    /// One turn over a batch of messages. `Err` means events folded in memory could not be
    /// persisted: the actor must stop, and the next message recovers afresh.
    async fn turn(&self, live: &mut Live, batch: Vec<Message>) -> Result<(), JournalError> {
        let has_commands = batch
            .iter()
            .any(|message| matches!(message, Message::Command { .. } | Message::Configure { .. }));
        let refusal = if has_commands {
            self.ready_to_write(live).await.err()
        } else {
            None
        };
        if has_commands {
            self.pick_up_hot_swap(live);
        }
        let mut events: Vec<EventEnvelope> = Vec::new();
        let mut pending: Vec<Pending> = Vec::new();
        for message in batch {
            match message {
                Message::Command { reply, .. } | Message::Configure { reply, .. }
                    if refusal.is_some() =>
                {
                    let _ = reply.send(Err(refusal.clone().expect("guarded by the match")));
                }
                Message::Configure { resolver, reply } => {
                    let outcome = self.configure(live, &resolver);
                    answer_after_append(outcome, reply, &mut events, &mut pending);
                }
                Message::Command { reply, options, .. } if options.expired(Instant::now()) => {
                    let _ = reply.send(Err(EntityError::DeadlineExceeded(self.stream.clone())));
                }
                Message::Command { command, reply, .. } => {
                    let outcome = self.handle(live, &command);
                    answer_after_append(outcome, reply, &mut events, &mut pending);
                }
                Message::GetState { reply } => {
                    // Answer with what is durable: persist what came before it first.
                    self.persist(live, &mut events, &mut pending).await?;
                    live.reads
                        .push((reply, Instant::now() + READ_CATCH_UP_WAIT));
                    self.answer_reads(live);
                }
                Message::Replicated { from, body } => {
                    // Never show other replicas events that are not persisted yet.
                    self.persist(live, &mut events, &mut pending).await?;
                    self.on_replicated(live, &from, body).await;
                }
                Message::Passivate => {}
            }
        }
        self.persist(live, &mut events, &mut pending).await
    }

    /// Runs one command against the replica's state; its events are folded in at once (the next
    /// command of the turn sees them) and persisted with the turn.
    fn handle(
        &self,
        live: &mut Live,
        command: &[u8],
    ) -> Result<(Vec<EventEnvelope>, CommandReply), EntityError> {
        let now = self.shared.clock.now();
        let ctx = self.context(now, false, Role::Writer);
        let fold = self.fold(live);
        let stamp = Stamp {
            now,
            plugin: live.plugin.id().to_owned(),
            fencing_token: fencing_token(&live.tenure),
        };
        let replica = &mut live.replica;
        let plugin = &live.plugin;
        let events = run_guest(|| {
            let decision = plugin.handle_command(&ctx, replica.state(), command)?;
            let events = if decision.events.is_empty() {
                Vec::new()
            } else {
                replica.emit(&fold, decision.events, &stamp)?
            };
            Ok::<_, crate::plugin::PluginError>((events, decision.reply))
        });
        let (events, reply) = events?;
        let outcome = CommandReply {
            reply,
            seq_nr: replica.seen().get(&self.name).copied().unwrap_or(0),
            plugin: plugin.id().to_owned(),
            replayed: false,
        };
        Ok((events, outcome))
    }

    /// Records a change of resolver: a configuration event naming the build of `name` loaded
    /// here, stamped and folded like this replica's own events (persisted with the turn).
    fn configure(
        &self,
        live: &mut Live,
        name: &str,
    ) -> Result<(Vec<EventEnvelope>, CommandReply), EntityError> {
        let config = FoldConfig {
            resolver: self.resolver_named(name)?.name().to_owned(),
        };
        let fold = self.fold(live);
        let stamp = Stamp {
            now: self.shared.clock.now(),
            plugin: CONFIG_EVENT.to_owned(),
            fencing_token: fencing_token(&live.tenure),
        };
        let replica = &mut live.replica;
        let events = run_guest(|| replica.emit(&fold, vec![config.encode()], &stamp))?;
        tracing::info!(entity = %self.pid, replica = %self.name, resolver = %config.resolver, "resolver change recorded");
        let outcome = CommandReply {
            reply: config.encode(),
            seq_nr: replica.seen().get(&self.name).copied().unwrap_or(0),
            plugin: CONFIG_EVENT.to_owned(),
            replayed: false,
        };
        Ok((events, outcome))
    }

    /// The resolver this replica folds with now: the last configuration event's, or the entity
    /// type's.
    fn resolver_in_effect(&self, live: &Live) -> String {
        live.replica
            .config()
            .and_then(|config| FoldConfig::decode(config).ok())
            .map_or_else(|| live.resolver.name().to_owned(), |config| config.resolver)
    }

    /// Appends the turn's events to this replica's stream in one write, pushes them to the other
    /// replicas, then answers the commands.
    async fn persist(
        &self,
        live: &mut Live,
        events: &mut Vec<EventEnvelope>,
        pending: &mut Vec<Pending>,
    ) -> Result<(), JournalError> {
        if events.is_empty() {
            for Pending { reply, outcome } in pending.drain(..) {
                let _ = reply.send(outcome);
            }
            return Ok(());
        }
        let batch = std::mem::take(events);
        let count = batch.len() as u64;
        let token = fencing_token(&live.tenure);
        let started = std::time::Instant::now();
        let appended = self
            .shared
            .journal
            .append(&self.stream, live.persisted, token, batch.clone())
            .await;
        observe_journal_append(started.elapsed());
        if let Err(error) = appended {
            for Pending { reply, .. } in pending.drain(..) {
                let _ = reply.send(Err(EntityError::from(error.clone())));
            }
            if matches!(error, JournalError::StaleFencingToken { .. })
                && let Err(lost) = self.lose(live, token, true).await
            {
                tracing::error!(entity = %self.pid, "lease loss not handled: {lost}");
            }
            return Err(error);
        }
        live.persisted += count;
        self.shared
            .metrics
            .events_persisted
            .fetch_add(count, Ordering::Relaxed);
        self.send_to_all(ReplicationBody::Events {
            events: batch,
            complete: true,
        });
        for Pending { reply, outcome } in pending.drain(..) {
            let _ = reply.send(outcome);
        }
        self.maybe_snapshot(live).await;
        Ok(())
    }

    async fn on_replicated(&self, live: &mut Live, from: &str, body: ReplicationBody) {
        match body {
            ReplicationBody::Events { events, complete } => {
                let fold = self.fold(live);
                self.fold_received(&mut live.replica, &mut live.parked, &fold, events);
                live.unheard.remove(from);
                // Pull again at once for what is missing — unless what waits, waits for a parked
                // event, which no pull brings.
                let waits = live.replica.waiting() > 0 && live.parked.is_empty();
                if !complete || waits {
                    self.pull_from(live, from);
                }
            }
            ReplicationBody::Pull { seen } => {
                let (events, complete) = match self.missing_for(live, &seen).await {
                    Ok(missing) => missing,
                    Err(error) => {
                        tracing::warn!(entity = %self.pid, "cannot answer a pull from {from}: {error}");
                        return;
                    }
                };
                live.peers_seen.insert(from.to_owned(), seen);
                self.shared
                    .metrics
                    .replication_pulls_answered
                    .fetch_add(1, Ordering::Relaxed);
                // Answered even when empty: the asker learns it has everything this replica has.
                self.send(from, ReplicationBody::Events { events, complete });
            }
        }
    }

    /// What a replica that has seen `seen` lacks, at most [`EVENTS_PER_MESSAGE_MAX`] events, and
    /// whether that is all: this replica's own events from its journal stream (compaction may
    /// have dropped them from memory), the others' from memory.
    async fn missing_for(
        &self,
        live: &Live,
        seen: &BTreeMap<String, u64>,
    ) -> Result<(Vec<EventEnvelope>, bool), JournalError> {
        let own_seen = seen.get(&self.name).copied().unwrap_or(0);
        let mut events = if own_seen < live.persisted {
            self.shared
                .journal
                .read(&self.stream, own_seen + 1, EVENTS_PER_MESSAGE_MAX + 1)
                .await?
        } else {
            Vec::new()
        };
        events.extend(
            live.replica
                .missing_for(seen)
                .into_iter()
                .filter(|event| event.origin_replica != self.name),
        );
        events.sort_by(|a, b| order_key(a).cmp(&order_key(b)));
        let complete = events.len() <= EVENTS_PER_MESSAGE_MAX;
        events.truncate(EVENTS_PER_MESSAGE_MAX);
        Ok((events, complete))
    }

    /// Compacts the events that are causally stable here (`Replica::compact`), relying on the
    /// other replicas' events and on what they last said they had seen.
    fn compact(&self, live: &mut Live) {
        let compacted = live
            .replica
            .compact(&self.replication.replicas, &live.peers_seen);
        if compacted > 0 {
            self.shared
                .metrics
                .replicated_events_compacted
                .fetch_add(compacted as u64, Ordering::Relaxed);
            tracing::trace!(entity = %self.pid, compacted, "compacted stable events");
        }
    }

    async fn maybe_snapshot(&self, live: &mut Live) {
        let every = self.config.snapshot_every;
        if every == 0 || live.persisted < live.snapshot_at + every {
            return;
        }
        let saved = live.replica.snapshot();
        let payload = match rmp_serde::to_vec_named(&saved) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(entity = %self.stream, "snapshot does not encode: {error}");
                return;
            }
        };
        let snapshot = SnapshotEnvelope {
            persistence_id: self.stream.clone(),
            seq_nr: live.persisted,
            writer: self.shared.settings.writer_id,
            version: saved.seen.clone(),
            seen: saved.seen,
            plugin: live.plugin.id().to_owned(),
            payload,
        };
        match self.shared.journal.save_snapshot(snapshot).await {
            Ok(()) => live.snapshot_at = live.persisted,
            // The events are durable; a missing snapshot only makes the next recovery longer.
            Err(error) => tracing::warn!(entity = %self.stream, "snapshot failed: {error}"),
        }
    }

    fn pull_from_all(&self, live: &Live) {
        self.send_to_all(ReplicationBody::Pull {
            seen: live.replica.seen().clone(),
        });
    }

    fn pull_from(&self, live: &Live, replica: &str) {
        self.send(
            replica,
            ReplicationBody::Pull {
                seen: live.replica.seen().clone(),
            },
        );
    }

    fn send_to_all(&self, body: ReplicationBody) {
        for replica in self.others() {
            self.send(replica, body.clone());
        }
    }

    /// The other replicas' names.
    fn others(&self) -> impl Iterator<Item = &String> {
        self.replication
            .replicas
            .iter()
            .filter(|replica| **replica != self.name)
    }

    fn send(&self, replica: &str, body: ReplicationBody) {
        if let Some(peers) = self.shared.peers.get() {
            peers.send(
                replica,
                ReplicationMessage {
                    entity_type: self.entity_type.clone(),
                    entity_id: self.entity_id.clone(),
                    body,
                },
            );
        }
    }

    /// Handles commands with the newest loaded version of the entity plugin, as plain entities
    /// do: a hot swap takes effect at the next command, and folds from then on use it too.
    fn pick_up_hot_swap(&self, live: &mut Live) {
        match self.shared.plugins.get(&self.config.plugin) {
            Ok(plugin) if plugin.id() != live.plugin.id() => {
                tracing::info!(entity = %self.pid, from = live.plugin.id(), to = plugin.id(), "replica switched plugin version");
                live.plugin = plugin;
                // The new version may fold what the old one could not: pulls offer it again.
                live.parked.clear();
                self.publish_parked(&live.parked);
            }
            Ok(_) => {}
            // Unloaded meanwhile: keep folding with the version in hand.
            Err(error) => tracing::warn!(entity = %self.pid, "{error}"),
        }
    }

    /// The resolver the entity type names: a built-in, or a loaded resolver plugin.
    fn resolver(&self) -> Result<Resolver, EntityError> {
        self.resolver_named(&self.replication.resolver)
    }

    /// The resolver `name` names: a built-in, or the loaded build of a resolver plugin.
    fn resolver_named(&self, name: &str) -> Result<Resolver, EntityError> {
        match name {
            LAST_WRITER_WINS => Ok(Resolver::LastWriterWins),
            FIRST_WRITER_WINS => Ok(Resolver::FirstWriterWins),
            name => {
                let plugin = self.shared.plugins.get(name)?;
                if plugin.world() != World::Resolver {
                    return Err(EntityError::Plugin {
                        code: "not_a_resolver",
                        message: format!(
                            "entity type `{}` names `{name}` as its resolver, but {} is an {} plugin, not a resolver",
                            self.entity_type,
                            plugin.id(),
                            plugin.world().name()
                        ),
                    });
                }
                Ok(Resolver::Plugin(plugin))
            }
        }
    }

    fn fold(&self, live: &Live) -> PluginFold {
        let writing = live
            .tenure
            .as_ref()
            .and_then(Tenure::fencing_token)
            .is_some();
        let role = if self.config.single_writer && !writing {
            Role::Observer
        } else {
            Role::Writer
        };
        self.fold_with(&live.plugin, &live.resolver, false, role)
    }

    fn fold_with(
        &self,
        plugin: &Arc<PluginVersion>,
        resolver: &Resolver,
        recovery_running: bool,
        role: Role,
    ) -> PluginFold {
        let ctx = self.context(0, recovery_running, role);
        PluginFold::new(plugin.clone(), resolver.clone(), ctx)
            .with_registry(self.shared.plugins.clone())
    }

    fn context(&self, now: u64, recovery_running: bool, role: Role) -> Context {
        Context {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            replica: self.name.clone(),
            all_replicas: self.replication.replicas.clone(),
            now,
            recovery_running,
            role,
        }
    }

    fn seat(&self) -> Seat<'_> {
        Seat {
            // Replicas are not handed off between nodes: a lease another replica holds is a
            // live writer (or a crashed one, until its lease expires), refused at once by name.
            clustered: false,
            ..self
                .shared
                .seat(&self.entity_type, &self.entity_id, &self.pid)
        }
    }
}
