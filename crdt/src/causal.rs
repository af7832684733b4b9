//! Dots and the causal context: which write events a replica has seen, stored compactly.

use alloc::collections::BTreeSet;

use crate::{Crdt, ReplicaId, VersionVector};

/// One write event: the `counter`-th write of `replica` (counters start at 1). Unique for as long as
/// replica ids are never reused (see `ReplicaId`).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Dot {
    pub(crate) replica: ReplicaId,
    pub(crate) counter: u64,
}

/// The set of dots a state has seen, whether their writes are still live or were since removed.
///
/// Kept as a version vector (every dot of a replica up to its counter) plus a *cloud* of dots seen out
/// of order beyond it. The cloud only holds dots above a gap and empties as the gaps fill, so the
/// context of a full state does not grow with the number of removals: it is one counter per replica.
///
/// Canonical: no cloud dot is covered by, or directly follows, the version vector; so equal sets of
/// dots are equal values.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct CausalContext {
    contiguous: VersionVector,
    cloud: BTreeSet<Dot>,
}

impl CausalContext {
    /// The context holding every dot up to each replica's counter in `contiguous`, and nothing else.
    pub(crate) fn from_contiguous(contiguous: VersionVector) -> Self {
        Self {
            contiguous,
            cloud: BTreeSet::new(),
        }
    }

    /// The context holding exactly `dots`.
    pub(crate) fn of<'a>(dots: impl IntoIterator<Item = &'a Dot>) -> Self {
        let mut context = Self::default();
        for dot in dots {
            context.insert(dot);
        }
        context
    }

    pub(crate) fn contains(&self, dot: &Dot) -> bool {
        dot.counter <= self.contiguous.get(&dot.replica) || self.cloud.contains(dot)
    }

    /// The dot for `replica`'s next write: one past every dot of it seen so far.
    pub(crate) fn next_dot(&self, replica: &ReplicaId) -> Dot {
        let in_cloud = if self.cloud.is_empty() {
            0
        } else {
            self.last_in_cloud(replica)
        };
        let counter = self.contiguous.get(replica).max(in_cloud) + 1;
        Dot {
            replica: replica.clone(),
            counter,
        }
    }

    /// The greatest counter of `replica` in the cloud (0 if none).
    fn last_in_cloud(&self, replica: &ReplicaId) -> u64 {
        let first = Dot {
            replica: replica.clone(),
            counter: 0,
        };
        self.cloud
            .range(first..)
            .take_while(|dot| dot.replica == *replica)
            .last()
            .map_or(0, |dot| dot.counter)
    }

    pub(crate) fn insert(&mut self, dot: &Dot) {
        let seen = self.contiguous.get(&dot.replica);
        if dot.counter == seen + 1 {
            self.contiguous.observe(&dot.replica, dot.counter);
            if !self.cloud.is_empty() {
                self.absorb_cloud_of(&dot.replica);
            }
        } else if dot.counter > seen {
            self.cloud.insert(dot.clone());
        }
    }

    pub(crate) fn merge(&mut self, other: &Self) {
        self.contiguous.merge(&other.contiguous);
        self.cloud.extend(other.cloud.iter().cloned());
        // One pass suffices: the cloud is ordered by replica, then counter, so a run of consecutive
        // dots is absorbed front to back.
        let contiguous = &mut self.contiguous;
        self.cloud.retain(|dot| {
            let seen = contiguous.get(&dot.replica);
            if dot.counter == seen + 1 {
                contiguous.observe(&dot.replica, dot.counter);
            }
            dot.counter > seen + 1
        });
    }

    /// Whether every dot of `self` is in `other`. Exact on the version vector part thanks to
    /// canonicity: `other` never holds the dot right after its own counter in its cloud.
    pub(crate) fn leq(&self, other: &Self) -> bool {
        self.contiguous.leq(&other.contiguous) && self.cloud.iter().all(|dot| other.contains(dot))
    }

    /// The version vector part (every replica's contiguous counter).
    pub(crate) fn contiguous(&self) -> &VersionVector {
        &self.contiguous
    }

    pub(crate) fn cloud(&self) -> impl ExactSizeIterator<Item = &Dot> {
        self.cloud.iter()
    }

    /// Moves `replica`'s cloud dots that now follow the version vector into it.
    fn absorb_cloud_of(&mut self, replica: &ReplicaId) {
        let mut next = Dot {
            replica: replica.clone(),
            counter: self.contiguous.get(replica) + 1,
        };
        while self.cloud.remove(&next) {
            self.contiguous.observe(replica, next.counter);
            next.counter += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;

    fn dot(replica: &str, counter: u64) -> Dot {
        Dot {
            replica: ReplicaId::new(replica),
            counter,
        }
    }

    fn dots() -> impl Strategy<Value = Vec<Dot>> {
        proptest::collection::vec(
            (prop_oneof![Just("a"), Just("b")], 1..8u64)
                .prop_map(|(replica, counter)| dot(replica, counter)),
            0..12,
        )
    }

    proptest! {
        #[test]
        fn holds_exactly_the_inserted_dots_in_canonical_form(inserted in dots(), probe in dots()) {
            let context = CausalContext::of(&inserted);
            for dot in &probe {
                prop_assert_eq!(context.contains(dot), inserted.contains(dot));
            }
            let mut reversed = inserted.clone();
            reversed.reverse();
            prop_assert_eq!(&CausalContext::of(&reversed), &context, "canonical whatever the order");
        }

        #[test]
        fn merge_is_set_union_and_leq_is_inclusion(left in dots(), right in dots()) {
            let mut merged = CausalContext::of(&left);
            merged.merge(&CausalContext::of(&right));
            prop_assert_eq!(&merged, &CausalContext::of(left.iter().chain(&right)));
            let subset = right.iter().all(|dot| left.contains(dot));
            prop_assert_eq!(CausalContext::of(&right).leq(&CausalContext::of(&left)), subset);
        }
    }

    #[test]
    fn out_of_order_dots_wait_in_the_cloud_until_the_gap_fills() {
        let mut context = CausalContext::of(&[dot("a", 1), dot("a", 3), dot("a", 4)]);
        assert_eq!(context.contiguous().get(&ReplicaId::new("a")), 1);
        assert_eq!(context.cloud().len(), 2);
        assert_eq!(context.next_dot(&ReplicaId::new("a")), dot("a", 5));
        context.insert(&dot("a", 2));
        assert_eq!(context.contiguous().get(&ReplicaId::new("a")), 4);
        assert_eq!(context.cloud().len(), 0);
    }
}
