//! [`ClusterPeers`]: the replication messages of replicated entities, sent to the nodes hosting
//! the other replicas over the transport — a replica is named after its node.
//!
//! One queue and one sending task per peer keep each peer's messages in the order they were
//! sent (fewer events wait for their causal past) without a slow peer holding up the others; the
//! tasks are the node's ([`Cluster::spawn`]) and end when the cluster's tasks stop. A
//! full queue, a peer that is not a live member, or a failed send drops the message: the next
//! pull round repairs it.

use std::collections::HashMap;
use std::sync::Mutex;

use tokio::sync::mpsc;

use super::service::Cluster;
use super::transport::Topic;
use crate::replication::{Peers, ReplicationMessage};

/// Messages queued per peer before new ones are dropped.
const QUEUED_PER_PEER_MAX: usize = 4_096;

pub struct ClusterPeers {
    cluster: Cluster,
    queues: Mutex<HashMap<String, mpsc::Sender<Vec<u8>>>>,
}

impl ClusterPeers {
    pub fn new(cluster: Cluster) -> Self {
        ClusterPeers {
            cluster,
            queues: Mutex::new(HashMap::new()),
        }
    }

    /// The queue to `replica`, starting its sending task on first use.
    fn queue(&self, replica: &str) -> mpsc::Sender<Vec<u8>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(replica)
            && !queue.is_closed()
        {
            return queue.clone();
        }
        let (queue, mut queued) = mpsc::channel::<Vec<u8>>(QUEUED_PER_PEER_MAX);
        let cluster = self.cluster.clone();
        let name = replica.to_owned();
        self.cluster.spawn(async move {
            while let Some(payload) = queued.recv().await {
                let view = cluster.view();
                let Some(member) = view.members.iter().find(|m| m.name().as_str() == name) else {
                    tracing::trace!(replica = %name, "replication message dropped: not a live member");
                    continue;
                };
                let sent = cluster
                    .transport()
                    .send(&name, member.addr, Topic::Replication, payload)
                    .await;
                if let Err(error) = sent {
                    tracing::debug!(replica = %name, "replication message dropped: {error}");
                }
            }
        });
        queues.insert(replica.to_owned(), queue.clone());
        queue
    }
}

impl Peers for ClusterPeers {
    fn send(&self, replica: &str, message: ReplicationMessage) {
        let payload = match rmp_serde::to_vec_named(&message) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::error!("a replication message does not encode: {error}");
                return;
            }
        };
        if self.queue(replica).try_send(payload).is_err() {
            tracing::debug!(
                replica,
                "replication message dropped: the queue to it is full"
            );
        }
    }
}
