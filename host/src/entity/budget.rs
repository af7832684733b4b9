//! The node's budget for entity state resident in plugins (`[limits] resident_state_bytes_max`):
//! what each active entity's state holds, their sum, and which entities to passivate, least
//! recently used first, when the sum goes over.
//!
//! An entity's share is the size of its state's bytes (its MessagePack encoding, read whenever the
//! host has them: at activation, at each snapshot, at each state query) plus
//! [`ENTITY_OVERHEAD_BYTES`] for its actor, mailbox and handle. The encoding is an estimate of what
//! the decoded state takes in the guest, exact for none of the languages and within a small factor
//! for all.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What an active entity costs besides its state: its actor task, mailbox and resource handle.
pub const ENTITY_OVERHEAD_BYTES: u64 = 1 << 10;

/// After going over the budget, entities are passivated until the sum is back under this share
/// of it (in percent), so that each new activation does not passivate one more.
const AFTER_EVICTION_PERCENT: u64 = 90;

/// One active entity's share of the budget.
#[derive(Debug, Default)]
pub struct ResidentUsage {
    bytes: AtomicU64,
    /// Milliseconds since the budget was made, at the entity's last turn.
    last_used_ms: AtomicU64,
    /// Asked to passivate for the budget: not chosen again.
    evicting: AtomicBool,
}

impl ResidentUsage {
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

/// The sum of the active entities' shares against the node's maximum.
#[derive(Debug)]
pub struct ResidentBudget {
    max_bytes: u64,
    total_bytes: AtomicU64,
    /// Entities asked to passivate because the budget was exceeded.
    passivations: AtomicU64,
    started: Instant,
}

impl ResidentBudget {
    pub fn new(max_bytes: u64) -> Self {
        ResidentBudget {
            max_bytes,
            total_bytes: AtomicU64::new(0),
            passivations: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    pub fn max_bytes(&self) -> u64 {
        self.max_bytes
    }

    pub fn total_bytes(&self) -> u64 {
        self.total_bytes.load(Ordering::Relaxed)
    }

    /// Entities passivated to keep within the budget, since start.
    pub fn passivations(&self) -> u64 {
        self.passivations.load(Ordering::Relaxed)
    }

    /// Records a turn of the entity: it becomes the most recently used.
    pub fn touch(&self, usage: &ResidentUsage) {
        let now = self.started.elapsed().as_millis() as u64;
        usage.last_used_ms.store(now, Ordering::Relaxed);
    }

    /// Sets the entity's state size (its bytes); `true` when the budget is now exceeded.
    pub fn set_state_bytes(&self, usage: &ResidentUsage, state_bytes: u64) -> bool {
        self.set(usage, state_bytes + ENTITY_OVERHEAD_BYTES)
    }

    /// Takes a stopped entity's share out of the sum.
    pub fn release(&self, usage: &ResidentUsage) {
        self.set(usage, 0);
    }

    fn set(&self, usage: &ResidentUsage, bytes: u64) -> bool {
        let before = usage.bytes.swap(bytes, Ordering::Relaxed);
        let total = if bytes >= before {
            self.total_bytes
                .fetch_add(bytes - before, Ordering::Relaxed)
                + (bytes - before)
        } else {
            self.total_bytes
                .fetch_sub(before - bytes, Ordering::Relaxed)
                - (before - bytes)
        };
        total > self.max_bytes
    }

    /// Which of `active` to passivate, least recently used first, until the sum would be back
    /// under [`AFTER_EVICTION_PERCENT`] of the budget. Each is chosen once, and the shares of
    /// those chosen before and still stopping count as gone.
    pub fn victims<'a, K>(&self, active: impl Iterator<Item = (K, &'a ResidentUsage)>) -> Vec<K> {
        let (stopping, mut candidates): (Vec<_>, Vec<_>) =
            active.partition(|(_, usage)| usage.evicting.load(Ordering::Relaxed));
        let stopping_bytes: u64 = stopping.iter().map(|(_, usage)| usage.bytes()).sum();
        let staying = self.total_bytes().saturating_sub(stopping_bytes);
        if staying <= self.max_bytes {
            return Vec::new();
        }
        let target = (u128::from(self.max_bytes) * u128::from(AFTER_EVICTION_PERCENT) / 100) as u64;
        let mut excess = staying - target;
        candidates.sort_by_key(|(_, usage)| usage.last_used_ms.load(Ordering::Relaxed));
        let mut victims = Vec::new();
        for (key, usage) in candidates {
            if excess == 0 {
                break;
            }
            usage.evicting.store(true, Ordering::Relaxed);
            excess = excess.saturating_sub(usage.bytes());
            victims.push(key);
        }
        self.passivations
            .fetch_add(victims.len() as u64, Ordering::Relaxed);
        victims
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_least_recently_used_go_first_until_under_the_budget() {
        let budget = ResidentBudget::new(10 * ENTITY_OVERHEAD_BYTES);
        let usages: Vec<ResidentUsage> = (0..12).map(|_| ResidentUsage::default()).collect();
        for (n, usage) in usages.iter().enumerate() {
            usage.last_used_ms.store(100 - n as u64, Ordering::Relaxed);
            let over = budget.set_state_bytes(usage, 0);
            assert_eq!(over, n >= 10, "entity {n}");
        }
        // 12 shares of a budget of 10: back under 90% takes 3, the oldest (the last made here).
        let victims = budget.victims(usages.iter().enumerate());
        assert_eq!(victims, vec![11, 10, 9]);
        assert_eq!(budget.passivations(), 3);
        // While they stop, their shares count as gone: asking again chooses nobody.
        assert!(budget.victims(usages.iter().enumerate()).is_empty());
        for n in [11, 10, 9] {
            budget.release(&usages[n]);
        }
        assert_eq!(budget.total_bytes(), 9 * ENTITY_OVERHEAD_BYTES);
        // One more entity grows past the budget: the least recently used of the rest goes.
        assert!(budget.set_state_bytes(&usages[0], 2 * ENTITY_OVERHEAD_BYTES));
        assert_eq!(budget.victims(usages[..9].iter().enumerate()), vec![8, 7]);
    }

    #[test]
    fn a_state_that_grows_is_counted() {
        let budget = ResidentBudget::new(1 << 20);
        let usage = ResidentUsage::default();
        assert!(!budget.set_state_bytes(&usage, 1_000));
        assert!(budget.set_state_bytes(&usage, 2 << 20));
        assert!(!budget.set_state_bytes(&usage, 10));
        assert_eq!(budget.total_bytes(), 10 + ENTITY_OVERHEAD_BYTES);
    }
}
