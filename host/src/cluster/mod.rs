//! The cluster's sans-IO core: who the nodes are, which of them are alive, and which node owns
//! each entity.
//!
//! Nothing here does I/O or reads a clock: placement is a pure function of the member list. The
//! transport and the task that drive the cluster live elsewhere.
//!
//! # Layout
//! - [`identity`]: [`NodeName`], [`NodeId`] (name + per-boot ULID incarnation), [`NodeRole`],
//!   [`Member`].
//! - [`placement`]: rendezvous hashing of `(entity type, entity id)` over the live actor members.

pub mod identity;
pub mod placement;

pub use identity::{IdentityError, Member, NodeId, NodeName, NodeRole};
pub use placement::owner;
