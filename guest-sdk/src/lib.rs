//! weft-guest: write weft plugins in Rust.
//!
//! A plugin author defines serde types for state, commands, events and replies, implements
//! [`Entity`] (or [`Resolver`]) on a unit struct, and exports it with one macro. The SDK hides the
//! WIT bindings and the MessagePack encoding (named fields, the same bytes a Python or JavaScript
//! guest reads). The same handler code runs natively in `cargo test`, with no wasm involved.
//!
//! ```
//! use weft_guest::{Context, Decision, Entity};
//!
//! struct Counter;
//!
//! impl Entity for Counter {
//!     type State = i64;
//!     type Command = i64;
//!     type Event = i64;
//!     type Reply = i64;
//!     type Error = String;
//!
//!     fn handle(state: &i64, _: &Context, by: i64) -> Result<Decision<i64, i64>, String> {
//!         Ok(Decision::emit(vec![by], state + by))
//!     }
//!
//!     fn apply(state: i64, _: &Context, by: &i64) -> i64 {
//!         state + by
//!     }
//! }
//!
//! weft_guest::export_entity!(Counter);
//! ```
//!
//! Enable the cargo feature of the world the plugin implements: `entity` or `resolver`. A plugin
//! exports exactly one world, and each feature links that world's component type into the wasm.
//!
//! # Layout
//! - [`context`]: what a handler knows about where and when it runs ([`Context`], [`EventMeta`]).
//! - [`entity`]: the [`Entity`] trait, [`Decision`] and the lease-lost [`Notice`].
//! - [`resident`]: an entity's state kept in the guest between calls, and the batch of commands
//!   run against it (what `export_entity!` exports).
//! - [`resolver`]: the [`Resolver`] trait and [`Resolution`].
//! - [`codec`]: MessagePack with named fields, as the host expects it.
//! - `bindings`: the generated WIT glue, one module per world (private).

// Lets the generated bindings name this crate the same way from inside and from plugins.
extern crate self as weft_guest;

pub mod codec;
pub mod context;
pub mod entity;
pub mod resident;
pub mod resolver;

#[cfg(any(feature = "entity", feature = "resolver"))]
mod bindings;

pub use context::{Context, Envelope, EventMeta, LeaseLost, Role};
pub use entity::{Decision, Entity, Notice};
pub use resolver::{Resolution, Resolver};
/// CRDTs a plugin can keep inside its state.
pub use weft_crdt as crdt;

/// Log levels of [`log`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Warn,
    Error,
}

/// Writes a line to the host's log, tagged with the plugin and entity by the host.
///
/// Natively (in unit tests) the line goes to stderr.
pub fn log(level: Level, message: &str) {
    #[cfg(all(target_arch = "wasm32", any(feature = "entity", feature = "resolver")))]
    bindings::log(level, message);
    #[cfg(not(all(target_arch = "wasm32", any(feature = "entity", feature = "resolver"))))]
    eprintln!("[{level:?}] {message}");
}

/// Items the export macros expand to; not part of the public API.
#[doc(hidden)]
pub mod __private {
    #[cfg(any(feature = "entity", feature = "resolver"))]
    pub use crate::bindings::*;
    pub use wit_bindgen;
}
