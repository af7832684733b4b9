//! The conformance suite: the behaviour every [`Journal`] backend must show, as async checks that
//! panic with a message naming the broken promise. Each backend's tests call [`run_all`] with a factory
//! of fresh, empty journals; a new backend (PostgreSQL) runs the same suite.
//!
//! The checks are plain `pub async fn`s so that a backend can also run one on its own, e.g. the SQLite
//! tests reuse [`check_concurrent_appends_to_distinct_ids`] to load the writer when they count group
//! commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use ulid::Ulid;

use super::rules::{EVENTS_PER_APPEND_MAX, STORED_INTEGER_MAX};
use super::{EventEnvelope, Journal, JournalError, SnapshotEnvelope, StreamHead};

/// Concurrent tasks in the concurrency checks.
pub const CONCURRENT_TASKS: u64 = 16;
/// Appends (or append attempts) per task in the concurrency checks.
pub const APPENDS_PER_TASK: u64 = 50;

/// Runs every check, each against a fresh journal from `make_empty_journal`.
pub async fn run_all(make_empty_journal: impl AsyncFn() -> Arc<dyn Journal>) {
    check_append_and_read_round_trip(make_empty_journal().await).await;
    check_seq_conflict_writes_nothing(make_empty_journal().await).await;
    check_stale_fencing_token_writes_nothing(make_empty_journal().await).await;
    check_record_fence_is_monotonic(make_empty_journal().await).await;
    check_advance_fence_is_atomic(make_empty_journal().await).await;
    check_invalid_batches_are_rejected(make_empty_journal().await).await;
    check_read_from_the_middle_with_max(make_empty_journal().await).await;
    check_snapshots_keep_the_latest(make_empty_journal().await).await;
    check_persistence_ids_are_listed(make_empty_journal().await).await;
    check_stream_heads_page_through_a_range(make_empty_journal().await).await;
    check_concurrent_appends_to_distinct_ids(make_empty_journal().await).await;
    check_racing_appends_to_one_id(make_empty_journal().await).await;
}

/// An event with every field set to a value derived from its position, so that a backend that drops or
/// mixes up a field fails a round trip. Only `seq_nr` may be out of the stored range.
pub fn sample_event(persistence_id: &str, seq_nr: u64, writer: Ulid) -> EventEnvelope {
    let position = seq_nr % 1_000_000;
    EventEnvelope {
        persistence_id: persistence_id.to_owned(),
        seq_nr,
        writer,
        fencing_token: 0,
        timestamp: (1_700_000_000_000 + position) << 16 | 7,
        origin_replica: format!("replica-{}", seq_nr % 3),
        origin_seq_nr: position * 10,
        version: BTreeMap::from([
            ("eu".to_owned(), seq_nr),
            ("us".to_owned(), u64::MAX - seq_nr),
        ]),
        concurrent: seq_nr.is_multiple_of(2),
        plugin: "orders@9f86d081884c".to_owned(),
        // Binary, with a zero and a 0xff byte: a backend storing text would mangle it.
        payload: [b"\x00\xff event ".as_slice(), &seq_nr.to_be_bytes()].concat(),
        // Every third event closes a keyed command: every backend must keep the record as is.
        idempotency: seq_nr.is_multiple_of(3).then(|| super::IdempotencyRecord {
            key: format!("retry-{seq_nr}"),
            digest: vec![0, 0xff, 7, 42],
            reply: [b"\x00\xff reply ".as_slice(), &seq_nr.to_be_bytes()].concat(),
        }),
    }
}

/// `count` consecutive sample events after `expected_seq_nr`, stamped with `fencing_token`.
pub fn sample_batch(
    persistence_id: &str,
    expected_seq_nr: u64,
    fencing_token: u64,
    count: u64,
    writer: Ulid,
) -> Vec<EventEnvelope> {
    (expected_seq_nr + 1..=expected_seq_nr + count)
        .map(|seq_nr| EventEnvelope {
            fencing_token,
            ..sample_event(persistence_id, seq_nr, writer)
        })
        .collect()
}

