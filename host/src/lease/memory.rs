//! The in-memory lease backend: leases of one process, expiring on an injectable [`LeaseClock`] so
//! that tests can step time instead of sleeping.
//!
//! Fencing tokens come from one counter for all names: strictly increasing per name, as the trait
//! promises, and a released or expired name can be forgotten without its next token going back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::rules::{validate_grant_request, validate_holder, validate_name};
use super::{Grant, HeldLease, Holder, Lease, LeaseError};

/// Where the in-memory backend reads the time.
pub trait LeaseClock: Send + Sync {
    fn now(&self) -> Instant;
}

/// The monotonic clock of the operating system.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl LeaseClock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A clock that moves only when told to: `advance` steps it.
#[derive(Debug)]
pub struct ManualClock {
    start: Instant,
    /// A std mutex: held for one read or one addition.
    elapsed: Mutex<Duration>,
}

impl ManualClock {
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            elapsed: Mutex::new(Duration::ZERO),
        }
    }

    pub fn advance(&self, by: Duration) {
        *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner) += by;
    }
}

impl Default for ManualClock {
    fn default() -> Self {
        Self::new()
    }
}

impl LeaseClock for ManualClock {
    fn now(&self) -> Instant {
        self.start + *self.elapsed.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The tenure of a lease's current holder.
#[derive(Debug)]
struct Tenure {
    owner: String,
    fencing_token: u64,
    expires_at: Instant,
}

#[derive(Debug)]
struct Leases {
    /// Live leases by name, plus expired ones not yet pruned.
    held: HashMap<String, Tenure>,
    last_fencing_token: u64,
    /// `held` is pruned of expired tenures when it grows to this many entries, so that names nobody
    /// holds any more do not accumulate.
    prune_at_len: usize,
}

/// The smallest `prune_at_len`: below it pruning would cost more than the memory it frees.
const PRUNE_AT_LEN_MIN: usize = 1024;

/// Leases held in this process. Cheap to create: make one per test.
pub struct InMemoryLease {
    clock: Arc<dyn LeaseClock>,
    /// A std mutex: never held across an `.await`; every critical section is a few map operations.
    leases: Mutex<Leases>,
}

impl InMemoryLease {
    /// Leases on the system clock.
    pub fn new() -> Self {
        Self::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn LeaseClock>) -> Self {
        Self {
            clock,
            leases: Mutex::new(Leases {
                held: HashMap::new(),
                last_fencing_token: 0,
                prune_at_len: PRUNE_AT_LEN_MIN,
            }),
        }
    }

    fn leases(&self) -> MutexGuard<'_, Leases> {
        // No critical section can panic half-way through a change.
        self.leases.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for InMemoryLease {
    fn default() -> Self {
        Self::new()
    }
}

impl Leases {
    /// The live tenure of `name` held by `owner` with `fencing_token`, if there is one.
    fn held_by(
        &mut self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        now: Instant,
    ) -> Option<&mut Tenure> {
        self.held.get_mut(name).filter(|tenure| {
            tenure.owner == owner
                && tenure.fencing_token == fencing_token
                && tenure.expires_at > now
        })
    }

    fn prune_if_grown(&mut self, now: Instant) {
        if self.held.len() < self.prune_at_len {
            return;
        }
        self.held.retain(|_, tenure| tenure.expires_at > now);
        self.prune_at_len = (self.held.len() * 2).max(PRUNE_AT_LEN_MIN);
    }
}

#[async_trait]
impl Lease for InMemoryLease {
    async fn acquire(
        &self,
        name: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        validate_grant_request(name, owner, ttl)?;
        let now = self.clock.now();
        let mut leases = self.leases();
        if let Some(tenure) = leases.held.get(name)
            && tenure.expires_at > now
            && tenure.owner != owner
        {
            return Ok(None);
        }
        leases.prune_if_grown(now);
        leases.last_fencing_token += 1;
        let fencing_token = leases.last_fencing_token;
        leases.held.insert(
            name.to_owned(),
            Tenure {
                owner: owner.to_owned(),
                fencing_token,
                expires_at: now + ttl,
            },
        );
        Ok(Some(Grant { fencing_token, ttl }))
    }

    async fn renew(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
        ttl: Duration,
    ) -> Result<Option<Grant>, LeaseError> {
        validate_grant_request(name, owner, ttl)?;
        let now = self.clock.now();
        let mut leases = self.leases();
        Ok(leases
            .held_by(name, owner, fencing_token, now)
            .map(|tenure| {
                tenure.expires_at = now + ttl;
                Grant { fencing_token, ttl }
            }))
    }

    async fn release(
        &self,
        name: &str,
        owner: &str,
        fencing_token: u64,
    ) -> Result<bool, LeaseError> {
        validate_holder(name, owner)?;
        let now = self.clock.now();
        let mut leases = self.leases();
        let held = leases.held_by(name, owner, fencing_token, now).is_some();
        if held {
            leases.held.remove(name);
        }
        Ok(held)
    }

    async fn holder(&self, name: &str) -> Result<Option<Holder>, LeaseError> {
        validate_name(name)?;
        let now = self.clock.now();
        let leases = self.leases();
        Ok(leases
            .held
            .get(name)
            .filter(|tenure| tenure.expires_at > now)
            .map(|tenure| Holder {
                owner: tenure.owner.clone(),
                fencing_token: tenure.fencing_token,
                expires_in: tenure.expires_at - now,
            }))
    }

    async fn held(&self, after: &str, max: usize) -> Result<Vec<HeldLease>, LeaseError> {
        let now = self.clock.now();
        let leases = self.leases();
        let mut held: Vec<HeldLease> = leases
            .held
            .iter()
            .filter(|(name, tenure)| name.as_str() > after && tenure.expires_at > now)
            .map(|(name, tenure)| HeldLease {
                name: name.clone(),
                holder: Holder {
                    owner: tenure.owner.clone(),
                    fencing_token: tenure.fencing_token,
                    expires_in: tenure.expires_at - now,
                },
            })
            .collect();
        held.sort_unstable_by(|a, b| a.name.cmp(&b.name));
        held.truncate(max);
        Ok(held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::conformance;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn passes_the_conformance_suite() {
        conformance::run_all(async || Arc::new(InMemoryLease::new()) as Arc<dyn Lease>).await;
    }

    const TTL: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn a_lease_expires_exactly_at_its_time_to_live_on_the_clock() {
        let clock = Arc::new(ManualClock::new());
        let leases = InMemoryLease::with_clock(clock.clone());
        let first = leases.acquire("job", "a", TTL).await.unwrap().unwrap();

        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(leases.acquire("job", "b", TTL).await, Ok(None), "1 ms left");
        assert_eq!(
            leases.holder("job").await.unwrap().map(|h| h.expires_in),
            Some(Duration::from_millis(1))
        );

        clock.advance(Duration::from_millis(1));
        assert_eq!(leases.holder("job").await, Ok(None), "expired");
        assert_eq!(
            leases.renew("job", "a", first.fencing_token, TTL).await,
            Ok(None),
            "an expired lease cannot be renewed"
        );
        let second = leases.acquire("job", "b", TTL).await.unwrap().unwrap();
        assert!(second.fencing_token > first.fencing_token);
    }

    #[tokio::test]
    async fn renewing_counts_the_time_to_live_from_the_renewal() {
        let clock = Arc::new(ManualClock::new());
        let leases = InMemoryLease::with_clock(clock.clone());
        let grant = leases.acquire("job", "a", TTL).await.unwrap().unwrap();
        for _ in 0..5 {
            clock.advance(TTL / 2);
            assert_eq!(
                leases.renew("job", "a", grant.fencing_token, TTL).await,
                Ok(Some(grant))
            );
        }
        clock.advance(TTL - Duration::from_millis(1));
        assert_eq!(leases.acquire("job", "b", TTL).await, Ok(None));
    }

    #[tokio::test]
    async fn expired_leases_are_pruned_and_tokens_still_increase() {
        let clock = Arc::new(ManualClock::new());
        let leases = InMemoryLease::with_clock(clock.clone());
        let names = PRUNE_AT_LEN_MIN as u64;
        for name in 0..names {
            leases
                .acquire(&name.to_string(), "a", TTL)
                .await
                .unwrap()
                .unwrap();
        }
        clock.advance(TTL);
        let after = leases.acquire("0", "b", TTL).await.unwrap().unwrap();
        assert_eq!(after.fencing_token, names + 1);
        assert_eq!(
            leases.leases().held.len(),
            1,
            "the expired tenures are gone"
        );
    }
}
