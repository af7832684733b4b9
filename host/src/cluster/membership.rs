//! Membership and failure detection: [`Membership`], a sans-IO wrapper around the `foca` crate's
//! SWIM implementation, which turns packets, timer expiries and the time into
//! [`MembershipAction`]s (packets to send, timers to set, members up and down).
//!
//! # What foca does and what this wrapper adds
//!
//! foca runs SWIM with its suspicion and infection-style dissemination extensions: every
//! `probe_period` a node pings one member (round-robin over a shuffled list), asks
//! `indirect_probes` others to ping it if no ack came within `probe_rtt`, marks it *suspect* if
//! neither answered, and declares it *down* if the suspect did not refute within
//! `suspect_to_down_after`. Changes ride on every message (each at most `transmissions_max` times)
//! and on periodic gossip.
//!
//! The wrapper adds:
//!
//! - **Identity.** foca's identity is our [`Member`] record; the "address" foca uses to tell runs of
//!   the same node apart is the [`NodeName`]. A newer incarnation of a name replaces the older one at
//!   once (a restart is seen as a rename, not as a new member next to a dead one), and a node that
//!   learns it was declared down while it is alive renews its incarnation ([`NodeId::renewed`]) and
//!   rejoins by itself.
//! - **A view.** [`Membership::live_members`] is this node plus every member foca considers alive or
//!   suspect (SWIM treats a suspect as alive until it is declared down), sorted by name: the list
//!   placement runs over. Changes to it come out as [`MembershipAction::MemberUp`] and
//!   [`MembershipAction::MemberDown`].
//! - **Seeds and rejoining.** foca joins a cluster by announcing itself to a member it knows; its
//!   own periodic timers stop while it knows no live member. So every `rejoin_interval` the wrapper
//!   re-announces: to every seed and a few members it knows are down when it is alone (a node that
//!   booted while its seeds were unreachable, or the isolated side of a partition), and to one seed
//!   when some known member is down (so a partition whose two sides each still have live members
//!   merges again, and a restarted seed, which knows nobody, is found). Announcing to a member that
//!   already knows us costs one packet each way and changes nothing.
//! - **A codec.** Packets are MessagePack (`rmp-serde`, compact form: fields by position), like the
//!   rest of weft's internal wire; a name from a peer is checked when decoded.
//!
//! The membership trusts its peers: anyone who can send it packets can claim to be a member. Run it
//! on a private network; authenticating packets belongs to the transport.
//!
//! # Driving it
//!
//! Every input (`new`, `announce`, `join`, `handle_data`, `handle_timer`, `leave`) queues actions;
//! drain them with [`Membership::drain_actions`] after each input, in order: send the packets, set
//! the timers (feeding each back through `handle_timer` when it expires — a timer made stale by a
//! later change does nothing), apply the member changes.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::num::{NonZeroU8, NonZeroUsize};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut};
use foca::{Codec, Foca, Header, Identity, NoCustomBroadcast, Notification, Runtime, State, Timer};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::IteratorRandom;
use ulid::Ulid;

use super::identity::{Member, NodeId, NodeName, NodeRole};
use super::suspicion::AdaptiveSuspicion;

/// A node to announce to when joining: its name (the receiver accepts an announcement only if it is
/// addressed to its own name) and the address its membership endpoint listens on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Seed {
    pub name: NodeName,
    pub addr: SocketAddr,
}

impl Seed {
    pub fn new(name: NodeName, addr: SocketAddr) -> Self {
        Self { name, addr }
    }

    /// The identity an announcement is addressed to. Only the name is checked by the receiver, so
    /// the incarnation (unknown before joining) is nil and the role a placeholder.
    fn announce_target(&self) -> Member {
        Member::new(
            NodeId::new(self.name.clone(), Ulid::nil()),
            NodeRole::Actor,
            self.addr,
        )
    }
}