/// A snapshot with every field set.
pub fn sample_snapshot(persistence_id: &str, seq_nr: u64, writer: Ulid) -> SnapshotEnvelope {
    SnapshotEnvelope {
        persistence_id: persistence_id.to_owned(),
        seq_nr,
        writer,
        version: BTreeMap::from([("eu".to_owned(), seq_nr)]),
        seen: BTreeMap::from([("us".to_owned(), seq_nr / 2), ("eu".to_owned(), u64::MAX)]),
        plugin: "orders@9f86d081884c".to_owned(),
        payload: format!("state at {seq_nr}").into_bytes(),
    }
}

async fn read_all(journal: &dyn Journal, persistence_id: &str) -> Vec<EventEnvelope> {
    journal
        .read(persistence_id, 1, usize::MAX)
        .await
        .expect("read the whole stream")
}

pub async fn check_append_and_read_round_trip(journal: Arc<dyn Journal>) {
    let pid = "order|ä-42 ✓";
    let writer = Ulid::new();
    let first = sample_batch(pid, 0, 0, 3, writer);
    let second = vec![EventEnvelope {
        origin_replica: String::new(),
        version: BTreeMap::new(),
        payload: Vec::new(),
        ..sample_event(pid, 4, writer)
    }];
    journal
        .append(pid, 0, 0, first.clone())
        .await
        .expect("first append to an empty stream");
    journal
        .append(pid, 3, 0, second.clone())
        .await
        .expect("append after the first batch");

    let expected: Vec<_> = first.into_iter().chain(second).collect();
    assert_eq!(
        read_all(&*journal, pid).await,
        expected,
        "every envelope field survives a round trip"
    );
    assert_eq!(journal.highest_seq_nr(pid).await, Ok(4));
    assert_eq!(journal.highest_seq_nr("order|unknown").await, Ok(0));
    assert_eq!(
        read_all(&*journal, "order|unknown").await,
        Vec::new(),
        "an unknown stream reads as empty"
    );
}

pub async fn check_seq_conflict_writes_nothing(journal: Arc<dyn Journal>) {
    let pid = "order|1";
    let writer = Ulid::new();
    journal
        .append(pid, 0, 0, sample_batch(pid, 0, 0, 2, writer))
        .await
        .expect("initial append");
    let before = read_all(&*journal, pid).await;

    for stale_expected in [0, 1, 3, 7] {
        let result = journal
            .append(
                pid,
                stale_expected,
                0,
                sample_batch(pid, stale_expected, 0, 2, writer),
            )
            .await;
        assert_eq!(
            result,
            Err(JournalError::SeqConflict {
                persistence_id: pid.to_owned(),
                expected_seq_nr: stale_expected,
                actual_seq_nr: 2,
            }),
            "append expecting {stale_expected} to a stream at 2"
        );
    }
    assert_eq!(
        read_all(&*journal, pid).await,
        before,
        "a conflicting append writes nothing"
    );
}

pub async fn check_stale_fencing_token_writes_nothing(journal: Arc<dyn Journal>) {
    let pid = "order|fenced";
    let writer = Ulid::new();
    journal.record_fence(pid, 5).await.expect("record fence 5");
    journal
        .append(pid, 0, 5, sample_batch(pid, 0, 5, 1, writer))
        .await
        .expect("append with the recorded token");
    journal
        .append(pid, 1, 9, sample_batch(pid, 1, 9, 1, writer))
        .await
        .expect("append with a token above the recorded one");

    let result = journal
        .append(pid, 2, 4, sample_batch(pid, 2, 4, 2, writer))
        .await;
    assert_eq!(
        result,
        Err(JournalError::StaleFencingToken {
            persistence_id: pid.to_owned(),
            token: 4,
            current: 5,
        })
    );
    // The fence is checked before the sequence number: a deposed writer learns it lost the lease even
    // when its view of the stream is also out of date.
    let result = journal
        .append(pid, 0, 0, sample_batch(pid, 0, 0, 1, writer))
        .await;
    assert!(
        matches!(
            result,
            Err(JournalError::StaleFencingToken {
                token: 0,
                current: 5,
                ..
            })
        ),
        "stale token and stale seq nr: {result:?}"
    );
    assert_eq!(journal.highest_seq_nr(pid).await, Ok(2), "nothing written");
}

