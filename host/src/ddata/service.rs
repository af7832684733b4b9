//! The DistributedData service of a clustered node: one task that drives the [`Replicator`] —
//! client calls, peer messages over the cluster transport, a tick, membership changes — and keeps
//! the latest value of every subscribed key for its subscribers, and durable keys on disk.
//!
//! The task owns the replicator and the [`Subscribers`]; [`DistributedData`] is the handle callers
//! use. A subscriber holds a [`Subscription`], a watch of the key's latest entry, whose drop frees
//! the key's watch when it was the last.
//!
//! The task runs on the node's task tracker until its token is cancelled (the node's stop, after
//! it left the cluster); it then writes what is queued for the durable keys before it ends.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ulid::Ulid;
use weft_crdt::{Crdt, ReplicaId};

use super::DdataError;
use super::durable::{DdataConfig, DurableStore};
use super::replicator::{Consistency, Replicator, ReplicatorAction, ReplicatorConfig, RequestId};
use super::subscribers::{SUBSCRIBERS_MAX, Subscribers};
use super::value::{DataValue, Entry, Kind, Op};
use crate::cluster::{Cluster, ClusterView, NodeName, Topic};

/// Client calls waiting for the task, at most: beyond that callers are told to retry.
const CALLS_QUEUED_MAX: usize = 1024;

/// Peer messages waiting for the task, at most; beyond that they are dropped (anti-entropy
/// repairs what they carried).
pub const PEER_MESSAGES_QUEUED_MAX: usize = 1024;

/// How often the replicator is ticked: deltas go out this often, so a local write reaches the
/// other nodes within about this long.
const TICK_INTERVAL: Duration = Duration::from_millis(100);

/// Why a DistributedData call failed.
#[derive(Debug, thiserror::Error)]
pub enum DdataCallError {
    /// The replicator refused the call (bad key, wrong kind, a limit): nothing changed.
    #[error(transparent)]
    Refused(#[from] DdataError),
    /// The deadline passed before enough replicas answered. A write is applied on this node
    /// anyway and spreads by gossip; a read returned nothing.
    #[error(
        "{what} of {key:?} at {consistency:?} reached {acks} of the {needed} replicas it needs within \
         {timeout_ms} ms{}",
        if *what == "write" { "; it is applied on this node and spreads by gossip" } else { "" }
    )]
    TimedOut {
        what: &'static str,
        key: String,
        consistency: Consistency,
        acks: usize,
        needed: usize,
        timeout_ms: u64,
    },
    /// The service is behind or stopped; nothing was done.
    #[error("the DistributedData service is {0}; retry")]
    Unavailable(&'static str),
}

enum Call {
    Update {
        key: String,
        kind: Kind,
        op: Op,
        consistency: Consistency,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), DdataCallError>>,
    },
    Delete {
        key: String,
        consistency: Consistency,
        timeout: Duration,
        reply: oneshot::Sender<Result<(), DdataCallError>>,
    },
    Read {
        key: String,
        consistency: Consistency,
        timeout: Duration,
        reply: oneshot::Sender<Result<Option<Entry>, DdataCallError>>,
    },
    Subscribe {
        key: String,
        reply: oneshot::Sender<Result<watch::Receiver<Option<Entry>>, DdataCallError>>,
    },
    /// A subscriber of `key` left: free the key's watch if it was the last.
    Unsubscribe { key: String },
}

/// The handle on a node's DistributedData. Cheap to clone.
#[derive(Clone)]
pub struct DistributedData {
    calls: mpsc::Sender<Call>,
}

