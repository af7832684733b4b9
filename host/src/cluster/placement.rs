//! Which node owns an entity: rendezvous (highest-random-weight) hashing of `(entity type, entity id)`
//! over the live members with the [`NodeRole::Actor`] role.
//!
//! Every actor member gets a weight for the entity, `weight(node name, entity type, entity id)`, and
//! the member with the highest weight owns it. Two properties follow, and are what make it fit a
//! cluster whose membership changes:
//!
//! - When a node leaves, only the entities it owned move (each to the member with the next-highest
//!   weight); when a node joins, the only entities that move are those it now owns.
//! - Any node with the same member list computes the same owner, with no coordination: the weight is
//!   a fixed function of bytes (64-bit FNV-1a over length-prefixed fields, then the splitmix64
//!   finaliser to spread FNV's weak low-entropy tail over all 64 bits), not `std`'s hasher, whose
//!   output may change between Rust versions and is randomly keyed per process.
//!
//! The weight uses the node's *name*, not its incarnation: a node that restarts (or renews its
//! incarnation after a partition) gets back exactly the entities it had.
//!
//! Cost: one hash per actor member per lookup. That is cheap for the cluster sizes weft targets
//! (tens of nodes); callers that route many requests can cache owners per membership view.

use super::identity::{Member, NodeId, NodeName, NodeRole};

/// The owner of `(entity_type, entity_id)` among `members`: the actor member with the highest
/// weight. `None` if no member has the actor role. The order of `members` does not matter. Equal
/// weights (a 64-bit collision, or two runs of one name, which a membership view never holds) go to
/// the greater [`NodeId`], so the answer is still the same on every node.
pub fn owner<'m>(entity_type: &str, entity_id: &str, members: &'m [Member]) -> Option<&'m NodeId> {
    members
        .iter()
        .filter(|member| member.role == NodeRole::Actor)
        .max_by(|a, b| {
            let weight_a = weight(a.name(), entity_type, entity_id);
            let weight_b = weight(b.name(), entity_type, entity_id);
            weight_a.cmp(&weight_b).then_with(|| a.id.cmp(&b.id))
        })
        .map(|member| &member.id)
}

/// The rendezvous weight of `node` for one entity. Stable: the same on every platform, process and
/// Rust version (pinned by a test with fixed values).
pub fn weight(node: &NodeName, entity_type: &str, entity_id: &str) -> u64 {
    let mut hash = Fnv1a::new();
    // Length prefixes keep the fields apart: ("ab", "c") and ("a", "bc") hash differently.
    hash.field(entity_type.as_bytes());
    hash.field(entity_id.as_bytes());
    hash.field(node.as_str().as_bytes());
    splitmix64(hash.0)
}

/// 64-bit FNV-1a, written out here so its output is fixed by this file alone.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Self(Self::OFFSET_BASIS)
    }

    fn bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn field(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_le_bytes());
        self.bytes(bytes);
    }
}