pub async fn check_record_fence_is_monotonic(journal: Arc<dyn Journal>) {
    let pid = "order|lease";
    assert_eq!(journal.fence(pid).await, Ok(0), "no fence recorded yet");
    journal.record_fence(pid, 5).await.expect("record 5");
    journal
        .record_fence(pid, 5)
        .await
        .expect("recording the same token again is idempotent");
    assert_eq!(
        journal.record_fence(pid, 3).await,
        Err(JournalError::StaleFencingToken {
            persistence_id: pid.to_owned(),
            token: 3,
            current: 5,
        })
    );
    assert_eq!(
        journal.fence(pid).await,
        Ok(5),
        "a lower token changes nothing"
    );
    journal.record_fence(pid, 8).await.expect("record 8");
    assert_eq!(journal.fence(pid).await, Ok(8));
    assert_eq!(
        journal.fence("order|other").await,
        Ok(0),
        "fences are per persistence id"
    );
    assert!(
        matches!(
            journal.record_fence(pid, STORED_INTEGER_MAX + 1).await,
            Err(JournalError::ValueOutOfRange { .. })
        ),
        "a token beyond the stored range is refused"
    );
    assert_eq!(journal.fence(pid).await, Ok(8));
}

/// Advancing a fence returns one above the recorded token, fences older tokens out, interleaves with
/// recorded lease tokens, and never hands the same token to two concurrent callers.
pub async fn check_advance_fence_is_atomic(journal: Arc<dyn Journal>) {
    let pid = "order|placed";
    let writer = Ulid::new();
    assert_eq!(
        journal.advance_fence(pid).await,
        Ok(1),
        "from no fence to 1"
    );
    assert_eq!(journal.advance_fence(pid).await, Ok(2));
    assert_eq!(journal.fence(pid).await, Ok(2));
    assert_eq!(
        journal
            .append(pid, 0, 1, sample_batch(pid, 0, 1, 1, writer))
            .await,
        Err(JournalError::StaleFencingToken {
            persistence_id: pid.to_owned(),
            token: 1,
            current: 2,
        }),
        "the first activation's token is fenced out by the second"
    );
    journal
        .append(pid, 0, 2, sample_batch(pid, 0, 2, 1, writer))
        .await
        .expect("append with the advanced token");
    journal.record_fence(pid, 10).await.expect("record 10");
    assert_eq!(
        journal.advance_fence(pid).await,
        Ok(11),
        "advances from a recorded token"
    );
    assert_eq!(
        journal.fence("order|other").await,
        Ok(0),
        "advancing is per persistence id"
    );

    let contended = "order|contended-fence";
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENT_TASKS {
        let journal = Arc::clone(&journal);
        tasks.spawn(async move {
            let mut tokens = Vec::new();
            for _ in 0..APPENDS_PER_TASK {
                tokens.push(journal.advance_fence(contended).await.expect("advance"));
            }
            tokens
        });
    }
    let mut tokens = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        tokens.extend(joined.expect("advancing task"));
    }
    tokens.sort_unstable();
    let every_token: Vec<u64> = (1..=CONCURRENT_TASKS * APPENDS_PER_TASK).collect();
    assert_eq!(
        tokens, every_token,
        "concurrent advances hand out every token exactly once"
    );
    assert_eq!(
        journal.fence(contended).await,
        Ok(CONCURRENT_TASKS * APPENDS_PER_TASK)
    );
}

