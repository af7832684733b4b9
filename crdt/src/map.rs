//! Maps: `ORMap` (keys with observed-remove semantics, values any CRDT) and `LWWMap` (values
//! last-writer-wins).

use alloc::borrow::Cow;
use alloc::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dot_store::DotStore;
use crate::{Crdt, HlcTimestamp, LWWRegister, ReplicaId};

/// A map whose values are CRDTs themselves (counters, sets, registers, other maps).
///
/// - **Update wins**: an update of a key concurrent with its removal survives it, with the value
///   the updating replica had built.
/// - **Remove resets**: a removal forgets the key's value as far as the remover has seen it; a key
///   updated after its removal starts again from the bottom value (a counter from 0).
/// - **Concurrent updates merge**: two replicas updating one key concurrently each keep their
///   version under their own dot; the value read is the merge of both, and the next update
///   replaces them with that merge.
///
/// An update's delta carries the key's whole new value (not the value's own delta), so keep values
/// small or split them over keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    transparent,
    bound(
        serialize = "K: Serialize, V: Serialize",
        deserialize = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
    )
)]
pub struct ORMap<K, V> {
    store: DotStore<K, V>,
}

impl<K, V> Default for ORMap<K, V> {
    fn default() -> Self {
        Self {
            store: DotStore::default(),
        }
    }
}

impl<K: Ord + Clone, V: Crdt> ORMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies `mutate` to the value under `key` (the bottom value if absent) on behalf of
    /// `replica`. Returns the delta.
    pub fn update(&mut self, key: K, replica: &ReplicaId, mutate: impl FnOnce(&mut V)) -> Self {
        let mut value = self.get(&key).map_or_else(V::default, Cow::into_owned);
        mutate(&mut value);
        Self {
            store: self.store.write(key, replica, value),
        }
    }

    /// Removes `key` as far as this replica has seen it. Returns the delta.
    pub fn remove(&mut self, key: &K) -> Self {
        Self {
            store: self.store.remove(key),
        }
    }

    /// The value under `key`: borrowed, unless concurrent updates must be merged to read it.
    pub fn get(&self, key: &K) -> Option<Cow<'_, V>> {
        merged(self.store.values(key))
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.store.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> {
        self.store.keys()
    }

    pub fn len(&self) -> usize {
        self.store.keys().len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }
}

/// The merge of the concurrent versions of one value; `None` if there are none.
fn merged<'a, V: Crdt>(mut versions: impl Iterator<Item = &'a V>) -> Option<Cow<'a, V>> {
    let first = versions.next()?;
    Some(versions.fold(Cow::Borrowed(first), |mut sum, version| {
        sum.to_mut().merge(version);
        sum
    }))
}

impl<K: Ord + Clone, V: Crdt> Crdt for ORMap<K, V> {
    type Value = BTreeMap<K, V::Value>;

    fn merge(&mut self, other: &Self) {
        self.store.merge_with(&other.store, V::merge);
    }

    fn leq(&self, other: &Self) -> bool {
        self.store.leq_with(&other.store, V::leq)
    }

    fn value(&self) -> Self::Value {
        self.store
            .iter()
            .filter_map(|(key, versions)| Some((key.clone(), merged(versions)?.value())))
            .collect()
    }
}

/// A map from keys to plain values where, per key, the write with the greatest HLC timestamp wins
/// (see `LWWRegister`). Keys are removed with observed-remove semantics: a write concurrent with a
/// removal survives it. An `ORMap` of `LWWRegister`s, with a direct API.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    transparent,
    bound(
        serialize = "K: Serialize, V: Serialize",
        deserialize = "K: Deserialize<'de> + Ord, V: Deserialize<'de>"
    )
)]
pub struct LWWMap<K, V> {
    registers: ORMap<K, LWWRegister<V>>,
}

impl<K, V> Default for LWWMap<K, V> {
    fn default() -> Self {
        Self {
            registers: ORMap::default(),
        }
    }
}

impl<K: Ord + Clone, V: Ord + Clone> LWWMap<K, V> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Writes `value` under `key` at `timestamp` (from `replica`'s `Hlc`). Returns the delta.
    pub fn set(&mut self, key: K, value: V, timestamp: HlcTimestamp, replica: &ReplicaId) -> Self {
        let registers = self.registers.update(key, replica, |register| {
            register.set(value, timestamp, replica);
        });
        Self { registers }
    }

    /// Removes `key` as far as this replica has seen it. Returns the delta.
    pub fn remove(&mut self, key: &K) -> Self {
        Self {
            registers: self.registers.remove(key),
        }
    }

    pub fn get(&self, key: &K) -> Option<V> {
        self.registers.get(key)?.value()
    }

    pub fn contains_key(&self, key: &K) -> bool {
        self.registers.contains_key(key)
    }

    /// The keys, in order.
    pub fn keys(&self) -> impl ExactSizeIterator<Item = &K> {
        self.registers.keys()
    }

    pub fn len(&self) -> usize {
        self.registers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.registers.is_empty()
    }
}

impl<K: Ord + Clone, V: Ord + Clone> Crdt for LWWMap<K, V> {
    type Value = BTreeMap<K, V>;

    fn merge(&mut self, other: &Self) {
        self.registers.merge(&other.registers);
    }

    fn leq(&self, other: &Self) -> bool {
        self.registers.leq(&other.registers)
    }