/// How a node runs SWIM. [`MembershipConfig::default`] is tuned for a LAN and up to a few dozen
/// nodes; every value is passed to foca explicitly, so a foca upgrade cannot change one silently.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// How often this node probes one member. Default 1 s (memberlist's LAN value): a crashed node
    /// is probed by someone about once per period.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe. Default 500 ms, half the
    /// period, so the indirect round fits in the same period.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly. Default 3: enough to get around one lossy
    /// link without flooding.
    pub indirect_probes: NonZeroUsize,
    /// How many times each node passes on each membership change. Default 10, above memberlist's
    /// 4 × log10(N + 1) (5 for 20 nodes): memberlist repairs a missed change by a periodic full
    /// state exchange, foca has none, and a node that missed a "down" keeps the dead member until
    /// its own round-robin probe reaches it (up to N periods). With 6, one 20-node run in five had a
    /// node miss a change after a crash (16–35 periods to converge instead of about 8); with 10,
    /// none of 40.
    pub transmissions_max: NonZeroU8,
    /// How long a suspect has to refute before it is declared down. Default 5 s (5 periods, about
    /// memberlist's 4 × log10(N) periods for N up to 20): long enough for the refutation to travel
    /// through a lossy network, short enough that a crash moves entities within seconds.
    pub suspect_to_down_after: Duration,
    /// How long a down member is remembered (a down identity cannot rejoin; a renewed one can at any
    /// time). Default 24 h, foca's default: memory grows with names, not with restarts.
    pub remove_down_after: Duration,
    /// Largest packet sent or accepted. Default 1400 bytes: one UDP datagram under a 1500-byte MTU.
    /// At least [`MembershipConfig::PACKET_BYTES_MIN`].
    pub packet_bytes_max: usize,
    /// How often pending changes are pushed to `gossip_fanout` random members besides piggybacking.
    /// Default 200 ms to 3 members: a change reaches a LAN cluster within a few hundred ms.
    pub gossip_interval: Duration,
    pub gossip_fanout: NonZeroUsize,
    /// How often to announce to one random live member to learn members we missed. Default 10 s.
    pub announce_interval: Duration,
    /// How often to announce to `announce_to_down_fanout` members believed down, so two sides of a
    /// healed partition find each other. Default every 10 s to 2.
    pub announce_to_down_interval: Duration,
    pub announce_to_down_fanout: NonZeroUsize,
    /// How often the wrapper re-announces to the seeds (see the module doc). Default 5 s: an
    /// isolated node retries a few times within the time a crash takes to be detected.
    pub rejoin_interval: Duration,
    /// How many down members, besides the seeds, an isolated node announces to each
    /// `rejoin_interval`. Default 2.
    pub rejoin_down_fanout: usize,
}

impl MembershipConfig {
    /// The smallest `packet_bytes_max` accepted: a packet header can carry three member records
    /// (sender, receiver, and the target of an indirect probe), each up to about 330 bytes with a
    /// 64-character name of 4-byte characters, plus the message.
    pub const PACKET_BYTES_MIN: usize = 1200;

    /// Most seeds accepted: every seed gets a packet each `rejoin_interval` while a node is alone.
    pub const SEEDS_MAX: usize = 16;

    fn validate(&self) -> Result<(), MembershipError> {
        let invalid = |message: String| Err(MembershipError::InvalidConfig(message));
        let durations = [
            ("probe_rtt", self.probe_rtt),
            ("suspect_to_down_after", self.suspect_to_down_after),
            ("remove_down_after", self.remove_down_after),
            ("gossip_interval", self.gossip_interval),
            ("announce_interval", self.announce_interval),
            ("announce_to_down_interval", self.announce_to_down_interval),
            ("rejoin_interval", self.rejoin_interval),
        ];
        if let Some((name, _)) = durations.iter().find(|(_, d)| d.is_zero()) {
            return invalid(format!("{name} must be positive"));
        }
        if self.probe_rtt >= self.probe_period {
            return invalid(format!(
                "probe_rtt {:?} must be below probe_period {:?}",
                self.probe_rtt, self.probe_period
            ));
        }
        if self.packet_bytes_max < Self::PACKET_BYTES_MIN {
            return invalid(format!(
                "packet_bytes_max {} is below the minimum {}",
                self.packet_bytes_max,
                Self::PACKET_BYTES_MIN
            ));
        }
        Ok(())
    }

    fn to_foca(&self) -> foca::Config {
        foca::Config {
            probe_period: self.probe_period,
            probe_rtt: self.probe_rtt,
            num_indirect_probes: self.indirect_probes,
            max_transmissions: self.transmissions_max,
            suspect_to_down_after: self.suspect_to_down_after,
            remove_down_after: Some(self.remove_down_after),
            // Validated against PACKET_BYTES_MIN, so never zero.
            max_packet_size: NonZeroUsize::new(self.packet_bytes_max).unwrap_or(NonZeroUsize::MIN),
            // A member declared down while alive learns it from the next node that ignores it, and
            // renews its incarnation instead of talking to a cluster that no longer listens.
            notify_down_members: true,
            periodic_announce: Some(foca::PeriodicParams {
                frequency: self.announce_interval,
                num_members: NonZeroUsize::MIN,
            }),
            periodic_announce_to_down_members: Some(foca::PeriodicParams {
                frequency: self.announce_to_down_interval,
                num_members: self.announce_to_down_fanout,
            }),
            periodic_gossip: Some(foca::PeriodicParams {
                frequency: self.gossip_interval,
                num_members: self.gossip_fanout,
            }),
        }
    }
}

