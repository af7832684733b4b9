//! No answer from unsaved state: a command rejected against state that includes the events of
//! earlier commands in its batch is answered only once those events are durable. When the
//! batch's append fails (here: another writer took the next sequence number while the append
//! waited), the rejection fails with the append's error instead of reporting a value the
//! journal never held, and a read in the batch reports only committed state.

mod support;

use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use support::pause::Gate;
use support::{from_msgpack, msgpack};
use ulid::Ulid;
use weft::entity::{EntityError, EntityTypeConfig};
use weft::journal::{EventEnvelope, InMemoryJournal, Journal};
use weft::lease::InMemoryLease;

const DEADLINE: Duration = Duration::from_secs(20);

fn command(op: &str, by: i64) -> Vec<u8> {
    msgpack(&json!({"op": op, "by": by}))
}

/// Another writer's event at `seq_nr` of `counter|x`, written straight into the journal.
fn foreign_increment(seq_nr: u64, by: i64) -> EventEnvelope {
    EventEnvelope {
        persistence_id: "counter|x".to_owned(),
        seq_nr,
        writer: Ulid::new(),
        fencing_token: 0,
        timestamp: 1 << 16,
        origin_replica: String::new(),
        origin_seq_nr: seq_nr,
        version: Default::default(),
        concurrent: false,
        plugin: "counter@elsewhere".to_owned(),
        payload: msgpack(&json!({"type": "incremented", "by": by})),
        idempotency: None,
    }
}

// One thread: the commands spawned below reach the entity's mailbox before its next turn runs,
// so they are handled as one batch.
#[tokio::test(flavor = "current_thread")]
async fn a_rejection_in_a_batch_whose_append_fails_reports_no_unsaved_value() {
    let journal: Arc<dyn Journal> = Arc::new(InMemoryJournal::new());
    let gate = Gate::new();
    let system = support::counter_host(
        gate.journal(&journal),
        Arc::new(InMemoryLease::new()),
        Ulid::new(),
        EntityTypeConfig::for_plugin("counter"),
    );
    system
        .ask("counter", "x", command("increment", 1))
        .await
        .expect("the first increment");

    // One batch: +5 (the value would be 6), then -7, rejected against that unsaved 6, then a read.
    let ask = |command: Vec<u8>| {
        let system = system.clone();
        tokio::spawn(async move { system.ask("counter", "x", command).await })
    };
    let add = ask(command("increment", 5));
    let take = ask(command("decrement", 7));
    let read = {
        let system = system.clone();
        tokio::spawn(async move { system.state("counter", "x").await })
    };
    gate.pause();
    gate.wait_until_waiting("append", DEADLINE).await;
    // While the batch's append waits, another writer takes sequence number 2.
    journal
        .append("counter|x", 1, 0, vec![foreign_increment(2, 100)])
        .await
        .expect("the other writer's append");
    gate.resume();

    let add = add.await.unwrap();
    assert!(add.is_err(), "the increment was not persisted: {add:?}");
    match take.await.unwrap() {
        Err(EntityError::Rejected { message }) => {
            panic!("a rejection judged a value the journal never held: {message}")
        }
        Err(error) => assert_eq!(
            error.code(),
            add.unwrap_err().code(),
            "the rejection fails with the append's error: {error}"
        ),
        Ok(reply) => panic!("-7 cannot succeed from 1: {reply:?}"),
    }
    if let Ok(Ok(state)) = read.await {
        // Committed before the batch (1), or after the other writer's event (101); never 6.
        let value = from_msgpack(&state.state)["value"].as_i64();
        assert!(
            matches!(value, Some(1 | 101)),
            "the read reports committed state only: {value:?}"
        );
    }

    // What is committed is the first increment and the other writer's: 101, and -7 applies.
    let reply = system
        .ask("counter", "x", command("decrement", 7))
        .await
        .expect("after recovery the decrement applies");
    assert_eq!(from_msgpack(&reply.reply)["value"], 94);
}
