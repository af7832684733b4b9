//! Membership under faults, in the simulator: crashes, restarts, graceful leaves, loss,
//! duplication, reordering and partitions; then, once the faults stop, agreement on the members
//! and on every entity's owner within a bounded number of probe periods of virtual time.

use std::collections::BTreeSet;
use std::time::Duration;

use rand::RngExt;
use rand::seq::IndexedRandom;

use super::checks;
use super::{Faults, Simulation, Stats, for_each_seed};
use crate::cluster::identity::{NodeName, NodeRole};
use crate::cluster::membership::MembershipConfig;

/// The bound the tests assert: every node agrees within this many probe periods after the faults
/// stop (the figures measured are far lower; see `docs/cluster.md`).
const CONVERGE_PERIODS_MAX: u32 = 60;

/// How many entity keys owner agreement is checked on.
const ENTITY_KEYS: usize = 500;

fn period(sim: &Simulation) -> Duration {
    sim.config.probe_period
}

fn entity_keys() -> Vec<(String, String)> {
    (0..ENTITY_KEYS)
        .map(|i| {
            let entity_type = ["account", "cart", "order"][i % 3];
            (entity_type.to_owned(), format!("{entity_type}-{i}"))
        })
        .collect()
}

/// Boots every node, a few milliseconds apart, and waits until they all agree.
fn boot_all(sim: &mut Simulation) -> Result<u32, String> {
    let names = sim.names();
    boot(sim, &names)
}

/// Boots these nodes, a few milliseconds apart, and waits until the running nodes agree.
fn boot(sim: &mut Simulation, names: &[NodeName]) -> Result<u32, String> {
    for name in names {
        sim.boot(name);
        let gap_ms = sim.rng().random_range(0..50);
        sim.run_for(Duration::from_millis(gap_ms))?;
    }
    let step = period(sim);
    sim.run_until(step, CONVERGE_PERIODS_MAX, checks::converged)
        .map_err(|e| format!("the first join did not converge: {e}"))
}

/// Agreement on members, on what the actions reported, and on owners; then the same for ten more
/// periods (nobody flaps on a healthy network).
fn settled(sim: &mut Simulation) -> Result<(), String> {
    let keys = entity_keys();
    // Every key gets a call through a random running node, so every key is hosted somewhere.
    route_calls(sim, &keys);
    let check = |sim: &Simulation| {
        checks::converged(sim)?;
        checks::actions_describe_views(sim)?;
        checks::owners_agree(sim, &keys)?;
        checks::entities_on_their_owners(sim)
    };
    check(sim)?;
    for _ in 0..10 {
        let step = period(sim);
        sim.run_for(step)?;
        check(sim).map_err(|e| format!("converged, then diverged again: {e}"))?;
    }
    // Honest nodes never send a packet another refuses, nor make foca report a fault.
    if sim.stats.protocol_faults > 0 || sim.stats.packets_refused > 0 {
        return Err(format!(
            "{} protocol faults, {} packets refused",
            sim.stats.protocol_faults, sim.stats.packets_refused
        ));
    }
    Ok(())
}

/// The running nodes that may be stopped: two nodes and one seed are kept running, since a node
/// can only (re)join through a seed it reaches.
fn stoppable_nodes(sim: &Simulation) -> Vec<NodeName> {
    let running: Vec<&NodeName> = sim.running().map(|node| &node.name).collect();
    let running_seeds = running.iter().filter(|name| sim.is_seed(name)).count();
    running
        .iter()
        .filter(|name| running.len() > 2 && (!sim.is_seed(name) || running_seeds > 1))
        .map(|name| (*name).clone())
        .collect()
}

/// Routes one call per key, each through a running node picked at random.
fn route_calls(sim: &mut Simulation, keys: &[(String, String)]) {
    let callers: Vec<NodeName> = sim.running().map(|node| node.name.clone()).collect();
    for key in keys {
        if let Some(caller) = callers.choose(sim.rng()).cloned() {
            sim.route(&caller, key);
        }
    }
}

fn stopped_nodes(sim: &Simulation) -> Vec<NodeName> {
    sim.nodes
        .values()
        .filter(|node| !node.is_running())
        .map(|node| node.name.clone())
        .collect()
}