impl Default for MembershipConfig {
    fn default() -> Self {
        Self {
            probe_period: Duration::from_secs(1),
            probe_rtt: Duration::from_millis(500),
            indirect_probes: const { NonZeroUsize::new(3).unwrap() },
            transmissions_max: const { NonZeroU8::new(10).unwrap() },
            suspect_to_down_after: Duration::from_secs(5),
            remove_down_after: Duration::from_secs(24 * 60 * 60),
            packet_bytes_max: 1400,
            gossip_interval: Duration::from_millis(200),
            gossip_fanout: const { NonZeroUsize::new(3).unwrap() },
            announce_interval: Duration::from_secs(10),
            announce_to_down_interval: Duration::from_secs(10),
            announce_to_down_fanout: const { NonZeroUsize::new(2).unwrap() },
            rejoin_interval: Duration::from_secs(5),
            rejoin_down_fanout: 2,
        }
    }
}

/// Why a membership input failed. Every variant says what happened to the state; actions queued by
/// the input are valid either way and must still be drained.
#[derive(thiserror::Error, Debug)]
pub enum MembershipError {
    /// The configuration or the seed list was refused. Nothing was created.
    #[error("invalid membership configuration: {0}")]
    InvalidConfig(String),
    /// A packet was refused: larger than `packet_bytes_max`, not decodable, malformed, from a node
    /// with our own name, or breaking the protocol. Drop it. Member updates it carried before the
    /// faulty part may have been applied (they are as trustworthy as any other gossip).
    #[error("membership packet refused: {0}")]
    Packet(#[source] foca::Error),
    /// foca reported a fault of its own (an encoding failure, a probe cycle that did not run its
    /// course because a timer was lost). It recovers by itself; a recurring one is a bug in the
    /// driver or here.
    #[error("membership protocol fault: {0}")]
    Protocol(#[source] foca::Error),
}

/// A timer the driver must feed back to [`Membership::handle_timer`] when it expires.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MembershipTimer(TimerKind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum TimerKind {
    /// foca's own timer; foca carries a token in it, so a stale one does nothing.
    Foca(Timer<Member>),
    /// The wrapper's rejoin round; there is only ever one pending.
    Rejoin,
}

/// What the driver of a [`Membership`] must do, in the order drained.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MembershipAction {
    /// Send this packet to the membership endpoint at `to` (best effort: SWIM tolerates loss).
    Send { to: SocketAddr, bytes: Vec<u8> },
    /// Call [`Membership::handle_timer`] with `timer` once `after` has passed.
    ScheduleTimer {
        after: Duration,
        timer: MembershipTimer,
    },
    /// This member is live now (it joined, restarted or renewed its incarnation).
    MemberUp(Member),
    /// This run of a node is not live any more (declared down, left, or superseded by a newer
    /// incarnation of the same name, which comes as its own `MemberUp`).
    MemberDown(NodeId),
}

type Swim = Foca<Member, MemberCodec, StdRng, NoCustomBroadcast>;

/// One node's view of the cluster, kept by SWIM. See the module doc.
pub struct Membership {
    swim: Swim,
    config: MembershipConfig,
    seeds: Vec<Seed>,
    /// Picks the down members an isolated node announces to; foca owns its own generator.
    rng: StdRng,
    actions: VecDeque<MembershipAction>,
    /// This node (unless it left or was declared down for good) and every member foca considers
    /// alive or suspect, sorted by name.
    live: Vec<Member>,
    up_since: BTreeMap<NodeId, Instant>,
    /// Set by foca's notifications; the view is recomputed from foca's member list when set.
    view_stale: bool,
    /// The suspicion timeout in effect, lengthened while down verdicts are contradicted.
    suspicion: AdaptiveSuspicion,
    /// foca declared this node's identity down and it could not renew (or it left): it is no
    /// longer part of its own view.
    defunct: bool,
    left: bool,
}

impl Membership {
    /// The most actions one input may leave queued. One input produces a bounded number (a packet
    /// per seed, a few per probe, one member change per record in a packet); more than this many
    /// pending means the driver stopped draining, a bug worth stopping for before memory grows.
    pub const ACTIONS_MAX: usize = 4096;

