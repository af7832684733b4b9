//! [`CausalBuffer`]: drops events already delivered and holds events back until their causal
//! past is delivered.
//!
//! An event from origin `o` with version vector `v` is deliverable when `v[o]` is exactly one
//! more than what was delivered from `o`, and for every other replica `r`, `v[r]` is at most
//! what was delivered from `r`. The buffer is bounded: a replica that falls that far behind must
//! catch up from the journal instead (pull), which the caller learns from [`Offer::Overflow`].

use std::collections::BTreeMap;

use crate::journal::EventEnvelope;

/// What became of an offered event.
#[derive(Debug, PartialEq)]
pub enum Offer {
    /// Already delivered (or already waiting): ignored.
    Duplicate,
    /// Its causal past is missing; it waits.
    Buffered,
    /// These events are now deliverable, in causal order: the offered one and any it unblocked.
    Delivered(Vec<EventEnvelope>),
    /// The buffer is full; the event was not kept. Catch up from the journal.
    Overflow,
}

#[derive(Debug, Clone)]
pub struct CausalBuffer {
    /// Highest origin sequence number delivered, per origin replica.
    delivered: BTreeMap<String, u64>,
    /// Events waiting for their causal past, by (origin, origin seq nr).
    waiting: BTreeMap<(String, u64), EventEnvelope>,
    waiting_max: usize,
}

impl CausalBuffer {
    /// `delivered` is what the replica has already folded (from a snapshot's seen-per-replica).
    pub fn new(delivered: BTreeMap<String, u64>, waiting_max: usize) -> Self {
        CausalBuffer {
            delivered,
            waiting: BTreeMap::new(),
            waiting_max,
        }
    }

    /// Highest origin sequence number delivered, per origin replica.
    pub fn delivered(&self) -> &BTreeMap<String, u64> {
        &self.delivered
    }

    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    pub fn offer(&mut self, event: EventEnvelope) -> Offer {
        let key = (event.origin_replica.clone(), event.origin_seq_nr);
        if event.origin_seq_nr <= self.delivered_from(&event.origin_replica)
            || self.waiting.contains_key(&key)
        {
            return Offer::Duplicate;
        }
        if !self.deliverable(&event) {
            if self.waiting.len() >= self.waiting_max {
                return Offer::Overflow;
            }
            self.waiting.insert(key, event);
            return Offer::Buffered;
        }
        let mut delivered = vec![event];
        self.mark_delivered(&delivered[0]);
        // Each delivery may unblock waiting events; repeat until none is deliverable.
        while let Some(key) = self
            .waiting
            .iter()
            .find(|(_, e)| self.deliverable(e))
            .map(|(k, _)| k.clone())
        {
            if let Some(next) = self.waiting.remove(&key) {
                self.mark_delivered(&next);
                delivered.push(next);
            }
        }
        Offer::Delivered(delivered)
    }

    fn delivered_from(&self, replica: &str) -> u64 {
        self.delivered.get(replica).copied().unwrap_or(0)
    }

    fn deliverable(&self, event: &EventEnvelope) -> bool {
        event.origin_seq_nr == self.delivered_from(&event.origin_replica) + 1
            && event.version.iter().all(|(replica, counter)| {
                replica == &event.origin_replica || *counter <= self.delivered_from(replica)
            })
    }

    fn mark_delivered(&mut self, event: &EventEnvelope) {
        self.delivered
            .insert(event.origin_replica.clone(), event.origin_seq_nr);
    }
}
