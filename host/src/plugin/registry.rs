//! Plugins by name, each with its current version, and atomic hot swap.
//!
//! Loading compiles off the hot path (the caller runs [`PluginRegistry::load`] on a blocking
//! thread), checks the component, and only then replaces the name's current version in one
//! step. Calls already running hold an `Arc` of the old version and finish on it; the next
//! [`PluginRegistry::get`] returns the new one. No call fails because of a swap. Roll back by
//! loading the old bytes again: the compile cache makes that fast.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::{Instant, UNIX_EPOCH};

use super::engine::PluginRuntime;
use super::error::PluginError;
use super::validate::World;
use super::version::PluginVersion;

/// The outcome of a load.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadReport {
    pub name: String,
    /// `name@hash-prefix` of the version now current.
    pub version: String,
    pub content_hash: String,
    pub world: World,
    /// True when the compiled artifact came from the on-disk cache.
    pub from_cache: bool,
    pub load_ms: f64,
    /// The version this load replaced, if any (equal to `version` when the bytes were the same).
    pub replaced: Option<String>,
}

/// A loaded plugin, as listed by [`PluginRegistry::list`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub content_hash: String,
    pub world: World,
    pub size_bytes: usize,
    pub loaded_at_ms: u64,
}

pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    current: RwLock<BTreeMap<String, Arc<PluginVersion>>>,
}

impl PluginRegistry {
    pub fn new(runtime: Arc<PluginRuntime>) -> Self {
        PluginRegistry {
            runtime,
            current: RwLock::new(BTreeMap::new()),
        }
    }

    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// Compiles, checks and installs `bytes` as the current version of `name`. Blocking.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<LoadReport, PluginError> {
        self.load_checked(name, bytes, None)
    }

    /// Like [`load`](Self::load), but refuses a plugin of another world than `world`, naming
    /// the export it lacks.
    pub fn load_world(
        &self,
        name: &str,
        bytes: &[u8],
        world: World,
    ) -> Result<LoadReport, PluginError> {
        self.load_checked(name, bytes, Some(world))
    }

    fn load_checked(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<World>,
    ) -> Result<LoadReport, PluginError> {
        validate_name(name)?;
        let started = Instant::now();
        let compiled = self.runtime.compile(name, bytes)?;
        let version = Arc::new(PluginVersion::new(
            &self.runtime,
            name,
            &compiled.component,
            compiled.content_hash,
            bytes.len(),
        )?);
        if let Some(expected) = expected.filter(|world| *world != version.world()) {
            return Err(PluginError::Invalid {
                plugin: name.to_owned(),
                reason: format!(
                    "it is a {} plugin: it does not export `{}`, which a {} plugin must",
                    version.world().name(),
                    expected.export(),
                    expected.name()
                ),
            });
        }
        let report = LoadReport {
            name: name.to_owned(),
            version: version.id().to_owned(),
            content_hash: version.content_hash().to_owned(),
            world: version.world(),
            from_cache: compiled.from_cache,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
            replaced: None,
        };
        let replaced = self
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), version);
        let report = LoadReport {
            replaced: replaced.map(|old| old.id().to_owned()),
            ..report
        };
        tracing::info!(
            plugin = %report.version,
            world = report.world.name(),
            from_cache = report.from_cache,
            replaced = report.replaced.as_deref().unwrap_or("-"),
            "plugin loaded in {:.1} ms",
            report.load_ms
        );
        Ok(report)
    }

    /// Loads a `.wasm` file, named after its file stem. Blocking.
    pub fn load_file(&self, path: &Path) -> Result<LoadReport, PluginError> {
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .ok_or_else(|| PluginError::InvalidName(path.display().to_string()))?;
        let bytes = std::fs::read(path)
            .map_err(|e| PluginError::Host(format!("cannot read {}: {e}", path.display())))?;
        self.load(name, &bytes)
    }

    /// The current version of `name`.
    pub fn get(&self, name: &str) -> Result<Arc<PluginVersion>, PluginError> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| PluginError::UnknownPlugin(name.to_owned()))
    }

    pub fn list(&self) -> Vec<PluginInfo> {
        let current = self.current.read().unwrap_or_else(|p| p.into_inner());
        current
            .values()
            .map(|version| PluginInfo {
                name: version.name().to_owned(),
                version: version.id().to_owned(),
                content_hash: version.content_hash().to_owned(),
                world: version.world(),
                size_bytes: version.size_bytes(),
                loaded_at_ms: version
                    .loaded_at()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_millis() as u64)
                    .unwrap_or(0),
            })
            .collect()
    }
}

fn validate_name(name: &str) -> Result<(), PluginError> {
    let valid = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if valid {
        Ok(())
    } else {
        Err(PluginError::InvalidName(name.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_names_are_checked() {
        assert!(validate_name("counter-v2").is_ok());
        assert!(validate_name("").is_err());
        assert!(validate_name("../etc/passwd").is_err());
        assert!(validate_name("Counter").is_err());
        assert!(validate_name(&"x".repeat(65)).is_err());
    }
}
