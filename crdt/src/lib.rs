//! weft-crdt: conflict-free replicated data types, version vectors and a hybrid logical clock.
//!
//! Pure: no I/O, no threads, no ambient clock. It builds for the host and for `wasm32-wasip2`, so
//! guests can keep CRDTs inside their own state, and without its default `std` feature it needs
//! only `alloc`.
//!
//! Every type is a state-based CRDT implementing [`Crdt`]: replicas change their copy locally,
//! exchange states (or the small *deltas* every mutator returns) in any order, any number of
//! times, and `merge` them; all replicas that have received the same changes hold equal states.
//!
//! ```
//! use weft_crdt::{Crdt, ORSet, ReplicaId};
//!
//! let (a, b) = (ReplicaId::new("node-a#01"), ReplicaId::new("node-b#01"));
//! let mut cart_a = ORSet::new();
//! let mut cart_b = ORSet::new();
//!
//! let added = cart_a.add("apple", &a);
//! cart_b.merge(&added); // ship the delta
//! cart_b.remove(&"apple"); // b removes what it has seen ...
//! cart_a.add("apple", &a); // ... while a adds it again, concurrently
//! cart_a.add("pear", &a);
//!
//! cart_a.merge(&cart_b);
//! cart_b.merge(&cart_a);
//! assert_eq!(cart_a, cart_b);
//! assert_eq!(cart_a.value(), ["apple", "pear"].into()); // the concurrent add won
//! ```
//!
//! # Layout
//!
//! - `crdt`: the [`Crdt`] trait (merge, partial order, value; deltas).
//! - `replica`: [`ReplicaId`], one per incarnation of a node.
//! - `vclock`: [`VersionVector`] and [`Causality`].
//! - `hlc`: the hybrid logical clock [`Hlc`], its packed [`HlcTimestamp`], and the physical clocks it
//!   reads ([`PhysicalClock`], [`ManualClock`], [`SystemClock`]).
//! - `counter`: [`GCounter`], [`PNCounter`].
//! - `gset`: [`GSet`].
//! - `causal`, `dot_store`: dots, the causal context, and the observed-remove core (with its compact
//!   serialized form) behind the next four types.
//! - `orset`: [`ORSet`], add-wins.
//! - `register`: [`LWWRegister`], [`MVRegister`].
//! - `flag`: [`Flag`], enable-wins.
//! - `map`: [`ORMap`] (values are CRDTs), [`LWWMap`].
//!
//! `docs/crdt.md` in the repository describes the semantics, the HLC encoding, incarnations and
//! pruning, and how guests embed these types.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

mod causal;
mod counter;
mod crdt;
mod dot_store;
mod flag;
mod gset;
mod hlc;
mod map;
mod orset;
mod register;
mod replica;
mod vclock;

#[cfg(test)]
mod laws;

pub use crate::counter::{GCounter, PNCounter};
pub use crate::crdt::Crdt;
pub use crate::flag::Flag;
pub use crate::gset::GSet;
#[cfg(feature = "std")]
pub use crate::hlc::SystemClock;
pub use crate::hlc::{Hlc, HlcError, HlcTimestamp, ManualClock, PhysicalClock};
pub use crate::map::{LWWMap, ORMap};
pub use crate::orset::ORSet;
pub use crate::register::{LWWRegister, MVRegister};
pub use crate::replica::ReplicaId;
pub use crate::vclock::{Causality, VersionVector};
