//! The cluster service of a node: one task that drives [`Membership`] over the [`Transport`] —
//! packets in, timers, packets out — and publishes the live view every router reads.
//!
//! The task owns the membership state machine; nothing else touches it. Inbound membership
//! packets reach it through a bounded channel (SWIM tolerates loss, so a full channel drops the
//! packet rather than growing), timers through a heap of deadlines, and it drains every action
//! after each input before it waits again. Sends are spawned (on the node's task tracker) so a
//! slow peer never stalls the protocol.
//!
//! [`Cluster::leave`] (the node's stop) leaves through SWIM: the task tells its peers this node
//! is going, waits (bounded) until those packets went out, and ends. Cancelling the task's token
//! ends it without a word (peers find out through suspicion).

use crate::settings::check_ranges;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use ulid::Ulid;

use super::identity::{Member, NodeId, NodeName, NodeRole};
use super::membership::{Membership, MembershipAction, MembershipConfig, MembershipTimer, Seed};
use super::tls::{ClusterTlsConfig, certifiable_name};
use super::transport::{Topic, Transport};
use crate::timeline::Timeline;

/// Membership packets waiting for the task, at most: a few seconds of traffic for a cluster of
/// dozens of nodes; beyond that packets are dropped, which SWIM survives.
const INBOUND_PACKETS_MAX: usize = 1024;

/// Longest a leaving node waits for its leave packets to go out: a peer that does not take them
/// in that time learns of the leave through suspicion instead.
const LEAVE_SENDS_MAX: Duration = Duration::from_secs(2);

/// The `[cluster]` section of `weft.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// This node's stable name: what placement hashes, so a restarted node gets its entities back.
    pub name: NodeName,
    /// Where the internal transport listens (membership and forwarded commands).
    pub listen: SocketAddr,
    /// `actor` hosts entities; `gateway` only takes HTTP requests and forwards them.
    #[serde(default = "default_role")]
    pub role: NodeRole,
    /// Nodes to announce to when starting; listing this node itself is fine (it is skipped), so
    /// every node can share one list.
    #[serde(default)]
    pub seeds: Vec<SeedConfig>,
    /// SWIM's probe period, in milliseconds (default 1000).
    #[serde(default = "default_probe_period_ms")]
    pub probe_period_ms: u64,
    /// How long a suspect has to refute before it is declared down, in milliseconds (default
    /// 5000): with the probe period, how soon a crashed node's entities move.
    #[serde(default = "default_suspect_to_down_after_ms")]
    pub suspect_to_down_after_ms: u64,
    /// Longest a forwarded command waits for the owner's answer, in milliseconds (default 10000).
    #[serde(default = "default_forward_timeout_ms")]
    pub forward_timeout_ms: u64,
    /// Serves `POST /cluster/faults` so tests can partition this node or drop its frames. Never
    /// in production.
    #[serde(default)]
    pub fault_injection: bool,
    /// Mutual TLS between nodes (`[cluster.tls]`, docs/security.md).
    #[serde(default)]
    pub tls: Option<ClusterTlsConfig>,
    /// Lets the transport listen on a non-loopback address without TLS: anyone who reaches it
    /// could join the cluster. Without TLS and without this, only a loopback `listen` starts.
    #[serde(default)]
    pub allow_plaintext: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SeedConfig {
    pub name: NodeName,
    pub addr: SocketAddr,
}

fn default_role() -> NodeRole {
    NodeRole::Actor
}
fn default_probe_period_ms() -> u64 {
    1_000
}
fn default_suspect_to_down_after_ms() -> u64 {
    5_000
}
fn default_forward_timeout_ms() -> u64 {
    10_000
}

impl ClusterConfig {
    /// Refuses numeric settings outside what membership and routing can honour, naming the
    /// range; a transport open to other machines without TLS unless allowed by name; and, with
    /// TLS, a node name no certificate can carry.
    pub fn validate(&self) -> Result<(), String> {
        match &self.tls {
            Some(_) => certifiable_name(self.name.as_str())?,
            None if !self.listen.ip().is_loopback() && !self.allow_plaintext => {
                return Err(format!(
                    "[cluster] listen = \"{}\" is reachable from other machines, and without \
                     TLS anyone who reaches it could join the cluster: add [cluster.tls] \
                     (`weft cluster certs` makes a development CA and node certificates; \
                     docs/security.md), or set [cluster] allow_plaintext = true on a network \
                     you trust",
                    self.listen
                ));
            }
            None => {}
        }
        check_ranges(
            "cluster",
            &[
                ("probe_period_ms", self.probe_period_ms, 10..=60_000),
                (
                    "suspect_to_down_after_ms",
                    self.suspect_to_down_after_ms,
                    10..=600_000,
                ),
                ("forward_timeout_ms", self.forward_timeout_ms, 1..=600_000),
            ],
        )
    }

