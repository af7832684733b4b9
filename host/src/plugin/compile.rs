//! Compiling plugins within a budget, and the on-disk cache of compiled artifacts.
//!
//! An upload is checked in the order of what the checks cost. First what needs no compilation:
//! its size, that it is a component, what it imports (an allow-list) and exports (the world it
//! implements), and the size of its functions' bodies — all read with `wasmparser`, so a
//! component that could never load costs no compile time. Then it is compiled, at most
//! `compiles_at_once` at a time (further loads wait their turn), each within
//! `compile_timeout_ms`. In a `weft` process the compile runs in a child process of the same
//! binary ([`compile_in_child_processes`]), which is killed when its time is up, so a component
//! built to make the compiler work for minutes costs the node that bound and no more; embedded
//! elsewhere (tests), it runs on the calling thread.
//!
//! Nothing is written to the cache until the registry has accepted the plugin ([`Compiled::keep`]):
//! a refused upload leaves nothing on disk. The cache holds at most `compile_cache_bytes_max`;
//! the artifacts used least recently go first.

use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime};
use wasmtime::Engine;
use wasmtime::component::Component;

use super::engine::RuntimeLimits;
use super::error::PluginError;
use super::validate::{self, World};

/// The executable that compiles components in child processes, when one was named.
static COMPILER_EXECUTABLE: OnceLock<PathBuf> = OnceLock::new();

/// The name of the hidden `weft` subcommand a child compile runs.
pub const COMPILE_SUBCOMMAND: &str = "compile-plugin";

/// Makes every runtime of this process compile in child processes running
/// `<executable> compile-plugin …`, which [`run_child_compile`] serves. Called by `weft serve`.
pub fn compile_in_child_processes(executable: PathBuf) {
    let _ = COMPILER_EXECUTABLE.set(executable);
}

/// What the checks before compilation learned.
pub struct Inspected {
    pub world: World,
    pub content_hash: String,
}

/// A compiled component, not yet in the cache.
pub struct Compiled {
    pub component: Component,
    pub content_hash: String,
    pub from_cache: bool,
    /// Where the artifact goes once the plugin is accepted, and what is there to write.
    pending: Option<(PathBuf, Artifact)>,
}

enum Artifact {
    /// Written by a child compile into a temporary file beside the cache.
    File(PathBuf),
    /// Compiled on this thread: serialized when kept.
    InMemory,
}

impl Compiled {
    /// Puts the artifact in the cache: the plugin was accepted. Errors are logged, not returned:
    /// a cache that cannot be written costs a recompile at the next load, nothing else.
    pub fn keep(mut self, cache: &CompileCache) {
        let Some((path, artifact)) = self.pending.take() else {
            return;
        };
        let written = match artifact {
            Artifact::File(tmp) => std::fs::rename(&tmp, &path).map_err(anyhow::Error::from),
            Artifact::InMemory => write_artifact(&self.component, &path),
        };
        match written {
            Ok(()) => cache.evict_beyond_budget(&path),
            Err(error) => {
                tracing::warn!(path = %path.display(), "cannot write the compile cache: {error}")
            }
        }
    }
}