impl DistributedData {
    /// Starts the service on `tasks` over `cluster`, fed the DistributedData messages peers sent
    /// through `messages_in`; durable keys live in `store_path`. It runs until `stop` is
    /// cancelled, then flushes the durable keys.
    pub fn start(
        cluster: Cluster,
        messages_in: mpsc::Receiver<PeerMessage>,
        config: DdataConfig,
        store_path: &Path,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<DistributedData> {
        let view = cluster.view();
        let node = view.local.name().clone();
        let replica = ReplicaId::incarnation(node.as_str(), &Ulid::new().to_string());
        let mut replicator = Replicator::new(node, replica, ReplicatorConfig::default(), now_ms());
        // The seeds are members from the start, reachable or not: quorums count them.
        let seeds = &cluster.config().seeds;
        replicator.add_members(seeds.iter().map(|seed| seed.name.clone()));
        let mut addresses: BTreeMap<NodeName, SocketAddr> = seeds
            .iter()
            .map(|seed| (seed.name.clone(), seed.addr))
            .collect();
        remember_addresses(&mut addresses, &view);
        replicator.members_changed(view.members.iter().map(|member| member.name().clone()));
        let store = if config.durable_keys.is_empty() {
            None
        } else {
            let (store, loaded) = DurableStore::open(store_path).with_context(|| {
                format!("cannot open the durable keys at {}", store_path.display())
            })?;
            tracing::info!("ddata: {} durable key(s) reloaded", loaded.len());
            for (key, entry) in loaded {
                if let Err(error) = replicator.load(&key, &entry) {
                    tracing::error!(key, "ddata: a stored key was refused: {error}");
                }
            }
            replicator.drain_actions().for_each(drop);
            Some(store)
        };
        let (calls, calls_in) = mpsc::channel(CALLS_QUEUED_MAX);
        let driver = Driver {
            replicator,
            cluster,
            addresses,
            config,
            store,
            pending_writes: HashMap::new(),
            pending_reads: HashMap::new(),
            subscribers: Subscribers::new(SUBSCRIBERS_MAX),
            tasks: tasks.clone(),
        };
        tasks.spawn(driver.run(calls_in, messages_in, stop));
        Ok(DistributedData { calls })
    }

    /// Applies `op` to `key` (created as `kind` if new) and waits until `consistency` is reached.
    pub async fn update(
        &self,
        key: &str,
        kind: Kind,
        op: Op,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<(), DdataCallError> {
        let key = key.to_owned();
        self.ask(|reply| Call::Update {
            key,
            kind,
            op,
            consistency,
            timeout,
            reply,
        })
        .await
    }

    /// Deletes `key` for good and waits until `consistency` is reached.
    pub async fn delete(
        &self,
        key: &str,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<(), DdataCallError> {
        let key = key.to_owned();
        self.ask(|reply| Call::Delete {
            key,
            consistency,
            timeout,
            reply,
        })
        .await
    }

    /// Reads `key` at `consistency` (`None`: no replica that answered knows it).
    pub async fn get(
        &self,
        key: &str,
        consistency: Consistency,
        timeout: Duration,
    ) -> Result<Option<Entry>, DdataCallError> {
        let key = key.to_owned();
        self.ask(|reply| Call::Read {
            key,
            consistency,
            timeout,
            reply,
        })
        .await
    }

    /// Sends the call `make` builds and waits for its answer.
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, DdataCallError>>) -> Call,
    ) -> Result<T, DdataCallError> {
        let (reply, answer) = oneshot::channel();
        self.call(make(reply))?;
        answer
            .await
            .unwrap_or(Err(DdataCallError::Unavailable("stopped")))
    }

    /// A watch of `key`'s latest entry on this node, starting with the current one. Dropping the
    /// [`Subscription`] frees it.
    pub async fn subscribe(&self, key: &str) -> Result<Subscription, DdataCallError> {
        let values = self
            .ask(|reply| Call::Subscribe {
                key: key.to_owned(),
                reply,
            })
            .await?;
        Ok(Subscription {
            values: Some(values),
            key: key.to_owned(),
            calls: self.calls.clone(),
        })
    }

    fn call(&self, call: Call) -> Result<(), DdataCallError> {
        self.calls.try_send(call).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => DdataCallError::Unavailable("overloaded"),
            mpsc::error::TrySendError::Closed(_) => DdataCallError::Unavailable("stopped"),
        })
    }
}

/// One subscriber of a key: the watch of its latest entry. Dropping it tells the service, which
/// frees the key's watch when this was its last subscriber.
pub struct Subscription {
    /// Always `Some` until dropped: taken in `drop` so the receiver is gone before the service
    /// counts what is left.
    values: Option<watch::Receiver<Option<Entry>>>,
    key: String,
    calls: mpsc::Sender<Call>,
}

impl Subscription {
    /// The watch of the key's latest entry (`None`: the key is not known here).
    pub fn values(&mut self) -> &mut watch::Receiver<Option<Entry>> {
        self.values
            .as_mut()
            .expect("a subscription holds its watch until dropped")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        drop(self.values.take());
        // A full queue loses the notice; the tick's sweep frees the watch then.
        let _ = self.calls.try_send(Call::Unsubscribe {
            key: std::mem::take(&mut self.key),
        });
    }
}

/// A call waiting for its consistency level, with what its timeout error must say.
struct Waiting<T> {
    reply: oneshot::Sender<Result<T, DdataCallError>>,
    key: String,
    consistency: Consistency,
    timeout_ms: u64,
}

