//! The PostgreSQL journal against a throwaway server: the conformance suite every backend passes,
//! data shared by two journals on one database, a database of another schema version refused, and
//! a row lock left behind by a session gone quiet delaying appends by a bounded time only — and a
//! command behind such a lock answered `503 journal_busy` with `Retry-After`.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use support::node::TestNode;
use support::services::Postgres;
use ulid::Ulid;
use weft::config::JournalBackend;
use weft::entity::EntityTypeConfig;
use weft::journal::conformance::{self, sample_batch};
use weft::journal::{Journal, JournalError, PostgresJournal, PostgresJournalOptions};
use weft::postgres::{PgPool, PooledConnection, SessionBounds};

async fn open(url: &str) -> PostgresJournal {
    PostgresJournal::open(url)
        .await
        .expect("open the PostgreSQL journal")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_the_conformance_suite() {
    let postgres = Postgres::start();
    conformance::run_all(async || {
        Arc::new(open(&postgres.fresh_database().await).await) as Arc<dyn Journal>
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_journals_on_one_database_share_streams_and_fences() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    let (node_a, node_b) = (open(&url).await, open(&url).await);
    let writer = Ulid::new();

    node_a
        .append("order|1", 0, 0, sample_batch("order|1", 0, 0, 2, writer))
        .await
        .expect("node a appends");
    assert_eq!(node_b.highest_seq_nr("order|1").await, Ok(2));
    node_b
        .record_fence("order|1", 7)
        .await
        .expect("node b fences");
    assert_eq!(
        node_a
            .append("order|1", 2, 0, sample_batch("order|1", 2, 0, 1, writer))
            .await,
        Err(JournalError::StaleFencingToken {
            persistence_id: "order|1".to_owned(),
            token: 0,
            current: 7,
        }),
        "node a, holding no token, is fenced off by node b's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_of_another_schema_version_is_refused() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    drop(open(&url).await);
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    client
        .execute(
            "UPDATE weft_schema_versions SET version = 2 WHERE component = 'journal'",
            &[],
        )
        .await
        .expect("mark the journal as schema version 2");

    let error = PostgresJournal::open(&url)
        .await
        .expect_err("a newer schema is refused");
    assert!(
        error
            .to_string()
            .contains("the database has journal schema version 2; this weft uses version 1"),
        "{error}"
    );
}

#[tokio::test]
async fn an_unreachable_server_is_a_clear_error() {
    let error = PostgresJournal::open("postgres://postgres@127.0.0.1:1/weft")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        error.to_string().contains("connecting to PostgreSQL"),
        "{error}"
    );
}

/// Another host's session takes a stream's fence row lock inside a transaction and goes quiet, as
/// a host frozen mid-transaction would: an append waiting on that lock fails as `Busy` after the
/// lock bound instead of hanging, and writes nothing; once the server has ended the quiet session
/// (its idle-in-transaction bound), appends go through again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_left_by_a_quiet_session_delays_appends_by_bounded_times() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    let bounds = SessionBounds {
        lock_wait: Duration::from_millis(100),
        idle_in_transaction: Duration::from_secs(3),
        statement: Duration::from_secs(5),
    };
    let options = PostgresJournalOptions {
        session_bounds: bounds,
        ..PostgresJournalOptions::default()
    };
    let journal = PostgresJournal::open_with_options(&url, options)
        .await
        .expect("open the PostgreSQL journal");
    let writer = Ulid::new();
    journal
        .append("order|1", 0, 0, sample_batch("order|1", 0, 0, 1, writer))
        .await
        .expect("the first append");

    let quiet_session = lock_fence_row_and_go_quiet(&url, "order|1", bounds).await;

    let started = Instant::now();
    let waited = tokio::time::timeout(
        Duration::from_secs(10),
        journal.append("order|1", 1, 0, sample_batch("order|1", 1, 0, 1, writer)),
    )
    .await
    .expect("an append waiting on a held lock gives up within its bound");
    assert!(
        matches!(waited, Err(JournalError::Busy(_))),
        "{waited:?} after {:?}",
        started.elapsed()
    );
    assert_eq!(
        journal.highest_seq_nr("order|1").await,
        Ok(1),
        "nothing written"
    );

    support::eventually(
        "the server ends the quiet session and appends pass",
        || async {
            let batch = sample_batch("order|1", 1, 0, 1, writer);
            match journal.append("order|1", 1, 0, batch).await {
                Ok(()) => true,
                Err(JournalError::Busy(_)) => false,
                Err(other) => panic!("an append behind the quiet session failed with {other:?}"),
            }
        },
    )
    .await;
    let ended = quiet_session.client.batch_execute("COMMIT").await;
    assert!(ended.is_err(), "the quiet session was ended by the server");
}

/// A node's journal sessions are bounded for the shortest single-writer lease of its config (here
/// 400 ms: locks are waited for 200 ms), for every entity type: a command whose append waits on a
/// fence row lock held by a quiet session is answered `503 journal_busy` with `Retry-After`, writes
/// nothing, and the same command passes once the lock is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_behind_a_held_lock_is_answered_busy_and_retryable() {
    let postgres = Postgres::start();
    let url = postgres.fresh_database().await;
    let root = tempfile::tempdir().unwrap();
    let mut config = support::node::config(root.path(), &["counter"]);
    config.journal.backend = JournalBackend::Postgres;
    config.journal.url = Some(url.clone());
    config.entities.insert(
        "counter".to_owned(),
        EntityTypeConfig::for_plugin("counter"),
    );
    config.entities.insert(
        "account".to_owned(),
        EntityTypeConfig {
            single_writer: true,
            lease_ttl_ms: 400,
            ..EntityTypeConfig::for_plugin("counter")
        },
    );
    let node = TestNode::start(config).await;
    let increment = serde_json::json!({"op": "increment", "by": 1});
    support::node::command_ok(&node.http, &node.url, "counter", "x", &increment).await;

    let bounds = SessionBounds::for_lease_ttl(Duration::from_secs(60));
    let quiet_session = lock_fence_row_and_go_quiet(&url, "counter|x", bounds).await;
    let response = node
        .http
        .post(format!("{}/entities/counter/x", node.url))
        .json(&increment)
        .timeout(Duration::from_secs(10))
        .send()
        .await
        .expect("an answer, not a hang");
    assert_eq!(response.status(), 503);
    assert_eq!(
        response
            .headers()
            .get("retry-after")
            .map(|value| value.as_bytes()),
        Some(&b"1"[..])
    );
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "journal_busy", "{body}");

    quiet_session
        .client
        .batch_execute("ROLLBACK")
        .await
        .unwrap();
    let body = support::node::command_ok(&node.http, &node.url, "counter", "x", &increment).await;
    assert_eq!(
        body["reply"]["value"], 2,
        "the refused command wrote nothing: {body}"
    );
}

/// A session of another host, bounded by `bounds`, that takes the fence row lock of
/// `persistence_id` inside a transaction and says nothing more, as a host frozen there would.
async fn lock_fence_row_and_go_quiet(
    url: &str,
    persistence_id: &str,
    bounds: SessionBounds,
) -> PooledConnection {
    let quiet_host = PgPool::connect(url, "quiet-host", 1, bounds)
        .await
        .expect("connect the quiet host");
    let quiet_session = quiet_host.get().await.expect("a session");
    let lock = format!(
        "BEGIN; SELECT fencing_token FROM weft_fences WHERE persistence_id = '{persistence_id}' \
         FOR UPDATE"
    );
    quiet_session
        .client
        .batch_execute(&lock)
        .await
        .expect("lock the fence row");
    quiet_session
}
