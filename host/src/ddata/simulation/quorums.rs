//! Simulation scenarios for what the consistency levels promise while partitions come and go and
//! every node's live view follows them: a `Majority` read sees every `Majority` write acknowledged
//! before it started (quorums intersect), and a `Majority` write racing a `Majority` delete is
//! refused or survives, never acknowledged and then lost. Each runs over several seeds (see
//! [`for_each_seed`]).

use std::collections::BTreeSet;

use weft_crdt::Crdt;

use super::checks::{self, History};
use super::{Outcome, Simulation, for_each_seed, light_faults};
use crate::cluster::identity::NodeName;
use crate::ddata::{Consistency, DataValue, Entry, Kind, Op, ReplicatorConfig, RequestId};

/// Virtual time clients keep calling, in each run.
const CALLS_MS: u64 = 15_000;

/// Deadline of every `Majority` call.
const TIMEOUT_MS: u64 = 1_000;

fn random_node(sim: &mut Simulation) -> NodeName {
    let names = sim.names();
    let index = usize::try_from(sim.random_range(0..names.len() as u64)).unwrap_or(0);
    names[index].clone()
}

/// Starts and heals partitions at random: call it once per step.
fn maybe_partition(sim: &mut Simulation, healed_at_ms: &mut Option<u64>) {
    match *healed_at_ms {
        Some(at) if sim.now_ms() >= at => {
            sim.heal();
            *healed_at_ms = None;
        }
        None if sim.random_per_mille(30) => {
            let groups = sim.random_split();
            sim.partition(&groups);
            *healed_at_ms = Some(sim.now_ms() + sim.random_range(500..4_000));
        }
        _ => {}
    }
}

/// The outcome of `request` on `node` and when it came, once every call has finished.
fn finished<'a>(
    sim: &'a Simulation,
    node: &NodeName,
    request: RequestId,
) -> Option<(&'a Outcome, u64)> {
    let key = (node.clone(), request);
    Some((sim.outcomes.get(&key)?, *sim.finished_ms.get(&key)?))
}

fn all_finished(sim: &Simulation, calls: &[(NodeName, RequestId)]) -> bool {
    calls
        .iter()
        .all(|(node, request)| finished(sim, node, *request).is_some())
}

fn elements(entry: Option<&Entry>) -> BTreeSet<String> {
    match entry {
        Some(Entry::Value(DataValue::ORSet(set))) => set.value(),
        _ => BTreeSet::new(),
    }
}

/// What a quorum run checked, for the report.
struct QuorumReport {
    reads_checked: usize,
    writes_acked: usize,
    writes_timed_out: usize,
}

fn quorum_run(seed: u64, count: usize) -> Result<QuorumReport, String> {
    let mut sim = Simulation::new(seed, count, ReplicatorConfig::default(), light_faults());
    let mut healed_at_ms = None;
    let mut writes: Vec<(NodeName, RequestId, String)> = Vec::new();
    let mut reads: Vec<(NodeName, RequestId, u64)> = Vec::new();
    while sim.now_ms() < CALLS_MS {
        let next = sim.now_ms() + sim.random_range(20..80);
        sim.run_until(next);
        maybe_partition(&mut sim, &mut healed_at_ms);
        let node = random_node(&mut sim);
        if sim.random_per_mille(500) {
            let element = format!("e{}", writes.len());
            let op = Op::Add {
                element: element.clone(),
            };
            let request = sim
                .update(
                    &node,
                    "log",
                    Kind::ORSet,
                    &op,
                    Consistency::Majority,
                    TIMEOUT_MS,
                )
                .map_err(|error| format!("{node} refused {op:?}: {error}"))?;
            writes.push((node, request, element));
        } else {
            let request = sim
                .read(&node, "log", Consistency::Majority, TIMEOUT_MS)
                .map_err(|error| format!("{node} refused a read: {error}"))?;
            reads.push((node, request, sim.now_ms()));
        }
    }
    sim.heal();
    let calls: Vec<(NodeName, RequestId)> = writes
        .iter()
        .map(|(node, request, _)| (node.clone(), *request))
        .chain(
            reads
                .iter()
                .map(|(node, request, _)| (node.clone(), *request)),
        )
        .collect();
    sim.run_until_true(2 * TIMEOUT_MS, |sim| all_finished(sim, &calls))
        .ok_or("a call never finished")?;

    // Acknowledged writes and when; each read must see those acknowledged before it started.
    let mut acked: Vec<(u64, &str)> = Vec::new();
    let mut writes_timed_out = 0;
    for (node, request, element) in &writes {
        match finished(&sim, node, *request) {
            Some((Outcome::WriteDone, at)) => acked.push((at, element)),
            Some((Outcome::TimedOut { .. }, _)) => writes_timed_out += 1,
            other => return Err(format!("the write of {element} on {node} ended {other:?}")),
        }
    }
    let mut reads_checked = 0;
    for (node, request, started_ms) in &reads {
        let Some((Outcome::ReadDone(entry), _)) = finished(&sim, node, *request) else {
            continue;
        };
        let seen = elements(entry.as_ref());
        let before: Vec<&str> = acked
            .iter()
            .filter(|(at, _)| at <= started_ms)
            .map(|(_, element)| *element)
            .collect();
        if let Some(missed) = before.iter().find(|element| !seen.contains(**element)) {
            return Err(format!(
                "a majority read on {node} at {started_ms} ms missed {missed}, acknowledged \
                 by a majority write before it started"
            ));
        }
        if !before.is_empty() {
            reads_checked += 1;
        }
    }
    if reads_checked == 0 || writes_timed_out == 0 {
        return Err(format!(
            "vacuous run: {reads_checked} reads checked, {writes_timed_out} writes timed out"
        ));
    }
    // Once healed, every node holds every acknowledged element.
    let names = sim.names();
    sim.run_until_true(60_000, |sim| {
        names.iter().all(|name| {
            let held = elements(sim.get(name, "log"));
            acked.iter().all(|(_, element)| held.contains(*element))
        })
    })
    .ok_or("an acknowledged write is missing on some node after the heal")?;
    checks::wire_sound(&sim)?;
    Ok(QuorumReport {
        reads_checked,
        writes_acked: acked.len(),
        writes_timed_out,
    })
}

