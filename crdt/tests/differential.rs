//! Differential tests against the `crdts` crate: random operation traces over three replicas, run
//! on both implementations side by side, must give every replica the same value after every step.

use std::collections::BTreeSet;
use std::fmt::Debug;

use crdts::{CmRDT, CvRDT};
use proptest::prelude::*;
use weft_crdt::{Crdt, Hlc, HlcTimestamp, ManualClock, ReplicaId};

const REPLICAS: usize = 3;

/// The replica performing an operation, under both implementations' names for it, and the HLC
/// timestamp it issued for the operation.
struct Writer {
    actor: String,
    replica: ReplicaId,
    timestamp: HlcTimestamp,
}

/// One implementation of a data type, driven through operations both implementations share.
trait Subject: Clone + Default {
    type Op: Debug;
    type Value: PartialEq + Debug;

    fn apply(&mut self, op: &Self::Op, writer: &Writer);
    fn merge_from(&mut self, other: &Self);
    fn read(&self) -> Self::Value;
}

#[derive(Clone, Debug)]
enum Step<Op> {
    Write {
        replica: usize,
        op: Op,
        clock_ms: u64,
    },
    Sync {
        from: usize,
        to: usize,
    },
}

fn steps<Op: Clone + Debug>(op: impl Strategy<Value = Op>) -> impl Strategy<Value = Vec<Step<Op>>> {
    let step = prop_oneof![
        3 => (0..REPLICAS, op, 0..1_000u64).prop_map(|(replica, op, clock_ms)| Step::Write { replica, op, clock_ms }),
        1 => (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Step::Sync { from, to }),
    ];
    proptest::collection::vec(step, 0..60)
}

fn check_same<Ours, Theirs>(steps: &[Step<Ours::Op>]) -> Result<(), TestCaseError>
where
    Ours: Subject,
    Theirs: Subject<Op = Ours::Op, Value = Ours::Value>,
{
    let actors: Vec<String> = (0..REPLICAS)
        .map(|at| format!("node-{at}#01J9ZK8Q7R6W5V4T3S2R1Q0P9N"))
        .collect();
    let mut clocks: Vec<_> = (0..REPLICAS)
        .map(|_| Hlc::new(ManualClock::default(), u64::MAX))
        .collect();
    let mut ours = vec![Ours::default(); REPLICAS];
    let mut theirs = vec![Theirs::default(); REPLICAS];
    for step in steps {
        match *step {
            Step::Write {
                replica,
                ref op,
                clock_ms,
            } => {
                clocks[replica].clock_mut().set_ms(clock_ms);
                let writer = Writer {
                    actor: actors[replica].clone(),
                    replica: ReplicaId::new(&actors[replica]),
                    timestamp: clocks[replica].now(),
                };
                ours[replica].apply(op, &writer);
                theirs[replica].apply(op, &writer);
            }
            Step::Sync { from, to } => {
                let sent = ours[from].clone();
                ours[to].merge_from(&sent);
                let sent = theirs[from].clone();
                theirs[to].merge_from(&sent);
                let remote = clocks[from].last();
                clocks[to].observe(remote).expect("the drift is unlimited");
            }
        }
        for (at, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
            prop_assert_eq!(
                ours.read(),
                theirs.read(),
                "replica {} after {:?}",
                at,
                step
            );
        }
    }
    Ok(())
}

impl Subject for weft_crdt::GCounter {
    type Op = u8;
    type Value = String;

    fn apply(&mut self, amount: &u8, writer: &Writer) {
        self.increment(&writer.replica, u64::from(*amount));
    }

    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }

    fn read(&self) -> String {
        self.value().to_string()
    }
}

impl Subject for crdts::GCounter<String> {
    type Op = u8;
    type Value = String;

    fn apply(&mut self, amount: &u8, writer: &Writer) {
        let op = self.inc_many(writer.actor.clone(), u64::from(*amount));
        CmRDT::apply(self, op);
    }

    fn merge_from(&mut self, other: &Self) {
        CvRDT::merge(self, other.clone());
    }

    fn read(&self) -> String {
        self.read().to_string()
    }
}

impl Subject for weft_crdt::PNCounter {
    /// Positive: increment; negative: decrement.
    type Op = i8;
    type Value = String;

    fn apply(&mut self, amount: &i8, writer: &Writer) {
        let magnitude = u64::from(amount.unsigned_abs());
        if *amount >= 0 {
            self.increment(&writer.replica, magnitude);
        } else {
            self.decrement(&writer.replica, magnitude);
        }
    }

    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }

    fn read(&self) -> String {
        self.value().to_string()
    }
}

impl Subject for crdts::PNCounter<String> {
    type Op = i8;
    type Value = String;

    fn apply(&mut self, amount: &i8, writer: &Writer) {
        let magnitude = u64::from(amount.unsigned_abs());
        let op = if *amount >= 0 {
            self.inc_many(writer.actor.clone(), magnitude)
        } else {
            self.dec_many(writer.actor.clone(), magnitude)
        };
        CmRDT::apply(self, op);
    }

