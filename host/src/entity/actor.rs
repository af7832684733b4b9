//! The task of one entity: recovery, turns, batching, snapshots, passivation.
//!
//! The entity's state is [`Resident`] in its plugin (see `plugin::resident`): a turn takes the
//! first queued message and every message queued behind it (up to `max_batch`), hands the
//! commands to the plugin in one call (each command sees the state its predecessors left), and
//! persists all their events in one conditional append. Only when the append succeeds do the
//! commands' callers get their replies; if it fails, every command of the batch fails, and the
//! resident state, which is ahead of the journal, is dropped and recovered from it. A rejected
//! command persists nothing and does not affect the others. When the plugin call itself fails (a
//! trap, a bound), the entity recovers and runs the batch's commands one by one, so only the
//! command at fault fails; when another entity's failure took the instance holding this state,
//! the entity recovers and runs the batch again.
//!
//! Before a turn's plugin call, and again after it (before the append), commands whose deadline
//! has passed are dropped unapplied; a command whose idempotency key the entity's recent events
//! hold is answered with the recorded reply instead of running (see `entity::idempotency`), and a
//! retry queued behind its first attempt runs after that attempt is persisted.
//!
//! A single-writer entity also keeps a [`Tenure`]: it handles commands only while this host holds
//! the entity's lease, stamping its fencing token on every append; otherwise it observes — it
//! catches up with the journal before answering a state query and refuses commands naming the
//! writer. A command that finds the lease free waits for this host's manager to acquire it.
//!
//! A placed entity of a cluster (neither single-writer nor replicated, its stream in the journal
//! the cluster shares) fences every activation instead: before recovering, the actor advances the
//! entity's fence in the journal ([`Journal::advance_fence`](crate::journal::Journal::advance_fence))
//! and stamps the new token on its appends. While placement moves the entity, two nodes (or two
//! activations on one node) may host it at once; the older activation's appends then fail with a
//! stale token instead of interleaving with the newer one's, and it stops. Its stream reads as
//! tenures, each with a higher token (`A@1 B@2 A@3`), which recovery's replay filter accepts.

use std::collections::HashSet;
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::budget::ResidentUsage;
use super::error::EntityError;
use super::idempotency::{Applied, CommandOptions, IdempotencyKey, RecentKeys, command_digest};
use super::pending::{Pending, answer_after_append};
use super::system::{CommandReply, EntityState, Shared};
use super::tenure::{Seat, Tenure, TenureChange};
use super::types::{EntityTypeConfig, persistence_id};
use crate::journal::{
    EventEnvelope, IdempotencyRecord, JournalError, ReplayFilter, ReplayFilterSettings,
    SnapshotEnvelope,
};
use crate::observability::metrics::observe_journal_append;
use crate::plugin::{Context, Envelope, LeaseLost, PluginError, PluginVersion, Resident, Role};
use crate::replication::ReplicationBody;

/// Events read per journal query during recovery.
const RECOVERY_PAGE: usize = 1_000;

/// The error codes of a plugin stopped mid-call (a trap, its CPU bound, its memory cap): logged
/// with the entity, unlike a refusal.
const GUEST_FAILURE_CODES: [&str; 3] = [
    "plugin_trapped",
    "plugin_cpu_bound_exceeded",
    "plugin_memory_cap_exceeded",
];

pub(super) enum Message {
    Command {
        command: Vec<u8>,
        options: CommandOptions,
        reply: oneshot::Sender<Result<CommandReply, EntityError>>,
        /// The sender's span (an HTTP request's, with its id): the lines of a turn that runs
        /// this command alone are written in it.
        span: tracing::Span,
    },
    GetState {
        reply: oneshot::Sender<Result<EntityState, EntityError>>,
    },
    /// Stop after what is queued (another node owns the entity now).
    Passivate,
    /// A message from another replica of a replicated entity (named `from`).
    Replicated { from: String, body: ReplicationBody },
    /// Records, in a replicated entity's history, that concurrent events are resolved by
    /// `resolver` from this point on.
    Configure {
        resolver: String,
        reply: oneshot::Sender<Result<CommandReply, EntityError>>,
    },
}

impl Message {
    pub(super) fn fail(self, error: EntityError) {
        // A caller that gave up waiting is no reason to fail anything else.
        match self {
            Message::Command { reply, .. } | Message::Configure { reply, .. } => {
                drop(reply.send(Err(error)))
            }
            Message::GetState { reply } => drop(reply.send(Err(error))),
            Message::Passivate | Message::Replicated { .. } => {}
        }
    }

    /// A command or a state query: what keeps an entity from passivating.
    pub fn is_call(&self) -> bool {
        matches!(
            self,
            Message::Command { .. } | Message::GetState { .. } | Message::Configure { .. }
        )
    }
}