#[test]
fn a_majority_read_sees_every_majority_write_acknowledged_before_it_under_partitions() {
    for count in [3, 5] {
        let reports = for_each_seed(
            "a_majority_read_sees_every_majority_write_acknowledged_before_it_under_partitions",
            4,
            |seed| quorum_run(seed, count),
        );
        for (seed, report) in reports {
            println!(
                "{count} nodes, seed {seed}: {} majority writes acknowledged, {} timed out, \
                 {} majority reads checked against them",
                report.writes_acked, report.writes_timed_out, report.reads_checked
            );
        }
    }
}

/// One delete racing writes: the key is written at `Majority`, deleted at `Majority` on one
/// node while other nodes keep writing at `Majority` (some before the delete is acknowledged,
/// some after), under loss, delay and partitions. A write that started after the delete was
/// acknowledged and was acknowledged itself would be lost to the tombstone: none may be. (A write
/// that overlapped the delete may be acknowledged: it is ordered before the delete.)
fn race_run(seed: u64, count: usize) -> Result<(usize, usize), String> {
    let mut sim = Simulation::new(seed, count, ReplicatorConfig::default(), light_faults());
    let mut healed_at_ms = None;
    let first = random_node(&mut sim);
    let seed_op = Op::Add {
        element: "first".into(),
    };
    sim.update(
        &first,
        "cart",
        Kind::ORSet,
        &seed_op,
        Consistency::Majority,
        TIMEOUT_MS,
    )
    .map_err(|error| error.to_string())?;
    let settle_ms = sim.now_ms() + sim.random_range(0..500);
    sim.run_until(settle_ms);
    let deleter = random_node(&mut sim);
    let delete = sim
        .delete(&deleter, "cart", Consistency::Majority, TIMEOUT_MS)
        .map_err(|error| error.to_string())?;
    let mut history = History::default();
    let mut writes: Vec<(NodeName, RequestId, u64)> = Vec::new();
    for index in 0..40 {
        let next = sim.now_ms() + sim.random_range(5..60);
        sim.run_until(next);
        maybe_partition(&mut sim, &mut healed_at_ms);
        let node = random_node(&mut sim);
        let op = Op::Add {
            element: format!("late-{index}"),
        };
        // A node that already holds the tombstone refuses at once; that is fine.
        if let Ok(request) = sim.update(
            &node,
            "cart",
            Kind::ORSet,
            &op,
            Consistency::Majority,
            TIMEOUT_MS,
        ) {
            writes.push((node, request, sim.now_ms()));
        }
    }
    sim.heal();
    let mut calls: Vec<(NodeName, RequestId)> = writes
        .iter()
        .map(|(node, request, _)| (node.clone(), *request))
        .collect();
    calls.push((deleter.clone(), delete));
    sim.run_until_true(2 * TIMEOUT_MS, |sim| all_finished(sim, &calls))
        .ok_or("a call never finished")?;
    let Some((Outcome::WriteDone, deleted_at)) = finished(&sim, &deleter, delete) else {
        return Ok((0, 0)); // The delete timed out: nothing to check against.
    };
    let mut refused = 0;
    for (node, request, started_ms) in &writes {
        match finished(&sim, node, *request) {
            Some((Outcome::WriteDone, at)) if *started_ms >= deleted_at => {
                return Err(format!(
                    "a write on {node} started at {started_ms} ms was acknowledged at {at} ms, \
                     after the delete was acknowledged at {deleted_at} ms: the tombstone drops it"
                ));
            }
            Some((Outcome::WriteRefused, _)) => refused += 1,
            _ => {}
        }
    }
    history.deleted.insert("cart".to_owned());
    sim.run_until_true(60_000, |sim| checks::deletes_hold(sim, &history).is_ok())
        .ok_or("the tombstone did not reach every node")?;
    checks::wire_sound(&sim)?;
    Ok((writes.len(), refused))
}

#[test]
fn a_write_racing_a_majority_delete_is_refused_never_acknowledged_and_lost() {
    let mut refused_total = 0;
    for count in [3, 5] {
        let reports = for_each_seed(
            "a_write_racing_a_majority_delete_is_refused_never_acknowledged_and_lost",
            6,
            |seed| race_run(seed, count),
        );
        for (seed, (writes, refused)) in reports {
            println!("{count} nodes, seed {seed}: {writes} racing writes, {refused} refused");
            refused_total += refused;
        }
    }
    assert!(
        refused_total > 0,
        "no write was refused: the race was never run"
    );
}