    fn merge_from(&mut self, other: &Self) {
        CvRDT::merge(self, other.clone());
    }

    fn read(&self) -> String {
        self.read().to_string()
    }
}

#[derive(Clone, Debug)]
enum SetOp {
    Add(u8),
    Remove(u8),
}

impl Subject for weft_crdt::ORSet<u8> {
    type Op = SetOp;
    type Value = BTreeSet<u8>;

    fn apply(&mut self, op: &SetOp, writer: &Writer) {
        match op {
            SetOp::Add(element) => self.add(*element, &writer.replica),
            SetOp::Remove(element) => self.remove(element),
        };
    }

    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }

    fn read(&self) -> BTreeSet<u8> {
        self.value()
    }
}

impl Subject for crdts::Orswot<u8, String> {
    type Op = SetOp;
    type Value = BTreeSet<u8>;

    fn apply(&mut self, op: &SetOp, writer: &Writer) {
        let op = match op {
            SetOp::Add(element) => self.add(
                *element,
                self.read_ctx().derive_add_ctx(writer.actor.clone()),
            ),
            SetOp::Remove(element) => self.rm(*element, self.contains(element).derive_rm_ctx()),
        };
        CmRDT::apply(self, op);
    }

    fn merge_from(&mut self, other: &Self) {
        CvRDT::merge(self, other.clone());
    }

    fn read(&self) -> BTreeSet<u8> {
        self.read().val.into_iter().collect()
    }
}

impl Subject for weft_crdt::LWWRegister<u8> {
    type Op = u8;
    type Value = Option<u8>;

    fn apply(&mut self, value: &u8, writer: &Writer) {
        self.set(*value, writer.timestamp, &writer.replica);
    }

    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }

    fn read(&self) -> Option<u8> {
        self.value()
    }
}

/// The marker is the write's identity in weft: (HLC timestamp, replica).
impl Subject for crdts::LWWReg<u8, (u64, String)> {
    type Op = u8;
    type Value = Option<u8>;

    fn apply(&mut self, value: &u8, writer: &Writer) {
        self.update(*value, (writer.timestamp.as_u64(), writer.actor.clone()));
    }

    fn merge_from(&mut self, other: &Self) {
        CvRDT::merge(self, other.clone());
    }

    /// `crdts` starts from a default value rather than an empty register: the default marker
    /// means nothing was written.
    fn read(&self) -> Option<u8> {
        (self.marker != Default::default()).then_some(self.val)
    }
}

impl Subject for weft_crdt::MVRegister<u8> {
    type Op = u8;
    type Value = BTreeSet<u8>;

    fn apply(&mut self, value: &u8, writer: &Writer) {
        self.set(*value, &writer.replica);
    }

    fn merge_from(&mut self, other: &Self) {
        self.merge(other);
    }

    fn read(&self) -> BTreeSet<u8> {
        self.value()
    }
}

impl Subject for crdts::MVReg<u8, String> {
    type Op = u8;
    type Value = BTreeSet<u8>;

    fn apply(&mut self, value: &u8, writer: &Writer) {
        let op = self.write(*value, self.read_ctx().derive_add_ctx(writer.actor.clone()));
        CmRDT::apply(self, op);
    }

    fn merge_from(&mut self, other: &Self) {
        CvRDT::merge(self, other.clone());
    }

    fn read(&self) -> BTreeSet<u8> {
        self.read().val.into_iter().collect()
    }
}

fn set_op() -> impl Strategy<Value = SetOp> {
    prop_oneof![
        (0..8u8).prop_map(SetOp::Add),
        (0..8u8).prop_map(SetOp::Remove)
    ]
}

proptest! {
    #[test]
    fn g_counter_matches_crdts(steps in steps(any::<u8>())) {
        check_same::<weft_crdt::GCounter, crdts::GCounter<String>>(&steps)?;
    }

    #[test]
    fn pn_counter_matches_crdts(steps in steps(any::<i8>())) {
        check_same::<weft_crdt::PNCounter, crdts::PNCounter<String>>(&steps)?;
    }

    #[test]
    fn or_set_matches_crdts_orswot(steps in steps(set_op())) {
        check_same::<weft_crdt::ORSet<u8>, crdts::Orswot<u8, String>>(&steps)?;
    }

    #[test]
    fn lww_register_matches_crdts(steps in steps(0..8u8)) {
        check_same::<weft_crdt::LWWRegister<u8>, crdts::LWWReg<u8, (u64, String)>>(&steps)?;
    }

    #[test]
    fn mv_register_matches_crdts(steps in steps(0..8u8)) {
        check_same::<weft_crdt::MVRegister<u8>, crdts::MVReg<u8, String>>(&steps)?;
    }
}
