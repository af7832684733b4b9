//! Where the built plugins are, the compile cache every test shares, call contexts, envelopes
//! and MessagePack. Free of test-only build variables, so benchmark programs include it too.

#![allow(dead_code)] // each test binary and benchmark uses a different subset

use sha2::{Digest, Sha256};
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use weft::plugin::{
    Context, Envelope, EventMeta, PluginRegistry, PluginRuntime, Role, RuntimeLimits,
};

/// `target/plugins/`, where `cargo xtask plugins` puts the built plugins.
pub fn plugins_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugins")
}

/// `target/plugins/<name>.wasm`, built by `cargo xtask plugins` (which `cargo xtask test` runs).
pub fn plugin_path(name: &str) -> PathBuf {
    let path = plugins_dir().join(format!("{name}.wasm"));
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

/// The compile cache shared by every test (and test binary): `target/plugin-cache/`.
///
/// Python and JavaScript components take seconds to compile; through this cache each build of
/// a plugin is compiled once, and every later load deserializes it. Artifacts of plugins that
/// are no longer in `target/plugins/` (rebuilt since) are removed the first time a test process
/// asks for the cache, so it holds about one artifact per plugin.
pub fn shared_compile_cache() -> PathBuf {
    static CACHE: OnceLock<PathBuf> = OnceLock::new();
    CACHE
        .get_or_init(|| {
            let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-cache");
            std::fs::create_dir_all(&dir).expect("create the shared compile cache");
            remove_stale_artifacts(&dir);
            dir
        })
        .clone()
}

/// Removes artifacts (`<content hash>-<engine>.cwasm`) whose content hash is not the hash of
/// a plugin in `target/plugins/`.
fn remove_stale_artifacts(cache: &std::path::Path) {
    let Ok(plugins) = std::fs::read_dir(plugins_dir()) else {
        return;
    };
    let current: HashSet<String> = plugins
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| path.extension().is_some_and(|ext| ext == "wasm"))
        .filter_map(|path| std::fs::read(path).ok())
        .map(|bytes| hex::encode(Sha256::digest(bytes)))
        .collect();
    for entry in std::fs::read_dir(cache).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let hash = name.split('-').next().unwrap_or_default();
        if name.ends_with(".cwasm") && !current.contains(hash) {
            // Another test process may have removed it already.
            let _ = std::fs::remove_file(path);
        }
    }
}

/// The same component with a custom section appended: another content hash, the same
/// behaviour (a rebuild that changed nothing the host runs).
pub fn rebuilt(wasm: &[u8]) -> Vec<u8> {
    let name = b"weft-test-rebuild";
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name);
    section.extend_from_slice(b"second build");
    let mut bytes = wasm.to_vec();
    bytes.push(0); // custom section id
    bytes.push(section.len() as u8); // its size (LEB128, < 128)
    bytes.extend(section);
    bytes
}

/// A registry on a runtime of its own with `limits`, compiling through `cache_dir` if given.
pub fn registry(limits: RuntimeLimits, cache_dir: Option<PathBuf>) -> PluginRegistry {
    let runtime = PluginRuntime::new(limits, cache_dir).expect("runtime");
    PluginRegistry::new(Arc::new(runtime))
}

/// A registry with `limits` and the shared compile cache.
pub fn cached_registry(limits: RuntimeLimits) -> PluginRegistry {
    registry(limits, Some(shared_compile_cache()))
}

/// A registry with the default limits and the shared compile cache, the counter plugin loaded.
pub fn counter_registry() -> Arc<PluginRegistry> {
    let plugins = cached_registry(RuntimeLimits::default());
    plugins
        .load("counter", &plugin_bytes("counter"))
        .expect("load the counter");
    Arc::new(plugins)
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

/// An event of stream `counter|c1` (non-replicated metadata) carrying `payload`.
pub fn envelope(seq_nr: u64, payload: Vec<u8>) -> Envelope {
    Envelope {
        meta: EventMeta {
            persistence_id: "counter|c1".into(),
            seq_nr,
            writer: "01JTESTWRITER".into(),
            fencing_token: 0,
            timestamp: seq_nr << 16,
            origin_replica: String::new(),
            origin_seq_nr: seq_nr,
            version: vec![],
            concurrent: false,
        },
        payload,
    }
}

/// MessagePack with named fields, as guests expect it.
pub fn msgpack(value: &serde_json::Value) -> Vec<u8> {
    rmp_serde::to_vec_named(value).expect("encode")
}

pub fn from_msgpack(bytes: &[u8]) -> serde_json::Value {
    rmp_serde::from_slice(bytes).expect("decode")
}
