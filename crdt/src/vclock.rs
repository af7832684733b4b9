//! `VersionVector`: per-replica event counters and their causal order (`Causality`).

use alloc::collections::BTreeMap;
use core::cmp::Ordering;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::{Crdt, ReplicaId};

/// How two version vectors (and so the events or states they stamp) relate in causal order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Causality {
    /// Strictly happened before: the other has seen all of this and more.
    Before,
    /// Strictly happened after: this has seen all of the other and more.
    After,
    /// The same history.
    Equal,
    /// Neither has seen all of the other: concurrent changes that may need resolving.
    Concurrent,
}

/// A map from replica to the number of that replica's events seen. A missing replica counts as 0;
/// zero entries are never stored, so equal vectors are equal values with equal bytes.
///
/// It is itself a CRDT (pointwise maximum), which is how it is merged, and the base of `GCounter`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct VersionVector {
    counters: BTreeMap<ReplicaId, u64>,
}

impl VersionVector {
    pub fn new() -> Self {
        Self::default()
    }

    /// The number of `replica`'s events seen (0 if none).
    pub fn get(&self, replica: &ReplicaId) -> u64 {
        self.counters.get(replica).copied().unwrap_or(0)
    }

    /// Records one more event of `replica` and returns its number (1 for the first).
    pub fn increment(&mut self, replica: &ReplicaId) -> u64 {
        self.add(replica, 1)
    }

    /// Records that `replica`'s events up to `counter` have been seen (no-op if already).
    pub fn observe(&mut self, replica: &ReplicaId, counter: u64) {
        match self.counters.get_mut(replica) {
            Some(seen) => *seen = (*seen).max(counter),
            None if counter > 0 => {
                self.counters.insert(replica.clone(), counter);
            }
            None => {}
        }
    }

    /// The causal relation between `self` and `other`, in one pass over both.
    pub fn compare(&self, other: &Self) -> Causality {
        let mut ours = self.counters.iter().peekable();
        let mut theirs = other.counters.iter().peekable();
        let (mut self_ahead, mut other_ahead) = (false, false);
        loop {
            let order = match (ours.peek(), theirs.peek()) {
                (None, None) => break,
                (Some(_), None) => Ordering::Less,
                (None, Some(_)) => Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match order {
                // A replica only `self` has seen (stored counters are never 0).
                Ordering::Less => {
                    self_ahead = true;
                    ours.next();
                }
                Ordering::Greater => {
                    other_ahead = true;
                    theirs.next();
                }
                Ordering::Equal => {
                    let (_, a) = ours.next().expect("peeked");
                    let (_, b) = theirs.next().expect("peeked");
                    self_ahead |= a > b;
                    other_ahead |= b > a;
                }
            }
            if self_ahead && other_ahead {
                return Causality::Concurrent;
            }
        }
        match (self_ahead, other_ahead) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (true, true) => Causality::Concurrent,
        }
    }

    /// Whether `self` has seen everything `other` has (`After` or `Equal`).
    pub fn dominates(&self, other: &Self) -> bool {
        other.leq(self)
    }

    /// The replicas with a non-zero counter, in replica order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&ReplicaId, u64)> {
        self.counters
            .iter()
            .map(|(replica, counter)| (replica, *counter))
    }

    pub fn is_empty(&self) -> bool {
        self.counters.is_empty()
    }

    /// Adds `amount` to `replica`'s counter (saturating at `u64::MAX`) and returns the new counter.
    pub(crate) fn add(&mut self, replica: &ReplicaId, amount: u64) -> u64 {
        if amount == 0 {
            return self.get(replica);
        }
        match self.counters.get_mut(replica) {
            Some(counter) => {
                *counter = counter.saturating_add(amount);
                *counter
            }
            None => {
                self.counters.insert(replica.clone(), amount);
                amount
            }
        }
    }

    /// Drops `replica`'s entry and returns its counter (0 if it had none).
    pub(crate) fn remove(&mut self, replica: &ReplicaId) -> u64 {
        self.counters.remove(replica).unwrap_or(0)
    }
}

impl FromIterator<(ReplicaId, u64)> for VersionVector {
    /// Builds a vector from `(replica, counter)` pairs, keeping the largest counter per replica.
    fn from_iter<I: IntoIterator<Item = (ReplicaId, u64)>>(pairs: I) -> Self {
        let mut vector = Self::new();
        for (replica, counter) in pairs {
            vector.observe(&replica, counter);
        }
        vector
    }
}

