//! A deterministic simulator for [`Membership`]: virtual time, one seeded generator, and an
//! in-memory network between named nodes that drops, duplicates, delays (and so reorders) and
//! partitions packets. It boots, crashes, restarts and stops nodes, and drives every running node's
//! `Membership` exactly as a real driver would: feed the input, drain every action.
//!
//! Everything that happens follows from the seed: a failing run replays with
//! `WEFT_SIM_SEED=<seed>` (see [`for_each_seed`]). What a correct cluster must look like is checked
//! by [`checks`], which only reads the simulation; nothing here decides whether a run passed.

pub mod checks;
mod scenarios;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};
use ulid::Ulid;

use super::identity::{Member, NodeId, NodeName, NodeRole};
use super::membership::{Membership, MembershipAction, MembershipConfig, MembershipError, Seed};
use super::{handoff, placement};
pub use crate::simulation::{Faults, for_each_seed};
use crate::timeline::Timeline;

/// Counters of what happened, for reports and sanity checks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub packets_sent: u64,
    pub packets_dropped: u64,
    pub packets_duplicated: u64,
    pub packets_delivered: u64,
    /// Packets a node refused ([`MembershipError::Packet`]).
    pub packets_refused: u64,
    /// [`MembershipError::Protocol`] faults reported by any node.
    pub protocol_faults: u64,
    pub boots: u64,
    pub crashes: u64,
}

/// One named node: its fixed address and role, and its running [`Membership`], if it runs.
pub struct SimNode {
    pub name: NodeName,
    pub addr: SocketAddr,
    pub role: NodeRole,
    /// Counts boots, so a timer set by an earlier run of the node is dropped.
    boot: u64,
    last_incarnation: Option<Ulid>,
    pub membership: Option<Membership>,
    /// The live set as the node's `MemberUp`/`MemberDown` actions describe it, rebuilt from the
    /// actions alone; [`checks`] compares it with `Membership::live_members`.
    pub reported: BTreeSet<NodeId>,
    /// The entities this node hosts: activated by calls routed to it, given up by the hand-off
    /// rule when its view changes (as `routing` does in a real node).
    pub active: BTreeSet<(String, String)>,
}

impl SimNode {
    pub fn is_running(&self) -> bool {
        self.membership.is_some()
    }
}

#[derive(Debug)]
enum EventKind {
    Deliver {
        to: SocketAddr,
        from: NodeName,
        bytes: Vec<u8>,
    },
    Timer {
        node: NodeName,
        boot: u64,
        timer: super::membership::MembershipTimer,
    },
}

/// Milliseconds since the Unix epoch at virtual time zero, for incarnation ULIDs: a fixed date, so
/// runs replay bit for bit.
const EPOCH_MS: u64 = 1_750_000_000_000;

pub struct Simulation {
    rng: StdRng,
    /// Virtual time zero; only offsets from it are ever used.
    start: Instant,
    now: Duration,
    pub config: MembershipConfig,
    pub nodes: BTreeMap<NodeName, SimNode>,
    by_addr: BTreeMap<SocketAddr, NodeName>,
    seeds: Vec<Seed>,
    events: Timeline<Duration, EventKind>,
    pub faults: Faults,
    /// Nodes in the same group talk; `None` means no partition.
    groups: Option<BTreeMap<NodeName, u8>>,
    pub stats: Stats,
    in_flight_packets: usize,
    events_handled: u64,
    /// `WEFT_SIM_TRACE=1` prints boots, crashes, partitions and every node's member changes, with
    /// the virtual time, to follow a replayed run.
    trace: bool,
}

impl Simulation {
    /// Most packets in flight at once; beyond it a packet is lost, as a full queue loses it. Far
    /// above what 20 nodes produce (a few hundred per second of virtual time, each in flight for at
    /// most `delay_ms_max`), so it only stops a run that went wrong from eating memory.
    pub const IN_FLIGHT_PACKETS_MAX: usize = 100_000;