    /// A node that is alone until it announces itself. Queues `MemberUp` for itself and the first
    /// rejoin timer; call [`Membership::join`] to announce to the seeds.
    pub fn new(
        local: Member,
        seeds: Vec<Seed>,
        config: MembershipConfig,
        mut rng: StdRng,
        now: Instant,
    ) -> Result<Self, MembershipError> {
        config.validate()?;
        if seeds.len() > MembershipConfig::SEEDS_MAX {
            return Err(MembershipError::InvalidConfig(format!(
                "{} seeds given, at most {} are accepted",
                seeds.len(),
                MembershipConfig::SEEDS_MAX
            )));
        }
        let own_rng = StdRng::from_rng(&mut rng);
        let swim = Foca::new(local.clone(), config.to_foca(), rng, MemberCodec);
        let mut membership = Self {
            swim,
            seeds,
            rng: own_rng,
            actions: VecDeque::new(),
            live: Vec::new(),
            up_since: BTreeMap::new(),
            view_stale: true,
            suspicion: AdaptiveSuspicion::new(config.suspect_to_down_after, now),
            defunct: false,
            left: false,
            config,
        };
        membership.push(MembershipAction::ScheduleTimer {
            after: membership.config.rejoin_interval,
            timer: MembershipTimer(TimerKind::Rejoin),
        });
        membership.refresh_view(now);
        Ok(membership)
    }

    /// This node's current identity (its incarnation changes if it renews).
    pub fn local(&self) -> &Member {
        self.swim.identity()
    }

    /// This node and the members believed alive (including suspects), sorted by name: the list to
    /// place entities over.
    pub fn live_members(&self) -> &[Member] {
        &self.live
    }

    /// The live members some node has reported as suspect and that have not refuted yet: still
    /// live (SWIM gives them `suspect_to_down_after` to answer), but declared down unless they do.
    pub fn suspects(&self) -> impl Iterator<Item = &Member> {
        self.swim
            .iter_members()
            .filter(|member| member.state() == State::Suspect)
            .map(|member| member.id())
    }

    /// When this run of a node entered the live view, if it is in it.
    pub fn up_since(&self, id: &NodeId) -> Option<Instant> {
        self.up_since.get(id).copied()
    }

    /// Announces this node to `seed`, asking to join its cluster. Announcing to our own name does
    /// nothing.
    pub fn announce(&mut self, seed: &Seed, now: Instant) -> Result<(), MembershipError> {
        if seed.name == self.local().id.name {
            return Ok(());
        }
        let (swim, outbox) = self.swim_and_outbox();
        let result = swim
            .announce(seed.announce_target(), outbox)
            .map_err(MembershipError::Protocol);
        self.refresh_view(now);
        result
    }

    /// Announces this node to every seed.
    pub fn join(&mut self, now: Instant) -> Result<(), MembershipError> {
        let seeds = self.seeds.clone();
        self.announce_all(&seeds, now)
    }

