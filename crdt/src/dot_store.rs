//! `DotStore`: the observed-remove core shared by `ORSet`, `MVRegister`, `Flag` and `ORMap`.
//!
//! Every write creates a fresh dot and tags its value with it; a remove drops the dots it has seen.
//! Merging keeps a dot if both sides have it, or if one side has it and the other has never seen it
//! (a write the other does not know about). A dot one side has seen but no longer holds was removed
//! there, and stays removed. That rule gives add-wins semantics without tombstones: removed dots live
//! on only as counters in the causal context.
//!
//! This is the delta-state design of Almeida, Shoker and Baquero, *Delta State Replicated Data
//! Types* (2018), §5 (causal CRDTs with a dot store and a causal context).

mod wire;

use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem;

use crate::ReplicaId;
use crate::causal::{CausalContext, Dot};

/// For each key, the live writes under it, each a value tagged with its dot; plus the causal context
/// of every dot seen. Keys without live writes are absent.
///
/// Invariants: dots under a key are sorted and unique; every stored dot is in the context. Values
/// written under one dot are equal on every replica, because a dot is written once, by one replica.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct DotStore<K, V> {
    entries: BTreeMap<K, Vec<(Dot, V)>>,
    context: CausalContext,
}

impl<K, V> Default for DotStore<K, V> {
    fn default() -> Self {
        Self {
            entries: BTreeMap::new(),
            context: CausalContext::default(),
        }
    }
}

impl<K: Ord + Clone, V: Clone> DotStore<K, V> {
    /// Writes `value` under `key` as `replica`'s next dot, replacing every write under `key` this
    /// store has seen. Returns the delta: the new write, and the replaced dots as removed.
    pub(crate) fn write(&mut self, key: K, replica: &ReplicaId, value: V) -> Self {
        let dot = self.context.next_dot(replica);
        self.context.insert(&dot);
        let write = (dot, value);
        let replaced = self
            .entries
            .insert(key.clone(), alloc::vec![write.clone()])
            .unwrap_or_default();
        let context = CausalContext::of(replaced.iter().map(|(dot, _)| dot).chain([&write.0]));
        Self {
            entries: BTreeMap::from([(key, alloc::vec![write])]),
            context,
        }
    }

    /// Removes every write under `key` this store has seen. Returns the delta: those dots, removed.
    pub(crate) fn remove(&mut self, key: &K) -> Self {
        let removed = self.entries.remove(key).unwrap_or_default();
        Self {
            entries: BTreeMap::new(),
            context: CausalContext::of(removed.iter().map(|(dot, _)| dot)),
        }
    }

    /// Joins `other` into `self`; `join_values` combines the values two sides hold under the same
    /// dot (equal in every well-formed state, so any join of the value type will do).
    ///
    /// Linear in the number of keys: a merge-join of the two sorted maps.
    pub(crate) fn merge_with(&mut self, other: &Self, join_values: impl Fn(&mut V, &V)) {
        let mut merged = Vec::with_capacity(self.entries.len().max(other.entries.len()));
        let mut theirs = other.entries.iter().peekable();
        for (key, our_writes) in mem::take(&mut self.entries) {
            while let Some((their_key, their_writes)) =
                theirs.next_if(|(their_key, _)| **their_key < key)
            {
                push_nonempty(
                    &mut merged,
                    their_key.clone(),
                    unseen(their_writes, &self.context),
                );
            }
            let writes = match theirs.next_if(|(their_key, _)| **their_key == key) {
                Some((_, their_writes)) => join_writes(
                    our_writes,
                    &self.context,
                    their_writes,
                    &other.context,
                    &join_values,
                ),
                None => retain_unremoved(our_writes, &other.context),
            };
            push_nonempty(&mut merged, key, writes);
        }
        for (their_key, their_writes) in theirs {
            push_nonempty(
                &mut merged,
                their_key.clone(),
                unseen(their_writes, &self.context),
            );
        }
        // Sorted, unique keys: `BTreeMap` builds from them in linear time.
        self.entries = merged.into_iter().collect();
        self.context.merge(&other.context);
    }

