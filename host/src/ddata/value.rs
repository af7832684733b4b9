//! What DistributedData stores: [`DataValue`] (one `weft-crdt` type per [`Kind`]), [`Entry`] (a
//! value or the tombstone of a deleted key), the [`Op`]s a client applies, and typed [`Key`]s for
//! the Rust API.
//!
//! Every value is a state-based CRDT, so an entry merges with any other entry for the same key. Two
//! rules extend the CRDT merge to whole entries and keep it a join (idempotent, commutative,
//! associative), so replicas converge whatever they receive:
//!
//! - a **tombstone wins** over any value: a deleted key stays deleted on every node that hears of the
//!   delete, whatever it held;
//! - values of **different kinds** (two nodes wrote a new key first, concurrently, with different
//!   kinds) resolve to the greater [`Kind`]; the other kind's writes are dropped. A write of another
//!   kind to a key already known is refused locally ([`super::DdataError::WrongKind`]), so this only
//!   happens for concurrent first writes.

use std::fmt;
use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use weft_crdt::{
    Crdt, Flag, GCounter, GSet, HlcTimestamp, LWWRegister, ORSet, PNCounter, ReplicaId,
};

use super::DdataError;

/// The CRDT type of a key, fixed by its first write. The order (declaration order) decides which
/// kind survives concurrent first writes of different kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    GCounter,
    PNCounter,
    GSet,
    ORSet,
    LWWRegister,
    Flag,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Kind::GCounter => "gcounter",
            Kind::PNCounter => "pncounter",
            Kind::GSet => "gset",
            Kind::ORSet => "orset",
            Kind::LWWRegister => "lwwregister",
            Kind::Flag => "flag",
        };
        f.write_str(name)
    }
}

/// A replicated value: one CRDT, tagged by its kind. Sets and registers hold strings (a JSON
/// document can be stored as its text in a register).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DataValue {
    GCounter(GCounter),
    PNCounter(PNCounter),
    GSet(GSet<String>),
    ORSet(ORSet<String>),
    LWWRegister(LWWRegister<String>),
    Flag(Flag),
}

impl DataValue {
    /// The bottom (empty) value of `kind`: what a key holds before its first write.
    pub fn empty(kind: Kind) -> Self {
        match kind {
            Kind::GCounter => DataValue::GCounter(GCounter::new()),
            Kind::PNCounter => DataValue::PNCounter(PNCounter::new()),
            Kind::GSet => DataValue::GSet(GSet::new()),
            Kind::ORSet => DataValue::ORSet(ORSet::new()),
            Kind::LWWRegister => DataValue::LWWRegister(LWWRegister::new()),
            Kind::Flag => DataValue::Flag(Flag::new()),
        }
    }

    pub fn kind(&self) -> Kind {
        match self {
            DataValue::GCounter(_) => Kind::GCounter,
            DataValue::PNCounter(_) => Kind::PNCounter,
            DataValue::GSet(_) => Kind::GSet,
            DataValue::ORSet(_) => Kind::ORSet,
            DataValue::LWWRegister(_) => Kind::LWWRegister,
            DataValue::Flag(_) => Kind::Flag,
        }
    }

    /// Joins `other` into `self`. Of two different kinds the greater one is kept (see the module doc).
    /// Returns whether `self` changed.
    pub fn merge(&mut self, other: &DataValue) -> bool {
        fn join<T: Crdt>(ours: &mut T, theirs: &T) -> bool {
            if theirs.leq(ours) {
                return false;
            }
            ours.merge(theirs);
            true
        }
        match (self, other) {
            (DataValue::GCounter(a), DataValue::GCounter(b)) => join(a, b),
            (DataValue::PNCounter(a), DataValue::PNCounter(b)) => join(a, b),
            (DataValue::GSet(a), DataValue::GSet(b)) => join(a, b),
            (DataValue::ORSet(a), DataValue::ORSet(b)) => join(a, b),
            (DataValue::LWWRegister(a), DataValue::LWWRegister(b)) => join(a, b),
            (DataValue::Flag(a), DataValue::Flag(b)) => join(a, b),
            (ours, theirs) => {
                if theirs.kind() > ours.kind() {
                    *ours = theirs.clone();
                    true
                } else {
                    false
                }
            }
        }
    }

