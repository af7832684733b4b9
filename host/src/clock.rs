//! The node's hybrid logical clock: the `now` every plugin call sees and every event records.
//!
//! A thin, shareable wrapper around `weft_crdt::Hlc` over the system clock: timestamps are
//! strictly increasing on this node, even if the wall clock steps back.

use std::sync::{Arc, Mutex};
use weft_crdt::{Hlc, SystemClock};

/// Remote timestamps further than this ahead of our wall clock are refused.
const MAX_DRIFT_MS: u64 = 60_000;

#[derive(Clone)]
pub struct NodeClock {
    hlc: Arc<Mutex<Hlc<SystemClock>>>,
}

impl Default for NodeClock {
    fn default() -> Self {
        NodeClock {
            hlc: Arc::new(Mutex::new(Hlc::new(SystemClock, MAX_DRIFT_MS))),
        }
    }
}

impl NodeClock {
    /// A new timestamp, greater than every one this clock returned before.
    pub fn now(&self) -> u64 {
        self.hlc
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .now()
            .as_u64()
    }
}
