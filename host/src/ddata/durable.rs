//! Durable keys: the DistributedData keys a node keeps in its own SQLite file
//! (`<data_dir>/ddata.db`), so they come back after a restart even if no other node holds them.
//!
//! Which keys are durable is configured (`[ddata] durable_keys`: names, or prefixes ending in
//! `*`). Every change of a durable key is written by one writer thread, merged with what is stored
//! (entries are CRDTs, so a late or repeated write can never take a key back), in WAL mode with
//! `synchronous = NORMAL`. Writing is behind the changes: a clean stop of the node (Ctrl-C) writes
//! everything queued before it exits; a crash may lose the last moments of changes, which the other
//! nodes still hold, but never corrupts the file. At start-up every stored entry is merged into
//! the replicator.

use std::path::Path;
use std::sync::mpsc;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use super::value::Entry;

/// Changes waiting for the writer thread, at most. A full queue drops the change with a warning:
/// the next change of the key writes the merged entry anyway.
const WRITES_QUEUED_MAX: usize = 4_096;

/// The `[ddata]` section of `weft.toml`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DdataConfig {
    /// Keys kept on disk: exact names, or prefixes ending in `*` (`"cart-*"`).
    pub durable_keys: Vec<String>,
}

impl DdataConfig {
    pub fn is_durable(&self, key: &str) -> bool {
        self.durable_keys
            .iter()
            .any(|pattern| match pattern.strip_suffix('*') {
                Some(prefix) => key.starts_with(prefix),
                None => key == pattern,
            })
    }
}

/// The store of durable keys. Dropping it waits until the writer has written what is queued, so
/// a clean stop of the node loses nothing.
pub struct DurableStore {
    /// `None` once dropping began.
    writes: Option<mpsc::SyncSender<(String, Entry)>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for DurableStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer's loop once it is empty.
        self.writes = None;
        if let Some(writer) = self.writer.take()
            && writer.join().is_err()
        {
            tracing::error!("ddata: the durable store's writer crashed");
        }
    }
}

impl DurableStore {
    /// Opens (or creates) the store at `path`; returns it with every entry it holds.
    pub fn open(path: &Path) -> anyhow::Result<(DurableStore, Vec<(String, Entry)>)> {
        let connection = Connection::open(path)?;
        // Stated here so an upgrade cannot change them silently.
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        connection.execute_batch(
            "CREATE TABLE IF NOT EXISTS weft_ddata (key TEXT PRIMARY KEY, entry BLOB NOT NULL)",
        )?;
        let mut loaded = Vec::new();
        {
            let mut rows = connection.prepare("SELECT key, entry FROM weft_ddata")?;
            let mut rows = rows.query([])?;
            while let Some(row) = rows.next()? {
                let key: String = row.get(0)?;
                let bytes: Vec<u8> = row.get(1)?;
                match rmp_serde::from_slice::<Entry>(&bytes) {
                    Ok(entry) => loaded.push((key, entry)),
                    Err(error) => {
                        tracing::error!(
                            key,
                            "ddata: a stored entry does not decode, skipped: {error}"
                        )
                    }
                }
            }
        }
        let (writes, queue) = mpsc::sync_channel(WRITES_QUEUED_MAX);
        let writer = std::thread::Builder::new()
            .name("weft-ddata-store".into())
            .spawn(move || write_loop(connection, queue))?;
        let store = DurableStore {
            writes: Some(writes),
            writer: Some(writer),
        };
        Ok((store, loaded))
    }

    /// Queues `entry` to be merged into the stored `key`.
    pub fn save(&self, key: &str, entry: &Entry) {
        let queued = self
            .writes
            .as_ref()
            .is_some_and(|writes| writes.try_send((key.to_owned(), entry.clone())).is_ok());
        if !queued {
            tracing::warn!(
                key,
                "ddata: the durable store is behind; this change waits for the next"
            );
        }
    }
}

fn write_loop(connection: Connection, queue: mpsc::Receiver<(String, Entry)>) {
    for (key, entry) in queue {
        if let Err(error) = merge_into(&connection, &key, entry) {
            tracing::error!(key, "ddata: writing a durable key failed: {error}");
        }
    }
}

fn merge_into(connection: &Connection, key: &str, mut entry: Entry) -> anyhow::Result<()> {
    let stored: Option<Vec<u8>> = connection
        .query_row(
            "SELECT entry FROM weft_ddata WHERE key = ?1",
            params![key],
            |row| row.get(0),
        )
        .optional()?;
    if let Some(stored) = stored.and_then(|bytes| rmp_serde::from_slice::<Entry>(&bytes).ok()) {
        entry.merge(&stored);
    }
    connection.execute(
        "INSERT INTO weft_ddata (key, entry) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET entry = excluded.entry",
        params![key, rmp_serde::to_vec(&entry)?],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durable_keys_are_names_or_prefixes() {
        let config = DdataConfig {
            durable_keys: vec!["cart-*".into(), "settings".into()],
        };
        assert!(config.is_durable("cart-42"));
        assert!(config.is_durable("settings"));
        assert!(!config.is_durable("settings-2"));
        assert!(!config.is_durable("hits"));
    }
}
