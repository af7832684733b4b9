//! Who a node is: its configured [`NodeName`], the [`NodeId`] of one run of it (name plus a per-boot
//! ULID incarnation), its [`NodeRole`], and the [`Member`] record the cluster gossips about it.
//!
//! Names are checked once, when they are parsed ([`NodeName::new`], `FromStr`, or deserialised from a
//! peer's packet); everything downstream holds a `NodeName` and never checks again.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// Why a node name was refused. Nothing was created.
#[derive(thiserror::Error, Clone, Debug, PartialEq, Eq)]
pub enum IdentityError {
    #[error("a node name must not be empty")]
    EmptyName,
    #[error("a node name has at most {max} characters, this one has {actual}")]
    NameTooLong { actual: usize, max: usize },
    #[error("a node name may not contain whitespace or control characters: {0:?}")]
    NameNotPrintable(String),
    #[error("unknown node role {0:?} (expected `actor` or `gateway`)")]
    UnknownRole(String),
}

/// The configured, stable name of a node: 1 to [`NodeName::CHARS_MAX`] printable characters, no
/// whitespace. It survives restarts (unlike the incarnation), so it is what placement hashes and
/// what the membership protocol treats as "the same node".
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NodeName(String);

impl NodeName {
    /// Longest name accepted, in characters. A name travels in every membership packet (several
    /// times in a packet listing members), and packets are kept under one UDP datagram: 64
    /// characters is plenty for a host name or a pod name and keeps a member record small.
    pub const CHARS_MAX: usize = 64;

    pub fn new(name: impl Into<String>) -> Result<Self, IdentityError> {
        let name = name.into();
        if name.is_empty() {
            return Err(IdentityError::EmptyName);
        }
        let chars = name.chars().count();
        if chars > Self::CHARS_MAX {
            return Err(IdentityError::NameTooLong {
                actual: chars,
                max: Self::CHARS_MAX,
            });
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(IdentityError::NameNotPrintable(name));
        }
        Ok(Self(name))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for NodeName {
    type Error = IdentityError;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> Self {
        name.0
    }
}

impl FromStr for NodeName {
    type Err = IdentityError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One run of a node: its stable name and the ULID it drew when it booted.
///
/// A restarted node has a new incarnation, and a later one: ULIDs order by their millisecond
/// timestamp first, so the cluster can tell the newer run from the older and let it supersede it.
/// The incarnation also changes, without a restart, when the cluster declared the node down while it
/// was alive (a partition, a long pause): the node then takes the next ULID ([`NodeId::renewed`])
/// and rejoins as a new member.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId {
    pub name: NodeName,
    pub incarnation: Ulid,
}

impl NodeId {
    pub fn new(name: NodeName, incarnation: Ulid) -> Self {
        Self { name, incarnation }
    }

    /// The same name with the next incarnation: higher than this one, so it wins against it.
    /// `None` only if the ULID's random part is at its maximum (1 chance in 2^80 per boot).
    pub fn renewed(&self) -> Option<Self> {
        Some(Self {
            name: self.name.clone(),
            incarnation: self.incarnation.increment()?,
        })
    }

    /// Whether this run supersedes `other`, a run of the node with the same name.
    pub fn supersedes(&self, other: &NodeId) -> bool {
        self.incarnation > other.incarnation
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.name, self.incarnation)
    }
}

/// What a node does in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeRole {
    /// Hosts entities: placement assigns entities to actor nodes only.
    Actor,
    /// Takes requests and forwards them to the owners; owns no entities.
    Gateway,
}

impl NodeRole {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeRole::Actor => "actor",
            NodeRole::Gateway => "gateway",
        }
    }
}

impl FromStr for NodeRole {
    type Err = IdentityError;

    fn from_str(role: &str) -> Result<Self, Self::Err> {
        match role {
            "actor" => Ok(NodeRole::Actor),
            "gateway" => Ok(NodeRole::Gateway),
            other => Err(IdentityError::UnknownRole(other.to_owned())),
        }
    }
}

impl fmt::Display for NodeRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A member of the cluster as every node sees it: which run of which node, its role, and where its
/// internal transport listens. This is the record the membership protocol gossips.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    pub id: NodeId,
    pub role: NodeRole,
    pub addr: SocketAddr,
}

impl Member {
    pub fn new(id: NodeId, role: NodeRole, addr: SocketAddr) -> Self {
        Self { id, role, addr }
    }

    pub fn name(&self) -> &NodeName {
        &self.id.name
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({}, {})", self.id, self.role, self.addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_to_64_printable_characters() {
        assert_eq!(NodeName::new(""), Err(IdentityError::EmptyName));
        assert!(NodeName::new("a").is_ok());
        assert!(NodeName::new("node-1.eu-west_2:a").is_ok());
        assert!(
            NodeName::new("ß".repeat(64)).is_ok(),
            "counted in characters"
        );
        assert_eq!(
            NodeName::new("x".repeat(65)),
            Err(IdentityError::NameTooLong {
                actual: 65,
                max: 64
            })
        );
        for bad in ["node 1", "node\t1", "node\n", "\u{7f}x", "a\u{a0}b"] {
            assert!(
                matches!(NodeName::new(bad), Err(IdentityError::NameNotPrintable(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_name_from_a_peer_is_checked_when_decoded() {
        let bytes = rmp_serde::to_vec(&"has space").expect("encode");
        assert!(rmp_serde::from_slice::<NodeName>(&bytes).is_err());
        let bytes = rmp_serde::to_vec(&"node-a").expect("encode");
        assert_eq!(
            rmp_serde::from_slice::<NodeName>(&bytes).expect("decode"),
            NodeName::new("node-a").expect("valid")
        );
    }

    #[test]
    fn roles_are_kebab_case_on_the_wire() {
        assert_eq!(
            serde_json::to_string(&NodeRole::Gateway).expect("encode"),
            "\"gateway\""
        );
        assert_eq!(
            serde_json::from_str::<NodeRole>("\"actor\"").expect("decode"),
            NodeRole::Actor
        );
        assert_eq!("gateway".parse::<NodeRole>(), Ok(NodeRole::Gateway));
        assert!("Actor".parse::<NodeRole>().is_err());
    }

    #[test]
    fn a_later_boot_and_a_renewal_both_supersede() {
        let name = NodeName::new("n").expect("valid");
        let first = NodeId::new(name.clone(), Ulid::from_parts(1_000, 7));
        let restarted = NodeId::new(name, Ulid::from_parts(2_000, 1));
        assert!(restarted.supersedes(&first));
        assert!(!first.supersedes(&restarted));
        let renewed = first.renewed().expect("not at the maximum");
        assert_eq!(renewed.name, first.name);
        assert!(renewed.supersedes(&first));
        assert!(!first.supersedes(&first));
        let last = NodeId::new(first.name.clone(), Ulid::from_parts(1_000, u128::MAX));
        assert_eq!(last.renewed(), None);
    }
}
