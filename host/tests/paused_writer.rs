//! A single-writer entity's writer frozen with SIGSTOP while it writes — as a long GC pause or a
//! frozen VM would freeze it — over two `weft serve` processes sharing a real PostgreSQL journal
//! and lease table. Wherever on its append path the pause lands, the other node writes the entity
//! within the lease's time to live plus a second (the frozen node holds no row lock the new writer
//! would wait on), and once thawed the frozen node gets no append accepted with its old token.
//!
//! The lease lives 500 ms and each pause ten times that, so that 30 rounds fit in about three
//! minutes. Four entities are written at once by two clients each, so the writer is inside some
//! append at almost any instant; a seeded delay before each pause decides where it lands
//! (`WEFT_SIM_SEED=<seed>` repeats a run's delays). The takeover delays are printed; run with
//! `--nocapture` to see them.

mod support;

use serde_json::json;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use ulid::Ulid;

use support::from_msgpack;
use support::node::ServeProcess;
use support::rng::SplitMix64;
use support::services::Postgres;
use weft::config::JournalBackend;
use weft::entity::EntityTypeConfig;

const LEASE_TTL_MS: u64 = 500;
/// How long the writer stays frozen: ten leases.
const PAUSE: Duration = Duration::from_millis(10 * LEASE_TTL_MS);
/// How soon after the pause began the other node must have written every entity.
const TAKEOVER_BOUND: Duration = Duration::from_millis(LEASE_TTL_MS + 1000);
const ROUNDS: usize = 30;
const ENTITIES: usize = 4;
const CLIENTS_PER_ENTITY: usize = 2;
/// A request to a frozen node hangs: the client gives up on it after this long (its outcome is
/// then unknown) and writes to the other node.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(300);
/// Most of the seeded delay between a thaw (or the start) and the next pause, in milliseconds.
const PAUSE_DELAY_MAX_MS: u64 = 700;
/// No node is frozen.
const NONE_FROZEN: usize = usize::MAX;

/// An acknowledged increment: which entity, its (unique) amount, which node answered and when.
struct Ack {
    entity: usize,
    amount: i64,
    node: usize,
    at: Instant,
}

/// What the clients saw.
#[derive(Default)]
struct Ledger {
    acked: Vec<Ack>,
    /// Requests that timed out: applied or not, nobody was told.
    unknown: usize,
    /// Refusals by error code (`not_writer` while the other node writes, …).
    refused: BTreeMap<String, usize>,
}

/// What every client shares with the rounds.
struct Load {
    urls: [String; 2],
    /// The node that is frozen now (`NONE_FROZEN` if none): clients stop sending to it.
    frozen: AtomicUsize,
    stop: AtomicBool,
    ledger: Mutex<Ledger>,
}