    /// Feeds a packet received from the membership endpoint of a peer. Ignored after
    /// [`Membership::leave`].
    pub fn handle_data(&mut self, bytes: &[u8], now: Instant) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let (swim, outbox) = self.swim_and_outbox();
        let result = swim
            .handle_data(bytes, outbox)
            .map_err(|error| match error {
                foca::Error::Encode(_) => MembershipError::Protocol(error),
                other => MembershipError::Packet(other),
            });
        self.refresh_view(now);
        result
    }

    /// Feeds a timer queued by an earlier [`MembershipAction::ScheduleTimer`] that has expired.
    /// Ignored after [`Membership::leave`].
    pub fn handle_timer(
        &mut self,
        timer: MembershipTimer,
        now: Instant,
    ) -> Result<(), MembershipError> {
        if self.left {
            return Ok(());
        }
        let result = match timer.0 {
            TimerKind::Foca(Timer::ChangeSuspectToDown {
                ref member_id,
                incarnation,
                ..
            }) if !self.suspicion_stands(member_id, incarnation) => Ok(()),
            TimerKind::Foca(timer) => {
                let (swim, outbox) = self.swim_and_outbox();
                swim.handle_timer(timer, outbox)
                    .map_err(MembershipError::Protocol)
            }
            TimerKind::Rejoin => self.rejoin_round(now),
        };
        let calmer = self.suspicion.tick(now);
        self.use_suspicion(calmer);
        self.refresh_view(now);
        result
    }

    /// Hands foca a new suspicion timeout, if there is one; later suspicions use it.
    fn use_suspicion(&mut self, timeout: Option<Duration>) {
        let Some(timeout) = timeout else {
            return;
        };
        let config = foca::Config {
            suspect_to_down_after: timeout,
            ..self.config.to_foca()
        };
        // foca refuses only changes of the probe timing or of enabled periodic tasks, which this
        // keeps as they are; a refusal would leave the previous timeout in effect.
        let replaced = self.swim.set_config(config);
        debug_assert!(replaced.is_ok(), "foca refused the suspicion timeout");
    }

    /// Leaves the cluster: tells a few members this node is down, so they do not wait for the
    /// failure detector. This node then drops out of its own view and ignores further packets and
    /// timers (foca would otherwise renew its identity when told it is down, and rejoin); it cannot
    /// come back with this identity (a restart has a new one).
    pub fn leave(&mut self, now: Instant) -> Result<(), MembershipError> {
        self.left = true;
        let (swim, outbox) = self.swim_and_outbox();
        let result = swim
            .leave_cluster(outbox)
            .map_err(MembershipError::Protocol);
        self.refresh_view(now);
        result
    }

    /// Takes the queued actions, oldest first. Drain after every input.
    pub fn drain_actions(&mut self) -> impl Iterator<Item = MembershipAction> + '_ {
        self.actions.drain(..)
    }

    /// Whether `member_id` is still suspect at `incarnation`, so its suspicion timer should declare
    /// it down.
    ///
    /// foca (2.0.0) also answers a suspicion timer whose suspicion was refuted in the meantime: it
    /// declares nothing, but sends the member a `TurnUndead` ("you are down"), and the member,
    /// alive and well, renews its incarnation — every refuted suspicion would turn into a
    /// `MemberDown`/`MemberUp` of a healthy node on every node a few seconds later. So a timer whose
    /// suspicion no longer stands is dropped here; foca would do nothing else with it.
    fn suspicion_stands(&self, member_id: &Member, incarnation: foca::Incarnation) -> bool {
        self.swim.iter_membership_state().any(|member| {
            member.id() == member_id
                && member.incarnation() == incarnation
                && member.state() == State::Suspect
        })
    }

    fn rejoin_round(&mut self, now: Instant) -> Result<(), MembershipError> {
        if self.left || self.defunct {
            // The chain ends: nothing to rejoin as.
            return Ok(());
        }
        self.push(MembershipAction::ScheduleTimer {
            after: self.config.rejoin_interval,
            timer: MembershipTimer(TimerKind::Rejoin),
        });
        let down: Vec<Member> = self
            .swim
            .iter_membership_state()
            .filter(|member| member.state() == State::Down)
            .map(|member| member.id().clone())
            .collect();
        if self.swim.num_members() == 0 {
            let mut targets = self.seeds.clone();
            let fanout = self.config.rejoin_down_fanout;
            targets.extend(
                down.into_iter()
                    .sample(&mut self.rng, fanout)
                    .into_iter()
                    .map(|member| Seed::new(member.id.name, member.addr)),
            );
            self.announce_all(&targets, now)
        } else if !down.is_empty() {
            let own_name = self.local().id.name.clone();
            let seed = self
                .seeds
                .iter()
                .filter(|seed| seed.name != own_name)
                .choose(&mut self.rng)
                .cloned();
            match seed {
                Some(seed) => self.announce(&seed, now),
                None => Ok(()),
            }
        } else {
            Ok(())
        }
    }

    /// Announces to each target, continuing past failures; returns the first.
    fn announce_all(&mut self, targets: &[Seed], now: Instant) -> Result<(), MembershipError> {
        let mut first_error = None;
        for target in targets {
            if let Err(error) = self.announce(target, now) {
                first_error.get_or_insert(error);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// foca and the runtime it writes to for one input, borrowed apart.
    fn swim_and_outbox(&mut self) -> (&mut Swim, Outbox<'_>) {
        let outbox = Outbox {
            actions: &mut self.actions,
            view_stale: &mut self.view_stale,
            defunct: &mut self.defunct,
        };
        (&mut self.swim, outbox)
    }

    fn push(&mut self, action: MembershipAction) {
        push_bounded(&mut self.actions, action);
    }

    /// Recomputes the live view from foca's member list if a notification said it changed, and
    /// queues the differences.
    fn refresh_view(&mut self, now: Instant) {
        if !std::mem::take(&mut self.view_stale) {
            return;
        }
        let mut live: Vec<Member> = self
            .swim
            .iter_members()
            .map(|member| member.id().clone())
            .collect();
        if !self.defunct && !self.left {
            live.push(self.swim.identity().clone());
        }
        live.sort();
        let before = std::mem::replace(&mut self.live, live);
        let has_name = |members: &[Member], name: &NodeName| {
            members.iter().any(|member| member.name() == name)
        };
        let mut longer = None;
        for gone in before
            .iter()
            .filter(|m| self.live.binary_search(m).is_err())
        {
            self.up_since.remove(&gone.id);
            // A newer incarnation replacing an older one is a restart, not a down verdict.
            if !has_name(&self.live, gone.name()) {
                self.suspicion.member_down(gone.name(), now);
            }
            push_bounded(
                &mut self.actions,
                MembershipAction::MemberDown(gone.id.clone()),
            );
        }
        for new in self
            .live
            .iter()
            .filter(|m| before.binary_search(m).is_err())
        {
            self.up_since.insert(new.id.clone(), now);
            if !has_name(&before, new.name()) {
                longer = longer.or(self.suspicion.member_up(new.name(), now));
            }
            push_bounded(&mut self.actions, MembershipAction::MemberUp(new.clone()));
        }
        self.use_suspicion(longer);
    }
}

fn push_bounded(actions: &mut VecDeque<MembershipAction>, action: MembershipAction) {
    assert!(
        actions.len() < Membership::ACTIONS_MAX,
        "{} membership actions pending: drain them after every input",
        actions.len()
    );
    actions.push_back(action);
}

/// The [`Runtime`] foca writes to during one input: straight into the action queue.
struct Outbox<'a> {
    actions: &'a mut VecDeque<MembershipAction>,
    view_stale: &'a mut bool,
    defunct: &'a mut bool,
}

impl Runtime<Member> for Outbox<'_> {
    fn notify(&mut self, notification: Notification<'_, Member>) {
        match notification {
            Notification::Defunct => *self.defunct = true,
            Notification::Rejoin(_) => *self.defunct = false,
            Notification::MemberUp(_)
            | Notification::MemberDown(_)
            | Notification::Rename(_, _)
            | Notification::Active
            | Notification::Idle => {}
        }
        *self.view_stale = true;
    }

    fn send_to(&mut self, to: Member, data: &[u8]) {
        push_bounded(
            self.actions,
            MembershipAction::Send {
                to: to.addr,
                bytes: data.to_vec(),
            },
        );
    }

    fn submit_after(&mut self, event: Timer<Member>, after: Duration) {
        push_bounded(
            self.actions,
            MembershipAction::ScheduleTimer {
                after,
                timer: MembershipTimer(TimerKind::Foca(event)),
            },
        );
    }
}

