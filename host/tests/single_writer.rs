//! Single-writer entities on a shared PostgreSQL journal and lease table (real servers): a zombie
//! writer paused past its lease is fenced and becomes an observer; without the lease two hosts
//! writing one stream are caught by recovery in `fail` mode; the loss hook fires once per loss, in
//! the plugin and on `GET /notifications`. A stopped entity system (a node's graceful stop) hands
//! every lease back and starts no entity.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::node::{TestNode, config, send_command};
use support::pause::Gate;
use support::services::Postgres;
use support::sse::EventStream;
use support::{eventually, from_msgpack, msgpack};
use tokio::sync::broadcast;
use ulid::Ulid;
use weft::config::JournalBackend;
use weft::entity::{
    EntityError, EntitySystem, EntityTypeConfig, Notification, StopReport, lease_name,
};
use weft::journal::{InMemoryJournal, Journal, PostgresJournal};
use weft::lease::{InMemoryLease, Lease, PostgresLease};

/// How long any awaited condition may take before the test fails.
const DEADLINE: Duration = Duration::from_secs(20);

fn single_writer(lease_ttl_ms: u64, passivate_after_secs: u64) -> EntityTypeConfig {
    EntityTypeConfig {
        single_writer: true,
        lease_ttl_ms,
        passivate_after_secs,
        ..EntityTypeConfig::for_plugin("counter")
    }
}

async fn increment(system: &EntitySystem, id: &str, by: i64) -> Result<u64, EntityError> {
    let command = msgpack(&json!({"op": "increment", "by": by}));
    let reply = system.ask("counter", id, command).await?;
    Ok(reply.seq_nr)
}

async fn value(system: &EntitySystem, id: &str) -> (i64, u64) {
    let state = system.state("counter", id).await.expect("state");
    let value = from_msgpack(&state.state)["value"].as_i64().expect("value");
    (value, state.seq_nr)
}