/// A command waiting for its turn's plugin call.
struct Call {
    command: Vec<u8>,
    options: CommandOptions,
    reply: oneshot::Sender<Result<CommandReply, EntityError>>,
    span: tracing::Span,
}

impl Call {
    /// The record its last event carries if it has a key: the key and the command's digest (the
    /// reply is added once known).
    fn record(&self) -> Option<(String, Vec<u8>)> {
        let key = self.options.idempotency_key.as_ref()?;
        Some((key.as_str().to_owned(), command_digest(&self.command)))
    }
}

pub(super) struct Actor {
    shared: Arc<Shared>,
    entity_type: String,
    entity_id: String,
    pid: String,
    config: Arc<EntityTypeConfig>,
    /// The token this activation of a placed entity of a cluster writes with; 0 otherwise.
    activation_token: u64,
    /// The entity's share of the node's resident-state budget.
    usage: Arc<ResidentUsage>,
}

/// What the journal holds for the entity, folded.
struct Committed {
    /// The state, in the plugin; lost after a failed call or append until recovered.
    resident: Resident,
    seq_nr: u64,
    /// Sequence number of the last snapshot written or read.
    snapshot_seq_nr: u64,
    /// The plugin version that last changed the state.
    plugin: String,
    /// The idempotency keys of the latest events.
    keys: RecentKeys,
}

impl Actor {
    pub fn new(
        shared: Arc<Shared>,
        entity_type: String,
        entity_id: String,
        config: Arc<EntityTypeConfig>,
        usage: Arc<ResidentUsage>,
    ) -> Self {
        let pid = persistence_id(&entity_type, &entity_id);
        Actor {
            shared,
            entity_type,
            entity_id,
            pid,
            config,
            activation_token: 0,
            usage,
        }
    }

    pub async fn run(mut self, inbox: mpsc::Receiver<Message>) {
        let fenced = self.fence_activation().await;
        let recovered = match fenced {
            Ok(token) => {
                self.activation_token = token;
                self.recover().await
            }
            Err(error) => Err(error),
        };
        let started = recovered.and_then(|committed| {
            let tenure = self
                .config
                .single_writer
                .then(|| {
                    let owner = self.shared.settings.writer_id.to_string();
                    Tenure::start(
                        self.shared.lease.clone(),
                        &self.pid,
                        &owner,
                        self.config.lease_ttl(),
                    )
                })
                .transpose()?;
            Ok((committed, tenure))
        });
        let (mut committed, mut tenure) = match started {
            Ok(started) => started,
            Err(error) => {
                tracing::error!(entity = %self.pid, "recovery failed: {error}");
                refuse_queued(inbox, error).await;
                return;
            }
        };
        self.measure(&mut committed).await;
        self.serve(&mut committed, &mut tenure, inbox).await;
        if let Some(tenure) = tenure {
            // Passivated or stopped: let another host take the entity over at once.
            self.shared.release_lease(tenure).await;
        }
    }

    /// The token this activation writes with, for a placed entity of a cluster: the entity's fence,
    /// advanced so that every earlier activation's appends fail from now on. 0 outside a cluster
    /// and for single-writer entities, whose lease gives their token.
    async fn fence_activation(&self) -> Result<u64, EntityError> {
        if !self.shared.settings.clustered || self.config.single_writer {
            return Ok(0);
        }
        let token = self.shared.journal.advance_fence(&self.pid).await?;
        tracing::debug!(entity = %self.pid, fencing_token = token, "activation fenced");
        Ok(token)
    }

    /// Turns until the mailbox closes: passivation, or a stale view of the stream.
    async fn serve(
        &self,
        committed: &mut Committed,
        tenure: &mut Option<Tenure>,
        mut inbox: mpsc::Receiver<Message>,
    ) {
        let mut passivating = false;
        loop {
            let idle = self.config.passivate_after();
            let first = tokio::select! {
                message = inbox.recv() => message,
                () = tokio::time::sleep(idle), if !passivating => {
                    tracing::debug!(entity = %self.pid, "passivating after {idle:?} idle");
                    // Messages queued before the close are still handled below.
                    inbox.close();
                    passivating = true;
                    continue;
                }
                change = next_change(tenure) => {
                    if let Some(tenure) = tenure.as_mut() {
                        self.on_tenure_change(committed, tenure, change).await;
                    }
                    continue;
                }
            };
            let Some(first) = first else { return };
            let batch = take_batch(first, &mut inbox, &self.config, &mut passivating, &self.pid);
            if let Err(stale) = self.turn(committed, tenure, batch).await {
                tracing::warn!(entity = %self.pid, "stopping: {stale}");
                // A newer activation fenced this one: what is queued goes back to its callers
                // (to send to the entity's current owner) rather than to a new activation here.
                let error = match stale {
                    JournalError::StaleFencingToken { .. } => EntityError::from(stale),
                    _ => EntityError::Stopped(self.pid.clone()),
                };
                refuse_queued(inbox, error).await;
                return;
            }
        }
    }

