//! The subscribers of a node's keys: one watch per subscribed key, holding the key's latest entry.
//! A watch keeps only the newest value, which is the coalescing a subscriber wants (the latest
//! value, never an older one after a newer: entries only grow by merge, and a deletion is final),
//! and bounds what a slow subscriber holds to one entry. Keys are validated like writes, the
//! number of subscribers is bounded, and a key's watch is freed as soon as its last subscriber
//! leaves. No I/O: the service's task owns it.

use std::collections::BTreeMap;

use tokio::sync::watch;

use super::DdataError;
use super::replicator::check_key;
use super::value::Entry;

/// Subscribers one node serves at most, over all keys. Each costs a watch (a key name and one
/// entry) and an open HTTP connection; past it a subscribe is refused with
/// [`DdataError::TooManySubscribers`].
pub const SUBSCRIBERS_MAX: usize = 10_000;

pub struct Subscribers {
    watches: BTreeMap<String, watch::Sender<Option<Entry>>>,
    max: usize,
}

impl Subscribers {
    /// Serving at most `max` subscribers.
    pub fn new(max: usize) -> Self {
        Self {
            watches: BTreeMap::new(),
            max,
        }
    }

    /// A new subscriber of `key`, whose entry is `current` (used if the key has no watch yet).
    /// Refused, changing nothing, for an invalid key or past the limit.
    pub fn subscribe(
        &mut self,
        key: String,
        current: impl FnOnce() -> Option<Entry>,
    ) -> Result<watch::Receiver<Option<Entry>>, DdataError> {
        check_key(&key)?;
        if self.count() >= self.max {
            return Err(DdataError::TooManySubscribers { max: self.max });
        }
        let sender = self
            .watches
            .entry(key)
            .or_insert_with(|| watch::channel(current()).0);
        Ok(sender.subscribe())
    }

    /// A subscriber of `key` left: frees the key's watch if it was the last.
    pub fn left(&mut self, key: &str) {
        if self
            .watches
            .get(key)
            .is_some_and(|sender| sender.receiver_count() == 0)
        {
            self.watches.remove(key);
        }
    }

    /// Frees the watch of every key whose subscribers all left (for notices that were lost).
    pub fn sweep(&mut self) {
        self.watches.retain(|_, sender| sender.receiver_count() > 0);
    }

    /// `key` now holds `entry`: its subscribers see it.
    pub fn changed(&mut self, key: &str, entry: Entry) {
        if let Some(sender) = self.watches.get(key) {
            sender.send_replace(Some(entry));
        }
        self.left(key);
    }

    /// Subscribers served, over all keys.
    pub fn count(&self) -> usize {
        self.watches
            .values()
            .map(watch::Sender::receiver_count)
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_validated_the_count_is_bounded_and_the_last_leave_frees_the_watch() {
        let mut subscribers = Subscribers::new(2);
        for key in [String::new(), "k".repeat(257)] {
            assert!(matches!(
                subscribers.subscribe(key, || None),
                Err(DdataError::InvalidKey { .. })
            ));
        }
        let mut first = subscribers.subscribe("a".into(), || None).expect("room");
        let second = subscribers
            .subscribe("a".into(), || Some(Entry::Deleted))
            .expect("room");
        assert!(matches!(
            subscribers.subscribe("b".into(), || None),
            Err(DdataError::TooManySubscribers { max: 2 })
        ));
        assert_eq!((subscribers.count(), subscribers.watches.len()), (2, 1));

        subscribers.changed("a", Entry::Deleted);
        assert!(first.has_changed().expect("the watch is open"));
        assert_eq!(*first.borrow_and_update(), Some(Entry::Deleted));

        drop(second);
        subscribers.left("a");
        assert_eq!(
            (subscribers.count(), subscribers.watches.len()),
            (1, 1),
            "one left"
        );
        drop(first);
        subscribers.left("a");
        assert_eq!(
            (subscribers.count(), subscribers.watches.len()),
            (0, 0),
            "freed"
        );

        // A lost notice: the sweep frees it.
        let third = subscribers.subscribe("c".into(), || None).expect("room");
        drop(third);
        assert_eq!(subscribers.watches.len(), 1);
        subscribers.sweep();
        assert_eq!(subscribers.watches.len(), 0);
    }
}
