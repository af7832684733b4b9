//! Entity types: the name users address (`POST /entities/{type}/{id}`), the plugin serving it,
//! and the knobs of its actors.

use serde::{Deserialize, Serialize};
use std::time::Duration;

use crate::journal::ReplayFilterMode;
use crate::plugin::OutputLimits;
use crate::settings::check_ranges;

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
    /// Replicated across these replicas, each accepting commands and persisting its own stream
    /// (with `single_writer`, only the lease holder's replica writes). `None`: one stream.
    pub replication: Option<ReplicationConfig>,
    /// What its plugin may hand the host in one call, instead of the node's `[limits.output]`
    /// (fields left out take the built-in defaults). Log limits stay the node's.
    pub output_limits: Option<OutputLimits>,
    /// How many of an entity's latest events keep their commands' idempotency keys: a retry
    /// whose first attempt's events are older than that is applied again. Each activation reads
    /// up to this many events back to rebuild its table (docs/entities.md, "Retrying safely").
    pub idempotency_window_events: u64,
}

/// The `replication` table of an entity type: `{ replicas = ["a", "b", "c"], resolver = "…" }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplicationConfig {
    /// The replica names: each is the cluster name of the node hosting that replica.
    pub replicas: Vec<String>,
    /// Who decides about concurrent events: `last-writer-wins`, `first-writer-wins`, or the name
    /// of a resolver plugin.
    pub resolver: String,
    /// How often an active replica asks the others for events it lacks (pull), in milliseconds.
    /// Pushes carry new events at once; pulls repair lost pushes, partitions and restarts.
    pub pull_interval_ms: u64,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        ReplicationConfig {
            replicas: Vec::new(),
            resolver: LAST_WRITER_WINS.to_owned(),
            pull_interval_ms: 1_000,
        }
    }
}

/// The built-in resolvers' names in `resolver = "…"`.
pub use crate::replication::{FIRST_WRITER_WINS, LAST_WRITER_WINS};

impl ReplicationConfig {
    pub fn pull_interval(&self) -> Duration {
        Duration::from_millis(self.pull_interval_ms)
    }

    /// Whether the node whose replica name is `replica` hosts a replica.
    pub fn hosts(&self, replica: &str) -> bool {
        self.replicas.iter().any(|name| name == replica)
    }

    /// Refuses an empty or repeated replica list, bad names and pull intervals outside
    /// 10 ms ..= 1 min.
    pub fn validate(&self, entity_type: &str) -> Result<(), String> {
        if self.replicas.is_empty() {
            return Err(format!(
                "entity type `{entity_type}`: replication needs at least one replica in `replicas`"
            ));
        }
        for (index, replica) in self.replicas.iter().enumerate() {
            validate_name("replica", replica)?;
            if self.replicas[..index].contains(replica) {
                return Err(format!(
                    "entity type `{entity_type}`: replica `{replica}` is listed twice"
                ));
            }
        }
        validate_name("resolver", &self.resolver)?;
        if !(10..=60_000).contains(&self.pull_interval_ms) {
            return Err(format!(
                "entity type `{entity_type}`: pull_interval_ms {} is outside 10 ..= 60000",
                self.pull_interval_ms
            ));
        }
        Ok(())
    }
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
            lease_ttl_ms: crate::lease::ENTITY_LEASE_TTL_DEFAULT.as_millis() as u64,
            replication: None,
            output_limits: None,
            idempotency_window_events: 1_000,
        }
    }
}