struct Driver {
    replicator: Replicator,
    cluster: Cluster,
    /// The last known transport address of every member, live or not: requests at `Majority`
    /// and `All` go to every member, also those the failure detector has given up on.
    addresses: BTreeMap<NodeName, SocketAddr>,
    config: DdataConfig,
    /// Where durable keys are written; `None` when none is configured.
    store: Option<DurableStore>,
    pending_writes: HashMap<RequestId, Waiting<()>>,
    pending_reads: HashMap<RequestId, Waiting<Option<Entry>>>,
    /// Subscribed keys; a key whose subscribers all left is dropped when the last one's
    /// [`Subscription`] is dropped, or by the next tick's sweep.
    subscribers: Subscribers,
    /// Where sends are spawned: the node's tasks.
    tasks: TaskTracker,
}

impl Driver {
    async fn run(
        mut self,
        calls: mpsc::Receiver<Call>,
        messages: mpsc::Receiver<PeerMessage>,
        stop: CancellationToken,
    ) {
        stop.run_until_cancelled(self.serve(calls, messages)).await;
        if let Some(store) = self.store.take() {
            // Dropping the store waits for its writer thread to write what is queued.
            match tokio::task::spawn_blocking(move || drop(store)).await {
                Ok(()) => tracing::info!("ddata: durable keys written"),
                Err(error) => tracing::error!("ddata: writing the durable keys failed: {error}"),
            }
        }
    }

