//! Linearizability of entities through a cluster under faults, for single-writer and placed
//! types.
//!
//! Three `weft serve` processes share a real PostgreSQL journal and lease backend. Clients append
//! unique entries to `ledger` entities of both types and read their whole state, each request through a random
//! node (which forwards to the owner), while a seeded nemesis pauses a node past its lease
//! (`SIGSTOP`), kills one (`SIGKILL`) and restarts it, or cuts one off from the others. Every
//! request is recorded with the instants it was sent and answered; the history is then checked
//! against the model of an append-only list (see [`check_history`]), with the journal's stream as
//! the order of the appends.

mod support;

use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};
use support::cluster::{DEADLINE, TestCluster, inject_fault, wait_for_members};
use support::node::ServeProcess;
use support::rng::SplitMix64;
use support::services::Postgres;
use weft::journal::{Journal, PostgresJournal};

/// Seeded runs, each with its own entities, faults and client schedule.
const RUNS: u64 = 20;
const NODES: [&str; 3] = ["l1", "l2", "l3"];
/// A single-writer type (a lease per entity) and a placed one (fenced per activation).
const ENTITY_TYPES: [&str; 2] = ["ledger", "placed-ledger"];
/// Entities of each type in one run.
const KEYS_PER_RUN: usize = 2;
const CLIENTS: u64 = 6;
/// How long the clients send in one run; the nemesis acts within it.
const RUN_LENGTH: Duration = Duration::from_millis(4_000);
/// Each request's own timeout: past it, the outcome of an append is unknown.
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2_500);
const LEASE_TTL_MS: u64 = 1_000;
/// A client's pause after a failed request, so a node that is down is not hammered.
const BACK_OFF: Duration = Duration::from_millis(25);

/// What a client did, from the test's clock: `invoked` when it sent the request, `completed` when
/// it had the answer (`None`: no answer, so it may take effect at any later time).
#[derive(Debug, Clone)]
struct Op {
    client: u64,
    invoked: Duration,
    completed: Option<Duration>,
    kind: OpKind,
}

#[derive(Debug, Clone, PartialEq)]
enum OpKind {
    /// Appended this entry (acknowledged if `completed` is set), answered as the list's
    /// `entries`-th entry.
    Append { entry: i64, entries: Option<u64> },
    /// Read the whole list.
    Read(Vec<i64>),
}

/// Checks one key's history against an append-only list, whose appends took effect in the order
/// of `stream` (the journal's events). Returns the first violation found.
///
/// Every append's place is fixed by the stream and every read's by the length of the prefix it
/// saw, so the history is linearizable exactly when:
/// - the stream holds no entry twice, and every acknowledged append, at the place its answer
///   gave;
/// - each read saw a prefix of the stream;
/// - real time is respected: an operation that completed before another was invoked takes effect
///   no later (append `i` at point `2i + 1`, a read of `k` entries at point `2k`).
fn check_history(ops: &[Op], stream: &[i64]) -> Result<(), String> {
    let mut position = HashMap::new();
    for (index, entry) in stream.iter().enumerate() {
        if position.insert(*entry, index).is_some() {
            return Err(format!("entry {entry} is in the stream twice: {stream:?}"));
        }
    }
    let mut points = Vec::with_capacity(ops.len());
    for op in ops {
        let point = match &op.kind {
            OpKind::Append { entry, entries } => match position.get(entry) {
                Some(index) if entries.is_some_and(|entries| entries != *index as u64 + 1) => {
                    return Err(format!(
                        "append {entry} was answered as entry {entries:?} of the list, but is \
                         entry {} of the stream {stream:?}",
                        index + 1
                    ));
                }
                Some(index) => 2 * index + 1,
                None if op.completed.is_some() => {
                    return Err(format!("acknowledged append {entry} is not in the stream"));
                }
                // Never applied: it orders nothing.
                None => continue,
            },
            OpKind::Read(seen) => {
                if seen.len() > stream.len() || stream[..seen.len()] != seen[..] {
                    return Err(format!(
                        "client {} read {seen:?}, not a prefix of the stream {stream:?}",
                        op.client
                    ));
                }
                2 * seen.len()
            }
        };
        points.push((op, point));
    }
    // Sweep in order of invocation, keeping the latest point of every operation that completed
    // before the current one was invoked.
    let mut by_completion: Vec<(Duration, usize, &Op)> = points
        .iter()
        .filter_map(|(op, point)| op.completed.map(|done| (done, *point, *op)))
        .collect();
    by_completion.sort_by_key(|(done, _, _)| *done);
    points.sort_by_key(|(op, _)| op.invoked);
    let mut completed = by_completion.iter().peekable();
    let mut latest: Option<(usize, &Op)> = None;
    for (op, point) in &points {
        while let Some((_, earlier_point, earlier)) =
            completed.next_if(|(done, _, _)| *done < op.invoked)
        {
            if latest.is_none_or(|(latest_point, _)| *earlier_point > latest_point) {
                latest = Some((*earlier_point, earlier));
            }
        }
        if let Some((latest_point, earlier)) = latest
            && latest_point > *point
        {
            return Err(format!(
                "{op:?} takes effect before {earlier:?}, which completed before it was invoked \
                 (stream {stream:?})"
            ));
        }
    }
    Ok(())
}