#[derive(Debug)]
struct FaultRun {
    nodes: usize,
    drop_per_mille: u32,
    join_periods: u32,
    converge_periods: u32,
    running_at_end: usize,
    stats: Stats,
}

/// `nodes` nodes join, then for 60 s of virtual time the network loses, duplicates and delays
/// packets while nodes crash, leave and restart at random; then the network heals and the test
/// counts the probe periods until every running node agrees.
fn faults_then_converge(seed: u64, nodes: usize, drop_per_mille: u32) -> Result<FaultRun, String> {
    let mut sim = Simulation::new(seed, nodes, nodes.min(3), MembershipConfig::default());
    // One gateway among the actors: it takes part in membership but must never own an entity.
    let gateway = sim.names()[nodes - 1].clone();
    if let Some(node) = sim.nodes.get_mut(&gateway) {
        node.role = NodeRole::Gateway;
    }
    let join_periods = boot_all(&mut sim)?;

    sim.faults = Faults {
        drop_per_mille,
        duplicate_per_mille: sim.rng().random_range(0..=100),
        delay_ms_min: 1,
        delay_ms_max: sim.rng().random_range(20..=400),
    };
    let faults_end = sim.now() + Duration::from_secs(60);
    let keys = entity_keys();
    while sim.now() < faults_end {
        let pause_ms = sim.rng().random_range(500..4_000);
        sim.run_for(Duration::from_millis(pause_ms))?;
        // Calls keep arriving during the faults, through nodes whose views disagree.
        let some: Vec<(String, String)> = keys.sample(sim.rng(), 50).cloned().collect();
        route_calls(&mut sim, &some);
        let stoppable = stoppable_nodes(&sim);
        let stopped = stopped_nodes(&sim);
        let roll = sim.rng().random_range(0..10);
        if roll < 4 && !stoppable.is_empty() {
            let victim = stoppable.choose(sim.rng()).cloned().expect("not empty");
            sim.crash(&victim);
        } else if roll < 5 && !stoppable.is_empty() {
            let leaver = stoppable.choose(sim.rng()).cloned().expect("not empty");
            sim.leave(&leaver);
        } else if let Some(restarted) = stopped.choose(sim.rng()).cloned() {
            sim.boot(&restarted);
        }
    }

    // End at the worst moment: a crash and a restart just as the faults stop, so the count below
    // includes detecting a crash and taking in a new incarnation.
    let victim = stoppable_nodes(&sim).choose(sim.rng()).cloned();
    let restarted = stopped_nodes(&sim).choose(sim.rng()).cloned();
    if let Some(victim) = &victim {
        sim.crash(victim);
    }
    if let Some(restarted) = &restarted {
        sim.boot(restarted);
    }

    sim.faults = Faults::none();
    let step = period(&sim);
    let converge_periods = sim.run_until(step, CONVERGE_PERIODS_MAX, checks::converged)?;
    settled(&mut sim)?;
    Ok(FaultRun {
        nodes,
        drop_per_mille,
        join_periods,
        converge_periods,
        running_at_end: sim.running().count(),
        stats: sim.stats,
    })
}

#[test]
fn crashes_restarts_and_loss_converge_once_the_faults_stop() {
    let runs = for_each_seed("crashes_restarts_and_loss_converge", 12, |seed| {
        let mut pick = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(!seed);
        let nodes = pick.random_range(5..=20);
        let drop_per_mille = pick.random_range(0..=300);
        faults_then_converge(seed, nodes, drop_per_mille)
    });
    for (seed, run) in &runs {
        let stats = &run.stats;
        println!(
            "seed {seed}: {} nodes, {}‰ loss: joined in {} periods, converged {} periods after \
             the faults, {} running at the end; {} boots, {} crashes; packets: {} sent, {} lost, \
             {} duplicated, {} delivered",
            run.nodes,
            run.drop_per_mille,
            run.join_periods,
            run.converge_periods,
            run.running_at_end,
            stats.boots,
            stats.crashes,
            stats.packets_sent,
            stats.packets_dropped,
            stats.packets_duplicated,
            stats.packets_delivered,
        );
    }
}