/// foca tells runs of the same node apart by name: a newer incarnation of a name supersedes the
/// older one, and a node declared down renews to the next incarnation.
impl Identity for Member {
    type Addr = NodeName;

    fn renew(&self) -> Option<Self> {
        Some(Member::new(self.id.renewed()?, self.role, self.addr))
    }

    fn addr(&self) -> NodeName {
        self.id.name.clone()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.id.supersedes(&adversary.id)
    }
}

/// Why a membership packet could not be encoded or decoded.
#[derive(thiserror::Error, Debug)]
pub enum CodecError {
    #[error("cannot encode: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
    /// The item does not fit in what is left of the packet; the buffer is unchanged.
    #[error("{needed_bytes} bytes do not fit in the {remaining_bytes} left in the packet")]
    PacketFull {
        needed_bytes: usize,
        remaining_bytes: usize,
    },
}

/// foca's wire format, as MessagePack. Each item is encoded whole before it is copied into the
/// packet, so an item that does not fit leaves the packet as it was (foca relies on that).
#[derive(Clone, Copy, Debug, Default)]
struct MemberCodec;

impl MemberCodec {
    fn put(item: &impl serde::Serialize, mut buf: impl BufMut) -> Result<(), CodecError> {
        let bytes = rmp_serde::to_vec(item)?;
        if bytes.len() > buf.remaining_mut() {
            return Err(CodecError::PacketFull {
                needed_bytes: bytes.len(),
                remaining_bytes: buf.remaining_mut(),
            });
        }
        buf.put_slice(&bytes);
        Ok(())
    }

    /// Decodes one item from the front of `buf` and advances past it. foca hands over contiguous
    /// packets, so the first chunk is the whole rest of the packet.
    fn take<T: serde::de::DeserializeOwned>(mut buf: impl Buf) -> Result<T, CodecError> {
        let chunk = buf.chunk();
        let mut rest = chunk;
        let item = rmp_serde::from_read(&mut rest)?;
        let consumed = chunk.len() - rest.len();
        buf.advance(consumed);
        Ok(item)
    }
}

impl Codec<Member> for MemberCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<Member>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(header, buf)
    }

    fn decode_header(&mut self, buf: impl Buf) -> Result<Header<Member>, Self::Error> {
        Self::take(buf)
    }

    fn encode_member(
        &mut self,
        member: &foca::Member<Member>,
        buf: impl BufMut,
    ) -> Result<(), Self::Error> {
        Self::put(member, buf)
    }

    fn decode_member(&mut self, buf: impl Buf) -> Result<foca::Member<Member>, Self::Error> {
        Self::take(buf)
    }
}

