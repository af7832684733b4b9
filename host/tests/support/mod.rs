//! Helpers shared by the host's integration tests: where the built plugins are, call contexts, nodes
//! ([`node`]) and throwaway database servers ([`services`]).

#![allow(dead_code)] // each test binary uses a different subset

pub mod node;
pub mod services;

use std::path::PathBuf;
use weft::plugin::{Context, Role};

/// `target/plugins/<name>.wasm`, built by `cargo xtask plugins` (which `cargo xtask test` runs).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../target/plugins")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the plugins with `cargo xtask plugins` (or run `cargo xtask test`)",
        path.display()
    );
    path
}

pub fn plugin_bytes(name: &str) -> Vec<u8> {
    std::fs::read(plugin_path(name)).expect("read plugin")
}

/// A writer context for one entity at HLC time `now`.
pub fn context(entity_type: &str, entity_id: &str, now: u64) -> Context {
    Context {
        entity_type: entity_type.into(),
        entity_id: entity_id.into(),
        replica: "test".into(),
        all_replicas: vec!["test".into()],
        now,
        recovery_running: false,
        role: Role::Writer,
    }
}

/// MessagePack with named fields, as guests expect it.
pub fn msgpack(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encode")
}

pub fn from_msgpack(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(bytes).expect("decode")
}