impl Drop for Compiled {
    fn drop(&mut self) {
        // Not kept: a child's artifact of a refused plugin is removed.
        if let Some((_, Artifact::File(tmp))) = &self.pending {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

/// The compile cache directory and its budget.
pub struct CompileCache {
    dir: Option<PathBuf>,
    bytes_max: u64,
}

impl CompileCache {
    /// Removes the least recently used artifacts until the cache fits its budget; `keep` stays.
    fn evict_beyond_budget(&self, keep: &Path) {
        let Some(dir) = &self.dir else { return };
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        let mut artifacts: Vec<(SystemTime, u64, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "cwasm"))
            .filter_map(|entry| {
                let meta = entry.metadata().ok()?;
                Some((meta.modified().ok()?, meta.len(), entry.path()))
            })
            .collect();
        let mut total: u64 = artifacts.iter().map(|(_, len, _)| len).sum();
        artifacts.sort();
        for (_, len, path) in artifacts {
            if total <= self.bytes_max {
                break;
            }
            if path != keep && std::fs::remove_file(&path).is_ok() {
                tracing::info!(path = %path.display(), "compile cache over its budget: artifact removed");
                total -= len;
            }
        }
    }
}

/// Compiles components: the checks before compiling, the budget, the cache.
pub struct Compiler {
    engine: Engine,
    limits: RuntimeLimits,
    cache: CompileCache,
    /// Compiles that may start now.
    free_slots: Mutex<usize>,
    slot_freed: Condvar,
    /// One lock per content hash being compiled: a second load of the same bytes waits for the
    /// first and then reads its artifact, instead of compiling again.
    compiling: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Compiler {
    pub fn new(
        engine: Engine,
        limits: RuntimeLimits,
        cache_dir: Option<PathBuf>,
    ) -> anyhow::Result<Self> {
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create cache dir {}: {e}", dir.display()))?;
        }
        Ok(Compiler {
            engine,
            free_slots: Mutex::new(limits.compiles_at_once),
            slot_freed: Condvar::new(),
            cache: CompileCache {
                dir: cache_dir,
                bytes_max: limits.compile_cache_bytes_max,
            },
            limits,
            compiling: Mutex::new(HashMap::new()),
        })
    }

    pub fn cache(&self) -> &CompileCache {
        &self.cache
    }

    /// The checks that need no compilation.
    pub fn inspect(&self, plugin: &str, bytes: &[u8]) -> Result<Inspected, PluginError> {
        if bytes.len() > self.limits.component_bytes_max {
            return Err(PluginError::Invalid {
                plugin: plugin.to_owned(),
                reason: format!(
                    "it is {} bytes, more than component_bytes_max = {}",
                    bytes.len(),
                    self.limits.component_bytes_max
                ),
            });
        }
        let world =
            validate::check_before_compile(plugin, bytes, self.limits.function_body_bytes_max)?;
        Ok(Inspected {
            world,
            content_hash: hex::encode(Sha256::digest(bytes)),
        })
    }

    /// Compiles `bytes`, or loads the artifact compiled earlier for the same bytes and engine.
    /// Slow when uncached (milliseconds to seconds): call it off the hot path.
    pub fn compile(
        &self,
        plugin: &str,
        bytes: &[u8],
        content_hash: &str,
    ) -> Result<Compiled, PluginError> {
        let Some(cached) = self.cache_path(content_hash) else {
            return self.compile_within_budget(plugin, bytes, content_hash, None);
        };
        let gate = self
            .compiling
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(content_hash.to_owned())
            .or_default()
            .clone();
        let compiled = {
            let _turn = gate.lock().unwrap_or_else(|p| p.into_inner());
            self.load_or_compile(plugin, bytes, content_hash, cached)
        };
        let mut compiling = self.compiling.lock().unwrap_or_else(|p| p.into_inner());
        // Ours and the map's: nobody else waits on this hash.
        if Arc::strong_count(&gate) <= 2 {
            compiling.remove(content_hash);
        }
        compiled
    }

    /// The cached artifact at `cached` if it is usable, else a fresh compile to be kept there.
    fn load_or_compile(
        &self,
        plugin: &str,
        bytes: &[u8],
        content_hash: &str,
        cached: PathBuf,
    ) -> Result<Compiled, PluginError> {
        if cached.exists() {
            // SAFETY: the cache directory holds only artifacts this host serialized with an
            // engine of the same configuration (the file name carries the engine's
            // compatibility hash); wasmtime checks the header and version again on load.
            // Like wasmtime's own cache, the directory must not be writable by others.
            match unsafe { Component::deserialize_file(&self.engine, &cached) } {
                Ok(component) => {
                    // Recently used: the last to be evicted.
                    let _ = std::fs::File::options()
                        .write(true)
                        .open(&cached)
                        .and_then(|file| file.set_modified(SystemTime::now()));
                    return Ok(Compiled {
                        component,
                        content_hash: content_hash.to_owned(),
                        from_cache: true,
                        pending: None,
                    });
                }
                Err(error) => tracing::warn!(
                    plugin, path = %cached.display(), "ignoring unusable compile cache entry: {error}"
                ),
            }
        }
        self.compile_within_budget(plugin, bytes, content_hash, Some(cached))
    }

    /// Waits for a compile slot, then compiles in a child process (when this process has a
    /// compiler executable and a cache directory to hand the artifact over in) or here.
    fn compile_within_budget(
        &self,
        plugin: &str,
        bytes: &[u8],
        content_hash: &str,
        cache_to: Option<PathBuf>,
    ) -> Result<Compiled, PluginError> {
        let _slot = self.take_slot(plugin);
        let started = Instant::now();
        let (component, artifact) = match (COMPILER_EXECUTABLE.get(), &cache_to) {
            (Some(executable), Some(cached)) => {
                let tmp = temporary_path(cached);
                let component = self.compile_in_child(plugin, bytes, executable, &tmp);
                (component, Artifact::File(tmp))
            }
            _ => (
                Component::new(&self.engine, bytes).map_err(|error| PluginError::Invalid {
                    plugin: plugin.to_owned(),
                    reason: format!("not a valid component: {error:#}"),
                }),
                Artifact::InMemory,
            ),
        };
        let pending = cache_to.map(|path| (path, artifact));
        let compiled = Compiled {
            component: match component {
                Ok(component) => component,
                Err(error) => {
                    // Dropping the pending artifact removes a child's temporary file.
                    drop(pending);
                    return Err(error);
                }
            },
            content_hash: content_hash.to_owned(),
            from_cache: false,
            pending,
        };
        tracing::debug!(
            plugin,
            "compiled in {:.1} ms",
            started.elapsed().as_secs_f64() * 1e3
        );
        Ok(compiled)
    }

    /// Runs `<executable> compile-plugin` on `bytes`, killing it when `compile_timeout_ms` is
    /// up, and loads the artifact it wrote to `artifact`.
    fn compile_in_child(
        &self,
        plugin: &str,
        bytes: &[u8],
        executable: &Path,
        artifact: &Path,
    ) -> Result<Component, PluginError> {
        let host = |reason: String| PluginError::Host(format!("compiling `{plugin}`: {reason}"));
        let input = PathBuf::from(format!("{}.wasm", artifact.display()));
        std::fs::write(&input, bytes)
            .map_err(|e| host(format!("cannot write {}: {e}", input.display())))?;
        let limits = serde_json::to_string(&self.limits).map_err(|e| host(e.to_string()))?;
        let spawned = Command::new(executable)
            .arg(COMPILE_SUBCOMMAND)
            .arg(&limits)
            .arg(&input)
            .arg(artifact)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn();
        let outcome = match spawned {
            Ok(child) => self.wait_for_child(plugin, child),
            Err(error) => Err(host(format!("cannot start the compiler process: {error}"))),
        };
        let _ = std::fs::remove_file(&input);
        outcome?;
        // SAFETY: the child is this same executable, which wrote the artifact with an engine of
        // this configuration just now, into a directory only this host writes.
        unsafe { Component::deserialize_file(&self.engine, artifact) }
            .map_err(|error| host(format!("cannot load the compiled artifact: {error:#}")))
    }

    fn wait_for_child(
        &self,
        plugin: &str,
        mut child: std::process::Child,
    ) -> Result<(), PluginError> {
        let timeout = Duration::from_millis(self.limits.compile_timeout_ms);
        let deadline = Instant::now() + timeout;
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(_)) => {
                    let mut stderr = String::new();
                    if let Some(mut pipe) = child.stderr.take() {
                        use std::io::Read;
                        let _ = pipe.by_ref().take(16 << 10).read_to_string(&mut stderr);
                    }
                    return Err(PluginError::Invalid {
                        plugin: plugin.to_owned(),
                        reason: format!("not a valid component: {}", stderr.trim()),
                    });
                }
                Ok(None) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5))
                }
                Ok(None) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(PluginError::Invalid {
                        plugin: plugin.to_owned(),
                        reason: format!(
                            "compiling it took longer than compile_timeout_ms = {} ms, so it \
                             was stopped",
                            self.limits.compile_timeout_ms
                        ),
                    });
                }
                Err(error) => {
                    let _ = child.kill();
                    return Err(PluginError::Host(format!(
                        "waiting for the compiler of `{plugin}`: {error}"
                    )));
                }
            }
        }
    }

    /// Waits for one of the `compiles_at_once` slots; the guard gives it back.
    fn take_slot(&self, plugin: &str) -> SlotGuard<'_> {
        let mut free = self.free_slots.lock().unwrap_or_else(|p| p.into_inner());
        if *free == 0 {
            tracing::info!(
                plugin,
                "waiting for a compile slot (compiles_at_once = {})",
                self.limits.compiles_at_once
            );
        }
        while *free == 0 {
            free = self
                .slot_freed
                .wait(free)
                .unwrap_or_else(|p| p.into_inner());
        }
        *free -= 1;
        SlotGuard(self)
    }

    fn cache_path(&self, content_hash: &str) -> Option<PathBuf> {
        let dir = self.cache.dir.as_ref()?;
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        self.engine
            .precompile_compatibility_hash()
            .hash(&mut hasher);
        Some(dir.join(format!("{content_hash}-{:016x}.cwasm", hasher.finish())))
    }
}

