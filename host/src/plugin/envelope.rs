//! The WIT view of a journal event: what `apply-event` and `resolve` receive.

use super::bindings::types::{Envelope, EventMeta, VersionEntry};
use crate::journal::EventEnvelope;

impl From<&EventEnvelope> for Envelope {
    fn from(event: &EventEnvelope) -> Self {
        Envelope {
            meta: EventMeta {
                persistence_id: event.persistence_id.clone(),
                seq_nr: event.seq_nr,
                writer: event.writer.to_string(),
                fencing_token: event.fencing_token,
                timestamp: event.timestamp,
                origin_replica: event.origin_replica.clone(),
                origin_seq_nr: event.origin_seq_nr,
                version: event
                    .version
                    .iter()
                    .map(|(replica, counter)| VersionEntry {
                        replica: replica.clone(),
                        counter: *counter,
                    })
                    .collect(),
                concurrent: event.concurrent,
            },
            payload: event.payload.clone(),
        }
    }
}
