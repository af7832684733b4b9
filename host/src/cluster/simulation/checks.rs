//! Invariant checkers for the membership simulation. They only read a [`Simulation`], never drive
//! it, and know nothing of how `Membership` works inside: they compare what the nodes believe with
//! what the simulation knows to be true (which nodes run, with which incarnation).

use std::collections::{BTreeMap, BTreeSet};

use super::Simulation;
use crate::cluster::identity::{NodeId, NodeName, NodeRole};
use crate::cluster::placement;

/// The current incarnation of every running node in `group`: what their views should converge to.
pub fn truth(sim: &Simulation, group: &BTreeSet<NodeName>) -> BTreeSet<NodeId> {
    sim.running()
        .filter(|node| group.contains(&node.name))
        .filter_map(|node| node.membership.as_ref())
        .map(|membership| membership.local().id.clone())
        .collect()
}

/// Every running node of `group` sees exactly the running nodes of `group`, each at its current
/// incarnation: crashed nodes are down, restarted ones are up under their new incarnation, and no
/// node sees a member outside the group.
pub fn group_agrees(sim: &Simulation, group: &BTreeSet<NodeName>) -> Result<(), String> {
    let expected = truth(sim, group);
    if expected.is_empty() {
        return Err("no node of the group runs".to_owned());
    }
    for node in sim.running().filter(|node| group.contains(&node.name)) {
        let membership = node
            .membership
            .as_ref()
            .ok_or("running without membership")?;
        let view: BTreeSet<NodeId> = membership
            .live_members()
            .iter()
            .map(|member| member.id.clone())
            .collect();
        if view != expected {
            let missing: Vec<_> = expected
                .difference(&view)
                .map(ToString::to_string)
                .collect();
            let extra: Vec<_> = view
                .difference(&expected)
                .map(ToString::to_string)
                .collect();
            return Err(format!(
                "{} disagrees: missing {missing:?}, extra {extra:?}",
                node.name
            ));
        }
    }
    Ok(())
}

/// [`group_agrees`] over every node.
pub fn all_agree(sim: &Simulation) -> Result<(), String> {
    group_agrees(sim, &sim.names().into_iter().collect())
}

/// No running node suspects anyone. A suspect still counts as live, so nodes can agree on the
/// members while a suspicion raised during the faults is pending; if its refutation was lost, the
/// suspect is declared down later and the view changes again. Converged means agreed and settled.
pub fn nobody_suspected(sim: &Simulation) -> Result<(), String> {
    for node in sim.running() {
        let membership = node
            .membership
            .as_ref()
            .ok_or("running without membership")?;
        if let Some(suspect) = membership.suspects().next() {
            return Err(format!("{} suspects {}", node.name, suspect.id));
        }
    }
    Ok(())
}

/// Every node agrees and nobody is suspected: the view will not change until something happens.
pub fn converged(sim: &Simulation) -> Result<(), String> {
    all_agree(sim)?;
    nobody_suspected(sim)
}

/// No running node of `observers` sees any run of a node named in `absent`.
pub fn none_visible(
    sim: &Simulation,
    observers: &BTreeSet<NodeName>,
    absent: &BTreeSet<NodeName>,
) -> Result<(), String> {
    for node in sim.running().filter(|node| observers.contains(&node.name)) {
        let membership = node
            .membership
            .as_ref()
            .ok_or("running without membership")?;
        if let Some(seen) = membership
            .live_members()
            .iter()
            .find(|member| absent.contains(&member.id.name))
        {
            return Err(format!("{} still sees {}", node.name, seen.id));
        }
    }
    Ok(())
}

/// Each running node's `MemberUp`/`MemberDown` actions, replayed from its boot, describe exactly
/// its `live_members`: a driver that only follows the actions has the same view.
pub fn actions_describe_views(sim: &Simulation) -> Result<(), String> {
    for node in sim.running() {
        let membership = node
            .membership
            .as_ref()
            .ok_or("running without membership")?;
        let view: BTreeSet<NodeId> = membership
            .live_members()
            .iter()
            .map(|member| member.id.clone())
            .collect();
        if view != node.reported {
            return Err(format!(
                "{}: actions report {:?}, the view is {:?}",
                node.name, node.reported, view
            ));
        }
    }
    Ok(())
}

/// Every running node names the same owner for every key, and that owner is a running actor at its
/// current incarnation.
pub fn owners_agree(sim: &Simulation, keys: &[(String, String)]) -> Result<(), String> {
    let running_actors: BTreeSet<NodeId> = sim
        .running()
        .filter(|node| node.role == NodeRole::Actor)
        .filter_map(|node| node.membership.as_ref())
        .map(|membership| membership.local().id.clone())
        .collect();
    for (entity_type, entity_id) in keys {
        let mut owners = sim.running().filter_map(|node| {
            let membership = node.membership.as_ref()?;
            let owner = placement::owner(entity_type, entity_id, membership.live_members());
            Some((node.name.clone(), owner.cloned()))
        });
        let Some((first_node, first_owner)) = owners.next() else {
            return Err("no node runs".to_owned());
        };
        let Some(owner) = first_owner else {
            return Err(format!(
                "{first_node} finds no owner for {entity_type}/{entity_id}"
            ));
        };
        if !running_actors.contains(&owner) {
            return Err(format!(
                "{first_node} places {entity_type}/{entity_id} on {owner}, which does not run"
            ));
        }
        if let Some((node, other)) = owners.find(|(_, other)| other.as_ref() != Some(&owner)) {
            return Err(format!(
                "{entity_type}/{entity_id}: {first_node} says {owner}, {node} says {other:?}"
            ));
        }
    }
    Ok(())
}

/// Every active entity is hosted by its owner only: the hand-off rule left nothing behind on a
/// node that no longer owns it, so no entity is active on two nodes.
pub fn entities_on_their_owners(sim: &Simulation) -> Result<(), String> {
    let mut hosts: BTreeMap<&(String, String), &NodeName> = BTreeMap::new();
    for node in sim.running() {
        let membership = node
            .membership
            .as_ref()
            .ok_or("running without membership")?;
        for key in &node.active {
            let owner = placement::owner(&key.0, &key.1, membership.live_members());
            if owner != Some(&membership.local().id) {
                return Err(format!(
                    "{}/{} is active on {}, which places it on {owner:?}",
                    key.0, key.1, node.name
                ));
            }
            if let Some(other) = hosts.insert(key, &node.name) {
                return Err(format!(
                    "{}/{} is active on {other} and {}",
                    key.0, key.1, node.name
                ));
            }
        }
    }
    Ok(())
}