    /// Applies `op` as `writer` and returns the delta (a value of the same kind holding just that
    /// change). Refuses an op the kind does not have, changing nothing.
    pub fn apply(&mut self, op: &Op, writer: &Writer<'_>) -> Result<DataValue, DdataError> {
        let delta = match (&mut *self, op) {
            (DataValue::GCounter(c), Op::Increment { by }) => {
                DataValue::GCounter(c.increment(writer.replica, *by))
            }
            (DataValue::PNCounter(c), Op::Increment { by }) => {
                DataValue::PNCounter(c.increment(writer.replica, *by))
            }
            (DataValue::PNCounter(c), Op::Decrement { by }) => {
                DataValue::PNCounter(c.decrement(writer.replica, *by))
            }
            (DataValue::GSet(s), Op::Add { element }) => DataValue::GSet(s.insert(element.clone())),
            (DataValue::ORSet(s), Op::Add { element }) => {
                DataValue::ORSet(s.add(element.clone(), writer.replica))
            }
            (DataValue::ORSet(s), Op::Remove { element }) => DataValue::ORSet(s.remove(element)),
            (DataValue::LWWRegister(r), Op::Set { value }) => {
                DataValue::LWWRegister(r.set(value.clone(), writer.timestamp, writer.replica))
            }
            (DataValue::Flag(f), Op::Enable) => DataValue::Flag(f.enable(writer.replica)),
            (DataValue::Flag(f), Op::Disable) => DataValue::Flag(f.disable()),
            (value, op) => {
                return Err(DdataError::UnsupportedOp {
                    kind: value.kind(),
                    op: op.name(),
                });
            }
        };
        Ok(delta)
    }
}

/// What a key holds on a replica: a value, or the tombstone of a delete.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Entry {
    Value(DataValue),
    /// The key was deleted. Wins over any value in a merge, and is kept for as long as the
    /// replicator runs (see `docs/ddata.md`, *Tombstones*).
    Deleted,
}

impl Entry {
    /// Joins `other` into `self`; returns whether `self` changed.
    pub fn merge(&mut self, other: &Entry) -> bool {
        match (&mut *self, other) {
            (Entry::Deleted, _) => false,
            (Entry::Value(_), Entry::Deleted) => {
                *self = Entry::Deleted;
                true
            }
            (Entry::Value(ours), Entry::Value(theirs)) => ours.merge(theirs),
        }
    }

    pub fn value(&self) -> Option<&DataValue> {
        match self {
            Entry::Value(value) => Some(value),
            Entry::Deleted => None,
        }
    }

    pub fn is_deleted(&self) -> bool {
        matches!(self, Entry::Deleted)
    }
}

/// Who writes, and when: the node's replica id (its incarnation) and a timestamp from its HLC, for
/// last-writer-wins registers.
#[derive(Clone, Copy, Debug)]
pub struct Writer<'a> {
    pub replica: &'a ReplicaId,
    pub timestamp: HlcTimestamp,
}

/// A change a client asks for, as it comes over the API: `{"op":"increment","by":3}`,
/// `{"op":"add","element":"x"}`, `{"op":"remove","element":"x"}`, `{"op":"set","value":"v"}`,
/// `{"op":"enable"}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Counters.
    Increment {
        by: u64,
    },
    /// `PNCounter` only.
    Decrement {
        by: u64,
    },
    /// Sets.
    Add {
        element: String,
    },
    /// `ORSet` only.
    Remove {
        element: String,
    },
    /// `LWWRegister`.
    Set {
        value: String,
    },
    /// `Flag`.
    Enable,
    Disable,
}

impl Op {
    /// The op's name as it appears on the wire (`"increment"`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Op::Increment { .. } => "increment",
            Op::Decrement { .. } => "decrement",
            Op::Add { .. } => "add",
            Op::Remove { .. } => "remove",
            Op::Set { .. } => "set",
            Op::Enable => "enable",
            Op::Disable => "disable",
        }
    }
}

/// A CRDT type a [`Key`] can name: the bridge between the Rust type and its [`DataValue`] variant.
pub trait DataType: Crdt {
    const KIND: Kind;

    fn into_value(self) -> DataValue;

    /// The CRDT inside `value`, if `value` is of this kind.
    fn from_value(value: &DataValue) -> Option<&Self>;

    /// The CRDT inside `value`, mutably, if `value` is of this kind.
    fn from_value_mut(value: &mut DataValue) -> Option<&mut Self>;
}