#[cfg(test)]
mod tests {
    use foca::Message;

    use super::*;

    fn member(name: &str, host: u8) -> Member {
        Member::new(
            NodeId::new(
                NodeName::new(name).expect("valid"),
                Ulid::from_parts(1_000, 42),
            ),
            NodeRole::Actor,
            SocketAddr::from(([10, 0, 0, host], 7946)),
        )
    }

    fn membership(local: Member) -> Membership {
        Membership::new(
            local,
            Vec::new(),
            MembershipConfig::default(),
            StdRng::seed_from_u64(1),
            Instant::now(),
        )
        .expect("a valid configuration")
    }

    fn roundtrip_header(header: &Header<Member>) -> Header<Member> {
        let mut bytes = Vec::new();
        MemberCodec
            .encode_header(header, &mut bytes)
            .expect("encode");
        let mut rest = &bytes[..];
        let decoded = MemberCodec.decode_header(&mut rest).expect("decode");
        assert!(rest.is_empty(), "the decoder consumed the whole header");
        decoded
    }

    #[test]
    fn the_codec_round_trips_every_message() {
        let (a, b, c) = (member("a", 1), member("b", 2), member("c", 3));
        let messages = [
            Message::Ping(7),
            Message::Ack(7),
            Message::PingReq {
                target: c.clone(),
                probe_number: 9,
            },
            Message::IndirectPing {
                origin: a.clone(),
                probe_number: 9,
            },
            Message::IndirectAck {
                target: a.clone(),
                probe_number: 9,
            },
            Message::ForwardedAck {
                origin: c.clone(),
                probe_number: 9,
            },
            Message::Gossip,
            Message::Feed,
            Message::Announce,
            Message::Broadcast,
            Message::TurnUndead,
        ];
        for message in messages {
            let header = Header {
                src: a.clone(),
                src_incarnation: 3,
                dst: b.clone(),
                message,
            };
            assert_eq!(roundtrip_header(&header), header);
        }
        let update = foca::Member::new(c, 2, State::Suspect);
        let mut bytes = Vec::new();
        MemberCodec
            .encode_member(&update, &mut bytes)
            .expect("encode");
        let mut rest = &bytes[..];
        assert_eq!(
            MemberCodec.decode_member(&mut rest).expect("decode"),
            update
        );
        assert!(rest.is_empty());
    }

    #[test]
    fn an_item_that_does_not_fit_leaves_the_packet_unchanged() {
        let mut packet = vec![0xAA; 3];
        let mut limited = (&mut packet).limit(10);
        let update = foca::Member::alive(member("a-rather-long-node-name", 1));
        let error = MemberCodec
            .encode_member(&update, &mut limited)
            .expect_err("does not fit");
        assert!(
            matches!(
                error,
                CodecError::PacketFull {
                    remaining_bytes: 10,
                    ..
                }
            ),
            "{error}"
        );
        assert_eq!(packet, vec![0xAA; 3]);
    }