    async fn serve(
        &mut self,
        mut calls: mpsc::Receiver<Call>,
        mut messages: mpsc::Receiver<PeerMessage>,
    ) {
        let mut tick = tokio::time::interval(TICK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut membership = self.cluster.clone();
        loop {
            tokio::select! {
                call = calls.recv() => match call {
                    Some(call) => self.call(call),
                    None => return,
                },
                message = messages.recv() => match message {
                    Some((from, bytes)) => self.message(&from, &bytes),
                    None => return,
                },
                _ = tick.tick() => {
                    self.replicator.tick(now_ms());
                    self.subscribers.sweep();
                }
                view = membership.changed() => match view {
                    Some(view) => {
                        remember_addresses(&mut self.addresses, &view);
                        self.replicator.members_changed(
                            view.members.iter().map(|member| member.name().clone()),
                        );
                    }
                    None => return,
                },
            }
            self.drain();
        }
    }

    fn call(&mut self, call: Call) {
        let now = now_ms();
        let deadline = |timeout: Duration| now.saturating_add(millis(timeout));
        match call {
            Call::Update {
                key,
                kind,
                op,
                consistency,
                timeout,
                reply,
            } => match self
                .replicator
                .update(&key, kind, &op, consistency, deadline(timeout), now)
            {
                Ok(request) => self.wait_write(request, reply, key, consistency, timeout),
                Err(error) => drop(reply.send(Err(error.into()))),
            },
            Call::Delete {
                key,
                consistency,
                timeout,
                reply,
            } => match self
                .replicator
                .delete(&key, consistency, deadline(timeout), now)
            {
                Ok(request) => self.wait_write(request, reply, key, consistency, timeout),
                Err(error) => drop(reply.send(Err(error.into()))),
            },
            Call::Read {
                key,
                consistency,
                timeout,
                reply,
            } => match self
                .replicator
                .read(&key, consistency, deadline(timeout), now)
            {
                Ok(request) => {
                    let waiting = Waiting {
                        reply,
                        key,
                        consistency,
                        timeout_ms: millis(timeout),
                    };
                    self.pending_reads.insert(request, waiting);
                }
                Err(error) => drop(reply.send(Err(error.into()))),
            },
            Call::Subscribe { key, reply } => {
                let replicator = &self.replicator;
                let subscribed = self
                    .subscribers
                    .subscribe(key.clone(), || replicator.get(&key).cloned());
                let _ = reply.send(subscribed.map_err(DdataCallError::from));
            }
            Call::Unsubscribe { key } => self.subscribers.left(&key),
        }
    }

    fn wait_write(
        &mut self,
        request: RequestId,
        reply: oneshot::Sender<Result<(), DdataCallError>>,
        key: String,
        consistency: Consistency,
        timeout: Duration,
    ) {
        let waiting = Waiting {
            reply,
            key,
            consistency,
            timeout_ms: millis(timeout),
        };
        self.pending_writes.insert(request, waiting);
    }

    fn message(&mut self, from: &str, bytes: &[u8]) {
        let Ok(from) = crate::cluster::NodeName::new(from) else {
            return;
        };
        if let Err(error) = self.replicator.handle_message(&from, bytes, now_ms()) {
            tracing::debug!(peer = %from, "ddata: message refused: {error}");
        }
    }

    /// Carries out every queued action.
    fn drain(&mut self) {
        let actions: Vec<ReplicatorAction> = self.replicator.drain_actions().collect();
        for action in actions {
            match action {
                ReplicatorAction::Send { to, bytes } => {
                    let Some(addr) = self.addresses.get(&to).copied() else {
                        continue;
                    };
                    let (transport, name) = (self.cluster.transport().clone(), to.to_string());
                    self.tasks.spawn(async move {
                        // Fire and forget: anti-entropy repairs what is lost.
                        let _ = transport.send(&name, addr, Topic::Ddata, bytes).await;
                    });
                }
                ReplicatorAction::Changed { key, entry } => {
                    if let Some(store) = &self.store
                        && self.config.is_durable(&key)
                    {
                        store.save(&key, &entry);
                    }
                    self.subscribers.changed(&key, entry);
                }
                ReplicatorAction::WriteDone { request } => {
                    if let Some(waiting) = self.pending_writes.remove(&request) {
                        let _ = waiting.reply.send(Ok(()));
                    }
                }
                ReplicatorAction::WriteRefused { request, key } => {
                    if let Some(waiting) = self.pending_writes.remove(&request) {
                        let error = DdataCallError::Refused(DdataError::Deleted { key });
                        let _ = waiting.reply.send(Err(error));
                    }
                }
                ReplicatorAction::ReadDone { request, entry, .. } => {
                    if let Some(waiting) = self.pending_reads.remove(&request) {
                        let _ = waiting.reply.send(Ok(entry));
                    }
                }
                ReplicatorAction::TimedOut {
                    request,
                    acks,
                    needed,
                } => {
                    if let Some(waiting) = self.pending_writes.remove(&request) {
                        let error = timed_out("write", &waiting, acks, needed);
                        let _ = waiting.reply.send(Err(error));
                    } else if let Some(waiting) = self.pending_reads.remove(&request) {
                        let error = timed_out("read", &waiting, acks, needed);
                        let _ = waiting.reply.send(Err(error));
                    }
                }
            }
        }
    }
}

/// Keeps the address of every member of `view` (a restarted member may have a new one).
fn remember_addresses(addresses: &mut BTreeMap<NodeName, SocketAddr>, view: &ClusterView) {
    for member in &view.members {
        addresses.insert(member.name().clone(), member.addr);
    }
}

fn timed_out<T>(
    what: &'static str,
    waiting: &Waiting<T>,
    acks: usize,
    needed: usize,
) -> DdataCallError {
    DdataCallError::TimedOut {
        what,
        key: waiting.key.clone(),
        consistency: waiting.consistency,
        acks,
        needed,
        timeout_ms: waiting.timeout_ms,
    }
}

/// An entry as JSON: counters as numbers, sets as sorted arrays, a register as its value (or
/// null), a flag as a boolean; a deleted key as `{"deleted": true}`.
pub fn entry_to_json(entry: &Entry) -> serde_json::Value {
    use serde_json::json;
    let Some(value) = entry.value() else {
        return json!({"deleted": true});
    };
    let (kind, value) = match value {
        DataValue::GCounter(counter) => (Kind::GCounter, json!(counter.value())),
        DataValue::PNCounter(counter) => (Kind::PNCounter, json!(counter.value())),
        DataValue::GSet(set) => {
            let mut elements: Vec<&String> = set.iter().collect();
            elements.sort();
            (Kind::GSet, json!(elements))
        }
        DataValue::ORSet(set) => {
            let mut elements: Vec<&String> = set.iter().collect();
            elements.sort();
            (Kind::ORSet, json!(elements))
        }
        DataValue::LWWRegister(register) => (Kind::LWWRegister, json!(register.get())),
        DataValue::Flag(flag) => (Kind::Flag, json!(flag.value())),
    };
    json!({"kind": kind, "value": value})
}

/// The kind a new key gets from its first op, when the caller names none.
pub fn default_kind(op: &Op) -> Kind {
    match op {
        Op::Increment { .. } | Op::Decrement { .. } => Kind::PNCounter,
        Op::Add { .. } | Op::Remove { .. } => Kind::ORSet,
        Op::Set { .. } => Kind::LWWRegister,
        Op::Enable | Op::Disable => Kind::Flag,
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(millis)
        .unwrap_or(0)
}

fn millis(duration: Duration) -> u64 {
    duration.as_millis().try_into().unwrap_or(u64::MAX)
}

/// A DistributedData message from a peer: the sending node's name and the bytes.
pub type PeerMessage = (String, Vec<u8>);

/// The channel DistributedData messages travel from the transport to the task.
pub fn message_channel() -> (mpsc::Sender<PeerMessage>, mpsc::Receiver<PeerMessage>) {
    mpsc::channel(PEER_MESSAGES_QUEUED_MAX)
}
