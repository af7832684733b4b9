//! Simulation scenarios for size limits that cannot split the cluster: both sides of a partition
//! grow one OR-Set close to the value limit, or fill the store to the key limit, and after the
//! heal every node holds the same value and the same keys, with every acknowledged write in them.
//! Limits bind local writes only; an over-limit merged value stays readable and takes removes.

use std::collections::BTreeSet;

use weft_crdt::Crdt;

use super::checks::{self, History};
use super::{Simulation, for_each_seed, light_faults};
use crate::cluster::identity::NodeName;
use crate::ddata::{Consistency, DataValue, DdataError, Entry, Kind, Op, ReplicatorConfig};

/// How long a healed cluster may take to converge before a run fails.
const CONVERGE_MS_MAX: u64 = 60_000;

/// Adds `element` to the set `key` on `node` at `Local` and records it in `history`.
fn add(
    sim: &mut Simulation,
    history: &mut History,
    node: &NodeName,
    key: &str,
    element: String,
) -> Result<(), DdataError> {
    let op = Op::Add { element };
    sim.update(node, key, Kind::ORSet, &op, Consistency::Local, 0)?;
    history.updated(sim, node, key, &op);
    Ok(())
}

/// Every node holds the same keys, tombstones included.
fn same_keys(sim: &Simulation) -> Result<BTreeSet<String>, String> {
    let mut key_sets = sim.nodes.iter().map(|(name, node)| {
        let keys: BTreeSet<String> = node.replicator.keys().map(str::to_owned).collect();
        (name, keys)
    });
    let (first, keys) = key_sets.next().ok_or("no node")?;
    for (name, other) in key_sets {
        if other != keys {
            return Err(format!(
                "{first} holds {} keys, {name} {}",
                keys.len(),
                other.len()
            ));
        }
    }
    Ok(keys)
}

/// How many elements each node holds in the set `key`, for failure messages (the sets
/// themselves are too large to print).
fn set_sizes(sim: &Simulation, key: &str) -> String {
    let sizes: Vec<String> = sim
        .names()
        .iter()
        .map(|name| match sim.get(name, key) {
            Some(Entry::Value(DataValue::ORSet(set))) => format!("{name}: {}", set.value().len()),
            other => format!("{name}: {:?}", other.map(Entry::is_deleted)),
        })
        .collect();
    format!("elements held: {}", sizes.join(", "))
}

/// A 110-byte element: a set reaches the 24 KiB limit after about 200 of them.
fn element(side: &str, index: usize) -> String {
    format!("{side}-{index:04}-{}", "x".repeat(100))
}

#[test]
fn a_set_grown_past_the_value_limit_by_a_partition_converges_and_takes_removes() {
    for_each_seed(
        "a_set_grown_past_the_value_limit_by_a_partition_converges_and_takes_removes",
        3,
        |seed| {
            // Scaled down from the report (1 KB elements, a 508 KiB limit): 110-byte elements,
            // a 24 KiB limit, so ~200 elements fill a set.
            let config = ReplicatorConfig {
                message_bytes_max: 28 * 1024,
                value_bytes_max: 24 * 1024,
                entry_message_bytes_max: 128 * 1024,
                gossip_round_bytes_max: 256 * 1024,
                delta_tick_bytes_max: 28 * 1024,
                ..ReplicatorConfig::default()
            };
            let mut sim = Simulation::new(seed, 3, config, light_faults());
            let names = sim.names();
            let mut history = History::default();
            for index in 0..120 {
                add(
                    &mut sim,
                    &mut history,
                    &names[0],
                    "big",
                    element("common", index),
                )
                .map_err(|error| error.to_string())?;
            }
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                checks::converged(sim, &history).is_ok()
            })
            .ok_or("the common part did not converge")?;

            // Each side grows the set until the limit refuses more.
            sim.partition(&[vec![names[0].clone()], names[1..].to_vec()]);
            for (side, node) in [("left", &names[0]), ("right", &names[1])] {
                let mut added = 0;
                while add(&mut sim, &mut history, node, "big", element(side, added)).is_ok() {
                    added += 1;
                }
                if added < 50 {
                    return Err(format!("only {added} elements fitted on the {side} side"));
                }
            }
            sim.run_until(sim.now_ms() + 3_000);
            sim.heal();
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                checks::converged(sim, &history).is_ok()
            })
            .ok_or_else(|| format!("not converged after the heal: {}", set_sizes(&sim, "big")))?;
            checks::sets_sound(&sim, &history)?;
            let bytes = sim
                .get(&names[2], "big")
                .map(|entry| rmp_serde::to_vec(entry).map_or(0, |bytes| bytes.len()))
                .unwrap_or(0);
            if bytes <= 24 * 1024 {
                return Err(format!(
                    "the merged set is {bytes} bytes, not over the limit"
                ));
            }

            // Over the limit: an add is refused, a remove is taken and spreads.
            let more = Op::Add {
                element: "one-more".into(),
            };
            match sim.update(&names[2], "big", Kind::ORSet, &more, Consistency::Local, 0) {
                Err(DdataError::ValueTooLarge { .. }) => {}
                other => return Err(format!("an add to the over-limit set gave {other:?}")),
            }
            let remove = Op::Remove {
                element: element("common", 0),
            };
            sim.update(
                &names[2],
                "big",
                Kind::ORSet,
                &remove,
                Consistency::Local,
                0,
            )
            .map_err(|error| format!("a remove from the over-limit set: {error}"))?;
            history.updated(&sim, &names[2], "big", &remove);
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                checks::converged(sim, &history).is_ok()
            })
            .ok_or_else(|| {
                format!(
                    "the remove did not reach every node: {}",
                    set_sizes(&sim, "big")
                )
            })?;
            checks::sets_sound(&sim, &history)?;
            if sim.stats.messages_refused > 0 {
                return Err(format!("{} messages refused", sim.stats.messages_refused));
            }
            Ok(())
        },
    );
}