struct SlotGuard<'a>(&'a Compiler);

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        *self.0.free_slots.lock().unwrap_or_else(|p| p.into_inner()) += 1;
        self.0.slot_freed.notify_one();
    }
}

/// The `compile-plugin` child: compiles the component in `input` with an engine configured by
/// `limits_json` (the parent's), and writes the artifact to `output`.
pub fn run_child_compile(limits_json: &str, input: &Path, output: &Path) -> anyhow::Result<()> {
    let limits: RuntimeLimits = serde_json::from_str(limits_json)?;
    let engine = Engine::new(&super::engine::engine_config(&limits))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let bytes = std::fs::read(input)?;
    let artifact = engine
        .precompile_component(&bytes)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    std::fs::write(output, artifact)?;
    Ok(())
}

/// A unique temporary name beside `path`: two hosts may write the same artifact at once.
fn temporary_path(path: &Path) -> PathBuf {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    let write = WRITES.fetch_add(1, Ordering::Relaxed);
    path.with_extension(format!("tmp-{}-{write}", std::process::id()))
}

/// Writes through a temporary file and a rename, so a crash never leaves half an artifact and a
/// reader never maps a file being written.
fn write_artifact(component: &Component, path: &Path) -> anyhow::Result<()> {
    let bytes = component
        .serialize()
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let tmp = temporary_path(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}