/// The nodes' current addresses (a restarted node listens on a new port).
type Urls = Arc<RwLock<Vec<String>>>;

async fn client(
    number: u64,
    seed: u64,
    keys: Vec<String>,
    urls: Urls,
    started: Instant,
    until: Instant,
    history: Arc<Mutex<BTreeMap<String, Vec<Op>>>>,
) {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let mut rng = SplitMix64(seed ^ (number << 32));
    let mut appended = 0i64;
    while Instant::now() < until {
        let key = rng.pick(&keys).clone();
        let url = rng.pick(&urls.read().unwrap()).clone();
        let invoked = started.elapsed();
        let op = if rng.below(10) < 6 {
            appended += 1;
            let entry = (number as i64 + 1) * 1_000_000 + appended;
            let response = http
                .post(format!("{url}/entities/{key}"))
                .json(&json!({"op": "record", "amount": entry}))
                .send()
                .await;
            let answer: Option<Value> = match response {
                Ok(response) if response.status() == 200 => response.json().await.ok(),
                _ => None,
            };
            if answer.is_none() {
                tokio::time::sleep(BACK_OFF).await;
            }
            Op {
                client: number,
                invoked,
                completed: answer.is_some().then(|| started.elapsed()),
                kind: OpKind::Append {
                    entry,
                    entries: answer.and_then(|answer| answer["reply"]["entries"].as_u64()),
                },
            }
        } else {
            let response = http.get(format!("{url}/entities/{key}")).send().await;
            let state: Option<Value> = match response {
                Ok(response) if response.status() == 200 => response.json().await.ok(),
                _ => None,
            };
            // A read that failed tells nothing.
            let Some(state) = state else {
                tokio::time::sleep(BACK_OFF).await;
                continue;
            };
            let entries = state["state"]["entries"]
                .as_array()
                .map(|entries| entries.iter().filter_map(Value::as_i64).collect())
                .unwrap_or_default();
            Op {
                client: number,
                invoked,
                completed: Some(started.elapsed()),
                kind: OpKind::Read(entries),
            }
        };
        history.lock().unwrap().entry(key).or_default().push(op);
    }
}

/// The faults of one run, drawn from `rng`.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Freeze the node for this long (several lease TTLs).
    Pause(usize, Duration),
    /// `SIGKILL`, then start it again after this long.
    Kill(usize, Duration),
    /// Cut the node off from the others for this long.
    Partition(usize, Duration),
}

fn draw_faults(rng: &mut SplitMix64) -> Vec<(Duration, Fault)> {
    let mut faults = Vec::new();
    let mut at = Duration::from_millis(200 + rng.below(600));
    for _ in 0..2 {
        let node = rng.below(NODES.len() as u64) as usize;
        let length = Duration::from_millis(1_200 + rng.below(1_800));
        let fault = match rng.below(3) {
            0 => Fault::Pause(node, length),
            1 => Fault::Kill(node, length),
            _ => Fault::Partition(node, length),
        };
        faults.push((at, fault));
        at += length + Duration::from_millis(rng.below(400));
    }
    faults
}

fn signal(process: &ServeProcess, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &process.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name} {}", process.pid());
}

/// The test cluster's nodes, restartable.
struct Nodes {
    cluster: TestCluster,
    processes: Vec<Option<ServeProcess>>,
    urls: Urls,
}

impl Nodes {
    async fn restart(&mut self, index: usize) {
        let config = self.cluster.config(NODES[index], "actor");
        let process = tokio::task::spawn_blocking(move || ServeProcess::start_with_config(&config))
            .await
            .unwrap();
        self.urls.write().unwrap()[index] = process.url.clone();
        self.processes[index] = Some(process);
    }

    /// Waits until every node sees all of them.
    async fn wait_for_one_view(&self, http: &reqwest::Client) {
        let urls = self.urls.read().unwrap().clone();
        for url in urls {
            wait_for_members(http, &url, &NODES).await;
        }
    }

