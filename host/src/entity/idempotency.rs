//! What a command carries besides its bytes ([`CommandOptions`]: its deadline and idempotency
//! key) and each entity's table of recently applied keyed commands ([`RecentKeys`]), sans-IO.
//!
//! A keyed command that produced events leaves an [`IdempotencyRecord`] on its last event (key,
//! digest of the command, reply). The table maps each key found on the entity's last
//! `idempotency_window_events` events to that event's sequence number and the command's digest;
//! it is rebuilt from the journal on every recovery, so it survives restarts and failovers as the
//! events do. A retry whose key is in the table is answered from the record, not applied again.

use std::collections::{HashMap, VecDeque};

use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::journal::{EventEnvelope, IdempotencyRecord};

/// Longest idempotency key accepted, in bytes: room for a UUID, a ULID or a client's own
/// composite key, not for a payload smuggled into the events' metadata.
pub const IDEMPOTENCY_KEY_BYTES_MAX: usize = 255;

/// A client's idempotency key: 1 to [`IDEMPOTENCY_KEY_BYTES_MAX`] visible ASCII characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Checks a key from a client or a peer.
    pub fn parse(key: &str) -> Result<IdempotencyKey, String> {
        if key.is_empty() || key.len() > IDEMPOTENCY_KEY_BYTES_MAX {
            return Err(format!(
                "an idempotency key has 1 to {IDEMPOTENCY_KEY_BYTES_MAX} characters; this one has {}",
                key.len()
            ));
        }
        if !key.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(
                "an idempotency key is made of visible ASCII characters (no spaces or control characters)"
                    .to_owned(),
            );
        }
        Ok(IdempotencyKey(key.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// How a command is to be run, besides its bytes.
#[derive(Debug, Clone, Default)]
pub struct CommandOptions {
    /// When the caller stops waiting. A command still queued then is dropped, not applied, and
    /// answered with `deadline_exceeded`. `None`: no deadline.
    pub deadline: Option<Instant>,
    /// Makes retries of the command safe: a command with a key already applied to the entity
    /// (within its window) gets the first one's reply and is not applied again.
    pub idempotency_key: Option<IdempotencyKey>,
}

impl CommandOptions {
    /// Whether the deadline has passed at `now`.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }
}

/// SHA-256 of a command's bytes: what tells a retry from another command under the same key.
pub fn command_digest(command: &[u8]) -> Vec<u8> {
    Sha256::digest(command).to_vec()
}

/// A keyed command the journal holds: where its record is and what it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The sequence number of the command's last event, which carries its record.
    pub seq_nr: u64,
    pub digest: Vec<u8>,
}

/// The keys found on an entity's most recent events, up to a window of events.
#[derive(Debug, Clone)]
pub struct RecentKeys {
    /// How many of the latest events' keys are kept.
    window_events: u64,
    by_key: HashMap<String, Applied>,
    /// Keys in the order of their events, to forget the oldest first.
    order: VecDeque<(u64, String)>,
}

impl RecentKeys {
    pub fn new(window_events: u64) -> RecentKeys {
        RecentKeys {
            window_events,
            by_key: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// The first sequence number whose event's key a table at `seq_nr` keeps.
    pub fn window_start(&self, seq_nr: u64) -> u64 {
        seq_nr.saturating_sub(self.window_events) + 1
    }

    /// Takes note of the records on `events` (in order, after those noted before), then forgets
    /// what fell out of the window.
    pub fn note(&mut self, events: &[EventEnvelope]) {
        for event in events {
            if let Some(IdempotencyRecord { key, digest, .. }) = &event.idempotency {
                self.insert(key.clone(), event.seq_nr, digest.clone());
            }
        }
        if let Some(last) = events.last() {
            self.forget_before(self.window_start(last.seq_nr));
        }
    }

    /// Takes note of keyed commands just appended (`(seq_nr, key, digest)` in order), the
    /// stream now ending at `last_seq_nr`.
    pub fn note_appended(&mut self, keyed: Vec<(u64, String, Vec<u8>)>, last_seq_nr: u64) {
        for (seq_nr, key, digest) in keyed {
            self.insert(key, seq_nr, digest);
        }
        self.forget_before(self.window_start(last_seq_nr));
    }

    fn insert(&mut self, key: String, seq_nr: u64, digest: Vec<u8>) {
        self.order.push_back((seq_nr, key.clone()));
        self.by_key.insert(key, Applied { seq_nr, digest });
    }

    fn forget_before(&mut self, first_kept: u64) {
        while let Some((seq_nr, _)) = self.order.front()
            && *seq_nr < first_kept
        {
            let Some((seq_nr, key)) = self.order.pop_front() else {
                break;
            };
            // A key noted again later stays with its later event.
            if self
                .by_key
                .get(&key)
                .is_some_and(|applied| applied.seq_nr == seq_nr)
            {
                self.by_key.remove(&key);
            }
        }
    }

    /// The applied command with this key, if the window still holds it.
    pub fn get(&self, key: &IdempotencyKey) -> Option<&Applied> {
        self.by_key.get(key.as_str())
    }

    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(seq_nr: u64, key: Option<&str>) -> EventEnvelope {
        let mut event = crate::journal::conformance::sample_event("t|1", seq_nr, ulid::Ulid::nil());
        event.idempotency = key.map(|key| IdempotencyRecord {
            key: key.to_owned(),
            digest: command_digest(key.as_bytes()),
            reply: vec![0xc0],
        });
        event
    }

    fn key(key: &str) -> IdempotencyKey {
        IdempotencyKey::parse(key).unwrap()
    }

    #[test]
    fn keys_are_kept_for_the_window_of_events() {
        let mut keys = RecentKeys::new(3);
        keys.note(&[event(1, Some("a")), event(2, None), event(3, Some("b"))]);
        assert_eq!(keys.get(&key("a")).map(|a| a.seq_nr), Some(1));
        keys.note(&[event(4, None)]);
        assert_eq!(keys.get(&key("a")), None, "event 1 left the window of 3");
        assert_eq!(keys.get(&key("b")).map(|a| a.seq_nr), Some(3));
        assert_eq!(keys.len(), 1);
        keys.note(&[event(5, None), event(6, None)]);
        assert!(keys.is_empty());
    }

    #[test]
    fn keys_must_be_short_and_visible() {
        assert!(IdempotencyKey::parse("order-42/attempt:1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("with space").is_err());
        assert!(IdempotencyKey::parse("tab\t").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(IDEMPOTENCY_KEY_BYTES_MAX + 1)).is_err());
    }

    #[test]
    fn the_digest_tells_commands_apart() {
        assert_eq!(command_digest(b"x"), command_digest(b"x"));
        assert_ne!(command_digest(b"x"), command_digest(b"y"));
    }
}