impl Crdt for VersionVector {
    type Value = BTreeMap<ReplicaId, u64>;

    fn merge(&mut self, other: &Self) {
        for (replica, counter) in other.iter() {
            self.observe(replica, counter);
        }
    }

    fn leq(&self, other: &Self) -> bool {
        self.iter()
            .all(|(replica, counter)| counter <= other.get(replica))
    }

    fn value(&self) -> Self::Value {
        self.counters.clone()
    }
}

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.counters.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    /// Accepts zero counters from a peer but drops them, keeping the representation canonical.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let mut counters = BTreeMap::<ReplicaId, u64>::deserialize(deserializer)?;
        counters.retain(|_, counter| *counter > 0);
        Ok(Self { counters })
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer};

    impl Scenario for VersionVector {
        type Op = ();

        fn op() -> BoxedStrategy<()> {
            Just(()).boxed()
        }

        fn apply(&mut self, _: &(), writer: &Writer) -> Self {
            let counter = self.increment(&writer.replica);
            [(writer.replica.clone(), counter)].into_iter().collect()
        }

        fn apply_to_model(model: &mut Self::Value, _: &(), writer: &Writer) {
            *model.entry(writer.replica.clone()).or_insert(0) += 1;
        }
    }

    laws::crdt_laws!(version_vector: VersionVector);

    /// Any vector over three replicas: every map is a valid version vector.
    fn vector() -> impl Strategy<Value = VersionVector> {
        proptest::collection::vec((0..3u8, 0..4u64), 0..4).prop_map(|pairs| {
            pairs
                .into_iter()
                .map(|(replica, counter)| (ReplicaId::new(alloc::format!("r{replica}")), counter))
                .collect()
        })
    }

    fn joined(a: &VersionVector, b: &VersionVector) -> VersionVector {
        let mut joined = a.clone();
        joined.merge(b);
        joined
    }

    proptest! {
        #[test]
        fn compare_is_a_partial_order_consistent_with_leq(a in vector(), b in vector()) {
            let expected = match (a.leq(&b), b.leq(&a)) {
                (true, true) => Causality::Equal,
                (true, false) => Causality::Before,
                (false, true) => Causality::After,
                (false, false) => Causality::Concurrent,
            };
            prop_assert_eq!(a.compare(&b), expected);
            let mirrored = match expected {
                Causality::Before => Causality::After,
                Causality::After => Causality::Before,
                other => other,
            };
            prop_assert_eq!(b.compare(&a), mirrored);
            prop_assert_eq!(a.compare(&b) == Causality::Equal, a == b);
            prop_assert_eq!(a.dominates(&b), b.leq(&a));
        }

        #[test]
        fn leq_is_transitive(a in vector(), b in vector(), c in vector()) {
            if a.leq(&b) && b.leq(&c) {
                prop_assert!(a.leq(&c));
            }
        }

        #[test]
        fn merge_is_the_least_upper_bound(a in vector(), b in vector(), c in vector()) {
            let join = joined(&a, &b);
            prop_assert!(a.leq(&join) && b.leq(&join));
            if a.leq(&c) && b.leq(&c) {
                prop_assert!(join.leq(&c));
            }
        }

        #[test]
        fn increment_moves_strictly_after(a in vector(), replica in 0..3u8) {
            let mut later = a.clone();
            let replica = ReplicaId::new(alloc::format!("r{replica}"));
            let counter = later.increment(&replica);
            prop_assert_eq!(counter, a.get(&replica) + 1);
            prop_assert_eq!(later.compare(&a), Causality::After);
            prop_assert_eq!(a.compare(&later), Causality::Before);
        }
    }

    #[test]
    fn concurrent_increments_are_concurrent_until_merged() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut left = VersionVector::new();
        left.increment(&a);
        let mut right = left.clone();
        left.increment(&a);
        right.increment(&b);
        assert_eq!(left.compare(&right), Causality::Concurrent);
        let merged = joined(&left, &right);
        assert_eq!(left.compare(&merged), Causality::Before);
        assert_eq!(merged.compare(&right), Causality::After);
        assert_eq!(merged.iter().collect::<Vec<_>>(), [(&a, 2), (&b, 1)]);
    }

    #[test]
    fn zero_counters_from_a_peer_are_dropped() {
        let wire: BTreeMap<ReplicaId, u64> = [(ReplicaId::new("a"), 0)].into_iter().collect();
        let bytes = rmp_serde::to_vec(&wire).unwrap();
        let vector: VersionVector = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(vector, VersionVector::new());
    }
}