    async fn on_tenure_change(
        &self,
        committed: &mut Committed,
        tenure: &mut Tenure,
        change: TenureChange,
    ) {
        let outcome = match change {
            TenureChange::Granted(fencing_token) => {
                self.take_over(committed, tenure, fencing_token).await
            }
            TenureChange::Lost(fencing_token) => {
                self.lose(committed, tenure, fencing_token, false).await
            }
        };
        if let Err(error) = outcome {
            tracing::error!(entity = %self.pid, "lease change not handled: {error}");
        }
    }

    /// Becomes the writer with a freshly granted token: records it in the journal (from then on
    /// older holders' appends fail) and catches up with what they wrote.
    async fn take_over(
        &self,
        committed: &mut Committed,
        tenure: &mut Tenure,
        fencing_token: u64,
    ) -> Result<(), EntityError> {
        // On failure the grant stays unconfirmed: the manager keeps the lease, and the next
        // command retries taking over (other hosts would fail on the same journal too).
        self.shared
            .journal
            .record_fence(&self.pid, fencing_token)
            .await?;
        self.catch_up(committed).await?;
        self.seat().took_over(tenure, fencing_token);
        Ok(())
    }

    /// Switches to observer after the tenure writing with `fencing_token` ended (once per loss).
    async fn lose(
        &self,
        committed: &mut Committed,
        tenure: &mut Tenure,
        fencing_token: u64,
        fenced: bool,
    ) -> Result<(), EntityError> {
        // A state lost after a failed append is recovered first: the hook sees what is durable.
        self.ready(committed).await?;
        let hook = |lost: &LeaseLost| {
            let ctx = self.context(self.shared.clock.now(), false, Role::Observer);
            Ok(run_guest(|| committed.resident.on_lease_lost(&ctx, lost))?)
        };
        self.seat().lose(tenure, fencing_token, fenced, hook).await
    }

    /// A placed entity of a cluster answers a read from memory only while no newer activation
    /// (on another node, after placement moved it there) has advanced its fence: that one may
    /// have written since. One read of the fence, after the state to answer with is final.
    async fn confirm_activation_current(&self) -> Result<(), JournalError> {
        if self.activation_token == 0 {
            return Ok(());
        }
        let current = self.shared.journal.fence(&self.pid).await?;
        if current > self.activation_token {
            return Err(JournalError::StaleFencingToken {
                persistence_id: self.pid.clone(),
                token: self.activation_token,
                current,
            });
        }
        Ok(())
    }

    /// A writer whose lease's local deadline has passed is not the writer any more, whether or not
    /// the task keeping the lease has noticed (after a pause of the process, either may run first):
    /// it steps down and catches up with the journal, so that a read is never answered from a
    /// tenure another host may have taken over meanwhile.
    async fn step_down_if_lease_ran_out(
        &self,
        committed: &mut Committed,
        tenure: &mut Option<Tenure>,
    ) -> Result<(), EntityError> {
        let Some(tenure) = tenure.as_mut() else {
            return Ok(());
        };
        let Some(fencing_token) = tenure.fencing_token() else {
            return Ok(());
        };
        if tenure.writing_at(std::time::Instant::now()).is_some() {
            return Ok(());
        }
        self.lose(committed, tenure, fencing_token, false).await?;
        self.catch_up(committed).await
    }

    /// Makes this host the writer for a batch of commands (see [`Seat::claim`]).
    async fn claim(
        &self,
        committed: &mut Committed,
        tenure: &mut Tenure,
    ) -> Result<(), EntityError> {
        let fencing_token = self.seat().claim(tenure).await?;
        self.take_over(committed, tenure, fencing_token).await
    }

