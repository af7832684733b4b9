//! The `Crdt` trait every replicated type in this crate implements.

/// A state-based CRDT: a join-semilattice whose states replicas exchange and merge.
///
/// # Laws
///
/// For all states `a`, `b`, `c` of one type (checked by property tests for every type here):
///
/// - `merge` is idempotent (`a ⊔ a = a`), commutative (`a ⊔ b = b ⊔ a`) and associative
///   (`(a ⊔ b) ⊔ c = a ⊔ (b ⊔ c)`), so replicas converge whatever the order, grouping or repetition
///   of the states they receive;
/// - `merge` only inflates: `a.leq(&(a ⊔ b))`, and `a.leq(&b)` holds exactly when `a ⊔ b = b`;
/// - equal states are equal values (`==`), and serialize to identical bytes.
///
/// # Deltas
///
/// Every mutator (`increment`, `add`, `set`, …) changes the state in place and returns a *delta*: a
/// state of the same type holding just that change, with `x_after == x_before ⊔ delta`. Ship the
/// delta instead of the whole state and apply it with `merge`; deltas may be lost (send the full state
/// later), duplicated or reordered, and still converge to the same state as the full states would.
///
/// `Default` is the bottom of the lattice: the state of a replica that has seen nothing.
pub trait Crdt: Clone + Default + PartialEq {
    /// What a reader sees, for example `u64` for a grow-only counter or `BTreeSet<T>` for a set.
    type Value;

    /// Joins `other` into `self` (the least upper bound of both). Merging a delta is the same call.
    fn merge(&mut self, other: &Self);

    /// The lattice order: whether `other` already contains everything `self` knows, i.e. merging
    /// `self` into `other` would change nothing. Lets a replica skip states that bring no news.
    fn leq(&self, other: &Self) -> bool;

    /// The current value.
    fn value(&self) -> Self::Value;
}
