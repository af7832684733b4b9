//! Hand-off: which of a node's active entities it must give up when its view of the cluster
//! changes — those placement now gives to another node. Pure: the node passivates them (their
//! queued commands finish, their leases are released) and the new owners take them over on their
//! next command.

use super::identity::{Member, NodeId};
use super::placement::owner;

/// Whether placement over `members` gives the entity to a node other than `local`.
pub fn owned_elsewhere(
    entity_type: &str,
    entity_id: &str,
    members: &[Member],
    local: &NodeId,
) -> bool {
    owner(entity_type, entity_id, members).is_some_and(|owner| owner != local)
}

/// The entities of `active` this node (`local`) no longer owns by `members`.
pub fn moved_away<'a>(
    active: impl IntoIterator<Item = &'a (String, String)>,
    members: &[Member],
    local: &NodeId,
) -> Vec<(String, String)> {
    active
        .into_iter()
        .filter(|(entity_type, entity_id)| owned_elsewhere(entity_type, entity_id, members, local))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::identity::{NodeName, NodeRole};
    use ulid::Ulid;

    fn member(name: &str, role: NodeRole) -> Member {
        let id = NodeId::new(NodeName::new(name).unwrap(), Ulid::from_parts(1, 1));
        Member::new(id, role, "127.0.0.1:1".parse().unwrap())
    }

    #[test]
    fn a_joining_node_takes_only_what_it_now_owns() {
        let (a, b, c) = (
            member("a", NodeRole::Actor),
            member("b", NodeRole::Actor),
            member("c", NodeRole::Actor),
        );
        let keys: Vec<(String, String)> = (0..300)
            .map(|n| ("counter".to_owned(), format!("e{n}")))
            .collect();
        let before = [a.clone(), b.clone()];
        let after = [a.clone(), b.clone(), c.clone()];
        // What `a` hosts before `c` joins, and what it gives up after.
        let on_a: Vec<_> = keys
            .iter()
            .filter(|(t, i)| !owned_elsewhere(t, i, &before, &a.id))
            .cloned()
            .collect();
        let moved = moved_away(&on_a, &after, &a.id);
        assert!(
            !moved.is_empty() && moved.len() < on_a.len(),
            "{} of {}",
            moved.len(),
            on_a.len()
        );
        for (entity_type, entity_id) in &moved {
            assert_eq!(
                owner(entity_type, entity_id, &after),
                Some(&c.id),
                "moves only to c"
            );
        }
        // A gateway in the view changes nothing.
        let with_gateway = [a.clone(), b, member("g", NodeRole::Gateway)];
        assert!(moved_away(&on_a, &with_gateway, &a.id).is_empty());
    }
}