    /// Whether merging `self` into `other` would change nothing: `other` has seen every dot of
    /// `self`, and every write `other` holds whose dot `self` has seen, `self` holds too (else
    /// `self` removed it), with a value `values_leq` to `other`'s.
    pub(crate) fn leq_with(&self, other: &Self, values_leq: impl Fn(&V, &V) -> bool) -> bool {
        self.context.leq(&other.context)
            && other.entries.iter().all(|(key, their_writes)| {
                let our_writes = self.entries.get(key).map_or(&[][..], Vec::as_slice);
                their_writes
                    .iter()
                    .filter(|(dot, _)| self.context.contains(dot))
                    .all(|(dot, their_value)| {
                        our_writes
                            .binary_search_by(|(our_dot, _)| our_dot.cmp(dot))
                            .is_ok_and(|at| values_leq(&our_writes[at].1, their_value))
                    })
            })
    }

    /// The values written under `key` by concurrent writes not yet replaced (empty if absent).
    pub(crate) fn values(&self, key: &K) -> impl Iterator<Item = &V> {
        self.entries
            .get(key)
            .into_iter()
            .flatten()
            .map(|(_, value)| value)
    }

    /// Every key with its live values, in key order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, impl Iterator<Item = &V>)> {
        self.entries
            .iter()
            .map(|(key, writes)| (key, writes.iter().map(|(_, value)| value)))
    }

    pub(crate) fn contains_key(&self, key: &K) -> bool {
        self.entries.contains_key(key)
    }

    pub(crate) fn keys(&self) -> impl ExactSizeIterator<Item = &K> {
        self.entries.keys()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn push_nonempty<K, V>(merged: &mut Vec<(K, Vec<(Dot, V)>)>, key: K, writes: Vec<(Dot, V)>) {
    if !writes.is_empty() {
        merged.push((key, writes));
    }
}

/// Their writes under a key we do not hold: keep those we have never seen (we removed the others).
fn unseen<V: Clone>(their_writes: &[(Dot, V)], our_context: &CausalContext) -> Vec<(Dot, V)> {
    their_writes
        .iter()
        .filter(|(dot, _)| !our_context.contains(dot))
        .cloned()
        .collect()
}

/// Our writes under a key they do not hold: keep those they have never seen (they removed the others).
fn retain_unremoved<V>(
    mut our_writes: Vec<(Dot, V)>,
    their_context: &CausalContext,
) -> Vec<(Dot, V)> {
    our_writes.retain(|(dot, _)| !their_context.contains(dot));
    our_writes
}

/// Both sides hold writes under a key: a merge of the two sorted dot lists.
fn join_writes<V: Clone>(
    our_writes: Vec<(Dot, V)>,
    our_context: &CausalContext,
    their_writes: &[(Dot, V)],
    their_context: &CausalContext,
    join_values: &impl Fn(&mut V, &V),
) -> Vec<(Dot, V)> {
    // The common case, one write both sides have, costs no allocation.
    if let ([(our_dot, _)], [(their_dot, their_value)]) = (our_writes.as_slice(), their_writes)
        && our_dot == their_dot
    {
        let mut our_writes = our_writes;
        join_values(&mut our_writes[0].1, their_value);
        return our_writes;
    }
    let mut joined = Vec::with_capacity(our_writes.len() + their_writes.len());
    let mut theirs = their_writes.iter().peekable();
    for (dot, mut value) in our_writes {
        while let Some(write) = theirs.next_if(|(their_dot, _)| *their_dot < dot) {
            if !our_context.contains(&write.0) {
                joined.push(write.clone());
            }
        }
        match theirs.next_if(|(their_dot, _)| *their_dot == dot) {
            Some((_, their_value)) => {
                join_values(&mut value, their_value);
                joined.push((dot, value));
            }
            None if !their_context.contains(&dot) => joined.push((dot, value)),
            None => {}
        }
    }
    joined.extend(
        theirs
            .filter(|(dot, _)| !our_context.contains(dot))
            .cloned(),
    );
    joined
}