    #[test]
    fn junk_and_bad_names_from_peers_are_refused_without_changing_the_view() {
        let mut node = membership(member("a", 1));
        let _ = node.drain_actions().count();
        let before = node.live_members().to_vec();

        let refused = node.handle_data(b"\x93not membership", Instant::now());
        assert!(
            matches!(refused, Err(MembershipError::Packet(_))),
            "{refused:?}"
        );

        // A well-formed announcement whose sender's name has a space in it.
        let header = Header {
            src: member("bxb", 2),
            src_incarnation: 0,
            dst: node.local().clone(),
            message: Message::Announce,
        };
        let mut good = Vec::new();
        MemberCodec
            .encode_header(&header, &mut good)
            .expect("encode");
        let at = good
            .windows(3)
            .position(|w| w == b"bxb")
            .expect("the name is in it");
        let mut bad = good.clone();
        bad[at + 1] = b' ';
        let refused = node.handle_data(&bad, Instant::now());
        assert!(
            matches!(refused, Err(MembershipError::Packet(_))),
            "{refused:?}"
        );

        let too_big = vec![0; MembershipConfig::default().packet_bytes_max + 1];
        let refused = node.handle_data(&too_big, Instant::now());
        assert!(matches!(
            refused,
            Err(MembershipError::Packet(foca::Error::DataTooBig))
        ));

        assert_eq!(node.live_members(), before);
        assert_eq!(node.drain_actions().count(), 0);

        // The same packet with a valid name is taken: the sender joins and gets a feed back.
        node.handle_data(&good, Instant::now()).expect("accepted");
        assert_eq!(node.live_members().len(), 2);
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            actions.contains(&MembershipAction::MemberUp(member("bxb", 2))),
            "{actions:?}"
        );
    }

    #[test]
    fn a_new_node_sees_itself_and_schedules_its_first_rejoin() {
        let local = member("a", 1);
        let mut node = membership(local.clone());
        let actions: Vec<_> = node.drain_actions().collect();
        assert_eq!(
            actions,
            vec![
                MembershipAction::ScheduleTimer {
                    after: MembershipConfig::default().rejoin_interval,
                    timer: MembershipTimer(TimerKind::Rejoin),
                },
                MembershipAction::MemberUp(local.clone()),
            ]
        );
        assert_eq!(node.live_members(), std::slice::from_ref(&local));
        assert!(node.up_since(&local.id).is_some());
    }

    #[test]
    fn announcing_to_a_seed_sends_one_packet_and_to_ourselves_none() {
        let mut node = membership(member("a", 1));
        let _ = node.drain_actions().count();
        let own = Seed::new(NodeName::new("a").expect("valid"), member("a", 1).addr);
        node.announce(&own, Instant::now()).expect("announce");
        assert_eq!(node.drain_actions().count(), 0);
        let seed = Seed::new(NodeName::new("b").expect("valid"), member("b", 2).addr);
        node.announce(&seed, Instant::now()).expect("announce");
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            matches!(&actions[..], [MembershipAction::Send { to, .. }] if *to == seed.addr),
            "{actions:?}"
        );
    }

    #[test]
    fn a_node_that_left_drops_out_of_its_view_and_ignores_packets() {
        let local = member("a", 1);
        let mut node = membership(local.clone());
        let announce = Header {
            src: member("b", 2),
            src_incarnation: 0,
            dst: local.clone(),
            message: Message::Announce,
        };
        let mut packet = Vec::new();
        MemberCodec
            .encode_header(&announce, &mut packet)
            .expect("encode");
        node.handle_data(&packet, Instant::now()).expect("accepted");
        let _ = node.drain_actions().count();

        node.leave(Instant::now()).expect("leave");
        let actions: Vec<_> = node.drain_actions().collect();
        assert!(
            actions.contains(&MembershipAction::MemberDown(local.id.clone())),
            "{actions:?}"
        );
        assert!(
            actions.iter().any(
                |a| matches!(a, MembershipAction::Send { to, .. } if *to == member("b", 2).addr)
            ),
            "the goodbye goes to the member we knew: {actions:?}"
        );
        assert!(node.live_members().iter().all(|m| m.id != local.id));

        node.handle_data(&packet, Instant::now()).expect("ignored");
        node.handle_timer(MembershipTimer(TimerKind::Rejoin), Instant::now())
            .expect("ignored");
        assert_eq!(node.drain_actions().count(), 0);
    }

    #[test]
    fn bad_configurations_are_refused() {
        let refuse = |config: MembershipConfig, seeds: Vec<Seed>| {
            Membership::new(
                member("a", 1),
                seeds,
                config,
                StdRng::seed_from_u64(1),
                Instant::now(),
            )
            .err()
        };
        let base = MembershipConfig::default();
        let config = MembershipConfig {
            probe_rtt: base.probe_period,
            ..base.clone()
        };
        assert!(matches!(
            refuse(config, vec![]),
            Some(MembershipError::InvalidConfig(_))
        ));
        let config = MembershipConfig {
            packet_bytes_max: MembershipConfig::PACKET_BYTES_MIN - 1,
            ..base.clone()
        };
        assert!(matches!(
            refuse(config, vec![]),
            Some(MembershipError::InvalidConfig(_))
        ));
        let config = MembershipConfig {
            rejoin_interval: Duration::ZERO,
            ..base.clone()
        };
        assert!(matches!(
            refuse(config, vec![]),
            Some(MembershipError::InvalidConfig(_))
        ));
        let seed = Seed::new(NodeName::new("b").expect("valid"), member("b", 2).addr);
        let seeds = vec![seed; MembershipConfig::SEEDS_MAX + 1];
        assert!(matches!(
            refuse(base, seeds),
            Some(MembershipError::InvalidConfig(_))
        ));
    }

    #[test]
    fn a_renewed_identity_keeps_name_role_and_address_and_wins() {
        let old = member("a", 1);
        let new = old.renew().expect("renewable");
        assert_eq!(
            (new.name(), new.role, new.addr),
            (old.name(), old.role, old.addr)
        );
        assert_eq!(Identity::addr(&new), Identity::addr(&old));
        assert!(new.win_addr_conflict(&old));
        assert!(!old.win_addr_conflict(&new));
    }
}
