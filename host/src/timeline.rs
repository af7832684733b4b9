//! [`Timeline`]: things due at points in time, taken in time order — the timers of a driver task,
//! the event queue of a simulator. Items due at the same time come out in the order they went in,
//! so a run does not depend on the heap's internals and a seeded simulation replays exactly.

use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// Items of type `T` due at times of type `At` (`Instant`, `Duration`, milliseconds, …).
#[derive(Debug)]
pub struct Timeline<At: Ord + Copy, T> {
    heap: BinaryHeap<Reverse<Scheduled<At, T>>>,
    /// Counts insertions: breaks ties in `at`.
    inserted: u64,
}

#[derive(Debug)]
struct Scheduled<At, T> {
    at: At,
    seq: u64,
    item: T,
}

impl<At: Ord, T> PartialEq for Scheduled<At, T> {
    fn eq(&self, other: &Self) -> bool {
        (&self.at, self.seq) == (&other.at, other.seq)
    }
}

impl<At: Ord, T> Eq for Scheduled<At, T> {}

impl<At: Ord, T> PartialOrd for Scheduled<At, T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<At: Ord, T> Ord for Scheduled<At, T> {
    fn cmp(&self, other: &Self) -> Ordering {
        (&self.at, self.seq).cmp(&(&other.at, other.seq))
    }
}

impl<At: Ord + Copy, T> Default for Timeline<At, T> {
    fn default() -> Self {
        Timeline {
            heap: BinaryHeap::new(),
            inserted: 0,
        }
    }
}

impl<At: Ord + Copy, T> Timeline<At, T> {
    pub fn push(&mut self, at: At, item: T) {
        self.inserted += 1;
        self.heap.push(Reverse(Scheduled {
            at,
            seq: self.inserted,
            item,
        }));
    }

    /// When the earliest item is due.
    pub fn next_at(&self) -> Option<At> {
        self.heap.peek().map(|Reverse(scheduled)| scheduled.at)
    }

    /// The earliest item and its time, if it is due by `until`.
    pub fn pop_due(&mut self, until: At) -> Option<(At, T)> {
        if self.next_at()? > until {
            return None;
        }
        self.heap
            .pop()
            .map(|Reverse(scheduled)| (scheduled.at, scheduled.item))
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_out_by_time_then_by_insertion() {
        let mut timeline = Timeline::default();
        timeline.push(20, "late");
        timeline.push(10, "first");
        timeline.push(10, "second");
        timeline.push(30, "not yet");
        assert_eq!(timeline.next_at(), Some(10));
        let due: Vec<_> = std::iter::from_fn(|| timeline.pop_due(25)).collect();
        assert_eq!(due, vec![(10, "first"), (10, "second"), (20, "late")]);
        assert_eq!(timeline.len(), 1);
        assert_eq!(timeline.pop_due(29), None);
        assert_eq!(timeline.pop_due(30), Some((30, "not yet")));
        assert!(timeline.is_empty());
    }
}
