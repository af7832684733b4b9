//! `ReplicaId`: who made a change. One id per *incarnation* of a node, never reused.

use alloc::string::String;
use alloc::sync::Arc;
use core::cmp::Ordering;
use core::fmt;
use core::hash::{Hash, Hasher};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The identity of one incarnation of a replica, for example `"node-a#01J9ZK8Q7R6W5V4T3S2R1Q0P9N"`.
///
/// Counters and dots are numbered per replica id, starting at 1. A node that lost its state (a wiped
/// disk, a fresh container) no longer knows which numbers it already used, so it must come back with a
/// **new incarnation** (`ReplicaId::incarnation("node-a", fresh_ulid)`): reusing the old id would hand
/// out numbers the other replicas have already seen, and they would silently drop the new writes.
///
/// Cheap to clone (a shared, immutable string): every dot of every set element holds one.
#[derive(Clone)]
pub struct ReplicaId(Arc<str>);

impl ReplicaId {
    /// A replica id taken as is.
    pub fn new(id: impl AsRef<str>) -> Self {
        Self(Arc::from(id.as_ref()))
    }

    /// The id of one incarnation of a node: `"{node}#{incarnation}"`. weft uses the node's per-boot
    /// ULID as the incarnation.
    pub fn incarnation(node: &str, incarnation: &str) -> Self {
        let mut id = String::with_capacity(node.len() + 1 + incarnation.len());
        id.push_str(node);
        id.push('#');
        id.push_str(incarnation);
        Self(Arc::from(id))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl From<&str> for ReplicaId {
    fn from(id: &str) -> Self {
        Self::new(id)
    }
}

impl PartialEq for ReplicaId {
    fn eq(&self, other: &Self) -> bool {
        // Most comparisons are between clones of one id: skip the string compare then.
        Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
    }
}

impl Eq for ReplicaId {}

impl PartialOrd for ReplicaId {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for ReplicaId {
    fn cmp(&self, other: &Self) -> Ordering {
        if Arc::ptr_eq(&self.0, &other.0) {
            Ordering::Equal
        } else {
            self.0.cmp(&other.0)
        }
    }
}

impl Hash for ReplicaId {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.0.hash(state);
    }
}

impl fmt::Debug for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for ReplicaId {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ReplicaId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(|id| Self(Arc::from(id)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incarnation_ids_join_node_and_incarnation() {
        let id = ReplicaId::incarnation("node-a", "01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        assert_eq!(id.as_str(), "node-a#01J9ZK8Q7R6W5V4T3S2R1Q0P9N");
        assert_ne!(
            id,
            ReplicaId::incarnation("node-a", "01J9ZK8Q7R6W5V4T3S2R1Q0P9P")
        );
    }

    #[test]
    fn order_and_equality_follow_the_string() {
        let a = ReplicaId::new("a");
        assert_eq!(a, ReplicaId::new("a"));
        assert!(a < ReplicaId::new("b"));
        assert_eq!(a.cmp(&a.clone()), Ordering::Equal);
    }

    #[test]
    fn serializes_as_a_plain_string() {
        let id = ReplicaId::new("node-a#1");
        let bytes = rmp_serde::to_vec(&id).unwrap();
        assert_eq!(bytes, rmp_serde::to_vec("node-a#1").unwrap());
        assert_eq!(rmp_serde::from_slice::<ReplicaId>(&bytes).unwrap(), id);
    }
}