/// Increments entity `e{entity}` until told to stop, each time by a new amount (unique across
/// clients, so the journal shows every write's fate), at whichever node last answered it;
/// switches nodes when refused or kept waiting.
async fn client(load: Arc<Load>, entity: usize, number: usize) {
    let http = reqwest::Client::new();
    let mut target = 0;
    let mut amount = (number as i64 + 1) << 32;
    while !load.stop.load(Ordering::Relaxed) {
        if load.frozen.load(Ordering::Relaxed) == target {
            target = 1 - target;
        }
        amount += 1;
        let sent = http
            .post(format!("{}/entities/counter/e{entity}", load.urls[target]))
            .json(&json!({"op": "increment", "by": amount}))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        let refused = match sent {
            Ok(response) if response.status() == 200 => {
                let ack = Ack {
                    entity,
                    amount,
                    node: target,
                    at: Instant::now(),
                };
                load.ledger.lock().unwrap().acked.push(ack);
                continue;
            }
            Ok(response) => {
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let code = body["error"]["code"]
                    .as_str()
                    .unwrap_or("no code")
                    .to_owned();
                *load.ledger.lock().unwrap().refused.entry(code).or_default() += 1;
                true
            }
            Err(_) => {
                load.ledger.lock().unwrap().unknown += 1;
                false
            }
        };
        target = 1 - target;
        if refused {
            // The other node may be the frozen one: do not spin on refusals meanwhile.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The config of node `number`: the shared journal (leases follow it into PostgreSQL), its
/// writer id fixed, `counter` single-writer with a short lease, never passivated.
fn node_config(root: &std::path::Path, number: usize, database: &str) -> std::path::PathBuf {
    let dir = root.join(format!("node-{number}"));
    std::fs::create_dir_all(&dir).unwrap();
    let mut config = support::node::config(&dir, &["counter"]);
    config.node.writer_id = Some(writer_id(number));
    config.journal.backend = JournalBackend::Postgres;
    config.journal.url = Some(database.to_owned());
    let counter = EntityTypeConfig {
        single_writer: true,
        lease_ttl_ms: LEASE_TTL_MS,
        passivate_after_secs: 3600,
        ..EntityTypeConfig::for_plugin("counter")
    };
    config.entities.insert("counter".to_owned(), counter);
    let path = dir.join("weft.toml");
    std::fs::write(&path, toml::to_string(&config).expect("the config as TOML")).unwrap();
    path
}

fn writer_id(node: usize) -> Ulid {
    Ulid::from_parts(1, node as u128 + 1)
}

async fn connect(database: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(database, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(connection);
    client
}

/// The database sessions doing something other than waiting idle for their client: what holds
/// or waits for locks while a writer is frozen.
async fn busy_sessions(database: &str) -> Vec<String> {
    let client = connect(database).await;
    let rows = client
        .query(
            "SELECT application_name, state, \
                 EXTRACT(EPOCH FROM now() - state_change)::FLOAT8, wait_event_type, query \
             FROM pg_stat_activity \
             WHERE datname = current_database() AND state <> 'idle' AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .expect("read pg_stat_activity");
    rows.iter()
        .map(|row| {
            let (application, state): (String, String) = (row.get(0), row.get(1));
            let (seconds, waiting): (f64, Option<String>) = (row.get(2), row.get(3));
            let query: String = row.get(4);
            format!("{application}: {state} for {seconds:.1} s (waiting on {waiting:?}): {query}")
        })
        .collect()
}

/// Per entity, how long after `since` node `node` first acknowledged a write of it.
fn first_writes(
    load: &Load,
    from: usize,
    node: usize,
    since: Instant,
) -> BTreeMap<usize, Duration> {
    let ledger = load.ledger.lock().unwrap();
    let mut firsts = BTreeMap::new();
    for ack in ledger.acked[from..].iter() {
        if ack.node == node && ack.at > since {
            firsts
                .entry(ack.entity)
                .or_insert_with(|| ack.at.duration_since(since));
        }
    }
    firsts
}

/// One event as the journal holds it.
struct Stored {
    seq_nr: i64,
    writer: String,
    fencing_token: i64,
    amount: i64,
}

async fn stored_events(database: &str) -> BTreeMap<String, Vec<Stored>> {
    let client = connect(database).await;
    let rows = client
        .query(
            "SELECT persistence_id, seq_nr, writer, fencing_token, payload FROM weft_events \
             ORDER BY persistence_id, seq_nr",
            &[],
        )
        .await
        .expect("read the journal");
    let mut streams: BTreeMap<String, Vec<Stored>> = BTreeMap::new();
    for row in rows {
        let payload: Vec<u8> = row.get(4);
        let event = from_msgpack(&payload);
        streams.entry(row.get(0)).or_default().push(Stored {
            seq_nr: row.get(1),
            writer: row.get(2),
            fencing_token: row.get(3),
            amount: event["by"].as_i64().expect("an increment's amount"),
        });
    }
    streams
}

fn summary(delays: &mut [Duration]) -> String {
    delays.sort();
    let millis = |delay: Duration| delay.as_secs_f64() * 1000.0;
    format!(
        "min {:.0} ms, median {:.0} ms, max {:.0} ms over {} takeovers",
        millis(delays[0]),
        millis(delays[delays.len() / 2]),
        millis(delays[delays.len() - 1]),
        delays.len()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_writer_frozen_mid_append_holds_up_no_takeover_and_lands_nothing_stale() {
    let seed = match std::env::var("WEFT_SIM_SEED") {
        Ok(seed) => seed.parse().expect("WEFT_SIM_SEED is a u64"),
        Err(_) => rand_seed(),
    };
    eprintln!("seed {seed}: replay the pause points with WEFT_SIM_SEED={seed}");
    let mut rng = SplitMix64(seed);

    let postgres = Postgres::start();
    let database = postgres.fresh_database().await;
    let root = tempfile::tempdir().unwrap();
    let nodes = [0, 1].map(|number| {
        ServeProcess::start_with_config(&node_config(root.path(), number, &database))
    });
    let began = Instant::now();
    let load = Arc::new(Load {
        urls: [nodes[0].url.clone(), nodes[1].url.clone()],
        frozen: AtomicUsize::new(NONE_FROZEN),
        stop: AtomicBool::new(false),
        ledger: Mutex::new(Ledger::default()),
    });
    let clients: Vec<_> = (0..ENTITIES * CLIENTS_PER_ENTITY)
        .map(|number| tokio::spawn(client(load.clone(), number % ENTITIES, number)))
        .collect();

    // Node 0 becomes every entity's writer; each round freezes the writer, the other takes over.
    support::eventually("node 0 writes every entity", || async {
        first_writes(&load, 0, 0, began).len() == ENTITIES
    })
    .await;
    let mut delays = Vec::new();
    for round in 0..ROUNDS {
        let (frozen, other) = (round % 2, 1 - round % 2);
        tokio::time::sleep(Duration::from_millis(100 + rng.below(PAUSE_DELAY_MAX_MS))).await;
        let from = load.ledger.lock().unwrap().acked.len();
        let started = Instant::now();
        load.frozen.store(frozen, Ordering::Relaxed);
        nodes[frozen].freeze();
        let mut sessions_at_bound = None;
        while started.elapsed() < PAUSE {
            if sessions_at_bound.is_none()
                && started.elapsed() > TAKEOVER_BOUND
                && first_writes(&load, from, other, started).len() < ENTITIES
            {
                sessions_at_bound = Some(busy_sessions(&database).await);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let firsts = first_writes(&load, from, other, started);
        nodes[frozen].thaw();
        load.frozen.store(NONE_FROZEN, Ordering::Relaxed);

        let late: Vec<String> = (0..ENTITIES)
            .filter_map(|entity| match firsts.get(&entity) {
                Some(delay) if *delay <= TAKEOVER_BOUND => None,
                Some(delay) => Some(format!("e{entity} first written after {delay:?}")),
                None => Some(format!("e{entity} not written during the {PAUSE:?} pause")),
            })
            .collect();
        assert!(
            late.is_empty(),
            "round {round} (seed {seed}): node {other} did not take over within {TAKEOVER_BOUND:?} \
             of node {frozen}'s pause: {late:?}\nbusy database sessions then:\n{}",
            sessions_at_bound.unwrap_or_default().join("\n")
        );
        delays.extend(firsts.into_values());
    }

    load.stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.expect("a client ran to its end");
    }
    let streams = stored_events(&database).await;
    let ledger = load.ledger.lock().unwrap();
    let writers: Vec<String> = (0..2).map(|node| writer_id(node).to_string()).collect();
    let mut stale = Vec::new();
    let mut occurrences: BTreeMap<i64, usize> = BTreeMap::new();
    for (persistence_id, events) in &streams {
        let mut highest_token = 0;
        let mut token_writers: BTreeMap<i64, &str> = BTreeMap::new();
        for (position, event) in events.iter().enumerate() {
            assert_eq!(
                event.seq_nr,
                position as i64 + 1,
                "{persistence_id} has a gap"
            );
            assert!(
                writers.contains(&event.writer),
                "{persistence_id}: {}",
                event.writer
            );
            // A token belongs to one tenure, so to one writer.
            let tenure_writer = token_writers
                .entry(event.fencing_token)
                .or_insert(&event.writer);
            assert_eq!(
                *tenure_writer, event.writer,
                "{persistence_id}: token {} written by two nodes",
                event.fencing_token
            );
            // An event below a token already written comes from a tenure that had ended.
            if event.fencing_token < highest_token {
                stale.push(format!(
                    "{persistence_id} #{} by {} with token {} after token {highest_token}",
                    event.seq_nr, event.writer, event.fencing_token
                ));
            }
            highest_token = highest_token.max(event.fencing_token);
            *occurrences.entry(event.amount).or_default() += 1;
        }
    }
    assert!(stale.is_empty(), "stale appends accepted: {stale:#?}");
    let duplicated: Vec<_> = occurrences
        .iter()
        .filter(|(_, count)| **count > 1)
        .collect();
    assert!(
        duplicated.is_empty(),
        "amounts stored twice: {duplicated:?}"
    );
    let lost: Vec<i64> = ledger
        .acked
        .iter()
        .map(|ack| ack.amount)
        .filter(|amount| !occurrences.contains_key(amount))
        .collect();
    assert!(
        lost.is_empty(),
        "acknowledged but not in the journal: {lost:?}"
    );

    let events: usize = streams.values().map(Vec::len).sum();
    println!(
        "{ROUNDS} pauses of {PAUSE:?} with a {LEASE_TTL_MS} ms lease, {ENTITIES} entities: \
         the other node's first write after the pause began: {}; {events} events, {} acknowledged, \
         {} unknown, refusals {:?}, 0 stale",
        summary(&mut delays),
        ledger.acked.len(),
        ledger.unknown,
        ledger.refused
    );
}

/// A seed for this run's pause points, from the clock.
fn rand_seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|since| since.as_nanos() as u64)
        .unwrap_or(0)
}