pub async fn check_invalid_batches_are_rejected(journal: Arc<dyn Journal>) {
    let pid = "order|7";
    let writer = Ulid::new();
    journal
        .append(pid, 0, 0, sample_batch(pid, 0, 0, 2, writer))
        .await
        .expect("initial append");

    let mut gap = sample_batch(pid, 2, 0, 3, writer);
    gap[1].seq_nr = 5;
    let mut mixed_ids = sample_batch(pid, 2, 0, 2, writer);
    mixed_ids[1].persistence_id = "order|8".to_owned();
    let mut mixed_tokens = sample_batch(pid, 2, 0, 2, writer);
    mixed_tokens[1].fencing_token = 1;
    let mut huge_timestamp = sample_batch(pid, 2, 0, 1, writer);
    huge_timestamp[0].timestamp = u64::MAX;

    let invalid: Vec<(&str, &str, u64, Vec<EventEnvelope>)> = vec![
        ("an empty batch", pid, 2, Vec::new()),
        (
            "an empty persistence id",
            "",
            2,
            sample_batch("", 2, 0, 1, writer),
        ),
        ("a gap inside the batch", pid, 2, gap),
        (
            "a batch not starting at expected + 1",
            pid,
            2,
            sample_batch(pid, 3, 0, 2, writer),
        ),
        ("mixed persistence ids", pid, 2, mixed_ids),
        ("an event with another fencing token", pid, 2, mixed_tokens),
        (
            "more events than one append may carry",
            pid,
            2,
            sample_batch(pid, 2, 0, EVENTS_PER_APPEND_MAX as u64 + 1, writer),
        ),
    ];
    for (what, batch_pid, expected_seq_nr, events) in invalid {
        let result = journal.append(batch_pid, expected_seq_nr, 0, events).await;
        assert!(
            matches!(result, Err(JournalError::InvalidBatch(_))),
            "{what} is an invalid batch, got {result:?}"
        );
    }
    let result = journal.append(pid, 2, 0, huge_timestamp).await;
    assert!(
        matches!(
            result,
            Err(JournalError::ValueOutOfRange {
                field: "timestamp",
                ..
            })
        ),
        "a timestamp beyond the stored range, got {result:?}"
    );
    let result = journal
        .append(
            pid,
            STORED_INTEGER_MAX,
            0,
            sample_batch(pid, STORED_INTEGER_MAX, 0, 1, writer),
        )
        .await;
    assert!(
        matches!(
            result,
            Err(JournalError::ValueOutOfRange {
                field: "seq nr",
                ..
            })
        ),
        "a seq nr beyond the stored range, got {result:?}"
    );

    assert_eq!(journal.highest_seq_nr(pid).await, Ok(2), "nothing written");
    assert_eq!(journal.highest_seq_nr("order|8").await, Ok(0));
    assert_eq!(journal.highest_seq_nr("").await, Ok(0));
}

pub async fn check_read_from_the_middle_with_max(journal: Arc<dyn Journal>) {
    let pid = "order|long";
    let writer = Ulid::new();
    let events = sample_batch(pid, 0, 0, 10, writer);
    journal
        .append(pid, 0, 0, events.clone())
        .await
        .expect("append 10 events");

    let seq_nrs = |read: Vec<EventEnvelope>| read.iter().map(|e| e.seq_nr).collect::<Vec<_>>();
    assert_eq!(
        journal.read(pid, 4, 3).await.map(seq_nrs),
        Ok(vec![4, 5, 6]),
        "from the middle, at most max"
    );
    assert_eq!(
        journal.read(pid, 8, 100).await.map(seq_nrs),
        Ok(vec![8, 9, 10]),
        "max beyond the end"
    );
    assert_eq!(
        journal.read(pid, 0, 2).await.map(seq_nrs),
        Ok(vec![1, 2]),
        "from 0 reads from the start"
    );
    assert_eq!(
        journal.read(pid, 11, 5).await,
        Ok(Vec::new()),
        "past the end"
    );
    assert_eq!(journal.read(pid, 1, 0).await, Ok(Vec::new()), "max 0");
    assert_eq!(
        journal.read(pid, u64::MAX, usize::MAX).await,
        Ok(Vec::new()),
        "extreme arguments"
    );
    assert_eq!(journal.read(pid, 5, 1).await, Ok(vec![events[4].clone()]));
}