macro_rules! data_type {
    ($($ty:ty => $variant:ident),* $(,)?) => {$(
        impl DataType for $ty {
            const KIND: Kind = Kind::$variant;

            fn into_value(self) -> DataValue {
                DataValue::$variant(self)
            }

            fn from_value(value: &DataValue) -> Option<&Self> {
                match value {
                    DataValue::$variant(inner) => Some(inner),
                    _ => None,
                }
            }

            fn from_value_mut(value: &mut DataValue) -> Option<&mut Self> {
                match value {
                    DataValue::$variant(inner) => Some(inner),
                    _ => None,
                }
            }
        }
    )*};
}

data_type!(
    GCounter => GCounter,
    PNCounter => PNCounter,
    GSet<String> => GSet,
    ORSet<String> => ORSet,
    LWWRegister<String> => LWWRegister,
    Flag => Flag,
);

/// A key of a known CRDT type, for the typed Rust API: `Key::<ORSet<String>>::new("cart")`.
pub struct Key<T> {
    name: String,
    _type: PhantomData<fn() -> T>,
}

impl<T: DataType> Key<T> {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            _type: PhantomData,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn kind(&self) -> Kind {
        T::KIND
    }
}

impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        Self {
            name: self.name.clone(),
            _type: PhantomData,
        }
    }
}

impl<T> fmt::Debug for Key<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Key").field(&self.name).finish()
    }
}

/// A 64-bit digest of bytes, stable across processes, platforms and Rust versions (unlike std's
/// `DefaultHasher`): FNV-1a. Anti-entropy compares digests of encoded entries, and encoding is
/// canonical (equal CRDT states encode to identical bytes), so equal entries have equal digests.
pub fn digest(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(replica: &ReplicaId) -> Writer<'_> {
        Writer {
            replica,
            timestamp: HlcTimestamp::new(1, 0),
        }
    }

    #[test]
    fn ops_parse_from_the_documented_json() {
        let parse = |text: &str| serde_json::from_str::<Op>(text).expect(text);
        assert_eq!(
            parse(r#"{"op":"increment","by":3}"#),
            Op::Increment { by: 3 }
        );
        assert_eq!(
            parse(r#"{"op":"add","element":"x"}"#),
            Op::Add {
                element: "x".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":"remove","element":"x"}"#),
            Op::Remove {
                element: "x".into()
            }
        );
        assert_eq!(
            parse(r#"{"op":"set","value":"v"}"#),
            Op::Set { value: "v".into() }
        );
        assert_eq!(parse(r#"{"op":"enable"}"#), Op::Enable);
        assert!(serde_json::from_str::<Op>(r#"{"op":"increment","by":-1}"#).is_err());
        assert!(serde_json::from_str::<Op>(r#"{"op":"explode"}"#).is_err());
    }

    #[test]
    fn an_op_the_kind_lacks_is_refused_and_changes_nothing() {
        let a = ReplicaId::new("a");
        let mut value = DataValue::empty(Kind::GCounter);
        let error = value
            .apply(&Op::Decrement { by: 1 }, &writer(&a))
            .expect_err("a grow-only counter cannot decrement");
        assert!(matches!(
            error,
            DdataError::UnsupportedOp {
                kind: Kind::GCounter,
                op: "decrement"
            }
        ));
        assert_eq!(value, DataValue::empty(Kind::GCounter));
    }

    #[test]
    fn a_tombstone_wins_and_the_greater_kind_wins_a_kind_conflict() {
        let a = ReplicaId::new("a");
        let mut counter = DataValue::empty(Kind::GCounter);
        counter
            .apply(&Op::Increment { by: 2 }, &writer(&a))
            .unwrap();
        let mut flag = DataValue::empty(Kind::Flag);
        flag.apply(&Op::Enable, &writer(&a)).unwrap();

        let mut left = Entry::Value(counter.clone());
        assert!(left.merge(&Entry::Value(flag.clone())));
        let mut right = Entry::Value(flag.clone());
        assert!(!right.merge(&Entry::Value(counter)));
        assert_eq!(left, right);

        assert!(left.merge(&Entry::Deleted));
        assert!(left.is_deleted());
        assert!(!left.merge(&Entry::Value(flag)));
        assert!(left.is_deleted());
    }

    #[test]
    fn the_digest_is_fnv_1a() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(digest(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(digest(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