/// The figures for `docs/cluster.md`: probe periods to converge by cluster size, 20% loss during
/// the faults (`cargo test -p weft --lib rounds_to_converge -- --nocapture`).
#[test]
fn rounds_to_converge_by_cluster_size() {
    for nodes in [5, 10, 20] {
        let runs = for_each_seed(&format!("rounds_to_converge_{nodes}"), 4, |seed| {
            faults_then_converge(seed, nodes, 200)
        });
        let summary = |pick: fn(&FaultRun) -> u32| {
            let mut values: Vec<u32> = runs.iter().map(|(_, run)| pick(run)).collect();
            values.sort_unstable();
            format!(
                "min {} median {} max {}",
                values[0],
                values[values.len() / 2],
                values[values.len() - 1]
            )
        };
        println!(
            "{nodes} nodes: first join {}; after faults {}",
            summary(|run| run.join_periods),
            summary(|run| run.converge_periods)
        );
    }
}

/// A crash on a healthy network: how many periods until every other node has dropped the node, and
/// that it is no quicker than the suspicion timeout allows (the node is not declared down on a
/// single missed probe).
#[test]
fn a_crashed_node_is_declared_down_after_the_suspicion_timeout() {
    let runs = for_each_seed("a_crashed_node_is_declared_down", 6, |seed| {
        let mut sim = Simulation::new(seed, 8, 2, MembershipConfig::default());
        boot_all(&mut sim)?;
        let victim = sim.names()[5].clone();
        sim.crash(&victim);
        let everyone_else: BTreeSet<NodeName> =
            sim.names().into_iter().filter(|n| *n != victim).collect();
        let absent = BTreeSet::from([victim]);
        let step = period(&sim);
        let periods = sim.run_until(step, CONVERGE_PERIODS_MAX, |sim| {
            checks::none_visible(sim, &everyone_else, &absent)
        })?;
        let suspicion_periods =
            sim.config.suspect_to_down_after.as_secs_f64() / sim.config.probe_period.as_secs_f64();
        if f64::from(periods) < suspicion_periods {
            return Err(format!(
                "declared down after {periods} periods, before the timeout"
            ));
        }
        settled(&mut sim)?;
        Ok(periods)
    });
    let periods: Vec<u32> = runs.iter().map(|(_, p)| *p).collect();
    println!("crash detected by all after {periods:?} periods");
}

#[test]
fn a_restarted_node_supersedes_its_old_incarnation_at_once() {
    for_each_seed("a_restarted_node_supersedes", 4, |seed| {
        let mut sim = Simulation::new(seed, 5, 2, MembershipConfig::default());
        boot_all(&mut sim)?;
        let name = sim.names()[3].clone();
        let old = checks::truth(&sim, &BTreeSet::from([name.clone()]));
        sim.crash(&name);
        sim.run_for(Duration::from_millis(100))?;
        sim.boot(&name);
        // Well before a crash could be detected (the suspicion timeout alone is 5 periods).
        let step = period(&sim);
        let periods = sim.run_until(step, 3, checks::converged)?;
        let new = checks::truth(&sim, &BTreeSet::from([name.clone()]));
        if old == new {
            return Err("the restart kept its incarnation".to_owned());
        }
        settled(&mut sim)?;
        Ok(periods)
    });
}

#[test]
fn a_node_that_leaves_is_dropped_without_waiting_for_the_failure_detector() {
    for_each_seed("a_node_that_leaves_is_dropped", 4, |seed| {
        let mut sim = Simulation::new(seed, 6, 2, MembershipConfig::default());
        boot_all(&mut sim)?;
        let leaver = sim.names()[4].clone();
        sim.leave(&leaver);
        // Faster than suspicion (5 periods) could do it.
        let step = period(&sim);
        sim.run_until(step, 2, checks::converged)?;
        settled(&mut sim)
    });
}

