//! The rules every journal backend applies to a write, written once so that all backends accept and
//! refuse exactly the same appends, fences and snapshots.
//!
//! A backend calls [`validate_append`] (or [`validate_snapshot`], [`validate_fencing_token`]) before it
//! touches storage, then, inside its transaction, [`check_append_against_stream`] or
//! [`check_fence_advance`] (or [`next_fence`]) with the stream's current highest sequence number and
//! recorded fence. (The PostgreSQL backend checks the same conditions in SQL, within the one
//! statement that writes, and calls these with what that statement found to report a refusal.)

use super::{EventEnvelope, JournalError, SnapshotEnvelope};

/// The most events one append may carry. A single command emitting more is almost certainly a runaway
/// guest; the bound keeps one append's transaction and the memory it pins small. Callers that batch
/// several commands into one append must split batches above it.
pub const EVENTS_PER_APPEND_MAX: usize = 10_000;

/// The largest integer SQL backends store (`INTEGER` / `BIGINT` are signed 64-bit). Every backend
/// refuses larger values, so that a test passing on the in-memory backend passes on SQL ones too.
pub const STORED_INTEGER_MAX: u64 = i64::MAX as u64;

/// Checks that `events` is a well-formed batch for an append to `persistence_id` after
/// `expected_seq_nr` carrying `fencing_token`: non-empty, at most [`EVENTS_PER_APPEND_MAX`] events, all
/// of the persistence id, numbered `expected_seq_nr + 1, expected_seq_nr + 2, …`, each stamped with
/// `fencing_token`, and every stored integer within [`STORED_INTEGER_MAX`].
pub fn validate_append(
    persistence_id: &str,
    expected_seq_nr: u64,
    fencing_token: u64,
    events: &[EventEnvelope],
) -> Result<(), JournalError> {
    if persistence_id.is_empty() {
        return Err(JournalError::InvalidBatch(
            "the persistence id is empty".to_owned(),
        ));
    }
    if events.is_empty() {
        return Err(JournalError::InvalidBatch(format!(
            "no events to append to {persistence_id}"
        )));
    }
    if events.len() > EVENTS_PER_APPEND_MAX {
        return Err(JournalError::InvalidBatch(format!(
            "{} events for {persistence_id}, at most {EVENTS_PER_APPEND_MAX} per append",
            events.len()
        )));
    }
    check_stored_integer("fencing token", fencing_token)?;
    for (event, offset) in events.iter().zip(1u64..) {
        if event.persistence_id != persistence_id {
            return Err(JournalError::InvalidBatch(format!(
                "event {offset} of the batch belongs to {}, not {persistence_id}",
                event.persistence_id
            )));
        }
        let wanted_seq_nr = expected_seq_nr
            .checked_add(offset)
            .filter(|seq_nr| *seq_nr <= STORED_INTEGER_MAX)
            .ok_or(JournalError::ValueOutOfRange {
                field: "seq nr",
                value: expected_seq_nr.saturating_add(offset),
            })?;
        if event.seq_nr != wanted_seq_nr {
            return Err(JournalError::InvalidBatch(format!(
                "event {offset} of the batch for {persistence_id} has seq nr {}, expected {wanted_seq_nr} \
                 (seq nrs must run consecutively from expected_seq_nr + 1 = {})",
                event.seq_nr,
                expected_seq_nr.saturating_add(1)
            )));
        }
        if event.fencing_token != fencing_token {
            return Err(JournalError::InvalidBatch(format!(
                "event {} of {persistence_id} carries fencing token {}, the append carries {fencing_token}",
                event.seq_nr, event.fencing_token
            )));
        }
        check_stored_integer("timestamp", event.timestamp)?;
        check_stored_integer("origin seq nr", event.origin_seq_nr)?;
    }
    Ok(())
}

/// Checks an append against the stream as stored: the fence first (a caller that lost its lease learns
/// that, whatever the sequence numbers), then the expected sequence number.
pub fn check_append_against_stream(
    persistence_id: &str,
    expected_seq_nr: u64,
    fencing_token: u64,
    highest_seq_nr: u64,
    recorded_fence: u64,
) -> Result<(), JournalError> {
    if fencing_token < recorded_fence {
        return Err(JournalError::StaleFencingToken {
            persistence_id: persistence_id.to_owned(),
            token: fencing_token,
            current: recorded_fence,
        });
    }
    if expected_seq_nr != highest_seq_nr {
        return Err(JournalError::SeqConflict {
            persistence_id: persistence_id.to_owned(),
            expected_seq_nr,
            actual_seq_nr: highest_seq_nr,
        });
    }
    Ok(())
}

/// Checks that a fencing token may be stored at all.
pub fn validate_fencing_token(fencing_token: u64) -> Result<(), JournalError> {
    check_stored_integer("fencing token", fencing_token)
}

/// What recording `fencing_token` does to a persistence id whose recorded fence is `recorded_fence`:
/// `Ok(true)` raise it, `Ok(false)` nothing (the same token again), an error if a higher one is recorded.
pub fn check_fence_advance(
    persistence_id: &str,
    fencing_token: u64,
    recorded_fence: u64,
) -> Result<bool, JournalError> {
    if fencing_token < recorded_fence {
        return Err(JournalError::StaleFencingToken {
            persistence_id: persistence_id.to_owned(),
            token: fencing_token,
            current: recorded_fence,
        });
    }
    Ok(fencing_token > recorded_fence)
}

/// The token advancing a fence recorded at `recorded_fence` records: one above it, if storable.
pub fn next_fence(recorded_fence: u64) -> Result<u64, JournalError> {
    let next = recorded_fence.saturating_add(1);
    check_stored_integer("fencing token", next)?;
    Ok(next)
}

/// Checks that a snapshot may be stored: its sequence number must be storable.
pub fn validate_snapshot(snapshot: &SnapshotEnvelope) -> Result<(), JournalError> {
    check_stored_integer("snapshot seq nr", snapshot.seq_nr)
}

fn check_stored_integer(field: &'static str, value: u64) -> Result<(), JournalError> {
    if value > STORED_INTEGER_MAX {
        return Err(JournalError::ValueOutOfRange { field, value });
    }
    Ok(())
}