    fn process(&self, index: usize) -> &ServeProcess {
        self.processes[index].as_ref().expect("a running node")
    }

    async fn partition(&self, http: &reqwest::Client, index: usize) {
        let others: Vec<&str> = (0..NODES.len())
            .filter(|other| *other != index)
            .map(|other| NODES[other])
            .collect();
        inject_fault(
            http,
            &self.process(index).url,
            json!({"fault": "partition", "from": others}),
        )
        .await;
        for other in (0..NODES.len()).filter(|other| *other != index) {
            inject_fault(
                http,
                &self.process(other).url,
                json!({"fault": "partition", "from": [NODES[index]]}),
            )
            .await;
        }
    }

    async fn heal(&self, http: &reqwest::Client) {
        for index in 0..NODES.len() {
            inject_fault(http, &self.process(index).url, json!({"fault": "heal"})).await;
        }
    }

    async fn apply(&mut self, http: &reqwest::Client, fault: Fault) {
        match fault {
            Fault::Pause(node, length) => {
                signal(self.process(node), "STOP");
                tokio::time::sleep(length).await;
                signal(self.process(node), "CONT");
            }
            Fault::Kill(node, length) => {
                self.processes[node].take().expect("a running node").kill();
                tokio::time::sleep(length).await;
                self.restart(node).await;
            }
            Fault::Partition(node, length) => {
                self.partition(http, node).await;
                tokio::time::sleep(length).await;
                self.heal(http).await;
            }
        }
    }
}