/// A node nobody knows boots while the only seed is down: it stays alone, announcing to the seed
/// every `rejoin_interval`, and joins once the seed is back. The restarted seed knows nobody either:
/// the others find it because they re-announce while a member (the seed's old run) is down.
#[test]
fn a_node_booted_while_its_seed_was_down_joins_when_the_seed_returns() {
    for_each_seed("a_node_booted_while_its_seed_was_down", 4, |seed| {
        let mut sim = Simulation::new(seed, 4, 1, MembershipConfig::default());
        let names = sim.names();
        let (seed_node, late) = (names[0].clone(), names[3].clone());
        boot(&mut sim, &names[..3])?;
        sim.crash(&seed_node);
        sim.run_for(Duration::from_secs(15))?;
        sim.boot(&late);
        sim.run_for(Duration::from_secs(20))?;
        let alone = BTreeSet::from([late.clone()]);
        checks::group_agrees(&sim, &alone).map_err(|e| format!("{late} should be alone: {e}"))?;
        sim.boot(&seed_node);
        let step = period(&sim);
        sim.run_until(step, CONVERGE_PERIODS_MAX, checks::converged)?;
        settled(&mut sim)
    });
}

#[derive(Debug)]
struct PartitionRun {
    nodes: usize,
    minority: usize,
    down_periods: u32,
    heal_periods: u32,
}

/// A minority is cut off: the majority declares it down (and agrees among itself), the minority
/// does the same the other way round; after healing, both sides merge into one view.
#[test]
fn a_partitioned_minority_is_declared_down_and_rejoins_after_healing() {
    let runs = for_each_seed("a_partitioned_minority", 10, |seed| {
        let mut pick = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(!seed);
        let nodes = pick.random_range(5..=9);
        let minority_size = pick.random_range(1..=(nodes - 1) / 2);
        let mut sim = Simulation::new(seed, nodes, 2, MembershipConfig::default());
        boot_all(&mut sim)?;

        // The minority is taken from the end, or from the start so it holds a seed, at random.
        let mut names = sim.names();
        if pick.random_bool(0.5) {
            names.reverse();
        }
        let minority: BTreeSet<NodeName> = names.iter().take(minority_size).cloned().collect();
        let majority: BTreeSet<NodeName> = names.iter().skip(minority_size).cloned().collect();
        sim.partition(&minority);
        sim.faults.drop_per_mille = pick.random_range(0..=100);

        let step = period(&sim);
        let down_periods = sim.run_until(step, CONVERGE_PERIODS_MAX, |sim| {
            checks::group_agrees(sim, &majority)?;
            checks::group_agrees(sim, &minority)
        })?;
        checks::none_visible(&sim, &majority, &minority)?;
        // Stay apart for a while, as a real partition would.
        sim.run_for(Duration::from_secs(20))?;
        checks::group_agrees(&sim, &majority)?;

        sim.heal();
        sim.faults = Faults::none();
        let heal_periods = sim.run_until(step, CONVERGE_PERIODS_MAX, checks::converged)?;
        settled(&mut sim)?;
        Ok(PartitionRun {
            nodes,
            minority: minority_size,
            down_periods,
            heal_periods,
        })
    });
    for (seed, run) in &runs {
        println!(
            "seed {seed}: {} nodes, {} cut off: down after {} periods, one view {} periods after \
             healing",
            run.nodes, run.minority, run.down_periods, run.heal_periods
        );
    }
}

/// A node cut off for less than the suspicion timeout is suspected, refutes once it is back, and
/// keeps its incarnation: nobody drops it, it does not renew.
#[test]
fn a_refuted_suspicion_changes_nothing() {
    for_each_seed("a_refuted_suspicion_changes_nothing", 4, |seed| {
        let mut sim = Simulation::new(seed, 4, 2, MembershipConfig::default());
        boot_all(&mut sim)?;
        let suspect = sim.names()[3].clone();
        let alone = BTreeSet::from([suspect.clone()]);
        let before = checks::truth(&sim, &alone);
        sim.partition(&alone);
        let step = Duration::from_millis(100);
        sim.run_until(step, 40, |sim| match checks::nobody_suspected(sim) {
            Ok(()) => Err("nobody suspects it yet".to_owned()),
            Err(_) => Ok(()),
        })?;
        sim.heal();
        let step = period(&sim);
        sim.run_until(step, CONVERGE_PERIODS_MAX, checks::converged)?;
        // Past the time the suspicion timers fire.
        sim.run_for(sim.config.suspect_to_down_after * 2)?;
        settled(&mut sim)?;
        if checks::truth(&sim, &alone) != before {
            return Err(format!("{suspect} renewed its incarnation"));
        }
        Ok(())
    });
}
