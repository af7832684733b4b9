//! `Flag`: an enable-wins boolean.

use serde::{Deserialize, Serialize};

use crate::dot_store::DotStore;
use crate::{Crdt, ReplicaId};

/// A boolean that can be enabled and disabled any number of times; an enable concurrent with a
/// disable wins. Starts disabled.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Flag {
    store: DotStore<(), ()>,
}

impl Flag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Enables the flag on behalf of `replica`. Returns the delta.
    pub fn enable(&mut self, replica: &ReplicaId) -> Self {
        Self {
            store: self.store.write((), replica, ()),
        }
    }

    /// Disables the flag, overriding the enables seen so far. Returns the delta.
    pub fn disable(&mut self) -> Self {
        Self {
            store: self.store.remove(&()),
        }
    }

    pub fn is_enabled(&self) -> bool {
        !self.store.is_empty()
    }
}

impl Crdt for Flag {
    type Value = bool;

    fn merge(&mut self, other: &Self) {
        self.store.merge_with(&other.store, |_, _| {});
    }

    fn leq(&self, other: &Self) -> bool {
        self.store.leq_with(&other.store, |_, _| true)
    }

    fn value(&self) -> bool {
        self.is_enabled()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::laws::{self, Scenario, Writer, joined};

    impl Scenario for Flag {
        /// `true`: enable; `false`: disable.
        type Op = bool;

        fn op() -> BoxedStrategy<bool> {
            any::<bool>().boxed()
        }

        fn apply(&mut self, enable: &bool, writer: &Writer) -> Self {
            if *enable {
                self.enable(&writer.replica)
            } else {
                self.disable()
            }
        }

        fn apply_to_model(model: &mut bool, enable: &bool, _: &Writer) {
            *model = *enable;
        }
    }

    laws::crdt_laws!(flag: Flag);

    #[test]
    fn an_enable_concurrent_with_a_disable_wins() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut left = Flag::new();
        left.enable(&a);
        let mut right = left.clone();
        right.disable();
        left.enable(&a);
        assert!(joined(&left, &right).is_enabled());

        let mut left = Flag::new();
        left.enable(&a);
        let mut right = left.clone();
        left.disable();
        right.enable(&b);
        assert!(joined(&right, &left).is_enabled());
    }

    #[test]
    fn a_disable_after_seeing_every_enable_wins() {
        let (a, b) = (ReplicaId::new("a"), ReplicaId::new("b"));
        let mut left = Flag::new();
        left.enable(&a);
        let mut right = Flag::new();
        right.enable(&b);
        let mut merged = joined(&left, &right);
        merged.disable();
        assert!(!joined(&merged, &left).is_enabled());
        assert!(!joined(&right, &merged).is_enabled());
    }
}
