//! Deployments that outlast a restart: every plugin loaded over the API (its bytes, kept by
//! content hash) and every entity type bound over the API, recorded under
//! `<data_dir>/deployments/` and applied again when the node starts — after `weft.toml`'s
//! entity types and the plugins directory, since they were made later.
//!
//! `manifest.json` holds the history of each plugin name (hash, world, size, when) and the
//! bindings; it is rewritten whole through a temporary file and a rename, so a crash leaves the
//! old manifest or the new one. Plugin bytes are written (the same way) before the record that
//! names them.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::entity::EntityTypeConfig;
use crate::plugin::{LoadReport, PluginInfo};

#[derive(Debug, Default, Serialize, Deserialize)]
struct Manifest {
    /// Every load over the API, oldest first (`loaded_at_ms`: when it was loaded); the last of a
    /// name is its current version.
    plugins: Vec<PluginInfo>,
    bindings: BTreeMap<String, EntityTypeConfig>,
    /// The cluster-wide order of each name's current version: the hybrid-logical-clock time it
    /// was deployed (see [`crate::cluster::deployments`]).
    #[serde(default)]
    stamps: BTreeMap<String, u64>,
}

/// The deployments of one node.
pub struct Deployments {
    dir: PathBuf,
    manifest: Mutex<Manifest>,
}

impl Deployments {
    /// Opens (or creates) `<data_dir>/deployments/`.
    pub fn open(data_dir: &Path) -> anyhow::Result<Deployments> {
        let dir = data_dir.join("deployments");
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        let path = dir.join("manifest.json");
        let manifest = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!("{} is not a deployments manifest: {e}", path.display())
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(error) => anyhow::bail!("cannot read {}: {error}", path.display()),
        };
        Ok(Deployments {
            dir,
            manifest: Mutex::new(manifest),
        })
    }

    /// Records a plugin deployed at `stamp` (loaded over the API here, or received from a peer),
    /// keeping its bytes.
    pub fn record_plugin(
        &self,
        report: &LoadReport,
        bytes: &[u8],
        stamp: u64,
    ) -> std::io::Result<()> {
        let wasm = self.wasm_path(&report.content_hash);
        if !wasm.exists() {
            write_atomically(&wasm, bytes)?;
        }
        let record = PluginInfo {
            name: report.name.clone(),
            version: report.version.clone(),
            content_hash: report.content_hash.clone(),
            world: report.world,
            size_bytes: bytes.len(),
            loaded_at_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        self.update(|manifest| {
            manifest.stamps.insert(record.name.clone(), stamp);
            manifest.plugins.push(record);
        })
    }

    /// Records an entity type bound over the API.
    pub fn record_binding(
        &self,
        entity_type: &str,
        config: &EntityTypeConfig,
    ) -> std::io::Result<()> {
        self.update(|manifest| {
            manifest
                .bindings
                .insert(entity_type.to_owned(), config.clone());
        })
    }

    /// The current version of every plugin loaded over the API, with the file holding its bytes,
    /// in the order they were loaded.
    pub fn current_plugins(&self) -> Vec<(PluginInfo, PathBuf)> {
        let manifest = self.lock();
        let mut current: Vec<&PluginInfo> = Vec::new();
        for record in &manifest.plugins {
            current.retain(|earlier| earlier.name != record.name);
            current.push(record);
        }
        current
            .into_iter()
            .map(|record| (record.clone(), self.wasm_path(&record.content_hash)))
            .collect()
    }

    /// The deployment stamp of each name's current version.
    pub fn stamps(&self) -> BTreeMap<String, u64> {
        self.lock().stamps.clone()
    }

    /// The entity types bound over the API.
    pub fn bindings(&self) -> BTreeMap<String, EntityTypeConfig> {
        self.lock().bindings.clone()
    }

    /// Every load of `name` over the API, oldest first.
    pub fn history(&self, name: &str) -> Vec<PluginInfo> {
        self.lock()
            .plugins
            .iter()
            .filter(|record| record.name == name)
            .cloned()
            .collect()
    }

    /// The version of `name` before its current one: the latest load of it over the API whose
    /// build differs from the current build, with the file holding its bytes. So a rollback,
    /// recorded as a load, makes a second rollback return to the build rolled back from.
    pub fn previous_version(&self, name: &str) -> Option<(PluginInfo, PathBuf)> {
        let history = self.history(name);
        let (current, earlier) = history.split_last()?;
        let previous = earlier
            .iter()
            .rev()
            .find(|record| record.content_hash != current.content_hash)?;
        Some((previous.clone(), self.wasm_path(&previous.content_hash)))
    }

    fn wasm_path(&self, content_hash: &str) -> PathBuf {
        self.dir.join(format!("{content_hash}.wasm"))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Manifest> {
        self.manifest.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Changes the manifest and writes it; on a failed write the change is undone.
    fn update(&self, change: impl FnOnce(&mut Manifest)) -> std::io::Result<()> {
        let mut manifest = self.lock();
        let before = serde_json::to_vec(&*manifest).map_err(std::io::Error::other)?;
        change(&mut manifest);
        let after = serde_json::to_vec_pretty(&*manifest).map_err(std::io::Error::other)?;
        if let Err(error) = write_atomically(&self.dir.join("manifest.json"), &after) {
            *manifest = serde_json::from_slice(&before).map_err(std::io::Error::other)?;
            return Err(error);
        }
        Ok(())
    }
}

/// Writes through a temporary file, synced, and a rename.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugin::World;

    fn report(name: &str, hash: &str) -> LoadReport {
        LoadReport {
            name: name.into(),
            version: format!("{name}@{}", &hash[..4]),
            content_hash: hash.into(),
            world: World::Entity,
            from_cache: false,
            load_ms: 1.0,
            replaced: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_the_last_load_of_a_name_is_current() {
        let dir = tempfile::tempdir().unwrap();
        let deployments = Deployments::open(dir.path()).unwrap();
        deployments
            .record_plugin(&report("a", "aaaa1"), b"one", 1)
            .unwrap();
        deployments
            .record_plugin(&report("b", "bbbb1"), b"two", 2)
            .unwrap();
        deployments
            .record_plugin(&report("a", "aaaa2"), b"three", 3)
            .unwrap();
        deployments
            .record_binding("books", &EntityTypeConfig::for_plugin("a"))
            .unwrap();

        let reopened = Deployments::open(dir.path()).unwrap();
        let current: Vec<(String, Vec<u8>)> = reopened
            .current_plugins()
            .into_iter()
            .map(|(record, path)| (record.content_hash, std::fs::read(path).unwrap()))
            .collect();
        assert_eq!(
            current,
            [
                ("bbbb1".to_owned(), b"two".to_vec()),
                ("aaaa2".to_owned(), b"three".to_vec())
            ]
        );
        assert_eq!(reopened.history("a").len(), 2);
        assert_eq!(reopened.stamps()["a"], 3);
        let (previous, path) = reopened.previous_version("a").unwrap();
        assert_eq!(previous.content_hash, "aaaa1");
        assert_eq!(std::fs::read(path).unwrap(), b"one");
        assert!(reopened.previous_version("b").is_none());
        assert_eq!(reopened.bindings()["books"].plugin, "a");
    }
}