    fn seat(&self) -> Seat<'_> {
        self.shared
            .seat(&self.entity_type, &self.entity_id, &self.pid)
    }

    /// Applies what other writers appended since `committed.seq_nr`.
    async fn catch_up(&self, committed: &mut Committed) -> Result<(), EntityError> {
        self.ready(committed).await?;
        loop {
            let page = self
                .shared
                .journal
                .read(&self.pid, committed.seq_nr + 1, RECOVERY_PAGE)
                .await?;
            let Some(last) = page.last() else {
                return Ok(());
            };
            let (seq_nr, writer_plugin) = (last.seq_nr, last.plugin.clone());
            let full_page = page.len() == RECOVERY_PAGE;
            self.fold(&mut committed.resident, &page)?;
            committed.keys.note(&page);
            committed.seq_nr = seq_nr;
            committed.plugin = writer_plugin;
            if !full_page {
                return Ok(());
            }
        }
    }

    /// Latest snapshot, then the events after it through the replay filter.
    async fn recover(&self) -> Result<Committed, EntityError> {
        let plugin = self.plugin()?;
        let journal = &self.shared.journal;
        let settings = ReplayFilterSettings {
            mode: self.config.replay_filter,
            ..ReplayFilterSettings::default()
        };
        let mut filter = ReplayFilter::new(self.pid.clone(), settings);
        let snapshot = journal.latest_snapshot(&self.pid).await?;
        let (mut seq_nr, snapshot_seq_nr) = snapshot
            .as_ref()
            .map_or((0, 0), |snapshot| (snapshot.seq_nr, snapshot.seq_nr));
        let ctx = self.context(self.shared.clock.now(), true, self.observed_role());
        let payload = snapshot
            .as_ref()
            .map(|snapshot| snapshot.payload.as_slice());
        let mut resident = run_guest(|| Resident::new(plugin.clone(), &ctx, payload))?;
        let mut applied = 0usize;
        loop {
            let page = journal.read(&self.pid, seq_nr + 1, RECOVERY_PAGE).await?;
            let Some(last) = page.last() else { break };
            seq_nr = last.seq_nr;
            let full_page = page.len() == RECOVERY_PAGE;
            let mut events = Vec::with_capacity(page.len());
            for event in page {
                events.extend(filter.push(event)?);
            }
            self.fold(&mut resident, &events)?;
            applied += events.len();
            if !full_page {
                break;
            }
        }
        let events = filter.finish();
        self.fold(&mut resident, &events)?;
        applied += events.len();
        tracing::debug!(entity = %self.pid, seq_nr, applied, "recovered");
        Ok(Committed {
            resident,
            seq_nr,
            snapshot_seq_nr,
            plugin: plugin.id().to_owned(),
            keys: self.recent_keys(seq_nr).await?,
        })
    }

    /// The idempotency keys of the events in the window before `seq_nr`, read from the journal
    /// (a snapshot holds none: the table is rebuilt from the events themselves).
    async fn recent_keys(&self, seq_nr: u64) -> Result<RecentKeys, EntityError> {
        let mut keys = RecentKeys::new(self.config.idempotency_window_events);
        let mut from = keys.window_start(seq_nr);
        while from <= seq_nr && self.config.idempotency_window_events > 0 {
            let page = self
                .shared
                .journal
                .read(&self.pid, from, RECOVERY_PAGE)
                .await?;
            let Some(last) = page.last() else { break };
            from = last.seq_nr + 1;
            keys.note(&page);
        }
        Ok(keys)
    }

    /// Applies recovered events in order, in one plugin call.
    fn fold(&self, resident: &mut Resident, events: &[EventEnvelope]) -> Result<(), EntityError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        let ctx = self.context(first.timestamp, true, self.observed_role());
        let envelopes: Vec<Envelope> = events.iter().map(Envelope::from).collect();
        run_guest(|| resident.apply(&ctx, &envelopes)).map_err(EntityError::from)
    }

    /// Makes the resident state usable: recovered from the journal when a failed call or append
    /// lost it, moved into the current build after a hot swap.
    async fn ready(&self, committed: &mut Committed) -> Result<(), EntityError> {
        if committed.resident.is_lost() {
            *committed = self.recover().await?;
            return Ok(());
        }
        let plugin = self.plugin()?;
        // The loaded version, not its id: the same build loaded again is another version, and
        // states must leave the homes of the one it replaced.
        if Arc::ptr_eq(committed.resident.version(), &plugin) {
            return Ok(());
        }
        let ctx = self.context(self.shared.clock.now(), false, self.observed_role());
        let moved = run_guest(|| {
            let state = committed.resident.snapshot(&ctx)?;
            Resident::new(plugin, &ctx, Some(&state))
        });
        match moved {
            Ok(resident) => committed.resident = resident,
            // The old build could not hand its state over: recover it into the new one.
            Err(error) => {
                tracing::warn!(entity = %self.pid, "state not moved to the new build ({error}); recovering");
                *committed = self.recover().await?;
            }
        }
        Ok(())
    }

    /// Charges the entity's state size to the node's budget, read from the plugin.
    async fn measure(&self, committed: &mut Committed) {
        let ctx = self.context(self.shared.clock.now(), false, self.observed_role());
        match self
            .with_resident(committed, |resident| resident.snapshot(&ctx))
            .await
        {
            Ok(state) => self.shared.charge(&self.usage, state.len() as u64),
            Err(error) => tracing::warn!(entity = %self.pid, "state size not read: {error}"),
        }
    }

    /// Runs `call` on the ready resident state; when another entity's failure took the instance
    /// holding it, recovers and runs it once more.
    async fn with_resident<R>(
        &self,
        committed: &mut Committed,
        mut call: impl FnMut(&mut Resident) -> Result<R, PluginError>,
    ) -> Result<R, EntityError> {
        self.ready(committed).await?;
        match run_guest(|| call(&mut committed.resident)) {
            Err(PluginError::ResidentLost { .. }) => {
                self.ready(committed).await?;
                Ok(run_guest(|| call(&mut committed.resident))?)
            }
            outcome => Ok(outcome?),
        }
    }

    /// One turn over a batch of messages. `Err` means the actor's view of its stream is stale
    /// (another writer appended): it must stop, and the next message recovers afresh.
    async fn turn(
        &self,
        committed: &mut Committed,
        tenure: &mut Option<Tenure>,
        batch: Vec<Message>,
    ) -> Result<(), JournalError> {
        self.shared.budget.touch(&self.usage);
        let has_commands = batch
            .iter()
            .any(|message| matches!(message, Message::Command { .. }));
        // A single-writer entity that is not the writer: claim the lease, or refuse the commands.
        let refusal = match tenure.as_mut() {
            Some(tenure) if tenure.fencing_token().is_none() => {
                let claimed = if has_commands {
                    self.claim(committed, tenure).await
                } else {
                    Ok(())
                };
                if tenure.fencing_token().is_none() {
                    // Still observing: answer state queries with what the writer wrote.
                    if let Err(error) = self.catch_up(committed).await {
                        tracing::warn!(entity = %self.pid, "observer catch-up failed: {error}");
                    }
                }
                claimed.err()
            }
            _ => None,
        };
        let mut segment: Vec<Call> = Vec::new();
        for message in batch {
            match message {
                Message::GetState { reply } => {
                    // Answer with what is durable: persist what came before it first.
                    self.run_segment(committed, tenure, std::mem::take(&mut segment))
                        .await?;
                    match self.confirm_activation_current().await {
                        Ok(()) => {}
                        // A newer activation took over: this one stops, as after a fenced append.
                        Err(stale @ JournalError::StaleFencingToken { .. }) => {
                            let _ = reply.send(Err(EntityError::from(stale.clone())));
                            return Err(stale);
                        }
                        Err(error) => {
                            let _ = reply.send(Err(EntityError::from(error)));
                            continue;
                        }
                    }
                    let state = match self.step_down_if_lease_ran_out(committed, tenure).await {
                        Ok(()) => {
                            let ctx =
                                self.context(self.shared.clock.now(), false, self.observed_role());
                            self.with_resident(committed, |resident| resident.snapshot(&ctx))
                                .await
                        }
                        Err(error) => Err(error),
                    };
                    if let Ok(state) = &state {
                        self.shared.charge(&self.usage, state.len() as u64);
                    }
                    let _ = reply.send(state.map(|state| EntityState {
                        state,
                        seq_nr: committed.seq_nr,
                        plugin: committed.plugin.clone(),
                        replica: None,
                    }));
                }
                Message::Command { reply, .. } if refusal.is_some() => {
                    let _ = reply.send(Err(refusal.clone().expect("guarded by the match")));
                }
                // Only replicated entities take replication messages.
                Message::Passivate | Message::Replicated { .. } => {}
                Message::Configure { reply, .. } => {
                    let _ = reply.send(Err(EntityError::NotReplicated(self.pid.clone())));
                }
                Message::Command {
                    command,
                    options,
                    reply,
                    span,
                } => segment.push(Call {
                    command,
                    options,
                    reply,
                    span,
                }),
            }
        }
        self.run_segment(committed, tenure, segment).await
    }

    /// Handles a run of commands in one plugin call and persists their events in one append.
    /// When the call fails for the batch (a trap, a bound), the commands run one by one, so that
    /// only the one at fault fails.
    async fn run_segment(
        &self,
        committed: &mut Committed,
        tenure: &mut Option<Tenure>,
        segment: Vec<Call>,
    ) -> Result<(), JournalError> {
        let (segment, repeated) = self.screen(committed, segment).await;
        if segment.is_empty() {
            return Ok(());
        }
        let commands: Vec<Vec<u8>> = segment.iter().map(|call| call.command.clone()).collect();
        let records: Vec<Option<(String, Vec<u8>)>> = segment.iter().map(Call::record).collect();
        // A command run alone runs in its sender's span, so the plugin's lines carry its request
        // id; a batch serves several requests and carries only the entity.
        let span = match segment.as_slice() {
            [call] => call.span.clone(),
            _ => tracing::Span::none(),
        };
        let outcomes = self
            .handle(committed, tenure, &commands, records)
            .instrument(span)
            .await;
        let ran = match outcomes {
            // A deadline passed during the plugin call (a slow command ahead in the batch, say):
            // nothing is persisted yet, so the expired commands are dropped after all. The state
            // folded their events: it is recovered, and the others run again without them.
            Ok(_)
                if segment
                    .iter()
                    .any(|call| call.options.expired(Instant::now())) =>
            {
                committed.resident.discard();
                let retried = segment.into_iter().chain(repeated).collect();
                return Box::pin(self.run_segment(committed, tenure, retried)).await;
            }
            Ok((events, outcomes)) => {
                let mut pending = Vec::with_capacity(segment.len());
                let mut turn_events = Vec::with_capacity(events.len());
                let mut events = events.into_iter();
                for (call, outcome) in segment.into_iter().zip(outcomes) {
                    let outcome = outcome.map(|(count, reply)| {
                        (events.by_ref().take(count).collect::<Vec<_>>(), reply)
                    });
                    answer_after_append(outcome, call.reply, &mut turn_events, &mut pending);
                }
                self.persist(committed, tenure, turn_events, pending).await
            }
            Err(error) if segment.len() > 1 => {
                tracing::warn!(entity = %self.pid, commands = segment.len(), "batch failed ({error}); running its commands one by one");
                for call in segment {
                    Box::pin(self.run_segment(committed, tenure, vec![call])).await?;
                }
                Ok(())
            }
            Err(error) => {
                for call in segment {
                    let _ = call.reply.send(Err(error.clone()));
                }
                Ok(())
            }
        };
        ran?;
        // Retries queued behind their first attempt run once it is persisted: they find its key.
        Box::pin(self.run_segment(committed, tenure, repeated)).await
    }

    /// Answers the calls that must not run: those whose deadline passed while they waited (not
    /// applied), and those whose idempotency key the entity's recent events hold (the first
    /// reply, or a refusal if the command differs). Returns the calls to run now and the retries
    /// of a keyed call among them, to run after it.
    async fn screen(&self, committed: &Committed, segment: Vec<Call>) -> (Vec<Call>, Vec<Call>) {
        let now = Instant::now();
        let (mut run, mut repeated) = (Vec::new(), Vec::new());
        let mut keys_running = HashSet::new();
        for call in segment {
            if call.options.expired(now) {
                let _ = call
                    .reply
                    .send(Err(EntityError::DeadlineExceeded(self.pid.clone())));
                continue;
            }
            let Some(key) = call.options.idempotency_key.clone() else {
                run.push(call);
                continue;
            };
            if let Some(applied) = committed.keys.get(&key) {
                let answer = self.replay(&key, applied, &call.command).await;
                let _ = call.reply.send(answer);
            } else if keys_running.insert(key) {
                run.push(call);
            } else {
                repeated.push(call);
            }
        }
        (run, repeated)
    }

    /// The reply of the keyed command applied as `applied`, read back from its last event, for a
    /// retry of it; a refusal if `command` is not the command applied under that key.
    async fn replay(
        &self,
        key: &IdempotencyKey,
        applied: &Applied,
        command: &[u8],
    ) -> Result<CommandReply, EntityError> {
        if command_digest(command) != applied.digest {
            return Err(EntityError::IdempotencyKeyReused {
                persistence_id: self.pid.clone(),
                key: key.as_str().to_owned(),
                seq_nr: applied.seq_nr,
            });
        }
        let event = self
            .shared
            .journal
            .read(&self.pid, applied.seq_nr, 1)
            .await?
            .into_iter()
            .next()
            .filter(|event| event.seq_nr == applied.seq_nr);
        match event.and_then(|event| event.idempotency.map(|record| (record, event.plugin))) {
            Some((record, plugin)) => Ok(CommandReply {
                reply: record.reply,
                seq_nr: applied.seq_nr,
                plugin,
                replayed: true,
            }),
            None => Err(EntityError::Journal(format!(
                "event {} of {} should hold the record of idempotency key `{}` and does not",
                applied.seq_nr,
                self.pid,
                key.as_str()
            ))),
        }
    }

    /// Logs a trap or a bound that stopped the plugin while it handled commands, with the entity
    /// and the sequence number the first command's event would have taken: the plugin's author
    /// has something to fix. A refusal, or a plugin that is busy or missing, is not logged here.
    fn log_guest_failure(&self, error: &EntityError, plugin: &str, seq_nr: u64) {
        if let EntityError::Plugin { code, message } = error
            && GUEST_FAILURE_CODES.contains(code)
        {
            tracing::warn!(
                plugin,
                entity_type = %self.entity_type,
                entity_id = %self.entity_id,
                seq_nr,
                code,
                // Debug-quoted: a guest's report (a traceback) keeps the line one line.
                error = ?message,
                "plugin call failed"
            );
        }
    }

    /// Runs a batch of commands through the plugin: the batch's events, and per command either
    /// how many of them it produced with its reply, or its rejection.
    async fn handle(
        &self,
        committed: &mut Committed,
        tenure: &Option<Tenure>,
        commands: &[Vec<u8>],
        records: Vec<Option<(String, Vec<u8>)>>,
    ) -> Result<
        (
            Vec<EventEnvelope>,
            Vec<Result<(usize, CommandReply), EntityError>>,
        ),
        EntityError,
    > {
        let now = self.shared.clock.now();
        let ctx = self.context(now, false, Role::Writer);
        let fencing_token = self.fencing_token(tenure);
        let first_seq_nr = committed.seq_nr + 1;
        let mut plugin_id = String::new();
        let outcomes = self
            .with_resident(committed, |resident| {
                plugin_id = resident.version().id().to_owned();
                let first = self.envelope(first_seq_nr, now, fencing_token, &plugin_id, Vec::new());
                let first = Envelope::from(&first).meta;
                resident.handle(&ctx, &first, commands)
            })
            .await
            .inspect_err(|error| self.log_guest_failure(error, &plugin_id, first_seq_nr))?;
        let mut events = Vec::new();
        let outcomes = outcomes
            .into_iter()
            .zip(records)
            .map(|(outcome, record)| {
                let decision = outcome?;
                let count = decision.events.len();
                for payload in decision.events {
                    let seq_nr = first_seq_nr + events.len() as u64;
                    events.push(self.envelope(seq_nr, now, fencing_token, &plugin_id, payload));
                }
                // A keyed command's last event carries its record; one without events leaves
                // nothing to find, and its retry runs again (it changed nothing).
                if let (Some((key, digest)), Some(last)) = (record, events.last_mut())
                    && count > 0
                {
                    last.idempotency = Some(IdempotencyRecord {
                        key,
                        digest,
                        reply: decision.reply.clone(),
                    });
                }
                let seq_nr = first_seq_nr + events.len() as u64 - 1;
                let reply = CommandReply {
                    reply: decision.reply,
                    seq_nr,
                    plugin: plugin_id.clone(),
                    replayed: false,
                };
                Ok((count, reply))
            })
            .collect();
        Ok((events, outcomes))
    }

    /// Appends the batch's events in one write, then answers its commands.
    async fn persist(
        &self,
        committed: &mut Committed,
        tenure: &mut Option<Tenure>,
        events: Vec<EventEnvelope>,
        pending: Vec<Pending>,
    ) -> Result<(), JournalError> {
        if pending.is_empty() {
            return Ok(());
        }
        let count = events.len() as u64;
        let fencing_token = self.fencing_token(tenure);
        let keyed: Vec<(u64, String, Vec<u8>)> = events
            .iter()
            .filter_map(|event| {
                let record = event.idempotency.as_ref()?;
                Some((event.seq_nr, record.key.clone(), record.digest.clone()))
            })
            .collect();
        let outcome = if events.is_empty() {
            Ok(())
        } else {
            let started = std::time::Instant::now();
            let appended = self
                .shared
                .journal
                .append(&self.pid, committed.seq_nr, fencing_token, events)
                .await;
            observe_journal_append(started.elapsed());
            appended
        };
        match outcome {
            Ok(()) => {
                committed.seq_nr += count;
                committed.keys.note_appended(keyed, committed.seq_nr);
                if let Some(last) = pending.iter().rev().find_map(|p| p.outcome.as_ref().ok()) {
                    committed.plugin = last.plugin.clone();
                }
                self.shared
                    .metrics
                    .events_persisted
                    .fetch_add(count, std::sync::atomic::Ordering::Relaxed);
                for Pending { reply, outcome } in pending {
                    let _ = reply.send(outcome);
                }
                self.maybe_snapshot(committed).await;
                Ok(())
            }
            Err(error) => {
                // The resident state folded events the journal does not hold.
                committed.resident.discard();
                for Pending { reply, .. } in pending {
                    let _ = reply.send(Err(EntityError::from(error.clone())));
                }
                match (error, tenure.as_mut()) {
                    // A newer holder fenced this one: observe from now on.
                    (JournalError::StaleFencingToken { .. }, Some(tenure)) => {
                        if let Err(error) = self.lose(committed, tenure, fencing_token, true).await
                        {
                            tracing::error!(entity = %self.pid, "lease loss not handled: {error}");
                        }
                        Ok(())
                    }
                    (error @ JournalError::SeqConflict { .. }, _)
                    | (error @ JournalError::StaleFencingToken { .. }, None) => Err(error),
                    _ => Ok(()),
                }
            }
        }
    }

    /// The token appends carry: the tenure's while writing (single-writer entities), the
    /// activation's otherwise.
    fn fencing_token(&self, tenure: &Option<Tenure>) -> u64 {
        match tenure {
            Some(_) => fencing_token(tenure),
            None => self.activation_token,
        }
    }

    async fn maybe_snapshot(&self, committed: &mut Committed) {
        let every = self.config.snapshot_every;
        if every == 0 || committed.seq_nr < committed.snapshot_seq_nr + every {
            return;
        }
        let ctx = self.context(self.shared.clock.now(), false, self.observed_role());
        let payload = match self
            .with_resident(committed, |resident| resident.snapshot(&ctx))
            .await
        {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(entity = %self.pid, "snapshot failed: {error}");
                return;
            }
        };
        self.shared.charge(&self.usage, payload.len() as u64);
        let snapshot = SnapshotEnvelope {
            persistence_id: self.pid.clone(),
            seq_nr: committed.seq_nr,
            writer: self.shared.settings.writer_id,
            version: Default::default(),
            seen: Default::default(),
            plugin: committed.plugin.clone(),
            payload,
        };
        match self.shared.journal.save_snapshot(snapshot).await {
            Ok(()) => committed.snapshot_seq_nr = committed.seq_nr,
            // The events are durable; a missing snapshot only makes the next recovery longer.
            Err(error) => tracing::warn!(entity = %self.pid, "snapshot failed: {error}"),
        }
    }

    fn plugin(&self) -> Result<Arc<PluginVersion>, EntityError> {
        Ok(self.shared.plugins.get(&self.config.plugin)?)
    }

    fn context(&self, now: u64, recovery_running: bool, role: Role) -> Context {
        let replica = self.shared.settings.replica.clone();
        Context {
            entity_type: self.entity_type.clone(),
            entity_id: self.entity_id.clone(),
            all_replicas: vec![replica.clone()],
            replica,
            now,
            recovery_running,
            role,
        }
    }

    /// The role events are applied in outside a command: a single-writer entity may be observing.
    fn observed_role(&self) -> Role {
        if self.config.single_writer {
            Role::Observer
        } else {
            Role::Writer
        }
    }

    fn envelope(
        &self,
        seq_nr: u64,
        timestamp: u64,
        fencing_token: u64,
        plugin: &str,
        payload: Vec<u8>,
    ) -> EventEnvelope {
        EventEnvelope {
            persistence_id: self.pid.clone(),
            seq_nr,
            writer: self.shared.settings.writer_id,
            fencing_token,
            timestamp,
            origin_replica: String::new(),
            origin_seq_nr: seq_nr,
            version: Default::default(),
            concurrent: false,
            plugin: plugin.to_owned(),
            payload,
            idempotency: None,
        }
    }
}