    fn membership(&self) -> MembershipConfig {
        let probe_period = Duration::from_millis(self.probe_period_ms.max(2));
        MembershipConfig {
            probe_period,
            probe_rtt: probe_period / 2,
            suspect_to_down_after: Duration::from_millis(self.suspect_to_down_after_ms),
            rejoin_interval: (probe_period * 5).min(Duration::from_secs(5)),
            ..MembershipConfig::default()
        }
    }

    pub fn forward_timeout(&self) -> Duration {
        Duration::from_millis(self.forward_timeout_ms)
    }
}

/// What a node knows about its cluster right now.
#[derive(Debug, Clone)]
pub struct ClusterView {
    pub local: Member,
    /// This node and every member believed alive, sorted by name.
    pub members: Vec<Member>,
}

impl ClusterView {
    pub fn member(&self, id: &NodeId) -> Option<&Member> {
        self.members.iter().find(|member| &member.id == id)
    }
}

/// A handle on the running cluster service. Cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    view: watch::Receiver<Arc<ClusterView>>,
    transport: Transport,
    config: Arc<ClusterConfig>,
    /// Asks the membership task to leave; answered once the leave packets went out.
    leave: mpsc::Sender<oneshot::Sender<()>>,
    /// The node's tasks, and the token that stops the cluster's (see [`Cluster::spawn`]).
    tasks: TaskTracker,
    stop: CancellationToken,
}

impl Cluster {
    /// Starts the membership task over `transport` on `tasks`, fed the packets peers sent
    /// through `packets_in` (see [`packet_channel`]), and announces to the seeds. The task runs
    /// until [`Cluster::leave`] or until `stop` is cancelled.
    pub fn start(
        config: ClusterConfig,
        transport: Transport,
        packets_in: mpsc::Receiver<Vec<u8>>,
        tasks: &TaskTracker,
        stop: CancellationToken,
    ) -> anyhow::Result<Cluster> {
        let local = Member::new(
            NodeId::new(config.name.clone(), Ulid::new()),
            config.role,
            transport.local_addr(),
        );
        let seeds: Vec<Seed> = config
            .seeds
            .iter()
            .map(|seed| Seed::new(seed.name.clone(), seed.addr))
            .collect();
        let names: BTreeMap<SocketAddr, String> = seeds
            .iter()
            .map(|seed| (seed.addr, seed.name.to_string()))
            .collect();
        let rng = StdRng::seed_from_u64(Ulid::new().random() as u64);
        let now = Instant::now();
        let mut membership = Membership::new(local.clone(), seeds, config.membership(), rng, now)?;
        if let Err(error) = membership.join(now) {
            tracing::warn!("cluster: announcing to the seeds failed: {error}");
        }
        let (view_tx, view) = watch::channel(Arc::new(ClusterView {
            members: membership.live_members().to_vec(),
            local,
        }));
        let driver = Driver {
            membership,
            transport: transport.clone(),
            timers: Timeline::default(),
            names,
            view: view_tx,
            tasks: tasks.clone(),
        };
        let (leave, leave_requests) = mpsc::channel(1);
        tasks.spawn(
            stop.clone()
                .run_until_cancelled_owned(driver.run(packets_in, leave_requests)),
        );
        Ok(Cluster {
            view,
            transport,
            config: Arc::new(config),
            leave,
            tasks: tasks.clone(),
            stop,
        })
    }