/// The splitmix64 output function: a bijection on `u64` in which every input bit affects every
/// output bit.
fn splitmix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;

    use proptest::prelude::*;
    use ulid::Ulid;

    use super::*;

    fn member(name: &str, role: NodeRole) -> Member {
        let name = NodeName::new(name).expect("valid name");
        let addr: SocketAddr = "127.0.0.1:7000".parse().expect("valid address");
        Member::new(NodeId::new(name, Ulid::from_parts(1, 1)), role, addr)
    }

    fn actors(names: &[String]) -> Vec<Member> {
        names.iter().map(|n| member(n, NodeRole::Actor)).collect()
    }

    fn owners(members: &[Member], keys: &[(String, String)]) -> Vec<NodeName> {
        keys.iter()
            .map(|(t, id)| owner(t, id, members).expect("an actor").name.clone())
            .collect()
    }

    fn distinct_names(count: std::ops::Range<usize>) -> impl Strategy<Value = Vec<String>> {
        prop::collection::btree_set("[a-z][a-z0-9-]{0,12}", count)
            .prop_map(|names| names.into_iter().collect::<Vec<_>>())
    }

    fn keys() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[a-z]{1,8}", "[a-z0-9]{1,16}"), 1..200)
    }

    #[test]
    fn weights_are_fixed_values() {
        // These numbers are the contract between nodes, possibly built by different compilers: if
        // this test fails, placement changed and a rolling upgrade would disagree about owners.
        // (Computed independently of this code, from the definitions of FNV-1a and splitmix64.)
        let node = NodeName::new("node-a").expect("valid name");
        assert_eq!(weight(&node, "account", "42"), 0x5948_4a19_07a9_e726);
        assert_eq!(weight(&node, "account", "43"), 0x845f_5a4c_b570_75f3);
        let node = NodeName::new("node-b").expect("valid name");
        assert_eq!(weight(&node, "account", "42"), 0x1a67_6681_14ca_1e4c);
    }

    #[test]
    fn fields_do_not_run_into_each_other() {
        let node = NodeName::new("n").expect("valid name");
        assert_ne!(weight(&node, "ab", "c"), weight(&node, "a", "bc"));
    }

    #[test]
    fn only_actors_own_entities() {
        let members = vec![
            member("gw-1", NodeRole::Gateway),
            member("gw-2", NodeRole::Gateway),
        ];
        assert_eq!(owner("account", "1", &members), None);
        assert_eq!(owner("account", "1", &[]), None);
        let mut members = members;
        members.push(member("actor-1", NodeRole::Actor));
        for id in 0..100 {
            let owner = owner("account", &id.to_string(), &members).expect("an actor");
            assert_eq!(owner.name.as_str(), "actor-1");
        }
    }

    #[test]
    fn three_nodes_share_3000_keys_roughly_evenly() {
        let members = actors(&["node-1".into(), "node-2".into(), "node-3".into()]);
        let mut counts = BTreeMap::<String, usize>::new();
        for id in 0..3000 {
            let owner = owner("account", &format!("user-{id}"), &members).expect("an actor");
            *counts.entry(owner.name.to_string()).or_default() += 1;
        }
        assert_eq!(counts.len(), 3, "{counts:?}");
        for (node, count) in &counts {
            assert!(
                (750..=1260).contains(count),
                "{node} owns {count} of 3000 keys (expected 25%..42%): {counts:?}"
            );
        }
    }

    proptest! {
        #[test]
        fn the_order_of_members_does_not_matter(
            (names, shuffled) in distinct_names(1..12)
                .prop_flat_map(|names| (Just(names.clone()), Just(names).prop_shuffle())),
            keys in keys(),
        ) {
            prop_assert_eq!(owners(&actors(&names), &keys), owners(&actors(&shuffled), &keys));
        }

        #[test]
        fn removing_a_node_moves_only_the_entities_it_owned(
            (names, removed) in distinct_names(2..12)
                .prop_flat_map(|names| { let len = names.len(); (Just(names), 0..len) }),
            keys in keys(),
        ) {
            let before = owners(&actors(&names), &keys);
            let mut remaining = names.clone();
            let removed = remaining.remove(removed);
            let after = owners(&actors(&remaining), &keys);
            for (before, after) in before.iter().zip(&after) {
                if before.as_str() == removed {
                    prop_assert_ne!(after.as_str(), removed.as_str());
                } else {
                    prop_assert_eq!(before, after);
                }
            }
        }

        #[test]
        fn adding_a_node_moves_entities_only_to_it(
            names in distinct_names(2..12),
            keys in keys(),
        ) {
            let (added, existing) = names.split_last().expect("at least two names");
            let before = owners(&actors(existing), &keys);
            let after = owners(&actors(&names), &keys);
            for (before, after) in before.iter().zip(&after) {
                prop_assert!(before == after || after.as_str() == added.as_str());
            }
        }
    }
}
