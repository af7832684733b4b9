//! Entity actors in this process: snapshots, passivation, batching of queued commands into one
//! append, the overload error of a full mailbox, deadlines, and idempotency keys.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::{from_msgpack, msgpack, plugin_bytes};
use weft::entity::{CommandOptions, EntityError, EntitySystem, EntityTypeConfig, IdempotencyKey};
use weft::journal::{InMemoryJournal, Journal, SqliteJournal};
use weft::plugin::{PluginRegistry, PluginRuntime, RuntimeLimits};

fn plugins() -> Arc<PluginRegistry> {
    let runtime = PluginRuntime::new(RuntimeLimits::default(), None).unwrap();
    let plugins = Arc::new(PluginRegistry::new(Arc::new(runtime)));
    plugins.load("counter", &plugin_bytes("counter")).unwrap();
    plugins
}

fn system(
    journal: Arc<dyn Journal>,
    plugins: Arc<PluginRegistry>,
    config: EntityTypeConfig,
) -> EntitySystem {
    let system = EntitySystem::single_host(journal, plugins);
    system.bind_type("counter", config).unwrap();
    system
}

fn increment(by: i64) -> Vec<u8> {
    msgpack(&json!({"op": "increment", "by": by}))
}

#[tokio::test]
async fn snapshots_every_n_events_and_recovers_from_them() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let plugins = plugins();
    let config = EntityTypeConfig {
        snapshot_every: 5,
        ..EntityTypeConfig::for_plugin("counter")
    };
    let first = system(journal.clone(), plugins.clone(), config.clone());
    for _ in 0..12 {
        first.ask("counter", "s", increment(1)).await.unwrap();
    }
    let snapshot = journal
        .latest_snapshot("counter|s")
        .await
        .unwrap()
        .expect("a snapshot");
    assert_eq!(snapshot.seq_nr, 10);
    assert_eq!(from_msgpack(&snapshot.payload), json!({"value": 10}));
    assert_eq!(snapshot.writer, first.settings().writer_id);

    // A second host recovers from the snapshot plus the two events after it.
    let second = system(journal, plugins, config);
    let state = second.state("counter", "s").await.unwrap();
    assert_eq!(
        (state.seq_nr, from_msgpack(&state.state)),
        (12, json!({"value": 12}))
    );
}