    /// Runs `task` among the node's tasks until it ends or the cluster's tasks stop (after the
    /// node left): the node's stop waits for it.
    pub fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .spawn(self.stop.clone().run_until_cancelled_owned(task));
    }

    /// Leaves the cluster through SWIM: tells the peers this node is going, so they drop it from
    /// their views at once rather than after suspecting it, and ends the membership task.
    /// Returns once the leave packets went out (bounded); false if the task had ended already.
    pub async fn leave(&self) -> bool {
        let (done, left) = oneshot::channel();
        if self.leave.send(done).await.is_err() {
            return false;
        }
        left.await.is_ok()
    }

    pub fn view(&self) -> Arc<ClusterView> {
        self.view.borrow().clone()
    }

    /// Waits for the next change of the view; `None` once the service stopped.
    pub async fn changed(&mut self) -> Option<Arc<ClusterView>> {
        self.view.changed().await.ok()?;
        Some(self.view.borrow_and_update().clone())
    }

    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    pub fn config(&self) -> &ClusterConfig {
        &self.config
    }
}

/// The channel membership packets travel from the transport to the task.
pub fn packet_channel() -> (mpsc::Sender<Vec<u8>>, mpsc::Receiver<Vec<u8>>) {
    mpsc::channel(INBOUND_PACKETS_MAX)
}

struct Driver {
    membership: Membership,
    transport: Transport,
    /// Pending timers by deadline.
    timers: Timeline<Instant, MembershipTimer>,
    /// Node names by transport address, for the transport's per-name fault rules.
    names: BTreeMap<SocketAddr, String>,
    view: watch::Sender<Arc<ClusterView>>,
    /// Where sends are spawned: the node's tasks.
    tasks: TaskTracker,
}

impl Driver {
    async fn run(
        mut self,
        mut packets: mpsc::Receiver<Vec<u8>>,
        mut leave: mpsc::Receiver<oneshot::Sender<()>>,
    ) {
        self.drain();
        loop {
            let next = self.timers.next_at();
            tokio::select! {
                request = leave.recv() => {
                    let Some(done) = request else { return };
                    self.leave().await;
                    // Nobody may wait any more; that is fine.
                    let _ = done.send(());
                    return;
                }
                packet = packets.recv() => {
                    let Some(packet) = packet else { return };
                    if let Err(error) = self.membership.handle_data(&packet, Instant::now()) {
                        tracing::debug!("cluster: {error}");
                    }
                }
                () = sleep_until(next) => {
                    let now = Instant::now();
                    while let Some((_, timer)) = self.timers.pop_due(now) {
                        if let Err(error) = self.membership.handle_timer(timer, now) {
                            tracing::debug!("cluster: {error}");
                        }
                    }
                }
            }
            self.drain();
        }
    }

    /// Leaves through SWIM and waits, bounded, until the packets saying so went out.
    async fn leave(&mut self) {
        if let Err(error) = self.membership.leave(Instant::now()) {
            tracing::warn!("cluster: leaving failed, peers will suspect this node: {error}");
        }
        let sends = self.drain();
        let sent = tokio::time::timeout(LEAVE_SENDS_MAX, futures::future::join_all(sends)).await;
        if sent.is_err() {
            tracing::warn!(
                "cluster: the leave did not reach every peer within {LEAVE_SENDS_MAX:?}; they will suspect this node"
            );
        }
    }

    /// Carries out every queued action, then publishes the view if it changed. Returns the
    /// sends it spawned.
    fn drain(&mut self) -> Vec<tokio::task::JoinHandle<()>> {
        let mut sends = Vec::new();
        let mut changed = false;
        let actions: Vec<MembershipAction> = self.membership.drain_actions().collect();
        for action in actions {
            match action {
                MembershipAction::Send { to, bytes } => {
                    let name = self
                        .names
                        .get(&to)
                        .cloned()
                        .unwrap_or_else(|| to.to_string());
                    let transport = self.transport.clone();
                    sends.push(self.tasks.spawn(async move {
                        // Best effort: SWIM tolerates lost packets.
                        let _ = transport.send(&name, to, Topic::Membership, bytes).await;
                    }));
                }
                MembershipAction::ScheduleTimer { after, timer } => {
                    self.timers.push(Instant::now() + after, timer);
                }
                MembershipAction::MemberUp(member) => {
                    tracing::info!("cluster: {member} is up");
                    self.names.insert(member.addr, member.name().to_string());
                    changed = true;
                }
                MembershipAction::MemberDown(id) => {
                    tracing::warn!("cluster: {id} is down");
                    changed = true;
                }
            }
        }
        if changed {
            let view = ClusterView {
                local: self.membership.local().clone(),
                members: self.membership.live_members().to_vec(),
            };
            self.view.send_replace(Arc::new(view));
        }
        sends
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}