async fn next_notification(notifications: &mut broadcast::Receiver<Notification>) -> Notification {
    tokio::time::timeout(DEADLINE, notifications.recv())
        .await
        .expect("a notification within the deadline")
        .expect("the notification stream is open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zombie_writer_is_fenced_and_becomes_an_observer() {
    let postgres = Postgres::start();
    let database = postgres.fresh_database().await;
    let journal: Arc<dyn Journal> = Arc::new(PostgresJournal::open(&database).await.unwrap());
    let lease: Arc<dyn Lease> = Arc::new(PostgresLease::connect(&database, 4).await.unwrap());
    let (a_id, b_id) = (Ulid::new(), Ulid::new());
    let (a_gate, b_gate) = (Gate::new(), Gate::new());
    let paused_host = |gate: &Arc<Gate>, writer_id| {
        support::counter_host(
            gate.journal(&journal),
            gate.lease(&lease),
            writer_id,
            single_writer(1_000, 120),
        )
    };
    let (a, b) = (paused_host(&a_gate, a_id), paused_host(&b_gate, b_id));
    let pid = "counter|z1";
    let mut a_notifications = a.notifications().subscribe();
    let mut b_notifications = b.notifications().subscribe();

    for expected_seq_nr in 1..=3 {
        assert_eq!(increment(&a, "z1", 1).await.unwrap(), expected_seq_nr);
    }
    let Notification::LeaseAcquired {
        fencing_token: a_token,
        writer,
        ..
    } = next_notification(&mut a_notifications).await
    else {
        panic!("A's first notification is its lease")
    };
    assert_eq!(writer, a_id.to_string());
    assert_eq!(journal.fence(pid).await, Ok(a_token));

    // A pauses with a command decided and its append in flight.
    a_gate.pause();
    let in_flight = {
        let a = a.clone();
        tokio::spawn(async move { increment(&a, "z1", 100).await })
    };
    a_gate.wait_until_waiting("append", DEADLINE).await;
    // Its renewals wait at the gate too: the backend lets the lease expire.
    eventually("A's lease expires on the backend", || async {
        lease.holder(&lease_name(pid)).await.unwrap().is_none()
    })
    .await;

    // B takes over: a higher token, recorded before its first write, after A's events.
    assert_eq!(increment(&b, "z1", 10).await.unwrap(), 4);
    let b_token = journal.fence(pid).await.unwrap();
    assert!(b_token > a_token, "B's token {b_token} after A's {a_token}");

    // A resumes: its old append reaches the journal with the old token and is refused.
    a_gate.resume();
    let refused = in_flight.await.unwrap().unwrap_err();
    assert_eq!(refused.code(), "stale_fencing_token", "{refused}");
    match next_notification(&mut a_notifications).await {
        Notification::LeaseLost {
            fencing_token,
            reason,
            notice,
            ..
        } => {
            assert_eq!((fencing_token, reason), (a_token, "fenced"));
            // The plugin's hook ran, on the state the journal holds: A's refused append left
            // A's resident state ahead of the journal, so A recovered it first (A's 3
            // increments and B's 10), and never shows the unsaved 100.
            let notice = from_msgpack(&notice.expect("the counter's hook says something"));
            assert_eq!(
                notice,
                json!({"value": 13, "fencing_token": a_token, "reason": "fenced"})
            );
        }
        other => panic!("expected A's lease loss, got {other:?}"),
    }

    // A observes: it refuses commands naming B, and its state follows B's writes.
    match increment(&a, "z1", 1000).await {
        Err(EntityError::NotWriter {
            writer,
            fencing_token,
            ..
        }) => {
            assert_eq!(writer, Some(b_id.to_string()));
            assert_eq!(fencing_token, Some(b_token));
        }
        other => panic!("A must refuse commands while B writes, got {other:?}"),
    }
    assert_eq!(value(&a, "z1").await, (13, 4));

    // The journal holds only B's events after the takeover.
    let events = journal.read(pid, 1, 100).await.unwrap();
    let written: Vec<(u64, Ulid, u64)> = events
        .iter()
        .map(|event| (event.seq_nr, event.writer, event.fencing_token))
        .collect();
    assert_eq!(
        written,
        vec![
            (1, a_id, a_token),
            (2, a_id, a_token),
            (3, a_id, a_token),
            (4, b_id, b_token),
        ]
    );

    // Now B pauses past its lease; A, still contending, becomes the writer again after catching
    // up, with a token above B's. No second loss of A's was reported in between.
    b_gate.pause();
    match next_notification(&mut a_notifications).await {
        Notification::LeaseAcquired { fencing_token, .. } => {
            assert!(fencing_token > b_token, "A's new token {fencing_token}");
            assert_eq!(journal.fence(pid).await, Ok(fencing_token));
        }
        other => panic!("expected A to take the lease back, got {other:?}"),
    }
    assert_eq!(increment(&a, "z1", 1).await.unwrap(), 5);
    assert_eq!(value(&a, "z1").await, (14, 5));
    assert!(matches!(
        a_notifications.try_recv(),
        Err(broadcast::error::TryRecvError::Empty)
    ));

    // B resumes and hears, once, that A holds its lease now.
    b_gate.resume();
    assert!(matches!(
        next_notification(&mut b_notifications).await,
        Notification::LeaseAcquired { fencing_token, .. } if fencing_token == b_token
    ));
    match next_notification(&mut b_notifications).await {
        Notification::LeaseLost {
            fencing_token,
            reason,
            new_writer,
            ..
        } => {
            assert_eq!((fencing_token, reason), (b_token, "taken-over"));
            assert_eq!(new_writer, Some(a_id.to_string()));
        }
        other => panic!("expected B's lease loss, got {other:?}"),
    }
    assert!(matches!(
        increment(&b, "z1", 1).await,
        Err(EntityError::NotWriter { writer: Some(writer), .. }) if writer == a_id.to_string()
    ));
    assert_eq!(value(&b, "z1").await, (14, 5));

    // The stream reads A, B, A with rising fencing tokens: each a new tenure, so a fresh host
    // recovers it in `fail` mode.
    let c = support::counter_host(journal, lease, Ulid::new(), single_writer(1_000, 120));
    assert_eq!(value(&c, "z1").await, (14, 5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_lease_two_writers_are_caught_by_recovery_in_fail_mode() {
    let postgres = Postgres::start();
    let database = postgres.fresh_database().await;
    let journal: Arc<dyn Journal> = Arc::new(PostgresJournal::open(&database).await.unwrap());
    let lease: Arc<dyn Lease> = Arc::new(PostgresLease::connect(&database, 2).await.unwrap());
    let unfenced = EntityTypeConfig::for_plugin("counter");
    let (a_id, b_id) = (Ulid::new(), Ulid::new());
    let a = support::counter_host(journal.clone(), lease.clone(), a_id, unfenced.clone());
    let b = support::counter_host(journal.clone(), lease.clone(), b_id, unfenced.clone());

    // Both hosts write one stream: A, A, then B (a takeover, fine on its own), then A again.
    assert_eq!(increment(&a, "s1", 1).await.unwrap(), 1);
    assert_eq!(increment(&a, "s1", 10).await.unwrap(), 2);
    assert_eq!(increment(&b, "s1", 100).await.unwrap(), 3);
    // A's view is stale: its append conflicts, it stops, and the retry recovers A, A, B.
    let conflict = increment(&a, "s1", 1000).await.unwrap_err();
    assert_eq!(conflict.code(), "journal_error", "{conflict}");
    assert_eq!(increment(&a, "s1", 1000).await.unwrap(), 4);

    // A fresh host recovering the stream finds the old writer back after the new one.
    let c = support::counter_host(journal.clone(), lease.clone(), Ulid::new(), unfenced);
    match c.state("counter", "s1").await {
        Err(EntityError::WriterConflict(conflict)) => {
            assert_eq!(conflict.persistence_id, "counter|s1");
            assert_eq!(conflict.expected_writer, b_id);
            assert_eq!(conflict.actual_writer, a_id);
            assert_eq!(conflict.seq_nr, 4);
        }
        other => panic!("recovery must fail with the writer conflict, got {other:?}"),
    }

    // The same two hosts with the lease: B is refused while A writes, naming A.
    let a = support::counter_host(
        journal.clone(),
        lease.clone(),
        a_id,
        single_writer(10_000, 120),
    );
    let b = support::counter_host(
        journal.clone(),
        lease.clone(),
        b_id,
        single_writer(10_000, 120),
    );
    assert_eq!(increment(&a, "s2", 1).await.unwrap(), 1);
    match increment(&b, "s2", 1).await {
        Err(error @ EntityError::NotWriter { .. }) => {
            assert!(error.to_string().contains(&a_id.to_string()), "{error}");
        }
        other => panic!("B must be refused while A holds the lease, got {other:?}"),
    }
    let writers: Vec<Ulid> = journal
        .read("counter|s2", 1, 10)
        .await
        .unwrap()
        .iter()
        .map(|event| event.writer)
        .collect();
    assert_eq!(writers, vec![a_id]);
}

/// Changes the lease row `name` behind its holder's back with `sql` (`$1` is the name), as an
/// owner that does not run weft would.
async fn change_lease_row(database: &str, name: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    let changed = client
        .execute(sql, &[&name])
        .await
        .expect("change the lease");
    assert_eq!(changed, 1, "{sql}");
}

/// Another owner takes the lease over: the holder's next renewal finds it lost.
const TAKE_OVER: &str = "UPDATE weft_leases SET owner = 'intruder', \
     fencing_token = fencing_token + 1, expires_at = now() + interval '1 hour' WHERE name = $1";
/// The other owner gives it up.
const GIVE_BACK: &str = "UPDATE weft_leases SET owner = NULL, expires_at = NULL WHERE name = $1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_lease_loss_fires_the_hook_and_the_event_stream_once() {
    let postgres = Postgres::start();
    let database = postgres.fresh_database().await;
    let root = tempfile::tempdir().unwrap();
    let mut node_config = config(root.path(), &["counter"]);
    node_config.journal.backend = JournalBackend::Postgres;
    node_config.journal.url = Some(database.clone());
    node_config
        .entities
        .insert("counter".into(), single_writer(1_000, 120));
    let node = TestNode::start(node_config).await;
    let mut events = EventStream::open(&node.http, &format!("{}/notifications", node.url)).await;
    let name = lease_name("counter|h1");

    let (status, reply) = send_command(
        &node.http,
        &node.url,
        "counter",
        "h1",
        &json!({"op": "increment", "by": 2}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    let mut tokens = Vec::new();
    for round in 0..2 {
        let (kind, acquired) = events.next().await;
        assert_eq!(kind, "lease-acquired", "round {round}: {acquired}");
        let token = acquired["fencing_token"].as_u64().expect("token");
        tokens.push(token);

        change_lease_row(&database, &name, TAKE_OVER).await;
        let (kind, lost) = events.next().await;
        assert_eq!(kind, "lease-lost", "round {round}: {lost}");
        assert_eq!(lost["fencing_token"], json!(token));
        assert_eq!(lost["reason"], json!("taken-over"));
        assert_eq!(lost["new_writer"], json!("intruder"));
        assert_eq!(
            lost["notice"],
            json!({"value": 2, "fencing_token": token, "reason": "taken-over"}),
            "the plugin's hook ran once for this loss"
        );
        // Commands are refused, naming the owner that holds the lease now.
        let (status, refused) = send_command(
            &node.http,
            &node.url,
            "counter",
            "h1",
            &json!({"op": "increment", "by": 1}),
        )
        .await;
        assert_eq!(status, 409, "{refused}");
        assert_eq!(refused["error"]["code"], json!("not_writer"));
        assert!(
            refused["error"]["message"]
                .as_str()
                .unwrap()
                .contains("intruder")
        );
        change_lease_row(&database, &name, GIVE_BACK).await;
    }
    // After the second loss the node takes the lease back once more; nothing came in between.
    let (kind, acquired) = events.next().await;
    assert_eq!(kind, "lease-acquired", "{acquired}");
    assert!(acquired["fencing_token"].as_u64().unwrap() > tokens[1]);
    let (status, reply) = send_command(
        &node.http,
        &node.url,
        "counter",
        "h1",
        &json!({"op": "increment", "by": 3}),
    )
    .await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["reply"]["value"], json!(5));
    node.node
        .shutdown()
        .await
        .expect("shutdown ends the event stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_system_passivates_every_entity_releases_its_leases_and_starts_none() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let lease: Arc<dyn Lease> = Arc::new(InMemoryLease::new());
    // A minute's lease: only a release lets another host write within the test.
    let config = single_writer(60_000, 120);
    let host = support::counter_host(journal.clone(), lease.clone(), Ulid::new(), config.clone());
    let ids = ["a", "b", "c"];
    for id in ids {
        assert_eq!(increment(&host, id, 1).await.unwrap(), 1);
    }
    let report = host.stop().await;
    assert_eq!(
        report,
        StopReport {
            passivated: 3,
            leases_released: 3
        }
    );
    assert_eq!(host.active_entities(), 0);
    for id in ids {
        let name = lease_name(&format!("counter|{id}"));
        assert_eq!(lease.holder(&name).await.unwrap(), None, "{name} released");
    }
    let refused = increment(&host, "a", 1).await.unwrap_err();
    assert_eq!(refused.code(), "node_stopping", "{refused}");
    // Another host (outside a cluster: a held lease is refused at once) writes every entity now.
    let other = support::counter_host(journal, lease, Ulid::new(), config);
    for id in ids {
        assert_eq!(increment(&other, id, 10).await.unwrap(), 2);
    }
}