impl EntityTypeConfig {
    /// Refuses every numeric setting outside what the code can honour, naming the range, and a
    /// bad replication table.
    pub fn validate(&self, entity_type: &str) -> Result<(), String> {
        check_ranges(
            &format!("entities.{entity_type}"),
            &[
                ("snapshot_every", self.snapshot_every, 0..=1_000_000),
                // An idle deadline is an `Instant` plus this: a week at most.
                (
                    "passivate_after_secs",
                    self.passivate_after_secs,
                    0..=604_800,
                ),
                // A mailbox is a semaphore's permits; a batch is held in memory at once.
                (
                    "mailbox_capacity",
                    self.mailbox_capacity as u64,
                    1..=1_000_000,
                ),
                ("max_batch", self.max_batch as u64, 1..=10_000),
                // Below 100 ms the renewals of many entities would crowd the lease backend; above a
                // day a crashed writer would block its entities for longer than anyone waits.
                ("lease_ttl_ms", self.lease_ttl_ms, 100..=86_400_000),
                // Each activation reads this many events back; a million is minutes of reading.
                (
                    "idempotency_window_events",
                    self.idempotency_window_events,
                    0..=1_000_000,
                ),
            ],
        )?;
        if let Some(replication) = &self.replication {
            replication.validate(entity_type)?;
        }
        if let Some(limits) = &self.output_limits {
            limits
                .validate()
                .map_err(|error| format!("entity type `{entity_type}`: {error}"))?;
        }
        Ok(())
    }

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

/// The stream a replica of a replicated entity persists its own events to:
/// `<type>|<id>|<replica>`.
pub fn replica_stream(persistence_id: &str, replica: &str) -> String {
    format!("{persistence_id}|{replica}")
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Any value, with the edges of the ranges and of the integer types more likely.
    fn setting() -> impl Strategy<Value = u64> {
        prop_oneof![
            any::<u64>(),
            0..2_000_000u64,
            Just(u64::MAX),
            Just(usize::MAX as u64 >> 3),
            Just(1u64 << 61),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// Settings from the API or weft.toml: refused naming the setting and its range, or
        /// usable by what builds an actor from them without a panic.
        #[test]
        fn settings_are_refused_or_honoured(
            snapshot_every in setting(), passivate in setting(), mailbox in setting(),
            batch in setting(), ttl in setting(),
        ) {
            let config = EntityTypeConfig {
                snapshot_every,
                passivate_after_secs: passivate,
                mailbox_capacity: mailbox as usize,
                max_batch: batch as usize,
                lease_ttl_ms: ttl,
                ..EntityTypeConfig::for_plugin("counter")
            };
            match config.validate("t") {
                Ok(()) => {
                    let _mailbox = tokio::sync::Semaphore::new(config.mailbox_capacity);
                    let now = std::time::Instant::now();
                    let _ = now + config.passivate_after() + config.lease_ttl();
                    let _batch: Vec<u8> = Vec::with_capacity(config.max_batch);
                }
                Err(error) => prop_assert!(error.contains("is outside"), "{error}"),
            }
        }
    }

    fn replication(replicas: &[&str]) -> ReplicationConfig {
        ReplicationConfig {
            replicas: replicas.iter().map(|name| name.to_string()).collect(),
            ..ReplicationConfig::default()
        }
    }

    #[test]
    fn a_replication_table_parses_with_defaults() {
        let config: EntityTypeConfig =
            toml::from_str("plugin = \"counter\"\nreplication = { replicas = [\"a\", \"b\"] }\n")
                .unwrap();
        let replication = config.replication.unwrap();
        assert_eq!(replication.replicas, ["a", "b"]);
        assert_eq!(replication.resolver, LAST_WRITER_WINS);
        assert_eq!(replication.pull_interval(), Duration::from_secs(1));
        assert!(replication.hosts("b") && !replication.hosts("c"));
    }

    #[test]
    fn unknown_replication_keys_are_refused() {
        let parsed: Result<EntityTypeConfig, _> =
            toml::from_str("plugin = \"c\"\nreplication = { replica = [\"a\"] }\n");
        assert!(parsed.unwrap_err().to_string().contains("replica"));
    }

    #[test]
    fn bad_replica_lists_are_refused_with_the_reason() {
        let empty = replication(&[]).validate("tally").unwrap_err();
        assert!(empty.contains("at least one replica"), "{empty}");
        let twice = replication(&["a", "b", "a"]).validate("tally").unwrap_err();
        assert!(twice.contains("`a` is listed twice"), "{twice}");
        let bad_name = replication(&["a|b"]).validate("tally").unwrap_err();
        assert!(bad_name.contains("replica `a|b` is invalid"), "{bad_name}");
        let fast = ReplicationConfig {
            pull_interval_ms: 1,
            ..replication(&["a"])
        };
        assert!(
            fast.validate("tally")
                .unwrap_err()
                .contains("pull_interval_ms 1")
        );
        assert_eq!(replication(&["a", "b", "c"]).validate("tally"), Ok(()));
    }

    #[test]
    fn a_replica_stream_is_the_entity_stream_and_the_replica() {
        assert_eq!(
            replica_stream(&persistence_id("tally", "t1"), "b"),
            "tally|t1|b"
        );
    }
}
