//! Instance slots shared by every plugin version of a node.
//!
//! The pooling allocator has a fixed number of slots; an instance holds one whether it is busy
//! or idle. So idle instances are kept only within node-wide budgets (a count, the linear memory
//! they hold, and an age), across all versions: a call that finds no free slot first evicts the
//! oldest idle instances of other versions, and a version dropped by a hot swap releases its
//! own. No plugin may have more than its share of slots busy at once, so one plugin cannot
//! starve the others; and a call that finds no slot waits a bounded time for one instead of
//! failing at once.
//!
//! The pool holds values of any type (wasmtime instances in the runtime, plain values in the
//! tests below) and knows nothing of Wasm.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The budgets of a [`Pool`].
#[derive(Debug, Clone)]
pub struct PoolLimits {
    /// Instances alive at once, busy or idle.
    pub slots: u32,
    /// Instances one plugin may have busy at once.
    pub busy_per_plugin: u32,
    /// Idle instances kept, across versions and per version.
    pub idle_max: usize,
    pub idle_per_version: usize,
    /// Bytes of memory idle instances may hold.
    pub idle_bytes_max: usize,
    /// Age after which an idle instance is dropped.
    pub idle_ttl: Duration,
    /// How long a checkout waits for a slot.
    pub wait: Duration,
}

/// What a checkout gives: an idle instance of the version, or a slot to make one in.
pub enum Checkout<T> {
    Idle(T),
    Fresh,
}

/// Why a checkout gave up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exhausted {
    /// Every slot stayed busy for the whole wait.
    AllSlots { slots: u32 },
    /// The plugin had its whole share busy for the whole wait.
    PluginShare { share: u32 },
}

impl std::fmt::Display for Exhausted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exhausted::AllSlots { slots } => write!(f, "all {slots} instance slots are busy"),
            Exhausted::PluginShare { share } => write!(
                f,
                "the plugin has its share of {share} instances busy (busy_instances_per_plugin_max)"
            ),
        }
    }
}

struct Idle<T> {
    version: u64,
    since: Instant,
    bytes: usize,
    value: T,
}

struct Slots<T> {
    /// Instances alive: busy ones plus `idle.len()`.
    live: u32,
    busy_by_plugin: HashMap<String, u32>,
    /// Oldest first.
    idle: VecDeque<Idle<T>>,
    idle_bytes: usize,
}

pub struct Pool<T> {
    limits: PoolLimits,
    slots: Mutex<Slots<T>>,
    freed: Condvar,
}

