//! Notifications: what the host tells subscribers about its entities as it happens — today, the
//! write lease of single-writer entities changing hands on this host. `GET /notifications` serves
//! them as server-sent events.
//!
//! Delivery is best effort and live only: a subscriber sees what happens after it subscribed, and
//! one that falls more than [`NOTIFICATIONS_BUFFERED_MAX`] behind is told how many it missed. The
//! journal, not this stream, is the record of what happened.

use serde::Serialize;
use tokio::sync::broadcast;

/// Notifications kept for slow subscribers before the oldest are dropped for them: enough for a
/// burst of lease changes across many entities, small enough to bound memory per subscriber.
pub const NOTIFICATIONS_BUFFERED_MAX: usize = 1024;

/// One thing that happened on this host.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Notification {
    /// This host became the writer of a single-writer entity: the token is recorded in the
    /// journal and the entity has caught up with its stream.
    LeaseAcquired {
        entity_type: String,
        entity_id: String,
        fencing_token: u64,
        /// This host's owner name on the lease (its writer id).
        writer: String,
    },
    /// This host stopped being the writer of a single-writer entity; it observes it now.
    /// Published once per loss, after the plugin's `on-lease-lost` hook ran.
    LeaseLost {
        entity_type: String,
        entity_id: String,
        fencing_token: u64,
        /// `expired`, `taken-over` or `fenced`.
        reason: &'static str,
        /// The owner holding the lease now, when the backend said.
        new_writer: Option<String>,
        /// What the plugin's hook returned (MessagePack), if anything.
        #[serde(skip)]
        notice: Option<Vec<u8>>,
    },
}

/// The host's notification stream. Cheap to clone.
#[derive(Clone)]
pub struct Notifications {
    sender: broadcast::Sender<Notification>,
}

impl Default for Notifications {
    fn default() -> Self {
        Notifications {
            sender: broadcast::channel(NOTIFICATIONS_BUFFERED_MAX).0,
        }
    }
}

impl Notifications {
    pub fn publish(&self, notification: Notification) {
        // No subscriber is no error: notifications are live only.
        let _ = self.sender.send(notification);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Notification> {
        self.sender.subscribe()
    }
}