pub async fn check_snapshots_keep_the_latest(journal: Arc<dyn Journal>) {
    let pid = "order|snap";
    let writer = Ulid::new();
    assert_eq!(journal.latest_snapshot(pid).await, Ok(None));

    let at_5 = sample_snapshot(pid, 5, writer);
    journal
        .save_snapshot(at_5.clone())
        .await
        .expect("save at 5");
    assert_eq!(
        journal.latest_snapshot(pid).await,
        Ok(Some(at_5.clone())),
        "every snapshot field survives a round trip"
    );

    journal
        .save_snapshot(sample_snapshot(pid, 3, writer))
        .await
        .expect("save an older snapshot");
    assert_eq!(
        journal.latest_snapshot(pid).await,
        Ok(Some(at_5)),
        "an older snapshot does not replace a newer one"
    );

    let at_9 = sample_snapshot(pid, 9, writer);
    journal.save_snapshot(at_9).await.expect("save at 9");
    let at_9_again = SnapshotEnvelope {
        payload: b"state at 9, re-encoded".to_vec(),
        plugin: "orders@60303ae22b99".to_owned(),
        ..sample_snapshot(pid, 9, Ulid::new())
    };
    journal
        .save_snapshot(at_9_again.clone())
        .await
        .expect("save at 9 again");
    assert_eq!(
        journal.latest_snapshot(pid).await,
        Ok(Some(at_9_again)),
        "a snapshot at the same seq nr replaces the stored one"
    );
    assert_eq!(
        journal.latest_snapshot("order|other").await,
        Ok(None),
        "snapshots are per persistence id"
    );
    assert!(matches!(
        journal
            .save_snapshot(sample_snapshot(pid, u64::MAX, writer))
            .await,
        Err(JournalError::ValueOutOfRange { .. })
    ));
}

pub async fn check_persistence_ids_are_listed(journal: Arc<dyn Journal>) {
    let writer = Ulid::new();
    assert_eq!(journal.persistence_ids().await, Ok(Vec::new()));
    for pid in ["order|2", "cart|9", "order|10"] {
        journal
            .append(pid, 0, 0, sample_batch(pid, 0, 0, 2, writer))
            .await
            .expect("append");
    }
    journal
        .record_fence("lease-only|1", 3)
        .await
        .expect("record a fence");
    journal
        .save_snapshot(sample_snapshot("snapshot-only|1", 4, writer))
        .await
        .expect("save a snapshot");
    assert_eq!(
        journal.persistence_ids().await,
        Ok(vec![
            "cart|9".to_owned(),
            "order|10".to_owned(),
            "order|2".to_owned()
        ]),
        "ids with events, ascending; fences and snapshots alone do not list an id"
    );
}

/// Streams in a range of persistence ids, byte-wise ascending, with the highest seq nr of their
/// events or snapshot: streams with only a snapshot or only a fence, ids just outside the range,
/// and a page bounded by `max` and continued from the id after its last.
pub async fn check_stream_heads_page_through_a_range(journal: Arc<dyn Journal>) {
    let writer = Ulid::new();
    for (pid, count) in [
        ("tally|2", 3),
        ("tally|10", 1),
        ("tally|a|eu", 2),
        ("tallyx|1", 1),
        ("tall|1", 1),
        ("tally}", 1),
    ] {
        journal
            .append(pid, 0, 0, sample_batch(pid, 0, 0, count, writer))
            .await
            .expect("append");
    }
    for (pid, seq_nr) in [("tally|10", 7), ("tally|2", 2), ("tally|snapshot-only", 4)] {
        journal
            .save_snapshot(sample_snapshot(pid, seq_nr, writer))
            .await
            .expect("save a snapshot");
    }
    journal
        .record_fence("tally|fence-only", 3)
        .await
        .expect("record a fence");
    let head = |pid: &str, seq_nr| StreamHead {
        persistence_id: pid.to_owned(),
        seq_nr,
    };
    let all = vec![
        head("tally|10", 7),
        head("tally|2", 3),
        head("tally|a|eu", 2),
        head("tally|snapshot-only", 4),
    ];
    assert_eq!(
        journal.stream_heads("tally|", "tally}", 100).await,
        Ok(all.clone()),
        "the range's streams with events or a snapshot, byte-wise, the later of the two heads"
    );
    assert_eq!(
        journal.stream_heads("tally|", "tally}", 2).await,
        Ok(all[..2].to_vec())
    );
    assert_eq!(
        journal.stream_heads("tally|2", "tally}", 2).await,
        Ok(all[1..3].to_vec()),
        "from is inclusive"
    );
    assert_eq!(
        journal.stream_heads("tally|b", "tally}", 100).await,
        Ok(all[3..].to_vec())
    );
    assert_eq!(
        journal.stream_heads("tally}", "tally|", 100).await,
        Ok(vec![])
    );
    assert_eq!(
        journal.stream_heads("tally|", "tally}", 0).await,
        Ok(vec![])
    );
}