impl<T> Pool<T> {
    pub fn new(limits: PoolLimits) -> Self {
        Pool {
            limits,
            slots: Mutex::new(Slots {
                live: 0,
                busy_by_plugin: HashMap::new(),
                idle: VecDeque::new(),
                idle_bytes: 0,
            }),
            freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Slots<T>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the newest idle instance of `version`, or a slot to make one in, counting it busy
    /// for `plugin`. Waits up to the pool's `wait` for a slot or for the plugin's share. A
    /// `Fresh` slot must be given back with [`checkin`](Self::checkin) even when making the
    /// instance fails.
    pub fn checkout(&self, plugin: &str, version: u64) -> Result<Checkout<T>, Exhausted> {
        let deadline = Instant::now() + self.limits.wait;
        let mut evicted = Vec::new();
        let mut slots = self.lock();
        let outcome = loop {
            evicted.extend(self.expire(&mut slots));
            let busy = slots.busy_by_plugin.get(plugin).copied().unwrap_or(0);
            let exhausted = if busy >= self.limits.busy_per_plugin {
                Exhausted::PluginShare {
                    share: self.limits.busy_per_plugin,
                }
            } else if let Some(at) = slots.idle.iter().rposition(|idle| idle.version == version) {
                let idle = slots.idle.remove(at).expect("position is in range");
                slots.idle_bytes -= idle.bytes;
                *slots.busy_by_plugin.entry(plugin.to_owned()).or_default() += 1;
                break Ok(Checkout::Idle(idle.value));
            } else if slots.live < self.limits.slots {
                slots.live += 1;
                *slots.busy_by_plugin.entry(plugin.to_owned()).or_default() += 1;
                break Ok(Checkout::Fresh);
            } else if let Some(oldest) = slots.idle.pop_front() {
                // Another version's idle instance gives its slot up.
                slots.idle_bytes -= oldest.bytes;
                slots.live -= 1;
                evicted.push(oldest.value);
                continue;
            } else {
                Exhausted::AllSlots {
                    slots: self.limits.slots,
                }
            };
            let now = Instant::now();
            if now >= deadline {
                break Err(exhausted);
            }
            slots = self
                .freed
                .wait_timeout(slots, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        };
        drop(slots);
        // Instances are dropped outside the lock: dropping one returns its memory.
        drop(evicted);
        outcome
    }

    /// Gives a checked-out slot back: with the instance and the memory it holds to keep it idle
    /// (if the budgets allow), or with `None` when it must not run again (a failed call).
    pub fn checkin(&self, plugin: &str, version: u64, instance: Option<(T, usize)>) {
        let mut dropped = Vec::new();
        {
            let mut slots = self.lock();
            if let Some(busy) = slots.busy_by_plugin.get_mut(plugin) {
                *busy -= 1;
                if *busy == 0 {
                    slots.busy_by_plugin.remove(plugin);
                }
            }
            dropped.extend(self.expire(&mut slots));
            match instance {
                Some((value, bytes)) if self.keeps(&slots, version, bytes) => {
                    while slots.idle.len() >= self.limits.idle_max
                        || slots.idle_bytes + bytes > self.limits.idle_bytes_max
                    {
                        let Some(oldest) = slots.idle.pop_front() else {
                            break;
                        };
                        slots.idle_bytes -= oldest.bytes;
                        slots.live -= 1;
                        dropped.push(oldest.value);
                    }
                    slots.idle_bytes += bytes;
                    slots.idle.push_back(Idle {
                        version,
                        since: Instant::now(),
                        bytes,
                        value,
                    });
                }
                Some((value, _)) => {
                    slots.live -= 1;
                    dropped.push(value);
                }
                None => slots.live -= 1,
            }
        }
        self.freed.notify_all();
        drop(dropped);
    }

    /// Drops every idle instance of `version` (a version no longer in use).
    pub fn release_version(&self, version: u64) {
        let mut dropped = Vec::new();
        {
            let mut slots = self.lock();
            let (kept, gone): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut slots.idle)
                .into_iter()
                .partition(|idle| idle.version != version);
            slots.idle = kept;
            for idle in gone {
                slots.idle_bytes -= idle.bytes;
                slots.live -= 1;
                dropped.push(idle.value);
            }
        }
        self.freed.notify_all();
        drop(dropped);
    }

    /// Idle instances and the memory they hold, and busy ones: for metrics and tests.
    pub fn usage(&self) -> PoolUsage {
        let slots = self.lock();
        PoolUsage {
            live: slots.live,
            idle: slots.idle.len(),
            idle_bytes: slots.idle_bytes,
        }
    }

    /// Whether an instance of `version` holding `bytes` may be kept idle at all.
    fn keeps(&self, slots: &Slots<T>, version: u64, bytes: usize) -> bool {
        let of_version = slots
            .idle
            .iter()
            .filter(|idle| idle.version == version)
            .count();
        self.limits.idle_max > 0
            && bytes <= self.limits.idle_bytes_max
            && of_version < self.limits.idle_per_version
    }

    /// Takes the idle instances older than the pool's `idle_ttl` out of the pool.
    fn expire(&self, slots: &mut Slots<T>) -> Vec<T> {
        let mut expired = Vec::new();
        while let Some(oldest) = slots.idle.front() {
            if oldest.since.elapsed() < self.limits.idle_ttl {
                break;
            }
            let oldest = slots.idle.pop_front().expect("front exists");
            slots.idle_bytes -= oldest.bytes;
            slots.live -= 1;
            expired.push(oldest.value);
        }
        expired
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolUsage {
    pub live: u32,
    pub idle: usize,
    pub idle_bytes: usize,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn limits() -> PoolLimits {
        PoolLimits {
            slots: 4,
            busy_per_plugin: 3,
            idle_max: 4,
            idle_per_version: 2,
            idle_bytes_max: 100,
            idle_ttl: Duration::from_secs(60),
            wait: Duration::from_millis(50),
        }
    }

    fn fresh(pool: &Pool<u32>, plugin: &str, version: u64) -> bool {
        matches!(pool.checkout(plugin, version), Ok(Checkout::Fresh))
    }

    #[test]
    fn idle_instances_of_other_versions_give_their_slots_up() {
        let pool = Pool::new(limits());
        // Four plugins each leave an idle instance: every slot is taken, none busy.
        for version in 0..4 {
            assert!(fresh(&pool, &format!("p{version}"), version));
            pool.checkin(&format!("p{version}"), version, Some((version as u32, 10)));
        }
        assert_eq!(
            pool.usage(),
            PoolUsage {
                live: 4,
                idle: 4,
                idle_bytes: 40
            }
        );
        // A new plugin's first call still gets a slot: the oldest idle instance goes.
        assert!(fresh(&pool, "new", 9));
        assert_eq!(
            pool.usage(),
            PoolUsage {
                live: 4,
                idle: 3,
                idle_bytes: 30
            }
        );
        // And an idle instance of its own version is reused, not a new slot.
        pool.checkin("new", 9, Some((9, 10)));
        assert!(matches!(pool.checkout("new", 9), Ok(Checkout::Idle(9))));
    }

    #[test]
    fn one_plugin_cannot_take_every_slot() {
        let pool = Pool::new(limits());
        for _ in 0..3 {
            assert!(fresh(&pool, "greedy", 1));
        }
        assert_eq!(
            pool.checkout("greedy", 1).err(),
            Some(Exhausted::PluginShare { share: 3 })
        );
        assert!(fresh(&pool, "other", 2), "the fourth slot stays for others");
        assert_eq!(
            pool.checkout("third", 3).err(),
            Some(Exhausted::AllSlots { slots: 4 })
        );
    }

    #[test]
    fn a_waiting_checkout_gets_the_slot_given_back() {
        let pool = Arc::new(Pool::new(PoolLimits {
            wait: Duration::from_secs(30),
            ..limits()
        }));
        for version in 0..4 {
            assert!(fresh(&pool, &format!("p{version}"), version));
        }
        let waiter = {
            let pool = pool.clone();
            std::thread::spawn(move || fresh(&pool, "late", 7))
        };
        // A failed call gives its slot back without an instance.
        pool.checkin("p0", 0, None);
        assert!(waiter.join().unwrap());
    }

    #[test]
    fn idle_budgets_hold() {
        let pool = Pool::new(limits());
        for _ in 0..3 {
            assert!(fresh(&pool, "p", 1));
        }
        // Per version: two kept, the third dropped.
        for value in 0..3 {
            pool.checkin("p", 1, Some((value, 10)));
        }
        assert_eq!(
            pool.usage(),
            PoolUsage {
                live: 2,
                idle: 2,
                idle_bytes: 20
            }
        );
        // Memory: an instance over the whole budget is never kept; a large one evicts the oldest.
        assert!(fresh(&pool, "q", 2));
        pool.checkin("q", 2, Some((0, 101)));
        assert_eq!(pool.usage().idle, 2);
        assert!(fresh(&pool, "q", 2));
        pool.checkin("q", 2, Some((0, 85)));
        assert_eq!(
            pool.usage(),
            PoolUsage {
                live: 2,
                idle: 2,
                idle_bytes: 95
            }
        );
        // A released version's idle instances go.
        pool.release_version(2);
        assert_eq!(
            pool.usage(),
            PoolUsage {
                live: 1,
                idle: 1,
                idle_bytes: 10
            }
        );
    }

    #[test]
    fn old_idle_instances_expire() {
        let pool = Pool::new(PoolLimits {
            idle_ttl: Duration::ZERO,
            ..limits()
        });
        assert!(fresh(&pool, "p", 1));
        pool.checkin("p", 1, Some((1, 10)));
        assert!(fresh(&pool, "p", 1), "the idle instance had expired");
        assert_eq!(pool.usage().idle, 0);
    }
}