    /// Most events one run may handle, a guard against a livelock (a zero-delay timer loop): a
    /// 20-node run of a few minutes of virtual time handles well under a million.
    pub const EVENTS_MAX: u64 = 20_000_000;

    /// `count` nodes named `node-00`, `node-01`, …, all actors, the first `seed_count` of them the
    /// seeds. No node runs yet.
    pub fn new(seed: u64, count: usize, seed_count: usize, config: MembershipConfig) -> Self {
        let mut nodes = BTreeMap::new();
        let mut by_addr = BTreeMap::new();
        let mut seeds = Vec::new();
        for index in 0..count {
            let name = NodeName::new(format!("node-{index:02}")).expect("a valid name");
            let host = u8::try_from(index + 1).expect("at most 254 nodes");
            let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, host), 7946));
            if index < seed_count {
                seeds.push(Seed::new(name.clone(), addr));
            }
            by_addr.insert(addr, name.clone());
            nodes.insert(
                name.clone(),
                SimNode {
                    name,
                    addr,
                    role: NodeRole::Actor,
                    boot: 0,
                    last_incarnation: None,
                    membership: None,
                    reported: BTreeSet::new(),
                    active: BTreeSet::new(),
                },
            );
        }
        Self {
            rng: StdRng::seed_from_u64(seed),
            start: Instant::now(),
            now: Duration::ZERO,
            config,
            nodes,
            by_addr,
            seeds,
            events: Timeline::default(),
            faults: Faults::none(),
            groups: None,
            stats: Stats::default(),
            in_flight_packets: 0,
            events_handled: 0,
            trace: std::env::var_os("WEFT_SIM_TRACE").is_some(),
        }
    }

    pub fn now(&self) -> Duration {
        self.now
    }

    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn names(&self) -> Vec<NodeName> {
        self.nodes.keys().cloned().collect()
    }

    pub fn is_seed(&self, name: &NodeName) -> bool {
        self.seeds.iter().any(|seed| &seed.name == name)
    }

    pub fn running(&self) -> impl Iterator<Item = &SimNode> {
        self.nodes.values().filter(|node| node.is_running())
    }

    /// Starts `name` with a new incarnation (later than any it had) and announces it to the seeds.
    pub fn boot(&mut self, name: &NodeName) {
        let now = self.instant();
        let random: u128 = self.rng.random();
        let membership_seed: u64 = self.rng.random();
        let seeds = self.seeds.clone();
        let config = self.config.clone();
        let node = self.nodes.get_mut(name).expect("a known node");
        assert!(!node.is_running(), "{name} is already running");
        // A restarted process draws its ULID from a wall clock that moved on; model that as at
        // least one millisecond after the previous boot.
        let mut ms = EPOCH_MS + u64::try_from(self.now.as_millis()).expect("fits");
        if let Some(last) = node.last_incarnation {
            ms = ms.max(last.timestamp_ms() + 1);
        }
        let incarnation = Ulid::from_parts(ms, random);
        node.last_incarnation = Some(incarnation);
        node.boot += 1;
        node.reported.clear();
        let local = Member::new(NodeId::new(name.clone(), incarnation), node.role, node.addr);
        let membership = Membership::new(
            local,
            seeds,
            config,
            StdRng::seed_from_u64(membership_seed),
            now,
        )
        .expect("a valid configuration");
        node.membership = Some(membership);
        self.stats.boots += 1;
        self.log(format_args!("{name} boots as {incarnation}"));
        self.after_input(name, Ok(()));
        let result = self.with_membership(name, |membership, now| membership.join(now));
        self.after_input(name, result);
    }

    /// Stops `name` at once, as `kill -9` would: no goodbye, its timers and queued packets die
    /// with it.
    pub fn crash(&mut self, name: &NodeName) {
        self.log(format_args!("{name} crashes"));
        self.stop(name);
        self.stats.crashes += 1;
    }

    /// Leaves the cluster gracefully, sends the goodbye packets, then stops.
    pub fn leave(&mut self, name: &NodeName) {
        self.log(format_args!("{name} leaves"));
        let result = self.with_membership(name, |membership, now| membership.leave(now));
        self.after_input(name, result);
        self.stop(name);
    }

    fn stop(&mut self, name: &NodeName) {
        let node = self.nodes.get_mut(name).expect("a known node");
        assert!(node.is_running(), "{name} is not running");
        node.membership = None;
        node.reported.clear();
        node.active.clear();
    }

    /// A call for `key` arrives at the running node `caller`: its view names the owner, which
    /// activates the entity — and gives it up at once if its own view names another owner (the
    /// caller's view was behind). Nothing happens if the named owner does not run.
    pub fn route(&mut self, caller: &NodeName, key: &(String, String)) {
        let Some(owner) = self
            .nodes
            .get(caller)
            .and_then(|node| node.membership.as_ref())
            .and_then(|membership| placement::owner(&key.0, &key.1, membership.live_members()))
            .map(|owner| owner.name.clone())
        else {
            return;
        };
        let Some(node) = self.nodes.get_mut(&owner) else {
            return;
        };
        let Some(membership) = node.membership.as_ref() else {
            return;
        };
        let local = membership.local().id.clone();
        if !handoff::owned_elsewhere(&key.0, &key.1, membership.live_members(), &local) {
            node.active.insert(key.clone());
        }
    }

    /// Runs one `step` at a time until `check` passes, at most `steps_max` steps; returns how many
    /// steps it took, or the check's last complaint.
    pub fn run_until(
        &mut self,
        step: Duration,
        steps_max: u32,
        check: impl Fn(&Simulation) -> Result<(), String>,
    ) -> Result<u32, String> {
        for steps in 1..=steps_max {
            self.run_for(step)?;
            if check(self).is_ok() {
                return Ok(steps);
            }
        }
        Err(format!(
            "not within {steps_max} steps of {step:?} (at {:?}): {}",
            self.now,
            check(self).err().unwrap_or_default()
        ))
    }

    /// Splits the cluster: the nodes in `side` talk only among themselves, the rest likewise.
    /// Packets already in flight across the cut are lost when they arrive.
    pub fn partition(&mut self, side: &BTreeSet<NodeName>) {
        let groups = self
            .nodes
            .keys()
            .map(|name| (name.clone(), u8::from(side.contains(name))))
            .collect();
        self.groups = Some(groups);
        self.log(format_args!("partition: {side:?} apart"));
    }

    pub fn heal(&mut self) {
        self.groups = None;
        self.log(format_args!("partition healed"));
    }

    fn log(&self, what: std::fmt::Arguments<'_>) {
        if self.trace {
            println!("{:>10.3}s {what}", self.now.as_secs_f64());
        }
    }

    /// Runs every event due within the next `duration` of virtual time.
    pub fn run_for(&mut self, duration: Duration) -> Result<(), String> {
        let until = self.now + duration;
        while let Some((at, kind)) = self.events.pop_due(until) {
            self.events_handled += 1;
            if self.events_handled > Self::EVENTS_MAX {
                return Err(format!(
                    "more than {} events: a livelock? (at {:?})",
                    Self::EVENTS_MAX,
                    self.now
                ));
            }
            self.now = at;
            self.handle(kind);
        }
        self.now = until;
        Ok(())
    }

    fn handle(&mut self, event: EventKind) {
        match event {
            EventKind::Deliver { to, from, bytes } => {
                self.in_flight_packets -= 1;
                let Some(name) = self.by_addr.get(&to).cloned() else {
                    self.stats.packets_dropped += 1;
                    return;
                };
                let running = self.nodes.get(&name).is_some_and(SimNode::is_running);
                if !running || self.cut(&from, &name) {
                    self.stats.packets_dropped += 1;
                    return;
                }
                self.stats.packets_delivered += 1;
                let result = self
                    .with_membership(&name, |membership, now| membership.handle_data(&bytes, now));
                self.after_input(&name, result);
            }
            EventKind::Timer { node, boot, timer } => {
                let current = self
                    .nodes
                    .get(&node)
                    .is_some_and(|n| n.is_running() && n.boot == boot);
                if current {
                    let result = self.with_membership(&node, |membership, now| {
                        membership.handle_timer(timer, now)
                    });
                    self.after_input(&node, result);
                }
            }
        }
    }

    fn instant(&self) -> Instant {
        self.start + self.now
    }

    fn with_membership(
        &mut self,
        name: &NodeName,
        input: impl FnOnce(&mut Membership, Instant) -> Result<(), MembershipError>,
    ) -> Result<(), MembershipError> {
        let now = self.instant();
        let membership = self
            .nodes
            .get_mut(name)
            .and_then(|node| node.membership.as_mut())
            .expect("a running node");
        input(membership, now)
    }

    /// Counts the input's outcome and carries out every action it queued.
    fn after_input(&mut self, name: &NodeName, result: Result<(), MembershipError>) {
        match result {
            Ok(()) => {}
            Err(MembershipError::Packet(_)) => self.stats.packets_refused += 1,
            Err(MembershipError::Protocol(_)) => self.stats.protocol_faults += 1,
            Err(error @ MembershipError::InvalidConfig(_)) => {
                panic!("the simulation configured {name} wrongly: {error}")
            }
        }
        let node = self.nodes.get_mut(name).expect("a known node");
        let boot = node.boot;
        let Some(membership) = node.membership.as_mut() else {
            return;
        };
        let actions: Vec<MembershipAction> = membership.drain_actions().collect();
        for action in actions {
            match action {
                MembershipAction::Send { to, bytes } => self.send(name, to, bytes),
                MembershipAction::ScheduleTimer { after, timer } => {
                    let at = self.now + after;
                    self.push(
                        at,
                        EventKind::Timer {
                            node: name.clone(),
                            boot,
                            timer,
                        },
                    );
                }
                MembershipAction::MemberUp(member) => {
                    self.log(format_args!("{name}: up {}", member.id));
                    let reported = &mut self.nodes.get_mut(name).expect("known").reported;
                    reported.insert(member.id);
                    self.hand_off(name);
                }
                MembershipAction::MemberDown(id) => {
                    self.log(format_args!("{name}: down {id}"));
                    let reported = &mut self.nodes.get_mut(name).expect("known").reported;
                    reported.remove(&id);
                    self.hand_off(name);
                }
            }
        }
    }

    /// Applies the hand-off rule after a change of `name`'s view.
    fn hand_off(&mut self, name: &NodeName) {
        let node = self.nodes.get_mut(name).expect("a known node");
        let Some(membership) = node.membership.as_ref() else {
            return;
        };
        let local = membership.local().id.clone();
        for key in handoff::moved_away(&node.active, membership.live_members(), &local) {
            node.active.remove(&key);
        }
    }

    fn send(&mut self, from: &NodeName, to: SocketAddr, bytes: Vec<u8>) {
        self.stats.packets_sent += 1;
        let cut = self
            .by_addr
            .get(&to)
            .is_some_and(|target| self.cut(from, target));
        if cut || self.rng.random_range(0..1000) < self.faults.drop_per_mille {
            self.stats.packets_dropped += 1;
            return;
        }
        let copies = if self.rng.random_range(0..1000) < self.faults.duplicate_per_mille {
            self.stats.packets_duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            if self.in_flight_packets >= Self::IN_FLIGHT_PACKETS_MAX {
                self.stats.packets_dropped += 1;
                continue;
            }
            let delay_ms = self
                .rng
                .random_range(self.faults.delay_ms_min..=self.faults.delay_ms_max);
            let at = self.now + Duration::from_millis(delay_ms);
            self.in_flight_packets += 1;
            self.push(
                at,
                EventKind::Deliver {
                    to,
                    from: from.clone(),
                    bytes: bytes.clone(),
                },
            );
        }
    }

    fn cut(&self, a: &NodeName, b: &NodeName) -> bool {
        self.groups
            .as_ref()
            .is_some_and(|groups| groups.get(a) != groups.get(b))
    }

    fn push(&mut self, at: Duration, kind: EventKind) {
        self.events.push(at, kind);
    }
}
