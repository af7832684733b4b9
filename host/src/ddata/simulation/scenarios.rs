//! Simulation scenarios: random updates under loss, duplication, reordering and partitions;
//! deletes across a partition; reads and writes at `Majority`/`All` with a node down; tight byte
//! budgets. Each runs over several seeds (see [`for_each_seed`]) and is judged by [`checks`].

use super::checks::{self, History};
use super::{Faults, Outcome, Simulation, for_each_seed, node_name};
use crate::cluster::identity::NodeName;
use crate::ddata::{
    Consistency, DataValue, DdataError, Entry, Kind, Op, ReplicatorConfig, RequestId,
};

/// Virtual time clients keep writing, in each random run.
const UPDATES_MS: u64 = 12_000;

/// How long a cluster may take to converge once quiet before a run fails.
const CONVERGE_MS_MAX: u64 = 120_000;

const KEYS: [(&str, Kind); 4] = [
    ("hits", Kind::GCounter),
    ("balance", Kind::PNCounter),
    ("cart-a", Kind::ORSet),
    ("cart-b", Kind::ORSet),
];

/// What one random run measured.
#[derive(Debug)]
struct Report {
    drop_per_mille: u32,
    updates: usize,
    /// Anti-entropy intervals from the end of the faults (last update, partition healed) until
    /// every node held the merge of all updates.
    rounds: u64,
}

fn random_faults(sim: &mut Simulation) -> Faults {
    Faults {
        drop_per_mille: u32::try_from(sim.random_range(0..301)).unwrap_or(300),
        duplicate_per_mille: u32::try_from(sim.random_range(0..101)).unwrap_or(100),
        delay_ms_min: 1,
        delay_ms_max: sim.random_range(5..100),
    }
}

fn random_op(sim: &mut Simulation, kind: Kind) -> Op {
    match kind {
        Kind::PNCounter if sim.random_per_mille(400) => Op::Decrement {
            by: sim.random_range(1..10),
        },
        Kind::GCounter | Kind::PNCounter => Op::Increment {
            by: sim.random_range(1..10),
        },
        _ => {
            let element = format!("item-{}", sim.random_range(0..16));
            if sim.random_per_mille(650) {
                Op::Add { element }
            } else {
                Op::Remove { element }
            }
        }
    }
}

fn random_run(seed: u64, count: usize) -> Result<Report, String> {
    let mut sim = Simulation::new(seed, count, ReplicatorConfig::default(), Faults::none());
    sim.faults = random_faults(&mut sim);
    let names = sim.names();
    let mut history = History::default();
    let mut updates = 0;
    let mut healed_at_ms = None;
    while sim.now_ms() < UPDATES_MS {
        let next = sim.now_ms() + sim.random_range(10..60);
        sim.run_until(next);
        match healed_at_ms {
            Some(at) if sim.now_ms() >= at => {
                sim.heal();
                healed_at_ms = None;
            }
            None if sim.random_per_mille(8) => {
                let groups = sim.random_split();
                sim.partition(&groups);
                healed_at_ms = Some(sim.now_ms() + sim.random_range(1_000..4_000));
            }
            _ => {}
        }
        let node = names[usize::try_from(sim.random_range(0..count as u64)).unwrap_or(0)].clone();
        let (key, kind) = KEYS[usize::try_from(sim.random_range(0..4)).unwrap_or(0)];
        let op = random_op(&mut sim, kind);
        let consistency = if sim.random_per_mille(100) {
            Consistency::Majority
        } else {
            Consistency::Local
        };
        sim.update(&node, key, kind, &op, consistency, 1_000)
            .map_err(|error| format!("{node} refused {op:?} on {key}: {error}"))?;
        history.updated(&sim, &node, key, &op);
        updates += 1;
    }
    sim.heal();
    let took_ms = sim
        .run_until_true(CONVERGE_MS_MAX, |sim| {
            checks::converged(sim, &history).is_ok()
        })
        .ok_or_else(|| {
            format!(
                "not converged {CONVERGE_MS_MAX} ms after the faults: {}",
                checks::converged(&sim, &history).err().unwrap_or_default()
            )
        })?;
    checks::converged(&sim, &history)?;
    checks::counters_exact(&sim, &history)?;
    checks::sets_sound(&sim, &history)?;
    checks::wire_sound(&sim)?;
    Ok(Report {
        drop_per_mille: sim.faults.drop_per_mille,
        updates,
        rounds: took_ms.div_ceil(sim.config.gossip_interval_ms),
    })
}

