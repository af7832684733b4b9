//! `ORSet`: the observed-remove, add-wins set.

use alloc::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dot_store::DotStore;
use crate::{Crdt, ReplicaId};

/// A set whose elements can be added and removed any number of times.
///
/// - **Add wins**: an add concurrent with a remove of the same element survives it (a remove only
///   removes the adds it has observed).
/// - **No tombstones**: a removed element leaves nothing behind but the version-vector counter its
///   dot advanced; the state is the live elements plus one counter per replica.
/// - **Any delivery order**: a remove delta that arrives before the add it removed still removes it.
///
/// Each live element carries the dot of the add that put it there (more than one after concurrent
/// adds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    transparent,
    bound(serialize = "T: Serialize", deserialize = "T: Deserialize<'de> + Ord")
)]
pub struct ORSet<T> {
    store: DotStore<T, ()>,
}

impl<T> Default for ORSet<T> {
    fn default() -> Self {
        Self {
            store: DotStore::default(),
        }
    }
}

impl<T: Ord + Clone> ORSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element` on behalf of `replica`. Returns the delta.
    pub fn add(&mut self, element: T, replica: &ReplicaId) -> Self {
        Self {
            store: self.store.write(element, replica, ()),
        }
    }

    /// Removes `element` as far as this replica has seen it added. Returns the delta (which
    /// changes nothing if the element was absent).
    pub fn remove(&mut self, element: &T) -> Self {
        Self {
            store: self.store.remove(element),
        }
    }

    pub fn contains(&self, element: &T) -> bool {
        self.store.contains_key(element)
    }

    /// The elements, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.store.keys()
    }

    pub fn len(&self) -> usize {
        self.store.keys().len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

impl<T: Ord + Clone> Crdt for ORSet<T> {
    type Value = BTreeSet<T>;

    fn merge(&mut self, other: &Self) {
        self.store.merge_with(&other.store, |_, _| {});
    }

    fn leq(&self, other: &Self) -> bool {
        self.store.leq_with(&other.store, |_, _| true)
    }

    fn value(&self) -> BTreeSet<T> {
        self.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer, encode, joined};

    #[derive(Clone, Debug)]
    pub(crate) enum SetOp {
        Add(u8),
        Remove(u8),
    }

    impl Scenario for ORSet<u8> {
        type Op = SetOp;

        fn op() -> BoxedStrategy<SetOp> {
            prop_oneof![
                (0..8u8).prop_map(SetOp::Add),
                (0..8u8).prop_map(SetOp::Remove)
            ]
            .boxed()
        }

        fn apply(&mut self, op: &SetOp, writer: &Writer) -> Self {
            match op {
                SetOp::Add(element) => self.add(*element, &writer.replica),
                SetOp::Remove(element) => self.remove(element),
            }
        }

        fn apply_to_model(model: &mut BTreeSet<u8>, op: &SetOp, _: &Writer) {
            match op {
                SetOp::Add(element) => model.insert(*element),
                SetOp::Remove(element) => model.remove(element),
            };
        }
    }

    laws::crdt_laws!(or_set: ORSet<u8>);

    fn replicas() -> (ReplicaId, ReplicaId) {
        (ReplicaId::new("a"), ReplicaId::new("b"))
    }

    #[test]
    fn an_add_concurrent_with_a_remove_wins() {
        let (a, b) = replicas();
        let mut left = ORSet::new();
        left.add("x", &a);
        let mut right = left.clone();
        right.remove(&"x");
        left.add("x", &a);
        assert!(joined(&left, &right).contains(&"x"));
        assert!(joined(&right, &left).contains(&"x"));

        // The same with the re-add made by the other replica.
        let mut left = ORSet::new();
        left.add("y", &a);
        let mut right = left.clone();
        left.remove(&"y");
        right.add("y", &b);
        assert!(joined(&left, &right).contains(&"y"));
    }

    #[test]
    fn an_observed_remove_wins_and_a_later_add_brings_the_element_back() {
        let (a, b) = replicas();
        let mut left = ORSet::new();
        left.add(1, &a);
        let mut right = left.clone();
        right.remove(&1);
        let merged = joined(&left, &right);
        assert!(!merged.contains(&1));

        let mut readded = merged.clone();
        readded.add(1, &b);
        assert!(readded.contains(&1));
        assert!(joined(&merged, &readded).contains(&1));
        assert!(joined(&readded, &right).contains(&1));
    }

    #[test]
    fn a_remove_delivered_before_its_add_still_removes_it() {
        let (a, _) = replicas();
        let mut origin = ORSet::new();
        let add = origin.add(5, &a);
        let remove = origin.remove(&5);

        let mut receiver = ORSet::new();
        receiver.merge(&remove);
        receiver.merge(&add);
        assert!(!receiver.contains(&5));
        assert_eq!(receiver, origin);
    }

    #[test]
    fn re_adding_an_element_keeps_one_dot_per_replica() {
        let (a, b) = replicas();
        let mut set = ORSet::new();
        set.add(1, &a);
        set.add(1, &a);
        let mut other = set.clone();
        other.add(1, &b);
        set.add(1, &a);
        let merged = joined(&set, &other);
        assert_eq!(
            merged.store.values(&1).count(),
            2,
            "a's latest add and b's concurrent one"
        );
        let mut collapsed = merged.clone();
        collapsed.add(1, &b);
        assert_eq!(collapsed.store.values(&1).count(), 1);
    }

    #[test]
    fn a_replica_that_lost_its_state_needs_a_new_incarnation() {
        let first_boot = ReplicaId::incarnation("node-a", "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        let (mut node_a, mut peer) = (ORSet::new(), ORSet::new());
        peer.merge(&node_a.add("x", &first_boot));
        peer.remove(&"x");

        // node-a loses its disk and comes back under its old id: its first add reuses the dot of
        // its earlier add of "x", which the peer has seen removed, so the peer drops it.
        let mut wiped = ORSet::new();
        peer.merge(&wiped.add("y", &first_boot));
        assert!(!peer.contains(&"y"));

        // Under a new incarnation its dots are new.
        let second_boot = ReplicaId::incarnation("node-a", "01J9ZM3A0B1C2D3E4F5G6H7J8K");
        let mut restarted = ORSet::new();
        peer.merge(&restarted.add("y", &second_boot));
        assert!(peer.contains(&"y"));
    }

    /// Adding and removing one element many times leaves a state whose size does not depend on the
    /// number of cycles: a design with tombstones would grow by at least a dot per cycle.
    #[test]
    fn the_encoded_size_stays_bounded_over_add_remove_cycles() {
        const CYCLES: usize = 10_000;
        let a = ReplicaId::incarnation("node-a", "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        let b = ReplicaId::incarnation("node-b", "01J9ZK8Q7R6W5V4T3S2R1Q0P9P");
        let (mut left, mut right) = (ORSet::new(), ORSet::new());
        let mut sizes = Vec::new();
        for cycle in 0..CYCLES {
            let (writer, id) = if cycle % 2 == 0 {
                (&mut left, &a)
            } else {
                (&mut right, &b)
            };
            let add = writer.add(42u32, id);
            let remove = writer.remove(&42);
            // The other replica gets the deltas, in the wrong order every third cycle.
            let reader = if cycle % 2 == 0 {
                &mut right
            } else {
                &mut left
            };
            if cycle % 3 == 0 {
                reader.merge(&remove);
                reader.merge(&add);
            } else {
                reader.merge(&add);
                reader.merge(&remove);
            }
            sizes.push(encode(&*reader).len());
        }
        assert_eq!(left, right);
        assert!(left.is_empty());
        let (first, last) = (sizes[1], sizes[CYCLES - 1]);
        // Two replica ids (~34 bytes each) and two counters that grew from 1 to 5,000: a few
        // bytes of varint growth. Tombstones would add ~10 bytes per cycle (100 KB here).
        assert!(last <= 120, "{last} bytes after {CYCLES} cycles");
        assert!(last <= first + 8, "grew from {first} to {last} bytes");
    }
}