/// Sends a read-only command until one is answered: the entity has a writer again.
async fn until_writable(http: &reqwest::Client, urls: &Urls, key: &str) {
    let started = Instant::now();
    loop {
        let url = urls.read().unwrap()[0].clone();
        let response = http
            .post(format!("{url}/entities/{key}"))
            .json(&json!({"op": "balance"}))
            .timeout(REQUEST_TIMEOUT)
            .send()
            .await;
        if matches!(response, Ok(response) if response.status() == 200) {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{key} takes no command");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entities_stay_linearizable_through_pauses_kills_and_partitions() {
    let postgres = Postgres::start();
    let cluster = TestCluster {
        fault_injection: true,
        extra: format!(
            "[entities.ledger]\nplugin = \"ledger\"\nsingle_writer = true\nlease_ttl_ms = {LEASE_TTL_MS}\n\
             [entities.placed-ledger]\nplugin = \"ledger\"\n"
        ),
        ..TestCluster::new(&postgres, NODES[0]).await
    };
    let http = reqwest::Client::new();
    let mut nodes = Nodes {
        processes: NODES
            .iter()
            .map(|name| Some(cluster.start(name, "actor")))
            .collect(),
        urls: Arc::default(),
        cluster,
    };
    *nodes.urls.write().unwrap() = nodes
        .processes
        .iter()
        .map(|process| process.as_ref().unwrap().url.clone())
        .collect();
    let journal = PostgresJournal::open(&nodes.cluster.database)
        .await
        .unwrap();

    let mut totals = (0usize, 0usize, 0usize);
    for run in 0..RUNS {
        let seed = 0x5eed_0000 + run;
        let mut rng = SplitMix64(seed);
        let faults = draw_faults(&mut rng);
        nodes.wait_for_one_view(&http).await;
        let keys: Vec<String> = ENTITY_TYPES
            .iter()
            .flat_map(|entity_type| {
                (0..KEYS_PER_RUN).map(move |key| format!("{entity_type}/r{run}k{key}"))
            })
            .collect();
        for key in &keys {
            until_writable(&http, &nodes.urls, key).await;
        }

        let history = Arc::new(Mutex::new(BTreeMap::new()));
        let started = Instant::now();
        let until = started + RUN_LENGTH;
        let clients: Vec<_> = (0..CLIENTS)
            .map(|number| {
                tokio::spawn(client(
                    number,
                    seed,
                    keys.clone(),
                    nodes.urls.clone(),
                    started,
                    until,
                    history.clone(),
                ))
            })
            .collect();
        for (at, fault) in &faults {
            tokio::time::sleep_until((started + *at).into()).await;
            nodes.apply(&http, *fault).await;
        }
        for client in clients {
            client.await.unwrap();
        }

        // Quiet again: every node up, one view, every entity writable; then the journal is the
        // order of the appends.
        nodes.wait_for_one_view(&http).await;
        let history = std::mem::take(&mut *history.lock().unwrap());
        for key in &keys {
            until_writable(&http, &nodes.urls, key).await;
            let stream: Vec<i64> = journal
                .read(&key.replace('/', "|"), 1, 1_000_000)
                .await
                .unwrap()
                .iter()
                .map(|event| {
                    let event = support::from_msgpack(&event.payload);
                    event["amount"].as_i64().expect("a recorded amount")
                })
                .collect();
            let ops = history.get(key).map(Vec::as_slice).unwrap_or_default();
            if let Err(violation) = check_history(ops, &stream) {
                panic!("run {run} (seed {seed:#x}, faults {faults:?}), {key}: {violation}");
            }
            let acked: HashSet<i64> = ops
                .iter()
                .filter_map(|op| match op.kind {
                    OpKind::Append { entry, .. } if op.completed.is_some() => Some(entry),
                    _ => None,
                })
                .collect();
            totals.0 += acked.len();
            totals.1 += ops
                .iter()
                .filter(|op| matches!(op.kind, OpKind::Read(_)))
                .count();
            totals.2 += ops.iter().filter(|op| op.completed.is_none()).count();
        }
        eprintln!("run {run}: {faults:?}: linearizable");
    }
    eprintln!(
        "{RUNS} runs: {} acknowledged appends, {} reads, {} appends without an answer, all linearizable",
        totals.0, totals.1, totals.2
    );
}

/// The checker itself, on histories small enough to see: each violation it must find, and a
/// legal history with concurrent operations it must accept.
mod checker {
    use super::*;

    fn append(entry: i64) -> OpKind {
        OpKind::Append {
            entry,
            entries: None,
        }
    }

    fn op(invoked: u64, completed: Option<u64>, kind: OpKind) -> Op {
        Op {
            client: 0,
            invoked: Duration::from_millis(invoked),
            completed: completed.map(Duration::from_millis),
            kind,
        }
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        let ops = [
            op(0, Some(10), append(1)),
            op(5, Some(20), append(2)),
            // Overlaps both appends: may see none, one or both.
            op(1, Some(30), OpKind::Read(vec![])),
            op(11, Some(12), OpKind::Read(vec![1])),
            // Never answered, applied after everything.
            op(13, None, append(3)),
            op(40, Some(41), OpKind::Read(vec![1, 2, 3])),
            // Never answered and never applied.
            op(42, None, append(4)),
        ];
        assert_eq!(check_history(&ops, &[1, 2, 3]), Ok(()));
    }

    #[test]
    fn a_stale_read_is_found() {
        let ops = [
            op(0, Some(10), append(1)),
            op(11, Some(12), append(2)),
            op(13, Some(14), OpKind::Read(vec![1])),
        ];
        let violation = check_history(&ops, &[1, 2]).unwrap_err();
        assert!(violation.contains("takes effect before"), "{violation}");
    }

    #[test]
    fn an_append_answered_from_a_stale_state_is_found() {
        let answered_as = |entries| OpKind::Append {
            entry: 2,
            entries: Some(entries),
        };
        let first = op(0, Some(1), append(1));
        assert_eq!(
            check_history(&[first.clone(), op(2, Some(3), answered_as(2))], &[1, 2]),
            Ok(())
        );
        assert!(check_history(&[first, op(2, Some(3), answered_as(1))], &[1, 2]).is_err());
    }

    #[test]
    fn reads_that_go_back_in_time_are_found() {
        let ops = [
            op(0, Some(1), append(1)),
            op(0, None, append(2)),
            op(2, Some(3), OpKind::Read(vec![1, 2])),
            op(4, Some(5), OpKind::Read(vec![1])),
        ];
        assert!(check_history(&ops, &[1, 2]).is_err());
    }

    #[test]
    fn lost_duplicated_and_invented_entries_are_found() {
        let acked = [op(0, Some(1), append(1))];
        assert!(check_history(&acked, &[]).unwrap_err().contains("not in"));
        assert!(
            check_history(&acked, &[1, 1])
                .unwrap_err()
                .contains("twice")
        );
        let invented = [op(0, Some(1), OpKind::Read(vec![7]))];
        assert!(check_history(&invented, &[1]).is_err());
    }

    #[test]
    fn an_append_that_took_effect_before_it_was_sent_is_found() {
        // Entry 6 is in the stream before 5, though it was sent after 5 was acknowledged.
        let ops = [op(2, Some(3), append(5)), op(4, None, append(6))];
        assert!(check_history(&ops, &[6, 5]).is_err());
        assert_eq!(check_history(&ops, &[5, 6]), Ok(()));
    }
}