/// The first message of a turn and what is queued behind it, up to `max_batch`. A passivation
/// request among them closes the inbox: what was queued before the close is still handled, and
/// then the entity stops.
pub(super) fn take_batch(
    first: Message,
    inbox: &mut mpsc::Receiver<Message>,
    config: &EntityTypeConfig,
    passivating: &mut bool,
    pid: &str,
) -> Vec<Message> {
    let mut batch = vec![first];
    while batch.len() < config.max_batch {
        match inbox.try_recv() {
            Ok(message) => batch.push(message),
            Err(_) => break,
        }
    }
    if !*passivating && batch.iter().any(|m| matches!(m, Message::Passivate)) {
        tracing::debug!(entity = %pid, "passivating on request");
        inbox.close();
        *passivating = true;
    }
    batch
}

/// Closes the inbox and fails every message still queued with `error`.
pub(super) async fn refuse_queued(mut inbox: mpsc::Receiver<Message>, error: EntityError) {
    inbox.close();
    while let Some(message) = inbox.recv().await {
        message.fail(error.clone());
    }
}

/// The token appends carry: the tenure's while writing; 0 for entities without a lease.
pub(super) fn fencing_token(tenure: &Option<Tenure>) -> u64 {
    tenure.as_ref().and_then(Tenure::fencing_token).unwrap_or(0)
}

/// The next lease change of a single-writer entity; pending forever for the others.
pub(super) async fn next_change(tenure: &mut Option<Tenure>) -> TenureChange {
    match tenure.as_mut() {
        Some(tenure) => tenure.next_change().await,
        None => std::future::pending().await,
    }
}

/// Runs guest code, which may take up to its CPU bound, without stalling the other tasks of a
/// multi-threaded runtime.
pub(super) fn run_guest<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|handle| handle.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
