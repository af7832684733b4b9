//! Test support: random multi-replica traces, and the laws every CRDT here is checked against.
//!
//! A type takes part by implementing `Scenario` (its operations and its sequential model) in its own
//! test module and invoking `crdt_laws!`, which generates the property tests.

use alloc::format;
use alloc::vec::Vec;
use core::fmt::Debug;

use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Crdt, Hlc, HlcTimestamp, ManualClock, ReplicaId};

/// Replicas in a generated trace.
pub(crate) const REPLICAS: usize = 3;

/// Who performs an operation, and the HLC timestamp its replica issued for it.
pub(crate) struct Writer {
    pub(crate) replica: ReplicaId,
    pub(crate) timestamp: HlcTimestamp,
}

/// A CRDT together with random operations on it and the sequential data type it must behave like
/// on a single replica (expressed on its `Value`: a set behaves like a `BTreeSet`, a counter like
/// an integer).
pub(crate) trait Scenario:
    Crdt<Value: PartialEq + Debug + Default> + Debug + Serialize + DeserializeOwned
{
    type Op: Clone + Debug + 'static;

    fn op() -> BoxedStrategy<Self::Op>;

    /// Performs `op` as `writer` and returns the delta.
    fn apply(&mut self, op: &Self::Op, writer: &Writer) -> Self;

    fn apply_to_model(model: &mut Self::Value, op: &Self::Op, writer: &Writer);
}

#[derive(Clone, Debug)]
pub(crate) enum Step<Op> {
    /// `replica` performs `op`, its physical clock reading `clock_ms` (which may go backwards).
    Write {
        replica: usize,
        op: Op,
        clock_ms: u64,
    },
    /// `to` merges `from`'s full state (and observes its clock).
    Sync { from: usize, to: usize },
}

pub(crate) fn steps<T: Scenario>() -> impl Strategy<Value = Vec<Step<T::Op>>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, T::op(), 0..1_000u64)
            .prop_map(|(replica, op, clock_ms)| Step::Write { replica, op, clock_ms }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 0..40)
}

/// The outcome of a trace: each replica's final state, and every delta produced, in order.
pub(crate) struct Trace<T> {
    pub(crate) replicas: Vec<T>,
    pub(crate) deltas: Vec<T>,
}

/// Runs `steps`, checking at every mutation that the new state is the old one joined with the
/// returned delta (`mutate(x) == x ⊔ delta`).
pub(crate) fn run<T: Scenario>(steps: &[Step<T::Op>]) -> Trace<T> {
    let ids: Vec<ReplicaId> = (0..REPLICAS)
        .map(|at| ReplicaId::new(format!("r{at}")))
        .collect();
    let mut clocks: Vec<_> = (0..REPLICAS)
        .map(|_| Hlc::new(ManualClock::default(), u64::MAX))
        .collect();
    let mut replicas = alloc::vec![T::default(); REPLICAS];
    let mut deltas = Vec::new();
    for step in steps {
        match step {
            Step::Write {
                replica,
                op,
                clock_ms,
            } => {
                let clock = &mut clocks[*replica];
                clock.clock_mut().set_ms(*clock_ms);
                let writer = Writer {
                    replica: ids[*replica].clone(),
                    timestamp: clock.now(),
                };
                let before = replicas[*replica].clone();
                let delta = replicas[*replica].apply(op, &writer);
                assert_eq!(
                    replicas[*replica],
                    joined(&before, &delta),
                    "mutation is not state ⊔ delta: {op:?}"
                );
                deltas.push(delta);
            }
            Step::Sync { from, to } => {
                let sent = replicas[*from].clone();
                replicas[*to].merge(&sent);
                let remote = clocks[*from].last();
                clocks[*to].observe(remote).expect("the drift is unlimited");
            }
        }
    }
    Trace { replicas, deltas }
}

pub(crate) fn joined<T: Crdt>(a: &T, b: &T) -> T {
    let mut joined = a.clone();
    joined.merge(b);
    joined
}

