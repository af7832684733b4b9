//! Counters: `GCounter` (grow-only) and `PNCounter` (increments and decrements), with pruning of a
//! retired replica's entry.

use serde::{Deserialize, Serialize};

use crate::{Crdt, ReplicaId, VersionVector};

/// A grow-only counter: each replica counts its own increments; the value is their sum.
///
/// Amounts saturate at `u64::MAX` per replica and in the sum.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GCounter {
    per_replica: VersionVector,
}

impl GCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `amount` on behalf of `replica`. Returns the delta: `replica`'s new total.
    pub fn increment(&mut self, replica: &ReplicaId, amount: u64) -> Self {
        let total = self.per_replica.add(replica, amount);
        let mut delta = Self::new();
        delta.per_replica.observe(replica, total);
        delta
    }

    /// Folds the entry of `retired` into `survivor`'s, so the state stops carrying a replica that
    /// is gone for good. The value is unchanged.
    ///
    /// Preconditions, which the caller's membership protocol must establish (this state cannot
    /// check them): `retired` will never write again (its incarnation is over); every replica has
    /// seen its final count; and from now on every replica prunes with the same `survivor`, both
    /// its own state and every state it receives before merging it. A pruned and an unpruned state
    /// must never meet: their merge would count `retired`'s increments twice.
    pub fn prune(&mut self, retired: &ReplicaId, survivor: &ReplicaId) {
        if retired != survivor {
            let folded = self.per_replica.remove(retired);
            self.per_replica.add(survivor, folded);
        }
    }
}

impl Crdt for GCounter {
    type Value = u64;

    fn merge(&mut self, other: &Self) {
        self.per_replica.merge(&other.per_replica);
    }

    fn leq(&self, other: &Self) -> bool {
        self.per_replica.leq(&other.per_replica)
    }

    fn value(&self) -> u64 {
        self.per_replica
            .iter()
            .fold(0, |sum, (_, count)| sum.saturating_add(count))
    }
}

/// A counter that goes up and down: two grow-only counters, one for increments and one for
/// decrements; the value is their difference, saturating at the bounds of `i64`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PNCounter {
    increments: GCounter,
    decrements: GCounter,
}

impl PNCounter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `amount` on behalf of `replica`. Returns the delta.
    pub fn increment(&mut self, replica: &ReplicaId, amount: u64) -> Self {
        Self {
            increments: self.increments.increment(replica, amount),
            decrements: GCounter::new(),
        }
    }

    /// Subtracts `amount` on behalf of `replica`. Returns the delta.
    pub fn decrement(&mut self, replica: &ReplicaId, amount: u64) -> Self {
        Self {
            increments: GCounter::new(),
            decrements: self.decrements.increment(replica, amount),
        }
    }

    /// Folds the entries of `retired` into `survivor`'s; see `GCounter::prune` for the
    /// preconditions.
    pub fn prune(&mut self, retired: &ReplicaId, survivor: &ReplicaId) {
        self.increments.prune(retired, survivor);
        self.decrements.prune(retired, survivor);
    }
}

impl Crdt for PNCounter {
    type Value = i64;

    fn merge(&mut self, other: &Self) {
        self.increments.merge(&other.increments);
        self.decrements.merge(&other.decrements);
    }

    fn leq(&self, other: &Self) -> bool {
        self.increments.leq(&other.increments) && self.decrements.leq(&other.decrements)
    }

    fn value(&self) -> i64 {
        let difference = i128::from(self.increments.value()) - i128::from(self.decrements.value());
        i64::try_from(difference).unwrap_or(if difference < 0 { i64::MIN } else { i64::MAX })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer};

    impl Scenario for GCounter {
        type Op = u8;

        fn op() -> BoxedStrategy<u8> {
            any::<u8>().boxed()
        }

        fn apply(&mut self, amount: &u8, writer: &Writer) -> Self {
            self.increment(&writer.replica, u64::from(*amount))
        }

        fn apply_to_model(model: &mut u64, amount: &u8, _: &Writer) {
            *model += u64::from(*amount);
        }
    }

    impl Scenario for PNCounter {
        /// Positive: increment; negative: decrement.
        type Op = i8;

        fn op() -> BoxedStrategy<i8> {
            any::<i8>().boxed()
        }

        fn apply(&mut self, amount: &i8, writer: &Writer) -> Self {
            let magnitude = u64::from(amount.unsigned_abs());
            if *amount >= 0 {
                self.increment(&writer.replica, magnitude)
            } else {
                self.decrement(&writer.replica, magnitude)
            }
        }

        fn apply_to_model(model: &mut i64, amount: &i8, _: &Writer) {
            *model += i64::from(*amount);
        }
    }

    laws::crdt_laws!(g_counter: GCounter, pn_counter: PNCounter);

    proptest! {
        /// Three replicas count, the third retires after everyone has seen its final count, and the
        /// survivors prune it (each pruning every state they hold or receive): the value is kept,
        /// and later increments still converge.
        #[test]
        fn pruning_a_retired_replica_keeps_the_value(
            counts in proptest::collection::vec((0..3usize, -20..20i64), 0..30),
            later in proptest::collection::vec((0..2usize, -20..20i64), 0..10),
        ) {
            let ids = [ReplicaId::new("a"), ReplicaId::new("b"), ReplicaId::new("c")];
            let mut replicas = [PNCounter::new(), PNCounter::new(), PNCounter::new()];
            let apply = |counter: &mut PNCounter, replica: &ReplicaId, amount: i64| {
                if amount >= 0 {
                    counter.increment(replica, amount.unsigned_abs());
                } else {
                    counter.decrement(replica, amount.unsigned_abs());
                }
            };
            let mut expected = 0;
            for (at, amount) in counts {
                apply(&mut replicas[at], &ids[at], amount);
                expected += amount;
            }
            // Everyone sees `c`'s final state, then each survivor prunes `c` into `a`.
            let retired = replicas[2].clone();
            for survivor in &mut replicas[..2] {
                survivor.merge(&retired);
                survivor.prune(&ids[2], &ids[0]);
            }
            for (at, amount) in later {
                apply(&mut replicas[at], &ids[at], amount);
                expected += amount;
            }
            let (mut a, mut b) = (replicas[0].clone(), replicas[1].clone());
            let mut pruned_b = replicas[1].clone();
            pruned_b.prune(&ids[2], &ids[0]);
            a.merge(&pruned_b);
            b.merge(&replicas[0]);
            prop_assert_eq!(&a, &b);
            prop_assert_eq!(a.value(), expected);
            prop_assert!(a.increments.per_replica.iter().all(|(id, _)| *id != ids[2]));
        }
    }

    #[test]
    fn pruning_is_idempotent_and_a_no_op_without_the_retired_entry() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut counter = GCounter::new();
        counter.increment(&a, 3);
        counter.increment(&b, 4);
        counter.prune(&b, &a);
        let pruned = counter.clone();
        counter.prune(&b, &a);
        assert_eq!(counter, pruned);
        assert_eq!(counter.value(), 7);
        counter.prune(&a, &a);
        assert_eq!(counter, pruned);
    }

    #[test]
    fn values_saturate_instead_of_wrapping() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut counter = PNCounter::new();
        counter.decrement(&a, u64::MAX);
        counter.decrement(&b, 1);
        assert_eq!(counter.value(), i64::MIN);
        counter.increment(&a, u64::MAX);
        counter.increment(&a, 1);
        assert_eq!(counter.increments.value(), u64::MAX);
    }
}