#[test]
fn keys_created_up_to_the_key_limit_on_both_sides_of_a_partition_converge() {
    for_each_seed(
        "keys_created_up_to_the_key_limit_on_both_sides_of_a_partition_converge",
        3,
        |seed| {
            const KEYS_MAX: usize = 60;
            let config = ReplicatorConfig {
                keys_max: KEYS_MAX,
                ..ReplicatorConfig::default()
            };
            let mut sim = Simulation::new(seed, 3, config, light_faults());
            let names = sim.names();
            let mut history = History::default();
            // 40 keys, 20 of them deleted: tombstones count against the limit.
            for index in 0..40 {
                let key = format!("common-{index}");
                add(&mut sim, &mut history, &names[index % 3], &key, "x".into())
                    .map_err(|error| error.to_string())?;
                if index % 2 == 0 {
                    sim.delete(&names[index % 3], &key, Consistency::Local, 0)
                        .map_err(|error| error.to_string())?;
                    history.deleted(&sim, &names[index % 3], &key);
                }
            }
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                same_keys(sim).is_ok_and(|k| k.len() == 40)
            })
            .ok_or("the common keys did not converge")?;

            // The lone side fills the store; the other side adds 10 keys.
            sim.partition(&[vec![names[0].clone()], names[1..].to_vec()]);
            let mut filled = 0;
            while add(
                &mut sim,
                &mut history,
                &names[0],
                &format!("left-{filled}"),
                "x".into(),
            )
            .is_ok()
            {
                filled += 1;
            }
            if filled != KEYS_MAX - 40 {
                return Err(format!("the left side created {filled} keys"));
            }
            for index in 0..10 {
                add(
                    &mut sim,
                    &mut history,
                    &names[1],
                    &format!("right-{index}"),
                    "y".into(),
                )
                .map_err(|error| error.to_string())?;
            }
            sim.run_until(sim.now_ms() + 2_000);
            sim.heal();
            sim.run_until_true(CONVERGE_MS_MAX, |sim| {
                same_keys(sim).is_ok() && checks::converged(sim, &history).is_ok()
            })
            .ok_or_else(|| format!("not converged after the heal: {:?}", same_keys(&sim).err()))?;
            let keys = same_keys(&sim)?;
            if keys.len() != KEYS_MAX + 10 {
                return Err(format!("{} keys after the heal", keys.len()));
            }
            checks::deletes_hold(&sim, &history)?;
            checks::sets_sound(&sim, &history)?;

            // A majority write of a key every node holds is read back at majority elsewhere;
            // a new key is refused on every node, which holds more than clients may create.
            let op = Op::Add {
                element: "z".into(),
            };
            sim.update(
                &names[1],
                "right-0",
                Kind::ORSet,
                &op,
                Consistency::Majority,
                1_000,
            )
            .map_err(|error| error.to_string())?;
            sim.run_until(sim.now_ms() + 1_000);
            let read = sim
                .read(&names[0], "right-0", Consistency::Majority, 1_000)
                .map_err(|error| error.to_string())?;
            sim.run_until(sim.now_ms() + 1_000);
            match sim.outcomes.get(&(names[0].clone(), read)) {
                Some(super::Outcome::ReadDone(Some(Entry::Value(DataValue::ORSet(set)))))
                    if set.value().contains("z") => {}
                other => return Err(format!("the majority read gave {other:?}")),
            }
            for name in &names {
                match sim.update(name, "new", Kind::ORSet, &op, Consistency::Local, 0) {
                    Err(DdataError::TooManyKeys { .. }) => {}
                    other => return Err(format!("a new key on {name} gave {other:?}")),
                }
            }
            Ok(())
        },
    );
}
