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
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::engine::PluginRuntime;
use super::error::PluginError;
use super::limits::{OutputLimits, TypeOutputLimits};
use super::pool::{PoolLimits, PoolUsage};
use super::validate::World;
use super::version::{InstancePool, PluginVersion, Shared};

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

/// A loaded plugin, as listed by [`PluginRegistry::list`] (and as a deployment records a load).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PluginInfo {
    pub name: String,
    pub version: String,
    pub content_hash: String,
    pub world: World,
    pub size_bytes: usize,
    pub loaded_at_ms: u64,
}

/// A build compiled and checked by [`PluginRegistry::check`], not yet current.
pub struct CheckedBuild {
    version: Arc<PluginVersion>,
    from_cache: bool,
    /// When its load began, for [`LoadReport::load_ms`].
    started: Instant,
}

impl CheckedBuild {
    pub fn version(&self) -> &Arc<PluginVersion> {
        &self.version
    }
}

/// Why [`PluginRegistry::install`] changed nothing: the name's current version is no longer the
/// one the build was meant to replace.
#[derive(Debug, thiserror::Error)]
#[error(
    "`{name}` changed meanwhile: expected build {expected}, found {}; nothing was changed",
    current.as_deref().unwrap_or("none")
)]
pub struct Superseded {
    pub name: String,
    pub expected: String,
    pub current: Option<String>,
}

pub struct PluginRegistry {
    runtime: Arc<PluginRuntime>,
    /// The instance slots and entity types' own `[limits.output]`, shared by every version.
    shared: Arc<Shared>,
    current: RwLock<BTreeMap<String, Arc<PluginVersion>>>,
}

impl PluginRegistry {
    pub fn new(runtime: Arc<PluginRuntime>) -> Self {
        let limits = runtime.limits();
        let pool = InstancePool::new(PoolLimits {
            slots: limits.max_instances,
            busy_per_plugin: limits.busy_instances_per_plugin_max,
            idle_max: limits.idle_instances_max,
            idle_per_version: limits.idle_instances_per_version,
            idle_bytes_max: limits.idle_memory_bytes_max,
            idle_ttl: Duration::from_millis(limits.idle_instance_ttl_ms),
            wait: Duration::from_millis(limits.instance_wait_ms),
        });
        PluginRegistry {
            runtime,
            shared: Arc::new(Shared {
                pool,
                type_output_limits: TypeOutputLimits::default(),
            }),
            current: RwLock::new(BTreeMap::new()),
        }
    }

    /// Sets (or with `None` clears) what plugins may hand the host in calls for `entity_type`,
    /// instead of the node's `[limits.output]`.
    pub fn set_type_output_limits(&self, entity_type: &str, limits: Option<OutputLimits>) {
        self.shared.type_output_limits.set(entity_type, limits);
    }

    /// The instance slots in use and idle, for metrics.
    pub fn pool_usage(&self) -> PoolUsage {
        self.shared.pool.usage()
    }

    pub fn runtime(&self) -> &Arc<PluginRuntime> {
        &self.runtime
    }

    /// Compiles, checks and installs `bytes` as the current version of `name`. Blocking.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<LoadReport, PluginError> {
        self.load_checked(name, bytes, None)
    }

    /// Like [`load`](Self::load), but refuses a plugin of another world than `needed` (what the
    /// entity types bound to `name` need), naming the export it lacks, before compiling it.
    pub fn load_world(
        &self,
        name: &str,
        bytes: &[u8],
        needed: Option<World>,
    ) -> Result<LoadReport, PluginError> {
        self.load_checked(name, bytes, needed)
    }

    fn load_checked(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<World>,
    ) -> Result<LoadReport, PluginError> {
        let build = self.check(name, bytes, expected)?;
        self.install(build, None)
            .map_err(|superseded| PluginError::Host(superseded.to_string()))
    }

    /// Compiles and checks `bytes` as a load of `name` does, refusing a plugin of another world
    /// than `expected`, but does not make it current: see [`install`](Self::install). Blocking.
    pub fn check(
        &self,
        name: &str,
        bytes: &[u8],
        expected: Option<World>,
    ) -> Result<CheckedBuild, PluginError> {
        validate_name(name)?;
        let started = Instant::now();
        let compiler = self.runtime.compiler();
        // What needs no compilation first: a plugin refused here costs no compile time.
        let inspected = compiler.inspect(name, bytes)?;
        if let Some(expected) = expected.filter(|world| *world != inspected.world) {
            return Err(PluginError::Invalid {
                plugin: name.to_owned(),
                reason: format!(
                    "it is {} plugin, but what is bound to `{name}` needs {} plugin \
                     (exporting {}); nothing was changed",
                    inspected.world.with_article(),
                    expected.with_article(),
                    expected.exports_text(),
                ),
            });
        }
        let compiled = compiler.compile(name, bytes, &inspected.content_hash)?;
        let version = Arc::new(PluginVersion::new(
            &self.runtime,
            self.shared.clone(),
            name,
            inspected.world,
            &compiled.component,
            inspected.content_hash,
            bytes.len(),
        )?);
        let from_cache = compiled.from_cache;
        // Accepted: only now does the compiled artifact go to the cache.
        compiled.keep(compiler.cache());
        Ok(CheckedBuild {
            version,
            from_cache,
            started,
        })
    }

    /// Makes a checked build the current version of its name. With `replacing`, only if the
    /// name's current version still has that content hash (else nothing changes).
    pub fn install(
        &self,
        build: CheckedBuild,
        replacing: Option<&str>,
    ) -> Result<LoadReport, Superseded> {
        let CheckedBuild {
            version,
            from_cache,
            started,
        } = build;
        let name = version.name().to_owned();
        let report = LoadReport {
            name: name.clone(),
            version: version.id().to_owned(),
            content_hash: version.content_hash().to_owned(),
            world: version.world(),
            from_cache,
            load_ms: started.elapsed().as_secs_f64() * 1e3,
            replaced: None,
        };
        let mut current = self.current.write().unwrap_or_else(|p| p.into_inner());
        if let Some(expected) = replacing {
            let now = current.get(&name).map(|v| v.content_hash().to_owned());
            if now.as_deref() != Some(expected) {
                return Err(Superseded {
                    name,
                    expected: expected.to_owned(),
                    current: now,
                });
            }
        }
        let replaced = current.insert(name, version);
        drop(current);
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

    /// Loads a `.wasm` file, named after its file stem. `check` says, for the name and whether a
    /// build of it is loaded, which world it must implement, or why it is refused (see
    /// [`load_world`](Self::load_world)). Blocking.
    pub fn load_file(
        &self,
        path: &Path,
        check: impl FnOnce(&str, bool) -> Result<Option<World>, String>,
    ) -> Result<LoadReport, PluginError> {
        let name = path
            .file_stem()
            .and_then(|stem| stem.to_str())
            .ok_or_else(|| PluginError::InvalidName(path.display().to_string()))?;
        let bytes = std::fs::read(path)
            .map_err(|e| PluginError::Host(format!("cannot read {}: {e}", path.display())))?;
        let needed =
            check(name, self.get(name).is_ok()).map_err(|reason| PluginError::Invalid {
                plugin: name.to_owned(),
                reason,
            })?;
        self.load_checked(name, &bytes, needed)
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
