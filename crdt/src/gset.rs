//! `GSet`: a grow-only set.

use alloc::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::Crdt;

/// A set that only grows: elements can be added, never removed. The merge is the union.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GSet<T: Ord> {
    elements: BTreeSet<T>,
}

impl<T: Ord> Default for GSet<T> {
    fn default() -> Self {
        Self {
            elements: BTreeSet::new(),
        }
    }
}

impl<T: Ord + Clone> GSet<T> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `element`. Returns the delta: the set of just that element.
    pub fn insert(&mut self, element: T) -> Self {
        self.elements.insert(element.clone());
        Self {
            elements: BTreeSet::from([element]),
        }
    }

    pub fn contains(&self, element: &T) -> bool {
        self.elements.contains(element)
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = &T> {
        self.elements.iter()
    }

    pub fn len(&self) -> usize {
        self.elements.len()
    }

    pub fn is_empty(&self) -> bool {
        self.elements.is_empty()
    }
}

impl<T: Ord + Clone> Crdt for GSet<T> {
    type Value = BTreeSet<T>;

    fn merge(&mut self, other: &Self) {
        self.elements.extend(other.elements.iter().cloned());
    }

    fn leq(&self, other: &Self) -> bool {
        self.elements.is_subset(&other.elements)
    }

    fn value(&self) -> BTreeSet<T> {
        self.elements.clone()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer};

    impl Scenario for GSet<u8> {
        type Op = u8;

        fn op() -> BoxedStrategy<u8> {
            (0..16u8).boxed()
        }

        fn apply(&mut self, element: &u8, _: &Writer) -> Self {
            self.insert(*element)
        }

        fn apply_to_model(model: &mut BTreeSet<u8>, element: &u8, _: &Writer) {
            model.insert(*element);
        }
    }

    laws::crdt_laws!(g_set: GSet<u8>);
}
