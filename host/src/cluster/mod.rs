//! The cluster: who the nodes are, which of them are alive, which node owns each entity, and the
//! transport between them.
//!
//! The core does no I/O and reads no clock: membership is fed packets, timer expiries and the
//! time, and returns the packets to send and the timers to set; placement is a pure function of
//! the member list. [`transport`], [`service`] and [`routing`] are the async shell around it.
//!
//! # Layout
//! - [`identity`]: [`NodeName`], [`NodeId`] (name + per-boot ULID incarnation), [`NodeRole`],
//!   [`Member`].
//! - [`membership`]: [`Membership`], SWIM membership and failure detection (the `foca` crate)
//!   behind a sans-IO interface: packets, timers and the time in, [`MembershipAction`]s out.
//! - [`suspicion`]: [`AdaptiveSuspicion`], the suspicion timeout lengthened while down verdicts
//!   are contradicted (a member's traffic arriving later than the timeout).
//! - [`handoff`]: which active entities a node gives up when its view changes (pure).
//! - [`placement`]: rendezvous hashing of `(entity type, entity id)` over the live actor members.
//! - [`transport`]: length-prefixed MessagePack frames over TCP between nodes: one-way messages and
//!   requests with deadlines, a circuit breaker per peer, and a fault-injection seam.
//! - [`tls`]: [`ClusterTls`], the transport's mutual TLS: `[cluster.tls]`, both ends' rustls
//!   configurations, and the check that a peer's certificate names the node it claims to be.
//! - [`certs`]: `weft cluster certs`, a development CA and node certificates.
//! - [`service`]: [`Cluster`], the task driving membership over the transport, and the view it
//!   publishes; [`ClusterConfig`], the `[cluster]` section of `weft.toml`.
//! - [`replicas`]: [`ClusterPeers`], replicated entities' messages to the other replicas.
//! - [`deployments`]: [`Deployer`], plugin builds deployed under a name on every node: loaded,
//!   recorded, announced, fetched by peers, and caught up on by a node before it joins.
//! - [`routing`]: [`Router`], which runs an entity call here or forwards it to the owner, the
//!   inbound side of forwarded calls, and the hand-off of entities that moved.
//! - `simulation` (tests only): a deterministic simulator of many nodes on a faulty network, with
//!   invariant checkers and the scenarios run in it.

pub mod certs;
pub mod deployments;
pub mod handoff;
pub mod identity;
pub mod membership;
pub mod placement;
pub mod replicas;
pub mod routing;
pub mod service;
#[cfg(test)]
mod simulation;
pub mod suspicion;
pub mod tls;
pub mod transport;

pub use deployments::{Deployer, Deployment};
pub use identity::{IdentityError, Member, NodeId, NodeName, NodeRole};
pub use membership::{
    CodecError, Membership, MembershipAction, MembershipConfig, MembershipError, MembershipTimer,
    Seed,
};
pub use placement::owner;
pub use replicas::ClusterPeers;
pub use routing::{
    NodeInbound, NodeReport, RemoteError, RouteError, Router, hand_off_moved_entities,
};
pub use service::{Cluster, ClusterConfig, ClusterView, SeedConfig, packet_channel};
pub use suspicion::AdaptiveSuspicion;
pub use tls::{ClusterTls, ClusterTlsConfig};
pub use transport::{CircuitBreaker, Faults, Inbound, Refusals, Topic, Transport, TransportError};
