//! Entity types: the name users address (`POST /entities/{type}/{id}`), the plugin serving it,
//! and the knobs of its actors.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::journal::ReplayFilterMode;

/// How an entity type is served; the `[entities.<type>]` table of `weft.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EntityTypeConfig {
    /// The entity plugin that handles its commands.
    pub plugin: String,
    /// A snapshot is written after this many events since the last one (0: never).
    pub snapshot_every: u64,
    /// An entity with no message for this long is stopped; its next message recovers it.
    pub passivate_after_secs: u64,
    /// Messages queued per entity before callers get an `overloaded` error.
    pub mailbox_capacity: usize,
    /// Commands handled in one turn and persisted in one journal write, at most.
    pub max_batch: usize,
    pub replay_filter: ReplayFilterMode,
    /// One writer per entity across every node sharing the journal: the node that holds the
    /// entity's lease writes (its fencing token recorded in the journal), the others observe.
    pub single_writer: bool,
    /// Time to live of a single-writer entity's lease, in milliseconds; renewed every third of
    /// it. A crashed writer's entities can be written elsewhere after at most this long.
    pub lease_ttl_ms: u64,
}

impl Default for EntityTypeConfig {
    fn default() -> Self {
        EntityTypeConfig {
            plugin: String::new(),
            snapshot_every: 100,
            passivate_after_secs: 120,
            mailbox_capacity: 1024,
            max_batch: 64,
            replay_filter: ReplayFilterMode::default(),
            single_writer: false,
            lease_ttl_ms: 10_000,
        }
    }
}

impl EntityTypeConfig {
    /// The defaults, served by `plugin`.
    pub fn for_plugin(plugin: &str) -> Self {
        EntityTypeConfig {
            plugin: plugin.to_owned(),
            ..EntityTypeConfig::default()
        }
    }

    pub fn passivate_after(&self) -> Duration {
        Duration::from_secs(self.passivate_after_secs)
    }

    pub fn lease_ttl(&self) -> Duration {
        Duration::from_millis(self.lease_ttl_ms)
    }
}

/// A named entity type.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EntityType {
    pub name: String,
    #[serde(flatten)]
    pub config: EntityTypeConfig,
}

/// The journal stream of an entity: `<type>|<id>`.
pub fn persistence_id(entity_type: &str, entity_id: &str) -> String {
    format!("{entity_type}|{entity_id}")
}

/// Entity type names and ids: 1-128 printable characters, no `|` (the persistence id separator)
/// and no `/` (they appear in URLs).
pub fn validate_name(what: &str, name: &str) -> Result<(), String> {
    let valid = (1..=128).contains(&name.len())
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '|' && c != '/');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{what} `{name}` is invalid: use 1-128 printable characters without spaces, '|' or '/'"
        ))
    }
}