/// [`CONCURRENT_TASKS`] tasks each append [`APPENDS_PER_TASK`] single-event batches to their own
/// persistence id, all at once: every append succeeds and every stream is complete and in order.
pub async fn check_concurrent_appends_to_distinct_ids(journal: Arc<dyn Journal>) {
    let writer = Ulid::new();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENT_TASKS {
        let journal = Arc::clone(&journal);
        tasks.spawn(async move {
            let pid = format!("counter|{task}");
            for expected_seq_nr in 0..APPENDS_PER_TASK {
                journal
                    .append(
                        &pid,
                        expected_seq_nr,
                        0,
                        sample_batch(&pid, expected_seq_nr, 0, 1, writer),
                    )
                    .await
                    .expect("an uncontended append succeeds");
            }
        });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.expect("appending task");
    }
    for task in 0..CONCURRENT_TASKS {
        let pid = format!("counter|{task}");
        assert_eq!(
            read_all(&*journal, &pid).await,
            sample_batch(&pid, 0, 0, APPENDS_PER_TASK, writer),
            "stream {pid} holds exactly its appends, in order"
        );
    }
}

/// [`CONCURRENT_TASKS`] tasks race to append to one persistence id, each attempt expecting the highest
/// seq nr it just read. Every attempt either succeeds or fails with `SeqConflict`; the stream holds
/// every successful attempt exactly once, gap-free, and no failed one.
pub async fn check_racing_appends_to_one_id(journal: Arc<dyn Journal>) {
    let pid = "counter|contended";
    let writer = Ulid::new();
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..CONCURRENT_TASKS {
        let journal = Arc::clone(&journal);
        tasks.spawn(async move {
            let mut outcomes = Vec::new();
            for attempt in 0..APPENDS_PER_TASK {
                let expected_seq_nr = journal.highest_seq_nr(pid).await.expect("highest seq nr");
                let event = EventEnvelope {
                    payload: attempt_payload(task, attempt),
                    ..sample_event(pid, expected_seq_nr + 1, writer)
                };
                let result = journal.append(pid, expected_seq_nr, 0, vec![event]).await;
                match result {
                    Ok(()) => outcomes.push((attempt_payload(task, attempt), true)),
                    Err(JournalError::SeqConflict {
                        expected_seq_nr: conflict_expected,
                        actual_seq_nr,
                        ..
                    }) => {
                        assert_eq!(conflict_expected, expected_seq_nr);
                        assert!(
                            actual_seq_nr > expected_seq_nr,
                            "a conflict means the stream moved on"
                        );
                        outcomes.push((attempt_payload(task, attempt), false));
                    }
                    Err(other) => panic!("a racing append failed with {other:?}"),
                }
            }
            outcomes
        });
    }
    let mut succeeded: HashMap<Vec<u8>, bool> = HashMap::new();
    while let Some(joined) = tasks.join_next().await {
        succeeded.extend(joined.expect("racing task"));
    }
    assert_eq!(succeeded.len() as u64, CONCURRENT_TASKS * APPENDS_PER_TASK);

    let stream = read_all(&*journal, pid).await;
    let seq_nrs: Vec<u64> = stream.iter().map(|event| event.seq_nr).collect();
    let gap_free: Vec<u64> = (1..=stream.len() as u64).collect();
    assert_eq!(seq_nrs, gap_free, "the contended stream is gap-free");

    let mut stored_attempts: HashMap<&[u8], usize> = HashMap::new();
    for event in &stream {
        *stored_attempts.entry(event.payload.as_slice()).or_default() += 1;
    }
    for (payload, won) in &succeeded {
        let times_stored = stored_attempts
            .get(payload.as_slice())
            .copied()
            .unwrap_or(0);
        assert_eq!(
            times_stored,
            usize::from(*won),
            "attempt {payload:?}: a successful append is stored exactly once, a conflicting one never"
        );
    }
    assert_eq!(
        stream.len(),
        succeeded.values().filter(|won| **won).count(),
        "the stream holds nothing but successful appends"
    );
}

fn attempt_payload(task: u64, attempt: u64) -> Vec<u8> {
    format!("task {task} attempt {attempt}").into_bytes()
}
