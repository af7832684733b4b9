//! The serialized form of a `DotStore`: each replica id written once, dots as `[index, counter]`.
//!
//! Replica ids are long (`node-a#` + a 26-character ULID) and every live write carries a dot, so
//! writing the id into each dot would make it the bulk of a set's bytes. Instead a state starts with
//! its sorted table of replicas and dots refer to it by index. Every part is written in a canonical
//! order, so equal states give identical bytes.

use alloc::collections::BTreeMap;
use alloc::vec::Vec;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::DotStore;
use crate::causal::{CausalContext, Dot};
use crate::{ReplicaId, VersionVector};

/// The fields, in order. Generic so that one definition describes both the borrowed form that is
/// written and the owned form that is read: the two cannot drift apart.
#[derive(Serialize, Deserialize)]
struct Wire<Replicas, Seen, Cloud, Entries> {
    /// Every replica of the causal context, sorted: the table that dots index into.
    replicas: Replicas,
    /// Per replica of the table, the counter up to which all its dots were seen (0 if none).
    seen: Seen,
    /// Dots seen beyond a gap, as `[replica index, counter]`, sorted.
    cloud: Cloud,
    /// Keys in order, each with its live writes as `[replica index, counter, value]`, sorted.
    entries: Entries,
}

type OwnedWire<K, V> =
    Wire<Vec<ReplicaId>, Vec<u64>, Vec<(u32, u64)>, Vec<(K, Vec<(u32, u64, V)>)>>;

/// Serializes the sequence its closure yields, without collecting it first.
struct Seq<F>(F);

impl<F, I> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: IntoIterator,
    I::Item: Serialize,
{
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq((self.0)())
    }
}

impl<K: Serialize, V: Serialize> Serialize for DotStore<K, V> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut table: Vec<&ReplicaId> = self
            .context
            .contiguous()
            .iter()
            .map(|(replica, _)| replica)
            .collect();
        table.extend(self.context.cloud().map(|dot| &dot.replica));
        table.sort_unstable();
        table.dedup();
        let index = |replica: &ReplicaId| {
            let at = table
                .binary_search(&replica)
                .expect("every stored dot is in the causal context");
            u32::try_from(at).expect("fewer than 2^32 replicas")
        };
        Wire {
            replicas: Seq(|| table.iter()),
            seen: Seq(|| {
                table
                    .iter()
                    .map(|replica| self.context.contiguous().get(replica))
            }),
            cloud: Seq(|| {
                self.context
                    .cloud()
                    .map(|dot| (index(&dot.replica), dot.counter))
            }),
            entries: Seq(|| {
                self.entries.iter().map(|(key, writes)| {
                    let writes = Seq(move || {
                        writes
                            .iter()
                            .map(move |(dot, value)| (index(&dot.replica), dot.counter, value))
                    });
                    (key, writes)
                })
            }),
        }
        .serialize(serializer)
    }
}

impl<'de, K, V> Deserialize<'de> for DotStore<K, V>
where
    K: Deserialize<'de> + Ord,
    V: Deserialize<'de>,
{
    /// Reads a state from a peer, normalizing what is harmless (order of the cloud and of a key's
    /// writes, context not covering a stored dot) and rejecting what is ambiguous (a replica index
    /// out of range, a dot counter of 0, a duplicate key or a duplicate dot under a key).
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        from_wire(OwnedWire::deserialize(deserializer)?).map_err(D::Error::custom)
    }
}