#[tokio::test(start_paused = true)]
async fn idle_entities_passivate_and_come_back_on_the_next_message() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let config = EntityTypeConfig {
        passivate_after_secs: 30,
        ..EntityTypeConfig::for_plugin("counter")
    };
    let system = system(journal, plugins(), config);
    system.ask("counter", "p", increment(2)).await.unwrap();
    assert_eq!(system.active_entities(), 1);

    tokio::time::sleep(Duration::from_secs(31)).await;
    for _ in 0..1_000 {
        if system.active_entities() == 0 {
            break;
        }
        tokio::task::yield_now().await;
    }
    assert_eq!(system.active_entities(), 0, "the idle entity passivated");

    let reply = system.ask("counter", "p", increment(3)).await.unwrap();
    assert_eq!(
        (reply.seq_nr, from_msgpack(&reply.reply)),
        (2, json!({"value": 5}))
    );
    let metrics = system.metrics();
    assert_eq!(
        metrics
            .activations
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// On a current-thread runtime the actor cannot run between the sends of one `join!`, so all
/// ten commands are queued before its first turn: they must go to the journal as one append.
#[tokio::test]
async fn queued_commands_are_persisted_in_one_append() {
    let dir = tempfile::tempdir().unwrap();
    let sqlite = Arc::new(
        SqliteJournal::open(dir.path().join("journal.db"))
            .await
            .unwrap(),
    );
    let system = system(
        sqlite.clone(),
        plugins(),
        EntityTypeConfig::for_plugin("counter"),
    );
    system.ask("counter", "b", increment(1)).await.unwrap();
    let before = sqlite.transactions_committed();

    let asks: Vec<_> = (0..10)
        .map(|_| system.ask("counter", "b", increment(1)))
        .collect();
    let replies = futures::future::join_all(asks).await;
    let seq_nrs: Vec<u64> = replies.into_iter().map(|r| r.unwrap().seq_nr).collect();
    assert_eq!(seq_nrs, (2..=11).collect::<Vec<_>>());
    assert_eq!(
        sqlite.transactions_committed() - before,
        1,
        "ten queued commands, one transaction"
    );
}

#[tokio::test]
async fn a_full_mailbox_is_a_clear_overload_error() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let config = EntityTypeConfig {
        mailbox_capacity: 1,
        ..EntityTypeConfig::for_plugin("counter")
    };
    let system = system(journal.clone(), plugins(), config);
    let (first, second) = tokio::join!(
        system.ask("counter", "o", increment(1)),
        system.ask("counter", "o", increment(1)),
    );
    assert_eq!(first.unwrap().seq_nr, 1);
    let error = second.unwrap_err();
    assert!(
        matches!(error, EntityError::Overloaded { capacity: 1, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("overloaded"), "{error}");
    assert_eq!(
        journal.highest_seq_nr("counter|o").await.unwrap(),
        1,
        "the refused command wrote nothing"
    );
}

#[tokio::test]
async fn a_command_past_its_deadline_is_dropped_unapplied() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let system = system(
        journal.clone(),
        plugins(),
        EntityTypeConfig::for_plugin("counter"),
    );
    let late = CommandOptions {
        deadline: Some(tokio::time::Instant::now()),
        idempotency_key: None,
    };
    let outcome = system.ask_with("counter", "d", increment(1), late).await;
    assert!(
        matches!(outcome, Err(EntityError::DeadlineExceeded(_))),
        "{outcome:?}"
    );
    assert!(journal.read("counter|d", 1, 10).await.unwrap().is_empty());
}

fn keyed(key: &str) -> CommandOptions {
    CommandOptions {
        deadline: None,
        idempotency_key: Some(IdempotencyKey::parse(key).unwrap()),
    }
}

#[tokio::test]
async fn a_keyed_command_is_applied_once_within_its_window() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let config = EntityTypeConfig {
        snapshot_every: 2,
        idempotency_window_events: 3,
        ..EntityTypeConfig::for_plugin("counter")
    };
    let first = system(journal.clone(), plugins(), config.clone());
    // An attempt and its retry queued together: one is applied, the other gets its reply.
    let (a, b) = tokio::join!(
        first.ask_with("counter", "k", increment(5), keyed("k1")),
        first.ask_with("counter", "k", increment(5), keyed("k1")),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!((a.seq_nr, b.seq_nr), (1, 1));
    assert_eq!(a.reply, b.reply);
    assert!(a.replayed != b.replayed, "one of the two was replayed");
    first.ask("counter", "k", increment(1)).await.unwrap();

    // Another host recovers (from a snapshot at 2) and still knows the key.
    let second = system(journal.clone(), plugins(), config);
    let again = second
        .ask_with("counter", "k", increment(5), keyed("k1"))
        .await
        .unwrap();
    assert_eq!((again.seq_nr, again.replayed), (1, true));
    assert_eq!(from_msgpack(&again.reply), json!({"value": 5}));
    let reused = second
        .ask_with("counter", "k", increment(6), keyed("k1"))
        .await;
    assert!(
        matches!(
            reused,
            Err(EntityError::IdempotencyKeyReused { seq_nr: 1, .. })
        ),
        "{reused:?}"
    );

    // Three events later the key has left the window of 3: the command applies again.
    for _ in 0..2 {
        second.ask("counter", "k", increment(1)).await.unwrap();
    }
    let outside = second
        .ask_with("counter", "k", increment(5), keyed("k1"))
        .await
        .unwrap();
    assert_eq!((outside.seq_nr, outside.replayed), (5, false));
    assert_eq!(journal.read("counter|k", 1, 10).await.unwrap().len(), 5);
}
