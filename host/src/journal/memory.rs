//! The in-memory journal backend: everything in one map behind a mutex, gone when the process ends.
//! For tests and single-process experiments; it follows the same [`rules`](super::rules) and passes
//! the same [`conformance`](super::conformance) suite as the durable backends.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::rules::{
    check_append_against_stream, check_fence_advance, next_fence, validate_append,
    validate_fencing_token, validate_snapshot,
};
use super::{EventEnvelope, Journal, JournalError, SnapshotEnvelope, StreamHead};

/// A journal held in memory. Cheap to create: make one per test.
#[derive(Debug, Default)]
pub struct InMemoryJournal {
    /// A std mutex, not tokio's: it is never held across an `.await`, and every critical section is a
    /// few map operations.
    contents: Mutex<Contents>,
}

#[derive(Debug, Default)]
struct Contents {
    /// Per persistence id, its events in order: the event with seq nr `n` is at index `n - 1`.
    /// A `BTreeMap` so that [`Journal::persistence_ids`] comes out sorted.
    streams: BTreeMap<String, Vec<EventEnvelope>>,
    fences: HashMap<String, u64>,
    snapshots: HashMap<String, SnapshotEnvelope>,
}

impl Contents {
    fn highest_seq_nr(&self, persistence_id: &str) -> u64 {
        self.streams
            .get(persistence_id)
            .map_or(0, |events| events.len() as u64)
    }

    fn fence(&self, persistence_id: &str) -> u64 {
        self.fences.get(persistence_id).copied().unwrap_or(0)
    }
}

impl InMemoryJournal {
    pub fn new() -> Self {
        Self::default()
    }

    fn contents(&self) -> MutexGuard<'_, Contents> {
        // No critical section can panic half-way through a change, so the contents behind a poisoned
        // lock are still consistent.
        self.contents.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Journal for InMemoryJournal {
    async fn append(
        &self,
        persistence_id: &str,
        expected_seq_nr: u64,
        fencing_token: u64,
        events: Vec<EventEnvelope>,
    ) -> Result<(), JournalError> {
        validate_append(persistence_id, expected_seq_nr, fencing_token, &events)?;
        let mut contents = self.contents();
        check_append_against_stream(
            persistence_id,
            expected_seq_nr,
            fencing_token,
            contents.highest_seq_nr(persistence_id),
            contents.fence(persistence_id),
        )?;
        contents
            .streams
            .entry(persistence_id.to_owned())
            .or_default()
            .extend(events);
        Ok(())
    }

    async fn read(
        &self,
        persistence_id: &str,
        from_seq_nr: u64,
        max: usize,
    ) -> Result<Vec<EventEnvelope>, JournalError> {
        let contents = self.contents();
        let Some(events) = contents.streams.get(persistence_id) else {
            return Ok(Vec::new());
        };
        let skip = usize::try_from(from_seq_nr.saturating_sub(1)).unwrap_or(usize::MAX);
        Ok(events.iter().skip(skip).take(max).cloned().collect())
    }

    async fn highest_seq_nr(&self, persistence_id: &str) -> Result<u64, JournalError> {
        Ok(self.contents().highest_seq_nr(persistence_id))
    }

    async fn save_snapshot(&self, snapshot: SnapshotEnvelope) -> Result<(), JournalError> {
        validate_snapshot(&snapshot)?;
        let mut contents = self.contents();
        let stored_is_newer = contents
            .snapshots
            .get(&snapshot.persistence_id)
            .is_some_and(|stored| stored.seq_nr > snapshot.seq_nr);
        if !stored_is_newer {
            contents
                .snapshots
                .insert(snapshot.persistence_id.clone(), snapshot);
        }
        Ok(())
    }

    async fn latest_snapshot(
        &self,
        persistence_id: &str,
    ) -> Result<Option<SnapshotEnvelope>, JournalError> {
        Ok(self.contents().snapshots.get(persistence_id).cloned())
    }

    async fn record_fence(
        &self,
        persistence_id: &str,
        fencing_token: u64,
    ) -> Result<(), JournalError> {
        validate_fencing_token(fencing_token)?;
        let mut contents = self.contents();
        if check_fence_advance(
            persistence_id,
            fencing_token,
            contents.fence(persistence_id),
        )? {
            contents
                .fences
                .insert(persistence_id.to_owned(), fencing_token);
        }
        Ok(())
    }

    async fn advance_fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        let mut contents = self.contents();
        let advanced = next_fence(contents.fence(persistence_id))?;
        contents.fences.insert(persistence_id.to_owned(), advanced);
        Ok(advanced)
    }

    async fn fence(&self, persistence_id: &str) -> Result<u64, JournalError> {
        Ok(self.contents().fence(persistence_id))
    }

    async fn persistence_ids(&self) -> Result<Vec<String>, JournalError> {
        Ok(self.contents().streams.keys().cloned().collect())
    }

    async fn stream_heads(
        &self,
        from: &str,
        until: &str,
        max: usize,
    ) -> Result<Vec<StreamHead>, JournalError> {
        if from >= until {
            return Ok(Vec::new());
        }
        let contents = self.contents();
        let mut heads: BTreeMap<&str, u64> = contents
            .streams
            .range::<str, _>((Bound::Included(from), Bound::Excluded(until)))
            .map(|(id, events)| (id.as_str(), events.len() as u64))
            .collect();
        for (id, snapshot) in &contents.snapshots {
            if (from..until).contains(&id.as_str()) {
                let head = heads.entry(id.as_str()).or_default();
                *head = (*head).max(snapshot.seq_nr);
            }
        }
        Ok(heads
            .into_iter()
            .take(max)
            .map(|(id, seq_nr)| StreamHead {
                persistence_id: id.to_owned(),
                seq_nr,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::InMemoryJournal;
    use crate::journal::{Journal, conformance};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        conformance::run_all(async || Arc::new(InMemoryJournal::new()) as Arc<dyn Journal>).await;
    }
}
