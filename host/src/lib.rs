//! weft: a WebAssembly-hosted actor platform.
//!
//! The host runs everything that must be correct and fast; users' business logic runs as Wasm
//! components loaded through the WIT contract in `wit/`.
//!
//! # Layout
//! - [`plugin`]: loading, sandboxing, calling and hot-swapping plugins.
//! - [`journal`]: the event journal and snapshots (SQLite, PostgreSQL, in memory), the replay filter.
//! - [`lease`]: named leases with fencing tokens (in memory, PostgreSQL, Redis) and the manager that
//!   keeps one.
//! - [`postgres`]: the connection pool and schema versions the PostgreSQL backends share.
//! - [`entity`]: event-sourced entities: recovery, turns, batching, snapshots, passivation.
//! - [`replication`]: replicated event sourcing's sans-IO core: causal delivery, deterministic merge.
//! - [`cluster`]: the cluster's sans-IO core: node identity, SWIM membership (foca), placement.
//! - [`ddata`]: DistributedData's sans-IO core: replicated CRDT keys, delta push, anti-entropy,
//!   tombstones, consistency levels.
//! - [`api`]: the HTTP API.
//! - [`cli`]: the `weft` command line.
//! - [`node`]: a running node, wired from [`config`].
//! - [`observability`]: log set-up (text or JSON), request ids, latency histograms.
//! - [`deployments`]: plugins and entity types loaded over the API, kept across restarts.
//! - [`clock`]: the node's hybrid logical clock.
//! - [`settings`]: range checks for numeric settings.
//! - [`msgpack`]: MessagePack at the host's edges: checked for one well-formed value, transcoded to
//!   JSON, without value trees and with a depth limit.
//! - `simulation` (tests only): what the cluster's and DistributedData's simulators share.
//! - [`timeline`]: things due at points in time, in order (driver timers, simulator events).

pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod ddata;
pub mod deployments;
pub mod entity;
pub mod journal;
pub mod lease;
pub mod msgpack;
pub mod node;
pub mod observability;
pub mod plugin;
pub mod postgres;
pub mod readiness;
pub mod replication;
pub mod settings;
#[cfg(test)]
mod simulation;
pub mod timeline;
pub mod tls;
pub mod upgrade;