    fn value(&self) -> BTreeMap<K, V> {
        // Every register in the map has been written, so none reads `None`.
        self.registers
            .value()
            .into_iter()
            .filter_map(|(key, value)| Some((key, value?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer, joined};
    use crate::{ORSet, PNCounter};

    #[derive(Clone, Debug)]
    pub(crate) enum MapOp<Op> {
        Update(u8, Op),
        Remove(u8),
    }

    impl<V: Scenario> Scenario for ORMap<u8, V> {
        type Op = MapOp<V::Op>;

        fn op() -> BoxedStrategy<Self::Op> {
            prop_oneof![
                3 => (0..4u8, V::op()).prop_map(|(key, op)| MapOp::Update(key, op)),
                1 => (0..4u8).prop_map(MapOp::Remove),
            ]
            .boxed()
        }

        fn apply(&mut self, op: &Self::Op, writer: &Writer) -> Self {
            match op {
                MapOp::Update(key, op) => self.update(*key, &writer.replica, |value| {
                    value.apply(op, writer);
                }),
                MapOp::Remove(key) => self.remove(key),
            }
        }

        fn apply_to_model(model: &mut Self::Value, op: &Self::Op, writer: &Writer) {
            match op {
                MapOp::Update(key, op) => {
                    V::apply_to_model(model.entry(*key).or_default(), op, writer)
                }
                MapOp::Remove(key) => {
                    model.remove(key);
                }
            }
        }
    }

    impl Scenario for LWWMap<u8, u8> {
        /// `Some(value)`: set the key; `None`: remove it.
        type Op = (u8, Option<u8>);

        fn op() -> BoxedStrategy<Self::Op> {
            (0..4u8, proptest::option::weighted(0.75, 0..8u8)).boxed()
        }

        fn apply(&mut self, (key, value): &Self::Op, writer: &Writer) -> Self {
            match value {
                Some(value) => self.set(*key, *value, writer.timestamp, &writer.replica),
                None => self.remove(key),
            }
        }

        fn apply_to_model(model: &mut BTreeMap<u8, u8>, (key, value): &Self::Op, _: &Writer) {
            match value {
                Some(value) => {
                    model.insert(*key, *value);
                }
                None => {
                    model.remove(key);
                }
            }
        }
    }

    laws::crdt_laws!(
        map_of_counters: ORMap<u8, PNCounter>,
        map_of_sets: ORMap<u8, ORSet<u8>>,
        lww_map: LWWMap<u8, u8>,
    );

    fn replicas() -> (ReplicaId, ReplicaId) {
        (ReplicaId::new("a"), ReplicaId::new("b"))
    }

    #[test]
    fn concurrent_updates_of_a_key_merge_their_values() {
        let (a, b) = replicas();
        let mut left = ORMap::<&str, PNCounter>::new();
        left.update("hits", &a, |hits| {
            hits.increment(&a, 2);
        });
        let mut right = left.clone();
        left.update("hits", &a, |hits| {
            hits.increment(&a, 3);
        });
        right.update("hits", &b, |hits| {
            hits.decrement(&b, 1);
        });
        let mut merged = joined(&left, &right);
        assert_eq!(merged.get(&"hits").map(|hits| hits.value()), Some(4));
        assert!(
            matches!(merged.get(&"hits"), Some(Cow::Owned(_))),
            "two versions to merge"
        );
        merged.update("hits", &b, |hits| {
            hits.increment(&b, 1);
        });
        assert!(
            matches!(merged.get(&"hits"), Some(Cow::Borrowed(_))),
            "collapsed into one"
        );
        assert_eq!(merged.value(), BTreeMap::from([("hits", 5)]));
    }

    #[test]
    fn an_update_concurrent_with_a_remove_wins() {
        let a = ReplicaId::new("a");
        let mut left = ORMap::<u8, ORSet<u8>>::new();
        left.update(1, &a, |set| {
            set.add(10, &a);
        });
        let mut right = left.clone();
        right.remove(&1);
        left.update(1, &a, |set| {
            set.add(11, &a);
        });
        let merged = joined(&right, &left);
        assert_eq!(merged.value(), BTreeMap::from([(1, [10, 11].into())]));
    }

    #[test]
    fn a_key_updated_after_its_removal_starts_from_the_bottom() {
        let (a, b) = replicas();
        let mut map = ORMap::<u8, PNCounter>::new();
        map.update(7, &a, |counter| {
            counter.increment(&a, 5);
        });
        let before_removal = map.clone();
        map.remove(&7);
        map.update(7, &b, |counter| {
            counter.increment(&b, 1);
        });
        assert_eq!(map.value(), BTreeMap::from([(7, 1)]));
        assert_eq!(
            joined(&map, &before_removal).value(),
            BTreeMap::from([(7, 1)])
        );
    }

    #[test]
    fn lww_map_keeps_the_latest_write_per_key_and_drops_removed_keys() {
        let (a, b) = replicas();
        let mut left = LWWMap::new();
        left.set("colour", "red", HlcTimestamp::new(10, 0), &a);
        left.set("size", "L", HlcTimestamp::new(10, 1), &a);
        let mut right = left.clone();
        right.set("colour", "blue", HlcTimestamp::new(12, 0), &b);
        left.set("colour", "green", HlcTimestamp::new(11, 0), &a);
        left.remove(&"size");
        let merged = joined(&left, &right);
        assert_eq!(merged.get(&"colour"), Some("blue"));
        assert!(!merged.contains_key(&"size"));
        assert_eq!(merged.value(), BTreeMap::from([("colour", "blue")]));
    }
}