#[test]
fn random_updates_converge_to_the_merge_of_all_updates() {
    let mut table = Vec::new();
    for count in [3, 5, 10] {
        let reports = for_each_seed(
            "random_updates_converge_to_the_merge_of_all_updates",
            4,
            |seed| random_run(seed, count),
        );
        for (seed, report) in &reports {
            println!(
                "{count:>2} nodes, seed {seed}: {} updates, {}‰ loss: converged in {} rounds",
                report.updates, report.drop_per_mille, report.rounds
            );
        }
        let rounds: Vec<u64> = reports.iter().map(|(_, report)| report.rounds).collect();
        table.push((count, rounds));
    }
    for (count, rounds) in table {
        println!("N = {count:>2}: rounds to converge after the faults {rounds:?}");
    }
}

#[test]
fn a_deleted_key_stays_deleted_after_a_partition_heals() {
    for_each_seed(
        "a_deleted_key_stays_deleted_after_a_partition_heals",
        3,
        |seed| {
            let faults = Faults {
                drop_per_mille: 150,
                duplicate_per_mille: 50,
                delay_ms_min: 1,
                delay_ms_max: 40,
            };
            let mut sim = Simulation::new(seed, 5, ReplicatorConfig::default(), faults);
            let names = sim.names();
            let mut history = History::default();
            for (index, name) in names.iter().enumerate() {
                let op = Op::Add {
                    element: format!("item-{index}"),
                };
                sim.update(name, "cart", Kind::ORSet, &op, Consistency::Local, 0)
                    .map_err(|error| error.to_string())?;
                history.updated(&sim, name, "cart", &op);
            }
            sim.run_until(sim.now_ms() + 5_000);
            checks::converged(&sim, &history)?;

            // node-04 is down and misses the delete; the partition keeps node-02 and node-03 from
            // hearing of it while node-02 keeps adding.
            sim.set_up(&names[4], false);
            sim.partition(&[names[..2].to_vec(), names[2..4].to_vec()]);
            sim.delete(&names[0], "cart", Consistency::Local, 0)
                .map_err(|error| error.to_string())?;
            history.deleted(&sim, &names[0], "cart");
            let late = Op::Add {
                element: "late".into(),
            };
            sim.update(&names[2], "cart", Kind::ORSet, &late, Consistency::Local, 0)
                .map_err(|error| format!("node-02 has not heard of the delete yet: {error}"))?;
            sim.run_until(sim.now_ms() + 3_000);
            if sim.get(&names[3], "cart").is_some_and(Entry::is_deleted) {
                return Err("the delete crossed the partition".into());
            }

            sim.heal();
            sim.set_up(&names[4], true);
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                checks::deletes_hold(sim, &history).is_ok()
            })
            .ok_or("the delete did not reach every node")?;
            // Keep gossiping: nobody resurrects the key.
            sim.run_until(sim.now_ms() + 10_000);
            checks::deletes_hold(&sim, &history)?;
            checks::wire_sound(&sim)?;
            match sim.update(&names[4], "cart", Kind::ORSet, &late, Consistency::Local, 0) {
                Err(DdataError::Deleted { .. }) => Ok(()),
                other => Err(format!("a write to the deleted key gave {other:?}")),
            }
        },
    );
}

/// Runs until `request` on `node` has an outcome.
fn outcome(sim: &mut Simulation, node: &NodeName, request: RequestId) -> Result<Outcome, String> {
    let key = (node.clone(), request);
    sim.run_until_true(10_000, |sim| sim.outcomes.contains_key(&key));
    sim.outcomes
        .get(&key)
        .cloned()
        .ok_or_else(|| format!("no outcome for {request:?} on {node}"))
}

