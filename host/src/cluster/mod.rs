//! The cluster's sans-IO core: who the nodes are, which of them are alive, and which node owns
//! each entity.
//!
//! Nothing here does I/O or reads a clock: membership is fed packets, timer expiries and the time,
//! and returns the packets to send and the timers to set; placement is a pure function of the
//! member list. The transport and the task that drive them live elsewhere.
//!
//! # Layout
//! - [`identity`]: [`NodeName`], [`NodeId`] (name + per-boot ULID incarnation), [`NodeRole`],
//!   [`Member`].
//! - [`membership`]: [`Membership`], SWIM membership and failure detection (the `foca` crate)
//!   behind a sans-IO interface: packets, timers and the time in, [`MembershipAction`]s out.
//! - [`placement`]: rendezvous hashing of `(entity type, entity id)` over the live actor members.
//! - `simulation` (tests only): a deterministic simulator of many nodes on a faulty network, with
//!   invariant checkers and the scenarios run in it.

pub mod identity;
pub mod membership;
pub mod placement;
#[cfg(test)]
mod simulation;

pub use identity::{IdentityError, Member, NodeId, NodeName, NodeRole};
pub use membership::{
    CodecError, Membership, MembershipAction, MembershipConfig, MembershipError, MembershipTimer,
    Seed,
};
pub use placement::owner;