/// Idempotence, commutativity, associativity, inflation, `leq` agreeing with `merge`, and
/// deterministic bytes for equal states.
pub(crate) fn check_merge_laws<T: Scenario>(a: &T, b: &T, c: &T) {
    let ab = joined(a, b);
    assert_eq!(joined(a, a), *a, "idempotent");
    assert_eq!(ab, joined(b, a), "commutative");
    assert_eq!(joined(&ab, c), joined(a, &joined(b, c)), "associative");
    assert!(a.leq(&ab) && b.leq(&ab), "a merge is at least each input");
    for (x, y) in [(a, b), (b, a), (a, c), (c, a), (&ab, a), (a, &ab), (a, a)] {
        assert_eq!(x.leq(y), joined(x, y) == *y, "x ≤ y exactly when x ⊔ y = y");
    }
    assert_eq!(
        encode(&ab),
        encode(&joined(b, a)),
        "equal states encode to equal bytes"
    );
    for state in [a, b, c, &ab] {
        let decoded: T = rmp_serde::from_slice(&encode(state)).expect("decodes");
        assert_eq!(decoded, *state, "round trip");
    }
}

/// Delivering every delta of a trace to a fresh replica, shuffled and some twice, gives the merge
/// of all replicas' full states.
pub(crate) fn check_deltas_converge<T: Scenario>(trace: &Trace<T>, seed: u64) {
    let mut random = XorShift(seed | 1);
    let mut deliveries: Vec<&T> = Vec::new();
    for delta in &trace.deltas {
        let copies = 1 + random.below(2);
        deliveries.extend(core::iter::repeat_n(delta, copies));
    }
    for at in (1..deliveries.len()).rev() {
        deliveries.swap(at, random.below(at + 1));
    }
    let mut receiver = T::default();
    for delta in deliveries {
        receiver.merge(delta);
    }
    let full = trace
        .replicas
        .iter()
        .fold(T::default(), |sum, state| joined(&sum, state));
    assert_eq!(receiver, full);
}

/// On one replica, the value follows the sequential model after every operation.
pub(crate) fn check_sequential_model<T: Scenario>(ops: &[T::Op]) {
    let replica = ReplicaId::new("solo");
    let mut clock = Hlc::new(ManualClock::default(), u64::MAX);
    let (mut state, mut model) = (T::default(), T::Value::default());
    for op in ops {
        let writer = Writer {
            replica: replica.clone(),
            timestamp: clock.now(),
        };
        state.apply(op, &writer);
        T::apply_to_model(&mut model, op, &writer);
        assert_eq!(state.value(), model, "after {op:?}");
    }
}

pub(crate) fn encode<T: Serialize>(state: &T) -> Vec<u8> {
    rmp_serde::to_vec_named(state).expect("encodes")
}

/// A tiny seeded generator for shuffles inside a property (proptest supplies the seed).
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }
}

/// Generates, per `module: Type` pair, a module of property tests checking `Type` against the laws
/// above. `Type` must implement `Scenario`.
macro_rules! crdt_laws {
    ($($module:ident: $crdt:ty),+ $(,)?) => {$(
        mod $module {
            #[allow(unused_imports)]
            use super::*;
            use proptest::prelude::{any, proptest};
            use $crate::laws;

            type Subject = $crdt;

            proptest! {
                /// Runs a random trace (which checks `mutate(x) == x ⊔ delta` at every step) and
                /// checks the lattice laws on the three replicas' final states.
                #[test]
                fn merge_laws_hold_between_replicas(steps in laws::steps::<Subject>()) {
                    let trace = laws::run::<Subject>(&steps);
                    laws::check_merge_laws(&trace.replicas[0], &trace.replicas[1], &trace.replicas[2]);
                }

                #[test]
                fn deltas_in_any_order_with_duplicates_converge(
                    steps in laws::steps::<Subject>(),
                    seed in any::<u64>(),
                ) {
                    laws::check_deltas_converge(&laws::run::<Subject>(&steps), seed);
                }

                #[test]
                fn single_replica_matches_the_sequential_model(
                    ops in proptest::collection::vec(<Subject as laws::Scenario>::op(), 0..40),
                ) {
                    laws::check_sequential_model::<Subject>(&ops);
                }
            }
        }
    )+};
}

pub(crate) use crdt_laws;
