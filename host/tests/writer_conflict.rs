//! Two writer ids in one SQLite journal for the same entity: the replay filter decides what
//! recovery does — `fail` refuses activation naming both writers and the seq nr,
//! `repair-by-discard-old` keeps the newest writer's history, `off` replays everything.

mod support;

use serde_json::json;
use std::sync::Arc;
use support::{msgpack, plugin_bytes};
use ulid::Ulid;
use weft::entity::{EntityError, EntitySystem, EntityTypeConfig};
use weft::journal::{EventEnvelope, Journal, ReplayFilterMode, SqliteJournal};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

fn increment(pid: &str, seq_nr: u64, writer: Ulid, by: i64) -> EventEnvelope {
    EventEnvelope {
        persistence_id: pid.into(),
        seq_nr,
        writer,
        fencing_token: 0,
        timestamp: seq_nr << 16,
        origin_replica: String::new(),
        origin_seq_nr: seq_nr,
        version: Default::default(),
        concurrent: false,
        plugin: "counter@test".into(),
        payload: msgpack(&json!({"type": "incremented", "by": by})),
        idempotency: None,
    }
}

/// Writer A writes 1..=2, writer B takes over at 3..=4, then A reappears at 5.
async fn conflicting_journal(path: &std::path::Path, pid: &str) -> (Ulid, Ulid) {
    let (old, new) = (Ulid::from_parts(1, 1), Ulid::from_parts(2, 2));
    let journal = SqliteJournal::open(path).await.unwrap();
    let history = [(old, 1), (old, 10), (new, 100), (new, 1000), (old, 10000)];
    for (index, (writer, by)) in history.into_iter().enumerate() {
        let seq_nr = index as u64 + 1;
        journal
            .append(pid, seq_nr - 1, 0, vec![increment(pid, seq_nr, writer, by)])
            .await
            .unwrap();
    }
    (old, new)
}

async fn system(path: &std::path::Path, mode: ReplayFilterMode) -> EntitySystem {
    let journal: Arc<dyn Journal> = Arc::new(SqliteJournal::open(path).await.unwrap());
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins.load("counter", &plugin_bytes("counter")).unwrap();
    let system = EntitySystem::single_host(journal, plugins);
    let config = EntityTypeConfig {
        replay_filter: mode,
        ..EntityTypeConfig::for_plugin("counter")
    };
    system.bind_type("counter", config).unwrap();
    system
}

fn value(state: &[u8]) -> i64 {
    support::from_msgpack(state)["value"].as_i64().unwrap()
}

#[tokio::test]
async fn fail_refuses_activation_naming_both_writers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    let (old, new) = conflicting_journal(&path, "counter|x").await;
    let system = system(&path, ReplayFilterMode::Fail).await;
    let error = system.state("counter", "x").await.unwrap_err();
    let EntityError::WriterConflict(conflict) = &error else {
        panic!("expected a writer conflict, got {error}")
    };
    assert_eq!(conflict.persistence_id, "counter|x");
    assert_eq!(
        (
            conflict.expected_writer,
            conflict.actual_writer,
            conflict.seq_nr
        ),
        (new, old, 5)
    );
    let message = error.to_string();
    assert!(
        message.contains(&old.to_string()) && message.contains(&new.to_string()),
        "{message}"
    );
    // Commands are refused too, and nothing is written.
    let command = msgpack(&json!({"op": "increment", "by": 1}));
    assert!(matches!(
        system.ask("counter", "x", command).await,
        Err(EntityError::WriterConflict(_))
    ));
    assert_eq!(
        system.journal().highest_seq_nr("counter|x").await.unwrap(),
        5
    );
}

#[tokio::test]
async fn repair_by_discard_old_keeps_the_newest_writers_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    conflicting_journal(&path, "counter|x").await;
    let system = system(&path, ReplayFilterMode::RepairByDiscardOld).await;
    let state = system.state("counter", "x").await.unwrap();
    assert_eq!(
        value(&state.state),
        1 + 10 + 100 + 1000,
        "the old writer's late event is dropped"
    );
    assert_eq!(state.seq_nr, 5);
    let reply = system
        .ask(
            "counter",
            "x",
            msgpack(&json!({"op": "increment", "by": 1})),
        )
        .await
        .unwrap();
    assert_eq!(reply.seq_nr, 6);
}

#[tokio::test]
async fn off_replays_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.db");
    conflicting_journal(&path, "counter|x").await;
    let system = system(&path, ReplayFilterMode::Off).await;
    let state = system.state("counter", "x").await.unwrap();
    assert_eq!(value(&state.state), 11111);
}
