//! The plugin runtime: user logic compiled to Wasm components, loaded, called safely, and swapped
//! while the host runs.
//!
//! An entity plugin keeps each active entity's state resident in a guest instance (the
//! `resident-entity` interface of `wit/plugin.wit`, what the SDKs build), so a call carries only
//! commands or events; plugins of the first, byte-passing `entity` interface take the state in and
//! out of every call. Instances are pooled per plugin version; the few that hold resident states
//! are held out of the pool while they do. A trapped call cannot corrupt anything: its instance is
//! thrown away, and entities whose state it held recover from the journal.
//!
//! # Layout
//! - `bindings`: the host side of the WIT contract, generated from `wit/`.
//! - `engine`: the one wasmtime `Engine` (pooling allocator, epoch ticker) and the limits every
//!   call runs under.
//! - `compile`: checks that need no compilation, compiles within a budget (bounded concurrency,
//!   a time limit enforced on a child process), and the size-capped on-disk cache keyed by
//!   content hash, written only for accepted plugins.
//! - `sandbox`: what a guest sees of the world — a locked-down WASI with nothing granted, a
//!   deterministic clock and random source per call, captured stderr, a memory cap, the `log`
//!   import.
//! - `limits`: what a guest may hand the host in one call, and the check of its output.
//! - `pool`: instance slots shared by every plugin version: idle instances kept within a
//!   node-wide budget and evicted across versions, a busy share per plugin, bounded waits.
//! - `validate`: checks a component's exports (its world) and imports (an allow-list) at load.
//! - `instance`: a live instance and its exports, typed by world and contract.
//! - `home`: an instance holding many entities' resident states, and its generation.
//! - `resident`: entity state kept in homes between calls ([`Resident`]), and the byte-passing
//!   contract served behind the same handle.
//! - `byte_calls`: the byte-passing calls served by a `resident-entity` plugin, through a
//!   transient resource.
//! - `version`: one loaded plugin version: its `InstancePre`, its instance pool, typed calls.
//! - `registry`: plugins by name, each with its current version; atomic hot swap.
//! - `error`: what can go wrong, worded for the person who wrote the plugin.

mod bindings;
mod byte_calls;
mod compile;
mod engine;
mod envelope;
mod error;
mod home;
mod instance;
mod limits;
mod pool;
mod registry;
mod resident;
mod sandbox;
mod validate;
mod version;

pub use bindings::types::{Context, Envelope, EventMeta, Role, VersionEntry};
pub use bindings::{Decision, LeaseLost, Resolution};
pub use compile::{COMPILE_SUBCOMMAND, compile_in_child_processes, run_child_compile};
pub use engine::{PluginRuntime, RuntimeLimits};
pub use error::PluginError;
pub use limits::{OutputLimit, OutputLimits};
pub use registry::{CheckedBuild, LoadReport, PluginInfo, PluginRegistry, Superseded};
pub use resident::Resident;
pub use validate::World;
pub use version::{PluginVersion, Session};
