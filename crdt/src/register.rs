//! Registers: `LWWRegister` (last writer wins, by HLC timestamp) and `MVRegister` (keeps every
//! concurrent value).

use alloc::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::dot_store::DotStore;
use crate::{Crdt, HlcTimestamp, ReplicaId};

/// A single value where the write with the greatest HLC timestamp wins, concurrent or not.
///
/// Writes are ordered by `(timestamp, replica)`, which is unique when each replica stamps its writes
/// with its own `Hlc`. Should two writes still tie (a replica id reused, timestamps forged), the
/// greater value wins, so the merge stays commutative whatever the input.
///
/// Writes made concurrently lose silently: use an `MVRegister` to see them instead.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LWWRegister<V> {
    write: Option<Stamped<V>>,
}

/// A value and the identity of the write that set it; the derived order (timestamp, then replica,
/// then value) is the order in which writes win.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
struct Stamped<V> {
    timestamp: HlcTimestamp,
    replica: ReplicaId,
    value: V,
}

impl<V> Default for LWWRegister<V> {
    fn default() -> Self {
        Self { write: None }
    }
}

impl<V: Ord + Clone> LWWRegister<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` at `timestamp` (from `replica`'s `Hlc`). Returns the delta; a write older
    /// than the current one changes nothing.
    pub fn set(&mut self, value: V, timestamp: HlcTimestamp, replica: &ReplicaId) -> Self {
        let delta = Self {
            write: Some(Stamped {
                timestamp,
                replica: replica.clone(),
                value,
            }),
        };
        self.merge(&delta);
        delta
    }

    /// The current value, if any write happened.
    pub fn get(&self) -> Option<&V> {
        self.write.as_ref().map(|write| &write.value)
    }

    /// When, and by whom, the current value was written.
    pub fn written(&self) -> Option<(HlcTimestamp, &ReplicaId)> {
        self.write
            .as_ref()
            .map(|write| (write.timestamp, &write.replica))
    }
}

impl<V: Ord + Clone> Crdt for LWWRegister<V> {
    type Value = Option<V>;

    fn merge(&mut self, other: &Self) {
        if other.write > self.write {
            self.write.clone_from(&other.write);
        }
    }

    fn leq(&self, other: &Self) -> bool {
        self.write <= other.write
    }

    fn value(&self) -> Option<V> {
        self.get().cloned()
    }
}

/// A register that keeps every value written concurrently: a write replaces the values its replica
/// has seen, and a reader sees all the values no write has replaced yet (one, unless writes were
/// concurrent). The application resolves a conflict by writing the value it chooses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    transparent,
    bound(serialize = "V: Serialize", deserialize = "V: Deserialize<'de>")
)]
pub struct MVRegister<V> {
    store: DotStore<(), V>,
}

impl<V> Default for MVRegister<V> {
    fn default() -> Self {
        Self {
            store: DotStore::default(),
        }
    }
}

impl<V: Ord + Clone> MVRegister<V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` on behalf of `replica`, replacing every value seen. Returns the delta.
    pub fn set(&mut self, value: V, replica: &ReplicaId) -> Self {
        Self {
            store: self.store.write((), replica, value),
        }
    }

    /// The concurrent values, in no particular order (see `value` for a sorted set).
    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.store.values(&())
    }
}

impl<V: Ord + Clone> Crdt for MVRegister<V> {
    type Value = BTreeSet<V>;

    fn merge(&mut self, other: &Self) {
        // Two values under one dot only differ in forged states; keep the greater to stay a lattice.
        self.store.merge_with(&other.store, |ours, theirs| {
            if *theirs > *ours {
                ours.clone_from(theirs);
            }
        });
    }

    fn leq(&self, other: &Self) -> bool {
        self.store
            .leq_with(&other.store, |ours, theirs| ours <= theirs)
    }

    fn value(&self) -> BTreeSet<V> {
        self.values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer, joined};

    impl Scenario for LWWRegister<u8> {
        type Op = u8;

        fn op() -> BoxedStrategy<u8> {
            (0..8u8).boxed()
        }

        fn apply(&mut self, value: &u8, writer: &Writer) -> Self {
            self.set(*value, writer.timestamp, &writer.replica)
        }

        fn apply_to_model(model: &mut Option<u8>, value: &u8, _: &Writer) {
            *model = Some(*value);
        }
    }

    impl Scenario for MVRegister<u8> {
        type Op = u8;

        fn op() -> BoxedStrategy<u8> {
            (0..8u8).boxed()
        }

        fn apply(&mut self, value: &u8, writer: &Writer) -> Self {
            self.set(*value, &writer.replica)
        }

        fn apply_to_model(model: &mut BTreeSet<u8>, value: &u8, _: &Writer) {
            *model = BTreeSet::from([*value]);
        }
    }

    laws::crdt_laws!(lww_register: LWWRegister<u8>, mv_register: MVRegister<u8>);

    #[test]
    fn the_later_timestamp_wins_then_the_greater_replica() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut left = LWWRegister::new();
        left.set("old", HlcTimestamp::new(10, 0), &b);
        let mut right = LWWRegister::new();
        right.set("new", HlcTimestamp::new(10, 1), &a);
        assert_eq!(joined(&left, &right).get(), Some(&"new"));
        assert_eq!(
            joined(&right, &left).written(),
            Some((HlcTimestamp::new(10, 1), &a))
        );

        let mut tie = LWWRegister::new();
        tie.set("tie", HlcTimestamp::new(10, 1), &b);
        assert_eq!(joined(&right, &tie).get(), Some(&"tie"));
    }

    #[test]
    fn an_older_write_changes_nothing() {
        let a = ReplicaId::new("a");
        let mut register = LWWRegister::new();
        register.set(1, HlcTimestamp::new(20, 0), &a);
        register.set(2, HlcTimestamp::new(19, 0), &a);
        assert_eq!(register.value(), Some(1));
    }

    #[test]
    fn concurrent_writes_are_all_kept_until_one_replaces_them() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut left = MVRegister::new();
        left.set(0, &a);
        let mut right = left.clone();
        left.set(1, &a);
        right.set(2, &b);
        let mut merged = joined(&left, &right);
        assert_eq!(merged.value(), BTreeSet::from([1, 2]));
        merged.set(3, &a);
        assert_eq!(merged.value(), BTreeSet::from([3]));
        assert_eq!(joined(&merged, &right).value(), BTreeSet::from([3]));
    }
}