fn from_wire<K: Ord, V>(wire: OwnedWire<K, V>) -> Result<DotStore<K, V>, &'static str> {
    let Wire {
        replicas,
        seen,
        cloud,
        entries: wire_entries,
    } = wire;
    if seen.len() != replicas.len() {
        return Err("`seen` must hold one counter per replica of the table");
    }
    let dot = |index: u32, counter: u64| {
        let replica = usize::try_from(index).ok().and_then(|at| replicas.get(at));
        match (replica, counter) {
            (None, _) => Err("a dot refers to a replica index beyond the table"),
            (Some(_), 0) => Err("dot counters start at 1"),
            (Some(replica), counter) => Ok(Dot {
                replica: replica.clone(),
                counter,
            }),
        }
    };
    let contiguous: VersionVector = replicas.iter().cloned().zip(seen).collect();
    let mut context = CausalContext::from_contiguous(contiguous);
    for (index, counter) in cloud {
        context.insert(&dot(index, counter)?);
    }
    let mut entries = BTreeMap::new();
    for (key, wire_writes) in wire_entries {
        let mut writes = wire_writes
            .into_iter()
            .map(|(index, counter, value)| Ok((dot(index, counter)?, value)))
            .collect::<Result<Vec<_>, &'static str>>()?;
        writes.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
        if writes.windows(2).any(|pair| pair[0].0 == pair[1].0) {
            return Err("a dot appears twice under one key");
        }
        for (dot, _) in &writes {
            context.insert(dot);
        }
        if !writes.is_empty() && entries.insert(key, writes).is_some() {
            return Err("a key appears twice");
        }
    }
    Ok(DotStore { entries, context })
}

#[cfg(test)]
mod tests {
    use alloc::vec;

    use super::*;

    type Store = DotStore<u8, u8>;
    type Entries = Vec<(u8, Vec<(u32, u64, u8)>)>;

    fn encode<T: Serialize>(value: &T) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    fn decode(bytes: &[u8]) -> Result<Store, rmp_serde::decode::Error> {
        rmp_serde::from_slice(bytes)
    }

    fn wire(
        replicas: &[&str],
        seen: Vec<u64>,
        cloud: Vec<(u32, u64)>,
        entries: Entries,
    ) -> Vec<u8> {
        let replicas: Vec<ReplicaId> = replicas.iter().map(ReplicaId::new).collect();
        encode(&Wire {
            replicas,
            seen,
            cloud,
            entries,
        })
    }

    #[test]
    fn replica_ids_are_written_once() {
        let long_id = ReplicaId::incarnation("node-a", "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        let mut store = Store::default();
        for key in 0..100 {
            store.write(key, &long_id, key);
        }
        let bytes = encode(&store);
        assert!(bytes.len() < 100 * 8, "{} bytes", bytes.len());
        assert_eq!(
            bytes
                .windows(6)
                .filter(|window| window == b"node-a")
                .count(),
            1
        );
        assert_eq!(decode(&bytes).unwrap(), store);
    }

    #[test]
    fn harmless_irregularities_are_normalized() {
        // Writes out of order, a context missing the stored dots, a cloud dot already covered.
        let bytes = wire(
            &["a"],
            vec![1],
            vec![(0, 1)],
            vec![(7, vec![(0, 3, 30), (0, 2, 20)])],
        );
        let dot = |counter| Dot {
            replica: ReplicaId::new("a"),
            counter,
        };
        let expected = Store {
            entries: BTreeMap::from([(7, vec![(dot(2), 20), (dot(3), 30)])]),
            context: CausalContext::of(&[dot(1), dot(2), dot(3)]),
        };
        let decoded = decode(&bytes).unwrap();
        assert_eq!(decoded, expected);
        assert_eq!(decode(&encode(&decoded)).unwrap(), expected);
    }

    #[test]
    fn ambiguous_input_is_rejected() {
        let cases = [
            (
                wire(&["a"], vec![], vec![], vec![]),
                "one counter per replica",
            ),
            (
                wire(&["a"], vec![1], vec![(1, 5)], vec![]),
                "beyond the table",
            ),
            (
                wire(&["a"], vec![1], vec![], vec![(1, vec![(0, 0, 0)])]),
                "start at 1",
            ),
            (
                wire(
                    &["a"],
                    vec![2],
                    vec![],
                    vec![(1, vec![(0, 1, 0), (0, 1, 9)])],
                ),
                "twice under one key",
            ),
            (
                wire(
                    &["a"],
                    vec![2],
                    vec![],
                    vec![(1, vec![(0, 1, 0)]), (1, vec![(0, 2, 0)])],
                ),
                "key appears twice",
            ),
        ];
        for (bytes, message) in cases {
            let error = decode(&bytes).unwrap_err().to_string();
            assert!(
                error.contains(message),
                "{error:?} should mention {message:?}"
            );
        }
    }
}
