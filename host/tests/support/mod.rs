//! Helpers shared by the host's integration tests: plugins and their calls (`plugins`), nodes
//! in this process or as `weft serve` processes (`node`), throwaway database servers
//! (`services`), a seeded generator (`rng`), a host paused mid-call (`pause`), clusters of
//! processes (`cluster`), server-sent event streams (`sse`).

#![allow(dead_code, unused_imports)] // each test binary uses a different subset

pub mod cluster;
pub mod node;
pub mod pause;
mod plugins;
pub mod rng;
pub mod services;
pub mod sse;

pub use plugins::*;