#[test]
fn a_majority_write_is_seen_by_a_majority_read_on_another_node_with_one_node_down() {
    for_each_seed(
        "a_majority_write_is_seen_by_a_majority_read_on_another_node_with_one_node_down",
        4,
        |seed| {
            let faults = Faults {
                drop_per_mille: 100,
                duplicate_per_mille: 100,
                delay_ms_min: 1,
                delay_ms_max: 30,
            };
            // No anti-entropy during the test: only the majority read can bring node-01 the value.
            let config = ReplicatorConfig {
                gossip_interval_ms: 3_600_000,
                ..ReplicatorConfig::default()
            };
            let mut sim = Simulation::new(seed, 3, config, faults);
            sim.run_until(200); // The first anti-entropy round, on an empty store.
            let [a, b] = [node_name(0), node_name(1)];
            let hello = Op::Set {
                value: "hello".into(),
            };

            sim.set_up(&b, false);
            let write = sim
                .update(
                    &a,
                    "greeting",
                    Kind::LWWRegister,
                    &hello,
                    Consistency::Majority,
                    2_000,
                )
                .map_err(|error| error.to_string())?;
            if outcome(&mut sim, &a, write)? != Outcome::WriteDone {
                return Err("the majority write did not complete with 2 of 3 nodes up".into());
            }

            // All three are needed: with node-01 down only two ack, even when acks are duplicated.
            let all = sim
                .update(
                    &a,
                    "greeting",
                    Kind::LWWRegister,
                    &hello,
                    Consistency::All,
                    1_000,
                )
                .map_err(|error| error.to_string())?;
            let timed_out = outcome(&mut sim, &a, all)?;
            if timed_out != (Outcome::TimedOut { acks: 2, needed: 3 }) {
                return Err(format!(
                    "a write at All with a node down ended {timed_out:?}"
                ));
            }

            sim.set_up(&a, false);
            sim.set_up(&b, true);
            if sim.get(&b, "greeting").is_some() {
                return Err("node-01 got the value while it was down".into());
            }
            let read = sim
                .read(&b, "greeting", Consistency::Majority, 2_000)
                .map_err(|error| error.to_string())?;
            match outcome(&mut sim, &b, read)? {
                Outcome::ReadDone(Some(Entry::Value(DataValue::LWWRegister(register))))
                    if register.get().map(String::as_str) == Some("hello") =>
                {
                    Ok(())
                }
                other => Err(format!("the majority read on node-01 gave {other:?}")),
            }
        },
    );
}

#[test]
fn tight_budgets_bound_every_message_and_the_cluster_still_converges() {
    for_each_seed(
        "tight_budgets_bound_every_message_and_the_cluster_still_converges",
        2,
        |seed| {
            let config = ReplicatorConfig {
                message_bytes_max: 2_048,
                value_bytes_max: 1_024,
                gossip_round_bytes_max: 4_096,
                delta_tick_bytes_max: 2_048,
                pending_delta_keys_max: 8,
                ..ReplicatorConfig::default()
            };
            let faults = Faults {
                drop_per_mille: 100,
                duplicate_per_mille: 20,
                delay_ms_min: 1,
                delay_ms_max: 20,
            };
            let mut sim = Simulation::new(seed, 5, config, faults);
            let names = sim.names();
            let mut history = History::default();
            // 300 keys written in one burst: far more than a tick's deltas or a round's budget.
            for index in 0..300 {
                let node = &names[index % names.len()];
                let (key, kind, op) = if index % 2 == 0 {
                    (
                        format!("count-{index}"),
                        Kind::GCounter,
                        Op::Increment { by: 1 },
                    )
                } else {
                    (
                        format!("set-{index}"),
                        Kind::ORSet,
                        Op::Add {
                            element: format!("e{index}"),
                        },
                    )
                };
                sim.update(node, &key, kind, &op, Consistency::Local, 0)
                    .map_err(|error| error.to_string())?;
                history.updated(&sim, node, &key, &op);
            }
            let dropped: u64 = sim
                .nodes
                .values()
                .map(|node| node.replicator.stats().deltas_dropped)
                .sum();
            if dropped == 0 {
                return Err("the pending-delta limit was never reached".into());
            }
            let took_ms = sim
                .run_until_true(CONVERGE_MS_MAX, |sim| {
                    checks::converged(sim, &history).is_ok()
                })
                .ok_or("not converged under tight budgets")?;
            checks::wire_sound(&sim)?;
            checks::counters_exact(&sim, &history)?;
            checks::sets_sound(&sim, &history)?;
            let rounds = took_ms.div_ceil(sim.config.gossip_interval_ms);
            println!(
                "tight budgets, seed {seed}: {dropped} deltas dropped, converged in {rounds} rounds, \
             largest message {} bytes",
                sim.stats.message_bytes_largest
            );
            if rounds < 2 {
                return Err(format!(
                    "converged in {rounds} round: the budget did not limit a round"
                ));
            }
            Ok(())
        },
    );
}
