//! Invariant checks on a [`Simulation`], kept apart from the code under test: a [`History`] of
//! what clients did (recorded by the scenarios, not by the replicators), and checks that compare
//! every node's state with it. Each check returns `Err` with what is wrong.

use std::collections::{BTreeMap, BTreeSet};

use weft_crdt::Crdt;

use super::Simulation;
use crate::cluster::identity::NodeName;
use crate::ddata::{DataValue, Entry, Op};

/// What the clients did and the nodes acknowledged.
#[derive(Debug, Default)]
pub struct History {
    /// Per key, the join of the writing node's entry right after each acknowledged write: the
    /// merge of all updates, which every node must hold once the cluster is quiet.
    pub merged: BTreeMap<String, Entry>,
    /// Per counter key, the sum of acknowledged increments minus decrements.
    pub counted: BTreeMap<String, i64>,
    /// Per set key, every element an acknowledged add added.
    pub added: BTreeMap<String, BTreeSet<String>>,
    /// Per set key, every element a remove was issued for.
    pub removed: BTreeMap<String, BTreeSet<String>>,
    pub deleted: BTreeSet<String>,
}

impl History {
    /// Records an acknowledged update of `key` on `node` (call it right after the update).
    pub fn updated(&mut self, sim: &Simulation, node: &NodeName, key: &str, op: &Op) {
        self.join(sim, node, key);
        match op {
            Op::Increment { by } => {
                *self.counted.entry(key.to_owned()).or_default() += i64::try_from(*by).unwrap_or(0)
            }
            Op::Decrement { by } => {
                *self.counted.entry(key.to_owned()).or_default() -= i64::try_from(*by).unwrap_or(0)
            }
            Op::Add { element } => {
                self.added
                    .entry(key.to_owned())
                    .or_default()
                    .insert(element.clone());
            }
            Op::Remove { element } => {
                self.removed
                    .entry(key.to_owned())
                    .or_default()
                    .insert(element.clone());
            }
            Op::Set { .. } | Op::Enable | Op::Disable => {}
        }
    }

    /// Records an acknowledged delete of `key` on `node`.
    pub fn deleted(&mut self, sim: &Simulation, node: &NodeName, key: &str) {
        self.join(sim, node, key);
        self.deleted.insert(key.to_owned());
    }

    fn join(&mut self, sim: &Simulation, node: &NodeName, key: &str) {
        if let Some(entry) = sim.get(node, key) {
            match self.merged.get_mut(key) {
                Some(merged) => {
                    merged.merge(entry);
                }
                None => {
                    self.merged.insert(key.to_owned(), entry.clone());
                }
            }
        }
    }
}

fn up_nodes(sim: &Simulation) -> impl Iterator<Item = &NodeName> {
    sim.nodes
        .iter()
        .filter(|(_, node)| node.up)
        .map(|(name, _)| name)
}

/// Every node that is up holds, for every key written, exactly the merge of all updates.
pub fn converged(sim: &Simulation, history: &History) -> Result<(), String> {
    for name in up_nodes(sim) {
        for (key, merged) in &history.merged {
            let held = sim.get(name, key);
            if held != Some(merged) {
                return Err(format!(
                    "{name} holds {held:?} for {key:?}, not the merge of all updates {merged:?}"
                ));
            }
        }
    }
    Ok(())
}

/// Every counter on every node that is up shows exactly the sum of acknowledged increments.
pub fn counters_exact(sim: &Simulation, history: &History) -> Result<(), String> {
    for name in up_nodes(sim) {
        for (key, expected) in &history.counted {
            let value = match sim.get(name, key) {
                Some(Entry::Value(DataValue::GCounter(counter))) => {
                    i64::try_from(counter.value()).unwrap_or(i64::MAX)
                }
                Some(Entry::Value(DataValue::PNCounter(counter))) => counter.value(),
                other => return Err(format!("{name} holds {other:?} for counter {key:?}")),
            };
            if value != *expected {
                return Err(format!(
                    "{name} counts {value} for {key:?}, the acknowledged increments sum to {expected}"
                ));
            }
        }
    }
    Ok(())
}

/// On every node that is up, every set holds only elements that were added, and every element
/// added and never removed (deleted sets are for [`deletes_hold`]).
pub fn sets_sound(sim: &Simulation, history: &History) -> Result<(), String> {
    let nothing = BTreeSet::new();
    for name in up_nodes(sim) {
        let live_sets = history
            .added
            .iter()
            .filter(|(key, _)| !history.deleted.contains(*key));
        for (key, added) in live_sets {
            let elements = match sim.get(name, key) {
                Some(Entry::Value(DataValue::ORSet(set))) => set.value(),
                Some(Entry::Value(DataValue::GSet(set))) => set.value(),
                other => return Err(format!("{name} holds {other:?} for set {key:?}")),
            };
            if let Some(stray) = elements.difference(added).next() {
                return Err(format!("{name} has {stray:?} in {key:?}, never added"));
            }
            let removed = history.removed.get(key).unwrap_or(&nothing);
            if let Some(lost) = added
                .difference(removed)
                .find(|element| !elements.contains(*element))
            {
                return Err(format!(
                    "{name} lost {lost:?} from {key:?}: added, never removed"
                ));
            }
        }
    }
    Ok(())
}

/// Every deleted key is a tombstone on every node that is up.
pub fn deletes_hold(sim: &Simulation, history: &History) -> Result<(), String> {
    for name in up_nodes(sim) {
        for key in &history.deleted {
            let held = sim.get(name, key);
            if held != Some(&Entry::Deleted) {
                return Err(format!("{name} holds {held:?} for deleted key {key:?}"));
            }
        }
    }
    Ok(())
}

/// No message exceeded the limit, and no node refused a message from another.
pub fn wire_sound(sim: &Simulation) -> Result<(), String> {
    if sim.stats.message_bytes_largest > sim.config.message_bytes_max {
        return Err(format!(
            "a {}-byte message exceeded the {}-byte limit",
            sim.stats.message_bytes_largest, sim.config.message_bytes_max
        ));
    }
    if sim.stats.messages_refused > 0 {
        return Err(format!(
            "{} messages between nodes were refused",
            sim.stats.messages_refused
        ));
    }
    Ok(())
}
